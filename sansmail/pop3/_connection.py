"""`Connection`: the POP3 server core's one front door.

Theory of operation
-------------------
The application feeds received bytes in (`receive_data`), pulls events out
(`next_event`) and turns its decisions into bytes (`send`). Nothing here does I/O or
reads a clock.

Lockstep. The first thing said is the application's greeting (`Ok`; an `Err` greeting
closes). After that `next_event()` parses one command, hands out its event and returns
`PAUSED` until the application has answered it; commands pipelined behind it (RFC 2449
§6.6) wait untouched in the buffer, which is all a server needs for PIPELINING.

Responses drive the state, looked up in `_state.SEND` and `_state.STAGE_AFTER` from
what they answer: +OK to PASS or to an AUTH exchange enters TRANSACTION, +OK to STLS
pauses everything until `start_tls()`, any answer to QUIT closes. A +OK to a multi-line
command (CAPA, RETR, TOP, LIST and UIDL without argument) must be followed by
`MultilineData` chunks and `EndOfMultiline`, which the writer byte-stuffs and terminates.
The +OK to STAT, and to LIST or UIDL with a message number, must be the listing RFC 1939
§5 and §7 define ("+OK 2 320"), since clients parse it. The core never counts or checks
message sizes: the maildrop states them, and the writer
sends the body byte for byte (bare CR or LF refused), so the octets RETR sends are the
octets LIST announced (RFC 1939 §5, CRLFs counted, stuffing dots not).

QUIT in TRANSACTION enters UPDATE as soon as it is read (RFC 1939 §6): the application
commits the deletions, then answers +OK (or -ERR when some could not be removed); both
close the session. QUIT in AUTHORIZATION just closes.

CAPA (RFC 2449 §5). The application writes the capability list as the body of the +OK;
the connection reads it back as it goes out (`capabilities`, state from the wire) and
refuses a list that offers STLS once TLS is active (RFC 2595 §4).

Errors. A command the core refuses (unknown, malformed, not valid in this state, PASS
without USER, STLS twice, a response line of an AUTH exchange that is not base64) arrives
as `InvalidCommand` carrying the -ERR to send, and is counted. More than
`Config.max_invalid_commands` of them, a bare CR or LF, a line over its hard cap, bytes
after QUIT's answer and plaintext buffered at `start_tls()` raise `RemoteProtocolError`
with an `Err` as `reply_hint` (None after QUIT's answer, which was the last word): the
client is then in ERROR for good, and the application may `send()` that one last response
before closing. The application may also end the
session unprompted (an idle timeout, shutting down) by sending an `Err` whenever no
response is owed; RFC 1939 has no 421, and a final -ERR is what servers send.

STLS (RFC 2595 §4). After our +OK the connection is TLS_PENDING and `next_event()` returns
PAUSED. The adapter does its handshake and calls `start_tls()`, which refuses
(RemoteProtocolError) if any plaintext arrived behind STLS, since it would otherwise be
read as if it had come over TLS; the session stays in AUTHORIZATION, with no new greeting.
Under TLS the rules are the same whether it came from STLS or from the first byte
(`tls_active=True`, port 995): a CAPA listing STLS is a `LocalProtocolError` (RFC 2595
§4), STLS is refused with -ERR whatever was advertised before, and `tls_active` is what
the application consults before allowing USER/PASS or AUTH PLAIN.

AUTH (RFC 5034 §4). The core frames the exchange, the application runs the SASL
mechanism (`sansmail.sasl`). The application answers `Auth` and each `AuthResponse` with a
`Challenge` (the next client line is then base64 or "*", handed out as `AuthResponse` or
`AuthCancel`), +OK (success: TRANSACTION) or -ERR (failure; RFC 5034 §6 suggests code
"AUTH"). "*" must be answered -ERR. AUTH lines may be up to `Config.auth_line_cap` long.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from sansmail._errors import LocalProtocolError, RemoteProtocolError
from sansmail._linebuffer import BareNewlineError, LineTooLongError
from sansmail._lockstep import LockstepServer
from sansmail._roles import NEED_DATA, PAUSED, Role, Signal
from sansmail.pop3._config import Config
from sansmail.pop3._events import (
    Capa,
    Challenge,
    ConnectionClosed,
    EndOfMultiline,
    Err,
    Event,
    InvalidCommand,
    MultilineData,
    Ok,
    Quit,
    User,
)
from sansmail.pop3._readers import CommandError, read_auth_response, read_command
from sansmail.pop3._state import RECEIVE, SEND, STAGE_AFTER, Phase, Stage, is_multiline
from sansmail.pop3._writers import (
    MAX_CAPA_LISTING,
    DotStuffer,
    check_scan_listing,
    read_capabilities,
    write_challenge,
    write_response,
)

__all__ = ["Connection"]

_CONNECTION_CLOSED = ConnectionClosed()

# The reply hints of fatal errors.
BARE_NEWLINE = Err(text="bare CR or LF in a command line, closing")
LINE_TOO_LONG = Err(text="line too long, closing")
TOO_MANY_ERRORS = Err(text="too many invalid commands, closing")
PIPELINED_STLS = Err(text="data sent before the TLS handshake, closing")
COMMAND_TOO_LONG = Err(text="command line too long")
AUTH_RESPONSE_TOO_LONG = Err(text="authentication response too long", code="AUTH")

# "AUTH" SP mechanism (at most 20 characters, RFC 4422 §3.1) SP: what an AUTH command line
# may hold besides its initial response.
_AUTH_COMMAND = len("AUTH ") + 20 + 1

Sendable = Ok | Err | Challenge | MultilineData | EndOfMultiline


class Connection(LockstepServer[Phase, Event, Sendable]):
    """One POP3 session, seen from the server.

    Args:
        our_role: `SERVER` (a POP3 client core is not part of sansmail).
        config: limits; `Config()` when omitted.
        tls_active: the link is under TLS from its first byte (implicit TLS, port 995,
            RFC 8314 §3.3): STLS is neither offered nor accepted.
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
            no_client_role="sansmail has no POP3 client core",
            max_invalid_commands=config.max_invalid_commands,
            too_many_invalid=TOO_MANY_ERRORS,
        )
        self.config = config
        self._stage = Stage.AUTHORIZATION
        self._answering: Event | None = None  # the command the pending response answers
        self._stuffer: DotStuffer | None = None  # while a multi-line body is written
        self._user: str | None = None  # the name of a USER just answered +OK
        self._tls_active = tls_active
        self._quit = False
        self._capa: bytearray | None = None  # our CAPA listing, while it is written
        self._capabilities: Mapping[str, str] = MappingProxyType({})

    # --- what the application may look at -------------------------------------------

    @property
    def stage(self) -> Stage:
        """RFC 1939's session state."""
        return self._stage

    @property
    def user(self) -> str | None:
        """The name of the USER command answered +OK, while PASS may follow it."""
        return self._user

    @property
    def capabilities(self) -> Mapping[str, str]:
        """What our last CAPA answer listed: tag (upper case) -> parameters. Forgotten
        at the TLS switch (RFC 2595 §4)."""
        return self._capabilities

    @property
    def tls_active(self) -> bool:
        """The link is under TLS: from its first byte (`tls_active=True`), or since
        `start_tls()` completed."""
        return self._tls_active

    # --- receiving ---------------------------------------------------------------------

    def _next_event(self) -> Event | Signal:
        phase = self._phase
        if phase is Phase.COMMAND or phase is Phase.AUTH:
            return self._next_line(phase)
        if phase is Phase.CLOSED:
            if self._buffer and self._quit:
                # Our answer to QUIT was the last word: no hint.
                raise RemoteProtocolError("data after QUIT")
            return _CONNECTION_CLOSED if self._eof else PAUSED
        return PAUSED  # GREETING, REPLY, MULTILINE, TLS_PENDING

    def _next_line(self, phase: Phase) -> Event | Signal:
        config = self.config
        try:
            line = self._extract_line(phase)
        except BareNewlineError as exc:
            raise RemoteProtocolError(f"{exc} in a command line", BARE_NEWLINE) from None
        if line is None:
            return self._handle(_CONNECTION_CLOSED) if self._eof else NEED_DATA
        auth = phase is Phase.AUTH or line[:5].upper() == b"AUTH "
        event: Event
        try:
            prefix = 0 if phase is Phase.AUTH else _AUTH_COMMAND
            if auth and len(line) > config.max_auth_response + prefix:
                raise CommandError("AUTH response too long", AUTH_RESPONSE_TOO_LONG)
            if phase is Phase.AUTH:
                event = read_auth_response(line)
            elif len(line) + 2 > config.max_command_line and not auth:
                # RFC 2449 §4: 255 octets, CRLF included.
                raise CommandError("command line too long", COMMAND_TOO_LONG)
            else:
                event = read_command(
                    line,
                    self._stage,
                    user_accepted=self._user is not None,
                    tls_active=self._tls_active,
                )
        except CommandError as exc:
            self._count_invalid()
            event = InvalidCommand(line=line, reason=exc.reason, reply_hint=exc.reply)
        if type(event) is Quit and self._stage is Stage.TRANSACTION:
            self._stage = Stage.UPDATE  # RFC 1939 §6
        return self._handle(event)

    def _extract_line(self, phase: Phase) -> bytes | None:
        # An AUTH command, and every line of the exchange, may be longer (RFC 5034 §4).
        buffer = self._buffer
        cap = self.config.auth_line_cap if phase is Phase.AUTH else self.config.command_line_cap
        try:
            return buffer.maybe_extract_line(cap)
        except LineTooLongError:
            # Rare, so the copy is affordable: is this long line an AUTH command?
            if cap == self.config.auth_line_cap or bytes(buffer)[:5].upper() != b"AUTH ":
                raise RemoteProtocolError(f"line over {cap} octets", LINE_TOO_LONG) from None
        cap = self.config.auth_line_cap
        try:
            return buffer.maybe_extract_line(cap)
        except LineTooLongError:
            raise RemoteProtocolError(f"line over {cap} octets", LINE_TOO_LONG) from None

    def _handle(self, event: Event) -> Event:
        # The RECEIVE table is the single place the phase moves on input.
        phase = RECEIVE[self._phase, type(event)]
        if phase is Phase.REPLY:
            self._answering = event
        self._phase = phase
        return event

    # --- sending -----------------------------------------------------------------------

    def _send(self, event: Sendable) -> bytes:
        phase = self._phase
        kind = type(event)
        if phase is Phase.MULTILINE:
            assert self._stuffer is not None
            if kind is MultilineData:
                assert isinstance(event, MultilineData)
                if self._capa is not None:
                    self._capa += event.data
                    self._check_capabilities(complete=False)
                return self._stuffer.stuff(event.data)
            if kind is EndOfMultiline:
                if self._capa is not None:
                    self._capabilities = MappingProxyType(self._check_capabilities(complete=True))
                    self._capa = None
                data = self._stuffer.end()
                self._stuffer = None
                self._phase = Phase.COMMAND
                return data
            raise LocalProtocolError(f"a multi-line answer is open: can't send {kind.__name__}")
        if kind is MultilineData or kind is EndOfMultiline:
            raise LocalProtocolError(f"{kind.__name__} outside a multi-line answer")
        if kind is Err and (self._their_error or phase in (Phase.COMMAND, Phase.AUTH)):
            # The last word: the hint after a RemoteProtocolError, or an unprompted
            # -ERR (idle timeout, shutdown) while no response is owed.
            assert isinstance(event, Err)
            data = write_response(event)
            self._phase = Phase.CLOSED
            return data
        if phase is Phase.GREETING:
            answering: Event | None = None
        elif phase is Phase.REPLY:
            answering = self._answering
        else:
            raise LocalProtocolError(f"no command is waiting for a response ({phase.name})")
        answered = type(answering) if answering is not None else None
        next_phase = SEND.get((answered, kind))
        if next_phase is None:
            what = answered.__name__ if answered is not None else "the greeting"
            raise LocalProtocolError(f"{kind.__name__} is not a valid answer to {what}")
        if isinstance(event, Challenge):
            data = write_challenge(event)
        else:
            assert isinstance(event, Ok | Err)  # SEND holds no other event types
            if isinstance(event, Ok) and answering is not None:
                check_scan_listing(answering, event)
            data = write_response(event)
        # Committed: the bytes are the application's to send now.
        self._user = answering.name if kind is Ok and isinstance(answering, User) else None
        if answered is not None:
            self._stage = STAGE_AFTER.get((self._stage, answered, kind), self._stage)
        if kind is Ok and answering is not None and is_multiline(answering):
            next_phase = Phase.MULTILINE
            self._stuffer = DotStuffer()
            if isinstance(answering, Capa):
                self._capa = bytearray()
        elif next_phase is Phase.CLOSED:
            self._quit = True
        self._answering = None
        self._phase = next_phase
        return data

    def _check_capabilities(self, *, complete: bool) -> dict[str, str]:
        # State from the wire: what our CAPA answer lists is what the session offers.
        assert self._capa is not None
        if len(self._capa) > MAX_CAPA_LISTING:
            raise LocalProtocolError(f"CAPA listing over {MAX_CAPA_LISTING} octets")
        listing = bytes(self._capa)
        if not complete:
            listing = listing[: listing.rfind(b"\r\n") + 2]
        capabilities = read_capabilities(listing)
        if self._tls_active and "STLS" in capabilities:
            # RFC 2595 §4: STLS is offered only before TLS is active.
            raise LocalProtocolError("STLS advertised under TLS")
        return capabilities

    # --- the TLS switch ------------------------------------------------------------------

    def start_tls(self) -> None:
        """Call after the adapter's TLS handshake, following our +OK to STLS."""
        self._check_tls_switch("STLS", PIPELINED_STLS)
        # RFC 2595 §4: still AUTHORIZATION; no new greeting; the client must ask CAPA again.
        self._tls_active = True
        self._user = None
        self._capabilities = MappingProxyType({})
        self._phase = Phase.COMMAND
