"""`Connection`: the IMAP server core's one front door.

Theory of operation
-------------------
The application feeds received octets in (`receive_data`), pulls events out
(`next_event`) and turns its decisions into octets (`send`). Nothing here does I/O or
reads a clock.

Lockstep. The first thing said is the application's greeting (`* OK`, `* PREAUTH`, or
`* BYE`, which closes). After it, `next_event()` reads one command, hands out its
event, and returns PAUSED until the application has sent that command's tagged
response; commands the client pipelined wait untouched in the buffer. Untagged
responses may be sent at any time in between (`_state` explains why one command at a
time is allowed and what it buys).

Literals (RFC 9051 §4.3, RFC 7888). A command is read whole, literals included, before
its event is handed out (`_readers` frames it). When a line announces a synchronizing
literal, `next_event()` returns `LiteralRequested` first and pauses: the application
answers `Continuation(...)` to let the octets come, or a tagged NO/BAD, after which the
command is over (the client sends none of the rest) and the next command is read.
Before asking, the core refuses by itself what breaks `Config`'s limits, and the
literal of a command already known to be refused (unknown, not valid in this state).
Non-synchronizing literals are read without asking, up to 4096 octets (LITERAL-) or,
once our CAPABILITY has advertised LITERAL+, up to the command's size limit.

Responses drive the stage and phase (`_state.STAGE_AFTER`, `_state.SEND`): OK to LOGIN
or AUTHENTICATE authenticates, OK to SELECT/EXAMINE selects, NO to SELECT while selected
deselects, OK to CLOSE/UNSELECT deselects, OK to STARTTLS pauses everything until
`start_tls()`, BYE then OK to LOGOUT ends the session. State also comes from the wire in
two more ways: the capabilities our CAPABILITY responses (and [CAPABILITY] codes) listed
are remembered (`capabilities`), and the extensions our `* ENABLED` answer to an ENABLE
named are on (`enabled`): IMAP4rev2 or UTF8=ACCEPT switch mailbox names from modified
UTF-7 to UTF-8 in both directions (RFC 9051 §5.1, RFC 6855).

AUTHENTICATE (RFC 9051 §6.2.2). The core frames the exchange; the application runs the
SASL mechanism (`sansmail.sasl`). Its `Continuation(data=challenge)` makes the next line
the client's base64 answer (`AuthResponse`) or "*" (`AuthCancel`, to be answered BAD);
a line that is not base64 arrives as `InvalidCommand` whose hint is that BAD.

IDLE (RFC 9051 §6.3.13). After the application's continuation ("+ idling") the next
line must be DONE (`IdleDone`), and untagged updates may flow meanwhile; the tagged OK
for the IDLE follows DONE.

Errors. What the client can recover from arrives as `InvalidCommand` with the response
to send, tagged BAD (or NO), or untagged BAD when no tag could be read. Commands are
refused on state before being parsed, and the reason never echoes client input, so no
password appears in a hint. Too many invalid commands, a line over
`Config.max_line_length`, a bare CR or LF, an absurd literal size, a non-synchronizing
literal over its cap, plaintext behind STARTTLS and octets after LOGOUT raise
`RemoteProtocolError` with a `* BYE` reply_hint (None after LOGOUT, whose BYE was the
last word): the client side is then in ERROR for good, and the application may `send()`
that BYE before closing. The application may also end the session any time by sending
a BYE (autologout, shutdown).

EXPUNGE (RFC 9051 §7.5.1). While a FETCH, STORE or SEARCH by sequence number is being
answered, an untagged EXPUNGE is a `LocalProtocolError`: the client could not tell which
message a number in the other responses meant. Their UID forms, and every other
command, may carry it.

STARTTLS (RFC 9051 §6.2.1). After our tagged OK the connection is TLS_PENDING; the
adapter does its handshake and calls `start_tls()`, which refuses (RemoteProtocolError)
if any plaintext arrived behind the command, and forgets the capabilities: the client
must ask again. Under TLS the rules are the same whether it came from STARTTLS or from
the first byte (`tls_active=True`, port 993): a CAPABILITY (response or code) listing
STARTTLS is a `LocalProtocolError`, STARTTLS is refused with BAD whatever was
advertised before, and `tls_active` is what the application consults before allowing
LOGIN.

COMPRESS (RFC 4978). The core parses COMPRESS DEFLATE and answers the rest itself: a
mechanism it does not know is NO, a second COMPRESS once compression is on is
NO [COMPRESSIONACTIVE] (§3). Compressing is the adapter's work, a transform of the
octets under this core: after our tagged OK the connection is COMPRESS_PENDING, the
adapter writes that OK uncompressed (§3: compression starts right after its CRLF), puts
its compressor and decompressor in place and calls `start_compression()`. That returns
what the client sent after the COMPRESS command, which is compressed already (the
client compresses from the first command after COMPRESS), for the adapter to inflate and
feed back through `receive_data`: unlike plaintext behind STARTTLS, nothing in it is
read as if it had come another way. From then on every octet in and out of the core is
the uncompressed conversation.
"""

