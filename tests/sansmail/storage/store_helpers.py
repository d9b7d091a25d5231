"""The mail store on either backend, for the tests that do not look at Maildir files:
the `backend` fixture (params "maildir" and "postgresql") gives a `Backend` with its
store, a second store on the same storage (another node), and what each folder holds."""

from __future__ import annotations

import itertools
import pathlib
from collections.abc import Callable

import attrs
import pytest

from sansmail.mail.address import MailboxId
from sansmail.storage.maildir import MaildirMaildrops, MaildirStore, MaildropSource, MailStore
from sansmail.storage.maildir._imapmaildir import split_name, to_crlf
from sansmail.storage.maildir._imapnames import folder_dir
from sansmail.storage.maildir._mailbox import _listed_snapshot
from sansmail.storage.pg import Database
from sansmail.storage.pg._delivery import PgMailStore
from sansmail.storage.pg._mailrows import mailbox_key

BACKENDS = ("maildir", "postgresql")


def ticking(offset: int = 0, step: int = 1_000_000) -> Callable[[], int]:
    """A clock that moves `step` ns per reading, so Maildir names sort by arrival;
    stores with another `offset` (in µs, under 1000) never make the same name."""
    counter = itertools.count(1_700_000_000 * 1_000_000_000 + offset * 1000, step)
    return lambda: next(counter)


@attrs.define
class Backend:
    """One backend's store and a way to look at what it holds."""

    name: str
    store: MailStore
    maildrops: MaildropSource
    #: Makes another store on the same storage (a second node, or a second process).
    make: Callable[..., MailStore]
    tmp_path: pathlib.Path
    db: Database | None = None

    @property
    def pg(self) -> bool:
        return self.name == "postgresql"

    def messages(self, mailbox: MailboxId, folder: str = "INBOX") -> list[bytes]:
        """What `folder` of `mailbox` holds, each message as sent (CRLF), in arrival
        order."""
        return [content for content, _flags in self.rows(mailbox, folder)]

    def rows(self, mailbox: MailboxId, folder: str = "INBOX") -> list[tuple[bytes, frozenset[str]]]:
        """(content as sent, flags) of each message of `folder`, in arrival order."""
        if self.db is not None:
            with self.db.transaction() as cur:
                cur.execute(
                    "SELECT c.content, m.flags FROM mail_messages m"
                    " JOIN mail_folders f ON f.id = m.folder_id"
                    " JOIN mail_contents c ON c.digest = m.digest"
                    " WHERE f.mailbox = %s AND f.name = %s ORDER BY m.uid",
                    (mailbox_key(mailbox), folder),
                )
                return [(bytes(c), frozenset(flags)) for c, flags in cur.fetchall()]
        assert isinstance(self.store, MaildirStore)
        root = pathlib.Path(folder_dir(self.store.maildir(mailbox), folder))
        if not (root / "new").is_dir():
            return []
        out = []
        letters = {"S": "\\Seen", "F": "\\Flagged", "R": "\\Answered", "T": "\\Deleted"}
        for info in _listed_snapshot(str(root)):
            data = (root / info.folder / info.name).read_bytes()
            _base, flags = split_name(info.name)
            out.append((to_crlf(data), frozenset(letters[f] for f in flags or "" if f in letters)))
        return out

    def usage(self, mailbox: MailboxId) -> int:
        """The octets the store counts against `mailbox`'s limit (needs a limit)."""
        found = self.store.storage(mailbox)
        assert found is not None
        return found[0]


@pytest.fixture(name="backend", params=BACKENDS)
def backend_fixture(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Backend:
    """The mail store on each backend in turn (the database one from `pg_db`)."""
    if request.param == "maildir":
        offsets = itertools.count()

        def make_maildir(**kw: object) -> MailStore:
            clock = ticking(next(offsets))
            return MaildirStore(tmp_path, hostname="mx.example.test", clock=clock, **kw)  # type: ignore[arg-type]

        store = make_maildir()
        assert isinstance(store, MaildirStore)
        return Backend("maildir", store, MaildirMaildrops(store), make_maildir, tmp_path)
    db: Database = request.getfixturevalue("pg_db")

    def make_pg(**kw: object) -> MailStore:
        return PgMailStore(db, hostname="mx.example.test", **kw)  # type: ignore[arg-type]

    store = make_pg()
    assert isinstance(store, PgMailStore)
    return Backend("postgresql", store, store, make_pg, tmp_path, db)
