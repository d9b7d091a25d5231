"""A small HTTP/1.1 server on Trio for the `http` (client autoconfiguration, MTA-STS
policy) and `metrics` listeners: h11 parses and frames, this file carries bytes, owns
time and routes each request to a handler.

Theory of operation:

* One h11 `Connection` per TCP connection, one request at a time (HTTP/1.1 pipelining
  is answered in order: h11 keeps what follows a request until `start_next_cycle`).
* A request is read whole before its handler runs: the request line and headers within
  `MAX_HEAD` octets (h11's `max_incomplete_event_size`; over it h11 says 431), the body
  within `MAX_BODY` (a Content-Length over it is refused with 413 before a byte of the
  body is read; a chunked body is counted as it comes). Every request must arrive whole
  within `timeout` seconds of the wait for it starting: an idle keep-alive connection is
  closed silently then, a half-sent request gets 408 (RFC 9110 §15.5.9).
* Routes are keyed ``"/path"`` (GET, and HEAD) or ``"METHOD /path"`` (that method). A
  path no route has is 404; a path served for other methods only is 405 with the
  ``Allow`` header (RFC 9110 §15.5.6). HEAD is answered as GET without the body
  (§9.3.2). The path is matched as sent, without its query; the handler gets the query.
* A request h11 cannot parse is answered 400 (431 for an oversized head) and the
  connection closed; a handler that raises is a bug, answered 500 and logged. No error
  ever reaches the client as more than a status line and a short text.
* ``Connection: close`` (or HTTP/1.0 without keep-alive) is honoured by h11; we also
  close after `max_requests` on one connection and at shutdown (the response in flight
  is finished with ``Connection: close``; a connection idle between requests is closed
  within `STOP_CHECK` seconds: it looks at the registry's ``shutting_down`` rather than
  joining the registry, whose entries are the mail sessions `who` lists).
* A connection over the listener's caps (`_serve.py`, family HTTP or METRICS) gets
  503 with ``Retry-After`` before its request is read, then the close.
* http and https on the same port when the service has a certificate (`tls`): the
  first octets decide, as a TLS record starts with 22 (a handshake record, RFC 8446
  §5.1) and an HTTP request with a method's letter. One listener on ports 80 and 443
  then answers both, as Thunderbird tries https and then http, and MTA-STS needs https
  (RFC 8461 §3.3). The octets read to decide are given back (`_Replay`) to the TLS
  handshake or to h11. A connection over a cap is told so over TLS too.

One log line per request, in the mail log's manner: client, method, path, status and
the body's size.
"""

from __future__ import annotations

import contextlib
import email.utils
import http
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

import attrs
import h11
import trio

from sansmail import __version__
from sansmail.sessions.common import Refusal
from sansmail_trio._session import SessionRegistry
from sansmail_trio._tls import (
    TLS_HANDSHAKE_TIMEOUT,
    TLSContextHolder,
    TLSHandshakeError,
    tls_handshake,
)

__all__ = [
    "MAX_BODY",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_IP",
    "MAX_HEAD",
    "MAX_REQUESTS",
    "TIMEOUT",
    "HTTPService",
    "Handler",
    "Request",
    "Response",
]

#: Request line and headers, in octets (nginx's large_client_header_buffers is 4 x 8k).
MAX_HEAD = 16 * 1024
#: A request body, in octets: an autodiscover request is a few hundred.
MAX_BODY = 64 * 1024
#: Seconds a request has to arrive whole, counted from the start of the wait for it
#: (which is also the keep-alive idle limit).
TIMEOUT = 30.0
#: Requests served on one connection before it is closed.
MAX_REQUESTS = 100
#: Simultaneous connections to one HTTP listener family, and from one address (in
#: every server process): clients fetch a few small documents and go.
MAX_CONNECTIONS = 500
MAX_CONNECTIONS_PER_IP = 20
#: After an error response with the request unread: how long, and how much of it, is
#: read and dropped before the close, so the kernel does not answer the unread data
#: with a reset that could destroy the response before the client reads it.
LINGER_TIME = 2.0
LINGER_BYTES = 1024 * 1024
_RECEIVE_SIZE = 16 * 1024
_TLS_HANDSHAKE = 22  # the content type of a TLS handshake record (RFC 8446 §5.1)
#: Seconds between two looks for shutdown while a connection waits for its next request.
STOP_CHECK = 1.0
_SERVER = f"sansmail/{__version__}".encode()


