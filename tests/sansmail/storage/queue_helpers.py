"""The queue stores the parametrized tests run against: the directory (`QueueStore`)
and the table every node shares (`PgQueueStore`, on the `pg_db` fixture's database)."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

import pytest

from sansmail.storage.pg._queue import PgQueueStore
from sansmail.storage.queue import Queue, QueueStore

#: Makes a store of the test's backend; `clock` feeds `new_id` (and PG's flush).
MakeQueue = Callable[..., Queue]


@pytest.fixture(name="backend", params=["maildir", "postgresql"])
def backend_fixture(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(name="make_queue")
def make_queue_fixture(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> MakeQueue:
    if backend == "maildir":

        def make_file_queue(clock: Callable[[], float] = time.time) -> Queue:
            return QueueStore(tmp_path / "queue", clock=clock)

        return make_file_queue
    db = request.getfixturevalue("pg_db")

    def make_pg_queue(clock: Callable[[], float] = time.time) -> Queue:
        return PgQueueStore(db, node="test:1", clock=clock)

    return make_pg_queue


@pytest.fixture(name="any_store")
def any_store_fixture(make_queue: MakeQueue) -> Queue:
    return make_queue()
