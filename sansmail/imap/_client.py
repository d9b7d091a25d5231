"""Writing commands as a client would: `write_command(event) -> bytes`.

sansmail has no IMAP client core, but the inverse of the parser is cheap and worth
having: tests use it for round trips (parse(write(command)) == command), and tools can
use it to talk to a server. Strings go as atoms when they can, quoted when they can,
and as literals otherwise; literals are non-synchronizing ("{n+}", RFC 7888) unless
`literal_plus=False`, in which case the caller must wait for the server's "+" after each
"{n}" line before sending on (`split_at_literals` cuts the output there).
"""

from __future__ import annotations

import re
from typing import Final

from sansmail.imap._events import (
    Append,
    AppendMessage,
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Compress,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    Rename,
    Search,
    Select,
    SetQuota,
    StartTLS,
    Status,
    Store,
    Subscribe,
    UidExpunge,
    Unselect,
    Unsubscribe,
)
from sansmail.imap._grammar import ASTRING_CHARS, LIST_CHARS
from sansmail.imap._mailbox import encode_mailbox
from sansmail.imap._search import (
    SearchAnd,
    SearchDate,
    SearchHeader,
    SearchKey,
    SearchKeyword,
    SearchModseq,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSimple,
    SearchSize,
    SearchText,
    SearchUid,
)
from sansmail.imap._values import Atom, Value
from sansmail.imap._writers import format_date, format_datetime
from sansmail.sasl._b64 import encode_base64

__all__ = ["split_at_literals", "write_command"]

_ASTRING: Final = re.compile(f"[{ASTRING_CHARS}]+".encode())
_LIST_MAILBOX: Final = re.compile(f"[{LIST_CHARS}]+".encode())
_QUOTABLE: Final = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
_ESCAPE: Final = re.compile(rb'(["\\])')
_STORE_SIGN: Final = {"replace": "", "add": "+", "remove": "-"}
_SYNC_LITERAL: Final = re.compile(rb"~?\{[0-9]+\}\r\n")


class _Writer:
    def __init__(self, *, utf8: bool, literal_plus: bool) -> None:
        self.out = bytearray()
        self.utf8 = utf8
        self.literal_plus = literal_plus

    def raw(self, text: str | bytes) -> None:
        self.out += text.encode("ascii") if isinstance(text, str) else text

    def literal(self, data: bytes, *, binary: bool = False) -> None:
        plus = b"+" if self.literal_plus else b""
        self.out += (b"~" if binary else b"") + b"{%d%s}\r\n" % (len(data), plus) + data

    def string(self, data: bytes) -> None:
        if len(data) <= 1024 and (
            _QUOTABLE.fullmatch(data) or (self.utf8 and _utf8_quotable(data))
        ):
            self.out += b'"' + _ESCAPE.sub(rb"\\\1", data) + b'"'
        else:
            self.literal(data)

    def astring(self, data: bytes) -> None:
        if _ASTRING.fullmatch(data):
            self.out += data
        else:
            self.string(data)

    def mailbox(self, name: str) -> None:
        self.astring(encode_mailbox(name, utf8=self.utf8))

    def pattern(self, name: str) -> None:
        data = encode_mailbox(name, utf8=self.utf8)
        if _LIST_MAILBOX.fullmatch(data):
            self.out += data
        else:
            self.string(data)

    def value(self, value: Value) -> None:
        if value is None:
            self.raw("NIL")
        elif isinstance(value, Atom | int):
            self.raw(str(value))
        elif isinstance(value, str):
            self.string(value.encode("utf-8"))
        elif isinstance(value, bytes):
            self.string(value)
        else:
            self.raw("(")
            for index, item in enumerate(value):
                if index:
                    self.raw(" ")
                self.value(item)
            self.raw(")")

    def parameters(self, params: tuple[tuple[str, Value], ...]) -> None:
        self.raw(" (")
        for index, (name, value) in enumerate(params):
            self.raw((" " if index else "") + name)
            if value is not None:
                self.raw(" ")
                self.value(value)
        self.raw(")")

    def words(self, names: tuple[str, ...] | list[str]) -> None:
        self.raw("(" + " ".join(names) + ")")


