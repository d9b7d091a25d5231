"""Stateful fuzzing of the milter client core: while the MTA sends its steps (mostly in
order, sometimes out of it), whatever the milter answers (valid packets of every reply,
oversized lengths, raw bytes, EOF) yields only documented events, RemoteProtocolError,
or for a step out of order LocalProtocolError, and a bounded buffer."""

from __future__ import annotations

import struct

from fuzz_drivers import driver_class
from fuzz_machines import machine


def packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(command) + len(data)) + command + data


FRAGMENTS = [
    packet(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF)),
    packet(b"O", struct.pack(">III", 2, 0, 0)),
    packet(b"O", struct.pack(">III", 6, 0x1FF, 0) + struct.pack(">I", 1) + b"{rcpt_addr}\0"),
    packet(b"c"),
    packet(b"a"),
    packet(b"r"),
    packet(b"t"),
    packet(b"d"),
    packet(b"s"),
    packet(b"p"),
    packet(b"y", b"554 5.7.1 no\0"),
    packet(b"y", b"999 x\0"),
    packet(b"h", b"X-A\0one\0"),
    packet(b"m", struct.pack(">I", 1) + b"Subject\0new\0"),
    packet(b"i", struct.pack(">I", 0) + b"X-B\0two\0"),
    packet(b"+", b"<new@example.com>\0"),
    packet(b"-", b"<old@example.com>\0"),
    packet(b"e", b"<s@example.com>\0"),
    packet(b"b", b"new body"),
    packet(b"q", b"held\0"),
    packet(b"Z"),
    struct.pack(">I", 0xFFFFFFFF),
    struct.pack(">I", 0),
]

TestMilter = machine(driver_class("milter"), FRAGMENTS).TestCase
