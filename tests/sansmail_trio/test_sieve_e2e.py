"""Sieve at delivery end to end: a real ``sansmail-trio serve`` (its own queue runner
process), scripts uploaded with Debian's sieve-connect through STARTTLS and activated,
mail sent with smtplib, the result read with imaplib and at an aiosmtpd sink on another
loopback address where the tests' DNS server sends far.test's mail.

Filed into a folder (IMAP shows it there), flagged (\\Flagged in FETCH FLAGS), rejected
(the sender's DSN at the sink carries the reason), redirected (the sink receives it from
an SRS sender), answered by vacation (one DKIM-signed reply with Auto-Submitted, none to
a second message of the same sender); ``[sieve] before`` filing spam into Junk; a user
without a script still served straight into INBOX before the 250; and mail queued for
the scripts delivered after a ``kill -9``. Skipped without sieve-connect.

On both storage backends: Maildir files, or ``[storage] backend = "postgresql"`` on a
database of the test's own (where a test looks at the queue, the scripts or a mailbox
itself, it reads the database's tables instead of the files)."""

from __future__ import annotations

import contextlib
import email
import email.policy
import imaplib
import os
import pathlib
import re
import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import attrs
import pytest
import trustme
from delivery_helpers import PEER, Received, Sink, free_port
from dns_server import DNSServer
from trio_helpers import (
    FAST_HASHER,
    inbox_rows,
    started_lines,
    storage_table,
    wait_until_started,
)

from sansmail.mail import dkim
from sansmail.mail.address import MailboxId, parse_address
from sansmail.storage.dkimkeys import write_key
from sansmail.storage.queue import QueueStore
from sansmail.storage.sieve import SieveScripts, SieveStore
from sansmail.storage.users import UserStore

if TYPE_CHECKING:
    from pgcluster import Cluster

    from sansmail.storage.pg import Database
    from sansmail.storage.pg._users import PgUserStore

SIEVE_CONNECT = shutil.which("sieve-connect")
pytestmark = pytest.mark.skipif(SIEVE_CONNECT is None, reason="sieve-connect not installed")

#: tests/conftest.py's template database (at the current schema), which `pg_dsn` copies;
#: the module's server makes its own copy from it (see `mx`).
PG_TEMPLATE = "sansmail_template"
#: [storage] queue_lease, in seconds, of the server a test kills. Its runner, seeing
#: its parent gone, gives its claims back as it stops; one it fails to give back (an
#: attempt still running at the end of the grace) ends only with its lease, and the
#: default (a minute) is longer than the test waits. Only there: a server that lives
#: keeps the default, so that a loaded machine cannot make it lose a claim it still
#: works on (and deliver twice).
KILLED_LEASE = 2

USERS = ("alice@example.test", "bob@example.test", "carol@example.test")
SCRIPT = b"""\
require ["fileinto", "mailbox", "imap4flags", "reject", "vacation"];
if header :contains "Subject" "[list]" {
    fileinto :create "Lists";
} elsif header :contains "Subject" "urgent" {
    addflag "\\\\Flagged";
} elsif header :contains "Subject" "offer" {
    reject "no offers, thanks";
} elsif header :contains "Subject" "pass on" {
    redirect "dan@far.test";
} elsif header :contains "Subject" "holiday" {
    vacation :days 1 :subject "Away" "I am away until Monday.";
}
"""
BEFORE = b"""\
require ["fileinto", "mailbox"];
if header :is "X-Spam-Flag" "YES" {
    fileinto :create "Junk";
    stop;
}
"""

_T = TypeVar("_T")


