"""Shared drivers for the ManageSieve core tests: a greeted connection and a runner that
plays a session (client bytes in, expected events, the answers, expected server bytes)
with the client's bytes cut into any chunks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sansmail import NEED_DATA, PAUSED, SERVER
from sansmail.managesieve import Capabilities, Connection, Event

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
