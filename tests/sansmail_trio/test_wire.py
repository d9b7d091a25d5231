"""`PlainStream`: the server's plain TCP connection, on a socketpair."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from sansmail_trio._wire import EAGER_LIMIT, PlainStream


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
