"""`QueueManager` and `Attempt`: what a delivery attempt of a queued message does.

Theory of operation
-------------------
The queue (`sansmail.storage.queue.Queue`: the directory of one machine, or the table
every node shares) holds messages with their envelopes; a runner with an event loop
(`sansmail_trio._queue`, or any other loop's) keeps the schedule, the DNS, the sockets,
TLS and the connection cache. Everything else an attempt
decides or stores is here, so a runner for another loop repeats no rule:

    manager = QueueManager(config=config, queue=queue, store=store, users=users,
                           aliases=aliases, policy=RetryPolicy.from_config(...),
                           local_delivery=LocalDelivery(...))
    attempt = manager.open(queue_id)                        # blocking; None: gone
    for destination in attempt.destinations:                # side by side
        if destination.local:
            result = attempt.deliver_local(destination, now=clock())  # blocking
        else:
            plan = attempt.remote(destination, shuffle=rng.shuffle)
            ...                                             # its lookups and connections
            result = plan.next_step().result                # once it is Done
        attempt.record(destination, result, delay=..., now=clock())
        write(attempt.take_log())
        schedule_now(attempt.take_queued())                 # Sieve's redirects, replies
    finished = attempt.finish(now=clock(), jitter=rng.random())   # blocking
    write(attempt.take_log())                               # also when finish raised

On a queue every node delivers from (`sansmail.storage.queue.SharedQueue`), the runner
takes its messages with `claim` instead of `open_all`: due messages no other node holds,
opened in the same call and leased to this node until `finish` writes their outcome
(which lets go of the lease) or the runner gives them back. An outcome is written only
while the claim holds: a node that stalled past its lease while another took the message
over writes no envelope, queues no notification and removes nothing (the other node's
attempt does), which for a message leaving the queue `finish` checks, renewing the
claim, before the notifications.

A busy runner does the same for many messages at once, which costs fewer worker-thread
hops, fewer fsyncs and fewer connections: `open_all` opens a batch of due messages in
one blocking call; `QueueManager.remote` hands several messages' destinations for one
domain to one walk over its next hops (`sansmail.mail.delivery.RemoteDelivery`), which
the runner delivers one transaction after the other on one connection, recording each
as it is settled (`take_settled`); and `finish_all` writes the outcome of a batch of
attempts with one directory fsync for all the messages that leave the queue (or none,
leaving it to a later `sync` that covers many batches).

Methods marked BLOCKING do file I/O (the queue, the mailboxes, alias include files); an
adapter runs them in a worker thread. The others only compute. `deliver_local` changes
nothing in the `Attempt`, so it may run in a thread while other destinations' results
are recorded; `finish` runs once, after every destination is recorded.

The order in `finish` is what makes a crash harmless (the queue module's docstring has
the files): the new envelope is written first, so a crash repeats at most this attempt
and never forgets a verdict already logged; then the notifications are queued, each
complete before it is logged; and only then does a finished message leave the queue, so
a crash in between may send a bounce twice but never loses one. A message deleted from
the queue during the attempt (``queue delete``) is dropped without notifications.

Sieve. A local recipient the SMTP intake queued for its mailbox's scripts (an active
script, or ``[sieve] before``: `QueuedRecipient.mailbox`) is delivered by
`sansmail.sessions.lda.LocalDelivery`, as Dovecot's LDA is by Postfix: the scripts file,
flag, reject, redirect or answer it. So are the bounces and notices to our users whose
mailbox wants Sieve; the others are stored in INBOX together, as before. A reject is the
recipient's permanent failure, and the DSN below carries it to the sender. The messages
the scripts queue (redirects, vacation replies) are queued before the mailbox copies are
stored and are due at once (`take_queued`).

Signing. What leaves for another host is signed (DKIM) and, for a forwarded copy,
sealed (ARC) with the keys of `sansmail.storage.dkimkeys`, as
`sansmail.mail.dkim.outbound_fields` decides, when the attempt is opened: in the same
blocking call, so the public-key work stays off the event loop, and once per attempt,
whatever number of destinations and connections the copy then takes. Local copies
(bounces to our own users) are stored as queued. A server without keys skips all of it
(`DkimKeys.any`). A key that cannot sign leaves the message unsigned, with a warning: a
message delayed for want of a signature is worse than one that may land in spam.

The log lines each step owes collect in the attempt and `take_log` hands them over; a
step that raised halfway leaves the lines of what it did complete.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import attrs

from sansmail.config import Config
from sansmail.mail import delivery, dkim, trace
from sansmail.mail.address import Address, MailboxId, parse_address
from sansmail.mail.aliases import expand
from sansmail.mail.attempt import Outcome, record_attempt
from sansmail.mail.delivery import Destination, DomainResult, LogLine, RemoteDelivery
from sansmail.mail.envelope import CorruptEnvelopeError, QueuedMessage
from sansmail.mail.logtext import printable
from sansmail.mail.notices import Notice, notices, postmaster_address
from sansmail.mail.retry import RetryPolicy
from sansmail.storage.aliasfile import Aliases
from sansmail.storage.dkimkeys import DkimKeys
from sansmail.storage.maildir import MailStore
from sansmail.storage.queue import ClaimLostError, Queue, SharedQueue, UnknownQueueIdError
from sansmail.storage.users import Users, UsersUnavailableError

if TYPE_CHECKING:  # only its type: a runner without Sieve never loads the evaluator
    from sansmail.sessions.lda import LocalDelivery

__all__ = ["Attempt", "Finished", "Opened", "QueueManager"]


@attrs.frozen
class Finished:
    """How an attempt ended: when the message is due next (None: it left the queue) and
    the notifications it queued, which are due at once."""

    next_due: float | None
    queued: tuple[str, ...] = ()


@attrs.frozen
class Opened:
    """What `QueueManager.open_all` found: an attempt per message it could open, the
    ids that are gone (delivered, deleted, or not committed yet), and the lines to log
    about damaged files it set aside."""

    attempts: tuple[Attempt, ...]
    gone: tuple[str, ...]
    log: tuple[LogLine, ...] = ()


class QueueManager:
    """The queue of one server and what delivering from it needs (see the module
    docstring)."""

    def __init__(
        self,
        *,
        config: Config,
        queue: Queue,
        store: MailStore,
        users: Users,
        aliases: Aliases,
        policy: RetryPolicy,
        dkim_keys: DkimKeys | None = None,
        local_delivery: LocalDelivery | None = None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.store = store
        self.users = users
        self.aliases = aliases
        self.policy = policy
        #: The signing keys (None: nothing is signed).
        self.dkim_keys = dkim_keys
        #: Delivery through the mailboxes' Sieve scripts (None: every copy is stored as
        #: it is, in INBOX).
        self.local_delivery = local_delivery

    @functools.cached_property
    def postmaster(self) -> Address:
        """Where postmaster copies of bounces go (the domains never change)."""
        return postmaster_address(self.config.domains)

    def queue_ids(self) -> set[str]:
        """BLOCKING. The ids of every message in the queue, complete or being written."""
        return self.queue.ids()

    def due(self, ids: Iterable[str]) -> dict[str, float]:
        """BLOCKING. When each of `ids` is next due: its earliest pending recipient's
        next attempt. Ids being written, deleted or damaged are left out (`recover`
        sets damaged ones aside)."""
        due: dict[str, float] = {}
        for qid in ids:
            try:
                message = self.queue.load(qid)
            except (UnknownQueueIdError, CorruptEnvelopeError, ValueError):
                continue
            due[qid] = min((r.next_attempt for r in message.pending), default=0.0)
        return due

    def open(self, queue_id: str) -> Attempt | None:
        """BLOCKING. An attempt on `queue_id`, read afresh (so ``queue delete`` takes
        effect at once); None when it is gone or unreadable."""
        try:
            message, content = self.queue.read(queue_id)
        except (UnknownQueueIdError, CorruptEnvelopeError, ValueError):
            return None
        return Attempt(self, message, content)

    def open_all(self, ids: Iterable[str]) -> Opened:
        """BLOCKING. `open` for each of `ids`, in one call. A message whose file no
        longer reads (its content fails its checksum: pages lost in a crash; or damage
        from outside) is set aside in the queue's ``corrupt/`` and logged, rather than
        sent damaged or tried again at every pass."""
        attempts: list[Attempt] = []
        gone: list[str] = []
        log: list[LogLine] = []
        for qid in ids:
            try:
                message, content = self.queue.read(qid)
            except UnknownQueueIdError:
                gone.append(qid)
                continue
            except (CorruptEnvelopeError, ValueError) as exc:
                gone.append(qid)
                if self.queue.set_aside(qid):
                    text = f"{qid}: damaged queue file moved to corrupt/: {printable(str(exc))}"
                    log.append(LogLine(text, level="warning"))
                continue
            attempts.append(Attempt(self, message, content))
        return Opened(tuple(attempts), tuple(gone), tuple(log))

    def claim(self, limit: int, *, now: float) -> Opened:
        """BLOCKING. For a `SharedQueue`: up to `limit` messages due at `now`, claimed
        for this node (`SharedQueue.claim`) and opened, in one call; the damaged ones
        the claim set aside are logged."""
        queue = self.queue
        if not isinstance(queue, SharedQueue):
            raise TypeError("only a shared queue is claimed from; open_all reads the others")
        claimed = queue.claim(limit, now=now)
        log = tuple(
            LogLine(f"{qid}: damaged queue entry set aside: {printable(why)}", level="warning")
            for qid, why in claimed.damaged
        )
        attempts = tuple(
            Attempt(self, message, content, claimed=True) for message, content in claimed.messages
        )
        return Opened(attempts, (), log)

    def remote(
        self,
        items: Sequence[tuple[Attempt, Destination]],
        *,
        shuffle: Callable[[list[str]], None],
    ) -> RemoteDelivery:
        """One walk over the next hops of a domain for several messages' destinations
        there (`items`, all remote, all for one domain), delivered in this order."""
        domains = {destination.domain for _attempt, destination in items}
        if len(domains) != 1 or any(destination.local for _a, destination in items):
            raise ValueError("a batch is for one remote domain")
        messages = [
            delivery.outbound_message(attempt.message, attempt.outbound, destination.recipients)
            for attempt, destination in items
        ]
        return RemoteDelivery(
            messages,
            domains.pop(),
            delivery=self.config.delivery,
            hostname=self.config.hostname,
            shuffle=shuffle,
        )

    def finish_all(
        self,
        attempts: Sequence[Attempt],
        *,
        now: float,
        jitters: Sequence[float],
        sync: bool = True,
    ) -> list[Finished | Exception]:
        """BLOCKING. `Attempt.finish` for each of `attempts` (each with its jitter),
        with one directory fsync for every message that left the queue, made before
        this returns. An attempt that failed gets its exception in its place, and its
        log lines stay in it.

        `sync=False` leaves that fsync to a later `sync`, which may then cover the
        removals of many batches. Until it is made, a crash can bring removed messages
        back, and they are sent again: a duplicate, which a removal after the next
        hop's ``250`` may always cause (RFC 5321 §6.1), never a loss, since what comes
        back is the file as it was last written in full (content, envelope records and
        the notifications queued before the removal are each durable on their own)."""
        finished: list[Finished | Exception] = []
        for attempt, jitter in zip(attempts, jitters, strict=True):
            try:
                finished.append(attempt.finish(now=now, jitter=jitter, sync=False))
            except Exception as exc:  # noqa: BLE001 (handed back, one per attempt)
                finished.append(exc)
        if sync:
            self.queue.sync()
        return finished

    def sync(self) -> None:
        """BLOCKING. Make the removals of ``finish_all(..., sync=False)`` durable (one
        directory fsync)."""
        self.queue.sync()


class Attempt:
    """One try of every pending recipient of one message (see the module docstring)."""

    def __init__(
        self,
        manager: QueueManager,
        message: QueuedMessage,
        content: bytes,
        *,
        claimed: bool = False,
    ) -> None:
        self._manager = manager
        self.message = message
        self.content = content
        # Taken by a claim on a shared queue: its outcome is this node's to write only
        # while the claim holds (`finish`).
        self._claimed = claimed
        self._outcomes: dict[str, Outcome] = {}
        self._log: list[LogLine] = []
        # What each local destination's Sieve deliveries logged and queued, kept from
        # the worker thread of `deliver_local` (one key a destination, so threads for
        # two local domains never share a list) until `record` takes it.
        self._local: dict[Destination, tuple[Sequence[LogLine], Sequence[str]]] = {}
        self._queued: list[str] = []
        pending = message.pending
        loop = delivery.forwarding_loop(content)
        if loop is not None:
            self._outcomes = {r.address: loop for r in pending}
            pending = ()
        #: Where to deliver: empty when the message loops.
        self.destinations = delivery.destinations(pending, domains=manager.config.domains)
        #: What goes to other hosts: `content` with its signature fields, if any.
        self.outbound = content
        if any(not d.local for d in self.destinations):
            self.outbound = self._signed(content)

    def _signed(self, content: bytes) -> bytes:
        keys = self._manager.dkim_keys
        if keys is None or not keys.any():
            return content
        config = self._manager.config
        message = self.message
        try:
            fields = dkim.outbound_fields(
                content,
                forwarded=delivery.forwarded(message, domains=config.domains),
                own_sender=delivery.own_sender(message, domains=config.domains),
                domains=config.domains,
                hostname=config.hostname,
                selector=keys.selector,
                key_for=keys.key_for,
            )
        except dkim.DkimError as exc:
            text = f"{message.queue_id}: sent unsigned: {printable(str(exc))}"
            self._log.append(LogLine(text, level="warning"))
            return content
        return fields + content

    def take_queued(self) -> list[str]:
        """The messages the recorded destinations' Sieve scripts queued (redirects,
        vacation replies), each once: due at once."""
        queued, self._queued = self._queued, []
        return queued

    def take_log(self) -> list[LogLine]:
        """The log lines owed so far, each once."""
        lines, self._log = self._log, []
        return lines

    def remote(
        self, destination: Destination, *, shuffle: Callable[[list[str]], None]
    ) -> RemoteDelivery:
        """The walk over `destination`'s next hops, for the runner to drive."""
        config = self._manager.config
        message = delivery.outbound_message(self.message, self.outbound, destination.recipients)
        return RemoteDelivery(
            message,
            destination.domain,
            delivery=config.delivery,
            hostname=config.hostname,
            shuffle=shuffle,
        )

    def deliver_local(self, destination: Destination, *, now: float) -> DomainResult:
        """BLOCKING. Store the message for `destination`'s recipients, in our domains,
        ending at `now` (the wall clock Sieve's vacation and date tests read).

        A recipient the SMTP intake queued for its Sieve scripts (`QueuedRecipient.
        mailbox`) goes to that mailbox through `QueueManager.local_delivery`, as it was
        expanded then. Any other recipient is a bounce or notice to our own senders,
        expanded here where the aliases send it (include files may be read); an alias's
        outside targets are not forwarded to, since those are not the sender. Its
        mailboxes that want Sieve get it through their scripts too, the others in one
        store. The scripts' log lines and the messages they queued (redirects, vacation
        replies) are kept for `record` and `take_queued`."""
        manager = self._manager
        config = manager.config
        lda = manager.local_delivery
        outcomes: dict[str, Outcome] = {}
        direct: dict[str, list[MailboxId]] = {}
        sieved: dict[str, list[Outcome]] = {}
        log: list[LogLine] = []
        queued: list[str] = []
        for recipient in destination.recipients:
            if recipient.mailbox is not None:
                if lda is None:  # a runner without Sieve: the mailbox as expanded
                    direct[recipient.address] = [recipient.mailbox]
                else:
                    original = _original_recipient(recipient.orcpt)
                    outcome = self._through_sieve(
                        lda,
                        recipient.mailbox,
                        recipient=recipient.address,
                        original=original,
                        now=now,
                        log=log,
                        queued=queued,
                    )
                    sieved[recipient.address] = [outcome]
                continue
            local, _, domain = recipient.address.rpartition("@")
            try:
                expansion = expand(
                    manager.aliases.table,
                    f"{local.lower()}@{domain.lower()}",
                    domains=config.domains,
                    user_exists=manager.users.__contains__,
                    recipient_delimiter=config.recipient_delimiter,
                    read_include=manager.aliases.read_include,
                )
            except UsersUnavailableError as exc:
                # A users file that cannot be read says nothing of who exists: wait for
                # the admin to mend it rather than bounce (the SMTP side answers 451).
                outcomes[recipient.address] = delivery.users_unavailable(str(exc))
                continue
            if not expansion.local and not expansion.remote:
                problems = expansion.problems
                outcomes[recipient.address] = delivery.unknown_recipient(
                    recipient.address, problems
                )
                continue
            # An alias that leads only outside: nothing here to store, and nothing lost.
            direct.setdefault(recipient.address, [])
            for mailbox in expansion.local:
                if lda is not None and lda.wants(mailbox):
                    outcome = self._through_sieve(
                        lda,
                        mailbox,
                        recipient=recipient.address,
                        original=None,
                        now=now,
                        log=log,
                        queued=queued,
                    )
                    sieved.setdefault(recipient.address, []).append(outcome)
                else:
                    direct[recipient.address].append(mailbox)
        mailboxes = [m for found in direct.values() for m in found]
        stored = (
            self._store(list(dict.fromkeys(mailboxes)), self._return_path())
            if mailboxes
            else delivery.STORED
        )
        for address in {**direct, **sieved}:
            found = [stored] if direct.get(address) else []
            outcomes[address] = _worst([*found, *sieved.get(address, ())])
        self._local[destination] = (log, queued)
        return DomainResult(outcomes=outcomes, relay="local")

    def _return_path(self) -> bytes:
        sender = self.message.sender
        return trace.return_path(parse_address(sender, smtputf8=True) if sender else None)

    def _through_sieve(
        self,
        lda: LocalDelivery,
        mailbox: MailboxId,
        *,
        recipient: str,
        original: str | None,
        now: float,
        log: list[LogLine],
        queued: list[str],
    ) -> Outcome:
        try:
            result = lda.deliver(
                mailbox,
                self._return_path() + self.content,
                queue_id=self.message.queue_id,
                sender=self.message.sender,
                recipient=recipient,
                original_recipient=original,
                now=now,
            )
        except OSError as exc:
            return delivery.store_failed(str(exc))
        log.extend(result.log)
        queued.extend(result.queued)
        return result.outcome

    def _store(self, mailboxes: list[MailboxId], prefix: bytes) -> Outcome:
        try:
            stored = self._manager.store.begin(mailboxes, prefix=prefix)
            try:
                stored.write(self.content)
                stored.commit()
            except BaseException:
                stored.abort()
                raise
        except OSError as exc:
            return delivery.store_failed(str(exc))
        return delivery.STORED

    def record(
        self, destination: Destination, result: DomainResult, *, delay: float, now: float
    ) -> None:
        """Keep the verdicts on `destination`'s recipients (delivered in `delay` seconds,
        ending at `now`) and log them, after the lines of its Sieve deliveries."""
        lines, queued = self._local.pop(destination, ((), ()))
        self._log.extend(lines)
        self._queued.extend(queued)
        for recipient in destination.recipients:
            outcome = result.outcomes[recipient.address]
            self._outcomes[recipient.address] = outcome
            self._log.append(
                delivery.disposition(
                    self.message, recipient, outcome, result=result, delay=delay, now=now
                )
            )

    def finish(self, *, now: float, jitter: float, sync: bool = True) -> Finished:
        """BLOCKING. Write what the attempt, ended at `now`, changed: the envelope, the
        notifications, the message's removal, in that order (see the module docstring).
        `jitter` in [0, 1) spreads the next retry (`sansmail.mail.retry`). `sync=False`
        leaves the directory fsync that makes a removal durable to the caller
        (`finish_all` makes one for a batch)."""
        manager = self._manager
        queue = manager.queue
        message = self.message
        result = record_attempt(
            message, self._outcomes, now=now, policy=manager.policy, jitter=jitter
        )
        queued: list[str] = []
        try:
            if not result.finished:
                queue.update(result.message)
            elif self._claimed:
                self._still_held(now)
            owed = notices(
                message,
                self.content,
                result,
                now=now,
                policy=manager.policy,
                hostname=manager.config.hostname,
                postmaster=manager.postmaster,
                new_id=queue.new_id,
            )
            for item in owed:
                if isinstance(item, Notice):
                    self._enqueue(item, now)
                    queued.append(item.queue_id)
                    self._log.append(item.log)
                else:
                    self._log.append(item)
            if result.finished:
                queue.delete(message.queue_id, sync=sync)
                self._log.append(LogLine(f"{message.queue_id}: removed"))
        except ClaimLostError:
            # Its lease ended while we delivered (a node stalled for minutes): the node
            # that holds it now decides; what it was sent here is logged above.
            text = f"{message.queue_id}: taken over by another node during delivery"
            self._log.append(LogLine(text, level="warning"))
            return Finished(None, tuple(queued))
        except UnknownQueueIdError:
            text = f"{message.queue_id}: deleted from the queue during delivery"
            self._log.append(LogLine(text))
            return Finished(None, tuple(queued))
        for recipient in result.expired:
            address = printable(recipient.address)
            self._log.append(LogLine(f"{message.queue_id}: to=<{address}>: expired in the queue"))
        return Finished(result.next_due, tuple(queued))

    def _still_held(self, now: float) -> None:
        """Before the notifications of a claimed message that leaves the queue: renew
        the claim (so the removal that follows them still finds it this node's), or
        raise ClaimLostError if another node took the message over (its attempt sends
        the bounces), UnknownQueueIdError if it was deleted."""
        queue = self._manager.queue
        assert isinstance(queue, SharedQueue)
        queue_id = self.message.queue_id
        if queue_id in queue.renew((queue_id,), now=now):
            return
        with contextlib.suppress(ValueError):  # a damaged envelope: still there
            queue.load(queue_id)  # UnknownQueueIdError: deleted
        raise ClaimLostError(f"{queue_id}: taken over by another node")

    def _enqueue(self, notice: Notice, now: float) -> None:
        writer = self._manager.queue.begin(notice.queue_id)
        writer.write(notice.content)
        writer.commit(notice.envelope(arrival=now))


def _worst(outcomes: Sequence[Outcome]) -> Outcome:
    """One verdict for a recipient whose copies went to several mailboxes: a deferral
    (tried again: a later attempt may store them all), else a failure, else the first.
    None at all (an alias that leads only outside, whose targets a notice does not
    follow): nothing is left to do."""
    for status in ("deferred", "bounced"):
        for outcome in outcomes:
            if outcome.status == status:
                return outcome
    return outcomes[0] if outcomes else delivery.STORED


def _original_recipient(orcpt: str | None) -> str | None:
    """The address of an RFC 3461 ORCPT (``rfc822;`` and xtext, §4.2), for Sieve's
    envelope ``:original``; None when there is none or it is of another type."""
    if orcpt is None:
        return None
    kind, _, value = orcpt.partition(";")
    if kind.strip().lower() != "rfc822":
        return None
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m[1], 16)), value.strip()) or None
