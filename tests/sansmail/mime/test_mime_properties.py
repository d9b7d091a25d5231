"""Properties: any input gives a well-formed tree without raising, and MIME trees built
here come back from their bytes with the same structure, offsets and contents."""

from __future__ import annotations

import base64
import itertools
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from mime_helpers import render

from sansmail.mime import (
    MessagePart,
    SectionSpec,
    binary,
    bodystructure,
    decoded_header,
    envelope,
    header_fields,
    parse,
    section,
)

SETTINGS = settings(max_examples=200, deadline=None)


def _check_offsets(part: MessagePart, end: int) -> None:
    assert 0 <= part.header_start <= part.header_end == part.body_start <= part.body_end <= end
    previous = part.body_start
    for child in part.children:
        assert previous <= child.header_start
        assert child.body_end <= part.body_end
        previous = child.body_end
        _check_offsets(child, end)
    if part.encapsulated is not None:
        assert part.encapsulated.header_start == part.body_start
        assert part.encapsulated.body_end == part.body_end
        _check_offsets(part.encapsulated, end)


def _exercise(raw: bytes) -> None:
    """Everything the IMAP server will call, on one message: nothing may raise."""
    root = parse(raw)
    _check_offsets(root, len(raw))
    render(envelope(root))
    render(envelope(raw))
    render(bodystructure(root))
    render(bodystructure(root, extensible=False))
    header_fields(raw, root)
    decoded_header(raw[: root.header_end])
    for parts in [(), (1,), (2,), (1, 1), (2, 1, 1)]:
        for text in [None, "HEADER", "TEXT", "MIME", "HEADER.FIELDS.NOT"]:
            if text == "MIME" and not parts:
                continue
            names = (b"subject",) if text == "HEADER.FIELDS.NOT" else ()
            section(raw, root, SectionSpec(parts=parts, text=text, fields=names))
        binary(raw, root, parts)


@SETTINGS
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(raw: bytes) -> None:
    _exercise(raw)


_PIECES = [
    b"--",
    b"b",
    b"\r\n",
    b"\n",
    b"\r",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: multipart/digest; boundary=bb\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/plain; name*0*=x; name*1=y\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"MIME-Version: 1.0\r\n",
    b"From: ",
    b"To: g:;",
    b":",
    b" ",
    b"\t",
    b"x",
    b"=?",
    b"?=",
    b'"',
    b"(",
    b")",
    b"<",
    b">",
    b"@",
    b",",
    b";",
    b"=",
    b"\x00",
    b"\xff",
]


@SETTINGS
@given(st.lists(st.sampled_from(_PIECES), max_size=80).map(b"".join))
def test_mime_like_bytes_never_raise(raw: bytes) -> None:
    _exercise(raw)


# -- generated MIME trees ------------------------------------------------------------------


@dataclass
class Leaf:
    kind: tuple[str, str]
    body: bytes
    payload: bytes | None = None  # set when the body is base64 of it


@dataclass
class Multi:
    subtype: str
    children: list[Node]
    preamble: bytes = b""
    epilogue: bytes = b""
    boundary: str = field(default="", compare=False)


@dataclass
class Message:
    subject: str
    inner: Node


Node = Leaf | Multi | Message

# No "-" anywhere in generated text, so no line can look like a boundary.
_TEXT = st.text(alphabet="abc xyz=.\n", max_size=60).map(
    lambda text: text.replace("\n", "\r\n").encode()
)


def _leaf() -> st.SearchStrategy[Leaf]:
    kinds = st.sampled_from([("text", "plain"), ("text", "html"), ("application", "pdf")])
    plain = st.builds(Leaf, kinds, _TEXT)
    encoded = st.binary(max_size=100).map(
        lambda data: Leaf(
            ("application", "octet-stream"),
            base64.encodebytes(data).replace(b"\n", b"\r\n").rstrip(b"\r\n"),
            data,
        )
    )
    return st.one_of(plain, encoded)


