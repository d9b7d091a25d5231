"""The two IMAP store backends for the store and session tests: the tests that do not
look at Maildir files take the `where` fixture (a data_dir for Maildir, a `PgWhere` for
PostgreSQL, by the parametrized `backend` fixture) instead of ``tmp_path``, and make
their store and deliveries with `make_imap_store` and `deliver_to`."""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from sansmail.mail.address import MailboxId
from sansmail.storage.maildir import MaildirStore
from sansmail.storage.maildir._imapaccount import MaildirImapStore
from sansmail.storage.maildir._imapbase import ImapStore
from sansmail.storage.maildir._imapmaildir import to_crlf
from sansmail.storage.pg import _mailrows
from sansmail.storage.pg._db import Database
from sansmail.storage.pg._imapstore import PgImapStore

BACKENDS = ["maildir", "postgresql"]


@attrs.frozen
class PgWhere:
    """Where the PostgreSQL backend keeps the accounts: a database (`pg_db`)."""

    db: Database


Where = pathlib.Path | PgWhere


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Which store a test runs on."""
    return str(request.param)


@pytest.fixture
def where(backend: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> Where:
    """A data_dir (Maildir) or a database (PostgreSQL) for the store and deliveries."""
    if backend == "maildir":
        return tmp_path
    return PgWhere(request.getfixturevalue("pg_db"))


def make_imap_store(
    where: Where, *, hostname: str, clock: Callable[[], int] | None = None, **kwargs: Any
) -> ImapStore:
    """The IMAP store of `where`'s backend."""
    if clock is not None:
        kwargs["clock"] = clock
    if isinstance(where, PgWhere):
        return PgImapStore(where.db, hostname=hostname, **kwargs)
    return MaildirImapStore(where, hostname=hostname, **kwargs)


def deliver_to(where: Where, mailbox: MailboxId, content: bytes, *, hostname: str) -> str:
    """Deliver `content` to `mailbox`'s INBOX as the SMTP server does; the file's name
    in new/ (Maildir) or "" (PostgreSQL)."""
    if isinstance(where, PgWhere):
        data = to_crlf(content)
        key = _mailrows.mailbox_key(mailbox)
        with where.db.transaction() as cur:
            digest = _mailrows.store_content(cur, data)
            folder = _mailrows.make_folder(cur, key, "INBOX")
            _mailrows.add_message(
                cur,
                folder,
                key,
                digest,
                len(data),
                internaldate=datetime.datetime.now(datetime.UTC).replace(microsecond=0),
            )
        return ""
    delivery = MaildirStore(where, hostname=hostname).begin([mailbox], prefix=b"")
    delivery.write(content)
    (name,) = delivery.commit()
    return name
