"""FETCH evaluation (sansmail.sessions.imapd._fetch): every item kind, byte for byte on the wire.

Results go through the response writer (`FetchResponse` -> `write_response`), so what is
pinned is what a client receives. Messages come from the MIME corpus
(tests/sansmail/mime/corpus), stored with LF and handed over in CRLF form, as the store
does. A fake message counts loads and cache writes, so "the content is read at most once
per call" and "the second FETCH of the structures reads no file" are tested, not assumed.
"""

from __future__ import annotations

import base64
import datetime
import pathlib
from collections.abc import Sequence

import attrs
import pytest

from sansmail import mime
from sansmail.imap import (
    Atom,
    BinarySection,
    BinarySize,
    BodySection,
    FetchAttribute,
    FetchItem,
    FetchResponse,
    Literal,
    Section,
    encode_tree,
)
from sansmail.imap._writers import write_response
from sansmail.sessions.imapd._fetch import (
    CACHE_VERSION,
    FetchContext,
    FetchResult,
    decode_cache,
    encode_cache,
    fetch,
    message_flags,
)
from sansmail.storage.maildir import ImapMessage

CORPUS = pathlib.Path(__file__).parents[2] / "mime" / "corpus"
TZ = datetime.timezone(datetime.timedelta(hours=2))
WHEN = datetime.datetime(2025, 6, 2, 11, 15, 0, tzinfo=TZ)


def corpus(name: str) -> bytes:
    return crlf((CORPUS / name).read_bytes())


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class FakeMessage:
    """One stored message: content, cache blob, and counters of what FETCH touched."""

    def __init__(
        self,
        raw: bytes | None,
        *,
        flags: Sequence[str] = (),
        uid: int = 7,
        cache: bytes | None = None,
    ) -> None:
        self.raw = raw
        self.cache = cache
        self.loads = 0
        self.cache_writes = 0
        self.message = ImapMessage(
            uid=uid,
            flags=frozenset(flags),
            internaldate=WHEN,
            size=len(raw) if raw is not None else 0,
        )

    def load(self) -> bytes | None:
        self.loads += 1
        return self.raw

    def get_cache(self) -> bytes | None:
        return self.cache

    def set_cache(self, blob: bytes) -> None:
        self.cache_writes += 1
        self.cache = blob

    def context(self, *, rev2: bool = False) -> FetchContext:
        return FetchContext(self.message, self.load, self.get_cache, self.set_cache, rev2)

    def fetch(self, *items: FetchItem) -> FetchResult:
        return fetch(items, self.context())

    def wire(self, *items: FetchItem, utf8: bool = False) -> bytes:
        result = self.fetch(*items)
        assert result.error is None
        return write_response(FetchResponse(number=1, items=result.items), utf8=utf8)


def attr(name: str) -> FetchAttribute:
    return FetchAttribute(name=name)


def body(
    part: tuple[int, ...] = (),
    text: str | None = None,
    fields: tuple[str, ...] = (),
    partial: tuple[int, int] | None = None,
    peek: bool = True,
) -> BodySection:
    return BodySection(
        section=Section(part=part, text=text, fields=fields), partial=partial, peek=peek
    )


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


SIMPLE = corpus("simple.eml")
SIMPLE_HEADER, _, SIMPLE_BODY = SIMPLE.partition(b"\r\n\r\n")
SIMPLE_HEADER += b"\r\n\r\n"
MIXED = corpus("mixed-attachments.eml")


# -- metadata items ----------------------------------------------------------------------


def test_flags_system_first_in_dovecot_order_then_keywords_sorted() -> None:
    msg = FakeMessage(SIMPLE, flags=["Work", "\\Seen", "$Junk", "\\Draft", "\\Answered"])
    assert (
        msg.wire(attr("FLAGS")) == b"* 1 FETCH (FLAGS (\\Answered \\Seen \\Draft $Junk Work))\r\n"
    )
    assert msg.loads == 0


def test_message_flags_are_atoms_and_empty_flags_an_empty_list() -> None:
    assert message_flags(frozenset()) == []
    flags = message_flags(frozenset({"\\Flagged", "\\Deleted"}))
    assert flags == ["\\Flagged", "\\Deleted"]
    assert all(isinstance(flag, Atom) for flag in flags)
    assert FakeMessage(SIMPLE).wire(attr("FLAGS")) == b"* 1 FETCH (FLAGS ())\r\n"


