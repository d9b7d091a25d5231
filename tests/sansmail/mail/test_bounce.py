"""Delivery status notifications, checked by parsing them back with the stdlib parser."""

from __future__ import annotations

import datetime
import email
import email.message
import email.policy
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sansmail.mail.bounce
from sansmail.mail.address import Address
from sansmail.mail.bounce import (
    RecipientStatus,
    compose_dsn,
    postmaster_copy,
    should_bounce,
)

UTC = datetime.UTC
T0 = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + datetime.timedelta(hours=4)
SENDER = Address(local_part="alice", domain="example.test")
BOB = Address(local_part="bob", domain="example.org")
CAROL = Address(local_part="carol", domain="example.net")
ORIGINAL = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: lunch\r\n"
    b"Message-ID: <orig@example.test>\r\n"
    b"\r\n"
    b"Shall we meet at noon?\r\n"
    b"SECRET-BODY-LINE\r\n"
)


def failed(recipient: Address = BOB, **kw: object) -> RecipientStatus:
    fields: dict[str, object] = {
        "recipient": recipient,
        "action": "failed",
        "status": "5.1.1",
        "remote_mta": "mx.example.org",
        "diagnostic": "smtp; 550 5.1.1 <bob@example.org>: no such user",
        "last_attempt": T1,
    }
    fields.update(kw)
    return RecipientStatus(**fields)  # type: ignore[arg-type]


def delayed(recipient: Address = BOB) -> RecipientStatus:
    return RecipientStatus(
        recipient=recipient,
        action="delayed",
        status="4.4.1",
        diagnostic="smtp; 451 4.4.1 try again later",
        last_attempt=T1,
        will_retry_until=T0 + datetime.timedelta(days=5),
    )


def dsn(**kw: object) -> bytes:
    args: dict[str, object] = {
        "reporting_mta": "mx.example.test",
        "original_envelope_id": "QQ314159",
        "arrival": T0,
        "sender": SENDER,
        "recipients": [failed()],
        "original": ORIGINAL,
        "return_full": False,
        "now": T1,
        "message_id": "20260301.bounce1@mx.example.test",
    }
    args.update(kw)
    return compose_dsn(**args)  # type: ignore[arg-type]


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def parts(msg: email.message.EmailMessage) -> list[email.message.EmailMessage]:
    return list(msg.iter_parts())  # type: ignore[arg-type]


def status_blocks(msg: email.message.EmailMessage) -> list[email.message.Message]:
    payload = parts(msg)[1].get_payload()
    assert isinstance(payload, list)
    return [block for block in payload if isinstance(block, email.message.Message)]


def inner(part: email.message.EmailMessage) -> email.message.Message:
    """The message inside a message/rfc822 part."""
    payload = part.get_payload()
    assert isinstance(payload, list)
    assert isinstance(payload[0], email.message.Message)
    return payload[0]


def test_public_surface() -> None:
    assert sorted(sansmail.mail.bounce.__all__) == [
        "DEFAULT_MAX_ORIGINAL",
        "RecipientStatus",
        "compose_dsn",
        "postmaster_copy",
        "should_bounce",
    ]


def test_never_bounce_a_bounce() -> None:
    assert should_bounce(None) is False
    assert should_bounce(SENDER) is True


def test_top_level_headers() -> None:
    msg = parse(dsn())
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.test>"
    assert b"\r\nTo: <alice@example.test>\r\n" in dsn()
    assert msg["To"].addresses[0].addr_spec == "alice@example.test"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"] == "<20260301.bounce1@mx.example.test>"
    assert msg["Date"] == "Sun, 01 Mar 2026 16:00:00 +0000"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg.defects == []


def test_output_is_crlf_strict() -> None:
    data = dsn(original=b"Subject: x\n\nbare\nlf\rand cr\r\n", return_full=True)
    assert re.search(rb"(?<!\r)\n", data) is None
    assert re.search(rb"\r(?!\n)", data) is None


def test_three_parts_with_hdrs() -> None:
    msg = parse(dsn())
    types = [p.get_content_type() for p in parts(msg)]
    assert types == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    returned = parts(msg)[2].get_content()
    assert "Subject: lunch" in returned
    assert "SECRET-BODY-LINE" not in returned


