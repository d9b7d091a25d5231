"""RFC 5322 address lists as IMAP address structures (RFC 9051 §7.5.2, ENVELOPE).

IMAP wants each address as ``(name adl mailbox host)`` and a group as a start marker
``(NIL NIL name NIL)``, its members, and an end marker ``(NIL NIL NIL NIL)``. The standard
library cannot give us that: `email.utils.getaddresses` flattens groups away, drops route
addresses, and turns "Doe, John <j@x>" without quotes into two half-addresses; the
`email.headerregistry` parser decodes encoded words, which IMAP must not do. So this is a
small parser of our own over the RFC 5322 §3.4 grammar, in the spirit of Dovecot's
message-address.c:

- A lexer cuts the value into words (atoms, with "." kept inside, so "John Q. Public" and
  "a.b@c" come out whole), quoted strings (quotes and quoted pairs undone), comments,
  domain literals and single special characters.
- The display name is the phrase's words joined by one space; encoded words stay encoded.
  Without a phrase, a comment after the address becomes the name (``user@host (Name)``).
- A mailbox with no local part gets "MISSING_MAILBOX" and one with no domain
  "MISSING_DOMAIN" (Dovecot's fillers): a NIL host would tell the client "group marker".
- Junk never stops the parse: what cannot be read is skipped up to the next ",".

Bounded: at most `MAX_TOKENS` tokens of one field are read (a 25 MiB To: line must not
turn into millions of objects); what follows is ignored.
"""

from __future__ import annotations

import re
from typing import Final, TypeAlias

__all__ = ["IMAPAddress", "address_list"]

IMAPAddress: TypeAlias = tuple[bytes | None, bytes | None, bytes | None, bytes | None]

MAX_TOKENS: Final = 50_000
_MISSING_MAILBOX: Final = b"MISSING_MAILBOX"
_MISSING_DOMAIN: Final = b"MISSING_DOMAIN"
_GROUP_END: Final[IMAPAddress] = (None, None, None, None)

# Token kinds: "w" word, "q" quoted string, "c" comment, "l" domain literal, or the special
# character itself (one of < > @ , ; : and any stray ) ] \).
_Token: TypeAlias = tuple[str, bytes]
_LEX = re.compile(
    rb"""(?P<ws>[ \t\r\n]+)
    |(?P<q>"(?:[^"\\]|\\.)*(?:"|\Z))
    |(?P<l>\[(?:[^\]\\]|\\.)*(?:\]|\Z))
    |(?P<c>\()
    |(?P<w>[^ \t\r\n"()<>@,;:\\\[\]]+)
    |(?P<s>.)""",
    re.VERBOSE | re.DOTALL,
)
_QUOTED_PAIR = re.compile(rb"\\(.)", re.DOTALL)
_FOLD = re.compile(rb"\r?\n")


def _tokens(value: bytes) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    n = len(value)
    while pos < n and len(out) < MAX_TOKENS:
        match = _LEX.match(value, pos)
        assert match is not None  # the last alternative matches any octet
        kind = match.lastgroup or "s"
        if kind == "c":
            text, pos = _comment(value, pos)
            out.append(("c", text))
            continue
        pos = match.end()
        text = match.group()
        if kind == "q":
            inner = text[1:-1] if len(text) > 1 and text.endswith(b'"') else text[1:]
            out.append(("q", _QUOTED_PAIR.sub(rb"\1", _FOLD.sub(b"", inner))))
        elif kind == "w":
            out.append(("w", text))
        elif kind == "l":
            out.append(("l", _FOLD.sub(b"", text)))
        elif kind == "s":
            out.append((text.decode("latin-1"), text))
    return out


def _comment(value: bytes, pos: int) -> tuple[bytes, int]:
    """A comment (nested ones inside) from the "(" at `pos`; unclosed runs to the end."""
    depth = 0
    start = pos + 1
    n = len(value)
    while pos < n:
        c = value[pos]
        if c == 0x5C:
            pos += 2
            continue
        if c == 0x28:
            depth += 1
        elif c == 0x29:
            depth -= 1
            if depth == 0:
                return _QUOTED_PAIR.sub(rb"\1", value[start:pos]), pos + 1
        pos += 1
    return _QUOTED_PAIR.sub(rb"\1", value[start:n]), n


