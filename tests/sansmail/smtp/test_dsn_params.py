"""The server core's checks of the DSN parameters (RFC 3461 §4): RET, ENVID on MAIL;
NOTIFY, ORCPT on RCPT. Byte-level, with hypothesis for the grammar."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smtp_helpers import EHLO_LINES, OK, feed, greeted

from sansmail.smtp import InvalidCommand, Mail, Rcpt, encode_xtext

SETTINGS = settings(max_examples=150, deadline=None)
WITHOUT_DSN = tuple(line for line in EHLO_LINES if line != "DSN")


def mail(params: bytes, lines: tuple[str, ...] = EHLO_LINES) -> object:
    [event] = feed(greeted(lines=lines), b"MAIL FROM:<a@b.example> " + params + b"\r\n")
    return event


def rcpt(params: bytes, *, utf8: bool = False) -> object:
    conn = greeted()
    opening = b"MAIL FROM:<a@b.example>" + (b" SMTPUTF8" if utf8 else b"") + b"\r\n"
    [event] = feed(conn, opening)
    assert isinstance(event, Mail)
    conn.send(OK)
    [event] = feed(conn, b"RCPT TO:<c@d.example> " + params + b"\r\n")
    return event


def refusal(event: object) -> tuple[int, str | None]:
    assert isinstance(event, InvalidCommand), event
    return event.reply_hint.code, event.reply_hint.enhanced


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (b"RET=FULL", {"RET": "FULL"}),
        (b"ret=hdrs", {"RET": "hdrs"}),
        (b"ENVID=QQ314159", {"ENVID": "QQ314159"}),
        (b"ENVID=a+2Bb+3D", {"ENVID": "a+2Bb+3D"}),
        (b"ENVID=" + b"x" * 100, {"ENVID": "x" * 100}),
        (b"RET=HDRS ENVID=x", {"RET": "HDRS", "ENVID": "x"}),
    ],
)
def test_good_mail_dsn_parameters(params: bytes, expected: dict[str, str]) -> None:
    event = mail(params)
    assert isinstance(event, Mail)
    assert dict(event.parameters) == expected


@pytest.mark.parametrize(
    ("params", "why"),
    [
        (b"RET=ALL", "RET must be FULL or HDRS"),
        (b"RET", "RET must be FULL or HDRS"),
        (b"RET=", "Malformed"),  # not an esmtp-value at all
        (b"ENVID", "ENVID must be xtext"),
        (b"ENVID=" + b"x" * 101, "ENVID must be xtext"),
        (b"ENVID=a+2b", "ENVID must be xtext"),  # hex must be upper case (RFC 3461 §4)
        (b"ENVID=a+", "ENVID must be xtext"),
        (b"ENVID=a+G0", "ENVID must be xtext"),
    ],
)
def test_bad_mail_dsn_parameters_get_501(params: bytes, why: str) -> None:
    event = mail(params)
    assert refusal(event) == (501, "5.5.4")
    assert isinstance(event, InvalidCommand)
    assert why in event.reply_hint.text


def test_dsn_parameters_need_the_extension() -> None:
    assert refusal(mail(b"RET=FULL", WITHOUT_DSN))[0] == 555


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (b"NOTIFY=NEVER", {"NOTIFY": "NEVER"}),
        (b"NOTIFY=success,Failure,DELAY", {"NOTIFY": "success,Failure,DELAY"}),
        (b"NOTIFY=DELAY", {"NOTIFY": "DELAY"}),
        (b"ORCPT=rfc822;c@d.example", {"ORCPT": "rfc822;c@d.example"}),
        (b"ORCPT=x-foo;a+20b", {"ORCPT": "x-foo;a+20b"}),
        (b"ORCPT=rfc822;" + b"x" * 493, {"ORCPT": "rfc822;" + "x" * 493}),
    ],
)
def test_good_rcpt_dsn_parameters(params: bytes, expected: dict[str, str]) -> None:
    event = rcpt(params)
    assert isinstance(event, Rcpt)
    assert dict(event.parameters) == expected


@pytest.mark.parametrize(
    ("params", "why"),
    [
        (b"NOTIFY", "NOTIFY must be"),
        (b"NOTIFY=NEVER,SUCCESS", "NOTIFY must be"),
        (b"NOTIFY=SUCCESS,SUCCESS", "NOTIFY must be"),
        (b"NOTIFY=SUCCESS,", "NOTIFY must be"),
        (b"NOTIFY=ALWAYS", "NOTIFY must be"),
        (b"ORCPT", "ORCPT must be"),
        (b"ORCPT=rfc822", "ORCPT must be"),
        (b"ORCPT=;a@b", "ORCPT must be"),
        (b"ORCPT=rfc822;", "ORCPT must be"),
        (b"ORCPT=rf(c;a@b", "ORCPT must be"),
        (b"ORCPT=rfc822;a+2", "ORCPT must be"),
        (b"ORCPT=rfc822;" + b"x" * 494, "ORCPT must be"),
    ],
)
def test_bad_rcpt_dsn_parameters_get_501(params: bytes, why: str) -> None:
    event = rcpt(params)
    assert refusal(event) == (501, "5.5.4")
    assert isinstance(event, InvalidCommand)
    assert why in event.reply_hint.text


def test_utf8_orcpt_only_in_an_smtputf8_transaction() -> None:
    value = "ORCPT=utf-8;jörg@d.example".encode()
    event = rcpt(value, utf8=True)
    assert isinstance(event, Rcpt)
    assert event.parameters["ORCPT"] == "utf-8;jörg@d.example"
    assert refusal(rcpt(value))[0] == 553  # non-ASCII without SMTPUTF8 (RFC 6531 §3.5)


# --- The grammar, with hypothesis ----------------------------------------------------------

words = st.sampled_from(["SUCCESS", "FAILURE", "DELAY", "NEVER", "success", "Delay", "ALWAYS", ""])


@SETTINGS
@given(items=st.lists(words, min_size=1, max_size=4))
def test_notify_grammar(items: list[str]) -> None:
    value = ",".join(items)
    upper = [item.upper() for item in items]
    valid = upper == ["NEVER"] or (
        set(upper) <= {"SUCCESS", "FAILURE", "DELAY"} and len(set(upper)) == len(upper)
    )
    if not value:
        return  # "NOTIFY=" is not an esmtp-value: a different refusal, tested above
    event = rcpt(b"NOTIFY=" + value.encode())
    assert isinstance(event, Rcpt) == valid, (value, event)


@SETTINGS
@given(data=st.binary(max_size=120))
def test_any_xtext_envid_up_to_100_is_accepted(data: bytes) -> None:
    value = encode_xtext(data)
    if not value:
        return
    event = mail(b"ENVID=" + value.encode())
    assert isinstance(event, Mail) == (len(value) <= 100)
    if isinstance(event, Mail):
        assert event.parameters["ENVID"] == value


@SETTINGS
@given(
    addr_type=st.text(alphabet="abcz09-!#{}~()<>", min_size=0, max_size=8),
    data=st.binary(max_size=60),
)
def test_orcpt_grammar(addr_type: str, data: bytes) -> None:
    address = encode_xtext(data)
    value = f"{addr_type};{address}"
    valid = bool(addr_type) and bool(address) and not set(addr_type) & set("()<>")
    event = rcpt(b"ORCPT=" + value.encode())
    assert isinstance(event, Rcpt) == valid, (value, event)


@SETTINGS
@given(raw=st.text(alphabet="abAB+=09;,", min_size=1, max_size=20))
def test_random_dsn_values_never_crash(raw: str) -> None:
    for params in (b"ENVID=", b"RET=", b"NOTIFY=", b"ORCPT="):
        data = params + raw.encode()
        event = rcpt(data) if params in (b"NOTIFY=", b"ORCPT=") else mail(data)
        assert isinstance(event, Mail | Rcpt | InvalidCommand)