def _utf8_quotable(data: bytes) -> bool:
    if b"\r" in data or b"\n" in data or b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def write_command(command: Command, *, utf8: bool = False, literal_plus: bool = True) -> bytes:
    """The octets a client sends for `command`, CRLF included. `utf8`: the session has
    ENABLEd IMAP4rev2 or UTF8=ACCEPT, so mailbox names are UTF-8."""
    w = _Writer(utf8=utf8, literal_plus=literal_plus)
    w.raw(command.tag + " ")
    _write_arguments(w, command)
    w.raw("\r\n")
    return bytes(w.out)


def split_at_literals(data: bytes) -> list[bytes]:
    """Cut a command written with `literal_plus=False` after each "{n}" CRLF, where a
    client waits for the server's continuation request."""
    pieces: list[bytes] = []
    start = 0
    position = 0
    while True:
        found = _SYNC_LITERAL.search(data, position)
        if found is None:
            pieces.append(data[start:])
            return pieces
        pieces.append(data[start : found.end()])
        size = int(data[found.start() : found.end()].strip(b"~{}\r\n"))
        start = position = found.end()
        position += size


_NO_ARGUMENTS: Final = {
    Capability: "CAPABILITY",
    Noop: "NOOP",
    Logout: "LOGOUT",
    StartTLS: "STARTTLS",
    Namespace: "NAMESPACE",
    Check: "CHECK",
    Close: "CLOSE",
    Unselect: "UNSELECT",
    Expunge: "EXPUNGE",
    Idle: "IDLE",
}


def _write_arguments(w: _Writer, command: Command) -> None:
    name = _NO_ARGUMENTS.get(type(command))
    if name is not None:
        w.raw(name)
    elif isinstance(command, Authenticate):
        w.raw("AUTHENTICATE " + command.mechanism)
        if command.initial_response is not None:
            response = command.initial_response
            w.raw(b" " + (encode_base64(response) if response else b"="))
    elif isinstance(command, Login):
        w.raw("LOGIN ")
        w.astring(command.userid.encode("utf-8"))
        w.raw(" ")
        w.astring(command.password.encode("utf-8"))
    elif isinstance(command, Enable):
        w.raw("ENABLE " + " ".join(command.capabilities))
    elif isinstance(command, Id):
        w.raw("ID ")
        if command.params is None:
            w.raw("NIL")
        else:
            w.value([item for pair in command.params for item in pair])
    elif isinstance(command, Select):
        w.raw("EXAMINE " if command.readonly else "SELECT ")
        w.mailbox(command.mailbox)
        if command.parameters:
            w.parameters(command.parameters)
    elif isinstance(command, Create):
        w.raw("CREATE ")
        w.mailbox(command.mailbox)
        if command.special_use:
            w.raw(" (USE ")
            w.words(command.special_use)
            w.raw(")")
    elif isinstance(command, Delete | Subscribe | Unsubscribe):
        w.raw(type(command).__name__.upper() + " ")
        w.mailbox(command.mailbox)
    elif isinstance(command, Rename):
        w.raw("RENAME ")
        w.mailbox(command.mailbox)
        w.raw(" ")
        w.mailbox(command.new_mailbox)
    elif isinstance(command, List):
        _write_list(w, command)
    elif isinstance(command, Lsub):
        w.raw("LSUB ")
        w.astring(encode_mailbox(command.reference, utf8=w.utf8))
        w.raw(" ")
        w.pattern(command.pattern)
    elif isinstance(command, Status):
        w.raw("STATUS ")
        w.mailbox(command.mailbox)
        w.raw(" ")
        w.words(command.items)
    elif isinstance(command, Append):
        w.raw("APPEND ")
        w.mailbox(command.mailbox)
        first = AppendMessage(
            flags=command.flags,
            date=command.date,
            message=command.message,
            binary=command.binary,
            utf8=command.utf8,
        )
        for message in (first, *command.more):
            _write_append_message(w, message)
    elif isinstance(command, UidExpunge):
        w.raw(f"UID EXPUNGE {command.sequence_set}")
    elif isinstance(command, Fetch):
        w.raw(("UID " if command.uid else "") + f"FETCH {command.sequence_set} ")
        w.raw("(" + " ".join(item.request for item in command.items) + ")")
        if command.modifiers:
            w.parameters(command.modifiers)
    elif isinstance(command, Store):
        w.raw(("UID " if command.uid else "") + f"STORE {command.sequence_set}")
        if command.modifiers:
            w.parameters(command.modifiers)
        silent = ".SILENT" if command.silent else ""
        w.raw(f" {_STORE_SIGN[command.mode]}FLAGS{silent} ")
        w.words(command.flags)
    elif isinstance(command, Copy | Move):
        verb = type(command).__name__.upper()
        w.raw(("UID " if command.uid else "") + f"{verb} {command.sequence_set} ")
        w.mailbox(command.mailbox)
    elif isinstance(command, Search):
        _write_search(w, command)
    elif isinstance(command, GetQuota):
        w.raw("GETQUOTA ")
        w.astring(command.root.encode("utf-8"))
    elif isinstance(command, GetQuotaRoot):
        w.raw("GETQUOTAROOT ")
        w.mailbox(command.mailbox)
    elif isinstance(command, Compress):
        w.raw("COMPRESS " + command.mechanism)
    elif isinstance(command, SetQuota):
        w.raw("SETQUOTA ")
        w.astring(command.root.encode("utf-8"))
        w.raw(" (" + " ".join(f"{name} {limit}" for name, limit in command.resources) + ")")
    else:
        raise TypeError(f"not a command: {command!r}")


