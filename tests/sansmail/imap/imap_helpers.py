"""Shared drivers for the IMAP core tests: a toy application that answers every event, a
runner that feeds octets in any chunking, and a small independent response parser used
to check what the writer produces."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from sansmail import NEED_DATA, PAUSED, SERVER, RemoteProtocolError
from sansmail.imap import (
    Atom,
    AuthCancel,
    Authenticate,
    AuthResponse,
    Command,
    Config,
    Connection,
    ConnectionClosed,
    Continuation,
    Enable,
    Event,
    Idle,
    IdleDone,
    InvalidCommand,
    LiteralRequested,
    Logout,
    Response,
    ResponseCode,
    Tagged,
    Untagged,
    UntaggedStatus,
    Value,
    encode_mailbox,
)
from sansmail.imap import Literal as LiteralValue
from sansmail.imap._responses import MailboxName

CAPABILITIES = (
    "IMAP4rev1",
    "IMAP4rev2",
    "LITERAL+",
    "SASL-IR",
    "AUTH=PLAIN",
    "ENABLE",
    "ID",
    "IDLE",
    "UIDPLUS",
    "MOVE",
    "NAMESPACE",
    "UNSELECT",
    "SPECIAL-USE",
    "LIST-EXTENDED",
    "LIST-STATUS",
    "BINARY",
    "UTF8=ACCEPT",
    "STARTTLS",
)
GREETING = UntaggedStatus(
    status="OK", code=ResponseCode.capability(CAPABILITIES), text="sansmail ready"
)

Answer = Callable[[Connection, Event], list[Response]]


def default_answer(conn: Connection, event: Event) -> list[Response]:
    """What a cooperative server says to each event."""
    if isinstance(event, LiteralRequested):
        return [Continuation(text="go ahead")]
    if isinstance(event, InvalidCommand):
        return [event.reply_hint]
    pending = conn.pending
    if isinstance(event, Logout):
        return [
            UntaggedStatus(status="BYE", text="bye"),
            Tagged(tag=event.tag, status="OK", text="done"),
        ]
    if isinstance(event, Authenticate):
        if event.initial_response is None:
            return [Continuation(data=b"")]
        return [Tagged(tag=event.tag, status="OK", text="authenticated")]
    if isinstance(event, AuthResponse):
        assert pending is not None
        return [Tagged(tag=pending.tag, status="OK", text="authenticated")]
    if isinstance(event, AuthCancel):
        assert pending is not None
        return [Tagged(tag=pending.tag, status="BAD", text="cancelled")]
    if isinstance(event, Idle):
        return [Continuation(text="idling")]
    if isinstance(event, IdleDone):
        assert pending is not None
        return [Tagged(tag=pending.tag, status="OK", text="idle done")]
    if isinstance(event, Enable):
        wanted = [c for c in event.capabilities if c in ("IMAP4REV2", "UTF8=ACCEPT")]
        answers: list[Response] = []
        if wanted:
            answers.append(Untagged.enabled(wanted))
        return [*answers, Tagged(tag=event.tag, status="OK", text="enabled")]
    if isinstance(event, Command):
        return [Tagged(tag=event.tag, status="OK", text="done")]
    raise AssertionError(f"unexpected event {event!r}")


def run(
    chunks: Iterable[bytes],
    *,
    answer: Answer = default_answer,
    config: Config | None = None,
    greeting: Response = GREETING,
    eof: bool = True,
    conn: Connection | None = None,
) -> tuple[list[Event], bytes, RemoteProtocolError | None, Connection]:
    """Feed `chunks` one at a time, answer every event, and collect events and output.

    STARTTLS answered OK is followed by `start_tls()` as if the handshake succeeded, and
    COMPRESS answered OK by `start_compression()`, whose octets are fed back as they are."""
    conn = conn if conn is not None else Connection(SERVER, config=config)
    out = bytearray(conn.send(greeting)) if conn.their_state.name == "GREETING" else bytearray()
    events: list[Event] = []
    error: RemoteProtocolError | None = None

    def pump() -> bool:
        nonlocal error
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                error = exc
                if exc.reply_hint is not None:
                    out.extend(conn.send(exc.reply_hint))  # type: ignore[arg-type]
                return False
            if event is NEED_DATA:
                return True
            if event is PAUSED:
                if conn.our_state.name == "TLS_PENDING":
                    conn.start_tls()
                    continue
                if conn.our_state.name == "COMPRESS_PENDING":
                    # An identity "compression": the octets after COMPRESS come back.
                    pending = conn.start_compression()
                    if pending:
                        conn.receive_data(pending)
                    continue
                return True
            events.append(event)  # type: ignore[arg-type]
            if isinstance(event, ConnectionClosed):
                return False
            for response in answer(conn, event):  # type: ignore[arg-type]
                out.extend(conn.send(response))

    for chunk in chunks:
        if not chunk:
            continue  # b"" would mean EOF
        conn.receive_data(chunk)
        if not pump():
            return events, bytes(out), error, conn
    if eof:
        conn.receive_data(b"")
        pump()
    return events, bytes(out), error, conn


def commands(events: list[Event]) -> list[Event]:
    """The events that are not the core's own (literal requests, closes)."""
    return [e for e in events if not isinstance(e, LiteralRequested | ConnectionClosed)]


