"""The HTTP listener's core (`_http.HTTPService`), byte by byte over loopback sockets and
memory streams: routing (404, 405 with Allow, HEAD), the limits (431 for a head over
16 KiB, 413 for a body over 64 KiB, by Content-Length and chunked), 400 for what h11
cannot parse, keep-alive and pipelining, ``Connection: close``, the per-connection
request count, the refusal (503), a handler's bug (500); Python's http.client as a
client nobody here wrote; hypothesis: any bytes get an answer or a close."""

from __future__ import annotations

import functools
import http.client
import logging
import pathlib
import re
import socket
import ssl
import tempfile
from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
import trio
import trio.testing
import trustme
from hypothesis import strategies as st

from sansmail.sessions.common import Refusal
from sansmail_trio._http import MAX_BODY, MAX_HEAD, HTTPService, Request, Response
from sansmail_trio._tls import TLSContextHolder

log = logging.getLogger("test.http")
seen: list[Request] = []


async def hello(request: Request) -> Response:
    seen.append(request)
    return Response(200, b"hello\n", "text/plain; charset=utf-8", (("Cache-Control", "no-store"),))


async def echo(request: Request) -> Response:
    seen.append(request)
    return Response(201, request.body, "application/octet-stream")


async def broken(request: Request) -> Response:
    raise RuntimeError("a bug")


ROUTES = {"/hello": hello, "POST /echo": echo, "/broken": broken}


def service(**kw: Any) -> HTTPService:
    return HTTPService(ROUTES, log=log, **kw)


@pytest.fixture
def port(nursery: trio.Nursery) -> Callable[..., Any]:
    """Start a listener for an HTTPService (keywords as HTTPService's) and give its port."""

    async def start(**kw: Any) -> int:
        svc = service(**kw)

        async def handler(stream: trio.SocketStream) -> None:
            peer = stream.socket.getpeername()
            await svc.handle(stream, (peer[0], peer[1]))

        serve = functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        return int(listeners[0].socket.getsockname()[1])

    return start


