"""The receive buffer every protocol core parses from: bounded, CRLF-strict, scanned once.

Theory of operation
-------------------
Bytes arrive in arbitrary pieces (`append`) and leave from the front, either as whole
lines (`maybe_extract_line`) or as counted octets (`extract`, `maybe_extract_exact`,
`discard`). The storage is one `bytearray`; CPython deletes from the front of a bytearray
by moving a start offset, so consuming is cheap however large the buffer is.

Lines end with CRLF and nothing else. A LF without a CR before it, or a CR that is not
followed by LF, is never a line end: it raises `BareNewlineError`, because a peer that
sends one is either broken or trying to make two parsers disagree about where a line
ends (RFC 5321 §2.3.8 and §4.1.1.4; SMTP smuggling, CVE-2023-51764). This is the one
place where sansmail deliberately parts from h11's receive buffer, which accepts a bare
LF as a line end.

Searching is resumable: when no LF has arrived yet, we remember how far we looked and
start there next time, so a line that trickles in byte by byte costs linear time, not
quadratic. The search is also bounded by the caller's `max_length`, and a buffer that
holds `max_length` octets without a line end raises `LineTooLongError` at once: memory
never grows past the limit while we wait for a CRLF that may never come.

Bulk readers (SMTP DATA, BDAT, IMAP literals) use `find`, `startswith`, `endswith` and the
extractors directly and never look at lines at all.
"""

from __future__ import annotations

__all__ = ["BareNewlineError", "LineBuffer", "LineError", "LineTooLongError"]

_CR = 0x0D


class LineError(ValueError):
    """The buffered bytes cannot be split into lines; str() says why."""


class LineTooLongError(LineError):
    """No CRLF within the allowed line length."""


class BareNewlineError(LineError):
    """A CR or LF that is not part of a CRLF pair."""


class LineBuffer:
    """Bytes received and not yet parsed."""

    __slots__ = ("_data", "_searched")

    def __init__(self) -> None:
        self._data = bytearray()
        # No LF in _data[:_searched]: where the next line search may resume.
        self._searched = 0

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return bool(self._data)

    def __bytes__(self) -> bytes:
        return bytes(self._data)

    def __repr__(self) -> str:
        return f"<LineBuffer {len(self._data)} octets>"

    def append(self, data: bytes) -> None:
        """Add received bytes at the end."""
        self._data += data

    def maybe_extract_line(self, max_length: int) -> bytes | None:
        """Remove and return the first line, without its CRLF, or None if no complete
        line is buffered yet.

        `max_length` counts the CRLF. Raises `LineTooLongError` as soon as the buffer
        holds `max_length` octets without a line end, and `BareNewlineError` for a CR or
        LF inside the line that is not the final CRLF.
        """
        data = self._data
        lf = data.find(b"\n", self._searched, max_length)
        if lf < 0:
            if len(data) >= max_length:
                raise LineTooLongError(f"no line end within {max_length} octets")
            self._searched = len(data)
            return None
        if lf == 0 or data[lf - 1] != _CR:
            raise BareNewlineError("LF without CR")
        if data.find(b"\r", 0, lf - 1) >= 0:
            raise BareNewlineError("CR without LF")
        line = bytes(data[: lf - 1])
        del data[: lf + 1]
        self._searched = 0
        return line

    def maybe_extract_exact(self, count: int) -> bytes | None:
        """Remove and return exactly `count` octets, or None if fewer are buffered."""
        if len(self._data) < count:
            return None
        return self.extract(count)

    def extract(self, count: int) -> bytes:
        """Remove and return up to `count` octets from the front."""
        data = self._data
        if count >= len(data):
            return self.extract_all()
        chunk = bytes(data[:count])
        del data[:count]
        self._searched = max(0, self._searched - count)
        return chunk

    def extract_all(self) -> bytes:
        """Remove and return everything buffered."""
        chunk = bytes(self._data)
        self._data.clear()
        self._searched = 0
        return chunk

    def discard(self, count: int) -> None:
        """Drop up to `count` octets from the front."""
        del self._data[:count]
        self._searched = max(0, self._searched - count)

    def find(self, needle: bytes, start: int = 0) -> int:
        """Index of the first `needle` at or after `start`, or -1."""
        return self._data.find(needle, start)

    def startswith(self, prefix: bytes) -> bool:
        return self._data.startswith(prefix)

    def endswith(self, suffix: bytes) -> bool:
        return self._data.endswith(suffix)