def test_uid_size_internaldate_in_the_order_asked_without_loading() -> None:
    msg = FakeMessage(SIMPLE)
    assert msg.wire(attr("RFC822.SIZE"), attr("INTERNALDATE"), attr("UID")) == (
        b'* 1 FETCH (RFC822.SIZE 565 INTERNALDATE " 2-Jun-2025 11:15:00 +0200" UID 7)\r\n'
    )
    assert msg.loads == 0
    assert msg.cache_writes == 0


def test_modseq_only_when_the_message_has_one() -> None:
    msg = FakeMessage(SIMPLE)
    assert msg.wire(attr("UID"), attr("MODSEQ")) == b"* 1 FETCH (UID 7)\r\n"
    ctx = attrs.evolve(msg.context(), modseq=42)
    result = fetch([attr("UID"), attr("MODSEQ")], ctx)
    assert result.items == (("UID", 7), ("MODSEQ", [42]))


# -- structures and the cache --------------------------------------------------------------

SIMPLE_ENVELOPE = (
    b'("Mon, 2 Jun 2025 11:15:00 +0200" "Lunch on Thursday?" '
    b'(("Alice Example" NIL "alice" "example.net")) '
    b'(("Alice Example" NIL "alice" "example.net")) '
    b'(("Alice Example" NIL "alice" "example.net")) '
    b'(("Bob" NIL "bob" "example.org")(NIL NIL "carol" "example.org")) '
    b'NIL NIL NIL "<20250602091500.1234@example.net>")'
)
SIMPLE_BODY_TYPE = b'"text" "plain" ("charset" "utf-8" "format" "flowed") NIL NIL "7bit" 57 5'


def test_envelope_body_bodystructure_byte_exact() -> None:
    msg = FakeMessage(SIMPLE)
    assert msg.wire(attr("ENVELOPE"), attr("BODY"), attr("BODYSTRUCTURE")) == (
        b"* 1 FETCH (ENVELOPE "
        + SIMPLE_ENVELOPE
        + b" BODY ("
        + SIMPLE_BODY_TYPE
        + b") BODYSTRUCTURE ("
        + SIMPLE_BODY_TYPE
        + b" NIL NIL NIL NIL))\r\n"
    )
    assert msg.loads == 1
    assert msg.cache_writes == 1


def test_structures_come_from_the_cache_on_the_second_call() -> None:
    msg = FakeMessage(MIXED)
    items = (attr("FLAGS"), attr("ENVELOPE"), attr("BODYSTRUCTURE"))
    first = msg.wire(*items)
    assert (msg.loads, msg.cache_writes) == (1, 1)
    assert decode_cache(msg.cache) == [
        CACHE_VERSION,
        mime.envelope(mime.parse(MIXED)),
        mime.bodystructure(mime.parse(MIXED)),
        mime.bodystructure(mime.parse(MIXED), extensible=False),
    ]
    for _ in range(3):
        assert msg.wire(*items) == first
        assert msg.wire(attr("BODY")) == msg.wire(attr("BODY"))
    assert (msg.loads, msg.cache_writes) == (1, 1)


def test_the_cache_is_trusted_not_recomputed() -> None:
    # Proof that the answer is the cache's: a doctored blob is what the client gets.
    envelope: list[object] = [None] * 10
    envelope[1] = b"from the cache"
    blob = encode_cache(envelope, (b"x",), (b"y",))  # type: ignore[arg-type]
    msg = FakeMessage(SIMPLE, cache=blob)
    assert msg.wire(attr("ENVELOPE"), attr("BODY")) == (
        b'* 1 FETCH (ENVELOPE (NIL "from the cache" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' BODY ("y"))\r\n'
    )
    assert msg.loads == 0


