"""sansmail.sessions.smtpd without sockets: the session over a real Maildir, queue, users
file and aliases file in tmp_path, driven by a synchronous loop that feeds the core bytes
and calls the session as an adapter does (blocking calls inline). Bytes in; replies, files
and log lines out. The tests of local delivery run on both backends too (`backend_db`:
None for Maildir, else the `pg_db` database)."""

from __future__ import annotations

import email
import logging
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import pytest
from argon2 import PasswordHasher

from sansmail import NEED_DATA, PAUSED, smtp
from sansmail.config import Config
from sansmail.mail.address import MailboxId, parse_address
from sansmail.mail.auth import AuthService, AuthSettings
from sansmail.mail.dnsquery import DnsAnswer, DnsQuery, DnsStatus, drive
from sansmail.sessions.login import BLOCKING, FINISHED
from sansmail.sessions.smtpd import (
    Check,
    Errand,
    Lookup,
    SessionView,
    SmtpService,
    SmtpSession,
    Stage,
    Storing,
    Verdict,
    store_all,
)
from sansmail.smtp import Reply
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.maildir import Delivery, MaildirStore, MailStore, _maildir
from sansmail.storage.pg import Database
from sansmail.storage.pg._delivery import PgMailStore
from sansmail.storage.queue import QueueStore
from sansmail.storage.users import UserStore

STAGES = {smtp.Hello: Stage.HELO, smtp.Mail: Stage.MAIL, smtp.Rcpt: Stage.RCPT}
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
NOW = 1_700_000_000.0
STRANGER = "192.0.2.7"  # outside mynetworks
TRUSTED = "127.0.0.1"
MESSAGE = b"From: a@example.org\r\nSubject: hello\r\n\r\nbody line\r\n..dotted\r\n"
REFUSAL = Reply(code=550, lines="refused by policy", enhanced="5.7.1")
PLAIN_ALICE = "AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ="  # alice@example.test/secret


class Server:
    """One server's storage in `root`, and what its SMTP sessions share."""

    def __init__(
        self,
        root: pathlib.Path,
        *,
        service: str = "smtp",
        checks: Sequence[Check] = (),
        store: MailStore | None = None,
        db: Database | None = None,
    ) -> None:
        (root / "aliases").write_text("info: alice, outside@far.test\n")
        self.root = root
        self.db = db
        if store is None and db is not None:
            store = PgMailStore(db, hostname="mx.example.test")
        self.config = Config(
            source=None,
            hostname="mx.example.test",
            domains=("example.test",),
            data_dir=root,
            aliases=root / "aliases",
        )
        self.queue = QueueStore(root / "queue")
        users = UserStore(root / "users.json", hasher=FAST)
        users.add(parse_address("alice@example.test"), "secret")
        self.shared = SmtpService(
            config=self.config,
            store=store or MaildirStore(root, hostname="mx.example.test"),
            users=users,
            queue=self.queue,
            aliases=AliasSource(root / "aliases"),
            auth=AuthService(
                users, secret=b"s" * 32, settings=AuthSettings(exempt=self.config.mynetworks)
            ),
            srs_key=b"k" * 32,
            service=service,
            checks=checks,
        )
        self.log: list[tuple[int, str]] = []

    def session(
        self,
        client_ip: str = STRANGER,
        *,
        tls: str | None = None,
        resolve: Callable[[DnsQuery], DnsAnswer] | None = None,
    ) -> Client:
        session = SmtpSession(
            self.shared,
            client_ip=client_ip,
            client_port=40000,
            log=lambda level, text: self.log.append((level, text)),
            tls=tls,
        )
        return Client(session, resolve=resolve)

    def messages(self, local: str) -> list[bytes]:
        """What `local`'s INBOX holds, with LF line ends (as a Maildir keeps it)."""
        if self.db is not None:
            with self.db.transaction() as cur:
                cur.execute(
                    "SELECT c.content FROM mail_messages m"
                    " JOIN mail_folders f ON f.id = m.folder_id"
                    " JOIN mail_contents c ON c.digest = m.digest"
                    " WHERE f.mailbox = %s AND f.name = 'INBOX' ORDER BY m.uid",
                    (f"{local}@example.test",),
                )
                return [bytes(c).replace(b"\r\n", b"\n") for (c,) in cur.fetchall()]
        new = self.root / "mail" / "example.test" / local / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []

    def queued(self) -> list[str]:
        return sorted(m.queue_id for m in self.queue.list())

    def lines(self) -> list[str]:
        return [text for _level, text in self.log]


