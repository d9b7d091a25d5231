"""`PgImapStore` as several nodes see it: two store objects on one database stand for two
sansmail nodes, and everything one view learns comes from the rows the other wrote."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import psycopg
import pytest

from sansmail import SERVER
from sansmail.imap import Command, Connection, Tagged, UntaggedStatus
from sansmail.mail.address import MailboxId
from sansmail.sessions.imapd import ImapSession, capabilities
from sansmail.storage.maildir._imapbase import (
    ExpungeIssuedError,
    FlagMode,
    FolderExistsError,
    FolderGoneError,
    NoSuchFolderError,
    SearchData,
    StoreUnavailableError,
    Structures,
    TooManyKeywordsError,
)
from sansmail.storage.maildir._quota import OverQuotaError
from sansmail.storage.pg._db import Database
from sansmail.storage.pg._imapstore import PgImapStore
from sansmail.storage.pg._mailrows import find_folder, folder_key, make_folder, remove_messages

ALICE = MailboxId(domain="example.test", local="alice")


def message(n: int) -> bytes:
    return b"Subject: message %d\r\nX-Id: %d\r\n\r\nbody\r\n" % (n, n)


@pytest.fixture
def nodes(pg_dsn: str) -> Iterator[tuple[PgImapStore, PgImapStore]]:
    # Two databases objects: two nodes share no connection, only the tables.
    a = Database(pg_dsn)
    b = Database(pg_dsn)
    yield PgImapStore(a, hostname="a.example.test"), PgImapStore(b, hostname="b.example.test")
    a.close()
    b.close()


def test_a_view_on_one_node_hears_of_appends_flags_and_expunges_through_the_other(
    nodes: tuple[PgImapStore, PgImapStore],
) -> None:
    a, b = nodes
    on_a = a.account(ALICE)
    on_b = b.account(ALICE)
    for n in range(3):
        on_a.append("INBOX", message(n))
    view = on_b.select("INBOX")
    assert list(view.uids) == [1, 2, 3]
    assert view.watch_keys == (folder_key(view.folder_id),)
    assert view.watch_paths == ()
    assert not view.sync()  # nothing changed: nothing to report

    other = on_a.select("INBOX")
    on_a.append("INBOX", message(3), ["\\Flagged"])
    other.store([2], ["\\Deleted", "$Important"], FlagMode.ADD)
    other.store([1], ["\\Seen"], FlagMode.ADD)
    other.expunge()

    changes = view.sync()
    assert changes.expunged == (2,)
    assert changes.expunged_uids == (2,)
    assert [m.uid for m in changes.added] == [4]
    assert changes.exists == 3
    assert changes.flags == ((1, 1, frozenset({"\\Seen"})),)
    assert changes.keywords == ("$Important",)
    assert [m.uid for m in view.messages] == [1, 3, 4]
    assert view.messages[2].flags == {"\\Flagged"}
    assert view.highestmodseq == on_a.status("INBOX", ["HIGHESTMODSEQ"])["HIGHESTMODSEQ"]
    assert view.vanished_since(1, [range(1, 10)]) == [2]


def test_recent_goes_to_the_first_session_to_see_it_on_either_node(
    nodes: tuple[PgImapStore, PgImapStore],
) -> None:
    a, b = nodes
    on_a = a.account(ALICE)
    first = b.account(ALICE).select("INBOX")
    second = a.account(ALICE).select("INBOX")
    on_a.append("INBOX", message(1))
    assert first.sync().recent == 1
    assert second.sync().recent is None
    assert first.recent == {1}
    assert second.recent == frozenset()


def test_uids_are_never_given_twice_across_threads_and_after_expunge(
    nodes: tuple[PgImapStore, PgImapStore],
) -> None:
    a, b = nodes
    accounts = [a.account(ALICE), b.account(ALICE)]

    def append(n: int) -> int:
        return accounts[n % 2].append("INBOX", message(n)).uid

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        uids = list(pool.map(append, range(40)))
    assert sorted(uids) == list(range(1, 41))

    view = accounts[0].select("INBOX")
    view.store(range(1, 41), ["\\Deleted"], FlagMode.ADD)
    assert view.expunge() == list(range(1, 41))
    assert accounts[1].append("INBOX", message(99)).uid == 41
    assert accounts[1].status("INBOX", ["UIDNEXT", "MESSAGES"]) == {"UIDNEXT": 42, "MESSAGES": 1}


def test_copy_shares_the_content_row_and_move_leaves_one_copy(
    nodes: tuple[PgImapStore, PgImapStore], pg_db: Database
) -> None:
    a, _b = nodes
    account = a.account(ALICE)
    account.append("INBOX", message(1), ["\\Seen", "Work"])
    view = account.select("INBOX")
    copied = view.copy([1], "Archive")
    assert copied.uids == [(1, 1)]
    moved = view.move([1], "Trash")
    assert moved.uids == [(1, 1)]
    with pg_db.transaction() as cur:
        cur.execute("SELECT count(*) FROM mail_contents")
        assert cur.fetchone() == (1,)
        cur.execute(
            "SELECT f.name, m.flags FROM mail_messages m JOIN mail_folders f ON f.id = m.folder_id"
            " ORDER BY f.name"
        )
        assert cur.fetchall() == [("Archive", ["Work", "\\Seen"]), ("Trash", ["Work", "\\Seen"])]
        cur.execute("SELECT octets, messages FROM mail_usage")
        assert cur.fetchone() == (2 * len(message(1)), 2)
    archive = account.select("Archive")
    assert archive.read(1) == message(1)
    assert archive.keywords == ("Work",)


def test_a_folder_deleted_through_one_node_is_gone_for_the_other(
    nodes: tuple[PgImapStore, PgImapStore],
) -> None:
    a, b = nodes
    a.account(ALICE).create("Lists")
    a.account(ALICE).append("Lists", message(1))
    view = b.account(ALICE).select("Lists")
    a.account(ALICE).delete("Lists")
    assert view.sync().uidvalidity_changed
    with pytest.raises(FolderGoneError):
        view.read(1)


def test_keywords_are_limited_per_folder(nodes: tuple[PgImapStore, PgImapStore]) -> None:
    a, _b = nodes
    account = a.account(ALICE)
    account.append("INBOX", message(1))
    view = account.select("INBOX")
    view.store([1], [f"k{n}" for n in range(26)], FlagMode.ADD)
    assert not view.can_create_keywords
    with pytest.raises(TooManyKeywordsError):
        view.store([1], ["one-more"], FlagMode.ADD)
    # A known keyword, in another case, is the same one.
    assert "k1" in view.store([1], ["K1"], FlagMode.REPLACE).flags[1]


def test_a_lost_connection_is_a_no_unavailable_and_the_session_goes_on(
    nodes: tuple[PgImapStore, PgImapStore], pg_dsn: str
) -> None:
    a, _b = nodes
    account = a.account(ALICE)
    account.append("INBOX", message(1))
    view = account.select("INBOX")
    _kill_connections(pg_dsn)
    with pytest.raises(StoreUnavailableError) as caught:
        view.sync()
    assert caught.value.code == "UNAVAILABLE"
    # The broken connection was dropped: the next call takes a new one.
    assert view.read(1) == message(1)


def test_the_session_answers_a_database_failure_with_no_unavailable(
    nodes: tuple[PgImapStore, PgImapStore], pg_dsn: str
) -> None:
    a, _b = nodes
    session = ImapSession(
        a,
        ALICE,
        append_limit=1000,
        capabilities=capabilities(append_limit=1000, authenticated=True),
    )
    conn = Connection(SERVER)
    conn.send(UntaggedStatus(status="OK", text="ready"))
    conn.receive_data(b"a0 LOGIN alice secret\r\n")
    conn.next_event()
    conn.send(Tagged(tag="a0", status="OK", text="logged in"))

    def run(line: bytes) -> bytes:
        conn.receive_data(line + b"\r\n")
        command = conn.next_event()
        assert isinstance(command, Command)
        responses = session.handle(command, rev2=False, utf8=False)
        return b"".join(conn.send(r) for r in responses)

    assert b"a1 OK" in run(b"a1 SELECT INBOX")
    _kill_connections(pg_dsn)
    assert b"a2 NO [UNAVAILABLE]" in run(b"a2 STATUS Trash (MESSAGES)")
    assert b"a3 OK" in run(b"a3 NOOP")
    session.close()


def _kill_connections(dsn: str) -> None:
    """End every other connection to the test's database (a failover, as the
    sessions' connections see it)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def test_the_quota_counts_every_folder_and_refuses_what_would_go_over(pg_db: Database) -> None:
    limit = 3 * len(message(1))
    store = PgImapStore(pg_db, hostname="a.example.test", quota=lambda mailbox: limit)
    account = store.account(ALICE)
    assert account.storage() == (0, limit)
    account.append("INBOX", message(1))
    account.select("INBOX").copy([1], "Archive")
    assert account.storage() == (2 * len(message(1)), limit)
    account.check_quota(len(message(1)))
    with pytest.raises(OverQuotaError):
        account.check_quota(len(message(1)) + 1)
    account.append("Trash", message(2))
    with pytest.raises(OverQuotaError):
        account.append("INBOX", message(3))
    view = account.select("Archive")
    view.store([1], ["\\Deleted"], FlagMode.ADD)
    view.expunge()
    assert account.storage() == (2 * len(message(1)), limit)
    assert PgImapStore(pg_db, hostname="b").account(ALICE).storage() is None


