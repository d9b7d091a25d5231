"""PgMaildrop on a real PostgreSQL: one POP3 session per user across nodes, the lock
let go with its connection, UIDL stable across sessions and nodes, the QUIT commit
(\\Seen and expunge) as IMAP sees it, and a lost connection answered as a temporary
failure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_delivery_pg import deliver, query, terminate_others

from sansmail.mail.address import MailboxId
from sansmail.storage.maildir import (
    BackendUnavailableError,
    MaildropInUseError,
    MessageGoneError,
    MessageReader,
)
from sansmail.storage.pg import Database
from sansmail.storage.pg._delivery import PgMailStore
from sansmail.storage.pg._maildrop import PREFETCH_OCTETS, PgMaildrop, PgMaildrops, unique_id
from sansmail.storage.pg._mailrows import remove_messages

ALICE = MailboxId(domain="example.test", local="alice")
PREFIX = b"Return-Path: <s@example.net>\r\n"


def read_all(reader: MessageReader) -> bytes:
    out = []
    while chunk := reader.read():
        out.append(chunk)
    return b"".join(out)


@pytest.fixture
def node_b(pg_db: Database) -> Iterator[PgMaildrops]:
    """Another node's maildrops: its own `Database`, its own connections."""
    other = Database(pg_db.dsn)
    yield PgMaildrops(other)
    other.close()


def test_snapshot_sizes_uidl_and_reading(pg_db: Database) -> None:
    store = PgMailStore(pg_db, hostname="mx.example.test")
    with PgMaildrops(pg_db).open_maildrop(ALICE) as drop:
        assert drop.messages == ()  # no INBOX yet
    names = [deliver(store, [ALICE], b"Subject: %d\r\n\r\nbody\n.dot\r\n" % n)[0] for n in range(3)]
    with PgMaildrops(pg_db).open_maildrop(ALICE) as drop:
        messages = drop.messages
        uidls = [unique_id(*map(int, name.split("."))) for name in names]
        assert [m.uid for m in messages] == uidls
        assert uidls[0] == f"00000001{int(names[0].split('.')[0]):08X}"  # Dovecot's form
        whole = PREFIX + b"Subject: 1\r\n\r\nbody\r\n.dot\r\n"  # the bare LF made CRLF
        assert [m.size for m in messages] == [len(whole)] * 3
        assert read_all(drop.reader(messages[1])) == whole
        assert read_all(drop.reader(messages[1], lines=0)) == PREFIX + b"Subject: 1\r\n\r\n"
        assert read_all(drop.reader(messages[1], lines=1)) == PREFIX + b"Subject: 1\r\n\r\nbody\r\n"
        # Mail that arrives during the session waits for the next one.
        deliver(store, [ALICE], b"late\r\n")
        assert len(drop.messages) == 3
    with PgMaildrops(pg_db).open_maildrop(ALICE) as drop:
        assert [m.uid for m in drop.messages][:3] == uidls  # stable across sessions
        assert len(drop.messages) == 4


def test_one_session_per_user_across_nodes(pg_db: Database, node_b: PgMaildrops) -> None:
    node_a = PgMaildrops(pg_db)
    held = node_a.open_maildrop(ALICE)
    with pytest.raises(MaildropInUseError):
        node_b.open_maildrop(ALICE)
    with pytest.raises(MaildropInUseError):
        node_a.open_maildrop(ALICE)  # a second session on the same node too
    other = node_b.open_maildrop(MailboxId(domain="example.test", local="bob"))
    other.close()
    held.close()
    held.close()  # idempotent
    with node_b.open_maildrop(ALICE) as again:
        assert again.messages == ()
        with pytest.raises(MaildropInUseError):
            node_a.open_maildrop(ALICE)
    # Unlocked before its connection went back to the pool: the next user of that
    # connection holds no lock of ours.
    node_a.open_maildrop(ALICE).close()


def test_the_lock_goes_with_a_lost_connection(pg_db: Database, node_b: PgMaildrops) -> None:
    store = PgMailStore(pg_db, hostname="mx.example.test")
    deliver(store, [ALICE], b"one\r\n")
    held = PgMaildrops(pg_db).open_maildrop(ALICE)
    terminate_others(pg_db)  # the node's connection is gone (or the node itself)
    with node_b.open_maildrop(ALICE) as taken:
        assert len(taken.messages) == 1
    # The old session hears a temporary failure, never psycopg's own error.
    with pytest.raises(BackendUnavailableError):
        held.reader(held.messages[0])
    with pytest.raises(BackendUnavailableError):
        held.expunge(held.messages)
    held.close()  # never raises
    assert query(pg_db, "SELECT count(*) FROM mail_messages") == [(1,)]


