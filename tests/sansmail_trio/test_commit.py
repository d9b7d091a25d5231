"""The group committer (`sansmail_trio._commit`) with a fake `store_all`: which jobs go
together, that nobody hears "stored" before its batch returned, failures, and
cancellation."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from sansmail_trio._commit import Committer


class Store:
    """A `store_all` that records its batches and can be held (the disk is slow)."""

    def __init__(self, *, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.stored: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)
        self.fail_on = fail_on

    def __call__(self, jobs: Sequence[str]) -> None:
        self.batches.append(list(jobs))
        self.entered.release()
        assert self.gate.wait(10)
        if self.fail_on in jobs:
            raise ValueError(f"bug while storing {self.fail_on}")
        self.stored.update(jobs)

    async def wait_entered(self) -> None:
        await trio.to_thread.run_sync(lambda: self.entered.acquire(timeout=10))


async def test_jobs_that_arrive_during_a_batch_form_the_next_one() -> None:
    store = Store()
    committer = Committer(store, workers=1)
    answered: list[str] = []

    async def commit(job: str) -> None:
        await committer.commit(job)
        assert job in store.stored  # never told before its batch returned
        answered.append(job)

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        store.gate.clear()
        nursery.start_soon(commit, "a")
        await store.wait_entered()  # "a" alone: nothing else was waiting
        for job in ("b", "c", "d"):
            nursery.start_soon(commit, job)
        await trio.testing.wait_all_tasks_blocked()
        assert answered == []
        store.gate.set()
        await store.wait_entered()
        while len(answered) < 4:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [sorted(batch) for batch in store.batches] == [["a"], ["b", "c", "d"]]
    assert answered[0] == "a"


async def test_workers_commit_batches_side_by_side() -> None:
    store = Store()
    committer = Committer(store, workers=2, spread=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        store.gate.clear()
        nursery.start_soon(committer.commit, "a")
        await store.wait_entered()
        nursery.start_soon(committer.commit, "b")
        await store.wait_entered()  # a second batch while the first is held
        assert store.batches == [["a"], ["b"]]
        store.gate.set()
        while len(store.stored) < 2:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_a_second_batch_starts_only_once_enough_jobs_wait() -> None:
    store = Store()
    committer = Committer(store, workers=2, spread=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        store.gate.clear()
        nursery.start_soon(committer.commit, "a")
        await store.wait_entered()
        for job in ("b", "c"):
            nursery.start_soon(committer.commit, job)
        await trio.testing.wait_all_tasks_blocked()
        assert store.batches == [["a"]]  # two waiting: the disk may yet keep up
        nursery.start_soon(committer.commit, "d")
        await store.wait_entered()  # three waiting: a batch beside the first
        assert [sorted(batch) for batch in store.batches] == [["a"], ["b", "c", "d"]]
        store.gate.set()
        while len(store.stored) < 4:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_a_bug_fails_its_batch_and_the_committer_goes_on() -> None:
    store = Store(fail_on="bad")
    committer = Committer(store, workers=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        with pytest.raises(RuntimeError, match="group commit failed") as info:
            await committer.commit("bad")
        assert isinstance(info.value.__cause__, ValueError)
        await committer.commit("good")
        assert store.stored == {"good"}
        nursery.cancel_scope.cancel()


async def test_a_waiting_session_is_answered_even_when_cancelled() -> None:
    store = Store()
    committer = Committer(store, workers=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        store.gate.clear()
        done: list[str] = []

        async def session() -> None:
            with trio.CancelScope() as scope:
                nursery.start_soon(cancel_soon, scope)
                await committer.commit("a")
                done.append("returned")  # the shielded wait returns; then the cancel
                await trio.lowlevel.checkpoint()
            done.append("cancelled" if scope.cancelled_caught else "not cancelled")

        async def cancel_soon(scope: trio.CancelScope) -> None:
            await store.wait_entered()
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            store.gate.set()

        await session()
        assert done == ["returned", "cancelled"]
        assert store.stored == {"a"}
        nursery.cancel_scope.cancel()


async def test_a_cancelled_committer_still_commits_what_is_queued() -> None:
    store = Store()
    committer = Committer(store, workers=1)
    answered: list[str] = []

    async def commit(job: str) -> None:
        await committer.commit(job)
        answered.append(job)

    async with trio.open_nursery() as sessions:
        async with trio.open_nursery() as runner:
            await runner.start(committer.run)
            store.gate.clear()
            sessions.start_soon(commit, "a")
            await store.wait_entered()
            sessions.start_soon(commit, "b")  # queued behind "a"
            await trio.testing.wait_all_tasks_blocked()
            runner.cancel_scope.cancel()
            store.gate.set()
        # The committer has stopped, after both were committed.
        assert store.batches == [["a"], ["b"]]
        sessions.start_soon(commit, "c")  # no committer: committed alone
    assert sorted(answered) == ["a", "b", "c"]
    assert store.stored == {"a", "b", "c"}


def test_a_committer_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        Committer(Store(), workers=0)
    with pytest.raises(ValueError, match="spread"):
        Committer(Store(), spread=0)
