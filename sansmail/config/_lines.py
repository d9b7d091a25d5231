"""Finding the line of a key in TOML text, so that problems read ``file:line: key: ...``.

Theory of operation: `tomllib` gives values but no positions, so `KeyLines` scans the
text once for ``[table]`` headers and ``key = value`` lines and remembers the line of
each dotted key. It is a line scan, not a TOML parser: good enough for the way config
files are written, and it never has to be right about validity, since `tomllib` has
already judged that. Multi-line strings are followed across lines so that their text is
not taken for keys. Asked about a key it did not see (an entry of an inline table, an
item of a list), it answers with the line of the nearest enclosing key.
"""

from __future__ import annotations

import contextlib
import re
import tomllib

_BARE_KEY = r"[A-Za-z0-9_-]+"
_ONE_KEY = rf"(?:{_BARE_KEY}|\"(?:[^\"\\]|\\.)*\"|'[^']*')"
_DOTTED_KEY = rf"{_ONE_KEY}(?:\s*\.\s*{_ONE_KEY})*"
_TABLE_LINE = re.compile(rf"\s*\[\[?\s*({_DOTTED_KEY})\s*\]")
_KEY_LINE = re.compile(rf"\s*({_DOTTED_KEY})\s*=")
_KEY_PART = re.compile(_ONE_KEY)
_BARE_KEY_FULL = re.compile(rf"{_BARE_KEY}\Z")


def _split_dotted(text: str) -> tuple[str, ...]:
    parts = []
    for match in _KEY_PART.finditer(text):
        part = match.group()
        if part[0] in "\"'":
            # Let tomllib undo the quoting, escapes included, rather than reimplement it.
            # A key it refuses (a control character, a bad escape) stays as written: the
            # parse of the whole text reports it, with its line.
            with contextlib.suppress(tomllib.TOMLDecodeError):
                part = tomllib.loads(f"k = {part}")["k"]
        parts.append(part)
    return tuple(parts)


class KeyLines:
    """Line numbers of the keys of a TOML text, found by a line scan: good enough for
    ``[table]`` headers and ``key = value`` lines, which is how config files are written.
    Strings are followed across lines so that the text of a multi-line string is not
    taken for keys."""

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        open_quote: str | None = None
        # "\n" only, as tomllib counts lines; str.splitlines() also splits on \x0c etc.
        for number, line in enumerate(text.split("\n"), start=1):
            rest = line
            if open_quote is None:
                if match := _TABLE_LINE.match(line):
                    table = _split_dotted(match.group(1))
                    self._lines.setdefault(table, number)
                    continue
                if match := _KEY_LINE.match(line):
                    self._lines.setdefault(table + _split_dotted(match.group(1)), number)
                    rest = line[match.end() :]
            open_quote = _open_quote_after(rest, open_quote)

    def line_of(self, path: tuple[str, ...]) -> int | None:
        """The line of `path`, else of its nearest enclosing key that has one."""
        for end in range(len(path), 0, -1):
            if (line := self._lines.get(path[:end])) is not None:
                return line
        return None


def _open_quote_after(text: str, open_quote: str | None) -> str | None:
    """The multi-line string delimiter still open at the end of `text`, given the one
    open at its start (None: outside any string)."""
    i = 0
    while i < len(text):
        if open_quote is not None:
            if open_quote == '"""' and text[i] == "\\":
                i += 2  # an escape: \" does not close
            elif text.startswith(open_quote, i):
                open_quote = None
                i += 3
            else:
                i += 1
        elif text.startswith(('"""', "'''"), i):
            open_quote = text[i : i + 3]
            i += 3
        elif text[i] in "\"'":
            # A one-line string: skip to its end (escapes only in "basic" strings).
            quote, i = text[i], i + 1
            while i < len(text) and text[i] != quote:
                i += 2 if quote == '"' and text[i] == "\\" else 1
            i += 1
        elif text[i] == "#":
            break
        else:
            i += 1
    return open_quote


def dotted_key(path: tuple[str, ...]) -> str:
    """`path` written as TOML would: bare where it can be, quoted where it must."""
    return ".".join(part if _BARE_KEY_FULL.match(part) else f'"{part}"' for part in path)
