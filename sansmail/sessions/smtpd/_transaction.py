"""One mail transaction (MAIL ... end of data): its envelope, where each recipient's copy
goes, and the files the content is written to, with the commit order that comes before
``250`` (queue copies first, local delivery last; see `store_all`, which commits several
transactions together)."""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterable, Mapping, Sequence

import attrs

from sansmail.mail import trace
from sansmail.mail.address import Address, MailboxId
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.mail.headeredit import HeaderEdit
from sansmail.mail.logtext import LogSink
from sansmail.mail.recipients import Resolution
from sansmail.sessions.smtpd._replies import NOT_STORED
from sansmail.smtp import Reply
from sansmail.storage.maildir import Delivery, MailStore
from sansmail.storage.queue import Queue, QueueEntryWriter

__all__ = [
    "NO_STORAGE",
    "SPILL_THRESHOLD",
    "Committed",
    "Outgoing",
    "Storing",
    "Transaction",
    "header_end",
    "notify_values",
    "storage_reply",
    "store_all",
    "xtext",
]

#: Where quarantined mail goes (RFC 6154's \\Junk special use; Dovecot's name for it).
JUNK = "Junk"

#: Past this much buffered content the adapter should `flush` it to the tmp files in a
#: worker thread, so a large message never sits whole in memory; smaller ones cost one
#: thread hop, at commit.
SPILL_THRESHOLD = 1024 * 1024

#: The message could not be stored because the disk (or the user's file system quota)
#: is full: RFC 5321's 452 "insufficient system storage" with RFC 3463's 4.3.1 "mail
#: system full", Postfix's words for it. The client keeps the message and tries later.
NO_STORAGE = Reply(code=452, lines="Insufficient system storage", enhanced="4.3.1")
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_reply(error: OSError) -> Reply:
    """The temporary failure that answers a message `error` kept from being stored:
    `NO_STORAGE` for a full disk, else `NOT_STORED` (RFC 5321's 451 "local error in
    processing", 4.3.0 as Postfix's cleanup says for a queue file write error): EIO or
    EROFS is not a full disk, and the log line says which it was."""
    return NO_STORAGE if error.errno in _FULL else NOT_STORED


@attrs.define
class Outgoing:
    """The part of a transaction that goes through the queue with one envelope sender:
    relayed recipients keep the client's sender, forwarded ones get an SRS sender."""

    sender: Address | None
    recipients: list[tuple[Address, QueuedRecipient]] = attrs.Factory(list)
    writer: QueueEntryWriter | None = None


