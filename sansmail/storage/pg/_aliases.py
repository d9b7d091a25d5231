"""`PgAliasSource`: the aliases every node delivers with, from the ``aliases_files``
table (`_schema_accounts`), and `import_aliases`, which puts them there.

Theory of operation
-------------------
Several nodes must expand an address the same way, so no node reads an aliases file of
its own: ``newaliases`` (`import_aliases`) reads the configured aliases file and every
include file it names, as the file store reads them (`AliasSource`, which reports the
same problems), and stores their texts in one transaction: position 0 the aliases file
under its path, then each include file under the path it is named by. Then it notifies
``aliases``. The grammar is the file's, parsed by the same pure parser
(`sansmail.mail.aliases`), so ``file:line`` in a problem still points at what the admin
edits, and an export is the files again.

An include file is read at ``newaliases`` time, not at delivery as Postfix reads it: a
node cannot read another node's files. Editing an include file therefore needs a
``newaliases`` here, as editing the aliases file does; an include named by nothing
imported is a problem at delivery ("not imported"), never a file read from this node's
disk.

Each node holds the parsed table in memory (delivery asks for it on the event loop):
read at construction, and again by `reload_if_changed` (blocking, a worker thread)
after `changed`, which the node's listener calls when ``aliases`` is notified or its
connection was lost, and by `catch_up` when a lookup made in a worker thread finds
that a change committed since the read (`_changes`). A read that fails keeps the table
in force and says so in `problems`, and the next `reload_if_changed` tries again.
"""

from __future__ import annotations

import errno
from typing import Final

import attrs

from sansmail.mail.aliases import AliasTable, parse_aliases
from sansmail.storage.aliasfile import AliasSource, IncludeWalk
from sansmail.storage.pg._changes import announce, read_serial
from sansmail.storage.pg._db import Database, DatabaseError

__all__ = ["ALIASES_KEY", "PgAliasSource", "import_aliases"]

#: The notification payload of a change to the aliases.
ALIASES_KEY: Final = "aliases"


@attrs.frozen
class _Loaded:
    notices: int
    #: The ``account_changes`` serial the read was tagged with (`_changes`).
    serial: int
    table: AliasTable
    includes: dict[str, str]
    problems: tuple[str, ...]


def import_aliases(db: Database, source: AliasSource) -> None:
    """Blocking: make what `source` read (an aliases file and its include files) the
    aliases of every node, and tell them. Problems are the caller's to report, as for
    the file: the entries without problems are used. `DatabaseError` on failure, with
    nothing changed."""
    text = source.text
    if source.path is None or text is None:
        raise ValueError("the aliases file could not be read: nothing to import")
    rows = [(str(source.path), 0, text)]
    rows += [
        (path, position, source.read_include(path))
        for position, path in enumerate(source.include_files, start=1)
    ]
    with db.transaction() as cur:
        cur.execute("DELETE FROM aliases_files")
        cur.executemany(
            "INSERT INTO aliases_files (path, position, text) VALUES (%s, %s, %s)", rows
        )
        announce(cur, ALIASES_KEY)


class PgAliasSource:
    """The aliases in the database `db` (see the module docstring); an `Aliases`.
    Blocking construction: reads them."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._notices = 1
        self._reloaded = False
        self._loaded = _Loaded(0, -1, AliasTable(source=""), {}, ())
        self._loaded = self._load()
        self._reloaded = False  # the first read is no reload

    @property
    def table(self) -> AliasTable:
        return self._loaded.table

    @property
    def problems(self) -> tuple[str, ...]:
        return self._loaded.problems

    @property
    def include_files(self) -> tuple[str, ...]:
        return tuple(self._loaded.includes)

    def read_include(self, path: str) -> str:
        """The text of include file `path` as imported; OSError (which `aliases.expand`
        reports) when it was not."""
        text = self._loaded.includes.get(path)
        if text is None:
            raise OSError(errno.ENOENT, "not imported (run newaliases)", path)
        return text

    def changed(self) -> None:
        """Mark the table stale (cheap, for the event loop)."""
        self._notices += 1

    @property
    def stale(self) -> bool:
        """Whether the table is older than the last `changed` (a re-read failed, or
        none ran yet)."""
        return self._loaded.notices != self._notices

    def reload_if_changed(self) -> bool:
        """Blocking: read the aliases again if `changed` was called since the last read;
        True when they were read since the last call (and `problems` may be new)."""
        if self.stale:
            self._loaded = self._load()
        reloaded, self._reloaded = self._reloaded, False
        return reloaded

    def catch_up(self, serial: int) -> bool:
        """Blocking: read the aliases again if the database's `serial` is not the one the
        table was read at (`_changes`: a change whose notice has not arrived yet); True
        when they were."""
        if serial == self._loaded.serial:
            return False
        self.changed()
        self._loaded = self._load()
        return True

    def _load(self) -> _Loaded:
        notices = self._notices  # before the query: a change meanwhile leaves us stale
        previous = self._loaded
        try:
            with self._db.transaction() as cur:
                serial = read_serial(cur, ALIASES_KEY)
                cur.execute("SELECT path, text FROM aliases_files ORDER BY position")
                rows = [(str(path), str(text)) for path, text in cur.fetchall()]
        except DatabaseError as exc:
            problem = f"aliases: {exc}"
            if previous.table.entries:
                problem += "; the aliases read before stay in force"
            # Stale still: tried again at the next reload_if_changed.
            return attrs.evolve(previous, problems=(problem,))
        self._reloaded = True
        if not rows:
            return _Loaded(notices, serial, AliasTable(source=""), {}, ())
        (name, text), stored = rows[0], dict(rows[1:])

        def read(path: str) -> tuple[str, None]:
            found = stored.get(path)
            if found is None:
                raise OSError(errno.ENOENT, "not imported (run newaliases)", path)
            return found, None

        table = parse_aliases(text, source=name)
        walk = IncludeWalk(read)
        walk.table(table)
        problems = (*map(str, table.problems), *walk.problems)
        return _Loaded(notices, serial, table, walk.includes, problems)
