"""Property tests: parse(write(command)) == command for random commands, the writer's
output of random responses parses back, any chunking gives the same events, and random
octets only ever raise RemoteProtocolError."""

from __future__ import annotations

import base64
import datetime

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from imap_helpers import commands, normalize, parse_response, run, server

from sansmail import SERVER
from sansmail.imap import (
    DATE_KEYS,
    LIST_RETURN_OPTIONS,
    LIST_SELECTION_OPTIONS,
    SEARCH_RETURN_OPTIONS,
    SIMPLE_ATTRIBUTES,
    SIMPLE_KEYS,
    SIZE_KEYS,
    STATUS_ITEMS,
    TEXT_KEYS,
    Append,
    Atom,
    Authenticate,
    BinarySection,
    BinarySize,
    BodySection,
    Capability,
    Check,
    Close,
    Command,
    Compress,
    Connection,
    Continuation,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchAttribute,
    FetchItem,
    FetchResponse,
    Id,
    Idle,
    List,
    Literal,
    Login,
    Logout,
    Lsub,
    MailboxName,
    Move,
    Namespace,
    Noop,
    Rename,
    ResponseCode,
    Search,
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
    Section,
    Select,
    SequenceSet,
    Stage,
    StartTLS,
    Status,
    Store,
    Subscribe,
    Tagged,
    UidExpunge,
    Unselect,
    Unsubscribe,
    Untagged,
    UntaggedStatus,
    Value,
    write_command,
)
from sansmail.imap._grammar import ATOM_CHARS, TAG_CHARS
from sansmail.imap._state import ALLOWED
from sansmail.imap._writers import write_response

SETTINGS = settings(deadline=None, max_examples=250, suppress_health_check=[HealthCheck.too_slow])

# --- strategies: the parts --------------------------------------------------------------------

