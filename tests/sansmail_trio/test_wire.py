"""`PlainStream`, the server's plain TCP connection, and `Wire` on it (and on a
`DeflateStream` over it), on a socketpair."""

from __future__ import annotations

import math
import socket
import zlib

import pytest
import trio
import trio.testing

from sansmail import NEED_DATA
from sansmail_trio._compress import DeflateStream
from sansmail_trio._session import SessionTime
from sansmail_trio._wire import EAGER_LIMIT, PlainStream, Wire


def _pair() -> tuple[PlainStream, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return PlainStream(ours), theirs


async def test_reads_what_is_there_and_waits_for_more() -> None:
    stream, peer = _pair()
    with peer:
        peer.sendall(b"EHLO a\r\n")
        assert await stream.receive_some(100) == b"EHLO a\r\n"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.receive_some, 100)
            await trio.testing.wait_all_tasks_blocked()
            peer.sendall(b"QUIT\r\n")
        peer.close()
        assert await stream.receive_some(100) == b""
        stream.close()


class _Steps(trio.abc.Instrument):
    """Counts the scheduler's steps of one task."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_a_call_that_succeeds_at_once_yields_only_every_eager_limit() -> None:
    stream, peer = _pair()
    with peer:
        peer.sendall(b"x" * (3 * EAGER_LIMIT))
        steps = _Steps(trio.lowlevel.current_task())
        trio.lowlevel.add_instrument(steps)
        try:
            for _ in range(2 * EAGER_LIMIT):
                assert await stream.receive_some(1) == b"x"
                await stream.send_all(b".")
        finally:
            trio.lowlevel.remove_instrument(steps)
        # Trio's own socket methods yield after every call (64 steps here); these before
        # the call after each EAGER_LIMIT in a row (the 17th, 33rd and 49th), so the
        # loop still gets its turn.
        assert steps.steps == 3
        stream.close()


async def test_cancellation_reaches_a_busy_reader_at_its_yield() -> None:
    stream, peer = _pair()
    with peer:
        peer.sendall(b"y" * (4 * EAGER_LIMIT))
        reads = 0
        with trio.CancelScope() as scope:
            scope.cancel()
            while True:
                await stream.receive_some(1)
                reads += 1
        assert scope.cancelled_caught
        assert reads <= EAGER_LIMIT
        stream.close()


async def test_send_all_waits_for_room_and_delivers_everything() -> None:
    stream, peer = _pair()
    payload = bytes(range(256)) * 8192  # 2 MiB: more than the socket buffers hold
    received = bytearray()

    def drain() -> None:
        while chunk := peer.recv(65536):
            received.extend(chunk)

    with peer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, drain)
            await stream.send_all(payload)
            await stream.send_eof()
        assert bytes(received) == payload
        stream.close()


async def test_errors_are_the_ones_trio_streams_raise() -> None:
    stream, peer = _pair()
    peer.close()
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_all(b"z")  # EPIPE
    stream.close()
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some(10)
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"z")


class _Lines:
    """A core that hands over each line it received as an event."""

    def __init__(self) -> None:
        self.buffer = b""

    def receive_data(self, data: bytes) -> None:
        self.buffer += data if data else b"EOF\n"

    def next_event(self) -> object:
        if b"\n" not in self.buffer:
            return NEED_DATA
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def send(self, event: bytes) -> bytes:
        return event

    def send_failed(self) -> None:
        pass

    def start_tls(self) -> None:
        pass


async def test_before_wait_is_called_only_when_the_wire_blocks() -> None:
    stream, peer = _pair()
    wire = Wire(stream, _Lines())
    calls: list[str] = []
    with peer:
        peer.sendall(b"one\n")
        await wire.send(b"250 ok\r\n")
        assert await wire.next_event(before_wait=lambda: calls.append("wait")) == b"one"
        assert calls == []  # the reply went out and the line was there: no wait
        assert peer.recv(100) == b"250 ok\r\n"
        got: list[object] = []

        async def read() -> None:
            got.append(await wire.next_event(before_wait=lambda: calls.append("wait")))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            assert calls == ["wait"]
            peer.sendall(b"two\n")
        assert got == [b"two"]
    stream.close()


async def test_the_idle_deadline_is_set_only_while_blocked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream, peer = _pair()
    wire = Wire(stream, _Lines())
    time = SessionTime()
    with peer, time.scope:
        peer.sendall(b"ready\n")
        assert await time.wait_for_client(wire, 300) == b"ready"
        assert time.scope.deadline == math.inf  # and never was: nothing blocked
        start = trio.current_time()
        await time.wait_for_client(wire, 300)  # nothing comes
    assert time.scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(300)
    stream.close()


async def test_before_wait_is_not_called_for_what_a_compressed_stream_has() -> None:
    # COMPRESS=DEFLATE: lines the client pipelined, in the socket or inflated already,
    # cost no autologout timer each; one is armed only when the wire must wait.
    stream, peer = _pair()
    wire = Wire(DeflateStream(stream), _Lines())
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    calls: list[str] = []

    def before_wait() -> None:
        calls.append("wait")

    with peer:
        peer.sendall(deflate.compress(b"one\ntwo\n") + deflate.flush(zlib.Z_SYNC_FLUSH))
        assert await wire.next_event(before_wait=before_wait) == b"one"
        assert await wire.next_event(before_wait=before_wait) == b"two"
        assert calls == []
        got: list[object] = []

        async def read() -> None:
            got.append(await wire.next_event(before_wait=before_wait))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            assert calls == ["wait"]
            peer.sendall(deflate.compress(b"three\n") + deflate.flush(zlib.Z_SYNC_FLUSH))
        assert got == [b"three"]
    stream.close()
