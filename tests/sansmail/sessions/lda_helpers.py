"""A server's storage for `LocalDelivery` tests: a real Maildir IMAP store, queue and
Sieve script store in a tmp dir, or the PostgreSQL ones (mail and scripts in the
database, the queue in files), and ways to read back what a delivery did."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

from sansmail.config import Config, SieveConfig
from sansmail.mail.address import MailboxId
from sansmail.mail.envelope import QueuedMessage
from sansmail.sessions.lda import LdaResult, LocalDelivery
from sansmail.storage.maildir import ImapStore, MaildirImapStore, MaildirStore, MailStore
from sansmail.storage.pg import Database
from sansmail.storage.pg._delivery import PgMailStore
from sansmail.storage.pg._imapstore import PgImapStore
from sansmail.storage.pg._sieve import PgSieveStore
from sansmail.storage.queue import QueueStore
from sansmail.storage.sieve import SieveScripts, SieveStore

NOW = 1_700_000_000.0
ALICE = MailboxId(domain="example.test", local="alice")
KEY = bytes(range(32))
MESSAGE = (
    b"Return-Path: <bob@far.test>\r\n"
    b"Received: from far.test by mx.example.test with ESMTP id Q1;\r\n"
    b"\tTue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"From: Bob <bob@far.test>\r\n"
    b"To: Alice <alice@example.test>\r\n"
    b"Subject: Hello there\r\n"
    b"Message-ID: <m1@far.test>\r\n"
    b"\r\n"
    b"Body text.\r\n"
)


def message(*fields: str, body: str = "Body text.") -> bytes:
    """MESSAGE with other fields in place of From/To/Subject/Message-ID."""
    head = b"Return-Path: <bob@far.test>\r\n" + b"".join(f.encode() + b"\r\n" for f in fields)
    return head + b"\r\n" + body.encode() + b"\r\n"


class Server:
    """The storage of one server under `root` and its `LocalDelivery`, built as the
    queue runner builds it: `quota` gives both stores the storage limits; `direct`
    False leaves out the direct path's store (every copy through the IMAP account);
    `db` puts the mailboxes and scripts in that database instead of files."""

    def __init__(
        self,
        root: pathlib.Path,
        *,
        before: str | None = None,
        quota: Callable[[MailboxId], int] | None = None,
        direct: bool = True,
        db: Database | None = None,
    ) -> None:
        self.root = root
        before_path = None
        if before is not None:
            (root / "global").mkdir()
            before_path = root / "global" / "before.sieve"
            before_path.write_text(before)
        self.config = Config(
            source=None,
            hostname="mx.example.test",
            domains=("example.test",),
            data_dir=root,
            sieve=SieveConfig(before=before_path),
        )
        self.db = db
        self.scripts: SieveScripts
        self.imap: ImapStore
        self.store: MailStore
        if db is None:
            self.scripts = SieveStore(root)
            self.imap = MaildirImapStore(root, hostname="mx.example.test", quota=quota)
            self.store = MaildirStore(root, hostname="mx.example.test", quota=quota)
        else:
            self.scripts = PgSieveStore(db)
            self.imap = PgImapStore(db, hostname="mx.example.test", quota=quota)
            self.store = PgMailStore(db, hostname="mx.example.test", quota=quota)
        self.queue = QueueStore(root / "queue")
        self.lda = LocalDelivery(
            config=self.config,
            scripts=self.scripts,
            imap=self.imap,
            queue=self.queue,
            store=self.store if direct else None,
            srs_key=KEY,
        )

    def script(self, text: str, name: str = "main", *, active: bool = True) -> None:
        self.scripts.put(ALICE, name, text.encode())
        if active:
            self.scripts.activate(ALICE, name)

    def deliver(
        self,
        content: bytes = MESSAGE,
        *,
        sender: str = "bob@far.test",
        recipient: str = "alice@example.test",
        original: str | None = None,
        now: float = NOW,
        queue_id: str = "Q1",
    ) -> LdaResult:
        return self.lda.deliver(
            ALICE,
            content,
            queue_id=queue_id,
            sender=sender,
            recipient=recipient,
            original_recipient=original,
            now=now,
        )

    def folder(self, name: str = "INBOX") -> list[tuple[bytes, frozenset[str]]]:
        """The messages of folder `name`, in UID order: (content, flags)."""
        account = self.imap.account(ALICE)
        try:
            view = account.select(name, readonly=True)
            try:
                out = []
                for m in view.messages:
                    content = view.read(m.uid)
                    assert content is not None
                    out.append((content, m.flags))
                return out
            finally:
                view.close()
        finally:
            account.close()

    def folders(self) -> dict[str, bool]:
        """Every folder name and whether it is subscribed."""
        account = self.imap.account(ALICE)
        try:
            return {f.name: f.subscribed for f in account.list_folders() if f.exists}
        finally:
            account.close()

    def queued(self, result: LdaResult) -> list[tuple[QueuedMessage, bytes]]:
        return [self.queue.read(qid) for qid in result.queued]


def lines(result: LdaResult) -> list[str]:
    return [line.text for line in result.log]


def warnings(result: LdaResult) -> list[str]:
    return [line.text for line in result.log if line.level == "warning"]


BACKENDS = ("maildir", "postgresql")


def make_server(
    request: object, root: pathlib.Path, backend: str = "maildir", **kw: object
) -> Server:
    """A `Server` on `backend`, the database from the `pg_db` fixture of `request` (a
    `pytest.FixtureRequest`)."""
    db = request.getfixturevalue("pg_db") if backend == "postgresql" else None  # type: ignore[attr-defined]
    return Server(root, db=db, **kw)  # type: ignore[arg-type]


__all__ = [
    "ALICE",
    "BACKENDS",
    "KEY",
    "MESSAGE",
    "NOW",
    "Server",
    "lines",
    "make_server",
    "message",
    "warnings",
]
