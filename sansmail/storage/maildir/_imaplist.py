"""A folder's message list, one copy per process: `FolderList` and the registry of them.

Theory of operation
-------------------
A view reports a folder as the index held it at some modification sequence: after each
sync its list of (UID, flags, INTERNALDATE, size) is exactly the index's table at the
modseq the view reached (UIDs only grow, and every transaction that changes those columns
takes a modseq of its own; see `_imapindex`). So the list at one (index, UIDVALIDITY,
modseq) is the same for every view that reached it, and one process keeps it once, however
many sessions have the folder selected: an idle client holding a 10,000-message INBOX open
costs its session a reference, not a table.

`FolderList` is that list, immutable and compact: one `array` per column (UIDs, an index
into the list's few distinct flag sets, INTERNALDATE seconds and zone minutes, sizes),
26 octets a message. An `ImapMessage` is made the first time something looks at a
message, and kept in the list, so every session of the process shares it too; a client
that fetches only its new mail makes a few.

The registry (`shared`, `share`) maps an index file to the newest list made of it in this
process, weakly: when the last view holding a list drops it (it moved on, or closed), the
list and its messages are freed. A view that SELECTs takes the registered list when it is
the index's current state and reads the table (one query, serialised by SQLite as JSON
and parsed in C) only when it is not. A view whose sync finds changes makes the next list
from its own by the changes alone (`FolderList.derive`: array slices), and takes the
registered one instead when another session got to the same modseq first and the two
agree on every UID.

Sessions of one process run in different threads; the registry and a list's cache of
messages are used without a lock because each of their steps is one dictionary or list
operation (atomic under the GIL), and a race costs at worst one list or message made
twice, both right.
"""

from __future__ import annotations

import bisect
import datetime
import functools
import json
import sqlite3
import weakref
from array import array
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, overload

from sansmail.storage.maildir._imapbase import ImapMessage
from sansmail.storage.maildir._imapmaildir import flags_of

__all__ = [
    "INFO_COLUMNS",
    "FolderList",
    "flag_set",
    "make_info",
    "registered",
    "share",
    "shared",
]

