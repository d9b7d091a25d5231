"""SEARCH through the session against a model: hypothesis makes small mailboxes (RFC 2047
headers, quoted-printable and base64 bodies in a few charsets, flags, keywords, dates,
sizes) and random criteria (nested OR, NOT, parenthesised lists, sequence and UID sets),
sends them as a client would (APPEND, SELECT, SEARCH CHARSET UTF-8 with literals) and
compares the answer with a plain evaluation of the same criteria on what was generated.

The model knows the decoded text because it made it: it never decodes anything, so a
decoding bug in the server shows up as a difference.
"""

from __future__ import annotations

import base64
import datetime
import pathlib
import quopri
import re
import tempfile
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from session_helpers import Client

# Letters whose case folds (including ß -> ss and the Greek final sigma), spaces, digits.
ALPHABET = "aAbBsSéÉüÜß\u03c3\u03c2\u03a3 xz09"
CHARSETS = ("utf-8", "iso-8859-1", "iso-8859-7")
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Work", "Junk")
DAYS = [datetime.date(2025, 3, d) for d in (1, 2, 3, 4)]


@attrs.frozen
class Mail:
    fields: tuple[tuple[str, str], ...]  # (name, decoded value) in order
    body: str
    flags: frozenset[str]
    internal: datetime.datetime
    sent: datetime.date | None
    raw: bytes


def encodable(text: str, charset: str) -> bool:
    try:
        text.encode(charset)
    except UnicodeEncodeError:
        return False
    return True


def encoded_word(text: str, charset: str, b: bool) -> str:
    data = text.encode(charset)
    if b:
        return f"=?{charset}?b?{base64.b64encode(data).decode('ascii')}?="
    quoted = "".join(
        chr(c) if chr(c).isalnum() and c < 128 else "_" if c == 32 else f"={c:02X}" for c in data
    )
    return f"=?{charset}?q?{quoted}?="


texts = st.text(ALPHABET, min_size=0, max_size=12)


@st.composite
def mails(draw: Any) -> Mail:
    fields: list[tuple[str, str]] = []
    wire: list[str] = []

    def header(name: str, value: str, *, prefix: str = "", suffix: str = "") -> None:
        charset = draw(st.sampled_from([c for c in CHARSETS if encodable(value, c)] or ["utf-8"]))
        if value and (not value.isascii() or draw(st.booleans())):
            written = encoded_word(value, charset, draw(st.booleans()))
        else:
            written = value
        fields.append((name.lower(), prefix + value + suffix))
        wire.append(f"{name}: {prefix}{written}{suffix}")

    for name in ("From", "To", "Cc", "Bcc"):
        if draw(st.booleans()):
            local = draw(st.sampled_from(["ann", "bob", "cy"]))
            header(name, draw(texts).strip() or "x", suffix=f" <{local}@ex.org>")
    if draw(st.booleans()):
        header("Subject", draw(texts))
    if draw(st.booleans()):
        header("X-Tag", draw(texts))
    sent = draw(st.none() | st.sampled_from(DAYS))
    if sent is not None:
        zone = draw(st.sampled_from(["+0000", "-1100", "+1400"]))
        value = f"{sent.day} {MONTHS[sent.month - 1]} {sent.year} 23:30:00 {zone}"
        fields.append(("date", value))
        wire.append(f"Date: {value}")
    body = draw(texts)
    charset = draw(st.sampled_from([c for c in CHARSETS if encodable(body, c)] or ["utf-8"]))
    encoding = draw(st.sampled_from(["base64", "quoted-printable"]))
    data = body.encode(charset)
    encoded = base64.encodebytes(data) if encoding == "base64" else quopri.encodestring(data)
    for name, value in (
        ("MIME-Version", "1.0"),
        ("Content-Type", f"text/plain; charset={charset}"),
        ("Content-Transfer-Encoding", encoding),
    ):
        fields.append((name.lower(), value))
        wire.append(f"{name}: {value}")
    raw = "\r\n".join(wire).encode("ascii") + b"\r\n\r\n" + encoded.replace(b"\n", b"\r\n")
    internal = datetime.datetime.combine(
        draw(st.sampled_from(DAYS)),
        datetime.time(draw(st.sampled_from([0, 12, 23]))),
        datetime.timezone(datetime.timedelta(hours=draw(st.sampled_from([-5, 0, 9])))),
    )
    flags = frozenset(draw(st.sets(st.sampled_from(FLAGS))))
    return Mail(tuple(fields), body, flags, internal, sent, raw)


