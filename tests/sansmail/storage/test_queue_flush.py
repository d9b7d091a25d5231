"""The flush request (``queue flush``): a trigger file that no queue operation mistakes
for a message."""

from __future__ import annotations

import os
import pathlib

import pytest

from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.storage.queue import QueueStore, _store

CONTENT = b"Subject: hi\r\n\r\nbody\r\n"


def queue(store: QueueStore, queue_id: str) -> QueuedMessage:
    writer = store.begin(queue_id)
    writer.write(CONTENT)
    envelope = QueuedMessage(
        queue_id=queue_id,
        sender="alice@example.test",
        arrival=1_700_000_000.0,
        size=0,
        recipients=(QueuedRecipient(address="bob@remote.test"),),
    )
    return writer.commit(envelope)


@pytest.fixture
def store(tmp_path: pathlib.Path) -> QueueStore:
    store = QueueStore(tmp_path / "queue")
    queue(store, "A1")  # makes the directory, as the first queued message does
    return store


def test_no_request_at_first(store: QueueStore) -> None:
    assert store.take_flush_request() is False


def test_request_is_taken_once(store: QueueStore) -> None:
    store.request_flush()
    assert (store.root / "flush").is_file()
    assert store.take_flush_request() is True
    assert store.take_flush_request() is False
    assert not (store.root / "flush").exists()


def test_two_requests_are_one(store: QueueStore) -> None:
    store.request_flush()
    store.request_flush()
    assert store.take_flush_request() is True
    assert store.take_flush_request() is False


def test_request_survives_a_new_store_object(store: QueueStore) -> None:
    # The CLI and the server are two processes with two QueueStore objects.
    store.request_flush()
    assert QueueStore(store.root).take_flush_request() is True


def test_request_is_fsynced(store: QueueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    monkeypatch.setattr(_store, "_fsync_dir", lambda path: synced.append(os.fspath(path)))
    store.request_flush()
    assert synced == [os.fspath(store.root)]


def test_request_without_a_queue_directory(tmp_path: pathlib.Path) -> None:
    store = QueueStore(tmp_path / "queue")
    with pytest.raises(FileNotFoundError):
        store.request_flush()
    assert not (tmp_path / "queue").exists()  # not made by whoever ran the command
    assert store.take_flush_request() is False


def test_list_and_recover_leave_it_alone(store: QueueStore) -> None:
    store.request_flush()
    assert [m.queue_id for m in store.list()] == ["A1"]
    assert store.recover() == []
    assert (store.root / "flush").is_file()
    assert [m.queue_id for m in store.list()] == ["A1"]
    assert store.take_flush_request() is True


def test_queue_ids_never_collide_with_it(store: QueueStore) -> None:
    store.request_flush()
    # "FLUSH" is a valid queue id; the trigger file cannot be one (lower case).
    queue(store, "FLUSH")
    with pytest.raises(ValueError, match="bad queue id"):
        store.begin("flush")
    assert {m.queue_id for m in store.list()} == {"A1", "FLUSH"}
    store.delete("FLUSH")
    assert store.take_flush_request() is True
    assert [m.queue_id for m in store.list()] == ["A1"]
    assert store.new_id() != "flush"
