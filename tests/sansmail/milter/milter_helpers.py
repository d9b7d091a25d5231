"""A scripted milter for the client core's tests: it reads what the MTA wrote with the
core's own readers, keeps to what it negotiated (no reply where it said NR, nothing
expected where it said NO), and answers each command from a script."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from sansmail import NEED_DATA, PAUSED
from sansmail.milter import (
    Abort,
    Action,
    Command,
    Connection,
    ConnectionClosed,
    Continue,
    Event,
    Macros,
    MacroStage,
    Negotiate,
    ProtocolFlag,
    Quit,
    QuitNewConnection,
    Reply,
    encode,
    read_command,
)
from sansmail.milter._state import DECLINE, NO_REPLY
from sansmail.milter._wire import PacketBuffer

NO_ACTIONS = Action(0)
NO_FLAGS = ProtocolFlag(0)
Answer = Callable[[Command], Iterable[Reply]] | Iterable[Reply]


class ScriptedMilter:
    """The milter end: `take(bytes)` reads the MTA's packets and returns its answer."""

    def __init__(
        self,
        *,
        actions: Action = NO_ACTIONS,
        protocol: ProtocolFlag = NO_FLAGS,
        macros: Mapping[MacroStage, tuple[str, ...]] | None = None,
        script: Mapping[type[Command], Answer] | None = None,
        version: int = 6,
    ) -> None:
        self.reply = Negotiate(
            version=version, actions=actions, protocol=protocol, macros=macros or {}
        )
        self.script = dict(script or {})
        self.buffer = PacketBuffer(1 << 20)
        self.seen: list[Command] = []
        self.macros: list[Macros] = []

    def take(self, data: bytes) -> bytes:
        self.buffer.feed(data)
        out = b""
        while (packet := self.buffer.next_packet()) is not None:
            command = read_command(*packet)
            out += b"".join(encode(reply) for reply in self.answer(command))
        return out

    def answer(self, command: Command) -> Iterable[Reply]:
        if isinstance(command, Negotiate):
            return [self.reply]
        if isinstance(command, Macros):
            self.macros.append(command)
            return []
        self.seen.append(command)
        kind = type(command)
        declined = DECLINE.get(kind)
        assert declined is None or declined not in self.reply.protocol, f"{command!r} declined"
        if kind in (Abort, Quit, QuitNewConnection):
            return []
        flag = NO_REPLY.get(kind)
        if flag is not None and flag in self.reply.protocol:
            return []
        answer = self.script.get(kind, [Continue()])
        if callable(answer):
            return list(answer(command))
        return list(answer)


def events_until_idle(conn: Connection) -> list[Event]:
    """Every event the connection has ready, until it waits for nothing or for data."""
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or event is PAUSED:
            return events
        assert isinstance(event, Event)
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events


def talk(conn: Connection, milter: ScriptedMilter, command: Command) -> list[Event]:
    """Send `command`, let the milter answer, return the events."""
    milter_answer = milter.take(conn.send(command))
    if milter_answer:  # b"" would be the milter's EOF
        conn.receive_data(milter_answer)
    events = events_until_idle(conn)
    assert conn.awaiting is None, "the milter left a reply owed"
    return events