@pytest.mark.parametrize(
    "blob",
    [
        b"not json",
        encode_tree([1, [None] * 10, (b"x",), (b"y",)]),  # the first format
        encode_cache([None] * 10, (b"x",), (b"y",)).replace(b"SMC\x02", b"SMC\x03", 1),
        encode_cache([None] * 10, (b"x",), (b"y",))[:-3],
        encode_cache((None,), (b"x",), (b"y",)),
        encode_tree(b"something else"),
    ],
)
def test_a_cache_blob_of_another_format_is_recomputed(blob: bytes) -> None:
    msg = FakeMessage(SIMPLE, cache=blob)
    assert msg.wire(attr("ENVELOPE")) == b"* 1 FETCH (ENVELOPE " + SIMPLE_ENVELOPE + b")\r\n"
    assert (msg.loads, msg.cache_writes) == (1, 1)
    cached = decode_cache(msg.cache)
    assert cached is not None
    assert cached[0] == CACHE_VERSION


def test_content_loaded_once_per_call_whatever_the_items() -> None:
    msg = FakeMessage(MIXED)
    msg.fetch(
        attr("BODYSTRUCTURE"),
        body(),
        body((1,)),
        body(text="HEADER"),
        attr("RFC822.TEXT"),
        BinarySection(part=(2,)),
        BinarySize(part=(3,)),
        attr("ENVELOPE"),
    )
    assert msg.loads == 1
    assert msg.cache_writes == 1


# -- BODY[section] -------------------------------------------------------------------------


def test_whole_message_and_the_rfc822_forms() -> None:
    msg = FakeMessage(SIMPLE)
    assert msg.wire(body()) == b"* 1 FETCH (BODY[] " + literal(SIMPLE) + b")\r\n"
    assert msg.wire(attr("RFC822")) == b"* 1 FETCH (RFC822 " + literal(SIMPLE) + b")\r\n"
    assert msg.wire(attr("RFC822.HEADER"), attr("RFC822.TEXT")) == (
        b"* 1 FETCH (RFC822.HEADER "
        + literal(SIMPLE_HEADER)
        + b" RFC822.TEXT "
        + literal(SIMPLE_BODY)
        + b")\r\n"
    )
    assert msg.wire(body(text="HEADER")) == (
        b"* 1 FETCH (BODY[HEADER] " + literal(SIMPLE_HEADER) + b")\r\n"
    )
    assert (
        msg.wire(body(text="TEXT")) == b"* 1 FETCH (BODY[TEXT] " + literal(SIMPLE_BODY) + b")\r\n"
    )
    # Part 1 of a single-part message is its body (RFC 9051 §6.4.5).
    assert msg.wire(body((1,))) == b"* 1 FETCH (BODY[1] " + literal(SIMPLE_BODY) + b")\r\n"