# -- criteria: a tree of tuples, rendered to IMAP and evaluated by the model ------------


def needles(mailbox: list[Mail]) -> st.SearchStrategy[str]:
    # Pieces of what is there (so that keys match), and random text.
    pieces = [v for m in mailbox for _, v in m.fields] + [m.body for m in mailbox]

    @st.composite
    def piece(draw: Any) -> str:
        text = draw(st.sampled_from(pieces))
        start = draw(st.integers(0, len(text)))
        return text[start : draw(st.integers(start, min(len(text), start + 4)))]

    return piece().map(lambda s: s.swapcase() if len(s) % 2 else s) | texts


def criteria(mailbox: list[Mail]) -> st.SearchStrategy[tuple[Any, ...]]:
    n = len(mailbox)
    number = st.integers(1, n + 1).map(str) | st.just("*")
    seqset = st.lists(
        st.tuples(number, st.none() | number).map(lambda t: t[0] if t[1] is None else ":".join(t)),
        min_size=1,
        max_size=3,
    ).map(",".join)
    day = st.sampled_from([datetime.date(2025, 2, 28), *DAYS, datetime.date(2025, 3, 5)])
    leaf = st.one_of(
        st.sampled_from(
            [
                "ALL",
                "ANSWERED",
                "DELETED",
                "DRAFT",
                "FLAGGED",
                "SEEN",
                "UNANSWERED",
                "UNDELETED",
                "UNDRAFT",
                "UNFLAGGED",
                "UNSEEN",
                "RECENT",
                "NEW",
                "OLD",
            ]
        ).map(lambda k: (k,)),
        st.tuples(
            st.sampled_from(["FROM", "TO", "CC", "BCC", "SUBJECT", "BODY", "TEXT"]),
            needles(mailbox),
        ),
        st.tuples(
            st.just("HEADER"), st.sampled_from(["X-Tag", "subject", "Date"]), needles(mailbox)
        ),
        st.tuples(
            st.sampled_from(["BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"]), day
        ),
        st.tuples(
            st.sampled_from(["LARGER", "SMALLER"]),
            st.sampled_from(sorted({len(m.raw) + d for m in mailbox for d in (-1, 0, 1)})),
        ),
        st.tuples(
            st.sampled_from(["KEYWORD", "UNKEYWORD"]), st.sampled_from(["$Work", "junk", "Other"])
        ),
        st.tuples(st.just("SEQ"), seqset),
        st.tuples(st.just("UID"), seqset),
    )
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.tuples(st.just("NOT"), inner),
            st.tuples(st.just("OR"), inner, inner),
            st.tuples(st.just("AND"), st.lists(inner, min_size=1, max_size=3).map(tuple)),
        ),
        max_leaves=6,
    )


def render(key: tuple[Any, ...], literals: list[bytes]) -> str:
    """The key in IMAP syntax; strings go as literals ("\\x00" marks where one starts)."""
    name = key[0]
    if name in ("NOT",):
        return "NOT " + render(key[1], literals)
    if name == "OR":
        return f"OR {render(key[1], literals)} {render(key[2], literals)}"
    if name == "AND":
        return "(" + " ".join(render(k, literals) for k in key[1]) + ")"
    if name == "SEQ":
        return key[1]
    if name == "UID":
        return f"UID {key[1]}"
    if name in ("LARGER", "SMALLER"):
        return f"{name} {key[1]}"
    if name in ("KEYWORD", "UNKEYWORD"):
        return f"{name} {key[1]}"
    if isinstance(key[-1], datetime.date):
        d = key[-1]
        return f"{name} {d.day}-{MONTHS[d.month - 1]}-{d.year}"
    if len(key) == 1:
        return name
    literals.append(key[-1].encode("utf-8"))
    field = f" {key[1]}" if name == "HEADER" else ""
    return f"{name}{field} \x00"


def resolve(text: str, largest: int) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        ends = [largest if e == "*" else int(e) for e in part.split(":")]
        out.update(range(min(ends), max(ends) + 1))
    return out


_HEADER_KEYS = {"FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc", "SUBJECT": "subject"}


def holds(haystack: str, needle: str) -> bool:
    return needle.casefold() in haystack.casefold()


