"""Packets to events and back: the framing buffer, the writers and the readers.

A packet is a 4-byte big-endian length and that many bytes: the command or reply byte,
then its data (`_protocol` describes the fields). The buffer refuses a length over its
limit as soon as the 4 length bytes are in, so a peer cannot make us buffer more than
one packet's worth; a length of 0 (no command byte) is malformed.

Both directions are here so that what the MTA writes can be read back as the milter sees
it (the tests' scripted milter does), and so each field layout is written down once.
A reader raises `Malformed` (a ValueError) for anything it cannot turn into an event:
the connection makes that a `RemoteProtocolError`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
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
    Event,
    Header,
    Helo,
    InsertHeader,
    Macros,
    Mail,
    Negotiate,
    Progress,
    Quarantine,
    Quit,
    QuitNewConnection,
    Rcpt,
    Reject,
    ReplaceBody,
    Reply,
    ReplyCode,
    Skip,
    Tempfail,
    Unknown,
)
from sansmail.milter._protocol import STAGE_COMMAND, Action, Family, MacroStage, ProtocolFlag

__all__ = [
    "COMMAND_CODES",
    "REPLY_CODES",
    "Malformed",
    "PacketBuffer",
    "encode",
    "read_command",
    "read_reply",
]

_LENGTH = struct.Struct(">I")
_OPTIONS = struct.Struct(">III")
_PORT = struct.Struct(">H")


class Malformed(ValueError):  # noqa: N818 (a ValueError a reader raises, not a bug)
    """A packet that does not decode."""


class PacketBuffer:
    """Received bytes, cut into packets of at most `max_packet` bytes (command byte
    included). Each byte is looked at once; consumed bytes are dropped in bulk."""

    def __init__(self, max_packet: int) -> None:
        self._data = bytearray()
        self._start = 0
        self.max_packet = max_packet

    def __len__(self) -> int:
        return len(self._data) - self._start

    def feed(self, data: bytes) -> None:
        self._data += data

    def next_packet(self) -> tuple[int, bytes] | None:
        """The next (code, data), or None until a whole packet is in."""
        start = self._start
        have = len(self._data) - start
        if have < 4:
            return None
        (length,) = _LENGTH.unpack_from(self._data, start)
        if length == 0:
            raise Malformed("packet of length 0 (no command byte)")
        if length > self.max_packet:
            raise Malformed(f"packet of {length} octets, over the limit of {self.max_packet}")
        if have < 4 + length:
            return None
        code = self._data[start + 4]
        data = bytes(self._data[start + 5 : start + 4 + length])
        self._start = start + 4 + length
        if self._start > 65536 or self._start == len(self._data):
            del self._data[: self._start]
            self._start = 0
        return code, data


# --- writing -----------------------------------------------------------------------------


_FAMILY: Mapping[Family, bytes] = MappingProxyType({f: str(f.value).encode() for f in Family})


def _s(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape") + b"\0"


def _reply_text(event: ReplyCode) -> bytes:
    last = len(event.lines) - 1
    lines = [f"{event.code}{' ' if i == last else '-'}{line}" for i, line in enumerate(event.lines)]
    return _s("\r\n".join(lines))


def _payload(event: Event) -> bytes:
    match event:
        case Negotiate(version=version, actions=actions, protocol=protocol, macros=macros):
            out = [b"O", _OPTIONS.pack(version, int(actions), int(protocol))]
            for stage, names in macros.items():
                out += [_LENGTH.pack(stage), _s(" ".join(names))]
            return b"".join(out)
        case Macros(stage=stage, values=values):
            return b"D" + STAGE_COMMAND[stage] + b"".join(_s(n) + _s(v) for n, v in values)
        case Connect(hostname=hostname, family=family, port=port, address=address):
            if family is Family.UNKNOWN:
                return b"C" + _s(hostname) + b"U"
            return b"C" + _s(hostname) + _FAMILY[family] + _PORT.pack(port) + _s(address)
        case Helo(name=name):
            return b"H" + _s(name)
        case Mail(sender=sender, parameters=parameters):
            return b"M" + _s(sender) + b"".join(map(_s, parameters))
        case Rcpt(recipient=recipient, parameters=parameters):
            return b"R" + _s(recipient) + b"".join(map(_s, parameters))
        case Header(name=name, value=value):
            return b"L" + _s(name) + _s(value)
        case Body(data=data):
            return b"B" + data
        case Unknown(command=command):
            return b"U" + _s(command)
        case ReplyCode():
            return b"y" + _reply_text(event)
        case AddHeader(name=name, value=value):
            return b"h" + _s(name) + _s(value)
        case ChangeHeader(index=index, name=name, value=value):
            return b"m" + _LENGTH.pack(index) + _s(name) + _s(value)
        case InsertHeader(index=index, name=name, value=value):
            return b"i" + _LENGTH.pack(index) + _s(name) + _s(value)
        case AddRecipient(recipient=recipient, parameters=None):
            return b"+" + _s(recipient)
        case AddRecipient(recipient=recipient, parameters=str(parameters)):
            return b"2" + _s(recipient) + _s(parameters)
        case DeleteRecipient(recipient=recipient):
            return b"-" + _s(recipient)
        case ChangeSender(sender=sender, parameters=parameters):
            return b"e" + _s(sender) + (b"" if parameters is None else _s(parameters))
        case ReplaceBody(data=data):
            return b"b" + data
        case Quarantine(reason=reason):
            return b"q" + _s(reason)
    return _EMPTY[type(event)]


_EMPTY: Mapping[type[Event], bytes] = MappingProxyType(
    {
        Data: b"T",
        EndOfHeaders: b"N",
        EndOfMessage: b"E",
        Abort: b"A",
        Quit: b"Q",
        QuitNewConnection: b"K",
        Continue: b"c",
        Accept: b"a",
        Reject: b"r",
        Tempfail: b"t",
        Discard: b"d",
        Skip: b"s",
        Progress: b"p",
    }
)


def encode(event: Event) -> bytes:
    """The packet for `event`, length included."""
    payload = _payload(event)
    return _LENGTH.pack(len(payload)) + payload


# --- reading -----------------------------------------------------------------------------


def _strings(data: bytes, least: int, most: int) -> list[str]:
    """`data` as NUL-terminated strings, at least `least` and at most `most` of them."""
    if not data:
        parts = []
    elif data.endswith(b"\0"):
        parts = data[:-1].split(b"\0")
    else:
        raise Malformed("a string is not NUL-terminated")
    if not least <= len(parts) <= most:
        raise Malformed(f"{len(parts)} strings where {least} to {most} belong")
    return [p.decode("utf-8", "surrogateescape") for p in parts]


def _empty(event: Event) -> Callable[[bytes], Event]:
    def read(data: bytes) -> Event:
        if data:
            raise Malformed(f"{len(data)} octets of data where none belong")
        return event

    return read


def _read_negotiate(data: bytes) -> Event:
    if len(data) < _OPTIONS.size:
        raise Malformed("option negotiation shorter than 12 octets")
    version, actions, protocol = _OPTIONS.unpack_from(data)
    macros: dict[MacroStage, tuple[str, ...]] = {}
    rest = data[_OPTIONS.size :]
    while rest:
        if len(rest) < 5:
            raise Malformed("truncated macro list")
        (stage,) = _LENGTH.unpack_from(rest)
        end = rest.find(b"\0", 4)
        if end < 0:
            raise Malformed("a macro list is not NUL-terminated")
        if stage not in MacroStage._value2member_map_ or MacroStage(stage) in macros:
            raise Malformed(f"macro list for stage {stage}, unknown or repeated")
        text = rest[4:end].decode("utf-8", "surrogateescape")
        macros[MacroStage(stage)] = tuple(text.replace(",", " ").split())
        rest = rest[end + 1 :]
    return Negotiate(
        version=version, actions=Action(actions), protocol=ProtocolFlag(protocol), macros=macros
    )


def _read_macros(data: bytes) -> Event:
    if not data:
        raise Malformed("macro packet without its command")
    stage = {v[0]: k for k, v in STAGE_COMMAND.items()}.get(data[0])
    if stage is None:
        raise Malformed(f"macros for command {data[:1]!r}")
    strings = _strings(data[1:], 0, 1 << 20)
    if len(strings) % 2:
        raise Malformed("a macro name without its value")
    return Macros(stage=stage, values=tuple(zip(strings[::2], strings[1::2], strict=True)))


def _read_connect(data: bytes) -> Event:
    end = data.find(b"\0")
    if end < 0 or end + 1 >= len(data):
        raise Malformed("connect without host name or family")
    hostname = data[:end].decode("utf-8", "surrogateescape")
    family = data[end + 1 : end + 2].decode("latin-1")
    if family not in Family._value2member_map_:
        raise Malformed(f"unknown address family {family!r}")
    rest = data[end + 2 :]
    if family == "U":
        if rest:
            raise Malformed("data after an UNKNOWN family")
        return Connect(hostname=hostname, family=Family.UNKNOWN)
    if len(rest) < 2:
        raise Malformed("connect without port")
    (port,) = _PORT.unpack_from(rest)
    (address,) = _strings(rest[2:], 1, 1)
    return Connect(hostname=hostname, family=Family(family), port=port, address=address)


def _read_envelope(kind: type[Mail] | type[Rcpt]) -> Callable[[bytes], Event]:
    def read(data: bytes) -> Event:
        first, *parameters = _strings(data, 1, 1 << 16)
        if kind is Mail:
            return Mail(sender=first, parameters=tuple(parameters))
        return Rcpt(recipient=first, parameters=tuple(parameters))

    return read


def _read_reply_code(data: bytes) -> Event:
    (text,) = _strings(data, 1, 1)
    raw = text.split("\r\n")
    code = raw[0][:3]
    if not code.isdigit() or not code.isascii():
        raise Malformed(f"reply text without a code: {text!r}")
    lines = []
    for i, line in enumerate(raw):
        separator = "-" if i < len(raw) - 1 else " "
        if line == code and i == len(raw) - 1:
            lines.append("")
        elif line[:3] == code and line[3:4] == separator:
            lines.append(line[4:])
        else:
            raise Malformed(f"badly formed reply text: {text!r}")
    return ReplyCode(code=int(code), lines=tuple(lines))


def _indexed(kind: type[ChangeHeader] | type[InsertHeader]) -> Callable[[bytes], Event]:
    def read(data: bytes) -> Event:
        if len(data) < 4:
            raise Malformed("header change without its index")
        (index,) = _LENGTH.unpack_from(data)
        name, value = _strings(data[4:], 2, 2)
        return kind(index=index, name=name, value=value)

    return read


def _read_header(kind: type[Header] | type[AddHeader]) -> Callable[[bytes], Event]:
    def read(data: bytes) -> Event:
        name, value = _strings(data, 2, 2)
        return kind(name=name, value=value)

    return read


def _read_add_recipient(data: bytes) -> Event:
    (recipient,) = _strings(data, 1, 1)
    return AddRecipient(recipient=recipient)


def _read_add_recipient_par(data: bytes) -> Event:
    recipient, *parameters = _strings(data, 1, 2)
    return AddRecipient(recipient=recipient, parameters=parameters[0] if parameters else "")


def _read_change_sender(data: bytes) -> Event:
    sender, *parameters = _strings(data, 1, 2)
    return ChangeSender(sender=sender, parameters=parameters[0] if parameters else None)


def _one_string(make: Callable[[str], Event]) -> Callable[[bytes], Event]:
    def read(data: bytes) -> Event:
        (text,) = _strings(data, 1, 1)
        return make(text)

    return read


_COMMAND_READERS: Mapping[int, Callable[[bytes], Event]] = MappingProxyType(
    {
        ord("O"): _read_negotiate,
        ord("D"): _read_macros,
        ord("C"): _read_connect,
        ord("H"): _one_string(lambda s: Helo(name=s)),
        ord("M"): _read_envelope(Mail),
        ord("R"): _read_envelope(Rcpt),
        ord("T"): _empty(Data()),
        ord("L"): _read_header(Header),
        ord("N"): _empty(EndOfHeaders()),
        ord("B"): lambda data: Body(data=data),
        ord("E"): _empty(EndOfMessage()),
        ord("A"): _empty(Abort()),
        ord("U"): _one_string(lambda s: Unknown(command=s)),
        ord("Q"): _empty(Quit()),
        ord("K"): _empty(QuitNewConnection()),
    }
)

_REPLY_READERS: Mapping[int, Callable[[bytes], Event]] = MappingProxyType(
    {
        ord("O"): _read_negotiate,
        ord("c"): _empty(Continue()),
        ord("a"): _empty(Accept()),
        ord("r"): _empty(Reject()),
        ord("t"): _empty(Tempfail()),
        ord("d"): _empty(Discard()),
        ord("s"): _empty(Skip()),
        ord("p"): _empty(Progress()),
        ord("y"): _read_reply_code,
        ord("h"): _read_header(AddHeader),
        ord("m"): _indexed(ChangeHeader),
        ord("i"): _indexed(InsertHeader),
        ord("+"): _read_add_recipient,
        ord("2"): _read_add_recipient_par,
        ord("-"): _one_string(lambda s: DeleteRecipient(recipient=s)),
        ord("e"): _read_change_sender,
        ord("b"): lambda data: ReplaceBody(data=data),
        ord("q"): _one_string(lambda s: Quarantine(reason=s)),
    }
)

#: The command and reply bytes this core knows.
COMMAND_CODES = frozenset(chr(c) for c in _COMMAND_READERS)
REPLY_CODES = frozenset(chr(c) for c in _REPLY_READERS)


def _read(readers: Mapping[int, Callable[[bytes], Event]], code: int, data: bytes) -> Event:
    reader = readers.get(code)
    if reader is None:
        raise Malformed(f"unknown code {chr(code)!r}")
    try:
        return reader(data)
    except Malformed:
        raise
    except ValueError as exc:  # an event's validator refused a field
        raise Malformed(f"{chr(code)!r}: {exc}") from None


def read_reply(code: int, data: bytes) -> Reply:
    """The event for a packet a milter sent."""
    event = _read(_REPLY_READERS, code, data)
    assert isinstance(event, Reply)
    return event


def read_command(code: int, data: bytes) -> Command:
    """The event for a packet an MTA sent (the milter's side; for tests and tools)."""
    event = _read(_COMMAND_READERS, code, data)
    assert isinstance(event, Command)
    return event