@pytest.fixture(params=["maildir", "postgresql"])
def backend_db(request: pytest.FixtureRequest) -> Database | None:
    """None (Maildir), or the database of the PostgreSQL store."""
    return request.getfixturevalue("pg_db") if request.param == "postgresql" else None  # type: ignore[no-any-return]


class Client:
    """The adapter's loop, synchronous: what `sansmail_trio._smtp_server` does, with the
    blocking calls inline and no clock (NOW)."""

    def __init__(
        self, session: SmtpSession, *, resolve: Callable[[DnsQuery], DnsAnswer] | None = None
    ) -> None:
        self.session = session
        #: Answers the checks' DNS questions (none: every name is unknown).
        self.resolve = resolve or (lambda _query: DnsAnswer(DnsStatus.NXDOMAIN))
        self.out = bytearray()
        self.queued: list[str] = []
        self.inquire(Stage.CONNECT)
        self.greeting = session.conn.send(session.greeting())
        #: Hold ended messages (`session.finish`) for a group commit instead of
        #: committing each at once; `answer` then sends the reply to one.
        self.holding = False
        self.held: list[Storing] = []

    def _send(self, reply: Reply) -> None:
        self.out += self.session.conn.send(reply)

    def say(self, data: bytes | str) -> bytes:
        """Send `data` (str lines get CRLF) and return everything the server answered."""
        if isinstance(data, str):
            data = data.encode() + b"\r\n"
        session = self.session
        session.conn.receive_data(data)
        while not session.ended:
            event = session.conn.next_event()
            if event is NEED_DATA:
                break
            assert event is not PAUSED
            if isinstance(event, smtp.MessageData):
                if session.content(event.data, NOW):
                    session.flush()
            elif isinstance(event, smtp.EndOfMessage):
                self.inquire(Stage.END_OF_DATA)
                if self.holding:
                    job = session.finish(NOW)
                    if isinstance(job, Storing):
                        self.held.append(job)  # the core waits for its reply
                        break
                    committed = job
                else:
                    committed = session.commit(NOW)
                self.queued += committed.queued
                self._send(committed.reply)
            elif isinstance(event, smtp.Auth):
                self._auth(event)
            else:
                stage = STAGES.get(type(event))
                if stage is not None:
                    self.inquire(stage, event)
                reply = session.handle(event, NOW)
                if reply is not None:
                    self._send(reply)
            if session.cleanup_due:
                session.cleanup()
        out, self.out = bytes(self.out), bytearray()
        return out

    def inquire(self, stage: Stage, command: smtp.Event | None = None) -> None:
        """What an adapter does before a stage: answer the checks' DNS questions, run
        their errands (no milters here)."""
        for inquiry in self.session.inquiries(stage, command, NOW):
            if isinstance(inquiry, Lookup):
                inquiry.deliver(drive(inquiry.check, self.resolve))
            elif isinstance(inquiry, Errand):
                inquiry.run()
            else:
                raise AssertionError(f"no conversation in this adapter: {inquiry}")

    def _auth(self, event: smtp.Auth) -> None:
        # Initial-response mechanisms only: no challenge is ever sent here.
        session = self.session
        assert session.login_refusal(event) is None
        login = session.login()
        if not login.gate(0.0).allowed:
            self._send(session.throttled(event))
            return
        exchange = session.exchange(event, login, nonce="nonce", now=NOW)
        step = exchange.start()
        while step is not FINISHED:
            assert step is BLOCKING
            step = exchange.work()
        reply = session.login_result(event, exchange.finish(0.0), None)
        assert reply is not None
        self._send(reply)

    def answer(self, job: Storing) -> bytes:
        """The reply to a held message, once `store_all` has run on it."""
        committed = self.session.stored(job)
        self.queued += committed.queued
        return self.session.conn.send(committed.reply)

    def transaction(self, sender: str, *recipients: str, content: bytes = MESSAGE) -> bytes:
        self.say("EHLO client.example")
        self.say(f"MAIL FROM:<{sender}>")
        for rcpt in recipients:
            self.say(f"RCPT TO:<{rcpt}>")
        self.say("DATA")
        return self.say(content + b".\r\n")


