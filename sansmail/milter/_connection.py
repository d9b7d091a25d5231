"""`Connection`: the MTA side of one milter connection (protocol version 6).

Theory of operation
-------------------
The application sends commands (`send(event) -> bytes`), feeds what the milter sends
back in (`receive_data`), and pulls replies out (`next_event`). Nothing here does I/O,
reads a clock or decides what a verdict means for the SMTP client: per-milter timeouts,
the default action when a milter is down, and the order of several milters are the
application's.

Negotiation comes first: `send(Negotiate())` offers every action and every protocol flag
this core implements by itself (`Negotiate` can offer less, and RCPT_REJ and HDR_LEADSPC
more). The milter's answer comes out as `Negotiated`, the outcome: what it asked for
within the offer (bits beyond it are ignored and reported), its version (2 to ours) and
its macro lists (only with SETSYMLIST). From then on the outcome is enforced both ways.

Sending. The application sends every SMTP step in order (`_state.ORDER`; a step out of
order is a `LocalProtocolError`), and `send` returns b"" for a step the milter will not
see: one it declined (SMFIP_NO*), the body after it answered SKIP, a message it already
settled, anything after it settled the connection (QUIT excepted), and the `Macros` of
any of those. After each `send`, `awaiting` says whether a reply is owed: it is None when
the command was not sent, or sent with SMFIP_NR_* (the milter will not answer), or is an
ABORT, QUIT or QUIT_NC, which are never answered. Only while a reply is owed should the
application read from the milter (and time the milter out).

Receiving. While a reply is owed, `next_event` gives NEED_DATA until a whole packet is
in, then the reply. At end of message the milter may first send modifications (each only
if its SMFIF_* action was negotiated) and PROGRESS, any number, each handed out as it
comes; the verdict ends the wait. Anything else is a `RemoteProtocolError`, after which
the connection is in ERROR and the application treats the milter as down (its
default_action). So is a packet over `Config.max_packet`, an unknown reply byte, a
reply in the wrong place, data when no reply is owed, and EOF in the middle of a packet
or while a reply is owed. EOF when nothing is owed is `ConnectionClosed`.

What the verdicts settle is tracked (`_state.SCOPE`): `settled` says whether this milter
has finished with the connection or the message, so the application can stop consulting
it; `send` then drops what it must not see. ABORT, a new MAIL and QUIT_NC start over.
"""

from __future__ import annotations

from sansmail._errors import LocalProtocolError, RemoteProtocolError
from sansmail._roles import NEED_DATA, PAUSED, Signal
from sansmail.milter._config import Config
from sansmail.milter._events import (
    Abort,
    Body,
    Command,
    Connect,
    ConnectionClosed,
    Data,
    EndOfHeaders,
    EndOfMessage,
    Event,
    Helo,
    Macros,
    Mail,
    Modification,
    Negotiate,
    Negotiated,
    Progress,
    QuitNewConnection,
    Rcpt,
    ReplaceBody,
    Skip,
    Verdict,
)
from sansmail.milter._protocol import (
    MIN_VERSION,
    VERSION,
    Action,
    MacroStage,
    ProtocolFlag,
)
from sansmail.milter._state import (
    DECLINE,
    MESSAGE_COMMANDS,
    NEVER_ANSWERED,
    NO_REPLY,
    ORDER,
    SCOPE,
    VERDICTS,
    Phase,
    Scope,
    Stage,
    required_action,
)
from sansmail.milter._wire import Malformed, PacketBuffer, encode, read_reply

__all__ = ["Connection"]

_CONNECTION_CLOSED = ConnectionClosed()
_UNOFFERABLE = ProtocolFlag.MDS_256K | ProtocolFlag.MDS_1M
_IN_MESSAGE = frozenset({Stage.ENVELOPE, Stage.RECIPIENTS, Stage.DATA, Stage.HEADERS, Stage.BODY})
# The command each stage's macros go with.
_STAGE_KIND: dict[MacroStage, type[Command]] = {
    MacroStage.CONNECT: Connect,
    MacroStage.HELO: Helo,
    MacroStage.ENVFROM: Mail,
    MacroStage.ENVRCPT: Rcpt,
    MacroStage.DATA: Data,
    MacroStage.EOH: EndOfHeaders,
    MacroStage.EOM: EndOfMessage,
}


