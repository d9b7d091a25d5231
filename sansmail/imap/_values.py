"""IMAP value trees: the one shape structured IMAP data takes between modules.

ENVELOPE, BODYSTRUCTURE and every untagged response payload travel as plain Python trees,
so the MIME code, the store's cache and the protocol writer agree without importing each
other:

    None            NIL
    int             number (non-negative; bool is refused)
    bytes           an IMAP string: the writer picks quoted when safe, else a literal
    str             the same as its UTF-8 bytes (a convenience)
    Atom            written as is: flags, keywords, \\Noselect, atoms that look like NIL
    Literal         bytes that must go out as a literal
    list / tuple    a parenthesised list; its items are separated by SP, except that
                    two tuples in a row are written without one: the "1*body" of a
                    multipart and the "1*address" of an address list have no SP
                    (RFC 9051 §9). So a list of bodies or addresses holds tuples, and
                    every other list holds lists.

`encode_tree` / `decode_tree` are a compact, exact serialisation of such a tree for
caches (not IMAP syntax): JSON in which bytes are stored as their Latin-1 text (one
char per octet, so any octet string survives), and the non-JSON types are tagged
objects. `decode_tree(encode_tree(v)) == v` with the same types throughout, Atom vs str,
Literal vs bytes, list vs tuple included.
"""

from __future__ import annotations

import json
import re
from typing import TypeAlias

__all__ = ["Atom", "Literal", "Value", "check_value", "decode_tree", "encode_tree"]

# RFC 9051 §9: ATOM-CHAR is any CHAR except atom-specials "(" ")" "{" SP CTL "%" "*"
# DQUOTE "\" "]". An Atom here is looser on purpose, because the same marker carries
# flags (`\Seen`, RFC 9051 §2.3.2), `\*` in PERMANENTFLAGS, list wildcards in LIST
# echoes and `]`-bearing section names; what it never admits is what would break
# framing: SP, controls, parentheses, "{", DQUOTE and 8-bit octets.
_ATOM_RE = re.compile(r'[^\x00-\x20\x7f-\U0010ffff(){"]+')


class Atom(str):
    """A string written to the wire exactly as it is, unquoted (flags, keywords, atoms)."""

    __slots__ = ()

    def __new__(cls, value: str) -> Atom:
        if not isinstance(value, str) or not _ATOM_RE.fullmatch(value):
            raise ValueError(f"not an IMAP atom: {value!r}")
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


class Literal(bytes):
    """Bytes that must be written as a literal `{n}` whatever they contain."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Literal({bytes.__repr__(self)})"


Value: TypeAlias = "int | bytes | str | list[Value] | tuple[Value, ...] | None"


def encode_tree(value: Value) -> bytes:
    """Serialise a value tree to compact bytes that `decode_tree` turns back into it."""
    return json.dumps(_to_json(value), ensure_ascii=True, separators=(",", ":")).encode("ascii")


def decode_tree(data: bytes) -> Value:
    """The inverse of `encode_tree`; raises ValueError for anything it did not write."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not an encoded value tree: {exc}") from None
    return _from_json(raw)


# JSON shapes: null, int, string (a str), array (a list), and one-key objects for the rest:
# {"b": latin1} bytes, {"l": latin1} Literal, {"a": text} Atom, {"t": [...]} tuple.
_Json: TypeAlias = "int | str | list[_Json] | dict[str, _Json] | None"


def _to_json(value: Value) -> _Json:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("bool is not an IMAP value")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("IMAP numbers are non-negative")
        return value
    if isinstance(value, Atom):
        return {"a": str(value)}
    if isinstance(value, str):
        return value
    if isinstance(value, Literal):
        return {"l": value.decode("latin-1")}
    if isinstance(value, bytes):
        return {"b": value.decode("latin-1")}
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    if isinstance(value, tuple):
        return {"t": [_to_json(item) for item in value]}
    raise TypeError(f"not an IMAP value: {type(value).__name__}")


def _from_json(raw: object) -> Value:
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    if isinstance(raw, list):
        return [_from_json(item) for item in raw]
    if isinstance(raw, dict) and len(raw) == 1:
        ((key, inner),) = raw.items()
        if key == "t" and isinstance(inner, list):
            return tuple(_from_json(item) for item in inner)
        if isinstance(inner, str):
            try:
                if key == "b":
                    return inner.encode("latin-1")
                if key == "l":
                    return Literal(inner.encode("latin-1"))
                if key == "a":
                    return Atom(inner)
            except (UnicodeEncodeError, ValueError):
                pass  # not something encode_tree wrote: refused below
    raise ValueError(f"not an encoded value tree node: {raw!r}")


def check_value(value: object, *, depth: int = 0) -> None:
    """Raise TypeError/ValueError unless `value` is a value tree (for event validators)."""
    if depth > 100:
        raise ValueError("value tree nested too deeply")
    if value is None or isinstance(value, str | bytes):
        return
    if isinstance(value, bool):
        raise TypeError("bool is not an IMAP value")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("IMAP numbers are non-negative")
        return
    if isinstance(value, list | tuple):
        for item in value:
            check_value(item, depth=depth + 1)
        return
    raise TypeError(f"not an IMAP value: {type(value).__name__}")
