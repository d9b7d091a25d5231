"""The search tables of a folder's index: what SEARCH compares, kept so that it reads no file.

Theory of operation
-------------------
SEARCH (RFC 9051 §6.4.4) compares case-folded substrings: of a header field's decoded
value (FROM, SUBJECT, HEADER ...), of the texts of a message (BODY: its text parts'
decoded bodies; TEXT: those and every header field, as "name: value"), and the day of
its Date: field (SENT*). The session works out what a message says (`SearchData`) with
the same code that answers without an index; this module only keeps it and finds
needles in it, with these tables in the folder's index:

- ``fields`` (name, uid, n, value): the top-level header fields, the name in lower case,
  the value decoded and case-folded; a needle is found with ``instr``, so the answer is
  exactly Python's ``needle in value``;
- ``searched`` (uid, sent, texts): the fields of these messages are kept; ``sent`` the
  day of their Date: field (None when unreadable), ``texts`` 1 when their texts are;
- ``texts`` (rowid = uid, headers, bodies): each column is its entries, each after a
  ``TEXT_SEPARATOR``. A needle without that character is in some entry exactly when it
  is in the column; a needle with it cannot be answered here (`find_in_texts` says
  None and the session reads the files). The empty needle is in any column that has an
  entry, and a column has one exactly when it is not empty. A NUL in an entry is kept
  as that separator too (SQLite's tokenizers and GLOB stop at a NUL; no IMAP string
  holds one, RFC 9051 §4.3).

``texts`` is an FTS5 table with the trigram tokenizer where this SQLite has them
(``detail=none``: the index says which rows hold every trigram of a needle, and SQLite
checks the candidates' content): GLOB ``*needle*`` is then answered from the index for a
needle of three characters or more without GLOB's special characters, and everything
else by scanning the content with ``instr``, as a plain table (the fallback where FTS5
or its trigram tokenizer is missing) always is. The trigram tokenizer runs with
``case_sensitive 1``, so it folds nothing itself: content and needles are folded by
Python's ``str.casefold``, as the reference evaluation does.

All of it is a cache of the Maildir's content: rows go with their message (`forget`, in
the expunge's transaction), an index rebuilt from scratch has none, and the session
fills what is missing when a SEARCH needs it. Everything here runs inside the caller's
transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Final

from sansmail.storage.maildir._imapbase import SearchData

__all__ = [
    "SEARCH_TABLES",
    "TEXT_SEPARATOR",
    "create_texts",
    "field_values",
    "find_in_header",
    "find_in_texts",
    "forget",
    "keep",
    "missing",
    "sent_days",
]

#: Precedes each entry of a ``texts`` column: a Unicode noncharacter, which no mail
#: text means and no client sends.
TEXT_SEPARATOR: Final = "\uffff"

SEARCH_TABLES: Final = (
    # Keyed by name first: a header key reads the rows of one field name only.
    """CREATE TABLE IF NOT EXISTS fields (
        name TEXT NOT NULL,
        uid INTEGER NOT NULL,
        n INTEGER NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (name, uid, n)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS fields_uid ON fields (uid)",
    """CREATE TABLE IF NOT EXISTS searched (
        uid INTEGER PRIMARY KEY,
        sent INTEGER,
        texts INTEGER NOT NULL)""",
)
_FTS: Final = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS texts USING fts5"
    "(headers, bodies, tokenize = 'trigram case_sensitive 1', detail = none)"
)
_PLAIN: Final = (
    "CREATE TABLE IF NOT EXISTS texts (uid INTEGER PRIMARY KEY, headers TEXT, bodies TEXT)"
)
_GLOB_SPECIALS: Final = frozenset("*?[")
_TRIGRAM: Final = 3


def create_texts(conn: sqlite3.Connection) -> None:
    """Create ``texts``: FTS5 with trigrams where this SQLite has them, else plain."""
    try:
        conn.execute("SAVEPOINT texts")
        conn.execute(_FTS)
        conn.execute("RELEASE texts")
    except sqlite3.OperationalError:
        # "no such module: fts5" or "no such tokenizer: trigram" (before SQLite 3.34).
        conn.execute("ROLLBACK TO texts")
        conn.execute("RELEASE texts")
        conn.execute(_PLAIN)


