"""Whether a Sieve vacation action answers, and the reply it sends (RFC 5230, RFC 3834).

The evaluator only says what the script asked (`Vacation`); this decides, from the
message and its envelope, whether a reply may go at all (§4.5 and RFC 3834 §2: never to
the null sender, a mailing list, bulk mail, an automatic message, or a mail that was not
sent to the user), and writes the reply. The once-per-period rule needs a store of the
(handle, sender) pairs already answered: that stays the caller's, keyed by
`VacationReply.key`, since this module keeps no state.
"""

from __future__ import annotations

import email.policy
import email.utils
import hashlib
from collections.abc import Sequence
from datetime import datetime
from email.message import EmailMessage
from typing import Final

import attrs

from sansmail.mail.sieve._actions import Vacation
from sansmail.mail.sieve._match import fold
from sansmail.mime import decoded_header, header_fields, parse
from sansmail.mime._address import address_list

__all__ = ["VacationReply", "vacation_reply"]

# RFC 3834 §2 and Pigeonhole's list: senders that are programs, not people.
_ROBOT_LOCALPARTS: Final = frozenset({"mailer-daemon", "listserv", "majordomo", "postmaster"})
_LIST_FIELDS: Final = frozenset(
    {"list-id", "list-help", "list-subscribe", "list-unsubscribe", "list-post", "list-owner"}
    | {"list-archive"}
)
_RECIPIENT_FIELDS: Final = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")


@attrs.frozen
class VacationReply:
    """The reply to send from the null sender (RFC 3834 §3.3) to `recipient`; `key` is
    what the caller stores for `seconds` so the same sender is answered once a period."""

    recipient: str
    message: bytes
    key: str
    seconds: int


def _addresses(fields: list[tuple[bytes, bytes]], names: Sequence[str]) -> list[str]:
    out = []
    for name, value in fields:
        if fold(name.decode("latin-1").strip()) in names:
            for _, _, mailbox, host in address_list(value) or ():
                if mailbox is not None and host is not None:
                    out.append(fold(f"{mailbox.decode('utf-8', 'replace')}@{host.decode()}"))
    return out


def _refusal(fields: list[tuple[bytes, bytes]], sender: str, mine: set[str]) -> str | None:
    """Why no reply may go, or None."""
    if not sender:
        return "the sender is the null sender"
    local = sender.rpartition("@")[0] or sender
    if (
        fold(local) in _ROBOT_LOCALPARTS
        or fold(local).startswith("owner-")
        or fold(local).endswith(("-request", "-owner", "-bounces"))
    ):
        return "the sender is a program"
    if fold(sender) in mine:
        return "the sender is the user"
    for name, value in fields:
        field = fold(name.decode("latin-1").strip())
        text = fold(decoded_header(value).strip())
        if field == "auto-submitted" and text.split(";")[0].strip() != "no":
            return "the message was sent automatically (Auto-Submitted)"
        if field == "precedence" and text in ("bulk", "list", "junk"):
            return f"the message is Precedence: {text}"
        if field in _LIST_FIELDS:
            return "the message comes from a mailing list"
    if not mine.intersection(_addresses(fields, _RECIPIENT_FIELDS)):
        return "the user is not in To, Cc or Bcc"  # RFC 5230 §4.5
    return None


def vacation_reply(
    vacation: Vacation,
    raw: bytes,
    sender: str,
    recipient: str,
    *,
    now: datetime,
    message_id: str,
    user_addresses: Sequence[str] = (),
) -> VacationReply | str:
    """The reply to the message `raw` from envelope `sender` to the user `recipient`, or
    the reason none may go. `user_addresses` are the user's other addresses (aliases);
    the vacation's ``:addresses`` count too. `message_id` is the reply's own."""
    root = parse(raw)
    fields = header_fields(raw, root)
    mine = {fold(a) for a in (recipient, *vacation.addresses, *user_addresses) if a}
    refusal = _refusal(fields, sender.strip("<>"), mine)
    if refusal is not None:
        return refusal
    reply = EmailMessage(policy=email.policy.SMTP)
    reply["From"] = vacation.from_ or recipient
    reply["To"] = sender.strip("<>")
    reply["Subject"] = vacation.subject
    reply["Date"] = email.utils.format_datetime(now)
    reply["Message-ID"] = message_id
    original_id = next(
        (decoded_header(v).strip() for n, v in fields if fold(n.decode("latin-1")) == "message-id"),
        None,
    )
    if original_id:
        reply["In-Reply-To"] = original_id
        reply["References"] = original_id  # RFC 5230 §5.8
    reply["Auto-Submitted"] = "auto-replied (vacation)"  # RFC 3834 §5
    if vacation.mime:
        # RFC 5230 §4.6: the reason is a whole MIME entity, headers and body.
        head = bytes(reply).rstrip(b"\r\n") + b"\r\nMIME-Version: 1.0\r\n"
        entity = vacation.reason.replace("\r\n", "\n").replace("\n", "\r\n").encode()
        body = head + entity
    else:
        reply.set_content(vacation.reason, charset="utf-8")
        body = bytes(reply)
    sender_key = fold(sender.strip("<>"))
    key = hashlib.sha256(f"{vacation.handle}\x00{sender_key}".encode()).hexdigest()
    return VacationReply(sender.strip("<>"), body, key, vacation.seconds)
