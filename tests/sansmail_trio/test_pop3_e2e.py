"""The pop3 and pop3s services end to end: mail delivered by real SMTP, then read and
deleted with poplib over STLS and over implicit TLS, and with Debian's curl; on both
storage backends, but for the tests that rename Maildir files under a session.

The helpers at the top (a server with smtp, pop3 and pop3s; delivery through smtplib; a
byte-level POP3 client) are shared with test_pop3_session.py.
"""

from __future__ import annotations

import imaplib
import pathlib
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import trio
import trio_helpers
import trustme
from trio_helpers import BOTH_BACKENDS, RunningServer, StartServer, maildir_only

from sansmail.config import Config
from sansmail.mail.auth import AuthSettings

pytestmark = BOTH_BACKENDS

POP3_LISTEN = {"smtp": "127.0.0.1:0", "pop3": "127.0.0.1:0", "pop3s": "127.0.0.1:0"}
ALICE = "alice@example.test"


async def pop3_server(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path], **kw: Any
) -> RunningServer:
    kw.setdefault("users", (ALICE, "bob@example.test"))
    return await start_server(tls=tls_files, listen=POP3_LISTEN, **kw)  # type: ignore[no-any-return]


async def deliver(server: RunningServer, *messages: bytes, to: str = ALICE) -> None:
    """Send `messages` to `to` through the server's own SMTP listener."""

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", server.port_of("smtp"), timeout=10) as client:
            for message in messages:
                client.sendmail("sender@example.org", [to], message)

    await trio.to_thread.run_sync(send)


def wire_form(stored: bytes) -> bytes:
    """A stored (LF) message as POP3 sends it."""
    return stored.replace(b"\n", b"\r\n")


def arrival(path: pathlib.Path) -> tuple[int, int, str]:
    """POP3's order: the name's ``<secs>.M<usecs>`` as numbers (the microseconds are not
    zero-padded, so name order is not arrival order), then the name."""
    secs, _, rest = path.name.partition(".M")
    return int(secs), int(rest.partition("P")[0]), path.name


def stored_messages(server: RunningServer, address: str = ALICE) -> list[bytes]:
    """Every message in the INBOX, new/ and cur/, in arrival order (POP3's numbering)."""
    if server.backend == "postgresql":
        return server.new_messages(address)  # every INBOX row, by UID
    root = server.maildir(address)
    paths = [p for sub in ("new", "cur") if (root / sub).exists() for p in (root / sub).iterdir()]
    return [p.read_bytes() for p in sorted(paths, key=arrival)]


