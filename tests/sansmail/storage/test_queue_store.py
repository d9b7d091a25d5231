"""The outbound queue store: round trips, the durability order, crash leftovers, and
the queue sansmail 0.1 left (format 1) read, deleted and converted."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import subprocess
import threading
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from queue_helpers import (  # noqa: F401  (fixtures)
    MakeQueue,
    any_store_fixture,
    backend_fixture,
    make_queue_fixture,
)

import sansmail.storage.queue
from sansmail.mail.address import MailboxId
from sansmail.mail.envelope import (
    CorruptEnvelopeError,
    QueuedMessage,
    QueuedRecipient,
    decode_envelope,
    encode_envelope,
)
from sansmail.storage.queue import (
    Queue,
    QueueStore,
    QueueWriter,
    UnknownQueueIdError,
    _format,
    _store,
    format_mailq,
    mailq_json_lines,
)

CONTENT = b"Subject: hi\r\n\r\nline one\r\nline two\r\n"


def envelope(queue_id: str = "ABC123", **changes: Any) -> QueuedMessage:
    fields: dict[str, Any] = {
        "queue_id": queue_id,
        "sender": "alice@example.test",
        "arrival": 1_700_000_000.25,
        "size": 0,
        "recipients": (
            QueuedRecipient(address="bob@remote.test", notify=("failure", "DELAY")),
            QueuedRecipient(address="carol@remote.test", orcpt="rfc822;carol@remote.test"),
        ),
        "ret": "hdrs",
        "envid": "QQ314159",
        "smtputf8": False,
        "body_8bit": True,
    }
    fields.update(changes)
    return QueuedMessage(**fields)


def queue(
    store: Queue, queue_id: str = "ABC123", content: bytes = CONTENT, **changes: Any
) -> QueuedMessage:
    writer = store.begin(queue_id)
    writer.write(content)
    return writer.commit(envelope(queue_id, **changes))


@pytest.fixture
def store(tmp_path: pathlib.Path) -> QueueStore:
    return QueueStore(tmp_path / "queue")


def files(store: QueueStore) -> list[str]:
    return sorted(os.listdir(store.root))


def test_public_names() -> None:
    assert sorted(sansmail.storage.queue.__all__) == [
        "AttemptResult",
        "ClaimLostError",
        "Claimed",
        "CorruptEnvelopeError",
        "Outcome",
        "Queue",
        "QueueEntryWriter",
        "QueueStore",
        "QueueWriter",
        "QueuedMessage",
        "QueuedRecipient",
        "RecipientState",
        "SharedQueue",
        "UnknownQueueIdError",
        "check_queue_id",
        "dsn_status",
        "format_mailq",
        "mailq_json_lines",
        "record_attempt",
    ]


# -- round trip ----------------------------------------------------------------------


def test_round_trip(any_store: Queue) -> None:
    store = any_store
    writer = store.begin("ABC123")
    writer.write(CONTENT[:10])
    assert writer.pending == 10
    writer.flush()
    assert writer.pending == 0
    writer.write(CONTENT[10:])
    writer.write(b"")
    assert writer.size == len(CONTENT)
    stored = writer.commit(envelope(size=999))
    assert stored.size == len(CONTENT)  # the store counts, the caller's guess is ignored
    assert store.load("ABC123") == stored
    assert stored.recipients[0].notify == ("FAILURE", "DELAY")
    assert stored.ret == "HDRS"
    assert store.read_message("ABC123") == CONTENT
    assert store.read("ABC123") == (stored, CONTENT)
    assert store.list() == [stored]
    assert store.ids() == {"ABC123"}


def test_one_private_file_per_message(store: QueueStore) -> None:
    queue(store, "ABC123")
    assert files(store) == ["ABC123.q"]
    assert os.stat(store.root / "ABC123.q").st_mode & 0o777 == 0o600


def test_a_message_buffered_whole_round_trips(store: QueueStore) -> None:
    stored = queue(store, "WHOLE1")
    assert store.read("WHOLE1") == (stored, CONTENT)
    data = (store.root / "WHOLE1.q").read_bytes()
    assert data.startswith(_format.MAGIC)  # the format and its version, first
    assert data[_format.PREFIX :].startswith(CONTENT)


def test_empty_content_round_trips(any_store: Queue) -> None:
    store = any_store
    writer = store.begin("E1")
    stored = writer.commit(envelope("E1"))
    assert stored.size == 0
    assert store.read_message("E1") == b""


def test_writer_refuses_use_after_commit_and_abort(any_store: Queue) -> None:
    store = any_store
    writer = store.begin("A1")
    writer.commit(envelope("A1"))
    with pytest.raises(RuntimeError):
        writer.write(b"x")
    with pytest.raises(RuntimeError):
        writer.commit(envelope("A1"))
    writer.abort()  # harmless
    assert store.load("A1").queue_id == "A1"


def test_abort_leaves_nothing(store: QueueStore) -> None:
    writer = store.begin("A2")
    writer.write(CONTENT)
    writer.flush()
    assert files(store) == ["A2.q"]  # being written: not a message yet
    with pytest.raises(UnknownQueueIdError):
        store.load("A2")
    assert store.list() == []
    writer.abort()
    writer.abort()
    assert files(store) == []
    with pytest.raises(RuntimeError):
        writer.flush()


def test_commit_checks_the_queue_id(any_store: Queue) -> None:
    store = any_store
    writer = store.begin("A3")
    with pytest.raises(ValueError):
        writer.commit(envelope("A4"))


def test_an_id_in_use_is_refused(store: QueueStore) -> None:
    stored = queue(store, "DUP1")
    # A message file of that id: the writer's O_EXCL creation refuses it, whole or spilled.
    whole = store.begin("DUP1")
    whole.write(CONTENT)
    with pytest.raises(FileExistsError):
        whole.commit(envelope("DUP1"))
    spilled = store.begin("DUP1")
    spilled.write(CONTENT)
    with pytest.raises(FileExistsError):
        spilled.flush()
    spilled.abort()
    assert store.load("DUP1") == stored  # the losers took nothing away
    assert files(store) == ["DUP1.q"]
    # A format-1 pair of that id, in a queue that held one when the store started: begin.
    write_pair(store, "DUP2")
    with pytest.raises(FileExistsError):
        QueueStore(store.root).begin("DUP2")
    later = QueueStore(store.root)
    later.begin("NEW1").abort()
    with pytest.raises(FileExistsError):
        later.begin("DUP2")


def test_a_queue_without_format_1_pairs_is_listed_once(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.begin("FIRST1").abort()
    looked: list[str] = []
    real_lexists = os.path.lexists
    monkeypatch.setattr(os.path, "lexists", lambda path: looked.append(path) or real_lexists(path))
    queue(store, "SECOND1")
    assert looked == []


def test_commit_refuses_an_id_taken_meanwhile(any_store: Queue) -> None:
    store = any_store
    first, second = store.begin("RACE2"), store.begin("RACE2")
    stored = first.commit(envelope("RACE2"))
    with pytest.raises(FileExistsError):
        second.commit(envelope("RACE2"))
    assert store.load("RACE2") == stored  # the loser took nothing away


def test_new_id_is_valid_unique_and_ordered(make_queue: MakeQueue) -> None:
    now = [1_700_000_000.0]
    store = make_queue(clock=lambda: now[0])
    first = store.new_id()
    now[0] += 1
    ids = [first] + [store.new_id() for _ in range(50)]
    assert len(set(ids)) == len(ids)
    for queue_id in ids:
        sansmail.storage.queue.check_queue_id(queue_id)
    assert first < ids[1]


# -- durability ------------------------------------------------------------------------


class Recorder:
    """Wraps os.fsync/fdatasync/rename/replace to log what reached the disk, by name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: pathlib.Path) -> None:
        self.calls: list[tuple[str, str]] = []
        self.root = str(root)
        real = {name: getattr(os, name) for name in ("fsync", "fdatasync", "rename", "replace")}

        def syncer(name: str) -> Any:
            def sync(fd: int) -> None:
                self.calls.append((name, self._name(os.readlink(f"/proc/self/fd/{fd}"))))
                real[name](fd)

            return sync

        def renamer(name: str) -> Any:
            def rename(src: str, dst: str) -> None:
                self.calls.append((name, f"{self._name(src)}->{self._name(dst)}"))
                real[name](src, dst)

            return rename

        for name in ("fsync", "fdatasync"):
            monkeypatch.setattr(os, name, syncer(name))
        for name in ("rename", "replace"):
            monkeypatch.setattr(os, name, renamer(name))

    def _name(self, path: str) -> str:
        path = os.fspath(path)
        if path == self.root:
            return "DIR"
        name = os.path.basename(path)
        return "tmp" if name.endswith(".tmp") else name


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")


