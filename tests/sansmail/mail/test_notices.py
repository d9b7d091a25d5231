"""sansmail.mail.notices: which DSNs an attempt owes, to whom, and in what order."""

from __future__ import annotations

import email
import email.message
import itertools

import sansmail.mail.notices
from sansmail.mail.address import Address
from sansmail.mail.attempt import AttemptResult, Outcome
from sansmail.mail.delivery import LogLine
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.mail.notices import Notice, notices, postmaster_address
from sansmail.mail.retry import RetryPolicy

POLICY = RetryPolicy(minimal_backoff=300, maximal_backoff=3600, max_lifetime=86400)
POSTMASTER = Address(local_part="postmaster", domain="example.test")
CONTENT = b"From: alice@example.test\r\nSubject: hello\r\n\r\nsecret body\r\n"
FAILED = Outcome(
    status="bounced",
    reason="550 5.1.1 No such user",
    dsn="5.1.1",
    remote_mta="mx.far.test",
    smtp_reply=True,
)
RELAYED = Outcome(
    status="sent", reason="250 2.0.0 Ok", dsn="2.0.0", remote_mta="mx.far.test", smtp_reply=True
)
BOB = QueuedRecipient(address="bob@far.test", state="bounced", attempts=1)


def message(sender: str = "alice@example.test", **kw: object) -> QueuedMessage:
    return QueuedMessage(
        queue_id="ABC123",
        sender=sender,
        arrival=1000.0,
        size=len(CONTENT),
        recipients=[BOB],
        **kw,  # type: ignore[arg-type]
    )


def owed(msg: QueuedMessage, result: AttemptResult) -> list[Notice | LogLine]:
    ids = (f"N{i}" for i in itertools.count(1))
    return notices(
        msg,
        CONTENT,
        result,
        now=5000.0,
        policy=POLICY,
        hostname="mx.example.test",
        postmaster=POSTMASTER,
        new_id=lambda: next(ids),
    )


def parse(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data)


def test_public_names_are_pinned() -> None:
    assert sorted(sansmail.mail.notices.__all__) == ["Notice", "notices", "postmaster_address"]


def test_a_failure_bounces_to_the_sender_with_a_copy_for_the_postmaster() -> None:
    msg = message()
    items = owed(msg, AttemptResult(message=msg, failed=((BOB, FAILED),)))
    assert [type(i) for i in items] == [Notice, Notice]
    bounce, copy = items
    assert isinstance(bounce, Notice)
    assert isinstance(copy, Notice)
    assert (bounce.queue_id, str(bounce.recipient)) == ("N1", "alice@example.test")
    assert bounce.log == LogLine("ABC123: sender notification (failed): N1")
    assert (copy.queue_id, copy.recipient) == ("N2", POSTMASTER)
    assert copy.log == LogLine("ABC123: postmaster notification: N2")

    dsn = parse(bounce.content)
    assert dsn["To"] == "<alice@example.test>"
    assert dsn["Message-ID"] == "<N1@mx.example.test>"
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    assert b"Status: 5.1.1" in bounce.content
    assert b"Diagnostic-Code: smtp; 550 5.1.1 No such user" in bounce.content
    # RET is HDRS by default: the sender gets the headers back, nobody the body.
    assert b"Subject: hello" in bounce.content
    assert b"secret body" not in bounce.content
    assert parse(copy.content)["To"] == "<postmaster@example.test>"
    assert b"secret body" not in copy.content


def test_ret_full_returns_the_body_to_the_sender_only() -> None:
    msg = message(ret="FULL")
    bounce, copy = owed(msg, AttemptResult(message=msg, failed=((BOB, FAILED),)))
    assert isinstance(bounce, Notice)
    assert isinstance(copy, Notice)
    assert b"secret body" in bounce.content
    assert b"secret body" not in copy.content


def test_a_bounce_is_never_bounced() -> None:
    msg = message(sender="")
    nasty = Outcome(status="bounced", reason="550 gone\r\nforged line", dsn="5.0.0")
    items = owed(msg, AttemptResult(message=msg, failed=((BOB, nasty),), delayed=(BOB,)))
    assert items == [
        LogLine(
            "ABC123: to=<bob@far.test>: undeliverable bounce discarded "
            "(550 gone\\x0d\\x0aforged line)"
        )
    ]


def test_delay_warning_and_success_notice_have_no_postmaster_copy() -> None:
    msg = message()
    waiting = QueuedRecipient(address="carol@far.test", attempts=3, last_reason="451 later")
    done = QueuedRecipient(address="dan@far.test", state="sent", notify=("SUCCESS",))
    result = AttemptResult(message=msg, delayed=(waiting,), succeeded=((done, RELAYED),))
    delay, success = owed(msg, result)
    assert isinstance(delay, Notice)
    assert isinstance(success, Notice)
    assert delay.log == LogLine("ABC123: sender notification (delayed): N1")
    assert success.log == LogLine("ABC123: sender notification (relayed): N2")
    assert parse(delay.content)["Subject"] == "Delayed Mail (still being retried)"
    # We stop trying at arrival + max_lifetime: 1000 + 86400 seconds after the epoch.
    assert b"Will-Retry-Until: Fri, 02 Jan 1970 00:16:40 +0000" in delay.content
    assert b"Action: relayed" in success.content


def test_order_is_failures_then_delays_then_successes() -> None:
    msg = message()
    local = QueuedRecipient(address="erin@example.test", state="sent", notify=("SUCCESS",))
    stored = Outcome(status="sent", reason="delivered to maildir", dsn="2.0.0")
    result = AttemptResult(
        message=msg,
        failed=((BOB, FAILED),),
        delayed=(QueuedRecipient(address="carol@far.test"),),
        succeeded=((local, stored),),
    )
    logs = [i.log.text for i in owed(msg, result) if isinstance(i, Notice)]
    assert logs == [
        "ABC123: sender notification (failed): N1",
        "ABC123: postmaster notification: N2",
        "ABC123: sender notification (delayed): N3",
        "ABC123: sender notification (delivered): N4",
    ]


def test_a_sender_that_no_longer_parses_is_a_warning() -> None:
    msg = message(sender="not an address")
    items = owed(msg, AttemptResult(message=msg, failed=((BOB, FAILED),)))
    assert items == [LogLine("ABC123: cannot report to sender <not an address>", level="warning")]


def test_nothing_owed_nothing_composed() -> None:
    msg = message()
    assert owed(msg, AttemptResult(message=msg)) == []


def test_notice_envelope() -> None:
    utf8 = Address(local_part="ålice", domain="example.test")
    notice = Notice(queue_id="N1", recipient=utf8, content=b"\xc3\xa5\r\n", log=LogLine("x"))
    envelope = notice.envelope(arrival=42.0)
    assert envelope.sender == ""
    assert envelope.arrival == 42.0
    assert [r.address for r in envelope.recipients] == ["ålice@example.test"]
    assert envelope.smtputf8
    assert envelope.body_8bit


def test_postmaster_address_follows_the_postmaster_mailbox() -> None:
    assert postmaster_address(["example.test", "other.test"]) == POSTMASTER