def model(key: tuple[Any, ...], mail: Mail, seq: int, uid: int, count: int) -> bool:
    name = key[0]
    flags = {f.casefold() for f in mail.flags}
    simple = {
        "ALL": True,
        "ANSWERED": "\\answered" in flags,
        "DELETED": "\\deleted" in flags,
        "DRAFT": "\\draft" in flags,
        "FLAGGED": "\\flagged" in flags,
        "SEEN": "\\seen" in flags,
        "RECENT": True,  # this session made them all: all are \Recent to it
        "NEW": "\\seen" not in flags,
        "OLD": False,
    }
    if name in simple:
        return simple[name]
    if name.startswith("UN") and name[2:] in simple:
        return not simple[name[2:]]
    if name == "NOT":
        return not model(key[1], mail, seq, uid, count)
    if name == "OR":
        return model(key[1], mail, seq, uid, count) or model(key[2], mail, seq, uid, count)
    if name == "AND":
        return all(model(k, mail, seq, uid, count) for k in key[1])
    if name == "SEQ":
        return seq in resolve(key[1], count)
    if name == "UID":
        return uid in resolve(key[1], count)  # UIDs are 1..count here
    if name == "LARGER":
        return len(mail.raw) > key[1]
    if name == "SMALLER":
        return len(mail.raw) < key[1]
    if name in ("KEYWORD", "UNKEYWORD"):
        return (key[1].casefold() in flags) == (name == "KEYWORD")
    if name in _HEADER_KEYS or name == "HEADER":
        field = _HEADER_KEYS.get(name) or key[1].lower()
        return any(n == field and holds(v, key[-1]) for n, v in mail.fields)
    if name == "BODY":
        return holds(mail.body, key[1])
    if name == "TEXT":
        entries = [f"{n}: {v}" for n, v in mail.fields] + [mail.body]
        return any(holds(e, key[1]) for e in entries)
    day = mail.internal.date() if not name.startswith("SENT") else mail.sent
    if day is None:
        return False
    wanted = key[1]
    kind = name.removeprefix("SENT")
    return {"BEFORE": day < wanted, "ON": day == wanted, "SINCE": day >= wanted}[kind]


def imap_date(when: datetime.datetime) -> str:
    offset = int(when.utcoffset().total_seconds()) // 60  # type: ignore[union-attr]
    sign = "-" if offset < 0 else "+"
    return (
        f"{when.day:2d}-{MONTHS[when.month - 1]}-{when.year} {when:%H:%M:%S} "
        f"{sign}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"
    )


def search(client: Client, tag: str, criterion: tuple[Any, ...], *, uid: bool) -> list[int]:
    literals: list[bytes] = []
    program = render(criterion, literals)
    command = f"{tag} {'UID ' if uid else ''}SEARCH CHARSET UTF-8 {program}".encode()
    pieces = command.split(b"\x00")
    line = pieces[0] + (b"{%d}" % len(literals[0]) if literals else b"")
    rest = [
        literal + piece + (b"{%d}" % len(literals[i + 1]) if i + 1 < len(literals) else b"")
        for i, (literal, piece) in enumerate(zip(literals, pieces[1:], strict=True))
    ]
    answer = client.run(line, *rest)
    found = re.search(rb"\* SEARCH([ 0-9]*)\r\n" + tag.encode() + rb" OK", answer)
    assert found is not None, answer
    return [int(n) for n in found.group(1).split()]


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), mailbox=st.lists(mails(), min_size=1, max_size=5))
def test_search_agrees_with_the_model(data: st.DataObject, mailbox: list[Mail]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        client = Client(pathlib.Path(tmp))
        try:
            for n, mail in enumerate(mailbox):
                flags = " ".join(sorted(mail.flags))
                head = f'p{n} APPEND INBOX ({flags}) "{imap_date(mail.internal)}"'
                answer = client.run(head.encode() + b" {%d}" % len(mail.raw), mail.raw)
                assert b"OK [APPENDUID" in answer, answer
            assert b"OK [READ-WRITE]" in client.run(b"s SELECT INBOX")
            count = len(mailbox)
            for n, criterion in enumerate(
                data.draw(st.lists(criteria(mailbox), min_size=4, max_size=8))
            ):
                expected = [
                    seq
                    for seq, mail in enumerate(mailbox, start=1)
                    if model(criterion, mail, seq, seq, count)
                ]
                assert search(client, f"q{n}", criterion, uid=False) == expected, criterion
                assert search(client, f"u{n}", criterion, uid=True) == expected, criterion
        finally:
            client.close()
