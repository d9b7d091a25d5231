"""The milter client core (sansmail.milter.Connection): the decisions choose the MTA's steps,
the stream is what the milter answers; see fuzz_drivers."""

from __future__ import annotations

from collections.abc import Callable

from fuzz_drivers import Decisions, Driver, InvariantError

from sansmail import NEED_DATA, PAUSED, LocalProtocolError, RemoteProtocolError, milter
from sansmail.milter import (
    Abort,
    Body,
    Connect,
    Data,
    EndOfHeaders,
    EndOfMessage,
    Family,
    Header,
    Helo,
    Mail,
    Negotiate,
    Quit,
    Rcpt,
)
from sansmail.milter._state import Phase

steps: list[Callable[[], object]] = [
    Negotiate,
    lambda: Connect(hostname="client.example", family=Family.INET, port=25, address="192.0.2.1"),
    lambda: Helo(name="client.example"),
    lambda: Mail(sender="<a@b.example>"),
    lambda: Rcpt(recipient="<c@d.example>"),
    Data,
    lambda: Header(name="Subject", value="x"),
    EndOfHeaders,
    lambda: Body(data=b"body\r\n"),
    EndOfMessage,
    Abort,
    Quit,
]


class MilterDriver(Driver):
    """The MTA side: the decisions choose which steps it sends (in order, mostly),
    the stream is what the milter answers."""

    def __init__(self, decisions: Decisions) -> None:
        super().__init__(decisions)
        self.conn = milter.Connection()
        self.next_step = 0
        self.send_some()

    def send_some(self) -> None:
        if self.conn.awaiting is not None:
            return
        for _ in range(1 + self.decisions.pick(3)):
            jump = self.decisions.pick(8)
            index = self.next_step if jump < 6 else self.decisions.pick(len(steps))
            if index >= len(steps):
                index = 3  # a new message
            try:
                command = steps[index]()
                data = self.conn.send(command)
            except LocalProtocolError:
                if self.conn.phase is not Phase.ERROR:
                    raise InvariantError(
                        "LocalProtocolError left the connection out of ERROR"
                    ) from None
                self.done = True
                return
            if not isinstance(data, bytes):
                raise InvariantError(f"send() returned {data!r}")
            self.next_step = index + 1
            if self.conn.awaiting is not None:
                return

    def _receive(self, data: bytes) -> None:
        self.conn.receive_data(data)

    def _pump(self) -> None:
        conn = self.conn
        for _ in range(self.MAX_EVENTS):
            try:
                event = conn.next_event()
            except RemoteProtocolError:
                if conn.phase is not Phase.ERROR:
                    raise InvariantError(
                        "RemoteProtocolError left the connection out of ERROR"
                    ) from None
                self.done = True
                return
            if event is NEED_DATA or event is PAUSED:
                # Wait for the milter's answer to whatever went out.
                self.send_some()
                return
            if not isinstance(event, milter.Event):
                raise InvariantError(f"undocumented event {event!r}")
            if isinstance(event, milter.ConnectionClosed):
                self.done = True
                return
        raise InvariantError("too many events without asking for data")

    def _check(self) -> None:
        if not isinstance(self.conn.phase, Phase):
            raise InvariantError(f"phase {self.conn.phase!r}")
        if len(self.conn._buffer) > self.conn.config.max_packet + 8:
            raise InvariantError(f"{len(self.conn._buffer)} octets buffered")


DRIVER = MilterDriver
