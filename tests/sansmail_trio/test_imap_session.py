"""The IMAP adapter at the byte level: greeting and capabilities by TLS and login state,
STARTTLS injection, AUTHENTICATE (SASL-IR, SCRAM's final challenge, cancel), IDLE
refused, connection caps, and the mail log lines; the autologout timer over a memory
stream on a mock clock. (What the conversation decides is tested without sockets in
tests/sansmail/sessions/imapd/test_conversation.py.)"""

from __future__ import annotations

import base64
import logging
import pathlib
import socket
import ssl
from typing import Any, ClassVar

import pytest
import trio
import trio.testing
from argon2 import PasswordHasher
from test_imap_e2e import ALICE, MESSAGE_1, deliver, imap_server
from trio_helpers import BOTH_BACKENDS, StartServer, logged

from sansmail import sasl
from sansmail.config import Config
from sansmail.mail.address import parse_address
from sansmail.mail.auth import AuthService
from sansmail.sessions.imapd import AUTOLOGOUT, ImapService
from sansmail.storage.maildir import MaildirImapStore
from sansmail.storage.users import UserStore
from sansmail_trio._imap_server import IMAPService

# The tests of a running server (start_server) run on both storage backends.
pytestmark = BOTH_BACKENDS

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class ImapClient:
    """A deliberately dumb blocking IMAP client for byte-exact tests (run it in a thread)."""

    opened: ClassVar[list[ImapClient]] = []

    def __init__(self, port: int, *, context: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock: socket.socket = (
            context.wrap_socket(sock, server_hostname="127.0.0.1") if context else sock
        )
        self.buf = b""
        ImapClient.opened.append(self)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; unread: {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def command(self, line: bytes) -> list[bytes]:
        """Send `line`; the answer's lines up to the tagged (or continuation) one."""
        self.sock.sendall(line + b"\r\n")
        return self.answer(line.split(b" ", 1)[0])

    def answer(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith((tag + b" ", b"+ ", b"* BYE")) or line == b"+":
                return lines

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True


@pytest.fixture(autouse=True)
def _close_clients() -> Any:
    yield
    for client in ImapClient.opened:
        client.sock.close()
    ImapClient.opened.clear()


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


async def test_greeting_and_capabilities_follow_tls_and_login(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await imap_server(start_server, tls_files, plaintext_auth="never")

    def session() -> tuple[bytes, list[bytes], list[bytes]]:
        c = ImapClient(server.port_of("imap"))
        greeting = c.line()
        login = c.command(b"a1 LOGIN alice@example.test secret")
        idle = c.command(b"a2 IDLE")
        return greeting, login, idle

    greeting, login, idle = await trio.to_thread.run_sync(session)
    assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ")
    assert greeting.endswith(b" STARTTLS LOGINDISABLED] mx.example.test IMAP server ready")
    assert b"APPENDLIMIT=26214400" in greeting
    assert login == [b"a1 NO [PRIVACYREQUIRED] Plaintext authentication disallowed: use STARTTLS"]
    assert idle == [b"a2 BAD IDLE is not valid in the NOT_AUTHENTICATED state"]


async def test_login_capabilities_and_logout(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await imap_server(start_server, tls_files)

    def session() -> list[list[bytes]]:
        c = ImapClient(server.port_of("imaps"), context=client_tls)
        c.line()
        return [
            c.command(b"a1 CAPABILITY"),
            c.command(b"a2 LOGIN alice@example.test secret"),
            c.command(b"a3 CAPABILITY"),
            [*c.command(b"a4 IDLE"), *(c.sock.sendall(b"DONE\r\n") or c.answer(b"a4"))],
            c.command(b"a5 STARTTLS"),
            [*c.command(b"a6 LOGOUT"), c.line()],
        ]

    capa, login, capa_after, idle, starttls, logout = await trio.to_thread.run_sync(session)
    assert capa[0].endswith(b" AUTH=PLAIN AUTH=LOGIN AUTH=SCRAM-SHA-256")
    assert b"STARTTLS" not in capa[0]  # imaps: already under TLS
    assert login[0].startswith(b"a2 OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")
    assert login[0].endswith(b"APPENDLIMIT=26214400] Logged in")
    assert b"AUTH=" not in capa_after[0]
    assert idle == [b"+ idling", b"a4 OK IDLE terminated"]
    assert starttls[0].startswith(b"a5 BAD")
    assert logout == [b"* BYE Logging out", b"a6 OK LOGOUT completed"]


async def test_plaintext_pipelined_after_starttls_is_never_executed(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await imap_server(start_server, tls_files)
    await deliver(server, MESSAGE_1)

    def attack() -> list[bytes]:
        c = ImapClient(server.port_of("imap"))
        c.line()
        c.sock.sendall(
            b"a1 STARTTLS\r\na2 LOGIN alice@example.test secret\r\n"
            b"a3 SELECT INBOX\r\na4 STORE 1 +FLAGS (\\Deleted)\r\na5 EXPUNGE\r\n"
        )
        ready = c.line()
        got = [ready]
        try:
            c.sock = client_tls.wrap_socket(c.sock, server_hostname="127.0.0.1")
            while data := c.sock.recv(4096):
                got.append(data)
        except (ssl.SSLError, OSError):
            pass
        return got

    got = await trio.to_thread.run_sync(attack)
    assert got[0] == b"a1 OK Begin TLS negotiation now"
    assert b"OK" not in b"".join(got[1:])
    assert len(server.new_messages(ALICE)) == 1


async def test_authenticate_scram_and_cancel(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await imap_server(start_server, tls_files)

    def session() -> list[Any]:
        c = ImapClient(server.port_of("imaps"), context=client_tls)
        c.line()
        cancelled = c.command(b"a1 AUTHENTICATE PLAIN")
        c.sock.sendall(b"*\r\n")
        cancelled.append(c.line())
        bad = c.command(b"a2 AUTHENTICATE PLAIN " + b64(b"\0" + ALICE.encode() + b"\0nope"))
        mech = sasl.client_mechanism(
            "SCRAM-SHA-256", authcid=ALICE, password="secret", nonce="clientnonce0123456789"
        )
        first = mech.initial_response()
        assert first is not None
        server_first = c.command(b"a3 AUTHENTICATE SCRAM-SHA-256 " + b64(first))[-1]
        final = mech.respond(base64.b64decode(server_first[2:]))
        server_final = c.command(b64(final))[-1]
        mech.verify_server_final(base64.b64decode(server_final[2:]))
        c.sock.sendall(b"\r\n")  # RFC 9051 §6.2.2: the empty answer to the final data
        return [cancelled, bad, [c.line()]]

    cancelled, bad, done = await trio.to_thread.run_sync(session)
    assert cancelled == [b"+ ", b"a1 BAD Authentication cancelled"]
    assert bad == [b"a2 NO [AUTHENTICATIONFAILED] Authentication failed"]
    assert done[0].startswith(b"a3 OK [CAPABILITY ")


class StreamLines:
    """Lines from the client's end of a Trio memory stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = b""
        self.received = 0

    async def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = await self.stream.receive_some()
            if not chunk:
                raise ConnectionError(f"closed; unread: {self.buf!r}")
            self.received += len(chunk)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line


async def test_idle_session_is_logged_out_after_thirty_minutes(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # No socket and no TLS needed: the adapter over a memory stream, on a clock that
    # jumps to the next deadline whenever every task waits.
    caplog.set_level("INFO", logger="sansmail")
    config = Config(
        source=None, hostname="mx.example.test", domains=("example.test",), data_dir=tmp_path
    )
    users = UserStore(tmp_path / "users.json", hasher=FAST)
    users.add(parse_address(ALICE), "secret")
    shared = ImapService(
        config=config,
        store=MaildirImapStore(tmp_path, hostname="mx.example.test"),
        users=users,
        auth=AuthService(users, secret=b"k" * 32),
        tls_available=False,
    )
    service = IMAPService(shared=shared, log=logging.getLogger("sansmail.imap"))
    client, server = trio.testing.memory_stream_pair()
    login = b"a1 LOGIN alice@example.test secret\r\n"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.handle, server, ("127.0.0.1", 4321))
        lines = StreamLines(client)
        assert (await lines.line()).startswith(b"* OK [CAPABILITY ")
        await client.send_all(login)
        assert (await lines.line()).endswith(b"] Logged in")
        idle_since = trio.current_time()
        last = await lines.line()
        idle = trio.current_time() - idle_since
        assert await client.receive_some() == b""
    assert last == b"* BYE Autologout; idle for too long"
    assert AUTOLOGOUT <= idle < AUTOLOGOUT + 1  # RFC 9051 §5.4: at least 30 minutes
    log = [r.getMessage() for r in caplog.records if r.name == "sansmail.imap"]
    assert "[127.0.0.1]:4321: autologout" in log
    assert log[-1] == (
        f"logout: user=<{ALICE}>, rip=127.0.0.1, in={len(login)}, out={lines.received},"
        " expunged=0, reason=timeout"
    )


async def test_connection_cap_is_a_bye_greeting(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await imap_server(start_server, tls_files, limits={"imap_max_connections_per_ip": 1})

    def session() -> tuple[list[bytes], bytes, bool]:
        first = ImapClient(server.port_of("imap"))
        first.line()
        second = ImapClient(server.port_of("imap"))
        refused = second.line()
        return first.command(b"a1 NOOP"), refused, second.closed()

    noop, refused, closed = await trio.to_thread.run_sync(session)
    assert noop == [b"a1 OK NOOP completed"]
    assert refused == (
        b"* BYE [UNAVAILABLE] mx.example.test Error: too many connections from 127.0.0.1"
    )
    assert closed


async def test_mail_log_lines(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="sansmail")
    server = await imap_server(start_server, tls_files)
    await deliver(server, MESSAGE_1)

    def session() -> None:
        c = ImapClient(server.port_of("imaps"), context=client_tls)
        c.line()
        c.command(b"a1 LOGIN alice@example.test wrong")
        c.command(b"a2 LOGIN alice@example.test secret")
        c.command(b"a3 SELECT INBOX")
        c.command(b"a4 STORE 1 +FLAGS.SILENT (\\Deleted)")
        c.command(b"a5 CLOSE")
        c.command(b"a6 LOGOUT")
        c.closed()

    await trio.to_thread.run_sync(session)
    lines = await logged(
        caplog, "sansmail.imap", lambda ls: any(x.startswith("logout:") for x in ls)
    )
    assert any(
        line.startswith("auth failed: service=imaps, method=LOGIN, user=<alice@example.test>")
        for line in lines
    ), lines
    assert "login: user=<alice@example.test>, method=LOGIN, rip=127.0.0.1, tls=TLSv1.3" in lines
    logout = [line for line in lines if line.startswith("logout:")]
    assert len(logout) == 1
    assert logout[0].startswith("logout: user=<alice@example.test>, rip=127.0.0.1, in=")
    assert logout[0].endswith(", expunged=1, reason=logged out")