def test_an_append_to_a_folder_deleted_meanwhile_is_no_such_folder(
    nodes: tuple[PgImapStore, PgImapStore],
) -> None:
    a, b = nodes
    a.account(ALICE).create("Gone")
    b.account(ALICE).delete("Gone")
    with pytest.raises(NoSuchFolderError):
        a.account(ALICE).append("Gone", message(1))


def test_a_cache_write_the_database_refuses_is_given_up(
    nodes: tuple[PgImapStore, PgImapStore], pg_dsn: str
) -> None:
    a, _b = nodes
    account = a.account(ALICE)
    account.append("INBOX", message(1))
    view = account.select("INBOX")
    _kill_connections(pg_dsn)
    # Only a cache: the FETCH that made it is answered all the same (the connection
    # that broke is dropped, and the next operation takes a new one).
    view.set_structures({1: Structures(envelope=b"(NIL)")})
    assert view.structures([1]) == {1: Structures()}
    _kill_connections(pg_dsn)
    view.keep_search_data({1: SearchData(fields=(("subject", "message 1"),), sent=None)})
    assert view.search_missing([1], texts=False) == [1]
    view.set_structures({1: Structures(envelope=b"(NIL)")})
    assert view.structures([1]) == {1: Structures(envelope=b"(NIL)")}


