"""The public surface of sansmail.imap, pinned."""

from __future__ import annotations

import sansmail.imap


def test_all_is_pinned_and_importable() -> None:
    assert len(set(sansmail.imap.__all__)) == len(sansmail.imap.__all__)
    for name in sansmail.imap.__all__:
        assert hasattr(sansmail.imap, name), name
    assert set(sansmail.imap.__all__) >= {
        "Atom",
        "Literal",
        "Value",
        "decode_tree",
        "encode_tree",
        "Connection",
        "Config",
        "Tagged",
        "Untagged",
        "UntaggedStatus",
        "FetchResponse",
        "Continuation",
        "InvalidCommand",
        "LiteralRequested",
        "SequenceSet",
        "write_command",
    }
    assert len(sansmail.imap.__all__) == 107
