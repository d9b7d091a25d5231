"""The POP3 server core (sansmail.pop3.Connection) under a toy maildrop whose answers the
decisions choose; see fuzz_drivers for the invariants."""

from __future__ import annotations

from fuzz_drivers import Decisions, LockstepDriver, check_lines

from sansmail import SERVER, RemoteProtocolError, pop3
from sansmail.pop3 import (
    Auth,
    AuthCancel,
    AuthResponse,
    Capa,
    Challenge,
    Config,
    Connection,
    Dele,
    EndOfMultiline,
    Err,
    InvalidCommand,
    List,
    MultilineData,
    Ok,
    Pass,
    Phase,
    Quit,
    Retr,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
)

capabilities = (
    b"TOP\r\nUIDL\r\nUSER\r\nSASL PLAIN LOGIN\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
    b"PIPELINING\r\nSTLS\r\nIMPLEMENTATION sansmail\r\n"
)
message = b"Subject: x\r\n\r\n.dot line\r\n..two\r\nlast\r\n"


class POP3ServerDriver(LockstepDriver):
    module = pop3
    phase_enum = Phase
    event_base = pop3.Event

    def __init__(self, decisions: Decisions, *, tls: bool | None = None) -> None:
        config = Config(max_invalid_commands=decisions.pick(8) + 3)
        tls_active = bool(decisions.pick(2)) if tls is None else tls
        super().__init__(decisions, Connection(SERVER, config=config, tls_active=tls_active))
        self.config = config
        self.send(Ok(text="POP3 ready"))

    def check_output(self, data: bytes) -> None:
        # Multi-line bodies may hold long lines; status lines are RFC 2449 §4's 512.
        check_lines(data, None, "POP3ServerDriver")

    def buffer_limit(self) -> int:
        return max(self.config.command_line_cap, self.config.auth_line_cap)

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

    def multiline(self, text: str, data: bytes) -> list[object]:
        return [Ok(text=text), MultilineData(data=data), EndOfMultiline()]

    def answers(self, event: object) -> list[list[object]]:
        no = [Err(text="no")]
        match event:
            case InvalidCommand():
                return [[event.reply_hint]]
            case User():
                return [[Ok(text="hello")], no]
            case Pass():
                return [[Ok(text="ready")], [Err(text="bad", code="AUTH")]]
            case Auth(initial_response=None):
                return [[Challenge()], [Ok(text="in")], no]
            case Auth() | AuthResponse():
                return [
                    [Ok(text="in")],
                    [Challenge(data=b"more")],
                    [Err(text="no", code="AUTH")],
                ]
            case AuthCancel():
                return [no]
            case Capa():
                listing = capabilities
                if self.conn.tls_active:
                    listing = listing.replace(b"STLS\r\n", b"")
                return [self.multiline("capabilities", listing)]
            case Stls():
                return [[Ok(text="go")], no]
            case List(msg=None) | Uidl(msg=None):
                return [self.multiline("list", b"1 120\r\n2 200\r\n"), no]
            case Retr() | Top():
                return [self.multiline("message", message), no]
            case List(msg=msg) | Uidl(msg=msg):
                return [[Ok(text=f"{msg} {120 if isinstance(event, List) else 'uid-x'}")], no]
            case Dele():
                return [[Ok(text="deleted")], no]
            case Stat():
                return [[Ok(text="2 320")], no]
            case Quit():
                return [[Ok(text="bye")]]
            case _:
                return [[Ok()], no]

    def wrong(self, event: object) -> object | None:
        return EndOfMultiline()


DRIVER = POP3ServerDriver
