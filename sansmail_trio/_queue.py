"""The queue runner: the event-loop half of delivering what the SMTP sessions queued.

Theory of operation
-------------------
The queue is the directory `sansmail.storage.queue.QueueStore` keeps; every SMTP process
writes into it, and one runner reads it (`sansmail-trio serve` gives it a process of
its own, `_run.py`; an embedded `serve()` runs it in its own loop). What an attempt does
with a message (the loop check, which domains go where, the next hops, the verdicts,
the new envelope, the notifications and their order, the log lines) is decided by
`sansmail.sessions.qmgr` and `sansmail.mail.delivery`. This file owns what needs the
event loop: time, the schedule, worker threads for their blocking steps, DNS
(`sansmail_trio._dns`), the concurrency limits, and writing the log lines it is handed;
the SMTP connections, their TLS and their cache are `sansmail_trio._smtp_client`'s.

**At start** the runner takes the queue's lock (`QueueStore.lock`: one runner per
queue; after a crash, the new one waits for the old one to be gone) and cleans up what a
crash left (`QueueStore.recover`, which converts a queue of sansmail 0.1 too); files
that SMTP processes are writing meanwhile are locked, and recovery leaves them be.

**The schedule** lives in memory: queue id -> when it is next due, with a heap beside
it, so finding what is due costs no scan of every message. A message enters it when
the session that queued it announces it (`wake`, through a pipe when the runner is a
process of its own), when an attempt queues a notification, or when the directory is
listed: at start, after ``queue flush``, and every `RESCAN_INTERVAL` for what nobody
announced (a message put back by hand). An envelope is read again at the start of
every attempt, so ``queue delete`` takes effect at once.

**One pass over due messages**, in batches, so a busy queue costs a few thread hops and
fsyncs per batch rather than per message:

1. *Open*: up to `OPEN_BATCH` due messages in one worker-thread call
   (`QueueManager.open_all`), after `LINGER` for more to fall due (a thread hop per
   message or two costs more CPU than the rest of the open) unless the runner is
   nearly full: draining a backlog, every wait would be a wait of the whole pipeline.
2. *Deliver*: each message's local destinations in a worker thread (through the
   mailboxes' Sieve scripts where the intake queued them for it, `sansmail.sessions.
   lda.LocalDelivery`, made here as the IMAP server makes its store; what the scripts
   queue, redirects and vacation replies, is due at once); its remote ones
   join their domain's line. A domain gets delivery agents as its line grows, never
   more than ``destination_concurrency_limit``; an agent takes up to `BATCH_SIZE`
   messages from the line and delivers them with one walk over the domain's next hops
   (`QueueManager.remote`): the lookups once, then one transaction per message, one
   after the other on the same cached connection. Each verdict is recorded (and
   logged) as soon as its transaction ends.
3. *Finish*: a message every destination of which is recorded goes to the finisher,
   which writes the outcome of whatever has gathered meanwhile (and for `LINGER` more,
   unless the runner is nearly full) in one worker-thread call
   (`QueueManager.finish_all`): the envelope updates, notifications and removals. The
   removals are made durable by one directory fsync every `REMOVAL_SYNC_INTERVAL` at
   most, for all the batches finished meanwhile, and once more when the runner stops:
   a removal only ever follows the next hop's ``250``, so what a crash can bring back
   is a message sent already, which is sent again (the documented window between the
   next hop's ``250`` and our note of it, widened to that interval), never one lost.
   Every other write of the finish (an envelope record, a notification) is durable
   before its batch is done.

Limits: at most `MAX_ACTIVE` messages between open and finish, and at most
``destination_concurrency_limit`` agents (connections) per destination domain.

**A queue every node shares** (`sansmail.storage.queue.SharedQueue`, on PostgreSQL):
every node runs a runner, and the queue keeps the schedule. Instead of the lock, the
recovery, the in-memory schedule and the listings, the runner *claims* due messages
(`QueueManager.claim`: ``FOR UPDATE SKIP LOCKED`` and a lease for this node, opened in
the same worker-thread call), as many as it has room for, whenever it is woken (a
message this node's SMTP processes queued, `wake`; one queued on another node, announced
by NOTIFY "queue", for which the adapter calls `wake` too; a settled attempt making
room), when the queue's soonest message falls due (`SharedQueue.soonest`), and at least
every `POLL_INTERVAL`. Steps 2 and 3 are the same; `finish` writing the outcome lets go
of the lease. While attempts run, their leases are renewed (every third of the lease);
an attempt that ended without an outcome (an internal error, a database that failed) is
given back due after the minimal backoff, and at a stop the messages still in flight are
given back due at once, for another node to take. A node that dies gives back nothing:
its leases end, and the other nodes' claims take its messages over.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import heapq
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import cast

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
    LookupPolicy,
)
from sansmail.mail.envelope import check_queue_id
from sansmail.mail.outbound import ClientTimeouts
from sansmail.mail.retry import RetryPolicy
from sansmail.sessions.lda import LocalDelivery
from sansmail.sessions.qmgr import Attempt, Finished, Opened, QueueManager
from sansmail.storage.aliasfile import Aliases
from sansmail.storage.dkimkeys import DkimKeys
from sansmail.storage.maildir import MaildirImapStore, MaildirStore, MailStore, QuotaLimits
from sansmail.storage.queue import Queue, QueueStore, SharedQueue
from sansmail.storage.sieve import SieveStore
from sansmail.storage.users import Users
from sansmail_trio._dns import DNSError, Resolver
from sansmail_trio._metrics import Metrics
from sansmail_trio._mtasts import MtaSts
from sansmail_trio._smtp_client import SMTPClient

__all__ = [
    "BATCH_SIZE",
    "LINGER",
    "MAX_ACTIVE",
    "OPEN_BATCH",
    "POLL_INTERVAL",
    "REMOVAL_SYNC_INTERVAL",
    "RESCAN_INTERVAL",
    "QueueRunner",
    "pipe_waker",
    "read_wakeups",
]

#: Messages between open and finish at once (Postfix: default_process_limit is 100).
MAX_ACTIVE = 100
#: Due messages opened in one worker-thread call.
OPEN_BATCH = 32
#: Messages one delivery agent takes from its domain's line for one connection.
BATCH_SIZE = 10
#: How often the flush request of ``queue flush`` is looked for.
FLUSH_INTERVAL = 1.0
#: How often the queue directory is listed for messages nobody announced.
RESCAN_INTERVAL = 10.0
#: How long the opener and the finisher wait, once woken, for more work to share the
#: worker-thread call: at a few hundred messages a second, batches of about ten. Not
#: when the runner holds more than `MAX_ACTIVE` - `OPEN_BATCH` messages (a backlog).
LINGER = 0.02
#: A runner on a shared queue claims at least this often: what another node queued
#: without a NOTIFY reaching us, and what a flush made due.
POLL_INTERVAL = 1.0
#: After a claim failed (the database is down): wait this long before the next.
CLAIM_RETRY = 5.0
#: At most this long between a message's removal and the directory fsync that makes it
#: durable (Postfix never syncs its queue directory on removal).
REMOVAL_SYNC_INTERVAL = 1.0


class _Schedule:
    """Queue id -> when it is due, and a heap to find the due ones (stale heap entries,
    whose time no longer matches, are skipped as they surface)."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __contains__(self, queue_id: str) -> bool:
        return queue_id in self._due

    def ids(self) -> set[str]:
        return set(self._due)

    def set(self, queue_id: str, due: float) -> None:
        if self._due.get(queue_id) != due:
            self._due[queue_id] = due
            heapq.heappush(self._heap, (due, queue_id))

    def discard(self, queue_id: str) -> None:
        self._due.pop(queue_id, None)

    def soonest(self) -> float:
        self._drop_stale()
        return self._heap[0][0] if self._heap else math.inf

    def take_due(self, now: float, limit: int) -> list[str]:
        """Up to `limit` ids due at `now`, soonest first, out of the schedule."""
        taken: list[str] = []
        while len(taken) < limit:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                break
            _due, queue_id = heapq.heappop(self._heap)
            del self._due[queue_id]
            taken.append(queue_id)
        return taken

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)


