"""`DeflateStream` over Trio memory streams: what it sends inflates to what was sent and
ends on a sync flush, what it receives comes out inflated in pieces no larger than asked
(a bomb never at once), octets read before the switch come first, and a stream that is
not deflate, or goes on past its end, is an `InflateError`."""

from __future__ import annotations

import zlib

import pytest
import trio
import trio.testing

from sansmail_trio._compress import CHUNK, THREAD_THRESHOLD, DeflateStream, InflateError

SYNC_FLUSH_MARK = b"\x00\x00\xff\xff"  # the empty stored block Z_SYNC_FLUSH ends with


def deflater() -> zlib._Compress:
    return zlib.compressobj(6, zlib.DEFLATED, -15)


def flushed(compressor: zlib._Compress, data: bytes) -> bytes:
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


async def test_each_send_leaves_whole_and_inflates_to_what_was_sent() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    stream = DeflateStream(ours)
    inflate = zlib.decompressobj(-15)
    big = b"".join(b"* %d FETCH (FLAGS (\\Seen))\r\n" % n for n in range(10_000))
    assert len(big) >= THREAD_THRESHOLD  # this one is deflated in a worker thread
    for data in (b"a OK small\r\n", big, b"b OK after\r\n"):
        await stream.send_all(data)
        wire = await theirs.receive_some(1 << 24)
        while not wire.endswith(SYNC_FLUSH_MARK):
            wire += await theirs.receive_some(1 << 24)
        assert inflate.decompress(wire) == data
    assert stream.sent_plain == len(big) + 24
    assert stream.sent_compressed < stream.sent_plain


async def test_concurrent_sends_keep_the_stream_in_order() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    stream = DeflateStream(ours)
    pieces = [bytes([65 + n]) * (THREAD_THRESHOLD if n % 2 else 10) for n in range(6)]
    async with trio.open_nursery() as nursery:
        for piece in pieces:
            nursery.start_soon(stream.send_all, piece)
            await trio.lowlevel.checkpoint()  # they start in this order
    await ours.send_stream.aclose()
    received = b""
    while chunk := await theirs.receive_some(1 << 20):
        received += chunk
    # Whatever order the tasks ran in, the peer inflates one valid stream.
    assert sorted(zlib.decompressobj(-15).decompress(received)) == sorted(b"".join(pieces))


async def test_received_octets_come_out_inflated_and_read_before_come_first() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    compressor = deflater()
    before = flushed(compressor, b"a NOOP\r\n")
    stream = DeflateStream(ours, received=before[:3])  # the switch cut it anywhere
    await theirs.send_all(before[3:] + flushed(compressor, b"b NOOP\r\n"))
    got = b""
    while got != b"a NOOP\r\nb NOOP\r\n":
        got += await stream.receive_some(100)
    assert stream.received_plain == len(got)


async def test_a_bomb_comes_out_a_bounded_piece_at_a_time() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    stream = DeflateStream(ours)
    compressor = deflater()
    bomb = b"".join(compressor.compress(b"x" * (1 << 20)) for _ in range(64))
    bomb += compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 100_000
    await theirs.send_all(bomb)
    total = 0
    while total < 64 << 20:
        piece = await stream.receive_some(4096)
        assert 0 < len(piece) <= 4096
        # What waits is compressed input, never inflated output.
        assert len(stream._input) <= len(bomb)
        total += len(piece)
    assert total == 64 << 20
    with trio.move_on_after(0.1):
        await stream.receive_some(CHUNK)
        pytest.fail("nothing more was sent")


@pytest.mark.parametrize(
    "wire",
    [
        b"\xff\xff\xff\xff",  # block type 3 does not exist (RFC 1951 §3.2.3)
        b"\x00\x05\x00\x00\x00",  # a stored block whose LEN and NLEN disagree
    ],
)
async def test_what_is_not_deflate_is_an_inflate_error(wire: bytes) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    stream = DeflateStream(ours)
    await theirs.send_all(wire)
    with pytest.raises(InflateError):
        await stream.receive_some(100)


async def test_octets_after_the_end_of_the_stream_are_refused() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    stream = DeflateStream(ours)
    compressor = deflater()
    await theirs.send_all(compressor.compress(b"a NOOP\r\n") + compressor.flush())
    assert await stream.receive_some(100) == b"a NOOP\r\n"
    await theirs.send_all(b"b NOOP\r\n")  # plain text behind a finished stream
    with pytest.raises(InflateError):
        await stream.receive_some(100)


async def test_the_peer_closing_is_the_end_of_the_stream() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    stream = DeflateStream(ours)
    data = flushed(deflater(), b"a NOOP\r\n")
    await theirs.send_all(data[:5])  # a block cut short
    await theirs.send_stream.aclose()
    got = b""
    while chunk := await stream.receive_some(100):
        got += chunk
    assert b"a NOOP\r\n".startswith(got)
    await stream.aclose()
