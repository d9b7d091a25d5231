"""`ClientConnection`: the SMTP client core, the other end of `Connection(SERVER)`.

Theory of operation
-------------------
The application sends command events (`send` returns their bytes), feeds what the server
says into `receive_data`, and pulls `Reply` events out of `next_event`. Nothing here does
I/O or reads a clock; the events are the ones the server core hands out, so what a client
sends is exactly what a server receives.

Which reply answers what. Replies come back in the order the commands went out (RFC 2920
§3.2), so the connection keeps a FIFO of the commands still owed a reply (`pending`; the
greeting is owed first, shown as None). Each `Reply` that `next_event` returns answers the
head of that queue, which `answered` shows afterwards. What a reply *means* is looked up
exactly as the server core decides what it may send, in `_state.SEND` and
`_state.STAGE_AFTER` (with the few client additions of `_client_state`): 354 to DATA
opens the content, 334 to AUTH asks for a response, 220 to STARTTLS starts the TLS switch,
2xx to MAIL opens a transaction, 221 to QUIT ends the session. A reply those tables do not
allow (354 to MAIL, 250 to DATA ...) is a `RemoteProtocolError`, as is a reply with no
command pending, except 421, which RFC 5321 §3.8 lets a server send at any time: a 421
ends the session whatever it answers.

What may be sent when. `Phase` says what the next bytes from us may be: nothing yet
(GREETING, REPLY, TLS_PENDING), a command (COMMAND), content after the 354 (DATA) or after
a BDAT line (BDAT), an AUTH response after a 334 (AUTH). RFC 2920 pipelining: with
PIPELINING advertised, MAIL, RCPT, RSET, BDAT and the end of the content may be followed
by more commands before their reply (`_client_state.PIPELINABLE`); any other command is
the last of its group, and without PIPELINING every command is. The command order of RFC
5321 §4.1.4 is checked with the server's own `ALLOWED` table against the stage the
session will be in if every pending command succeeds (so RCPT may follow a pipelined MAIL);
a refused command raises `LocalProtocolError` and never reaches the wire. Extensions are
used only when the EHLO reply advertised them: MAIL and RCPT parameters, STARTTLS, AUTH
and its mechanism, BDAT, and SMTPUTF8's non-ASCII paths (RFC 5321 §2.2.2, RFC 6531 §3.4).
Content after the 354 is dot-stuffed and ended by `EndOfMessage` (CRLF "." CRLF, with a
CRLF added to content that lacks one); a bare LF in it becomes CRLF and a bare CR is
refused (`_client_writers` says why). After BDAT, exactly its size in `MessageData`.

State comes from the wire. The 250 reply to EHLO sets `extensions` (keyword upper-cased ->
parameters, read by the same function the server uses for its own reply); a 250 to HELO
sets none. Replies but the greeting and the EHLO/HELO reply have a leading RFC 3463 code
split into `Reply.enhanced` (see `_client_readers`).

STARTTLS (RFC 3207). After the 220, the connection is TLS_PENDING and `next_event()`
returns PAUSED. The adapter does the handshake and calls `start_tls()`, which refuses
(RemoteProtocolError) if any plaintext arrived after the 220, since it would otherwise be
read as if it had come over TLS, and otherwise forgets what the EHLO reply said: the
client must send EHLO again (RFC 3207 §4.2). Under TLS, from STARTTLS or from the first
byte (`tls_active=True`), STARTTLS is refused before it reaches the wire.

Errors. A malformed reply, a reply the tables do not allow, a line or reply over the caps
of `_client_readers`, and EOF in the middle of a reply raise `RemoteProtocolError`; a
command sent out of turn raises `LocalProtocolError`. Either leaves that side in ERROR for
good (`their_state` / `our_state`); the application closes the connection. EOF between
replies is `ConnectionClosed`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from types import MappingProxyType

from sansmail._errors import LocalProtocolError, RemoteProtocolError
from sansmail._linebuffer import LineBuffer
from sansmail._roles import CLIENT, NEED_DATA, PAUSED, SERVER, Role, Signal
from sansmail.smtp._client_readers import MAX_REPLY_LINE, MAX_REPLY_LINES, ReplyReader
from sansmail.smtp._client_state import (
    CLIENT_SEND,
    CLIENT_STAGE_AFTER,
    PIPELINABLE,
    reply_kind,
)
from sansmail.smtp._client_writers import DataWriter, check_chunk, write_command
from sansmail.smtp._events import (
    Auth,
    AuthCancel,
    AuthResponse,
    Bdat,
    ConnectionClosed,
    EndOfMessage,
    Event,
    Hello,
    Mail,
    MessageData,
    Rcpt,
    Reply,
    StartTLS,
    Verify,
)
from sansmail.smtp._readers import _MAIL_PARAMETERS, _RCPT_PARAMETERS
from sansmail.smtp._state import ALLOWED, COMMANDS, REFUSALS, Phase, Stage
from sansmail.smtp._writers import read_extensions

__all__ = ["ClientConnection"]

_CONNECTION_CLOSED = ConnectionClosed()


def _name(event: Event | None) -> str:
    return "the greeting" if event is None else type(event).__name__


class ClientConnection:
    """One SMTP session, seen from the client.

    Args:
        max_reply_line: longest reply line accepted, CRLF included.
        max_reply_lines: most lines in one reply.
        tls_active: the link is under TLS from its first byte (implicit TLS, port 465,
            RFC 8314 §3.3): STARTTLS is never sent.
    """

    def __init__(
        self,
        *,
        max_reply_line: int = MAX_REPLY_LINE,
        max_reply_lines: int = MAX_REPLY_LINES,
        tls_active: bool = False,
    ) -> None:
        if max_reply_line < 512 or max_reply_lines < 1:
            raise ValueError("max_reply_line must be >= 512 (RFC 5321 §4.5.3.1.5)")
        self._buffer = LineBuffer()
        self._reader = ReplyReader(max_reply_line, max_reply_lines)
        self._eof = False
        self._our_error = False
        self._their_error = False
        self._phase = Phase.GREETING
        self._stage = Stage.NEED_HELLO
        # Commands still owed a reply, oldest first; None is the greeting.
        self._pending: deque[Event | None] = deque([None])
        self._answered: Event | None = None
        self._extensions: Mapping[str, str] = MappingProxyType({})
        self._esmtp = False
        self._tls_active = tls_active
        self._authenticated = False
        self._smtputf8 = False  # the last MAIL sent had SMTPUTF8 (RFC 6531 §3.4)
        self._data: DataWriter | None = None  # after 354
        self._bdat: Bdat | None = None  # the chunk whose octets are being sent
        self._bdat_left = 0

    # --- what the application may look at -------------------------------------------

    @property
    def our_role(self) -> Role:
        return CLIENT

    @property
    def their_role(self) -> Role:
        return SERVER

    @property
    def our_state(self) -> Phase:
        return Phase.ERROR if self._our_error else self._phase

    @property
    def their_state(self) -> Phase:
        return Phase.ERROR if self._their_error else self._phase

    @property
    def stage(self) -> Stage:
        """Where the session stands in RFC 5321's command order, by the replies so far."""
        return self._stage

    @property
    def pending(self) -> tuple[Event | None, ...]:
        """The commands still owed a reply, oldest first (None: the greeting)."""
        return tuple(self._pending)

    @property
    def answered(self) -> Event | None:
        """What the last Reply from `next_event` answered (None: the greeting, or a 421
        that came with nothing pending)."""
        return self._answered

    @property
    def extensions(self) -> Mapping[str, str]:
        """What the server's last 250 reply to EHLO advertised: keyword -> parameters."""
        return self._extensions

    @property
    def esmtp(self) -> bool:
        """The server accepted EHLO (not HELO)."""
        return self._esmtp

    @property
    def pipelining(self) -> bool:
        """PIPELINING was advertised (RFC 2920): commands may be sent in groups."""
        return "PIPELINING" in self._extensions

    @property
    def tls_active(self) -> bool:
        """The link is under TLS: from its first byte (`tls_active=True`), or since
        `start_tls()` completed."""
        return self._tls_active

    @property
    def authenticated(self) -> bool:
        """An AUTH exchange ended in 235 (since the last STARTTLS)."""
        return self._authenticated

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """The bytes received and not parsed, and whether EOF was seen."""
        return bytes(self._buffer), self._eof

    # --- receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the server; b"" means it closed its side."""
        if data:
            if self._eof:
                raise LocalProtocolError("received data after EOF")
            self._buffer.append(data)
        else:
            self._eof = True

    def next_event(self) -> Reply | ConnectionClosed | Signal:
        """The next reply, ConnectionClosed, NEED_DATA (feed more bytes) or PAUSED (the
        TLS switch is waiting for `start_tls()`)."""
        if self._their_error:
            raise RemoteProtocolError("the server already broke the protocol")
        if self._our_error:
            raise LocalProtocolError("the connection failed on our side")
        phase = self._phase
        if phase is Phase.TLS_PENDING:
            return PAUSED
        if phase is Phase.CLOSED:
            # Whatever follows a 221 or 421 is of no use; it stays in trailing_data.
            return _CONNECTION_CLOSED if self._eof else NEED_DATA
        try:
            reply = self._reader(self._buffer, enhanced=self._enhanced_next())
            if reply is None:
                if not self._eof:
                    return NEED_DATA
                if self._buffer or self._reader.partial:
                    raise RemoteProtocolError("connection closed in the middle of a reply")
                self._close()
                return _CONNECTION_CLOSED
            return self._handle(reply)
        except RemoteProtocolError:
            self._their_error = True
            raise

    def _enhanced_next(self) -> bool:
        # RFC 2034 §3: neither the greeting nor the reply to EHLO/HELO carries a code.
        if not self._pending:
            return True  # with nothing pending, only a 421 is valid
        head = self._pending[0]
        return head is not None and type(head) is not Hello

    def _close(self) -> None:
        self._phase = Phase.CLOSED
        self._pending.clear()
        self._data = None
        self._bdat = None

    def _handle(self, reply: Reply) -> Reply:
        code = reply.code
        if not self._pending:
            if code != 421:
                raise RemoteProtocolError(f"reply {code} with no command pending")
            self._answered = None
            self._close()
            return reply
        answered = self._pending.popleft()
        self._answered = answered
        if code == 421:
            # RFC 5321 §3.8: the server is closing, whatever was asked.
            self._close()
            return reply
        kind = reply_kind(answered)
        cls = code // 100
        after = CLIENT_SEND.get((kind, code)) or CLIENT_SEND.get((kind, cls))
        if after is None:
            raise RemoteProtocolError(f"{code} is not a valid reply to {_name(answered)}")
        if cls == 2 and isinstance(answered, Hello):
            extensions = read_extensions(reply) if answered.extended else {}
            self._extensions = MappingProxyType(extensions)
            self._esmtp = answered.extended
        elif code == 235 and isinstance(answered, Auth | AuthResponse):
            self._authenticated = True
        self._stage = CLIENT_STAGE_AFTER.get((self._stage, kind, cls), self._stage)
        if after is Phase.CLOSED:
            self._close()
        elif after is not Phase.COMMAND:
            # 354, 334 and STARTTLS's 220 answer commands that come last in their
            # group, so nothing else is pending.
            self._phase = after
            if after is Phase.DATA:
                self._data = DataWriter()
        elif self._phase in (Phase.GREETING, Phase.REPLY) and not self._pending:
            self._phase = Phase.COMMAND
        return reply

    # --- sending ---------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """Check that `event` may be sent now and return its bytes.

        Raises LocalProtocolError (and our side is then in ERROR for good) when it may
        not: see the module docstring."""
        try:
            return self._send(event)
        except LocalProtocolError:
            self._our_error = True
            raise

    def send_failed(self) -> None:
        """The bytes of the last `send()` never left: our side is broken for good."""
        self._our_error = True

    def _send(self, event: Event) -> bytes:
        if self._our_error:
            raise LocalProtocolError("can't send after an error on our side")
        if self._their_error:
            raise LocalProtocolError("the server broke the protocol; close the connection")
        phase = self._phase
        kind = type(event)
        if phase is Phase.COMMAND:
            return self._send_command(event)
        if phase is Phase.DATA:
            assert self._data is not None
            if kind is MessageData:
                assert isinstance(event, MessageData)
                return self._data.feed(event.data)
            if kind is EndOfMessage:
                data = self._data.finish()
                self._data = None
                self._sent(event)
                return data
        elif phase is Phase.BDAT:
            if kind is MessageData:
                assert isinstance(event, MessageData)
                return self._send_chunk(event.data)
        elif phase is Phase.AUTH:
            if kind is AuthResponse or kind is AuthCancel:
                data = write_command(event, utf8=False)
                self._sent(event)
                return data
        elif phase is Phase.GREETING:
            raise LocalProtocolError("wait for the server's greeting (RFC 5321 §3.1)")
        elif phase is Phase.REPLY:
            raise LocalProtocolError(
                f"{_name(self._pending[-1])} must have its reply before {kind.__name__} "
                "(RFC 2920 §3.1)"
            )
        elif phase is Phase.TLS_PENDING:
            raise LocalProtocolError("finish the TLS handshake and call start_tls() first")
        elif phase is Phase.CLOSED:
            raise LocalProtocolError("the session is closed")
        raise LocalProtocolError(f"{kind.__name__} can't be sent in phase {phase.name}")

    def _sent(self, event: Event) -> None:
        """`event` went out and awaits its reply: the phase that follows (RFC 2920 §3.1)."""
        self._pending.append(event)
        last_in_group = not (self.pipelining and type(event) in PIPELINABLE)
        self._phase = Phase.REPLY if last_in_group else Phase.COMMAND

    def _projected_stage(self) -> Stage:
        # The stage the session will be in if every pending command succeeds: what a
        # pipelined command is judged against.
        stage = self._stage
        for event in self._pending:
            stage = CLIENT_STAGE_AFTER.get((stage, reply_kind(event), 2), stage)
        return stage

    def _send_command(self, event: Event) -> bytes:
        kind = type(event)
        name = kind.__name__
        if kind not in COMMANDS:
            raise LocalProtocolError(f"{name} can't be sent now (phase COMMAND)")
        stage = self._projected_stage()
        if (stage, kind) not in ALLOWED:
            raise LocalProtocolError(
                f"{name} is out of sequence in stage {stage.name} "
                f"(RFC 5321 §4.1.4: the server would answer {REFUSALS[stage, kind].code})"
            )
        extensions = self._extensions
        utf8 = False
        if isinstance(event, Mail):
            self._check_parameters(event.parameters, _MAIL_PARAMETERS)
            utf8 = event.smtputf8
        elif isinstance(event, Rcpt):
            self._check_parameters(event.parameters, _RCPT_PARAMETERS)
            utf8 = self._smtputf8
        elif isinstance(event, Verify):
            utf8 = "SMTPUTF8" in extensions  # RFC 6531 §3.7.4
        elif isinstance(event, StartTLS):
            if self._tls_active:
                raise LocalProtocolError("TLS is already active (RFC 3207 §4.2)")
            self._need("STARTTLS")
        elif isinstance(event, Auth):
            if self._authenticated:
                raise LocalProtocolError("already authenticated (RFC 4954 §4)")
            self._need("AUTH")
            if event.mechanism not in extensions["AUTH"].upper().split():
                raise LocalProtocolError(f"AUTH mechanism {event.mechanism} was not offered")
        elif isinstance(event, Bdat):
            self._need("CHUNKING")
        data = write_command(event, utf8=utf8)
        if isinstance(event, Mail):
            self._smtputf8 = event.smtputf8
        if isinstance(event, Bdat) and event.size:
            self._bdat = event
            self._bdat_left = event.size
            self._phase = Phase.BDAT
        else:
            self._sent(event)
        return data

    def _need(self, keyword: str) -> None:
        if keyword not in self._extensions:
            # RFC 5321 §2.2.2: an extension is used only when the server offered it.
            raise LocalProtocolError(f"{keyword} was not advertised")

    def _check_parameters(
        self, parameters: Mapping[str, str | None], known: dict[str, str]
    ) -> None:
        for key in parameters:
            extension = known.get(key)
            if extension is None:
                raise LocalProtocolError(f"parameter {key} is not one this core knows")
            self._need(extension)

    def _send_chunk(self, data: bytes) -> bytes:
        bdat = self._bdat
        assert bdat is not None
        if len(data) > self._bdat_left:
            raise LocalProtocolError(
                f"{len(data)} octets of content but only {self._bdat_left} left of BDAT {bdat.size}"
            )
        check_chunk(data)
        self._bdat_left -= len(data)
        if not self._bdat_left:
            self._bdat = None
            self._sent(bdat)
        return data

    # --- the TLS switch --------------------------------------------------------------

    def start_tls(self) -> None:
        """Call after the adapter's TLS handshake, following the server's 220 to STARTTLS."""
        if self._phase is not Phase.TLS_PENDING or self._their_error or self._our_error:
            self._our_error = True
            raise LocalProtocolError("start_tls() outside the STARTTLS switch")
        if self._buffer:
            # RFC 3207 §4.2 / §6: bytes sent before the handshake can't be trusted after it.
            self._their_error = True
            raise RemoteProtocolError(
                f"{len(self._buffer)} octets of plaintext after the 220 to STARTTLS"
            )
        # RFC 3207 §4.2: forget what the server said before the handshake.
        self._extensions = MappingProxyType({})
        self._esmtp = False
        self._authenticated = False
        self._smtputf8 = False
        self._stage = Stage.NEED_HELLO
        self._tls_active = True
        self._phase = Phase.COMMAND