@attrs.define(eq=False)
class _InFlight:
    """A message between open and finish."""

    attempt: Attempt
    #: Destinations not recorded yet.
    remaining: int
    #: An internal error cut the attempt short: nothing is written, it is tried again.
    failed: bool = False

    @property
    def queue_id(self) -> str:
        return self.attempt.message.queue_id


_Item = tuple[_InFlight, Destination]


class QueueRunner:
    """Delivers the queue of one server (see the module docstring)."""

    def __init__(
        self,
        *,
        config: Config,
        queue: Queue,
        store: MailStore,
        users: Users,
        aliases: Aliases,
        resolver: Resolver,
        log: logging.Logger,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        timeouts: ClientTimeouts | None = None,
        metrics: Metrics | None = None,
        local_delivery: LocalDelivery | None = None,
    ) -> None:
        self.config = config
        #: Counts the verdicts and how long they took (None: not counted).
        self.metrics = metrics
        self.queue = queue
        self.resolver = resolver
        self.log = log
        self.clock = clock
        self.rng = rng or random.SystemRandom()
        self.policy = RetryPolicy.from_config(config.delivery)
        if local_delivery is None:
            quota = QuotaLimits(config.quota.storage, users.own_quota)
            local_delivery = LocalDelivery(
                config=config,
                scripts=SieveStore(config.data_dir),
                # As the IMAP server builds its store: what Sieve files appears there,
                # counted against (and refused over) each user's storage limit, also in
                # a runner process of its own, whose mail store counts no limit.
                imap=MaildirImapStore(config.data_dir, hostname=config.hostname, quota=quota),
                # The copies without flags go the direct way, under the same limits.
                store=MaildirStore(config.data_dir, hostname=config.hostname, quota=quota),
                # Only new_id and begin are used: any Queue does (lda.py names the class).
                queue=cast("QueueStore", queue),
            )
        self.manager = QueueManager(
            config=config,
            queue=queue,
            store=store,
            users=users,
            aliases=aliases,
            policy=self.policy,
            dkim_keys=DkimKeys(config.data_dir, config.dkim.selector),
            local_delivery=local_delivery,
        )
        #: The queue, when every node delivers from it (None: one runner, the file one).
        self._shared = queue if isinstance(queue, SharedQueue) else None
        self._schedule = _Schedule()
        self._active: set[str] = set()
        self._wake = trio.Event()
        self._flush = False
        self._lines: dict[str, collections.deque[_Item]] = {}
        self._agents: dict[str, int] = {}
        self._open_due = trio.Event()
        self._finishing: list[_InFlight] = []
        self._finish_due = trio.Event()
        self._unsynced = trio.Event()
        # Conversations (and local deliveries) whose outcome is still to be noted: a
        # stop lets them end, within a grace, before the runner goes (`_finisher`).
        self._unnoted: set[trio.CancelScope] = set()
        self._client = SMTPClient(
            hostname=config.hostname, delivery=config.delivery, timeouts=timeouts
        )
        #: MTA-STS policies (RFC 8461) of the domains delivered to their MX hosts.
        self.mta_sts = MtaSts.from_config(config, resolver)

    # -- control -------------------------------------------------------------------

    def wake(self, queue_id: str | None = None) -> None:
        """Look at the queue now. A session names the message it just queued, which is
        then due at once without listing the directory."""
        if queue_id is not None and queue_id not in self._active and self._shared is None:
            self._schedule.set(queue_id, 0.0)
        self._wake.set()

    def flush(self) -> None:
        """Retry every deferred message now (``queue flush``)."""
        self._flush = True
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: take the queue's runner lock (waiting for a runner of an
        earlier start to be gone), clean up what a crash left (`QueueStore.recover`),
        deliver. At cancellation the conversations under way end first (within
        ``[smtp] shutdown_grace``) and what they settled is written down; the other
        messages in flight keep their envelope as it was, and are tried again at the
        next start (on a shared queue: given back, for any node to take at once)."""
        if self._shared is not None:
            await self._run_shared(self._shared, task_status)
            return
        queue = self.queue
        if not isinstance(queue, QueueStore):
            raise TypeError(f"no runner for a queue of type {type(queue).__name__}")
        lock = await trio.to_thread.run_sync(functools.partial(queue.lock, wait=False))
        if lock is None:
            self.log.warning("waiting for the queue runner of an earlier start to exit")
            lock = await trio.to_thread.run_sync(queue.lock, abandon_on_cancel=True)
        assert lock is not None
        try:
            for name in await trio.to_thread.run_sync(queue.recover):
                self.log.warning("queue recovery: %s", name)
            await self._run(task_status)
        finally:
            os.close(lock)

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._client.run)
            nursery.start_soon(self._opener, nursery)
            nursery.start_soon(self._finisher)
            nursery.start_soon(self._syncer)
            task_status.started()
            now = trio.current_time()
            next_flush, next_scan = now, now  # both at once: everything queued before us
            while True:
                now = trio.current_time()
                if now >= next_flush:
                    if await trio.to_thread.run_sync(self.queue.take_flush_request):
                        self._flush = True
                    next_flush = trio.current_time() + FLUSH_INTERVAL
                if self._flush or now >= next_scan:
                    await self._scan()
                    next_scan = trio.current_time() + RESCAN_INTERVAL
                wait = min(next_flush, next_scan) - trio.current_time()
                until_due = self._schedule.soonest() - self.clock()
                if until_due <= 0:
                    # The opener takes it from here; a settled attempt (room again) or
                    # a new message wakes us.
                    self._open_due.set()
                else:
                    wait = min(wait, until_due)
                with trio.move_on_after(max(0.0, wait)):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _run_shared(self, queue: SharedQueue, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._client.run)
            nursery.start_soon(self._finisher)
            nursery.start_soon(self._renewer, queue)
            task_status.started()
            while True:
                self._wake = trio.Event()
                if not self._backlog():
                    # As the opener: what else falls due meanwhile shares the claim.
                    await trio.sleep(LINGER)
                if self._flush:
                    self._flush = False
                    try:
                        await trio.to_thread.run_sync(queue.request_flush)
                    except OSError as exc:
                        self.log.warning("cannot flush the queue: %s", exc)
                wait = await self._claim(nursery)
                if wait is None:
                    # The claim failed: every message queued on any node, every attempt
                    # settled here would wake us to fail again, at a database refusing
                    # connections (too many clients) as much as at one away.
                    await trio.sleep(CLAIM_RETRY)
                    continue
                with trio.move_on_after(wait):
                    await self._wake.wait()

    async def _claim(self, nursery: trio.Nursery) -> float | None:
        """Claim what is due, as much as there is room for; how long to wait before
        looking again, unless woken (None: the claim failed)."""
        assert self._shared is not None
        queue = self._shared
        while (room := min(OPEN_BATCH, MAX_ACTIVE - len(self._active))) > 0:
            claim = functools.partial(self.manager.claim, room, now=self.clock())
            try:
                opened = await trio.to_thread.run_sync(claim)
            except OSError as exc:
                self.log.warning("cannot claim from the queue: %s", exc)
                return None
            except Exception:
                # A bug: logged, and the runner goes on (what the claim leased, if it
                # did, falls due again when the lease ends).
                self.log.exception("cannot claim from the queue")
                return None
            if any(a.message.queue_id in self._active for a in opened.attempts):
                # Our own attempts, whose leases ended unrenewed (the database was away
                # for a lease): the claim renewed them, and they are under way here.
                fresh = tuple(a for a in opened.attempts if a.message.queue_id not in self._active)
                opened = attrs.evolve(opened, attempts=fresh)
            if trio.current_effective_deadline() == -math.inf and opened.attempts:
                # Stopped while the claim ran (the thread is not abandoned): give them
                # back for another node now, rather than when their leases end.
                with trio.CancelScope(shield=True):
                    now = self.clock()
                    await self._give_back({a.message.queue_id: now for a in opened.attempts})
                await trio.lowlevel.checkpoint()  # the Cancelled
            self._active.update(attempt.message.queue_id for attempt in opened.attempts)
            self._start(opened, nursery)
            if len(opened.attempts) < room:
                try:
                    soonest = await trio.to_thread.run_sync(queue.soonest)
                except OSError:
                    return POLL_INTERVAL
                # The soonest row may be one another node's claim locks right now:
                # never spin on it.
                until = POLL_INTERVAL if soonest is None else soonest - self.clock()
                return min(POLL_INTERVAL, max(LINGER, until))
        return POLL_INTERVAL  # full: a settled attempt wakes us

    async def _renewer(self, queue: SharedQueue) -> None:
        """Renew the leases of the messages in flight, three times per lease."""
        while True:
            await trio.sleep(queue.lease / 3)
            ids = set(self._active)
            if not ids:
                continue
            renew = functools.partial(queue.renew, ids, now=self.clock())
            try:
                held = await trio.to_thread.run_sync(renew)
            except OSError as exc:
                self.log.warning("cannot renew the leases of the queue's claims: %s", exc)
                continue
            # Those settled meanwhile let go of their leases themselves.
            for qid in sorted((ids - held) & self._active):
                self.log.warning("%s: claim lost (another node may be delivering it too)", qid)

    async def _scan(self) -> None:
        known = self._schedule.ids()
        names = await trio.to_thread.run_sync(self.manager.queue_ids)
        # Only what was scheduled before the listing began can be missing from it for
        # being gone; an id announced meanwhile may simply be newer than the listing.
        for gone in known - names:
            self._schedule.discard(gone)
        new = [qid for qid in names if qid not in self._schedule and qid not in self._active]
        if new:
            due = await trio.to_thread.run_sync(self.manager.due, new)
            for qid, when in due.items():
                if qid not in self._schedule and qid not in self._active:
                    self._schedule.set(qid, when)
        if self._flush:
            self._flush = False
            now = self.clock()
            for qid in self._schedule.ids():
                self._schedule.set(qid, now)

    def _settle(self, queue_id: str, due: float | None) -> None:
        """The attempt on `queue_id` is over: due again at `due`, or gone (None)."""
        self._active.discard(queue_id)
        if due is not None:
            self._schedule.set(queue_id, due)
        self._wake.set()

    async def _retry(self, queue_ids: list[str]) -> None:
        """Attempts on `queue_ids` ended without an outcome written: each is due again
        after the minimal backoff (given back to the shared queue, if it is one)."""
        if not queue_ids:
            return
        due = self._retry_later()
        if self._shared is not None:
            await self._give_back(dict.fromkeys(queue_ids, due))
            for qid in queue_ids:
                self._settle(qid, None)
            return
        for qid in queue_ids:
            self._settle(qid, due)

    async def _give_back(self, due: dict[str, float]) -> None:
        assert self._shared is not None
        try:
            await trio.to_thread.run_sync(self._shared.release, due)
        except OSError as exc:
            # Their leases end on their own, and then any node takes them.
            self.log.warning("cannot give back %d queue claims: %s", len(due), exc)

    def _backlog(self) -> bool:
        """Nearly `MAX_ACTIVE` in flight: every wait would hold up the whole pipeline."""
        return len(self._active) > MAX_ACTIVE - OPEN_BATCH

    def _retry_later(self) -> float:
        return self.clock() + self.policy.minimal_backoff

    # -- 1. open ----------------------------------------------------------------------

    async def _opener(self, nursery: trio.Nursery) -> None:
        # One open at a time: what falls due while one is in its worker thread waits
        # for the next, which takes it all at once. Batches grow with the load and
        # cost no waiting when the queue is quiet.
        while True:
            await self._open_due.wait()
            if not self._backlog():
                await trio.sleep(LINGER)
            self._open_due = trio.Event()
            while True:
                room = min(OPEN_BATCH, MAX_ACTIVE - len(self._active))
                ids = self._schedule.take_due(self.clock(), room) if room > 0 else []
                if not ids:
                    break
                self._active.update(ids)
                await self._open(ids, nursery)

    async def _open(self, ids: list[str], nursery: trio.Nursery) -> None:
        try:
            opened = await trio.to_thread.run_sync(self.manager.open_all, ids)
        except Exception:
            self.log.exception("%s: cannot open for delivery", ", ".join(ids))
            await self._retry(ids)
            return
        self._start(opened, nursery)

    def _start(self, opened: Opened, nursery: trio.Nursery) -> None:
        self._write(opened.log)
        for qid in opened.gone:
            self._settle(qid, None)
        touched: set[str] = set()
        for attempt in opened.attempts:
            flight = _InFlight(attempt, remaining=len(attempt.destinations))
            if not attempt.destinations:  # a loop: every recipient is decided already
                self._to_finish(flight)
            for destination in attempt.destinations:
                if destination.local:
                    nursery.start_soon(self._deliver_local, flight, destination)
                else:
                    line = self._lines.setdefault(destination.domain, collections.deque())
                    line.append((flight, destination))
                    touched.add(destination.domain)
        for domain in touched:
            self._add_agents(domain, nursery)

    # -- 2. deliver ---------------------------------------------------------------------

    async def _deliver_local(self, flight: _InFlight, destination: Destination) -> None:
        start = self.clock()
        deliver = functools.partial(flight.attempt.deliver_local, destination, now=start)
        try:
            with self._until_noted():
                began = time.perf_counter()
                result = await trio.to_thread.run_sync(deliver)
                if self.metrics is not None:
                    self.metrics.stored_locally(time.perf_counter() - began)
        except Exception:
            self.log.exception("%s: local delivery failed with an internal error", flight.queue_id)
            self._fail(flight)
            return
        self._record((flight, destination), result, start)

    def _add_agents(self, domain: str, nursery: trio.Nursery) -> None:
        # Enough agents for the line in batches, up to the domain's connection limit.
        limit = self.config.delivery.destination_concurrency_limit
        wanted = min(limit, -(-len(self._lines[domain]) // BATCH_SIZE))
        while self._agents.get(domain, 0) < wanted:
            self._agents[domain] = self._agents.get(domain, 0) + 1
            nursery.start_soon(self._agent, domain)

    async def _agent(self, domain: str) -> None:
        try:
            line = self._lines[domain]
            while line:
                await self._deliver_batch(
                    [line.popleft() for _ in range(min(BATCH_SIZE, len(line)))]
                )
        finally:
            # Forget idle destinations so the tables stay as small as the traffic.
            self._agents[domain] -= 1
            if not self._agents[domain]:
                del self._agents[domain]
                if not self._lines[domain]:
                    del self._lines[domain]

    async def _deliver_batch(self, batch: list[_Item]) -> None:
        """Do the lookups and conversations the batch's walk asks for, until it is
        done, recording each message's verdict as soon as it is settled."""
        plan = self.manager.remote([(f.attempt, d) for f, d in batch], shuffle=self.rng.shuffle)
        start = self.clock()
        started: dict[int, float] = {}
        recorded: set[int] = set()
        try:
            while True:
                step = plan.next_step()
                for index, result in plan.take_settled():
                    recorded.add(index)
                    self._record(batch[index], result, started.get(index, start))
                if isinstance(step, Done):
                    return
                if isinstance(step, Connect):
                    started.setdefault(plan.index, self.clock())
                    # Stopping: start no new conversation.
                    await trio.lowlevel.checkpoint()
                    with self._until_noted() as scope:
                        ended = await self._client.deliver(plan.message, step)
                    if scope.cancelled_caught:  # the stop's grace is over
                        await trio.lowlevel.checkpoint()
                    plan.conversation_ended(ended)
                    continue
                try:
                    if isinstance(step, LookupMX):
                        plan.mx_found(await self.resolver.mx(step.domain))
                    elif isinstance(step, LookupPolicy):
                        plan.policy_found(await self.mta_sts.policy(step.domain))
                    else:
                        plan.addresses_found(await self.resolver.addresses(step.host))
                except DNSError as exc:
                    plan.lookup_failed(str(exc), permanent=exc.permanent)
        except Exception:
            self.log.exception(
                "%s: delivery attempt failed with an internal error",
                ", ".join(flight.queue_id for flight, _ in batch),
            )
            # The recorded ones are done; the others are tried again later.
            for index, (flight, _destination) in enumerate(batch):
                if index not in recorded:
                    self._fail(flight)

    @contextlib.contextmanager
    def _until_noted(self) -> Iterator[trio.CancelScope]:
        """A step a stop lets end: cut after the final dot, a conversation would leave
        the message taken by the next hop and not noted here, to be sent again at the
        next start (RFC 1047). The stop (`_finisher`) gives it a deadline."""
        with trio.CancelScope(shield=True) as scope:
            self._unnoted.add(scope)
            try:
                yield scope
            finally:
                self._unnoted.discard(scope)

    def _record(self, item: _Item, result: DomainResult, start: float) -> None:
        flight, destination = item
        now = self.clock()
        flight.attempt.record(destination, result, delay=now - start, now=now)
        if self.metrics is not None:
            kind = "local" if destination.local else "relay"
            arrival = flight.attempt.message.arrival
            for recipient in destination.recipients:
                status = result.outcomes[recipient.address].status
                self.metrics.delivered(kind, status, 1, arrival)
        self._write(flight.attempt.take_log())
        # Redirects and vacation replies the recipients' Sieve scripts queued: due now.
        for queue_id in flight.attempt.take_queued():
            self.wake(queue_id)
        self._done_with(flight)

    def _fail(self, flight: _InFlight) -> None:
        flight.failed = True
        self._done_with(flight)

    def _done_with(self, flight: _InFlight) -> None:
        flight.remaining -= 1
        if flight.remaining == 0:
            self._to_finish(flight)

    # -- 3. finish ----------------------------------------------------------------------

    def _to_finish(self, flight: _InFlight) -> None:
        self._finishing.append(flight)
        self._finish_due.set()

    async def _finisher(self) -> None:
        try:
            while True:
                await self._finish_due.wait()
                if not self._backlog():
                    await trio.sleep(LINGER)
                self._finish_due = trio.Event()
                await self._finish_gathered()
        finally:
            # Stopping: what the next hops took is written down before we go, or the
            # next start would send it again (a duplicate at every SIGTERM). The
            # conversations under way end first, within the shutdown grace.
            with trio.CancelScope(shield=True):
                deadline = trio.current_time() + self.config.smtp.shutdown_grace
                while self._unnoted:
                    for scope in self._unnoted:
                        scope.deadline = min(scope.deadline, deadline)
                    await trio.sleep(0.01)
                await self._finish_gathered()
                if self._unsynced.is_set():
                    await self._sync_removals()
                if self._shared is not None and self._active:
                    # For another node to take at once, not when their leases end.
                    with trio.move_on_after(self.config.smtp.shutdown_grace + 1):
                        await self._give_back(dict.fromkeys(self._active, self.clock()))

    async def _finish_gathered(self) -> None:
        batch, self._finishing = self._finishing, []
        await self._retry([flight.queue_id for flight in batch if flight.failed])
        batch = [flight for flight in batch if not flight.failed]
        if batch:
            await self._finish(batch)

    async def _finish(self, batch: list[_InFlight]) -> None:
        attempts = [flight.attempt for flight in batch]
        finish = functools.partial(
            self.manager.finish_all,
            attempts,
            now=self.clock(),
            jitters=[self.rng.random() for _ in attempts],
            sync=False,  # the syncer's, for many batches
        )
        try:
            outcomes: list[Finished | Exception] = await trio.to_thread.run_sync(finish)
        except Exception as exc:  # finish_all hands back each attempt's own failure
            self.log.exception("cannot finish delivery attempts")
            outcomes = [exc] * len(batch)
        again: list[str] = []
        for attempt, outcome in zip(attempts, outcomes, strict=True):
            qid = attempt.message.queue_id
            self._write(attempt.take_log())
            if isinstance(outcome, Exception):
                if isinstance(outcome, OSError):
                    # A full or failing disk: the record of this attempt is not written,
                    # the message stays as it was. Not a bug: no traceback.
                    self.log.error(
                        "%s: cannot record the delivery attempt, tried again later: %s",
                        qid,
                        outcome,
                    )
                else:
                    self.log.error(
                        "%s: delivery attempt failed with an internal error", qid, exc_info=outcome
                    )
                again.append(qid)
                continue
            if self._shared is not None:
                # The outcome is written and the lease let go: the queue has the
                # schedule, and the notifications are due there at once.
                self._settle(qid, None)
                continue
            for notice in outcome.queued:
                self._schedule.set(notice, 0.0)
            if outcome.next_due is None:
                self._unsynced.set()
            self._settle(qid, outcome.next_due)
        await self._retry(again)

    async def _syncer(self) -> None:
        """Make removals durable, one directory fsync per `REMOVAL_SYNC_INTERVAL` at
        most, and a last one when cancelled."""
        try:
            while True:
                await self._unsynced.wait()
                await trio.sleep(REMOVAL_SYNC_INTERVAL)
                await self._sync_removals()
        finally:
            if self._unsynced.is_set():
                with trio.CancelScope(shield=True):
                    await self._sync_removals()

    async def _sync_removals(self) -> None:
        # Reset first: a removal made while the fsync runs may miss it and owes another.
        self._unsynced = trio.Event()
        try:
            await trio.to_thread.run_sync(self.manager.sync)
        except OSError:
            # The removals are made; a crash before some later fsync may resend them.
            self.log.exception("cannot sync the queue directory after removals")
            self._unsynced.set()

    def _write(self, lines: Iterable[LogLine]) -> None:
        for line in lines:
            self.log.log(logging.INFO if line.level == "info" else logging.WARNING, "%s", line.text)


# -- waking a runner in another process -------------------------------------------------------


def pipe_waker(fd: int) -> Callable[[str], None]:
    """What an SMTP process calls with each queue id it queued, to announce it to the
    runner process through the pipe whose (non-blocking) write end is `fd`: one line per
    id, written whole (a pipe never splits a write of up to PIPE_BUF octets, 4096 on
    Linux), so any number of processes can share the pipe."""

    def wake(queue_id: str) -> None:
        # Full (the runner is far behind) or gone (it is stopping): the message is on
        # disk, and the runner's next listing of the directory finds it.
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(fd, queue_id.encode("ascii") + b"\n")

    return wake


async def read_wakeups(fd: int, wake: Callable[[str], None]) -> None:
    """Announce to `wake` every queue id read from the pipe's read end `fd` (taken over
    and closed here), until every writer has closed it."""
    async with trio.lowlevel.FdStream(fd) as stream:
        pending = b""
        while data := await stream.receive_some(65536):
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                try:
                    wake(check_queue_id(line.decode("ascii")))
                except ValueError:
                    continue  # nothing we wrote
