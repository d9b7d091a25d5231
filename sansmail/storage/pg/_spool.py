"""What a writer of the PostgreSQL backend holds of a message while it arrives: the
pieces since the last flush in memory, the rest in a `tempfile.SpooledTemporaryFile`
(memory up to a limit, then an unlinked file), all of it read back once at commit.

The content goes to the database whole, at commit: a row written in pieces would hold a
connection, and its transaction, for as long as the client takes to send the message.
Shared by the mail store's deliveries (`_delivery`) and the queue's writer (`_queue`).
"""

from __future__ import annotations

import tempfile

__all__ = ["Spool"]


class Spool:
    """One message's content on its way in; `memory` octets stay in memory before the
    spool becomes a file."""

    def __init__(self, memory: int) -> None:
        self._memory = memory
        self._chunks: list[bytes] = []
        self._pending = 0
        self._file: tempfile.SpooledTemporaryFile[bytes] | None = None

    @property
    def pending(self) -> int:
        """Octets added since the last `flush`."""
        return self._pending

    def add(self, data: bytes) -> None:
        """Keep `data` (no I/O)."""
        self._chunks.append(data)
        self._pending += len(data)

    def flush(self) -> None:
        """Move what was added to the spool (BLOCKING once it is a file)."""
        if not self._chunks:
            return
        if self._file is None:
            # Closed by `close`, not by a block: it outlives this call.
            self._file = tempfile.SpooledTemporaryFile(max_size=self._memory)  # noqa: SIM115
        self._file.write(b"".join(self._chunks))
        self._chunks = []
        self._pending = 0

    def read(self) -> bytes:
        """Blocking: everything added, in order."""
        content = b"".join(self._chunks)
        if self._file is not None:
            self._file.seek(0)
            content = self._file.read() + content
        return content

    def close(self) -> None:
        """Let go of the buffers and the file; safe more than once."""
        self._chunks = []
        self._pending = 0
        spool, self._file = self._file, None
        if spool is not None:
            spool.close()
