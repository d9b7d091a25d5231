"""The queue as sansmail 0.1 left it (format 1): each message a pair of files,
``<id>.msg`` (the content) and ``<id>.env`` (the JSON envelope, the commit point).

`QueueStore` reads these wherever it reads messages, so ``queue list`` and ``queue
delete`` work on a queue an older release left behind, and `QueueStore.recover`
rewrites each whole pair as a format-2 file at the first start (`convert`); after that
nothing writes format 1 again. The crash leftovers format 1 could leave (tmp files,
contents without an envelope, envelopes without a content) are cleaned up by `recover`
as that release did.

Blocking file I/O, like the rest of the store.
"""

from __future__ import annotations

import os
from typing import Final

from sansmail.mail.envelope import CorruptEnvelopeError, QueuedMessage, decode_envelope
from sansmail.storage.durable import unlink_quietly

__all__ = ["ENV", "MSG", "delete", "load", "read_message", "readable"]

MSG: Final = ".msg"
ENV: Final = ".env"


def _path(directory: str, queue_id: str, suffix: str) -> str:
    return os.path.join(directory, queue_id + suffix)


def load(directory: str, queue_id: str) -> QueuedMessage:
    """The envelope of a format-1 message; FileNotFoundError when there is no envelope,
    CorruptEnvelopeError when it does not read."""
    with open(_path(directory, queue_id, ENV), "rb") as file:
        data = file.read()
    message = decode_envelope(data)
    if message.queue_id != queue_id:
        raise CorruptEnvelopeError(f"envelope of {queue_id} names {message.queue_id}")
    return message


def read_message(directory: str, queue_id: str) -> bytes:
    """The content of a format-1 message; FileNotFoundError when there is none."""
    with open(_path(directory, queue_id, MSG), "rb") as file:
        return file.read()


def readable(directory: str, queue_id: str, names: set[str]) -> bool:
    """True when the pair is whole: an envelope that reads, and its content."""
    if queue_id + MSG not in names:
        return False
    try:
        load(directory, queue_id)
    except (OSError, ValueError):
        return False
    return True


def delete(directory: str, queue_id: str) -> bool:
    """Remove a format-1 message, the envelope (its commit point) first; False when it
    has no envelope. The caller fsyncs the directory."""
    try:
        os.unlink(_path(directory, queue_id, ENV))
    except FileNotFoundError:
        return False
    unlink_quietly(_path(directory, queue_id, MSG))
    return True
