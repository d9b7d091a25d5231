"""Fuzzing addresses beyond tests/sansmail/mail/test_address.py: a path read from any
position of an SMTP command line (as the core reads MAIL and RCPT) raises only
AddressError, ends inside the line, and prints back to an equal address; parse_address
and canonical_domain keep their round-trip promises on the same text."""

from __future__ import annotations

from fuzz_drivers import InvariantError, check_address
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail.mail.address import AddressError, read_path

PIECES = [
    "<",
    ">",
    "@",
    ".",
    '"',
    "\\",
    "[",
    "]",
    ":",
    ",",
    " ",
    "a",
    "Z",
    "9",
    "-",
    "ü",
    "例",
    "。",
    "\u0301",
    "xn--",
    "IPv6:",
    "::",
    "1.2.3.4",
    "ffff:",
    "tag:x",
    "Postmaster",
    "@route.example,",
    "MAIL FROM:",
    "RCPT TO:",
    " SIZE=10",
    "\x00",
    "\t",
    "%",
    "!",
]
texts = st.lists(st.sampled_from(PIECES), max_size=20).map("".join)


@settings(max_examples=300, deadline=None)
@given(texts, st.integers(min_value=0, max_value=30), st.booleans())
def test_a_path_anywhere_in_a_line(text: str, pos: int, smtputf8: bool) -> None:
    pos = min(pos, len(text))
    try:
        address, end = read_path(text, pos, smtputf8=smtputf8)
    except AddressError:
        pass
    else:
        if not pos < end <= len(text):
            raise InvariantError(f"end {end} for a path at {pos} in {text!r}")
        if address is not None and read_path(f"<{address}>", smtputf8=True)[0] != address:
            raise InvariantError(f"{address!r} does not read back")
    check_address(text[pos:], smtputf8)
