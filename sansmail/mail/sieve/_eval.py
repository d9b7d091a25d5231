"""The Sieve evaluator: a parsed script, a message and its envelope to a list of actions.

Theory of operation
-------------------
`evaluate` walks the tree once, top down, as RFC 5228 §2 describes: commands in order,
``if``/``elsif``/``else`` as one chain, tests evaluated lazily (``allof`` stops at the
first false). Actions are collected, not performed; at the end the implicit keep (§2.10.2)
is added when no action cancelled it (fileinto, redirect, discard, reject; not their
``:copy`` forms, RFC 3894), and the conflicts of §2.10.6 and RFC 5429 are checked.

A runtime failure (a limit passed, a conflict, an include that is missing, a bad
address) is an `Error`: the actions so far are dropped and the message is kept, as RFC
5228 §2.10.6 asks and Pigeonhole does, so a broken script never loses mail.

Everything the evaluator cannot know is asked of the caller through `SieveContext`
callbacks (does a mailbox exist, was this message id seen, the text of an included
script), so this module reads no file and no clock: `now` is an argument.

CPU is bounded by `Limits.max_steps`: every command, every test and every comparison of
one value with one key costs a step (a long value costs more), and `:matches` never
backtracks (see `_match`). Strings are bounded by `Limits.max_string`.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Final, NoReturn, TypeVar

import attrs

from sansmail.mail.sieve._actions import (
    Action,
    AddHeader,
    DeleteHeader,
    Discard,
    Error,
    FileInto,
    Keep,
    Redirect,
    Reject,
    Result,
    Vacation,
)
from sansmail.mail.sieve._ast import (
    Argument,
    Command,
    Number,
    Position,
    Script,
    StringList,
    Tag,
    Test,
)
from sansmail.mail.sieve._match import (
    COMPARATORS,
    RELATIONS,
    MatchError,
    compare,
    fold,
    matches,
    relational,
)
from sansmail.mime import MessagePart, binary, decoded_header, header_fields, parse
from sansmail.mime._address import address_list

__all__ = ["Limits", "SieveContext", "SieveEnvelope", "SieveMessage", "evaluate"]

_T = TypeVar("_T")


@attrs.frozen
class Limits:
    """Bounds on one run; the defaults are Pigeonhole's where it has one."""

    # Commands, tests and comparisons, a compared KiB counting one: a CPU bound per run.
    # Sieve has no loops, so this bounds the data compared: a million steps is about a
    # gigabyte, a second or two; five body tests over a 25 MB message stay well inside.
    max_steps: int = 1_000_000
    max_actions: int = 32  # sieve_max_actions
    max_redirects: int = 4  # sieve_max_redirects
    max_include_depth: int = 10  # sieve_include_max_nesting_depth
    max_includes: int = 255  # sieve_include_max_includes
    max_string: int = 4096  # sieve_variables_max_variable_size
    max_variables: int = 255  # sieve_variables_max_scope_size
    max_header_edits: int = 64
    vacation_min_seconds: int = 86_400  # sieve_vacation_min_period
    vacation_max_seconds: int = 90 * 86_400  # sieve_vacation_max_period
    vacation_default_seconds: int = 7 * 86_400  # RFC 5230 §4.1: :days 7
    duplicate_default_seconds: int = 14 * 86_400  # sieve_duplicate_default_period
    duplicate_max_seconds: int = 30 * 86_400


@attrs.frozen
class SieveMessage:
    """The message as delivered: CRLF bytes, header and body."""

    raw: bytes


@attrs.frozen
class SieveEnvelope:
    """The SMTP envelope: `from_` is "" for the null sender; `to` the final recipient and
    `original_to` the RCPT TO as the sender gave it (with its +detail), which ``envelope
    "to"`` reads when it is known."""

    from_: str
    to: str
    original_to: str | None = None
    auth: str | None = None


def _no_mailbox(name: str) -> bool:
    return name.upper() == "INBOX"


def _never_seen(key: str) -> bool:
    return False


def _no_include(name: str, is_global: bool) -> Script | None:
    return None


@attrs.frozen
class SieveContext:
    """What the script may ask of the world: `mailbox_exists(name)`, `seen(key)` for
    duplicate (the caller records the keys in `Result.seen` after the run),
    `include(name, is_global)` for the parsed text of another script (None: no such
    script), and the subaddress separator (RFC 5233)."""

    detail_separator: str = "+"
    mailbox_exists: Callable[[str], bool] = _no_mailbox
    seen: Callable[[str], bool] = _never_seen
    include: Callable[[str, bool], Script | None] = _no_include


class SieveRuntimeError(Exception):
    def __init__(self, message: str, position: Position | None = None) -> None:
        super().__init__(message)
        self.position = position


class _StopError(Exception):
    """``stop``: the run ends here (RFC 5228 §3.3)."""


class _ReturnError(Exception):
    """``return``: the included script ends here (RFC 6609 §3.2)."""


