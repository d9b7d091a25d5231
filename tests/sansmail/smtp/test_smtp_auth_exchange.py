"""SMTP AUTH (RFC 4954) in the server core: byte-level exchanges driven by the real
`sansmail.sasl` mechanisms, the command's refusals, the exchange's line rules, the
session's authenticated state and the replies the application may send. MAIL's AUTH=
parameter is tested in test_smtp_auth_param.py, the properties in test_smtp_properties.py."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smtp_helpers import AUTH_EHLO_LINES, OK, feed, greeted, server

from sansmail import NEED_DATA, PAUSED, LocalProtocolError, RemoteProtocolError
from sansmail.sasl import (
    Challenge,
    Failure,
    NeedCredentials,
    ScramSHA256Client,
    ScramSHA256Server,
    ServerMechanism,
    Step,
    Success,
    VerifyPassword,
    derive_scram_credentials,
    server_mechanism,
)
from sansmail.smtp import (
    Auth,
    AuthCancel,
    AuthResponse,
    Config,
    Connection,
    ConnectionClosed,
    Event,
    InvalidAuthResponse,
    InvalidCommand,
    Noop,
    Phase,
    Reply,
    Reset,
    StartTLS,
)
from sansmail.smtp._codes import AUTH_CANCELLED, AUTH_FAILED, AUTH_SUCCEEDED

PASSWORDS = {"user": "pencil"}
SALT = bytes(range(16))
SCRAM_KEYS = derive_scram_credentials("pencil", SALT, 4096, "sha256")
PLAIN_USER_PENCIL = b"AHVzZXIAcGVuY2ls"  # base64("\0user\0pencil")
MAIL = b"MAIL FROM:<a@b.example>\r\n"

SMALL = Config(max_auth_response=1024)  # the smallest limit: cheap long-line tests


class SaslApp:
    """The AUTH half of a server application: it runs a `sansmail.sasl` mechanism behind
    the core, checks passwords against PASSWORDS and answers like RFC 4954 asks."""

    def __init__(self) -> None:
        self.mechanism: ServerMechanism | None = None
        self.final_sent = False  # SCRAM's server-final data went out as a challenge
        self.outcome: Step | None = None

    def __call__(self, event: Event) -> Reply | None:
        if isinstance(event, InvalidCommand | InvalidAuthResponse):
            self.mechanism = None
            return event.reply_hint
        if isinstance(event, AuthCancel):
            self.mechanism = None
            return AUTH_CANCELLED
        if isinstance(event, Auth):
            self.mechanism = server_mechanism(
                event.mechanism, nonce="serverNONCE-0123456789", fake_salt_key=b"k" * 32
            )
            self.final_sent = False
            return self._reply(self.mechanism.receive(event.initial_response))
        if isinstance(event, AuthResponse):
            assert self.mechanism is not None
            if self.final_sent:
                # RFC 4954 §4: the additional data went out as a challenge; the client's
                # (empty) answer to it is what 235 answers.
                return AUTH_SUCCEEDED if event.data == b"" else AUTH_FAILED
            return self._reply(self.mechanism.receive(event.data))
        if isinstance(event, ConnectionClosed):
            return None
        return OK

    def _reply(self, step: Step) -> Reply:
        mech = self.mechanism
        assert mech is not None
        if isinstance(step, VerifyPassword):
            ok = PASSWORDS.get(step.authcid) == step.password
            step = mech.accept() if ok else mech.reject()
        elif isinstance(step, NeedCredentials):
            step = mech.provide(SCRAM_KEYS if step.authcid in PASSWORDS else None)
        self.outcome = step
        if isinstance(step, Challenge):
            return Reply.challenge(step.data)
        if isinstance(step, Success) and step.data:
            self.final_sent = True
            return Reply.challenge(step.data)
        if isinstance(step, Success):
            return AUTH_SUCCEEDED
        assert isinstance(step, Failure)
        return AUTH_FAILED


def pump(conn: Connection, app: Callable[[Event], Reply | None], data: bytes = b"") -> bytes:
    """Feed `data`, answer every event with `app`; return the bytes the server wrote."""
    if data:
        conn.receive_data(data)
    out = bytearray()
    while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
        assert isinstance(event, Event)
        reply = app(event)
        if reply is not None:
            out += conn.send(reply)
    return bytes(out)


def play(conn: Connection, app: SaslApp, steps: list[tuple[bytes, bytes]]) -> None:
    """Each step: what the client sends, and exactly what the server must answer."""
    for client, expected in steps:
        assert pump(conn, app, client) == expected, client


def auth_server(
    lines: tuple[str, ...] = AUTH_EHLO_LINES, config: Config | None = None
) -> Connection:
    return greeted(config, lines=lines)


# --- Exchanges, byte for byte -----------------------------------------------------------


def test_plain_with_an_initial_response() -> None:
    conn = auth_server()
    app = SaslApp()
    conn.receive_data(b"AUTH PLAIN " + PLAIN_USER_PENCIL + b"\r\n")
    event = conn.next_event()
    assert event == Auth(mechanism="PLAIN", initial_response=b"\0user\0pencil")
    assert conn.next_event() is PAUSED
    assert conn.send(app(event)) == b"235 2.7.0 Authentication successful\r\n"  # type: ignore[arg-type]
    assert conn.authenticated
    assert conn.our_state is Phase.COMMAND


def test_plain_without_an_initial_response_gets_an_empty_challenge() -> None:
    conn = auth_server()
    assert not conn.authenticated
    play(
        conn,
        SaslApp(),
        [
            # RFC 4954 §4: an empty challenge is "334" and a space, no text.
            (b"AUTH PLAIN\r\n", b"334 \r\n"),
            (PLAIN_USER_PENCIL + b"\r\n", b"235 2.7.0 Authentication successful\r\n"),
        ],
    )
    assert conn.authenticated


def test_plain_with_an_empty_initial_response_is_equals_sign() -> None:
    conn = auth_server()
    [event] = feed(conn, b"AUTH PLAIN =\r\n")
    assert event == Auth(mechanism="PLAIN", initial_response=b"")
    # The mechanism refuses an empty message: 535, and the session goes on unauthenticated.
    assert conn.send(SaslApp()(event)) == b"535 5.7.8 Authentication credentials invalid\r\n"  # type: ignore[arg-type]
    assert not conn.authenticated


def test_login_takes_two_challenges() -> None:
    conn = auth_server()
    play(
        conn,
        SaslApp(),
        [
            (b"AUTH LOGIN\r\n", b"334 VXNlcm5hbWU6\r\n"),  # "Username:"
            (b"dXNlcg==\r\n", b"334 UGFzc3dvcmQ6\r\n"),  # "user" -> "Password:"
            (b"cGVuY2ls\r\n", b"235 2.7.0 Authentication successful\r\n"),
        ],
    )
    assert conn.authenticated


def test_wrong_password_is_535_and_another_attempt_may_follow() -> None:
    conn = auth_server()
    app = SaslApp()
    play(
        conn,
        app,
        [
            (
                b"auth plain AHVzZXIAd3Jvbmc=\r\n",
                b"535 5.7.8 Authentication credentials invalid\r\n",
            ),
            (
                b"AUTH PLAIN " + PLAIN_USER_PENCIL + b"\r\n",
                b"235 2.7.0 Authentication successful\r\n",
            ),
        ],
    )
    assert conn.authenticated


def test_scram_sha_256_against_the_real_mechanisms() -> None:
    conn = auth_server()
    app = SaslApp()
    client = ScramSHA256Client(authcid="user", password="pencil", nonce="clientNONCE_abcdef")
    first = client.initial_response()
    assert first is not None
    wire = pump(conn, app, b"AUTH SCRAM-SHA-256 " + base64.b64encode(first) + b"\r\n")
    rounds = 0
    while wire.startswith(b"334 "):
        assert wire.endswith(b"\r\n")
        assert wire.count(b"\r\n") == 1
        challenge = base64.b64decode(wire[4:-2], validate=True)
        answer = client.respond(challenge)
        wire = pump(conn, app, base64.b64encode(answer) + b"\r\n")
        rounds += 1
    # server-first, then server-final sent as a challenge (no "additional data with
    # success" in SMTP, RFC 4954 §4); the client's empty answer gets 235.
    assert rounds == 2
    assert wire == b"235 2.7.0 Authentication successful\r\n"
    client.verify_server_final(None)
    assert client.complete
    assert isinstance(app.outcome, Success)
    assert conn.authenticated


def test_scram_with_a_wrong_password_fails() -> None:
    conn = auth_server()
    app = SaslApp()
    client = ScramSHA256Client(authcid="user", password="wrong", nonce="clientNONCE_abcdef")
    first = client.initial_response()
    assert first is not None
    wire = pump(conn, app, b"AUTH SCRAM-SHA-256 " + base64.b64encode(first) + b"\r\n")
    answer = client.respond(base64.b64decode(wire[4:-2]))
    wire = pump(conn, app, base64.b64encode(answer) + b"\r\n")
    assert wire == b"535 5.7.8 Authentication credentials invalid\r\n"
    assert not conn.authenticated


def test_scram_server_mechanism_can_be_built_directly() -> None:
    # The brief's spelling: the class itself, not the registry, behind the same core.
    mech = ScramSHA256Server(nonce="serverNONCE-0123456789", fake_salt_key=b"k" * 32)
    conn = auth_server()
    [event] = feed(conn, b"AUTH SCRAM-SHA-256\r\n")
    assert isinstance(event, Auth)
    assert event.initial_response is None
    step = mech.receive(event.initial_response)
    assert step == Challenge(data=b"")
    assert conn.send(Reply.challenge(step.data)) == b"334 \r\n"


def test_pipelined_exchange_is_read_in_lockstep() -> None:
    conn = auth_server()
    conn.receive_data(b"AUTH PLAIN\r\n" + PLAIN_USER_PENCIL + b"\r\nNOOP\r\n")
    assert isinstance(conn.next_event(), Auth)
    assert conn.next_event() is PAUSED  # the response waits for our 334
    assert conn.send(Reply.challenge(b"")) == b"334 \r\n"
    assert conn.our_state is Phase.AUTH
    event = conn.next_event()
    assert event == AuthResponse(data=b"\0user\0pencil")
    assert conn.send(AUTH_SUCCEEDED) == b"235 2.7.0 Authentication successful\r\n"
    assert conn.next_event() == Noop()


def test_a_starttls_auth_session_like_rfc_4954s_example() -> None:
    conn = greeted(lines=("mx.example", "STARTTLS", "ENHANCEDSTATUSCODES"))
    [event] = feed(conn, b"AUTH PLAIN " + PLAIN_USER_PENCIL + b"\r\n")
    assert isinstance(event, InvalidCommand)  # not offered before TLS
    assert event.reply_hint.code == 502
    conn.send(event.reply_hint)
    assert feed(conn, b"STARTTLS\r\n") == [StartTLS()]
    conn.send(Reply(code=220, lines="Ready to start TLS"))
    conn.start_tls()
    feed(conn, b"EHLO client.example\r\n")
    conn.send(Reply(code=250, lines=("mx.example", "AUTH PLAIN", "ENHANCEDSTATUSCODES")))
    play(
        conn,
        SaslApp(),
        [
            (
                b"AUTH PLAIN " + PLAIN_USER_PENCIL + b"\r\n",
                b"235 2.7.0 Authentication successful\r\n",
            )
        ],
    )
    assert conn.authenticated
    assert conn.tls_active


# --- Cancel, bad base64, long lines ----------------------------------------------------


def test_star_cancels_and_must_get_501() -> None:
    conn = auth_server()
    feed(conn, b"AUTH LOGIN\r\n")
    conn.send(Reply.challenge(b"Username:"))
    assert feed(conn, b"*\r\n") == [AuthCancel()]
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(code=535, lines="no"))  # RFC 4954 §4: 501, nothing else


def test_star_cancel_then_the_session_goes_on() -> None:
    conn = auth_server()
    feed(conn, b"AUTH LOGIN\r\n")
    conn.send(Reply.challenge(b"Username:"))
    feed(conn, b"*\r\n")
    assert conn.send(AUTH_CANCELLED) == b"501 5.0.0 Authentication cancelled\r\n"
    assert conn.our_state is Phase.COMMAND
    assert not conn.authenticated
    assert feed(conn, b"NOOP\r\n") == [Noop()]


@pytest.mark.parametrize(
    "response",
    [b"!!!!", b"AB=C", b"QR==", b"dXNlcg", b"dXNl cg==", b"dXNlcg===", b"=", b"**", b"\xff\xfe"],
)
def test_a_response_that_is_not_base64_aborts_the_exchange(response: bytes) -> None:
    conn = auth_server()
    feed(conn, b"AUTH LOGIN\r\n")
    conn.send(Reply.challenge(b"Username:"))
    [event] = feed(conn, response + b"\r\n")
    assert isinstance(event, InvalidAuthResponse)
    assert event.line == response
    assert (event.reply_hint.code, event.reply_hint.enhanced) == (501, "5.5.2")
    assert conn.send(event.reply_hint) == b"501 5.5.2 Cannot decode base64 response\r\n"
    # The exchange is over: the next line is a command again.
    assert feed(conn, b"NOOP\r\n") == [Noop()]


def test_an_empty_response_line_is_an_empty_response() -> None:
    conn = auth_server()
    feed(conn, b"AUTH PLAIN\r\n")
    conn.send(Reply.challenge(b""))
    assert feed(conn, b"\r\n") == [AuthResponse(data=b"")]


@pytest.mark.parametrize("initial", [b"!!!!", b"AB=C", b"QR==", b"dXNlcg", b"dXNlcg=="[:-1]])
def test_an_initial_response_that_is_not_base64_is_501_5_5_2(initial: bytes) -> None:
    conn = auth_server()
    [event] = feed(conn, b"AUTH PLAIN " + initial + b"\r\n")
    assert isinstance(event, InvalidCommand)
    assert (event.reply_hint.code, event.reply_hint.enhanced) == (501, "5.5.2")


def test_bad_responses_count_against_the_invalid_command_budget() -> None:
    conn = auth_server(config=Config(max_invalid_commands=2))
    for _ in range(2):
        feed(conn, b"AUTH PLAIN\r\n")
        conn.send(Reply.challenge(b""))
        [event] = feed(conn, b"???\r\n")
        conn.send(event.reply_hint)  # type: ignore[attr-defined]
    feed(conn, b"AUTH PLAIN\r\n")
    conn.send(Reply.challenge(b""))
    with pytest.raises(RemoteProtocolError) as info:
        feed(conn, b"???\r\n")
    assert info.value.reply_hint.code == 421  # type: ignore[attr-defined]


def test_a_response_over_the_limit_is_500_5_5_6_and_recoverable() -> None:
    conn = auth_server(config=SMALL)
    feed(conn, b"AUTH PLAIN\r\n")
    conn.send(Reply.challenge(b""))
    ok = base64.b64encode(b"x" * 768)  # exactly 1024 octets of base64: allowed
    assert feed(conn, ok + b"\r\n") == [AuthResponse(data=b"x" * 768)]
    conn.send(Reply.challenge(b""))
    [event] = feed(conn, ok + b"AAAA\r\n")
    assert isinstance(event, InvalidAuthResponse)
    assert (event.reply_hint.code, event.reply_hint.enhanced) == (500, "5.5.6")
    conn.send(event.reply_hint)
    assert feed(conn, b"NOOP\r\n") == [Noop()]


def test_a_response_past_the_hard_cap_ends_the_session() -> None:
    conn = auth_server(config=SMALL)
    feed(conn, b"AUTH PLAIN\r\n")
    conn.send(Reply.challenge(b""))
    with pytest.raises(RemoteProtocolError) as info:
        feed(conn, b"A" * SMALL.auth_line_cap)  # no CRLF in sight: never buffered further
    hint = info.value.reply_hint
    assert isinstance(hint, Reply)
    assert (hint.code, hint.enhanced) == (500, "5.5.6")
    assert conn.their_state is Phase.ERROR


def test_bare_lf_in_an_exchange_line_is_fatal() -> None:
    conn = auth_server()
    feed(conn, b"AUTH PLAIN\r\n")
    conn.send(Reply.challenge(b""))
    with pytest.raises(RemoteProtocolError):
        feed(conn, b"AHVzZXIAcGVuY2ls\nNOOP\r\n")


def test_a_long_initial_response_is_allowed_on_the_auth_line() -> None:
    conn = auth_server()
    big = b"x" * 9216  # 12288 octets of base64: RFC 4954 §4's figure
    line = b"AUTH PLAIN " + base64.b64encode(big) + b"\r\n"
    assert len(line) > conn.config.command_line_cap
    assert feed(conn, line) == [Auth(mechanism="PLAIN", initial_response=big)]
    conn.send(AUTH_FAILED)
    [event] = feed(conn, b"auth plain " + base64.b64encode(big + b"xyz") + b"\r\n")
    assert isinstance(event, InvalidCommand)
    assert (event.reply_hint.code, event.reply_hint.enhanced) == (500, "5.5.6")


def test_other_commands_keep_the_short_cap_when_auth_is_offered() -> None:
    conn = auth_server()
    with pytest.raises(RemoteProtocolError) as info:
        feed(conn, b"NOOP " + b"x" * conn.config.command_line_cap)
    assert info.value.reply_hint.code == 500  # type: ignore[attr-defined]


def test_an_auth_line_past_its_cap_ends_the_session() -> None:
    conn = auth_server(config=SMALL)
    with pytest.raises(RemoteProtocolError) as info:
        feed(conn, b"AuTh PLAIN " + b"A" * SMALL.auth_line_cap)
    assert info.value.reply_hint.enhanced == "5.5.6"  # type: ignore[attr-defined]


def test_eof_during_the_exchange() -> None:
    conn = auth_server()
    feed(conn, b"AUTH PLAIN\r\n")
    conn.send(Reply.challenge(b""))
    conn.receive_data(b"AHVz")
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.their_state is Phase.CLOSED


# --- The AUTH command's refusals -----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code", "enhanced"),
    [
        (b"AUTH", 501, "5.5.4"),
        (b"AUTH ", 501, "5.5.4"),
        (b"AUTH PLAIN abc= def=", 501, "5.5.4"),
        (b"AUTH PL@IN", 501, "5.5.4"),
        (b"AUTH " + b"X" * 21, 501, "5.5.4"),
        (b"AUTH PL\xc3\x84IN", 501, "5.5.4"),
        (b"AUTH CRAM-MD5", 504, "5.5.4"),  # a SASL name, but not on our AUTH line
        (b"AUTH X-UNKNOWN =", 504, "5.5.4"),
    ],
)
def test_auth_command_refusals(line: bytes, code: int, enhanced: str) -> None:
    conn = auth_server()
    [event] = feed(conn, line + b"\r\n")
    assert isinstance(event, InvalidCommand), event
    assert (event.reply_hint.code, event.reply_hint.enhanced) == (code, enhanced), event.reason
    assert conn.send(event.reply_hint).startswith(f"{code} {enhanced} ".encode())


def test_mechanism_names_compare_without_case() -> None:
    conn = auth_server()
    assert feed(conn, b"auth Scram-Sha-256\r\n") == [Auth(mechanism="SCRAM-SHA-256")]


def test_auth_not_advertised_is_502() -> None:
    conn = greeted()  # no AUTH line
    [event] = feed(conn, b"AUTH PLAIN\r\n")
    assert isinstance(event, InvalidCommand)
    assert (event.reply_hint.code, event.reply_hint.enhanced) == (502, "5.5.1")


def test_legacy_auth_equals_line_alone_does_not_offer_auth() -> None:
    conn = greeted(lines=("mx.example", "AUTH=PLAIN LOGIN"))
    [event] = feed(conn, b"AUTH PLAIN\r\n")
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint.code == 502


def test_auth_after_helo_is_502_nothing_was_offered() -> None:
    conn = server()
    feed(conn, b"HELO client.example\r\n")
    conn.send(Reply(code=250, lines="mx.example"))
    [event] = feed(conn, b"AUTH PLAIN\r\n")
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint.code == 502


def test_auth_before_any_greeting_is_503() -> None:
    conn = server()
    [event] = feed(conn, b"AUTH PLAIN\r\n")
    assert isinstance(event, InvalidCommand)
    assert (event.reply_hint.code, event.reply_hint.enhanced) == (503, "5.5.1")


def test_auth_during_a_transaction_is_503() -> None:
    conn = auth_server()
    feed(conn, MAIL)
    conn.send(OK)
    [event] = feed(conn, b"AUTH PLAIN " + PLAIN_USER_PENCIL + b"\r\n")
    assert isinstance(event, InvalidCommand)
    assert (event.reply_hint.code, event.reply_hint.enhanced) == (503, "5.5.1")
    assert event.reply_hint.text == "AUTH not permitted during a mail transaction"


def test_second_auth_after_success_is_503_even_after_rset_and_ehlo() -> None:
    conn = auth_server()
    app = SaslApp()
    pump(conn, app, b"AUTH PLAIN " + PLAIN_USER_PENCIL + b"\r\n")
    assert conn.authenticated
    for line in (b"RSET\r\n", b"EHLO again.example\r\n"):
        pump(conn, lambda e: Reply(code=250, lines=AUTH_EHLO_LINES), line)
        # RFC 4954 §4: authentication lasts for the session; RSET and EHLO keep it.
        assert conn.authenticated
        [event] = feed(conn, b"AUTH PLAIN " + PLAIN_USER_PENCIL + b"\r\n")
        assert isinstance(event, InvalidCommand)
        assert (event.reply_hint.code, event.reply_hint.text) == (503, "Already authenticated")
        conn.send(event.reply_hint)


def test_start_tls_forgets_authentication() -> None:
    lines = ("mx.example", "STARTTLS", "AUTH PLAIN")
    conn = greeted(lines=lines)
    wire = pump(conn, SaslApp(), b"AUTH PLAIN " + PLAIN_USER_PENCIL + b"\r\n")
    assert wire.startswith(b"235 ")
    before = conn.authenticated
    feed(conn, b"STARTTLS\r\n")
    conn.send(Reply(code=220, lines="go ahead"))
    conn.start_tls()
    # RFC 3207 §4.2: everything learnt before the handshake is gone, AUTH included.
    assert before
    assert not conn.authenticated
    feed(conn, b"EHLO c\r\n")
    conn.send(Reply(code=250, lines=("mx.example", "AUTH PLAIN")))
    assert feed(conn, b"AUTH PLAIN =\r\n") == [Auth(mechanism="PLAIN", initial_response=b"")]


# --- What the application may send ---------------------------------------------------------


def test_challenge_replies_serialise_as_rfc_4954_wants() -> None:
    conn = auth_server()  # ENHANCEDSTATUSCODES is on: a 334 still carries no status code
    feed(conn, b"AUTH LOGIN\r\n")
    assert conn.send(Reply.challenge(b"Username:")) == b"334 VXNlcm5hbWU6\r\n"
    feed(conn, b"dXNlcg==\r\n")
    assert conn.send(Reply.challenge(b"")) == b"334 \r\n"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(code=334, lines="not base64!"),
        Reply(code=334, lines=("VXNlcm5hbWU6", "VXNlcm5hbWU6")),
        Reply(code=334, lines="QR=="),  # padding bits set: not what a strict client takes
        Reply(code=250, lines="OK"),  # only 235 ends an exchange in success
        Reply(code=354, lines="go ahead"),
    ],
)
def test_replies_an_auth_command_cannot_get(reply: Reply) -> None:
    conn = auth_server()
    feed(conn, b"AUTH PLAIN\r\n")
    with pytest.raises(LocalProtocolError):
        conn.send(reply)
    assert conn.our_state is Phase.ERROR


def test_a_challenge_answers_nothing_but_auth() -> None:
    conn = auth_server()
    feed(conn, b"NOOP\r\n")
    with pytest.raises(LocalProtocolError):
        conn.send(Reply.challenge(b""))


@pytest.mark.parametrize(
    ("reply", "wire"),
    [
        (
            Reply(code=454, lines="Temporary authentication failure", enhanced="4.7.0"),
            b"454 4.7.0 ",
        ),
        (Reply(code=534, lines="Authentication mechanism is too weak", enhanced="5.7.9"), b"534 "),
        (Reply(code=538, lines="Encryption required", enhanced="5.7.11"), b"538 5.7.11 "),
        (Reply(code=504, lines="Unrecognized authentication type", enhanced="5.5.4"), b"504 "),
    ],
)
def test_final_failures_end_the_exchange(reply: Reply, wire: bytes) -> None:
    conn = auth_server()
    feed(conn, b"AUTH LOGIN\r\n")
    conn.send(Reply.challenge(b"Username:"))
    feed(conn, b"dXNlcg==\r\n")
    assert conn.send(reply).startswith(wire)
    assert conn.our_state is Phase.COMMAND
    assert not conn.authenticated
    assert feed(conn, b"RSET\r\n") == [Reset()]


def test_421_may_end_an_exchange() -> None:
    conn = auth_server()
    feed(conn, b"AUTH PLAIN\r\n")
    conn.send(Reply.challenge(b""))
    assert conn.send(Reply(code=421, lines="bye")) == b"421 4.0.0 bye\r\n"
    assert conn.our_state is Phase.CLOSED


@pytest.mark.parametrize(
    "lines",
    [
        ("mx.example", "AUTH"),  # no mechanism
        ("mx.example", "AUTH plain"),  # RFC 4422 §3.1: names are upper case
        ("mx.example", "AUTH PLAIN LOG/IN"),
    ],
)
def test_a_malformed_auth_line_in_our_ehlo_reply_is_refused(lines: tuple[str, ...]) -> None:
    conn = server()
    feed(conn, b"EHLO c\r\n")
    with pytest.raises(LocalProtocolError, match="AUTH"):
        conn.send(Reply(code=250, lines=lines))


# --- Events ---------------------------------------------------------------------------------


def test_auth_events_validate() -> None:
    assert Auth(mechanism="scram-sha-256").mechanism == "SCRAM-SHA-256"
    for bad in ("", "PLAIN LOGIN", "X" * 21, "PLÄIN", "PL@IN"):
        with pytest.raises(ValueError):
            Auth(mechanism=bad)
    with pytest.raises(TypeError):
        Auth(mechanism="PLAIN", initial_response="text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AuthResponse(data="text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Auth("PLAIN")  # type: ignore[call-arg]  # keyword-only


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_challenge_round_trips(data: bytes) -> None:
    conn = auth_server()
    feed(conn, b"AUTH PLAIN\r\n")
    wire = conn.send(Reply.challenge(data))
    assert wire.startswith(b"334 ")
    assert wire.endswith(b"\r\n")
    assert base64.b64decode(wire[4:-2], validate=True) == data


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_any_response_round_trips(data: bytes) -> None:
    conn = auth_server()
    feed(conn, b"AUTH PLAIN\r\n")
    conn.send(Reply.challenge(b""))
    assert feed(conn, base64.b64encode(data) + b"\r\n") == [AuthResponse(data=data)]
