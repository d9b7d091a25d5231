"""SPF macros (RFC 7208 §7): a macro-string parsed once into tokens, expanded per check.

Grammar (§7.1)::

    macro-string  = *( macro-expand / macro-literal )
    macro-expand  = ( "%{" macro-letter transformers *delimiter "}" ) / "%%" / "%_" / "%-"
    macro-literal = %x21-24 / %x26-7E          ; visible ASCII except "%"
    transformers  = *DIGIT [ "r" ]
    delimiter     = "." / "-" / "+" / "," / "/" / "_" / "="
    explain-string = *( macro-string / SP )    ; the text of an "exp=" TXT record

The letters c, r and t may appear only in explanation text (§7.2). An upper-case letter
expands like its lower-case one and is then URL-escaped (§7.3). Parsing keeps the literal
text after the last macro-expand, because a domain-spec must end either in a
macro-expand or in "." toplabel (§7.1), and that is checked on the literal tail only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote

import attrs

from ._types import SpfSyntaxError

__all__ = ["Macro", "MacroString", "expand", "parse_macro_string"]

DOMAIN_LETTERS = frozenset("slodiphv")
EXPLANATION_LETTERS = DOMAIN_LETTERS | frozenset("crt")
# §7.3 asks that at least 127 parts be supported; beyond that, a count is "all of them"
# (and we never feed int() an arbitrarily long digit string).
MAX_PARTS = 128
_BODY = re.compile(r"([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)")


@attrs.frozen
class Macro:
    """One %{...}: the letter (lower case), URL-escape?, parts kept (0: all), reversal,
    the delimiters to split on ("" means ".")."""

    letter: str
    escape: bool
    keep: int
    reverse: bool
    delimiters: str


Token = str | Macro


@attrs.frozen
class MacroString:
    """A parsed macro-string: literals (escapes already undone) and macros in order.

    `tail` is the raw literal text after the last macro-expand ("%%", "%_" and "%-"
    count as macro-expands), for the domain-end check."""

    text: str
    tokens: tuple[Token, ...]
    tail: str

    @property
    def letters(self) -> frozenset[str]:
        return frozenset(t.letter for t in self.tokens if isinstance(t, Macro))


def parse_macro_string(text: str, *, explanation: bool = False) -> MacroString:
    """Parse `text`; raise `SpfSyntaxError` if it is not a macro-string (or, with
    `explanation`, an explain-string, which also allows spaces and the letters c r t)."""
    letters = EXPLANATION_LETTERS if explanation else DOMAIN_LETTERS
    tokens: list[Token] = []
    literal: list[str] = []
    tail_start = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch != "%":
            if not ("!" <= ch <= "~" or (explanation and ch == " ")):
                raise SpfSyntaxError(f"character {_show(ch)} not allowed in {_what(explanation)}")
            literal.append(ch)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt in ("%", "_", "-"):
            literal.append({"%": "%", "_": " ", "-": "%20"}[nxt])
            i += 2
            tail_start = i
            continue
        if nxt != "{":
            raise SpfSyntaxError("'%' not followed by '{', '%', '_' or '-' (RFC 7208 §7.1)")
        end = text.find("}", i + 2)
        if end < 0:
            raise SpfSyntaxError("unterminated macro: '%{' without '}'")
        body = _BODY.fullmatch(text, i + 2, end)
        if body is None:
            raise SpfSyntaxError("malformed macro (RFC 7208 §7.1)")
        letter, digits, reverse, delimiters = body.groups()
        if letter.lower() not in EXPLANATION_LETTERS:
            raise SpfSyntaxError(f"unknown macro letter {letter!r} (RFC 7208 §7.2)")
        if letter.lower() not in letters:
            raise SpfSyntaxError(
                f"macro letter {letter!r} allowed only in explanation text (RFC 7208 §7.2)"
            )
        keep = 0
        if digits:
            keep = int(digits) if len(digits) <= 3 else MAX_PARTS
            if keep == 0:
                raise SpfSyntaxError("macro part count must not be zero (RFC 7208 §7.3)")
            keep = min(keep, MAX_PARTS)
        if literal:
            tokens.append("".join(literal))
            literal.clear()
        tokens.append(
            Macro(
                letter=letter.lower(),
                escape=letter.isupper(),
                keep=keep,
                reverse=bool(reverse),
                delimiters=delimiters,
            )
        )
        i = end + 1
        tail_start = i
    if literal:
        tokens.append("".join(literal))
    return MacroString(text=text, tokens=tuple(tokens), tail=text[tail_start:])


def expand(macro_string: MacroString, values: Mapping[str, str]) -> str:
    """The text of `macro_string` with every macro replaced (§7.3).

    `values` maps each lower-case letter the string uses to its value; the caller looks
    up "p" (which needs DNS) before calling, so expansion itself is pure."""
    out: list[str] = []
    for token in macro_string.tokens:
        if isinstance(token, str):
            out.append(token)
            continue
        value = values[token.letter]
        if token.keep or token.reverse or token.delimiters:
            split = "[" + re.escape(token.delimiters or ".") + "]"
            parts = re.split(split, value)
            if token.reverse:
                parts.reverse()
            if token.keep:
                parts = parts[-token.keep :]
            value = ".".join(parts)
        if token.escape:
            # "unreserved" of RFC 3986 stays; everything else is %-escaped (as UTF-8).
            value = quote(value, safe="", errors="surrogatepass")
        out.append(value)
    return "".join(out)


def _what(explanation: bool) -> str:
    return "explanation text" if explanation else "macro-string"


def _show(ch: str) -> str:
    return repr(ch) if "!" <= ch <= "~" else f"U+{ord(ch):04X}"