class Connection:
    """One connection to one milter, seen from the MTA.

    Args:
        config: limits; `Config()` when omitted.
    """

    def __init__(self, *, config: Config | None = None) -> None:
        self.config = config if config is not None else Config()
        self._buffer = PacketBuffer(self.config.max_packet)
        self._eof = False
        self._phase = Phase.IDLE
        self._stage = Stage.OPTIONS
        self._awaiting: Command | None = None
        self._offer: Negotiate | None = None
        self._negotiated: Negotiated | None = None
        self._settled: Scope | None = None
        self._skip_body = False
        self._modifications = 0
        self._replaced_body = 0

    # --- what the application may look at -------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def stage(self) -> Stage:
        return self._stage

    @property
    def awaiting(self) -> Command | None:
        """The command whose reply is owed, if any."""
        return self._awaiting

    @property
    def negotiated(self) -> Negotiated | None:
        return self._negotiated

    @property
    def settled(self) -> Scope | None:
        """What this milter has finished with: the connection, the current message, or
        nothing (it still wants to see what comes)."""
        return self._settled

    def wants(self, command: type[Command]) -> bool:
        """Whether the milter asked to see this kind of step (SMFIP_NO*)."""
        flag = DECLINE.get(command)
        negotiated = self._negotiated
        return flag is None or negotiated is None or flag not in negotiated.protocol

    # --- receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the milter; b"" marks its end of the connection."""
        if self._eof and data:
            raise LocalProtocolError("data received after EOF")
        if not data:
            self._eof = True
        else:
            self._buffer.feed(data)

    def next_event(self) -> Event | Signal:
        """The next reply, NEED_DATA (a reply is owed: read more), or PAUSED (none is
        owed: send something)."""
        if self._phase is Phase.ERROR:
            raise RemoteProtocolError("the milter connection is broken")
        try:
            return self._next_event()
        except RemoteProtocolError:
            self._fail()
            raise

    def _next_event(self) -> Event | Signal:
        try:
            packet = self._buffer.next_packet()
        except Malformed as exc:
            raise RemoteProtocolError(str(exc)) from None
        awaiting = self._awaiting
        if packet is None:
            if not self._eof:
                return NEED_DATA if awaiting is not None else PAUSED
            if len(self._buffer):
                raise RemoteProtocolError("milter closed the connection inside a packet")
            if awaiting is not None:
                raise RemoteProtocolError(
                    f"milter closed the connection before answering {awaiting!r}"
                )
            self._phase = Phase.CLOSED
            return _CONNECTION_CLOSED
        code, data = packet
        if awaiting is None:
            raise RemoteProtocolError(f"milter sent {chr(code)!r} when no reply was owed")
        try:
            reply = read_reply(code, data)
        except Malformed as exc:
            raise RemoteProtocolError(f"malformed reply to {awaiting!r}: {exc}") from None
        if isinstance(awaiting, Negotiate):
            return self._negotiation(awaiting, reply)
        if isinstance(reply, Verdict):
            return self._verdict(awaiting, reply)
        if not isinstance(awaiting, EndOfMessage):
            raise RemoteProtocolError(f"{reply!r} before end of message")
        if isinstance(reply, Progress):
            return reply
        if not isinstance(reply, Modification):
            raise RemoteProtocolError(f"{reply!r} in answer to end of message")
        return self._modification(reply)

    def _negotiation(self, offer: Negotiate, reply: Event) -> Event:
        if not isinstance(reply, Negotiate):
            raise RemoteProtocolError(f"{reply!r} in answer to the option negotiation")
        if not MIN_VERSION <= reply.version <= offer.version:
            raise RemoteProtocolError(f"milter speaks protocol version {reply.version}")
        actions = reply.actions & offer.actions
        if reply.macros and Action.SETSYMLIST not in actions:
            raise RemoteProtocolError("macro lists without the SETSYMLIST action")
        negotiated = Negotiated(
            version=reply.version,
            actions=actions,
            protocol=reply.protocol & offer.protocol,
            macros=reply.macros,
            # In ints: `~` on a flag would drop the bits no member names.
            unoffered_actions=Action(int(reply.actions) & ~int(offer.actions)),
            unoffered_protocol=ProtocolFlag(int(reply.protocol) & ~int(offer.protocol)),
        )
        self._negotiated = negotiated
        self._answered()
        return negotiated

    def _verdict(self, command: Command, verdict: Verdict) -> Event:
        kind = type(command)
        if type(verdict) not in VERDICTS[kind]:
            raise RemoteProtocolError(f"{verdict!r} in answer to {command!r}")
        if isinstance(verdict, Skip):
            assert self._negotiated is not None
            if ProtocolFlag.SKIP not in self._negotiated.protocol:
                raise RemoteProtocolError("SKIP without SMFIP_SKIP negotiated")
            self._skip_body = True
        scope = SCOPE.get((kind, type(verdict)))
        if scope is not None and self._settled is not Scope.CONNECTION:
            self._settled = scope
        if kind is EndOfMessage and self._settled is Scope.MESSAGE:
            self._settled = None  # the message is over: the next one starts fresh
        self._answered()
        return verdict

    def _modification(self, event: Modification) -> Event:
        negotiated = self._negotiated
        assert negotiated is not None
        action = required_action(event)
        if action not in negotiated.actions:
            raise RemoteProtocolError(f"{event!r} without the {action.name} action negotiated")
        if isinstance(event, ReplaceBody):
            self._replaced_body += len(event.data)
            if self._replaced_body > self.config.max_replaced_body:
                raise RemoteProtocolError("replacement body over max_replaced_body")
        else:
            self._modifications += 1
            if self._modifications > self.config.max_modifications:
                raise RemoteProtocolError("more modifications than max_modifications")
        return event

    def _answered(self) -> None:
        self._awaiting = None
        self._phase = Phase.IDLE

    # --- sending ---------------------------------------------------------------------

    def send(self, event: Command) -> bytes:
        """The bytes to write for `event`, b"" when the milter is not to see it."""
        try:
            return self._send(event)
        except LocalProtocolError:
            self._fail()
            raise

    def send_failed(self) -> None:
        """Writing to the milter failed: the connection is over."""
        self._fail()

    def _send(self, event: Command) -> bytes:
        phase = self._phase
        if phase is not Phase.IDLE:
            raise LocalProtocolError(f"cannot send {event!r} while {phase.value}")
        if isinstance(event, Macros):
            return self._macros(event)
        if not isinstance(event, Command):
            raise LocalProtocolError(f"{event!r} is not a command")
        kind = type(event)
        stage = self._stage
        after = ORDER.get((stage, kind))
        if after is None and kind is Mail and stage in _IN_MESSAGE and self._settled:
            after = Stage.ENVELOPE  # a new MAIL after a refused one, no ABORT between
        if after is None:
            raise LocalProtocolError(f"{event!r} out of order (after {stage.value})")
        if isinstance(event, Negotiate):
            self._check_offer(event)
        self._stage = after
        if not self._to_be_sent(event):
            return b""
        if kind in NEVER_ANSWERED:
            if after is Stage.CLOSED:
                self._phase = Phase.CLOSED
        elif not self._no_reply(kind):
            self._awaiting = event
            self._phase = Phase.WAITING
        if isinstance(event, EndOfMessage):
            self._modifications = self._replaced_body = 0
        return encode(event)

    def _check_offer(self, event: Negotiate) -> None:
        if event.version != VERSION:
            raise LocalProtocolError(f"this core speaks version {VERSION}")
        if event.macros:
            raise LocalProtocolError("macro lists are the milter's to send")
        if event.protocol & _UNOFFERABLE:
            raise LocalProtocolError("larger packets (SMFIP_MDS_*) are not implemented")
        self._offer = event

    def _to_be_sent(self, event: Command) -> bool:
        """Update what the milter has settled for `event`, and say whether it sees it."""
        kind = type(event)
        if self._settled is Scope.CONNECTION:
            if kind is QuitNewConnection:
                self._settled = None
                return True
            return kind in NEVER_ANSWERED and kind is not Abort
        if kind is Abort or kind is Mail or kind is QuitNewConnection:
            self._settled = None
            self._skip_body = False
        elif kind in MESSAGE_COMMANDS and self._settled is Scope.MESSAGE:
            if kind is EndOfMessage:
                self._settled = None
                self._skip_body = False
            return False
        if kind is Body and self._skip_body:
            return False
        if kind is EndOfMessage:
            self._skip_body = False
        return self.wants(kind)

    def _no_reply(self, kind: type[Command]) -> bool:
        flag = NO_REPLY.get(kind)
        negotiated = self._negotiated
        return flag is not None and negotiated is not None and flag in negotiated.protocol

    def _macros(self, event: Macros) -> bytes:
        if self._stage is Stage.OPTIONS or self._stage is Stage.CLOSED:
            raise LocalProtocolError("macros before negotiation or after QUIT")
        if self._settled is Scope.CONNECTION:
            return b""
        command = _STAGE_KIND[event.stage]
        if command in MESSAGE_COMMANDS and self._settled is Scope.MESSAGE:
            return b""
        if not self.wants(command):
            return b""
        return encode(event)

    def _fail(self) -> None:
        self._phase = Phase.ERROR
        self._awaiting = None
