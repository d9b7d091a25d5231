"""Crash safety and concurrency: kills at any point lose no acknowledged message and
never give a UID twice; a damaged index is rebuilt with a new UIDVALIDITY; processes
writing one folder at once never share a UID."""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import traceback

import pytest
from imapstore_helpers import account, deliver, files, message, root, x_id

from sansmail.storage.maildir._imapbase import FlagMode, FolderGoneError
from sansmail.storage.maildir._imapindex import INDEX_NAME, FolderIndex


def uid_map(data_dir: pathlib.Path, folder: str = "INBOX") -> dict[int, int]:
    """UID -> X-Id of every message in `folder`, through a fresh session."""
    view = account(data_dir).select(folder)
    return {m.uid: x_id(view.read(m.uid) or b"") for m in view.messages}


def test_append_interrupted_before_the_index(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acc = account(tmp_path)
    acc.append("INBOX", message(1))

    def crash(*args: object, **kwargs: object) -> list[int]:
        raise KeyboardInterrupt

    monkeypatch.setattr(FolderIndex, "insert", crash)
    with pytest.raises(KeyboardInterrupt):
        acc.append("INBOX", message(2))
    monkeypatch.undo()
    # the file is durable in cur/; the next sync gives it the next UID, once
    assert uid_map(tmp_path) == {1: 1, 2: 2}
    assert acc.append("INBOX", message(3)).uid == 3
    assert uid_map(tmp_path) == {1: 1, 2: 2, 3: 3}


def test_index_insert_after_a_sync_found_the_file(tmp_path: pathlib.Path) -> None:
    # An APPEND whose file a concurrent sync indexed first keeps that UID.
    acc = account(tmp_path)
    index = acc.index_for("INBOX")
    real_insert = FolderIndex.insert
    synced = []

    def insert_late(
        self: FolderIndex, conn: object, rows: object, *args: object, **kw: object
    ) -> list[int]:
        if not synced:
            synced.append(1)
            conn.execute("ROLLBACK")  # type: ignore[attr-defined]
            account(tmp_path).status("INBOX", ["MESSAGES"])  # another session syncs
            conn.execute("BEGIN IMMEDIATE")  # type: ignore[attr-defined]
        return real_insert(self, conn, rows, *args, **kw)  # type: ignore[arg-type]

    FolderIndex.insert = insert_late  # type: ignore[method-assign]
    try:
        result = acc.append("INBOX", message(1), ["\\Seen"])
    finally:
        FolderIndex.insert = real_insert  # type: ignore[method-assign]
    assert result.uid == 1
    assert index.header().uidnext == 2
    assert uid_map(tmp_path) == {1: 1}


class Crash(BaseException):
    """Stands for the process dying: no clean-up code runs for it."""


def test_copy_and_move_interrupted_before_the_index(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acc = account(tmp_path)
    for n in (1, 2, 3):
        deliver(tmp_path, message(n))
    view = acc.select("INBOX")

    def crash(*args: object, **kwargs: object) -> list[int]:
        raise Crash

    monkeypatch.setattr(FolderIndex, "insert", crash)
    with pytest.raises(Crash):
        view.copy([1], "Archive")
    with pytest.raises(Crash):
        view.move([2, 3], "Trash")
    monkeypatch.undo()
    assert sorted(uid_map(tmp_path, "Archive").values()) == [1]
    assert sorted(uid_map(tmp_path, "Trash").values()) == [2, 3]
    assert view.sync().expunged == (3, 2)
    assert uid_map(tmp_path) == {1: 1}


def test_failed_copy_leaves_the_destination_alone(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acc = account(tmp_path)
    for n in (1, 2):
        deliver(tmp_path, message(n))
    view = acc.select("INBOX")

    def fail(*args: object, **kwargs: object) -> list[int]:
        raise OSError("disk full")

    monkeypatch.setattr(FolderIndex, "insert", fail)
    with pytest.raises(OSError, match="disk full"):
        view.copy([1, 2], "Archive")
    with pytest.raises(OSError, match="disk full"):
        view.move([1, 2], "Trash")
    monkeypatch.undo()
    assert files(root(tmp_path) / ".Archive") == {}
    assert files(root(tmp_path) / ".Trash") == {}
    assert len(files(root(tmp_path))) == 2
    assert not view.sync()


_CHILD = textwrap.dedent(
    """
    import pathlib, sys
    sys.path.insert(0, {helpers!r})
    sys.path.insert(0, str(pathlib.Path({helpers!r}).parents[2]))  # imap_backends
    from imapstore_helpers import account, message
    acc = account(pathlib.Path({data!r}))
    n = {start}
    while True:
        result = acc.append("INBOX", message(n), ["\\\\Seen"] if n % 2 else [])
        print(result.uid, n, flush=True)
        n += 1
    """
)


def test_kill_during_appends(tmp_path: pathlib.Path) -> None:
    helpers = str(pathlib.Path(__file__).parent)
    acked: dict[int, int] = {}
    start = 1
    for rounds in (15, 25):
        code = _CHILD.format(helpers=helpers, data=str(tmp_path), start=start)
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        for _ in range(rounds):
            uid, n = map(int, child.stdout.readline().split())
            acked[uid] = n
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        start = max(acked.values()) + 1000
    found = uid_map(tmp_path)
    for uid, n in acked.items():
        assert found[uid] == n  # every acknowledged message, under its UID
    assert len(set(found.values())) == len(found)  # nothing twice
    view = account(tmp_path).select("INBOX")
    assert view.uidnext > max(found)
    assert view.append(message(0)).uid == view.uidnext
    assert len(files(root(tmp_path))) == len(found) + 1
    # a kill while writing leaves at most its unfinished file in tmp/ (Maildir readers
    # clean those after 36 hours), never one in new/ or cur/ without its content
    assert len(os.listdir(root(tmp_path) / "tmp")) <= 2


_TXN_CHILD = textwrap.dedent(
    """
    import os, pathlib, signal, sys
    sys.path.insert(0, {helpers!r})
    sys.path.insert(0, str(pathlib.Path({helpers!r}).parents[2]))  # imap_backends
    from imapstore_helpers import account
    acc = account(pathlib.Path({data!r}))
    index = acc.index_for("INBOX")
    conn = index.conn
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE folder SET uidnext = uidnext + 100")
    conn.execute("DELETE FROM messages")
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_kill_inside_a_transaction(tmp_path: pathlib.Path) -> None:
    acc = account(tmp_path)
    acc.append("INBOX", message(1))
    before = acc.index_for("INBOX").header()
    code = _TXN_CHILD.format(helpers=str(pathlib.Path(__file__).parent), data=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], check=False)
    assert done.returncode == -signal.SIGKILL
    assert acc.index_for("INBOX").header().uidnext == before.uidnext
    assert uid_map(tmp_path) == {1: 1}
    assert acc.append("INBOX", message(2)).uid == 2  # and the lock is free


def _populated(tmp_path: pathlib.Path, count: int) -> tuple[int, list[frozenset[str]]]:
    """A folder of `count` messages written as Dovecot would, indexed once."""
    acc = account(tmp_path)
    top = root(tmp_path)
    (top / "dovecot-keywords").write_text("0 Work\n")
    for n in range(count):
        content = message(n, b"x" * 200 + b"\r\n").replace(b"\r\n", b"\n")
        flags = "Sa" if n % 3 else ""
        lines = content.count(b"\n")
        name = f"1700000000.M{n}P1.h,S={len(content)},W={len(content) + lines}"
        (top / "cur" / f"{name}:2,{flags}").write_bytes(content)
    view = acc.select("INBOX")
    flags = [m.flags for m in view.messages]
    assert flags[1] == {"\\Seen", "Work"}
    validity = view.uidvalidity
    acc.close()
    return validity, flags


@pytest.mark.parametrize("damage", ["garbage", "truncate", "delete"])
def test_damaged_index_is_rebuilt(tmp_path: pathlib.Path, damage: str) -> None:
    old_validity, flags = _populated(tmp_path, 300)
    db = root(tmp_path) / INDEX_NAME
    assert not (root(tmp_path) / (INDEX_NAME + "-wal")).exists()  # checkpointed at close
    if damage == "garbage":
        with open(db, "r+b") as f:
            f.write(b"this is not an index" * 10)
    elif damage == "truncate":
        os.truncate(db, os.path.getsize(db) // 2)
    else:
        db.unlink()
    view = account(tmp_path).select("INBOX")
    assert view.index_rebuilt  # a deleted one too: its marker says there was one
    assert view.uidvalidity > old_validity
    assert [m.flags for m in view.messages] == flags  # from the file names
    assert sorted(x_id(view.read(m.uid) or b"") for m in view.messages) == list(range(300))
    assert account(tmp_path).select("INBOX").uidvalidity == view.uidvalidity


def test_open_view_learns_of_a_replaced_index(tmp_path: pathlib.Path) -> None:
    acc = account(tmp_path)
    acc.append("INBOX", message(1))
    view = acc.select("INBOX")
    for suffix in ("", "-wal", "-shm"):
        (root(tmp_path) / (INDEX_NAME + suffix)).unlink(missing_ok=True)
    other = account(tmp_path).select("INBOX")
    assert other.uidvalidity != view.uidvalidity
    assert view.sync().uidvalidity_changed
    with pytest.raises(Exception, match="rebuilt"):
        view.read(1)


def test_corruption_found_by_a_running_view(tmp_path: pathlib.Path) -> None:
    old_validity, _ = _populated(tmp_path, 300)
    view = account(tmp_path).select("INBOX")
    index = view._index
    index.close()  # so no page of it is cached
    with open(root(tmp_path) / INDEX_NAME, "r+b") as f:
        f.seek(8192)
        f.write(b"\xff" * 40000)
    index.open()

    def read_every_cache() -> None:
        for m in view.messages:
            view.get_cache(m.uid)

    with pytest.raises(FolderGoneError):
        read_every_cache()
    assert view.sync().uidvalidity_changed
    fresh = account(tmp_path).select("INBOX")
    assert fresh.uidvalidity > old_validity
    assert len(fresh.messages) == 300


def _appender(data_dir: str, first: int, count: int, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        acc = account(pathlib.Path(data_dir))
        queue.put([(acc.append("INBOX", message(n)).uid, n) for n in range(first, first + count)])
    except BaseException:
        queue.put(traceback.format_exc())
        raise


def _deliverer(data_dir: str, first: int, count: int, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    # Delivers, syncs (moving files to cur/, claiming \Recent) and renames for flags,
    # racing the appenders.
    try:
        path = pathlib.Path(data_dir)
        view = account(path).select("INBOX")
        for n in range(first, first + count):
            deliver(path, message(n))
            view.sync()
            if view.messages:
                view.store_flags([view.messages[-1].uid], ["\\Seen"], FlagMode.ADD)
        queue.put([])
    except BaseException:
        queue.put(traceback.format_exc())
        raise


def test_processes_appending_at_once_never_share_a_uid(tmp_path: pathlib.Path) -> None:
    # The processes also race to open the account for the first time (index creation,
    # special-use folders, subscriptions).
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_appender, args=(str(tmp_path), 1000 * k, 25, queue)) for k in (1, 2, 3)
    ]
    workers.append(ctx.Process(target=_deliverer, args=(str(tmp_path), 9000, 25, queue)))
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for result in results:
        assert not isinstance(result, str), result
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    acked = [pair for result in results for pair in result]
    assert len({uid for uid, _ in acked}) == len(acked) == 75
    found = uid_map(tmp_path)
    assert len(found) == 100
    assert sorted(found) == list(range(1, 101))  # no gaps, no duplicates
    for uid, n in acked:
        assert found[uid] == n
    assert sorted(i.name for i in account(tmp_path).list_folders()) == [
        "Archive",
        "Drafts",
        "INBOX",
        "Junk",
        "Sent",
        "Trash",
    ]


def _open_inbox(
    data_dir: pathlib.Path,
    start: threading.Barrier,
    seen: list[list[int]],
    errors: list[BaseException],
) -> None:
    start.wait()
    try:
        view = account(data_dir).select("INBOX")
        seen.append([x_id(view.read(m.uid) or b"") for m in view.messages])
    except BaseException as exc:
        errors.append(exc)


def test_sessions_opening_a_new_index_at_once(tmp_path: pathlib.Path) -> None:
    # Connections switching a new index to WAL at once: SQLite fails one at once
    # ("database is locked", no busy handler, which would deadlock), as CI met it between
    # processes. Over 30 fresh folders, every session opens and sees the one message.
    for k in range(30):
        data_dir = tmp_path / str(k)
        deliver(data_dir, message(k))
        start = threading.Barrier(4)
        seen: list[list[int]] = []
        errors: list[BaseException] = []

        threads = [
            threading.Thread(target=_open_inbox, args=(data_dir, start, seen, errors))
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert seen == [[k]] * 4


def test_threads_of_one_process(tmp_path: pathlib.Path) -> None:
    # The Trio adapter runs each session's store calls in worker threads: one account
    # per session, several sessions at once, one folder.
    account(tmp_path).close()
    results: dict[int, list[tuple[int, int]]] = {}
    errors: list[BaseException] = []

    def session(k: int) -> None:
        try:
            acc = account(tmp_path)
            acc.create(f"Own {k}")
            results[k] = [
                (acc.append("INBOX", message(n)).uid, n) for n in range(k * 100, k * 100 + 15)
            ]
            view = acc.select("INBOX")
            view.store_flags([m.uid for m in view.messages], [f"kw{k}"], FlagMode.ADD)
            view.sync()
            acc.close()
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=session, args=(k,)) for k in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    acked = [pair for pairs in results.values() for pair in pairs]
    found = uid_map(tmp_path)
    assert sorted(found) == list(range(1, 61))
    assert all(found[uid] == n for uid, n in acked)
    view = account(tmp_path).select("INBOX")
    assert set(view.keywords) == {"kw0", "kw1", "kw2", "kw3"}
