"""The pop3 and pop3s services byte by byte: logins before and after TLS, AUTH (RFC 5034)
with PLAIN, LOGIN and SCRAM, throttling, STLS injection, errors, timeouts, shutdown,
connection caps and the mail log lines."""

from __future__ import annotations

import base64
import logging
import pathlib
import ssl
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from test_pop3_e2e import ALICE, MESSAGES, PopClient, deliver, pop3_server, stored_messages
from trio_helpers import BOTH_BACKENDS, StartServer, logged

from sansmail import sasl
from sansmail.config import parse_config
from sansmail.mail.address import MailboxId, parse_address
from sansmail.mail.auth import AuthService, AuthSettings
from sansmail.sessions import pop3d
from sansmail.sessions.pop3d import Pop3Service
from sansmail.storage.maildir import MaildirMaildrops, MaildirStore, Maildrop
from sansmail.storage.users import UserStore
from sansmail_trio import _pop3_server

# The tests of a running server (start_server) run on both storage backends.
pytestmark = BOTH_BACKENDS

OUTSIDE = ["192.0.2.0/24"]  # mynetworks that do not contain the test client
FAST = AuthSettings(failure_delay=0.01, max_failure_delay=0.02)


@pytest.fixture(autouse=True)
def _close_pop_clients() -> Iterator[None]:
    yield
    PopClient.close_all()


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def capa(client: PopClient) -> list[bytes]:
    assert client.command(b"CAPA").startswith(b"+OK")
    return client.body().split(b"\r\n")[:-1]


# --- logins and TLS -------------------------------------------------------------------------


