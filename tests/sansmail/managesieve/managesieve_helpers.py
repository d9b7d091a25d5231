"""Shared drivers for the ManageSieve core tests: a greeted connection and a runner that
plays a session (client bytes in, expected events, the answers, expected server bytes)
with the client's bytes cut into any chunks; and a toy script store serving one real
client over a socket."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable, Sequence

import attrs

from sansmail import NEED_DATA, PAUSED, SERVER
from sansmail.managesieve import (
    Authenticate,
    Capabilities,
    Connection,
    ConnectionClosed,
    DeleteScript,
    Event,
    GetScript,
    HaveSpace,
    InvalidCommand,
    ListScripts,
    Logout,
    No,
    Noop,
    Ok,
    Phase,
    PutScript,
    Script,
    ScriptList,
    SetActive,
)

CAPABILITIES = Capabilities(
    implementation="sansmail",
    sasl=("PLAIN",),
    sieve=("fileinto", "vacation"),
    starttls=True,
)
CAPABILITIES_BYTES = (
    b'"IMPLEMENTATION" "sansmail"\r\n"SASL" "PLAIN"\r\n"SIEVE" "fileinto vacation"\r\n'
    b'"STARTTLS"\r\n"VERSION" "1.0"\r\nOK\r\n'
)

#: One exchange: what the client sends, the event it must become, our answer to it and
#: the bytes that answer must be.
Step = tuple[bytes, Event, Event | None, bytes]


def greeted(**kwargs: object) -> Connection:
    conn = Connection(SERVER, **kwargs)  # type: ignore[arg-type]
    assert conn.send(CAPABILITIES) == CAPABILITIES_BYTES
    return conn


def events_of(conn: Connection) -> list[Event]:
    """Every event available now (stops at NEED_DATA or PAUSED)."""
    out: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or event is PAUSED:
            return out
        assert isinstance(event, Event)
        out.append(event)


def chunks(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    """`data` cut at the given sizes (cycled), the rest in one piece."""
    out = []
    pos = 0
    for size in sizes:
        if pos >= len(data):
            break
        out.append(data[pos : pos + max(1, size)])
        pos += max(1, size)
    if pos < len(data):
        out.append(data[pos:])
    return out


def play(conn: Connection, steps: Sequence[Step], *, sizes: Iterable[int] = ()) -> None:
    """Feed each step's client bytes in chunks; check the one event, answer it, check the
    bytes."""
    sizes = list(sizes)
    for client, expected, answer, server in steps:
        got: list[Event] = []
        for piece in chunks(client, sizes or [len(client) or 1]):
            conn.receive_data(piece)
            got += events_of(conn)
        assert got == [expected], (client, got)
        if answer is not None:
            assert conn.send(answer) == server, client  # type: ignore[arg-type]


STORE_CAPABILITIES = Capabilities(implementation="sansmail", sasl=("PLAIN",), sieve=("fileinto",))


def _answer(event: Event, scripts: dict[str, bytes], active: list[str]) -> Event:
    # A toy script store: user "user", password "pass", scripts in a dict.
    if isinstance(event, InvalidCommand):
        return event.reply_hint
    if isinstance(event, Authenticate):
        ok = event.mechanism == "PLAIN" and event.initial_response == b"\0user\0pass"
        return Ok() if ok else No(text="authentication failed")
    if isinstance(event, Noop) and event.tag is not None:
        # RFC 5804 §2.13; sieve-connect resynchronises with one after STARTTLS.
        return Ok(code="TAG", code_argument=event.tag, text="Done")
    if isinstance(event, PutScript):
        scripts[event.name] = event.content
    elif isinstance(event, HaveSpace):
        return Ok() if event.size < 1000 else No(code="QUOTA/MAXSIZE", text="too big")
    elif isinstance(event, SetActive):
        active[:] = [event.name] if event.name else []
    elif isinstance(event, ListScripts):
        return ScriptList(names=tuple(scripts), active=active[0] if active else None)
    elif isinstance(event, GetScript):
        if event.name not in scripts:
            return No(code="NONEXISTENT", text="no such script")
        return Script(content=scripts[event.name])
    elif isinstance(event, DeleteScript):
        if event.name in active:
            return No(code="ACTIVE", text="the active script")
        scripts.pop(event.name, None)
    return Ok()


def serve_one(
    sock: socket.socket,
    events: list[Event],
    scripts: dict[str, bytes] | None = None,
    active: list[str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve one client on `sock` until LOGOUT or EOF, recording the events; `scripts`
    and `active` are the store, kept across connections when given. For tests against
    real clients; the loop only moves bytes. With `tls`, STARTTLS is offered and done."""
    conn = Connection(SERVER)
    scripts = {} if scripts is None else scripts
    active = [] if active is None else active
    try:
        greeting = attrs.evolve(STORE_CAPABILITIES, starttls=tls is not None)
        sock.sendall(conn.send(greeting))
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                conn.receive_data(sock.recv(65536))
                continue
            if event is PAUSED and tls is not None and conn.our_state is Phase.TLS_PENDING:
                sock = tls.wrap_socket(sock, server_side=True)
                conn.start_tls()
                sock.sendall(conn.send(STORE_CAPABILITIES))  # RFC 5804 §2.2
                continue
            if event is PAUSED or isinstance(event, ConnectionClosed):
                return
            assert isinstance(event, Event)
            events.append(event)
            sock.sendall(conn.send(_answer(event, scripts, active)))  # type: ignore[arg-type]
            if isinstance(event, Logout):
                return
    finally:
        sock.close()  # the TLS socket once wrapped: closing the plain one leaves it open
