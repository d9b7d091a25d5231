"""Repairs of the server-wide stores, each logged in one clear line: a half-written
queue file (removed, or set aside when it looks committed: never delivered either way),
a damaged greylist database (set aside, started afresh) and a damaged generations
file (rewritten)."""

from __future__ import annotations

import logging
import os
import pathlib

import pytest

from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.mail.greylist import Action, GreylistSettings, Triplet
from sansmail.storage.generations import SIZE, Counter, Generations
from sansmail.storage.greylist import FILE_NAME, SqliteGreylistStore
from sansmail.storage.queue import QueueStore, _format

CONTENT = b"Subject: queued\r\n\r\n" + b"line\r\n" * 2000
KEY = Triplet("192.0.2.0/24", "alice@example.org", "bob@example.net")
S = GreylistSettings()


def envelope(queue_id: str) -> QueuedMessage:
    return QueuedMessage(
        queue_id=queue_id,
        sender="alice@example.test",
        arrival=1_700_000_000.0,
        size=len(CONTENT),
        recipients=(QueuedRecipient(address="bob@remote.test"),),
    )


def queued(store: QueueStore, queue_id: str) -> bytes:
    writer = store.begin(queue_id)
    writer.write(CONTENT)
    writer.commit(envelope(queue_id))
    return (store.root / f"{queue_id}.q").read_bytes()


def test_half_written_queue_files_are_never_delivered(tmp_path: pathlib.Path) -> None:
    store = QueueStore(tmp_path / "queue")
    whole = queued(store, "WHOLE1")
    # Cut at every kind of place a crash before the commit's fsync can leave.
    (store.root / "HEAD1.q").write_bytes(whole[: len(_format.MAGIC) + 5])
    (store.root / "BODY1.q").write_bytes(whole[: _format.PREFIX + 100])
    (store.root / "ENV1.q").write_bytes(whole[: len(whole) - 10])
    acted = store.recover()
    assert acted == [
        "BODY1.q: set aside in corrupt/ (the content is cut short)",
        "ENV1.q: set aside in corrupt/ (no whole envelope record)",
        "HEAD1.q: removed (half-written, never committed)",
    ]
    assert [m.queue_id for m in store.list()] == ["WHOLE1"]
    # Set aside, not removed: a file that looks committed might be somebody's only copy.
    assert sorted(os.listdir(store.root / "corrupt")) == ["BODY1.q", "ENV1.q"]
    assert store.recover() == []


def test_an_unreadable_queue_entry_is_reported_not_fatal(tmp_path: pathlib.Path) -> None:
    store = QueueStore(tmp_path / "queue")
    queued(store, "GOOD1")
    (store.root / "ODD1.q").mkdir()
    assert store.recover() == ["ODD1.q: left alone, cannot be read (Is a directory)"]
    assert [m.queue_id for m in store.list()] == ["GOOD1"]


def test_a_torn_content_is_set_aside_before_it_is_sent(tmp_path: pathlib.Path) -> None:
    store = QueueStore(tmp_path / "queue")
    path = store.root / "TORN1.q"
    data = bytearray(queued(store, "TORN1"))
    data[_format.PREFIX + 10 : _format.PREFIX + 14] = b"\0\0\0\0"  # pages never written
    path.write_bytes(bytes(data))
    assert store.recover() == []  # the envelope reads: only the checksum can tell
    with pytest.raises(ValueError, match="checksum"):
        store.read("TORN1")
    assert store.set_aside("TORN1")
    assert store.list() == []


@pytest.mark.parametrize("damage", ["garbage", "pages"])
def test_a_damaged_greylist_is_set_aside_and_started_afresh(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    path = tmp_path / FILE_NAME
    store = SqliteGreylistStore(path)
    for n in range(300):
        store.consult(Triplet(f"192.0.{n % 250}.0/24", f"s{n}@example.org", "r@x.test"), S)
    store.close()
    with open(path, "r+b") as f:
        if damage == "garbage":
            f.write(b"not a database at all" * 10)
        else:
            f.seek(4096)
            f.write(b"\xa5" * 16384)
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        decision = SqliteGreylistStore(path).consult(KEY, S)
    assert decision.action is Action.GREYLIST  # answered, from a fresh database
    (line,) = [r for r in caplog.records if r.name == "sansmail.repair"]
    assert line.levelno == logging.WARNING
    assert f"greylist database {path} was damaged" in line.message
    assert (tmp_path / (FILE_NAME + ".corrupt")).exists()
    assert SqliteGreylistStore(path).counts() == (1, 0)


def test_a_damaged_generations_file_is_rewritten_and_logged(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "generations"
    path.write_bytes(b"junk")
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        generations = Generations.open(tmp_path)
    assert generations[Counter.USERS] == 0
    assert path.stat().st_size == SIZE
    (line,) = [r for r in caplog.records if r.name == "sansmail.repair"]
    assert f"{path} was damaged (4 octets" in line.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        Generations.open(tmp_path)  # whole now
        (tmp_path / "new").mkdir()
        Generations.open(tmp_path / "new")  # and a new file is no repair either
    assert caplog.records == []