def test_ret_full_returns_the_whole_message() -> None:
    msg = parse(dsn(return_full=True))
    third = parts(msg)[2]
    assert third.get_content_type() == "message/rfc822"
    returned = inner(third)
    assert returned["Subject"] == "lunch"
    assert "SECRET-BODY-LINE" in str(returned.get_payload())


def test_per_message_fields() -> None:
    head = status_blocks(parse(dsn()))[0]
    assert head["Reporting-MTA"] == "dns; mx.example.test"
    assert head["Original-Envelope-Id"] == "QQ314159"
    assert head["Arrival-Date"] == "Sun, 01 Mar 2026 12:00:00 +0000"


def test_no_envelope_id_no_field() -> None:
    head = status_blocks(parse(dsn(original_envelope_id=None)))[0]
    assert "Original-Envelope-Id" not in head


def test_per_recipient_fields() -> None:
    rcpt = failed(original_recipient="rfc822;bob+2Btag@example.org")
    block = status_blocks(parse(dsn(recipients=[rcpt])))[1]
    assert block["Final-Recipient"] == "rfc822; bob@example.org"
    # RFC 3461 §4.2: the ORCPT xtext "+2B" is a "+".
    assert block["Original-Recipient"] == "rfc822; bob+tag@example.org"
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert block["Remote-MTA"] == "dns; mx.example.org"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.org>: no such user"
    assert block["Last-Attempt-Date"] == "Sun, 01 Mar 2026 16:00:00 +0000"
    assert "Will-Retry-Until" not in block


def test_several_recipients() -> None:
    rcpts = [failed(BOB), failed(CAROL, status="5.2.2", diagnostic="552 mailbox full")]
    msg = parse(dsn(recipients=rcpts))
    blocks = status_blocks(msg)
    assert len(blocks) == 3
    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        "rfc822; bob@example.org",
        "rfc822; carol@example.net",
    ]
    assert blocks[2]["Status"] == "5.2.2"
    # A bare reply is recognised as an SMTP reply (RFC 3464 §2.3.6).
    assert blocks[2]["Diagnostic-Code"] == "smtp; 552 mailbox full"
    text = parts(msg)[0].get_content()
    assert "<bob@example.org>" in text
    assert "<carol@example.net>" in text


def test_delay_warning_wording_and_fields() -> None:
    msg = parse(dsn(recipients=[delayed()]))
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    text = parts(msg)[0].get_content()
    assert "keep trying" in text
    block = status_blocks(msg)[1]
    assert block["Action"] == "delayed"
    assert block["Will-Retry-Until"] == "Fri, 06 Mar 2026 12:00:00 +0000"


def test_failed_wins_over_delayed_in_subject() -> None:
    msg = parse(dsn(recipients=[delayed(BOB), failed(CAROL)]))
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert [b["Action"] for b in status_blocks(msg)[1:]] == ["delayed", "failed"]


def test_failed_wording() -> None:
    text = parts(parse(dsn()))[0].get_content()
    assert "could not be delivered to one or more" in text
    assert "keep trying" not in text
    assert "no such user" in text


def test_untyped_diagnostic_gets_a_type() -> None:
    block = status_blocks(parse(dsn(recipients=[failed(diagnostic="mailbox is gone")])))[1]
    assert block["Diagnostic-Code"] == "x-sansmail; mailbox is gone"


def test_diagnostic_cannot_inject_fields() -> None:
    evil = "smtp; 550 no\r\nFinal-Recipient: rfc822; evil@x\r\n\r\nAction: delivered\x00\x1b"
    data = dsn(recipients=[failed(diagnostic=evil)])
    blocks = status_blocks(parse(data))
    assert len(blocks) == 2
    assert blocks[1]["Final-Recipient"] == "rfc822; bob@example.org"
    assert blocks[1]["Action"] == "failed"
    assert b"\x00" not in data
    assert b"\x1b" not in data


def test_human_text_keeps_utf8_but_drops_bidi_overrides() -> None:
    msg = parse(dsn(recipients=[failed(diagnostic="550 bo\u00eete pleine \u202egpj.exe")]))
    text = parts(msg)[0].get_content()
    assert "bo\u00eete pleine" in text
    assert "\u202e" not in text
    # The machine-readable report stays ASCII.
    assert status_blocks(msg)[1]["Diagnostic-Code"] == "smtp; 550 bo?te pleine gpj.exe"


