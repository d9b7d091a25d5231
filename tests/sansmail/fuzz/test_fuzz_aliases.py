"""Fuzzing the aliases grammar beyond tests/sansmail/mail/test_aliases.py: whatever the
text, parse_aliases collects problems instead of raising, and expanding any name it
defines, with include files that are the same text (so includes nest and loop) and a
recipient delimiter, ends and raises nothing."""

from __future__ import annotations

from fuzz_drivers import check_aliases
from hypothesis import given, settings
from hypothesis import strategies as st

PIECES = [
    "a",
    "b",
    "u1",
    "sales",
    "postmaster",
    "abuse",
    ":",
    ": ",
    ",",
    ", ",
    "\n",
    "\n  ",
    "#",
    '"a b"',
    "\\",
    "\\u1",
    "@",
    "x@b.example",
    "y@a.example",
    ":include:/i",
    ":include:/missing",
    ":include:rel",
    "|/bin/sh",
    "/var/file",
    "+",
    "+ext",
    " ",
    "\t",
    "ü",
    "\x00",
    "\r",
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40).map("".join), st.sampled_from(PIECES))
def test_any_table_parses_and_expands(text: str, start: str) -> None:
    check_aliases(text, start)