def _write_append_message(w: _Writer, message: AppendMessage) -> None:
    if message.flags:
        w.raw(" ")
        w.words(message.flags)
    if message.date is not None:
        w.raw(f' "{format_datetime(message.date)}"')
    w.raw(" UTF8 (" if message.utf8 else " ")
    w.literal(message.message, binary=message.binary)
    if message.utf8:
        w.raw(")")


def _write_list(w: _Writer, command: List) -> None:
    w.raw("LIST ")
    if command.selection:
        w.words(command.selection)
        w.raw(" ")
    w.astring(encode_mailbox(command.reference, utf8=w.utf8))
    w.raw(" ")
    if len(command.patterns) == 1:
        w.pattern(command.patterns[0])
    else:
        w.raw("(")
        for index, pattern in enumerate(command.patterns):
            if index:
                w.raw(" ")
            w.pattern(pattern)
        w.raw(")")
    if command.return_options or command.status_items:
        options = list(command.return_options)
        if command.status_items:
            options.append("STATUS (" + " ".join(command.status_items) + ")")
        w.raw(" RETURN ")
        w.words(options)


def _write_search(w: _Writer, command: Search) -> None:
    w.raw(("UID " if command.uid else "") + "SEARCH")
    if command.return_options is not None:
        w.raw(" RETURN ")
        w.words(command.return_options)
    encoding = command.charset or "UTF-8"
    if command.charset is not None:
        w.raw(f" CHARSET {command.charset}")
    w.raw(" ")
    _write_key(w, command.criteria, encoding)


def _write_key(w: _Writer, key: SearchKey, encoding: str) -> None:
    if isinstance(key, SearchSimple):
        w.raw(key.name)
    elif isinstance(key, SearchText):
        w.raw(key.name + " ")
        w.astring(key.value.encode(encoding))
    elif isinstance(key, SearchHeader):
        w.raw("HEADER ")
        w.astring(key.field.encode("ascii"))
        w.raw(" ")
        w.astring(key.value.encode(encoding))
    elif isinstance(key, SearchKeyword):
        w.raw(("UNKEYWORD " if key.negated else "KEYWORD ") + key.keyword)
    elif isinstance(key, SearchDate):
        w.raw(f"{key.name} {format_date(key.date)}")
    elif isinstance(key, SearchSize):
        w.raw(f"{key.name} {key.size}")
    elif isinstance(key, SearchNot):
        w.raw("NOT ")
        _write_key(w, key.key, encoding)
    elif isinstance(key, SearchOr):
        w.raw("OR ")
        _write_key(w, key.left, encoding)
        w.raw(" ")
        _write_key(w, key.right, encoding)
    elif isinstance(key, SearchAnd):
        w.raw("(")
        for index, item in enumerate(key.keys):
            if index:
                w.raw(" ")
            _write_key(w, item, encoding)
        w.raw(")")
    elif isinstance(key, SearchUid):
        w.raw(f"UID {key.sequence_set}")
    elif isinstance(key, SearchSequence):
        w.raw(str(key.sequence_set))
    elif isinstance(key, SearchModseq):
        w.raw("MODSEQ ")
        if key.entry is not None and key.entry_type is not None:
            w.string(key.entry.encode("ascii"))
            w.raw(f" {key.entry_type.lower()} ")
        w.raw(str(key.modseq))
    else:
        raise TypeError(f"not a search key: {key!r}")