def _extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    multi = st.builds(
        Multi,
        st.sampled_from(["mixed", "alternative", "related"]),
        st.lists(children, min_size=1, max_size=4),
        st.one_of(st.just(b""), _TEXT.map(lambda t: t + b"\r\n")),
        _TEXT,
    )
    # the blanks after the colon are not part of the value: start with a letter
    subjects = st.text(alphabet="abc xyz", max_size=20).map(lambda text: "s" + text)
    message = st.builds(Message, subjects, children)
    return st.one_of(multi, message)


TREES: st.SearchStrategy[Node] = st.recursive(_leaf(), _extend, max_leaves=10)


def _entity(node: Node, counter: itertools.count[int]) -> bytes:
    """One MIME entity (header block and body) for `node`."""
    if isinstance(node, Leaf):
        header = f"Content-Type: {node.kind[0]}/{node.kind[1]}\r\n"
        if node.payload is not None:
            header += "Content-Transfer-Encoding: base64\r\n"
        return header.encode() + b"\r\n" + node.body
    if isinstance(node, Message):
        inner = f"Subject: {node.subject}\r\nMIME-Version: 1.0\r\n".encode()
        return b"Content-Type: message/rfc822\r\n\r\n" + inner + _entity(node.inner, counter)
    node.boundary = f"=_{next(counter):06d}_="  # fixed width: no boundary prefixes another
    delimiter = b"--" + node.boundary.encode()
    body = bytearray(node.preamble)
    for child in node.children:
        body += (b"\r\n" if body else b"") + delimiter + b"\r\n" + _entity(child, counter)
    body += b"\r\n" + delimiter + b"--\r\n" + node.epilogue
    header = f'Content-Type: multipart/{node.subtype}; boundary="{node.boundary}"\r\n'
    return header.encode() + b"\r\n" + bytes(body)


def _compare(
    node: Node, part: MessagePart, raw: bytes, path: tuple[int, ...], root: MessagePart
) -> None:
    if isinstance(node, Leaf):
        assert (part.content_type, part.subtype) == (node.kind[0].encode(), node.kind[1].encode())
        assert raw[part.body_start : part.body_end] == node.body
        assert part.size == len(node.body)
        if part.is_text:
            assert part.lines == node.body.count(b"\n")
        assert section(raw, root, SectionSpec(parts=path or (1,))) == node.body
        if node.payload is not None:
            assert binary(raw, root, path or (1,)) == node.payload
    elif isinstance(node, Message):
        assert part.is_message
        assert part.encapsulated is not None
        assert envelope(part.encapsulated)[1] == node.subject.encode()
        assert part.lines == raw.count(b"\n", part.body_start, part.body_end)
        # numbers after a message/rfc822 part address the parts of the message inside
        inner_path = (*path, 1) if not isinstance(node.inner, Multi) else path
        if isinstance(node.inner, Multi):
            _compare_multi(node.inner, part.encapsulated, raw, path, root)
        else:
            _compare(node.inner, part.encapsulated, raw, inner_path, root)
    else:
        _compare_multi(node, part, raw, path, root)


def _compare_multi(
    node: Multi, part: MessagePart, raw: bytes, path: tuple[int, ...], root: MessagePart
) -> None:
    assert part.multipart
    assert part.subtype == node.subtype.encode()
    assert dict(part.params)[b"boundary"] == node.boundary.encode()
    assert len(part.children) == len(node.children)
    for number, (child_node, child_part) in enumerate(
        zip(node.children, part.children, strict=True), 1
    ):
        _compare(child_node, child_part, raw, (*path, number), root)


@SETTINGS
@given(TREES)
def test_generated_trees_parse_back(node: Node) -> None:
    raw = b"Subject: generated\r\nMIME-Version: 1.0\r\n" + _entity(node, itertools.count())
    root = parse(raw)
    _check_offsets(root, len(raw))
    if isinstance(node, Message):
        _compare(node, root, raw, (1,), root)  # a single-part message: part 1 is itself
    elif isinstance(node, Multi):
        _compare_multi(node, root, raw, (), root)
    else:
        _compare(node, root, raw, (), root)
    # the structure renders, and BODY is BODYSTRUCTURE without the extension data
    assert render(bodystructure(root, extensible=False)).count(b"(") <= render(
        bodystructure(root)
    ).count(b"(")
