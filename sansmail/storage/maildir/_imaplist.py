"""The message list of a folder view: index rows that become `ImapMessage`s when looked at.

A SELECT of a folder of 10,000 messages reads every row (one query, serialised by
SQLite as JSON and parsed in C: `ALL_ROWS`), but making 10,000 `ImapMessage`s would cost
more than reading them, and a client that then fetches only its new mail looks at a few.
So the view keeps the rows as they came, and `MessageList` makes each message the first
time it is looked at, in place, so it is made once. The flag sets and zones of a folder
are few: `make_info` shares them between messages.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Iterator, Sequence
from typing import Any, Final, overload

from sansmail.storage.maildir._imapbase import ImapMessage
from sansmail.storage.maildir._imapmaildir import flags_of

__all__ = ["ALL_ROWS", "INFO_COLUMNS", "MessageList", "make_info"]

#: The index columns of an `ImapMessage`, in `make_info`'s order.
INFO_COLUMNS: Final = "uid, flags, keywords, internaldate, tz, size"
#: Every row at once as one JSON text: parsed in C, faster than a Python tuple per row.
ALL_ROWS: Final = (
    "SELECT json_group_array(json_array(uid, flags, keywords, internaldate, tz, size))"
    " FROM (SELECT uid, flags, keywords, internaldate, tz, size FROM messages ORDER BY uid)"
)


def make_info(row: Sequence[Any]) -> ImapMessage:
    """An `ImapMessage` from the index columns `INFO_COLUMNS`."""
    uid, flags, keywords, internaldate, tz, size = row
    return ImapMessage(
        uid=uid,
        flags=_flag_set(flags, keywords),
        internaldate=datetime.datetime.fromtimestamp(internaldate, _zone(tz)),
        size=size,
    )


# A folder has few distinct flag combinations and zones: share the objects (SELECT of a
# big folder builds one ImapMessage per message).
@functools.lru_cache(maxsize=1024)
def _flag_set(flags: int, keywords: str) -> frozenset[str]:
    return flags_of(flags, keywords.split())


@functools.lru_cache(maxsize=64)
def _zone(minutes: int) -> datetime.tzinfo:
    return datetime.timezone(datetime.timedelta(minutes=minutes)) if minutes else datetime.UTC


class MessageList(Sequence[ImapMessage]):
    """The view's list, whose entries are `ImapMessage`s or the index rows they are made
    from when first looked at (`make_info`); it shares the view's list, so the view's
    edits show through."""

    __slots__ = ("_items",)

    def __init__(self, items: list[ImapMessage | list[Any]]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> ImapMessage: ...

    @overload
    def __getitem__(self, index: slice) -> list[ImapMessage]: ...

    def __getitem__(self, index: int | slice) -> ImapMessage | list[ImapMessage]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._items)))]
        item = self._items[index]
        if type(item) is list:
            item = self._items[index] = make_info(item)
        return item

    def __iter__(self) -> Iterator[ImapMessage]:
        for index in range(len(self._items)):
            yield self[index]

    def __eq__(self, other: object) -> bool:
        # As the list it stands for.
        if isinstance(other, MessageList | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
