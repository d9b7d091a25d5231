"""MAIL FROM ... AUTH= (RFC 4954 §5): the parameter's xtext (RFC 3461 §4), its decoding
into `Mail.auth`, and its refusals."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smtp_helpers import AUTH_EHLO_LINES, feed, greeted

from sansmail.mail.address import Address
from sansmail.smtp import Event, InvalidCommand, Mail
from sansmail.smtp._events import decode_xtext

# --- MAIL FROM ... AUTH= (RFC 4954 §5) -------------------------------------------------------


def mail_event(params: bytes) -> Event:
    conn = greeted(lines=AUTH_EHLO_LINES)
    [event] = feed(conn, b"MAIL FROM:<a@b.example> " + params + b"\r\n")
    return event


def test_mail_auth_parameter_is_decoded_xtext() -> None:
    event = mail_event(b"AUTH=e+3Dmc2@example.com")
    assert isinstance(event, Mail)
    assert event.parameters["AUTH"] == "e+3Dmc2@example.com"  # kept as sent
    assert event.auth == Address(local_part="e=mc2", domain="example.com")


def test_mail_auth_null_identity() -> None:
    event = mail_event(b"AUTH=<>")
    assert isinstance(event, Mail)
    assert event.auth is None
    assert "AUTH" in event.parameters
    # RFC 4954 §5 speaks of the *decoded* form: "<>" spelled in hex is the null identity.
    hex_null = mail_event(b"AUTH=+3C+3E")
    assert isinstance(hex_null, Mail)
    assert hex_null.auth is None
    plain = mail_event(b"SIZE=10")
    assert isinstance(plain, Mail)
    assert plain.auth is None
    assert "AUTH" not in plain.parameters


@pytest.mark.parametrize(
    "param",
    [
        b"AUTH",  # no value
        b"AUTH=e+3dmc2@example.com",  # RFC 3461 §4: upper-case hex only
        b"AUTH=e+3@example.com",
        b"AUTH=e+@example.com",
        b"AUTH=nobody",  # not an addr-spec
        b"AUTH=a+FF@example.com",  # not UTF-8 once decoded
    ],
)
def test_mail_auth_parameter_refusals(param: bytes) -> None:
    event = mail_event(param)
    assert isinstance(event, InvalidCommand), event
    assert (event.reply_hint.code, event.reply_hint.enhanced) == (501, "5.5.4")


def test_mail_auth_parameter_needs_auth_advertised() -> None:
    conn = greeted()
    [event] = feed(conn, b"MAIL FROM:<a@b.example> AUTH=<>\r\n")
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint.code == 555


def test_mail_event_validates_its_auth_parameter() -> None:
    with pytest.raises(ValueError):
        Mail(reverse_path=None, parameters={"AUTH": "nobody"})
    assert Mail(reverse_path=None, parameters={"auth": "<>"}).auth is None


def encode_xtext(data: bytes) -> str:
    # RFC 3461 §4, as a client writes it: "+", "=" and anything outside "!".."~" in hex.
    return "".join(
        chr(b) if 33 <= b <= 126 and b not in (0x2B, 0x3D) else f"+{b:02X}" for b in data
    )


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=60))
def test_xtext_round_trips(data: bytes) -> None:
    assert decode_xtext(encode_xtext(data)) == data


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=30))
def test_xtext_decoder_only_ever_raises_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        assert encode_xtext(decode_xtext(text)) == text
