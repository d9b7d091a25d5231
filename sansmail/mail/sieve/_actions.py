"""What a Sieve run asks the caller to do: the actions of RFC 5228 §4 and its extensions.

The evaluator returns them in script order, with the implicit keep (RFC 5228 §2.10.2)
already added as a `Keep` when it stands; the caller carries them out and owns every
policy the script cannot see (RFC 3834 checks before a vacation reply, SRS on redirect).
"""

from __future__ import annotations

import attrs

__all__ = [
    "Action",
    "AddHeader",
    "DeleteHeader",
    "Discard",
    "Error",
    "FileInto",
    "Keep",
    "Redirect",
    "Reject",
    "Result",
    "Vacation",
]


@attrs.frozen
class Keep:
    """Store in the user's INBOX with these IMAP flags (RFC 5232 §5)."""

    flags: tuple[str, ...] = ()


@attrs.frozen
class FileInto:
    """Store in `mailbox` (RFC 5228 §4.1); `create` it if missing (RFC 5490 §3.2)."""

    mailbox: str
    flags: tuple[str, ...] = ()
    create: bool = False
    copy: bool = False


@attrs.frozen
class Redirect:
    address: str
    copy: bool = False


@attrs.frozen
class Reject:
    """Refuse the message (RFC 5429): at SMTP time if it can, else by a DSN; `ereject`
    asks for the SMTP refusal only."""

    reason: str
    ereject: bool = False


@attrs.frozen
class Discard:
    pass


@attrs.frozen
class Vacation:
    """An RFC 5230 reply, if the caller's RFC 3834 checks allow: `seconds` is the period per
    sender (``:days`` times 86400), `handle` the key of that period (RFC 5230 §4.2, given
    or derived from the reply), `subject` already defaulted to "Auto: " + the subject, and
    `reason` the body (a whole MIME entity when `mime`)."""

    reason: str
    subject: str
    from_: str | None
    addresses: tuple[str, ...]
    seconds: int
    handle: str
    mime: bool = False


@attrs.frozen
class AddHeader:
    """RFC 5293 addheader: at the top of the header, or at the end with `last`."""

    name: str
    value: str
    last: bool = False


@attrs.frozen
class DeleteHeader:
    """RFC 5293 deleteheader, resolved: remove the `occurrence`-th (from 1, top down, at
    the time of the action, after the edits before it) field called `name`."""

    name: str
    occurrence: int


@attrs.frozen
class Error:
    """A runtime failure (RFC 5228 §2.10.6): the run stopped and fell back to keep."""

    message: str
    line: int = 0
    column: int = 0


Action = Keep | FileInto | Redirect | Reject | Discard | Vacation | AddHeader | DeleteHeader


@attrs.frozen
class Result:
    """The actions in order, and the errors (then the actions are only the fallback
    `Keep`); `steps` is the work the run cost against `Limits.max_steps`; `seen` the
    RFC 7352 ids to record, only when the run succeeded (RFC 7352 §3)."""

    actions: tuple[Action, ...]
    errors: tuple[Error, ...] = ()
    steps: int = 0
    seen: tuple[tuple[str, int], ...] = ()  # duplicate: (key, seconds) to record
