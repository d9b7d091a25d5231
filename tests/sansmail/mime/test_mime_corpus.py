"""The corpus: byte-exact ENVELOPE, BODYSTRUCTURE and BODY for tricky messages.

Each message in corpus/ is stored with LF line ends, as a Maildir file is, and read in the
CRLF form the store hands to sansmail.mime. The expected answers are written in IMAP syntax
(see mime_helpers.render) and were checked by hand: sizes and line counts against the
message text, defaults and odd cases against what Dovecot does. The same code reproduces
the published BODYSTRUCTURE/ENVELOPE answers in Dovecot's own test suite byte for byte
(checked while building it; that data is not copied here).

What each message pins down:
- simple: folded Subject unfolded, flowed text/plain, trace fields ignored.
- mixed-attachments: quoted-printable text, base64 attachment with Content-Description and
  disposition parameters, inline image with Content-ID/MD5/Language/Location, preamble
  and epilogue outside every part, "Doe, Jane" and comment display names.
- alternative-in-mixed: multipart/alternative nested in multipart/mixed, 8bit calendar.
- forwarded: message/rfc822 with its own ENVELOPE, a nested multipart BODYSTRUCTURE and
  the line count of the whole encapsulated message, disposition without parameters.
- no-content-type: no MIME-Version, no Content-Type: text/plain us-ascii, and the
  Content-Transfer-Encoding and Content-Disposition of a non-MIME message do not count.
- bad-boundary / multipart-no-boundary: a multipart in which no part is found shows one
  empty text/plain part (Dovecot's answer; the grammar needs one).
- no-close-boundary: the last part runs to the end of the message.
- encoded-words: RFC 2047 words stay encoded in ENVELOPE (RFC 9051 §7.5.2).
- rfc2231: continuations joined, extended values kept encoded under "name*", a gap left
  alone, sections out of order, the joined parameter where section 0 was.
- eight-bit-headers: raw UTF-8 in headers and parameters goes out as literals.
- groups: RFC 5322 Appendix A: groups, an empty group, a source route, comments.
- empty-addresses: empty address fields are NIL; Sender/Reply-To fall back to From (NIL).
- duplicate-headers: the last envelope field counts, the first Content-* field counts.
- header-without-colon: a line without a colon does not end the header block.
- digest: a part of multipart/digest without Content-Type is message/rfc822.
- broken-content-type: a broken media type is text/plain (RFC 2045 §5.2), a broken
  Content-Transfer-Encoding is 7bit.
- cut-header: an outer boundary inside an inner part's header ends that part (empty
  body) and the inner multipart, which never saw its close delimiter.
"""

from __future__ import annotations

import email
import email.policy

import pytest
from mime_helpers import CORPUS, corpus, render

from sansmail.mime import MessagePart, bodystructure, envelope, parse