@needs_proc
def test_commit_is_one_file_and_two_fsyncs(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.begin("PRE1").abort()  # makes the directory, so only the commit is recorded
    recorder = Recorder(monkeypatch, store.root)
    writer = store.begin("ORD1")
    writer.write(CONTENT)
    writer.commit(envelope("ORD1"))
    # The file, whole, on disk; then its name: both before commit returned. No tmp
    # file, no rename.
    assert recorder.calls == [("fsync", "ORD1.q"), ("fsync", "DIR")]


@needs_proc
def test_commits_can_share_one_directory_fsync(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers = [store.begin(f"GRP{n}") for n in range(3)]
    recorder = Recorder(monkeypatch, store.root)
    stored = []
    for writer in writers:
        writer.write(CONTENT)
        stored.append(writer.commit(envelope(writer.queue_id), sync=False))
    store.sync()  # the group's one directory fsync, before any of their 250s
    assert recorder.calls == [("fsync", f"GRP{n}.q") for n in range(3)] + [("fsync", "DIR")]
    assert store.list() == stored


@needs_proc
def test_a_message_written_in_pieces_gets_its_header_at_commit(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = store.begin("BIG1")
    writer.write(CONTENT)
    writer.flush()
    head = (store.root / "BIG1.q").read_bytes()[: _format.PREFIX]
    assert head == _format.MAGIC + _format.PLACEHOLDER  # not committed, if we crash now
    writer.write(b"more\r\n")
    recorder = Recorder(monkeypatch, store.root)
    stored = writer.commit(envelope("BIG1"))
    assert recorder.calls == [("fsync", "BIG1.q"), ("fsync", "DIR")]
    assert store.read("BIG1") == (stored, CONTENT + b"more\r\n")


@needs_proc
def test_update_appends_one_record_and_fdatasyncs(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = queue(store, "ORD2")
    before = (store.root / "ORD2.q").read_bytes()
    recorder = Recorder(monkeypatch, store.root)
    new = attrs.evolve(stored, warned=True)
    store.update(new)
    assert recorder.calls == [("fdatasync", "ORD2.q")]  # no rename, no directory fsync
    after = (store.root / "ORD2.q").read_bytes()
    assert after.startswith(before)
    assert after[len(before) :] == _format.envelope_record(encode_envelope(new))
    assert store.load("ORD2") == new
    assert store.read_message("ORD2") == CONTENT


def test_first_begin_makes_the_directory_durably(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = QueueStore(tmp_path / "data" / "queue")
    store.begin("MK1").abort()
    assert (tmp_path / "data" / "queue").is_dir()
    assert len(synced) == 1  # the parent, so the queue directory's name is on disk


def test_failed_commit_leaves_nothing(store: QueueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    writer = store.begin("FAIL1")
    writer.write(CONTENT)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="Input/output"):
        writer.commit(envelope("FAIL1"))
    assert files(store) == []
    assert store.list() == []


def test_commit_fails_when_the_file_was_removed_under_it(store: QueueStore) -> None:
    writer = store.begin("GONE2")
    writer.write(CONTENT)
    writer.flush()
    os.unlink(store.root / "GONE2.q")  # `queue delete`, or anything else
    with pytest.raises(OSError, match="was removed"):
        writer.commit(envelope("GONE2"))  # so no 250 is sent for it
    assert files(store) == []


def crash_instead_of(monkeypatch: pytest.MonkeyPatch, name: str) -> type[BaseException]:
    """Make os.<name> die like kill -9: nothing after it runs, nothing is cleaned up."""

    class Killed(BaseException):
        pass

    def die(*args: object) -> None:
        raise Killed

    monkeypatch.setattr(os, name, die)
    monkeypatch.setattr(_store, "_unlink_quietly", lambda path: None)
    monkeypatch.setattr(_store.QueueWriter, "abort", lambda self: None)
    return Killed


def test_a_record_cut_short_reads_as_absent(store: QueueStore) -> None:
    old = queue(store, "UPD1")
    new = attrs.evolve(
        old, recipients=(attrs.evolve(old.recipients[0], state="sent"), old.recipients[1])
    )
    path = store.root / "UPD1.q"
    whole = path.read_bytes()
    record = _format.envelope_record(encode_envelope(new))
    for cut in (1, len(record) // 2, len(record) - 1):
        path.write_bytes(whole + record[:cut])  # a crash in the middle of the append
        after = QueueStore(store.root)  # a restart
        assert after.load("UPD1") == old
        assert after.list() == [old]
        assert after.recover() == []  # nothing to clean up: the debris is harmless
    after.update(new)  # goes where the last whole record ends, and the debris goes
    assert after.load("UPD1") == new
    assert path.read_bytes() == whole + record


def test_a_damaged_record_hides_nothing_before_it(store: QueueStore) -> None:
    old = queue(store, "UPD2")
    path = store.root / "UPD2.q"
    data = bytearray(path.read_bytes() + _format.envelope_record(b'{"version":1}'))
    data[-3] ^= 0xFF  # the CRC no longer matches
    path.write_bytes(bytes(data))
    assert store.load("UPD2") == old


def test_commit_crash_before_the_header_leaves_nothing_queued(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = store.begin("CR1")
    writer.write(CONTENT)
    writer.flush()  # written in pieces: the placeholder header
    killed = crash_instead_of(monkeypatch, "pwrite")
    with pytest.raises(killed):
        writer.commit(envelope("CR1"))
    monkeypatch.undo()
    os.close(writer._fd)  # the process is gone, and its lock with it
    after = QueueStore(store.root)
    assert after.list() == []
    with pytest.raises(UnknownQueueIdError):
        after.load("CR1")
    assert after.recover() == ["CR1.q: removed (half-written, never committed)"]
    assert files(after) == []


def test_a_file_torn_by_power_loss_is_caught_by_its_checksum(store: QueueStore) -> None:
    stored = queue(store, "TORN1")
    path = store.root / "TORN1.q"
    data = bytearray(path.read_bytes())
    data[_format.PREFIX : _format.PREFIX + 4] = b"\0\0\0\0"  # content pages never written
    path.write_bytes(bytes(data))
    assert store.load("TORN1") == stored  # the envelope reads ...
    with pytest.raises(CorruptEnvelopeError, match="checksum"):
        store.read("TORN1")  # ... the content is never sent
    assert store.set_aside("TORN1")
    assert files(store) == ["corrupt"]
    assert os.listdir(store.root / "corrupt") == ["TORN1.q"]


def test_recover_and_set_aside_leave_a_file_being_written_alone(store: QueueStore) -> None:
    # A server process still finishing a transaction while a new server starts.
    writer = store.begin("LIVE1")
    writer.write(CONTENT)
    writer.flush()
    assert store.recover() == []
    assert not store.set_aside("LIVE1")
    stored = writer.commit(envelope("LIVE1"))
    assert store.list() == [stored]


def _id_of(pid: int) -> str:
    """A queue id as `new_id` makes them in process `pid`."""
    return f"{1_796_000_000_000_000:X}{pid & 0xFFFFF:05X}001"


def test_recover_leaves_a_new_unlocked_file_of_a_live_writer(store: QueueStore) -> None:
    # A runner starting beside live server processes, between one's open(2) of a new
    # file and its flock (the CI run of 2026-12-07 answered 451 to a client so): the
    # file is empty and unlocked, but its writer is alive and about to lock it.
    with subprocess.Popen(["sleep", "30"]) as writer_process:
        try:
            live, dead = _id_of(writer_process.pid), _id_of(_dead_pid())
            store.root.mkdir(exist_ok=True)
            for queue_id in (live, dead):
                (store.root / f"{queue_id}.q").touch()
            assert store.recover() == [f"{dead}.q: removed (half-written, never committed)"]
            assert files(store) == [f"{live}.q"]
        finally:
            writer_process.kill()
    assert store.recover() == [f"{live}.q: removed (half-written, never committed)"]


def test_a_writer_waits_for_a_lock_recover_holds_on_its_new_file(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same race seen from the writer: it finds its new file locked by `recover`
    # (reading it), waits, then writes and commits; before, it failed with EBUSY.
    real_flock = fcntl.flock
    held: list[int] = []

    def flock(fd: int, operation: int) -> None:
        if not held and operation == fcntl.LOCK_EX:
            other = os.open(store.root / f"{queue_id}.q", os.O_RDONLY)
            real_flock(other, fcntl.LOCK_EX)
            held.append(other)
            threading.Timer(0.2, os.close, (other,)).start()
        real_flock(fd, operation)

    queue_id = _id_of(os.getpid())
    writer = store.begin(queue_id)
    writer.write(CONTENT)
    monkeypatch.setattr(fcntl, "flock", flock)
    stored = writer.commit(envelope(queue_id))
    monkeypatch.undo()
    assert held
    assert store.list() == [stored]


def _dead_pid() -> int:
    with subprocess.Popen(["true"]) as gone:
        gone.wait()
    return gone.pid


def test_update_of_a_deleted_message_does_not_resurrect_it(any_store: Queue) -> None:
    store = any_store
    stored = queue(store, "GONE1")
    store.delete("GONE1")
    with pytest.raises(UnknownQueueIdError):
        store.update(stored)
    assert store.ids() == set()
    if isinstance(store, QueueStore):
        assert files(store) == []


def test_update_racing_a_delete_says_so(store: QueueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    stored = queue(store, "RACE1")
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        store.delete("RACE1")  # after update opened the file, before it is done
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    with pytest.raises(UnknownQueueIdError):
        store.update(attrs.evolve(stored, warned=True))
    monkeypatch.undo()
    assert files(store) == []


def test_many_updates_compact_the_file(store: QueueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_store, "COMPACT_AT", 2000)
    stored = queue(store, "COMP1")
    path = store.root / "COMP1.q"
    inode = path.stat().st_ino
    for attempt in range(1, 30):
        latest = attrs.evolve(
            stored, recipients=[attrs.evolve(r, attempts=attempt) for r in stored.recipients]
        )
        store.update(latest)
        assert store.read("COMP1") == (latest, CONTENT)
    assert path.stat().st_size < _format.PREFIX + len(CONTENT) + 2000
    assert path.stat().st_ino != inode  # rewritten (under a tmp name, renamed over)
    assert files(store) == ["COMP1.q"]


def test_delete_waits_for_a_compaction_and_removes_its_result(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_store, "COMPACT_AT", 0)  # every update compacts
    stored = queue(store, "COMP2")
    renaming, release = threading.Event(), threading.Event()
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        renaming.set()
        release.wait(10)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    updater = threading.Thread(target=store.update, args=(attrs.evolve(stored, warned=True),))
    updater.start()
    assert renaming.wait(10)
    deleter = threading.Thread(target=store.delete, args=("COMP2",))
    deleter.start()
    deleter.join(0.2)
    assert deleter.is_alive()  # waiting for the compaction's lock
    release.set()
    updater.join(10)
    deleter.join(10)
    assert files(store) == []  # the rewritten file is what went, not the one it replaced


# -- list, recover, delete -------------------------------------------------------------


def test_list_is_oldest_first(store: QueueStore) -> None:
    late = queue(store, "B2", arrival=200.0)
    early = queue(store, "Z9", arrival=100.0)
    tie = queue(store, "A1", arrival=200.0)
    old = write_pair(store, "C3", arrival=150.0)
    assert store.list() == [early, old, tie, late]


def test_list_is_oldest_first_in_any_store(any_store: Queue) -> None:
    late = queue(any_store, "B2", arrival=200.0)
    early = queue(any_store, "Z9", arrival=100.0)
    tie = queue(any_store, "A1", arrival=200.0)
    assert any_store.list() == [early, tie, late]
    assert any_store.ids() == {"A1", "B2", "Z9"}


def test_list_of_a_missing_directory_is_empty(tmp_path: pathlib.Path) -> None:
    assert QueueStore(tmp_path / "nothing").list() == []
    assert QueueStore(tmp_path / "nothing").recover() == []


def make_debris(store: QueueStore) -> QueueWriter:
    """Everything a crash or damage from outside can leave, in both formats; returns the
    writer of a message still being written."""
    open_writer = store.begin("HALF1")
    open_writer.write(CONTENT)
    open_writer.flush()  # being written: placeholder header, locked
    (store.root / "EMPTY1.q").write_bytes(b"")  # created, never written
    (store.root / "CUT1.q").write_bytes(_format.MAGIC[:5])
    (store.root / "NOTQ1.q").write_bytes(b"something else entirely, and long enough" * 2)
    whole = (store.root / "OK1.q").read_bytes()
    (store.root / "NOENV1.q").write_bytes(whole[: _format.PREFIX + len(CONTENT)])
    (store.root / "OK1.q.1-1.tmp").write_bytes(whole[:10])  # a compaction cut short
    # Format 1 (sansmail 0.1).
    (store.root / "ORPHAN1.msg").write_bytes(CONTENT)  # content, envelope never written
    (store.root / "ENV1.env.1-1.tmp").write_bytes(b"{")  # an envelope never renamed
    (store.root / "NODATA1.env").write_bytes(encode_envelope(envelope("NODATA1")))
    (store.root / "BAD1.env").write_bytes(b"not json")
    (store.root / "BAD1.msg").write_bytes(CONTENT)
    (store.root / "README").write_bytes(b"someone else's file")
    (store.root / "lower.msg").write_bytes(b"not a queue id: not ours")
    return open_writer


def test_list_skips_half_written_entries(store: QueueStore) -> None:
    whole = queue(store, "OK1")
    make_debris(store)
    assert store.list() == [whole]
    with pytest.raises(CorruptEnvelopeError):
        store.load("NOENV1")
    with pytest.raises(CorruptEnvelopeError):
        store.load("NOTQ1")


def test_recover_cleans_and_sets_aside(store: QueueStore) -> None:
    whole = queue(store, "OK1")
    writer = make_debris(store)
    acted = store.recover()
    assert acted == sorted(acted)
    removed = [entry.partition(": ")[0] for entry in acted]
    assert "NOENV1.q: set aside in corrupt/ (no whole envelope record)" in acted
    assert "EMPTY1.q: removed (half-written, never committed)" in acted
    assert set(removed) == {
        "BAD1.env",
        "BAD1.msg",
        "CUT1.q",
        "EMPTY1.q",
        "ENV1.env.1-1.tmp",
        "NODATA1.env",
        "NOENV1.q",
        "NOTQ1.q",
        "OK1.q.1-1.tmp",
        "ORPHAN1.msg",
    }
    assert files(store) == ["HALF1.q", "OK1.q", "README", "corrupt", "lower.msg"]
    assert sorted(os.listdir(store.root / "corrupt")) == [
        "BAD1.env",
        "BAD1.msg",
        "NODATA1.env",
        "NOENV1.q",
        "NOTQ1.q",
    ]
    assert store.list() == [whole]
    assert store.recover() == []
    writer.abort()
    assert files(store) == ["OK1.q", "README", "corrupt", "lower.msg"]


def test_delete(any_store: Queue) -> None:
    store = any_store
    queue(store, "DEL1")
    keep = queue(store, "KEEP1")
    store.delete("DEL1")
    assert store.list() == [keep]
    with pytest.raises(UnknownQueueIdError):
        store.delete("DEL1")
    with pytest.raises(UnknownQueueIdError):
        store.load("DEL1")
    with pytest.raises(UnknownQueueIdError):
        store.read_message("DEL1")


@needs_proc
def test_deletes_can_share_one_directory_fsync(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for queue_id in ("D1", "D2", "D3"):
        queue(store, queue_id)
    recorder = Recorder(monkeypatch, store.root)
    for queue_id in ("D1", "D2", "D3"):
        store.delete(queue_id, sync=False)
    assert recorder.calls == []
    store.sync()
    assert recorder.calls == [("fsync", "DIR")]
    assert files(store) == []


def test_load_refuses_an_envelope_under_another_name(store: QueueStore) -> None:
    queue(store, "REAL1")
    os.rename(store.root / "REAL1.q", store.root / "FAKE1.q")
    with pytest.raises(CorruptEnvelopeError):
        store.load("FAKE1")
    write_pair(store, "REAL2")
    os.rename(store.root / "REAL2.env", store.root / "FAKE2.env")
    os.rename(store.root / "REAL2.msg", store.root / "FAKE2.msg")
    with pytest.raises(CorruptEnvelopeError):
        store.load("FAKE2")


@pytest.mark.parametrize(
    "bad", ["", "abc123", "../ETC", "A/B", "A.B", "A B", "A" * 65, "ÄBC", "A\x00", "-A"]
)
def test_bad_queue_ids_are_refused(any_store: Queue, bad: str) -> None:
    store = any_store
    for call in (store.begin, store.load, store.read_message, store.read, store.delete):
        with pytest.raises(ValueError):
            call(bad)
    with pytest.raises(ValueError):
        envelope(bad)
    assert store.ids() == set()
    if isinstance(store, QueueStore):
        assert not store.root.exists() or files(store) == []


def test_one_runner_lock_at_a_time(store: QueueStore) -> None:
    held = store.lock()
    assert held is not None
    try:
        assert store.lock(wait=False) is None
    finally:
        os.close(held)
    again = store.lock(wait=False)
    assert again is not None
    os.close(again)
    assert store.list() == []  # the lock file is no message
    assert store.recover() == []


# -- format 1 (sansmail 0.1): read, deleted, converted --------------------------------------


def write_pair(
    store: QueueStore, queue_id: str, content: bytes = CONTENT, **changes: Any
) -> QueuedMessage:
    """A message as sansmail 0.1 queued it: ``<id>.msg`` and an indented ``<id>.env``."""
    store.root.mkdir(parents=True, exist_ok=True)
    message = envelope(queue_id, size=len(content), **changes)
    doc = json.loads(encode_envelope(message))
    (store.root / f"{queue_id}.msg").write_bytes(content)
    (store.root / f"{queue_id}.env").write_text(json.dumps(doc, indent=1) + "\n")
    return message


def test_a_format_1_queue_reads_and_deletes(store: QueueStore) -> None:
    old = write_pair(store, "OLD1")
    new = queue(store, "NEW1", arrival=old.arrival + 1)
    assert store.ids() == {"OLD1", "NEW1"}
    assert store.list() == [old, new]
    assert store.read("OLD1") == (old, CONTENT)
    store.delete("OLD1")
    assert files(store) == ["NEW1.q"]


def test_recover_converts_format_1_pairs(store: QueueStore) -> None:
    first = write_pair(store, "OLD1")
    second = write_pair(
        store,
        "OLD2",
        recipients=(
            QueuedRecipient(address="x@remote.test", state="sent", attempts=1),
            QueuedRecipient(address="y@remote.test", attempts=2, next_attempt=5.0),
        ),
    )
    acted = store.recover()
    assert acted == ["OLD1.env, OLD1.msg: now OLD1.q", "OLD2.env, OLD2.msg: now OLD2.q"]
    assert files(store) == ["OLD1.q", "OLD2.q"]
    assert store.read("OLD1") == (first, CONTENT)
    assert store.read("OLD2") == (second, CONTENT)
    assert store.recover() == []


def test_update_converts_a_format_1_pair(store: QueueStore) -> None:
    old = write_pair(store, "OLD3")
    new = attrs.evolve(old, warned=True)
    store.update(new)
    assert files(store) == ["OLD3.q"]
    assert store.read("OLD3") == (new, CONTENT)


def test_a_conversion_cut_short_is_finished_by_recover(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = write_pair(store, "OLD4")
    killed = crash_instead_of(monkeypatch, "unlink")  # dies removing the pair
    with pytest.raises(killed):
        store.update(old)
    monkeypatch.undo()
    assert files(store) == ["OLD4.env", "OLD4.msg", "OLD4.q"]
    assert store.list() == [old]  # one message, not two
    assert store.recover() == [
        "OLD4.env: removed (converted to OLD4.q already)",
        "OLD4.msg: removed (converted to OLD4.q already)",
    ]
    assert store.read("OLD4") == (old, CONTENT)
    assert files(store) == ["OLD4.q"]


# -- envelope validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"recipients": ()},
        {"ret": "ALL"},
        {"arrival": float("nan")},
        {"size": -1},
    ],
)
def test_envelope_validation(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        envelope(**changes)


@pytest.mark.parametrize(
    "field",
    [
        {"attempts": -1},
        {"state": "lost"},
        {"next_attempt": float("inf")},
        {"notify": ("NEVER", "DELAY")},
        {"notify": ("SOMETIMES",)},
        {"notify": ("DELAY", "delay")},
    ],
)
def test_recipient_validation(field: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        QueuedRecipient(address="a@b", **field)


def test_decode_refuses_what_it_did_not_write() -> None:
    good = json.loads(encode_envelope(envelope()))
    damages: tuple[dict[str, Any], ...] = (
        {"version": 2},
        {"version": True},
        {"size": "12"},
        {"size": True},
        {"smtputf8": 1},
        {"recipients": [{}]},
        {"recipients": ["x"]},
        {"recipients": []},
        {"arrival": None},
    )
    for damage in damages:
        doc = {**good, **damage}
        with pytest.raises(CorruptEnvelopeError):
            decode_envelope(json.dumps(doc).encode())
    doc = dict(good)
    del doc["sender"]
    with pytest.raises(CorruptEnvelopeError):
        decode_envelope(json.dumps(doc).encode())
    for junk in (b"", b"[]", b"\xff", b'{"version": NaN}', b'"x"'):
        with pytest.raises(CorruptEnvelopeError):
            decode_envelope(junk)


def test_a_recipient_expanded_at_intake_keeps_its_mailbox(any_store: Queue) -> None:
    store = any_store
    marked = QueuedRecipient(
        address="bob+lists@example.test",
        orcpt="rfc822;info@example.test",
        mailbox=MailboxId(domain="example.test", local="bob"),
    )
    stored = queue(store, "MARK1", recipients=(marked, QueuedRecipient(address="x@remote.test")))
    loaded = store.load("MARK1")
    assert loaded == stored
    assert loaded.recipients[0].mailbox == MailboxId(domain="example.test", local="bob")
    assert loaded.recipients[1].mailbox is None
    doc = json.loads(encode_envelope(stored))
    assert doc["recipients"][0]["mailbox"] == {"domain": "example.test", "local": "bob"}
    # Unmarked recipients are written as before the marker existed.
    assert "mailbox" not in doc["recipients"][1]


def test_an_envelope_from_before_the_marker_reads_unmarked() -> None:
    doc = json.loads(encode_envelope(envelope()))
    assert all("mailbox" not in r for r in doc["recipients"])
    message = decode_envelope(json.dumps(doc).encode())
    assert message == envelope()
    assert [r.mailbox for r in message.recipients] == [None, None]


@pytest.mark.parametrize(
    "mailbox",
    [
        None,
        "bob@example.test",
        {},
        {"domain": "example.test"},
        {"domain": "", "local": "bob"},
        {"domain": "example.test", "local": 7},
    ],
)
def test_decode_refuses_a_damaged_mailbox(mailbox: Any) -> None:
    doc = json.loads(encode_envelope(envelope()))
    doc["recipients"][0]["mailbox"] = mailbox
    with pytest.raises(CorruptEnvelopeError):
        decode_envelope(json.dumps(doc).encode())


# -- hypothesis ----------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
optional_text = st.none() | st.text(max_size=20)
recipients = st.builds(
    QueuedRecipient,
    address=st.text(max_size=30),
    orcpt=optional_text,
    notify=st.just(("NEVER",))
    | st.lists(st.sampled_from(["SUCCESS", "FAILURE", "DELAY"]), unique=True).map(tuple),
    state=st.sampled_from(["pending", "sent", "bounced"]),
    attempts=st.integers(min_value=0, max_value=10**6),
    next_attempt=finite,
    last_reason=st.text(max_size=60),
    mailbox=st.none()
    | st.builds(
        MailboxId,
        domain=st.text(min_size=1, max_size=10).filter(lambda t: "\0" not in t),
        local=st.text(min_size=1, max_size=10).filter(lambda t: "\0" not in t),
    ),
)
messages = st.builds(
    QueuedMessage,
    queue_id=st.just("HYPO1"),
    sender=st.text(max_size=30),
    arrival=finite,
    size=st.integers(min_value=0, max_value=2**40),
    recipients=st.lists(recipients, min_size=1, max_size=4).map(tuple),
    ret=st.sampled_from([None, "FULL", "HDRS"]),
    envid=optional_text,
    smtputf8=st.booleans(),
    body_8bit=st.booleans(),
    warned=st.booleans(),
)


@settings(
    deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(messages)
def test_update_load_round_trip(any_store: Queue, message: QueuedMessage) -> None:
    store = any_store
    if "HYPO1" not in store.ids():
        queue(store, "HYPO1")
    store.update(message)
    assert store.load("HYPO1") == message
    assert store.list() == [message]
    assert store.read("HYPO1") == (message, CONTENT)
    if isinstance(store, QueueStore):
        assert files(store) == ["HYPO1.q"]


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=200) | messages.map(encode_envelope).map(lambda b: b[: len(b) // 2]))
def test_decode_garbage_raises_only_corrupt_envelope(data: bytes) -> None:
    with pytest.raises(CorruptEnvelopeError):
        decode_envelope(data)


# -- mailq ----------------------------------------------------------------------------------


def test_mailq_empty() -> None:
    assert format_mailq([], now=0.0) == "Mail queue is empty\n"


def test_mailq_one_message() -> None:
    message = envelope(
        "5F1C2A9B3E",
        size=1234,
        arrival=1_700_000_000.0,  # Tue Nov 14 22:13:20 2023 UTC
        recipients=(
            QueuedRecipient(
                address="bob@remote.test",
                attempts=2,
                next_attempt=1_700_000_600.0,
                last_reason="connect to mx.remote.test[192.0.2.1]:25:\r\n Connection refused",
            ),
            QueuedRecipient(address="done@remote.test", state="sent"),
            QueuedRecipient(address="new@remote.test"),
        ),
    )
    assert format_mailq([message], now=1_700_000_300.0) == (
        "-Queue ID-  --Size-- ---Arrival Time (UTC)--- -Sender/Recipient-------\n"
        "5F1C2A9B3E      1234 Tue Nov 14 22:13:20 2023 alice@example.test\n"
        "                                              (connect to mx.remote.test[192.0.2.1]:25:"
        " Connection refused; retry in 5m)\n"
        "                                              bob@remote.test\n"
        "                                              new@remote.test\n"
        "\n"
        "-- 2 Kbytes in 1 Request.\n"
    )


def test_mailq_several_messages() -> None:
    first = envelope("AAA1", size=100, arrival=1_000.0, sender="")
    second = envelope(
        "BBB2",
        size=2000,
        arrival=2_000.0,
        recipients=(QueuedRecipient(address="x@y.test", attempts=1, next_attempt=10.0),),
    )
    text = format_mailq([first, second], now=50.0)
    lines = text.splitlines()
    blocks = [line.split()[0] for line in lines[1:] if line and not line.startswith(" ")]
    assert blocks == ["AAA1", "BBB2", "--"]
    assert lines[1].split()[-1] == "MAILER-DAEMON"  # the null reverse-path
    assert "(retry due)" in text
    assert text.count("bob@remote.test") == 1
    assert text.endswith("-- 3 Kbytes in 2 Requests.\n")


def test_mailq_json_lines_one_object_per_message_with_postqueue_keys() -> None:
    first = envelope(
        "AAA1",
        size=100,
        arrival=1_000.5,
        sender="",
        recipients=(
            QueuedRecipient(
                address="bob@remote.test",
                attempts=2,
                next_attempt=400.0,
                last_reason="421 4.7.0\r\n try later",
            ),
            QueuedRecipient(address="done@remote.test", state="sent"),
        ),
    )
    second = envelope("BBB2", size=7, arrival=2_000.0, sender="ä@example.test")
    text = mailq_json_lines([first, second], now=100.0)
    assert text.endswith("\n")
    assert text.count("\n") == 2
    one, two = (json.loads(line) for line in text.splitlines())
    assert one == {
        "queue_name": "deferred",
        "queue_id": "AAA1",
        "arrival_time": 1000,
        "message_size": 100,
        "sender": "",
        "recipients": [
            {
                "address": "bob@remote.test",
                "delay_reason": "421 4.7.0 try later",
                "attempts": 2,
                "next_attempt_in": 300,
            }
        ],
    }
    assert two["queue_name"] == "active"
    assert two["sender"] == "ä@example.test"
    assert "ä" in text  # UTF-8 kept, as the log's JSON keeps it
    assert mailq_json_lines([], now=0.0) == ""


def test_ids_lists_every_envelope_with_one_listing(tmp_path: pathlib.Path) -> None:
    store = QueueStore(tmp_path / "queue")
    assert store.ids() == set()
    writer = store.begin(store.new_id())
    writer.write(b"Subject: x\r\n\r\nhi\r\n")
    message = writer.commit(
        QueuedMessage(
            queue_id=writer.queue_id,
            sender="a@example.org",
            arrival=1.0,
            size=0,
            recipients=[QueuedRecipient(address="b@example.net")],
        )
    )
    assert store.ids() == {message.queue_id}
    store.delete(message.queue_id)
    assert store.ids() == set()
