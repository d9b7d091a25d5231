"""Several scripts over one message, as Pigeonhole runs ``sieve_before`` and the user's
script, merged into one `Plan` of what to store, forward and answer. Pure: the caller
parses the scripts, answers the `SieveContext` callbacks and carries the plan out
(`sansmail.sessions.lda`).

The sequence (Pigeonhole's configuration guide, "Executing Multiple Scripts
Sequentially"):

- the scripts run in order; a script's ``keep``, explicit or implicit, only says "go
  on": the next script runs only while keep is in effect, and the message goes to INBOX
  only by the keep of the last script that ran. So ``discard; stop;`` (or a ``fileinto``)
  in the first script ends the sequence;
- the other actions of each script stand whatever a later one does; a script's header
  edits (RFC 5293) are what the next script sees, and each action takes the message as
  edited when it was taken;
- a runtime error, or a script that does not parse (at run time: a stored script that no
  longer does, an included one), aborts that script: its actions are dropped, no later
  script runs, and the message is kept in INBOX (RFC 5228 §2.10.6); earlier scripts'
  actions stay;
- a vacation in a later script is dropped, not an error; one copy per folder and one
  forward per address whichever script asked (flags merged, RFC 5228 §2.10.3); the
  redirect limit counts every script's redirects; a reject after an earlier script
  stored, forwarded or answered the message is a runtime error of the later script.
"""

from __future__ import annotations

import email.header
from collections.abc import Sequence
from datetime import datetime
from typing import Final

import attrs

from sansmail.mail.headeredit import HeaderEdit, apply_edits
from sansmail.mail.sieve._actions import (
    AddHeader,
    DeleteHeader,
    Discard,
    FileInto,
    Keep,
    Redirect,
    Reject,
    Vacation,
)
from sansmail.mail.sieve._ast import Script
from sansmail.mail.sieve._eval import Limits, SieveContext, SieveEnvelope, SieveMessage, evaluate
from sansmail.mail.sieve._lexer import SieveError

__all__ = ["INBOX", "Copy", "IncludeNotParsedError", "Plan", "folder_key", "run_sequence"]

INBOX: Final = "INBOX"


class IncludeNotParsedError(Exception):
    """Raised by a `SieveContext.include` callback for a script that exists but does not
    parse: `run_sequence` makes it a runtime error of the including script."""

    def __init__(self, name: str, error: SieveError) -> None:
        super().__init__(f"included script {name!r} does not parse: {error.message}")
        self.name = name
        self.error = error


@attrs.define
class Copy:
    """One mailbox copy: the folder as the script named it, the message as it was when
    the action was taken, its flags, and whether ``:create`` may make the folder."""

    folder: str
    content: bytes
    flags: tuple[str, ...] = ()
    create: bool = False


@attrs.define
class Plan:
    """What the sequence asks for. `copies` by `folder_key`; `redirects` by address
    (lower case) to (address as written, content); `warnings` are for the log, one line
    each, about the scripts (where an error was, what was ignored)."""

    copies: dict[str, Copy] = attrs.field(factory=dict)
    redirects: dict[str, tuple[str, bytes]] = attrs.field(factory=dict)
    vacation: tuple[Vacation, bytes] | None = None
    reject: Reject | None = None
    discarded: bool = False
    #: RFC 7352 ids to record once the message is safely delivered.
    seen: list[tuple[str, int]] = attrs.field(factory=list)
    warnings: list[str] = attrs.field(factory=list)

    def store(
        self, folder: str, content: bytes, flags: tuple[str, ...] = (), create: bool = False
    ) -> None:
        """One more copy into `folder`, merged with one already planned there."""
        key = folder_key(folder)
        copy = self.copies.get(key)
        if copy is None:
            self.copies[key] = Copy(folder, content, flags, create)
        else:
            copy.flags = merge_flags(copy.flags, flags)
            copy.create = copy.create or create

    def delivers(self) -> bool:
        """Whether the message has been stored, forwarded or answered by the plan."""
        return bool(self.copies or self.redirects or self.vacation)


def folder_key(folder: str) -> str:
    """The identity of a folder: INBOX in any case is INBOX (RFC 9051 §5.1)."""
    return INBOX if folder.upper() == INBOX else folder