# name: (ENVELOPE, BODYSTRUCTURE, BODY)
EXPECTED: dict[str, tuple[bytes, bytes, bytes]] = {
    "alternative-in-mixed.eml": (
        (
            b'("Wed, 4 Jun 2025 07:30:00 +0000" "Newsletter" ((NIL NIL "news" '
            b'"example.com")) ((NIL NIL "news" "example.com")) ((NIL NIL "news" '
            b'"example.com")) ((NIL NIL "reader" "example.org")) NIL NIL NIL NIL)'
        ),
        (
            b'((("text" "plain" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 24 1 '
            b'NIL NIL NIL NIL)("text" "html" ("charset" "iso-8859-1") NIL NIL '
            b'"quoted-printable" 57 1 NIL NIL NIL NIL) "alternative" ("boundary" "alt-b") '
            b'NIL NIL NIL)("text" "calendar" ("method" "REQUEST" "charset" "utf-8") NIL '
            b'NIL "8bit" 32 2 NIL NIL NIL NIL) "mixed" ("boundary" "mixed-b") NIL NIL NIL)'
        ),
        (
            b'((("text" "plain" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 24 '
            b'1)("text" "html" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 57 1) '
            b'"alternative")("text" "calendar" ("method" "REQUEST" "charset" "utf-8") NIL '
            b'NIL "8bit" 32 2) "mixed")'
        ),
    ),
    "bad-boundary.eml": (
        (
            b'(NIL "boundary that never occurs" ((NIL NIL "sender" "example.com")) ((NIL '
            b'NIL "sender" "example.com")) ((NIL NIL "sender" "example.com")) ((NIL NIL '
            b'"bob" "example.org")) NIL NIL NIL NIL)'
        ),
        (
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL) '
            b'"mixed" ("boundary" "expected") NIL NIL NIL)'
        ),
        (b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")'),
    ),
    "broken-content-type.eml": (
        (
            b'(NIL "broken media types" ((NIL NIL "sender" "example.com")) ((NIL NIL '
            b'"sender" "example.com")) ((NIL NIL "sender" "example.com")) NIL NIL NIL NIL '
            b"NIL)"
        ),
        (
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 48 0 NIL NIL NIL '
            b'NIL)("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 22 0 NIL NIL NIL '
            b'NIL)("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0 NIL NIL NIL '
            b'NIL) "mixed" ("boundary" "x") NIL NIL NIL)'
        ),
        (
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 48 0)("text" "plain" '
            b'("charset" "us-ascii") NIL NIL "7bit" 22 0)("text" "plain" ("charset" '
            b'"us-ascii") NIL NIL "7bit" 10 0) "mixed")'
        ),
    ),
    "cut-header.eml": (
        (
            b'(NIL "outer boundary inside inner headers" ((NIL NIL "sender" '
            b'"example.com")) ((NIL NIL "sender" "example.com")) ((NIL NIL "sender" '
            b'"example.com")) NIL NIL NIL NIL NIL)'
        ),
        (
            b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL) '
            b'"alternative" ("boundary" "in") NIL NIL NIL)("text" "plain" ("charset" '
            b'"us-ascii") NIL NIL "7bit" 5 0 NIL NIL NIL NIL) "mixed" ("boundary" "out") '
            b"NIL NIL NIL)"
        ),
        (
            b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) '
            b'"alternative")("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0) '
            b'"mixed")'
        ),
    ),
    "digest.eml": (
        (
            b'(NIL "Digest, vol 1" ((NIL NIL "list" "example.org")) ((NIL NIL "list" '
            b'"example.org")) ((NIL NIL "list" "example.org")) NIL NIL NIL NIL NIL)'
        ),
        (
            b'(("message" "rfc822" NIL NIL NIL "7bit" 42 (NIL "first" ((NIL NIL "a" '
            b'"example.org")) ((NIL NIL "a" "example.org")) ((NIL NIL "a" "example.org")) '
            b'NIL NIL NIL NIL NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 '
            b'0 NIL NIL NIL NIL) 3 NIL NIL NIL NIL)("text" "plain" ("charset" "us-ascii") '
            b'NIL NIL "7bit" 13 0 NIL NIL NIL NIL) "digest" ("boundary" "dig") NIL NIL NIL)'
        ),
        (
            b'(("message" "rfc822" NIL NIL NIL "7bit" 42 (NIL "first" ((NIL NIL "a" '
            b'"example.org")) ((NIL NIL "a" "example.org")) ((NIL NIL "a" "example.org")) '
            b'NIL NIL NIL NIL NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 '
            b'0) 3)("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 0) "digest")'
        ),
    ),
    "duplicate-headers.eml": (
        (
            b'(NIL "second subject" ((NIL NIL "second" "example.com")) ((NIL NIL "second" '
            b'"example.com")) ((NIL NIL "second" "example.com")) NIL NIL NIL NIL NIL)'
        ),
        (b'("text" "html" ("charset" "utf-8") NIL NIL "8bit" 99 1 NIL NIL NIL NIL)'),
        (b'("text" "html" ("charset" "utf-8") NIL NIL "8bit" 99 1)'),
    ),
    "eight-bit-headers.eml": (
        (
            b"(NIL {12}\r\nCaf\xc3\xa9 cr\xc3\xa8me (({20}\r\n=?utf-8?q?x?= Ren\xc3\xa9e "
            b'NIL "renee" "example.fr")) (({20}\r\n=?utf-8?q?x?= Ren\xc3\xa9e NIL "renee" '
            b'"example.fr")) (({20}\r\n=?utf-8?q?x?= Ren\xc3\xa9e NIL "renee" '
            b'"example.fr")) (({5}\r\nJos\xc3\xa9 NIL "jose" "example.es")) NIL NIL NIL '
            b"NIL)"
        ),
        (
            b'(("text" "plain" ("charset" "utf-8") NIL NIL "8bit" 10 0 NIL NIL NIL '
            b'NIL)("application" "pdf" ("name" {12}\r\nR\xc3\xa9sum\xc3\xa9.pdf) NIL NIL '
            b'"base64" 8 NIL ("attachment" ("filename" {12}\r\nR\xc3\xa9sum\xc3\xa9.pdf)) '
            b'NIL NIL) "mixed" ("boundary" "eight") NIL NIL NIL)'
        ),
        (
            b'(("text" "plain" ("charset" "utf-8") NIL NIL "8bit" 10 0)("application" '
            b'"pdf" ("name" {12}\r\nR\xc3\xa9sum\xc3\xa9.pdf) NIL NIL "base64" 8) "mixed")'
        ),
    ),
    "empty-addresses.eml": (
        (b'(NIL "no date, no from" NIL NIL NIL NIL NIL NIL NIL NIL)'),
        (b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 64 1 NIL NIL NIL NIL)'),
        (b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 64 1)'),
    ),
    "encoded-words.eml": (
        (
            b'("Fri, 6 Jun 2025 12:00:00 +0200" "=?UTF-8?B?R3LDvMOfZSBhdXMg?= '
            b'=?UTF-8?B?TcO8bmNoZW4=?=" (("=?UTF-8?Q?J=C3=B6rg_M=C3=BCller?=" NIL "joerg" '
            b'"example.de")) (("=?UTF-8?Q?J=C3=B6rg_M=C3=BCller?=" NIL "joerg" '
            b'"example.de")) (("=?UTF-8?Q?J=C3=B6rg_M=C3=BCller?=" NIL "joerg" '
            b'"example.de")) (("=?ISO-8859-1?B?QW5k6Q==?=" NIL "andre" "example.fr")) NIL '
            b"NIL NIL NIL)"
        ),
        (b'("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 18 1 NIL NIL NIL NIL)'),
        (b'("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 18 1)'),
    ),
    "forwarded.eml": (
        (
            b'("Thu, 5 Jun 2025 10:00:00 +0000" "Fwd: Quarterly report" (("Bob" NIL "bob" '
            b'"example.org")) (("Bob" NIL "bob" "example.org")) (("Bob" NIL "bob" '
            b'"example.org")) (("Dave" NIL "dave" "example.org")) NIL NIL NIL NIL)'
        ),
        (
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 1 NIL NIL NIL '
            b'NIL)("message" "rfc822" NIL NIL NIL "7bit" 401 ("Tue, 3 Jun 2025 08:00:00 '
            b'-0400" "Quarterly report" (("Doe, Jane" NIL "jane.doe" "example.com")) '
            b'(("Doe, Jane" NIL "jane.doe" "example.com")) (("Doe, Jane" NIL "jane.doe" '
            b'"example.com")) ((NIL NIL "team" "example.com")) NIL NIL NIL '
            b'"<report-q2@example.com>") (("text" "plain" ("charset" "us-ascii") NIL NIL '
            b'"7bit" 14 0 NIL NIL NIL NIL)("text" "html" ("charset" "us-ascii") NIL NIL '
            b'"7bit" 21 0 NIL NIL NIL NIL) "alternative" ("boundary" "inner") NIL NIL NIL) '
            b'17 NIL ("inline" NIL) NIL NIL) "mixed" ("boundary" "fwd") NIL NIL NIL)'
        ),
        (
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 1)("message" '
            b'"rfc822" NIL NIL NIL "7bit" 401 ("Tue, 3 Jun 2025 08:00:00 -0400" "Quarterly '
            b'report" (("Doe, Jane" NIL "jane.doe" "example.com")) (("Doe, Jane" NIL '
            b'"jane.doe" "example.com")) (("Doe, Jane" NIL "jane.doe" "example.com")) '
            b'((NIL NIL "team" "example.com")) NIL NIL NIL "<report-q2@example.com>") '
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 14 0)("text" "html" '
            b'("charset" "us-ascii") NIL NIL "7bit" 21 0) "alternative") 17) "mixed")'
        ),
    ),
    "groups.eml": (
        (
            b'("Thu, 13 Feb 1969 23:32:54 -0330" "Group and route addresses" (("Mary '
            b'Smith" NIL "mary" "x.test")("John Doe" NIL "jdoe" "one.test")) (("Secretary" '
            b'NIL "secy" "x.test")) (("Mary Smith: Personal Account" NIL "smith" '
            b'"home.test")) ((NIL NIL "A Group" NIL)("Ed Jones" NIL "c" "a.test")(NIL NIL '
            b'"joe" "where.test")("John" NIL "jdoe" "one.test")(NIL NIL NIL NIL)) ((NIL '
            b'NIL "Undisclosed recipients" NIL)(NIL NIL NIL NIL)) ((NIL '
            b'"@route1.test,@route2.test" "user" "final.test")("Pete" NIL "pete" '
            b'"silly.test")) "<1234@local.machine.example> <3456@example.net>" '
            b'"<5678.21-Nov-1997@example.com>")'
        ),
        (b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 37 1 NIL NIL NIL NIL)'),
        (b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 37 1)'),
    ),
    "header-without-colon.eml": (
        (
            b'(NIL "still a header folded" ((NIL NIL "sender" "example.com")) ((NIL NIL '
            b'"sender" "example.com")) ((NIL NIL "sender" "example.com")) NIL NIL NIL NIL '
            b"NIL)"
        ),
        (b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 60 1 NIL NIL NIL NIL)'),
        (b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 60 1)'),
    ),
    "mixed-attachments.eml": (
        (
            b'("Tue, 3 Jun 2025 08:00:00 -0400" "Quarterly report" (("Doe, Jane" NIL '
            b'"jane.doe" "example.com")) (("Doe, Jane" NIL "jane.doe" "example.com")) '
            b'(("Doe, Jane" NIL "jane.doe" "example.com")) ((NIL NIL "team" '
            b'"example.com")) (("Support (EU)" NIL "support" "example.com")("Operations" '
            b'NIL "ops" "example.com")) NIL "<q2-request@example.com>" '
            b'"<report-q2@example.com>")'
        ),
        (
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "quoted-printable" 97 4 NIL '
            b'NIL NIL NIL)("application" "pdf" ("name" "report-q2.pdf") NIL "Q2 report" '
            b'"base64" 188 NIL ("attachment" ("filename" "report-q2.pdf" "size" "120")) '
            b'NIL NIL)("image" "png" NIL "<logo@example.com>" NIL "base64" 100 '
            b'"Q2hlY2sgSW50ZWdyaXR5IQ==" ("inline" ("filename" "logo.png")) ("en-GB" "fr") '
            b'"logo.png") "mixed" ("boundary" "==outer-7c1f==") NIL NIL NIL)'
        ),
        (
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "quoted-printable" 97 '
            b'4)("application" "pdf" ("name" "report-q2.pdf") NIL "Q2 report" "base64" '
            b'188)("image" "png" NIL "<logo@example.com>" NIL "base64" 100) "mixed")'
        ),
    ),
    "multipart-no-boundary.eml": (
        (
            b'(NIL "multipart without a boundary" ((NIL NIL "sender" "example.com")) ((NIL '
            b'NIL "sender" "example.com")) ((NIL NIL "sender" "example.com")) NIL NIL NIL '
            b"NIL NIL)"
        ),
        (
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL) '
            b'"alternative" NIL NIL NIL NIL)'
        ),
        (b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "alternative")'),
    ),
    "no-close-boundary.eml": (
        (
            b'(NIL "truncated multipart" ((NIL NIL "sender" "example.com")) ((NIL NIL '
            b'"sender" "example.com")) ((NIL NIL "sender" "example.com")) ((NIL NIL "bob" '
            b'"example.org")) NIL NIL NIL NIL)'
        ),
        (
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 1 NIL NIL NIL '
            b'NIL)("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 47 1 NIL NIL NIL '
            b'NIL) "mixed" ("boundary" "b1") NIL NIL NIL)'
        ),
        (
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 1)("text" "plain" '
            b'("charset" "us-ascii") NIL NIL "7bit" 47 1) "mixed")'
        ),
    ),
    "no-content-type.eml": (
        (
            b'(NIL "plain old mail" ((NIL NIL "legacy" "example.net")) ((NIL NIL "legacy" '
            b'"example.net")) ((NIL NIL "legacy" "example.net")) ((NIL NIL "bob" '
            b'"example.org")) NIL NIL NIL NIL)'
        ),
        (b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 146 2 NIL NIL NIL NIL)'),
        (b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 146 2)'),
    ),
    "rfc2231.eml": (
        (
            b'(NIL "RFC 2231 parameters" ((NIL NIL "sender" "example.com")) ((NIL NIL '
            b'"sender" "example.com")) ((NIL NIL "sender" "example.com")) NIL NIL NIL NIL '
            b"NIL)"
        ),
        (
            b'(("application" "octet-stream" ("name" "very long file name.txt") NIL NIL '
            b'"7bit" 3 NIL ("attachment" ("filename*" '
            b'"UTF-8\'\'%E2%82%AC%20rates%202025.txt")) NIL NIL)("text" "plain" '
            b'("charset*" "us-ascii\'en\'us-ascii" "title*" "iso-8859-1\'fr\'caf%E9" '
            b'"charset" "us-ascii") NIL NIL "7bit" 3 0 NIL ("inline" ("filename*0" "a" '
            b'"filename*2" "c")) NIL NIL)("message" "external-body" ("access-type" "URL" '
            b'"URL" "ftp://ftp.example.com/file.txt") NIL NIL "7bit" 26 NIL NIL NIL NIL) '
            b'"mixed" ("boundary" "p") NIL NIL NIL)'
        ),
        (
            b'(("application" "octet-stream" ("name" "very long file name.txt") NIL NIL '
            b'"7bit" 3)("text" "plain" ("charset*" "us-ascii\'en\'us-ascii" "title*" '
            b'"iso-8859-1\'fr\'caf%E9" "charset" "us-ascii") NIL NIL "7bit" 3 0)("message" '
            b'"external-body" ("access-type" "URL" "URL" "ftp://ftp.example.com/file.txt") '
            b'NIL NIL "7bit" 26) "mixed")'
        ),
    ),
    "simple.eml": (
        (
            b'("Mon, 2 Jun 2025 11:15:00 +0200" "Lunch on Thursday?" (("Alice Example" NIL '
            b'"alice" "example.net")) (("Alice Example" NIL "alice" "example.net")) '
            b'(("Alice Example" NIL "alice" "example.net")) (("Bob" NIL "bob" '
            b'"example.org")(NIL NIL "carol" "example.org")) NIL NIL NIL '
            b'"<20250602091500.1234@example.net>")'
        ),
        (
            b'("text" "plain" ("charset" "utf-8" "format" "flowed") NIL NIL "7bit" 57 5 '
            b"NIL NIL NIL NIL)"
        ),
        (b'("text" "plain" ("charset" "utf-8" "format" "flowed") NIL NIL "7bit" 57 5)'),
    ),
}


