"""SASLprep (RFC 4013), against the RFC's own examples and the rules behind them."""

from __future__ import annotations

import stringprep

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail.sasl import SASLError, saslprep


# RFC 4013 §3 examples.
@pytest.mark.parametrize(
    ("given_text", "expected"),
    [
        ("I\u00adX", "IX"),  # SOFT HYPHEN mapped to nothing
        ("user", "user"),  # no transformation
        ("USER", "USER"),  # case preserved, will not match #2
        ("\u00aa", "a"),  # output is NFKC, input in ISO 8859-1
        ("\u2168", "IX"),  # output is NFKC, will match #1
    ],
)
def test_rfc4013_examples(given_text: str, expected: str) -> None:
    assert saslprep(given_text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "\u0007",  # RFC 4013 §3: prohibited character
        "\u0627\u0031",  # RFC 4013 §3: bidi check
        "pass\x00word",  # C.2.1 control
        "pass\u200eword",  # C.8 LEFT-TO-RIGHT MARK
        "\ue000",  # C.3 private use
        "\ufffe",  # C.4 non-character
        "\U000e0001",  # C.9 language tag
        "\u0627a\u0628",  # RandALCat with LCat
    ],
)
def test_prohibited(bad: str) -> None:
    with pytest.raises(SASLError):
        saslprep(bad)


def test_non_ascii_spaces_become_space() -> None:
    assert saslprep("a\u00a0b\u2003c") == "a b c"  # C.1.2 -> U+0020


def test_right_to_left_only_is_fine() -> None:
    assert saslprep("\u0627\u0628") == "\u0627\u0628"


def test_unassigned_refused_for_stored_strings_only() -> None:
    # U+0221 was assigned in Unicode 4.0, after stringprep's Unicode 3.2.
    assert stringprep.in_table_a1("\u0221")
    with pytest.raises(SASLError):
        saslprep("x\u0221")
    assert saslprep("x\u0221", allow_unassigned=True) == "x\u0221"


@settings(deadline=None, max_examples=300)
@given(st.text(max_size=30))
def test_output_is_stable(text: str) -> None:
    # What SASLprep produces is already prepared: applying it again changes nothing, so a
    # client and a server that prepare at different moments still agree.
    try:
        once = saslprep(text)
    except SASLError:
        return
    assert saslprep(once) == once


@settings(deadline=None, max_examples=200)
@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30))
def test_printable_ascii_is_untouched(text: str) -> None:
    assert saslprep(text) == text