#: The index columns of an `ImapMessage`, in `make_info`'s order.
INFO_COLUMNS: Final = "uid, flags, keywords, internaldate, tz, size"
#: Every column of every row as one JSON text of six arrays: parsed in C, and straight
#: into arrays, with no Python object per row.
_ALL_COLUMNS: Final = (
    "SELECT json_array(json_group_array(uid), json_group_array(flags),"
    " json_group_array(keywords), json_group_array(internaldate), json_group_array(tz),"
    " json_group_array(size))"
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


# A folder has few distinct flag combinations and zones: share the objects.
@functools.lru_cache(maxsize=1024)
def _flag_set(flags: int, keywords: str) -> frozenset[str]:
    return flags_of(flags, keywords.split())


def flag_set(flags: int, keywords: str) -> frozenset[str]:
    """The flags of the index columns `flags` and `keywords` (shared objects)."""
    return _flag_set(flags, keywords)


@functools.lru_cache(maxsize=64)
def _zone(minutes: int) -> datetime.tzinfo:
    return datetime.timezone(datetime.timedelta(minutes=minutes)) if minutes else datetime.UTC


def _tz_minutes(moment: datetime.datetime) -> int:
    offset = moment.utcoffset()
    return int(offset.total_seconds() // 60) if offset else 0


class FolderList(Sequence[ImapMessage]):
    """A folder's messages at one modseq, UIDs ascending (``list[i]`` is sequence number
    i+1); immutable, shared by the views that reached that state (see the module
    docstring). `uids` is an ``array('I')``."""

    __slots__ = (
        "__weakref__",
        "_dates",
        "_flag_ids",
        "_flag_sets",
        "_made",
        "_sizes",
        "_zones",
        "modseq",
        "uids",
        "uidvalidity",
    )

    def __init__(
        self,
        uidvalidity: int,
        modseq: int,
        columns: tuple[array[int], array[int], array[int], array[int], array[int]],
        flag_sets: list[frozenset[str]],
        made: list[ImapMessage | None] | None = None,
    ) -> None:
        self.uidvalidity = uidvalidity
        self.modseq = modseq
        self.uids, self._flag_ids, self._dates, self._zones, self._sizes = columns
        self._flag_sets = flag_sets
        self._made = made

    @classmethod
    def empty(cls) -> FolderList:
        return cls(0, 0, _columns(), [])

    @classmethod
    def read(cls, conn: sqlite3.Connection, uidvalidity: int, modseq: int) -> FolderList:
        """The whole table, in `conn`'s transaction (whose state is `modseq`)."""
        (text,) = conn.execute(_ALL_COLUMNS).fetchone()
        uids, flags, keywords, dates, zones, sizes = json.loads(text)
        ids: dict[tuple[int, str], int] = {}
        flag_ids = array(
            "I", [ids.setdefault(key, len(ids)) for key in zip(flags, keywords, strict=True)]
        )
        return cls(
            uidvalidity,
            modseq,
            (array("I", uids), flag_ids, array("q", dates), array("h", zones), array("q", sizes)),
            [_flag_set(*key) for key in ids],
        )

    def __len__(self) -> int:
        return len(self.uids)

    @overload
    def __getitem__(self, index: int) -> ImapMessage: ...

    @overload
    def __getitem__(self, index: slice) -> list[ImapMessage]: ...

    def __getitem__(self, index: int | slice) -> ImapMessage | list[ImapMessage]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self.uids)))]
        made = self._made
        if made is None:
            made = self._made = [None] * len(self.uids)
        message = made[index]
        if message is None:
            if index < 0:
                index += len(self.uids)
            message = made[index] = self._make(index)
        return message

    def _make(self, index: int) -> ImapMessage:
        return ImapMessage(
            uid=self.uids[index],
            flags=self._flag_sets[self._flag_ids[index]],
            internaldate=datetime.datetime.fromtimestamp(
                self._dates[index], _zone(self._zones[index])
            ),
            size=self._sizes[index],
        )

    def __iter__(self) -> Iterator[ImapMessage]:
        for index in range(len(self.uids)):
            yield self[index]

    def __eq__(self, other: object) -> bool:
        # As the list it stands for.
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def flags(self, pos: int) -> frozenset[str]:
        """The flags of the message at `pos`, without making it."""
        return self._flag_sets[self._flag_ids[pos]]

    def position(self, uid: int) -> int | None:
        """Where `uid` is (0-based), or None."""
        pos = bisect.bisect_left(self.uids, uid)
        return pos if pos < len(self.uids) and self.uids[pos] == uid else None

    def derive(
        self,
        modseq: int,
        *,
        gone: Sequence[int],
        flags: Mapping[int, frozenset[str]],
        added: Sequence[ImapMessage],
        keep_made: bool = True,
    ) -> FolderList:
        """The list at `modseq`: this one without the messages at positions `gone`
        (ascending), with the flags of `flags` (UID -> flags) and `added` at the end
        (UIDs above all here). `keep_made`: carry over the messages made already."""
        old = (self.uids, self._flag_ids, self._dates, self._zones, self._sizes)
        if gone:
            spans, start = [], 0
            for pos in gone:
                spans.append((start, pos))
                start = pos + 1
            spans.append((start, len(self.uids)))
            columns = _columns()
            for new, column in zip(columns, old, strict=True):
                for a, b in spans:
                    new.extend(column[a:b])
        else:
            spans = [(0, len(self.uids))]
            columns = tuple(array(c.typecode, c) for c in old)  # type: ignore[assignment]
        made: list[ImapMessage | None] | None = None
        if keep_made and self._made is not None:
            made = []
            for a, b in spans:
                made += self._made[a:b]
        sets = list(self._flag_sets)
        ids = {s: i for i, s in enumerate(sets)}

        def flag_id(value: frozenset[str]) -> int:
            got = ids.get(value)
            if got is None:
                got = ids[value] = len(sets)
                sets.append(value)
            return got

        uids, flag_ids, dates, zones, sizes = columns
        for uid, value in flags.items():
            pos = bisect.bisect_left(uids, uid)
            if pos < len(uids) and uids[pos] == uid:
                flag_ids[pos] = flag_id(value)
                if made is not None:
                    made[pos] = None
        for message in added:
            uids.append(message.uid)
            flag_ids.append(flag_id(message.flags))
            dates.append(int(message.internaldate.timestamp()))
            zones.append(_tz_minutes(message.internaldate))
            sizes.append(message.size)
            if made is not None:
                made.append(message)
        return FolderList(self.uidvalidity, modseq, columns, sets, made)


def _columns() -> tuple[array[int], array[int], array[int], array[int], array[int]]:
    return array("I"), array("I"), array("q"), array("h"), array("q")


# Index file -> the newest list of it made in this process, while a view holds it.
_SHARED: Final[weakref.WeakValueDictionary[str, FolderList]] = weakref.WeakValueDictionary()


def shared(key: str, uidvalidity: int, modseq: int) -> FolderList | None:
    """The registered list of index `key` at (`uidvalidity`, `modseq`), if there is one."""
    got = _SHARED.get(key)
    if got is not None and got.uidvalidity == uidvalidity and got.modseq == modseq:
        return got
    return None


def share(key: str, made: FolderList) -> FolderList:
    """Register `made` as index `key`'s list unless a newer one is (a slower session may
    reach an older state after a faster one reached a newer); returns `made`."""
    got = _SHARED.get(key)
    if got is None or got.uidvalidity != made.uidvalidity or got.modseq < made.modseq:
        _SHARED[key] = made
    return made


def registered(key: str) -> FolderList | None:
    """The list of index `key` the process holds, if any (for tests and statistics)."""
    return _SHARED.get(key)
