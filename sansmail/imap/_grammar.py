"""The character classes of the IMAP grammar (RFC 9051 §9), and the validators built on them.

Each class is given twice, as a bytes pattern for the parser and as a str pattern for
validating events an application builds. Both say the same thing.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

__all__ = [
    "ASTRING_CHARS",
    "ATOM_CHARS",
    "ATOM_RE",
    "FLAG_RE",
    "LIST_CHARS",
    "SYSTEM_FLAGS",
    "TAG_CHARS",
    "TAG_RE",
    "check_atom",
    "check_atoms",
    "check_flags",
    "check_no_nul",
    "check_nonneg",
    "check_tag",
    "check_text",
    "normalize_flag",
]

# ATOM-CHAR = <any CHAR except atom-specials>; atom-specials = "(" / ")" / "{" / SP / CTL /
# list-wildcards ("%" / "*") / quoted-specials (DQUOTE / "\") / resp-specials ("]").
ATOM_CHARS = r"\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e"
# ASTRING-CHAR = ATOM-CHAR / resp-specials.
ASTRING_CHARS = r"\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c-\x7e"
# tag = 1*<any ASTRING-CHAR except "+">.
TAG_CHARS = r"\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e"
# list-char = ATOM-CHAR / list-wildcards / resp-specials.
LIST_CHARS = r"\x21\x23-\x27\x2a-\x5b\x5d-\x7a\x7c-\x7e"

ATOM_RE = re.compile(f"[{ATOM_CHARS}]+")
TAG_RE = re.compile(f"[{TAG_CHARS}]+")
# flag = "\" atom (system flags and flag-extension) / atom (flag-keyword).
FLAG_RE = re.compile(f"\\\\?[{ATOM_CHARS}]+")

#: RFC 9051 §2.3.2's system flags, in their usual spelling. Flags are case-insensitive;
#: the parser writes these five the one way so applications compare strings.
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_FLAG_CASE = {flag.upper(): flag for flag in (*SYSTEM_FLAGS, "\\Recent")}


def normalize_flag(flag: str) -> str:
    """A system flag in its usual spelling; any other flag as it is."""
    return _SYSTEM_FLAG_CASE.get(flag.upper(), flag) if flag.startswith("\\") else flag


def check_tag(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not TAG_RE.fullmatch(value):
        raise ValueError(f"{attribute.name} is not an IMAP tag: {value!r}")


def check_atom(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not ATOM_RE.fullmatch(value):
        raise ValueError(f"{attribute.name} is not an IMAP atom: {value!r}")


def check_atoms(_inst: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not isinstance(value, tuple):
        raise TypeError(f"{attribute.name} must be a tuple")
    for item in value:
        check_atom(_inst, attribute, item)


def check_flags(_inst: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not isinstance(value, tuple):
        raise TypeError(f"{attribute.name} must be a tuple")
    for flag in value:
        if not isinstance(flag, str) or not FLAG_RE.fullmatch(flag):
            raise ValueError(f"{attribute.name}: not an IMAP flag: {flag!r}")
        if flag != normalize_flag(flag):
            raise ValueError(f"{attribute.name}: write system flags as {normalize_flag(flag)!r}")


def check_no_nul(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    # RFC 9051 §4.3: a string never holds NUL (CHAR8 is %x01-ff).
    if not isinstance(value, str) or "\0" in value:
        raise ValueError(f"{attribute.name} must be a str without NUL")


def check_text(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    # resp-text: TEXT-CHAR is any CHAR except CR and LF; RFC 9051 also allows UTF-8.
    if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
        raise ValueError(f"{attribute.name} must be a str without CR, LF or NUL: {value!r}")


def check_nonneg(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{attribute.name} must be a non-negative integer, not {value!r}")
