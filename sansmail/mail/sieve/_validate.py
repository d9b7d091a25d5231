"""Sieve's meaning checks: ``require`` (RFC 5228 §3.2) and each command's and test's
arguments, from one table of every command and test this interpreter knows.

Theory of operation: the table (COMMANDS, TESTS) says, per name, which capability it
needs, its positional arguments (kind and name, some optional), the tags it takes (with
their argument and capability), whether it takes a test, a test list or none, and whether
it has a block. Tags in one ``group`` exclude each other (RFC 5228 §2.7: one match type,
one comparator, one address part). The walk checks the ``require``s first (only at the top,
before any other command), then every command and test against the table with the
required capabilities, so a command used without its ``require`` is an error at its
position. The first error found is raised, as Pigeonhole stops at its first too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

import attrs

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
from sansmail.mail.sieve._lexer import SieveError

__all__ = ["COMMANDS", "SUPPORTED", "TESTS", "Spec", "TagSpec", "validate"]

# The comparators every script has (RFC 5228 §2.7.3); others need "comparator-NAME".
_BASE_COMPARATORS = frozenset({"i;octet", "i;ascii-casemap"})
_EXTRA_COMPARATORS = frozenset({"i;ascii-numeric"})

# Capability names for the SIEVE line of ManageSieve (RFC 5804 §1.7), and require.
SUPPORTED: frozenset[str] = frozenset(
    {
        "fileinto",
        "reject",
        "ereject",
        "envelope",
        "encoded-character",
        "imap4flags",
        "copy",
        "body",
        "variables",
        "relational",
        "subaddress",
        "date",
        "index",
        "vacation",
        "vacation-seconds",
        "duplicate",
        "editheader",
        "include",
        "mailbox",
    }
    | {f"comparator-{name}" for name in _BASE_COMPARATORS | _EXTRA_COMPARATORS}
)

# RFC 6131 §2: "vacation-seconds" implies "vacation".
_IMPLIES = {"vacation-seconds": frozenset({"vacation"})}

_RELATIONS = frozenset({"gt", "ge", "lt", "le", "eq", "ne"})
_DATE_PARTS = frozenset(
    {"year", "month", "day", "date", "julian", "hour", "minute", "second", "time"}
    | {"iso8601", "std11", "zone", "weekday"}
)
_ADDRESS = re.compile(r"[^\s@<>]+@[^\s@<>]+(>\s*)?\Z")  # a bare or <>-ended addr-spec
_ZONE = re.compile(r"[+-][0-9]{4}\Z")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # no namespace is supported
# RFC 5228 §5.1: the address test reads only headers that hold addresses; Pigeonhole's
# list, which refuses "subject" and the like at upload rather than never matching.
_ADDRESS_HEADERS = frozenset(
    {"from", "sender", "to", "cc", "bcc", "reply-to", "resent-from", "resent-sender"}
    | {"resent-to", "resent-cc", "resent-bcc", "resent-reply-to", "return-receipt-to"}
    | {"errors-to", "disposition-notification-to", "delivered-to", "envelope-to"}
    | {"x-original-to", "original-recipient", "return-path", "approved", "mail-followup-to"}
    | {"mail-reply-to", "x-envelope-to", "x-envelope-from"}
)
_ENVELOPE_PARTS = frozenset({"from", "to", "auth"})  # RFC 5228 §5.4, and "auth"

# Pigeonhole's words; RFC 5228 §3.2 puts require before any other command, at the top.
_REQUIRE_PLACE = "require commands can only be placed at top level at the beginning of the file"
_FLAG_COMMANDS = frozenset({"setflag", "addflag", "removeflag", "hasflag"})

STRING = "string"
STRING_LIST = "string-list"
NUMBER = "number"
_KIND_WORDS = {STRING: "a string", STRING_LIST: "a string list", NUMBER: "a number"}


@attrs.frozen
class TagSpec:
    argument: str | None = None  # the kind of the argument after the tag, if any
    capability: str | None = None
    group: str | None = None  # tags of one group exclude each other


@attrs.frozen
class Spec:
    """What a command or test takes."""

    capability: tuple[str, ...] = ()  # all needed; () for RFC 5228's base
    positional: tuple[tuple[str, str], ...] = ()  # (kind, what) of each
    optional: int = 0  # how many of the positional arguments may be left out
    optional_first: bool = False  # those left out are the first ones, not the last
    tags: Mapping[str, TagSpec] = MappingProxyType({})
    tests: str = "none"  # "none", "one" (a bare test) or "list" (a test list)
    block: bool = False
    required_group: str | None = None  # a tag of this group must be given


def _tags(*parts: Mapping[str, TagSpec], **more: TagSpec) -> Mapping[str, TagSpec]:
    merged: dict[str, TagSpec] = {}
    for part in parts:
        merged.update(part)
    merged.update(more)
    return MappingProxyType(merged)


_COMPARATOR = {"comparator": TagSpec(STRING, group="comparator")}
_MATCH = {
    "is": TagSpec(group="match type"),
    "contains": TagSpec(group="match type"),
    "matches": TagSpec(group="match type"),
    "count": TagSpec(STRING, "relational", "match type"),
    "value": TagSpec(STRING, "relational", "match type"),
}
_ADDRESS_PART = {
    "all": TagSpec(group="address part"),
    "localpart": TagSpec(group="address part"),
    "domain": TagSpec(group="address part"),
    "user": TagSpec(capability="subaddress", group="address part"),
    "detail": TagSpec(capability="subaddress", group="address part"),
}
_INDEX = {"index": TagSpec(NUMBER, "index"), "last": TagSpec(capability="index")}
_FLAGS = {"flags": TagSpec(STRING_LIST, "imap4flags")}
_COPY = {"copy": TagSpec(capability="copy")}
_KEYS = (STRING_LIST, "key list")

COMMANDS: Mapping[str, Spec] = MappingProxyType(
    {
        # RFC 5228 §3, §4
        "require": Spec(positional=((STRING_LIST, "capabilities"),)),
        "if": Spec(tests="one", block=True),
        "elsif": Spec(tests="one", block=True),
        "else": Spec(block=True),
        "stop": Spec(),
        "keep": Spec(tags=_tags(_FLAGS)),
        "discard": Spec(),
        "redirect": Spec(positional=((STRING, "address"),), tags=_tags(_COPY)),
        "fileinto": Spec(
            ("fileinto",),
            ((STRING, "folder"),),
            tags=_tags(_COPY, _FLAGS, create=TagSpec(capability="mailbox")),
        ),
        # RFC 5429
        "reject": Spec(("reject",), ((STRING, "reason"),)),
        "ereject": Spec(("ereject",), ((STRING, "reason"),)),
        # RFC 5232
        **{
            name: Spec(
                ("imap4flags",),
                ((STRING, "variable name"), (STRING_LIST, "list of flags")),
                optional=1,
                optional_first=True,
            )
            for name in ("setflag", "addflag", "removeflag")
        },
        # RFC 5229 §4: modifiers of one precedence exclude each other.
        "set": Spec(
            ("variables",),
            ((STRING, "name"), (STRING, "value")),
            tags=_tags(
                lower=TagSpec(group="case modifier"),
                upper=TagSpec(group="case modifier"),
                lowerfirst=TagSpec(group="first-letter modifier"),
                upperfirst=TagSpec(group="first-letter modifier"),
                quotewildcard=TagSpec(group="quoting modifier"),
                length=TagSpec(group="length modifier"),
            ),
        ),
        # RFC 5230, RFC 6131
        "vacation": Spec(
            ("vacation",),
            ((STRING, "reason"),),
            tags=_tags(
                days=TagSpec(NUMBER, group="period"),
                seconds=TagSpec(NUMBER, "vacation-seconds", "period"),
                subject=TagSpec(STRING),
                **{"from": TagSpec(STRING)},
                addresses=TagSpec(STRING_LIST),
                mime=TagSpec(),
                handle=TagSpec(STRING),
            ),
        ),
        # RFC 5293
        "addheader": Spec(
            ("editheader",),
            ((STRING, "field name"), (STRING, "value")),
            tags=_tags(last=TagSpec()),
        ),
        "deleteheader": Spec(
            ("editheader",),
            ((STRING, "field name"), (STRING_LIST, "value patterns")),
            optional=1,
            tags=_tags(_COMPARATOR, _MATCH, index=TagSpec(NUMBER), last=TagSpec()),
        ),
        # RFC 6609
        "include": Spec(
            ("include",),
            ((STRING, "script name"),),
            tags=_tags(
                {"global": TagSpec(group="location")},
                personal=TagSpec(group="location"),
                once=TagSpec(),
                optional=TagSpec(),
            ),
        ),
        "return": Spec(("include",)),
        "global": Spec(("include", "variables"), ((STRING_LIST, "variable names"),)),
    }
)

TESTS: Mapping[str, Spec] = MappingProxyType(
    {
        # RFC 5228 §5
        "address": Spec(
            positional=((STRING_LIST, "header list"), _KEYS),
            tags=_tags(_COMPARATOR, _ADDRESS_PART, _MATCH, _INDEX),
        ),
        "allof": Spec(tests="list"),
        "anyof": Spec(tests="list"),
        "envelope": Spec(
            ("envelope",),
            ((STRING_LIST, "envelope part"), _KEYS),
            tags=_tags(_COMPARATOR, _ADDRESS_PART, _MATCH),
        ),
        "exists": Spec(positional=((STRING_LIST, "header names"),)),
        "false": Spec(),
        "header": Spec(
            positional=((STRING_LIST, "header names"), _KEYS),
            tags=_tags(_COMPARATOR, _MATCH, _INDEX),
        ),
        "not": Spec(tests="one"),
        "size": Spec(
            positional=((NUMBER, "limit"),),
            tags=_tags(over=TagSpec(group="size"), under=TagSpec(group="size")),
            required_group="size",
        ),
        "true": Spec(),
        # RFC 5232
        "hasflag": Spec(
            ("imap4flags",),
            ((STRING_LIST, "variable list"), (STRING_LIST, "list of flags")),
            optional=1,
            optional_first=True,
            tags=_tags(_COMPARATOR, _MATCH),
        ),
        # RFC 5229 §5
        "string": Spec(
            ("variables",),
            ((STRING_LIST, "source"), _KEYS),
            tags=_tags(_COMPARATOR, _MATCH),
        ),
        # RFC 5173
        "body": Spec(
            ("body",),
            (_KEYS,),
            tags=_tags(
                _COMPARATOR,
                _MATCH,
                raw=TagSpec(group="body transform"),
                content=TagSpec(STRING_LIST, group="body transform"),
                text=TagSpec(group="body transform"),
            ),
        ),
        # RFC 5260
        "date": Spec(
            ("date",),
            ((STRING, "header name"), (STRING, "date part"), _KEYS),
            tags=_tags(
                _COMPARATOR,
                _MATCH,
                _INDEX,
                zone=TagSpec(STRING, group="zone"),
                originalzone=TagSpec(group="zone"),
            ),
        ),
        "currentdate": Spec(
            ("date",),
            ((STRING, "date part"), _KEYS),
            tags=_tags(_COMPARATOR, _MATCH, zone=TagSpec(STRING)),
        ),
        # RFC 7352
        "duplicate": Spec(
            ("duplicate",),
            tags=_tags(
                handle=TagSpec(STRING),
                header=TagSpec(STRING, group="unique id"),
                uniqueid=TagSpec(STRING, group="unique id"),
                seconds=TagSpec(NUMBER),
                last=TagSpec(),
            ),
        ),
        # RFC 5490
        "mailboxexists": Spec(("mailbox",), ((STRING_LIST, "mailbox names"),)),
    }
)


def validate(script: Script) -> Script:
    """``script`` with its ``requires``; a SieveError at the first error."""
    requires = _requires(script.commands)
    _Validator(requires).commands(script.commands)
    return attrs.evolve(script, requires=requires)


def _requires(commands: Iterable[Command]) -> frozenset[str]:
    # Only the leading ones: a require further on is an error the walk meets in order.
    names: set[str] = set()
    for command in commands:
        if command.name != "require":
            break
        _check_arguments(command.name, "command", COMMANDS["require"], command, frozenset())
        (capabilities,) = command.arguments
        assert isinstance(capabilities, StringList)
        for name in capabilities.strings:
            if name not in SUPPORTED:
                raise SieveError(
                    f"require command: unknown Sieve capability '{name}'",
                    capabilities.position,
                )
            names.add(name)
            names.update(_IMPLIES.get(name, ()))
    return frozenset(names)


class _Validator:
    def __init__(self, requires: frozenset[str]) -> None:
        self.requires = requires

    def commands(self, commands: tuple[Command, ...], *, top: bool = True) -> None:
        previous: str | None = None
        leading = top  # still among the requires at the start of the script
        for command in commands:
            leading = leading and command.name == "require"
            self.command(command, previous, leading=leading)
            previous = command.name

    def command(self, command: Command, previous: str | None, *, leading: bool) -> None:
        name = command.name
        spec = COMMANDS.get(name)
        if spec is None:
            raise SieveError(f"unknown command '{name}'", command.position)
        self.check_capability(spec, f"command '{name}'", command.position)
        if name == "require" and not leading:
            raise SieveError(_REQUIRE_PLACE, command.position)
        if name in ("elsif", "else") and previous not in ("if", "elsif"):
            raise SieveError(
                f"the {name} command must follow an if or elsif command", command.position
            )
        _check_arguments(name, "command", spec, command, self.requires)
        self.check_tests(name, "command", spec, command)
        # The command's own shape first, then what it holds, as Pigeonhole orders them.
        if spec.block and command.block is None:
            raise SieveError(f"the {name} command requires a command block", command.position)
        if not spec.block and command.block is not None:
            raise SieveError(
                f"the {name} command does not accept a command block", command.position
            )
        for test in command.tests:
            self.test(test)
        if command.block is not None:
            self.commands(command.block, top=False)

    def check_tests(self, name: str, what: str, spec: Spec, node: Command | Test) -> None:
        tests, test_list = node.tests, node.test_list
        if spec.tests == "none" and tests:
            raise SieveError(f"the {name} {what} accepts no tests", tests[0].position)
        if spec.tests == "one" and (test_list or len(tests) != 1):
            where = tests[0].position if tests else node.position
            found = "a test list" if test_list else "none"
            raise SieveError(f"the {name} {what} requires one test, but {found} was found", where)
        if spec.tests == "list" and not test_list:
            where = tests[0].position if tests else node.position
            raise SieveError(f"the {name} {what} requires a test list", where)

    def test(self, test: Test) -> None:
        spec = TESTS.get(test.name)
        if spec is None:
            raise SieveError(f"unknown test '{test.name}'", test.position)
        self.check_capability(spec, f"test '{test.name}'", test.position)
        _check_arguments(test.name, "test", spec, test, self.requires)
        self.check_tests(test.name, "test", spec, test)
        for nested in test.tests:
            self.test(nested)

    def check_capability(self, spec: Spec, what: str, position: Position) -> None:
        for capability in spec.capability:
            if capability not in self.requires:
                raise SieveError(f'unknown {what} (it needs require "{capability}")', position)


def _check_arguments(
    name: str, what: str, spec: Spec, node: Command | Test, requires: frozenset[str]
) -> None:
    arguments = node.arguments
    index = 0
    seen_tags: dict[str, Tag] = {}
    seen_groups: dict[str, Tag] = {}
    tag_values: dict[str, Argument] = {}
    # Tagged arguments come first (RFC 5228 §2.6.2), each with its own argument if any.
    while index < len(arguments) and isinstance(arguments[index], Tag):
        tag = arguments[index]
        assert isinstance(tag, Tag)
        index += 1
        tag_spec = spec.tags.get(tag.name)
        if tag_spec is None or (
            tag_spec.capability is not None and tag_spec.capability not in requires
        ):
            hint = f' (it needs require "{tag_spec.capability}")' if tag_spec is not None else ""
            raise SieveError(
                f"unknown tagged argument ':{tag.name}' for the {name} {what}{hint}",
                tag.position,
            )
        if tag.name in seen_tags:
            raise SieveError(
                f"the :{tag.name} tag of the {name} {what} is given more than once",
                tag.position,
            )
        if tag_spec.group is not None:
            if tag_spec.group in seen_groups:
                other = seen_groups[tag_spec.group].name
                raise SieveError(
                    f"the {name} {what} takes one {tag_spec.group} argument, but"
                    f" :{other} and :{tag.name} were given",
                    tag.position,
                )
            seen_groups[tag_spec.group] = tag
        seen_tags[tag.name] = tag
        if tag_spec.argument is not None:
            value = arguments[index] if index < len(arguments) else None
            if value is None or not _is_kind(value, tag_spec.argument):
                raise SieveError(
                    f"the :{tag.name} tag of the {name} {what} requires"
                    f" {_KIND_WORDS[tag_spec.argument]} argument, but"
                    f" {_found(value)} was found",
                    tag.position if value is None else value.position,
                )
            tag_values[tag.name] = value
            index += 1
    positional = arguments[index:]
    for argument in positional:
        if isinstance(argument, Tag):
            raise SieveError(
                f"the tagged argument ':{argument.name}' of the {name} {what} comes after"
                " a positional argument (tags go first)",
                argument.position,
            )
    _check_positional(name, what, spec, node, positional)
    if spec.required_group is not None and spec.required_group not in seen_groups:
        choices = [f":{tag}" for tag, s in spec.tags.items() if s.group == spec.required_group]
        raise SieveError(
            f"the {name} {what} requires one of the {spec.required_group} tags"
            f" ({', '.join(choices)})",
            node.position,
        )
    if "last" in seen_tags and "index" in spec.tags and "index" not in seen_tags:
        raise SieveError(
            f"the :last tag of the {name} {what} needs :index", seen_tags["last"].position
        )
    _check_values(name, what, tag_values, requires)
    _check_special(name, positional, tag_values)
    if name in _FLAG_COMMANDS and len(positional) == 2 and "variables" not in requires:
        # RFC 5232 §3: the variable name form exists only with "variables".
        raise SieveError(
            f"the {name} {what} only takes a variable name when the variables extension"
            ' is active (it needs require "variables")',
            positional[0].position,
        )


def _check_positional(
    name: str, what: str, spec: Spec, node: Command | Test, positional: tuple[Argument, ...]
) -> None:
    kinds = spec.positional
    most = len(kinds)
    least = most - spec.optional
    if not least <= len(positional) <= most:
        if len(positional) > most:
            where = positional[most].position
            raise SieveError(
                f"the {name} {what} takes {_count(most)} positional argument"
                f"{'' if most == 1 else 's'}, but {len(positional)} were found",
                where,
            )
        missing = kinds[len(positional) + (spec.optional if spec.optional_first else 0)]
        raise SieveError(
            f"the {name} {what} expects {_KIND_WORDS[missing[0]]} as its {missing[1]}"
            " argument, but none was found",
            node.position,
        )
    if spec.optional_first:
        kinds = kinds[most - len(positional) :]
    for (kind, what_arg), argument in zip(kinds, positional, strict=False):
        if not _is_kind(argument, kind):
            raise SieveError(
                f"the {name} {what} expects {_KIND_WORDS[kind]} as its {what_arg} argument,"
                f" but {_found(argument)} was found",
                argument.position,
            )


def _count(number: int) -> str:
    return str(number) if number else "no"


def _is_kind(argument: Argument, kind: str) -> bool:
    if kind == NUMBER:
        return isinstance(argument, Number)
    if kind == STRING:
        return isinstance(argument, StringList) and argument.single
    return isinstance(argument, StringList)


def _found(argument: Argument | None) -> str:
    if argument is None:
        return "none"
    if isinstance(argument, Number):
        return "a number"
    if isinstance(argument, Tag):
        return f"the tag ':{argument.name}'"
    return "a string" if argument.single else "a string list"


def _constant(text: str) -> bool:
    """Whether a string is known before the run (no variable or encoded character)."""
    return "${" not in text


def _check_values(
    name: str, what: str, values: Mapping[str, Argument], requires: frozenset[str]
) -> None:
    comparator = values.get("comparator")
    if isinstance(comparator, StringList):
        (value,) = comparator.strings
        if value not in _BASE_COMPARATORS:
            if value not in _EXTRA_COMPARATORS:
                raise SieveError(f"unknown comparator '{value}'", comparator.position)
            if f"comparator-{value}" not in requires:
                raise SieveError(
                    f"unknown comparator '{value}' (it needs require \"comparator-{value}\")",
                    comparator.position,
                )
    for tag in ("count", "value"):
        relation = values.get(tag)
        if isinstance(relation, StringList):
            (value,) = relation.strings
            if value.lower() not in _RELATIONS and _constant(value):
                raise SieveError(
                    f"invalid relational match '{value}' for the :{tag} match type of the"
                    f" {name} {what} (gt, ge, lt, le, eq or ne)",
                    relation.position,
                )
    zone = values.get("zone")
    if isinstance(zone, StringList):
        (value,) = zone.strings
        if _constant(value) and not _ZONE.match(value):
            raise SieveError(
                f"invalid time zone '{value}' for the {name} {what} (+hhmm or -hhmm)",
                zone.position,
            )


def _check_special(
    name: str, positional: tuple[Argument, ...], values: Mapping[str, Argument]
) -> None:
    if name == "set":
        variable = positional[0]
        assert isinstance(variable, StringList)
        (value,) = variable.strings
        if "." in value and _VARIABLE_NAME.match(value.split(".")[0]):
            namespace = value.split(".")[0]
            raise SieveError(
                f"referring to variable in unknown namespace '{namespace}'", variable.position
            )
        if not _VARIABLE_NAME.match(value):
            raise SieveError(
                f"invalid variable name '{value}' for the set command", variable.position
            )
    elif name in ("address", "envelope"):
        parts = positional[0]
        assert isinstance(parts, StringList)
        allowed = _ADDRESS_HEADERS if name == "address" else _ENVELOPE_PARTS
        for value in parts.strings:
            if _constant(value) and value.lower() not in allowed:
                what = "header" if name == "address" else "envelope part"
                raise SieveError(
                    f"specified {what} '{value}' is not allowed for the {name} test",
                    parts.position,
                )
    elif name == "vacation" and "from" in values:
        # Pigeonhole refuses a bad redirect address here too; the evaluator's tests want
        # that one at run time (a runtime error and the implicit keep), so it waits.
        address = values["from"]
        assert isinstance(address, StringList)
        (value,) = address.strings
        if _constant(value) and not _ADDRESS.search(value):
            raise SieveError(
                f"specified :from address '{value}' is invalid (expecting local-part@domain)",
                address.position,
            )
    elif name == "include":
        script = positional[0]
        assert isinstance(script, StringList)
        (value,) = script.strings
        # RFC 6609 §3.2 names scripts as ManageSieve does: no "/" (nor an empty name).
        if _constant(value) and (not value or "/" in value or "\x00" in value):
            raise SieveError(f"include: invalid script name '{value}'", script.position)
    elif name in ("date", "currentdate"):
        part = positional[-2]
        assert isinstance(part, StringList)
        (value,) = part.strings
        if _constant(value) and value.lower() not in _DATE_PARTS:
            raise SieveError(f"unknown date part '{value}' for the {name} test", part.position)