from __future__ import annotations

from typing import Literal

from sansmail._errors import LocalProtocolError, RemoteProtocolError
from sansmail._lockstep import LockstepServer
from sansmail._roles import NEED_DATA, PAUSED, Role, Signal
from sansmail.imap._arguments import RefusalError
from sansmail.imap._config import NONSYNC_LITERAL_MINUS, Config
from sansmail.imap._events import (
    AuthCancel,
    AuthResponse,
    Command,
    Compress,
    ConnectionClosed,
    Enable,
    Event,
    Idle,
    IdleDone,
    InvalidCommand,
    LiteralRequested,
    Logout,
    Search,
    Sort,
    StartTLS,
    Thread,
    Uid,
)
from sansmail.imap._lexer import ParseError
from sansmail.imap._parser import Head, parse_command, read_head
from sansmail.imap._readers import AskLiteral, CommandReader, Complete, Refused, read_line
from sansmail.imap._responses import (
    Continuation,
    FetchBatch,
    FetchResponse,
    Response,
    ResponseCode,
    Tagged,
    Untagged,
    UntaggedStatus,
)
from sansmail.imap._state import (
    ALLOWED,
    EXPUNGE_FORBIDDEN,
    RECEIVE,
    SEND,
    STAGE_AFTER,
    Phase,
    Stage,
)
from sansmail.imap._values import Atom
from sansmail.imap._writers import write_response
from sansmail.sasl._b64 import decode_base64_strict
from sansmail.sasl._base import SASLError

__all__ = ["Connection"]

_CONNECTION_CLOSED = ConnectionClosed()

TOO_MANY_ERRORS = UntaggedStatus(status="BYE", text="too many invalid commands, closing")
PIPELINED_STARTTLS = UntaggedStatus(
    status="BYE", text="data sent before the TLS handshake, closing"
)

# The extensions whose ENABLE turns mailbox names (and quoted strings) into UTF-8.
_UTF8_EXTENSIONS = frozenset({"IMAP4REV2", "UTF8=ACCEPT"})


