"""SEARCH from the store's index (`ViewIndex`, `sansmail.storage.maildir._imapsearch`) gives
the answers of the evaluation that reads the files (test_search_eval's oracle): the hand-
made mailbox's cases, and hypothesis drawing messages (RFC 2047 headers, charsets,
transfer encodings, multiparts, an encapsulated message) and keys with needles that are
short, empty, case-folded (ß, É), GLOB's specials or the texts' separator. And: the
index is filled once and read without opening a file; expunges, flag changes and a
damaged index leave it right."""

from __future__ import annotations

import base64
import datetime
import pathlib
import quopri
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from session_helpers import ALICE, Where, make_store
from test_search_eval import MAILBOX

from sansmail.imap import (
    SearchAnd,
    SearchDate,
    SearchHeader,
    SearchKey,
    SearchNot,
    SearchOr,
    SearchSimple,
    SearchText,
)
from sansmail.sessions.imapd._messages import ViewIndex
from sansmail.sessions.imapd._search import SearchContext, search
from sansmail.storage.maildir import FlagMode, MaildirAccount, MaildirFolderView
from sansmail.storage.maildir._imapindex import INDEX_NAME
from sansmail.storage.maildir._imapsearch import TEXT_SEPARATOR


def account_at(root: pathlib.Path) -> MaildirAccount:
    return make_store(root).account(ALICE)


def store_all(
    root: pathlib.Path, messages: list[tuple[set[str], datetime.datetime, bytes]]
) -> MaildirFolderView:
    acc = account_at(root)
    for flags, when, raw in messages:
        acc.append("INBOX", raw, sorted(flags), when)
    return acc.select("INBOX")


def both_ways(view: MaildirFolderView, key: SearchKey) -> tuple[list[int], list[int]]:
    """(with the index, reading the files)."""
    indexed = SearchContext(view.messages, view.read, index=ViewIndex(view), uids=view.uids)
    plain = SearchContext(view.messages, view.read)
    return search(key, indexed), search(key, plain)


# -- the hand-made mailbox ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mailbox_view(tmp_path_factory: pytest.TempPathFactory) -> MaildirFolderView:
    root = tmp_path_factory.mktemp("search-index")
    return store_all(root, [(flags, when, raw) for _uid, flags, when, raw in MAILBOX])


def text(name: str, value: str) -> SearchText:
    return SearchText(name=name, value=value)


HAND_MADE = [
    *(text("FROM", v) for v in ("alice", "JÖRG", "jorg@EXAMPLE", "=?iso", "example.org", "")),
    *(text("TO", v) for v in ("alice@example.net", "bob")),
    text("CC", "boss"),
    text("BCC", "SECRET@"),
    *(text("SUBJECT", v) for v in ("café CRÈME", "crème à la carte", "inner", "", "z")),
    SearchHeader(field="x-mailer", value="plain"),
    SearchHeader(field="X-MAILER", value=""),
    SearchHeader(field="Content-Transfer-Encoding", value="base64"),
    SearchHeader(field="X-Absent", value=""),
    SearchHeader(field="Subject", value="Subject"),
    *(
        text("BODY", v)
        for v in ("MÜNCHEN", "12% — see page 3", "=E2=80=94", "grüße", "needle", "an INNER secret")
    ),
    *(text("BODY", v) for v in ("lunch", "Quarterly", "", "e", "u?", "[p]", "*")),
    *(text("TEXT", v) for v in ("Quarterly", "jörg", "lunch", "the inner one", "application/pdf")),
    *(text("TEXT", v) for v in ("needle", "x-mailer: plain", "", "\r\n", TEXT_SEPARATOR)),
    *(
        SearchDate(name=name, date=datetime.date(2025, 6, day))
        for name in ("SENTBEFORE", "SENTON", "SENTSINCE")
        for day in (2, 3, 4)
    ),
    SearchNot(key=text("BODY", "münchen")),
    SearchOr(left=text("FROM", "alice"), right=text("BODY", "inner")),
    SearchAnd(keys=(text("TEXT", "e"), SearchSimple(name="FLAGGED"))),
    SearchAnd(keys=(text("TEXT", "e"), SearchNot(key=SearchSimple(name="ALL")))),
]


@pytest.mark.parametrize("key", HAND_MADE, ids=repr)
def test_the_hand_made_cases_agree(mailbox_view: MaildirFolderView, key: SearchKey) -> None:
    indexed, plain = both_ways(mailbox_view, key)
    assert indexed == plain


