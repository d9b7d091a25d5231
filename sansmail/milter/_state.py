"""The milter conversation as data: which command may follow which, which steps a milter
can decline or leave unanswered, which verdicts answer which command, and what each
verdict settles.

Sources: libmilter's state table (`engine.c`, `next_states`), the xxfi_* callbacks'
documented return values (smfi_register, xxfi_connect ... xxfi_eom), and Postfix's
`milter8.c`, the reference MTA side.

Command order (`ORDER`). Negotiation, then the SMTP client's connection, then per
message MAIL, RCPT..., DATA, header fields, end of header, body chunks, end of message;
`Abort` ends a message early, `Unknown` may come at any time after connect, `Quit` ends
everything and `QuitNewConnection` starts over at connect with the options kept. The
application sends every step even when the milter declined it: the connection drops
what the milter does not want (so the order stays checkable in one place).

What a verdict settles (`SCOPE`), from libmilter's documentation of SMFIS_*: at connect
and HELO, anything but CONTINUE is about the whole connection (accept: this milter is
done with it; reject or tempfail: the client is refused). At RCPT, reject and tempfail
are about that recipient only, while accept and discard are about the message. Elsewhere
anything but CONTINUE settles the message: the milter is not asked about it again.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from sansmail.milter._events import (
    Abort,
    Accept,
    AddHeader,
    AddRecipient,
    Body,
    ChangeHeader,
    ChangeSender,
    Command,
    Connect,
    Continue,
    Data,
    DeleteRecipient,
    Discard,
    EndOfHeaders,
    EndOfMessage,
    Header,
    Helo,
    InsertHeader,
    Mail,
    Modification,
    Negotiate,
    Quarantine,
    Quit,
    QuitNewConnection,
    Rcpt,
    Reject,
    ReplaceBody,
    ReplyCode,
    Skip,
    Tempfail,
    Unknown,
    Verdict,
)
from sansmail.milter._protocol import Action, ProtocolFlag

__all__ = [
    "DECLINE",
    "NO_REPLY",
    "ORDER",
    "SCOPE",
    "VERDICTS",
    "Phase",
    "Scope",
    "Stage",
    "required_action",
]


class Stage(enum.Enum):
    """Where the conversation is in libmilter's command order."""

    OPTIONS = "options"  # nothing sent yet: negotiation comes first
    CONNECT = "connect"  # negotiated (or after QUIT_NC): the client's connection next
    SESSION = "session"  # between messages
    ENVELOPE = "envelope"  # after MAIL
    RECIPIENTS = "recipients"  # after one RCPT or more
    DATA = "data"  # after DATA
    HEADERS = "headers"  # after a header field
    BODY = "body"  # after end of header, a body chunk
    CLOSED = "closed"  # after QUIT


class Phase(enum.Enum):
    """Whose turn it is."""

    IDLE = "idle"  # we may send
    WAITING = "waiting"  # a reply is owed to the last command
    CLOSED = "closed"  # QUIT sent, or the milter closed
    ERROR = "error"  # a side broke the protocol: close


class Scope(enum.Enum):
    """What a verdict is about, beyond the command it answers."""

    CONNECTION = "connection"
    MESSAGE = "message"


_MESSAGE = (Stage.ENVELOPE, Stage.RECIPIENTS, Stage.DATA, Stage.HEADERS, Stage.BODY)
_CONNECTED = (Stage.SESSION, *_MESSAGE)

ORDER: Mapping[tuple[Stage, type[Command]], Stage] = MappingProxyType(
    {
        (Stage.OPTIONS, Negotiate): Stage.CONNECT,
        (Stage.CONNECT, Connect): Stage.SESSION,
        # EHLO may come again (after STARTTLS, RFC 3207 §4.2).
        (Stage.SESSION, Helo): Stage.SESSION,
        (Stage.SESSION, Mail): Stage.ENVELOPE,
        (Stage.ENVELOPE, Rcpt): Stage.RECIPIENTS,
        (Stage.RECIPIENTS, Rcpt): Stage.RECIPIENTS,
        (Stage.RECIPIENTS, Data): Stage.DATA,
        (Stage.DATA, Header): Stage.HEADERS,
        (Stage.DATA, EndOfHeaders): Stage.BODY,
        (Stage.HEADERS, Header): Stage.HEADERS,
        (Stage.HEADERS, EndOfHeaders): Stage.BODY,
        (Stage.BODY, Body): Stage.BODY,
        (Stage.BODY, EndOfMessage): Stage.SESSION,
        **{(stage, Abort): Stage.SESSION for stage in _CONNECTED},
        **{(stage, Unknown): stage for stage in _CONNECTED},
        **{(stage, Quit): Stage.CLOSED for stage in (Stage.OPTIONS, Stage.CONNECT, *_CONNECTED)},
        **{(stage, QuitNewConnection): Stage.CONNECT for stage in (Stage.CONNECT, *_CONNECTED)},
    }
)