@attrs.frozen(kw_only=True)
class Request:
    """One request as its handler sees it: `path` without the query, `query` the part
    after ``?`` (undecoded, "" when none), header names lowercased (repeated headers
    joined with ", ")."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    client: tuple[str, int]


@attrs.frozen
class Response:
    """A handler's answer. Content-Length, Date and Server are added; `headers` are any
    others (Cache-Control, Allow ...)."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Response]]


class _BadRequestError(Exception):
    """The request cannot be served; `status` says why (400, 408, 413, 431)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class _ClosedError(Exception):
    """The client went away (EOF or a broken connection) with no request pending."""


@attrs.define
class HTTPService:
    """One HTTP listener: its routes (see the module docstring for the keys)."""

    routes: Mapping[str, Handler]
    log: logging.Logger
    #: The certificate for https (http is answered too); None: plain http only.
    tls: TLSContextHolder | None = None
    timeout: float = TIMEOUT
    max_requests: int = MAX_REQUESTS
    #: Answered requests are logged at info; False: at debug, errors still at info (a
    #: Prometheus scrape every 15 s would be 5760 lines a day in the mail log).
    log_answers: bool = True
    _table: dict[str, dict[str, Handler]] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        for key, handler in self.routes.items():
            method, _, path = key.rpartition(" ")
            if not path.startswith("/"):
                raise ValueError(f"route {key!r}: a path starts with /")
            methods = self._table.setdefault(path, {})
            for name in (method.upper(),) if method else ("GET", "HEAD"):
                methods[name] = handler
            if method.upper() == "GET":
                methods.setdefault("HEAD", handler)

    @property
    def implicit_tls(self) -> bool:
        # The listener never runs the handshake itself: `handle` sees whether the
        # client starts one.
        return False

    async def handle(
        self,
        stream: trio.abc.Stream,
        peer: tuple[str, int],
        *,
        refuse: Refusal | None = None,
        registry: SessionRegistry | None = None,
        tls: str | None = None,
    ) -> None:
        """Serve one connection to its end, then close it. `refuse` (the caps,
        shutdown) answers 503 at once; `registry` says when shutdown has begun: the
        connection then ends after the response in flight, or at once when idle.
        `tls` is not used: a request is the same over https."""
        if self.tls is not None:
            detected = await self._detect_tls(stream, peer)
            if detected is None:
                return
            stream = detected
        connection = _Connection(self, stream, peer, registry)
        try:
            if refuse is not None:
                await connection.refuse(refuse)
            else:
                await connection.run()
        except h11.LocalProtocolError as exc:  # a bug of ours: the connection ends
            self.log.error("%s: HTTP state error: %s", connection.client, exc)
        finally:
            await connection.close()

    async def _detect_tls(
        self, stream: trio.abc.Stream, peer: tuple[str, int]
    ) -> trio.abc.Stream | None:
        """`stream` as TLS when the client starts a handshake, else as it came (with
        what was read to decide); None (and `stream` closed) when the client sent
        nothing in time, left, or failed its handshake."""
        first: bytes | bytearray = b""
        with trio.move_on_after(self.timeout):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                first = await stream.receive_some(_RECEIVE_SIZE)
        if not first:
            await trio.aclose_forcefully(stream)
            return None
        replay = _Replay(stream, bytes(first))
        if first[0] != _TLS_HANDSHAKE or self.tls is None:
            return replay
        try:
            return await tls_handshake(replay, self.tls.context, TLS_HANDSHAKE_TIMEOUT)
        except TLSHandshakeError as exc:
            self.log.info("[%s]:%d: %s", peer[0], peer[1], exc)
            return None


class _Replay(trio.abc.Stream):
    """A stream whose first octets, already read from it, are read again first."""

    def __init__(self, stream: trio.abc.Stream, first: bytes) -> None:
        self.stream = stream
        self._first = first

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._first:
            await trio.lowlevel.checkpoint()
            size = len(self._first) if max_bytes is None else max_bytes
            data, self._first = self._first[:size], self._first[size:]
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


class _Connection:
    def __init__(
        self,
        service: HTTPService,
        stream: trio.abc.Stream,
        peer: tuple[str, int],
        registry: SessionRegistry | None,
    ) -> None:
        self.service = service
        self.stream = stream
        self.peer = (str(peer[0]), int(peer[1]))
        self.client = f"[{self.peer[0]}]:{self.peer[1]}"
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.registry = registry
        self._received = 0  # octets of the request being read

    @property
    def stopping(self) -> bool:
        return self.registry is not None and self.registry.shutting_down

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        for served in range(1, self.service.max_requests + 1):
            try:
                request = await self._read_request()
            except _ClosedError:
                return
            except _BadRequestError as exc:
                await self._fail(exc.status, str(exc))
                return
            response = await self._respond(request)
            last = served == self.service.max_requests or self.stopping
            if not await self._send(request, response, close=last):
                return
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return  # MUST_CLOSE: Connection: close, HTTP/1.0, or our own close
            self.conn.start_next_cycle()

    async def _read_request(self) -> Request:
        """The next request, whole; `_ClosedError` when the client left (or idled out, or
        shutdown came) before sending one, `_BadRequestError` for what cannot be served."""
        self._received = 0
        with trio.move_on_after(self.service.timeout) as deadline:
            head = await self._next_event(head=True)
            if isinstance(head, h11.ConnectionClosed):
                raise _ClosedError
            assert isinstance(head, h11.Request)
            if head.http_version not in (b"1.0", b"1.1"):  # h11 takes any HTTP/d.d
                raise _BadRequestError(505, f"HTTP/{head.http_version.decode()}")
            method = head.method.decode("ascii")
            length = _content_length(head.headers)
            if length is not None and length > MAX_BODY:
                raise _BadRequestError(413, f"body of {length} octets over {MAX_BODY}")
            if self.conn.they_are_waiting_for_100_continue:
                await self._write(
                    self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                )
            body = bytearray()
            while True:
                event = await self._next_event(head=False)
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY:
                        raise _BadRequestError(413, f"body over {MAX_BODY} octets")
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # ConnectionClosed in the middle of a body
                    raise _ClosedError
            path, query = _split_target(head.target)
            return Request(
                method=method,
                path=path,
                query=query,
                headers=_headers(head.headers),
                body=bytes(body),
                client=self.peer,
            )
        assert deadline.cancelled_caught
        if self._received:
            raise _BadRequestError(408, "request not received in time")
        raise _ClosedError

    async def _next_event(self, *, head: bool) -> h11.Event:
        """h11's next event, reading as needed. While the head is awaited (`head`), a
        read never takes the buffer past ``MAX_HEAD + 1`` octets: h11 checks its limit
        only on what is still incomplete, so a longer head that arrived whole in one
        read would pass."""
        size = _RECEIVE_SIZE
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _BadRequestError(exc.error_status_hint, str(exc)) from None
            if event is not h11.NEED_DATA:
                assert isinstance(event, h11.Event)
                return event
            if head:
                buffered = len(self.conn.trailing_data[0])
                size = max(1, MAX_HEAD + 1 - buffered)
                if not self._received and not buffered:
                    data = await self._idle_receive(size)
                    self._received += len(data)
                    self.conn.receive_data(bytes(data))
                    continue
            data = await self._receive(size)
            self._received += len(data)
            self.conn.receive_data(bytes(data))

    async def _receive(self, size: int) -> bytes | bytearray:
        try:
            return await self.stream.receive_some(size)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return b""

    async def _idle_receive(self, size: int) -> bytes | bytearray:
        """A read between requests, which shutdown may end: the connection is then
        closed (`_ClosedError`). Shutdown is looked for once every `STOP_CHECK`
        seconds of the wait: a session registry reaches sessions of its own kind."""
        while not self.stopping:
            with trio.move_on_after(STOP_CHECK):
                return await self._receive(size)
        raise _ClosedError

    async def _respond(self, request: Request) -> Response:
        methods = self.service._table.get(request.path)
        if methods is None:
            return _text(404)
        handler = methods.get(request.method)
        if handler is None:
            allow = ", ".join(sorted(methods))
            return _text(405, headers=(("Allow", allow),))
        try:
            return await handler(request)
        except Exception:  # a bug: answered 500, logged whole
            self.service.log.exception(
                "%s: %s %s: handler failed", self.client, request.method, request.path
            )
            return _text(500)

    async def _send(self, request: Request, response: Response, *, close: bool) -> bool:
        """Write `response`; False when the connection broke."""
        head = request.method == "HEAD"
        self._log(request.method, request.path, response.status, len(response.body))
        data = self.conn.send(_h11_response(response, close=close))
        if not head:
            data += self.conn.send(h11.Data(data=response.body)) if response.body else b""
        data += self.conn.send(h11.EndOfMessage())
        return await self._write(data)

    async def _fail(self, status: int, why: str) -> None:
        """Answer an unservable request (if h11 still lets us) and let the close come."""
        self.service.log.info("%s: bad request: %s (%d)", self.client, why, status)
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = _text(status)
        data = self.conn.send(_h11_response(response, close=True))
        data += self.conn.send(h11.Data(data=response.body))
        data += self.conn.send(h11.EndOfMessage())
        if await self._write(data):
            await self._linger()

    async def refuse(self, refusal: Refusal) -> None:
        self.service.log.info("%s: refused: %s (503)", self.client, refusal.value)
        response = _text(503, headers=(("Retry-After", "60"),))
        data = self.conn.send(_h11_response(response, close=True))
        data += self.conn.send(h11.Data(data=response.body))
        data += self.conn.send(h11.EndOfMessage())
        if await self._write(data):
            await self._linger()

    async def _write(self, data: bytes) -> bool:
        try:
            with trio.move_on_after(self.service.timeout) as scope:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.conn.send_failed()
            return False
        if scope.cancelled_caught:  # the client does not read
            self.conn.send_failed()
            return False
        return True

    async def _linger(self) -> None:
        # The request we did not read would make close(2) send a reset, which can
        # destroy our answer in the client's receive buffer; read and drop it briefly.
        dropped = 0
        with trio.move_on_after(LINGER_TIME):
            while dropped < LINGER_BYTES:
                try:
                    data = await self.stream.receive_some(_RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
                if not data:
                    return
                dropped += len(data)

    async def close(self) -> None:
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self.stream.aclose()

    def _log(self, method: str, path: str, status: int, size: int) -> None:
        level = logging.INFO if self.service.log_answers or status >= 400 else logging.DEBUG
        self.service.log.log(level, "%s: %s %s %d %d", self.client, method, path, status, size)


def _text(status: int, *, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    phrase = http.HTTPStatus(status).phrase
    return Response(status, f"{status} {phrase}\n".encode(), headers=headers)


def _h11_response(response: Response, *, close: bool) -> h11.Response:
    headers: list[tuple[bytes, bytes]] = [
        (b"Content-Type", response.content_type.encode("latin-1")),
        (b"Content-Length", str(len(response.body)).encode("ascii")),
        (b"Date", email.utils.formatdate(usegmt=True).encode("ascii")),
        (b"Server", _SERVER),
    ]
    headers.extend(
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers
    )
    if close:
        headers.append((b"Connection", b"close"))
    try:
        reason = http.HTTPStatus(response.status).phrase.encode("ascii")
    except ValueError:
        reason = b""
    return h11.Response(status_code=response.status, headers=headers, reason=reason)


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    # h11 has checked it is one decimal number when present.
    for name, value in headers:
        if name == b"content-length":
            return int(value)
    return None


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("ascii")  # h11 lowercases names and allows only token octets
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _split_target(target: bytes) -> tuple[str, str]:
    """Path and query of a request target (RFC 9112 §3.2): origin-form ``/p?q``, or
    absolute-form ``http://host/p?q`` (which a server must accept), whose host part is
    dropped; ``*`` and authority-form give a path no route has."""
    text = target.decode("ascii")  # h11 allows only visible ASCII in a target
    if not text.startswith("/"):
        scheme, sep, rest = text.partition("://")
        if sep and scheme.lower() in ("http", "https"):
            slash = rest.find("/")
            text = rest[slash:] if slash >= 0 else "/"
    path, _, query = text.partition("?")
    path = path.partition("#")[0]
    return path, query
