"""FETCH evaluation: one message's answer to a list of FETCH items (RFC 9051 §6.4.5, §7.5.2).

Pure: the message's metadata comes in an `ImapMessage`, its content and its cached
structures through the callables of a `FetchContext`, which the session binds to the
store (and runs in a worker thread, since they block).

Theory of operation
-------------------
A FETCH of FLAGS/ENVELOPE/BODYSTRUCTURE over thousands of messages (what Thunderbird
does at startup) must not read and parse thousands of files every time. So the
structures live in the store's per-message cache blob, and the content is touched only
when an item needs it:

- FLAGS, INTERNALDATE, RFC822.SIZE and UID come from the `ImapMessage`, MODSEQ from
  `FetchContext.modseq` (the session reads it with the flags it goes with).
- ENVELOPE, BODY and BODYSTRUCTURE come from the cache blob. On a miss (or a blob this
  code did not write) the message is loaded and parsed once, all three are computed,
  and the blob is stored, so the next FETCH of any of them reads no file.
- BODY[...], BINARY[...], BINARY.SIZE and the RFC822 forms load the content; it is
  loaded at most once per call and parsed at most once, whatever the number of items.

The blob (`encode_cache`) holds the three trees as separate `encode_tree` segments
behind a version mark and their lengths, so a FETCH of ENVELOPE alone (what a client
lists a folder with) decodes only the envelope. A blob of another version or shape,
or a segment that does not decode to the right kind of tree, is treated as a miss, so a
format change recomputes instead of misreading.

A message expunged by another session between the view's list and the read (`load`
returns None) keeps its metadata items, and its content items come back NIL, as RFC
2180 §4.1.3 allows; `FetchResult.gone` tells the session, which may prefer to answer NO
[EXPUNGEISSUED] (RFC 5530).

The batch path (`_messages.fetch_messages`, for FETCHes of `BATCH_ATTRIBUTES` and
BODY.PEEK[] only, what clients list and download folders with) does not come through
`fetch` at all: it wants the three structures already in wire form, which the store
keeps beside the blob (`Structures`). `derive_structures` makes them from the
content, `structures_from_cache` from a blob alone (no file read: an index written
before the wire forms were kept, or a blob `fetch` wrote).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import attrs

from sansmail import mime
from sansmail.imap import (
    Atom,
    BinarySection,
    BinarySize,
    BodySection,
    FetchAttribute,
    FetchItem,
    Literal,
    Section,
    Value,
    decode_tree,
    encode_tree,
    encode_value,
    format_datetime,
)
from sansmail.storage.maildir import ImapMessage, Structures

__all__ = [
    "BATCH_ATTRIBUTES",
    "CACHE_VERSION",
    "UNKNOWN_CTE",
    "FetchContext",
    "FetchResult",
    "decode_cache",
    "derive_structures",
    "encode_cache",
    "fetch",
    "message_flags",
    "string_value",
    "structures_from_cache",
]

#: The format of the cache blob; bump it when the structures' shape changes.
CACHE_VERSION: Final = 2
_CACHE_MARK: Final = b"SMC" + bytes([CACHE_VERSION])
#: The kind of tree each cached segment must decode to: ENVELOPE, BODYSTRUCTURE, BODY.
_SHAPES: Final = {1: list, 2: tuple, 3: tuple}

#: Section data longer than this is sent as a literal even when it could be quoted, as
#: the writer does (sansmail.imap._writers.MAX_QUOTED), so a big part never makes a line.
_MAX_QUOTED: Final = 1024

# Dovecot's order of the system flags, which clients have seen for years; keywords follow.
_SYSTEM_ORDER: Final = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")

# The RFC 3501 forms and what they are (RFC 3501 §6.4.5): (section, implies \Seen).
_RFC822_FORMS: Final = {
    "RFC822": (Section(), True),
    "RFC822.HEADER": (Section(text="HEADER"), False),
    "RFC822.TEXT": (Section(text="TEXT"), True),
}
_CACHED: Final = {"ENVELOPE": 1, "BODYSTRUCTURE": 2, "BODY": 3}

#: The attributes a FETCH batch answers without `fetch`: from the view's list, the
#: structures the store keeps in wire form, and MODSEQ (read for the whole set).
BATCH_ATTRIBUTES: Final = frozenset(
    {"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY", "MODSEQ"}
)

# The response code RFC 3516 §4.3 gives for BINARY of an encoding we cannot undo.
UNKNOWN_CTE: Final = "UNKNOWN-CTE"


@attrs.frozen
class FetchContext:
    """One message and the way to its content and cache (the session binds these)."""

    message: ImapMessage
    #: The content in CRLF form, or None when the message was expunged meanwhile.
    load: Callable[[], bytes | None]
    #: The blob last stored with `set_cache` (None when there is none).
    get_cache: Callable[[], bytes | None]
    set_cache: Callable[[bytes], object]
    #: The session speaks IMAP4rev2. The answers do not differ today (the RFC822 forms
    #: are answered either way, and the writer picks the string forms per session).
    rev2: bool = False
    #: The message's mod-sequence (RFC 7162), None from a store without them.
    modseq: int | None = None


@attrs.frozen
class FetchResult:
    """The answer for one message: (response name, value) pairs for `FetchResponse`."""

    items: tuple[tuple[str, Value], ...]
    #: A non-PEEK BODY[...], BINARY[...], RFC822 or RFC822.TEXT was fetched: the session
    #: sets \\Seen where the store does not have it and adds FLAGS (RFC 9051 §6.4.5).
    #: The message's flags here are the view's and may be stale, so they do not decide.
    set_seen: bool
    #: A response code for the session to answer NO with, e.g. "UNKNOWN-CTE" (RFC 3516
    #: §4.3); `items` is then empty.
    error: str | None = None
    #: The content could not be loaded (expunged meanwhile): content items are NIL.
    gone: bool = False


def message_flags(flags: frozenset[str] | set[str]) -> list[Value]:
    """FLAGS data: system flags in a fixed order, then keywords sorted, as atoms."""
    system = [Atom(flag) for flag in _SYSTEM_ORDER if flag in flags]
    keywords = sorted(flag for flag in flags if flag not in _SYSTEM_ORDER)
    return [*system, *(Atom(keyword) for keyword in keywords)]


def fetch(items: Sequence[FetchItem], ctx: FetchContext) -> FetchResult:
    """Evaluate `items` (in the order asked) for the message of `ctx`."""
    return _Fetcher(ctx).run(items)


class _Fetcher:
    """One call's state: the content and parse, each made at most once."""

    def __init__(self, ctx: FetchContext) -> None:
        self.ctx = ctx
        self._content: bytes | None = None
        self._loaded = False
        self._root: mime.MessagePart | None = None
        self._segments: list[bytes] | None = None
        self._looked = False
        self._decoded: dict[int, Value] = {}
        self.gone = False

    def content(self) -> bytes | None:
        if not self._loaded:
            self._loaded = True
            self._content = self.ctx.load()
            self.gone = self._content is None
        return self._content

    def root(self, raw: bytes) -> mime.MessagePart:
        if self._root is None:
            self._root = mime.parse(raw)
        return self._root

    def structure(self, index: int) -> Value | None:
        """ENVELOPE (1), BODYSTRUCTURE (2) or BODY (3): decoded from the cache, or all
        three computed and cached; None when the message is gone and nothing is cached."""
        if index in self._decoded:
            return self._decoded[index]
        if not self._looked:
            self._looked = True
            self._segments = _split_cache(self.ctx.get_cache())
        if self._segments is not None:
            value = _decode_segment(self._segments[index - 1], _SHAPES[index])
            if value is not None:
                self._decoded[index] = value
                return value
        raw = self.content()
        if raw is None:
            return None
        root = self.root(raw)
        envelope = mime.envelope(root)
        structure = mime.bodystructure(root)
        body = mime.bodystructure(root, extensible=False)
        self._segments = None
        self._decoded = {1: envelope, 2: structure, 3: body}
        self.ctx.set_cache(encode_cache(envelope, structure, body))
        return self._decoded[index]

    def run(self, items: Sequence[FetchItem]) -> FetchResult:
        out: list[tuple[str, Value]] = []
        seen_wanted = False
        for item in items:
            if isinstance(item, FetchAttribute):
                name = item.name
                if name in _RFC822_FORMS:
                    section, marks = _RFC822_FORMS[name]
                    out.append((name, self.body_section(section, None)))
                    seen_wanted |= marks
                elif name in _CACHED:
                    out.append((name, self.structure(_CACHED[name])))
                elif name == "MODSEQ":
                    # RFC 7162 §3.1.4.1: "MODSEQ (n)"; a store without them has none.
                    if self.ctx.modseq is not None:
                        out.append((name, [self.ctx.modseq]))
                else:
                    out.append((name, self.simple(name)))
            elif isinstance(item, BodySection):
                out.append((item.response_name, self.body_section(item.section, item.partial)))
                seen_wanted |= not item.peek
            elif isinstance(item, BinarySection):
                value = self.binary(item)
                if isinstance(value, mime.UnknownEncoding):
                    return FetchResult(items=(), set_seen=False, error=UNKNOWN_CTE)
                out.append((item.response_name, value))
                seen_wanted |= not item.peek
            elif isinstance(item, BinarySize):
                size = self.binary_size(item)
                if isinstance(size, mime.UnknownEncoding):
                    return FetchResult(items=(), set_seen=False, error=UNKNOWN_CTE)
                out.append((item.response_name, size))
            else:
                raise TypeError(f"not a FETCH item: {item!r}")
        set_seen = seen_wanted and not self.gone
        return FetchResult(items=tuple(out), set_seen=set_seen, gone=self.gone)

    def simple(self, name: str) -> Value:
        message = self.ctx.message
        if name == "FLAGS":
            return message_flags(message.flags)
        if name == "INTERNALDATE":
            return format_datetime(message.internaldate)
        if name == "RFC822.SIZE":
            return message.size
        if name == "UID":
            return message.uid
        raise ValueError(f"unknown FETCH attribute: {name}")

    def body_section(self, section: Section, partial: tuple[int, int] | None) -> Value:
        """BODY[section]<partial> (RFC 9051 §6.4.5): a missing part is an empty string,
        and so is an origin past the end."""
        raw = self.content()
        if raw is None:
            return None
        if not section.part and section.text is None:
            data: bytes = raw  # BODY[]: the whole message, no parse needed
        else:
            spec = mime.SectionSpec(parts=section.part, text=section.text, fields=section.fields)
            data = mime.section(raw, self.root(raw), spec) or b""
        return _string(_cut(data, partial))

    def binary(self, item: BinarySection) -> Value | mime.UnknownEncoding:
        """BINARY[part]<partial> (RFC 3516 §4.2): the partial range counts decoded octets."""
        raw = self.content()
        if raw is None:
            return None
        data = raw if not item.part else mime.binary(raw, self.root(raw), item.part)
        if isinstance(data, mime.UnknownEncoding):
            return data
        return _string(_cut(data or b"", item.partial))

    def binary_size(self, item: BinarySize) -> int | mime.UnknownEncoding | None:
        raw = self.content()
        if raw is None:
            return None
        if not item.part:
            return len(raw)
        size = mime.binary_size(raw, self.root(raw), item.part)
        return 0 if size is None else size


