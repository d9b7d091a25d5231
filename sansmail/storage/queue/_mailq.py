"""`format_mailq`: the text of ``sansmail-trio queue list``, laid out like Postfix's
``mailq`` so habits and scripts carry over (CONTRACT.md: one block per message whose
first token is the queue id, with size, arrival time and sender, then each pending
recipient with the last reason).

Times are printed in UTC with fixed English names, so the output does not depend on the
locale or time zone of whoever runs the command.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Final

from sansmail.mail.envelope import QueuedMessage

__all__ = ["format_mailq"]

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
