"""``[limits] commands_per_second``: a client over the rate is slowed, not dropped, and
others are not slowed; a pipelined sync under the rate is not paced at all. Nothing
here measures time: the order in which answers arrive and the "paced" log line say it."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
from trio_helpers import RunningServer, StartServer

ALICE = "alice@example.test"
LISTEN = {"smtp": "127.0.0.1:0", "pop3": "127.0.0.1:0", "imap": "127.0.0.1:0"}
# Loopback is not trusted here, so it is paced (mynetworks are exempt).
ELSEWHERE = ["192.0.2.0/24"]


async def _server(start_server: StartServer, rate: int, **kw: Any) -> RunningServer:
    return await start_server(  # type: ignore[no-any-return]
        listen=LISTEN, mynetworks=ELSEWHERE, limits={"commands_per_second": rate}, **kw
    )


def _read_lines(sock: socket.socket, count: int, buf: bytearray) -> list[bytes]:
    """`count` more CRLF lines from `sock` (what is left over stays in `buf`)."""
    lines: list[bytes] = []
    while len(lines) < count:
        at = buf.find(b"\r\n")
        if at < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(lines)} lines")
            buf += chunk
            continue
        lines.append(bytes(buf[:at]))
        del buf[: at + 2]
    return lines


def _ready_lines(sock: socket.socket, buf: bytearray) -> int:
    """Lines that can be read now without waiting (the rest stays in `buf`)."""
    sock.setblocking(False)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return buf.count(b"\r\n")


def _paced(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.message for r in caplog.records if "commands a second: paced" in r.message]


async def test_a_flooding_smtp_client_is_slowed_not_dropped_and_others_go_on(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="sansmail")
    # 200 a second, 1,000 in a row: 1,300 NOOPs take the server 1.5 s to answer.
    server = await _server(start_server, 200)
    port = server.port_of("smtp")
    count = 1300

    def clients() -> tuple[int, list[bytes], list[bytes]]:
        flood = socket.create_connection(("127.0.0.1", port), timeout=30)
        buf = bytearray()
        _read_lines(flood, 1, buf)
        flood.sendall(b"NOOP\r\n" * count)
        # Another client, meanwhile: answered at once, whatever the flood does.
        other = socket.create_connection(("127.0.0.1", port), timeout=30)
        other_buf = bytearray()
        other_answers = _read_lines(other, 1, other_buf)
        other.sendall(b"NOOP\r\n")
        other_answers += _read_lines(other, 1, other_buf)
        answered_by_then = _ready_lines(flood, buf)
        other.close()
        answers = _read_lines(flood, count, buf)
        flood.close()
        return answered_by_then, other_answers, answers

    answered_by_then, other_answers, answers = await trio.to_thread.run_sync(clients)
    assert other_answers[1].startswith(b"250 ")
    assert answered_by_then < count  # the flood was still being paced
    assert answers == [b"250 Ok"] * count  # every command answered, none dropped
    assert len(_paced(caplog)) == 1  # one line per connection, at its first wait
    await server.stop()


async def test_an_imap_pipeline_under_the_burst_is_not_paced_and_one_over_is(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="sansmail")
    # 100 a second, 500 in a row.
    server = await _server(start_server, 100)
    port = server.port_of("imap")

    def pipeline(count: int) -> list[bytes]:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        buf = bytearray()
        _read_lines(sock, 1, buf)
        sock.sendall(f"l LOGIN {ALICE} secret\r\ns SELECT INBOX\r\n".encode())
        answers: list[bytes] = []
        while len(answers) < 2:
            answers += [line for line in _read_lines(sock, 1, buf) if line[:2] in (b"l ", b"s ")]
        # mbsync's way: one UID FETCH after the other, without waiting for answers.
        sock.sendall(b"".join(b"f%d UID FETCH 1:* (FLAGS)\r\n" % n for n in range(count)))
        tagged: list[bytes] = []
        while len(tagged) < count:
            tagged += [line for line in _read_lines(sock, 1, buf) if line.startswith(b"f")]
        sock.sendall(b"z LOGOUT\r\n")
        sock.close()
        return answers + tagged

    # Login and SELECT and 450 FETCHes: under the 500 of a burst.
    answers = await trio.to_thread.run_sync(pipeline, 450)
    assert answers[0].startswith(b"l OK")
    assert answers[1].startswith(b"s OK")
    assert all(line.endswith(b"OK UID FETCH completed") for line in answers[2:])
    assert len(answers) == 452
    assert _paced(caplog) == []
    # 600: the last hundred or so wait for the bucket, and are answered all the same.
    answers = await trio.to_thread.run_sync(pipeline, 600)
    assert len(answers) == 602
    assert all(line.endswith(b"OK UID FETCH completed") for line in answers[2:])
    assert len(_paced(caplog)) == 1
    await server.stop()


async def test_pop3_commands_are_paced_too(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="sansmail")
    server = await _server(start_server, 100)

    def flood() -> int:
        sock = socket.create_connection(("127.0.0.1", server.port_of("pop3")), timeout=30)
        buf = bytearray()
        _read_lines(sock, 1, buf)
        sock.sendall(b"CAPA\r\n" * 550)
        ends = 0
        while ends < 550:
            ends += _read_lines(sock, 1, buf) == [b"."]
        sock.close()
        return ends

    assert await trio.to_thread.run_sync(flood) == 550  # every CAPA answered
    assert len(_paced(caplog)) == 1
    await server.stop()


async def test_mynetworks_are_not_paced(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="sansmail")
    server = await start_server(listen=LISTEN, limits={"commands_per_second": 1})

    def flood() -> list[bytes]:
        sock = socket.create_connection(("127.0.0.1", server.port_of("smtp")), timeout=30)
        buf = bytearray()
        _read_lines(sock, 1, buf)
        sock.sendall(b"NOOP\r\n" * 50)
        answers = _read_lines(sock, 50, buf)
        sock.close()
        return answers

    answers = await trio.to_thread.run_sync(flood)
    assert len(answers) == 50
    assert _paced(caplog) == []
    await server.stop()
