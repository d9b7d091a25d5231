"""One generic driver that moves bytes between a Trio stream and any sansmail core.

Every core in `sansmail/` has the same verbs (`receive_data`, `next_event`, `send`,
`send_failed`, `start_tls`), so this file is the only place that knows how to pump them.
It makes no protocol decisions: what to answer is the caller's (and the core's) business.

Theory of operation:

* `next_event()` asks the core for an event; on `NEED_DATA` it reads from the stream and
  feeds the core. A reset or closed transport is fed to the core as EOF (`b""`), so the
  caller sees the protocol's own `ConnectionClosed` event rather than a Trio exception.
* `send()` serialises through the core (which validates it against the state) but does
  not write at once: replies are *corked* in `_outgoing` and leave in one `send_all`
  when the core next needs data, or on `flush()`. A pipelining client that sent MAIL, RCPT,
  RCPT and DATA in one packet gets the four replies in one packet (RFC 2920 §3.2 permits
  exactly this grouping), and a lockstep client loses nothing: before we wait for its next
  command, everything owed to it has been written.
* If writing fails for any reason, cancellation included, the core is told with
  `send_failed()` so it does not believe bytes reached the peer that never did.
* Timeouts are the caller's: it wraps `next_event()` in `trio.fail_after`.
* A plain TCP connection accepted by the server is a `PlainStream`: a stdlib socket in
  non-blocking mode, read and written with the system call first and a wait only when
  the kernel says EAGAIN. Trio's own socket methods yield to the scheduler after every
  call that succeeded at once (two or three scheduler rounds per command of a lockstep
  client); here a call that succeeds is not a checkpoint, and one call in
  `EAGER_LIMIT` in a row yields, so a client whose data is always there cannot hold the
  loop, and cancellation (timeouts, shutdown) is noticed at the latest there. TLS runs
  on top of it through the `trio.abc.Stream` methods, as on any stream; a stream that
  has a `receive_now` (`ReceivesNow`: COMPRESS's `DeflateStream`) is read with it
  first, so that `before_wait` is called only when it has nothing. A
  `trio.SocketStream` (tests, clients) is read and written through its Trio socket, a
  TLS or memory stream through `receive_some`/`send_all`.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl
from collections.abc import Callable
from typing import Any, Protocol

import trio

from sansmail import NEED_DATA

__all__ = ["EAGER_LIMIT", "PlainStream", "ReceivesNow", "SansIOConnection", "Wire"]

#: Large reads keep message DATA in big chunks for the core's bulk scanner (a socket read
#: returns what is there, so small commands are not delayed by this size). It stays under
#: glibc's 128 KiB mmap threshold: each read allocates a buffer of this size, and above
#: the threshold every read cost an mmap, an mremap and an munmap (with TLB shootdowns
#: across threads), which measured as a large part of the server's system time.
RECEIVE_SIZE = 64 * 1024

#: Calls of a `PlainStream` that succeed at once before one of them yields anyway.
EAGER_LIMIT = 16


class ReceivesNow(Protocol):
    """A stream that can hand over data without waiting when it has some:
    ``receive_now(max_bytes)`` is what ``receive_some`` would return at once (``b""``
    at the end of the stream), or None when that would wait. No checkpoint."""

    def receive_now(self, max_bytes: int) -> bytes | None: ...


class SansIOConnection(Protocol):
    """The verbs every sansmail protocol core has."""

    def receive_data(self, data: bytes) -> None: ...

    def next_event(self) -> Any: ...

    def send(self, event: Any) -> bytes: ...

    def send_failed(self) -> None: ...

    def start_tls(self) -> None: ...


class Wire:
    """A Trio stream bound to a sans-I/O connection."""

    def __init__(self, stream: trio.abc.Stream, conn: SansIOConnection) -> None:
        self.stream = stream
        self.conn = conn
        self._outgoing = bytearray()
        self._eof_fed = False

    async def next_event(self, *, before_wait: Callable[[], None] | None = None) -> Any:
        """The core's next event (or `PAUSED`); reads from the peer as needed.
        `before_wait` is called (maybe more than once) before this waits for the peer:
        on a `PlainStream` only when the kernel has nothing to read (or no room for what
        is still to be written), on a stream with a `receive_now` (`ReceivesNow`) only
        when that has nothing, on other streams before any I/O."""
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                return event
            if self._eof_fed:
                # A core that wants data after EOF is broken; do not spin.
                raise RuntimeError("protocol core asked for data after end of stream")
            await self.flush(before_wait=before_wait)
            stream = self.stream
            data: bytes | bytearray | None = None
            try:
                if type(stream) is PlainStream:
                    if before_wait is not None:
                        data = stream.receive_now(RECEIVE_SIZE)
                        if data is None:
                            before_wait()
                    if data is None:
                        data = await stream.receive_some(RECEIVE_SIZE)
                else:
                    if before_wait is not None:
                        # A stream that can say it has data without waiting (a
                        # `DeflateStream` with input inflated or on the socket) arms
                        # nothing for the commands a client pipelined.
                        receive_now = getattr(stream, "receive_now", None)
                        if receive_now is not None:
                            data = receive_now(RECEIVE_SIZE)
                        if data is None:
                            before_wait()
                    if data is None:
                        if type(stream) is trio.SocketStream:
                            data = await stream.socket.recv(RECEIVE_SIZE)
                        else:
                            data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
                # OSError: the socket's own (a reset), which the stream would have turned
                # into BrokenResourceError.
                data = b""
            if not data:
                self._eof_fed = True
            self.conn.receive_data(bytes(data) if isinstance(data, bytearray) else data)

    def buffered_event(self) -> Any:
        """The core's next event when it needs no more data for it (the client
        pipelined it), else None; never reads, writes or waits."""
        event = self.conn.next_event()
        return None if event is NEED_DATA else event

    @property
    def corked(self) -> int:
        """Octets queued by `send()`/`queue()` and not written yet."""
        return len(self._outgoing)

    def queue(self, event: Any) -> None:
        """Serialise `event` through the core and queue its bytes: `send()` without a
        checkpoint, callable from the worker thread that answers for the session."""
        self._outgoing += self.conn.send(event)

    async def send(self, event: Any, *, flush: bool = False) -> None:
        """Serialise `event` through the core and queue its bytes (see module docstring)."""
        self._outgoing += self.conn.send(event)
        if flush:
            await self.flush()

    async def flush(self, *, before_wait: Callable[[], None] | None = None) -> None:
        """Write everything queued by `send()`; `before_wait` as in `next_event`."""
        if not self._outgoing:
            return
        data = bytes(self._outgoing)
        self._outgoing.clear()
        stream = self.stream
        try:
            if type(stream) is PlainStream:
                if before_wait is not None:
                    sent = stream.send_now(data)
                    if sent == len(data):
                        return
                    data = data[sent:]
                    before_wait()
                await stream.send_all(data)
            else:
                if before_wait is not None:
                    before_wait()
                if type(stream) is trio.SocketStream:
                    await _send_all(stream.socket, data)
                else:
                    await stream.send_all(data)
        except BaseException:
            self.conn.send_failed()
            raise

    async def start_tls(self, context: ssl.SSLContext, *, server_side: bool = True) -> None:
        """Wrap the stream in TLS, handshake, then let the core switch (it refuses if
        plaintext is still buffered: that can only be an injection)."""
        await self.flush()
        tls = trio.SSLStream(self.stream, context, server_side=server_side)
        await tls.do_handshake()
        self.stream = tls
        self.conn.start_tls()

    async def aclose(self, *, last_words: bytes = b"", grace: float = 1.0) -> None:
        """Write what we still owe the peer plus `last_words` (bytes serialised outside
        the core, e.g. a 421 after a fatal protocol error, when the core is in its ERROR
        state), bounded by `grace` seconds even under cancellation, then close."""
        self._outgoing += last_words
        stream = self.stream
        if type(stream) is PlainStream and self._outgoing:
            # Most goodbyes (221 after QUIT) fit the socket buffer: one send(2), and no
            # cancel scope with a deadline to bound a wait that does not happen.
            try:
                sent = stream.socket.send(self._outgoing)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.conn.send_failed()
                sent = len(self._outgoing)  # the connection is gone: nothing more to say
            del self._outgoing[:sent]
        if self._outgoing or type(stream) is not PlainStream:
            with trio.move_on_after(grace) as scope:
                scope.shield = True
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, OSError
                ):
                    await self.flush()
        if type(self.stream) is PlainStream:
            self.stream.close()  # what aclose_forcefully does, without a cancel scope
        else:
            await trio.aclose_forcefully(self.stream)


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    # SocketStream.send_all without its layers: the errors are translated the same way.
    try:
        with memoryview(data) as view:
            sent = await sock.send(view)
            while sent < len(view):
                sent += await sock.send(view[sent:])
    except OSError as exc:
        if exc.errno in (errno.EBADF, errno.ENOTSOCK):
            raise trio.ClosedResourceError("this socket was already closed") from None
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


class PlainStream(trio.abc.HalfCloseableStream):
    """A plain TCP connection on a non-blocking stdlib socket (see the module
    docstring): `receive_some` and `send_all` are a checkpoint only when they wait, or
    every `EAGER_LIMIT` calls. Errors are the ones `trio.SocketStream` raises."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self._eager = 0

    @classmethod
    def take(cls, stream: trio.SocketStream) -> PlainStream:
        """The connection of `stream` (an outbound one, as `trio.open_tcp_stream` made
        it), which is left without it."""
        sock = socket.socket(fileno=stream.socket.detach())
        sock.setblocking(False)
        return cls(sock)

    def receive_now(self, max_bytes: int) -> bytes | None:
        """recv(2) once, without waiting and without a checkpoint: None when there is
        nothing to read yet, or when it is time to yield (`receive_some` then does)."""
        if self._eager >= EAGER_LIMIT:
            return None
        try:
            data = self.socket.recv(max_bytes)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _translate(exc) from exc
        self._eager += 1
        return data

    def send_now(self, data: bytes) -> int:
        """send(2) once, without waiting and without a checkpoint: the octets taken
        (0 when there is no room, or when it is time to yield)."""
        if self._eager >= EAGER_LIMIT:
            return 0
        try:
            sent = self.socket.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise _translate(exc) from exc
        self._eager += 1
        return sent

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        sock = self.socket
        if self._eager >= EAGER_LIMIT:
            self._eager = 0
            await trio.lowlevel.checkpoint()
        while True:
            try:
                data = sock.recv(max_bytes or RECEIVE_SIZE)
            except BlockingIOError:
                self._eager = 0
                await trio.lowlevel.wait_readable(sock)
            except OSError as exc:
                raise _translate(exc) from exc
            else:
                self._eager += 1
                return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.socket
        if self._eager >= EAGER_LIMIT:
            self._eager = 0
            await trio.lowlevel.checkpoint()
        with memoryview(data) as view:
            sent = 0
            while sent < len(view):
                try:
                    sent += sock.send(view[sent:] if sent else view)
                except BlockingIOError:
                    self._eager = 0
                    await trio.lowlevel.wait_writable(sock)
                except OSError as exc:
                    raise _translate(exc) from exc
        self._eager += 1

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self.socket)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise _translate(exc) from exc

    def close(self) -> None:
        """Close at once. Only the task that owns the stream ever waits on its socket,
        and it is the one closing it, so no waiter needs `notify_closing`; the kernel
        drops a closed socket from the epoll set by itself."""
        self.socket.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


def _translate(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno in (errno.EBADF, errno.ENOTSOCK):
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")
