"""What the queue knows about a message besides its content: `QueuedMessage` and its
`QueuedRecipient`s, and their JSON form on disk (an envelope record of the queue file).

The envelope is written whole on every change (see `sansmail.storage.queue`), so its
encoding only has to be unambiguous and strict: `decode_envelope` refuses anything it
did not write, rather than guessing, because a misread recipient state would resend or
lose mail. The ``version`` field lets a later release read what an earlier one queued;
the JSON is compact (no indentation: the C encoder, and fewer octets to write after
every attempt), and whitespace was never significant, so the indented envelope files of
sansmail 0.1 read the same.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any, Final, Literal, get_args

import attrs

from sansmail.mail.address import MailboxId

__all__ = [
    "CorruptEnvelopeError",
    "QueuedMessage",
    "QueuedRecipient",
    "RecipientState",
    "check_queue_id",
    "decode_envelope",
    "encode_envelope",
]

ENVELOPE_VERSION: Final = 1

RecipientState = Literal["pending", "sent", "bounced"]
_STATES: Final = frozenset(get_args(RecipientState))

# Queue ids become file names, so they are kept to a set no file system or shell can
# misread: upper-case letters and digits (Postfix's short ids are upper-case hex).
_QUEUE_ID: Final = re.compile(r"[0-9A-Z]{1,64}")

# RFC 3461 §4.1: NOTIFY is NEVER alone, or any of SUCCESS, FAILURE, DELAY.
_NOTIFY: Final = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})
# RFC 3461 §4.3: RET=FULL or RET=HDRS.
_RET: Final = frozenset({"FULL", "HDRS"})


class CorruptEnvelopeError(ValueError):
    """An envelope file that this version of sansmail did not write, or that was damaged."""


def check_queue_id(queue_id: str) -> str:
    """Return `queue_id` if it is safe as a file name, else raise ValueError."""
    if not isinstance(queue_id, str) or not _QUEUE_ID.fullmatch(queue_id):
        raise ValueError(f"bad queue id {queue_id!r}: 1 to 64 upper-case letters or digits")
    return queue_id


def _valid_queue_id(_inst: object, _attr: object, value: str) -> None:
    check_queue_id(value)


def _upper_tuple(value: Any) -> tuple[str, ...]:
    return tuple(str(item).upper() for item in value)


def _upper_or_none(value: str | None) -> str | None:
    return None if value is None else value.upper()


def _check_notify(_inst: object, _attr: object, value: tuple[str, ...]) -> None:
    if not set(value) <= _NOTIFY or ("NEVER" in value and len(value) > 1):
        raise ValueError(f"bad NOTIFY {value!r} (RFC 3461 §4.1)")
    if len(set(value)) != len(value):
        raise ValueError(f"repeated NOTIFY keyword in {value!r}")


def _check_ret(_inst: object, _attr: object, value: str | None) -> None:
    if value is not None and value not in _RET:
        raise ValueError(f"bad RET {value!r} (RFC 3461 §4.3)")


def _check_state(_inst: object, _attr: object, value: str) -> None:
    if value not in _STATES:
        raise ValueError(f"bad recipient state {value!r}")


def _check_finite(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{attr.name} must be finite, not {value!r}")


def _check_not_negative(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attr.name} must not be negative, not {value!r}")


@attrs.frozen(kw_only=True)
class QueuedRecipient:
    """One recipient of a queued message and how its delivery has gone so far.

    `address` is ``str(Address)``; `orcpt` and `notify` are the RFC 3461 ORCPT and NOTIFY
    parameters of its RCPT command (NOTIFY upper-cased). `next_attempt` is seconds since
    the epoch; `last_reason` is the last remote reply or local error, for ``queue list``
    and for the bounce.

    `mailbox` marks a local recipient the SMTP intake has already expanded (aliases,
    subaddress) to one of our mailboxes, queued so that the runner delivers it there
    through the mailbox's Sieve scripts without expanding it again; `address` is then
    the address that reached the mailbox (envelope "to" for the scripts). None: the
    runner expands the address at delivery (bounces and notices to our users), or it
    goes to another host.
    """

    address: str
    orcpt: str | None = None
    notify: tuple[str, ...] = attrs.field(
        default=(), converter=_upper_tuple, validator=_check_notify
    )
    state: RecipientState = attrs.field(default="pending", validator=_check_state)
    attempts: int = attrs.field(default=0, validator=_check_not_negative)
    next_attempt: float = attrs.field(default=0.0, validator=_check_finite)
    last_reason: str = ""
    mailbox: MailboxId | None = None


def _recipient_tuple(value: Iterable[QueuedRecipient]) -> tuple[QueuedRecipient, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class QueuedMessage:
    """The envelope of one queued message.

    `sender` is the reverse-path as ``str(Address)``, "" for the null path (bounces);
    `arrival` is seconds since the epoch; `size` is the octet count of the content as
    stored (CRLF line ends); `ret` and `envid` are the RFC 3461 MAIL parameters;
    `smtputf8` and `body_8bit` say what the next hop must offer (RFC 6531, RFC 6152);
    `warned` records that the delay warning went out, so it goes out once.
    """

    queue_id: str = attrs.field(validator=_valid_queue_id)
    sender: str
    arrival: float = attrs.field(validator=_check_finite)
    size: int = attrs.field(validator=_check_not_negative)
    recipients: tuple[QueuedRecipient, ...] = attrs.field(converter=_recipient_tuple)
    ret: str | None = attrs.field(default=None, converter=_upper_or_none, validator=_check_ret)
    envid: str | None = None
    smtputf8: bool = False
    body_8bit: bool = False
    warned: bool = False

    @recipients.validator
    def _check_recipients(self, _attr: object, value: tuple[QueuedRecipient, ...]) -> None:
        if not value:
            raise ValueError("a queued message needs at least one recipient")

    @property
    def pending(self) -> tuple[QueuedRecipient, ...]:
        """The recipients still to be delivered."""
        return tuple(r for r in self.recipients if r.state == "pending")


def encode_envelope(message: QueuedMessage) -> bytes:
    """The envelope as stored. ASCII-only JSON, so a lone surrogate (from a header
    decoded with surrogateescape) survives and the file reads in any locale."""
    doc: dict[str, Any] = {
        "version": ENVELOPE_VERSION,
        "queue_id": message.queue_id,
        "sender": message.sender,
        "arrival": message.arrival,
        "size": message.size,
        "ret": message.ret,
        "envid": message.envid,
        "smtputf8": message.smtputf8,
        "body_8bit": message.body_8bit,
        "warned": message.warned,
        "recipients": [_encode_recipient(r) for r in message.recipients],
    }
    return json.dumps(doc, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def _encode_recipient(recipient: QueuedRecipient) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "address": recipient.address,
        "orcpt": recipient.orcpt,
        "notify": list(recipient.notify),
        "state": recipient.state,
        "attempts": recipient.attempts,
        "next_attempt": recipient.next_attempt,
        "last_reason": recipient.last_reason,
    }
    # Written only when set: the envelopes of everything else stay as they were, and an
    # envelope without it (queued before the marker existed) reads as unmarked.
    if recipient.mailbox is not None:
        doc["mailbox"] = {"domain": recipient.mailbox.domain, "local": recipient.mailbox.local}
    return doc


def _decode_mailbox(item: dict[str, Any]) -> MailboxId | None:
    if "mailbox" not in item:
        return None
    value = _field(item, "mailbox", dict)
    return MailboxId(domain=_field(value, "domain", str), local=_field(value, "local", str))


def _field(doc: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in doc:
        raise CorruptEnvelopeError(f"envelope lacks {name!r}")
    value = doc[name]
    # bool is an int subclass: an int field must not accept true/false, nor the reverse.
    if isinstance(value, bool) and kind is not bool:
        raise CorruptEnvelopeError(f"envelope field {name!r} has the wrong type")
    if not isinstance(value, kind):
        raise CorruptEnvelopeError(f"envelope field {name!r} has the wrong type")
    return value


def _optional_str(doc: dict[str, Any], name: str) -> str | None:
    value = _field(doc, name, (str, type(None)))
    return None if value is None else str(value)


def decode_envelope(data: bytes) -> QueuedMessage:
    """Parse an envelope file written by `encode_envelope`; CorruptEnvelopeError if not."""
    try:
        doc = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptEnvelopeError(f"envelope is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CorruptEnvelopeError("envelope is not a JSON object")
    version = _field(doc, "version", int)
    if version != ENVELOPE_VERSION:
        raise CorruptEnvelopeError(f"envelope version {version} is not {ENVELOPE_VERSION}")
    try:
        recipients = []
        for item in _field(doc, "recipients", list):
            if not isinstance(item, dict):
                raise CorruptEnvelopeError("a recipient is not a JSON object")
            notify = _field(item, "notify", list)
            if not all(isinstance(word, str) for word in notify):
                raise CorruptEnvelopeError("NOTIFY holds a non-string")
            recipients.append(
                QueuedRecipient(
                    address=_field(item, "address", str),
                    orcpt=_optional_str(item, "orcpt"),
                    notify=tuple(notify),
                    state=_field(item, "state", str),
                    attempts=_field(item, "attempts", int),
                    next_attempt=float(_field(item, "next_attempt", (int, float))),
                    last_reason=_field(item, "last_reason", str),
                    mailbox=_decode_mailbox(item),
                )
            )
        return QueuedMessage(
            queue_id=_field(doc, "queue_id", str),
            sender=_field(doc, "sender", str),
            arrival=float(_field(doc, "arrival", (int, float))),
            size=_field(doc, "size", int),
            recipients=tuple(recipients),
            ret=_optional_str(doc, "ret"),
            envid=_optional_str(doc, "envid"),
            smtputf8=_field(doc, "smtputf8", bool),
            body_8bit=_field(doc, "body_8bit", bool),
            warned=_field(doc, "warned", bool),
        )
    except CorruptEnvelopeError:
        raise
    except ValueError as exc:
        raise CorruptEnvelopeError(f"envelope holds a bad value: {exc}") from None
