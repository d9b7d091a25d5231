"""The public surface of sansmail.mime, pinned."""

from __future__ import annotations

import sansmail.mime


def test_public_names() -> None:
    assert sansmail.mime.__all__ == [
        "MAX_DEPTH",
        "MAX_PARTS",
        "MessagePart",
        "SectionSpec",
        "UnknownEncoding",
        "binary",
        "binary_size",
        "bodystructure",
        "decoded_header",
        "envelope",
        "find_part",
        "header_fields",
        "parse",
        "partial",
        "section",
    ]
    for name in sansmail.mime.__all__:
        assert getattr(sansmail.mime, name) is not None