async def test_no_login_before_tls_when_plaintext_auth_is_never(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await pop3_server(start_server, tls_files, plaintext_auth="never")

    def session() -> dict[str, object]:
        c = PopClient(server.port_of("pop3"))
        seen: dict[str, object] = {"greeting": c.line(), "capa_before": capa(c)}
        seen["user"] = c.command(b"USER " + ALICE.encode())
        seen["pass"] = c.command(b"PASS secret")
        seen["auth"] = c.command(b"AUTH PLAIN " + b64(b"\0" + ALICE.encode() + b"\0secret"))
        seen["stls"] = c.command(b"STLS")
        c.start_tls(client_tls)
        seen["capa_after"] = capa(c)
        seen["stls_again"] = c.command(b"STLS")
        seen["auth_after"] = c.command(b"AUTH PLAIN " + b64(b"\0" + ALICE.encode() + b"\0secret"))
        seen["stat"] = c.command(b"STAT")
        seen["capa_transaction"] = capa(c)
        seen["quit"] = c.command(b"QUIT")
        return seen

    seen = await trio.to_thread.run_sync(session)
    assert seen["greeting"] == b"+OK mx.example.test POP3 server ready"
    before = seen["capa_before"]
    assert isinstance(before, list)
    assert b"STLS" in before
    # RFC 2449 §6.2, §6.3: what is not listed must not be used.
    assert b"USER" not in before
    assert not any(line.startswith(b"SASL") for line in before)
    assert str(seen["user"]).startswith("b'-ERR [AUTH] ")
    assert seen["pass"] == b"-ERR USER first"
    assert str(seen["auth"]).startswith("b'-ERR [AUTH] ")
    assert seen["stls"] == b"+OK Begin TLS negotiation"
    after = seen["capa_after"]
    assert isinstance(after, list)
    assert b"STLS" not in after
    assert b"USER" in after
    assert b"SASL PLAIN LOGIN SCRAM-SHA-256" in after
    assert str(seen["stls_again"]).startswith("b'-ERR")
    assert seen["auth_after"] == b"+OK Logged in, 0 messages (0 octets)"
    assert seen["stat"] == b"+OK 0 0"
    # After login only what TRANSACTION offers.
    assert seen["capa_transaction"] == [
        b"TOP",
        b"UIDL",
        b"RESP-CODES",
        b"PIPELINING",
        b"IMPLEMENTATION sansmail",
    ]
    assert seen["quit"] == b"+OK Logging out, 0 messages deleted"


async def test_plaintext_login_on_loopback_by_default(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await pop3_server(start_server, tls_files)
    await deliver(server, MESSAGES[0])

    def session() -> list[bytes]:
        c = PopClient(server.port_of("pop3"))
        c.line()
        listed = capa(c)
        return [b"USER" if b"USER" in listed else b"", c.login(), c.command(b"QUIT")]

    user, login, quit_ = await trio.to_thread.run_sync(session)
    assert user == b"USER"
    assert login.startswith(b"+OK Logged in, 1 messages (")
    assert quit_.startswith(b"+OK")


async def test_plaintext_pipelined_after_stls_is_never_executed(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await pop3_server(start_server, tls_files)
    await deliver(server, MESSAGES[0])

    def attack() -> list[bytes]:
        c = PopClient(server.port_of("pop3"))
        c.line()
        c.send(b"STLS\r\nUSER " + ALICE.encode() + b"\r\nPASS secret\r\nDELE 1\r\nQUIT\r\n")
        ready = c.line()
        c.buf = b""
        got = [ready]
        try:
            c.start_tls(client_tls)
            while data := c.sock.recv(4096):
                got.append(data)
        except (ssl.SSLError, OSError):
            pass
        return got

    got = await trio.to_thread.run_sync(attack)
    assert got[0] == b"+OK Begin TLS negotiation"
    assert b"+OK" not in b"".join(got[1:])
    assert len(stored_messages(server)) == 1


async def test_stls_on_pop3s_is_refused(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await pop3_server(start_server, tls_files)

    def session() -> list[bytes]:
        c = PopClient(server.port_of("pop3s"), context=client_tls)
        c.line()
        return [b" ".join(capa(c)), c.command(b"STLS"), c.command(b"NOOP")]

    listing, stls, noop = await trio.to_thread.run_sync(session)
    assert b"STLS" not in listing
    # The core knows the link is TLS from its first byte and refuses STLS itself, with
    # the same answer as after an STLS upgrade (RFC 2595 §4).
    assert stls == b"-ERR already using TLS"
    assert noop.startswith(b"-ERR")  # NOOP is a TRANSACTION command; the session goes on


# --- AUTH (RFC 5034) -------------------------------------------------------------------------


async def test_auth_plain_with_a_challenge_login_and_cancel(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await pop3_server(start_server, tls_files, auth_settings=FAST)

    def session() -> list[bytes]:
        c = PopClient(server.port_of("pop3"))
        c.line()
        answers = [c.command(b"AUTH CRAM-MD5")]  # not enabled
        answers.append(c.command(b"AUTH PLAIN"))
        answers.append(c.command(b"*"))
        answers.append(c.command(b"AUTH LOGIN"))
        answers.append(c.command(b"!!not base64!!"))
        answers.append(c.command(b"AUTH PLAIN"))
        answers.append(c.command(b64(b"\0" + ALICE.encode() + b"\0secret")))
        answers.append(c.command(b"AUTH PLAIN"))  # already logged in
        return answers

    answers = await trio.to_thread.run_sync(session)
    assert answers[0] == b"-ERR Unrecognized authentication type"
    assert answers[1] == b"+ "
    assert answers[2] == b"-ERR Authentication cancelled"
    assert answers[3] == b"+ " + b64(b"Username:")
    assert answers[4].startswith(b"-ERR")
    assert answers[5] == b"+ "
    assert answers[6].startswith(b"+OK Logged in")
    assert answers[7].startswith(b"-ERR")


async def test_auth_login_and_wrong_password(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await pop3_server(start_server, tls_files, auth_settings=FAST)
    caplog.set_level("INFO", logger="sansmail")

    def session() -> list[bytes]:
        c = PopClient(server.port_of("pop3"))
        c.line()
        answers = [c.command(b"AUTH LOGIN " + b64(ALICE.encode()))]
        answers.append(c.command(b64(b"wrong")))
        answers.append(c.command(b"AUTH LOGIN " + b64(ALICE.encode())))
        answers.append(c.command(b64(b"secret")))
        return answers

    prompt, failed, prompt2, ok = await trio.to_thread.run_sync(session)
    assert prompt == prompt2 == b"+ " + b64(b"Password:")
    assert failed == b"-ERR [AUTH] Authentication failed"
    assert ok.startswith(b"+OK")
    lines = [r.getMessage() for r in caplog.records if "auth failed:" in r.getMessage()]
    assert lines == [
        f"auth failed: service=pop3, method=LOGIN, user=<{ALICE}>, rip=127.0.0.1",
    ]


async def test_auth_scram_sha_256_with_the_final_challenge(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await pop3_server(start_server, tls_files)

    def session() -> list[bytes]:
        mech = sasl.client_mechanism(
            "SCRAM-SHA-256", authcid=ALICE, password="secret", nonce="clientnonce0123456789"
        )
        c = PopClient(server.port_of("pop3"))
        c.line()
        first = mech.initial_response()
        assert first is not None
        server_first = c.command(b"AUTH SCRAM-SHA-256 " + b64(first))
        assert server_first.startswith(b"+ ")
        final = mech.respond(base64.b64decode(server_first[2:]))
        server_final = c.command(b64(final))
        # RFC 5034 §4: the server's final message travels as one more challenge.
        assert server_final.startswith(b"+ ")
        mech.verify_server_final(base64.b64decode(server_final[2:]))
        return [c.command(b""), c.command(b"STAT")]

    ok, stat = await trio.to_thread.run_sync(session)
    assert ok.startswith(b"+OK Logged in")
    assert stat == b"+OK 0 0"


async def test_brute_force_is_throttled(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fast = AuthSettings(failure_delay=0.01, max_failure_delay=0.02, max_failures=3)
    server = await pop3_server(
        start_server, tls_files, auth_settings=fast, mynetworks=OUTSIDE, plaintext_auth="always"
    )
    caplog.set_level("INFO", logger="sansmail")

    def guesses() -> list[bytes]:
        c = PopClient(server.port_of("pop3"))
        c.line()
        answers = [c.login(password=f"guess{n}") for n in range(5)]
        answers.append(c.login())  # even the right password, while locked out
        plain = b"AUTH PLAIN " + b64(b"\0" + ALICE.encode() + b"\0secret")
        answers.append(c.command(plain))  # and over SASL: one auth service
        return answers

    answers = await trio.to_thread.run_sync(guesses)
    assert answers[:3] == [b"-ERR [AUTH] Authentication failed"] * 3
    assert answers[3:] == [b"-ERR [SYS/TEMP] Too many authentication failures, try again later"] * 4
    messages = [r.getMessage() for r in caplog.records]
    failures = [m for m in messages if "auth failed:" in m]
    assert (
        failures == [f"auth failed: service=pop3, method=USER, user=<{ALICE}>, rip=127.0.0.1"] * 3
    )
    assert any(m.startswith("auth throttled: service=pop3, ") for m in messages)


# --- TRANSACTION details ----------------------------------------------------------------------


async def test_errors_in_transaction_and_pipelining(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await pop3_server(start_server, tls_files)
    await deliver(server, *MESSAGES)

    def session() -> list[bytes]:
        c = PopClient(server.port_of("pop3"))
        c.line()
        c.login()
        # RFC 2449 §6.6: one write, answers in order.
        c.send(b"DELE 1\r\nDELE 1\r\nRETR 1\r\nLIST 1\r\nUIDL 1\r\nTOP 1 0\r\nRETR 9\r\n")
        answers = [c.line() for _ in range(7)]
        answers += [c.command(b"LIST 2").split(b" ")[0], c.command(b"NOOP")]
        answers.append(c.command(b"USER x"))  # an AUTHORIZATION command
        answers.append(c.command(b"RSET"))
        answers.append(c.command(b"LIST 1").split(b" ")[0])
        answers.append(c.command(b"QUIT"))
        return answers

    answers = await trio.to_thread.run_sync(session)
    assert answers[0] == b"+OK Message 1 deleted"
    assert answers[1:6] == [b"-ERR Message 1 already deleted"] * 5
    assert answers[6] == b"-ERR No such message, only 2 messages in maildrop"
    assert answers[7:9] == [b"+OK", b"+OK"]
    assert answers[9] == b"-ERR command not valid in this state"
    assert answers[10].startswith(b"+OK Maildrop has 2 messages (")
    assert answers[11] == b"+OK"
    assert answers[12] == b"+OK Logging out, 0 messages deleted"
    assert len(stored_messages(server)) == 2


async def test_mail_log_lines(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await pop3_server(start_server, tls_files)
    await deliver(server, *MESSAGES)
    wire = [m.replace(b"\n", b"\r\n") for m in stored_messages(server)]
    sizes = [len(m) for m in wire]
    top = len(wire[0].split(b"\r\n\r\n")[0]) + 4  # the header and the empty line
    caplog.set_level("INFO", logger="sansmail")

    def session() -> None:
        c = PopClient(server.port_of("pop3s"), context=client_tls)
        c.line()
        c.login()
        c.command(b"RETR 2")
        c.body()
        c.command(b"TOP 1 0")
        c.body()
        c.command(b"DELE 2")
        c.command(b"QUIT")
        anonymous = PopClient(server.port_of("pop3"))
        anonymous.line()
        anonymous.command(b"QUIT")

    await trio.to_thread.run_sync(session)
    lines = await logged(
        caplog, "sansmail.pop3", lambda ls: sum(x.startswith("disconnect:") for x in ls) >= 2
    )
    assert f"login: user=<{ALICE}>, method=USER, rip=127.0.0.1, tls=TLSv1.3" in lines
    disconnects = [line for line in lines if line.startswith("disconnect:")]
    assert (
        f"disconnect: user=<{ALICE}>, rip=127.0.0.1, top=1/{top}, retr=1/{sizes[1]},"
        f" del=1/2, size={sum(sizes)}, reason=logged out"
    ) in disconnects
    assert "disconnect: rip=127.0.0.1, no login, reason=logged out" in disconnects


# --- time, shutdown, caps -----------------------------------------------------------------------


async def test_idle_session_is_logged_out(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pop3d, "IDLE_TIMEOUT", 0.3)
    server = await pop3_server(start_server, tls_files)
    await deliver(server, MESSAGES[0])

    def session() -> tuple[bytes, bool, bytes]:
        c = PopClient(server.port_of("pop3"))
        c.line()
        c.login()
        c.command(b"DELE 1")
        last = c.line()  # nothing sent: the server speaks last
        return last, c.closed(), b""

    last, closed, _ = await trio.to_thread.run_sync(session)
    assert last == b"-ERR Autologout: idle for too long"
    assert closed
    assert len(stored_messages(server)) == 1  # no QUIT: nothing deleted


class _Lines:
    """The client end of an in-memory stream, read line by line."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = b""

    async def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = await self.stream.receive_some()
            assert data, f"closed; unread: {self.buf!r}"
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    async def command(self, line: bytes) -> bytes:
        await self.stream.send_all(line + b"\r\n")
        return await self.line()


async def test_a_client_that_stops_reading_a_retr_is_cut_off(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # No socket needed: a lockstep stream's send_all waits until the peer reads, which is
    # a client that stopped reading, exactly.
    monkeypatch.setattr(_pop3_server, "SEND_TIMEOUT", 0.2)
    monkeypatch.setattr(pop3d, "IDLE_TIMEOUT", 10.0)  # a broken test must not hang
    caplog.set_level("INFO", logger="sansmail")
    config = parse_config(
        f'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "{tmp_path}"\n',
        source=None,
        default_hostname="unused.example",
    )
    store = MaildirStore(tmp_path, hostname="mx.example.test")
    users = UserStore(tmp_path / "users.json")
    users.add(parse_address(ALICE), "secret")
    mailbox = MailboxId(domain="example.test", local="alice")
    for size in (200_000, 1):
        delivery = store.begin([mailbox], prefix=b"")
        delivery.write(b"Subject: big\r\n\r\n" + b"line\r\n" * size)
        delivery.commit()
    shared = Pop3Service(
        config=config,
        maildrops=MaildirMaildrops(store),
        users=users,
        auth=AuthService(users, secret=b"k" * 32),
    )
    service = _pop3_server.POP3Service(shared=shared, log=logging.getLogger("sansmail.pop3"))
    server_end, client_end = trio.testing.lockstep_stream_pair()
    client = _Lines(client_end)

    with trio.fail_after(5):  # SEND_TIMEOUT ends it well before
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.handle, server_end, ("127.0.0.1", 1234))
            assert (await client.line()).startswith(b"+OK")
            assert await client.command(b"USER " + ALICE.encode()) == b"+OK"
            assert (await client.command(b"PASS secret")).startswith(b"+OK Logged in, 2 messages")
            assert await client.command(b"DELE 2") == b"+OK Message 2 deleted"
            await client_end.send_all(b"RETR 1\r\n")  # and never read again
    lines = [r.getMessage() for r in caplog.records if r.name == "sansmail.pop3"]
    assert "[127.0.0.1]:1234: timeout" in lines
    assert lines[-1].startswith(f"disconnect: user=<{ALICE}>, rip=127.0.0.1, top=0/0, retr=0/0,")
    assert lines[-1].endswith("reason=timeout")
    with Maildrop.open(store.maildir(mailbox)) as drop:  # the lock went with the session
        assert len(drop.messages) == 2  # no QUIT: nothing deleted


async def test_shutdown_ends_idle_sessions_without_deleting(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await pop3_server(start_server, tls_files)
    await deliver(server, MESSAGES[0])
    c = PopClient(server.port_of("pop3"))

    def login() -> None:
        c.line()
        c.login()
        assert c.command(b"DELE 1").startswith(b"+OK")

    await trio.to_thread.run_sync(login)
    await server.stop()

    def rest() -> tuple[bytes, bool]:
        return c.line(), c.closed()

    last, closed = await trio.to_thread.run_sync(rest)
    assert last == b"-ERR [SYS/TEMP] Server shutting down"
    assert closed
    assert len(stored_messages(server)) == 1


async def test_connection_cap_is_answered_with_err(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await pop3_server(start_server, tls_files, limits={"pop3_max_connections_per_ip": 1})

    def session() -> tuple[bytes, bytes, bool]:
        first = PopClient(server.port_of("pop3"))
        first.line()
        second = PopClient(server.port_of("pop3"))
        refused = second.line()
        return first.command(b"NOOP"), refused, second.closed()

    noop, refused, closed = await trio.to_thread.run_sync(session)
    assert noop.startswith(b"-ERR")  # NOOP before login: the first session is alive
    assert refused.startswith(b"-ERR [SYS/TEMP] mx.example.test Error: too many connections")
    assert closed