def test_parts_mime_headers_and_header_fields_of_a_multipart() -> None:
    msg = FakeMessage(MIXED)
    text_part = (
        b"Hello team,\r\n\r\nThe report is attached. Totals are up 12% =E2=80=94 see page 3.=20"
        b"\r\nRegards,\r\nJane"
    )
    assert msg.wire(body((1,))) == b"* 1 FETCH (BODY[1] " + literal(text_part) + b")\r\n"
    assert msg.wire(body((1,), "MIME")) == (
        b"* 1 FETCH (BODY[1.MIME] "
        + literal(
            b'Content-Type: text/plain; charset="us-ascii"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        )
        + b")\r\n"
    )
    assert msg.wire(body(text="HEADER.FIELDS", fields=("subject", "FROM"))) == (
        b"* 1 FETCH (BODY[HEADER.FIELDS (subject FROM)] "
        + literal(b'From: "Doe, Jane" <jane.doe@example.com>\r\nSubject: Quarterly report\r\n\r\n')
        + b")\r\n"
    )
    not_fields = msg.fetch(
        body(text="HEADER.FIELDS.NOT", fields=("Content-Type", "Message-ID", "In-Reply-To", "Cc"))
    )
    assert not_fields.items == (
        (
            "BODY[HEADER.FIELDS.NOT (Content-Type Message-ID In-Reply-To Cc)]",
            Literal(
                b'From: "Doe, Jane" <jane.doe@example.com>\r\nTo: team@example.com\r\n'
                b"Date: Tue, 3 Jun 2025 08:00:00 -0400\r\nSubject: Quarterly report\r\n"
                b"MIME-Version: 1.0\r\n\r\n"
            ),
        ),
    )


def test_sections_of_an_encapsulated_message() -> None:
    msg = FakeMessage(corpus("forwarded.eml"))
    assert msg.wire(body((2,), "HEADER.FIELDS", ("Subject",))) == (
        b"* 1 FETCH (BODY[2.HEADER.FIELDS (Subject)] "
        + literal(b"Subject: Quarterly report\r\n\r\n")
        + b")\r\n"
    )
    assert msg.wire(body((2, 1))) == b'* 1 FETCH (BODY[2.1] "Totals are up.")\r\n'


@pytest.mark.parametrize(
    "item",
    [
        body((9,)),
        body((1, 2)),  # (1, 1) is part 1 itself: a leaf's only part (RFC 9051 §6.4.5)
        body((2, 3)),
        body((1,), "HEADER"),
        body((1,), "TEXT"),
        body((9,), "MIME"),
        body((1,), "HEADER.FIELDS", ("From",)),
    ],
)
def test_a_missing_part_is_an_empty_string(item: BodySection) -> None:
    name = item.response_name.encode()
    assert FakeMessage(MIXED).wire(item) == b"* 1 FETCH (" + name + b' "")\r\n'


def test_header_fields_that_are_absent_give_the_empty_line() -> None:
    assert FakeMessage(SIMPLE).wire(body(text="HEADER.FIELDS", fields=("X-None",))) == (
        b"* 1 FETCH (BODY[HEADER.FIELDS (X-None)] {2}\r\n\r\n)\r\n"
    )


@pytest.mark.parametrize(
    ("partial", "expected"),
    [
        ((0, 11), b'"Return-Path"'),
        ((7, 4), b'"Path"'),
        ((0, 1), b'"R"'),
        ((560, 100), literal(SIMPLE[560:])),  # runs past the end: cut short
        ((564, 1), literal(b"\n")),  # the last octet
        ((565, 1), b'""'),  # origin at the end
        ((10_000, 5), b'""'),  # origin past the end
        ((0, 565), literal(SIMPLE)),
        ((0, 2**63 - 1), literal(SIMPLE)),
    ],
)
def test_partial_ranges_at_the_edges(partial: tuple[int, int], expected: bytes) -> None:
    origin = b"%d" % partial[0]
    assert FakeMessage(SIMPLE).wire(body(partial=partial)) == (
        b"* 1 FETCH (BODY[]<" + origin + b"> " + expected + b")\r\n"
    )


def test_a_partial_of_zero_octets_cannot_be_asked() -> None:
    # RFC 9051 §9: the count is nz-number64, so "<0.0>" never reaches FETCH.
    with pytest.raises(ValueError):
        body(partial=(0, 0))


def test_partial_of_a_section_counts_from_the_section() -> None:
    assert FakeMessage(MIXED).wire(body((1,), partial=(6, 4)), body((1,), partial=(3000, 4))) == (
        b'* 1 FETCH (BODY[1]<6> "team" BODY[1]<3000> "")\r\n'
    )


def test_eight_bit_and_long_data_go_as_literals_short_clean_text_quoted() -> None:
    msg = FakeMessage(corpus("eight-bit-headers.eml"))
    subject = msg.fetch(body(text="HEADER.FIELDS", fields=("Subject",), partial=(9, 5)))
    assert subject.items == (("BODY[HEADER.FIELDS (Subject)]<9>", Literal("Café".encode())),)
    # Even where UTF-8 could be quoted (IMAP4rev2), section data goes as a literal.
    assert msg.wire(body(text="HEADER.FIELDS", fields=("Subject",), partial=(9, 5)), utf8=True) == (
        b"* 1 FETCH (BODY[HEADER.FIELDS (Subject)]<9> {5}\r\nCaf\xc3\xa9)\r\n"
    )
    long_ascii = b"Subject: " + b"x" * 2000 + b"\r\n\r\nbody\r\n"
    result = FakeMessage(long_ascii).fetch(body(partial=(9, 1025)), body(partial=(9, 1024)))
    assert [type(value) for _, value in result.items] == [Literal, bytes]


# -- BINARY --------------------------------------------------------------------------------

PDF = base64.b64decode(
    b"JVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2cvUGFnZXMgMiAwIFI+PgplbmRv"
    b"YmoKMiAwIG9iago8PC9UeXBlL1BhZ2VzL0tpZHNbXS9Db3VudCAwPj4KZW5kb2JqCnRyYWlsZXIK"
    b"PDwvUm9vdCAxIDAgUj4+CiUlRU9GCg=="
)
PNG = base64.b64decode(
    b"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGA"
    b"hKmMIQAAAABJRU5ErkJggg=="
)
QP_TEXT = (
    b"Hello team,\r\n\r\nThe report is attached. Totals are up 12% \xe2\x80\x94 see page 3. "
    b"\r\nRegards,\r\nJane"
)


def test_binary_of_base64_and_quoted_printable() -> None:
    msg = FakeMessage(MIXED)
    assert msg.wire(BinarySection(part=(2,), peek=True)) == (
        b"* 1 FETCH (BINARY[2] " + literal(PDF) + b")\r\n"
    )
    assert msg.wire(BinarySection(part=(1,), peek=True)) == (
        b"* 1 FETCH (BINARY[1] " + literal(QP_TEXT) + b")\r\n"
    )
    # NUL in BINARY data: a literal8 (RFC 3516 §4.2).
    assert b"\0" in PNG
    assert msg.wire(BinarySection(part=(3,), peek=True)) == (
        b"* 1 FETCH (BINARY[3] ~" + literal(PNG) + b")\r\n"
    )
    assert msg.wire(BinarySize(part=(1,)), BinarySize(part=(2,)), BinarySize(part=(3,))) == (
        b"* 1 FETCH (BINARY.SIZE[1] %d BINARY.SIZE[2] %d BINARY.SIZE[3] %d)\r\n"
        % (len(QP_TEXT), len(PDF), len(PNG))
    )


def test_binary_partial_counts_decoded_octets() -> None:
    msg = FakeMessage(MIXED)
    assert msg.wire(BinarySection(part=(2,), partial=(1, 3), peek=True)) == (
        b'* 1 FETCH (BINARY[2]<1> "PDF")\r\n'
    )
    assert msg.wire(BinarySection(part=(3,), partial=(len(PNG), 3), peek=True)) == (
        b'* 1 FETCH (BINARY[3]<%d> "")\r\n' % len(PNG)
    )


def test_binary_of_the_whole_message_and_of_a_missing_part() -> None:
    msg = FakeMessage(SIMPLE)
    assert msg.wire(BinarySection(peek=True), BinarySize()) == (
        b"* 1 FETCH (BINARY[] " + literal(SIMPLE) + b" BINARY.SIZE[] 565)\r\n"
    )
    assert msg.wire(BinarySection(part=(4,), peek=True), BinarySize(part=(4,))) == (
        b'* 1 FETCH (BINARY[4] "" BINARY.SIZE[4] 0)\r\n'
    )


UUENCODED = crlf(
    b"Subject: old\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
    b"--b\nContent-Type: text/plain\n\nhi\n"
    b"--b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: x-uuencode\n\n"
    b"begin 644 f\n#86)C\n`\nend\n--b--\n"
)


@pytest.mark.parametrize(
    "item", [BinarySection(part=(2,), peek=True), BinarySection(part=(2,)), BinarySize(part=(2,))]
)
def test_binary_of_an_unknown_encoding_is_an_error(item: FetchItem) -> None:
    msg = FakeMessage(UUENCODED)
    result = msg.fetch(attr("UID"), item)
    assert result == FetchResult(items=(), set_seen=False, error="UNKNOWN-CTE")
    # The other parts still decode, and BODY[2] is the part as it is.
    assert msg.fetch(BinarySection(part=(1,), peek=True)).items == (("BINARY[1]", b"hi"),)
    assert msg.fetch(body((2,))).items[0][1] == Literal(b"begin 644 f\r\n#86)C\r\n`\r\nend")


# -- \Seen -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "sets_seen"),
    [
        (body(peek=False), True),
        (body((1,), "MIME", peek=False), True),
        (body(partial=(0, 5), peek=False), True),
        (body(), False),
        (attr("RFC822"), True),
        (attr("RFC822.TEXT"), True),
        (attr("RFC822.HEADER"), False),
        (BinarySection(part=(1,)), True),
        (BinarySection(part=(1,), peek=True), False),
        (BinarySize(part=(1,)), False),
        (attr("BODYSTRUCTURE"), False),
        (attr("ENVELOPE"), False),
        (attr("BODY"), False),
        (attr("FLAGS"), False),
        (body((9,), peek=False), True),  # an empty section is still a fetch of the body
    ],
)
def test_set_seen_for_non_peek_content_whatever_flags_the_view_holds(
    item: FetchItem, sets_seen: bool
) -> None:
    assert FakeMessage(MIXED).fetch(item).set_seen is sets_seen
    # The view's \\Seen may be stale (another session took it away): the session asks
    # the store before it writes, so the evaluation says what the fetch wants.
    assert FakeMessage(MIXED, flags=["\\Seen"]).fetch(item).set_seen is sets_seen
    assert FakeMessage(MIXED, flags=["\\Flagged"]).fetch(item, attr("UID")).set_seen is sets_seen


