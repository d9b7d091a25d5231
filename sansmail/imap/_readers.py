"""Framing client input: whole commands with their literals, and the single lines of the
AUTHENTICATE and IDLE exchanges.

Theory of operation
-------------------
An IMAP command is a line, unless that line ends in a literal announcement: "{n}"
(synchronizing), "{n+}" (non-synchronizing, RFC 7888) or "~{n}" (literal8, RFC 3516).
Then exactly n octets follow, then another line that may announce another literal, and
so on; the command ends with the first line that announces nothing (RFC 9051 §4.3,
§2.2.1). Literal octets are counted, never scanned, so nothing inside them (CRLF, "{5}",
a fake command) can end or start anything.

`CommandReader.read` assembles one command and reports what happened, one `Frame` at a
time:

* `Complete`: the command is in; the connection parses it.
* `AskLiteral`: the line ends in a synchronizing literal. The client waits for "+" before
  sending it, so the application decides (`LiteralRequested`): after its continuation
  the connection calls `accept_literal()` and reading goes on; after its tagged NO/BAD
  the command is over (the client sends nothing more of it) and `reset()` is called.
* `Refused`: the core itself refuses a synchronizing literal before asking: over a size
  limit (APPEND: NO [TOOBIG], RFC 7889 §3 / RFC 4469; other commands BAD), too many
  literals, or a command already known to be refused (unknown, not valid in this state,
  unreadable tag). As above, the client sends no more of the command.

A command already known to be refused that carries non-synchronizing literals is read
to its end all the same, its literals thrown away, so that its octets are never taken
for the next command; it comes out as `Complete` with its `refusal`.

Non-synchronizing literals come without asking, so their limits are enforced by ending
the session: one over `nonsync_cap` (4096 octets under LITERAL-, RFC 7888 §4; the command
limit under LITERAL+) or over the command's size limit, or past the literal count, raises
`RemoteProtocolError` with a BYE: its octets are on their way and could only be skipped
by reading them all. So does a line over `Config.max_line_length`, a bare CR or LF, and
an announced size that is not a number64 (RFC 9051 §9).

The first line's head (tag and command name) is judged by the connection through the
`judge` callback the moment that line arrives, so a literal of a doomed command is
refused before the client sends it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

import attrs

from sansmail._errors import RemoteProtocolError
from sansmail._linebuffer import BareNewlineError, LineBuffer, LineTooLongError
from sansmail.imap._config import Config
from sansmail.imap._parser import Head
from sansmail.imap._responses import ResponseCode, UntaggedStatus

__all__ = [
    "BARE_NEWLINE",
    "AskLiteral",
    "CommandReader",
    "Complete",
    "Frame",
    "Refused",
    "read_line",
]

# Hints of the fatal framing errors.
BARE_NEWLINE = UntaggedStatus(status="BYE", text="bare CR or LF in a command, closing")
LINE_TOO_LONG = UntaggedStatus(
    status="BYE", code=ResponseCode(name="TOOBIG"), text="command line too long, closing"
)
LITERAL_TOO_BIG = UntaggedStatus(
    status="BYE",
    code=ResponseCode(name="TOOBIG"),
    text="non-synchronizing literal over the limit, closing",
)
BAD_LITERAL_SIZE = UntaggedStatus(status="BYE", text="unreadable literal size, closing")
TOO_MANY_LITERALS = UntaggedStatus(status="BYE", text="too many literals in a command, closing")

# A literal announcement at the very end of a line (RFC 9051 §9 `literal`, RFC 7888 §8,
# RFC 3516 `literal8`). The digits are matched without bound so that an absurd size is
# recognised as one (and refused) rather than read as text.
_ANNOUNCEMENT: Final = re.compile(rb"(~?)\{([0-9]+)(\+?)\}\Z")
_MAX_NUMBER64 = 2**63 - 1


@attrs.frozen
class Complete:
    head: Head
    lines: list[bytes]
    literals: list[bytes]
    refusal: str | None  # why the command is refused, known from its head


@attrs.frozen
class AskLiteral:
    head: Head
    size: int
    binary: bool


@attrs.frozen
class Refused:
    head: Head
    reason: str
    too_big: bool  # a size limit, rather than the command itself, is the reason


Frame = Complete | AskLiteral | Refused

Judge = Callable[[Head], str | None]
"""Returns why a command with this head is refused before it is parsed, or None."""


def read_line(buffer: LineBuffer, max_length: int) -> bytes | None:
    """One CRLF-terminated line, or None; framing errors end the session."""
    try:
        return buffer.maybe_extract_line(max_length)
    except BareNewlineError as exc:
        raise RemoteProtocolError(str(exc), BARE_NEWLINE) from None
    except LineTooLongError:
        raise RemoteProtocolError(f"line over {max_length} octets", LINE_TOO_LONG) from None


class CommandReader:
    """Assembles one command at a time from the receive buffer."""

    def __init__(self, config: Config, read_head: Callable[[bytes], Head]) -> None:
        self._config = config
        self._read_head = read_head
        self.reset()

    def reset(self) -> None:
        """Forget the command being read (it ended, or its literal was refused)."""
        self._head: Head | None = None
        self._refusal: str | None = None
        self._lines: list[bytes] = []
        self._literals: list[bytes] = []
        self._size = 0
        self._announced = 0  # size of the literal announced by the last line
        self._literal: bytearray | None = None  # octets of the literal being read
        self._left = 0  # octets of it still to come
        self._keep = True  # False while discarding a refused command's literal

    @property
    def started(self) -> bool:
        """Whether part of a command has been read."""
        return self._head is not None

    def accept_literal(self) -> None:
        """The application let the announced synchronizing literal come."""
        assert self._head is not None
        assert self._literal is None
        self._start_literal(self._announced, keep=True)

    def _start_literal(self, size: int, *, keep: bool) -> None:
        self._literal = bytearray()
        self._left = size
        self._keep = keep

    def read(self, buffer: LineBuffer, *, nonsync_cap: int, judge: Judge) -> Frame | None:
        """The next frame, or None when more input is needed."""
        while True:
            if self._literal is not None:
                if not self._read_literal(buffer):
                    return None
                continue
            line = read_line(buffer, self._config.max_line_length)
            if line is None:
                return None
            frame = self._take_line(line, nonsync_cap, judge)
            if frame is not None:
                return frame

    def _read_literal(self, buffer: LineBuffer) -> bool:
        assert self._literal is not None
        chunk = buffer.extract(self._left)
        if self._keep:
            self._literal += chunk
        self._left -= len(chunk)
        if self._left:
            return False
        self._literals.append(bytes(self._literal))
        self._literal = None
        return True

    def _take_line(self, line: bytes, nonsync_cap: int, judge: Judge) -> Frame | None:
        config = self._config
        if self._head is None:
            self._head = self._read_head(line)
            self._refusal = judge(self._head)
        head = self._head
        self._lines.append(line)
        self._size += len(line) + 2
        found = _ANNOUNCEMENT.search(line)
        if found is None:
            frame = Complete(
                head=head, lines=self._lines, literals=self._literals, refusal=self._refusal
            )
            self.reset()
            return frame
        binary, digits, plus = found.groups()
        if len(digits) > 19 or int(digits) > _MAX_NUMBER64:
            raise RemoteProtocolError("literal size is not a number64", BAD_LITERAL_SIZE)
        size = int(digits)
        if head.name == "APPEND":
            too_big = size > config.max_message_size or self._size + size > config.append_size
        else:
            too_big = self._size + size > config.max_command_size
        too_many = len(self._literals) >= config.max_literals
        if plus:
            # RFC 7888 §4 (LITERAL-) and §3 (LITERAL+): these octets come unasked.
            if too_many:
                raise RemoteProtocolError("too many literals", TOO_MANY_LITERALS)
            if too_big or size > nonsync_cap:
                raise RemoteProtocolError("non-synchronizing literal too big", LITERAL_TOO_BIG)
            self._size += size
            self._start_literal(size, keep=self._refusal is None)
            return None
        refused: Refused | None = None
        if self._refusal is not None:
            refused = Refused(head=head, reason=self._refusal, too_big=False)
        elif too_big:
            refused = Refused(head=head, reason="command too big", too_big=True)
        elif too_many:
            refused = Refused(head=head, reason="too many literals", too_big=False)
        if refused is not None:
            self.reset()
            return refused
        self._size += size
        self._announced = size
        return AskLiteral(head=head, size=size, binary=bool(binary))
