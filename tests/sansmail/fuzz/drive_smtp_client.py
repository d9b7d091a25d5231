"""The SMTP client core (sansmail.smtp.ClientConnection): the stream is what a server says,
the decisions choose the commands the application tries; see fuzz_drivers."""

from __future__ import annotations

from collections.abc import Callable

from fuzz_drivers import Decisions, Driver, InvariantError, check_lines

from sansmail import NEED_DATA, PAUSED, LocalProtocolError, RemoteProtocolError, smtp
from sansmail.mail.address import Address
from sansmail.smtp import (
    Auth,
    AuthCancel,
    AuthResponse,
    Bdat,
    ClientConnection,
    Data,
    EndOfMessage,
    Hello,
    Mail,
    MessageData,
    Noop,
    Phase,
    Quit,
    Rcpt,
    Reset,
    StartTLS,
)
from sansmail.smtp._client_readers import MAX_REPLY_LINE

sender = Address.from_parts("a", "b.example")
commands: list[Callable[[], object]] = [
    lambda: Hello(domain="c.example"),
    lambda: Mail(reverse_path=sender),
    lambda: Rcpt(forward_path=Address.from_parts("c", "d.example")),
    Data,
    lambda: MessageData(data=b"Subject: x\r\n\r\n.dot\r\nbody\r\n"),
    EndOfMessage,
    lambda: Bdat(size=4, last=True),
    lambda: MessageData(data=b"abcd"),
    Reset,
    Noop,
    StartTLS,
    lambda: Auth(mechanism="PLAIN", initial_response=b"\0u\0p"),
    lambda: AuthResponse(data=b"x"),
    AuthCancel,
    Quit,
    lambda: Hello(extended=False, domain="c.example"),
]


class SMTPClientDriver(Driver):
    """The client core: the stream is what a (hostile) server says; the decisions
    choose the commands the application tries to send between reads."""

    def __init__(self, decisions: Decisions) -> None:
        super().__init__(decisions)
        self.conn = ClientConnection(tls_active=bool(decisions.pick(2)))

    def _receive(self, data: bytes) -> None:
        self.conn.receive_data(data)

    def _pump(self) -> None:
        conn = self.conn
        for _ in range(self.MAX_EVENTS):
            try:
                event = conn.next_event()
            except RemoteProtocolError:
                if conn.their_state is not Phase.ERROR:
                    raise InvariantError(
                        "RemoteProtocolError left the server side out of ERROR"
                    ) from None
                self.done = True
                return
            if event is PAUSED:
                if conn.our_state is Phase.TLS_PENDING:
                    try:
                        conn.start_tls()
                    except RemoteProtocolError:
                        self.done = True
                        return
                    continue
                return
            if event is NEED_DATA:
                buffered = len(conn.trailing_data[0])
                if conn.our_state is not Phase.CLOSED and buffered >= MAX_REPLY_LINE:
                    raise InvariantError(f"{buffered} octets buffered waiting for a reply")
                self.try_sending()
                return
            if not isinstance(event, smtp.Reply | smtp.ConnectionClosed):
                raise InvariantError(f"undocumented event {event!r}")
            if isinstance(event, smtp.ConnectionClosed):
                self.done = True
                return
            self.try_sending()
            if self.done:
                return
        raise InvariantError("too many replies without asking for data")

    def try_sending(self) -> None:
        # Up to a few commands, chosen by the decisions; a refused one ends the run.
        for _ in range(self.decisions.pick(4)):
            command = commands[self.decisions.pick(len(commands))]()
            try:
                data = self.conn.send(command)
            except LocalProtocolError:
                if self.conn.our_state is not Phase.ERROR:
                    raise InvariantError("LocalProtocolError left our side out of ERROR") from None
                self.done = True
                return
            if isinstance(command, MessageData) and self.conn.our_state is Phase.BDAT:
                continue
            check_lines(data, None, "SMTPClientDriver")
            for line in data.split(b"\r\n"):
                if len(line) + 2 > 512 + 1024 and not isinstance(command, MessageData):
                    raise InvariantError(f"command line of {len(line)} octets")

    def _check(self) -> None:
        conn = self.conn
        for state in (conn.our_state, conn.their_state):
            if not isinstance(state, Phase):
                raise InvariantError(f"state {state!r}")
        if not isinstance(conn.stage, smtp.Stage):
            raise InvariantError(f"stage {conn.stage!r}")


DRIVER = SMTPClientDriver
