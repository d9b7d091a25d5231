"""The connection: lockstep, the STLS switch, fatal errors with their hints, limits,
application mistakes, and hypothesis on chunking and random input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pop3_helpers import GREETING, run

from sansmail import (
    CLIENT,
    NEED_DATA,
    PAUSED,
    SERVER,
    LocalProtocolError,
    RemoteProtocolError,
)
from sansmail.pop3 import (
    Capa,
    Challenge,
    Config,
    Connection,
    ConnectionClosed,
    EndOfMultiline,
    Err,
    InvalidCommand,
    MultilineData,
    Noop,
    Ok,
    Pass,
    Phase,
    Quit,
    Stage,
    Stls,
    User,
    capability_listing,
)


def _greeted(config: Config | None = None) -> Connection:
    conn = Connection(SERVER, config=config)
    assert conn.send(GREETING) == b"+OK POP3 server ready\r\n"
    return conn


def test_roles() -> None:
    with pytest.raises(NotImplementedError):
        Connection(CLIENT)
    assert Connection(SERVER).their_role is CLIENT


def test_client_bytes_wait_for_the_greeting() -> None:
    conn = Connection(SERVER)
    conn.receive_data(b"CAPA\r\n")
    assert conn.next_event() is PAUSED
    conn.send(Ok())
    assert conn.next_event() == Capa()


def test_err_greeting_closes() -> None:
    conn = Connection(SERVER)
    assert conn.send(Err(text="busy", code="SYS/TEMP")) == b"-ERR [SYS/TEMP] busy\r\n"
    assert conn.our_state is Phase.CLOSED


def test_lockstep_with_pipelined_commands() -> None:
    conn = _greeted()
    conn.receive_data(b"USER a\r\nPASS b\r\nNOOP\r\n")
    assert conn.next_event() == User(name="a")
    assert conn.next_event() is PAUSED
    conn.send(Ok())
    users = [conn.user]
    assert conn.next_event() == Pass(password="b")
    conn.send(Ok())
    users.append(conn.user)
    assert users == ["a", None]
    assert conn.next_event() == Noop()


def test_pass_after_failed_user_is_refused() -> None:
    conn = _greeted()
    conn.receive_data(b"USER a\r\nPASS b\r\n")
    conn.next_event()
    conn.send(Err(text="no such user"))
    event = conn.next_event()
    assert isinstance(event, InvalidCommand)
    assert event.reason == "PASS without an accepted USER"


def test_pass_must_follow_user_immediately() -> None:
    conn = _greeted()
    conn.receive_data(b"USER a\r\nCAPA\r\nPASS b\r\n")
    conn.next_event()
    conn.send(Ok())
    conn.next_event()
    conn.send(Ok())
    conn.send(EndOfMultiline())
    assert isinstance(conn.next_event(), InvalidCommand)


def test_stls_switch() -> None:
    conn = _greeted()
    conn.receive_data(b"STLS\r\n")
    assert conn.next_event() == Stls()
    assert conn.send(Ok(text="Begin TLS negotiation")) == b"+OK Begin TLS negotiation\r\n"
    assert conn.our_state is Phase.TLS_PENDING
    assert conn.next_event() is PAUSED
    conn.start_tls()
    assert conn.tls_active
    assert conn.stage is Stage.AUTHORIZATION
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"STLS\r\n")
    event = conn.next_event()
    assert isinstance(event, InvalidCommand)  # RFC 2595 §4: not twice


def test_stls_injection_refused() -> None:
    conn = _greeted()
    conn.receive_data(b"STLS\r\nUSER evil\r\n")
    conn.next_event()
    conn.send(Ok())
    with pytest.raises(RemoteProtocolError) as info:
        conn.start_tls()
    assert conn.their_state is Phase.ERROR
    hint = info.value.reply_hint
    assert isinstance(hint, Err)
    assert conn.send(hint).startswith(b"-ERR ")
    assert conn.our_state is Phase.CLOSED


def test_stls_refused_stays_plaintext() -> None:
    conn = _greeted()
    conn.receive_data(b"STLS\r\nCAPA\r\n")
    conn.next_event()
    conn.send(Err(text="TLS unavailable", code="SYS/TEMP"))
    assert conn.next_event() == Capa()
    assert not conn.tls_active


def test_start_tls_outside_the_switch() -> None:
    conn = _greeted()
    with pytest.raises(LocalProtocolError):
        conn.start_tls()


@pytest.mark.parametrize(
    "data", [b"NOOP\n", b"NO\rOP\r\n", b"USER a\rb\r\n", b"\n", b"USER a\r\r\n"]
)
def test_bare_newlines_are_fatal(data: bytes) -> None:
    events, out, error = run([data])
    assert error is not None
    assert out == b"-ERR bare CR or LF in a command line, closing\r\n"
    assert events == []


def test_line_lengths() -> None:
    # RFC 2449 §4: 255 octets with the CRLF is fine, one more is refused with -ERR.
    ok = b"USER " + b"a" * 248 + b"\r\n"
    assert len(ok) == 255
    events, out, error = run([ok, b"USER " + b"a" * 249 + b"\r\n"])
    assert error is None
    assert isinstance(events[0], User)
    assert isinstance(events[1], InvalidCommand)
    assert out.endswith(b"-ERR command line too long\r\n")
    # Past the hard cap the session ends, without waiting for a CRLF.
    config = Config()
    events, out, error = run([b"USER " + b"a" * config.command_line_cap], eof=False)
    assert error is not None
    assert out == b"-ERR line too long, closing\r\n"


def test_auth_lines_may_be_long() -> None:
    config = Config()
    response = b"QUFB" * (config.max_auth_response // 4)
    conn = _greeted(config)
    conn.receive_data(b"auth PLAIN " + response + b"\r\nAUTH PLAIN\r\n")
    event = conn.next_event()
    assert not isinstance(event, InvalidCommand)
    conn.send(Err())
    conn.next_event()
    conn.send(Challenge())
    conn.receive_data(response + b"\r\n")
    assert conn.next_event() is not NEED_DATA
    conn.send(Err())
    conn.receive_data(b"AUTH PLAIN\r\n")
    conn.next_event()
    conn.send(Challenge())
    conn.receive_data(b"A" * config.auth_line_cap)
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_auth_response_over_the_limit_is_refused() -> None:
    config = Config(max_auth_response=1024)
    conn = _greeted(config)
    conn.receive_data(b"AUTH PLAIN " + b"QUFB" * 260 + b"\r\nAUTH PLAIN\r\n")
    event = conn.next_event()
    assert isinstance(event, InvalidCommand)
    assert conn.send(event.reply_hint) == b"-ERR [AUTH] authentication response too long\r\n"
    conn.next_event()
    conn.send(Challenge())
    conn.receive_data(b"QUFB" * 256 + b"\r\n" + b"QUFB" * 257 + b"\r\n")
    assert not isinstance(conn.next_event(), InvalidCommand)
    conn.send(Challenge())
    assert isinstance(conn.next_event(), InvalidCommand)
    conn.send(Err())
    assert conn.our_state is Phase.COMMAND


def test_bad_auth_response_is_refused_and_counted() -> None:
    conn = _greeted(Config(max_invalid_commands=0))
    conn.receive_data(b"AUTH PLAIN\r\nnot base64!\r\n")
    conn.next_event()
    conn.send(Challenge())
    with pytest.raises(RemoteProtocolError, match="invalid commands"):
        conn.next_event()


def test_invalid_command_budget() -> None:
    config = Config(max_invalid_commands=3)
    events, out, error = run([b"BAD\r\n" * 3, b"CAPA\r\n"], config=config)
    assert error is None  # three are tolerated...
    events, out, error = run([b"BAD\r\n" * 4], config=config)
    assert error == "more than 3 invalid commands"
    assert out.endswith(b"-ERR too many invalid commands, closing\r\n")
    assert len(events) == 3


def test_data_after_quit_is_fatal() -> None:
    conn = _greeted()
    conn.receive_data(b"QUIT\r\nNOOP\r\n")
    assert conn.next_event() == Quit()
    conn.send(Ok())
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.reply_hint is None


def test_eof_becomes_connection_closed() -> None:
    conn = _greeted()
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.their_state is Phase.CLOSED
    assert conn.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


def test_eof_while_a_response_is_owed() -> None:
    conn = _greeted()
    conn.receive_data(b"CAPA\r\n")
    conn.receive_data(b"")
    conn.next_event()
    assert conn.next_event() is PAUSED
    conn.send(Ok())
    conn.send(EndOfMultiline())
    assert conn.next_event() == ConnectionClosed()


def test_unprompted_err_closes() -> None:
    conn = _greeted()
    assert conn.send(Err(text="autologout; idle for too long")) == (
        b"-ERR autologout; idle for too long\r\n"
    )
    assert conn.our_state is Phase.CLOSED
    with pytest.raises(LocalProtocolError):
        conn.send(Ok())


@pytest.mark.parametrize(
    "event",
    [Ok(), Challenge(), MultilineData(data=b"x\r\n"), EndOfMultiline()],
    ids=["ok", "challenge", "data", "end"],
)
def test_nothing_but_err_when_no_response_is_owed(
    event: Ok | Challenge | MultilineData | EndOfMultiline,
) -> None:
    conn = _greeted()
    with pytest.raises(LocalProtocolError):
        conn.send(event)
    assert conn.our_state is Phase.ERROR
    with pytest.raises(LocalProtocolError):
        conn.next_event()


def test_multiline_answer_must_be_finished() -> None:
    conn = _greeted()
    conn.receive_data(b"CAPA\r\nCAPA\r\n")
    conn.next_event()
    conn.send(Ok())
    assert conn.next_event() is PAUSED  # the "." line is still owed
    with pytest.raises(LocalProtocolError):
        conn.send(Ok())


def test_single_line_answers_take_no_data() -> None:
    conn = _greeted()
    conn.receive_data(b"USER a\r\n")
    conn.next_event()
    conn.send(Ok())
    with pytest.raises(LocalProtocolError):
        conn.send(MultilineData(data=b"x\r\n"))


def test_send_failed_breaks_our_side() -> None:
    conn = _greeted()
    conn.send_failed()
    assert conn.our_state is Phase.ERROR
    with pytest.raises(LocalProtocolError):
        conn.next_event()


# --- hypothesis ------------------------------------------------------------------------------

SCRIPT = (
    b"CAPA\r\nUSER mrose\r\nPASS wrong\r\nUSER mrose\r\nPASS secret\r\nSTAT\r\nLIST\r\n"
    b"LIST 2\r\nUIDL\r\nTOP 1 1\r\nRETR 1\r\nDELE 1\r\nRETR 1\r\nRSET\r\nNOOP\r\nBOGUS\r\n"
    b"RETR 0\r\nQUIT\r\n"
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    # No empty pieces: b"" is EOF.
    points = sorted({min(cut, len(data)) for cut in cuts} - {0, len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


@settings(deadline=None, max_examples=150)
@given(st.lists(st.integers(min_value=0, max_value=len(SCRIPT)), max_size=20))
def test_any_chunking_gives_the_same_conversation(cuts: list[int]) -> None:
    assert run(_chunks(SCRIPT, cuts)) == run([SCRIPT])


def test_the_script_exercises_everything() -> None:
    events, out, error = run([SCRIPT])
    assert error is None
    assert len(events) == SCRIPT.count(b"\r\n") + 1  # and ConnectionClosed
    assert sum(isinstance(e, InvalidCommand) for e in events) == 2
    assert out.count(b"-ERR") == 4  # wrong password, deleted message, BOGUS, RETR 0


_FRAGMENTS = st.sampled_from(
    [b"USER a", b"PASS b", b"AUTH PLAIN", b"*", b"STLS", b"LIST", b"RETR 1", b"QUIT", b" ",
     b"\r\n", b"\r", b"\n", b".", b"dGVzdA==", b"CAPA", b"\xff", b"TOP 1 2"]
)  # fmt: skip


@settings(deadline=None, max_examples=300)
@given(
    st.lists(st.one_of(_FRAGMENTS, st.binary(max_size=8)), max_size=30).map(b"".join),
    st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_random_bytes_raise_only_remote_protocol_error(data: bytes, cuts: list[int]) -> None:
    # `run` answers every event; any exception but RemoteProtocolError escapes it.
    events, out, error = run(_chunks(data, cuts))
    assert run([data]) == (events, out, error)
    if error is None:
        assert isinstance(events[-1], ConnectionClosed) or not data


# --- CAPA read back from the wire ---------------------------------------------------------


def test_capabilities_come_from_our_capa_answer() -> None:
    conn = _greeted()
    assert conn.capabilities == {}
    conn.receive_data(b"CAPA\r\nSTLS\r\n")
    conn.next_event()
    conn.send(Ok(text="Capability list follows"))
    listing = capability_listing(sasl=("PLAIN", "SCRAM-SHA-256"), stls=True, implementation="x")
    out = conn.send(MultilineData(data=listing[:7])) + conn.send(MultilineData(data=listing[7:]))
    assert out == listing
    assert conn.send(EndOfMultiline()) == b".\r\n"
    assert conn.capabilities == {
        "TOP": "",
        "UIDL": "",
        "RESP-CODES": "",
        "PIPELINING": "",
        "USER": "",
        "SASL": "PLAIN SCRAM-SHA-256",
        "AUTH-RESP-CODE": "",
        "STLS": "",
        "IMPLEMENTATION": "x",
    }
    conn.next_event()
    conn.send(Ok())
    conn.start_tls()
    assert conn.capabilities == {}  # RFC 2595 §4: forgotten at the switch
    conn.receive_data(b"CAPA\r\n")
    conn.next_event()
    conn.send(Ok())
    with pytest.raises(LocalProtocolError, match="STLS"):
        conn.send(MultilineData(data=b"TOP\r\nSTLS\r\n"))


def test_capa_listing_must_be_capability_lines() -> None:
    conn = _greeted()
    conn.receive_data(b"CAPA\r\n")
    conn.next_event()
    conn.send(Ok())
    conn.send(MultilineData(data=b"TOP\r\n"))
    with pytest.raises(LocalProtocolError):
        conn.send(MultilineData(data=b" bad\r\n"))


def test_capability_listing_without_extras() -> None:
    assert capability_listing(user=False) == b"TOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
