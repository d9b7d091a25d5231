"""``sansmail-trio mailbox list|status|resync|expunge`` on the PostgreSQL backend: they
work on the database every node reads, agree with IMAP STATUS, and an expunge by date is
heard by a session of another node (another `PgImapStore` on the same database)."""

from __future__ import annotations

import datetime
import io
import json
import pathlib
import sys
from collections.abc import Iterator

import pytest

from sansmail.mail.address import MailboxId, parse_address
from sansmail.storage.maildir import STATUS_ITEMS
from sansmail.storage.pg import Database
from sansmail.storage.pg._imapstore import PgImapStore
from sansmail.storage.pg._users import PgUserStore
from sansmail_trio._cli import main

ALICE = "alice@example.test"
ALICE_BOX = MailboxId(domain="example.test", local="alice")
OLD = datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
NEW = datetime.datetime(2026, 6, 1, 12, 0, 0, tzinfo=datetime.UTC)


def _config(tmp_path: pathlib.Path, dsn: str) -> str:
    path = tmp_path / "sansmail.toml"
    path.write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        f'[listen]\n[storage]\nbackend = "postgresql"\ndsn = "{dsn}"\n'
    )
    return str(path)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    sys.stdin = io.StringIO("")
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


@pytest.fixture
def filled(pg_db: Database) -> PgImapStore:
    PgUserStore(pg_db).add(parse_address(ALICE), "pw")
    store = PgImapStore(pg_db, hostname="mx.example.test")
    account = store.account(ALICE_BOX)
    account.create("Lists")
    for n, when in enumerate([OLD, OLD, NEW]):
        message = b"Subject: %d\r\n\r\nbody\r\n" % n
        account.append("Lists", message, flags=["\\Seen"] if n == 0 else [], internaldate=when)
    account.close()
    return store


@pytest.fixture
def other_db(pg_dsn: str) -> Iterator[Database]:
    """The database as another node opens it."""
    db = Database(pg_dsn)
    yield db
    db.close()


def test_list_and_status_agree_with_imap_status(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, pg_dsn: str, filled: PgImapStore
) -> None:
    conf = _config(tmp_path, pg_dsn)
    status, out, _err = _run(capsys, "mailbox", "list", ALICE, "--json", "--config", conf)
    assert status == 0
    names = [folder["name"] for folder in json.loads(out)]
    assert "INBOX" in names
    assert "Lists" in names
    status, out, _err = _run(
        capsys, "mailbox", "status", ALICE, "Lists", "--json", "--config", conf
    )
    assert status == 0
    [shown] = json.loads(out)
    imap = filled.account(ALICE_BOX).status("Lists", STATUS_ITEMS)
    assert shown["messages"] == imap["MESSAGES"] == 3
    assert shown["unseen"] == imap["UNSEEN"] == 2
    assert shown["uidvalidity"] == imap["UIDVALIDITY"]
    assert shown["uidnext"] == imap["UIDNEXT"] == 4
    assert shown["vsize"] == imap["SIZE"]
    assert shown["highestmodseq"] == imap["HIGHESTMODSEQ"]


def test_resync_checks(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, pg_dsn: str, filled: PgImapStore
) -> None:
    conf = _config(tmp_path, pg_dsn)
    status, out, _err = _run(capsys, "mailbox", "resync", ALICE, "Lists", "--config", conf)
    assert status == 0
    assert out.startswith("Lists: checked: 3 messages, UIDVALIDITY ")
    assert out.rstrip().endswith(" kept")


def test_expunge_before_is_heard_by_another_node(
    capsys: pytest.CaptureFixture[str],
    tmp_path: pathlib.Path,
    pg_dsn: str,
    other_db: Database,
    filled: PgImapStore,
) -> None:
    conf = _config(tmp_path, pg_dsn)
    other_node = PgImapStore(other_db, hostname="mx2.example.test")
    view = other_node.account(ALICE_BOX).select("Lists")
    assert list(view.uids) == [1, 2, 3]
    status, out, _err = _run(
        capsys, "mailbox", "expunge", ALICE, "Lists", "--before", "2024-01-01", "--config", conf
    )
    assert status == 0, out
    assert out.startswith(f"expunged 2 messages from Lists of {ALICE}")
    changes = view.sync()
    assert changes.expunged_uids == (1, 2)
    assert list(view.uids) == [3]
    status, out, err = _run(
        capsys, "mailbox", "expunge", ALICE, "Nowhere", "--before", "30d", "--config", conf
    )
    assert status == 1
    assert "Nowhere" in err
    view.close()
