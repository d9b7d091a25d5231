"""The client core wired to the server core, with hypothesis: every command event the
client sends is the event the server reads, every Reply the server writes is the Reply the
client reads, and no chunking or random input makes the client do anything but parse or
raise RemoteProtocolError."""

from __future__ import annotations

import contextlib
import re

import attrs
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from smtp_helpers import content_of, merged, split

from sansmail import NEED_DATA, SERVER, LocalProtocolError, RemoteProtocolError
from sansmail.mail.address import Address, AddressError
from sansmail.smtp import (
    Auth,
    AuthResponse,
    Bdat,
    ClientConnection,
    Connection,
    Data,
    EndOfMessage,
    Event,
    Hello,
    Help,
    Mail,
    MessageData,
    Noop,
    Phase,
    Rcpt,
    Reply,
    Reset,
    Verify,
    challenge_data,
    encode_xtext,
)
from sansmail.smtp import StartTLS as StartTLSCommand

LOOKS_LIKE_A_CODE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}( |$)")
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BASE_EHLO = ("mx.example", "PIPELINING", "SIZE 100000", "8BITMIME", "CHUNKING", "DSN")
FULL_EHLO = (*BASE_EHLO, "SMTPUTF8", "ENHANCEDSTATUSCODES", "AUTH PLAIN LOGIN")


def server_events(server: Connection) -> list[Event]:
    out: list[Event] = []
    while isinstance(event := server.next_event(), Event):
        out.append(event)
    return out


def client_reply(client: ClientConnection) -> Reply:
    event = client.next_event()
    assert isinstance(event, Reply), event
    return event


def wired(ehlo: tuple[str, ...] = FULL_EHLO) -> tuple[Connection, ClientConnection]:
    """A server core and a client core that have greeted each other over EHLO."""
    server, client = Connection(SERVER), ClientConnection()
    client.receive_data(server.send(Reply(code=220, lines="mx.example ESMTP")))
    client_reply(client)
    server.receive_data(client.send(Hello(domain="client.example")))
    assert server_events(server) == [Hello(domain="client.example")]
    client.receive_data(server.send(Reply(code=250, lines=ehlo)))
    client_reply(client)
    return server, client


def feed(conn: Connection | ClientConnection, data: bytes) -> None:
    if data:  # b"" would mean EOF
        conn.receive_data(data)


def exchange(
    server: Connection, client: ClientConnection, event: Event, answer: Reply
) -> list[Event]:
    """Client sends `event`; return what the server read; the server answers `answer`."""
    server.receive_data(client.send(event))
    events = server_events(server)
    client.receive_data(server.send(answer))
    assert client_reply(client).code == answer.code
    return events


# --- Strategies ----------------------------------------------------------------------------

ATEXT = "abcXYZ0189!#$%&'*+-/=?^_`{|}~"
local_ascii = st.one_of(
    st.text(alphabet=ATEXT, min_size=1, max_size=12),
    st.from_regex(r"[a-z]{1,5}\.[a-z]{1,5}", fullmatch=True),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=12),
)
local_utf8 = st.text(alphabet="aéüжш中", min_size=1, max_size=8)
domains = st.from_regex(r"[a-z0-9]{1,10}(\.[a-z]{2,6}){1,2}", fullmatch=True)


def addresses(locals_: st.SearchStrategy[str]) -> st.SearchStrategy[Address]:
    @st.composite
    def build(draw: st.DrawFn) -> Address:
        try:
            return Address(local_part=draw(locals_), domain=draw(domains))
        except AddressError:
            assume(False)
            raise

    return build()