class Connection(LockstepServer[Phase, Event, Response]):
    """One IMAP session, seen from the server.

    Args:
        our_role: `SERVER` (client commands can be written with `write_command`).
        config: limits; `Config()` when omitted.
        tls_active: the link is under TLS from its first byte (implicit TLS, port 993,
            RFC 8314 §3.3): STARTTLS is neither offered nor accepted.
    """

    def __init__(
        self, our_role: Role, *, config: Config | None = None, tls_active: bool = False
    ) -> None:
        config = config if config is not None else Config()
        super().__init__(
            our_role,
            phase=Phase.GREETING,
            error_phase=Phase.ERROR,
            closed_phase=Phase.CLOSED,
            tls_pending_phase=Phase.TLS_PENDING,
            no_client_role="sansmail has no IMAP client core (see imap.write_command)",
            max_invalid_commands=config.max_invalid_commands,
            too_many_invalid=TOO_MANY_ERRORS,
        )
        self.config = config
        self._stage = Stage.NOT_AUTHENTICATED
        self._reader = CommandReader(self.config, read_head)
        self._pending: Command | None = None  # the command whose tagged response is owed
        self._pending_tag: str | None = None  # its tag (an InvalidCommand has no command)
        self._literal_tag: str | None = None  # while a LiteralRequested is unanswered
        self._capabilities: frozenset[str] = frozenset()
        self._enabled: frozenset[str] = frozenset()
        self._tls_active = tls_active
        self._compressing = False
        self._bye_sent = False  # the BYE of a LOGOUT answer
        self._idling = False  # the IDLE being answered was accepted with "+"
        self._logged_out = False

    # --- what the application may look at -------------------------------------------

    @property
    def stage(self) -> Stage:
        """RFC 9051 §3's session state."""
        return self._stage

    @property
    def pending(self) -> Command | None:
        """The command whose tagged response is owed, if any."""
        return self._pending

    @property
    def capabilities(self) -> frozenset[str]:
        """What our last CAPABILITY response or [CAPABILITY] code listed, upper-case.
        Forgotten at the TLS switch."""
        return self._capabilities

    @property
    def enabled(self) -> frozenset[str]:
        """The extensions our `* ENABLED` responses named (RFC 5161), upper-case."""
        return self._enabled

    @property
    def imap4rev2(self) -> bool:
        """The client ENABLEd IMAP4rev2 (RFC 9051 §6.3.1); otherwise it speaks rev1."""
        return "IMAP4REV2" in self._enabled

    @property
    def utf8(self) -> bool:
        """Mailbox names and quoted strings are UTF-8 (IMAP4rev2 or UTF8=ACCEPT enabled),
        rather than modified UTF-7 and ASCII."""
        return bool(self._enabled & _UTF8_EXTENSIONS)

    @property
    def tls_active(self) -> bool:
        """The link is under TLS: from its first byte (`tls_active=True`), or since
        `start_tls()` completed."""
        return self._tls_active

    @property
    def compressing(self) -> bool:
        """COMPRESS is in force (since `start_compression()`, RFC 4978)."""
        return self._compressing

    # --- receiving -----------------------------------------------------------------------

    def _next_event(self) -> Event | Signal:
        phase = self._phase
        if phase is Phase.COMMAND:
            return self._next_command()
        if phase is Phase.AUTH or phase is Phase.IDLE:
            return self._next_exchange_line(phase)
        if phase is Phase.CLOSED:
            if self._buffer and self._logged_out:
                raise RemoteProtocolError("data after LOGOUT")  # BYE was the last word
            return _CONNECTION_CLOSED if self._eof else PAUSED
        return PAUSED  # GREETING, LITERAL, REPLY, TLS_PENDING

    def _next_command(self) -> Event | Signal:
        cap = self.config.append_size if "LITERAL+" in self._capabilities else NONSYNC_LITERAL_MINUS
        frame = self._reader.read(self._buffer, nonsync_cap=cap, judge=self._judge)
        if frame is None:
            return self._handle(_CONNECTION_CLOSED) if self._eof else NEED_DATA
        head = frame.head
        if isinstance(frame, AskLiteral):
            assert head.tag is not None
            assert head.name is not None
            self._literal_tag = head.tag
            event: Event = LiteralRequested(
                tag=head.tag, command=head.name, size=frame.size, binary=frame.binary
            )
        elif isinstance(frame, Refused):
            if frame.too_big:
                # RFC 7889 §3: an APPEND too big for us is NO [TOOBIG]; elsewhere BAD.
                status: Literal["NO", "BAD"] = "NO" if head.name == "APPEND" else "BAD"
                event = self._invalid(head, frame.reason, status=status, code="TOOBIG")
            else:
                event = self._invalid(head, frame.reason)
        else:
            event = self._parse(frame)
        return self._handle(event)

    def _judge(self, head: Head) -> str | None:
        if head.tag is None:
            return "no tag"
        if head.name is None:
            return "no command"
        if head.kind is None:
            return "unknown command"
        if (self._stage, head.kind) not in ALLOWED:
            return f"is not valid in the {self._stage.name} state"
        if head.kind is StartTLS and self._tls_active:
            return "TLS is already active"
        return None

    def _parse(self, frame: Complete) -> Event:
        head = frame.head
        if frame.refusal is not None:
            return self._invalid(head, frame.refusal)
        try:
            command = parse_command(
                head,
                frame.lines,
                frame.literals,
                utf8=self.utf8,
                max_nesting=self.config.max_nesting,
            )
        except RefusalError as exc:
            return self._invalid(head, str(exc), status=exc.status, code=exc.code)
        except ParseError as exc:
            return self._invalid(head, str(exc))
        if isinstance(command, Compress) and self._compressing:
            # RFC 4978 §3: NO with COMPRESSIONACTIVE when the mechanism is on already.
            return self._invalid(head, "already active", status="NO", code="COMPRESSIONACTIVE")
        return command

    def _invalid(
        self,
        head: Head,
        reason: str,
        *,
        status: Literal["NO", "BAD"] = "BAD",
        code: ResponseCode | str | None = None,
    ) -> InvalidCommand:
        if status == "BAD" and code is None:
            self._count_invalid()
        if isinstance(code, str):
            code = ResponseCode(name=code)
        text = f"{head.name} {reason}" if head.kind is not None and head.name else reason
        hint: Tagged | UntaggedStatus
        if head.tag is None:
            hint = UntaggedStatus(status="BAD", code=code, text=text)
        else:
            hint = Tagged(tag=head.tag, status=status, code=code, text=text)
        return InvalidCommand(tag=head.tag, command=head.name, reason=reason, reply_hint=hint)

    def _next_exchange_line(self, phase: Phase) -> Event | Signal:
        line = read_line(self._buffer, self.config.max_line_length)
        if line is None:
            return self._handle(_CONNECTION_CLOSED) if self._eof else NEED_DATA
        assert self._pending is not None
        event: Event
        if phase is Phase.IDLE:
            if line.upper() == b"DONE":
                event = IdleDone()
            else:
                event = self._exchange_error("expected DONE")
        elif line == b"*":
            event = AuthCancel()
        else:
            try:
                event = AuthResponse(data=decode_base64_strict(line))
            except SASLError:
                event = self._exchange_error("authentication response is not base64")
        return self._handle(event)

    def _exchange_error(self, reason: str) -> InvalidCommand:
        # RFC 9051 §6.2.2: a bad AUTHENTICATE line gets the command's tagged BAD; RFC
        # 2177 §3: anything but DONE during IDLE is an error; it ends the IDLE the same way.
        assert self._pending is not None
        tag = self._pending.tag
        name = "IDLE" if isinstance(self._pending, Idle) else "AUTHENTICATE"
        head = Head(tag=tag, name=name, kind=type(self._pending), end=0)
        return self._invalid(head, reason)

    def _handle(self, event: Event) -> Event:
        # The RECEIVE table is the single place the phase moves on input.
        phase = RECEIVE[self._phase, type(event)]
        if isinstance(event, Command):
            self._pending, self._pending_tag = event, event.tag
        elif isinstance(event, InvalidCommand):
            self._pending, self._pending_tag = None, event.tag
        self._phase = phase
        return event

    # --- sending -----------------------------------------------------------------------

    def _send(self, event: Response) -> bytes:
        phase = self._phase
        if isinstance(event, UntaggedStatus) and event.status == "BYE":
            return self._send_bye(event)
        if self._their_error:
            raise LocalProtocolError("the client broke the protocol: only a BYE may follow")
        if phase is Phase.TLS_PENDING:
            raise LocalProtocolError("nothing may be sent before start_tls()")
        if phase is Phase.COMPRESS_PENDING:
            # It would leave uncompressed, where the client expects a deflate stream.
            raise LocalProtocolError("nothing may be sent before start_compression()")
        if phase is Phase.GREETING:
            return self._send_greeting(event)
        if isinstance(event, Tagged):
            return self._send_tagged(event)
        if isinstance(event, Continuation):
            return self._send_continuation(event)
        return self._send_untagged(event)

    def _write(self, event: Response) -> bytes:
        capabilities = self._advertised(event)
        data = write_response(event, utf8=self.utf8)
        # Committed: the octets are the application's to send now.
        if capabilities is not None:
            self._capabilities = capabilities
        elif isinstance(event, Untagged) and event.keyword == "ENABLED":
            self._enabled |= _names(event.data)
        return data

    def _send_bye(self, event: UntaggedStatus) -> bytes:
        data = self._write(event)
        if isinstance(self._pending, Logout) and not self._their_error:
            self._bye_sent = True  # RFC 9051 §6.1.3: the tagged OK follows
        else:
            self._phase = Phase.CLOSED
        return data

    def _send_greeting(self, event: Response) -> bytes:
        # RFC 9051 §7.1.1, §7.1.4: the greeting is * OK, * PREAUTH or * BYE.
        if not (isinstance(event, UntaggedStatus) and event.status in ("OK", "PREAUTH")):
            raise LocalProtocolError("the greeting must be * OK, * PREAUTH or * BYE")
        data = self._write(event)
        if event.status == "PREAUTH":
            self._stage = Stage.AUTHENTICATED
        self._phase = Phase.COMMAND
        return data

    def _send_untagged(self, event: Response) -> bytes:
        phase = self._phase
        if phase is Phase.AUTH:
            raise LocalProtocolError("no untagged data while the client's SASL answer is owed")
        if isinstance(event, UntaggedStatus):
            if event.status == "PREAUTH":
                raise LocalProtocolError("PREAUTH is only a greeting")
            if event.status == "BAD" and phase is Phase.REPLY and self._pending_tag is None:
                # The answer to an InvalidCommand that had no readable tag.
                data = self._write(event)
                self._phase = Phase.COMMAND
                return data
        elif isinstance(event, Untagged) and event.keyword == "ENABLED":
            if not isinstance(self._pending, Enable) or phase is not Phase.REPLY:
                raise LocalProtocolError("* ENABLED answers an ENABLE command only")
        elif isinstance(event, Untagged) and event.keyword == "EXPUNGE":
            if _by_sequence_number(self._pending):
                # RFC 9051 §7.5.1; the `_state.EXPUNGE_FORBIDDEN` comment says why.
                name = type(self._pending).__name__.upper()
                raise LocalProtocolError(f"no EXPUNGE while answering {name} (RFC 9051 §7.5.1)")
        elif not isinstance(event, Untagged | FetchResponse | FetchBatch):
            raise LocalProtocolError(f"not a response: {event!r}")
        return self._write(event)

    def _send_tagged(self, event: Tagged) -> bytes:
        phase = self._phase
        if phase is Phase.LITERAL:
            next_phase = SEND.get((LiteralRequested, event.status))
            if event.tag != self._literal_tag or next_phase is None:
                raise LocalProtocolError("answer a literal request with a continuation or NO/BAD")
            data = self._write(event)
            self._reader.reset()  # the client sends nothing more of this command
            self._literal_tag = None
            self._phase = next_phase
            return data
        if phase is not Phase.REPLY or self._pending_tag is None:
            raise LocalProtocolError(f"no command is waiting for a tagged response ({phase.name})")
        if event.tag != self._pending_tag:
            raise LocalProtocolError(f"tag {event.tag!r} does not answer {self._pending_tag!r}")
        command = self._pending
        kind = type(command) if command is not None else InvalidCommand
        next_phase = SEND.get((kind, event.status))
        if next_phase is None:
            raise LocalProtocolError(f"{event.status} is not a valid answer to {kind.__name__}")
        if isinstance(command, Logout) and event.status == "OK" and not self._bye_sent:
            raise LocalProtocolError("send * BYE before the OK to LOGOUT (RFC 9051 §6.1.3)")
        data = self._write(event)
        if command is not None:
            key = (self._stage, type(command), event.status)
            self._stage = STAGE_AFTER.get(key, self._stage)
            if isinstance(command, Logout) and event.status == "OK":
                self._logged_out = True
        self._pending = None
        self._pending_tag = None
        self._idling = False
        self._phase = next_phase
        return data

    def _send_continuation(self, event: Continuation) -> bytes:
        phase = self._phase
        answered: type[Event] | None = None
        if phase is Phase.LITERAL:
            answered = LiteralRequested
        elif phase is Phase.REPLY and self._pending is not None:
            answered = type(self._pending)
        next_phase = SEND.get((answered, "+")) if answered is not None else None
        if answered is Idle and self._idling:
            next_phase = None  # IDLE is accepted once; after DONE only the tagged OK
        if next_phase is None:
            raise LocalProtocolError(f"no continuation request is expected ({phase.name})")
        data = self._write(event)
        if phase is Phase.LITERAL:
            self._reader.accept_literal()
            self._literal_tag = None
        self._idling = answered is Idle
        self._phase = next_phase
        return data

    def _advertised(self, event: Response) -> frozenset[str] | None:
        """State from the wire: the capabilities `event` lists, if it lists any."""
        code = event.code if isinstance(event, Tagged | UntaggedStatus) else None
        if code is not None and code.name == "CAPABILITY":
            names = _names(code.data)
        elif isinstance(event, Untagged) and event.keyword == "CAPABILITY":
            names = _names(event.data)
        else:
            return None
        if self._tls_active and "STARTTLS" in names:
            # RFC 9051 §6.2.1: STARTTLS is a cleartext port's command; under TLS it is
            # refused (see `_judge`), so offering it would promise what is not served.
            raise LocalProtocolError("STARTTLS advertised under TLS")
        return names

    # --- the TLS switch ------------------------------------------------------------------

    def start_tls(self) -> None:
        """Call after the adapter's TLS handshake, following our OK to STARTTLS."""
        self._check_tls_switch("STARTTLS", PIPELINED_STARTTLS)
        # RFC 9051 §6.2.1: still not authenticated, no new greeting, and the client must
        # ask CAPABILITY again; what was advertised in plaintext no longer counts.
        self._tls_active = True
        self._capabilities = frozenset()
        self._phase = Phase.COMMAND

    # --- the COMPRESS switch -------------------------------------------------------------

    def start_compression(self) -> bytes:
        """Call after our OK to COMPRESS has been written and the adapter's compression
        is in place: returns the octets received after the COMPRESS command, still
        compressed, which the adapter inflates and feeds back (see the module docstring)."""
        if self._phase is not Phase.COMPRESS_PENDING or self._their_error or self._our_error:
            self._our_error = True
            raise LocalProtocolError("start_compression() outside the COMPRESS switch")
        pending = self._buffer.extract_all()
        self._compressing = True
        self._phase = Phase.COMMAND
        return pending


def _by_sequence_number(command: Command | None) -> bool:
    """`command` is FETCH, STORE or SEARCH without UID (RFC 9051 §7.5.1)."""
    if type(command) not in EXPUNGE_FORBIDDEN:
        return False
    assert isinstance(command, Uid | Search | Sort | Thread)  # the UID-capable commands
    return not command.uid


def _names(data: tuple[object, ...]) -> frozenset[str]:
    return frozenset(str(item).upper() for item in data if isinstance(item, Atom | str))
