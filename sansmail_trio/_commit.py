"""Group commit for the SMTP intake: one task per server process that makes the messages
of every session durable in batches, on a few worker threads of its own.

Theory of operation
-------------------
A session whose message has ended hands its job (`sansmail.sessions.smtpd.Storing`) to
`Committer.commit` and waits. The committer task takes every job waiting as one batch,
gives it to a free worker thread, which runs the blocking `store_all` on it, and wakes
each session of the batch, which then sends its own ``250`` or ``451``. While batches
are on their way to disk, the loop goes on serving the other connections, and the jobs
that arrive meanwhile form the next batch. So a batch closes exactly when a worker is
free: there is no timer. This is PostgreSQL's group commit with its default
``commit_delay = 0`` (whoever flushes the WAL flushes every commit record written by
then; waiting on purpose only pays when many transactions are in flight) and jbd2's
batching of concurrent fsyncs into one journal commit, without its adaptive sleep:
under load a batch grows to the messages that end while the workers are busy, and a
lone message is committed at once.

Why a few workers (`WORKERS`) and not one: within a batch the files are fsync'd one
after the other, so one worker alone would let a slow disk set the pace of the whole
process (measured on the development machine, a single worker halved the throughput at
50 connections); a few batches in flight let the disk overlap their syncs, while each
batch still shares its directory syncs and its hand-off to a thread.

The workers are plain threads fed through a queue, and hand results back with
`TrioToken.run_sync_soon`: a hand-off costs about half of `trio.to_thread.run_sync`'s
(measured: 26-30 µs of CPU against 55-65 µs per call on the development VM), and
thread hand-offs were the largest single cost of a small message in the profile.

Durability is unchanged: a job is reported stored only once `store_all` returned for
its batch, and each session answers from its own job's outcome. A batch that fails
with anything but an OSError (a bug) fails every job in it; those sessions raise and
answer 421.

Cancellation. A session waits for its job shielded, as it waited for a worker thread of
its own before: once a message is on its way to disk it is finished and answered,
never abandoned. The committer task lives in a nursery that outlives the connections;
when it is cancelled it still commits what is queued, waits for the batches in flight,
and stops its threads. A session that finds no committer running commits its job
alone, in a thread of Trio's.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import trio

__all__ = ["WORKERS", "Committer"]

J = TypeVar("J")

#: Batches in flight at once (one worker thread each).
WORKERS = 4


class _Waiter:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: BaseException | None = None


_Batch = list[tuple[J, _Waiter]]


class Committer(Generic[J]):
    """Runs `store_all` (blocking) on batches of jobs, up to `workers` batches at once;
    see the module docstring."""

    def __init__(self, store_all: Callable[[Sequence[J]], None], *, workers: int = WORKERS) -> None:
        if workers < 1:
            raise ValueError("a committer needs at least one worker")
        self._store_all = store_all
        self._workers = workers
        self._slots = trio.Semaphore(workers)
        self._send, self._receive = trio.open_memory_channel[tuple[J, _Waiter]](math.inf)
        self._jobs: queue.SimpleQueue[_Batch[J] | None] = queue.SimpleQueue()
        self._running = False

    async def commit(self, job: J) -> None:
        """Return once `job` went through `store_all` (its outcome is in the job)."""
        waiter = _Waiter()
        if not self._running:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._store_all, [job])
            return
        self._send.send_nowait((job, waiter))
        with trio.CancelScope(shield=True):
            await waiter.done.wait()
        if waiter.error is not None:
            raise RuntimeError("group commit failed") from waiter.error

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The committer task: runs until cancelled."""
        token = trio.lowlevel.current_trio_token()
        threads = [
            threading.Thread(
                target=self._work, args=(token,), name=f"sansmail-commit-{n}", daemon=True
            )
            for n in range(self._workers)
        ]
        for thread in threads:
            thread.start()
        self._running = True
        task_status.started()
        waiting: _Batch[J] = []
        try:
            while True:
                waiting.append(await self._receive.receive())
                # The batch closes when a worker is free: what arrived meanwhile joins.
                await self._slots.acquire()
                waiting += self._queued()
                self._jobs.put(waiting)
                waiting = []
        finally:
            self._running = False
            with trio.CancelScope(shield=True):
                waiting += self._queued()
                if waiting:
                    await self._slots.acquire()
                    self._jobs.put(waiting)
                for _ in range(self._workers):  # every batch in flight has finished
                    await self._slots.acquire()
                for _ in threads:
                    self._jobs.put(None)

    def _queued(self) -> _Batch[J]:
        queued = []
        while True:
            try:
                queued.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                return queued

    def _work(self, token: trio.lowlevel.TrioToken) -> None:
        # A worker thread: one batch at a time, until told to stop (None).
        while (batch := self._jobs.get()) is not None:
            failure: BaseException | None = None
            try:
                self._store_all([job for job, _waiter in batch])
            except BaseException as exc:  # noqa: BLE001 (every session of the batch hears it)
                failure = exc
            try:
                token.run_sync_soon(self._finished, batch, failure)
            except trio.RunFinishedError:  # the loop is gone (interpreter shutdown)
                return

    def _finished(self, batch: _Batch[J], failure: BaseException | None) -> None:
        for _job, waiter in batch:
            waiter.error = failure
            waiter.done.set()
        self._slots.release()