def _indexed(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'texts'").fetchone()
    return row is not None and "fts5" in row[0].lower()


def missing(conn: sqlite3.Connection, uids: Iterable[int], *, texts: bool) -> list[int]:
    """Which of `uids` (that exist) have no search data kept, or no texts if `texts`."""
    condition = "s.uid IS NULL OR s.texts = 0" if texts else "s.uid IS NULL"
    return [
        uid
        for (uid,) in conn.execute(
            "SELECT m.uid FROM messages AS m LEFT JOIN searched AS s USING (uid)"  # noqa: S608
            f" WHERE m.uid IN (SELECT value FROM json_each(?)) AND ({condition}) ORDER BY m.uid",
            (json.dumps(sorted(set(uids))),),
        )
    ]


def keep(conn: sqlite3.Connection, values: Mapping[int, SearchData]) -> None:
    """Keep `values` for the messages that still exist (texts only where given)."""
    present = {
        uid
        for (uid,) in conn.execute(
            "SELECT uid FROM messages WHERE uid IN (SELECT value FROM json_each(?))",
            (json.dumps(sorted(values)),),
        )
    }
    kept = {uid: data for uid, data in values.items() if uid in present}
    if not kept:
        return
    gone = [(uid,) for uid in kept]
    conn.executemany("DELETE FROM fields WHERE uid = ?", gone)
    conn.executemany(
        "INSERT INTO fields (name, uid, n, value) VALUES (?, ?, ?, ?)",
        [
            (name, uid, n, value)
            for uid, data in kept.items()
            for n, (name, value) in enumerate(data.fields)
        ],
    )
    conn.executemany(
        "INSERT INTO searched (uid, sent, texts) VALUES (?, ?, ?) ON CONFLICT (uid)"
        " DO UPDATE SET sent = excluded.sent, texts = max(texts, excluded.texts)",
        [(uid, data.sent, int(data.bodies is not None)) for uid, data in kept.items()],
    )
    with_texts = [(uid, data) for uid, data in kept.items() if data.bodies is not None]
    conn.executemany("DELETE FROM texts WHERE rowid = ?", [(uid,) for uid, _ in with_texts])
    conn.executemany(
        "INSERT INTO texts (rowid, headers, bodies) VALUES (?, ?, ?)",
        [
            (uid, _column(data.headers or ()), _column(data.bodies or ()))
            for uid, data in with_texts
        ],
    )


def _column(entries: Iterable[str]) -> str:
    # SQLite's tokenizers and GLOB read text as C strings, ending at a NUL: one stands
    # in for it that no needle this table answers holds (IMAP strings hold no NUL).
    return "".join(TEXT_SEPARATOR + entry.replace("\0", TEXT_SEPARATOR) for entry in entries)


def forget(conn: sqlite3.Connection, uids: Iterable[int]) -> None:
    """Drop what is kept of `uids` (expunged)."""
    rows = [(uid,) for uid in uids]
    conn.executemany("DELETE FROM fields WHERE uid = ?", rows)
    conn.executemany("DELETE FROM searched WHERE uid = ?", rows)
    conn.executemany("DELETE FROM texts WHERE rowid = ?", rows)


def find_in_header(conn: sqlite3.Connection, name: str, needle: str) -> set[int]:
    """UIDs of the messages with a top-level field `name` (lower case) whose kept value
    holds `needle` (case-folded)."""
    return {
        uid
        for (uid,) in conn.execute(
            "SELECT DISTINCT uid FROM fields WHERE name = ? AND instr(value, ?) > 0",
            (name, needle),
        )
    }


def find_in_texts(conn: sqlite3.Connection, needle: str, *, bodies_only: bool) -> set[int] | None:
    """UIDs of the messages whose kept texts (bodies only, for BODY) hold `needle`
    (case-folded); None when the needle holds `TEXT_SEPARATOR`."""
    if TEXT_SEPARATOR in needle:
        return None
    columns = ("bodies",) if bodies_only else ("headers", "bodies")
    if not needle:
        test, argument = "{} != ''", None
    elif len(needle) >= _TRIGRAM and not _GLOB_SPECIALS.intersection(needle) and _indexed(conn):
        test, argument = "{} GLOB ?", f"*{needle}*"
    else:
        test, argument = "instr({}, ?) > 0", needle
    found: set[int] = set()
    for column in columns:
        # One query per column: an OR of the two would not use the trigram index.
        query = "SELECT rowid FROM texts WHERE " + test.format(column)  # noqa: S608
        found.update(uid for (uid,) in conn.execute(query, () if argument is None else (argument,)))
    return found


def field_values(conn: sqlite3.Connection, names: Iterable[str]) -> dict[int, dict[str, str]]:
    """UID -> {name: the kept value of the first field of that name} for the fields
    `names` (lower case): what SORT and THREAD compare, without reading a file."""
    out: dict[int, dict[str, str]] = {}
    for name in sorted(set(names)):
        # One name at a time, the primary key read backwards (no sort): descending n, so the
        # first field of the name is written last and stays.
        for uid, value in conn.execute(
            "SELECT uid, value FROM fields WHERE name = ? ORDER BY uid DESC, n DESC", (name,)
        ):
            out.setdefault(uid, {})[name] = value
    return out


def sent_days(conn: sqlite3.Connection) -> dict[int, int]:
    """UID -> the day (proleptic ordinal) of its Date: field, where it could be read."""
    return dict(conn.execute("SELECT uid, sent FROM searched WHERE sent IS NOT NULL"))