def wait_for(
    condition: Callable[[], _T], what: str, *, log: Callable[[], str], timeout: float = 30.0
) -> _T:
    """Poll `condition` until it is truthy; the timeout only bounds a failing test, which
    then shows the server's log."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; the server's log:\n{log()}")
        time.sleep(0.05)


@attrs.define
class Mx:
    """A running ``sansmail-trio serve`` and what the tests reach it by."""

    folder: pathlib.Path
    ca: pathlib.Path
    sink: Sink
    #: The database of ``[storage] backend = "postgresql"``; None: Maildir files.
    dsn: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = attrs.Factory(dict)
    #: A connection source for the tests' own looks at `dsn`, opened on first use: the
    #: queue is polled every 50 ms, which should not cost a new connection each time.
    _db: Database | None = None

    def start(self) -> None:
        script = shutil.which("sansmail-trio")
        assert script is not None
        env = dict(os.environ)
        # The checkout under test, whatever the installed script's path says.
        root = str(pathlib.Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        log = self.folder / "serve.log"
        seen = started_lines(log)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, script, "serve"], cwd=self.folder, stderr=out, env=env
            )
        self.ports = wait_until_started(self.proc, log, seen=seen)

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM, or SIGKILL (no cleanup at all) with `kill`."""
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
        if self.proc is not None:
            self.proc.wait(30)

    @property
    def data_dir(self) -> pathlib.Path:
        return self.folder / "data"

    @property
    def log(self) -> str:
        return (self.folder / "serve.log").read_text()

    def send(self, sender: str, rcpt: str, subject: str, *, extra: str = "") -> str:
        """One message over SMTP; the queue id of the 250."""
        message = (
            f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.monotonic_ns()}@far.test>\r\n{extra}\r\nHello {rcpt}\r\n"
        )
        with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=10) as client:
            client.ehlo("client.far.test")
            client.mail(sender)
            client.rcpt(rcpt)
            code, reply = client.data(message.encode())
        assert code == 250, reply
        return reply.decode().rsplit(" ", 1)[-1]

    def wait(self, condition: Callable[[], _T], what: str) -> _T:
        return wait_for(condition, what, log=lambda: self.log[-20000:])

    @property
    def db(self) -> Database:
        """The server's database (PostgreSQL backend)."""
        assert self.dsn is not None, "a database needs the postgresql backend"
        if self._db is None:
            # Imported here: psycopg is there only with the postgresql extra.
            from sansmail.storage.pg import Database  # noqa: PLC0415

            self._db = Database(self.dsn)
        return self._db

    def close(self) -> None:
        """Let go of the tests' connections to the database (before it is dropped)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def queue_empty(self) -> bool:
        if self.dsn is None:
            return not QueueStore(self.data_dir / "queue").list()
        from sansmail.storage.pg._queue import PgQueueStore  # noqa: PLC0415

        # `list` reads every node's rows; the node name is only the claims' holder.
        return not PgQueueStore(self.db, node="test").list()

    def scripts(self) -> SieveScripts:
        """The users' Sieve scripts, where the server keeps them."""
        if self.dsn is None:
            return SieveStore(self.data_dir)
        from sansmail.storage.pg._sieve import PgSieveStore  # noqa: PLC0415

        return PgSieveStore(self.db)

    def received(self, rcpt: str) -> list[Received]:
        return [r for r in self.sink.received if rcpt in r.rcpt_tos]

    def sieve_connect(self, user: str, *action: str) -> str:
        assert SIEVE_CONNECT is not None
        done = subprocess.run(
            [
                SIEVE_CONNECT,
                *("-u", user, "--authmech", "PLAIN", "--passwordfd", "0"),
                *("-s", "127.0.0.1", "-p", str(self.ports["managesieve"])),
                *("--tlscafile", str(self.ca)),
                *action,
            ],
            input="secret\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def imap(self, user: str) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=10)
        client.login(user, "secret")
        return client


def fetch(client: imaplib.IMAP4, folder: str) -> list[tuple[str, bytes]]:
    """(FLAGS, header) of every message in `folder`; none while it does not exist (the
    delivery that makes it may not have run yet)."""
    typ, _ = client.select(f'"{folder}"', readonly=True)
    if typ != "OK":
        return []
    typ, data = client.fetch("1:*", "(FLAGS BODY.PEEK[HEADER])")
    if data == [None]:
        return []
    found = []
    for item in data:
        if isinstance(item, tuple):
            flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
            found.append(((flags[1] if flags else b"").decode(), item[1]))
    return found


def subjects(messages: list[tuple[str, bytes]]) -> list[str]:
    return [email.message_from_bytes(header)["Subject"] for _flags, header in messages]


@contextlib.contextmanager
def running(
    folder: pathlib.Path,
    *,
    before: bytes | None = None,
    dsn: str | None = None,
    lease: int | None = None,
) -> Iterator[Mx]:
    """``sansmail-trio serve`` in `folder`: SMTP, IMAP and ManageSieve on loopback,
    far.test's mail routed to a sink on PEER, a DKIM key for example.test, the users of
    `USERS` (password "secret"), and `before` as ``[sieve] before`` if given. With
    `dsn`, on PostgreSQL (the users in its tables), with `lease` as its queue_lease."""
    folder.mkdir(parents=True)
    ca = trustme.CA()
    # sieve-connect checks the name it connected to, here the address.
    issued = ca.issue_cert("mx.example.test", "127.0.0.1")
    cert, key = folder / "cert.pem", folder / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    port = free_port(PEER)
    site = ""
    if before is not None:
        (folder / "before.sieve").write_bytes(before)
        site = '[sieve]\nbefore = "before.sieve"\n'
    site += storage_table(dsn, queue_lease=None if lease is None else f"{lease}s")
    with DNSServer() as dns, Sink(PEER, port) as sink:
        dns.add("far.test", "MX", "10 mx.far.test.")
        dns.add("mx.far.test", "A", PEER)
        (folder / "sansmail.toml").write_text(
            f"""\
hostname = "mx.example.test"
domains = ["example.test"]
data_dir = "data"
[tls]
cert = "{cert}"
key = "{key}"
[listen]
smtp = "127.0.0.1:0"
imap = "127.0.0.1:0"
managesieve = "127.0.0.1:0"
[dns]
nameservers = ["{dns.host_port}"]
[antispam]
spf = "off"
dkim = "off"
dmarc = "off"
[delivery]
smtp_port = {port}
{site}"""
        )
        data = folder / "data"
        server = Mx(folder, folder / "ca.pem", sink, dsn)
        users: UserStore | PgUserStore
        if dsn is None:
            users = UserStore(data / "users.json", hasher=FAST_HASHER)
        else:
            from sansmail.storage.pg._users import PgUserStore  # noqa: PLC0415

            users = PgUserStore(server.db, hasher=FAST_HASHER)
        for address in USERS:
            users.add(parse_address(address), "secret")
        # The DKIM keys are files in data_dir on either backend.
        private, txt = dkim.generate("ed25519")
        write_key(data, "example.test", "sansmail", private, txt)
        try:
            server.start()
            yield server
        finally:
            server.stop()
            server.close()


# The storage backend of every test here. Not trio_helpers' `BOTH_BACKENDS` mark: conftest
# parametrizes `server_backend` directly, which makes it function-scoped, and `mx`, one
# server for the module's tests, cannot depend on it. This module-scoped, parametrized
# override of `server_backend` gives the same test ids ([maildir], [postgresql]), and
# pytest runs the tests of one `mx` in a row, so each backend's server starts once.
@pytest.fixture(scope="module", params=["maildir", "postgresql"])
def server_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture(scope="module")
def mx(
    tmp_path_factory: pytest.TempPathFactory, server_backend: str, request: pytest.FixtureRequest
) -> Iterator[Mx]:
    with contextlib.ExitStack() as stack:
        dsn = None
        if server_backend == "postgresql":
            # `pg_dsn` is per test; the module's server needs a database as long-lived
            # as itself, copied from the same template.
            cluster: Cluster = request.getfixturevalue("pg_cluster")
            dsn = stack.enter_context(cluster.database(template=PG_TEMPLATE))
        folder = tmp_path_factory.mktemp(f"sieve-{server_backend}") / "mx"
        yield stack.enter_context(_with_script(folder, dsn))


@contextlib.contextmanager
def _with_script(folder: pathlib.Path, dsn: str | None) -> Iterator[Mx]:
    """`running`, with alice's `SCRIPT` uploaded and activated over ManageSieve."""
    with running(folder, dsn=dsn) as server:
        rules = server.folder / "rules.sieve"
        rules.write_bytes(SCRIPT)
        server.sieve_connect(
            "alice@example.test", "--upload", "--localsieve", str(rules), "--remotesieve", "rules"
        )
        server.sieve_connect("alice@example.test", "--activate", "--remotesieve", "rules")
        assert server.sieve_connect("alice@example.test", "--list") == '"rules" ACTIVE\n'
        yield server


def test_fileinto_files_the_message_into_a_folder_imap_shows(mx: Mx) -> None:
    qid = mx.send("list@far.test", "alice@example.test", "[list] weekly digest")
    with mx.imap("alice@example.test") as client:
        lists = mx.wait(lambda: fetch(client, "Lists"), "the message in Lists")
        assert subjects(lists) == ["[list] weekly digest"]
        assert "[list] weekly digest" not in subjects(fetch(client, "INBOX"))
        typ, listed = client.list()
        assert typ == "OK"
        assert any(b'"Lists"' in line or b" Lists" in line for line in listed)
        typ, subscribed = client.lsub()
        assert any(b"Lists" in line for line in subscribed)
    # Queued at the intake for the runner, which ran the script and logged it.
    assert f"{qid}: from=<list@far.test>" in mx.log
    mx.wait(lambda: "stored mail into mailbox 'Lists'" in mx.log, "the sieve log line")
    (header,) = [h for _f, h in lists]
    assert header.startswith(b"Return-Path: <list@far.test>\r\n")


def test_addflag_shows_as_flagged(mx: Mx) -> None:
    mx.send("boss@far.test", "alice@example.test", "urgent: the report")
    with mx.imap("alice@example.test") as client:

        def flagged() -> list[str]:
            return [f for f, h in fetch(client, "INBOX") if b"urgent: the report" in h]

        (flags,) = mx.wait(flagged, "the flagged message")
        assert "\\Flagged" in flags.split()
        assert "\\Seen" not in flags.split()


def test_reject_sends_the_sender_a_dsn_with_the_reason(mx: Mx) -> None:
    mx.send("seller@far.test", "alice@example.test", "a great offer")
    (dsn,) = mx.wait(lambda: mx.received("seller@far.test"), "the DSN at the sink")
    assert dsn.mail_from in ("", "<>")
    text = dsn.content.decode()
    assert "Status: 5.7.1" in text
    assert "rejected by the recipient's Sieve filter: no offers, thanks" in text
    assert "Final-Recipient: rfc822; alice@example.test" in text
    with mx.imap("alice@example.test") as client:
        assert "a great offer" not in subjects(fetch(client, "INBOX"))


def test_redirect_goes_to_the_sink_from_an_srs_sender(mx: Mx) -> None:
    mx.send("friend@far.test", "alice@example.test", "please pass on")
    (copy,) = mx.wait(lambda: mx.received("dan@far.test"), "the redirected copy")
    assert re.fullmatch(r"SRS0=[^@]+=far\.test=friend@example\.test", copy.mail_from)
    parsed = email.message_from_bytes(copy.content)
    assert parsed["Subject"] == "please pass on"
    assert parsed["From"] == "friend@far.test"
    # Redirect without :copy cancels the implicit keep.
    mx.wait(mx.queue_empty, "the queue to empty")
    with mx.imap("alice@example.test") as client:
        assert "please pass on" not in subjects(fetch(client, "INBOX"))


def test_vacation_answers_once_signed_and_auto_submitted(mx: Mx) -> None:
    mx.send("vic@far.test", "alice@example.test", "holiday plans?")
    (reply,) = mx.wait(lambda: mx.received("vic@far.test"), "the vacation reply")
    assert reply.mail_from in ("", "<>")
    parsed = email.message_from_bytes(reply.content, policy=email.policy.default)
    assert parsed["Auto-Submitted"].startswith("auto-replied")
    assert parsed["Subject"] == "Away"
    assert parsed["DKIM-Signature"] is not None
    assert "d=example.test" in parsed["DKIM-Signature"]
    assert "I am away until Monday." in parsed.get_content()
    # A second message from the same sender: stored, no second reply. The reply would
    # be queued before the copy is stored, so once the copy shows and the queue is
    # empty, none is coming.
    mx.send("vic@far.test", "alice@example.test", "holiday again?")
    with mx.imap("alice@example.test") as client:
        mx.wait(lambda: "holiday again?" in subjects(fetch(client, "INBOX")), "the second message")
    mx.wait(mx.queue_empty, "the queue to empty")
    assert len(mx.received("vic@far.test")) == 1
    assert "sent vacation response to <vic@far.test>" in mx.log


def test_a_user_without_a_script_gets_mail_straight_into_inbox(mx: Mx) -> None:
    qid = mx.send("someone@far.test", "bob@example.test", "plain mail")
    # Stored before the 250, by the SMTP process, as before Sieve existed: no waiting.
    if mx.dsn is None:
        new = mx.data_dir / "mail" / "example.test" / "bob" / "new"
        assert len(list(new.iterdir())) == 1
    else:
        assert len(inbox_rows(mx.dsn, "bob@example.test")) == 1
    assert re.search(
        rf"{qid}: from=<someone@far.test>, to=<bob@example.test>,.* relay=local", mx.log
    )
    assert f"{qid}: from=<someone@far.test>, client=" not in mx.log  # never queued


def test_sieve_before_files_spam_into_junk(tmp_path: pathlib.Path, backend_dsn: str | None) -> None:
    with running(tmp_path / "mx", before=BEFORE, dsn=backend_dsn) as server:
        server.send("spammer@far.test", "carol@example.test", "cheap", extra="X-Spam-Flag: YES\r\n")
        server.send("friend@far.test", "carol@example.test", "lunch?")
        with server.imap("carol@example.test") as client:
            junk = server.wait(lambda: fetch(client, "Junk"), "the spam in Junk")
            assert subjects(junk) == ["cheap"]
            inbox = server.wait(lambda: fetch(client, "INBOX"), "the other in INBOX")
            assert subjects(inbox) == ["lunch?"]
        # Users without scripts of their own: still through the queue, for the site's.
        assert "sieve.before" not in server.log  # no "not in force" warning


def test_mail_queued_for_the_scripts_survives_kill_9(
    tmp_path: pathlib.Path, backend_dsn: str | None
) -> None:
    # Acknowledged, then the whole server killed while the runner may be delivering:
    # after the restart every message is in the folder the script names. (A kill between
    # a copy stored and the queue's note of it may store that one twice, never none.)
    count = 20
    # On PostgreSQL the restarted server is another node: a claim the killed one kept
    # is delivered once its lease ends (KILLED_LEASE).
    with running(tmp_path / "mx", dsn=backend_dsn, lease=KILLED_LEASE) as server:
        alice = MailboxId(domain="example.test", local="alice")
        scripts = server.scripts()
        scripts.put(
            alice, "file", b'require ["fileinto", "mailbox"];\r\nfileinto :create "Kept";\r\n'
        )
        scripts.activate(alice, "file")
        for n in range(count):
            server.send("app@far.test", "alice@example.test", f"m{n}")
        # Killed once the runner is at work: some copies stored, others queued or on
        # their way to the folder.
        server.wait(lambda: "stored mail into mailbox 'Kept'" in server.log, "a delivery")
        server.stop(kill=True)
        server.start()
        wanted = {f"m{n}" for n in range(count)}
        with server.imap("alice@example.test") as client:
            server.wait(lambda: set(subjects(fetch(client, "Kept"))) >= wanted, "every message")
            server.wait(server.queue_empty, "the queue to empty")
            assert set(subjects(fetch(client, "Kept"))) == wanted
            assert subjects(fetch(client, "INBOX")) == []
