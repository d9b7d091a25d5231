"""The IMAP server core (sansmail.imap.Connection) under a toy application whose answers the
decisions choose; see fuzz_drivers for the invariants."""

from __future__ import annotations

from fuzz_drivers import Decisions, InvariantError, LockstepDriver

from sansmail import SERVER, RemoteProtocolError, imap
from sansmail.imap import (
    AuthCancel,
    Authenticate,
    AuthResponse,
    Command,
    Compress,
    Config,
    Connection,
    Continuation,
    Enable,
    Idle,
    IdleDone,
    InvalidCommand,
    LiteralRequested,
    Logout,
    ResponseCode,
    StartTLS,
    Tagged,
    Untagged,
    UntaggedStatus,
    split_at_literals,
    write_command,
)
from sansmail.imap._state import Phase, Stage

capabilities = (
    "IMAP4rev1",
    "IMAP4rev2",
    "LITERAL+",
    "SASL-IR",
    "AUTH=PLAIN",
    "ENABLE",
    "IDLE",
    "UIDPLUS",
    "MOVE",
    "UTF8=ACCEPT",
    "COMPRESS=DEFLATE",
)


# Handed out inside an exchange, not written by a client as commands.
AuthCommands = AuthResponse | AuthCancel | IdleDone | LiteralRequested | InvalidCommand


def round_trip(command: Command, stage: Stage, *, utf8: bool) -> None:
    """What the parser made of the fuzzer's octets, written as a client would
    (`write_command`, with LITERAL+ and without) and parsed again in the same state, is
    the same command; `split_at_literals` cuts the synchronizing form where the client
    must wait."""
    for literal_plus in (True, False):
        _round_trip(command, stage, utf8=utf8, literal_plus=literal_plus)


def _round_trip(command: Command, stage: Stage, *, utf8: bool, literal_plus: bool) -> None:
    conn = Connection(SERVER, config=Config(max_message_size=4096))
    status = "OK" if stage is Stage.NOT_AUTHENTICATED else "PREAUTH"
    conn.send(UntaggedStatus(status=status, code=ResponseCode.capability(capabilities), text="hi"))
    setup: list[tuple[bytes, list[object]]] = []
    if utf8:
        setup.append((b"e0 ENABLE UTF8=ACCEPT\r\n", [Untagged.enabled(["UTF8=ACCEPT"])]))
    if stage is Stage.SELECTED:
        setup.append((b"s0 SELECT INBOX\r\n", []))
    for line, untagged in setup:
        conn.receive_data(line)
        event = conn.next_event()
        assert isinstance(event, Command), event
        for response in untagged:
            conn.send(response)
        conn.send(Tagged(tag=event.tag, status="OK", text="ok"))
    try:
        data = write_command(command, utf8=utf8, literal_plus=literal_plus)
    except TypeError as exc:
        # write_command knows most commands, not all (SORT, THREAD ...): not a bug.
        if str(exc).startswith("not a command"):
            return
        raise
    # split_at_literals is for the synchronizing form only (its docstring).
    pieces = [data] if literal_plus else split_at_literals(data)
    if b"".join(pieces) != data or not all(p.endswith(b"}\r\n") for p in pieces[:-1]):
        raise InvariantError(f"split_at_literals cut {data!r} into {pieces!r}")
    again: object = None
    for piece in pieces:
        conn.receive_data(piece)
        again = conn.next_event()
        if isinstance(again, LiteralRequested):
            conn.send(Continuation(text="go on"))
    if again != command:
        raise InvariantError(f"{command!r} written as {data!r} parses as {again!r}")


