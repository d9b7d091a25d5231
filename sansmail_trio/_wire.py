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
* A plain TCP stream (`trio.SocketStream`) is read and written through its Trio socket
  directly: the same system calls, checkpoints and errors as the stream's own methods,
  without the per-call layers around them (a generator context manager per call that
  translates errors, a conflict detector) that showed in the profile of a busy server.
  A TLS stream goes through `receive_some`/`send_all` as before.
"""

from __future__ import annotations

import contextlib
import errno
import ssl
from typing import Any, Protocol

import trio

from sansmail import NEED_DATA

__all__ = ["SansIOConnection", "Wire"]

#: Large reads keep message DATA in big chunks for the core's bulk scanner (a socket read
#: returns what is there, so small commands are not delayed by this size). It stays under
#: glibc's 128 KiB mmap threshold: each read allocates a buffer of this size, and above
#: the threshold every read cost an mmap, an mremap and an munmap (with TLB shootdowns
#: across threads), which measured as a large part of the server's system time.
RECEIVE_SIZE = 64 * 1024


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

    async def next_event(self) -> Any:
        """The core's next event (or `PAUSED`); reads from the peer as needed."""
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                return event
            if self._eof_fed:
                # A core that wants data after EOF is broken; do not spin.
                raise RuntimeError("protocol core asked for data after end of stream")
            await self.flush()
            stream = self.stream
            data: bytes | bytearray
            try:
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

    async def send(self, event: Any, *, flush: bool = False) -> None:
        """Serialise `event` through the core and queue its bytes (see module docstring)."""
        self._outgoing += self.conn.send(event)
        if flush:
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued by `send()`."""
        if not self._outgoing:
            return
        data = bytes(self._outgoing)
        self._outgoing.clear()
        stream = self.stream
        try:
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
        with trio.move_on_after(grace) as scope:
            scope.shield = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self.flush()
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
