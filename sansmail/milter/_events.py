"""The milter event vocabulary, used in both directions.

The MTA (our `Connection`) sends commands: `Negotiate` first, then per SMTP step `Macros`
(optional) and `Connect`, `Helo`, `Mail`, `Rcpt`, `Data`, `Header`, `EndOfHeaders`,
`Body`, `EndOfMessage`, plus `Abort`, `Unknown`, `Quit` and `QuitNewConnection`. The milter
answers with replies: `Negotiate` (its pick, which the connection hands out as
`Negotiated`, the outcome), the verdicts `Continue`, `Accept`, `Reject`, `Tempfail`,
`Discard`, `ReplyCode`, `Skip` (a body chunk), and at end of message the modifications
(`AddHeader`, `ChangeHeader`, `InsertHeader`, `AddRecipient`, `DeleteRecipient`,
`ChangeSender`, `ReplaceBody`, `Quarantine`) and `Progress`, before its verdict.

Events are frozen, keyword-only and validated on construction (a ValueError), so none can
serialise to a packet that frames wrongly: no NUL inside a string, no header line break
that is not folding (a milter must not smuggle a second header), no reply code outside
4xx/5xx. Strings are UTF-8 on the wire, decoded with surrogateescape so that any bytes a
peer sends survive the round trip unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from sansmail.milter._protocol import (
    DEFAULT_ACTIONS,
    DEFAULT_PROTOCOL,
    MAX_CHUNK,
    VERSION,
    Action,
    Family,
    MacroStage,
    ProtocolFlag,
)

__all__ = [
    "Abort",
    "Accept",
    "AddHeader",
    "AddRecipient",
    "Body",
    "ChangeHeader",
    "ChangeSender",
    "Command",
    "Connect",
    "ConnectionClosed",
    "Continue",
    "Data",
    "DeleteRecipient",
    "Discard",
    "EndOfHeaders",
    "EndOfMessage",
    "Event",
    "Header",
    "Helo",
    "InsertHeader",
    "Macros",
    "Mail",
    "Modification",
    "Negotiate",
    "Negotiated",
    "Progress",
    "Quarantine",
    "Quit",
    "QuitNewConnection",
    "Rcpt",
    "Reject",
    "ReplaceBody",
    "Reply",
    "ReplyCode",
    "Skip",
    "Tempfail",
    "Unknown",
    "Verdict",
]


class Event:
    """Base class of every milter event. Do not subclass outside this module."""

    __slots__ = ()


class Command(Event):
    """What the MTA sends."""

    __slots__ = ()


class Reply(Event):
    """What the milter sends."""

    __slots__ = ()


class Verdict(Reply):
    """A reply that ends the wait for the answer to a command."""

    __slots__ = ()


class Modification(Reply):
    """A change to the message, legal only between end of message and the verdict."""

    __slots__ = ()


_NO_ACTIONS = Action(0)
_NO_FLAGS = ProtocolFlag(0)


def _strs(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _pairs(value: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(value)


def _no_nul(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if type(value) is not str or "\0" in value:
        raise ValueError(f"{attribute.name} must be a str without NUL: {value!r}")


def _nonempty(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    _no_nul(_inst, attribute, value)
    if not value:
        raise ValueError(f"{attribute.name} must not be empty")


def _parameters(_inst: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if type(value) is not tuple:
        raise ValueError(f"{attribute.name} must be a tuple of str")
    for item in value:
        _nonempty(_inst, attribute, item)


def _optional_text(_inst: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        _no_nul(_inst, attribute, value)


def _uint32(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if type(value) is not int or not 0 <= value < 1 << 32:
        raise ValueError(f"{attribute.name} must be an unsigned 32-bit integer: {value!r}")


# RFC 5322 §3.6.8: field-name = 1*ftext; ftext = %d33-57 / %d59-126 (printable, no colon).
_FIELD_NAME = re.compile(r"[!-9;-~]+")
# A line break inside a header value must be folding (followed by SP or HTAB, RFC 5322
# §2.2.3); any other would start a new header line the milter was not allowed to add.
_UNFOLDED = re.compile(r"\r(?!\n)|\r?\n(?![ \t])")


def _field_name(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if type(value) is not str or not _FIELD_NAME.fullmatch(value):
        raise ValueError(f"{attribute.name} is not a header field name: {value!r}")


def _field_value(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    _no_nul(_inst, attribute, value)
    if _UNFOLDED.search(value):
        raise ValueError(f"{attribute.name} has a line break that is not folding: {value!r}")


def _chunk(_inst: Any, attribute: attrs.Attribute[Any], value: bytes) -> None:
    if type(value) is not bytes or len(value) > MAX_CHUNK:
        raise ValueError(f"{attribute.name} must be bytes of at most {MAX_CHUNK} octets")


def _frozen_macros(value: Mapping[MacroStage, tuple[str, ...]]) -> Mapping[MacroStage, Any]:
    return MappingProxyType({MacroStage(k): tuple(v) for k, v in dict(value).items()})


def _macro_names(
    _inst: Any, attribute: attrs.Attribute[Any], value: Mapping[MacroStage, tuple[str, ...]]
) -> None:
    for names in value.values():
        for name in names:
            # Names travel space-separated in one NUL-terminated string.
            if not name or any(c in name for c in " \t,\0"):
                raise ValueError(f"{attribute.name}: not a macro name: {name!r}")


# --- commands (MTA -> milter) ------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Negotiate(Command, Reply):
    """SMFIC_OPTNEG / its reply: the version, the SMFIF_* actions and the SMFIP_* flags.

    The MTA offers; the milter answers with what it wants, and may list for each
    `MacroStage` the macros it wants (with `Action.SETSYMLIST`). The connection hands the
    outcome out as `Negotiated`, not the raw reply.
    """

    version: int = attrs.field(default=VERSION, validator=_uint32)
    actions: Action = attrs.field(default=DEFAULT_ACTIONS, converter=Action)
    protocol: ProtocolFlag = attrs.field(default=DEFAULT_PROTOCOL, converter=ProtocolFlag)
    macros: Mapping[MacroStage, tuple[str, ...]] = attrs.field(
        factory=dict, converter=_frozen_macros, validator=_macro_names
    )


@attrs.frozen(kw_only=True)
class Macros(Command):
    """SMFIC_MACRO: name/value pairs for the command of `stage`, sent just before it.

    Names are given as the milter knows them ("i", "{auth_authen}"). Macros for a step the
    milter does not want are not sent.
    """

    stage: MacroStage = attrs.field(converter=MacroStage)
    values: tuple[tuple[str, str], ...] = attrs.field(converter=_pairs)

    @values.validator
    def _check(self, attribute: attrs.Attribute[Any], value: tuple[tuple[str, str], ...]) -> None:
        for pair in value:
            if type(pair) is not tuple or len(pair) != 2:
                raise ValueError("values must be (name, value) pairs")
            _nonempty(self, attribute, pair[0])
            _no_nul(self, attribute, pair[1])


@attrs.frozen(kw_only=True)
class Connect(Command):
    """SMFIC_CONNECT: the SMTP client's host name (or "[address]"), family, port and
    address (for `Family.UNIX` the socket's path, port 0; for `UNKNOWN`, none)."""

    hostname: str = attrs.field(validator=_no_nul)
    family: Family = attrs.field(converter=Family)
    port: int = attrs.field(default=0)
    address: str = attrs.field(default="", validator=_no_nul)

    @port.validator
    def _check_port(self, attribute: attrs.Attribute[Any], value: int) -> None:
        if type(value) is not int or not 0 <= value <= 0xFFFF:
            raise ValueError(f"port must be 0-65535: {value!r}")
        if self.family is Family.UNKNOWN and value:
            raise ValueError("an UNKNOWN family has no port")


@attrs.frozen(kw_only=True)
class Helo(Command):
    """SMFIC_HELO: the HELO/EHLO argument."""

    name: str = attrs.field(validator=_no_nul)


@attrs.frozen(kw_only=True)
class Mail(Command):
    """SMFIC_MAIL: the reverse path as the client gave it ("<a@b>"), then the ESMTP
    parameters ("SIZE=123")."""

    sender: str = attrs.field(validator=_no_nul)
    parameters: tuple[str, ...] = attrs.field(default=(), converter=_strs, validator=_parameters)


@attrs.frozen(kw_only=True)
class Rcpt(Command):
    """SMFIC_RCPT: one forward path ("<a@b>") and its ESMTP parameters."""

    recipient: str = attrs.field(validator=_no_nul)
    parameters: tuple[str, ...] = attrs.field(default=(), converter=_strs, validator=_parameters)


@attrs.frozen(kw_only=True)
class Data(Command):
    """SMFIC_DATA: the client sent DATA (or its first BDAT)."""


@attrs.frozen(kw_only=True)
class Header(Command):
    """SMFIC_HEADER: one header field, its value unfolded or not as the application
    chose (with `ProtocolFlag.HDR_LEADSPC`, the leading space kept)."""

    name: str = attrs.field(validator=_field_name)
    value: str = attrs.field(validator=_field_value)


@attrs.frozen(kw_only=True)
class EndOfHeaders(Command):
    """SMFIC_EOH."""


@attrs.frozen(kw_only=True)
class Body(Command):
    """SMFIC_BODY: one chunk of the body, CRLF line ends, at most `MAX_CHUNK` octets."""

    data: bytes = attrs.field(validator=_chunk)


@attrs.frozen(kw_only=True)
class EndOfMessage(Command):
    """SMFIC_BODYEOB: the end of the message; the milter now modifies and decides."""


@attrs.frozen(kw_only=True)
class Abort(Command):
    """SMFIC_ABORT: the current message is abandoned (RSET, a refused transaction)."""


@attrs.frozen(kw_only=True)
class Unknown(Command):
    """SMFIC_UNKNOWN: a command the SMTP server did not know, as the client sent it."""

    command: str = attrs.field(validator=_no_nul)


@attrs.frozen(kw_only=True)
class Quit(Command):
    """SMFIC_QUIT: the SMTP session is over; the milter closes."""


@attrs.frozen(kw_only=True)
class QuitNewConnection(Command):
    """SMFIC_QUIT_NC: the SMTP session is over and another follows on this milter
    connection (a new `Connect`, no new negotiation)."""


# --- replies (milter -> MTA) -------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Negotiated(Event):
    """The outcome of the negotiation, as the connection enforces it.

    `actions` and `protocol` are what the milter asked for, within what we offered;
    `unoffered_actions` and `unoffered_protocol` are the bits it asked for beyond that
    (ignored, but worth a log line). `macros` are the lists the milter wants per stage.
    """

    version: int
    actions: Action
    protocol: ProtocolFlag
    macros: Mapping[MacroStage, tuple[str, ...]] = attrs.field(converter=_frozen_macros)
    unoffered_actions: Action = _NO_ACTIONS
    unoffered_protocol: ProtocolFlag = _NO_FLAGS


@attrs.frozen(kw_only=True)
class Continue(Verdict):
    """SMFIR_CONTINUE: go on (at end of message: accept, with any modifications)."""


@attrs.frozen(kw_only=True)
class Accept(Verdict):
    """SMFIR_ACCEPT: accept without asking this milter again (for the connection at
    connect/HELO, else for the message)."""


@attrs.frozen(kw_only=True)
class Reject(Verdict):
    """SMFIR_REJECT: refuse (the connection, the message, or at RCPT the recipient)."""


@attrs.frozen(kw_only=True)
class Tempfail(Verdict):
    """SMFIR_TEMPFAIL: refuse for now (4xx), with the same scopes as `Reject`."""


@attrs.frozen(kw_only=True)
class Discard(Verdict):
    """SMFIR_DISCARD: accept the message, then throw it away."""


@attrs.frozen(kw_only=True)
class Skip(Verdict):
    """SMFIR_SKIP: send no more body chunks; go on to end of message."""


def _reply_lines(_inst: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if type(value) is not tuple or not value:
        raise ValueError("lines must be a non-empty tuple of str")
    for line in value:
        # Reply text is ASCII (RFC 5321 §4.2), here without the code.
        if type(line) is not str or not all(" " <= c <= "~" or c == "\t" for c in line):
            raise ValueError(f"reply text must be printable ASCII: {line!r}")


@attrs.frozen(kw_only=True)
class ReplyCode(Verdict):
    """SMFIR_REPLYCODE: refuse with this SMTP reply: a 4xx or 5xx code and its lines of
    text (each without the code; an enhanced status code, if any, starts each line)."""

    code: int = attrs.field()
    lines: tuple[str, ...] = attrs.field(converter=_strs, validator=_reply_lines)

    @code.validator
    def _check_code(self, attribute: attrs.Attribute[Any], value: int) -> None:
        # Postfix (milter8.c) takes only 4XX and 5XX here: a milter cannot make the MTA
        # say 2XX on its behalf.
        if type(value) is not int or not 400 <= value <= 599 or value % 100 // 10 > 5:
            raise ValueError(f"code must be a 4XX or 5XX reply code: {value!r}")

    @property
    def permanent(self) -> bool:
        return self.code >= 500


@attrs.frozen(kw_only=True)
class Progress(Reply):
    """SMFIR_PROGRESS: the milter is still working on end of message; wait on."""


@attrs.frozen(kw_only=True)
class AddHeader(Modification):
    """SMFIR_ADDHEADER: append a header field (needs `Action.ADDHDRS`)."""

    name: str = attrs.field(validator=_field_name)
    value: str = attrs.field(validator=_field_value)


@attrs.frozen(kw_only=True)
class ChangeHeader(Modification):
    """SMFIR_CHGHEADER: replace the `index`-th (from 1) field called `name`; an empty
    value deletes it (needs `Action.CHGHDRS`)."""

    index: int = attrs.field(validator=_uint32)
    name: str = attrs.field(validator=_field_name)
    value: str = attrs.field(validator=_field_value)


@attrs.frozen(kw_only=True)
class InsertHeader(Modification):
    """SMFIR_INSHEADER: insert a field before the `index`-th field of the header (0: at
    the top; needs `Action.ADDHDRS`)."""

    index: int = attrs.field(validator=_uint32)
    name: str = attrs.field(validator=_field_name)
    value: str = attrs.field(validator=_field_value)


@attrs.frozen(kw_only=True)
class AddRecipient(Modification):
    """SMFIR_ADDRCPT (`parameters` None, needs `Action.ADDRCPT`) or SMFIR_ADDRCPT_PAR
    (ESMTP parameters as one string, needs `Action.ADDRCPT_PAR`)."""

    recipient: str = attrs.field(validator=_nonempty)
    parameters: str | None = attrs.field(default=None, validator=_optional_text)


@attrs.frozen(kw_only=True)
class DeleteRecipient(Modification):
    """SMFIR_DELRCPT: remove a recipient, named as in `Rcpt` (needs `Action.DELRCPT`)."""

    recipient: str = attrs.field(validator=_nonempty)


@attrs.frozen(kw_only=True)
class ChangeSender(Modification):
    """SMFIR_CHGFROM: a new reverse path, with optional ESMTP parameters as one string
    (needs `Action.CHGFROM`)."""

    sender: str = attrs.field(validator=_no_nul)
    parameters: str | None = attrs.field(default=None, validator=_optional_text)


@attrs.frozen(kw_only=True)
class ReplaceBody(Modification):
    """SMFIR_REPLBODY: one chunk of a new body; the chunks of one end of message are the
    whole new body, in order (needs `Action.CHGBODY`)."""

    data: bytes = attrs.field(validator=_chunk)


@attrs.frozen(kw_only=True)
class Quarantine(Modification):
    """SMFIR_QUARANTINE: keep the message, but aside, with this reason (needs
    `Action.QUARANTINE`)."""

    reason: str = attrs.field(validator=_no_nul)


@attrs.frozen(kw_only=True)
class ConnectionClosed(Event):
    """The milter closed its end while no reply was owed."""
