"""Properties, with hypothesis: chunking never matters, random bytes only ever raise
RemoteProtocolError (AUTH exchanges included), and dot-stuffing round-trips."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smtp_helpers import AUTH_EHLO_LINES, content_of, converse, merged, min_chunk, split

from sansmail import RemoteProtocolError
from sansmail.smtp import Config, EndOfMessage, Event, InvalidMessage

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Fragments that steer random input into every phase: commands (valid and not), content
# with dots and stray CR/LF, BDAT headers, the smuggling family, STARTTLS.
FRAGMENTS = [
    b"EHLO c.example\r\n",
    b"HELO c\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME\r\n",
    b"RCPT TO:<c@d.example>\r\n",
    b"RCPT TO:<Postmaster>\r\n",
    b"DATA\r\n",
    b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"RSET\r\n",
    b"NOOP x\r\n",
    b"VRFY a\r\n",
    b"STARTTLS\r\n",
    b"QUIT\r\n",
    b"FROB\r\n",
    b".\r\n",
    b"..\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r.\r\n",
    b"\n.\r\n",
    b"\r\n.\r",
    b"line of text\r\n",
    b"\r",
    b"\n",
    b".",
    "MAIL FROM:<ü@b.example> SMTPUTF8\r\n".encode(),
]

sessions = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=20)), max_size=25).map(
    b"".join
)
small = Config(max_invalid_commands=5, max_message_size=2000, max_text_line=1000)


def outcome(chunks: list[bytes], config: Config = small) -> tuple[list[Event], bytes, str]:
    try:
        events, wire = converse(chunks, config)
    except RemoteProtocolError as exc:
        return [], b"", f"RemoteProtocolError {exc.reply_hint}"
    return merged(events), wire, ""


@SETTINGS
@given(data=sessions, cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_any_chunking_gives_the_same_events_and_replies(data: bytes, cuts: list[int]) -> None:
    expected = outcome([data])
    assert outcome(split(data, cuts)) == expected
    for size in (1, 2, 5):
        with min_chunk(size):
            assert outcome(split(data, cuts)) == expected


@SETTINGS
@given(data=sessions)
def test_byte_by_byte_gives_the_same_events(data: bytes) -> None:
    expected = outcome([data])
    assert outcome([data[i : i + 1] for i in range(len(data))]) == expected
    with min_chunk(1):
        assert outcome([data[i : i + 1] for i in range(len(data))]) == expected


@SETTINGS
@given(data=sessions, cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_random_input_only_ever_raises_remote_protocol_error(data: bytes, cuts: list[int]) -> None:
    with contextlib.suppress(RemoteProtocolError):
        converse(split(data, cuts), small)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_raw_random_bytes_after_ehlo(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        converse([b"EHLO c\r\n", data], small)


text_lines = st.lists(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    max_size=30,
)


@SETTINGS
@given(lines=text_lines, cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_dot_stuffing_round_trips(lines: list[bytes], cuts: list[int]) -> None:
    content = b"".join(line + b"\r\n" for line in lines)
    # RFC 5321 §4.5.2, as a client does it: a line starting with "." gets another.
    stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    wire = b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n" + stuffed
    wire += b".\r\nQUIT\r\n"
    for size in (1, 3, 8192):
        with min_chunk(size):
            events, _ = converse(split(wire, cuts), Config())
        assert content_of(events) == content
        assert sum(isinstance(e, EndOfMessage) for e in events) == 1


@SETTINGS
@given(chunks=st.lists(st.binary(max_size=50), min_size=1, max_size=6))
def test_bdat_content_round_trips(chunks: list[bytes]) -> None:
    wire = b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
    for i, chunk in enumerate(chunks):
        last = b" LAST" if i == len(chunks) - 1 else b""
        wire += b"BDAT %d%s\r\n" % (len(chunk), last) + chunk
    events, _ = converse([wire], Config())
    whole = b"".join(chunks)
    crlf = whole.count(b"\r\n")
    if whole.count(b"\r") != crlf:
        assert isinstance(events[-2], InvalidMessage)  # a bare CR refuses
    else:
        assert events[-2] == EndOfMessage()
        # A bare LF is normalised; nothing else changes.
        assert content_of(events) == whole.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# --- Properties with AUTH exchanges in the input ---------------------------------------------

AUTH_FRAGMENTS = [
    b"EHLO c.example\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH PLAIN AHVzZXIAcGVuY2ls\r\n",
    b"AUTH LOGIN dXNlcg==\r\n",
    b"auth scram-sha-256 =\r\n",
    b"AUTH CRAM-MD5\r\n",
    b"AUTH\r\n",
    b"dXNlcg==\r\n",
    b"\r\n",
    b"*\r\n",
    b"=\r\n",
    b"AB=C\r\n",
    b"MAIL FROM:<a@b.example> AUTH=<>\r\n",
    b"MAIL FROM:<a@b.example> AUTH=e+3Dmc2@b.example\r\n",
    b"RCPT TO:<c@d.example>\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"\r",
    b"\n",
    b"A" * 700,
]
auth_sessions = st.lists(
    st.one_of(st.sampled_from(AUTH_FRAGMENTS), st.binary(max_size=20)), max_size=25
).map(b"".join)
SMALL_SESSION = Config(max_invalid_commands=5, max_auth_response=1024)


def auth_outcome(chunks: list[bytes]) -> tuple[list[Event], bytes, str]:
    try:
        events, wire = converse(chunks, SMALL_SESSION, ehlo_lines=AUTH_EHLO_LINES)
    except RemoteProtocolError as exc:
        return [], b"", f"RemoteProtocolError {exc.reply_hint}"
    return merged(events), wire, ""


@settings(max_examples=150, deadline=None)
@given(data=auth_sessions, cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_chunking_never_matters_with_auth_in_the_input(data: bytes, cuts: list[int]) -> None:
    expected = auth_outcome([data])
    assert auth_outcome(split(data, cuts)) == expected
    assert auth_outcome([data[i : i + 1] for i in range(len(data))]) == expected


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_random_bytes_in_an_exchange_only_raise_remote_protocol_error(
    data: bytes, cuts: list[int]
) -> None:
    opening = b"EHLO c\r\nAUTH LOGIN\r\n"
    with contextlib.suppress(RemoteProtocolError):
        converse([opening, *split(data, cuts)], SMALL_SESSION, ehlo_lines=AUTH_EHLO_LINES)
