"""The MIME part tree of a message: one pass over the bytes, offsets only, never raises.

Theory of operation
-------------------
`parse` walks the message once, front to back, keeping two stacks: the parts that are
open (the root, the multipart we are inside, the child we are reading, an encapsulated
message inside it, ...) and the boundaries of the open multiparts. It reads a header
block, decides what the part is, and then only looks for the next line that is a
boundary of one of the open multiparts, with bytes.find, so the bodies in between are
skipped at C speed and never copied. A `MessagePart` holds offsets into the caller's
bytes (and a reference to them), nothing more; sizes and line counts are read off the
offsets when asked.

Boundaries follow RFC 2046 §5.1.1 as Dovecot's message-parser.c reads it, since a mail
store must agree with what clients have seen from Dovecot for years:

- A boundary line is "--" + boundary at the start of a line, and the boundary needs only
  to be a *prefix* of the rest of the line (RFC 2046: no boundary may appear as the prefix
  of a line inside a part). If the line matches several open boundaries, the longest
  wins, then the innermost; "--" right after the boundary makes it the close delimiter.
  (Dovecot first cuts one trailing "--" off the line, which makes it miss the delimiter
  line of a boundary that itself ends in "--"; we do not.)
- The CRLF in front of a boundary line belongs to the boundary, not to the part before
  it (RFC 2046 §5.1.1), except when the line is the first line of a body.
- A boundary of an outer multipart ends every part inside it, so a missing close
  delimiter or a broken inner boundary cannot swallow the rest of the message. A part
  whose header block is cut by such a line has an empty body.
- Text before the first boundary (preamble) and after the close delimiter (epilogue)
  belongs to the multipart's body but to no child. A multipart in which no child was
  found (no boundary parameter, or one that never occurs) has no children; BODYSTRUCTURE
  then shows one empty text/plain part, as Dovecot does (RFC 9051 requires at least one).
- Content-* fields count when the part is MIME: every part of a multipart is, and a
  message (the root, or one inside message/rfc822) is when it has MIME-Version or
  Content-Type (RFC 2045 §4, loosened as Dovecot does). Otherwise, and when Content-Type
  is broken, the part is text/plain; charset=us-ascii (RFC 2045 §5.2), except inside
  multipart/digest, where the default is message/rfc822 (RFC 2046 §5.1.5). The first
  Content-* field of each name counts, as in Dovecot.

Limits, as Dovecot's defaults: parts nested more than `MAX_DEPTH` deep are not opened (a
multipart there shows as a leaf), and once `MAX_PARTS` parts exist no boundary is looked
for any more, so the parts still open run to the end of the message. Every boundary line
found either starts a part or closes a multipart, so the number of steps is bounded by
the limits, not by how many lines look like boundaries; and each open boundary scans the
bytes after it once, so the whole parse reads the message at most `MAX_DEPTH` times over
(in practice once per nesting level: two or three).
"""

from __future__ import annotations

from typing import Final

import attrs

from sansmail.mime._fields import (
    Field,
    Params,
    content_type,
    disposition,
    languages,
    line_break_before,
    mime_token,
    scan_header,
    unfold,
)

__all__ = ["MAX_DEPTH", "MAX_PARTS", "MessagePart", "parse"]

MAX_DEPTH: Final = 100  # Dovecot's default limit on nested MIME parts
MAX_PARTS: Final = 10_000  # Dovecot's default limit on MIME parts in one message

_TEXT_PLAIN: Final = (b"text", b"plain", ())


