"""Small pieces the PostgreSQL IMAP store's account and views share: short reads outside a
transaction, the mapping of database failures to an IMAP answer, flag spelling.

A read of one statement needs no transaction of its own (a statement sees one snapshot),
so `reading` runs it in autocommit mode: one round trip instead of BEGIN, the query and
COMMIT. Writers use `Database.transaction`.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable, Collection, Iterable
from typing import Concatenate, Final, ParamSpec, TypeVar

import psycopg

from sansmail.storage.maildir._imapbase import (
    ImapMessage,
    StoreUnavailableError,
    TooManyKeywordsError,
)
from sansmail.storage.maildir._imapmaildir import bits_of, flags_of
from sansmail.storage.pg._db import DatabaseError, first_line

__all__ = [
    "KEYWORDS_MAX",
    "allocate_keywords",
    "canonical_keywords",
    "flag_set",
    "guarded",
    "make_message",
    "split_flags",
    "zone",
]

#: Keywords a folder can define: as many as a Maildir folder's letters a-z, so that a
#: folder moves between the backends (export, import) without losing one.
KEYWORDS_MAX: Final = 26

_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S")


def guarded(
    method: Callable[Concatenate[_S, _P], _R],
) -> Callable[Concatenate[_S, _P], _R]:
    """A database failure leaves a store method as `StoreUnavailableError`, which the
    session answers with NO [UNAVAILABLE] (RFC 5530): the command may work later, and
    the session goes on."""

    @functools.wraps(method)
    def wrapper(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except DatabaseError as exc:
            raise StoreUnavailableError(str(exc)) from exc
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"database: {first_line(exc)}") from exc

    return wrapper


def split_flags(flags: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    """(system flags spelt canonically, keywords) of IMAP `flags`; ``\\Recent`` dropped,
    an unknown system flag a ValueError (as the Maildir store)."""
    bits, keywords = bits_of(flags)
    return flags_of(bits, ()), keywords


def allocate_keywords(
    table: list[str], names: Collection[str]
) -> tuple[dict[str, str], list[str] | None]:
    """Each of `names` spelt as folder keyword table `table` spells it (keywords match
    without regard to case), new ones added; and the new table, None if unchanged.
    `TooManyKeywordsError` past `KEYWORDS_MAX`."""
    known = {k.lower(): k for k in table}
    out: dict[str, str] = {}
    added: list[str] = []
    for name in sorted(names):
        spelled = known.get(name.lower())
        if spelled is None:
            if len(table) + len(added) >= KEYWORDS_MAX:
                raise TooManyKeywordsError(f"this folder holds {KEYWORDS_MAX} keywords already")
            spelled = known[name.lower()] = name
            added.append(name)
        out[name] = spelled
    return out, ([*table, *added] if added else None)


def canonical_keywords(table: Iterable[str], names: Iterable[str]) -> frozenset[str]:
    """`names` spelt as the folder spells them; unknown ones are left out."""
    known = {k.lower(): k for k in table}
    return frozenset(known[n.lower()] for n in names if n.lower() in known)


# A folder has few distinct flag combinations and zones: share the objects.
@functools.lru_cache(maxsize=4096)
def _flag_set(flags: tuple[str, ...]) -> frozenset[str]:
    return frozenset(flags)


def flag_set(flags: Iterable[str]) -> frozenset[str]:
    """The flags of a ``flags`` column (shared objects)."""
    return _flag_set(tuple(flags))


@functools.lru_cache(maxsize=64)
def zone(minutes: int) -> datetime.tzinfo:
    """The zone of a ``zone`` column (minutes east of UTC)."""
    return datetime.timezone(datetime.timedelta(minutes=minutes)) if minutes else datetime.UTC


def make_message(
    uid: int, flags: Iterable[str], internaldate: datetime.datetime, minutes: int, size: int
) -> ImapMessage:
    """An `ImapMessage` from the columns uid, flags, internaldate, zone, size."""
    return ImapMessage(
        uid=int(uid),
        flags=flag_set(flags),
        internaldate=internaldate.astimezone(zone(minutes)),
        size=int(size),
    )
