"""The queue file's bytes (format 2): the header, and envelope records that are either
whole or absent, however a write was cut short."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sansmail.storage.queue._format import (
    HEAD_SIZE,
    MAGIC,
    PLACEHOLDER,
    PREFIX,
    Head,
    Records,
    content_head,
    envelope_record,
    parse_head,
    parse_records,
)

CONTENT = b"Subject: x\r\n\r\nbody\r\n"


def test_the_layout_is_fixed() -> None:
    assert MAGIC == b"sansmail-queue 2\n"
    assert len(content_head(0, 0)) == len(content_head(10**19, 0xFFFFFFFF)) == HEAD_SIZE
    assert len(PLACEHOLDER) == HEAD_SIZE
    assert len(MAGIC) + HEAD_SIZE == PREFIX


def test_a_committed_head_reads_back() -> None:
    data = MAGIC + content_head(len(CONTENT), zlib.crc32(CONTENT)) + CONTENT
    head = parse_head(data)
    assert head == Head(length=len(CONTENT), crc=zlib.crc32(CONTENT))
    assert head.records == len(data)


@pytest.mark.parametrize(
    "data", [b"", MAGIC[:3], MAGIC, MAGIC + content_head(1, 2)[:-1], MAGIC + PLACEHOLDER]
)
def test_a_file_that_was_never_committed_has_no_head(data: bytes) -> None:
    assert parse_head(data) is None


@pytest.mark.parametrize(
    "data",
    [
        b"{" * PREFIX,
        b"sansmail-queue 3\n" + content_head(1, 2),
        MAGIC + b"C 00000000000000000001 0000000g\n",
        MAGIC + b"X" * HEAD_SIZE,
        b"Subject",
    ],
)
def test_anything_else_is_not_a_queue_file(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_head(data)


def test_the_last_whole_record_wins() -> None:
    area = envelope_record(b'{"a":1}') + envelope_record(b'{"a":2}')
    assert parse_records(area) == Records(envelope=b'{"a":2}', end=len(area))
    assert parse_records(b"") == Records(envelope=None, end=0)


def test_nothing_after_a_damaged_record_counts() -> None:
    first = envelope_record(b'{"a":1}')
    damaged = bytearray(envelope_record(b'{"a":2}'))
    damaged[-2] ^= 1
    area = first + bytes(damaged) + envelope_record(b'{"a":3}')
    assert parse_records(area) == Records(envelope=b'{"a":1}', end=len(first))


@given(
    st.lists(st.binary(max_size=80), min_size=1, max_size=4),
    st.integers(min_value=0),
    st.binary(max_size=40),
)
def test_any_cut_leaves_the_last_whole_record(
    payloads: list[bytes], cut: int, debris: bytes
) -> None:
    records = [envelope_record(p) for p in payloads]
    area = b"".join(records)
    cut %= len(area) + 1
    found = parse_records(area[:cut] + (debris if cut < len(area) else b""))
    # Whatever follows the cut (nothing, or the debris of another write), what reads is
    # the last record that is whole before it.
    whole = 0
    expected: bytes | None = None
    for payload, record in zip(payloads, records, strict=True):
        if whole + len(record) > cut:
            break
        whole += len(record)
        expected = payload
    assert found.end >= whole
    if found.end == whole:
        assert found.envelope == expected