@attrs.define(eq=False)
class MessagePart:
    """One MIME entity of a message, as offsets into the message bytes.

    ``raw[header_start:header_end]`` is the header block including its empty line (absent
    when the block ran to the end of its part); ``raw[body_start:body_end]`` is the body
    as transferred. For the root, the header is the message header. A multipart holds its
    parts in `children`; a message/rfc822 part holds the message inside it in
    `encapsulated`, whose header starts at this part's `body_start`.

    The content fields hold the header values as written (octets, not decoded):
    `content_type`/`subtype` are the media type (text/plain when absent or broken),
    `params` its parameters with RFC 2231 continuations joined, `encoding` the
    Content-Transfer-Encoding token (None: absent, which means 7bit), `disposition`
    (type, params) of Content-Disposition, `language` the Content-Language tags; `id`,
    `description`, `md5`, `location` the unfolded values of Content-ID,
    Content-Description, Content-MD5 and Content-Location. Treat a part as read-only.
    """

    raw: bytes = attrs.field(repr=False)
    header_start: int
    header_end: int = 0
    body_start: int = 0
    body_end: int = 0
    content_type: bytes = b"text"
    subtype: bytes = b"plain"
    params: Params = ()
    id: bytes | None = None
    description: bytes | None = None
    encoding: bytes | None = None
    md5: bytes | None = None
    disposition: tuple[bytes, Params] | None = None
    language: tuple[bytes, ...] | None = None
    location: bytes | None = None
    multipart: bool = False
    children: list[MessagePart] = attrs.field(factory=list, repr=False)
    encapsulated: MessagePart | None = attrs.field(default=None, repr=False)
    _lines: int | None = attrs.field(default=None, init=False, repr=False)

    @property
    def size(self) -> int:
        """Octets of the body as transferred (RFC 9051 body-fld-octets)."""
        return self.body_end - self.body_start

    @property
    def lines(self) -> int:
        """Lines of the body: its line breaks, as Dovecot counts (RFC 9051 body-fld-lines).

        Counted once per octet for the whole tree: a container adds up its children's
        counts and the text between them, so message/rfc822 nested 100 deep does not
        count the same bytes 100 times."""
        if self._lines is None:
            self._lines = _body_lines(self)
        return self._lines

    @property
    def is_text(self) -> bool:
        return self.content_type.lower() == b"text"

    @property
    def is_message(self) -> bool:
        """message/rfc822: BODYSTRUCTURE carries its envelope, body and lines."""
        return self.content_type.lower() == b"message" and self.subtype.lower() == b"rfc822"


def _body_lines(part: MessagePart) -> int:
    raw = part.raw
    inner = part.encapsulated
    if inner is not None:  # its body is the whole encapsulated message
        return raw.count(b"\n", inner.header_start, inner.body_start) + inner.lines
    total = 0
    pos = part.body_start
    for child in part.children:
        total += raw.count(b"\n", pos, child.body_start) + child.lines
        pos = child.body_end
    return total + raw.count(b"\n", pos, part.body_end)


def parse(raw: bytes) -> MessagePart:
    """The part tree of a whole message (CRLF line ends expected; LF alone is read too).
    Any input gives a tree: broken structure is read the way the module docstring says."""
    return _Parser(raw).run()


