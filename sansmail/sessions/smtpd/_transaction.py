"""One mail transaction (MAIL ... end of data): its envelope, where each recipient's copy
goes, and the files the content is written to, with the commit order that comes before
``250`` (queue copies first, local delivery last; see `Transaction.store`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import attrs

from sansmail.mail import trace
from sansmail.mail.address import Address, MailboxId
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.mail.logtext import LogSink
from sansmail.smtp import Reply
from sansmail.storage.maildir import Delivery, MailStore
from sansmail.storage.queue import QueueStore, QueueWriter

__all__ = [
    "SPILL_THRESHOLD",
    "Committed",
    "Outgoing",
    "Transaction",
    "header_end",
    "notify_values",
    "xtext",
]

#: Past this much buffered content the adapter should `flush` it to the tmp files in a
#: worker thread, so a large message never sits whole in memory; smaller ones cost one
#: thread hop, at commit.
SPILL_THRESHOLD = 1024 * 1024


@attrs.define
class Outgoing:
    """The part of a transaction that goes through the queue with one envelope sender:
    relayed recipients keep the client's sender, forwarded ones get an SRS sender."""

    sender: Address | None
    recipients: list[tuple[Address, QueuedRecipient]] = attrs.Factory(list)
    writer: QueueWriter | None = None


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
    relay: Outgoing | None = None
    forward: Outgoing | None = None
    #: Header fields the checks asked for, in order.
    added_fields: list[tuple[str, str]] = attrs.Factory(list)
    #: A check refused the message at END_OF_HEADERS: the reply at its end.
    refusal: Reply | None = None
    #: Content has started (DATA's 354, or the first BDAT).
    receiving: bool = False
    #: The header section, buffered until its end (see the module docstring).
    headers: bytearray = attrs.Factory(bytearray)
    headers_done: bool = False
    delivery: Delivery | None = None
    #: The queue writers of `outgoing`, made when the files start.
    writers: list[QueueWriter] = attrs.Factory(list)
    chunk_size: int = 0

    @property
    def outgoing(self) -> list[Outgoing]:
        return [o for o in (self.relay, self.forward) if o is not None and o.recipients]

    @property
    def empty(self) -> bool:
        return not self.recipients and not self.outgoing

    @property
    def size(self) -> int:
        """Octets stored so far (the first copy's)."""
        if self.delivery is not None:
            return self.delivery.size
        return sum(w.size for w in self.writers[:1])

    def start(self, store: MailStore, queue: QueueStore, trace_fields: bytes) -> None:
        """Start the copies: the local delivery with Return-Path (RFC 5321 §4.4: added
        at final delivery, never in transit) above `trace_fields`, and one queue file per
        outgoing envelope. No I/O yet: the files are written from `flush` or `store`."""
        if self.recipients:
            mailboxes = list(dict.fromkeys(mailbox for _addr, mailbox in self.recipients))
            prefix = trace.return_path(self.reverse_path) + trace_fields
            self.delivery = store.begin(mailboxes, prefix=prefix)
        for index, outgoing in enumerate(self.outgoing):
            # The second envelope (forwarded copies) needs its own queue id.
            qid = self.queue_id if index == 0 else queue.new_id()
            outgoing.writer = queue.begin(qid)
            outgoing.writer.write(trace_fields)
            self.writers.append(outgoing.writer)

    def write(self, data: bytes) -> bool:
        """Buffer content for every copy; True when it is time to `flush`."""
        spill = False
        if self.delivery is not None:
            self.delivery.write(data)
            spill = self.delivery.pending > SPILL_THRESHOLD
        for writer in self.writers:
            writer.write(data)
            spill = spill or writer.pending > SPILL_THRESHOLD
        return spill

    def flush(self) -> None:
        """Blocking: hand buffered content to the tmp files."""
        if self.delivery is not None:
            self.delivery.flush()
        for writer in self.writers:
            writer.flush()

    def store(self, queue: QueueStore, now: float, log: LogSink) -> list[QueuedMessage]:
        """Blocking: make every copy durable. The queue copies are committed first and
        taken back if the local delivery then fails, so a 451 never leaves a queued copy
        behind that the client's retry would relay a second time."""
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
                queued.append(outgoing.writer.commit(envelope))
            if self.delivery is not None:
                self.delivery.commit()
        except BaseException:
            for message in queued:
                try:
                    queue.delete(message.queue_id)
                except Exception as exc:  # noqa: BLE001 (the original error matters more)
                    log(
                        logging.ERROR,
                        f"{message.queue_id}: cannot take back the queued copy: {exc}",
                    )
            raise
        return queued

    def abort(self) -> None:
        """Blocking: remove whatever was written; safe at any point, also after a
        partial `store`."""
        if self.delivery is not None:
            self.delivery.abort()
        for writer in self.writers:
            writer.abort()


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
