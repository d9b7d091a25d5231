"""sansmail.storage.queue.record_attempt: the envelope after one delivery attempt."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail.mail.attempt import Outcome, dsn_status, record_attempt
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.mail.retry import RetryPolicy

POLICY = RetryPolicy(
    minimal_backoff=300, maximal_backoff=3600, max_lifetime=86400, delay_warning=3600
)
SENT = Outcome(
    status="sent", reason="250 2.0.0 Ok", dsn="2.0.0", remote_mta="mx.far.test", smtp_reply=True
)
LATER = Outcome(
    status="deferred",
    reason="451 4.3.0 Try later",
    dsn="4.3.0",
    remote_mta="mx.far.test",
    smtp_reply=True,
)
NEVER = Outcome(
    status="bounced",
    reason="550 5.1.1 No such user",
    dsn="5.1.1",
    remote_mta="mx.far.test",
    smtp_reply=True,
)


def message(*recipients, arrival=1000.0, warned=False):
    return QueuedMessage(
        queue_id="ABC123",
        sender="alice@example.org",
        arrival=arrival,
        size=10,
        recipients=recipients or (QueuedRecipient(address="x@far.test"),),
        warned=warned,
    )


def test_sent_and_bounced_are_final_and_finish_the_message():
    m = message(QueuedRecipient(address="a@far.test"), QueuedRecipient(address="b@far.test"))
    result = record_attempt(m, {"a@far.test": SENT, "b@far.test": NEVER}, now=1010, policy=POLICY)
    assert result.finished
    states = {r.address: r.state for r in result.message.recipients}
    assert states == {"a@far.test": "sent", "b@far.test": "bounced"}
    assert [r.address for r, _ in result.failed] == ["b@far.test"]
    assert result.succeeded == ()
    assert result.next_due is None


def test_deferred_is_scheduled_with_backoff():
    m = message()
    result = record_attempt(m, {"x@far.test": LATER}, now=1010, policy=POLICY)
    (r,) = result.message.recipients
    assert r.state == "pending"
    assert r.attempts == 1
    assert r.next_attempt == 1010 + 300
    assert r.last_reason == LATER.reason
    assert result.next_due == 1310
    again = record_attempt(
        result.message, {"x@far.test": LATER}, now=1400, policy=POLICY, jitter=0.5
    )
    assert again.message.recipients[0].next_attempt == 1400 + 600


def test_deferred_past_lifetime_bounces_with_last_reason():
    m = message()
    result = record_attempt(m, {"x@far.test": LATER}, now=1000 + 86400, policy=POLICY)
    assert result.finished
    (failed, outcome) = result.failed[0]
    assert failed.state == "bounced"
    assert "451 4.3.0 Try later" in outcome.reason
    assert outcome.dsn == "4.4.7"
    assert result.expired == (m.recipients[0],)


def test_untried_recipient_keeps_its_state_until_expiry():
    m = message(QueuedRecipient(address="a@far.test"), QueuedRecipient(address="b@near.test"))
    result = record_attempt(m, {"a@far.test": SENT}, now=1010, policy=POLICY)
    assert [r.address for r in result.message.pending] == ["b@near.test"]
    assert result.message.pending[0].attempts == 0
    old = record_attempt(m, {}, now=1000 + 86400, policy=POLICY)
    assert old.finished


@pytest.mark.parametrize(
    ("notify", "bounce"),
    [
        ((), True),
        (("FAILURE",), True),
        (("NEVER",), False),
        (("SUCCESS",), False),
        (("DELAY", "FAILURE"), True),
    ],
)
def test_notify_failure(notify, bounce):
    m = message(QueuedRecipient(address="x@far.test", notify=notify))
    result = record_attempt(m, {"x@far.test": NEVER}, now=1010, policy=POLICY)
    assert bool(result.failed) is bounce


def test_notify_success_reports_delivery():
    m = message(QueuedRecipient(address="x@far.test", notify=("SUCCESS",)))
    result = record_attempt(m, {"x@far.test": SENT}, now=1010, policy=POLICY)
    assert [r.address for r, _ in result.succeeded] == ["x@far.test"]


def test_delay_warning_once():
    m = message()
    early = record_attempt(m, {"x@far.test": LATER}, now=1000 + 100, policy=POLICY)
    assert early.delayed == ()
    late = record_attempt(early.message, {"x@far.test": LATER}, now=1000 + 3600, policy=POLICY)
    assert [r.address for r in late.delayed] == ["x@far.test"]
    assert late.message.warned
    later = record_attempt(late.message, {"x@far.test": LATER}, now=1000 + 7200, policy=POLICY)
    assert later.delayed == ()


def test_delay_warning_respects_notify():
    m = message(QueuedRecipient(address="x@far.test", notify=("FAILURE",)))
    late = record_attempt(m, {"x@far.test": LATER}, now=1000 + 3600, policy=POLICY)
    assert late.delayed == ()
    assert late.message.warned


def test_dsn_status_blocks():
    r = QueuedRecipient(address="x@far.test", orcpt="rfc822;x@far.test")
    failed = dsn_status(r, NEVER, action="failed")
    assert failed.status == "5.1.1"
    assert failed.diagnostic == "smtp; 550 5.1.1 No such user"
    assert failed.original_recipient == "rfc822;x@far.test"
    expired = dsn_status(
        r, Outcome(status="bounced", reason="expired", dsn="4.4.7"), action="failed"
    )
    assert expired.status == "5.4.7"
    delayed = dsn_status(r, None, action="delayed")
    assert delayed.status.startswith("4")


@settings(max_examples=200, deadline=None)
@given(
    verdicts=st.lists(st.sampled_from([SENT, LATER, NEVER, None]), min_size=1, max_size=6),
    now=st.floats(min_value=1000, max_value=1000 + 2 * 86400),
)
def test_invariants(verdicts, now):
    recipients = [QueuedRecipient(address=f"r{i}@far.test") for i in range(len(verdicts))]
    m = message(*recipients)
    outcomes = {r.address: v for r, v in zip(recipients, verdicts, strict=True) if v is not None}
    result = record_attempt(m, outcomes, now=now, policy=POLICY)
    assert [r.address for r in result.message.recipients] == [r.address for r in recipients]
    for before, after in zip(recipients, result.message.recipients, strict=True):
        verdict = outcomes.get(before.address)
        if verdict is SENT:
            assert after.state == "sent"
        elif verdict is NEVER:
            assert after.state == "bounced"
        if after.state == "pending":
            assert after.next_attempt >= now or after.attempts == 0
    if now - 1000 >= 86400:
        assert result.finished