#: The steps a milter can decline (SMFIP_NO*: the MTA does not send them) and leave
#: unanswered (SMFIP_NR_*: the MTA sends them and does not wait). Commands missing from
#: NO_REPLY always get a reply; Abort, Quit and QuitNewConnection never do.
DECLINE: Mapping[type[Command], ProtocolFlag] = MappingProxyType(
    {
        Connect: ProtocolFlag.NOCONNECT,
        Helo: ProtocolFlag.NOHELO,
        Mail: ProtocolFlag.NOMAIL,
        Rcpt: ProtocolFlag.NORCPT,
        Data: ProtocolFlag.NODATA,
        Header: ProtocolFlag.NOHDRS,
        EndOfHeaders: ProtocolFlag.NOEOH,
        Body: ProtocolFlag.NOBODY,
        Unknown: ProtocolFlag.NOUNKNOWN,
    }
)
NO_REPLY: Mapping[type[Command], ProtocolFlag] = MappingProxyType(
    {
        Connect: ProtocolFlag.NR_CONN,
        Helo: ProtocolFlag.NR_HELO,
        Mail: ProtocolFlag.NR_MAIL,
        Rcpt: ProtocolFlag.NR_RCPT,
        Data: ProtocolFlag.NR_DATA,
        Header: ProtocolFlag.NR_HDR,
        EndOfHeaders: ProtocolFlag.NR_EOH,
        Body: ProtocolFlag.NR_BODY,
        Unknown: ProtocolFlag.NR_UNKN,
    }
)
NEVER_ANSWERED: frozenset[type[Command]] = frozenset({Abort, Quit, QuitNewConnection})

_CONNECTION_VERDICTS = frozenset({Continue, Accept, Reject, Tempfail, ReplyCode})
_MESSAGE_VERDICTS = _CONNECTION_VERDICTS | {Discard}

#: The verdicts that may answer each command (DISCARD is for messages only; SKIP only
#: answers a body chunk, and only when SMFIP_SKIP was negotiated).
VERDICTS: Mapping[type[Command], frozenset[type[Verdict]]] = MappingProxyType(
    {
        Connect: _CONNECTION_VERDICTS,
        Helo: _CONNECTION_VERDICTS,
        Mail: _MESSAGE_VERDICTS,
        Rcpt: _MESSAGE_VERDICTS,
        Data: _MESSAGE_VERDICTS,
        Header: _MESSAGE_VERDICTS,
        EndOfHeaders: _MESSAGE_VERDICTS,
        Body: _MESSAGE_VERDICTS | {Skip},
        EndOfMessage: _MESSAGE_VERDICTS,
        Unknown: _MESSAGE_VERDICTS,
    }
)

_MESSAGE_WIDE: dict[tuple[type[Command], type[Verdict]], Scope] = {
    (command, verdict): Scope.MESSAGE
    for command in (Mail, Data, Header, EndOfHeaders, Body, EndOfMessage)
    for verdict in (Accept, Reject, Tempfail, Discard, ReplyCode)
}

#: What a verdict settles beyond its own command; missing: nothing.
SCOPE: Mapping[tuple[type[Command], type[Verdict]], Scope] = MappingProxyType(
    {
        **{
            (command, verdict): Scope.CONNECTION
            for command in (Connect, Helo)
            for verdict in (Accept, Reject, Tempfail, ReplyCode)
        },
        **_MESSAGE_WIDE,
        (Rcpt, Accept): Scope.MESSAGE,
        (Rcpt, Discard): Scope.MESSAGE,
    }
)

#: The commands that belong to a message: not sent once the milter settled it.
MESSAGE_COMMANDS: frozenset[type[Command]] = frozenset(
    {Rcpt, Data, Header, EndOfHeaders, Body, EndOfMessage}
)

_ACTIONS: Mapping[type[Modification], Action] = MappingProxyType(
    {
        AddHeader: Action.ADDHDRS,
        InsertHeader: Action.ADDHDRS,
        ChangeHeader: Action.CHGHDRS,
        DeleteRecipient: Action.DELRCPT,
        ChangeSender: Action.CHGFROM,
        ReplaceBody: Action.CHGBODY,
        Quarantine: Action.QUARANTINE,
    }
)


def required_action(event: Modification) -> Action:
    """The SMFIF_* flag the milter must have negotiated to send `event`."""
    if isinstance(event, AddRecipient):
        return Action.ADDRCPT if event.parameters is None else Action.ADDRCPT_PAR
    return _ACTIONS[type(event)]
