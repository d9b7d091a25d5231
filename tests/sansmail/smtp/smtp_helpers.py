"""Shared drivers for the SMTP core tests: a server that is greeted and EHLO'd, an
auto-replying application (with a toy AUTH exchange), and event collection that merges
content chunks."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from sansmail import NEED_DATA, PAUSED, SERVER
from sansmail.smtp import (
    Auth,
    AuthCancel,
    AuthResponse,
    Bdat,
    Config,
    Connection,
    ConnectionClosed,
    Data,
    EndOfChunk,
    EndOfMessage,
    Event,
    Hello,
    InvalidAuthResponse,
    InvalidCommand,
    InvalidMessage,
    MessageData,
    Phase,
    Quit,
    Reply,
    StartTLS,
    _readers,
)

GREETING = Reply(code=220, lines="mx.example ESMTP")
# Everything the core can honour, so that every code path is reachable.
EHLO_LINES = (
    "mx.example",
    "PIPELINING",
    "SIZE 1000000",
    "8BITMIME",
    "SMTPUTF8",
    "CHUNKING",
    "DSN",
    "ENHANCEDSTATUSCODES",
)
# The same, offering AUTH too.
AUTH_EHLO_LINES = (*EHLO_LINES, "AUTH PLAIN LOGIN SCRAM-SHA-256")
OK = Reply(code=250, lines="OK")
AUTH_OK = Reply(code=235, lines="Authentication successful", enhanced="2.7.0")
AUTH_CANCELLED = Reply(code=501, lines="Authentication cancelled", enhanced="5.0.0")


def server(config: Config | None = None) -> Connection:
    """A server that has sent its greeting."""
    conn = Connection(SERVER, config=config)
    conn.send(GREETING)
    return conn


def greeted(config: Config | None = None, lines: Iterable[str] = EHLO_LINES) -> Connection:
    """A server after "EHLO client.example" and our 250 listing `lines`."""
    conn = server(config)
    conn.receive_data(b"EHLO client.example\r\n")
    event = conn.next_event()
    assert event.__class__.__name__ == "Hello", event
    conn.send(Reply(code=250, lines=tuple(lines)))
    return conn


def drain(conn: Connection) -> list[Event]:
    """Every event available now, up to NEED_DATA or PAUSED."""
    out: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or event is PAUSED:
            return out
        assert isinstance(event, Event)
        out.append(event)
        if isinstance(event, ConnectionClosed):
            return out


def feed(conn: Connection, data: bytes) -> list[Event]:
    conn.receive_data(data)
    return drain(conn)


def answer(event: Event, ehlo_lines: tuple[str, ...] = EHLO_LINES) -> Reply | None:
    """What a permissive application says to `event` (None: nothing is owed).

    Its AUTH is a toy: it asks for more until the client sends an empty response, then
    says 235; "*" gets 501."""
    if isinstance(event, InvalidCommand | InvalidMessage | InvalidAuthResponse):
        return event.reply_hint
    if isinstance(event, Auth):
        return Reply.challenge(b"" if event.initial_response is None else b"more?")
    if isinstance(event, AuthResponse):
        return AUTH_OK if not event.data else Reply.challenge(b"more?")
    if isinstance(event, AuthCancel):
        return AUTH_CANCELLED
    if isinstance(event, Data):
        return Reply(code=354, lines="go ahead")
    if isinstance(event, Quit):
        return Reply(code=221, lines="bye")
    if isinstance(event, StartTLS):
        return Reply(code=454, lines="TLS not available now")
    if isinstance(event, MessageData | Bdat | ConnectionClosed):
        return None
    if isinstance(event, Hello):
        return Reply(code=250, lines=ehlo_lines)
    assert isinstance(event, Event)
    return OK


def converse(
    chunks: Iterable[bytes],
    config: Config | None = None,
    *,
    eof: bool = True,
    ehlo_lines: tuple[str, ...] = EHLO_LINES,
) -> tuple[list[Event], bytes]:
    """Feed `chunks` one by one to a greeted-by-us server that answers everything with
    `answer` (EHLO with `ehlo_lines`); return the events and every byte we sent after
    the greeting."""
    conn = server(config)
    events: list[Event] = []
    out = bytearray()

    def pump() -> None:
        while conn.our_state not in (Phase.CLOSED, Phase.ERROR):
            event = conn.next_event()
            if event is NEED_DATA or event is PAUSED:
                return
            assert isinstance(event, Event)
            events.append(event)
            reply = answer(event, ehlo_lines)
            if reply is not None:
                out.extend(conn.send(reply))
            if isinstance(event, ConnectionClosed):
                return

    for chunk in chunks:
        if conn.our_state in (Phase.CLOSED, Phase.ERROR):
            break
        conn.receive_data(chunk)
        pump()
    if eof and conn.our_state not in (Phase.CLOSED, Phase.ERROR):
        conn.receive_data(b"")
        pump()
    return events, bytes(out)


def merged(events: Iterable[Event]) -> list[Event]:
    """`events` with runs of MessageData joined, so chunking does not matter.

    Content that the application throws away is dropped too: that of a refused message
    (InvalidMessage) and that of a message cut short by EOF. How much of it was handed
    out before the end depends on where the reads fell.
    """
    out: list[Event] = []
    for event in events:
        if isinstance(event, InvalidMessage | ConnectionClosed):
            start = len(out)
            stop = (MessageData, EndOfChunk, Bdat) if isinstance(event, InvalidMessage) else ()
            while start and isinstance(out[start - 1], (MessageData, *stop)):
                start -= 1
            out[start:] = [e for e in out[start:] if not isinstance(e, MessageData)]
            out.append(event)
        elif isinstance(event, MessageData) and out and isinstance(out[-1], MessageData):
            out[-1] = MessageData(data=out[-1].data + event.data)
        else:
            out.append(event)
    return out


def content_of(events: Iterable[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, MessageData))


def ends(events: Iterable[Event]) -> list[Event]:
    """Only the events that end content."""
    return [e for e in events if isinstance(e, EndOfMessage | EndOfChunk | InvalidMessage)]


@contextmanager
def min_chunk(size: int) -> Iterator[None]:
    """Let the content readers hand out pieces as small as `size` octets, so that small
    test inputs exercise the code that cuts content between reads."""
    saved = _readers._MIN_CHUNK
    _readers._MIN_CHUNK = size
    try:
        yield
    finally:
        _readers._MIN_CHUNK = saved


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the positions `cuts` names (modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]