def test_copy_of_a_message_expunged_through_the_other_node_changes_nothing(
    nodes: tuple[PgImapStore, PgImapStore],
) -> None:
    a, b = nodes
    account = a.account(ALICE)
    for n in (1, 2):
        account.append("INBOX", message(n))
    view = account.select("INBOX")
    other = b.account(ALICE).select("INBOX")
    other.store([2], ["\\Deleted"], FlagMode.ADD)
    other.expunge()
    with pytest.raises(ExpungeIssuedError) as caught:
        view.copy([1, 2], "Archive")
    assert caught.value.uids == (2,)
    with pytest.raises(ExpungeIssuedError):
        view.move([1, 2], "Archive")
    assert account.status("Archive", ["MESSAGES", "UIDNEXT"]) == {"MESSAGES": 0, "UIDNEXT": 1}
    assert account.status("INBOX", ["MESSAGES"]) == {"MESSAGES": 1}


def test_a_sync_that_finds_nothing_is_one_statement_and_a_fetch_one_per_batch(
    nodes: tuple[PgImapStore, PgImapStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _b = nodes
    account = a.account(ALICE)
    for n in range(100):
        account.append("INBOX", message(n))
    view = account.select("INBOX")
    view.sync()
    statements: list[str] = []
    real = psycopg.Cursor.execute

    def execute(self: psycopg.Cursor[object], query: object, *args: object, **kw: object) -> object:
        statements.append(str(query))
        return real(self, query, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    assert not view.sync()
    assert len(statements) == 1
    statements.clear()
    assert len(view.structures(view.uids)) == 100
    assert len(dict(view.contents(view.uids))) == 100
    assert len(view.flag_states(view.uids)) == 100
    assert len(statements) == 1 + 2 + 1  # contents: batches of 64


def _wait_for_a_lock_wait(dsn: str) -> None:
    # Until another connection of this database waits on a row lock (a state, polled:
    # no timing is asserted).
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()[0]:  # type: ignore[index]
            conn.execute("SELECT pg_sleep(0.01)")


def test_a_delete_waiting_on_a_rename_of_its_folder_does_not_delete_the_renamed_one(
    nodes: tuple[PgImapStore, PgImapStore], pg_dsn: str
) -> None:
    a, b = nodes
    account = a.account(ALICE)
    account.create("Old")
    account.append("Old", message(1))
    # Node B's RENAME Old New holds the folder row, not yet committed, when node A's
    # DELETE Old looks the name up: the DELETE must find no Old once the rename commits.
    with concurrent.futures.ThreadPoolExecutor(1) as pool, b.db.transaction() as cur:
        cur.execute(
            "UPDATE mail_folders SET name = 'New' WHERE mailbox = %s AND name = 'Old'",
            ("alice@example.test",),
        )
        deleting = pool.submit(account.delete, "Old")
        _wait_for_a_lock_wait(pg_dsn)
    with pytest.raises(NoSuchFolderError):
        deleting.result()
    assert account.status("New", ["MESSAGES"]) == {"MESSAGES": 1}


def test_a_rename_onto_a_name_another_node_creates_meanwhile_is_already_exists(
    nodes: tuple[PgImapStore, PgImapStore], pg_dsn: str
) -> None:
    a, b = nodes
    account = a.account(ALICE)
    account.create("Old/Child")
    account.create("Old")
    # Node B's CREATE New is not committed when node A's RENAME Old New checks for a
    # clash: the rename then waits on B's new row and must answer that New exists.
    with concurrent.futures.ThreadPoolExecutor(1) as pool, b.db.transaction() as cur:
        cur.execute(
            "INSERT INTO mail_folders (mailbox, name) VALUES (%s, 'New')",
            ("alice@example.test",),
        )
        renaming = pool.submit(account.rename, "Old", "New")
        _wait_for_a_lock_wait(pg_dsn)
    with pytest.raises(FolderExistsError):
        renaming.result()
    names = {info.name for info in account.list_folders() if info.exists}
    assert {"Old", "Old/Child", "New"} <= names
    assert "New/Child" not in names


def test_a_cache_write_takes_the_folder_row_before_the_message_rows_as_writers_do(
    nodes: tuple[PgImapStore, PgImapStore], pg_dsn: str
) -> None:
    a, b = nodes
    a.account(ALICE).append("INBOX", message(1))
    view = a.account(ALICE).select("INBOX")
    # Node B's STORE holds the folder row and is about to update message rows: a cache
    # write that locked message rows first could make a cycle with it, which PostgreSQL
    # breaks by failing either, the STORE perhaps. It waits for the row instead.
    with concurrent.futures.ThreadPoolExecutor(1) as pool, b.db.transaction() as cur:
        cur.execute("SELECT 1 FROM mail_folders WHERE id = %s FOR UPDATE", (view.folder_id,))
        writing = pool.submit(view.set_structures, {1: Structures(envelope=b"(NIL)")})
        with psycopg.connect(pg_dsn, autocommit=True) as watcher:
            while (
                not writing.done()
                and not watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                ).fetchone()[0]
            ):  # type: ignore[index]
                watcher.execute("SELECT pg_sleep(0.01)")
        waited = not writing.done()
    writing.result()
    assert waited
    assert view.structures([1]) == {1: Structures(envelope=b"(NIL)")}


def test_the_tombstones_after_a_mod_sequence_are_read_by_an_index_on_it(pg_db: Database) -> None:
    # Tombstones are kept for good: a sync must not walk a folder's whole history.
    with pg_db.transaction() as cur:
        cur.execute("SET LOCAL enable_seqscan = off")
        cur.execute(
            "EXPLAIN SELECT uid FROM mail_expunged WHERE folder_id = 1"
            " AND modseq > 10 AND modseq <= 20"
        )
        plan = "\n".join(line for (line,) in cur.fetchall())
    assert "mail_expunged_modseq" in plan, plan
    assert "Filter" not in plan, plan


def test_two_nodes_expunging_the_last_two_holders_of_a_content_drop_it(
    nodes: tuple[PgImapStore, PgImapStore], pg_dsn: str, pg_db: Database
) -> None:
    a, b = nodes
    bob = MailboxId(domain="example.test", local="bob")
    a.account(ALICE).append("INBOX", message(1))
    b.account(bob).append("INBOX", message(1))  # the same content, kept once
    with pg_db.transaction() as cur:
        inbox = find_folder(cur, "alice@example.test", "INBOX")
        archive = find_folder(cur, "bob@example.test", "INBOX")
        cur.execute("SELECT count(*) FROM mail_contents")
        assert cur.fetchone() == (1,)
    assert inbox is not None
    assert archive is not None
    # Node A's expunge of alice's copy is not committed when node B expunges bob's:
    # each saw the other's message still there, and the content was kept for good.
    with concurrent.futures.ThreadPoolExecutor(1) as pool, a.db.transaction() as cur:
        assert remove_messages(cur, inbox, "alice@example.test", [1]) == [1]

        def expunge_on_b() -> list[int]:
            with b.db.transaction() as other:
                return remove_messages(other, archive, "bob@example.test", [1])

        removing = pool.submit(expunge_on_b)
        with psycopg.connect(pg_dsn, autocommit=True) as watcher:
            while (
                not removing.done()
                and not watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                ).fetchone()[0]
            ):  # type: ignore[index]
                watcher.execute("SELECT pg_sleep(0.01)")
    assert removing.result() == [1]
    with pg_db.transaction() as cur:
        cur.execute("SELECT count(*) FROM mail_contents")
        assert cur.fetchone() == (0,)


def test_an_expunge_of_more_contents_than_the_lock_table_holds_works(pg_db: Database) -> None:
    # The collection's advisory locks are a few buckets, not one per content: the
    # server's lock table (max_locks_per_transaction x connections) would overflow.
    count = 100_000
    with pg_db.transaction() as cur:
        cur.execute("SHOW max_locks_per_transaction")
        per = int(cur.fetchone()[0])  # type: ignore[index]
        cur.execute("SHOW max_connections")
        assert count > per * int(cur.fetchone()[0])  # type: ignore[index]
        folder = make_folder(cur, "alice@example.test", "INBOX")
        cur.execute(
            "INSERT INTO mail_contents (digest, size, content)"
            " SELECT sha256(i::text::bytea), 1, 'x' FROM generate_series(1, %s) AS i",
            (count,),
        )
        cur.execute(
            "INSERT INTO mail_messages (folder_id, uid, digest, size, internaldate, modseq)"
            " SELECT %s, i, sha256(i::text::bytea), 1, now(), 1"
            " FROM generate_series(1, %s) AS i",
            (folder, count),
        )
    with pg_db.transaction() as cur:
        assert len(remove_messages(cur, folder, "alice@example.test", range(1, count + 1))) == count
    with pg_db.transaction() as cur:
        cur.execute("SELECT count(*) FROM mail_contents")
        assert cur.fetchone() == (0,)
