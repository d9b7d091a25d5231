"""The tree a Sieve script (RFC 5228) parses to, and the evaluator walks.

RFC 5228 §8.2's grammar has one shape for commands and tests: an identifier, then
arguments (tags, numbers, string lists), then, for a command, a test or test list and an
optional block; for a test, a nested test or test list (allof, anyof, not). The tree keeps
that shape, with the position of every node for error messages (line and column, both
from 1, of its first character), and leaves the meaning of arguments to the validator
and the evaluator, as Pigeonhole does.
"""

from __future__ import annotations

import attrs

__all__ = ["Argument", "Command", "Number", "Position", "Script", "StringList", "Tag", "Test"]


@attrs.frozen
class Position:
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


@attrs.frozen
class Tag:
    """``:name`` (stored lower case, without the colon)."""

    name: str
    position: Position


@attrs.frozen
class Number:
    """A number with its quantifier applied (``10K`` is 10240)."""

    value: int
    position: Position


@attrs.frozen
class StringList:
    """A string (one item) or a string list; ``single`` tells ``"a"`` from ``["a"]``.
    Strings are decoded (escapes undone, ``text:`` dot-unstuffed); encoded-character and
    variables are the evaluator's, since they depend on the script's ``require``."""

    strings: tuple[str, ...]
    position: Position
    single: bool = False


Argument = Tag | Number | StringList


@attrs.frozen
class Test:
    """A test: ``address :is "from" "a@b"``, ``allof (t1, t2)``, ``not t``."""

    name: str  # lower case
    arguments: tuple[Argument, ...]
    tests: tuple[Test, ...]
    position: Position
    # ``allof (t)`` against ``not t``: whether the nested tests came as a parenthesised
    # list, which the validator checks (anyof wants a list, not wants one bare test).
    test_list: bool = False


@attrs.frozen
class Command:
    """A command: ``fileinto "x";``, ``if t { ... }``, ``elsif``/``else`` likewise."""

    name: str  # lower case
    arguments: tuple[Argument, ...]
    tests: tuple[Test, ...]  # the test of if/elsif (one), none for most commands
    block: tuple[Command, ...] | None  # None: the command has no block
    position: Position
    test_list: bool = False  # as Test.test_list: ``if (t) {}`` is refused


@attrs.frozen
class Script:
    """A parsed script: its commands and the capabilities its ``require``s named."""

    commands: tuple[Command, ...]
    requires: frozenset[str] = frozenset()
