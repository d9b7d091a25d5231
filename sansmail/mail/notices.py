"""Which delivery status notifications one attempt owes, to whom, and what to log: pure.

After an attempt, `sansmail.mail.attempt.record_attempt` says which recipients failed,
were delayed past the warning time, or were delivered with NOTIFY=SUCCESS. `notices`
turns that into the messages to queue and the log lines, in the order the runner must
queue and log them:

* Nothing is ever sent to the null sender (RFC 5321 §4.5.5, RFC 3464 §2): a failed
  bounce is logged as discarded, so that two servers cannot bounce a message between
  them forever.
* One notification per kind: a bounce for the failed recipients, a delay warning for the
  delayed ones (with the time we stop trying), a success notice for the delivered ones;
  each an RFC 3464 DSN from `sansmail.mail.bounce.compose_dsn`, returning the original
  as its RET asked (headers by default).
* A bounce is also copied to the postmaster, with the original reduced to its headers
  (Postfix's ``notify_classes = bounce``): the postmaster learns what failed and why
  without reading the user's mail. Delay warnings and success notices are not.
* A sender address that no longer parses (damage from outside the queue) gets a warning
  in the log instead.

Each notification is queued with the null sender, so it is never bounced in turn, and
gets a fresh queue id from the caller's `new_id`, which is also its Message-ID's left part.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Collection, Sequence
from typing import Final

import attrs

from sansmail.mail import bounce
from sansmail.mail.address import Address, AddressError, parse_address
from sansmail.mail.attempt import AttemptResult, dsn_status
from sansmail.mail.delivery import LogLine
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.mail.logtext import printable
from sansmail.mail.policy import postmaster_mailbox
from sansmail.mail.retry import RetryPolicy

__all__ = ["Notice", "notices", "postmaster_address"]

_UTC: Final = datetime.UTC


@attrs.frozen(kw_only=True)
class Notice:
    """A notification to queue under `queue_id`: `content` for `recipient`, from the
    null sender; `log` is the line to write once it is queued."""

    queue_id: str
    recipient: Address
    content: bytes
    log: LogLine

    def envelope(self, *, arrival: float) -> QueuedMessage:
        """Its queue envelope, arrived at `arrival`."""
        return QueuedMessage(
            queue_id=self.queue_id,
            sender="",
            arrival=arrival,
            size=0,
            recipients=[QueuedRecipient(address=str(self.recipient))],
            smtputf8=self.recipient.needs_smtputf8,
            body_8bit=not self.content.isascii(),
        )


def postmaster_address(domains: Collection[str]) -> Address:
    """Where the postmaster's copies go: postmaster at the domain holding its mailbox."""
    return Address(local_part="postmaster", domain=postmaster_mailbox(domains).domain)


def notices(
    message: QueuedMessage,
    content: bytes,
    result: AttemptResult,
    *,
    now: float,
    policy: RetryPolicy,
    hostname: str,
    postmaster: Address,
    new_id: Callable[[], str],
) -> list[Notice | LogLine]:
    """What `result` (an attempt on `message`, whose content is `content`, ended at `now`)
    owes: the notifications to queue and the lines to log, in order (see the module
    docstring). `hostname` is the reporting MTA."""
    if not (result.failed or result.delayed or result.succeeded):
        return []  # the common case: delivered, nothing to tell anyone
    if not message.sender:
        return [
            LogLine(
                f"{message.queue_id}: to=<{printable(recipient.address)}>: "
                f"undeliverable bounce discarded ({printable(outcome.reason)})"
            )
            for recipient, outcome in result.failed
        ]
    when = datetime.datetime.fromtimestamp(now, tz=_UTC)
    dsn = _Composer(message, content, now=now, hostname=hostname, new_id=new_id)
    owed: list[Notice | LogLine] = []
    if result.failed:
        failed = [dsn_status(r, o, action="failed", last_attempt=when) for r, o in result.failed]
        owed += dsn.compose(failed, postmaster=postmaster)
    if result.delayed:
        until = datetime.datetime.fromtimestamp(message.arrival + policy.max_lifetime, tz=_UTC)
        delayed = [
            dsn_status(r, None, action="delayed", last_attempt=when, will_retry_until=until)
            for r in result.delayed
        ]
        owed += dsn.compose(delayed, postmaster=None)
    if result.succeeded:
        succeeded = [
            dsn_status(r, o, action="delivered" if o.remote_mta is None else "relayed")
            for r, o in result.succeeded
        ]
        owed += dsn.compose(succeeded, postmaster=None)
    return owed


@attrs.define
class _Composer:
    message: QueuedMessage
    content: bytes
    now: float
    hostname: str
    new_id: Callable[[], str]

    def compose(
        self, statuses: Sequence[bounce.RecipientStatus | None], *, postmaster: Address | None
    ) -> list[Notice | LogLine]:
        """One DSN for the sender about `statuses`, and its copy for `postmaster`."""
        message = self.message
        present = [s for s in statuses if s is not None]
        if not present:
            return []
        try:
            sender = parse_address(message.sender, smtputf8=True)
        except AddressError:
            text = f"{message.queue_id}: cannot report to sender <{message.sender}>"
            return [LogLine(text, level="warning")]
        qid = self.new_id()
        dsn = bounce.compose_dsn(
            reporting_mta=self.hostname,
            original_envelope_id=message.envid,
            arrival=datetime.datetime.fromtimestamp(message.arrival, tz=_UTC),
            sender=sender,
            recipients=present,
            original=self.content,
            return_full=message.ret == "FULL",
            now=datetime.datetime.fromtimestamp(self.now, tz=_UTC),
            message_id=f"{qid}@{self.hostname}",
        )
        owed: list[Notice | LogLine] = [
            Notice(
                queue_id=qid,
                recipient=sender,
                content=dsn,
                log=LogLine(
                    f"{message.queue_id}: sender notification ({present[0].action}): {qid}"
                ),
            )
        ]
        if postmaster is not None:
            copy_qid = self.new_id()
            owed.append(
                Notice(
                    queue_id=copy_qid,
                    recipient=postmaster,
                    content=bounce.postmaster_copy(dsn, postmaster=postmaster),
                    log=LogLine(f"{message.queue_id}: postmaster notification: {copy_qid}"),
                )
            )
        return owed