class _Parser:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.end = len(raw)
        self.open: list[MessagePart] = []  # open parts, outermost first
        self.bounds: list[tuple[bytes, MessagePart]] = []  # open boundaries, innermost last
        # Per boundary: where "\n--" + boundary next occurs (-1: not before `until`) and
        # how far it was searched. Offsets only grow, so the bytes after a boundary are
        # searched once for it, with bytes.find (C speed).
        self.next_at: dict[bytes, tuple[int, int]] = {}
        self.count = 0

    def run(self) -> MessagePart:
        root = MessagePart(self.raw, 0)
        pos = self._start(root, mime=False, digest=False)
        while True:
            hit = self._next_boundary(pos) if self.bounds and self.count < MAX_PARTS else None
            if hit is None:
                for part in self.open:
                    part.body_end = self.end
                return root
            line, index, close, after = hit
            owner = self.bounds[index][1]
            innermost = self.open[-1]
            cut = line if line == innermost.body_start else line_break_before(self.raw, line)
            cut = max(cut, innermost.body_start)
            while self.open[-1] is not owner:
                self.open.pop().body_end = cut
            del self.bounds[index if close else index + 1 :]
            if close or after is None:
                pos = self.end if after is None else after
                continue
            child = MessagePart(self.raw, after)
            owner.children.append(child)
            pos = self._start(child, mime=True, digest=owner.subtype.lower() == b"digest")

    def _start(self, part: MessagePart, *, mime: bool, digest: bool) -> int:
        """Read the header of a new open part, open what it contains, and return the
        offset from which to look for the next boundary."""
        self.count += 1
        self.open.append(part)
        stop = self._boundary_line if self.bounds else None
        part.header_end, fields, cut_short = scan_header(
            self.raw, part.header_start, self.end, stop
        )
        part.body_start = part.body_end = part.header_end
        _read_content_fields(part, fields, mime=mime, digest=digest)
        room = len(self.open) < MAX_DEPTH and self.count < MAX_PARTS
        if part.content_type.lower() == b"multipart" and room and not cut_short:
            boundary = _boundary(part.params)
            part.multipart = True
            if boundary is not None:
                self.bounds.append((boundary, part))
        elif part.is_message and room:
            inner = MessagePart(self.raw, part.body_start)
            part.encapsulated = inner
            if cut_short or part.body_start >= self.end:
                # An empty body: the encapsulated message is empty too; reading a header
                # here would take the CRLF that belongs to the boundary after it.
                self.count += 1
                inner.header_end = inner.body_start = inner.body_end = part.body_start
                return part.body_start
            return self._start(inner, mime=False, digest=False)
        return part.body_start

    # -- boundaries ---------------------------------------------------------------------

    def _boundary_line(self, start: int) -> int:
        hit = self._next_boundary(start)
        return -1 if hit is None else hit[0]

    def _next_boundary(self, pos: int) -> tuple[int, int, bool, int | None] | None:
        """The first boundary line at or after the line start `pos`: (line start, index in
        `bounds`, close delimiter?, start of the next line or None at the end)."""
        raw = self.raw
        if pos < self.end and (pos == 0 or raw[pos - 1] != 0x0A) and raw.startswith(b"--", pos):
            found = self._match(pos)
            if found is not None:
                return (pos, *found)
        low = max(pos - 1, 0)
        window = 256  # small: a boundary pushed just now scans at most this far for nothing
        distinct = {boundary for boundary, _ in self.bounds}
        while True:
            # Every open boundary is searched up to `high`; the earliest hit below it is
            # the answer. Windows grow, so a boundary whose next line is far away (or
            # absent) costs one scan of the distance, not one per call.
            high = min(self.end, low + window)
            first = -1
            for boundary in distinct:
                at, until = self.next_at.get(boundary, (-1, low))
                if at < low:
                    if at >= 0 or until < low:
                        until = low
                    if until < high:
                        needle = b"\n--" + boundary
                        at = raw.find(needle, max(low, until - len(needle) + 1), high)
                        until = high
                    self.next_at[boundary] = (at, until)
                if low <= at < high and (first < 0 or at < first):
                    first = at
            if first >= 0:
                line = first + 1
                found = self._match(line)
                assert found is not None  # a found needle is a boundary line
                return (line, *found)
            if high >= self.end:
                return None
            window *= 4

    def _match(self, line: int) -> tuple[int, bool, int | None] | None:
        """Is the line at `line` a boundary line? The longest open boundary that is a
        prefix of the line after its "--" wins, the innermost among equals."""
        raw = self.raw
        best = -1
        for index in range(len(self.bounds) - 1, -1, -1):
            boundary = self.bounds[index][0]
            if (best < 0 or len(boundary) > len(self.bounds[best][0])) and raw.startswith(
                boundary, line + 2
            ):
                best = index
        if best < 0:
            return None
        close = raw.startswith(b"--", line + 2 + len(self.bounds[best][0]))
        eol = raw.find(b"\n", line)
        return best, close, None if eol < 0 else eol + 1


def _boundary(params: Params) -> bytes | None:
    """The boundary parameter, whole. (Dovecot cuts it to 70 octets, RFC 2046's maximum,
    for its stream buffers; then the close delimiter of a longer one is not recognised.
    We hold the whole message, so a long boundary costs nothing.)"""
    for name, value in params:
        if name.lower() == b"boundary" and value:
            return value
    return None


_CONTENT_FIELDS: Final = frozenset(
    {
        b"content-type",
        b"content-transfer-encoding",
        b"content-id",
        b"content-description",
        b"content-md5",
        b"content-disposition",
        b"content-language",
        b"content-location",
    }
)


def _read_content_fields(
    part: MessagePart, fields: list[Field], *, mime: bool, digest: bool
) -> None:
    """Fill the content fields of `part` from its header (first occurrence wins)."""
    raw = part.raw
    seen: dict[bytes, bytes] = {}
    for name, _, value_start, field_end in fields:
        key = name.lower()
        if key == b"mime-version":
            mime = True
        elif key in _CONTENT_FIELDS and key not in seen:
            seen[key] = unfold(raw, value_start, field_end)
    if b"content-type" in seen:
        mime = True
    kind = content_type(seen[b"content-type"]) if b"content-type" in seen else None
    if kind is None:
        kind = (
            (b"message", b"rfc822", ()) if digest and b"content-type" not in seen else _TEXT_PLAIN
        )
    part.content_type, part.subtype, part.params = kind
    if not mime:
        return
    if b"content-transfer-encoding" in seen:
        part.encoding = mime_token(seen[b"content-transfer-encoding"])
    part.id = seen.get(b"content-id")
    part.description = seen.get(b"content-description")
    part.md5 = seen.get(b"content-md5")
    part.location = seen.get(b"content-location")
    if b"content-disposition" in seen:
        part.disposition = disposition(seen[b"content-disposition"])
    if b"content-language" in seen:
        part.language = languages(seen[b"content-language"])
