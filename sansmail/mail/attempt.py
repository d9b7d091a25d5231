"""What one delivery attempt changes in a queued message, and whom to tell: pure.

The queue runner tries the pending recipients of a message and gets one `Outcome` per
recipient it reached a verdict for (recipients it did not get to stay as they were).
`record_attempt` turns those into the next envelope and the notices owed:

* ``sent`` and ``bounced`` are final. ``deferred`` counts an attempt and schedules the
  next one (`sansmail.mail.retry.next_attempt`); a recipient whose message has outlived
  ``max_queue_lifetime`` is bounced instead, its last reason kept.
* A failure is reported to the sender unless the recipient's RCPT said NOTIFY=NEVER or
  named no FAILURE (RFC 3461 §4.1; no NOTIFY at all means FAILURE). A success is reported
  only when NOTIFY named SUCCESS; a delay warning goes out once per message, after
  ``delay_warning``, for pending recipients whose NOTIFY allows DELAY (or was absent,
  which leaves delay notices to us, RFC 3461 §4.1).
* The message leaves the queue when no recipient is pending.

The notifications themselves, and whom they go to (never the null sender), are
`sansmail.mail.notices`'s.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Literal

import attrs

from sansmail.mail.address import AddressError, parse_address
from sansmail.mail.bounce import RecipientStatus
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.mail.retry import RetryPolicy, delay_warning_due, next_attempt
from sansmail.mail.retry import expired as expired_at

__all__ = ["AttemptResult", "Outcome", "dsn_status", "record_attempt"]


@attrs.frozen(kw_only=True)
class Outcome:
    """The verdict on one recipient: `reason` is the remote reply ("550 5.1.1 No such
    user") or our own explanation; `status` its RFC 3463 code; `remote_mta` the host
    that answered, if one did."""

    status: Literal["sent", "deferred", "bounced"]
    reason: str
    dsn: str
    remote_mta: str | None = None
    #: The reason is an SMTP reply from `remote_mta` (RFC 3464 §2.3.6 diagnostic type).
    smtp_reply: bool = False


@attrs.frozen(kw_only=True)
class AttemptResult:
    message: QueuedMessage
    failed: tuple[tuple[QueuedRecipient, Outcome], ...] = ()
    succeeded: tuple[tuple[QueuedRecipient, Outcome], ...] = ()
    delayed: tuple[QueuedRecipient, ...] = ()
    #: Recipients that expired in this attempt (bounced for age, not by a reply).
    expired: tuple[QueuedRecipient, ...] = ()

    @property
    def finished(self) -> bool:
        return not self.message.pending

    @property
    def next_due(self) -> float | None:
        pending = self.message.pending
        return min(r.next_attempt for r in pending) if pending else None


def _wants(recipient: QueuedRecipient, what: str) -> bool:
    notify = recipient.notify
    if "NEVER" in notify:
        return False
    if not notify:
        return what in ("FAILURE", "DELAY")
    return what in notify


def record_attempt(
    message: QueuedMessage,
    outcomes: Mapping[str, Outcome],
    *,
    now: float,
    policy: RetryPolicy,
    jitter: float = 0.0,
) -> AttemptResult:
    """The envelope after an attempt ended at `now` with `outcomes` (keyed by
    `QueuedRecipient.address`), and the notices it owes (see the module docstring)."""
    recipients: list[QueuedRecipient] = []
    failed: list[tuple[QueuedRecipient, Outcome]] = []
    succeeded: list[tuple[QueuedRecipient, Outcome]] = []
    expired: list[QueuedRecipient] = []
    for recipient in message.recipients:
        outcome = outcomes.get(recipient.address)
        if recipient.state != "pending":
            recipients.append(recipient)
            continue
        if outcome is None:
            if expired_at(arrival=message.arrival, now=now, policy=policy):
                outcome = Outcome(
                    status="deferred", reason=recipient.last_reason or "not tried", dsn="4.4.7"
                )
            else:
                recipients.append(recipient)
                continue
        if outcome.status == "deferred":
            attempts = recipient.attempts + 1
            due = next_attempt(
                arrival=message.arrival, attempts=attempts, now=now, policy=policy, jitter=jitter
            )
            if due is not None:
                recipients.append(
                    attrs.evolve(
                        recipient, attempts=attempts, next_attempt=due, last_reason=outcome.reason
                    )
                )
                continue
            # RFC 3463 X.4.7: delivery time expired.
            outcome = Outcome(
                status="bounced",
                reason=f"message expired in the queue; last error: {outcome.reason}",
                dsn="4.4.7" if outcome.dsn.startswith("4") else outcome.dsn,
                remote_mta=outcome.remote_mta,
                smtp_reply=False,
            )
            expired.append(recipient)
        state: Literal["sent", "bounced"] = "sent" if outcome.status == "sent" else "bounced"
        done = attrs.evolve(
            recipient, state=state, attempts=recipient.attempts + 1, last_reason=outcome.reason
        )
        recipients.append(done)
        if state == "bounced" and _wants(recipient, "FAILURE"):
            failed.append((done, outcome))
        elif state == "sent" and _wants(recipient, "SUCCESS"):
            succeeded.append((done, outcome))
    updated = attrs.evolve(message, recipients=recipients)
    delayed: tuple[QueuedRecipient, ...] = ()
    if updated.pending and delay_warning_due(
        arrival=message.arrival, now=now, warned=message.warned, policy=policy
    ):
        delayed = tuple(r for r in updated.pending if _wants(r, "DELAY"))
        updated = attrs.evolve(updated, warned=True)
    return AttemptResult(
        message=updated,
        failed=tuple(failed),
        succeeded=tuple(succeeded),
        delayed=delayed,
        expired=tuple(expired),
    )


def dsn_status(
    recipient: QueuedRecipient,
    outcome: Outcome | None,
    *,
    action: Literal["failed", "delayed", "delivered", "relayed"],
    last_attempt: datetime.datetime | None = None,
    will_retry_until: datetime.datetime | None = None,
) -> RecipientStatus | None:
    """The RFC 3464 per-recipient block for `recipient`; None when its address no longer
    parses (it did when it was queued, so only damage from outside gets here)."""
    try:
        address = parse_address(recipient.address, smtputf8=True)
    except AddressError:
        return None
    if outcome is None:
        status = "4.0.0"
        diagnostic = recipient.last_reason or None
        remote_mta = None
    else:
        status = outcome.dsn
        if action == "failed" and status[0] != "5":
            status = "5" + status[1:]  # a bounce reports a permanent status, RFC 3464 §2.3.4
        if action == "delayed" and status[0] != "4":
            status = "4" + status[1:]
        if action in ("delivered", "relayed"):
            status = "2" + status[1:]
        diagnostic = ("smtp; " if outcome.smtp_reply else "") + outcome.reason
        remote_mta = outcome.remote_mta
    return RecipientStatus(
        recipient=address,
        original_recipient=recipient.orcpt,
        action=action,
        status=status,
        remote_mta=remote_mta,
        diagnostic=diagnostic,
        last_attempt=last_attempt,
        will_retry_until=will_retry_until,
    )