# -- a message expunged meanwhile -------------------------------------------------------------


def test_a_message_gone_keeps_its_metadata_and_gets_nil_content() -> None:
    msg = FakeMessage(None, flags=["\\Flagged"])
    result = msg.fetch(attr("FLAGS"), body(peek=False), attr("ENVELOPE"), BinarySize(part=(1,)))
    assert result.gone
    assert not result.set_seen
    assert result.error is None
    assert write_response(FetchResponse(number=3, items=result.items), utf8=False) == (
        b"* 3 FETCH (FLAGS (\\Flagged) BODY[] NIL ENVELOPE NIL BINARY.SIZE[1] NIL)\r\n"
    )
    assert msg.loads == 1
    assert msg.cache_writes == 0


def test_a_message_gone_still_answers_structures_from_the_cache() -> None:
    present = FakeMessage(SIMPLE)
    present.fetch(attr("ENVELOPE"))
    gone = FakeMessage(None, cache=present.cache)
    result = gone.fetch(attr("ENVELOPE"), attr("UID"))
    assert not result.gone
    assert gone.loads == 0
    assert write_response(FetchResponse(number=1, items=result.items), utf8=False) == (
        b"* 1 FETCH (ENVELOPE " + SIMPLE_ENVELOPE + b" UID 7)\r\n"
    )