xtext = st.binary(min_size=1, max_size=30).map(encode_xtext).filter(lambda x: len(x) <= 100)
mail_params = st.fixed_dictionaries(
    {},
    optional={
        "SIZE": st.integers(0, 99999).map(str),
        "BODY": st.sampled_from(["7BIT", "8BITMIME"]),
        "RET": st.sampled_from(["FULL", "HDRS"]),
        "ENVID": xtext,
        "AUTH": st.one_of(
            st.just("<>"), addresses(local_ascii).map(lambda a: encode_xtext(str(a).encode()))
        ),
    },
)
notify = st.one_of(
    st.just("NEVER"),
    st.lists(
        st.sampled_from(["SUCCESS", "FAILURE", "DELAY"]), min_size=1, max_size=3, unique=True
    ).map(",".join),
)
rcpt_params = st.fixed_dictionaries(
    {}, optional={"NOTIFY": notify, "ORCPT": xtext.map(lambda x: "rfc822;" + x)}
)
# No CR: line ends are either all bare LF (which the client turns into CRLF) or all CRLF.
_no_cr = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b""))
content_chunks = st.lists(
    st.one_of(_no_cr, _no_cr.map(lambda b: b.replace(b"\n", b"\r\n"))), max_size=5
)
arguments = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=20)


@st.composite
def transactions(draw: st.DrawFn) -> tuple[Mail, list[Rcpt], list[bytes], bool]:
    utf8 = draw(st.booleans())
    locals_ = st.one_of(local_ascii, local_utf8) if utf8 else local_ascii
    sender = draw(st.one_of(st.none(), addresses(locals_)))
    params = draw(mail_params)
    if utf8:
        params["SMTPUTF8"] = None
    rcpts = [
        Rcpt(forward_path=draw(addresses(locals_)), parameters=draw(rcpt_params))
        for _ in range(draw(st.integers(1, 3)))
    ]
    return (
        Mail(reverse_path=sender, parameters=params),
        rcpts,
        draw(content_chunks),
        draw(st.booleans()),
    )


# --- Commands: what the client sends is what the server reads --------------------------------


@SETTINGS
@given(txn=transactions())
def test_a_transaction_reads_back_as_sent(txn: tuple[Mail, list[Rcpt], list[bytes], bool]) -> None:
    mail, rcpts, chunks, use_bdat = txn
    server, client = wired()
    ok = Reply(code=250, lines="ok")
    assert exchange(server, client, mail, ok) == [mail]
    for rcpt in rcpts:
        assert exchange(server, client, rcpt, ok) == [rcpt]
    if use_bdat:
        # BDAT content cannot be normalised (its size is declared): CRLF only, unsplit.
        chunks = [chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for chunk in chunks]
    content = b"".join(chunks)
    if use_bdat:
        server.receive_data(client.send(Bdat(size=len(content), last=True)))
        for chunk in filter(None, chunks):
            server.receive_data(client.send(MessageData(data=chunk)))
        expected = content
    else:
        exchange(server, client, Data(), Reply(code=354, lines="go"))
        for chunk in chunks:
            feed(server, client.send(MessageData(data=chunk)))
        server.receive_data(client.send(EndOfMessage()))
        # Bare LF becomes CRLF; the content ends with a line end (RFC 5321 §4.1.1.4).
        expected = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if expected and not expected.endswith(b"\r\n"):
            expected += b"\r\n"
    events = merged(server_events(server))
    assert events[-1] == EndOfMessage()
    assert content_of(events) == expected
    client.receive_data(server.send(Reply(code=250, lines="queued")))
    assert client_reply(client).code == 250


@SETTINGS
@given(
    event=st.one_of(
        st.builds(Noop, argument=arguments),
        st.builds(Help, topic=arguments),
        st.builds(
            Verify,
            argument=st.text(alphabet="abcé中 ", min_size=1, max_size=10)
            .map(str.strip)
            .filter(bool),
        ),
        st.just(Reset()),
        st.builds(
            Hello,
            domain=st.text(alphabet="abc.[]:0123 ", min_size=1, max_size=20)
            .map(str.strip)
            .filter(bool),
            extended=st.booleans(),
        ),
    )
)
def test_other_commands_read_back_as_sent(event: Event) -> None:
    server, client = wired()
    answer = (
        Reply(code=250, lines=FULL_EHLO)
        if isinstance(event, Hello)
        else Reply(code=250, lines="ok")
    )
    assert exchange(server, client, event, answer) == [event]


