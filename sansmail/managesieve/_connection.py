"""`Connection`: the ManageSieve server core's one front door.

Theory of operation
-------------------
The application feeds received bytes in (`receive_data`), pulls events out
(`next_event`) and turns its decisions into bytes (`send`). Nothing here does I/O or
reads a clock.

Greeting. The server speaks first with its capability listing and an OK (RFC 5804
§1.7), sent as `Capabilities`; a `Bye` instead refuses the session. Client bytes that
arrive before it wait in the buffer.

Lockstep. `next_event()` reads one command, which may span several lines and literals
(`_readers.CommandReader`), hands out its event and returns `PAUSED` until the
application has answered it; commands sent ahead wait untouched in the buffer.
Answers drive the state, looked up in `_state.SEND` and `_state.STAGE_AFTER` from what
they answer: OK ending AUTHENTICATE enters the authenticated state and OK to
UNAUTHENTICATE leaves it, OK to STARTTLS pauses everything until `start_tls()`, OK to
LOGOUT and any BYE close.

AUTHENTICATE (§2.1). The core frames the exchange, the application runs the SASL
mechanism (`sansmail.sasl`). The application answers `Authenticate` and each
`SaslResponse` with a `Challenge` (the next client bytes are then one string, handed out
as `SaslResponse`, or `SaslCancel` for "*"), `Ok` (success; the final server data, if
any, goes in its `SASL` response code) or `No`. "*" must be answered NO.

STARTTLS (§2.2). After our OK the connection is TLS_PENDING and `next_event()` returns
PAUSED. The adapter does its handshake and calls `start_tls()`, which refuses
(RemoteProtocolError) if any plaintext arrived behind STARTTLS, since it would otherwise
be read as if it had come over TLS. Then the server owes the capability listing again,
"as the capabilities may have changed" (§2.2): the connection is back in GREETING and
the application's next `send()` is that `Capabilities`. Under TLS (from STARTTLS or from
the first byte, `tls_active=True`) a listing that offers STARTTLS is a
`LocalProtocolError` and STARTTLS itself is answered NO.

State from the wire: `capabilities` is the last listing sent, which the application
consults (the SASL mechanisms it offered) rather than keeping a second copy.

Errors. A command the core refuses (unknown, malformed, not valid in this state, an
oversized literal, a SASL string that is not base64) arrives as `InvalidCommand`
carrying the NO to send, and is counted. More than `Config.max_invalid_commands` of
them, a bare CR or LF, a line over `Config.max_line`, bytes after LOGOUT's answer and
plaintext buffered at `start_tls()` raise `RemoteProtocolError` with a `Bye` as
`reply_hint` (None after LOGOUT's answer, which was the last word): the client is then
in ERROR for good, and the application may `send()` that one last response before
closing. The application may also end the session unprompted (an idle timeout, shutting
down) by sending a `Bye` whenever no response is owed (§1.2, BYE may come at any time).
"""

from __future__ import annotations

from sansmail._errors import LocalProtocolError, RemoteProtocolError
from sansmail._linebuffer import BareNewlineError, LineTooLongError
from sansmail._lockstep import LockstepServer
from sansmail._roles import NEED_DATA, PAUSED, Role, Signal
from sansmail.managesieve._config import Config
from sansmail.managesieve._events import (
    Bye,
    Capabilities,
    Challenge,
    ConnectionClosed,
    Event,
    InvalidCommand,
    No,
    Ok,
    Script,
    ScriptList,
)
from sansmail.managesieve._readers import (
    CommandError,
    CommandReader,
    Token,
    command_kind,
    read_command,
    read_sasl,
)
from sansmail.managesieve._state import RECEIVE, SEND, STAGE_AFTER, Phase, Stage
from sansmail.managesieve._writers import (
    write_capabilities,
    write_challenge,
    write_response,
    write_script,
    write_script_list,
)

__all__ = ["Connection"]

_CONNECTION_CLOSED = ConnectionClosed()

# The reply hints of fatal errors.
BARE_NEWLINE = Bye(text="bare CR or LF in a command, closing")
LINE_TOO_LONG = Bye(text="line too long, closing")
TOO_MANY_ERRORS = Bye(text="too many invalid commands, closing")
PIPELINED_STARTTLS = Bye(text="data sent before the TLS handshake, closing")

Sendable = Ok | No | Bye | Capabilities | ScriptList | Script | Challenge


def _no_check(_tokens: list[Token]) -> None:
    pass