# -- the whole corpus ----------------------------------------------------------------------------

ALL_ITEMS: tuple[FetchItem, ...] = (
    attr("UID"),
    attr("FLAGS"),
    attr("INTERNALDATE"),
    attr("RFC822.SIZE"),
    attr("ENVELOPE"),
    attr("BODY"),
    attr("BODYSTRUCTURE"),
    attr("RFC822.HEADER"),
    body(),
    body(text="TEXT"),
    body((1,)),
    body((1,), "MIME"),
    body((2,), partial=(0, 10)),
    body(text="HEADER.FIELDS", fields=("From", "To")),
)


@pytest.mark.parametrize("name", sorted(path.name for path in CORPUS.glob("*.eml")))
def test_every_corpus_message_fetches_the_same_from_the_cache(name: str) -> None:
    raw = corpus(name)
    msg = FakeMessage(raw)
    first = msg.wire(*ALL_ITEMS)
    assert (msg.loads, msg.cache_writes) == (1, 1)
    root = mime.parse(raw)
    result = msg.fetch(attr("ENVELOPE"), attr("BODYSTRUCTURE"), attr("BODY"), body())
    assert [value for _, value in result.items] == [
        mime.envelope(root),
        mime.bodystructure(root),
        mime.bodystructure(root, extensible=False),
        Literal(raw),
    ]
    assert msg.wire(*ALL_ITEMS) == first
    structures_only = FakeMessage(None, cache=msg.cache)
    assert structures_only.wire(attr("ENVELOPE"), attr("BODYSTRUCTURE")) == msg.wire(
        attr("ENVELOPE"), attr("BODYSTRUCTURE")
    )
    assert msg.cache_writes == 1


def test_rev2_sessions_get_the_same_answers() -> None:
    msg = FakeMessage(MIXED)
    items = (attr("RFC822"), attr("RFC822.HEADER"), BinarySection(part=(2,)), attr("ENVELOPE"))
    assert fetch(items, msg.context(rev2=True)) == fetch(items, msg.context(rev2=False))


def test_an_unknown_item_type_is_a_programming_error() -> None:
    class Strange(FetchItem):
        pass

    with pytest.raises(TypeError):
        FakeMessage(SIMPLE).fetch(Strange())