class IMAPServerDriver(LockstepDriver):
    module = imap
    phase_enum = Phase
    event_base = imap.Event
    max_output_line = None  # literals in responses may hold anything

    def __init__(self, decisions: Decisions, *, tls: bool | None = None) -> None:
        config = Config(max_invalid_commands=decisions.pick(8) + 3, max_message_size=4096)
        tls_active = bool(decisions.pick(2)) if tls is None else tls
        super().__init__(decisions, Connection(SERVER, config=config, tls_active=tls_active))
        self.config = config
        caps = capabilities if tls_active else (*capabilities, "STARTTLS")
        self.send(UntaggedStatus(status="OK", code=ResponseCode.capability(caps), text="ready"))

    def check_output(self, data: bytes) -> None:
        if not isinstance(data, bytes) or (data and not data.endswith(b"\r\n")):
            raise InvariantError(f"IMAP output does not end with CRLF: {data[-40:]!r}")

    def buffer_limit(self) -> int:
        # A command is read whole, literals included, before its event comes out.
        return self.config.append_size + self.config.max_command_size

    def paused(self) -> bool:
        conn = self.conn
        if conn.our_state is Phase.TLS_PENDING:
            try:
                conn.start_tls()
            except RemoteProtocolError as exc:
                if exc.reply_hint is not None:
                    self.send(exc.reply_hint)
                self.done = True
                return False
            return True
        if conn.our_state.name == "COMPRESS_PENDING":
            # The adapter would inflate these; the fuzzer's octets are just octets.
            rest = conn.start_compression()
            # An adapter reads (and so meets EOF) only when the core asks for data, which
            # it never does with a whole COMPRESS command buffered: after an EOF fed
            # early, the octets behind COMPRESS can only be dropped.
            if rest and not self.eof_sent:
                conn.receive_data(rest)
            return True
        return False

    def answer(self, event: object) -> None:
        if isinstance(event, Command) and not isinstance(event, AuthCommands):
            round_trip(event, self.conn.stage, utf8=self.conn.utf8)
        super().answer(event)

    def answers(self, event: object) -> list[list[object]]:
        conn = self.conn
        pending = conn.pending
        tag = pending.tag if pending is not None else "*"
        if isinstance(event, LiteralRequested):
            tag = event.tag if hasattr(event, "tag") else tag
            return [
                [Continuation(text="go ahead")],
                [Tagged(tag=tag, status="NO", text="too big")],
            ]
        if isinstance(event, InvalidCommand):
            return [[event.reply_hint]]
        if isinstance(event, Logout):
            return [
                [
                    UntaggedStatus(status="BYE", text="bye"),
                    Tagged(tag=event.tag, status="OK", text="done"),
                ]
            ]
        if isinstance(event, Authenticate):
            done = [Tagged(tag=event.tag, status="OK", text="in")]
            no = [Tagged(tag=event.tag, status="NO", text="no")]
            return [[Continuation(data=b"")], done, no]
        if isinstance(event, AuthResponse):
            return [
                [Tagged(tag=tag, status="OK", text="in")],
                [Continuation(data=b"more")],
                [Tagged(tag=tag, status="NO", text="no")],
            ]
        if isinstance(event, AuthCancel):
            return [[Tagged(tag=tag, status="BAD", text="cancelled")]]
        if isinstance(event, Idle):
            return [
                [Continuation(text="idling")],
                [Tagged(tag=event.tag, status="NO", text="no")],
            ]
        if isinstance(event, IdleDone):
            return [[Tagged(tag=tag, status="OK", text="idle done")]]
        if isinstance(event, Enable):
            wanted = [c for c in event.capabilities if c in ("IMAP4REV2", "UTF8=ACCEPT")]
            first: list[object] = [Untagged.enabled(wanted)] if wanted else []
            return [[*first, Tagged(tag=event.tag, status="OK", text="enabled")]]
        if isinstance(event, StartTLS | Compress):
            return [
                [Tagged(tag=event.tag, status="OK", text="go")],
                [Tagged(tag=event.tag, status="NO", text="not now")],
            ]
        if isinstance(event, Command):
            return [
                [Tagged(tag=event.tag, status="OK", text="done")],
                [Untagged.exists(3), Tagged(tag=event.tag, status="OK", text="done")],
                [Tagged(tag=event.tag, status="NO", text="no")],
                [UntaggedStatus(status="BYE", text="shutting down")],
            ]
        raise InvariantError(f"event of no known kind {event!r}")

    def wrong(self, event: object) -> object | None:
        return Tagged(tag="zz9", status="OK", text="wrong tag")


DRIVER = IMAPServerDriver
