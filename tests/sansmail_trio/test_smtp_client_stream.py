"""`PlainStream` as the outbound connection of the SMTP client: a non-blocking stdlib
socket that waits only when the kernel says EAGAIN, yields every `EAGER_LIMIT` calls that
did not wait, and raises what `trio.SocketStream` raises."""

from __future__ import annotations

import socket
import struct

import pytest
import trio
import trio.testing

from sansmail_trio._wire import EAGER_LIMIT, PlainStream


def _pair() -> tuple[PlainStream, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    return PlainStream(ours), theirs


async def _read_all(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        await trio.lowlevel.wait_readable(sock)
        data += sock.recv(65536)
    return bytes(data)


async def test_more_than_the_socket_holds_goes_out_whole_and_in_order() -> None:
    stream, peer = _pair()
    payload = bytes(range(256)) * 16384  # 4 MiB: the send has to wait for room
    async with trio.open_nursery() as nursery:
        received: list[bytes] = []

        async def read() -> None:
            received.append(await _read_all(peer, len(payload)))

        nursery.start_soon(read)
        await stream.send_all(payload)
    assert received == [payload]
    await stream.aclose()
    peer.close()


async def test_receive_returns_what_is_there_and_empty_at_eof() -> None:
    stream, peer = _pair()
    async with trio.open_nursery() as nursery:
        got: list[bytes] = []

        async def receive() -> None:
            got.append(await stream.receive_some())  # waits: nothing yet

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        peer.send(b"250 OK\r\n")
    assert got == [b"250 OK\r\n"]
    peer.close()
    assert await stream.receive_some() == b""
    await stream.aclose()


async def test_a_peer_that_is_always_ready_cannot_hold_the_loop() -> None:
    stream, peer = _pair()
    # Trio may resume us before the other task after a yield; after the second one
    # (before the call that follows each EAGER_LIMIT in a row) the other has run,
    # whatever the order.
    calls = 2 * EAGER_LIMIT + 1
    peer.send(b"x" * calls)
    others_ran = False

    async def other() -> None:
        nonlocal others_ran
        others_ran = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        for _ in range(calls):
            assert await stream.receive_some(1) == b"x"  # never has to wait
        assert others_ran
    await stream.aclose()
    peer.close()


async def test_a_wait_can_be_cancelled() -> None:
    stream, peer = _pair()
    with trio.move_on_after(0.05) as scope:
        await stream.receive_some()
    assert scope.cancelled_caught
    await stream.aclose()
    peer.close()


async def test_a_reset_connection_is_broken_and_a_closed_one_closed() -> None:
    stream, peer = _pair()
    # Closing with unread data and SO_LINGER 0 resets the connection.
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()

    async def send_until_refused() -> None:
        for _ in range(100):  # the first sends may still be taken by the kernel
            await stream.send_all(b"x" * 65536)

    with pytest.raises(trio.BrokenResourceError):
        await send_until_refused()
    await trio.aclose_forcefully(stream)  # cancelled, and closed all the same
    assert stream.socket.fileno() == -1
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some()
