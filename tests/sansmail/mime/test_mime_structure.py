"""ENVELOPE and BODYSTRUCTURE trees: the RFC examples, the value-tree conventions, the
store's cache round trip, and the corners the corpus does not reach."""

from __future__ import annotations

import pytest
from mime_helpers import CORPUS, corpus, crlf, render

from sansmail.imap import decode_tree, encode_tree
from sansmail.mime import MAX_DEPTH, bodystructure, envelope, parse


def _lines(count: int, size: int) -> str:
    """`count` CRLF lines of text whose CRLF size is `size` octets in all."""
    width = size // count - 2
    lines = ["x" * width] * count
    lines[-1] += "y" * (size - count * (width + 2))
    return "".join(line + "\n" for line in lines)


def test_rfc3501_fetch_example() -> None:
    """RFC 3501 §7.4.2 / RFC 9051 §7.5.2 FETCH example: ENVELOPE and BODY, byte for byte
    (our strings keep the case the message uses, so the message is written in upper case)."""
    raw = crlf(
        "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\n"
        "From: Terry Gray <gray@cac.washington.edu>\n"
        "Subject: IMAP4rev1 WG mtg summary and minutes\n"
        "To: imap@cac.washington.edu\n"
        "cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\n"
        "Message-Id: <B27397-0100000@cac.washington.edu>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n"
        "Content-Transfer-Encoding: 7BIT\n"
        "\n" + _lines(92, 3028)
    )
    root = parse(raw)
    assert render(envelope(root)) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
        b'NIL NIL "<B27397-0100000@cac.washington.edu>")'
    )
    assert render(bodystructure(root, extensible=False)) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)'
    )


def test_rfc9051_multipart_example() -> None:
    """The multipart BODYSTRUCTURE example of RFC 9051 §7.5.2 (without extension data)."""
    raw = crlf(
        "Subject: example\n"
        "MIME-Version: 1.0\n"
        "Content-Type: MULTIPART/MIXED; BOUNDARY=xyz\n"
        "\n"
        "--xyz\n"
        "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n"
        "Content-Transfer-Encoding: 7BIT\n"
        "\n" + _lines(23, 1152) + "\n--xyz\n"
        'Content-Type: TEXT/PLAIN; CHARSET=US-ASCII; NAME="cc.diff"\n'
        "Content-ID: <960723163407.20117h@cac.washington.edu>\n"
        "Content-Description: Compiler diff\n"
        "Content-Transfer-Encoding: BASE64\n"
        "\n" + _lines(73, 4554) + "\n--xyz--\n"
    )
    assert render(bodystructure(parse(raw), extensible=False)) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23)'
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff") '
        b'"<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73) '
        b'"MIXED")'
    )


def test_bodies_and_addresses_are_tuples_and_nothing_else_is() -> None:
    """The writer's one rule (no SP between adjacent tuples) depends on this."""
    root = parse(corpus("forwarded.eml"))
    structure = bodystructure(root)
    assert isinstance(structure, tuple)
    first, second = structure[0], structure[1]
    assert isinstance(first, tuple)
    assert isinstance(second, tuple)
    assert isinstance(first[2], list)  # parameters
    assert isinstance(second[7], list)  # the envelope of the message/rfc822 part
    assert isinstance(second[8], tuple)  # its body
    assert isinstance(second[11], list)  # disposition
    env = envelope(root)
    assert isinstance(env, list)
    assert isinstance(env[2], list)
    assert all(isinstance(address, tuple) for address in env[2])

    def no_other_tuples(value: object, allowed: bool) -> None:
        if isinstance(value, tuple):
            assert allowed
        if isinstance(value, list | tuple):
            for item in value:
                no_other_tuples(item, isinstance(value, tuple) or isinstance(item, tuple))

    no_other_tuples(env, allowed=False)


@pytest.mark.parametrize("name", sorted(path.name for path in CORPUS.glob("*.eml")))
def test_store_cache_round_trip(name: str) -> None:
    root = parse(corpus(name))
    for tree in (envelope(root), bodystructure(root), bodystructure(root, extensible=False)):
        assert decode_tree(encode_tree(tree)) == tree


def test_default_charset_only_for_text_without_one() -> None:
    def params(content_type: str) -> bytes:
        raw = crlf(f"Content-Type: {content_type}\n\nx\n")
        return render(bodystructure(parse(raw), extensible=False)[2])

    assert params("text/plain") == b'("charset" "us-ascii")'
    assert params("text/plain; format=flowed") == b'("format" "flowed" "charset" "us-ascii")'
    assert params("text/plain; CHARSET=utf-8") == b'("CHARSET" "utf-8")'
    assert params("image/png") == b"NIL"


def test_strings_never_carry_cr_lf_or_nul() -> None:
    raw = b"Subject: a\rb\x00c\r\nContent-ID: <x\ry>\r\nMIME-Version: 1.0\r\n\r\n"
    root = parse(raw)
    assert envelope(root)[1] == b"ab\x80c"
    assert bodystructure(root)[3] == b"<xy>"


def test_envelope_reads_the_header_of_the_part_it_is_given() -> None:
    root = parse(corpus("forwarded.eml"))
    inner = root.children[1].encapsulated
    assert inner is not None
    assert envelope(inner)[1] == b"Quarterly report"
    # a message whose own type is message/rfc822 has its own envelope, not the inner one
    raw = b"Subject: outer\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\n"
    assert envelope(parse(raw))[1] == b"outer"


def test_envelope_from_lf_only_bytes() -> None:
    assert envelope(b"Subject: lf\nFrom: a@b.test\n\nbody\n")[:3] == [
        None,
        b"lf",
        [(None, None, b"a", b"b.test")],
    ]


def test_present_but_empty_subject_is_an_empty_string() -> None:
    assert envelope(b"Subject:\r\n\r\n")[1] == b""
    assert envelope(b"\r\n")[1] is None


def test_unopened_parts_past_the_depth_limit() -> None:
    raw = crlf("Content-Type: message/rfc822\n\n" * (MAX_DEPTH + 1) + "end\n")
    structure = render(bodystructure(parse(raw), extensible=False))
    # the innermost message/rfc822 part is not opened: an empty envelope and body; its
    # size and lines are those of what it holds (one more header block and "end")
    assert (
        b'("message" "rfc822" NIL NIL NIL "7bit" 37 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) '
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) 3) 5)'
    ) in structure
    raw = crlf(
        "".join(
            f"Content-Type: multipart/mixed; boundary=b{i:04}\n\n--b{i:04}\n"
            for i in range(MAX_DEPTH)
        )
        + "\nleaf\n"
    )
    # a multipart past the limit is shown as a single part of its own type (its body holds
    # its own boundary lines, which nobody looks for)
    assert b'("multipart" "mixed" ("boundary" "b0099") NIL NIL "7bit" 17)' in render(
        bodystructure(parse(raw), extensible=False)
    )