class Connection(LockstepServer[Phase, Event, Sendable]):
    """One ManageSieve session, seen from the server.

    Args:
        our_role: `SERVER` (a ManageSieve client core is not part of sansmail).
        config: limits; `Config()` when omitted.
        tls_active: the link is under TLS from its first byte: STARTTLS is neither
            offered nor accepted.
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
            no_client_role="sansmail has no ManageSieve client core",
            max_invalid_commands=config.max_invalid_commands,
            too_many_invalid=TOO_MANY_ERRORS,
        )
        self.config = config
        self._stage = Stage.NON_AUTHENTICATED
        self._answering: Event | None = None  # the command the pending response answers
        self._reader = CommandReader(config)
        self._tls_active = tls_active
        self._logout = False
        self._capabilities: Capabilities | None = None

    # --- what the application may look at -------------------------------------------

    @property
    def stage(self) -> Stage:
        """RFC 5804's session state."""
        return self._stage

    @property
    def capabilities(self) -> Capabilities | None:
        """The last capability listing sent; forgotten at the TLS switch (§2.2)."""
        return self._capabilities

    @property
    def tls_active(self) -> bool:
        """The link is under TLS: from its first byte, or since `start_tls()`."""
        return self._tls_active

    # --- receiving ---------------------------------------------------------------------

    def _next_event(self) -> Event | Signal:
        phase = self._phase
        if phase is Phase.COMMAND or phase is Phase.SASL:
            return self._next_command(phase)
        if phase is Phase.CLOSED:
            if self._buffer and self._logout:
                # Errata 7825: the server ignores what follows LOGOUT; OK was the last word.
                raise RemoteProtocolError("data after LOGOUT")
            return _CONNECTION_CLOSED if self._eof else PAUSED
        return PAUSED  # GREETING, REPLY, TLS_PENDING

    def _next_command(self, phase: Phase) -> Event | Signal:
        sasl = phase is Phase.SASL
        stage = self._stage
        try:
            tokens = self._reader.read(
                self._buffer, _no_check if sasl else lambda t: _check_start(t, stage)
            )
            if tokens is None:
                if self._eof:
                    return self._handle(_CONNECTION_CLOSED)
                return NEED_DATA
            if sasl:
                event = read_sasl(tokens)
            else:
                event = read_command(tokens, stage, self.config, tls_active=self._tls_active)
        except CommandError as exc:
            self._count_invalid()
            line = self._reader.first_line
            event = InvalidCommand(line=line, reason=exc.reason, reply_hint=exc.reply)
        except BareNewlineError as exc:
            raise RemoteProtocolError(f"{exc} in a command", BARE_NEWLINE) from None
        except LineTooLongError:
            limit = self.config.max_line
            raise RemoteProtocolError(f"line over {limit} octets", LINE_TOO_LONG) from None
        return self._handle(event)

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
        if kind is Bye and (self._their_error or phase in (Phase.COMMAND, Phase.SASL)):
            # The last word: the hint after a RemoteProtocolError, or an unprompted BYE
            # (idle timeout, shutdown) while no response is owed (RFC 5804 §1.2).
            assert isinstance(event, Bye)
            self._phase = Phase.CLOSED
            return write_response(event)
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
        data = self._write(event)
        # Committed: the bytes are the application's to send now.
        if answered is not None:
            self._stage = STAGE_AFTER.get((self._stage, answered, kind), self._stage)
        if next_phase is Phase.CLOSED:
            self._logout = kind is Ok  # only LOGOUT's OK closes with OK
        self._answering = None
        self._phase = next_phase
        return data

    def _write(self, event: Sendable) -> bytes:
        if isinstance(event, Capabilities):
            if self._tls_active and event.starttls:
                # RFC 5804 §2.2: STARTTLS is offered only before TLS is active.
                raise LocalProtocolError("STARTTLS advertised under TLS")
            data = write_capabilities(event)
            self._capabilities = event
            return data
        if isinstance(event, ScriptList):
            return write_script_list(event)
        if isinstance(event, Script):
            return write_script(event)
        if isinstance(event, Challenge):
            return write_challenge(event)
        return write_response(event)

    # --- the TLS switch ------------------------------------------------------------------

    def start_tls(self) -> None:
        """The adapter finished the TLS handshake after our OK to STARTTLS.

        Raises LocalProtocolError outside the switch and RemoteProtocolError if plaintext
        arrived behind STARTTLS. Afterwards the application sends `Capabilities` again
        (RFC 5804 §2.2)."""
        self._check_tls_switch("STARTTLS", PIPELINED_STARTTLS)
        self._tls_active = True
        self._capabilities = None
        self._phase = Phase.GREETING


def _check_start(tokens: list[Token], stage: Stage) -> None:
    # Refuse an unknown command, or one the stage does not take, before its literals are
    # buffered (they are then dropped as they arrive).
    command_kind(tokens, stage)