def test_the_index_is_filled_once_and_then_reads_no_file(
    where: Where, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = store_all(where, [(flags, when, raw) for _uid, flags, when, raw in MAILBOX])
    read: list[int] = []
    kind = type(view)
    real = kind.contents

    def contents(self: MaildirFolderView, uids: object) -> object:
        wanted = list(uids)  # type: ignore[call-overload]
        read.extend(wanted)
        return real(self, wanted)

    monkeypatch.setattr(kind, "contents", contents)
    monkeypatch.setattr(kind, "read", lambda self, uid: pytest.fail("a file read"))
    index = ViewIndex(view)
    ctx = SearchContext(view.messages, view.read, index=index, uids=view.uids)
    assert search(text("FROM", "example"), ctx) == [1, 2, 3, 4, 5]
    assert read == [1, 2, 3, 4, 5]  # the header fields, once
    assert search(text("SUBJECT", ""), ctx) == [1, 2, 3, 4, 5]
    assert search(text("BODY", "secret"), ctx) == [5]
    assert read == [1, 2, 3, 4, 5] * 2  # the texts, once
    fresh = SearchContext(view.messages, view.read, index=ViewIndex(view), uids=view.uids)
    assert search(text("TEXT", "lunch"), fresh) == [1]
    assert search(SearchDate(name="SENTON", date=datetime.date(2025, 6, 5)), fresh) == [3]
    assert read == [1, 2, 3, 4, 5] * 2


def test_expunged_and_reflagged_messages(tmp_path: pathlib.Path) -> None:
    view = store_all(tmp_path, [(flags, when, raw) for _uid, flags, when, raw in MAILBOX])
    assert both_ways(view, text("TEXT", "example"))[0] == [1, 2, 3, 4, 5]
    view.store_flags([2, 4], ["\\Deleted"], FlagMode.ADD)  # and 3 is \Deleted already
    assert view.expunge() == [2, 3, 4]
    view.sync()
    index = view._index  # type: ignore[attr-defined]
    for table in ("searched", "fields", "texts"):
        column = "rowid" if table == "texts" else "uid"
        kept = {uid for (uid,) in index.conn.execute(f"SELECT {column} FROM {table}")}
        assert kept == {1, 5}, table
    for key in (text("TEXT", "example"), text("FROM", "o"), SearchNot(key=text("BODY", "a"))):
        indexed, plain = both_ways(view, key)
        assert indexed == plain
    view.store_flags([1], ["\\Flagged"], FlagMode.ADD)
    assert both_ways(view, SearchAnd(keys=(SearchSimple(name="FLAGGED"), text("TO", "bob")))) == (
        [1],
        [1],
    )


def test_a_damaged_index_is_rebuilt_and_searched_again(tmp_path: pathlib.Path) -> None:
    acc = account_at(tmp_path)
    for _uid, flags, when, raw in MAILBOX:
        acc.append("INBOX", raw, sorted(flags), when)
    view = acc.select("INBOX")
    assert both_ways(view, text("BODY", "lunch"))[0] == [1]
    acc.close()  # checkpointed: the file is the whole index
    with open(tmp_path / "mail" / "example.test" / "alice" / INDEX_NAME, "r+b") as db:
        db.write(b"this is not an index" * 10)
    fresh = account_at(tmp_path).select("INBOX")
    assert fresh.index_rebuilt
    assert both_ways(fresh, text("BODY", "lunch")) == ([1], [1])


def test_text_after_a_nul_is_found(where: Where) -> None:
    raw = (
        b"Subject: nul\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"before=00the budget after\r\n"
    )
    view = store_all(where, [(set(), _WHEN, raw)])
    for needle in ("the budget", "budget after", "before"):
        assert both_ways(view, text("BODY", needle)) == ([1], [1])


# -- drawn messages and keys --------------------------------------------------------------

_WORDS = [
    *("Straße", "STRASSE", "Élan", "élan", "budget", "Budget?", "a*b", "[x]", "naïve", "日本"),
    "nul\x00budget",  # SQLite reads text as C strings: a NUL must not hide what follows
]
_SAID = [word.replace("\x00", " ") for word in _WORDS]  # IMAP strings hold no NUL
_NEEDLES = st.one_of(
    st.sampled_from([*_SAID, "", "s", "ss", "ß", "é", "?", "*", "[", "\r\n", TEXT_SEPARATOR]),
    st.sampled_from(_SAID).map(lambda w: w[1:4]),
    st.text(alphabet="abcsßSÉé*?[ ", max_size=4),
)


def _encoded_word(text_: str, charset: str, encoding: str) -> str:
    data = text_.encode(charset, errors="replace")
    if encoding == "b":
        payload = base64.b64encode(data).decode("ascii")
    else:
        payload = quopri.encodestring(data, header=True).decode("ascii").replace("=\n", "")
    return f"=?{charset}?{encoding}?{payload}?="


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    words = st.lists(st.sampled_from(_WORDS), min_size=0, max_size=4).map(" ".join)
    subject = draw(words)
    if draw(st.booleans()):
        subject = _encoded_word(
            subject, draw(st.sampled_from(["utf-8", "iso-8859-1"])), draw(st.sampled_from("bq"))
        )
    head = [f"Subject: {subject}", f"From: {draw(words)} <x@example.org>"]
    if draw(st.booleans()):
        head.append(f"X-Note: {draw(words)}")
    if draw(st.booleans()):
        day = draw(st.integers(1, 28))
        head.append(f"Date: Mon, {day} Jun 2025 10:00:00 +0000")
    charset = draw(st.sampled_from(["utf-8", "iso-8859-1"]))
    encoding = draw(st.sampled_from(["8bit", "base64", "quoted-printable"]))
    body_text = draw(words) + "\n" + draw(words) + "\n"
    data = body_text.encode(charset, errors="replace")
    if encoding == "base64":
        data = base64.encodebytes(data)
    elif encoding == "quoted-printable":
        data = quopri.encodestring(data)
    part = (
        f"Content-Type: text/plain; charset={charset}\nContent-Transfer-Encoding: {encoding}\n\n"
    ).encode() + data
    shape = draw(st.sampled_from(["single", "multipart", "encapsulated"]))
    if shape == "single":
        raw = ("\n".join(head) + "\nMIME-Version: 1.0\n").encode() + part
    elif shape == "multipart":
        raw = (
            (
                "\n".join(head)
                + '\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n--b\n'
            ).encode()
            + part
            + b"\n--b\nContent-Type: text/html; charset=utf-8\n\n"
            + f"<p>{draw(words)}</p>\n--b--\n".encode()
        )
    else:
        raw = (
            ("\n".join(head) + "\nMIME-Version: 1.0\nContent-Type: message/rfc822\n\n").encode()
            + f"Subject: {draw(words)}\nMIME-Version: 1.0\n".encode()
            + part
        )
    return raw.replace(b"\n", b"\r\n")


_LEAVES = st.one_of(
    st.builds(
        SearchText,
        name=st.sampled_from(["FROM", "SUBJECT", "BODY", "TEXT"]),
        value=_NEEDLES,
    ),
    st.builds(SearchHeader, field=st.sampled_from(["X-Note", "Subject", "Date"]), value=_NEEDLES),
    st.builds(
        SearchDate,
        name=st.sampled_from(["SENTBEFORE", "SENTON", "SENTSINCE"]),
        date=st.integers(1, 28).map(lambda d: datetime.date(2025, 6, d)),
    ),
    st.sampled_from(["ALL", "SEEN", "UNSEEN"]).map(lambda n: SearchSimple(name=n)),
)
_KEYS = st.recursive(
    _LEAVES,
    lambda children: st.one_of(
        st.builds(SearchNot, key=children),
        st.builds(SearchOr, left=children, right=children),
        st.lists(children, min_size=1, max_size=3).map(lambda ks: SearchAnd(keys=tuple(ks))),
    ),
    max_leaves=5,
)
_WHEN = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    raws=st.lists(messages(), min_size=1, max_size=6),
    keys=st.lists(_KEYS, min_size=1, max_size=6),
    seen=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_drawn_mailboxes_and_keys_agree(
    raws: list[bytes], keys: list[SearchKey], seen: list[bool]
) -> None:
    with tempfile.TemporaryDirectory(prefix="search-drawn-") as root:
        view = store_all(
            pathlib.Path(root),
            [({"\\Seen"} if s else set(), _WHEN, raw) for s, raw in zip(seen, raws, strict=False)],
        )
        for key in keys:
            indexed, plain = both_ways(view, key)
            assert indexed == plain, key
        view.close()
