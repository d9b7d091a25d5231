"""`format_mailq`: the text of ``sansmail-trio queue list``, laid out like Postfix's
``mailq`` so habits and scripts carry over (CONTRACT.md: one block per message whose
first token is the queue id, with size, arrival time and sender, then each pending
recipient with the last reason). `mailq_json_lines`: the same for ``queue list --json``,
one JSON object per message and line with the keys of Postfix's ``postqueue -j``, so
the jq filters written for Postfix read it too.

Times are printed in UTC with fixed English names, so the output does not depend on the
locale or time zone of whoever runs the command.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Final

from sansmail.mail.envelope import QueuedMessage

__all__ = ["format_mailq", "mailq_json_lines"]

_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
)  # fmt: skip
_HEADER: Final = "-Queue ID-  --Size-- ---Arrival Time (UTC)--- -Sender/Recipient-------"
_INDENT: Final = " " * 46  # under the sender, as mailq lines recipients up


def _when(stamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(stamp, datetime.UTC)
    return (
        f"{_DAYS[moment.weekday()]} {_MONTHS[moment.month - 1]} {moment.day:2d} "
        f"{moment:%H:%M:%S} {moment.year}"
    )


def _span(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _one_line(text: str) -> str:
    # A remote reply may span lines (multi-line replies); one block per message must
    # stay one recipient per line for grep and awk.
    return " ".join(text.split())


def format_mailq(messages: Sequence[QueuedMessage], *, now: float) -> str:
    """The ``mailq`` text for `messages`, ending in a newline. `now` (seconds since the
    epoch) turns each recipient's next attempt into "retry in 5m"."""
    if not messages:
        return "Mail queue is empty\n"
    lines = [_HEADER]
    total = 0
    for message in messages:
        total += message.size
        sender = message.sender or "MAILER-DAEMON"  # the null path, as Postfix shows it
        lines.append(f"{message.queue_id:<11} {message.size:>8} {_when(message.arrival)} {sender}")
        for recipient in message.pending:
            notes = []
            if recipient.last_reason:
                notes.append(_one_line(recipient.last_reason))
            if recipient.attempts:
                wait = recipient.next_attempt - now
                notes.append(f"retry in {_span(wait)}" if wait > 0 else "retry due")
            if notes:
                lines.append(f"{_INDENT}({'; '.join(notes)})")
            lines.append(f"{_INDENT}{recipient.address}")
        lines.append("")
    count = len(messages)
    kbytes = (total + 1023) // 1024
    lines.append(f"-- {kbytes} Kbytes in {count} Request{'s' if count != 1 else ''}.")
    return "\n".join(lines) + "\n"


def mailq_json_lines(messages: Sequence[QueuedMessage], *, now: float) -> str:
    """``postqueue -j``'s form of `messages`: a line per message with ``queue_name``
    (``"deferred"`` once a delivery was tried, else ``"active"``), ``queue_id``,
    ``arrival_time`` (whole seconds since the epoch), ``message_size``, ``sender`` ("" for
    the null path) and ``recipients`` (each pending one's ``address`` and, after a
    failure, ``delay_reason``), plus ``attempts`` and ``next_attempt_in`` (seconds, 0
    when due) of our own; nothing at all for an empty queue, as Postfix prints."""
    lines = []
    for message in messages:
        recipients: list[dict[str, object]] = []
        tried = False
        for recipient in message.pending:
            entry: dict[str, object] = {"address": recipient.address}
            if recipient.last_reason:
                entry["delay_reason"] = _one_line(recipient.last_reason)
            if recipient.attempts:
                tried = True
                entry["attempts"] = recipient.attempts
                entry["next_attempt_in"] = max(0, int(recipient.next_attempt - now))
            recipients.append(entry)
        record = {
            "queue_name": "deferred" if tried else "active",
            "queue_id": message.queue_id,
            "arrival_time": int(message.arrival),
            "message_size": message.size,
            "sender": message.sender,
            "recipients": recipients,
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines)
