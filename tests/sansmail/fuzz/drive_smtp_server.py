"""The SMTP server core (sansmail.smtp.Connection) under a toy application whose answers the
decisions choose; see fuzz_drivers for the invariants."""

from __future__ import annotations

from fuzz_drivers import Decisions, InvariantError, LockstepDriver

from sansmail import SERVER, LocalProtocolError, RemoteProtocolError, smtp
from sansmail.smtp import (
    Auth,
    AuthCancel,
    AuthResponse,
    Bdat,
    Config,
    Connection,
    Data,
    EndOfChunk,
    EndOfMessage,
    Hello,
    InvalidAuthResponse,
    InvalidCommand,
    InvalidMessage,
    MessageData,
    Phase,
    Quit,
    Reply,
    StartTLS,
)
from sansmail.smtp import _readers as smtp_readers
from sansmail.smtp import _state as smtp_state
from sansmail.smtp._client_writers import write_command

base = ("mx.example", "PIPELINING", "8BITMIME", "SMTPUTF8", "CHUNKING", "DSN")
ehlo_variants = [
    (*base, "SIZE 2000", "ENHANCEDSTATUSCODES", "AUTH PLAIN LOGIN SCRAM-SHA-256"),
    (*base, "STARTTLS", "SIZE 0"),
    ("mx.example",),
    (*base, "ENHANCEDSTATUSCODES", "AUTH CRAM-MD5", "STARTTLS"),
]
ok = Reply(code=250, lines="OK")


class SMTPServerDriver(LockstepDriver):
    module = smtp
    phase_enum = Phase
    event_base = smtp.Event

    def __init__(self, decisions: Decisions, *, tls: bool | None = None) -> None:
        config = Config(
            max_invalid_commands=decisions.pick(8) + 3,
            max_message_size=2000,
            max_text_line=1000,
            max_auth_response=1024,
            bare_lf="reject" if decisions.pick(2) else "normalize",
        )
        tls_active = bool(decisions.pick(2)) if tls is None else tls
        super().__init__(decisions, Connection(SERVER, config=config, tls_active=tls_active))
        self.config = config
        greetings = [
            Reply(code=220, lines="mx.example ESMTP"),
            Reply(code=554, lines="no service"),
        ]
        self.send(greetings[decisions.pick(4) == 3])

    def buffer_limit(self) -> int:
        config = self.config
        phase = self.conn.their_state
        if phase in (Phase.DATA, Phase.BDAT):
            # Content is gathered into chunks of _MIN_CHUNK octets, plus the
            # tail of a possible end marker.
            return smtp_readers._MIN_CHUNK + 8
        return max(config.command_line_cap, config.auth_line_cap)

    def paused(self) -> bool:
        if self.conn.our_state is Phase.TLS_PENDING:
            try:
                self.conn.start_tls()
            except RemoteProtocolError as exc:
                if exc.reply_hint is not None:
                    self.send(exc.reply_hint)
                self.done = True
                return False
            return True
        return False

    def answer(self, event: object) -> None:
        if smtp_state.RECEIVE.get((Phase.COMMAND, type(event))) is Phase.REPLY and not isinstance(
            event, InvalidCommand
        ):
            self.round_trip(event)
        super().answer(event)

    def round_trip(self, event: object) -> None:
        """A command the core read, written by the client core's writer, reads back as
        itself in the same session (or the writer refuses it, as documented)."""
        try:
            line = write_command(event, utf8=True)
        except LocalProtocolError:
            return
        try:
            again = smtp_readers.read_command(line[:-2], self.conn._session)
        except smtp_readers.CommandError as exc:
            raise InvariantError(
                f"{event!r} written as {line!r} is refused: {exc.reason}"
            ) from None
        if again != event:
            raise InvariantError(f"{event!r} written as {line!r} reads as {again!r}")

    def answers(self, event: object) -> list[list[object]]:
        if isinstance(event, InvalidCommand | InvalidMessage | InvalidAuthResponse):
            return [[event.reply_hint]]
        if isinstance(event, MessageData | Bdat):
            return []
        if isinstance(event, Hello):
            lines = [ehlo_variants[i] for i in range(len(ehlo_variants))]
            if self.conn.tls_active:
                lines = [tuple(x for x in v if x != "STARTTLS") for v in lines]
            if event.extended:
                return [[Reply(code=250, lines=v)] for v in lines] + [
                    [Reply(code=550, lines="go away")]
                ]
            return [[Reply(code=250, lines="mx.example")], [Reply(code=501, lines="no")]]
        if isinstance(event, Auth):
            first = Reply.challenge(b"" if event.initial_response is None else b"more?")
            return [[first], [Reply(code=235, lines="ok")], [Reply(code=535, lines="no")]]
        if isinstance(event, AuthResponse):
            return [
                [Reply(code=235, lines="ok")],
                [Reply.challenge(b"more?")],
                [Reply(code=535, lines="no")],
            ]
        if isinstance(event, AuthCancel):
            return [[Reply(code=501, lines="cancelled")]]
        if isinstance(event, Data):
            return [[Reply(code=354, lines="go ahead")], [Reply(code=554, lines="no")]]
        if isinstance(event, Quit):
            return [[Reply(code=221, lines="bye")]]
        if isinstance(event, StartTLS):
            return [[Reply(code=220, lines="go")], [Reply(code=454, lines="not now")]]
        if isinstance(event, EndOfMessage | EndOfChunk):
            return [[ok], [Reply(code=554, lines="rejected")], [Reply(code=451, lines="later")]]
        return [
            [ok],
            [Reply(code=550, lines="no")],
            [Reply(code=421, lines="closing")],
        ]

    def wrong(self, event: object) -> object | None:
        return Reply(code=354, lines="wrong")


DRIVER = SMTPServerDriver