tags = st.from_regex(f"[{TAG_CHARS}]{{1,8}}", fullmatch=True)
atom_text = st.from_regex(f"[{ATOM_CHARS}]{{1,10}}", fullmatch=True)
words = atom_text.filter(lambda a: not a.isdigit() and a.upper() != "NIL")
texts = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=20)
names = texts  # mailbox names, patterns, references
flags = st.one_of(
    st.sampled_from(["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "\\Archive"]),
    words,
    atom_text.map(lambda a: "\\" + a),
)
bounds = st.one_of(st.none(), st.integers(1, 4_294_967_295))
sequence_sets = st.one_of(
    st.lists(st.tuples(bounds, bounds), min_size=1, max_size=4).map(
        lambda pairs: SequenceSet(ranges=tuple(pairs))
    ),
    st.just(SequenceSet(saved=True)),
)
param_names = st.from_regex(r"[A-Z][A-Z0-9_.:-]{0,8}", fullmatch=True)
inner_values: st.SearchStrategy[Value] = st.recursive(
    st.one_of(
        st.integers(0, 10**18),
        words.map(Atom),
        st.binary(max_size=12).filter(lambda b: b"\0" not in b),
    ),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)
param_values = st.one_of(
    st.none(),
    st.integers(0, 10**18),
    sequence_sets.map(str).filter(lambda s: not s.isdigit()).map(Atom),
    st.lists(inner_values, max_size=3),
)
parameters = st.lists(st.tuples(param_names, param_values), max_size=3).map(tuple)
partials = st.one_of(st.none(), st.tuples(st.integers(0, 2**40), st.integers(1, 2**40)))
parts = st.lists(st.integers(1, 1000), max_size=3).map(tuple)
field_names = st.from_regex(r"[\x21-\x39\x3b-\x7e]{1,12}", fullmatch=True)


@st.composite
def sections(draw: st.DrawFn) -> Section:
    part = draw(parts)
    choices = [None, "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"]
    if part:
        choices.append("MIME")
    text = draw(st.sampled_from(choices))
    fields: tuple[str, ...] = ()
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        fields = tuple(draw(st.lists(field_names, min_size=1, max_size=3)))
    return Section(part=part, text=text, fields=fields)


fetch_items: st.SearchStrategy[FetchItem] = st.one_of(
    st.sampled_from(sorted(SIMPLE_ATTRIBUTES)).map(lambda n: FetchAttribute(name=n)),
    st.builds(BodySection, section=sections(), partial=partials, peek=st.booleans()),
    st.builds(BinarySection, part=parts, partial=partials, peek=st.booleans()),
    st.builds(BinarySize, part=parts),
)
dates = st.dates(min_value=datetime.date(1000, 1, 1), max_value=datetime.date(9999, 12, 31))
search_leaves: st.SearchStrategy[SearchKey] = st.one_of(
    st.sampled_from(sorted(SIMPLE_KEYS)).map(lambda n: SearchSimple(name=n)),
    st.builds(SearchText, name=st.sampled_from(sorted(TEXT_KEYS)), value=texts),
    st.builds(SearchHeader, field=field_names, value=texts),
    st.builds(SearchKeyword, keyword=atom_text, negated=st.booleans()),
    st.builds(SearchDate, name=st.sampled_from(sorted(DATE_KEYS)), date=dates),
    st.builds(SearchSize, name=st.sampled_from(sorted(SIZE_KEYS)), size=st.integers(0, 2**63 - 1)),
    st.builds(SearchUid, sequence_set=sequence_sets),
    st.builds(SearchSequence, sequence_set=sequence_sets),
)
search_keys = st.recursive(
    search_leaves,
    lambda inner: st.one_of(
        st.builds(SearchNot, key=inner),
        st.builds(SearchOr, left=inner, right=inner),
        st.lists(inner, min_size=1, max_size=3).map(lambda keys: SearchAnd(keys=tuple(keys))),
    ),
    max_leaves=8,
)
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
    lambda m: datetime.timezone(datetime.timedelta(minutes=m))
)
moments = st.builds(
    datetime.datetime,
    year=st.integers(1000, 9999),
    month=st.integers(1, 12),
    day=st.integers(1, 28),
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
    second=st.integers(0, 59),
    tzinfo=offsets,
)


def _valid_selection(selection: list[str]) -> bool:
    return "RECURSIVEMATCH" not in selection or bool(set(selection) - {"RECURSIVEMATCH", "REMOTE"})


@st.composite
def appends(draw: st.DrawFn) -> Append:
    binary = draw(st.booleans())
    message = draw(st.binary(max_size=60))
    if not binary:
        message = message.replace(b"\0", b"")
    return Append(
        tag=draw(tags),
        mailbox=draw(names),
        flags=tuple(draw(st.lists(flags, max_size=3))),
        date=draw(st.one_of(st.none(), moments)),
        message=message,
        binary=binary,
    )


id_params = st.one_of(
    st.none(),
    st.lists(
        st.tuples(
            texts.filter(lambda t: len(t.encode()) <= 30),
            st.one_of(st.none(), texts),
        ),
        max_size=5,
    ).map(tuple),
)

all_commands: st.SearchStrategy[Command] = st.one_of(
    *[
        st.builds(kind, tag=tags)
        for kind in (
            Capability,
            Noop,
            Logout,
            StartTLS,
            Namespace,
            Idle,
            Check,
            Close,
            Unselect,
            Expunge,
        )
    ],
    st.builds(
        Authenticate,
        tag=tags,
        mechanism=st.from_regex(r"[A-Z0-9_-]{1,20}", fullmatch=True),
        initial_response=st.one_of(st.none(), st.binary(max_size=30)),
    ),
    st.builds(Login, tag=tags, userid=texts, password=texts),
    st.builds(Compress, tag=tags, mechanism=st.sampled_from(["DEFLATE", "deflate", "Deflate"])),
    st.builds(
        Enable, tag=tags, capabilities=st.lists(atom_text, min_size=1, max_size=3).map(tuple)
    ),
    st.builds(Id, tag=tags, params=id_params),
    st.builds(Select, tag=tags, mailbox=names, readonly=st.booleans(), parameters=parameters),
    st.builds(
        Create,
        tag=tags,
        mailbox=names,
        special_use=st.lists(flags.filter(lambda f: f.startswith("\\")), max_size=2).map(tuple),
    ),
    st.builds(Delete, tag=tags, mailbox=names),
    st.builds(Rename, tag=tags, mailbox=names, new_mailbox=names),
    st.builds(Subscribe, tag=tags, mailbox=names),
    st.builds(Unsubscribe, tag=tags, mailbox=names),
    st.builds(
        List,
        tag=tags,
        reference=names,
        patterns=st.lists(names, min_size=1, max_size=3).map(tuple),
        selection=st.lists(st.sampled_from(sorted(LIST_SELECTION_OPTIONS)), max_size=3)
        .filter(_valid_selection)
        .map(tuple),
        return_options=st.lists(
            st.sampled_from(sorted(LIST_RETURN_OPTIONS)), unique=True, max_size=3
        ).map(tuple),
        status_items=st.lists(st.sampled_from(sorted(STATUS_ITEMS)), max_size=3).map(tuple),
    ),
    st.builds(Lsub, tag=tags, reference=names, pattern=names),
    st.builds(
        Status,
        tag=tags,
        mailbox=names,
        items=st.lists(st.sampled_from(sorted(STATUS_ITEMS)), min_size=1, max_size=4).map(tuple),
    ),
    appends(),
    st.builds(UidExpunge, tag=tags, sequence_set=sequence_sets),
    st.builds(
        Fetch,
        tag=tags,
        uid=st.booleans(),
        sequence_set=sequence_sets,
        items=st.lists(fetch_items, min_size=1, max_size=4).map(tuple),
        modifiers=parameters,
    ),
    st.builds(
        Store,
        tag=tags,
        uid=st.booleans(),
        sequence_set=sequence_sets,
        mode=st.sampled_from(["replace", "add", "remove"]),
        silent=st.booleans(),
        flags=st.lists(flags, max_size=3).map(tuple),
        modifiers=parameters,
    ),
    st.builds(Copy, tag=tags, uid=st.booleans(), sequence_set=sequence_sets, mailbox=names),
    st.builds(Move, tag=tags, uid=st.booleans(), sequence_set=sequence_sets, mailbox=names),
    st.builds(
        Search,
        tag=tags,
        uid=st.booleans(),
        charset=st.sampled_from([None, "UTF-8"]),
        criteria=search_keys,
        return_options=st.one_of(
            st.none(),
            st.lists(st.sampled_from(sorted(SEARCH_RETURN_OPTIONS)), max_size=3).map(tuple),
        ),
    ),
)


def state_for(command: Command) -> str:
    for state, name in (
        (Stage.SELECTED, "selected"),
        (Stage.AUTHENTICATED, "authenticated"),
        (Stage.NOT_AUTHENTICATED, "not-authenticated"),
    ):
        if (state, type(command)) in ALLOWED:
            return name
    raise AssertionError(command)


# --- commands round trip ----------------------------------------------------------------------


@SETTINGS
@given(all_commands, st.booleans(), st.booleans())
def test_commands_round_trip(command: Command, utf8: bool, literal_plus: bool) -> None:
    state = state_for(command)
    if utf8 and state == "not-authenticated":
        utf8 = False  # ENABLE needs authentication
    conn = server(state, utf8=utf8)
    data = write_command(command, utf8=utf8, literal_plus=literal_plus)
    events, _out, error, _ = run([data], conn=conn, eof=False)
    assert error is None
    assert commands(events) == [command]


@settings(deadline=None, max_examples=80)
@given(st.lists(all_commands, min_size=1, max_size=4), st.data())
def test_any_chunking_gives_the_same_events(batch: list[Command], data: st.DataObject) -> None:
    # Commands that leave the selected state, or need more than a tagged OK, stay out
    # (a second COMPRESS is refused: test_imap_compress chunks its own).
    batch = [
        c
        for c in batch
        if state_for(c) == "selected"
        and not isinstance(c, Idle | Logout | Close | Unselect | Compress)
    ]
    assume(batch)
    script = b"".join(write_command(c, literal_plus=data.draw(st.booleans())) for c in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(script)), max_size=6)))
    chunks = [script[a:b] for a, b in zip([0, *cuts], [*cuts, len(script)], strict=True)]
    whole, out_whole, error, _ = run([script], conn=server("selected"), eof=False)
    assert error is None
    split, out_split, error, _ = run(chunks, conn=server("selected"), eof=False)
    assert error is None
    assert (split, out_split) == (whole, out_whole)
    assert commands(whole) == batch