def test_every_corpus_message_has_an_expectation() -> None:
    assert sorted(path.name for path in CORPUS.glob("*.eml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_envelope(name: str) -> None:
    raw = corpus(name)
    assert render(envelope(parse(raw))) == EXPECTED[name][0]
    assert render(envelope(raw)) == EXPECTED[name][0]  # from the bytes, header only


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bodystructure(name: str) -> None:
    assert render(bodystructure(parse(corpus(name)))) == EXPECTED[name][1]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_body(name: str) -> None:
    assert render(bodystructure(parse(corpus(name)), extensible=False)) == EXPECTED[name][2]


def _leaves(part: MessagePart) -> list[MessagePart]:
    if part.multipart:
        return [leaf for child in part.children for leaf in _leaves(child)]
    if part.encapsulated is not None:
        return _leaves(part.encapsulated)
    return [part]


def _email_leaves(message: email.message.Message) -> list[bytes]:
    if message.is_multipart():
        payload = message.get_payload()
        assert isinstance(payload, list)
        return [leaf for sub in payload for leaf in _email_leaves(sub)]
    text = message.get_payload(decode=False)
    assert isinstance(text, str)
    return [text.encode("ascii", "surrogateescape")]


@pytest.mark.parametrize(
    "name",
    [
        "simple.eml",
        "mixed-attachments.eml",
        "alternative-in-mixed.eml",
        "forwarded.eml",
        "encoded-words.eml",
        "digest.eml",
        "groups.eml",
        "duplicate-headers.eml",
    ],
)
def test_leaf_bodies_agree_with_the_email_package(name: str) -> None:
    """An independent oracle for the offsets of well-formed messages: the standard
    library's parser finds the same leaf bodies (so the sizes above are right)."""
    raw = corpus(name)
    ours = [raw[leaf.body_start : leaf.body_end] for leaf in _leaves(parse(raw))]
    theirs = _email_leaves(email.message_from_bytes(raw, policy=email.policy.compat32))
    assert ours == theirs


def test_email_package_differs_on_a_header_line_without_colon() -> None:
    """Where we part ways with the standard library on purpose: it ends the header block
    at a line without a colon; IMAP servers (Dovecot) end it only at the empty line, so
    BODY[HEADER] and BODY[TEXT] split the message where clients expect."""
    raw = corpus("header-without-colon.eml")
    root = parse(raw)
    assert raw[root.body_start : root.body_end].startswith(b"Body after")
    theirs = email.message_from_bytes(raw, policy=email.policy.compat32).get_payload()
    assert isinstance(theirs, str)
    assert theirs.startswith("This line has no colon")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_lf_only_input_gives_the_same_tree(name: str) -> None:
    """The store converts LF files to CRLF, but LF alone must not break us: the tree has
    the same shape and the same content fields, only the sizes shrink by the CRs."""
    crlf_root = parse(corpus(name))
    lf_raw = (CORPUS / name).read_bytes()
    lf_root = parse(lf_raw)

    def shape(part: MessagePart) -> object:
        return (
            part.content_type,
            part.subtype,
            part.params,
            part.encoding,
            part.disposition,
            [shape(child) for child in part.children],
            None if part.encapsulated is None else shape(part.encapsulated),
        )

    assert shape(lf_root) == shape(crlf_root)
    assert envelope(lf_root) == envelope(crlf_root)
