"""Shared drivers for the POP3 core tests: a toy maildrop application that answers every
event, a runner that feeds bytes in any chunking, and an un-stuffer for multi-line
answers."""

from __future__ import annotations

from collections.abc import Iterable

from sansmail import NEED_DATA, PAUSED, SERVER, RemoteProtocolError
from sansmail.pop3 import (
    Auth,
    AuthCancel,
    AuthResponse,
    Capa,
    Challenge,
    Config,
    Connection,
    ConnectionClosed,
    Dele,
    EndOfMultiline,
    Err,
    Event,
    InvalidCommand,
    List,
    MultilineData,
    Noop,
    Ok,
    Pass,
    Phase,
    Quit,
    Retr,
    Rset,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
)

GREETING = Ok(text="POP3 server ready")
CAPABILITIES = (
    b"TOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
    b"PIPELINING\r\nSTLS\r\nIMPLEMENTATION sansmail\r\n"
)


def message(size: int, seed: str) -> bytes:
    """A message of exactly `size` octets, CRLF line ends, with a line starting "."."""
    head = f"Subject: {seed}\r\n\r\n.dot line\r\n".encode()
    body = head + b"x" * max(0, size - len(head) - 2) + b"\r\n"
    assert len(body) == size, (len(body), size)
    return body


# RFC 1939 §10's maildrop: two messages, 120 and 200 octets.
MAILDROP = {1: message(120, "one"), 2: message(200, "two")}
UIDS = {1: "whqtswO00WBw418f9t5JxYwZ", 2: "QhdPYR:00WBw1Ph7x7"}


class App:
    """A maildrop application: answers every event the way a real server would."""

    def __init__(self, conn: Connection, *, password: str = "secret") -> None:
        self.conn = conn
        self.password = password
        self.deleted: set[int] = set()
        self.out = bytearray()

    def send(self, *events: Ok | Err | Challenge | MultilineData | EndOfMultiline) -> None:
        for event in events:
            self.out += self.conn.send(event)

    def multiline(self, text: str, data: bytes) -> None:
        self.send(Ok(text=text), MultilineData(data=data), EndOfMultiline())

    def exists(self, msg: int) -> bool:
        return msg in MAILDROP and msg not in self.deleted

    def answer(self, event: Event) -> None:
        match event:
            case User():
                # Echoed only when it fits a reply (UTF-8 names are valid arguments).
                name = event.name if event.name.isascii() else "user"
                self.send(Ok(text=f"{name} is known"))
            case Pass():
                if event.password == self.password:
                    self.send(Ok(text="maildrop locked and ready"))
                else:
                    self.send(Err(text="invalid password", code="AUTH"))
            case Auth(mechanism="PLAIN", initial_response=None):
                self.send(Challenge())
            case Auth(mechanism="PLAIN", initial_response=data) | AuthResponse(data=data):
                ok = data is not None and data.split(b"\0")[-1] == self.password.encode()
                self.send(Ok(text="logged in") if ok else Err(text="no", code="AUTH"))
            case Auth():
                self.send(Err(text="unrecognized authentication type"))
            case AuthCancel():
                self.send(Err(text="authentication cancelled"))
            case Capa():
                self.multiline("Capability list follows", CAPABILITIES)
            case Stls():
                self.send(Err(text="no TLS here"))
            case Stat():
                live = [m for m in MAILDROP if self.exists(m)]
                self.send(Ok(text=f"{len(live)} {sum(len(MAILDROP[m]) for m in live)}"))
            case List(msg=None):
                live = [m for m in MAILDROP if self.exists(m)]
                listing = b"".join(b"%d %d\r\n" % (m, len(MAILDROP[m])) for m in live)
                self.multiline(f"{len(live)} messages", listing)
            case Uidl(msg=None):
                live = [m for m in MAILDROP if self.exists(m)]
                self.multiline("", b"".join(f"{m} {UIDS[m]}\r\n".encode() for m in live))
            case List(msg=msg) | Uidl(msg=msg) | Retr(msg=msg) | Top(msg=msg) | Dele(msg=msg):
                assert msg is not None
                if not self.exists(msg):
                    self.send(Err(text="no such message"))
                elif isinstance(event, List):
                    self.send(Ok(text=f"{msg} {len(MAILDROP[msg])}"))
                elif isinstance(event, Uidl):
                    self.send(Ok(text=f"{msg} {UIDS[msg]}"))
                elif isinstance(event, Retr):
                    self.multiline(f"{len(MAILDROP[msg])} octets", MAILDROP[msg])
                elif isinstance(event, Top):
                    head, _, body = MAILDROP[msg].partition(b"\r\n\r\n")
                    lines = body.split(b"\r\n")[: event.lines]
                    top = head + b"\r\n\r\n" + b"".join(line + b"\r\n" for line in lines)
                    self.multiline("", top)
                else:
                    self.deleted.add(msg)
                    self.send(Ok(text=f"message {msg} deleted"))
            case Noop() | Rset():
                if isinstance(event, Rset):
                    self.deleted.clear()
                self.send(Ok())
            case Quit():
                self.send(Ok(text="signing off"))
            case InvalidCommand():
                self.send(event.reply_hint)
            case _:
                raise AssertionError(f"unexpected {event!r}")


def run(
    chunks: Iterable[bytes], *, config: Config | None = None, eof: bool = True
) -> tuple[list[Event], bytes, str | None]:
    """Feed `chunks` to a greeted server answered by `App`; return the events, the
    server's output after the greeting, and the fatal error's message, if any."""
    conn = Connection(SERVER, config=config)
    app = App(conn)
    conn.send(GREETING)
    events: list[Event] = []
    pending = list(chunks)
    if eof:
        pending.append(b"")
    error = None
    try:
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                if not pending:
                    break
                conn.receive_data(pending.pop(0))
                continue
            if event is PAUSED:
                # Only a closed session pauses here (the app answers everything): the
                # rest of the input shows whether the client stopped talking.
                if pending and conn.their_state is Phase.CLOSED:
                    conn.receive_data(pending.pop(0))
                    continue
                break
            assert isinstance(event, Event)
            events.append(event)
            if isinstance(event, ConnectionClosed):
                break
            app.answer(event)
    except RemoteProtocolError as exc:
        error = str(exc)
        hint = exc.reply_hint
        if hint is not None:
            assert isinstance(hint, Err)
            app.send(hint)
    return events, bytes(app.out), error


def unstuff(data: bytes) -> bytes:
    """The body of one byte-stuffed multi-line answer (RFC 1939 §3), "." line included."""
    assert data.endswith(b"\r\n.\r\n") or data == b".\r\n", data[-10:]
    body = data[:-3]
    lines = body.split(b"\r\n")
    assert lines[-1] == b""
    out = []
    for line in lines[:-1]:
        assert line != b".", "a lone dot inside the body"
        out.append(line[1:] if line.startswith(b".") else line)
    return b"".join(line + b"\r\n" for line in out)