# --- responses round trip ---------------------------------------------------------------------

atoms = words.map(Atom)
flag_atoms = flags.map(Atom)
leaf_values = st.one_of(
    st.none(),
    st.integers(0, 2**63 - 1),
    st.binary(max_size=40),
    texts,
    atoms,
    flag_atoms,
    st.binary(max_size=20).map(Literal),
    names.map(MailboxName),
)
values = st.recursive(
    leaf_values,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner)),
    max_leaves=12,
)
status_texts = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\0"),
    min_size=1,
    max_size=30,
)
code_values = st.one_of(
    st.integers(0, 2**63 - 1),
    atoms,
    flag_atoms,
    st.binary(max_size=20).filter(lambda b: not (set(b) & {0, 10, 13}) and b.isascii()),
    st.lists(st.one_of(atoms, flag_atoms, st.integers(0, 99)), max_size=3),
)
codes = st.one_of(
    st.none(),
    st.builds(
        ResponseCode,
        name=words.map(str.upper),
        data=st.lists(code_values, max_size=3).map(tuple),
    ),
)
keywords = words.map(str.upper).filter(
    lambda k: k not in ("OK", "NO", "BAD", "BYE", "PREAUTH", "FETCH") and not k[0].isdigit()
)
fetch_names = st.one_of(
    st.sampled_from(sorted(SIMPLE_ATTRIBUTES)),
    fetch_items.map(lambda item: item.response_name),
)


