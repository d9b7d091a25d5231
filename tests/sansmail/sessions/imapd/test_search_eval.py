"""SEARCH evaluation (sansmail.sessions.imapd._search): every key, nesting, sets, and laziness.

A small mailbox of hand-made messages covers the content keys (RFC 2047 headers, base64
and quoted-printable bodies, charsets, attachments, an encapsulated message, a missing
and a broken Date:); a hypothesis test compares `search` with a plain reference
evaluation on random key trees over random flags, sizes, dates and subjects.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail.imap import (
    SearchAnd,
    SearchDate,
    SearchHeader,
    SearchKey,
    SearchKeyword,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSimple,
    SearchSize,
    SearchText,
    SearchUid,
    SequenceSet,
)
from sansmail.sessions.imapd._search import SearchContext, search
from sansmail.storage.maildir import ImapMessage


def crlf(text: str | bytes) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def zone(hours: int) -> datetime.timezone:
    return datetime.timezone(datetime.timedelta(hours=hours))


MUNICH = base64.encodebytes("Grüße aus München!\n".encode()).decode("ascii")
PDF = base64.encodebytes(b"%PDF needle in a binary attachment").decode("ascii")

# (uid, flags, internaldate, content)
MAILBOX: list[tuple[int, set[str], datetime.datetime, bytes]] = [
    (
        3,
        {"\\Seen"},
        # 23:30 on 2 June at -0500 is 3 June in UTC: the day counts in its own zone.
        datetime.datetime(2025, 6, 2, 23, 30, tzinfo=zone(-5)),
        crlf(
            "From: Alice Example <alice@example.net>\n"
            "To: Bob <bob@example.org>\n"
            "Date: Mon, 2 Jun 2025 11:15:00 +0200\n"
            "Subject: Lunch on Thursday?\n"
            "X-Mailer: Plain\n"
            "\n"
            "Are you free for lunch?\n"
        ),
    ),
    (
        5,
        {"\\Flagged", "$Work"},
        datetime.datetime(2025, 6, 3, 0, 30, tzinfo=zone(2)),
        crlf(
            "From: =?iso-8859-1?q?J=F6rg?= <jorg@example.de>\n"
            "To: alice@example.net\n"
            "Date: Tue, 3 Jun 2025 23:59:59 -1100\n"
            "Subject: =?utf-8?q?Caf=C3=A9_cr=C3=A8me_?= =?utf-8?b?w6AgbGEgY2FydGU=?=\n"
            "MIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=utf-8\n"
            "Content-Transfer-Encoding: base64\n"
            "\n" + MUNICH
        ),
    ),
    (
        6,
        {"\\Deleted", "\\Answered"},
        datetime.datetime(2025, 6, 5, 12, 0, tzinfo=zone(0)),
        crlf(
            "From: jane.doe@example.com\n"
            "To: team@example.com\n"
            "Cc: Boss <boss@example.com>\n"
            "Bcc: secret@example.com\n"
            "Date: Thu, 5 Jun 2025 10:00:00 +0000\n"
            "Subject: Quarterly report\n"
            "MIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=utf-8\n"
            "Content-Transfer-Encoding: quoted-printable\n"
            "\n"
            "Totals are up 12% =E2=80=94 see pa=\n"
            "ge 3.\n"
        ),
    ),
    (
        9,
        {"\\Draft"},
        datetime.datetime(2025, 7, 1, 8, 0, tzinfo=zone(0)),
        crlf(
            "From: Carol <carol@example.org>\n"
            "Subject: Attachments\n"
            "MIME-Version: 1.0\n"
            'Content-Type: multipart/mixed; boundary="b"\n'
            "\n"
            "--b\n"
            "Content-Type: text/html; charset=iso-8859-1\n"
            "Content-Transfer-Encoding: 8bit\n"
            "\n"
        )
        + "<p>Grüße</p>\r\n".encode("latin-1")
        + crlf(
            "--b\n"
            'Content-Type: application/pdf; name="x.pdf"\n'
            "Content-Transfer-Encoding: base64\n"
            "\n" + PDF + "--b--\n"
        ),
    ),
    (
        12,
        set(),
        datetime.datetime(2025, 7, 2, 8, 0, tzinfo=zone(0)),
        crlf(
            "From: Bob <bob@example.org>\n"
            "Date: not a date at all\n"
            "Subject: Fwd: inner\n"
            "MIME-Version: 1.0\n"
            "Content-Type: message/rfc822\n"
            "\n"
            "From: Dave <dave@example.org>\n"
            "Subject: The inner one\n"
            "\n"
            "An inner secret.\n"
        ),
    ),
]


class Mailbox:
    """The view: messages in sequence order, and a counter of loads per UID."""

    def __init__(
        self,
        entries: Sequence[tuple[int, set[str], datetime.datetime, bytes]] = MAILBOX,
        *,
        gone: frozenset[int] = frozenset(),
    ) -> None:
        self.content = {uid: raw for uid, _, _, raw in entries}
        self.messages = [
            ImapMessage(uid=uid, flags=frozenset(flags), internaldate=when, size=len(raw))
            for uid, flags, when, raw in entries
        ]
        self.gone = gone
        self.loads: dict[int, int] = {}

    def load(self, uid: int) -> bytes | None:
        self.loads[uid] = self.loads.get(uid, 0) + 1
        return None if uid in self.gone else self.content[uid]

    def search(
        self,
        key: SearchKey,
        recent: frozenset[int] = frozenset(),
        saved: frozenset[int] | None = None,
    ) -> list[int]:
        return search(key, SearchContext(self.messages, self.load, recent, saved))

    def uids(self, key: SearchKey, **kwargs: frozenset[int]) -> list[int]:
        return [self.messages[n - 1].uid for n in self.search(key, **kwargs)]


def simple(name: str) -> SearchSimple:
    return SearchSimple(name=name)


def text(name: str, value: str) -> SearchText:
    return SearchText(name=name, value=value)


def date(name: str, year: int, month: int, day: int) -> SearchDate:
    return SearchDate(name=name, date=datetime.date(year, month, day))


def seqset(text: str) -> SequenceSet:
    return SequenceSet.parse(text)


# -- flags and metadata --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "uids"),
    [
        ("ALL", [3, 5, 6, 9, 12]),
        ("ANSWERED", [6]),
        ("UNANSWERED", [3, 5, 9, 12]),
        ("DELETED", [6]),
        ("UNDELETED", [3, 5, 9, 12]),
        ("DRAFT", [9]),
        ("UNDRAFT", [3, 5, 6, 12]),
        ("FLAGGED", [5]),
        ("UNFLAGGED", [3, 6, 9, 12]),
        ("SEEN", [3]),
        ("UNSEEN", [5, 6, 9, 12]),
        ("RECENT", [3, 12]),
        ("NEW", [12]),  # RECENT and not \Seen
        ("OLD", [5, 6, 9]),
    ],
)
def test_flag_keys(name: str, uids: list[int]) -> None:
    box = Mailbox()
    assert box.uids(simple(name), recent=frozenset({3, 12})) == uids
    assert box.loads == {}


def test_keyword_matches_without_regard_to_case() -> None:
    box = Mailbox()
    assert box.uids(SearchKeyword(keyword="$work")) == [5]
    assert box.uids(SearchKeyword(keyword="$WORK", negated=True)) == [3, 6, 9, 12]
    assert box.uids(SearchKeyword(keyword="NonJunk")) == []


def test_larger_and_smaller_are_strict() -> None:
    box = Mailbox()
    sizes = {m.uid: m.size for m in box.messages}
    size = sizes[6]
    assert box.uids(SearchSize(name="LARGER", size=size)) == [
        u for u, s in sizes.items() if s > size
    ]
    assert box.uids(SearchSize(name="SMALLER", size=size)) == [
        u for u, s in sizes.items() if s < size
    ]
    assert 6 not in box.uids(SearchSize(name="LARGER", size=size))
    assert 6 in box.uids(SearchSize(name="LARGER", size=size - 1))
    assert 6 in box.uids(SearchSize(name="SMALLER", size=size + 1))


@pytest.mark.parametrize(
    ("key", "uids"),
    [
        (date("ON", 2025, 6, 2), [3]),  # 2 June in its own zone (3 June in UTC)
        (date("ON", 2025, 6, 3), [5]),  # 3 June in its own zone (2 June in UTC)
        (date("BEFORE", 2025, 6, 3), [3]),
        (date("BEFORE", 2025, 6, 2), []),
        (date("SINCE", 2025, 6, 3), [5, 6, 9, 12]),
        (date("SINCE", 2025, 7, 2), [12]),
        (date("SINCE", 2025, 7, 3), []),
        (date("SENTON", 2025, 6, 3), [5]),  # the day as written, not the UTC day
        (date("SENTBEFORE", 2025, 6, 3), [3]),
        (date("SENTSINCE", 2025, 6, 3), [5, 6]),
        (date("SENTSINCE", 1970, 1, 1), [3, 5, 6]),  # no Date (9), a broken one (12)
        (SearchNot(key=date("SENTSINCE", 1970, 1, 1)), [9, 12]),
    ],
)
def test_dates(key: SearchKey, uids: list[int]) -> None:
    assert Mailbox().uids(key) == uids


# -- headers and text -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "uids"),
    [
        (text("FROM", "alice"), [3]),
        (text("FROM", "JÖRG"), [5]),  # RFC 2047 in Latin-1, case-folded
        (text("FROM", "jorg@EXAMPLE"), [5]),
        (text("FROM", "=?iso"), []),  # the decoded text is searched, not the raw one
        (text("FROM", "example.org"), [9, 12]),
        (text("TO", "alice@example.net"), [5]),
        (text("TO", "bob"), [3]),
        (text("CC", "boss"), [6]),
        (text("BCC", "SECRET@"), [6]),
        (text("SUBJECT", "café CRÈME"), [5]),
        (text("SUBJECT", "crème à la carte"), [5]),  # adjacent words joined (RFC 2047 §6.2)
        (text("SUBJECT", "inner"), [12]),  # only the message's own header
        (text("SUBJECT", ""), [3, 5, 6, 9, 12]),  # "" matches a present field
        (text("CC", ""), [6]),
        (SearchHeader(field="x-mailer", value="plain"), [3]),
        (SearchHeader(field="X-MAILER", value=""), [3]),
        (SearchHeader(field="Content-Transfer-Encoding", value="base64"), [5]),
        (SearchHeader(field="X-Absent", value=""), []),
        (SearchHeader(field="Subject", value="Subject"), []),  # the value, not the name
    ],
)
def test_header_keys(key: SearchKey, uids: list[int]) -> None:
    box = Mailbox()
    assert box.uids(key) == uids
    assert all(count == 1 for count in box.loads.values())


@pytest.mark.parametrize(
    ("key", "uids"),
    [
        (text("BODY", "MÜNCHEN"), [5]),  # base64, UTF-8
        (text("BODY", "12% — see page 3"), [6]),  # quoted-printable, soft line break
        (text("BODY", "=E2=80=94"), []),
        (text("BODY", "grüße"), [5, 9]),  # a Latin-1 8bit HTML part
        (text("BODY", "needle"), []),  # not in a text part
        (text("BODY", "an INNER secret"), [12]),  # the encapsulated message's body
        (text("BODY", "lunch"), [3]),
        (text("BODY", "Quarterly"), []),  # the header is not the body
        (text("TEXT", "Quarterly"), [6]),
        (text("TEXT", "jörg"), [5]),
        (text("TEXT", "lunch"), [3]),
        (text("TEXT", "the inner one"), [12]),  # headers of the encapsulated message
        (text("TEXT", "application/pdf"), [9]),  # MIME header fields count (RFC 9051)
        (text("TEXT", "needle"), []),
        (text("TEXT", "x-mailer: plain"), [3]),
    ],
)
def test_body_and_text(key: SearchKey, uids: list[int]) -> None:
    box = Mailbox()
    assert box.uids(key) == uids
    assert all(count == 1 for count in box.loads.values())


# -- sets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text_", "seqs"),
    [
        ("1", [1]),
        ("*", [5]),
        ("2:*", [2, 3, 4, 5]),
        ("*:4", [4, 5]),
        ("1,3,5", [1, 3, 5]),
        ("4:2", [2, 3, 4]),
        ("6:9", []),  # past the end: nothing
        ("5:7", [5]),
    ],
)
def test_sequence_sets(text_: str, seqs: list[int]) -> None:
    assert Mailbox().search(SearchSequence(sequence_set=seqset(text_))) == seqs


@pytest.mark.parametrize(
    ("text_", "uids"),
    [
        ("*", [12]),
        ("6:*", [6, 9, 12]),
        ("1:4", [3]),
        ("10:11", []),
        ("12:100", [12]),
        ("100:*", [12]),  # "*" is the largest UID, so 100:* is 12:100
        ("5,9", [5, 9]),
    ],
)
def test_uid_sets(text_: str, uids: list[int]) -> None:
    assert Mailbox().uids(SearchUid(sequence_set=seqset(text_))) == uids


def test_the_saved_result() -> None:
    box = Mailbox()
    saved = SequenceSet(saved=True)
    with pytest.raises(ValueError, match="saved"):
        box.search(SearchSequence(sequence_set=saved))
    assert box.uids(SearchSequence(sequence_set=saved), saved=frozenset({5, 12, 99})) == [5, 12]
    assert box.uids(SearchUid(sequence_set=saved), saved=frozenset({6})) == [6]


def test_an_empty_mailbox() -> None:
    box = Mailbox([])
    for key in (
        simple("ALL"),
        SearchSequence(sequence_set=seqset("*")),
        SearchUid(sequence_set=seqset("1:*")),
    ):
        assert box.search(key) == []


# -- NOT, OR, groups ------------------------------------------------------------------------------


def test_not_or_and_nesting() -> None:
    box = Mailbox()
    unseen_or_flagged = SearchOr(left=simple("SEEN"), right=simple("FLAGGED"))
    assert box.uids(unseen_or_flagged) == [3, 5]
    assert box.uids(SearchNot(key=unseen_or_flagged)) == [6, 9, 12]
    assert box.uids(SearchNot(key=SearchNot(key=unseen_or_flagged))) == [3, 5]
    nested = SearchAnd(
        keys=(
            SearchOr(
                left=text("FROM", "example.org"),
                right=SearchOr(left=text("BODY", "münchen"), right=simple("DELETED")),
            ),
            SearchNot(key=SearchUid(sequence_set=seqset("9"))),
            SearchAnd(keys=(date("SINCE", 2025, 6, 1), SearchNot(key=text("SUBJECT", "report")))),
        )
    )
    assert box.uids(nested) == [5, 12]
    assert box.uids(SearchAnd(keys=(simple("ALL"),))) == [3, 5, 6, 9, 12]


# -- laziness -------------------------------------------------------------------------------------


def test_keys_without_content_load_nothing() -> None:
    box = Mailbox()
    key = SearchAnd(
        keys=(
            SearchOr(left=simple("UNSEEN"), right=SearchSize(name="LARGER", size=10)),
            date("SINCE", 2020, 1, 1),
            SearchNot(key=SearchKeyword(keyword="x")),
            SearchSequence(sequence_set=seqset("1:*")),
            SearchUid(sequence_set=seqset("1:*")),
        )
    )
    assert box.search(key) == [1, 2, 3, 4, 5]
    assert box.loads == {}


def test_cheap_keys_first_so_only_candidates_are_opened() -> None:
    box = Mailbox()
    assert box.uids(SearchAnd(keys=(text("BODY", "e"), simple("FLAGGED")))) == [5]
    assert box.loads == {5: 1}
    box = Mailbox()
    assert box.uids(SearchOr(left=text("TEXT", "nothing"), right=simple("UNDRAFT"))) == [
        3,
        5,
        6,
        12,
    ]
    assert box.loads == {9: 1}


def test_each_message_is_loaded_once_for_many_content_keys() -> None:
    box = Mailbox()
    key = SearchAnd(
        keys=(
            text("FROM", "@"),
            SearchOr(left=text("BODY", "zzz"), right=text("TEXT", "e")),
            SearchHeader(field="Subject", value=""),
            SearchNot(key=date("SENTON", 1999, 1, 1)),
            text("FROM", "EXAMPLE"),
        )
    )
    assert box.uids(key) == [3, 5, 6, 9, 12]
    assert box.loads == {3: 1, 5: 1, 6: 1, 9: 1, 12: 1}


def test_a_message_gone_matches_no_content_key() -> None:
    box = Mailbox(gone=frozenset({5}))
    assert box.uids(text("FROM", "jörg")) == []
    assert box.uids(text("BODY", "münchen")) == []
    assert 5 in box.uids(SearchNot(key=text("BODY", "münchen")))
    assert box.uids(simple("FLAGGED")) == [5]


# -- a reference evaluation -----------------------------------------------------------------------

_FLAGS = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Work", "Later"]
_WORDS = ["alpha", "Beta", "GAMMA", "delta"]
_DAY0 = datetime.date(2025, 1, 1)


def reference(
    key: SearchKey,
    seq: int,
    message: ImapMessage,
    subject: str,
    view: tuple[int, int, frozenset[int]],
) -> bool:
    """SEARCH as RFC 9051 §6.4.4 words it, one message at a time, nothing clever."""

    def again(k: SearchKey) -> bool:
        return reference(k, seq, message, subject, view)

    count, top_uid, recent = view

    if isinstance(key, SearchAnd):
        return all(again(k) for k in key.keys)
    if isinstance(key, SearchOr):
        return again(key.left) or again(key.right)
    if isinstance(key, SearchNot):
        return not again(key.key)
    if isinstance(key, SearchSimple):
        if key.name == "ALL":
            return True
        if key.name in ("RECENT", "OLD"):
            return (message.uid in recent) == (key.name == "RECENT")
        if key.name == "NEW":
            return message.uid in recent and "\\Seen" not in message.flags
        negated = key.name.startswith("UN")
        flag = "\\" + key.name.removeprefix("UN").capitalize()
        return (flag in message.flags) != negated
    if isinstance(key, SearchKeyword):
        has = key.keyword.lower() in {f.lower() for f in message.flags}
        return has != key.negated
    if isinstance(key, SearchSize):
        return message.size > key.size if key.name == "LARGER" else message.size < key.size
    if isinstance(key, SearchDate):
        day = message.internaldate.date()
        return {"BEFORE": day < key.date, "ON": day == key.date, "SINCE": day >= key.date}[key.name]
    if isinstance(key, SearchText):
        return key.value.lower() in subject.lower()
    if isinstance(key, SearchSequence | SearchUid):
        number, largest = (
            (seq, count) if isinstance(key, SearchSequence) else (message.uid, top_uid)
        )
        for low, high in key.sequence_set.ranges:
            low_n = largest if low is None else low
            high_n = largest if high is None else high
            if min(low_n, high_n) <= number <= max(low_n, high_n):
                return True
        return False
    raise AssertionError(key)


_bound = st.one_of(st.none(), st.integers(1, 30))
_sets = st.lists(st.tuples(_bound, _bound), min_size=1, max_size=3).map(
    lambda ranges: SequenceSet(ranges=tuple(ranges))
)
_leaves: st.SearchStrategy[SearchKey] = st.one_of(
    st.sampled_from(
        [
            *("ALL", "SEEN", "UNSEEN", "FLAGGED", "UNFLAGGED", "DELETED", "UNDELETED"),
            *("ANSWERED", "UNANSWERED", "DRAFT", "UNDRAFT", "RECENT", "NEW", "OLD"),
        ]
    ).map(simple),
    st.builds(
        SearchKeyword,
        keyword=st.sampled_from(["$work", "$Work", "later", "Other"]),
        negated=st.booleans(),
    ),
    st.builds(SearchSize, name=st.sampled_from(["LARGER", "SMALLER"]), size=st.integers(0, 200)),
    st.builds(
        SearchDate,
        name=st.sampled_from(["BEFORE", "ON", "SINCE"]),
        date=st.integers(0, 6).map(lambda n: _DAY0 + datetime.timedelta(days=n)),
    ),
    st.builds(SearchText, name=st.just("SUBJECT"), value=st.sampled_from(["", "al", "BETA", "ta"])),
    st.builds(SearchSequence, sequence_set=_sets),
    st.builds(SearchUid, sequence_set=_sets),
)
_keys: st.SearchStrategy[SearchKey] = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.builds(SearchNot, key=children),
        st.builds(SearchOr, left=children, right=children),
        st.lists(children, min_size=1, max_size=3).map(lambda ks: SearchAnd(keys=tuple(ks))),
    ),
    max_leaves=8,
)
_entries = st.lists(
    st.tuples(
        st.integers(1, 3),  # UID gap
        st.sets(st.sampled_from(_FLAGS)),
        st.integers(0, 6 * 24),  # hours after the first day
        st.integers(-12, 14),  # the zone
        st.sampled_from(_WORDS),
        st.integers(0, 150),  # padding, for the size
    ),
    max_size=8,
)


@settings(deadline=None, max_examples=300)
@given(key=_keys, entries=_entries, recent_bits=st.integers(0, 255))
def test_search_agrees_with_a_reference_evaluation(
    key: SearchKey, entries: list[tuple[int, set[str], int, int, str, int]], recent_bits: int
) -> None:
    mailbox: list[tuple[int, set[str], datetime.datetime, bytes]] = []
    uid = 0
    for gap, flags, hours, offset, word, padding in entries:
        uid += gap
        # The same wall-clock hour in different zones: the day is the local one.
        when = datetime.datetime(2025, 1, 1, tzinfo=zone(offset)) + datetime.timedelta(hours=hours)
        raw = crlf(f"Subject: {word}\n\n{'x' * padding}\n")
        mailbox.append((uid, flags, when, raw))
    box = Mailbox(mailbox)
    recent = frozenset(m.uid for i, m in enumerate(box.messages) if recent_bits >> i & 1)
    view = (len(entries), uid, recent)
    expected = [
        seq
        for seq, message in enumerate(box.messages, start=1)
        if reference(key, seq, message, entries[seq - 1][4], view)
    ]
    assert box.search(key, recent=recent) == expected
    assert all(count == 1 for count in box.loads.values())