@attrs.define
class Transaction:
    """One MAIL ... end of data."""

    queue_id: str
    reverse_path: Address | None
    smtputf8: bool = False
    body_8bit: bool = False
    ret: str | None = None
    envid: str | None = None
    #: Every recipient the client gave that was accepted, in order.
    rcpt: list[Address] = attrs.Factory(list)
    #: Local recipients as given, with the mailbox each reached (one per mailbox for an
    #: alias that fans out).
    recipients: list[tuple[Address, MailboxId]] = attrs.Factory(list)
    #: Local recipients whose mailbox runs Sieve scripts (`SmtpService.through_sieve`):
    #: as given, the mailbox, and the recipient of the queue copy the queue runner
    #: delivers through the scripts; `start` makes that copy (`sieve`).
    sieved: list[tuple[Address, MailboxId, QueuedRecipient]] = attrs.Factory(list)
    relay: Outgoing | None = None
    forward: Outgoing | None = None
    sieve: Outgoing | None = None
    #: Header fields the checks asked for, in order.
    added_fields: list[tuple[str, str]] = attrs.Factory(list)
    #: A check refused the message at END_OF_HEADERS: the reply at its end.
    refusal: Reply | None = None
    #: The whole message in wire form, held until END_OF_DATA for the checks that want
    #: it (`Inquiring.wants_message`); None: the copies start at the end of the header.
    message: bytearray | None = None
    #: Header edits the END_OF_HEADERS checks asked for, applied when the files start.
    header_edits: list[HeaderEdit] = attrs.Factory(list)
    #: A check quarantined the message: the reason (local copies go to Junk).
    quarantine: str | None = None
    #: A check replaced the body (held messages only).
    new_body: bytes | None = None
    #: A check discarded the message: 250, and nothing stored.
    discard: bool = False
    #: Each recipient taken, with its resolution and RCPT parameters, so that the
    #: envelope can be made again when a check changes it (held messages only).
    taken: list[tuple[Address, Resolution, Mapping[str, str]]] = attrs.Factory(list)
    #: Envelope changes the END_OF_DATA checks asked for (`Verdict`), in order.
    added: list[str] = attrs.Factory(list)
    deleted: list[str] = attrs.Factory(list)
    new_sender: str | None = None
    #: Content has started (DATA's 354, or the first BDAT).
    receiving: bool = False
    #: The header section, buffered until its end (see the module docstring).
    headers: bytearray = attrs.Factory(bytearray)
    headers_done: bool = False
    delivery: Delivery | None = None
    #: The queue writers of `outgoing`, made when the files start.
    writers: list[QueueEntryWriter] = attrs.Factory(list)
    #: The queue copies committed so far (`commit_queue_copies`).
    queued: list[QueuedMessage] = attrs.Factory(list)
    chunk_size: int = 0
    #: Writing the content failed (`SmtpSession.flush`): every file is removed, the
    #: rest of the content is dropped, and the end of data is answered with
    #: `storage_reply`.
    failed: OSError | None = None

    @property
    def outgoing(self) -> list[Outgoing]:
        return [o for o in (self.relay, self.forward, self.sieve) if o is not None and o.recipients]

    @property
    def empty(self) -> bool:
        return not self.recipients and not self.sieved and not self.outgoing

    @property
    def size(self) -> int:
        """Octets stored so far (the first copy's)."""
        if self.delivery is not None:
            return self.delivery.size
        return sum(w.size for w in self.writers[:1])

    def start(self, store: MailStore, queue: Queue, trace_fields: bytes) -> None:
        """Start the copies: the local delivery with Return-Path (RFC 5321 §4.4: added
        at final delivery, never in transit) above `trace_fields`, and one queue file per
        outgoing envelope: relayed, forwarded, and the local recipients delivered through
        their Sieve scripts (the queue runner adds their Return-Path). No I/O yet: the
        files are written from `flush` or `store`. A quarantined message's local copies
        go to the recipients' Junk folder, the scripts unasked."""
        if self.sieved and self.quarantine is not None:
            self.recipients.extend((address, mailbox) for address, mailbox, _q in self.sieved)
            self.sieved = []
        if self.sieved:
            # One copy a mailbox, as the direct delivery stores one.
            first: dict[MailboxId, tuple[Address, QueuedRecipient]] = {}
            for address, mailbox, queued in self.sieved:
                first.setdefault(mailbox, (address, queued))
            self.sieve = Outgoing(sender=self.reverse_path, recipients=list(first.values()))
        if self.recipients:
            mailboxes = list(dict.fromkeys(mailbox for _addr, mailbox in self.recipients))
            prefix = trace.return_path(self.reverse_path) + trace_fields
            if self.quarantine is not None:
                self.delivery = store.begin(mailboxes, prefix=prefix, folder=JUNK)
            else:
                self.delivery = store.begin(mailboxes, prefix=prefix)
        for index, outgoing in enumerate(self.outgoing):
            # The second envelope (forwarded copies) needs its own queue id.
            qid = self.queue_id if index == 0 else queue.new_id()
            outgoing.writer = queue.begin(qid)
            outgoing.writer.write(trace_fields)
            self.writers.append(outgoing.writer)

    def write(self, data: bytes) -> bool:
        """Buffer content for every copy; True when it is time to `flush`. Dropped once
        the transaction has `failed`: the client still sends the rest, which no one
        will store."""
        if self.failed is not None:
            return False
        spill = False
        if self.delivery is not None:
            self.delivery.write(data)
            spill = self.delivery.pending > SPILL_THRESHOLD
        for writer in self.writers:
            writer.write(data)
            spill = spill or writer.pending > SPILL_THRESHOLD
        return spill

    def flush(self) -> None:
        """Blocking: hand buffered content to the tmp files (raises OSError)."""
        if self.delivery is not None:
            self.delivery.flush()
        for writer in self.writers:
            writer.flush()

    def commit_queue_copies(self, now: float, *, sync: bool = True) -> list[QueuedMessage]:
        """Blocking: make the queue copies durable (the first half of the commit, see
        `store_all`). On failure the error propagates, and `queued` holds the copies
        already committed, for `take_back`. With `sync=False` their names are durable
        only after the queue's next `Queue.sync` (shared by a batch)."""
        queued: list[QueuedMessage] = []
        try:
            for outgoing in self.outgoing:
                assert outgoing.writer is not None
                envelope = QueuedMessage(
                    queue_id=outgoing.writer.queue_id,
                    sender="" if outgoing.sender is None else str(outgoing.sender),
                    arrival=now,
                    size=0,
                    recipients=_unique(q for _a, q in outgoing.recipients),
                    ret=self.ret,
                    envid=self.envid,
                    smtputf8=self.smtputf8,
                    body_8bit=self.body_8bit,
                )
                queued.append(outgoing.writer.commit(envelope, sync=sync))
        except BaseException:
            self.queued = queued
            raise
        self.queued = queued
        return queued

    def take_back(self, queue: Queue, log: LogSink) -> None:
        """Blocking: delete the queue copies `commit_queue_copies` made, so a 451 never
        leaves one behind that the client's retry would relay a second time."""
        queued, self.queued = self.queued, []
        for message in queued:
            try:
                queue.delete(message.queue_id)
            except Exception as exc:  # noqa: BLE001 (the original error matters more)
                log(logging.ERROR, f"{message.queue_id}: cannot take back the queued copy: {exc}")

    def abort(self) -> None:
        """Blocking: remove whatever was written; safe at any point, also after a
        partial `store`, and more than once. Every copy is tried even when one fails
        (a close(2) may report EIO): a tmp file left behind is never delivered, and the
        next start removes it."""
        copies: list[Delivery | QueueEntryWriter] = [*self.writers]
        if self.delivery is not None:
            copies.insert(0, self.delivery)
        for copy in copies:
            with contextlib.suppress(OSError):
                copy.abort()


