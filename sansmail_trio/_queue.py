"""The queue runner: the event-loop half of delivering what the SMTP sessions queued.

Theory of operation
-------------------
The queue is the directory `sansmail.storage.queue.QueueStore` keeps; every SMTP process
writes into it, and one runner (in process 0) reads it. What an attempt does with a
message (the loop check, which domains go where, the next hops, the verdicts, the new
envelope, the notifications and their order, the log lines) is decided by
`sansmail.sessions.qmgr` and `sansmail.mail.delivery`. This file owns what needs the
event loop: time, the schedule, worker threads for their blocking steps, DNS
(`sansmail_trio._dns`), the concurrency limits, and writing the log lines it is handed;
the SMTP connections, their TLS and their cache are `sansmail_trio._smtp_client`'s.

The schedule lives in memory (queue id -> when it is next due), filled by listing the
directory: at start, when an SMTP session of this process wakes the runner, and once a
second for messages queued by the other processes or put back by hand. An envelope is
read again at the start of every attempt, so `queue delete` takes effect at once.

One attempt takes one message (`QueueManager.open`): its destinations are delivered side
by side, a local one in a worker thread, a remote one by answering its
`sansmail.mail.delivery.RemoteDelivery` (DNS lookups, then connections) until it is done;
then `Attempt.finish`, in a worker thread, writes the outcome.

Limits: at most `MAX_ACTIVE` messages in delivery at once, and
``destination_concurrency_limit`` connections per destination domain.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable

import attrs
import trio

from sansmail.config import Config
from sansmail.mail.delivery import (
    Connect,
    Destination,
    DomainResult,
    Done,
    LogLine,
    LookupMX,
    RemoteDelivery,
)
from sansmail.mail.retry import RetryPolicy
from sansmail.sessions.qmgr import Attempt, QueueManager
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.maildir import MailStore
from sansmail.storage.queue import QueueStore
from sansmail.storage.users import UserStore
from sansmail_trio._dns import DNSError, Resolver
from sansmail_trio._smtp_client import SMTPClient

__all__ = ["MAX_ACTIVE", "QueueRunner"]

#: Messages in delivery at once (Postfix: default_process_limit is 100).
MAX_ACTIVE = 100
#: How often the queue directory is listed for messages other processes queued.
SCAN_INTERVAL = 1.0


@attrs.define
class _Destination:
    semaphore: trio.Semaphore
    users: int = 0  # holding or waiting for a slot


class QueueRunner:
    """Delivers the queue of one server (see the module docstring)."""

    def __init__(
        self,
        *,
        config: Config,
        queue: QueueStore,
        store: MailStore,
        users: UserStore,
        aliases: AliasSource,
        resolver: Resolver,
        log: logging.Logger,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.resolver = resolver
        self.log = log
        self.clock = clock
        self.rng = rng or random.SystemRandom()
        self.policy = RetryPolicy.from_config(config.delivery)
        self.manager = QueueManager(
            config=config,
            queue=queue,
            store=store,
            users=users,
            aliases=aliases,
            policy=self.policy,
        )
        self._schedule: dict[str, float] = {}
        self._active: set[str] = set()
        self._wake = trio.Event()
        self._flush = False
        self._slots = trio.CapacityLimiter(MAX_ACTIVE)
        self._destinations: dict[str, _Destination] = {}
        self._client = SMTPClient(hostname=config.hostname, delivery=config.delivery)

    # -- control -------------------------------------------------------------------

    def wake(self, queue_id: str | None = None) -> None:
        """Look at the queue now. An SMTP session of this process names the message it
        just queued, which is then due at once without listing the directory."""
        if queue_id is not None and queue_id not in self._active:
            self._schedule[queue_id] = 0.0
        self._wake.set()

    def flush(self) -> None:
        """Retry every deferred message now (``queue flush``)."""
        self._flush = True
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. Messages in flight at cancellation keep their envelope
        as it was, and are tried again at the next start."""
        next_scan = 0.0
        async with trio.open_nursery() as nursery:
            await nursery.start(self._client.run)
            task_status.started()
            while True:
                # The directory is listed once a second, not at every wake-up: under
                # load a wake-up per message would list a directory of thousands of
                # files per message.
                if trio.current_time() >= next_scan:
                    if await trio.to_thread.run_sync(self.queue.take_flush_request):
                        self._flush = True
                    await self._scan()
                    next_scan = trio.current_time() + SCAN_INTERVAL
                self._start_due(nursery)
                wait = next_scan - trio.current_time()
                soonest = min(self._schedule.values(), default=math.inf) - self.clock()
                with trio.move_on_after(max(0.0, min(wait, soonest))):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _scan(self) -> None:
        names = await trio.to_thread.run_sync(self.manager.queue_ids)
        for gone in set(self._schedule) - names:
            if gone not in self._active:
                del self._schedule[gone]
        new = [qid for qid in names if qid not in self._schedule and qid not in self._active]
        if new:
            due = await trio.to_thread.run_sync(self.manager.due, new)
            self._schedule.update(due)
        if self._flush:
            self._flush = False
            now = self.clock()
            for qid in self._schedule:
                self._schedule[qid] = now

    def _start_due(self, nursery: trio.Nursery) -> None:
        now = self.clock()
        for qid, due in sorted(self._schedule.items(), key=lambda item: item[1]):
            if due > now:
                break
            if qid in self._active:
                continue
            self._active.add(qid)
            self._schedule[qid] = math.inf
            nursery.start_soon(self._attempt_task, qid)

    async def _attempt_task(self, qid: str) -> None:
        try:
            async with self._slots:
                due = await self._attempt(qid)
        except Exception:
            self.log.exception("%s: delivery attempt failed with an internal error", qid)
            due = self.clock() + self.policy.minimal_backoff
        finally:
            self._active.discard(qid)
        if due is None:
            self._schedule.pop(qid, None)
        else:
            self._schedule[qid] = due
        self._wake.set()

    # -- one attempt ------------------------------------------------------------------

    async def _attempt(self, qid: str) -> float | None:
        """Try every pending recipient of `qid` once; returns when it is due next, None
        when it left the queue."""
        attempt = await trio.to_thread.run_sync(self.manager.open, qid)
        if attempt is None:
            return None
        async with trio.open_nursery() as nursery:
            for destination in attempt.destinations:
                nursery.start_soon(self._deliver, attempt, destination)
        try:
            finished = await trio.to_thread.run_sync(
                functools.partial(attempt.finish, now=self.clock(), jitter=self.rng.random())
            )
        finally:
            self._write(attempt.take_log())
        for notice in finished.queued:
            self._schedule[notice] = 0.0
        return finished.next_due

    async def _deliver(self, attempt: Attempt, destination: Destination) -> None:
        start = self.clock()
        if destination.local:
            result = await trio.to_thread.run_sync(attempt.deliver_local, destination)
        else:
            async with self._destination_slot(destination.domain):
                plan = attempt.remote(destination, shuffle=self.rng.shuffle)
                result = await self._deliver_remote(plan)
        now = self.clock()
        attempt.record(destination, result, delay=now - start, now=now)
        self._write(attempt.take_log())

    @contextlib.asynccontextmanager
    async def _destination_slot(self, domain: str) -> AsyncIterator[None]:
        limit = self.config.delivery.destination_concurrency_limit
        slot = self._destinations.setdefault(domain, _Destination(trio.Semaphore(limit)))
        slot.users += 1
        try:
            async with slot.semaphore:
                yield
        finally:
            # Forget idle destinations so the table stays as small as the traffic.
            slot.users -= 1
            if not slot.users:
                del self._destinations[domain]

    def _write(self, lines: Iterable[LogLine]) -> None:
        for line in lines:
            self.log.log(logging.INFO if line.level == "info" else logging.WARNING, "%s", line.text)

    async def _deliver_remote(self, plan: RemoteDelivery) -> DomainResult:
        """Do the lookups and conversations `plan` asks for, until it is done."""
        while True:
            step = plan.next_step()
            if isinstance(step, Done):
                return step.result
            if isinstance(step, Connect):
                plan.conversation_ended(await self._client.deliver(plan.message, step))
                continue
            try:
                if isinstance(step, LookupMX):
                    plan.mx_found(await self.resolver.mx(step.domain))
                else:
                    plan.addresses_found(await self.resolver.addresses(step.host))
            except DNSError as exc:
                plan.lookup_failed(str(exc), permanent=exc.permanent)