def merge_flags(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    seen = {flag.lower() for flag in a}
    return a + tuple(flag for flag in b if flag.lower() not in seen)


def run_sequence(
    scripts: Sequence[tuple[str, Script | SieveError]],
    content: bytes,
    envelope: SieveEnvelope,
    *,
    now: datetime,
    limits: Limits = Limits(),  # noqa: B008 (frozen)
    context: SieveContext = SieveContext(),  # noqa: B008 (frozen)
) -> Plan:
    """Run `scripts` (a label for the warnings, and the tree or why it does not parse)
    over `content` in sequence (see the module docstring). No script: keep."""
    plan = Plan()
    current = content
    redirects_left = limits.max_redirects
    for index, (label, script) in enumerate(scripts):
        where = f"script {label!r}"
        if isinstance(script, SieveError):
            plan.warnings.append(
                f"{where} line {script.position.line}, column {script.position.column}:"
                f" {script.message}: the script does not parse; implicit keep"
            )
            break
        try:
            result = evaluate(
                script,
                SieveMessage(current),
                envelope,
                now=now,
                limits=attrs.evolve(limits, max_redirects=max(0, redirects_left)),
                context=context,
            )
        except IncludeNotParsedError as exc:
            position = exc.error.position
            plan.warnings.append(
                f"{where}: included script {exc.name!r} line {position.line}, column"
                f" {position.column}: {exc.error.message}: the script does not parse;"
                " implicit keep"
            )
            break
        if result.errors:
            error = result.errors[0]
            plan.warnings.append(
                f"{where} line {error.line}, column {error.column}: runtime error:"
                f" {error.message}; implicit keep"
            )
            break
        if plan.delivers() and any(isinstance(a, Reject) for a in result.actions):
            plan.warnings.append(
                f"{where}: runtime error: reject after an earlier script delivered the"
                " message; implicit keep"
            )
            break
        kept: Keep | None = None
        kept_content = current
        for action in result.actions:
            if isinstance(action, AddHeader | DeleteHeader):
                current = _edited(current, action, plan.warnings)
            elif isinstance(action, Keep):
                kept, kept_content = action, current
            elif isinstance(action, FileInto):
                plan.store(action.mailbox, current, action.flags, action.create)
            elif isinstance(action, Redirect):
                if action.address.lower() not in plan.redirects:
                    plan.redirects[action.address.lower()] = (action.address, current)
                    redirects_left -= 1
            elif isinstance(action, Reject):
                plan.reject = action
            elif isinstance(action, Discard):
                plan.discarded = True
            elif isinstance(action, Vacation) and plan.vacation is None:
                plan.vacation = (action, current)
        plan.seen.extend(result.seen)
        if kept is None:
            return plan  # keep is not in effect: the sequence ends here
        if index == len(scripts) - 1:
            plan.store(INBOX, kept_content, kept.flags)
            return plan
    else:
        plan.store(INBOX, current)  # no script at all
        return plan
    plan.store(INBOX, current)  # the implicit keep after an error
    return plan


def _edited(content: bytes, action: AddHeader | DeleteHeader, warnings: list[str]) -> bytes:
    """`content` with one editheader action done (RFC 5293)."""
    if isinstance(action, DeleteHeader):
        edit = HeaderEdit("change", action.name, "", action.occurrence)
    else:
        value = action.value
        charset = "us-ascii" if value.isascii() else "utf-8"
        # Encoded (RFC 2047) where it is not ASCII, and folded, as Pigeonhole writes it.
        encoded = email.header.Header(value, charset, header_name=action.name).encode(linesep="\n")
        if action.last:
            edit = HeaderEdit("add", action.name, encoded)
        else:
            # At the top, but below a Return-Path the delivery put there (RFC 5321 §4.4:
            # the first field of a delivered message).
            first = content[:12].lower() == b"return-path:"
            top = 1 if first and action.name.lower() != "return-path" else 0
            edit = HeaderEdit("insert", action.name, encoded, top)
    try:
        return apply_edits(content, [edit])
    except ValueError as exc:
        warnings.append(f"header edit not made: {exc}")
        return content
