"""Connection caps per service family, one user's sessions per address
(max_userip_connections), and the IMAP core's line and command sizes from ``[limits]``,
with real clients over loopback."""

from __future__ import annotations

import imaplib
import pathlib
import poplib
import shutil
import smtplib
import socket
import subprocess
from typing import Any

import pytest
import trio
from trio_helpers import FAST_HASHER, RunningServer, StartServer, wait_until_started

from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore

ALICE = "alice@example.test"
BOB = "bob@example.test"
LISTEN = {"smtp": "127.0.0.1:0", "pop3": "127.0.0.1:0", "imap": "127.0.0.1:0"}


async def _server(start_server: StartServer, **kw: Any) -> RunningServer:
    kw.setdefault("users", (ALICE, BOB))
    return await start_server(listen=LISTEN, **kw)  # type: ignore[no-any-return]


def _greetings(port: int, count: int, opened: list[socket.socket]) -> list[bytes]:
    """The first line each of `count` new connections to `port` hears (they stay open,
    in `opened`)."""
    lines = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        opened.append(sock)
        lines.append(sock.makefile("rb").readline().rstrip(b"\r\n"))
    return lines


async def test_each_service_family_has_its_own_caps(start_server: StartServer) -> None:
    # SMTP full does not stop IMAP or POP3, and each family is refused in its own words.
    server = await _server(
        start_server,
        max_connections_per_ip=1,
        limits={
            "pop3_max_connections": 2,
            "pop3_max_connections_per_ip": 2,
            "imap_max_connections": 5,
            "imap_max_connections_per_ip": 3,
        },
    )
    opened: list[socket.socket] = []

    def clients() -> tuple[list[bytes], list[bytes], list[bytes], str, str]:
        smtp = _greetings(server.port_of("smtp"), 2, opened)
        pop3 = _greetings(server.port_of("pop3"), 3, opened)
        imap = _greetings(server.port_of("imap"), 4, opened)
        # And the real clients see a refusal they report as one.
        with pytest.raises(smtplib.SMTPConnectError) as smtp_error:
            smtplib.SMTP("127.0.0.1", server.port_of("smtp"), timeout=10)
        with pytest.raises(imaplib.IMAP4.error) as imap_error:
            imaplib.IMAP4("127.0.0.1", server.port_of("imap"), timeout=10)
        return smtp, pop3, imap, str(smtp_error.value), str(imap_error.value)

    try:
        smtp, pop3, imap, smtp_error, imap_error = await trio.to_thread.run_sync(clients)
    finally:
        for sock in opened:
            sock.close()
    assert smtp[0].startswith(b"220 ")
    assert smtp[1] == b"421 mx.example.test Error: too many connections from 127.0.0.1"
    assert [line[:3] for line in pop3] == [b"+OK", b"+OK", b"-ER"]
    # pop3's total (2) is reached before its per-address cap.
    assert pop3[2] == b"-ERR [SYS/TEMP] mx.example.test Error: too many connections"
    assert [line[:4] for line in imap] == [b"* OK"] * 3 + [b"* BY"]
    assert imap[3] == (
        b"* BYE [UNAVAILABLE] mx.example.test Error: too many connections from 127.0.0.1"
    )
    assert "421" in smtp_error
    assert "too many connections" in imap_error
    await server.stop()


def _login_imap(port: int, user: str) -> tuple[imaplib.IMAP4, str]:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    try:
        status, data = client.login(user, "secret")
    except imaplib.IMAP4.error as exc:
        return client, exc.args[0].decode()
    assert data[0].endswith(b"] Logged in")  # [CAPABILITY ...] Logged in
    return client, status


async def test_max_userip_connections_imap(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="sansmail")
    server = await _server(start_server, limits={"max_userip_connections": 2})
    port = server.port_of("imap")

    def sessions() -> list[str]:
        answers = []
        first, answer = _login_imap(port, ALICE)
        answers.append(answer)
        second, answer = _login_imap(port, ALICE)
        answers.append(answer)
        third, answer = _login_imap(port, ALICE)
        answers.append(answer)
        third.shutdown()
        # Another user from the same address has places of their own.
        other, answer = _login_imap(port, BOB)
        answers.append(answer)
        other.logout()
        # A session that ends gives its place back.
        first.logout()
        fourth, answer = _login_imap(port, ALICE)
        answers.append(answer)
        fourth.logout()
        second.logout()
        return answers

    answers = await trio.to_thread.run_sync(sessions)
    assert answers[:2] == ["OK", "OK"]
    assert answers[2] == (
        "[LIMIT] Maximum number of connections from user+IP exceeded"
        " (mail_max_userip_connections=2)"
    )
    assert answers[3:] == ["OK", "OK"]
    assert any(
        "login refused: user=<alice@example.test>, rip=127.0.0.1, Maximum number" in r.message
        for r in caplog.records
    )
    await server.stop()


