"""COMPRESS=DEFLATE (RFC 4978) as a stream transform: `DeflateStream` deflates what is
sent and inflates what is received, over any `trio.abc.Stream` (a plain socket, or TLS:
RFC 4978 §3 compresses first and encrypts last, so this sits above the TLS stream). The
protocol core under the `Wire` never sees a compressed octet.

Theory of operation
-------------------
Raw deflate (RFC 1951, no zlib or gzip header: ``wbits=-15``), one compressor and one
decompressor for the life of the connection, so each direction is one deflate stream
and later data is compressed against the 32 KiB of history before it.

Sending. Every `send_all` ends with a sync flush (``Z_SYNC_FLUSH``): its octets leave
whole, ending on a byte boundary, so the client can inflate every response as it
arrives (a response held back in the compressor's buffer would stall a client that
waits for it before it sends more). The `Wire` calls `send_all` once per batch of responses, when
it is about to wait for the client, so a FETCH of a thousand messages is one deflate
run and one flush, not one per message; a run of `THREAD_THRESHOLD` octets or more is
deflated in a worker thread, so that the other sessions of the process are not held
for its tens of milliseconds (measured by bench/imap_compress_bench.py). A lock keeps
the compressor's order and the transport's order the same when two tasks send (IDLE's
pusher and the command loop): interleaved, two runs would corrupt the stream.

Receiving. Inflation is bounded: `receive_some(max_bytes)` inflates at most `max_bytes`
octets (``decompress(data, max_length)``), and what the decompressor has not consumed
yet waits in its ``unconsumed_tail`` for the next call, instead of being inflated at
once. A few KiB of deflate can stand for gigabytes (a "deflate bomb"); inflated a
bounded piece at a time, they reach the core at the pace it reads, and the core's own
limits (a line over ``max_line_length``, a literal over its size) end the session before
memory grows: memory held here is one received chunk and one inflated piece. Input that
is not deflate raises `InflateError` (the adapter ends the session with a BYE and a log
line); the transport's end of stream, or one inside a deflate block, is end of stream.
"""

from __future__ import annotations

import zlib

import trio

__all__ = ["DEFAULT_LEVEL", "THREAD_THRESHOLD", "DeflateStream", "InflateError"]

#: The compression level of what we send: zlib's default, Dovecot's default for
#: imap_compress_deflate_level; bench/imap_compress_bench.py measures it.
DEFAULT_LEVEL = 6
#: Sends of at least this many octets are deflated in a worker thread: zlib lets go of
#: the GIL while it works, and a big FETCH (about 35 ms per MiB at level 6) would
#: otherwise hold the event loop, and every other session of the process, meanwhile.
THREAD_THRESHOLD = 64 * 1024
#: Compressed octets read from the transport at once, and the largest piece of inflated
#: octets handed out by one `receive_some` (the `Wire` asks for as much).
CHUNK = 64 * 1024
# RFC 4978 §3 with RFC 1951: raw deflate, the largest window.
_WBITS = -15


class InflateError(Exception):
    """What the peer sent is not a deflate stream (or goes on past its end)."""


class DeflateStream(trio.abc.Stream):
    """`transport`, compressed both ways (see the module docstring).

    Args:
        transport: the stream under compression (a socket or a TLS stream).
        received: octets the peer already sent after its COMPRESS, read before the
            switch (`imap.Connection.start_compression()`); they are inflated first.
        level: the compression level of what we send (1 fastest ... 9 smallest).
    """

    def __init__(
        self, transport: trio.abc.Stream, *, received: bytes = b"", level: int = DEFAULT_LEVEL
    ) -> None:
        self.transport = transport
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, _WBITS)
        self._inflate = zlib.decompressobj(_WBITS)
        self._input = received  # compressed, not yet given to the decompressor
        self._send_lock = trio.StrictFIFOLock()
        #: Octets before and after compression, each way, for logs and benches.
        self.sent_plain = 0
        self.sent_compressed = 0
        self.received_plain = 0
        self.received_compressed = len(received)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._send_lock:
            if len(data) >= THREAD_THRESHOLD:
                # Not cancellable (a worker thread is never abandoned): the compressor
                # is never left half way through a run.
                out = await trio.to_thread.run_sync(self._compress, bytes(data))
            else:
                out = self._compress(data)
            await self.transport.send_all(out)

    def _compress(self, data: bytes | bytearray | memoryview) -> bytes:
        out = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sent_plain += len(data)
        self.sent_compressed += len(out)
        return out

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        limit = CHUNK if max_bytes is None else max_bytes
        if limit < 1:
            raise ValueError("max_bytes must be at least 1")
        while True:
            while self._input:
                out = self._inflate_some(limit)
                if out:
                    self.received_plain += len(out)
                    return out
            data = await self.transport.receive_some(CHUNK)
            if not data:
                return b""  # the peer closed; a deflate block cut short ends here too
            self.received_compressed += len(data)
            self._input = bytes(data)

    def receive_now(self, max_bytes: int) -> bytes | None:
        """What `receive_some(max_bytes)` would return without waiting: input
        already here inflated, or the transport's when it has some at once
        (`_wire.ReceivesNow`); None when it would wait. The `Wire` arms no autologout
        timer for the commands a client pipelined, one per command otherwise."""
        receive_now = getattr(self.transport, "receive_now", None)
        while True:
            while self._input:
                out = self._inflate_some(max_bytes)
                if out:
                    self.received_plain += len(out)
                    return out
            # Bounded: a `PlainStream` says None after `EAGER_LIMIT` reads in a row.
            data = None if receive_now is None else receive_now(CHUNK)
            if data is None:
                return None
            if not data:
                return b""
            self.received_compressed += len(data)
            self._input = bytes(data)

    def _inflate_some(self, limit: int) -> bytes:
        inflate = self._inflate
        if inflate.eof:
            # The peer ended its deflate stream (BFINAL) and sent more: nothing can
            # inflate it, and reading it as plain octets would be an injection.
            raise InflateError("data after the end of the deflate stream")
        before = len(self._input)
        try:
            out = inflate.decompress(self._input, limit)
        except zlib.error as exc:
            raise InflateError(str(exc)) from None
        # With output capped, zlib stops when it has `limit` octets and leaves the rest
        # of the input here; with output to spare it has consumed all of it (and what
        # follows the end of the stream is unused_data, refused at the next call).
        self._input = inflate.unconsumed_tail or inflate.unused_data
        if not out and not inflate.eof and len(self._input) >= before:
            raise InflateError("the deflate stream makes no progress")  # never loop
        return out

    async def aclose(self) -> None:
        await self.transport.aclose()