class PopClient:
    """A deliberately dumb blocking POP3 client for byte-exact tests (run it in a thread)."""

    opened: ClassVar[list[PopClient]] = []

    def __init__(self, port: int, *, context: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock: socket.socket = (
            context.wrap_socket(sock, server_hostname="127.0.0.1") if context else sock
        )
        self.buf = b""
        PopClient.opened.append(self)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """One line, without its CRLF."""
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; unread: {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.line()

    def body(self) -> bytes:
        """The rest of a multi-line answer, un-stuffed, CRLFs kept, "." line excluded."""
        out = []
        while (line := self.line()) != b".":
            out.append(line[1:] if line.startswith(b".") else line)
        return b"".join(line + b"\r\n" for line in out)

    def start_tls(self, context: ssl.SSLContext) -> None:
        assert not self.buf
        self.sock = context.wrap_socket(self.sock, server_hostname="127.0.0.1")

    def login(self, user: str = ALICE, password: str = "secret") -> bytes:
        assert self.command(b"USER " + user.encode()).startswith(b"+OK")
        return self.command(b"PASS " + password.encode())

    def closed(self) -> bool:
        """True when the server closed the connection (and sent nothing more)."""
        try:
            chunk = self.sock.recv(1)
        except OSError:
            return True
        return chunk == b""

    def close(self) -> None:
        self.sock.close()

    @classmethod
    def close_all(cls) -> None:
        for client in cls.opened:
            client.close()
        cls.opened.clear()


@pytest.fixture(autouse=True)
def _close_pop_clients() -> Iterator[None]:
    yield
    PopClient.close_all()


MESSAGES = [
    b"Subject: first\r\n\r\nHello Alice.\r\n.a line that starts with a dot\r\n",
    b"Subject: second\r\nX-Long: " + b"y" * 900 + b"\r\n\r\n" + b"line\r\n" * 40,
]


def _messages_in(server: RunningServer) -> list[bytes]:
    return stored_messages(server)


def uidls(server: RunningServer, address: str = ALICE) -> list[str]:
    """The UIDLs the INBOX's messages should have, in POP3's order: the Maildir file's
    base name, or Dovecot's ``%08Xu%08Xv`` of the row's UID and folder's UIDVALIDITY."""
    if server.backend == "postgresql":
        rows = server.query(
            "SELECT m.uid, f.uidvalidity FROM mail_messages m"
            " JOIN mail_folders f ON f.id = m.folder_id"
            " WHERE f.mailbox = %s AND f.name = 'INBOX' ORDER BY m.uid",
            (address,),
        )
        return [f"{uid:08X}{uidvalidity:08X}" for uid, uidvalidity in rows]
    return [p.name for p in sorted((server.maildir(address) / "new").iterdir(), key=arrival)]


# --- the "done when" of issue 5 -------------------------------------------------------------


async def test_poplib_over_stls_reads_tops_and_deletes_exactly_at_quit(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await pop3_server(start_server, tls_files)
    await deliver(server, *MESSAGES)
    stored = _messages_in(server)
    assert len(stored) == 2
    names = uidls(server)

    def session() -> dict[str, Any]:
        client = poplib.POP3("127.0.0.1", server.port_of("pop3"), timeout=10)
        seen: dict[str, Any] = {"welcome": client.getwelcome()}
        seen["capa_before"] = client.capa()
        client.stls(context=client_tls)
        seen["capa_after"] = client.capa()
        client.user(ALICE)
        client.pass_("secret")
        seen["stat"] = client.stat()
        seen["list"] = client.list()
        seen["uidl"] = client.uidl()
        seen["uidl1"] = client.uidl(1)
        seen["top"] = client.top(2, 3)
        seen["retr"] = [client.retr(1), client.retr(2)]
        seen["dele"] = client.dele(1)
        seen["files_before_quit"] = len(_messages_in(server))
        seen["stat_after_dele"] = client.stat()
        seen["quit"] = client.quit()
        return seen

    seen = await trio.to_thread.run_sync(session)
    assert seen["welcome"].startswith(b"+OK")
    assert "STLS" in seen["capa_before"]
    assert "STLS" not in seen["capa_after"]  # RFC 2595 §4
    assert "USER" in seen["capa_after"]
    assert seen["capa_after"]["SASL"] == ["PLAIN", "LOGIN", "SCRAM-SHA-256"]
    sizes = [len(wire_form(m)) for m in stored]
    assert seen["stat"] == (2, sum(sizes))
    _resp, listing, _octets = seen["list"]
    assert listing == [b"1 %d" % sizes[0], b"2 %d" % sizes[1]]
    # Exact octets (RFC 1939 §5): the LIST size is what RETR sends, CRLFs counted.
    for (_resp, lines, octets), size, message in zip(seen["retr"], sizes, stored, strict=True):
        assert b"\r\n".join(lines) + b"\r\n" == wire_form(message)
        assert octets == size == len(b"\r\n".join(lines)) + 2
    _resp, uids, _ = seen["uidl"]
    assert uids == [b"1 " + names[0].encode(), b"2 " + names[1].encode()]
    assert seen["uidl1"] == b"+OK 1 " + names[0].encode()
    _resp, top, _ = seen["top"]
    head = wire_form(stored[1]).split(b"\r\n\r\n")[0].split(b"\r\n")
    assert top == [*head, b"", b"line", b"line", b"line"]
    # DELE marks; the file goes only at QUIT.
    assert seen["files_before_quit"] == 2
    assert seen["stat_after_dele"] == (1, sizes[1])
    assert seen["quit"].startswith(b"+OK")
    assert _messages_in(server) == [stored[1]]


async def test_poplib_over_implicit_tls_on_pop3s(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await pop3_server(start_server, tls_files, plaintext_auth="never")
    await deliver(server, *MESSAGES)
    stored = _messages_in(server)

    def session() -> dict[str, Any]:
        client = poplib.POP3_SSL("127.0.0.1", server.port_of("pop3s"), context=client_tls)
        seen: dict[str, Any] = {"capa": client.capa()}
        client.user(ALICE)
        client.pass_("secret")
        seen["list"] = client.list()
        seen["retr"] = client.retr(2)
        seen["top"] = client.top(1, 0)
        client.dele(1)
        client.dele(2)
        seen["rset"] = client.rset()
        client.dele(2)
        seen["quit"] = client.quit()
        return seen

    seen = await trio.to_thread.run_sync(session)
    assert "STLS" not in seen["capa"]  # already TLS
    assert "USER" in seen["capa"]  # TLS: logins allowed even with plaintext_auth = "never"
    _resp, lines, octets = seen["retr"]
    assert b"\r\n".join(lines) + b"\r\n" == wire_form(stored[1])
    assert octets == len(wire_form(stored[1]))
    _resp, top, _ = seen["top"]
    assert b"\r\n".join(top) + b"\r\n" == wire_form(stored[0]).split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert seen["rset"].startswith(b"+OK")
    assert _messages_in(server) == [stored[0]]  # RSET undid the first DELE


# --- mailbox semantics ---------------------------------------------------------------------


async def test_dropped_connection_deletes_nothing_and_in_use_meanwhile(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await pop3_server(start_server, tls_files)
    await deliver(server, *MESSAGES)

    def sessions() -> list[bytes]:
        first = PopClient(server.port_of("pop3"))
        first.line()
        answers = [first.login(), first.command(b"DELE 1"), first.command(b"DELE 2")]
        second = PopClient(server.port_of("pop3"))
        second.line()
        answers.append(second.login())  # the maildrop is locked by the first session
        answers.append(second.command(b"STAT"))  # still AUTHORIZATION
        first.close()  # gone without QUIT
        return answers

    answers = await trio.to_thread.run_sync(sessions)
    assert answers[0].startswith(b"+OK")
    assert answers[1:3] == [b"+OK Message 1 deleted", b"+OK Message 2 deleted"]
    assert answers[3].startswith(b"-ERR [IN-USE] ")
    assert answers[4].startswith(b"-ERR")
    assert len(_messages_in(server)) == 2

    def again() -> bytes:
        # The lock went with the dropped session (give the server a moment to see EOF).
        for _ in range(100):
            client = PopClient(server.port_of("pop3"))
            client.line()
            answer = client.login()
            if not answer.startswith(b"-ERR [IN-USE]"):
                stat = client.command(b"STAT")
                client.command(b"QUIT")
                return stat
            client.close()
            trio.from_thread.run(trio.sleep, 0.05)
        raise AssertionError("the lock was never released")

    assert (await trio.to_thread.run_sync(again)).startswith(b"+OK 2 ")
    assert len(_messages_in(server)) == 2


async def test_mail_delivered_during_a_session_waits_for_the_next(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await pop3_server(start_server, tls_files)
    await deliver(server, MESSAGES[0])
    client = PopClient(server.port_of("pop3"))

    def login() -> list[bytes]:
        client.line()
        return [client.login(), client.command(b"STAT")]

    first = await trio.to_thread.run_sync(login)
    assert first[1].startswith(b"+OK 1 ")
    await deliver(server, MESSAGES[1])  # deliveries are not blocked by the POP3 lock

    def rest() -> list[bytes]:
        answers = [client.command(b"STAT"), client.command(b"LIST 2"), client.command(b"DELE 1")]
        answers.append(client.command(b"QUIT"))
        fresh = PopClient(server.port_of("pop3"))
        fresh.line()
        fresh.login()
        answers.append(fresh.command(b"STAT"))
        fresh.command(b"QUIT")
        return answers

    stat, list2, dele, quit_, fresh = await trio.to_thread.run_sync(rest)
    assert stat.startswith(b"+OK 1 ")
    assert list2.startswith(b"-ERR No such message")
    assert dele.startswith(b"+OK")
    assert quit_.startswith(b"+OK")
    assert fresh.startswith(b"+OK 1 ")  # the new one, alone
    assert [m.split(b"\n")[-3:] for m in _messages_in(server)] == [[b"line", b"line", b""]]


@maildir_only("renames the Maildir file under the session")
async def test_uidl_survives_a_flag_rename_by_an_imap_client(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await pop3_server(start_server, tls_files)
    await deliver(server, *MESSAGES)

    def uidl() -> list[bytes]:
        client = PopClient(server.port_of("pop3"))
        client.line()
        client.login()
        assert client.command(b"UIDL").startswith(b"+OK")
        listing = client.body().split(b"\r\n")[:-1]
        client.command(b"QUIT")
        return listing

    before = await trio.to_thread.run_sync(uidl)
    new = server.maildir(ALICE) / "new"
    first = min(new.iterdir(), key=arrival)
    first.rename(server.maildir(ALICE) / "cur" / (first.name + ":2,S"))
    after = await trio.to_thread.run_sync(uidl)
    assert before == after
    assert before[0] == b"1 " + first.name.encode()


@maildir_only("renames and unlinks Maildir files under the session")
async def test_renamed_during_the_session_is_still_read_and_deleted(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await pop3_server(start_server, tls_files)
    await deliver(server, *MESSAGES)
    stored = _messages_in(server)
    root = server.maildir(ALICE)

    def session() -> list[bytes]:
        client = PopClient(server.port_of("pop3"))
        client.line()
        client.login()
        # An IMAP client flags the first message and expunges the second meanwhile.
        first, second = sorted((root / "new").iterdir(), key=arrival)
        first.rename(root / "cur" / (first.name + ":2,FS"))
        second.unlink()
        answers = [client.command(b"RETR 1"), client.body(), client.command(b"RETR 2")]
        answers += [client.command(b"DELE 1"), client.command(b"DELE 2"), client.command(b"QUIT")]
        return answers

    retr1, body, retr2, dele1, dele2, quit_ = await trio.to_thread.run_sync(session)
    assert retr1.startswith(b"+OK")
    assert body == wire_form(stored[0])
    assert retr2 == b"-ERR Message 2 was removed by another client"
    assert dele1.startswith(b"+OK")
    assert dele2.startswith(b"+OK")
    assert quit_.startswith(b"+OK")  # a message already gone does not fail QUIT
    assert _messages_in(server) == []


async def test_big_message_streams_with_exact_size(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    # 4 MiB with dots at line starts everywhere: byte-stuffing across chunk boundaries.
    body = b"".join(
        b".%07d ........................................................\r\n" % n
        for n in range(60_000)
    )
    server = await pop3_server(start_server, tls_files)
    await deliver(server, b"Subject: big\r\n\r\n" + body)
    (stored,) = _messages_in(server)

    def session() -> tuple[bytes, int, bytes]:
        client = poplib.POP3_SSL("127.0.0.1", server.port_of("pop3s"), context=client_tls)
        client.user(ALICE)
        client.pass_("secret")
        listed = client.list(1)
        _resp, lines, octets = client.retr(1)
        client.quit()
        return listed, octets, b"\r\n".join(lines) + b"\r\n"

    listed, octets, got = await trio.to_thread.run_sync(session)
    assert got == wire_form(stored)
    assert listed == b"+OK 1 %d" % len(got)
    assert octets == len(got)


@pytest.mark.parametrize("no_flag_updates", [False, True], ids=["default", "no_flag_updates"])
async def test_retr_marks_seen_for_imap_at_quit(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    monkeypatch: pytest.MonkeyPatch,
    no_flag_updates: bool,
) -> None:
    if no_flag_updates:
        # The helper writes only [smtp]: the [pop3] table goes in before the file is read.
        real_load = trio_helpers.load_config

        def load_config(path: pathlib.Path, **kw: Any) -> Config:
            path.write_text(path.read_text() + "[pop3]\nno_flag_updates = true\n")
            return real_load(path, **kw)

        monkeypatch.setattr(trio_helpers, "load_config", load_config)
    listen = {**POP3_LISTEN, "imap": "127.0.0.1:0"}
    server = await start_server(tls=tls_files, listen=listen)
    assert server.config.pop3.no_flag_updates is no_flag_updates
    await deliver(server, *MESSAGES)
    stored = _messages_in(server)
    uids = uidls(server)

    def pop3_session() -> tuple[list[bytes], list[bytes]]:
        client = poplib.POP3("127.0.0.1", server.port_of("pop3"), timeout=10)
        client.user(ALICE)
        client.pass_("secret")
        client.retr(1)
        client.top(2, 0)  # TOP marks nothing
        _resp, listing, _ = client.uidl()
        client.quit()
        again = poplib.POP3("127.0.0.1", server.port_of("pop3"), timeout=10)
        again.user(ALICE)
        again.pass_("secret")
        _resp, after, _ = again.uidl()
        again.quit()
        return listing, after

    def imap_flags() -> list[bytes]:
        client = imaplib.IMAP4("127.0.0.1", server.port_of("imap"), timeout=10)
        client.login(ALICE, "secret")
        client.select("INBOX")
        status, data = client.fetch("1:*", "(FLAGS)")
        client.logout()
        assert status == "OK"
        return [item for item in data if isinstance(item, bytes)]

    before, after = await trio.to_thread.run_sync(pop3_session)
    flags = await trio.to_thread.run_sync(imap_flags)
    assert len(flags) == 2
    if no_flag_updates:
        assert not any(b"\\Seen" in item for item in flags)
    else:
        assert b"\\Seen" in flags[0]
        assert b"\\Seen" not in flags[1]
    # UIDL is the base name, the same before and after the rename; content unchanged.
    assert before == after == [b"1 " + uids[0].encode(), b"2 " + uids[1].encode()]
    assert sorted(_messages_in(server)) == sorted(stored)


# --- curl from Debian ---------------------------------------------------------------------

CURL = shutil.which("curl")


@pytest.fixture
def ca_file(tls_ca: trustme.CA, tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    assert CURL is not None
    return subprocess.run(
        [CURL, "--silent", "--show-error", "--max-time", "20", *args],
        capture_output=True,
        timeout=30,
        check=False,
    )


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("tls", [False, True], ids=["plain-loopback", "stls"])
async def test_curl_lists_and_retrieves(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    ca_file: pathlib.Path,
    tls: bool,
) -> None:
    server = await pop3_server(start_server, tls_files)
    await deliver(server, *MESSAGES)
    stored = _messages_in(server)
    url = f"pop3://127.0.0.1:{server.port_of('pop3')}/"
    extra = ["--ssl-reqd", "--cacert", str(ca_file)] if tls else []
    user = ["--user", f"{ALICE}:secret"]

    listing = await trio.to_thread.run_sync(lambda: _curl(*extra, *user, url))
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split(b"\r\n")[:2] == [
        b"1 %d" % len(wire_form(stored[0])),
        b"2 %d" % len(wire_form(stored[1])),
    ]
    retr = await trio.to_thread.run_sync(lambda: _curl(*extra, *user, url + "1"))
    assert retr.returncode == 0, retr.stderr
    assert retr.stdout == wire_form(stored[0])
    # curl's DELE (a custom request on a message) takes effect at its QUIT.
    dele = await trio.to_thread.run_sync(
        lambda: _curl(*extra, *user, "--request", "DELE", "--list-only", url + "2")
    )
    assert dele.returncode == 0, dele.stderr
    assert _messages_in(server) == [stored[0]]


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_curl_pop3s_with_a_wrong_password_fails(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path], ca_file: pathlib.Path
) -> None:
    fast = AuthSettings(failure_delay=0.01, max_failure_delay=0.02)
    server = await pop3_server(start_server, tls_files, auth_settings=fast)
    url = f"pop3s://127.0.0.1:{server.port_of('pop3s')}/"
    result = await trio.to_thread.run_sync(
        lambda: _curl("--cacert", str(ca_file), "--user", f"{ALICE}:wrong", url)
    )
    assert result.returncode == 67  # CURLE_LOGIN_DENIED