# Tags that take the argument after them, and what it is.
_TAG_VALUES: Final = frozenset(
    {
        "comparator",
        "index",
        "zone",
        "days",
        "seconds",
        "subject",
        "from",
        "addresses",
        "handle",
        "flags",
        "value",
        "count",
        "over",
        "under",
        "content",
        "header",
        "uniqueid",
    }
)
_MATCH_TYPES: Final = frozenset({"is", "contains", "matches", "value", "count"})
_ADDRESS_PARTS: Final = frozenset({"all", "localpart", "domain", "user", "detail"})
# RFC 5293 §6: never deleted (Pigeonhole's sieve_editheader_protected); adding is allowed.
_PROTECTED_HEADERS: Final = frozenset({"received", "auto-submitted"})
_FIELD_NAME: Final = re.compile(r"[!-9;-~]+")
_VARIABLE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*|[0-9]+)\}")
_ENCODED: Final = re.compile(r"\$\{(hex|unicode)\s*:([0-9a-fA-F\s]*)\}", re.IGNORECASE)
_VARIABLE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODIFIERS: Final = {  # RFC 5229 §4.1: higher precedence is applied first
    "lower": 40,
    "upper": 40,
    "lowerfirst": 30,
    "upperfirst": 30,
    "quotewildcard": 20,
    "length": 10,
}


@attrs.define
class _Args:
    tags: dict[str, Argument | None]
    positional: list[Argument]


def _args(arguments: Sequence[Argument], position: Position) -> _Args:
    tags: dict[str, Argument | None] = {}
    positional: list[Argument] = []
    i = 0
    while i < len(arguments):
        arg = arguments[i]
        if isinstance(arg, Tag):
            if arg.name in _TAG_VALUES:
                if i + 1 >= len(arguments) or isinstance(arguments[i + 1], Tag):
                    raise SieveRuntimeError(f":{arg.name} needs an argument", arg.position)
                tags[arg.name] = arguments[i + 1]
                i += 2
                continue
            tags[arg.name] = None
        else:
            positional.append(arg)
        i += 1
    return _Args(tags, positional)


@attrs.define
class _Scope:
    """The variables of one script (each included script has its own, RFC 6609 §3.3)."""

    script: Script
    local: dict[str, str] = attrs.field(factory=dict)
    globals_: set[str] = attrs.field(factory=set)


