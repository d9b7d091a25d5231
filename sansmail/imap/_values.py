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

    Encoded         a value already in wire form (see below), written as it is

`encode_tree` / `decode_tree` are a compact, exact serialisation of such a tree for
caches (not IMAP syntax): JSON in which bytes are stored as their Latin-1 text (one
char per octet, so any octet string survives), and the non-JSON types are tagged
objects. `decode_tree(encode_tree(v)) == v` with the same types throughout, Atom vs str,
Literal vs bytes, list vs tuple included.

`Encoded` is the other cache form: the octets the writer makes of a tree
(`sansmail.imap.encode_value`), kept so that a FETCH of ENVELOPE over thousands of
messages joins stored octets instead of building and walking trees. What makes such a
fragment safe to splice into a response is its framing: outside literals it holds no
CR, LF, NUL or 8-bit octet (so it can neither end the response line early nor need a
UTF-8 session), and every literal's announced length is what follows it. `Encoded`
checks exactly that when it is made, also from octets read back from a cache, in one
pass of C-speed searches for the common fragment with no literal; it does not re-parse
the fragment's grammar, which only the writer produced.
"""

from __future__ import annotations

import json
import re
from typing import Final, TypeAlias

__all__ = ["Atom", "Encoded", "Literal", "Value", "check_value", "decode_tree", "encode_tree"]

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


class Encoded(bytes):
    """A value in IMAP wire form, written exactly as it is (see the module docstring).

    Raises ValueError unless the framing is sound: no CR, LF, NUL or 8-bit octet outside
    literals, and each literal (``{n}`` or ``~{n}`` and CRLF) followed by its n octets.
    """

    __slots__ = ()

    def __new__(cls, data: bytes) -> Encoded:
        if not isinstance(data, bytes):
            raise TypeError(f"Encoded takes bytes, not {type(data).__name__}")
        # The common fragment (an ENVELOPE of plain ASCII headers) has no literal: two
        # scans in C settle it.
        if (b"\r" in data or b"\n" in data or b"\0" in data) or not data.isascii():
            _check_framing(data)
        return bytes.__new__(cls, data)

    def __repr__(self) -> str:
        return f"Encoded({bytes.__repr__(self)})"


_LITERAL_HEAD = re.compile(rb"~?\{([0-9]{1,19})\}\r\n")
_UNSAFE_OUTSIDE = re.compile(rb"[\x00\r\n\x80-\xff]")


def _check_framing(data: bytes) -> None:
    # Walk from literal to literal: each stretch outside literals must be clean up to
    # the next literal's "{n}CRLF", and that literal must fit in what is left.
    pos = 0
    end = len(data)
    while pos < end:
        bad = _UNSAFE_OUTSIDE.search(data, pos)
        if bad is None:
            return
        # The first unsafe octet must be the CR of a literal head ending right here.
        start = data.rfind(b"{", pos, bad.start())
        if start > pos and data[start - 1 : start] == b"~":
            start -= 1
        head = _LITERAL_HEAD.match(data, start) if start >= pos else None
        if head is None or head.end() - 2 != bad.start():
            raise ValueError(f"not framed as IMAP: unsafe octet at {bad.start()}")
        pos = head.end() + int(head[1])
        if pos > end:
            raise ValueError("not framed as IMAP: a literal runs past the end")


Value: TypeAlias = "int | bytes | str | list[Value] | tuple[Value, ...] | None"


def encode_tree(value: Value) -> bytes:
    """Serialise a value tree to compact bytes that `decode_tree` turns back into it."""
    return json.dumps(_to_json(value), ensure_ascii=True, separators=(",", ":")).encode("ascii")


def decode_tree(data: bytes) -> Value:
    """The inverse of `encode_tree`; raises ValueError for anything it did not write."""
    # A FETCH of ENVELOPE over a big folder decodes one cached blob per message, so the
    # common case is left to the json module's C parser: the hooks build the tagged
    # nodes and refuse negative numbers and floats as they are parsed, with no second
    # walk over the tree. The C parser turns true/false into bools without a hook, so a
    # blob that may hold them (or merely a string containing those letters) takes the
    # checking walk instead.
    try:
        if b"true" in data or b"false" in data:
            return _from_json(json.loads(data))
        return _DECODER.decode(data.decode("utf-8"))  # type: ignore[no-any-return]
    except (UnicodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not an encoded value tree: {exc}") from None


def _int_from_json(text: str) -> int:
    if text.startswith("-"):
        raise ValueError(f"not an encoded value tree node: {text}")
    return int(text)


def _refuse_float(text: str) -> object:
    raise ValueError(f"not an encoded value tree node: {text}")


def _node_from_json(raw: dict[str, object]) -> Value:
    # Called with each JSON object once its members are decoded: `inner` is final.
    # Bytes first: they are most of the nodes of an ENVELOPE. A string that is not
    # Latin-1 raises UnicodeEncodeError, which `decode_tree` turns into its ValueError.
    text = raw.get("b")
    if type(text) is str and len(raw) == 1:
        return text.encode("latin-1")
    if len(raw) == 1:
        ((key, inner),) = raw.items()
        if key == "t" and isinstance(inner, list):
            return tuple(inner)
        if isinstance(inner, str):
            try:
                if key == "b":
                    return inner.encode("latin-1")
                if key == "l":
                    return Literal(inner.encode("latin-1"))
                if key == "a":
                    return Atom(inner)
                if key == "e":
                    return Encoded(inner.encode("latin-1"))
            except (UnicodeEncodeError, ValueError):
                pass  # not something encode_tree wrote: refused below
    raise ValueError(f"not an encoded value tree node: {raw!r}")


_DECODER: Final = json.JSONDecoder(
    object_hook=_node_from_json,
    parse_int=_int_from_json,
    parse_float=_refuse_float,
    parse_constant=_refuse_float,
)


# JSON shapes: null, int, string (a str), array (a list), and one-key objects for the rest:
# {"b": latin1} bytes, {"l": latin1} Literal, {"e": latin1} Encoded, {"a": text} Atom,
# {"t": [...]} tuple.
_Json: TypeAlias = "int | str | list[_Json] | dict[str, _Json] | None"


def _to_json(value: Value) -> _Json:
    # Exact types first (what a cached ENVELOPE is mostly made of); the subclasses
    # (Atom, Literal) and the refusals take the chain below.
    kind = type(value)
    if kind is bytes:
        return {"b": value.decode("latin-1")}  # type: ignore[union-attr]
    if kind is tuple:
        return {"t": [_to_json(item) for item in value]}  # type: ignore[union-attr]
    if kind is list:
        return [_to_json(item) for item in value]  # type: ignore[union-attr]
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
    if isinstance(value, Encoded):
        return {"e": value.decode("latin-1")}
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
                if key == "e":
                    return Encoded(inner.encode("latin-1"))
            except (UnicodeEncodeError, ValueError):
                pass  # not something encode_tree wrote: refused below
    raise ValueError(f"not an encoded value tree node: {raw!r}")


def check_value(value: object, *, depth: int = 0) -> None:
    """Raise TypeError/ValueError unless `value` is a value tree (for event validators)."""
    if depth > 100:
        raise ValueError("value tree nested too deeply")
    # Exact types first: a FETCH response checks every node of every ENVELOPE.
    kind = type(value)
    if kind is bytes or kind is str or value is None:
        return
    if kind is tuple or kind is list:
        for item in value:  # type: ignore[attr-defined]
            check_value(item, depth=depth + 1)
        return
    if isinstance(value, str | bytes):
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