async def test_max_userip_connections_pop3_is_counted_apart_from_imap(
    start_server: StartServer,
) -> None:
    server = await _server(start_server, limits={"max_userip_connections": 1})

    def sessions() -> tuple[str, str, str]:
        imap, answer = _login_imap(server.port_of("imap"), ALICE)
        assert answer == "OK"  # IMAP's one place does not take POP3's
        first = poplib.POP3("127.0.0.1", server.port_of("pop3"), timeout=10)
        first.user(ALICE)
        ok = first.pass_("secret").decode()
        second = poplib.POP3("127.0.0.1", server.port_of("pop3"), timeout=10)
        second.user(ALICE)
        with pytest.raises(poplib.error_proto) as refused:
            second.pass_("secret")
        first.quit()
        # The place is free again: the same connection may try again.
        second.user(ALICE)
        again = second.pass_("secret").decode()
        second.quit()
        imap.logout()
        return ok, str(refused.value), again

    ok, refused, again = await trio.to_thread.run_sync(sessions)
    assert ok.startswith("+OK Logged in")
    assert refused == (
        "b'-ERR [IN-USE] Maximum number of connections from user+IP exceeded"
        " (mail_max_userip_connections=1)'"
    )
    assert again.startswith("+OK Logged in")
    await server.stop()


async def test_imap_line_and_command_sizes_come_from_limits(start_server: StartServer) -> None:
    server = await _server(
        start_server, limits={"imap_max_line_length": 8192, "imap_max_command_size": 65536}
    )

    def session() -> tuple[bytes, bytes, bytes, bytes]:
        sock = socket.create_connection(("127.0.0.1", server.port_of("imap")), timeout=10)
        reader = sock.makefile("rb")
        reader.readline()
        # The longest line allowed (CRLF included) is answered as any command is ...
        sock.sendall(b"a1 NOOP " + b"x" * (8192 - 10) + b"\r\n")
        under = reader.readline()
        # ... a literal past the command size is refused before the client sends it ...
        sock.sendall(b"a2 LOGIN {70000}\r\n")
        literal = reader.readline()
        # ... and one octet more on a line ends the session.
        sock.sendall(b"a3 NOOP " + b"x" * (8192 - 9) + b"\r\n")
        over = reader.readline()
        end = reader.read()
        sock.close()
        return under, literal, over, end

    under, literal, over, end = await trio.to_thread.run_sync(session)
    assert under.startswith(b"a1 BAD ")
    assert literal.startswith(b"a2 BAD ")
    assert over == b"* BYE [TOOBIG] command line too long, closing\r\n"
    assert end == b""
    await server.stop()


# -- across processes --------------------------------------------------------------------


def _serve(tmp_path: pathlib.Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    (tmp_path / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        "processes = 2\n"
        '[listen]\nsmtp = "127.0.0.1:0"\npop3 = "127.0.0.1:0"\nimap = "127.0.0.1:0"\n'
        "[smtp]\nmax_connections_per_ip = 2\n"
        "[limits]\npop3_max_connections_per_ip = 3\nimap_max_connections_per_ip = 4\n"
        "max_userip_connections = 2\n"
    )
    UserStore(tmp_path / "data" / "users.json", hasher=FAST_HASHER).add(
        parse_address(ALICE), "secret"
    )
    script = shutil.which("sansmail-trio")
    assert script is not None
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([script, "serve"], cwd=tmp_path, stderr=out)
    return proc, wait_until_started(proc, log, processes=2)


def test_caps_and_user_sessions_hold_across_two_processes(tmp_path: pathlib.Path) -> None:
    # The kernel spreads the connections over both processes as it likes; each cap is
    # the configured one whatever the spread.
    proc, ports = _serve(tmp_path)
    opened: list[socket.socket] = []
    imap_clients: list[imaplib.IMAP4] = []
    try:
        answers = []
        for _ in range(3):
            client, answer = _login_imap(ports["imap"], ALICE)
            imap_clients.append(client)
            answers.append(answer)
        assert answers[:2] == ["OK", "OK"]
        assert answers[2].startswith("[LIMIT] Maximum number of connections from user+IP")
        smtp = _greetings(ports["smtp"], 3, opened)
        pop3 = _greetings(ports["pop3"], 4, opened)
        imap = _greetings(ports["imap"], 2, opened)  # 3 are open already
        assert [line[:3] for line in smtp] == [b"220", b"220", b"421"]
        assert [line[:3] for line in pop3] == [b"+OK"] * 3 + [b"-ER"]
        assert [line[:4] for line in imap] == [b"* OK", b"* BY"]
    finally:
        for sock in opened:
            sock.close()
        for client in imap_clients:
            client.shutdown()
        proc.kill()
        proc.wait(10)