class _Run:
    def __init__(
        self,
        message: SieveMessage,
        envelope: SieveEnvelope,
        now: datetime,
        limits: Limits,
        context: SieveContext,
    ) -> None:
        self.raw = message.raw
        self.envelope = envelope
        self.now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        self.limits = limits
        self.context = context
        self._root: MessagePart | None = None
        self._headers: list[tuple[str, bytes]] | None = None
        self.actions: list[Action] = []
        self.positions: list[Position] = []  # of each action, for errors about it
        self.implicit_keep = True
        self.flags: list[str] = []  # imap4flags' internal variable (RFC 5232 §3)
        self.flag_variables: dict[str, list[str]] = {}
        self.global_variables: dict[str, str] = {}
        self.match_variables: list[str] = []
        self.steps = 0
        self.redirects = 0
        self.header_edits = 0
        self.includes = 0
        self.included_once: set[tuple[str, bool]] = set()
        self.stack: list[tuple[str, bool]] = []
        self.vacation = False
        self.seen: list[tuple[str, int]] = []
        self.scope: _Scope | None = None
        self.bodies: dict[tuple[str, ...], list[str]] = {}  # decoded once per transform

    # -- the message --------------------------------------------------------------

    @property
    def root(self) -> MessagePart:
        if self._root is None:
            self._root = parse(self.raw)
        return self._root

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        """The header fields as the script sees them, (name case-folded, raw value):
        editheader changes them (RFC 5293 §5), so later tests see the edits. Names are
        folded once here, not at every lookup (folding was 10% of a run's profile)."""
        if self._headers is None:
            self._headers = [
                (fold(name.decode("latin-1").strip()), value)
                for name, value in header_fields(self.raw, self.root)
            ]
        return self._headers

    def _raw_values(self, name: str) -> list[bytes]:
        name = fold(name)
        return [value for field, value in self.headers if field == name]

    def header_values(self, name: str) -> list[str]:
        """RFC 2047 decoded (RFC 5228 §2.7.2), leading and trailing blanks cut."""
        return [decoded_header(value).strip(" \t") for value in self._raw_values(name)]

    # -- bookkeeping --------------------------------------------------------------

    def step(self, cost: int = 1) -> None:
        self.steps += cost
        if self.steps > self.limits.max_steps:
            raise SieveRuntimeError(f"script ran past its limit of {self.limits.max_steps} steps")

    def fail(self, message: str, position: Position | None = None) -> NoReturn:
        raise SieveRuntimeError(message, position)

    def add_action(self, action: Action, position: Position) -> None:
        for i, done in enumerate(self.actions):
            # RFC 5228 §2.10.3: the same action twice is done once; flags are merged.
            if isinstance(done, FileInto) and isinstance(action, FileInto):
                if done.mailbox == action.mailbox:
                    self.actions[i] = attrs.evolve(
                        done,
                        flags=_merge_flags(done.flags, action.flags),
                        create=done.create or action.create,
                        copy=done.copy and action.copy,
                    )
                    return
            elif isinstance(done, Keep) and isinstance(action, Keep):
                self.actions[i] = Keep(_merge_flags(done.flags, action.flags))
                return
            elif isinstance(done, Redirect) and isinstance(action, Redirect):
                if fold(done.address) == fold(action.address):
                    self.actions[i] = Redirect(done.address, done.copy and action.copy)
                    return
            elif isinstance(done, Discard) and isinstance(action, Discard):
                return
        if len(self.actions) >= self.limits.max_actions:
            self.fail(f"more than {self.limits.max_actions} actions", position)
        self.actions.append(action)
        self.positions.append(position)

    # -- strings ------------------------------------------------------------------

    def requires(self, capability: str) -> bool:
        assert self.scope is not None
        return capability in self.scope.script.requires

    def expand(self, text: str, position: Position) -> str:
        if "${" not in text:
            return text
        if self.requires("encoded-character"):
            text = _ENCODED.sub(lambda m: _decode_encoded(m, position), text)
        if self.requires("variables"):
            text = _VARIABLE.sub(self._variable_value, text)
        if len(text) > self.limits.max_string:
            text = text[: self.limits.max_string]
        return text

    def _variable_value(self, match: re.Match[str]) -> str:
        name = match.group(1)
        if name.isdigit():
            index = int(name)
            return self.match_variables[index] if index < len(self.match_variables) else ""
        return self.get_variable(name.lower())

    def get_variable(self, name: str) -> str:
        assert self.scope is not None
        if name.startswith("global."):
            return self.global_variables.get(name[7:], "")
        if "." in name:
            return ""  # an unknown namespace expands to nothing (RFC 5229 §3)
        if name in self.scope.globals_:
            return self.global_variables.get(name, "")
        return self.scope.local.get(name, "")

    def set_variable(self, name: str, value: str, position: Position) -> None:
        assert self.scope is not None
        name = name.lower()
        if name.startswith("global."):
            table, name = self.global_variables, name[7:]
        elif name in self.scope.globals_:
            table = self.global_variables
        else:
            table = self.scope.local
        if not _VARIABLE_NAME.fullmatch(name):
            self.fail(f"bad variable name {name!r}", position)
        if name not in table and len(table) >= self.limits.max_variables:
            self.fail(f"more than {self.limits.max_variables} variables", position)
        table[name] = value[: self.limits.max_string]

    def string(self, arg: Argument | None, position: Position) -> str:
        if not isinstance(arg, StringList) or len(arg.strings) != 1:
            self.fail("a string was expected", position)
        return self.expand(arg.strings[0], arg.position)

    def strings(self, arg: Argument | None, position: Position) -> list[str]:
        if not isinstance(arg, StringList):
            self.fail("a string list was expected", position)
        return [self.expand(s, arg.position) for s in arg.strings]

    def number(self, arg: Argument | None, position: Position) -> int:
        if not isinstance(arg, Number):
            self.fail("a number was expected", position)
        return arg.value

    # -- running ------------------------------------------------------------------

    def run_script(self, script: Script) -> None:
        outer = self.scope
        self.scope = _Scope(script)
        try:
            self.block(script.commands)
        except _ReturnError:
            pass
        finally:
            self.scope = outer

    def block(self, commands: Sequence[Command]) -> None:
        chain_taken = True  # no if before: elsif/else alone are the validator's
        for command in commands:
            self.step()
            name = command.name
            if name == "if":
                chain_taken = self.test(command.tests[0])
                if chain_taken:
                    self.block(command.block or ())
            elif name == "elsif":
                if not chain_taken:
                    chain_taken = self.test(command.tests[0])
                    if chain_taken:
                        self.block(command.block or ())
            elif name == "else":
                if not chain_taken:
                    self.block(command.block or ())
                chain_taken = True
            else:
                self.command(command)

    def command(self, command: Command) -> None:
        handler = _COMMANDS.get(command.name)
        if handler is None:
            self.fail(f"unknown command {command.name}", command.position)
        handler(self, command, _args(command.arguments, command.position))

    def test(self, test: Test) -> bool:
        self.step()
        handler = _TESTS.get(test.name)
        if handler is None:
            self.fail(f"unknown test {test.name}", test.position)
        return handler(self, test, _args(test.arguments, test.position))

    # -- matching -----------------------------------------------------------------

    def match(self, args: _Args, values: Sequence[str], keys: Sequence[str], pos: Position) -> bool:
        """The comparator and match type of `args` applied: does any value match any key?"""
        comparator = "i;ascii-casemap"
        if "comparator" in args.tags:
            comparator = self.string(args.tags["comparator"], pos).lower()
            if comparator not in COMPARATORS:
                self.fail(f"unknown comparator {comparator}", pos)
        kinds = [name for name in args.tags if name in _MATCH_TYPES]
        if len(kinds) > 1:
            self.fail("more than one match type", pos)
        kind = kinds[0] if kinds else "is"
        if kind in ("value", "count"):
            relation = self.string(args.tags[kind], pos).lower()
            if relation not in RELATIONS:
                self.fail(f"unknown relation {relation!r}", pos)
            subjects = [str(len(values))] if kind == "count" else list(values)
            for value in subjects:
                for key in keys:
                    self.step(1 + len(value) // 1024)
                    if relational(comparator, relation, value, key):
                        return True
            return False
        casemap = comparator == "i;ascii-casemap"
        if casemap:
            # Fold each value and key once, not once per pair (folding a body for each
            # key was the top entry of a run's profile); captures still come from the
            # unfolded value.
            keys = [fold(key) for key in keys]
            comparator = "i;octet"
        for value in values:
            folded = fold(value) if casemap else value
            for key in keys:
                self.step(1 + (len(value) + len(key)) // 1024)
                try:
                    if kind == "matches" and comparator == "i;octet":
                        captures = matches(folded, key, value)
                    else:
                        captures = compare(comparator, kind, folded, key)
                except MatchError as e:
                    self.fail(str(e), pos)
                if captures is not None:
                    if kind == "matches" and self.requires("variables"):
                        self.match_variables = captures[:10]
                    return True
        return False

    def indexed(self, args: _Args, values: list[_T], pos: Position) -> list[_T]:
        """RFC 5260 §6: ``:index n`` picks the nth value (from the end with ``:last``)."""
        if "index" not in args.tags:
            return values
        n = self.number(args.tags["index"], pos)
        if n < 1 or n > len(values):
            return []
        return [values[-n] if "last" in args.tags else values[n - 1]]


def _merge_flags(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    seen = {fold(f) for f in a}
    return a + tuple(f for f in b if fold(f) not in seen)


def _decode_encoded(match: re.Match[str], position: Position) -> str:
    """RFC 5228 §2.4.2.4: ``${hex: 41 42}`` is octets (UTF-8), ``${unicode: 263a}`` code
    points; a code point that is no character is an error."""
    kind = match.group(1).lower()
    words = match.group(2).split()
    if kind == "hex":
        if any(len(w) % 2 for w in words):
            return match.group(0)  # not an encoded character: left as written
        return bytes.fromhex("".join(words)).decode("utf-8", errors="replace")
    out = []
    for word in words:
        point = int(word, 16)
        if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
            raise SieveRuntimeError(f"${{unicode:{word}}} is no character", position)
        out.append(chr(point))
    return "".join(out)


def _flag_list(values: Sequence[str]) -> list[str]:
    """Flags given as strings, each of which may hold several separated by blanks (RFC
    5232 §3); repeats dropped, IMAP flags being case-insensitive."""
    out: list[str] = []
    seen: set[str] = set()
    for value in values:
        for flag in value.split():
            if fold(flag) not in seen:
                seen.add(fold(flag))
                out.append(flag)
    return out


# -- commands -----------------------------------------------------------------------


def _cmd_require(run: _Run, command: Command, args: _Args) -> None:
    pass  # the parser put the capabilities in Script.requires


def _cmd_stop(run: _Run, command: Command, args: _Args) -> None:
    raise _StopError


def _cmd_return(run: _Run, command: Command, args: _Args) -> None:
    raise _ReturnError


def _flags_of(run: _Run, args: _Args, pos: Position) -> tuple[str, ...]:
    if "flags" in args.tags:
        return tuple(_flag_list(run.strings(args.tags["flags"], pos)))
    return tuple(run.flags)  # RFC 5232 §5: the internal variable when there is no :flags


def _cmd_keep(run: _Run, command: Command, args: _Args) -> None:
    run.add_action(Keep(_flags_of(run, args, command.position)), command.position)
    run.implicit_keep = False


def _cmd_discard(run: _Run, command: Command, args: _Args) -> None:
    run.add_action(Discard(), command.position)
    run.implicit_keep = False


def _cmd_fileinto(run: _Run, command: Command, args: _Args) -> None:
    pos = command.position
    if len(args.positional) != 1:
        run.fail("fileinto needs one mailbox name", pos)
    mailbox = run.string(args.positional[0], pos)
    if not mailbox or "\x00" in mailbox:
        run.fail(f"bad mailbox name {mailbox!r}", pos)
    copy = "copy" in args.tags
    action = FileInto(mailbox, _flags_of(run, args, pos), "create" in args.tags, copy)
    run.add_action(action, pos)
    if not copy:
        run.implicit_keep = False


# RFC 5228 §4.2: one mailbox, local@domain (a quoted local part or a domain literal
# allowed), without a display name.
_ADDRESS: Final = re.compile(r'(?:[^\s<>()@,;:"]+|"[^"]*")@(?:[A-Za-z0-9.\-]+|\[[^\]]*\])')


def _cmd_redirect(run: _Run, command: Command, args: _Args) -> None:
    pos = command.position
    if len(args.positional) != 1:
        run.fail("redirect needs one address", pos)
    address = run.string(args.positional[0], pos).strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if not _ADDRESS.fullmatch(address):
        run.fail(f"redirect to a bad address {address!r}", pos)  # RFC 5228 §4.2
    copy = "copy" in args.tags
    before = len(run.actions)
    run.add_action(Redirect(address, copy), pos)
    if len(run.actions) > before:
        run.redirects += 1
        if run.redirects > run.limits.max_redirects:
            run.fail(f"more than {run.limits.max_redirects} redirects", pos)
    if not copy:
        run.implicit_keep = False


def _cmd_reject(run: _Run, command: Command, args: _Args) -> None:
    pos = command.position
    if len(args.positional) != 1:
        run.fail(f"{command.name} needs one reason", pos)
    reason = run.string(args.positional[0], pos)
    if any(isinstance(a, Reject) for a in run.actions):
        run.fail("more than one reject", pos)
    run.add_action(Reject(reason, ereject=command.name == "ereject"), pos)
    run.implicit_keep = False


def _flag_target(run: _Run, args: _Args, pos: Position) -> tuple[str | None, list[str]]:
    if len(args.positional) == 2:
        name = run.string(args.positional[0], pos).lower()
        return name, run.strings(args.positional[1], pos)
    if len(args.positional) == 1:
        return None, run.strings(args.positional[0], pos)
    return run.fail("a flag list was expected", pos)


def _store_flags(run: _Run, name: str | None, flags: list[str], pos: Position) -> None:
    if name is None:
        run.flags = flags
    else:
        run.flag_variables[name] = flags
        run.set_variable(name, " ".join(flags), pos)


def _current_flags(run: _Run, name: str | None) -> list[str]:
    if name is None:
        return run.flags
    if run.requires("variables"):
        return _flag_list([run.get_variable(name)])
    return run.flag_variables.get(name, [])


def _cmd_setflag(run: _Run, command: Command, args: _Args) -> None:
    name, flags = _flag_target(run, args, command.position)
    _store_flags(run, name, _flag_list(flags), command.position)


def _cmd_addflag(run: _Run, command: Command, args: _Args) -> None:
    name, flags = _flag_target(run, args, command.position)
    merged = _flag_list(_current_flags(run, name) + flags)
    _store_flags(run, name, merged, command.position)


def _cmd_removeflag(run: _Run, command: Command, args: _Args) -> None:
    name, flags = _flag_target(run, args, command.position)
    gone = {fold(f) for f in _flag_list(flags)}
    kept = [f for f in _current_flags(run, name) if fold(f) not in gone]
    _store_flags(run, name, kept, command.position)


def _cmd_set(run: _Run, command: Command, args: _Args) -> None:
    pos = command.position
    if len(args.positional) != 2:
        run.fail("set needs a name and a value", pos)
    name = run.string(args.positional[0], pos)
    value = run.string(args.positional[1], pos)
    modifiers = sorted((m for m in args.tags if m in _MODIFIERS), key=lambda m: -_MODIFIERS[m])
    for modifier in modifiers:
        if modifier == "lower":
            value = value.lower()
        elif modifier == "upper":
            value = value.upper()
        elif modifier == "lowerfirst":
            value = value[:1].lower() + value[1:]
        elif modifier == "upperfirst":
            value = value[:1].upper() + value[1:]
        elif modifier == "quotewildcard":
            value = value.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
        elif modifier == "length":
            value = str(len(value))
    run.set_variable(name, value, pos)


def _cmd_global(run: _Run, command: Command, args: _Args) -> None:
    assert run.scope is not None
    for name in run.strings(args.positional[0] if args.positional else None, command.position):
        run.scope.globals_.add(name.lower())


def _cmd_vacation(run: _Run, command: Command, args: _Args) -> None:
    pos = command.position
    if len(args.positional) != 1:
        run.fail("vacation needs a reason", pos)
    if run.vacation:
        run.fail("more than one vacation", pos)
    run.vacation = True
    limits = run.limits
    if "seconds" in args.tags:
        seconds = run.number(args.tags["seconds"], pos)
    elif "days" in args.tags:
        seconds = run.number(args.tags["days"], pos) * 86_400
    else:
        seconds = limits.vacation_default_seconds
    seconds = min(max(seconds, limits.vacation_min_seconds), limits.vacation_max_seconds)
    reason = run.string(args.positional[0], pos)
    subject_given = "subject" in args.tags
    from_ = run.string(args.tags["from"], pos) if "from" in args.tags else None
    mime = "mime" in args.tags
    if subject_given:
        subject = run.string(args.tags["subject"], pos)
    else:
        # RFC 5230 §4.4: "Auto: " and the original subject.
        original = run.header_values("subject")
        subject = "Auto: " + original[0] if original and original[0] else "Automated reply"
    addresses = tuple(run.strings(args.tags["addresses"], pos)) if "addresses" in args.tags else ()
    if "handle" in args.tags:
        handle = run.string(args.tags["handle"], pos)
    else:
        # RFC 5230 §4.2: without :handle, replies that differ are different vacations.
        given_subject = subject if subject_given else ""
        parts = [given_subject, from_ or "", "mime" if mime else "", reason]
        handle = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]
    run.add_action(Vacation(reason, subject, from_, addresses, seconds, handle, mime), pos)


def _cmd_addheader(run: _Run, command: Command, args: _Args) -> None:
    pos = command.position
    if len(args.positional) != 2:
        run.fail("addheader needs a name and a value", pos)
    name = run.string(args.positional[0], pos)
    value = run.string(args.positional[1], pos)
    if not _FIELD_NAME.fullmatch(name):
        run.fail(f"bad header name {name!r}", pos)
    if "\r" in value or "\n" in value or "\x00" in value:
        value = re.sub(r"[\r\n\x00]+", " ", value)
    _count_edit(run, pos)
    last = "last" in args.tags
    field = (fold(name), b" " + value.encode())
    if last:
        run.headers.append(field)
    else:
        run.headers.insert(0, field)
    run.add_action(AddHeader(name, value, last), pos)


def _count_edit(run: _Run, pos: Position) -> None:
    run.header_edits += 1
    if run.header_edits > run.limits.max_header_edits:
        run.fail(f"more than {run.limits.max_header_edits} header edits", pos)


def _cmd_deleteheader(run: _Run, command: Command, args: _Args) -> None:
    pos = command.position
    if not 1 <= len(args.positional) <= 2:
        run.fail("deleteheader needs a name and optional values", pos)
    name = run.string(args.positional[0], pos)
    if fold(name) in _PROTECTED_HEADERS:
        return  # RFC 5293 §6: the trace stays whole; ignored, as Pigeonhole does
    patterns = run.strings(args.positional[1], pos) if len(args.positional) == 2 else None
    folded = fold(name)
    where = [i for i, (field, _) in enumerate(run.headers) if field == folded]
    if "index" in args.tags:
        n = run.number(args.tags["index"], pos)
        if n < 1 or n > len(where):
            return
        where = [where[-n] if "last" in args.tags else where[n - 1]]
    doomed = []
    for i in where:
        if patterns is not None:
            value = decoded_header(run.headers[i][1]).strip(" \t")
            if not run.match(args, [value], patterns, pos):
                continue
        doomed.append(i)
    occurrences = {
        i: n
        for n, i in enumerate(
            (i for i, (field, _) in enumerate(run.headers) if field == folded), start=1
        )
    }
    for i in reversed(doomed):  # bottom up, so the occurrence numbers stay right
        _count_edit(run, pos)
        run.add_action(DeleteHeader(name, occurrences[i]), pos)
        del run.headers[i]


def _cmd_include(run: _Run, command: Command, args: _Args) -> None:
    pos = command.position
    if len(args.positional) != 1:
        run.fail("include needs a script name", pos)
    name = run.string(args.positional[0], pos)
    key = (name, "global" in args.tags)
    if "once" in args.tags and key in run.included_once:
        return
    if key in run.stack:
        run.fail(f"include of {name!r} loops", pos)
    if len(run.stack) >= run.limits.max_include_depth:
        run.fail(f"includes nested more than {run.limits.max_include_depth} deep", pos)
    run.includes += 1
    if run.includes > run.limits.max_includes:
        run.fail(f"more than {run.limits.max_includes} includes", pos)
    script = run.context.include(name, key[1])
    if script is None:
        if "optional" in args.tags:
            return
        run.fail(f"included script {name!r} does not exist", pos)
    run.included_once.add(key)
    run.stack.append(key)
    try:
        run.run_script(script)
    finally:
        run.stack.pop()


_COMMANDS: Final[dict[str, Callable[[_Run, Command, _Args], None]]] = {
    "require": _cmd_require,
    "stop": _cmd_stop,
    "return": _cmd_return,
    "keep": _cmd_keep,
    "discard": _cmd_discard,
    "fileinto": _cmd_fileinto,
    "redirect": _cmd_redirect,
    "reject": _cmd_reject,
    "ereject": _cmd_reject,
    "setflag": _cmd_setflag,
    "addflag": _cmd_addflag,
    "removeflag": _cmd_removeflag,
    "set": _cmd_set,
    "global": _cmd_global,
    "vacation": _cmd_vacation,
    "addheader": _cmd_addheader,
    "deleteheader": _cmd_deleteheader,
    "include": _cmd_include,
}


# -- tests --------------------------------------------------------------------------


def _test_true(run: _Run, test: Test, args: _Args) -> bool:
    return True


def _test_false(run: _Run, test: Test, args: _Args) -> bool:
    return False


def _test_not(run: _Run, test: Test, args: _Args) -> bool:
    return not run.test(test.tests[0])


def _test_allof(run: _Run, test: Test, args: _Args) -> bool:
    return all(run.test(t) for t in test.tests)


def _test_anyof(run: _Run, test: Test, args: _Args) -> bool:
    return any(run.test(t) for t in test.tests)


def _two(run: _Run, test: Test, args: _Args) -> tuple[list[str], list[str]]:
    if len(args.positional) != 2:
        run.fail(f"{test.name} needs two string lists", test.position)
    return (
        run.strings(args.positional[0], test.position),
        run.strings(args.positional[1], test.position),
    )


def _test_header(run: _Run, test: Test, args: _Args) -> bool:
    names, keys = _two(run, test, args)
    values: list[str] = []
    for name in names:
        values.extend(run.header_values(name))
    return run.match(args, run.indexed(args, values, test.position), keys, test.position)


def _test_exists(run: _Run, test: Test, args: _Args) -> bool:
    names = run.strings(args.positional[0] if args.positional else None, test.position)
    return all(run._raw_values(name) for name in names)


def _test_size(run: _Run, test: Test, args: _Args) -> bool:
    size = len(run.raw)
    if "over" in args.tags:
        return size > run.number(args.tags["over"], test.position)
    if "under" in args.tags:
        return size < run.number(args.tags["under"], test.position)
    return run.fail("size needs :over or :under", test.position)


def _address_part(run: _Run, args: _Args, address: str) -> str | None:
    """The part of `address` the test looks at (RFC 5228 §2.7.4, RFC 5233); None when
    it has no such part (a :detail of an address without the separator)."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if "domain" in args.tags:
        return domain
    if "localpart" in args.tags:
        return local
    separator = run.context.detail_separator
    if "user" in args.tags:
        return local.split(separator, 1)[0] if separator else local
    if "detail" in args.tags:
        if not separator or separator not in local:
            return None
        return local.split(separator, 1)[1]
    return address


def _parts(run: _Run, args: _Args, addresses: list[str]) -> list[str]:
    out = []
    for address in addresses:
        part = _address_part(run, args, address)
        if part is not None:
            out.append(part)
    return out


def _header_addresses(run: _Run, name: str) -> list[list[str]]:
    """The addresses of each field called `name`, field by field."""
    out = []
    for value in run._raw_values(name):
        field = []
        for _, _, mailbox, host in address_list(value) or ():
            if mailbox is None or host is None:
                continue  # a group's start or end marker
            local = decoded_header(mailbox)
            field.append(f"{local}@{host.decode('utf-8', errors='replace')}")
        out.append(field)
    return out


def _test_address(run: _Run, test: Test, args: _Args) -> bool:
    names, keys = _two(run, test, args)
    fields: list[list[str]] = []
    for name in names:
        fields.extend(_header_addresses(run, name))
    # RFC 5260 §6: :index counts header fields, not the addresses in them.
    addresses = [a for field in run.indexed(args, fields, test.position) for a in field]
    return run.match(args, _parts(run, args, addresses), keys, test.position)


def _test_envelope(run: _Run, test: Test, args: _Args) -> bool:
    names, keys = _two(run, test, args)
    addresses: list[str] = []
    envelope = run.envelope
    for name in names:
        which = fold(name)
        if which == "from":
            addresses.append(envelope.from_.strip("<>"))
        elif which == "to":
            addresses.append((envelope.original_to or envelope.to).strip("<>"))
        elif which == "auth" and envelope.auth is not None:
            addresses.append(envelope.auth)
    values: list[str] = []
    for address in addresses:
        if not address:
            # RFC 5228 §5.4: the null reverse-path is "" under every address part but
            # :detail, which it has none of (RFC 5233 §4).
            if "detail" not in args.tags:
                values.append("")
            continue
        part = _address_part(run, args, address)
        if part is not None:
            values.append(part)
    return run.match(args, values, keys, test.position)


def _test_string(run: _Run, test: Test, args: _Args) -> bool:
    sources, keys = _two(run, test, args)
    if "count" in args.tags:
        sources = [s for s in sources if s]  # RFC 5229 §5: empty strings are not counted
    return run.match(args, sources, keys, test.position)


def _test_hasflag(run: _Run, test: Test, args: _Args) -> bool:
    pos = test.position
    if len(args.positional) == 2:
        flags: list[str] = []
        for name in run.strings(args.positional[0], pos):
            flags.extend(_current_flags(run, name.lower()))
        keys = run.strings(args.positional[1], pos)
    elif len(args.positional) == 1:
        flags = list(run.flags)
        keys = run.strings(args.positional[0], pos)
    else:
        run.fail("hasflag needs a flag list", pos)
    return run.match(args, flags, keys, pos)


def _test_mailboxexists(run: _Run, test: Test, args: _Args) -> bool:
    names = run.strings(args.positional[0] if args.positional else None, test.position)
    return all(run.context.mailbox_exists(name) for name in names)


def _test_duplicate(run: _Run, test: Test, args: _Args) -> bool:
    """RFC 7352: the unique id (Message-ID, or :header's, or :uniqueid) under the handle
    was seen within the period. The caller records `Result.seen` once the run succeeds."""
    pos = test.position
    if "uniqueid" in args.tags:
        unique = run.string(args.tags["uniqueid"], pos)
    else:
        name = run.string(args.tags["header"], pos) if "header" in args.tags else "message-id"
        values = run.header_values(name)
        if not values:
            return False
        unique = values[0]
    handle = run.string(args.tags["handle"], pos) if "handle" in args.tags else ""
    seconds = (
        run.number(args.tags["seconds"], pos)
        if "seconds" in args.tags
        else run.limits.duplicate_default_seconds
    )
    seconds = min(seconds, run.limits.duplicate_max_seconds)
    key = hashlib.sha256(f"{handle}\x00{unique}".encode()).hexdigest()
    found = run.context.seen(key)
    if not found or "last" in args.tags:
        run.seen.append((key, seconds))
    return found


def _body_texts(run: _Run, args: _Args, pos: Position) -> list[str]:
    """RFC 5173 §5: :raw is the body undecoded; :content the parts of those types,
    decoded; :text (the default) the text parts, decoded."""
    root = run.root
    if "raw" in args.tags:
        return [_text(run.raw[root.body_start : root.body_end], b"utf-8")]
    types = run.strings(args.tags["content"], pos) if "content" in args.tags else ["text"]
    wanted = tuple(fold(t) for t in types)
    cached = run.bodies.get(wanted)
    if cached is not None:
        return cached
    out: list[str] = []
    for numbers, part in _leaves(root):
        run.step()
        media = fold(f"{part.content_type.decode('latin-1')}/{part.subtype.decode('latin-1')}")
        if not any(w in ("", media, media.split("/")[0]) for w in wanted):
            continue
        body = binary(run.raw, root, numbers)
        if not isinstance(body, bytes):  # None or UnknownEncoding: as transferred
            body = run.raw[part.body_start : part.body_end]
        charset = next((v for k, v in part.params if k.lower() == b"charset"), b"utf-8")
        out.append(_text(body, charset.strip(b'"')))
    run.bodies[wanted] = out
    return out


def _leaves(root: MessagePart) -> list[tuple[tuple[int, ...], MessagePart]]:
    """The leaf parts with their part numbers (as `sansmail.mime.binary` takes them), in
    order; a message/rfc822 part is a leaf. At most 1000."""
    out: list[tuple[tuple[int, ...], MessagePart]] = []
    stack: list[tuple[tuple[int, ...], MessagePart]] = [((), root)]
    while stack and len(out) < 1000:
        path, node = stack.pop()
        if node.multipart:
            stack.extend(
                ((*path, i), node.children[i - 1]) for i in range(len(node.children), 0, -1)
            )
        else:
            out.append((path or (1,), node))
    return out


def _text(data: bytes, charset: bytes) -> str:
    try:
        return data.decode(charset.decode("ascii"), errors="replace")
    except (LookupError, ValueError):
        return data.decode("latin-1")


def _test_body(run: _Run, test: Test, args: _Args) -> bool:
    pos = test.position
    keys = run.strings(args.positional[0] if args.positional else None, pos)
    return run.match(args, _body_texts(run, args, pos), keys, pos)


_ZONE: Final = re.compile(r"([+-])(\d\d)(\d\d)")


def _zone(run: _Run, args: _Args, pos: Position) -> timezone | None:
    """The zone to convert to: :zone's, none for :originalzone, else the local one (the
    zone of `now`, RFC 5260 §4.1)."""
    if "originalzone" in args.tags:
        return None
    if "zone" in args.tags:
        text = run.string(args.tags["zone"], pos)
        found = _ZONE.fullmatch(text.strip())
        if found is None:
            run.fail(f"bad time zone {text!r}", pos)
        minutes = int(found.group(2)) * 60 + int(found.group(3))
        return timezone(timedelta(minutes=-minutes if found.group(1) == "-" else minutes))
    offset = run.now.utcoffset() or timedelta(0)
    return timezone(offset)


def _date_part(when: datetime, part: str) -> str | None:
    offset = when.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    zone = f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    table = {
        "year": f"{when.year:04d}",
        "month": f"{when.month:02d}",
        "day": f"{when.day:02d}",
        "date": f"{when.year:04d}-{when.month:02d}-{when.day:02d}",
        "julian": str(when.toordinal() - _MJD_EPOCH),
        "hour": f"{when.hour:02d}",
        "minute": f"{when.minute:02d}",
        "second": f"{when.second:02d}",
        "time": f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}",
        "iso8601": when.isoformat(timespec="seconds"),
        "std11": email.utils.format_datetime(when),
        "zone": zone,
        "weekday": str((when.weekday() + 1) % 7),  # 0 is Sunday
    }
    return table.get(part)


_MJD_EPOCH: Final = datetime(1858, 11, 17).toordinal()


def _parse_date(value: str) -> datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": the zone is unknown, read as UTC
        when = when.replace(tzinfo=UTC)
    return when


def _test_date(run: _Run, test: Test, args: _Args) -> bool:
    pos = test.position
    if len(args.positional) != 3:
        run.fail("date needs a header, a date part and keys", pos)
    header = run.string(args.positional[0], pos)
    part = run.string(args.positional[1], pos).lower()
    keys = run.strings(args.positional[2], pos)
    zone = _zone(run, args, pos)
    values = []
    raw_values = run.header_values(header)
    if fold(header) == "received":  # RFC 5260 §4: the date after the last ";"
        raw_values = [v.rpartition(";")[2] for v in raw_values]
    for raw in run.indexed(args, raw_values, pos):
        when = _parse_date(raw)
        if when is None:
            continue
        try:
            if zone is not None:
                when = when.astimezone(zone)
        except OverflowError:  # 31 Dec 9999 23:00 -1200 has no date in +1400
            continue
        text = _date_part(when, part)
        if text is None:
            run.fail(f"unknown date part {part!r}", pos)
        values.append(text)
    return run.match(args, values, keys, pos)


def _test_currentdate(run: _Run, test: Test, args: _Args) -> bool:
    pos = test.position
    if len(args.positional) != 2:
        run.fail("currentdate needs a date part and keys", pos)
    part = run.string(args.positional[0], pos).lower()
    keys = run.strings(args.positional[1], pos)
    zone = _zone(run, args, pos)
    text = _date_part(run.now.astimezone(zone) if zone else run.now, part)
    if text is None:
        run.fail(f"unknown date part {part!r}", pos)
    return run.match(args, [text], keys, pos)


_TESTS: Final[dict[str, Callable[[_Run, Test, _Args], bool]]] = {
    "true": _test_true,
    "false": _test_false,
    "not": _test_not,
    "allof": _test_allof,
    "anyof": _test_anyof,
    "header": _test_header,
    "exists": _test_exists,
    "size": _test_size,
    "address": _test_address,
    "envelope": _test_envelope,
    "string": _test_string,
    "hasflag": _test_hasflag,
    "mailboxexists": _test_mailboxexists,
    "duplicate": _test_duplicate,
    "body": _test_body,
    "date": _test_date,
    "currentdate": _test_currentdate,
}


def _conflict(run: _Run) -> SieveRuntimeError | None:
    """RFC 5429 §2.1 (as Pigeonhole): reject cannot go with an action that delivers or
    answers the message; the error points at the reject."""
    rejects = [i for i, a in enumerate(run.actions) if isinstance(a, Reject)]
    if not rejects:
        return None
    for action in run.actions:
        if isinstance(action, Keep | FileInto | Redirect | Vacation):
            name = type(action).__name__.lower()
            return SieveRuntimeError(f"reject conflicts with {name}", run.positions[rejects[0]])
    return None


def evaluate(
    script: Script,
    message: SieveMessage,
    envelope: SieveEnvelope,
    *,
    now: datetime,
    limits: Limits = Limits(),
    context: SieveContext = SieveContext(),
) -> Result:
    """Run `script` over the message: its actions, the implicit keep included (a `Keep`
    carrying the imap4flags internal variable). On a runtime failure the result is a
    plain `Keep` and the `Error` (RFC 5228 §2.10.6)."""
    run = _Run(message, envelope, now, limits, context)
    try:
        with contextlib.suppress(_StopError):
            run.run_script(script)
        problem = _conflict(run)
        if problem is not None:
            raise problem
    except SieveRuntimeError as e:
        pos = e.position
        error = Error(str(e), pos.line if pos else 0, pos.column if pos else 0)
        return Result((Keep(),), (error,), run.steps)
    actions = list(run.actions)
    if run.implicit_keep:
        keep = Keep(tuple(run.flags))
        if not any(isinstance(a, Keep) for a in actions):
            actions.append(keep)
    return Result(tuple(actions), (), run.steps, tuple(run.seen))
