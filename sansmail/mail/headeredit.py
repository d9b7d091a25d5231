"""Changes to a message's own header section: the milter actions addheader, insheader and
chgheader (and a change with an empty value, which deletes), applied to the header
section in wire form.

A field is a line that does not start with white space and the lines after it that do
(RFC 5322 §2.2.3). A value given to an edit may be folded, with LF or CRLF before the
white space that starts each continuation line, as milters send it (Postfix's milter
code accepts "\\n\\t"); it is written with CRLF line ends and nothing else: a bare CR or
LF not followed by white space is refused (ValueError), as it would start a field of its
own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import attrs

__all__ = ["HeaderEdit", "apply_edits", "split_fields"]

_NAME = re.compile(rb"[!-9;-~]+\Z")  # printable ASCII but ":"
_BAD_BREAK = re.compile(rb"\n(?![ \t])")


@attrs.frozen
class HeaderEdit:
    """One change to the header section (see the module docstring).

    `action` "add" appends the field at the end of the header section; "insert" puts it
    before the field at 0-based position `index` (at or past the end: appended);
    "change" replaces the `index`-th (1-based) field called `name`, in any case, and an
    empty `value` deletes it; no such field: a change adds one, as Sendmail does, and a
    deletion does nothing."""

    action: str = attrs.field(validator=attrs.validators.in_(("add", "insert", "change")))
    name: str
    value: str
    index: int = 0

    def line(self) -> bytes:
        """The field as written: name, ": ", the value with CRLF folds, CRLF."""
        name = self.name.encode("ascii", "replace")
        if not _NAME.match(name):
            raise ValueError(f"not a header field name: {self.name!r}")
        value = self.value.encode("utf-8", "surrogateescape").replace(b"\r\n", b"\n")
        if b"\r" in value or _BAD_BREAK.search(value):
            raise ValueError(f"header field {self.name}: a line break that is not a fold")
        value = value.replace(b"\n", b"\r\n")
        return name + b": " + value.lstrip(b" \t") + b"\r\n"


def split_fields(section: bytes) -> tuple[list[bytes], bytes]:
    """The fields of a header section in wire form, each with its line ends, and what
    follows them (the empty line and anything after it, or b"")."""
    fields: list[bytes] = []
    pos = 0
    while pos < len(section):
        eol = section.find(b"\n", pos)
        end = len(section) if eol < 0 else eol + 1
        line = section[pos:end]
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
        pos = end
    return fields, section[pos:]


def apply_edits(message: bytes, edits: Sequence[HeaderEdit]) -> bytes:
    """`message` (a whole message, or a header section, in wire form) with `edits`
    applied in order to its header section; the body is left as it is."""
    if not edits:
        return message
    end = _header_end(message)
    fields, _rest = split_fields(message[:end])
    if fields and not fields[-1].endswith(b"\n"):
        fields[-1] += b"\r\n"
    for edit in edits:
        _apply(fields, edit)
    return b"".join(fields) + message[end:]


def _apply(fields: list[bytes], edit: HeaderEdit) -> None:
    if edit.action == "add":
        fields.append(edit.line())
    elif edit.action == "insert":
        fields.insert(max(0, min(edit.index, len(fields))), edit.line())
    else:
        target = _nth(fields, edit.name, edit.index)
        if target is None:
            if edit.value:
                fields.append(edit.line())
        elif edit.value:
            fields[target] = edit.line()
        else:
            del fields[target]


def _nth(fields: Iterable[bytes], name: str, index: int) -> int | None:
    wanted = name.encode("ascii", "replace").lower()
    seen = 0
    for position, field in enumerate(fields):
        if field.split(b":", 1)[0].rstrip(b" \t").lower() == wanted:
            seen += 1
            if seen == max(index, 1):
                return position
    return None


def _header_end(message: bytes) -> int:
    if message.startswith(b"\r\n"):
        return 0
    end = message.find(b"\r\n\r\n")
    return len(message) if end < 0 else end + 2