def test_quit_marks_seen_and_expunges_in_one_commit(pg_db: Database) -> None:
    store = PgMailStore(pg_db, hostname="mx.example.test")
    for n in range(4):
        deliver(store, [ALICE], b"message %d\r\n" % n)
    query(
        pg_db, "UPDATE mail_messages SET flags = '{\\\\Flagged,$Label1}' WHERE uid = 2 RETURNING 1"
    )
    ((modseq_before,),) = query(pg_db, "SELECT highestmodseq FROM mail_folders")
    with PgMaildrops(pg_db).open_maildrop(ALICE) as drop:
        m = drop.messages
        result = drop.expunge([m[0], m[3]], seen=[m[1], m[2], m[3]])
    assert (result.removed, result.gone, result.seen) == (2, 0, 2)
    rows = query(pg_db, "SELECT uid, flags, modseq FROM mail_messages ORDER BY uid")
    assert [(uid, flags) for uid, flags, _m in rows] == [
        (2, ["$Label1", "\\Flagged", "\\Seen"]),  # sorted as the IMAP store keeps them
        (3, ["\\Seen"]),
    ]
    ((modseq_after,),) = query(pg_db, "SELECT highestmodseq FROM mail_folders")
    assert rows[0][2] == rows[1][2] > modseq_before
    assert modseq_after > rows[0][2]  # the expunge's own mod-sequence
    assert query(pg_db, "SELECT uid FROM mail_expunged ORDER BY uid") == [(1,), (4,)]
    ((octets, messages),) = query(pg_db, "SELECT octets, messages FROM mail_usage")
    assert (octets, messages) == (2 * len(PREFIX + b"message 0\r\n"), 2)
    assert query(pg_db, "SELECT count(*) FROM mail_contents") == [(2,)]


def test_messages_expunged_meanwhile_are_gone(pg_db: Database) -> None:
    store = PgMailStore(pg_db, hostname="mx.example.test")
    for n in range(3):
        deliver(store, [ALICE], b"message %d\r\n" % n)
    with PgMaildrops(pg_db).open_maildrop(ALICE) as drop:
        ((folder_id,),) = query(pg_db, "SELECT id FROM mail_folders")
        with pg_db.transaction() as cur:  # an IMAP client on another node expunges
            remove_messages(cur, int(folder_id), "alice@example.test", [2, 3])
        m = drop.messages
        with pytest.raises(MessageGoneError):
            drop.reader(m[1])
        result = drop.expunge([m[1]], seen=[m[2]])
    assert (result.removed, result.gone, result.seen) == (0, 1, 0)
    assert query(pg_db, "SELECT uid, flags FROM mail_messages") == [(1, [])]


def test_nothing_to_do_changes_nothing(pg_db: Database) -> None:
    store = PgMailStore(pg_db, hostname="mx.example.test")
    deliver(store, [ALICE], b"one\r\n")
    ((modseq,),) = query(pg_db, "SELECT highestmodseq FROM mail_folders")
    with PgMaildrop.open(pg_db, ALICE) as drop:
        assert drop.expunge([]).removed == 0
        drop.expunge([], seen=drop.messages)  # marks \Seen
        ((marked,),) = query(pg_db, "SELECT highestmodseq FROM mail_folders")
    with PgMaildrop.open(pg_db, ALICE) as drop:
        assert drop.expunge([], seen=drop.messages).seen == 0  # already \Seen
    assert marked == modseq + 1
    assert query(pg_db, "SELECT highestmodseq FROM mail_folders") == [(marked,)]


def test_reads_fetch_the_following_messages_within_the_budget(pg_db: Database) -> None:
    store = PgMailStore(pg_db, hostname="mx.example.test")
    big = b"Subject: big\r\n\r\n" + b"x" * PREFETCH_OCTETS + b"\r\n"
    for content in (b"one\r\n", b"two\r\n", b"three\r\n", big, b"five\r\n"):
        deliver(store, [ALICE], content)
    with PgMaildrops(pg_db).open_maildrop(ALICE) as drop:
        m = drop.messages
        assert read_all(drop.reader(m[0])) == PREFIX + b"one\r\n"
        ((folder_id,),) = query(pg_db, "SELECT id FROM mail_folders")
        with pg_db.transaction() as cur:  # another client expunges the rest meanwhile
            remove_messages(cur, int(folder_id), "alice@example.test", [2, 3, 4, 5])
        # Fetched with the first read, as a read ahead of the session's would be.
        assert read_all(drop.reader(m[1])) == PREFIX + b"two\r\n"
        assert read_all(drop.reader(m[2], lines=0)) == PREFIX + b"three\r\n"
        # The big one did not fit the budget, and stopped the fetch there.
        with pytest.raises(MessageGoneError):
            drop.reader(m[3])
        with pytest.raises(MessageGoneError):
            drop.reader(m[4])


def test_the_connection_goes_back_to_the_pool_as_it_came(pg_db: Database) -> None:
    with PgMaildrops(pg_db).open_maildrop(ALICE):
        pass
    with pg_db.connection() as conn:  # the one the maildrop held (the last given back)
        assert not conn.autocommit
        locks = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert locks.fetchone() == (0,)