@SETTINGS
@given(
    initial=st.one_of(st.none(), st.binary(max_size=200)),
    responses=st.lists(st.binary(max_size=300), max_size=3),
)
def test_auth_exchange_reads_back(initial: bytes | None, responses: list[bytes]) -> None:
    server, client = wired()
    sent: list[Event] = [Auth(mechanism="PLAIN", initial_response=initial)]
    sent += [AuthResponse(data=response) for response in responses]
    challenges = [b"", b"more?", bytes(range(256))]
    for i, event in enumerate(sent):
        last = i == len(sent) - 1
        data = challenges[i % 3]
        answer = Reply(code=235, lines="ok", enhanced="2.7.0") if last else Reply.challenge(data)
        server.receive_data(client.send(event))
        assert server_events(server) == [event]
        client.receive_data(server.send(answer))
        got = client_reply(client)
        assert got == answer
        if not last:
            assert challenge_data(got) == data
    assert client.authenticated
    assert server.authenticated


# --- Replies: what the server writes is what the client reads --------------------------------

reply_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",)), max_size=60
)
ascii_text = st.text(
    alphabet=st.characters(min_codepoint=1, max_codepoint=127, blacklist_characters="\r\n"),
    max_size=60,
)


@st.composite
def replies(draw: st.DrawFn, *, utf8: bool) -> Reply:
    code = draw(
        st.sampled_from([200, 211, 214, 250, 251, 252, 450, 451, 452, 500, 501, 550, 554, 599])
    )
    text = reply_text if utf8 else ascii_text
    # Sometimes text that starts like an enhanced code, to tell it from a real one.
    text = st.one_of(text, st.builds(lambda t: "2.1.0 " + t, text))
    lines = draw(st.lists(text, min_size=1, max_size=4))
    cls = code // 100
    enhanced = draw(
        st.one_of(
            st.none(),
            st.builds(lambda s, d: f"{cls}.{s}.{d}", st.integers(0, 999), st.integers(0, 999)),
        )
    )
    return Reply(code=code, lines=tuple(lines), enhanced=enhanced)


@SETTINGS
@given(data=st.data(), esc=st.booleans(), utf8=st.booleans())
def test_replies_read_back_as_written(data: st.DataObject, esc: bool, utf8: bool) -> None:
    ehlo = BASE_EHLO + (("ENHANCEDSTATUSCODES",) if esc else ()) + (("SMTPUTF8",) if utf8 else ())
    server, client = wired(ehlo)
    for reply in data.draw(st.lists(replies(utf8=utf8), min_size=1, max_size=5)):
        if not esc and LOOKS_LIKE_A_CODE.match(reply.lines[0]):
            continue  # text that starts like a code is read as one; see the byte-level tests
        server.receive_data(client.send(Noop()))
        server_events(server)
        wire = server.send(reply)
        # Without the extension no code is written; with it, a reply without one gets the
        # class default.
        default = f"{reply.code // 100}.0.0"
        expected = attrs.evolve(reply, enhanced=(reply.enhanced or default) if esc else None)
        for piece in split(wire, data.draw(st.lists(st.integers(0), max_size=4))):
            client.receive_data(piece)
        assert client_reply(client) == expected


@SETTINGS
@given(lines=st.lists(ascii_text, min_size=1, max_size=5), code=st.sampled_from([220, 554]))
def test_greetings_read_back_without_enhanced_split(lines: list[str], code: int) -> None:
    server, client = Connection(SERVER), ClientConnection()
    reply = Reply(code=code, lines=tuple(lines))
    client.receive_data(server.send(reply))
    assert client_reply(client) == reply


@SETTINGS
@given(text=ascii_text, data=st.binary(max_size=100))
def test_354_and_334_read_back(text: str, data: bytes) -> None:
    server, client = wired()
    challenge = Reply.challenge(data)
    server.receive_data(client.send(Auth(mechanism="LOGIN")))
    server_events(server)
    client.receive_data(server.send(challenge))
    got = client_reply(client)
    assert got == challenge
    assert challenge_data(got) == data
    server, client = wired()
    for event in (
        Mail(reverse_path=None),
        Rcpt(forward_path=Address(local_part="a", domain="b.example")),
    ):
        exchange(server, client, event, Reply(code=250, lines="ok"))
    server.receive_data(client.send(Data()))
    server_events(server)
    go = Reply(code=354, lines=text)
    client.receive_data(server.send(go))
    assert client_reply(client) == go


# --- Robustness -------------------------------------------------------------------------------