@st.composite
def status_responses(draw: st.DrawFn) -> Tagged | UntaggedStatus:
    code = draw(codes)
    text = draw(status_texts)
    assume(code is not None or not text.startswith("["))
    if draw(st.booleans()):
        return Tagged(
            tag=draw(tags), status=draw(st.sampled_from(["OK", "NO", "BAD"])), code=code, text=text
        )
    status = draw(st.sampled_from(["OK", "NO", "BAD", "BYE", "PREAUTH"]))
    return UntaggedStatus(status=status, code=code, text=text)


def _expected_code(code: ResponseCode | None, utf8: bool) -> object:
    if code is None:
        return None
    return (code.name, [normalize(v, utf8=utf8) for v in code.data])


@SETTINGS
@given(status_responses(), st.booleans())
def test_status_responses_parse_back(event: Tagged | UntaggedStatus, utf8: bool) -> None:
    parsed = parse_response(write_response(event, utf8=utf8))
    code = _expected_code(event.code, utf8)
    text = event.text.encode()
    if isinstance(event, Tagged):
        assert parsed == ("tagged", event.tag, event.status, code, text)
    else:
        assert parsed == ("status", event.status, code, text)


@SETTINGS
@given(
    keywords,
    st.lists(values, max_size=4).map(tuple),
    st.one_of(st.none(), st.integers(0, 2**32)),
    st.booleans(),
)
def test_untagged_data_parses_back(
    keyword: str, data: tuple[Value, ...], number: int | None, utf8: bool
) -> None:
    event = Untagged(keyword=keyword, data=data, number=number)
    parsed = parse_response(write_response(event, utf8=utf8))
    assert parsed == ("untagged", number, keyword, [normalize(v, utf8=utf8) for v in data])


@SETTINGS
@given(
    st.integers(1, 2**32),
    st.lists(st.tuples(fetch_names, values), min_size=1, max_size=5).map(tuple),
    st.booleans(),
)
def test_fetch_responses_parse_back(
    number: int, items: tuple[tuple[str, Value], ...], utf8: bool
) -> None:
    event = FetchResponse(number=number, items=items)
    parsed = parse_response(write_response(event, utf8=utf8))
    assert parsed == ("fetch", number, [(n, normalize(v, utf8=utf8)) for n, v in items])


@SETTINGS
@given(
    st.one_of(
        st.builds(Continuation, data=st.binary(max_size=40)),
        st.builds(Continuation, text=status_texts),
    )
)
def test_continuations_parse_back(event: Continuation) -> None:
    parsed = parse_response(write_response(event, utf8=False))
    expected = base64.b64encode(event.data) if event.data is not None else event.text.encode()
    assert parsed == ("continue", expected)


# --- random input ------------------------------------------------------------------------------

SEEDS = [
    b"a LOGIN {3}\r\n",
    b"a LOGIN {3+}\r\n",
    b"b SELECT INBOX\r\n",
    b"c FETCH 1:* (BODY.PEEK[HEADER.FIELDS (From)]<0.10>)\r\n",
    b"d SEARCH OR (SEEN",
    b"e IDLE\r\n",
    b"DONE\r\n",
    b"f AUTHENTICATE PLAIN\r\n",
    b"*\r\n",
    b"g APPEND x ~{2}\r\n",
    b"h STARTTLS\r\n",
    b"i LOGOUT\r\n",
    b"\r\n",
    b"\n",
    b"{99999999999999999999}\r\n",
]


@settings(deadline=None, max_examples=300)
@given(
    st.lists(st.one_of(st.binary(max_size=30), st.sampled_from(SEEDS)), max_size=12),
    st.sampled_from(["not-authenticated", "authenticated", "selected"]),
)
def test_random_input_only_raises_remote_protocol_error(chunks: list[bytes], state: str) -> None:
    # run() lets any exception but RemoteProtocolError through, and answers every event
    # the way a cooperative server would; a LocalProtocolError would be the core's bug.
    run(chunks, conn=server(state))


def test_a_fresh_connection_each_time() -> None:
    assert Connection(SERVER).stage is Stage.NOT_AUTHENTICATED