def test_long_diagnostic_is_folded_and_capped() -> None:
    data = dsn(recipients=[failed(diagnostic="smtp; 550 " + "word " * 1000)])
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    status = data.split(b"Content-Type: message/delivery-status")[1].split(b"\r\n--=")[0]
    assert max(len(line) for line in status.split(b"\r\n")) <= 78
    block = status_blocks(parse(data))[1]
    assert str(block["Diagnostic-Code"]).endswith("...")


def test_truncation_full() -> None:
    big = ORIGINAL + b"x" * 70 + b"\r\n" + b"line of filler\r\n" * 5000
    data = dsn(original=big, return_full=True, max_original=1000)
    msg = parse(data)
    assert len(data) < 4000
    third = parts(msg)[2]
    assert third.get_content_type() == "message/rfc822"
    assert inner(third)["Subject"] == "lunch"
    text = parts(msg)[0].get_content()
    assert f"was {len(big)} octets" in text


@pytest.mark.parametrize("spare", [-2, -1, 0, 1, 2, 3, 30])
def test_truncation_never_exceeds_the_limit(spare: int) -> None:
    header, body = ORIGINAL.split(b"\r\n\r\n")
    limit = len(header) + 2 + spare
    msg = parse(dsn(original=ORIGINAL, return_full=True, max_original=limit))
    returned = inner(parts(msg)[2]).as_bytes(policy=email.policy.SMTP)
    assert returned.startswith(b"From: ")
    kept = str(inner(parts(msg)[2]).get_payload()).encode()
    assert len(kept) <= max(spare - 2, 0)
    assert b"SECRET-BODY-LINE" in kept or spare < len(body)


def test_no_truncation_no_note() -> None:
    text = parts(parse(dsn(return_full=True)))[0].get_content()
    assert "octets" not in text


def test_truncation_of_headers_keeps_whole_fields() -> None:
    original = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 50) for i in range(100))
    original += b"\r\nbody\r\n"
    msg = parse(dsn(original=original, max_original=500))
    returned = parts(msg)[2].get_content()
    lines = returned.splitlines()
    assert 0 < len(lines) < 100
    assert all(re.fullmatch(r"X-Filler-\d+: v{50}", line) for line in lines)
    assert "cut to" in parts(msg)[0].get_content()


def test_boundary_never_occurs_in_content() -> None:
    # The boundary that would be chosen first, planted in the original.
    first = compose_dsn(
        reporting_mta="mx.example.test",
        original_envelope_id=None,
        arrival=T0,
        sender=SENDER,
        recipients=[failed()],
        original=ORIGINAL,
        return_full=True,
        now=T1,
        message_id="b@x",
    )
    boundary = parse(first).get_boundary()
    assert boundary is not None
    hostile = ORIGINAL + f"--{boundary}\r\n--{boundary}--\r\n".encode()
    data = dsn(original=hostile, return_full=True, message_id="b@x")
    msg = parse(data)
    assert msg.get_boundary() != boundary
    assert len(parts(msg)) == 3
    assert f"--{boundary}--" in str(inner(parts(msg)[2]).get_payload())


def test_deterministic() -> None:
    assert dsn() == dsn()


def test_utf8_recipient_uses_utf8_xtext() -> None:
    jose = Address(local_part="josé", domain="example.org")
    data = dsn(recipients=[failed(jose)])
    block = status_blocks(parse(data))[1]
    # RFC 6533 §3 utf-8-addr-xtext: the report itself stays ASCII.
    assert block["Final-Recipient"] == "utf-8; jos\\x{E9}@example.org"
    status = data.split(b"Content-Type: message/delivery-status")[1].split(b"\r\n--=")[0]
    assert status.isascii()
    # People still read the address as written.
    assert "josé@example.org" in parts(parse(data))[0].get_content()


def test_eight_bit_headers_returned_as_global() -> None:
    original = "Subject: café\r\n\r\nbody\r\n".encode()
    msg = parse(dsn(original=original))
    assert parts(msg)[2].get_content_type() == "message/global-headers"
    msg = parse(dsn(original=original, return_full=True))
    assert parts(msg)[2].get_content_type() == "message/global"


@pytest.mark.parametrize(
    ("action", "status"),
    [("delivered", "5.0.0"), ("delayed", "5.4.1"), ("failed", "5.1"), ("failed", "6.1.1")],
)
def test_bad_status_refused(action: str, status: str) -> None:
    with pytest.raises(ValueError):
        RecipientStatus(recipient=BOB, action=action, status=status)  # type: ignore[arg-type]