def _cut(data: bytes, partial: tuple[int, int] | None) -> bytes:
    return data if partial is None else mime.partial(data, partial[0], partial[1])


def _string(data: bytes) -> bytes:
    """Small clean text goes as bytes (the writer quotes it); anything large, 8-bit or
    holding line breaks or NUL as a literal, as message content is expected to go."""
    if len(data) > _MAX_QUOTED or not data.isascii() or any(c in data for c in b"\r\n\0"):
        return Literal(data)
    return data


def string_value(data: bytes) -> Value:
    """Section data as `fetch` answers it (a short clean string quoted, anything else a
    literal), for the batch path to encode the same way."""
    return _string(data)


def derive_structures(raw: bytes) -> Structures:
    """The wire forms of the three structures, from a message's content (one parse).
    Not the blob: only `fetch` reads it, rarely, and it makes one when it misses."""
    root = mime.parse(raw)
    return Structures(
        envelope=encode_value(mime.envelope(root)),
        bodystructure=encode_value(mime.bodystructure(root)),
        body=encode_value(mime.bodystructure(root, extensible=False)),
    )


def structures_from_cache(blob: bytes | None) -> Structures | None:
    """The wire forms of the trees in `blob` (None when it is not a blob `encode_cache`
    of this version wrote: then only the content can tell)."""
    trees = decode_cache(blob)
    if trees is None:
        return None
    _, envelope, structure, body = trees
    return Structures(
        envelope=encode_value(envelope),
        bodystructure=encode_value(structure),
        body=encode_value(body),
    )


