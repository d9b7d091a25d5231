"""The load generator's reply parser and message builder, then the generator over loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import loadgen
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loadgen import LoadSpec, Reply, ReplyError, ReplyParser

# --- reply parser -------------------------------------------------------------------------

reply_text = st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b)
replies = st.builds(
    Reply,
    code=st.integers(200, 599),
    lines=st.lists(reply_text, min_size=1, max_size=5).map(tuple),
)


def encode(reply: Reply) -> bytes:
    out = b""
    for i, text in enumerate(reply.lines):
        sep = b" " if i == len(reply.lines) - 1 else b"-"
        out += b"%d%s%s\r\n" % (reply.code, sep, text)
    return out


def parse_all(chunks: list[bytes]) -> list[Reply]:
    parser = ReplyParser()
    got = []
    for chunk in chunks:
        parser.feed(chunk)
        while (reply := parser.next_reply()) is not None:
            got.append(reply)
    return got


@settings(deadline=None, max_examples=200)
@given(st.lists(replies, min_size=1, max_size=6), st.data())
def test_replies_survive_any_split(expected, data):
    wire = b"".join(encode(r) for r in expected)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert parse_all(chunks) == expected
    assert parse_all([bytes([b]) for b in wire]) == expected


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=200))
def test_garbage_gives_replies_or_reply_error_only(wire):
    with contextlib.suppress(ReplyError):
        parse_all([wire])


def test_bare_code_line_is_a_reply():
    assert parse_all([b"250\r\n"]) == [Reply(250, (b"",))]


def test_incomplete_reply_waits():
    assert parse_all([b"250-first\r\n250 sec"]) == []


@pytest.mark.parametrize(
    "wire",
    [
        b"250 ok\n",  # bare LF (RFC 5321 section 4.1.1.4)
        b"\n",
        b"25 short\r\n",
        b"abc text\r\n",
        b"650 not a reply class\r\n",
        b"250x text\r\n",
        b"250-a\r\n251 b\r\n",  # code changed inside a multi-line reply
        b"250 a\rb\r\n",
    ],
)
def test_malformed_replies_raise(wire):
    with pytest.raises(ReplyError):
        parse_all([wire])


def test_reply_size_is_bounded():
    parser = ReplyParser(max_bytes=100)
    parser.feed(b"250-" + b"x" * 200)
    with pytest.raises(ReplyError):
        parser.next_reply()
    parser = ReplyParser(max_bytes=100)
    parser.feed(b"250-" + b"x" * 60 + b"\r\n" + b"250-" + b"y" * 60 + b"\r\n")
    with pytest.raises(ReplyError):
        parser.next_reply()


# --- message ------------------------------------------------------------------------------


@settings(deadline=None, max_examples=100)
@given(st.integers(2, 5000))
def test_payload_is_exactly_size_crlf_lines(size):
    payload = loadgen.build_payload(size)
    assert len(payload) == size
    assert payload.endswith(b"\r\n")
    lines = payload.split(b"\r\n")[:-1]
    assert all(b"\n" not in line and b"\r" not in line for line in lines)
    assert not any(line.startswith(b".") for line in lines)
    assert all(len(line) <= 79 for line in lines)


def test_payload_looks_like_smtp_source():
    # As captured from `smtp-source -l 300`: numbered 80-byte lines, then a short X line.
    payload = loadgen.build_payload(300)
    lines = payload.split(b"\r\n")
    assert lines[0] == b"1" + b"X" * 77
    assert lines[2] == b"3" + b"X" * 77
    assert lines[3] == b"X" * 58
    assert lines[4] == b""
    assert loadgen.build_payload(0) == b""
    assert loadgen.build_payload(1) == b"\r\n"
    assert loadgen.build_payload(81) == b"1" + b"X" * 78 + b"\r\n"
    with pytest.raises(ValueError, match="size"):
        loadgen.build_payload(-1)


def test_headers_end_with_empty_line():
    h = loadgen.message_headers("a@b.test", "c@d.test", "e.test", "1.2")
    assert h.startswith(b"From: <a@b.test>\r\nTo: <c@d.test>\r\nDate: ")
    assert h.endswith(b"Message-Id: <1.2@e.test>\r\n\r\n")


# --- helpers ------------------------------------------------------------------------------


@settings(deadline=None, max_examples=200)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_is_within_range_and_monotonic(values, q):
    values.sort()
    p = loadgen.percentile(values, q)
    assert values[0] <= p <= values[-1]
    assert loadgen.percentile(values, 0) == values[0]
    assert loadgen.percentile(values, 100) == values[-1]
    assert loadgen.percentile(values, min(100.0, q + 1)) >= p - 1e-9 * max(1.0, abs(p))


def test_percentile_interpolates():
    assert loadgen.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert loadgen.percentile([10.0], 99) == 10.0
    with pytest.raises(ValueError, match="no values"):
        loadgen.percentile([], 50)


@given(st.integers(1, 500), st.integers(1, 16))
def test_split_slots_shares_every_connection(concurrency, workers):
    slots = loadgen.split_slots(concurrency, workers)
    assert sum(slots) == concurrency
    assert max(slots) - min(slots) <= 1


def test_spec_refuses_non_loopback_and_nonsense():
    with pytest.raises(ValueError, match="loopback"):
        LoadSpec(host="192.0.2.1", port=25, messages=1, concurrency=1, size=10)
    with pytest.raises(ValueError, match="messages"):
        LoadSpec(port=25, messages=0, concurrency=1, size=10)
    spec = LoadSpec(port=25, messages=3, concurrency=50, size=10, processes=8)
    assert spec.worker_count() == 3


# --- over loopback, against the aiosmtpd-maildir peer -------------------------------------


@pytest.fixture
def aiosmtpd_server(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(loadgen.__file__).with_name("aiosmtpd_maildir.py")
    maildir = tmp_path / "Maildir"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", str(port), "--maildir", str(maildir)],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "aiosmtpd_maildir did not start"
            time.sleep(0.05)
    yield port, maildir
    proc.terminate()
    proc.wait(10)
    if proc.stderr:
        proc.stderr.close()


def test_generator_delivers_and_times_every_message(aiosmtpd_server):
    port, maildir = aiosmtpd_server
    result = loadgen.run_load(
        LoadSpec(port=port, messages=40, concurrency=6, size=3000, processes=2)
    )
    assert result.ok, result.failure_samples
    assert (result.accepted, result.failed, result.processes) == (40, 0, 2)
    assert len(result.latencies) == 40
    assert result.latencies == sorted(result.latencies)
    assert 0 < result.latencies[0] <= result.wall
    assert result.cpu_user + result.cpu_sys > 0
    files = sorted((maildir / "new").iterdir())
    assert len(files) == 40
    text = files[0].read_bytes()
    assert text.startswith(b"Return-Path: <loadgen@loadgen.example.test>\n")
    assert b"\nReceived: from loadgen.example.test" in text
    assert text.endswith(loadgen.build_payload(3000).replace(b"\r\n", b"\n"))


def test_rejections_are_failures_not_numbers(aiosmtpd_server):
    port, maildir = aiosmtpd_server
    result = loadgen.run_load(
        LoadSpec(port=port, messages=5, concurrency=2, size=100, recipient="x@elsewhere.test")
    )
    assert not result.ok
    assert (result.accepted, result.failed) == (0, 5)
    assert result.failure_samples[0].startswith("RCPT: 550")
    assert not list((maildir / "new").iterdir())


def test_dead_port_fails_fast_and_bounded():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        start = time.monotonic()
        result = loadgen.run_load(
            LoadSpec(port=port, messages=500, concurrency=4, size=10, max_failures=3)
        )
    assert time.monotonic() - start < 10
    assert not result.ok
    assert result.accepted == 0
    assert result.failed == 500  # attempts that failed, plus the messages never sent
    assert result.unsent > 0
    assert "connect" in result.failure_samples[0]


def test_silent_server_times_out():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepts (in the kernel) but never greets
        port = listener.getsockname()[1]
        result = loadgen.run_load(
            LoadSpec(port=port, messages=2, concurrency=2, size=10, reply_timeout=0.5)
        )
    assert not result.ok
    assert result.failure_samples[0] == "greeting: timeout"
    assert os.cpu_count()  # the generator used cpu_count to size itself
