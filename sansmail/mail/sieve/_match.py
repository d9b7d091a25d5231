"""Sieve comparators and match types (RFC 5228 §2.7, RFC 4790, RFC 5231).

A comparator (i;octet, i;ascii-casemap, i;ascii-numeric) decides equality, order and,
for the first two, substring and wildcard matching. `:matches` is matched without
regular expressions: the pattern is cut at each ``*`` into segments of literals and
``?``, and each segment is placed at its leftmost position after the one before, the last
one at the end of the value. That is linear in the value for each segment (no
backtracking, so no catastrophic patterns), and it makes every ``*`` match as little as
it can, which is what the match variables of RFC 5229 §3.2 report (as Pigeonhole does).
"""

from __future__ import annotations

import functools
import re
from typing import Final

__all__ = [
    "COMPARATORS",
    "MatchError",
    "compare",
    "fold",
    "matches",
    "relational",
]

COMPARATORS: Final = frozenset({"i;octet", "i;ascii-casemap", "i;ascii-numeric"})
RELATIONS: Final = frozenset({"gt", "ge", "lt", "le", "eq", "ne"})

_ASCII_LOWER: Final = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


class MatchError(Exception):
    """A comparator asked for something it cannot do (``:contains`` with i;ascii-numeric)."""


def fold(text: str) -> str:
    """ASCII case folding only (RFC 4790 §9.2): "Ä" stays "Ä", as the comparator says."""
    return text.translate(_ASCII_LOWER)


def _numeric(text: str) -> int | None:
    """i;ascii-numeric (RFC 4790 §9.1): the leading digits; no digits is positive infinity
    (None)."""
    end = 0
    while end < len(text) and "0" <= text[end] <= "9":
        end += 1
    return int(text[:end]) if end else None


def _order(comparator: str, a: str, b: str) -> int:
    """-1, 0 or 1 for a against b under the comparator."""
    if comparator == "i;ascii-numeric":
        x, y = _numeric(a), _numeric(b)
        if x == y:
            return 0
        if x is None:
            return 1
        if y is None:
            return -1
        return -1 if x < y else 1
    if comparator == "i;ascii-casemap":
        a, b = fold(a), fold(b)
    return (a > b) - (a < b)


def relational(comparator: str, relation: str, value: str, key: str) -> bool:
    """``:value "gt"`` and friends (RFC 5231 §4): the value on the left, the key right."""
    order = _order(comparator, value, key)
    return {
        "gt": order > 0,
        "ge": order >= 0,
        "lt": order < 0,
        "le": order <= 0,
        "eq": order == 0,
        "ne": order != 0,
    }[relation]


def compare(comparator: str, match_type: str, value: str, key: str) -> list[str] | None:
    """Does `value` match `key`? None when not; else the match variables (RFC 5229 §3.2):
    for ``:matches`` the whole value then what each wildcard took, otherwise empty."""
    if match_type == "is":
        return [] if _order(comparator, value, key) == 0 else None
    if comparator == "i;ascii-numeric":
        raise MatchError(f"comparator {comparator} cannot do :{match_type}")
    folded_value = fold(value) if comparator == "i;ascii-casemap" else value
    folded_key = fold(key) if comparator == "i;ascii-casemap" else key
    if match_type == "contains":
        return [] if folded_key in folded_value else None
    if match_type == "matches":
        return matches(folded_value, folded_key, value)
    raise MatchError(f"unknown match type :{match_type}")


def _segments(pattern: str) -> list[list[str | None]]:
    """The pattern cut at ``*``: each segment a list of characters, None for ``?``.
    ``\\`` makes the next character literal."""
    segments: list[list[str | None]] = [[]]
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            segments[-1].append(pattern[i + 1])
            i += 2
            continue
        if ch == "*":
            segments.append([])
        else:
            segments[-1].append(None if ch == "?" else ch)
        i += 1
    return segments


def _fits(value: str, at: int, segment: list[str | None]) -> bool:
    if at + len(segment) > len(value):
        return False
    for offset, ch in enumerate(segment):
        if ch is not None and value[at + offset] != ch:
            return False
    return True


def _find(value: str, start: int, segment: list[str | None]) -> int:
    """The leftmost position at or after `start` where `segment` fits, or -1. A segment
    with ``?`` is searched as a fixed-length regular expression (literals and ``.``, no
    quantifier, so it cannot backtrack), which keeps the scan in C."""
    if not segment:
        return start
    if None not in segment:
        return value.find("".join(segment), start)  # type: ignore[arg-type]
    found = _segment_regex(tuple(segment)).search(value, start)
    return -1 if found is None else found.start()


@functools.lru_cache(maxsize=256)
def _segment_regex(segment: tuple[str | None, ...]) -> re.Pattern[str]:
    return re.compile("".join("." if ch is None else re.escape(ch) for ch in segment), re.DOTALL)


def matches(value: str, pattern: str, original: str | None = None) -> list[str] | None:
    """Wildcard match of the whole `value`; the captures are cut from `original` (the
    value before case folding, same length) so ``${1}`` keeps the message's case."""
    source = value if original is None else original
    segments = _segments(pattern)
    captures = [source]
    first = segments[0]
    if len(segments) == 1:
        if len(first) != len(value) or not _fits(value, 0, first):
            return None
        captures.extend(source[i] for i, ch in enumerate(first) if ch is None)
        return captures
    if not _fits(value, 0, first):
        return None
    captures.extend(source[i] for i, ch in enumerate(first) if ch is None)
    pos = len(first)
    tail = segments[-1]
    tail_at = len(value) - len(tail)
    if tail_at < pos or not _fits(value, tail_at, tail):
        return None
    for segment in segments[1:-1]:
        at = _find(value, pos, segment)
        if at < 0 or at + len(segment) > tail_at:
            return None
        captures.append(source[pos:at])  # what the star before the segment took
        captures.extend(source[at + i] for i, ch in enumerate(segment) if ch is None)
        pos = at + len(segment)
    captures.append(source[pos:tail_at])
    captures.extend(source[tail_at + i] for i, ch in enumerate(tail) if ch is None)
    return captures
