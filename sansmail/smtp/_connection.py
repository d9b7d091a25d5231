"""`Connection`: the SMTP server core's one front door.

Theory of operation
-------------------
The application feeds received bytes in (`receive_data`), pulls events out
(`next_event`) and turns its decisions into bytes (`send`). Nothing here does I/O or
reads a clock.

Lockstep. `next_event()` parses one command and hands out its event, then returns
`PAUSED` until the application has sent the `Reply` for it; pipelined commands (RFC 2920)
wait untouched in the buffer meanwhile, which is all a server needs for PIPELINING. The
first thing said is the application's greeting; client bytes that arrive before it are
kept and parsed only after it.

Replies drive the state. What a reply means depends on what it answers and on its class,
looked up in `_state.SEND` and `_state.STAGE_AFTER`: 354 to DATA starts the
content, 2xx to MAIL opens a transaction, 2xx to RCPT adds a recipient, any reply to the
end of the content closes the transaction, 220 to STARTTLS pauses everything until
`start_tls()`, 221 to QUIT and 421 to anything close the session. The 250 reply to EHLO
is read back for its extension list (`extensions`): the core accepts SIZE=, BODY=,
SMTPUTF8, BDAT and STARTTLS only when that reply advertised them, and prefixes enhanced
status codes only when it advertised ENHANCEDSTATUSCODES.

Errors. A command the core refuses arrives as `InvalidCommand` carrying the reply to send
(`reply_hint`); so does content it refuses (`InvalidMessage`, after the content was read
to its end). Too many refused commands, a bare CR or LF in a command line, a command line
over the hard cap, an unreadable BDAT size, an HTTP request, bytes after QUIT's 221 and
plaintext buffered at `start_tls()` raise `RemoteProtocolError` with a `reply_hint`
(None when nothing more should be said): the client side is then in ERROR for good, and
the application may `send()` that one last reply before closing.

STARTTLS (RFC 3207). After the application's 220 the connection is TLS_PENDING and
`next_event()` returns PAUSED. The adapter does its handshake and calls `start_tls()`,
which refuses (RemoteProtocolError) if any plaintext arrived behind the STARTTLS command,
since it would otherwise be read as if it had come over TLS, and otherwise forgets the
session (RFC 3207 §4.2): the client must send EHLO again, no greeting is sent, and an
earlier AUTH no longer counts. Under TLS the rules are the same whether it came from
STARTTLS or from the first byte (`tls_active=True`, port 465): an EHLO reply offering
STARTTLS is a `LocalProtocolError` (RFC 3207 §4.2), and a STARTTLS command is refused
with 503 whatever was advertised before; `tls_active` is what the application consults
before offering AUTH PLAIN or LOGIN.

AUTH (RFC 4954). The core frames the exchange; the application runs the SASL mechanism.
`Auth` arrives only if our EHLO reply had an "AUTH mech ..." line naming the mechanism
(otherwise 502, or 504 for a mechanism not on the line), outside a transaction (503) and
before any successful AUTH (503). The application answers with `Reply.challenge(data)`
(334: the connection enters the AUTH phase, where the next line is the client's base64
response, handed out as `AuthResponse`, or "*", handed out as `AuthCancel`, which must
get 501) or with a final reply: 235 marks the session `authenticated` for good (RSET and
EHLO keep it, RFC 4954 §4), 4xx/5xx end the attempt. A response line that is not base64
or is too long arrives as `InvalidAuthResponse`, counted like an invalid command. SMTP has
no "additional data with success" (RFC 4954 §4): the application sends such data (SCRAM's
server signature) as one more challenge, and 235 after the client's empty answer.

Line caps. While AUTH is advertised, an AUTH command line, and every line of the
exchange, may be `Config.auth_line_cap` long before the session ends (any other command
keeps `Config.command_line_cap`); past `Config.max_auth_response` octets of base64 the
attempt fails with 500 5.5.6.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from sansmail._errors import LocalProtocolError, RemoteProtocolError
from sansmail._linebuffer import BareNewlineError, LineTooLongError
from sansmail._lockstep import LockstepServer
from sansmail._roles import NEED_DATA, PAUSED, Role, Signal
from sansmail.smtp import _codes
from sansmail.smtp._config import Config
from sansmail.smtp._events import (
    SASL_MECHANISM,
    Auth,
    AuthResponse,
    Bdat,
    ConnectionClosed,
    EndOfChunk,
    EndOfMessage,
    Event,
    Hello,
    InvalidAuthResponse,
    InvalidCommand,
    Mail,
    Rcpt,
    Reply,
)
from sansmail.smtp._readers import (
    BdatReader,
    CommandError,
    ContentFilter,
    DataReader,
    read_auth_response,
    read_command,
    starts_with_auth,
)
from sansmail.smtp._state import RECEIVE, SEND, STAGE_AFTER, Phase, Session, Stage
from sansmail.smtp._writers import is_challenge_text, read_extensions, write_reply

__all__ = ["Connection"]

_CONNECTION_CLOSED = ConnectionClosed()

# Extensions whose framing the core does not implement: advertising one would promise
# the client something the readers cannot keep.
_UNSUPPORTED_EXTENSIONS = ("BINARYMIME",)


class Connection(LockstepServer[Phase, Event, Reply]):
    """One SMTP session, seen from the server.

    Args:
        our_role: `SERVER`. (The client role is `ClientConnection`.)
        config: limits and switches; `Config()` when omitted.
        tls_active: the link is under TLS from its first byte (implicit TLS, port 465,
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
            no_client_role="use smtp.ClientConnection for the client role",
            max_invalid_commands=config.max_invalid_commands,
            too_many_invalid=_codes.TOO_MANY_ERRORS,
        )
        self.config = config
        self._session = Session(config)
        self._session.tls_active = tls_active
        self._answering: Event | None = None  # the event the pending reply answers
        self._reader: DataReader | BdatReader | None = None
        self._bdat_content: ContentFilter | None = None  # one per BDAT transaction
        self._skip = 0  # octets of a refused BDAT chunk still to throw away
        self._skipped: InvalidCommand | None = None  # handed out once they are gone
        self._quit = False

    # --- what the application may look at -------------------------------------------

    @property
    def stage(self) -> Stage:
        """Where the session stands in RFC 5321's command order."""
        return self._session.stage

    @property
    def extensions(self) -> Mapping[str, str]:
        """What our last accepted EHLO reply advertised: keyword -> parameters."""
        return self._session.extensions

    @property
    def esmtp(self) -> bool:
        """The client greeted with EHLO and got 250."""
        return self._session.esmtp

    @property
    def tls_active(self) -> bool:
        """The link is under TLS: from its first byte (`tls_active=True`), or since
        `start_tls()` completed."""
        return self._session.tls_active

    @property
    def authenticated(self) -> bool:
        """An AUTH exchange ended in 235 on this connection (since the last STARTTLS)."""
        return self._session.authenticated

    # --- receiving ---------------------------------------------------------------------

    def _next_event(self) -> Event | Signal:
        phase = self._phase
        if phase is Phase.COMMAND:
            return self._next_command()
        if phase is Phase.AUTH:
            return self._next_auth_response()
        if phase is Phase.DATA or phase is Phase.BDAT:
            assert self._reader is not None
            event = self._reader(self._buffer)
            if event is None:
                return self._handle(_CONNECTION_CLOSED) if self._eof else NEED_DATA
            return self._handle(event)
        if phase is Phase.CLOSED:
            if self._buffer and self._quit:
                raise RemoteProtocolError("data after QUIT")
            return _CONNECTION_CLOSED if self._eof else PAUSED
        return PAUSED  # GREETING, REPLY, TLS_PENDING

    def _next_command(self) -> Event | Signal:
        buffer = self._buffer
        if self._skipped is not None:
            # A refused BDAT: its chunk is read and dropped before the refusal is shown.
            if self._skip:
                dropped = min(self._skip, len(buffer))
                buffer.discard(dropped)
                self._skip -= dropped
                if self._skip:
                    return self._handle(_CONNECTION_CLOSED) if self._eof else NEED_DATA
            event: Event = self._skipped
            self._skipped = None
            return self._handle(event)
        session = self._session
        try:
            line = buffer.maybe_extract_line(self.config.command_line_cap)
        except LineTooLongError:
            if not (session.auth_mechanisms and starts_with_auth(buffer)):
                raise RemoteProtocolError(
                    f"command line over {self.config.command_line_cap} octets",
                    _codes.COMMAND_TOO_LONG,
                ) from None
            line = self._extract_auth_line("AUTH command line")
        except BareNewlineError as exc:
            raise RemoteProtocolError(f"{exc} in a command line", _codes.BARE_NEWLINE) from None
        if line is None:
            return self._handle(_CONNECTION_CLOSED) if self._eof else NEED_DATA
        if session.bdat_failed and line.partition(b" ")[0].upper() != b"BDAT":
            session.bdat_failed = False  # the pipeline behind the refused chunk is drained
        try:
            event = read_command(line, session)
        except CommandError as exc:
            invalid = InvalidCommand(line=line, reason=exc.reason, reply_hint=exc.reply)
            if exc.counted:
                self._count_invalid()
            if exc.skip:
                self._skip = exc.skip
                self._skipped = invalid
                return self._next_command()
            return self._handle(invalid)
        if type(event) is Bdat:
            if self._bdat_content is None or session.stage is not Stage.BDAT:
                self._bdat_content = ContentFilter(self.config, session.size_limit)
            self._reader = BdatReader(self._bdat_content, event.size, event.last)
        return self._handle(event)

    def _extract_auth_line(self, what: str) -> bytes | None:
        cap = self.config.auth_line_cap
        try:
            return self._buffer.maybe_extract_line(cap)
        except LineTooLongError:
            raise RemoteProtocolError(
                f"{what} over {cap} octets", _codes.AUTH_LINE_TOO_LONG_CLOSING
            ) from None
        except BareNewlineError as exc:
            raise RemoteProtocolError(f"{exc} in an {what}", _codes.BARE_NEWLINE) from None

    def _next_auth_response(self) -> Event | Signal:
        # RFC 4954 §4: after a 334 the client's line is a response, never a command.
        line = self._extract_auth_line("AUTH exchange line")
        if line is None:
            return self._handle(_CONNECTION_CLOSED) if self._eof else NEED_DATA
        try:
            event = read_auth_response(line, self.config)
        except CommandError as exc:
            self._count_invalid()
            event = InvalidAuthResponse(line=line, reason=exc.reason, reply_hint=exc.reply)
        return self._handle(event)

    def _handle(self, event: Event) -> Event:
        # The RECEIVE table is the single place the phase moves on input.
        phase = RECEIVE[self._phase, type(event)]
        if phase is not Phase.DATA and phase is not Phase.BDAT:
            self._reader = None
        if phase is Phase.REPLY:
            self._answering = event
        self._phase = phase
        return event

    # --- sending -----------------------------------------------------------------------

    def _send(self, event: Reply) -> bytes:
        if type(event) is not Reply:
            raise LocalProtocolError(f"a server sends Reply events, not {type(event).__name__}")
        phase = self._phase
        session = self._session
        if self._their_error or event.code == 421:
            # The last word: the hint after a RemoteProtocolError, or a 421, which
            # RFC 5321 §3.8 allows at any time.
            data = self._write(event, enhanced=True)
            self._phase = Phase.CLOSED
            self._reader = None
            return data
        if phase is Phase.GREETING:
            answering: Event | None = None
        elif phase is Phase.REPLY:
            answering = self._answering
        else:
            raise LocalProtocolError(f"no command is waiting for a reply (state {phase.name})")
        kind = type(answering) if answering is not None else None
        code = event.code
        cls = code // 100
        next_phase = SEND.get((kind, code)) or SEND.get((kind, cls))
        if next_phase is None:
            what = kind.__name__ if kind is not None else "the greeting"
            raise LocalProtocolError(f"{code} is not a valid reply to {what}")
        if code == 334 and not (len(event.lines) == 1 and is_challenge_text(event.lines[0])):
            # RFC 4954 §4: the challenge "MUST NOT contain any text other than the
            # BASE64 encoded challenge"; Reply.challenge builds one.
            raise LocalProtocolError(f"a 334 reply must be one line of base64: {event.lines!r}")
        extensions = None
        if cls == 2 and isinstance(answering, Hello):
            extensions = self._check_extensions(event) if answering.extended else {}
        data = self._write(event, enhanced=kind is not None and kind is not Hello)
        # Committed: the bytes are the application's to send now.
        if extensions is not None:
            assert isinstance(answering, Hello)  # for mypy: extensions come from EHLO/HELO
            self._set_extensions(extensions)
            session.esmtp = answering.extended
        self._move_stage(answering, kind, cls)
        if code == 235 and (kind is Auth or kind is AuthResponse):
            session.authenticated = True
        if next_phase is Phase.DATA:
            self._reader = DataReader(ContentFilter(self.config, session.size_limit))
        elif next_phase is Phase.CLOSED:
            self._quit = True
        self._phase = next_phase
        return data

    def _write(self, event: Reply, *, enhanced: bool) -> bytes:
        extensions = self._session.extensions
        return write_reply(
            event,
            enhanced=enhanced and "ENHANCEDSTATUSCODES" in extensions,
            utf8="SMTPUTF8" in extensions,
        )

    def _check_extensions(self, reply: Reply) -> dict[str, str]:
        extensions = read_extensions(reply)
        for name in _UNSUPPORTED_EXTENSIONS:
            if name in extensions:
                raise LocalProtocolError(f"the SMTP core does not implement {name}")
        if self._session.tls_active and "STARTTLS" in extensions:
            # RFC 3207 §4.2: not advertised again once TLS is up.
            raise LocalProtocolError("STARTTLS advertised under TLS")
        size = extensions.get("SIZE", "")
        if size and not (size.isascii() and size.isdigit()):
            raise LocalProtocolError(f"SIZE parameter must be a number: {size!r}")
        if "AUTH" in extensions:
            # RFC 4954 §3: "AUTH" SP mechanism names (RFC 4422 §3.1), at least one.
            names = extensions["AUTH"].split()
            if not names or not all(SASL_MECHANISM.fullmatch(name) for name in names):
                raise LocalProtocolError(f"bad AUTH mechanism list: {extensions['AUTH']!r}")
        return extensions

    def _set_extensions(self, extensions: dict[str, str]) -> None:
        session = self._session
        session.extensions = MappingProxyType(extensions)
        session.auth_mechanisms = frozenset(extensions.get("AUTH", "").split())
        limit = self.config.max_message_size
        advertised = int(extensions.get("SIZE") or 0)
        # RFC 1870 §3: SIZE 0 (or no number) declares no fixed limit.
        session.size_limit = min(limit, advertised) if advertised else limit

    def _move_stage(self, answering: Event | None, kind: type[Event] | None, cls: int) -> None:
        session = self._session
        stage = session.stage
        new = STAGE_AFTER.get((stage, kind, cls), stage)
        if new is not stage and new is not Stage.RCPT and new is not Stage.BDAT:
            # Leaving a transaction, or opening one: the envelope starts afresh.
            session.recipients = 0
            session.smtputf8 = False
            self._bdat_content = None
        if cls == 2:
            if kind is Mail:
                assert isinstance(answering, Mail)
                session.smtputf8 = answering.smtputf8
            elif kind is Rcpt:
                session.recipients += 1
            elif kind is EndOfMessage:
                # Postfix counts errors "without delivering mail": a delivered message
                # wipes the slate.
                self._invalid_commands = 0
        elif kind is EndOfChunk:
            # RFC 3030 §2: chunks already pipelined behind a refused one are dropped.
            session.bdat_failed = True
        session.stage = new

    # --- the TLS switch ------------------------------------------------------------------

    def start_tls(self) -> None:
        """Call after the adapter's TLS handshake, following our 220 to STARTTLS."""
        self._check_tls_switch("STARTTLS", _codes.PIPELINED_STARTTLS)
        # RFC 3207 §4.2: forget everything learnt before the handshake.
        session = self._session
        session.stage = Stage.NEED_HELLO
        session.tls_active = True
        session.authenticated = False
        session.esmtp = False
        session.recipients = 0
        session.smtputf8 = False
        self._set_extensions({})
        self._bdat_content = None
        self._phase = Phase.COMMAND