def codes(answer: bytes) -> list[bytes]:
    return [line[:3] for line in answer.split(b"\r\n") if line and line[3:4] == b" "]


def test_local_delivery_is_stored_before_the_250(
    tmp_path: pathlib.Path, backend_db: Database | None
) -> None:
    server = Server(tmp_path, db=backend_db)
    client = server.session()
    assert client.greeting.startswith(b"220 mx.example.test ESMTP")
    answer = client.transaction("a@example.org", "alice@example.test")
    assert answer.startswith(b"250 2.0.0 Ok: queued as ")
    [stored] = server.messages("alice")
    head, _, body = stored.partition(b"\n\n")
    assert head.startswith(b"Return-Path: <a@example.org>\nReceived: from client.example")
    assert body == b"body line\n.dotted\n"  # Maildir keeps LF; the dot unstuffed
    assert server.queued() == []
    assert any("relay=local" in line and "status=sent" in line for line in server.lines())


def test_unknown_user_and_relay_attempt_are_refused_and_logged(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    client = server.session()
    client.say("EHLO client.example")
    client.say("MAIL FROM:<a@example.org>")
    assert client.say("RCPT TO:<nobody@example.test>").startswith(b"550 5.1.1")
    assert client.say("RCPT TO:<x@far.test>").startswith(b"554 5.7.1")
    rejected = [line for line in server.lines() if "status=rejected" in line]
    assert len(rejected) == 2
    assert "to=<nobody@example.test>" in rejected[0]
    assert client.say("DATA").startswith(b"554")  # no valid recipient
    assert server.queued() == []


def test_trusted_client_relays_through_the_queue(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    client = server.session(TRUSTED)
    answer = client.transaction("a@example.org", "x@far.test", "alice@example.test")
    assert answer.startswith(b"250 ")
    assert server.queued() == client.queued
    [qid] = client.queued
    envelope = server.queue.load(qid)
    assert [r.address for r in envelope.recipients] == ["x@far.test"]
    assert envelope.arrival == NOW
    # The queued copy has no Return-Path (added at final delivery), the local one has.
    content = server.queue.read_message(qid)
    assert content.startswith(b"Received: ")
    assert server.messages("alice")[0].startswith(b"Return-Path: <a@example.org>\n")


def test_alias_forwards_with_an_srs_sender(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    client = server.session()
    assert client.transaction("bob@sender.example", "info@example.test").startswith(b"250 ")
    [qid] = client.queued
    envelope = server.queue.load(qid)
    assert envelope.sender.startswith("SRS0=")
    assert envelope.sender.endswith("@example.test")
    assert envelope.recipients[0].orcpt == "rfc822;info@example.test"
    assert len(server.messages("alice")) == 1


def test_submission_requires_auth_and_own_sender(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path, service="submission")
    client = server.session(tls="TLSv1.3 TLS_AES_256_GCM_SHA384")
    client.say("EHLO client.example")
    assert client.say("MAIL FROM:<alice@example.test>").startswith(b"530 5.7.0")
    assert client.say(PLAIN_ALICE).startswith(b"235 2.7.0")
    assert client.say("MAIL FROM:<mallory@example.test>").startswith(b"553 5.7.1")
    assert client.say("MAIL FROM:<alice+list@example.test>").startswith(b"250")
    assert client.say("RCPT TO:<x@far.test>").startswith(b"250")
    assert any("authenticated as <alice@example.test> (PLAIN)" in x for x in server.lines())


def test_wrong_password_is_logged_for_fail2ban(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path, service="submission")
    client = server.session(tls="TLSv1.3 TLS_AES_256_GCM_SHA384")
    client.say("EHLO client.example")
    wrong = "AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB3cm9uZw=="
    assert client.say(wrong).startswith(b"535 5.7.8")
    assert (
        "auth failed: service=submission, method=PLAIN, user=<alice@example.test>,"
        " rip=192.0.2.7" in server.lines()
    )


def test_smtputf8_return_path_keeps_the_address_as_given(
    tmp_path: pathlib.Path, backend_db: Database | None
) -> None:
    # RFC 6531 §3.7, as Postfix does: no conversion to A-labels in Return-Path.
    server = Server(tmp_path, db=backend_db)
    client = server.session()
    client.say("EHLO client.example")
    assert client.say("MAIL FROM:<jörg@bücher.example> SMTPUTF8").startswith(b"250")
    client.say("RCPT TO:<alice@example.test>")
    client.say("DATA")
    assert client.say(MESSAGE + b".\r\n").startswith(b"250")
    [stored] = server.messages("alice")
    assert stored.startswith("Return-Path: <jörg@bücher.example>\n".encode())


def test_headers_split_anywhere_are_stored_exactly(
    tmp_path: pathlib.Path, backend_db: Database | None
) -> None:
    server = Server(tmp_path, db=backend_db)
    client = server.session()
    client.say("EHLO client.example")
    client.say("MAIL FROM:<a@example.org>")
    client.say("RCPT TO:<alice@example.test>")
    client.say("DATA")
    data = MESSAGE + b".\r\n"
    answers = b"".join(client.say(data[i : i + 1]) for i in range(len(data)))
    assert answers.startswith(b"250 ")
    [stored] = server.messages("alice")
    assert stored.endswith(b"\n\nFrom: a@example.org\nSubject: hello\n\nbody line\n.dotted\n"[1:])


def test_rset_after_content_started_removes_the_files(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    client = server.session(TRUSTED)
    client.say("EHLO client.example")
    client.say("MAIL FROM:<a@example.org>")
    client.say("RCPT TO:<alice@example.test>")
    client.say("RCPT TO:<x@far.test>")
    client.say("DATA")
    # A message bigger than the spill threshold is on disk before its end.
    client.say(b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n")
    client.say((b"y" * 998 + b"\r\n") * 1100)
    tmp_files = list((tmp_path / "mail").rglob("tmp/*")) + list((tmp_path / "queue").rglob("*"))
    assert any(p.is_file() for p in tmp_files)
    client.session.closed()  # the connection drops mid-DATA
    client.session.cleanup()
    assert not any(p.is_file() for p in (tmp_path / "mail").rglob("tmp/*"))
    assert server.queued() == []
    assert server.messages("alice") == []


@attrs.define
class Refuse:
    """A check that refuses at one stage and records what it saw."""

    stage: Stage | None
    reply: Reply = attrs.field(factory=lambda: REFUSAL)
    fields: tuple[tuple[str, str], ...] = ()
    seen: list[tuple[Stage, str | None, bytes]] = attrs.Factory(list)

    def check(self, stage: Stage, session: SessionView) -> Verdict | None:
        tx = session.transaction
        headers = bytes(tx.headers) if tx is not None and stage is Stage.END_OF_HEADERS else b""
        self.seen.append((stage, session.helo or None, headers))
        if stage is self.stage:
            return Verdict(source="test-check", reply=self.reply)
        if self.fields and stage is Stage.END_OF_HEADERS:
            return Verdict(source="tagger", header_fields=self.fields)
        return None


@pytest.mark.parametrize("stage", [Stage.HELO, Stage.MAIL, Stage.RCPT])
def test_a_check_refuses_the_command_at_its_stage(tmp_path: pathlib.Path, stage: Stage) -> None:
    check = Refuse(stage)
    server = Server(tmp_path, checks=[check])
    client = server.session()
    answers = [
        client.say("EHLO client.example"),
        client.say("MAIL FROM:<a@example.org>"),
        client.say("RCPT TO:<alice@example.test>"),
    ]
    index = [Stage.HELO, Stage.MAIL, Stage.RCPT].index(stage)
    # Before a successful EHLO there are no enhanced status codes (RFC 2034 §3).
    refusal = b"550 refused by policy" if stage is Stage.HELO else b"550 5.7.1 refused by policy"
    assert answers[index].startswith(refusal)
    assert all(a.startswith(b"250") for a in answers[:index])
    assert any(f"{stage.value} refused by test-check" in line for line in server.lines())


def test_a_check_refuses_the_connection(tmp_path: pathlib.Path) -> None:
    check = Refuse(Stage.CONNECT, reply=Reply(code=554, lines="go away", enhanced="5.7.1"))
    client = Server(tmp_path, checks=[check]).session()
    # No enhanced status code before EHLO has offered them (RFC 2034 §3).
    assert client.greeting == b"554 go away\r\n"
    assert client.session.ended


@pytest.mark.parametrize("stage", [Stage.END_OF_HEADERS, Stage.END_OF_DATA])
def test_a_check_refuses_the_message_and_nothing_is_kept(
    tmp_path: pathlib.Path, stage: Stage, backend_db: Database | None
) -> None:
    check = Refuse(stage)
    server = Server(tmp_path, checks=[check], db=backend_db)
    client = server.session(TRUSTED)
    answer = client.transaction("a@example.org", "alice@example.test", "x@far.test")
    assert answer.startswith(b"550 5.7.1 refused by policy")
    assert server.messages("alice") == []
    assert server.queued() == []
    assert not any(p.is_file() for p in (tmp_path / "mail").rglob("tmp/*"))
    seen = [(s, headers) for s, _helo, headers in check.seen if s is Stage.END_OF_HEADERS]
    assert seen == [(Stage.END_OF_HEADERS, b"From: a@example.org\r\nSubject: hello\r\n\r\n")]
    rejected = [line for line in server.lines() if "status=rejected" in line]
    assert len(rejected) == 2


def test_header_fields_from_checks_are_stored_above_received(
    tmp_path: pathlib.Path, backend_db: Database | None
) -> None:
    fields = (("Authentication-Results", "mx.example.test; spf=pass"),)
    server = Server(tmp_path, db=backend_db, checks=[Refuse(None, fields=fields)])
    client = server.session(TRUSTED)
    assert client.transaction("a@example.org", "alice@example.test", "x@far.test").startswith(
        b"250"
    )
    [stored] = server.messages("alice")
    assert stored.startswith(
        b"Return-Path: <a@example.org>\n"
        b"Authentication-Results: mx.example.test; spf=pass\nReceived: "
    )
    [qid] = client.queued
    assert server.queue.read_message(qid).startswith(
        b"Authentication-Results: mx.example.test; spf=pass\r\nReceived: "
    )


def test_verdicts_are_checked_on_construction() -> None:
    with pytest.raises(ValueError, match="4xx or 5xx"):
        Verdict(source="x", reply=Reply(code=250, lines="Ok"))
    with pytest.raises(ValueError, match="CR or LF"):
        Verdict(source="x", header_fields=[("X-Spam", "yes\r\nBcc: victim@example.org")])
    with pytest.raises(ValueError, match="not a header field name"):
        Verdict(source="x", header_fields=[("X Spam", "yes")])


@attrs.define
class BrokenStore:
    """A mail store whose commit fails as a full disk would."""

    inner: MaildirStore

    def begin(self, mailboxes: Sequence[MailboxId], *, prefix: bytes) -> Delivery:
        delivery = self.inner.begin(mailboxes, prefix=prefix)

        def commit() -> list[str]:
            delivery.abort()
            raise OSError(28, "No space left on device")

        delivery.commit = commit  # type: ignore[method-assign]
        return delivery

    def commit_many(self, deliveries: Sequence[Delivery]) -> list[list[str] | OSError]:
        return [OSError(28, "No space left on device") for _ in deliveries]

    def maildir(self, mailbox: MailboxId) -> pathlib.Path:
        return self.inner.maildir(mailbox)


def test_a_failed_local_commit_takes_back_the_queued_copy(tmp_path: pathlib.Path) -> None:
    store = BrokenStore(MaildirStore(tmp_path, hostname="mx.example.test"))
    server = Server(tmp_path, store=store)
    client = server.session(TRUSTED)
    answer = client.transaction("a@example.org", "alice@example.test", "x@far.test")
    assert answer.startswith(b"452 4.3.1")
    assert server.queued() == []  # the client will retry: no second relay
    assert any(
        level == logging.ERROR and "status=deferred (cannot store" in text
        for level, text in server.log
    )


def test_session_log_brackets_the_connection(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    client = server.session()
    client.say("EHLO client.example")
    client.say("NOOP")
    assert client.say("QUIT").startswith(b"221")
    client.session.closed()
    lines = server.lines()
    assert lines[0] == "connect from [192.0.2.7]:40000"
    assert lines[-1] == "disconnect from [192.0.2.7]:40000 ehlo=1 noop=1 quit=1 commands=3"


def test_timeout_and_shutdown_replies(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    session = server.session().session
    assert session.timeout == server.config.smtp.command_timeout
    assert session.timeout_reply().code == 421
    assert session.shutdown_reply().enhanced == "4.3.2"
    assert "timeout after CONNECT from [192.0.2.7]:40000" in server.lines()


def test_email_parses_what_was_stored(tmp_path: pathlib.Path, backend_db: Database | None) -> None:
    server = Server(tmp_path, db=backend_db)
    client = server.session()
    client.transaction("a@example.org", "alice@example.test")
    [stored] = server.messages("alice")
    parsed = email.message_from_bytes(stored)
    assert parsed["Subject"] == "hello"
    assert "for <alice@example.test>" in " ".join(parsed["Received"].split())


def test_header_fields_at_the_end_of_data_are_refused_loudly(tmp_path: pathlib.Path) -> None:
    # The store cannot put fields above content it has written; a check must not think
    # it tagged a message it did not.
    @attrs.define
    class Late:
        def check(self, stage: Stage, session: SessionView) -> Verdict | None:
            if stage is Stage.END_OF_DATA:
                return Verdict(source="late", header_fields=[("X-Late", "yes")])
            return None

    server = Server(tmp_path, checks=[Late()])
    client = server.session()
    client.say("EHLO client.example")
    client.say("MAIL FROM:<a@example.org>")
    client.say("RCPT TO:<alice@example.test>")
    client.say("DATA")
    with pytest.raises(ValueError, match="header fields at end-of-data"):
        client.say(MESSAGE + b".\r\n")


def test_messages_that_end_together_are_committed_together(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = Server(tmp_path)
    clients = [server.session(TRUSTED) for _ in range(3)]
    for client in clients:
        client.holding = True
        assert client.transaction("a@example.org", "alice@example.test") == b""  # held
    jobs = [job for client in clients for job in client.held]
    assert len(jobs) == 3
    assert server.messages("alice") == []  # nothing is stored before store_all
    synced: list[str] = []
    real = _maildir._fsync_dir

    def rec(path: str) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(_maildir, "_fsync_dir", rec)
    store_all(jobs)
    assert synced.count(str(tmp_path / "mail" / "example.test" / "alice" / "new")) == 1
    for client, job in zip(clients, jobs, strict=True):
        assert client.answer(job).startswith(b"250 2.0.0 Ok: queued as ")
    assert len(server.messages("alice")) == 3
    assert sum("status=sent" in line for line in server.lines()) == 3


def test_relayed_messages_that_end_together_share_the_queue_directory_sync(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = Server(tmp_path)
    clients = [server.session(TRUSTED) for _ in range(3)]
    for client in clients:
        client.holding = True
        client.transaction("a@example.org", "x@far.test", "alice@example.test")
    jobs = [job for client in clients for job in client.held]
    events: list[str] = []
    real_sync = QueueStore.sync

    def queue_sync(self: QueueStore) -> None:
        events.append("queue sync")
        real_sync(self)

    real_commit_many = MaildirStore.commit_many

    def commit_many(self: MaildirStore, deliveries: Sequence[Delivery]) -> Any:
        events.append("local commit")
        return real_commit_many(self, deliveries)

    monkeypatch.setattr(QueueStore, "sync", queue_sync)
    monkeypatch.setattr(MaildirStore, "commit_many", commit_many)
    store_all(jobs)
    # One directory sync for the three queue files, before any local delivery, so a
    # failed local commit can still take the queued copies back.
    assert events == ["queue sync", "local commit"]
    for client, job in zip(clients, jobs, strict=True):
        assert client.answer(job).startswith(b"250 2.0.0")
    assert len(server.queued()) == 3
    assert len(server.messages("alice")) == 3


def test_a_failed_queue_directory_sync_fails_every_message_of_the_batch(
    tmp_path: pathlib.Path, backend_db: Database | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = Server(tmp_path, db=backend_db)
    clients = [server.session(TRUSTED) for _ in range(2)]
    for client in clients:
        client.holding = True
        client.transaction("a@example.org", "x@far.test", "alice@example.test")
    jobs = [job for client in clients for job in client.held]

    def broken_sync(self: QueueStore) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(QueueStore, "sync", broken_sync)
    store_all(jobs)
    for client, job in zip(clients, jobs, strict=True):
        assert client.answer(job).startswith(b"451 4.3.0")
    assert server.queued() == []
    assert server.messages("alice") == []


def test_a_failure_in_a_group_commit_stays_with_its_own_transaction(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = Server(tmp_path)
    good, bad = server.session(TRUSTED), server.session(TRUSTED)
    for client, subject in ((good, b"good"), (bad, b"bad")):
        client.holding = True
        client.transaction(
            "a@example.org",
            "alice@example.test",
            "x@far.test",
            content=b"Subject: " + subject + b"\r\n\r\nbody\r\n",
        )
    (good_job,), (bad_job,) = good.held, bad.held
    bad_delivery = bad_job.transaction.delivery
    assert bad_delivery is not None
    bad_delivery.flush()  # its tmp file exists, and its fsync will fail
    [doomed] = os.listdir(tmp_path / "mail" / "example.test" / "alice" / "tmp")
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(doomed):
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store_all([good_job, bad_job])
    assert good.answer(good_job).startswith(b"250 2.0.0")
    assert bad.answer(bad_job).startswith(b"452 4.3.1")
    [stored] = server.messages("alice")
    assert b"Subject: good" in stored
    # The good transaction's queue copy stays; the bad one's was taken back.
    assert server.queued() == [good_job.transaction.queue_id]
    assert not list((tmp_path / "mail").rglob("tmp/*"))
    assert any(
        level == logging.ERROR and "status=deferred (cannot store: [Errno 28]" in text
        for level, text in server.log
    )


def test_messages_that_end_together_are_all_stored(
    tmp_path: pathlib.Path, backend_db: Database | None
) -> None:
    server = Server(tmp_path, db=backend_db)
    clients = [server.session(TRUSTED) for _ in range(3)]
    for n, client in enumerate(clients):
        client.holding = True
        content = b"Subject: %d\r\n\r\nbody\r\n" % n
        assert client.transaction("a@example.org", "alice@example.test", content=content) == b""
    jobs = [job for client in clients for job in client.held]
    assert server.messages("alice") == []  # nothing is stored before store_all
    store_all(jobs)
    for client, job in zip(clients, jobs, strict=True):
        assert client.answer(job).startswith(b"250 2.0.0 Ok: queued as ")
    subjects = [m.partition(b"\nSubject: ")[2][:1] for m in server.messages("alice")]
    assert sorted(subjects) == [b"0", b"1", b"2"]


def _poison(db: Database, marker: bytes) -> None:
    # The database refuses any content holding `marker`, as a constraint would.
    with db.transaction() as cur:
        cur.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF position('\\x{marker.hex()}'::bytea IN NEW.content) > 0 THEN"
            " RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$"
        )
        cur.execute(
            "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON mail_contents"
            " FOR EACH ROW EXECUTE FUNCTION refuse()"
        )


def test_a_database_failure_in_a_group_commit_stays_with_its_own_transaction(
    tmp_path: pathlib.Path, pg_db: Database
) -> None:
    server = Server(tmp_path, db=pg_db)
    _poison(pg_db, b"Subject: bad")
    good, bad = server.session(TRUSTED), server.session(TRUSTED)
    for client, subject in ((good, b"good"), (bad, b"bad")):
        client.holding = True
        client.transaction(
            "a@example.org",
            "alice@example.test",
            "x@far.test",
            content=b"Subject: " + subject + b"\r\n\r\nbody\r\n",
        )
    (good_job,), (bad_job,) = good.held, bad.held
    store_all([good_job, bad_job])
    assert good.answer(good_job).startswith(b"250 2.0.0")
    assert bad.answer(bad_job).startswith(b"451 4.3.0")
    [stored] = server.messages("alice")
    assert b"Subject: good" in stored
    # The good transaction's queue copy stays; the bad one's was taken back.
    assert server.queued() == [good_job.transaction.queue_id]
    assert any(
        level == logging.ERROR and "status=deferred (cannot store: database:" in text
        for level, text in server.log
    )


def test_a_lost_database_connection_is_a_451_and_nothing_is_kept(
    tmp_path: pathlib.Path, pg_db: Database
) -> None:
    server = Server(tmp_path, db=pg_db)
    client = server.session(TRUSTED)
    assert client.transaction("a@example.org", "alice@example.test").startswith(b"250")
    with pg_db.connect(autocommit=True) as conn:  # a failover: every connection drops
        conn.execute(
            "SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    answer = client.transaction("a@example.org", "alice@example.test", "x@far.test")
    assert answer.startswith(b"451 4.3.0")
    assert server.queued() == []  # the relayed copy was taken back: the client retries
    assert len(server.messages("alice")) == 1
    assert client.transaction("a@example.org", "alice@example.test").startswith(b"250")
    assert len(server.messages("alice")) == 2


class _Guarded:
    """A user store that counts its lookups and refuses them while `closed`."""

    def __init__(self, users: Any) -> None:
        self._users = users
        self.closed = False
        self.calls = 0

    def __contains__(self, key: object) -> bool:
        assert not self.closed, "a user lookup after look_up"
        self.calls += 1
        return key in self._users

    def __getattr__(self, name: str) -> Any:
        return getattr(self._users, name)


def test_look_up_makes_the_rcpt_lookups_so_that_handle_blocks_on_nothing(
    tmp_path: pathlib.Path,
) -> None:
    # What the PostgreSQL backend's adapter relies on: after `look_up` (run in a worker
    # thread), RCPT's inquiries and handling ask no store again.
    server = Server(tmp_path)
    users = _Guarded(server.shared.users)
    asked: list[str] = []

    def store_call(what: str) -> Callable[[MailboxId], bool]:
        def call(mailbox: MailboxId) -> bool:
            assert not users.closed, f"{what} asked after look_up"
            asked.append(what)
            return False

        return call

    server.shared = attrs.evolve(
        server.shared,
        users=users,
        sieve_wants=store_call("sieve"),
        mailbox_full=store_call("quota"),
    )
    client = server.session(TRUSTED)
    client.say("EHLO client.example")
    client.say("MAIL FROM:<someone@far.test>")
    session = client.session
    for rcpt, expected in [("alice@example.test", b"250"), ("nobody@example.test", b"550")]:
        session.conn.receive_data(f"RCPT TO:<{rcpt}>\r\n".encode())
        event = session.conn.next_event()
        assert isinstance(event, smtp.Rcpt)
        session.look_up(event, NOW)
        users.closed = True
        client.inquire(Stage.RCPT, event)
        reply = session.handle(event, NOW)
        users.closed = False
        assert reply is not None
        assert session.conn.send(reply).startswith(expected)
    assert users.calls >= 2
    assert asked == ["quota", "sieve"]  # alice's; nobody has no mailbox to ask about
    # Without look_up, handle asks as it goes (the Maildir backend's way).
    session.conn.receive_data(b"RCPT TO:<alice@example.test>\r\n")
    event = session.conn.next_event()
    assert isinstance(event, smtp.Rcpt)
    reply = session.handle(event, NOW)
    assert reply is not None
    assert asked == ["quota", "sieve", "quota", "sieve"]


class _Behind(_Guarded):
    """A user store that knows of carol only once caught up."""

    caught_up = False

    def __contains__(self, key: object) -> bool:
        return (key == "carol@example.test" and self.caught_up) or super().__contains__(key)


def test_look_up_catches_the_stores_up_before_it_resolves(tmp_path: pathlib.Path) -> None:
    # The PostgreSQL backend's catch_up re-reads a store that changed on another node
    # before its notice came: a RCPT right after `user add` there must see the user.
    server = Server(tmp_path)
    users = _Behind(server.shared.users)

    def catch_up() -> None:
        users.caught_up = True

    server.shared = attrs.evolve(server.shared, users=users, catch_up=catch_up)
    client = server.session(TRUSTED)
    client.say("EHLO client.example")
    client.say("MAIL FROM:<someone@far.test>")
    session = client.session
    session.conn.receive_data(b"RCPT TO:<carol@example.test>\r\n")
    event = session.conn.next_event()
    assert isinstance(event, smtp.Rcpt)
    session.look_up(event, NOW)
    reply = session.handle(event, NOW)
    assert reply is not None
    assert session.conn.send(reply).startswith(b"250")
