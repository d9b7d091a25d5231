"""Header fields: the header block scanner and the MIME field grammars (RFC 5322, 2045, 2231).

Everything here works on raw octets and returns raw octets. IMAP hands header values to
clients as they are in the message, unfolded (RFC 9051 §7.5.2): RFC 2047 encoded words stay
encoded and 8-bit octets stay 8-bit; only `decoded_header` (for SEARCH) turns text into str.

MIME parameters (RFC 2045 §5.1) are read leniently, the way Dovecot and Cyrus read them: a
broken parameter is skipped up to the next ";" and the rest still count. RFC 2231
continuations are joined (``name*0``, ``name*1`` ... become ``name``), as both servers do and
as RFC 9051 §7.5.2 asks. Where the RFC 9051 text goes further (percent-decode an extended
``name*0*`` value and return UTF-8 under ``name*``) we follow the two servers instead: the
joined value keeps its RFC 2231 form ``charset'language'%XX...`` under ``name*``. Clients
written against Dovecot and Cyrus decode that form themselves; a UTF-8 value under a
``name*`` key would be decoded a second time and come out wrong, and 8-bit strings inside
BODYSTRUCTURE would force literals on IMAP4rev1 clients that never expect them there.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from typing import Final, TypeAlias

__all__ = [
    "MAX_HEADER_LINES",
    "Field",
    "Params",
    "content_type",
    "decode_base64",
    "decode_qp",
    "decoded_header",
    "disposition",
    "languages",
    "line_break_before",
    "mime_token",
    "scan_header",
    "unfold",
]

Params: TypeAlias = tuple[tuple[bytes, bytes], ...]
# One header field as found by `scan_header`: the name (as written, trailing blanks cut),
# where its first line starts, where its value starts (after the colon) and where the field
# ends (before the line break of its last line). A line without a colon has the whole line
# as its name and an empty value.
Field: TypeAlias = tuple[bytes, int, int, int]

_WSP: Final = b" \t"
# RFC 2045 §5.1 tspecials, plus SP and the controls that no token may hold.
_TSPECIALS: Final = frozenset(b'()<>@,;:\\"/[]?=')
_TOKEN_STOP: Final = _TSPECIALS | frozenset(range(0x21)) | {0x7F}


def scan_header(
    raw: bytes, start: int, end: int, next_boundary: Callable[[int], int] | None = None
) -> tuple[int, list[Field], bool]:
    """Read the header block that begins at `start`: returns (end of the block, its fields,
    whether a boundary line cut it short). The body starts where the block ends.

    The block ends after the first empty line (RFC 5322 §2.1), which it includes, or at
    `end`. Lines end at LF with an optional CR before it (the store hands us CRLF; LF alone
    must not break us). A line that begins with SP or HT continues the field before it
    (RFC 5322 §2.2.3).

    `next_boundary(start)`, when given, returns the start of the first boundary line of an
    enclosing multipart at or after `start`, or -1. If it comes before the empty line, the
    block ends before the line break in front of it, which belongs to the boundary (RFC
    2046 §5.1.1). The empty line is only searched for up to it, so no part's header search
    runs past its own part.

    The end of the block is found with bytes.find; only the first `MAX_HEADER_LINES` lines
    are read as fields, so a hostile header of millions of lines costs milliseconds (what
    lies past them stays in the block and counts for nothing).
    """
    boundary = -1 if next_boundary is None else next_boundary(start)
    limit = end if boundary < 0 else boundary
    stop, block_end = _empty_line(raw, start, limit)
    if stop == block_end and boundary >= 0:  # no empty line before the boundary
        stop = block_end = boundary if boundary == start else line_break_before(raw, boundary)
        return block_end, _fields(raw, start, stop), True
    return block_end, _fields(raw, start, stop), False


def _empty_line(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """(start of the first empty line at or after the line start `start`, offset after it),
    or (end, end). Searched in growing windows, so a part whose header ends early never
    costs a search to the end of a big message."""
    if start < end and raw[start] == 0x0A:
        return start, start + 1
    if start + 1 < end and raw[start] == 0x0D and raw[start + 1] == 0x0A:
        return start, start + 2
    low, window = start, 4096
    while True:
        high = min(end, start + window)
        crlf = raw.find(b"\n\r\n", low, high)
        lf = raw.find(b"\n\n", low, crlf + 1 if crlf >= 0 else high)
        if lf >= 0:
            return lf + 1, lf + 2
        if crlf >= 0:
            return crlf + 1, crlf + 3
        if high >= end:
            return end, end
        low, window = max(start, high - 2), window * 4


MAX_HEADER_LINES: Final = 20_000


def line_break_before(raw: bytes, line: int) -> int:
    """The offset of the CRLF (or LF) that ends the line before the one starting at `line`."""
    return line - 2 if line >= 2 and raw[line - 2] == 0x0D else line - 1


def _fields(raw: bytes, start: int, stop: int) -> list[Field]:
    fields: list[Field] = []
    pos = start
    for _ in range(MAX_HEADER_LINES):
        if pos >= stop:
            break
        eol = raw.find(b"\n", pos, stop)
        line_end = stop if eol < 0 else (eol - 1 if eol > pos and raw[eol - 1] == 0x0D else eol)
        if raw[pos] in b" \t" and fields:
            name, line, value, _ = fields[-1]
            fields[-1] = (name, line, value, line_end)
        else:
            colon = raw.find(b":", pos, line_end)
            if colon < 0:
                fields.append((raw[pos:line_end], pos, line_end, line_end))
            else:
                fields.append((raw[pos:colon].rstrip(_WSP), pos, colon + 1, line_end))
        if eol < 0:
            break
        pos = eol + 1
    return fields


def unfold(raw: bytes, value_start: int, field_end: int) -> bytes:
    """A field value unfolded (RFC 5322 §2.2.3: line breaks before WSP removed, the WSP kept)
    with the blanks after the colon removed, otherwise as it is."""
    value = raw[value_start:field_end]
    if b"\n" in value:
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    return value.lstrip(_WSP)


# -- RFC 5322 / RFC 2045 lexical helpers -------------------------------------------------


def _skip_cfws(text: bytes, pos: int) -> int:
    """Skip blanks, line breaks and (nested) comments; an unclosed comment runs to the end."""
    n = len(text)
    while pos < n:
        c = text[pos]
        if c in b" \t\r\n":
            pos += 1
        elif c == 0x28:  # "("
            depth = 0
            while pos < n:
                c = text[pos]
                if c == 0x5C:  # quoted-pair inside a comment
                    pos += 2
                    continue
                if c == 0x28:
                    depth += 1
                elif c == 0x29:
                    depth -= 1
                    if depth == 0:
                        pos += 1
                        break
                pos += 1
        else:
            break
    return min(pos, n)


def _read_token(text: bytes, pos: int) -> tuple[bytes, int]:
    start = pos
    n = len(text)
    while pos < n and text[pos] not in _TOKEN_STOP:
        pos += 1
    return text[start:pos], pos


def _read_quoted(text: bytes, pos: int) -> tuple[bytes, int]:
    """A quoted-string starting at the DQUOTE at `pos`: its content with quoted pairs undone.
    An unclosed string runs to the end (lenient, as Dovecot and Cyrus are)."""
    out = bytearray()
    pos += 1
    n = len(text)
    while pos < n:
        c = text[pos]
        if c == 0x22:
            return bytes(out), pos + 1
        if c == 0x5C and pos + 1 < n:
            out.append(text[pos + 1])
            pos += 2
            continue
        if c not in b"\r\n":  # a folded quoted string loses its line breaks
            out.append(c)
        pos += 1
    return bytes(out), pos


def mime_token(value: bytes) -> bytes | None:
    """The single RFC 2045 token a field holds (Content-Transfer-Encoding), comments and
    blanks around it allowed; None when the field holds anything else."""
    pos = _skip_cfws(value, 0)
    token, pos = _read_token(value, pos)
    if not token or _skip_cfws(value, pos) != len(value):
        return None
    return token


def content_type(value: bytes) -> tuple[bytes, bytes, Params] | None:
    """``type/subtype; params`` (RFC 2045 §5.1), or None when the type itself is broken, in
    which case the caller falls back to text/plain (RFC 2045 §5.2). Case is kept as written
    (Dovecot does the same; RFC 2045 says matching is case-insensitive)."""
    pos = _skip_cfws(value, 0)
    main, pos = _read_token(value, pos)
    pos = _skip_cfws(value, pos)
    if not main or pos >= len(value) or value[pos] != 0x2F:  # "/"
        return None
    pos = _skip_cfws(value, pos + 1)
    sub, pos = _read_token(value, pos)
    pos = _skip_cfws(value, pos)
    if not sub or (pos < len(value) and value[pos] != 0x3B):  # ";"
        return None
    return main, sub, _parameters(value, pos)


def disposition(value: bytes) -> tuple[bytes, Params] | None:
    """Content-Disposition (RFC 2183 §2): the disposition type and its parameters."""
    pos = _skip_cfws(value, 0)
    kind, pos = _read_token(value, pos)
    pos = _skip_cfws(value, pos)
    if not kind or (pos < len(value) and value[pos] != 0x3B):
        return None
    return kind, _parameters(value, pos)


def languages(value: bytes) -> tuple[bytes, ...] | None:
    """Content-Language (RFC 3282 §2): a comma-separated list of language tags."""
    tags = []
    for item in value.split(b","):
        tag = item.strip(b" \t\r\n")
        if tag and all(c not in _TOKEN_STOP or c == 0x2D for c in tag):
            tags.append(tag)
    return tuple(tags) or None


def _parameters(value: bytes, pos: int) -> Params:
    """``*(";" attribute "=" value)`` from `pos`, broken ones skipped, RFC 2231 joined."""
    found: list[tuple[bytes, bytes]] = []
    n = len(value)
    while pos < n:
        if value[pos] != 0x3B:
            pos = _skip_to_semicolon(value, pos)
            continue
        pos = _skip_cfws(value, pos + 1)
        name, pos = _read_token(value, pos)
        pos = _skip_cfws(value, pos)
        if not name or pos >= n or value[pos] != 0x3D:  # "="
            pos = _skip_to_semicolon(value, pos)
            continue
        pos = _skip_cfws(value, pos + 1)
        if pos < n and value[pos] == 0x22:
            text, pos = _read_quoted(value, pos)
        else:
            # A bare value is a token. When more than a comment follows it, the sender
            # forgot the quotes ("a b.pdf") or wrote ``name==?utf-8?...?=``: the value is
            # then the text up to the next ";", as Cyrus reads it.
            text, after = _read_token(value, pos)
            after = _skip_cfws(value, after)
            if after < n and value[after] != 0x3B:
                after = value.find(b";", pos)
                after = n if after < 0 else after
                text = value[pos:after].rstrip(b" \t\r\n")
            pos = after
        found.append((name, text))
        pos = _skip_cfws(value, pos)
    return _join_rfc2231(found)


def _skip_to_semicolon(value: bytes, pos: int) -> int:
    stop = value.find(b";", pos + 1)
    return len(value) if stop < 0 else stop


_SECTION = re.compile(rb"([^*]+)\*([0-9]{1,9})(\*?)")
# RFC 2231 §7 attribute-char: what may appear unescaped in an extended value.
_ATTRIBUTE_CHARS: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~"
)


def _join_rfc2231(found: list[tuple[bytes, bytes]]) -> Params:
    """Join RFC 2231 §3 continuations into one parameter at the place of section 0.

    ``name*0``, ``name*1`` ... become ``name``; if any section is extended (``name*1*``)
    the joined parameter is ``name*`` and holds one RFC 2231 ext-value, with plain sections
    percent-encoded into it (and ``''`` put in front when section 0 was plain), as Cyrus
    does. Sections with a gap or a duplicate number are left as they are (Dovecot's
    choice): we cannot tell what was meant.
    """
    parsed = [(_SECTION.fullmatch(name), name, text) for name, text in found]
    groups: dict[bytes, list[tuple[int, bool, bytes, bytes]]] = {}
    for match, name, text in parsed:
        if match:
            key = match.group(1).lower()
            groups.setdefault(key, []).append(
                (int(match.group(2)), bool(match.group(3)), text, name)
            )
    joined: dict[bytes, tuple[bytes, bytes]] = {}
    for key, sections in groups.items():
        sections.sort(key=lambda section: section[0])
        if [section[0] for section in sections] != list(range(len(sections))):
            continue
        extended = any(section[1] for section in sections)
        pieces = []
        for number, ext, text, _ in sections:
            if extended and not ext:
                pieces.append((b"''" if number == 0 else b"") + _percent_encode(text))
            else:
                pieces.append(text)
        base = sections[0][3].split(b"*", 1)[0]
        joined[key] = (base + b"*" if extended else base, b"".join(pieces))
    if not joined:
        return tuple(found)
    out: list[tuple[bytes, bytes]] = []
    for match, name, text in parsed:
        key = match.group(1).lower() if match else b""
        if match is None or key not in joined:
            out.append((name, text))
        elif match.group(2) == b"0":
            out.append(joined[key])
    return tuple(out)


def _percent_encode(text: bytes) -> bytes:
    return b"".join(bytes((c,)) if c in _ATTRIBUTE_CHARS else b"%%%02X" % c for c in text)


# -- RFC 2047 decoding, for SEARCH ---------------------------------------------------------

_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(rb"[ \t\r\n]*")
# Every octet but the base64 alphabet and "=", for bytes.translate (C speed on big bodies).
_NOT_BASE64: Final = bytes(
    c
    for c in range(256)
    if c not in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
)


def decoded_header(value: bytes) -> str:
    """A header value as text: unfolded, RFC 2047 encoded words decoded (blanks between two
    adjacent words dropped, §6.2; bytes of adjacent words in one charset joined before
    decoding, so a character split across words survives), other octets read as UTF-8 and,
    failing that, Latin-1. Never raises: broken words decode with replacement characters."""
    value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    out: list[str] = []
    pending: list[bytes] = []
    pending_charset = b""
    pos = 0
    for match in _ENCODED_WORD.finditer(value):
        gap = value[pos : match.start()]
        if pending and not _BETWEEN_WORDS.fullmatch(gap):
            out.append(_decode_charset(b"".join(pending), pending_charset))
            pending = []
        if not pending:
            out.append(_decode_plain(gap))
        charset = match.group(1).split(b"*", 1)[0].lower()  # RFC 2231 §5: charset*language
        if pending and charset != pending_charset:
            out.append(_decode_charset(b"".join(pending), pending_charset))
            pending = []
        pending_charset = charset
        pending.append(_decode_word(match.group(2), match.group(3)))
        pos = match.end()
    if pending:
        out.append(_decode_charset(b"".join(pending), pending_charset))
    out.append(_decode_plain(value[pos:]))
    return "".join(out)


def _decode_word(encoding: bytes, text: bytes) -> bytes:
    if encoding in b"Bb":
        return decode_base64(text)
    return decode_qp(text.replace(b"_", b" "), header=True)


def _decode_charset(data: bytes, charset: bytes) -> str:
    # The charset is the sender's word: besides unknown names (LookupError) Python also
    # knows codecs that are no text encoding (base64, rot13, zlib: LookupError at
    # decode), names with a NUL and codecs that refuse "replace" (idna, punycode,
    # undefined: ValueError). Found by fuzz/fuzz_mime.py.
    try:
        return data.decode(charset.decode("ascii"), errors="replace")
    except (LookupError, ValueError):
        return _decode_plain(data)


def _decode_plain(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def decode_base64(data: bytes) -> bytes:
    """Base64 read the lenient way mail needs (RFC 2045 §6.8: octets outside the alphabet
    are ignored). Each run up to a "=" is decoded on its own, so blocks that encoders glued
    together after their padding still decode; a missing padding is forgiven and a
    dangling sixth bit dropped."""
    out = []
    for run in data.translate(None, _NOT_BASE64).split(b"="):
        piece = run[:-1] if len(run) % 4 == 1 else run
        if piece:
            out.append(binascii.a2b_base64(piece + b"=" * (-len(piece) % 4)))
    return b"".join(out)


def decode_qp(data: bytes, *, header: bool = False) -> bytes:
    """Quoted-printable (RFC 2045 §6.7): "=XX" escapes, soft line breaks, and the trailing
    blanks of each line dropped (rule 3: they may be transport padding)."""
    if not header and (b" \r\n" in data or b"\t\r\n" in data or b" \n" in data or b"\t\n" in data):
        data = re.sub(rb"[ \t]+(?=\r?\n)", b"", data)
    return binascii.a2b_qp(data, header=header)
