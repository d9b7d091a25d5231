"""What the fuzzers found, each kept as a test (the inputs are in fuzz/corpus/ too)."""

from __future__ import annotations

import pytest

from sansmail import SERVER, imap, mime
from sansmail.imap import Connection, InvalidCommand, ResponseCode, Search, Tagged, UntaggedStatus
from sansmail.sessions.imapd._search import search_data

# Python codecs that are no text encoding (LookupError from bytes.decode), names with a
# NUL (ValueError from codecs.lookup), codecs that refuse errors="replace" (UnicodeError).
ODD_CHARSETS = [b"base64", b"rot13", b"zlib", b"hex", b"idna", b"punycode", b"undefined", b"a\0b"]


@pytest.mark.parametrize("charset", ODD_CHARSETS)
def test_an_encoded_word_in_any_charset_decodes(charset: bytes) -> None:
    # fuzz/fuzz_mime.py: =?\x01\x00\x00\x00utf-8?q?...?= raised ValueError.
    text = mime.decoded_header(b"Subject: =?" + charset + b"?q?h=C3=A9llo?=\r\n")
    assert text == "Subject: héllo"


@pytest.mark.parametrize("charset", ODD_CHARSETS)
def test_search_data_of_a_message_in_any_charset(charset: bytes) -> None:
    # The first SEARCH of a folder computes this for every message: a message with such
    # a charset made SEARCH fail for its owner.
    raw = (
        b"Subject: =?" + charset + b"?q?h=C3=A9llo?=\r\n"
        b'Content-Type: text/plain; charset="' + charset + b'"\r\n\r\nh\xc3\xa9llo\r\n'
    )
    data = search_data(raw, texts=True)
    assert ("subject", "héllo") in data.fields
    assert data.bodies is not None
    assert any("héllo" in body for body in data.bodies)


def selected() -> Connection:
    conn = Connection(SERVER)
    capabilities = ResponseCode.capability(["IMAP4rev1"])
    conn.send(UntaggedStatus(status="PREAUTH", code=capabilities, text="hi"))
    conn.receive_data(b"s SELECT INBOX\r\n")
    conn.next_event()
    conn.send(Tagged(tag="s", status="OK", text="selected"))
    return conn


@pytest.mark.parametrize("charset", [b"base64", b"rot13", b"zlib", b"hex", b"bz2"])
def test_search_in_a_codec_that_is_no_text_encoding_is_badcharset(charset: bytes) -> None:
    # `a SEARCH CHARSET base64 SUBJECT x` raised TypeError out of next_event().
    conn = selected()
    conn.receive_data(b"a SEARCH CHARSET " + charset + b" SUBJECT aGVsbG8=\r\n")
    event = conn.next_event()
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint.status == "NO"
    assert event.reply_hint.code is not None
    assert event.reply_hint.code.name == "BADCHARSET"


def test_search_in_a_text_encoding_still_works() -> None:
    conn = selected()
    conn.receive_data(b"a SEARCH CHARSET ISO-8859-1 SUBJECT {1}\r\n")
    assert isinstance(conn.next_event(), imap.LiteralRequested)
    conn.send(imap.Continuation(text="go on"))
    conn.receive_data(b"\xe9\r\n")
    event = conn.next_event()
    assert isinstance(event, Search)
    assert event.criteria.value == "é"