def byte_chunks(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# --- an independent response parser (for checking the writer) -----------------------------

_TOKEN = re.compile(rb"[^\x00-\x20()\]{\"\x7f]+")


class ResponseParser:
    """Parses one server response into plain trees: Atom, int, bytes (strings), None
    (NIL), list; enough IMAP to check what the writer produced, written separately
    from it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def peek(self) -> bytes:
        return self.data[self.pos : self.pos + 1]

    def expect(self, text: bytes) -> None:
        assert self.data.startswith(text, self.pos), (text, self.data[self.pos :])
        self.pos += len(text)

    def value(self) -> Value:
        char = self.peek()
        if char == b"(":
            self.pos += 1
            items: list[Value] = []
            while self.peek() != b")":
                # "1*body" and "1*address" come without SP between their members: a
                # list may follow a list directly; anything else needs the SP.
                adjacent = self.peek() == b"(" and bool(items) and isinstance(items[-1], list)
                if items and not adjacent:
                    self.expect(b" ")
                items.append(self.value())
            self.pos += 1
            return items
        if char == b'"':
            end = self.pos + 1
            raw = bytearray()
            while self.data[end : end + 1] != b'"':
                if self.data[end : end + 1] == b"\\":
                    end += 1
                    assert self.data[end : end + 1] in (b'"', b"\\")
                raw += self.data[end : end + 1]
                assert self.data[end : end + 1] not in (b"\r", b"\n", b"")
                end += 1
            self.pos = end + 1
            return bytes(raw)
        found = re.compile(rb"~?\{([0-9]+)\}\r\n").match(self.data, self.pos)
        if found:
            size = int(found.group(1))
            self.pos = found.end() + size
            return bytes(self.data[found.end() : self.pos])
        found = _TOKEN.match(self.data, self.pos)
        assert found, self.data[self.pos :]
        self.pos = found.end()
        word = found.group().decode("ascii")
        if word == "NIL":
            return None
        if word.isdigit():
            return int(word)
        return Atom(word)

    def fetch_name(self) -> str:
        start = self.pos
        found = re.compile(rb"[A-Z0-9.]+").match(self.data, self.pos)
        assert found
        self.pos = found.end()
        if self.peek() == b"[":
            depth_quote = False
            while True:
                char = self.peek()
                self.pos += 1
                if char == b'"':
                    depth_quote = not depth_quote
                elif char == b"\\" and depth_quote:
                    self.pos += 1
                elif char == b"]" and not depth_quote:
                    break
            if self.peek() == b"<":
                self.pos = self.data.index(b">", self.pos) + 1
        return self.data[start : self.pos].decode("ascii")

    def rest_of_line(self) -> bytes:
        end = self.data.index(b"\r\n", self.pos)
        text = self.data[self.pos : end]
        self.pos = end + 2
        return text


def parse_response(data: bytes) -> tuple[object, ...]:
    """("tagged", tag, status, code, text) / ("status", status, code, text) /
    ("untagged", number, keyword, data) / ("fetch", number, items) / ("continue", text)."""
    p = ResponseParser(data)
    if data.startswith(b"+ "):
        p.pos = 2
        return ("continue", p.rest_of_line())
    if data.startswith(b"* "):
        p.pos = 2
        first = p.value()
        if isinstance(first, Atom) and first in ("OK", "NO", "BAD", "BYE", "PREAUTH"):
            p.expect(b" ")
            code, text = _code_and_text(p)
            return ("status", str(first), code, text)
        number = None
        if isinstance(first, int):
            number = first
            p.expect(b" ")
            first = p.value()
        assert isinstance(first, Atom)
        if first == "FETCH":
            p.expect(b" (")
            items: list[tuple[str, Value]] = []
            while p.peek() != b")":
                if items:
                    p.expect(b" ")
                name = p.fetch_name()
                p.expect(b" ")
                items.append((name, p.value()))
            p.pos += 1
            p.expect(b"\r\n")
            return ("fetch", number, items)
        data_items: list[Value] = []
        while p.peek() == b" ":
            p.pos += 1
            data_items.append(p.value())
        p.expect(b"\r\n")
        assert p.pos == len(data)
        return ("untagged", number, str(first), data_items)
    tag_end = data.index(b" ")
    p.pos = tag_end + 1
    status = p.value()
    p.expect(b" ")
    code, text = _code_and_text(p)
    return ("tagged", data[:tag_end].decode(), str(status), code, text)


def _code_and_text(p: ResponseParser) -> tuple[object, bytes]:
    code = None
    if p.peek() == b"[":
        p.pos += 1
        name = p.value()
        values: list[Value] = []
        while p.peek() == b" ":
            p.pos += 1
            values.append(p.value())
        p.expect(b"] ")
        code = (str(name), values)
    return code, p.rest_of_line()


def normalize(value: Value, *, utf8: bool) -> Value:
    """What `ResponseParser` gives back for a value tree written by the writer."""
    if isinstance(value, MailboxName):
        return encode_mailbox(value, utf8=utf8)
    if isinstance(value, Atom):
        return Atom(str(value))
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, LiteralValue):
        return bytes(value)
    if isinstance(value, list | tuple):
        return [normalize(item, utf8=utf8) for item in value]
    return value


def server(
    state: str = "selected", *, utf8: bool = False, config: Config | None = None
) -> Connection:
    """A connection that has greeted and reached `state` ("not-authenticated",
    "authenticated" or "selected"), UTF-8 enabled if asked."""
    conn = Connection(SERVER, config=config)
    if state == "not-authenticated":
        conn.send(GREETING)
        return conn
    conn.send(
        UntaggedStatus(status="PREAUTH", code=ResponseCode.capability(CAPABILITIES), text="hi")
    )
    if utf8:
        run([b"e ENABLE UTF8=ACCEPT\r\n"], conn=conn, eof=False)
        assert conn.utf8
    if state == "selected":
        run([b"s SELECT INBOX\r\n"], conn=conn, eof=False)
    assert conn.stage.value == state, conn.stage
    return conn


def one(data: bytes, state: str = "selected", *, utf8: bool = False) -> Event:
    """The single event (other than literal requests) that `data` makes."""
    conn = server(state, utf8=utf8)
    events, _out, error, _conn = run([data], conn=conn, eof=False)
    assert error is None, error
    found = commands(events)
    assert len(found) == 1, found
    return found[0]