def address_list(value: bytes) -> list[IMAPAddress] | None:
    """The IMAP address structures of one address field; None when it names nobody
    (absent addresses are NIL in the ENVELOPE, RFC 9051 §7.5.2)."""
    toks = _tokens(value)
    out: list[IMAPAddress] = []
    i = 0
    while i < len(toks):
        if toks[i][0] == ",":
            i += 1
        else:
            i = _address(toks, i, out)
    return out or None


_PHRASE_KINDS: Final = frozenset("wqcl")


def _phrase_end(toks: list[_Token], i: int) -> int:
    while i < len(toks) and toks[i][0] in _PHRASE_KINDS:
        i += 1
    return i


def _words(toks: list[_Token]) -> list[bytes]:
    return [text for kind, text in toks if kind != "c"]


def _last_comment(toks: list[_Token]) -> bytes | None:
    comments = [text for kind, text in toks if kind == "c"]
    return comments[-1].strip(b" \t") or None if comments else None


def _address(toks: list[_Token], i: int, out: list[IMAPAddress]) -> int:
    """address = mailbox / group (RFC 5322 §3.4); returns the index after it."""
    j = _phrase_end(toks, i)
    if j < len(toks) and toks[j][0] == ":":
        out.append((None, None, b" ".join(_words(toks[i:j])), None))
        k = j + 1
        while k < len(toks) and toks[k][0] != ";":
            k = k + 1 if toks[k][0] == "," else _mailbox(toks, k, out, in_group=True)
        out.append(_GROUP_END)
        return k + 1
    return _mailbox(toks, i, out, in_group=False)


def _mailbox(toks: list[_Token], i: int, out: list[IMAPAddress], *, in_group: bool) -> int:
    """mailbox = name-addr / addr-spec (RFC 5322 §3.4), read leniently."""
    j = _phrase_end(toks, i)
    nxt = toks[j][0] if j < len(toks) else ""
    if nxt == "<":
        name = b" ".join(_words(toks[i:j])) or None
        route, mailbox, domain, k = _angle_addr(toks, j + 1)
        _add(out, name, route, mailbox, domain)
        return _skip_junk(toks, k, in_group)
    if nxt == "@":
        k = _phrase_end(toks, j + 1)
        domain_toks = toks[j + 1 : k]
        name = _last_comment(toks[i:k])
        _add(out, name, None, b"".join(_words(toks[i:j])), b"".join(_words(domain_toks)))
        return _skip_junk(toks, k, in_group)
    words = _words(toks[i:j])
    if len(words) == 1:
        _add(out, _last_comment(toks[i:j]), None, words[0], None)
    elif words:
        _add(out, b" ".join(words), None, None, None)
    return _skip_junk(toks, j, in_group)


def _angle_addr(toks: list[_Token], k: int) -> tuple[bytes | None, bytes, bytes, int]:
    """``[route ":"] local-part "@" domain ">"`` after the "<"; returns (route, local part,
    domain, index after ">"). An unclosed angle address keeps what it has."""
    route = None
    if k < len(toks) and toks[k][0] == "@":
        hops = []
        while k < len(toks) and toks[k][0] == "@":
            end = _phrase_end(toks, k + 1)
            hops.append(b"@" + b"".join(_words(toks[k + 1 : end])))
            k = end
            while k < len(toks) and toks[k][0] == ",":
                k += 1
        if k < len(toks) and toks[k][0] == ":":
            k += 1
        route = b",".join(hops)
    end = _phrase_end(toks, k)
    local = b"".join(_words(toks[k:end]))
    domain = b""
    k = end
    if k < len(toks) and toks[k][0] == "@":
        end = _phrase_end(toks, k + 1)
        domain = b"".join(_words(toks[k + 1 : end]))
        k = end
    while k < len(toks) and toks[k][0] not in (">", ","):
        k += 1
    return route, local, domain, k + 1 if k < len(toks) and toks[k][0] == ">" else k


def _skip_junk(toks: list[_Token], k: int, in_group: bool) -> int:
    """Move to the "," that ends this address (or the ";" that ends its group)."""
    while k < len(toks):
        kind = toks[k][0]
        if kind == "," or (in_group and kind == ";"):
            return k
        k += 1
    return k


def _add(
    out: list[IMAPAddress],
    name: bytes | None,
    route: bytes | None,
    mailbox: bytes | None,
    domain: bytes | None,
) -> None:
    out.append(
        (name or None, route or None, mailbox or _MISSING_MAILBOX, domain or _MISSING_DOMAIN)
    )
