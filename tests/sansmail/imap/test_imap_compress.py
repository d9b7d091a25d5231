"""COMPRESS (RFC 4978) in the core: the command byte for byte, its refusals, and the
switch, at which the octets the client sent after COMPRESS go back to the adapter
(compressed, to be inflated) instead of being read as commands."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imap_helpers import server

from sansmail import NEED_DATA, PAUSED, LocalProtocolError
from sansmail.imap import (
    Compress,
    InvalidCommand,
    Noop,
    Phase,
    Tagged,
    UntaggedStatus,
    write_command,
)

OK = Tagged(tag="a", status="OK", text="DEFLATE active")


def test_compress_deflate_byte_for_byte() -> None:
    conn = server("authenticated")
    conn.receive_data(b"a COMPRESS DEFLATE\r\n")
    assert conn.next_event() == Compress(tag="a", mechanism="DEFLATE")
    assert conn.send(OK) == b"a OK DEFLATE active\r\n"
    assert conn.our_state is Phase.COMPRESS_PENDING
    assert conn.next_event() is PAUSED
    assert not conn.compressing
    assert conn.start_compression() == b""
    assert conn.compressing
    assert conn.our_state is Phase.COMMAND
    conn.receive_data(b"b NOOP\r\n")
    assert conn.next_event() == Noop(tag="b")
    assert conn.send(Tagged(tag="b", status="OK", text="done")) == b"b OK done\r\n"


def test_the_mechanism_is_case_insensitive_and_written_back() -> None:
    conn = server("selected")
    conn.receive_data(b"x1 compress deflate\r\n")
    event = conn.next_event()
    assert event == Compress(tag="x1")
    assert write_command(event) == b"x1 COMPRESS DEFLATE\r\n"


def test_octets_after_compress_are_handed_back_not_parsed() -> None:
    # RFC 4978 §3: the client compresses from the first command after COMPRESS, so
    # what it pipelined is deflate data: never a command for this core.
    conn = server("authenticated")
    conn.receive_data(b"a COMPRESS DEFLATE\r\n\x02\x00b NOOP\r\n")
    assert isinstance(conn.next_event(), Compress)
    conn.send(OK)
    assert conn.next_event() is PAUSED
    assert conn.start_compression() == b"\x02\x00b NOOP\r\n"
    assert conn.trailing_data == (b"", False)


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"c COMPRESS LZW", b"c NO COMPRESS mechanism not supported\r\n"),
        (b"c COMPRESS X-DEFLATE2", b"c NO COMPRESS mechanism not supported\r\n"),
        (b"c COMPRESS", b"c BAD COMPRESS expected a space\r\n"),
        (b"c COMPRESS ", b"c BAD COMPRESS expected a compression mechanism\r\n"),
        (b"c COMPRESS  DEFLATE", b"c BAD COMPRESS expected a compression mechanism\r\n"),
        (b"c COMPRESS DEFLATE x", b"c BAD COMPRESS unexpected text at the end of the command\r\n"),
        (b'c COMPRESS "DEFLATE"', b"c BAD COMPRESS expected a compression mechanism\r\n"),
    ],
)
def test_refusals(line: bytes, reply: bytes) -> None:
    conn = server("authenticated")
    conn.receive_data(line + b"\r\n")
    event = conn.next_event()
    assert isinstance(event, InvalidCommand)
    assert conn.send(event.reply_hint) == reply
    assert conn.our_state is Phase.COMMAND


def test_not_before_login() -> None:
    # RFC 4978 §5: command-auth, so not in the not-authenticated state.
    conn = server("not-authenticated")
    conn.receive_data(b"a COMPRESS DEFLATE\r\n")
    event = conn.next_event()
    assert isinstance(event, InvalidCommand)
    assert conn.send(event.reply_hint) == (
        b"a BAD COMPRESS is not valid in the NOT_AUTHENTICATED state\r\n"
    )


def test_a_second_compress_is_no_compressionactive() -> None:
    conn = server("selected")
    conn.receive_data(b"a COMPRESS DEFLATE\r\n")
    conn.next_event()
    conn.send(OK)
    conn.start_compression()
    conn.receive_data(b"b COMPRESS DEFLATE\r\n")
    event = conn.next_event()
    assert isinstance(event, InvalidCommand)
    assert conn.send(event.reply_hint) == (b"b NO [COMPRESSIONACTIVE] COMPRESS already active\r\n")
    assert conn.compressing


@pytest.mark.parametrize("status", ["NO", "BAD"])
def test_a_refused_compress_leaves_the_link_as_it_was(status: str) -> None:
    conn = server("authenticated")
    conn.receive_data(b"a COMPRESS DEFLATE\r\nb NOOP\r\n")
    conn.next_event()
    conn.send(Tagged(tag="a", status=status, text="not now"))  # type: ignore[arg-type]
    assert conn.our_state is Phase.COMMAND
    assert conn.next_event() == Noop(tag="b")  # read as it came
    assert not conn.compressing


def test_nothing_but_a_bye_before_the_switch() -> None:
    conn = server("authenticated")
    conn.receive_data(b"a COMPRESS DEFLATE\r\n")
    conn.next_event()
    conn.send(OK)
    with pytest.raises(LocalProtocolError):
        conn.send(UntaggedStatus(status="OK", text="uncompressed"))


def test_a_bye_may_end_the_switch() -> None:
    conn = server("authenticated")
    conn.receive_data(b"a COMPRESS DEFLATE\r\n")
    conn.next_event()
    conn.send(OK)
    assert conn.send(UntaggedStatus(status="BYE", text="shutting down")) == (
        b"* BYE shutting down\r\n"
    )
    assert conn.our_state is Phase.CLOSED


def test_start_compression_outside_the_switch_is_our_error() -> None:
    conn = server("authenticated")
    with pytest.raises(LocalProtocolError):
        conn.start_compression()
    assert conn.our_state is Phase.ERROR


@settings(deadline=None, max_examples=200)
@given(
    tag=st.from_regex(r"[A-Za-z0-9.]{1,8}", fullmatch=True),
    mechanism=st.from_regex(r"[A-Za-z0-9-]{1,12}", fullmatch=True),
    after=st.binary(max_size=60),
    cut=st.integers(0, 200),
)
def test_any_mechanism_any_chunking(tag: str, mechanism: str, after: bytes, cut: int) -> None:
    """DEFLATE in any case is accepted and any other name is NO; whatever follows the
    command, however the octets arrive, comes back whole at the switch."""
    script = f"{tag} COMPRESS {mechanism}\r\n".encode() + after
    cut = min(cut, len(script))
    conn = server("authenticated")
    if cut:
        conn.receive_data(script[:cut])
    event = conn.next_event()
    if event is NEED_DATA:  # the cut is inside the command line
        conn.receive_data(script[cut:])
        event = conn.next_event()
    if mechanism.upper() != "DEFLATE":
        assert isinstance(event, InvalidCommand)
        assert event.reply_hint == Tagged(
            tag=tag, status="NO", text="COMPRESS mechanism not supported"
        )
        return
    assert event == Compress(tag=tag)
    conn.send(Tagged(tag=tag, status="OK", text="DEFLATE active"))
    assert conn.start_compression() == after
