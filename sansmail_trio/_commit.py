"""Group commit for the SMTP intake: the messages of every session of a server process
are made durable in batches, by a few worker threads of its own.

Theory of operation
-------------------
A session whose message has ended hands its job (`sansmail.sessions.smtpd.Storing`) to
`Committer.commit` and waits. Every job waiting goes into one batch as soon as a worker
is free; the worker runs the blocking `store_all` on the batch and wakes each of its
sessions, which then send their own ``250`` or ``451``. While a batch is on its way to
disk the loop goes on serving the other connections, and the jobs that end meanwhile
wait and form the next batch, so a batch closes exactly when the disk is ready for it:
there is no timer. This is PostgreSQL's group commit with its default
``commit_delay = 0`` (whoever flushes the WAL flushes every commit record written by
then; waiting on purpose only pays when many transactions are in flight), and jbd2's
batching of the fsyncs that arrive during a journal commit into the next one.

One batch in flight is the rule; a second one starts beside it only once `SPREAD` jobs
are waiting, and at most `WORKERS` run at once, like PostgreSQL's ``commit_siblings``
turned around: parallel batches cost a hand-off and a directory sync each, and pay only
when the disk is not keeping up. Within a batch the files are fsync'd one after the
other, so a slow disk with one batch at a time would set the pace of the whole process
(measured on the development machine: one worker alone gave 0.90x the throughput at 50
connections); with the spread rule the batches stay large when the disk keeps up
(measured against starting a batch whenever a worker is free: 0.90x the CPU per
message, 1.05x the throughput).

The workers are plain threads fed through a queue, and hand results back with
`TrioToken.run_sync_soon`; batches start from `commit` and from the hand-back itself,
so no task of ours wakes up in between. A hand-off costs about half of
`trio.to_thread.run_sync`'s (measured: 26-30 µs of CPU against 55-65 µs per call on the
development VM), and thread hand-offs were the largest single cost of a small message in
the profile.

Durability is unchanged: a job is reported stored only once `store_all` returned for
its batch, and each session answers from its own job's outcome. A batch that fails
with anything but an OSError (a bug) fails every job in it; those sessions raise and
answer 421.

Cancellation. A session waits for its job shielded, as it waited for a worker thread of
its own before: once a message is on its way to disk it is finished and answered, never
abandoned. `run` (the threads' life) runs in a nursery that outlives the connections;
when it is cancelled it still commits what is waiting, lets the batches in flight
finish and stops the threads. A session that finds no committer running commits its job
alone, in a thread of Trio's.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import trio

__all__ = ["SPREAD", "WORKERS", "Committer"]

J = TypeVar("J")

#: Batches in flight at once (one worker thread each).
WORKERS = 4
#: Jobs that must be waiting before a batch starts beside one already in flight.
SPREAD = 4


class _Waiter:
    __slots__ = ("error", "task")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.error: BaseException | None = None


def _not_abortable(_raise_cancel: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


_Batch = list[tuple[J, _Waiter]]


class Committer(Generic[J]):
    """Runs `store_all` (blocking) on batches of jobs, up to `workers` batches at once,
    a second one only once `spread` jobs wait; see the module docstring. `took` hears
    how long each batch took."""

    def __init__(
        self,
        store_all: Callable[[Sequence[J]], None],
        *,
        workers: int = WORKERS,
        spread: int = SPREAD,
        took: Callable[[float], None] | None = None,
    ) -> None:
        if workers < 1 or spread < 1:
            raise ValueError("a committer needs at least one worker, and spread >= 1")
        self._store_all = store_all
        #: Told how many seconds each batch's `store_all` took, in the worker thread
        #: (the metrics' store latency).
        self._took = took
        self._workers = workers
        self._spread = spread
        self._pending: collections.deque[tuple[J, _Waiter]] = collections.deque()
        self._in_flight = 0
        self._jobs: queue.SimpleQueue[_Batch[J] | None] = queue.SimpleQueue()
        self._running = False
        self._closing = False
        self._idle = trio.Event()

    async def commit(self, job: J) -> None:
        """Return once `job` went through `store_all` (its outcome is in the job)."""
        if not self._running:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._store_all, [job])
            return
        waiter = _Waiter(trio.lowlevel.current_task())
        self._pending.append((job, waiter))
        self._dispatch()
        # A wait that cancellation cannot end, as a shielded one, without the Event and
        # the cancel scope each message cost: `_finished` wakes exactly this task once.
        await trio.lowlevel.wait_task_rescheduled(_not_abortable)
        if waiter.error is not None:
            raise RuntimeError("group commit failed") from waiter.error

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs the worker threads until cancelled; then commits what is still waiting,
        lets the batches in flight finish and stops the threads."""
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
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._running = False
            self._closing = True
            with trio.CancelScope(shield=True):
                self._dispatch()
                while self._in_flight:
                    self._idle = trio.Event()
                    await self._idle.wait()
                for _ in threads:
                    self._jobs.put(None)

    def _dispatch(self) -> None:
        # Runs in the loop's thread whenever a job arrives or a batch finishes: every job
        # waiting goes into one batch as soon as a worker is free, and into a batch beside
        # those in flight only when enough wait (the disk is not keeping up).
        while (
            self._pending
            and self._in_flight < self._workers
            and (not self._in_flight or len(self._pending) >= self._spread or self._closing)
        ):
            batch = list(self._pending)
            self._pending.clear()
            self._in_flight += 1
            self._jobs.put(batch)

    def _work(self, token: trio.lowlevel.TrioToken) -> None:
        # A worker thread: one batch at a time, until told to stop (None).
        while (batch := self._jobs.get()) is not None:
            failure: BaseException | None = None
            start = time.perf_counter()
            try:
                self._store_all([job for job, _waiter in batch])
            except BaseException as exc:  # noqa: BLE001 (every session of the batch hears it)
                failure = exc
            if self._took is not None:
                self._took(time.perf_counter() - start)
            try:
                token.run_sync_soon(self._finished, batch, failure)
            except trio.RunFinishedError:  # the loop is gone (interpreter shutdown)
                return

    def _finished(self, batch: _Batch[J], failure: BaseException | None) -> None:
        for _job, waiter in batch:
            waiter.error = failure
            trio.lowlevel.reschedule(waiter.task)
        self._in_flight -= 1
        self._dispatch()
        if not self._in_flight:
            self._idle.set()
