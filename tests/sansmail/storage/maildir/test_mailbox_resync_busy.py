"""``mailbox resync`` meeting an index it cannot read for a reason other than damage
(another process holding it locked past the wait, a full disk, an I/O error): the error
is the answer, and the index, its UIDVALIDITY and its UIDs stay as they were. Taking it
for damage would delete a sound index and renumber the folder."""

from __future__ import annotations

import pathlib
import sqlite3
from typing import Any

import pytest
from imapstore_helpers import ALICE, account, deliver, message, root, store

from sansmail.storage.maildir._imapindex import INDEX_NAME


def failing(errorname: str) -> type[sqlite3.Connection]:
    class Failing(sqlite3.Connection):
        """Refuses the integrity check as SQLite would with `errorname`."""

        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if sql.startswith("PRAGMA integrity_check"):
                exc = sqlite3.OperationalError(f"{errorname} (as the test says)")
                exc.sqlite_errorname = errorname
                raise exc
            return super().execute(sql, *args)

    return Failing


@pytest.mark.parametrize("errorname", ["SQLITE_BUSY", "SQLITE_FULL", "SQLITE_IOERR_READ"])
def test_an_index_not_read_for_another_reason_than_damage_stays(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, errorname: str
) -> None:
    for n in range(3):
        deliver(tmp_path, message(n))
    before = account(tmp_path).status("INBOX", ["UIDVALIDITY", "UIDNEXT"])
    inode = (root(tmp_path) / INDEX_NAME).stat().st_ino
    real = sqlite3.connect
    factory = failing(errorname)

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real(*args, **kwargs, factory=factory)

    with monkeypatch.context() as patch:
        patch.setattr(sqlite3, "connect", connect)
        with pytest.raises(sqlite3.OperationalError, match=errorname):
            store(tmp_path).account(ALICE, open_inbox=False).resync("INBOX")
    assert (root(tmp_path) / INDEX_NAME).stat().st_ino == inode
    assert account(tmp_path).status("INBOX", ["UIDVALIDITY", "UIDNEXT"]) == before