def exchange(port: int, data: bytes, *, shut: bool = True) -> bytes:
    """Send `data`, then read until the server closes (10 s at most)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


async def talk(port: int, data: bytes, *, shut: bool = True) -> bytes:
    return await trio.to_thread.run_sync(lambda: exchange(port, data, shut=shut))


def statuses(answer: bytes) -> list[int]:
    # The bodies here end in a newline and hold no status line of their own.
    return [int(code) for code in re.findall(rb"(?:^|\n)HTTP/1\.1 (\d{3}) ", answer)]


def head_of(answer: bytes) -> dict[str, str]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head)}


GET = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_get_answers_with_length_date_and_handler_headers(port: Callable[..., int]) -> None:
    seen.clear()
    answer = await talk(
        await port(), b"GET /hello?a=1&b=%20 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    head = head_of(answer)
    assert head["content-length"] == "6"
    assert head["content-type"] == "text/plain; charset=utf-8"
    assert head["cache-control"] == "no-store"
    assert head["date"].endswith(" GMT")
    assert answer.endswith(b"\r\n\r\nhello\n")
    (request,) = seen
    assert (request.method, request.path, request.query) == ("GET", "/hello", "a=1&b=%20")
    assert request.headers["host"] == "x"
    assert request.headers["x-a"] == "1, 2"
    assert request.client[0] == "127.0.0.1"


async def test_unknown_path_404_and_wrong_method_405_with_allow(port: Callable[..., int]) -> None:
    p = await port()
    assert statuses(await talk(p, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")) == [404]
    answer = await talk(p, b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert statuses(answer) == [405]
    assert head_of(answer)["allow"] == "GET, HEAD"
    answer = await talk(p, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(answer) == [405]
    assert head_of(answer)["allow"] == "POST"
    # The path is matched as sent: no prefix, no case folding.
    assert statuses(await talk(p, b"GET /hello/ HTTP/1.1\r\nHost: x\r\n\r\n")) == [404]
    assert statuses(await talk(p, b"GET /HELLO HTTP/1.1\r\nHost: x\r\n\r\n")) == [404]


async def test_head_has_get_headers_and_no_body(port: Callable[..., int]) -> None:
    p = await port()
    # Two HEADs then a GET on one connection: a body after a HEAD would be read as the
    # next status line.
    answer = await talk(p, b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n" * 2 + GET)
    assert statuses(answer) == [200, 200, 200]
    first = answer.split(b"\r\n\r\n")[0]
    assert b"Content-Length: 6" in first
    assert answer.count(b"hello\n") == 1
    assert answer.endswith(b"hello\n")


async def test_absolute_form_target_is_routed_by_path(port: Callable[..., int]) -> None:
    answer = await talk(await port(), b"GET http://x/hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(answer) == [200]


async def test_connect_upgrade_and_asterisk_are_plain_requests(port: Callable[..., int]) -> None:
    # No tunnel and no protocol switch: h11 returns to the next request after a
    # final answer that is not 2xx to CONNECT or 101 to Upgrade.
    p = await port()
    for first, status in (
        (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", 404),
        (b"GET /hello HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", 200),
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ):
        assert statuses(await talk(p, first + GET)) == [status, 200]


async def test_post_body_by_length_and_chunked(port: Callable[..., int]) -> None:
    p = await port()
    answer = await talk(p, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde")
    assert statuses(answer) == [201]
    assert answer.endswith(b"\r\n\r\nabcde")
    chunked = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    answer = await talk(p, chunked)
    assert statuses(answer) == [201]
    assert answer.endswith(b"\r\n\r\nabcde")


async def test_bad_requests_get_400_and_a_close(port: Callable[..., int]) -> None:
    p = await port()
    for bad in (
        b"GARBAGE\r\n\r\n",
        b"GET /hello HTTP/1.1\r\n\r\n",  # no Host (RFC 9112 §3.2)
        b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        b"GET /hello HTTP/9.9\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # TLS on plain http
    ):
        answer = await talk(p, bad + GET)
        assert statuses(answer)[:1] in ([400], [505]), (bad, answer)
        # Nothing after the error: the close, not the GET that followed.
        assert b"hello" not in answer, bad


async def test_head_over_16k_is_431(port: Callable[..., int]) -> None:
    big = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n"
    answer = await talk(await port(), big, shut=False)
    assert statuses(answer) == [431]
    small = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD - 100) + b"\r\n\r\n"
    assert statuses(await talk(await port(), small)) == [200]


async def test_body_over_64k_is_413_by_length_and_by_chunks(port: Callable[..., int]) -> None:
    p = await port()
    seen.clear()
    head = f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
    # The whole body is sent: the server reads (and drops) it after its answer, so
    # the client is not reset before it reads the 413.
    answer = await talk(p, head.encode() + b"a" * (MAX_BODY + 1), shut=False)
    assert statuses(answer) == [413]
    chunk = b"%x\r\n" % 4096 + b"a" * 4096 + b"\r\n"
    chunked = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = await talk(p, chunked + chunk * 17 + b"0\r\n\r\n", shut=False)
    assert statuses(answer) == [413]
    assert seen == []
    exact = f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY}\r\n\r\n".encode()
    answer = await talk(p, exact + b"a" * MAX_BODY)
    assert statuses(answer) == [201]


async def test_expect_100_continue_gets_100_then_the_answer(port: Callable[..., int]) -> None:
    p = await port()

    def client() -> bytes:
        with socket.create_connection(("127.0.0.1", p), timeout=10) as sock:
            sock.sendall(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: 3\r\nConnection: close\r\n\r\n"
            )
            first = sock.recv(1024)
            assert first.startswith(b"HTTP/1.1 100 "), first
            sock.sendall(b"abc")
            rest = b""
            while chunk := sock.recv(65536):
                rest += chunk
            return rest

    answer = await trio.to_thread.run_sync(client)
    assert statuses(answer) == [201]
    assert answer.endswith(b"abc")


async def test_keep_alive_pipelining_and_connection_close(port: Callable[..., int]) -> None:
    p = await port()
    # Three on one connection, sent at once, answered in order; then the close the
    # third asked for, though a fourth follows.
    last = b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await talk(
        p, GET + b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n" + last + GET, shut=False
    )
    assert statuses(answer) == [200, 404, 200]
    assert answer.count(b"Connection: close") == 1
    # HTTP/1.0 without keep-alive: one answer and the close.
    answer = await talk(p, b"GET /hello HTTP/1.0\r\n\r\n" + GET, shut=False)
    assert statuses(answer) == [200]


async def test_requests_per_connection_are_capped(port: Callable[..., int]) -> None:
    p = await port(max_requests=3)
    answer = await talk(p, GET * 5, shut=False)
    assert statuses(answer) == [200, 200, 200]
    assert answer.count(b"Connection: close") == 1


async def test_idle_connection_is_closed_and_half_request_gets_408(
    port: Callable[..., int],
) -> None:
    p = await port(timeout=0.3)
    assert await talk(p, b"", shut=False) == b""
    answer = await talk(p, b"GET /hello HTTP/1.1\r\nHost", shut=False)
    assert statuses(answer) == [408]
    answer = await talk(
        p, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nab", shut=False
    )
    assert statuses(answer) == [408]


async def test_handler_bug_is_500_and_logged(
    port: Callable[..., int], caplog: pytest.LogCaptureFixture
) -> None:
    answer = await talk(await port(), b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n" + GET)
    assert statuses(answer) == [500, 200]
    assert b"RuntimeError" not in answer
    assert any("handler failed" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_one_log_line_per_request(
    port: Callable[..., int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="test.http")
    await talk(await port(), GET + b"GET /nothing?q=secret HTTP/1.1\r\nHost: x\r\n\r\n")
    lines = [r.getMessage() for r in caplog.records if r.name == "test.http"]
    assert len(lines) == 2
    assert lines[0].startswith("[127.0.0.1]:")
    assert lines[0].endswith(": GET /hello 200 6")
    assert lines[1].endswith(": GET /nothing 404 14")  # the query is not logged


async def test_quiet_service_logs_answers_at_debug_and_errors_at_info(
    port: Callable[..., int], caplog: pytest.LogCaptureFixture
) -> None:
    # The metrics listener's setting: a scrape every 15 s is no mail-log line.
    caplog.set_level(logging.DEBUG, logger="test.http")
    await talk(await port(log_answers=False), GET + b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    levels = [(r.levelno, r.getMessage()[-16:]) for r in caplog.records if r.name == "test.http"]
    assert levels == [
        (logging.DEBUG, ": GET /hello 200 6"[-16:]),
        (logging.INFO, ": GET /nothing 404 14"[-16:]),
    ]


async def test_refusal_is_503_with_retry_after() -> None:
    client, server = trio.testing.memory_stream_pair()
    answer = b""
    async with trio.open_nursery() as nursery:
        refuse = Refusal.TOO_MANY_FROM_CLIENT
        nursery.start_soon(lambda: service().handle(server, ("192.0.2.1", 1), refuse=refuse))
        await client.send_all(GET)
        await client.send_eof()
        while chunk := await client.receive_some(65536):
            answer += chunk
    assert statuses(answer) == [503]
    assert head_of(answer)["retry-after"] == "60"
    assert head_of(answer)["connection"] == "close"


class Registry:
    shutting_down = False


async def test_shutdown_closes_idle_connections_and_the_next_answer_says_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = Registry()
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: service().handle(server, ("192.0.2.1", 1), registry=registry))
        await client.send_all(GET)
        answer = await client.receive_some(65536)
        assert statuses(answer) == [200]
        assert b"Connection: close" not in answer
        # Idle now: shutdown ends the connection without waiting for its timeout.
        registry.shutting_down = True
        with trio.fail_after(2):
            assert await client.receive_some(65536) == b""
    # A request in flight at shutdown is answered, with the close.
    registry.shutting_down = False
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: service().handle(server, ("192.0.2.1", 1), registry=registry))
        await client.send_all(GET[:10])
        await trio.sleep(0.5)
        registry.shutting_down = True
        await client.send_all(GET[10:] + GET)
        answer = b""
        while chunk := await client.receive_some(65536):
            answer += chunk
        assert statuses(answer) == [200]
        assert b"Connection: close" in answer


async def test_http_client_round_trips(port: Callable[..., int]) -> None:
    p = await port()

    def client() -> list[tuple[int, bytes]]:
        conn = http.client.HTTPConnection("127.0.0.1", p, timeout=10)
        got = []
        for method, path, body in (
            ("GET", "/hello", None),
            ("HEAD", "/hello", None),
            ("POST", "/echo", b"x" * 1000),
            ("GET", "/missing", None),
        ):
            conn.request(method, path, body=body)
            response = conn.getresponse()
            got.append((response.status, response.read()))
        conn.close()
        return got

    assert await trio.to_thread.run_sync(client) == [
        (200, b"hello\n"),
        (200, b""),
        (201, b"x" * 1000),
        (404, b"404 Not Found\n"),
    ]


@functools.cache
def fuzz_tls() -> TLSContextHolder:
    # One certificate for every example (a fixture's would be per test, not per example).
    issued = trustme.CA().issue_cert("localhost")
    with tempfile.TemporaryDirectory() as name:  # read once, by the holder
        cert, key = pathlib.Path(name) / "cert.pem", pathlib.Path(name) / "key.pem"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        return TLSContextHolder.for_files(cert, key)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.sampled_from(
                [
                    GET,
                    b"GET /hello HTTP/1.1\r\n",
                    b"Host: x\r\n",
                    b"\r\n",
                    b"Content-Length: 3\r\n",
                    b"Transfer-Encoding: chunked\r\n",
                    b"POST /echo HTTP/1.1\r\n",
                    b"HEAD /hello HTTP/1.0\r\n",
                    b"3\r\nabc\r\n0\r\n\r\n",
                    b"Connection: close\r\n",
                    b"Expect: 100-continue\r\n",
                    b"CONNECT x:443 HTTP/1.1\r\n",
                    b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
                    b"OPTIONS * HTTP/1.1\r\n",
                    b"GET http://x/hello?q HTTP/1.1\r\n",
                ]
            ),
        ),
        max_size=12,
    )
)
@hypothesis.example(chunks=[b"\x16", GET])
@hypothesis.example(chunks=[b"\x16\x03\x01\x00\x05hello", GET])
def test_any_bytes_get_an_answer_or_a_close(chunks: list[bytes]) -> None:
    # With a certificate, so that the first octet's TLS-or-not decision is fuzzed too.
    async def main() -> None:
        client, server = trio.testing.memory_stream_pair()
        svc = service(timeout=5.0, tls=fuzz_tls())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(svc.handle, server, ("192.0.2.1", 1))
            try:
                for chunk in chunks:
                    await client.send_all(chunk)
                await client.send_eof()
            except trio.BrokenResourceError:
                pass  # the server closed first
            answer = b""
            with trio.fail_after(10):  # the server ends by itself: the close
                while chunk := await client.receive_some(65536):
                    answer += chunk
            assert not answer or answer.startswith(b"HTTP/1.1 ")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_http_and_https_on_one_port(
    port: Callable[..., int],
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="test.http")
    p = await port(tls=TLSContextHolder.for_files(*tls_files))

    def over_tls() -> bytes:
        with (
            socket.create_connection(("127.0.0.1", p), timeout=10) as raw,
            client_tls.wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            sock.sendall(GET + b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return answer

    assert statuses(await trio.to_thread.run_sync(over_tls)) == [200, 200]
    # The same port, plain: the first octet is a method's letter, not a TLS record's 22.
    assert statuses(await talk(p, GET)) == [200]
    # A handshake that fails (not TLS after its first octet) is logged, not answered.
    assert await talk(p, b"\x16garbage\r\n\r\n" + GET) == b""
    # (logged after the close the client saw)
    with trio.fail_after(10):
        while not any("TLS" in r.getMessage() for r in caplog.records if r.name == "test.http"):
            await trio.sleep(0.01)
    # A client that connects and says nothing is closed after the timeout.
    p = await port(tls=TLSContextHolder.for_files(*tls_files), timeout=0.3)
    assert await talk(p, b"", shut=False) == b""