def test_bad_arguments_refused() -> None:
    with pytest.raises(ValueError):
        dsn(recipients=[])
    with pytest.raises(ValueError):
        dsn(message_id="no-at-sign")
    with pytest.raises(ValueError):
        dsn(message_id="a b@c")
    with pytest.raises(ValueError):
        dsn(reporting_mta="mx\r\nBcc: x")


def test_postmaster_copy_has_only_headers() -> None:
    original = dsn(return_full=True)
    copy = postmaster_copy(original, postmaster=Address(local_part="postmaster", domain="x.test"))
    assert b"SECRET-BODY-LINE" in original
    assert b"SECRET-BODY-LINE" not in copy
    msg = parse(copy)
    assert b"\r\nTo: <postmaster@x.test>\r\n" in copy
    assert msg["To"].addresses[0].addr_spec == "postmaster@x.test"
    assert msg["Subject"] == "Postmaster Copy: Undelivered Mail Returned to Sender"
    assert msg["Message-ID"] == "<pm.20260301.bounce1@mx.example.test>"
    types = [p.get_content_type() for p in parts(msg)]
    assert types == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert "Subject: lunch" in parts(msg)[2].get_content()
    assert len(status_blocks(msg)) == 2


def test_postmaster_copy_of_hdrs_dsn_keeps_the_report() -> None:
    original = dsn()
    copy = postmaster_copy(original, postmaster=Address(local_part="postmaster", domain="x.test"))
    # Only the To, Subject and Message-ID lines differ.
    diff = set(original.split(b"\r\n")) ^ set(copy.split(b"\r\n"))
    assert {line.split(b":")[0] for line in diff} == {b"To", b"Subject", b"Message-ID"}


def test_postmaster_copy_refuses_foreign_bytes() -> None:
    with pytest.raises(ValueError):
        postmaster_copy(b"Subject: hi\r\n\r\nbody\r\n", postmaster=SENDER)


# -- properties ---------------------------------------------------------------------------

_any_text = st.text(st.characters(codec="utf-8"), max_size=300)


@settings(deadline=None, max_examples=150)
@given(
    diagnostics=st.lists(st.one_of(st.none(), _any_text), min_size=1, max_size=4),
    original=st.binary(max_size=400),
    envid=st.one_of(st.none(), _any_text),
    orcpt=st.one_of(st.none(), _any_text),
    return_full=st.booleans(),
    max_original=st.integers(min_value=0, max_value=500),
)
def test_attacker_text_never_breaks_the_structure(
    diagnostics: list[str | None],
    original: bytes,
    envid: str | None,
    orcpt: str | None,
    return_full: bool,
    max_original: int,
) -> None:
    rcpts = [
        failed(
            Address(local_part=f"r{i}", domain="example.org"),
            diagnostic=d,
            original_recipient=orcpt,
        )
        for i, d in enumerate(diagnostics)
    ]
    data = dsn(
        recipients=rcpts,
        original=original,
        original_envelope_id=envid,
        return_full=return_full,
        max_original=max_original,
    )
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert len(parts(msg)) == 3
    blocks = status_blocks(msg)
    assert len(blocks) == 1 + len(rcpts)
    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        f"rfc822; r{i}@example.org" for i in range(len(rcpts))
    ]
    assert all(b["Action"] == "failed" for b in blocks[1:])
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    copy = parse(postmaster_copy(data, postmaster=SENDER))
    assert len(parts(copy)) == 3
    assert len(status_blocks(copy)) == 1 + len(rcpts)


@settings(deadline=None, max_examples=100)
@given(local=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1))
def test_utf8_xtext_is_ascii_and_reversible(local: str) -> None:
    try:
        address = Address(local_part=local, domain="example.org")
    except ValueError:
        return
    block = status_blocks(parse(dsn(recipients=[failed(address)])))[1]
    value = str(block["Final-Recipient"])
    assert value.isascii()
    kind, _, text = value.partition("; ")
    if address.needs_smtputf8:
        assert kind == "utf-8"
        text = re.sub(r"\\x\{([0-9A-F]+)\}", lambda m: chr(int(m.group(1), 16)), text)
    else:
        assert kind == "rfc822"
    assert text == str(address)
