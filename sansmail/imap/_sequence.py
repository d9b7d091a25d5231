"""Sequence sets: "1:4,7,9:*" (RFC 9051 §9 `sequence-set`) and "$" (RFC 5182 SEARCHRES).

A set is kept as the client wrote it, ranges in order with "*" unresolved, because "*"
means "the largest number in use" at the moment the command runs: the highest message
sequence number for FETCH, the highest UID for UID FETCH (RFC 9051 §9, note on
`seq-number`). `resolve(largest)` turns it into merged ascending ranges once the caller
knows that number. "$" stands for the result saved by an earlier SEARCH RETURN (SAVE);
it has no ranges, and what it means is the application's (part 2).
"""

from __future__ import annotations

import re
from typing import Any

import attrs

__all__ = ["MAX_NUMBER", "SequenceSet"]

#: RFC 9051 §9: nz-number is a non-zero unsigned 32-bit integer.
MAX_NUMBER = 4_294_967_295

_NUMBER = r"(?:[1-9][0-9]{0,9}|\*)"
_SET = re.compile(rf"{_NUMBER}(?::{_NUMBER})?(?:,{_NUMBER}(?::{_NUMBER})?)*")

Bound = int | None  # None is "*"


def _check_ranges(
    inst: SequenceSet, _attribute: attrs.Attribute[Any], value: tuple[tuple[Bound, Bound], ...]
) -> None:
    if not isinstance(value, tuple):
        raise TypeError("ranges must be a tuple")
    if inst.saved:
        if value:
            raise ValueError('"$" has no ranges')
        return
    if not value:
        raise ValueError("a sequence set needs at least one range")
    for pair in value:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ValueError(f"a range is a (start, end) pair, not {pair!r}")
        for bound in pair:
            if bound is not None and (type(bound) is not int or not 1 <= bound <= MAX_NUMBER):
                raise ValueError(f"sequence numbers are 1..{MAX_NUMBER} or None (*): {bound!r}")


@attrs.frozen(kw_only=True)
class SequenceSet:
    """A set of message numbers or UIDs as the client wrote it.

    `ranges` holds (start, end) pairs in the client's order; a single number n is
    (n, n) and None stands for "*". `saved` is True for "$" (RFC 5182).
    """

    ranges: tuple[tuple[Bound, Bound], ...] = attrs.field(default=(), validator=_check_ranges)
    saved: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    @classmethod
    def parse(cls, text: str | bytes) -> SequenceSet:
        """Parse "1:4,7,*" or "$"; raises ValueError for anything else."""
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        if text == "$":
            return cls(saved=True)
        if not _SET.fullmatch(text):
            raise ValueError(f"not a sequence set: {text!r}")
        ranges: list[tuple[Bound, Bound]] = []
        for part in text.split(","):
            first, _, last = part.partition(":")
            start = None if first == "*" else int(first)
            end = start if not last else None if last == "*" else int(last)
            ranges.append((start, end))
        return cls(ranges=tuple(ranges))  # the validator refuses numbers over 2**32-1

    @classmethod
    def of(cls, *numbers: int) -> SequenceSet:
        """The set of the given numbers, written as compactly as ranges allow."""
        ranges: list[tuple[Bound, Bound]] = []
        for number in sorted(set(numbers)):
            if ranges and ranges[-1][1] == number - 1:
                ranges[-1] = (ranges[-1][0], number)
            else:
                ranges.append((number, number))
        return cls(ranges=tuple(ranges))

    def __str__(self) -> str:
        if self.saved:
            return "$"
        return ",".join(
            _bound(start) if start == end else f"{_bound(start)}:{_bound(end)}"
            for start, end in self.ranges
        )

    def resolve(self, largest: int) -> tuple[range, ...]:
        """Merged, ascending ranges of the numbers in the set, with "*" taken as `largest`.

        Explicit numbers above `largest` are kept: a UID set may name UIDs that no longer
        exist, while a message sequence number past the end is an error the caller
        reports. With `largest` 0 (an empty mailbox) a range that involves "*" is empty:
        "*" is "the last message" and there is none. Raises ValueError for "$", which
        only the application can resolve.
        """
        if self.saved:
            raise ValueError('"$" is resolved by the application (RFC 5182)')
        spans: list[tuple[int, int]] = []
        for start, end in self.ranges:
            if largest < 1 and (start is None or end is None):
                continue
            low, high = (largest if start is None else start), (largest if end is None else end)
            spans.append((min(low, high), max(low, high)))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for low, high in spans:
            if merged and low <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], high))
            else:
                merged.append((low, high))
        return tuple(range(low, high + 1) for low, high in merged)

    def contains(self, number: int, largest: int) -> bool:
        """Whether `number` is in the set, "*" being `largest`."""
        return any(number in span for span in self.resolve(largest))


def _bound(value: Bound) -> str:
    return "*" if value is None else str(value)
