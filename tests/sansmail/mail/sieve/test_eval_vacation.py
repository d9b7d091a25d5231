"""When a vacation action answers and what it sends (RFC 5230 §4.5, §5; RFC 3834)."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

import pytest

from sansmail.mail.sieve import (
    SieveEnvelope,
    SieveMessage,
    Vacation,
    VacationReply,
    evaluate,
    parse,
    vacation_reply,
)

NOW = datetime(2026, 12, 7, 14, 0, tzinfo=UTC)
ENVELOPE = SieveEnvelope("joe@example.com", "ken@example.org")


def message(*extra: str, to: str = "Ken <ken@example.org>") -> bytes:
    lines = ["From: Joe <joe@example.com>", f"To: {to}", "Subject: Lunch?", "Message-ID: <m1@x>"]
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\nLunch at noon?\r\n").encode()


def vacation(script: str, raw: bytes) -> Vacation:
    result = evaluate(parse(script), SieveMessage(raw), ENVELOPE, now=NOW)
    (found,) = [a for a in result.actions if isinstance(a, Vacation)]
    return found


def reply(raw: bytes, sender: str = "joe@example.com", **kwargs: object) -> VacationReply | str:
    action = vacation('require "vacation"; vacation :days 3 "Away until Monday. Ünïcode.";', raw)
    return vacation_reply(
        action,
        raw,
        sender,
        "ken@example.org",
        now=NOW,
        message_id="<r1@example.org>",
        **kwargs,  # type: ignore[arg-type]
    )


def test_reply_is_written() -> None:
    answer = reply(message())
    assert isinstance(answer, VacationReply)
    assert answer.recipient == "joe@example.com"
    assert answer.seconds == 3 * 86400
    parsed = email.message_from_bytes(answer.message, policy=email.policy.default)
    assert parsed["Subject"] == "Auto: Lunch?"
    assert parsed["In-Reply-To"] == "<m1@x>"
    assert parsed["Auto-Submitted"].startswith("auto-replied")
    assert parsed["From"] == "ken@example.org"
    assert "Ünïcode" in parsed.get_content()
    assert b"\r\n" in answer.message


def test_key_is_per_sender_and_handle() -> None:
    a = reply(message())
    b = reply(message(), sender="ann@example.com")
    assert isinstance(a, VacationReply)
    assert isinstance(b, VacationReply)
    assert a.key != b.key


@pytest.mark.parametrize(
    ("raw", "sender", "why"),
    [
        (message(), "", "null sender"),
        (message(), "MAILER-DAEMON@example.com", "program"),
        (message(), "owner-list@example.com", "program"),
        (message(), "list-request@example.com", "program"),
        (message("Auto-Submitted: auto-replied"), "joe@example.com", "Auto-Submitted"),
        (message("Precedence: bulk"), "joe@example.com", "Precedence"),
        (message("List-Id: <a.b.c>"), "joe@example.com", "mailing list"),
        (message(to="someone@else.example"), "joe@example.com", "not in To"),
        (message(), "ken@example.org", "the user"),
    ],
)
def test_no_reply(raw: bytes, sender: str, why: str) -> None:
    answer = reply(raw, sender=sender)
    assert isinstance(answer, str)
    assert why in answer


def test_auto_submitted_no_and_aliases() -> None:
    assert isinstance(reply(message("Auto-Submitted: no")), VacationReply)
    raw = message(to="k@alias.example")
    assert isinstance(reply(raw), str)
    assert isinstance(reply(raw, user_addresses=["K@alias.example"]), VacationReply)


def test_mime_reason_is_the_body_entity() -> None:
    script = """require "vacation"; vacation :mime :subject "Away" text:
Content-Type: text/plain; charset=us-ascii

Gone fishing.
.
;"""
    action = vacation(script, message())
    answer = vacation_reply(
        action, message(), "joe@example.com", "ken@example.org", now=NOW, message_id="<r@x>"
    )
    assert isinstance(answer, VacationReply)
    parsed = email.message_from_bytes(answer.message, policy=email.policy.default)
    assert parsed["Subject"] == "Away"
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content().strip() == "Gone fishing."
