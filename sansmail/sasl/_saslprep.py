"""SASLprep (RFC 4013): the stringprep profile that prepares passwords for SCRAM.

SCRAM hashes the password (RFC 5802 §2.2 "Normalize"), so client and server must agree on
its exact code points: SASLprep maps look-alike spaces to U+0020, drops invisible
characters, applies Unicode NFKC, then refuses control characters, private-use and
non-characters, and mixed-direction text. The tables come from the standard library's
`stringprep` module (RFC 3454, Unicode 3.2), and normalisation uses the matching Unicode 3.2
database, as stringprep requires.
"""

from __future__ import annotations

import stringprep
import unicodedata
from collections.abc import Callable
from typing import Final

from sansmail.sasl._base import SASLError

__all__ = ["saslprep"]

# RFC 4013 §2.3: the prohibited tables. C.1.2 (non-ASCII spaces) is listed there too, but
# step 1 has already mapped those to U+0020.
_PROHIBITED: Final[tuple[Callable[[str], bool], ...]] = (
    stringprep.in_table_c12,  # non-ASCII space characters
    stringprep.in_table_c21,  # ASCII control characters
    stringprep.in_table_c22,  # non-ASCII control characters
    stringprep.in_table_c3,  # private use
    stringprep.in_table_c4,  # non-character code points
    stringprep.in_table_c5,  # surrogate codes
    stringprep.in_table_c6,  # inappropriate for plain text
    stringprep.in_table_c7,  # inappropriate for canonical representation
    stringprep.in_table_c8,  # change display properties or deprecated
    stringprep.in_table_c9,  # tagging characters
)


def saslprep(text: str, *, allow_unassigned: bool = False) -> str:
    """Prepare `text` with SASLprep (RFC 4013); raise `SASLError` if it is prohibited.

    `allow_unassigned=False` treats `text` as a "stored string" (RFC 3454 §7), which is what
    SCRAM requires for passwords (RFC 5802 §2.2): code points unassigned in Unicode 3.2
    are refused.
    """
    if not allow_unassigned:
        for ch in text:
            if stringprep.in_table_a1(ch):
                raise SASLError("SASLprep: unassigned code point")
    # RFC 4013 §2.1: non-ASCII spaces become SPACE; "commonly mapped to nothing" vanish.
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    # RFC 4013 §2.2: Unicode normalisation form KC.
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    for ch in prepared:
        if any(prohibited(ch) for prohibited in _PROHIBITED):
            raise SASLError("SASLprep: prohibited character")
    # RFC 4013 §2.4 -> RFC 3454 §6: text with right-to-left characters must not contain
    # left-to-right ones and must begin and end with a right-to-left character.
    if any(stringprep.in_table_d1(ch) for ch in prepared):
        if any(stringprep.in_table_d2(ch) for ch in prepared):
            raise SASLError("SASLprep: mixed text direction")
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise SASLError("SASLprep: right-to-left text must start and end so")
    return prepared
