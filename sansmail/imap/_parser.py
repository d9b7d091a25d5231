"""Command parsing: a complete command's lines and literals in, a command event out.

`read_head` looks only at the start of the first line (tag, command name, "UID"), which
the reader needs before the rest of the command has arrived: to refuse a literal of a
command that is unknown or not valid in this state before the client sends it.
`parse_command` runs once the whole command is in; it dispatches on the command name
through `_commands.PARSERS`, one small function per command.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from sansmail.imap._arguments import Context
from sansmail.imap._commands import PARSERS
from sansmail.imap._events import Command
from sansmail.imap._grammar import TAG_CHARS
from sansmail.imap._lexer import Cursor

__all__ = ["Head", "parse_command", "read_head"]

_HEAD: Final = re.compile(f"([{TAG_CHARS}]+) ([A-Za-z]+)(?: ([A-Za-z]+))?".encode())


@attrs.frozen
class Head:
    """What the first line says before the rest of the command is read."""

    tag: str | None  # None: no tag could be read
    name: str | None  # "FETCH", "UID FETCH" ...; None when unreadable
    kind: type[Command] | None  # None: not a command we know
    end: int  # where the arguments start in the first line


def read_head(line: bytes) -> Head:
    found = _HEAD.match(line)
    if found is None:
        tag = re.match(f"[{TAG_CHARS}]+".encode(), line)
        ok = tag is not None and (tag.end() == len(line) or line[tag.end()] == 0x20)
        return Head(tag=tag.group().decode() if ok and tag else None, name=None, kind=None, end=0)
    tag_text = found.group(1).decode("ascii")
    name = found.group(2).decode("ascii").upper()
    end = found.end(2)
    if name == "UID" and found.group(3):
        name = "UID " + found.group(3).decode("ascii").upper()
        end = found.end(3)
    entry = PARSERS.get(name)
    if end < len(line) and line[end] != 0x20:
        entry = None  # "FETCH1" is not FETCH
    return Head(tag=tag_text, name=name, kind=entry[0] if entry else None, end=end)


def parse_command(
    head: Head, lines: list[bytes], literals: list[bytes], *, utf8: bool, max_nesting: int
) -> Command:
    """The event for a complete command whose `head` names a known command; raises
    ParseError (or its subclass RefusalError) when the arguments are wrong."""
    assert head.tag is not None
    assert head.name is not None
    _kind, parse = PARSERS[head.name]
    cursor = Cursor(lines, literals, max_nesting=max_nesting)
    cursor.pos = head.end
    command = parse(cursor, head.tag, Context(utf8=utf8, uid=head.name.startswith("UID ")))
    cursor.end()
    return command
