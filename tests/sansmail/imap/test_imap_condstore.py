"""CONDSTORE and QRESYNC (RFC 7162) in the core: the SELECT parameters, FETCH and STORE
modifiers and the MODSEQ search key parse into their meaning and round-trip through
write_command; malformed ones are a BAD; the responses are written byte for byte as the
RFC's examples show them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imap_helpers import commands, one, run, server

from sansmail.imap import (
    Atom,
    Fetch,
    FetchAttribute,
    FetchResponse,
    InvalidCommand,
    Search,
    Select,
    SequenceSet,
    Store,
    Tagged,
    Untagged,
    UntaggedStatus,
    write_command,
)
from sansmail.imap._condstore import (
    MAX_MODSEQ,
    FetchOptions,
    Qresync,
    SelectOptions,
    fetch_modifiers,
    fetch_options,
    highestmodseq,
    modified,
    modseq_item,
    nomodseq,
    select_options,
    select_parameters,
    store_modifiers,
    store_unchangedsince,
    vanished,
)
from sansmail.imap._search import SearchAnd, SearchModseq, SearchSimple
from sansmail.imap._writers import write_response

SETTINGS = settings(max_examples=150, deadline=None)

# -- parsing the RFC's examples -----------------------------------------------------------


def test_select_condstore() -> None:
    event = one(b"a SELECT INBOX (CONDSTORE)\r\n", "authenticated")
    assert isinstance(event, Select)
    assert select_options(event.parameters) == SelectOptions(condstore=True)


def test_select_qresync_with_known_uids_and_seq_match_data() -> None:
    # RFC 7162 §3.2.5's example.
    event = one(
        b"A02 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))\r\n",
        "authenticated",
    )
    assert isinstance(event, Select)
    assert select_options(event.parameters) == SelectOptions(
        qresync=Qresync(
            uidvalidity=67890007,
            modseq=20050715194045000,
            known_uids=SequenceSet.parse("41,43:211,214:541"),
        )
    )
    event = one(
        b"B04 SELECT INBOX (QRESYNC (67890007 90060115194045000 1:29997 (5000,7500,9000,9990:9999"
        b" 15000,22500,27000,29970,29973,29976,29979,29982,29985,29988,29991,29994,29997)))\r\n",
        "authenticated",
    )
    assert isinstance(event, Select)
    options = select_options(event.parameters)
    assert options.qresync is not None
    assert options.qresync.seq_match == (
        SequenceSet.parse("5000,7500,9000,9990:9999"),
        SequenceSet.parse(
            "15000,22500,27000,29970,29973,29976,29979,29982,29985,29988,29991,29994,29997"
        ),
    )


def test_a_lone_known_uid_is_a_set() -> None:
    event = one(b"a EXAMINE INBOX (QRESYNC (1 2 41))\r\n", "authenticated")
    assert isinstance(event, Select)
    q = select_options(event.parameters).qresync
    assert q is not None
    assert q.known_uids == SequenceSet.parse("41")


def test_fetch_changedsince_vanished() -> None:
    event = one(b"s100 UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n")
    assert isinstance(event, Fetch)
    assert fetch_options(event.modifiers, uid=True) == FetchOptions(
        changedsince=12345, vanished=True
    )
    event = one(b"s101 FETCH 1:* (FLAGS MODSEQ) (CHANGEDSINCE 0)\r\n")
    assert isinstance(event, Fetch)
    assert FetchAttribute(name="MODSEQ") in event.items
    assert fetch_options(event.modifiers, uid=False) == FetchOptions(changedsince=0)


def test_store_unchangedsince() -> None:
    event = one(b"d105 STORE 7,5,9 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)\r\n")
    assert isinstance(event, Store)
    assert store_unchangedsince(event.modifiers) == 320162338
    assert event.silent
    assert event.mode == "add"


def test_search_modseq_forms() -> None:
    event = one(b'a SEARCH MODSEQ "/flags/\\\\draft" all 620162338\r\n')
    assert isinstance(event, Search)
    assert event.criteria == SearchModseq(
        modseq=620162338, entry="/flags/\\draft", entry_type="ALL"
    )
    event = one(b"a UID SEARCH UNSEEN MODSEQ 0\r\n")
    assert isinstance(event, Search)
    assert event.criteria == SearchAnd(keys=(SearchSimple(name="UNSEEN"), SearchModseq(modseq=0)))


def test_status_highestmodseq_parses() -> None:
    event = one(b"a STATUS blurdybloop (UIDNEXT HIGHESTMODSEQ)\r\n", "authenticated")
    assert getattr(event, "items", None) == ("UIDNEXT", "HIGHESTMODSEQ")


# -- malformed: BAD, never a traceback ---------------------------------------------------

BAD_INPUT = [
    (b"a SELECT INBOX (CONDSTORE 1)\r\n", "authenticated"),
    (b"a SELECT INBOX (CONDSTORE CONDSTORE)\r\n", "authenticated"),
    (b"a SELECT INBOX (QRESYNC)\r\n", "authenticated"),
    (b"a SELECT INBOX (QRESYNC 5)\r\n", "authenticated"),
    (b"a SELECT INBOX (QRESYNC (1))\r\n", "authenticated"),
    (b"a SELECT INBOX (QRESYNC (0 5))\r\n", "authenticated"),
    (b"a SELECT INBOX (QRESYNC (1 0))\r\n", "authenticated"),
    (b"a SELECT INBOX (QRESYNC (4294967296 5))\r\n", "authenticated"),
    (b"a SELECT INBOX (QRESYNC (1 9223372036854775808))\r\n", "authenticated"),
    (b"a SELECT INBOX (QRESYNC (1 5 1:*))\r\n", "authenticated"),
    (b"a SELECT INBOX (QRESYNC (1 5 (1 2)))\r\n", "authenticated"),
    (b"a SELECT INBOX (QRESYNC (1 5 1:9 (1:2 3)))\r\n", "authenticated"),
    (b"a SELECT INBOX (QRESYNC (1 5 1:9 (1 3) 4))\r\n", "authenticated"),
    (b"a SELECT INBOX (QRESYNC (1 5 1:9 (1 3 4)))\r\n", "authenticated"),
    (b'a SELECT INBOX (QRESYNC (1 5 "1:9"))\r\n', "authenticated"),
    (b"a FETCH 1 FLAGS (CHANGEDSINCE)\r\n", "selected"),
    (b"a FETCH 1 FLAGS (CHANGEDSINCE x)\r\n", "selected"),
    (b"a FETCH 1 FLAGS (CHANGEDSINCE 9223372036854775808)\r\n", "selected"),
    (b"a FETCH 1 FLAGS (CHANGEDSINCE 5 VANISHED)\r\n", "selected"),
    (b"a UID FETCH 1 FLAGS (VANISHED)\r\n", "selected"),
    (b"a UID FETCH 1 FLAGS (CHANGEDSINCE 5 VANISHED 1)\r\n", "selected"),
    (b"a UID FETCH 1 FLAGS (CHANGEDSINCE 5 CHANGEDSINCE 6)\r\n", "selected"),
    (b"a STORE 1 (UNCHANGEDSINCE) FLAGS (\\Seen)\r\n", "selected"),
    (b"a STORE 1 (UNCHANGEDSINCE -1) FLAGS (\\Seen)\r\n", "selected"),
    (b"a STORE 1 (UNCHANGEDSINCE (1)) FLAGS (\\Seen)\r\n", "selected"),
    (b"a SEARCH MODSEQ\r\n", "selected"),
    (b"a SEARCH MODSEQ x\r\n", "selected"),
    (b"a SEARCH MODSEQ 9223372036854775808\r\n", "selected"),
    (b'a SEARCH MODSEQ "/flags/\\\\Seen" 5\r\n', "selected"),
    (b'a SEARCH MODSEQ "/flags/\\\\Seen" everyone 5\r\n', "selected"),
    (b'a SEARCH MODSEQ "/other/x" all 5\r\n', "selected"),
    (b'a SEARCH MODSEQ "/flags/" all 5\r\n', "selected"),
]


@pytest.mark.parametrize(("data", "state"), BAD_INPUT)
def test_malformed_is_bad(data: bytes, state: str) -> None:
    events, out, error, _conn = run([data], conn=server(state), eof=False)
    assert error is None
    [event] = commands(events)
    assert isinstance(event, InvalidCommand)
    assert out.startswith(b"a BAD "), out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.integers(0, 2**64),
            st.sampled_from(["1:*", "*", "5", "1,2", "(", ")", "(1 2)", "x", "0"]),
        ),
        max_size=5,
    ),
    st.sampled_from(["SELECT INBOX (QRESYNC (%s))", "UID FETCH 1 (FLAGS) (%s)"]),
)
def test_random_parameter_values_never_raise(words: list[object], template: str) -> None:
    text = " ".join(str(w) for w in words)
    if template.startswith("UID"):
        text = "CHANGEDSINCE " + text
    data = b"a " + (template % text).encode() + b"\r\n"
    state = "authenticated" if template.startswith("SELECT") else "selected"
    events, _out, error, _conn = run([data], conn=server(state), eof=False)
    assert error is None
    assert len(commands(events)) == 1


# -- round trips ---------------------------------------------------------------------------

nz = st.integers(1, 4_294_967_295)
modseqs = st.integers(1, MAX_MODSEQ)
known_sets = st.lists(st.tuples(nz, nz), min_size=1, max_size=4).map(
    lambda pairs: SequenceSet(ranges=tuple(pairs))
)


@st.composite
def qresyncs(draw: st.DrawFn) -> Qresync:
    known = draw(st.one_of(st.none(), known_sets))
    match = None
    if known is not None and draw(st.booleans()):
        numbers = draw(st.lists(nz, min_size=1, max_size=6, unique=True))
        uids = draw(st.lists(nz, min_size=len(numbers), max_size=len(numbers), unique=True))
        match = (SequenceSet.of(*numbers), SequenceSet.of(*uids))
    return Qresync(uidvalidity=draw(nz), modseq=draw(modseqs), known_uids=known, seq_match=match)


def _canonical(q: Qresync | None) -> Qresync | None:
    # What the parser gives back: the sets as written, normalised through their text.
    if q is None:
        return None
    known = None if q.known_uids is None else SequenceSet.parse(str(q.known_uids))
    return Qresync(
        uidvalidity=q.uidvalidity, modseq=q.modseq, known_uids=known, seq_match=q.seq_match
    )


@SETTINGS
@given(st.booleans(), st.one_of(st.none(), qresyncs()), st.booleans())
def test_select_options_round_trip(
    condstore: bool, qresync: Qresync | None, readonly: bool
) -> None:
    options = SelectOptions(condstore=condstore, qresync=qresync)
    command = Select(
        tag="a1", mailbox="INBOX", readonly=readonly, parameters=select_parameters(options)
    )
    data = write_command(command)
    if not command.parameters:
        assert not data.endswith(b")\r\n")
    [event] = commands(run([data], conn=server("authenticated"), eof=False)[0])
    assert event == command
    assert isinstance(event, Select)
    got = select_options(event.parameters)
    assert got == SelectOptions(condstore=condstore, qresync=_canonical(qresync))


@SETTINGS
@given(st.one_of(st.none(), st.integers(0, MAX_MODSEQ)), st.booleans(), st.booleans())
def test_fetch_options_round_trip(changedsince: int | None, vanished: bool, uid: bool) -> None:
    vanished = vanished and uid and changedsince is not None
    options = FetchOptions(changedsince=changedsince, vanished=vanished)
    command = Fetch(
        tag="f",
        uid=uid,
        sequence_set=SequenceSet.parse("1:*"),
        items=(FetchAttribute(name="FLAGS"), FetchAttribute(name="MODSEQ")),
        modifiers=fetch_modifiers(options),
    )
    [event] = commands(run([write_command(command)], conn=server(), eof=False)[0])
    assert event == command
    assert fetch_options(command.modifiers, uid=uid) == options


@SETTINGS
@given(st.one_of(st.none(), st.integers(0, MAX_MODSEQ)), st.booleans())
def test_store_modifiers_round_trip(unchangedsince: int | None, silent: bool) -> None:
    command = Store(
        tag="s",
        uid=False,
        sequence_set=SequenceSet.parse("1,3:4"),
        mode="add",
        silent=silent,
        flags=("\\Seen",),
        modifiers=store_modifiers(unchangedsince),
    )
    [event] = commands(run([write_command(command)], conn=server(), eof=False)[0])
    assert event == command
    assert store_unchangedsince(command.modifiers) == unchangedsince


entries = st.one_of(
    st.sampled_from(["\\Seen", "\\Answered", "\\Draft", "$Forwarded", "\\Flagged"]),
    st.from_regex(r"[A-Za-z$][A-Za-z0-9_$-]{0,10}", fullmatch=True),
).map(lambda flag: "/flags/" + flag)


@SETTINGS
@given(
    st.integers(0, MAX_MODSEQ),
    st.one_of(st.none(), st.tuples(entries, st.sampled_from(["PRIV", "SHARED", "ALL"]))),
    st.booleans(),
)
def test_search_modseq_round_trip(
    modseq: int, entry: tuple[str, str] | None, with_other_key: bool
) -> None:
    key = SearchModseq(
        modseq=modseq,
        entry=None if entry is None else entry[0],
        entry_type=None if entry is None else entry[1],
    )
    criteria = SearchAnd(keys=(SearchSimple(name="SEEN"), key)) if with_other_key else key
    command = Search(tag="q", uid=True, criteria=criteria)
    [event] = commands(run([write_command(command)], conn=server(), eof=False)[0])
    assert event == command


def test_invalid_values_are_refused_on_construction() -> None:
    with pytest.raises(ValueError):
        Qresync(uidvalidity=0, modseq=1)
    with pytest.raises(ValueError):
        Qresync(uidvalidity=1, modseq=0)
    with pytest.raises(ValueError):
        Qresync(uidvalidity=1, modseq=1, seq_match=(SequenceSet.of(1), SequenceSet.of(2)))
    with pytest.raises(ValueError):
        Qresync(
            uidvalidity=1,
            modseq=1,
            known_uids=SequenceSet.of(1),
            seq_match=(SequenceSet.of(1, 2), SequenceSet.of(2)),
        )
    with pytest.raises(ValueError):
        Qresync(uidvalidity=1, modseq=1, known_uids=SequenceSet.parse("1:*"))
    with pytest.raises(ValueError):
        FetchOptions(vanished=True)
    with pytest.raises(ValueError):
        SearchModseq(modseq=1, entry="/flags/\\Seen")
    with pytest.raises(ValueError):
        SearchModseq(modseq=-1)


# -- responses, byte for byte ------------------------------------------------------------


def test_responses_as_the_rfc_writes_them() -> None:
    def wire(event: object) -> bytes:
        return write_response(event, utf8=False)  # type: ignore[arg-type]

    assert (
        wire(UntaggedStatus(status="OK", code=highestmodseq(715194045007), text="Highest"))
        == b"* OK [HIGHESTMODSEQ 715194045007] Highest\r\n"
    )
    assert (
        wire(UntaggedStatus(status="OK", code=nomodseq(), text="Sorry, this mailbox format"))
        == b"* OK [NOMODSEQ] Sorry, this mailbox format\r\n"
    )
    assert (
        wire(Tagged(tag="d105", status="OK", code=modified([9, 7]), text="Conditional STORE"))
        == b"d105 OK [MODIFIED 7,9] Conditional STORE\r\n"
    )
    assert wire(vanished([41, 43, 44, 45, 116], earlier=True)) == (
        b"* VANISHED (EARLIER) 41,43:45,116\r\n"
    )
    assert wire(vanished([405, 407, 408, 409, 410])) == b"* VANISHED 405,407:410\r\n"
    assert (
        wire(FetchResponse(number=5, items=(modseq_item(320162350),)))
        == b"* 5 FETCH (MODSEQ (320162350))\r\n"
    )
    assert (
        wire(
            FetchResponse(
                number=49,
                items=(
                    ("UID", 117),
                    ("FLAGS", [Atom("\\Seen"), Atom("\\Answered")]),
                    modseq_item(90060115194045001),
                ),
            )
        )
        == b"* 49 FETCH (UID 117 FLAGS (\\Seen \\Answered) MODSEQ (90060115194045001))\r\n"
    )
    assert (
        wire(Untagged(keyword="SEARCH", data=(2, 5, 6, [Atom("MODSEQ"), 917162500])))
        == b"* SEARCH 2 5 6 (MODSEQ 917162500)\r\n"
    )
    assert (
        wire(
            Untagged.esearch(
                tag="a", uid=True, results=[("ALL", SequenceSet.of(1, 2, 3)), ("MODSEQ", 1236)]
            )
        )
        == b'* ESEARCH (TAG "a") UID ALL 1:3 MODSEQ 1236\r\n'
    )
    assert (
        wire(Untagged.status(mailbox="blurdybloop", items=[("HIGHESTMODSEQ", 7011231777)]))
        == b'* STATUS "blurdybloop" (HIGHESTMODSEQ 7011231777)\r\n'
    )
