"""The connection's limits and switches: fatal input, the invalid-command budget, the
STARTTLS switch, LOGOUT, EOF, what the application may send when; and hypothesis
throwing arbitrary bytes in arbitrary chunks at it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from managesieve_helpers import CAPABILITIES, events_of, greeted

from sansmail import CLIENT, NEED_DATA, PAUSED, SERVER, LocalProtocolError, RemoteProtocolError
from sansmail.managesieve import (
    Authenticate,
    Bye,
    Capabilities,
    Capability,
    Challenge,
    Config,
    Connection,
    ConnectionClosed,
    Event,
    InvalidCommand,
    ListScripts,
    Logout,
    No,
    Noop,
    Ok,
    Phase,
    PutScript,
    SaslCancel,
    SaslResponse,
    Script,
    ScriptList,
    StartTls,
)


def test_roles() -> None:
    with pytest.raises(NotImplementedError):
        Connection(CLIENT)


def test_client_bytes_wait_for_the_greeting() -> None:
    conn = Connection(SERVER)
    conn.receive_data(b"NOOP\r\n")
    assert conn.next_event() is PAUSED
    conn.send(CAPABILITIES)
    assert conn.next_event() == Noop()
    assert conn.next_event() is PAUSED


@pytest.mark.parametrize("data", [b"NOOP\n", b"NO\rOP\r\n", b'NOOP "a\rb"\r\n', b"\n"])
def test_bare_newlines_are_fatal(data: bytes) -> None:
    conn = greeted()
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert isinstance(info.value.reply_hint, Bye)
    assert conn.send(info.value.reply_hint).startswith(b"BYE ")
    assert conn.their_state is Phase.ERROR


def test_bare_newline_inside_a_literal_is_data() -> None:
    conn = greeted()
    conn.receive_data(b'AUTHENTICATE "PLAIN" {4+}\r\na\nb=\r\n')
    (event,) = events_of(conn)
    assert isinstance(event, InvalidCommand)  # not base64, but no fatal error


def test_line_over_the_limit_is_fatal() -> None:
    config = Config(max_line=4096)
    conn = greeted(config=config)
    conn.receive_data(b'NOOP "' + b"a" * 4088 + b'"\r\n')  # 4097 with CRLF: too long
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.reply_hint == Bye(text="line too long, closing")
    conn = greeted(config=config)
    conn.receive_data(b'NOOP "' + b"a" * 4087 + b'"\r\n')
    assert conn.next_event() == Noop(tag="a" * 4087)


def test_invalid_command_budget() -> None:
    conn = greeted(config=Config(max_invalid_commands=2))
    for _ in range(2):
        conn.receive_data(b"FOO\r\n")
        (event,) = events_of(conn)
        assert isinstance(event, InvalidCommand)
        conn.send(event.reply_hint)
    conn.receive_data(b"FOO\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert conn.send(info.value.reply_hint) == b'BYE "too many invalid commands, closing"\r\n'  # type: ignore[arg-type]


def test_starttls_injection_refused() -> None:
    conn = greeted()
    conn.receive_data(b'STARTTLS\r\nAUTHENTICATE "PLAIN" "AGEAYg=="\r\n')
    assert events_of(conn) == [StartTls()]
    conn.send(Ok())
    assert conn.next_event() is PAUSED
    with pytest.raises(RemoteProtocolError) as info:
        conn.start_tls()
    assert isinstance(info.value.reply_hint, Bye)


def test_starttls_refused_stays_plaintext() -> None:
    conn = greeted()
    conn.receive_data(b"STARTTLS\r\n")
    assert events_of(conn) == [StartTls()]
    conn.send(No(text="TLS not available"))
    assert not conn.tls_active
    with pytest.raises(LocalProtocolError):
        conn.start_tls()


def test_under_tls_no_starttls() -> None:
    conn = Connection(SERVER, tls_active=True)
    with pytest.raises(LocalProtocolError):
        conn.send(CAPABILITIES)  # offers STARTTLS
    conn = Connection(SERVER, tls_active=True)
    conn.send(Capabilities(implementation="sansmail", sasl=("PLAIN",)))
    conn.receive_data(b"STARTTLS\r\n")
    (event,) = events_of(conn)
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint.text == "already using TLS"


def test_logout_is_the_last_word() -> None:
    conn = greeted()
    conn.receive_data(b"LOGOUT\r\n")
    assert events_of(conn) == [Logout()]
    assert conn.send(Ok()) == b"OK\r\n"
    assert conn.next_event() is PAUSED
    conn.receive_data(b"NOOP\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.reply_hint is None


def test_eof() -> None:
    conn = greeted()
    conn.receive_data(b"NOO")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.next_event() == ConnectionClosed()
    conn = greeted()
    conn.receive_data(b'AUTHENTICATE "PLAIN"\r\n')
    conn.next_event()
    conn.send(Challenge())
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()


def test_unprompted_bye_closes() -> None:
    conn = greeted()
    assert conn.send(Bye(text="idle too long")) == b'BYE "idle too long"\r\n'
    assert conn.our_state is Phase.CLOSED
    with pytest.raises(LocalProtocolError):
        conn.send(Ok())


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        (b"NOOP\r\n", Script(content=b"")),
        (b"NOOP\r\n", ScriptList(names=())),
        (b"NOOP\r\n", Challenge()),
        (b"LISTSCRIPTS\r\n", Ok()),  # not valid before authentication: InvalidCommand
        (b"CAPABILITY\r\n", Ok()),
        (b"LOGOUT\r\n", No()),
    ],
)
def test_wrong_answers_are_local_errors(command: bytes, answer: Event) -> None:
    conn = greeted()
    conn.receive_data(command)
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(answer)  # type: ignore[arg-type]
    assert conn.our_state is Phase.ERROR


def test_no_answer_while_none_is_owed() -> None:
    conn = greeted()
    with pytest.raises(LocalProtocolError):
        conn.send(Ok())


def test_sasl_string_must_be_one_string() -> None:
    conn = greeted()
    conn.receive_data(b'AUTHENTICATE "PLAIN"\r\n')
    conn.next_event()
    conn.send(Challenge())
    conn.receive_data(b"YWJj\r\n")  # bare, not a string
    (event,) = events_of(conn)
    assert isinstance(event, InvalidCommand)
    conn.send(event.reply_hint)
    assert conn.our_state is Phase.COMMAND  # the exchange failed


def test_events_validate() -> None:
    with pytest.raises(ValueError, match="control"):
        PutScript(name="a\nb", content=b"")
    with pytest.raises(ValueError, match="argument"):
        Ok(code="TAG")
    with pytest.raises(ValueError, match="REFERRAL"):
        Bye(code="REFERRAL", code_argument="imap://x")
    with pytest.raises(ValueError, match="response code"):
        No(code="quota")
    with pytest.raises(ValueError, match="listed"):
        ScriptList(names=("a",), active="b")


# --- hypothesis: any bytes, any chunks -------------------------------------------------

_ANSWERS: dict[type[Event], Event] = {
    Capability: CAPABILITIES,
    ListScripts: ScriptList(names=("a",), active="a"),
    Authenticate: Challenge(data=b"x"),
    SaslResponse: No(text="failed"),
    SaslCancel: No(text="cancelled"),
    StartTls: No(text="no TLS here"),
}

_COMMAND_WORDS = [
    b"NOOP",
    b"CAPABILITY",
    b'AUTHENTICATE "PLAIN" ',
    b'AUTHENTICATE "PLAIN" "AGEAYg=="\r\n',
    b"PUTSCRIPT ",
    b"LISTSCRIPTS",
    b"STARTTLS",
    b"LOGOUT",
    b'"',
    b"\\",
    b"{3+}\r\n",
    b"{2}\r\n",
    b"{99999}\r\n",
    b" ",
    b"\r\n",
    b"\r",
    b"\n",
    b"*",
    b"\x00",
    b"\xff",
]

_wire = st.lists(
    st.one_of(st.sampled_from(_COMMAND_WORDS), st.binary(max_size=20)), max_size=40
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(data=_wire, cuts=st.lists(st.integers(1, 40), max_size=20), authenticated=st.booleans())
def test_any_bytes_give_only_events_or_a_documented_end(
    data: bytes, cuts: list[int], authenticated: bool
) -> None:
    config = Config(max_line=4096, max_literal=1024, max_invalid_commands=5)
    conn = greeted(config=config)
    if authenticated:
        conn.receive_data(b'AUTHENTICATE "PLAIN" "AGEAYg=="\r\n')
        conn.next_event()
        conn.send(Ok())
    pieces = []
    pos = 0
    for cut in cuts:
        pieces.append(data[pos : pos + cut])
        pos += cut
    pieces.append(data[pos:])
    try:
        for piece in [p for p in pieces if p] + [b""]:
            conn.receive_data(piece)
            while True:
                event = conn.next_event()
                # Every buffer within its limits.
                assert len(conn.trailing_data[0]) <= len(data)
                if event is NEED_DATA:
                    assert len(conn.trailing_data[0]) < config.max_line + config.max_literal
                    break
                if event is PAUSED:
                    assert conn.our_state in (Phase.TLS_PENDING, Phase.CLOSED)
                    return
                assert isinstance(event, Event)
                if isinstance(event, ConnectionClosed):
                    return
                if isinstance(event, InvalidCommand):
                    assert isinstance(event.reply_hint, No)
                    conn.send(event.reply_hint)
                    continue
                answer = _ANSWERS.get(type(event), Ok())
                conn.send(answer)  # type: ignore[arg-type]
                if conn.our_state is Phase.CLOSED:
                    return
    except RemoteProtocolError as exc:
        hint = exc.reply_hint
    else:
        return
    assert hint is None or isinstance(hint, Bye)
    if hint is not None:
        assert conn.send(hint).startswith(b"BYE ")