REPLY_FRAGMENTS = [
    b"250 ok\r\n",
    b"250-PIPELINING\r\n",
    b"250 2.1.0 ok\r\n",
    b"421 bye\r\n",
    b"354 go\r\n",
    b"550 5.1.1 no\r\n",
    b"334 Zm9v\r\n",
    b"220 hi\r\n",
    b"\r\n",
    b"\r",
    b"\n",
    b"25",
]


def client_outcome(chunks: list[bytes]) -> list[object]:
    """Greet, EHLO, pipeline MAIL/RCPT/DATA, then read whatever comes."""
    client = ClientConnection()
    out: list[object] = []
    sent = False
    try:
        for chunk in chunks:
            client.receive_data(chunk)
            while isinstance(event := client.next_event(), Reply):
                out.append((event, type(client.answered).__name__))
                if client.our_state.name == "COMMAND" and not client.pending and not sent:
                    if client.stage.name == "NEED_HELLO":
                        client.send(Hello(domain="c"))
                    elif client.stage.name == "READY" and client.pipelining:
                        sent = True
                        client.send(Mail(reverse_path=None))
                        client.send(Rcpt(forward_path=Address(local_part="a", domain="b.example")))
                        client.send(Data())
            out.append(event)
    except RemoteProtocolError as exc:
        out.append(f"RemoteProtocolError: {exc}")
    return out


@SETTINGS
@given(
    data=st.lists(
        st.one_of(st.sampled_from(REPLY_FRAGMENTS), st.binary(max_size=12)), max_size=20
    ).map(b"".join),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
def test_chunking_never_matters_and_garbage_only_raises_remote_errors(
    data: bytes, cuts: list[int]
) -> None:
    wire = b"220 hi\r\n250-mx\r\n250 PIPELINING\r\n" + data
    whole = [o for o in client_outcome([wire]) if o is not NEED_DATA]
    pieces = [o for o in client_outcome(split(wire, cuts)) if o is not NEED_DATA]
    assert pieces == whole
    bytewise = [
        o for o in client_outcome([wire[i : i + 1] for i in range(len(wire))]) if o is not NEED_DATA
    ]
    assert bytewise == whole


@SETTINGS
@given(data=st.binary(max_size=300))
def test_random_bytes_only_raise_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        client_outcome([data])


SOME_EVENTS: list[Event] = [
    Hello(domain="c.example"),
    Hello(domain="c.example", extended=False),
    Mail(reverse_path=None),
    Mail(reverse_path=None, parameters={"SIZE": "10"}),
    Rcpt(forward_path=Address(local_part="a", domain="b.example")),
    Data(),
    MessageData(data=b"x\r\n."),
    EndOfMessage(),
    Bdat(size=2, last=True),
    Reset(),
    Noop(),
    Auth(mechanism="PLAIN"),
    AuthResponse(data=b"x"),
    StartTLSCommand(),
]
SOME_REPLIES = [
    b"220 hi\r\n",
    b"250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n",
    b"250 ok\r\n",
    b"354 go\r\n",
    b"334 \r\n",
    b"235 ok\r\n",
    b"550 no\r\n",
    b"221 bye\r\n",
    b"421 bye\r\n",
]


@SETTINGS
@given(
    steps=st.lists(
        st.one_of(
            st.sampled_from(SOME_EVENTS),
            st.sampled_from(SOME_REPLIES),
            st.just("start_tls"),
        ),
        max_size=30,
    )
)
def test_any_sequence_of_calls_is_legal_or_a_protocol_error(steps: list[object]) -> None:
    """h2's state-machine test, for the client: whatever the order of calls, the core
    either does it or raises the error that names who is at fault, and an error sticks."""
    client = ClientConnection()
    for step in steps:
        before = (client.our_state, client.their_state)
        try:
            if isinstance(step, bytes):
                client.receive_data(step)
                while isinstance(client.next_event(), Reply):
                    pass
            elif step == "start_tls":
                client.start_tls()
            else:
                assert isinstance(step, Event)
                client.send(step)
        except LocalProtocolError:
            assert client.our_state is Phase.ERROR or before[0] is Phase.ERROR
            return
        except RemoteProtocolError:
            assert client.their_state is Phase.ERROR
            return