def encode_cache(envelope: Value, bodystructure: Value, body: Value) -> bytes:
    """The cache blob of one message (see the module docstring)."""
    out = bytearray(_CACHE_MARK)
    for tree in (envelope, bodystructure, body):
        segment = encode_tree(tree)
        out += len(segment).to_bytes(4, "big") + segment
    return bytes(out)


def _split_cache(blob: bytes | None) -> list[bytes] | None:
    if blob is None or not blob.startswith(_CACHE_MARK):
        return None
    segments: list[bytes] = []
    pos = len(_CACHE_MARK)
    for _ in range(3):
        if pos + 4 > len(blob):
            return None
        size = int.from_bytes(blob[pos : pos + 4], "big")
        pos += 4
        if pos + size > len(blob):
            return None
        segments.append(blob[pos : pos + size])
        pos += size
    return segments if pos == len(blob) else None


def _decode_segment(segment: bytes, shape: type) -> Value | None:
    """The tree of one segment, or None when it is not a tree of `shape` (a cached tree
    is never None: ENVELOPE is a list, the structures tuples)."""
    try:
        tree = decode_tree(segment)
    except ValueError:
        return None
    return tree if isinstance(tree, shape) else None


def decode_cache(blob: bytes | None) -> list[Value] | None:
    """``[CACHE_VERSION, envelope, bodystructure, body]`` from a whole blob, or None
    when it is not one this version wrote (tests and tools; FETCH decodes lazily)."""
    segments = _split_cache(blob)
    if segments is None:
        return None
    trees: list[Value] = [CACHE_VERSION]
    for index, segment in enumerate(segments, start=1):
        tree = _decode_segment(segment, _SHAPES[index])
        if tree is None:
            return None
        trees.append(tree)
    return trees