@attrs.define(eq=False)
class Storing:
    """A transaction whose content has ended, on its way to disk: `SmtpSession.finish`
    hands it out, `store_all` (blocking) makes it durable, alone or together with
    others, and `SmtpSession.stored` turns the outcome into the reply. `error` is set
    when it could not be stored (nothing of it is left then)."""

    transaction: Transaction
    store: MailStore
    queue: Queue
    now: float
    log: LogSink
    error: OSError | None = None


def store_all(jobs: Sequence[Storing]) -> None:
    """Blocking: store every transaction of `jobs`, setting each one's `error` if it
    could not be. Per transaction the order is `Transaction`'s: queue copies first, the
    local delivery last, and a transaction whose local delivery fails gets its queue
    copies taken back. The queue copies of jobs that share a queue share its directory
    sync, made before any local delivery; the local deliveries of jobs that share a store
    are committed together (`MailStore.commit_many`), so they share their directory syncs.
    Each copy is durable before this returns, and a failure stays with its own job (but
    for a shared directory whose sync failed: then every job with a name in it fails).
    Anything but an OSError is a bug: every job is then undone as far as it can be and
    the exception propagates."""
    try:
        queues: dict[int, list[Storing]] = {}
        for job in jobs:
            try:
                if job.transaction.commit_queue_copies(job.now, sync=False):
                    queues.setdefault(id(job.queue), []).append(job)
            except OSError as exc:
                job.error = exc
        for group in queues.values():
            try:
                group[0].queue.sync()
            except OSError as exc:
                for job in group:
                    job.error = job.error or exc
        stores: dict[int, list[Storing]] = {}
        for job in jobs:
            if job.error is None and job.transaction.delivery is not None:
                stores.setdefault(id(job.store), []).append(job)
        for group in stores.values():
            deliveries = [job.transaction.delivery for job in group]
            results = group[0].store.commit_many([d for d in deliveries if d is not None])
            for job, result in zip(group, results, strict=True):
                if isinstance(result, OSError):
                    job.error = result
    except BaseException:
        for job in jobs:
            _undo(job)
        raise
    for job in jobs:
        if job.error is not None:
            _undo(job)


def _undo(job: Storing) -> None:
    job.transaction.take_back(job.queue, job.log)
    job.transaction.abort()


@attrs.frozen
class Committed:
    """`commit`'s outcome: the reply, and the queue ids to hand to the queue runner."""

    reply: Reply
    queued: tuple[str, ...] = ()


def header_end(data: bytearray, start: int) -> int:
    """The end of the header section (just after its empty line), or -1."""
    if data.startswith(b"\r\n"):
        return 2
    end = data.find(b"\r\n\r\n", start)
    return -1 if end < 0 else end + 4


def notify_values(value: str | None) -> tuple[str, ...]:
    return tuple(value.upper().split(",")) if value else ()


def xtext(text: str) -> str:
    # RFC 3461 §4: "+", "=", controls, space and non-ASCII travel as "+XX".
    out = []
    for byte in text.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def _unique(recipients: Iterable[QueuedRecipient]) -> list[QueuedRecipient]:
    seen: dict[str, QueuedRecipient] = {}
    for recipient in recipients:
        seen.setdefault(recipient.address.lower(), recipient)
    return list(seen.values())
