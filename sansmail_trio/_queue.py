"""The queue runner: the event-loop half of delivering what the SMTP sessions queued.

Theory of operation
-------------------
The queue is the directory `sansmail.storage.queue.QueueStore` keeps; every SMTP process
writes into it, and one runner (in process 0) reads it. What an attempt does with a
message (the loop check, which domains go where, the next hops, the verdicts, the new
envelope, the bounces and their order, the log lines) is
`sansmail.sessions.qmgr`'s and `sansmail.mail.delivery`'s; this file owns what needs the
event loop: time, the schedule, worker threads for the blocking steps, DNS
(`sansmail_trio._dns`), sockets, the TLS handshake, the connection cache and the limits.

The schedule lives in memory (queue id -> when it is next due), filled by listing the
directory: at start, when an SMTP session of this process wakes the runner, and once a
second for messages queued by the other processes or put back by hand. An envelope is
read again at the start of every attempt, so `queue delete` takes effect at once.

One attempt takes one message: the destinations (`Attempt.destinations`) are delivered
side by side, a local one in a worker thread, a remote one by driving its
`sansmail.mail.delivery.RemoteDelivery` (lookups, then connections) until it is done.
Each connection runs a `sansmail.mail.outbound.OutboundSession`: this file moves its
bytes, does the TLS handshake it asks for and keeps RFC 5321 §4.5.3.2's timeouts, and
reports how it ended as a `sansmail.mail.delivery.Conversation`. Then `Attempt.finish`
writes the outcome in a worker thread, and the runner writes the log lines it is handed.

Connections are reused: after a transaction the connection waits up to
`CACHE_TIME_LIMIT` for the next message to the same address, port and TLS level
(Postfix's connection cache), so a backlog for one destination costs one TCP and TLS
handshake per connection, not per message. A cached connection that turns out dead is
replaced by a fresh one at once, without counting as a failed attempt.

Limits: at most `MAX_ACTIVE` messages in delivery at once, and
``destination_concurrency_limit`` connections per destination domain.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable

import attrs
import trio

from sansmail import RemoteProtocolError
from sansmail.config import Config
from sansmail.mail import outbound
from sansmail.mail.delivery import (
    TIMED_OUT,
    Connect,
    Conversation,
    Destination,
    DomainResult,
    Done,
    LogLine,
    LookupMX,
    RemoteDelivery,
    connect_failed,
    connection_closed,
    connection_lost,
    delivered,
    handshake_failed,
    session_failed,
)
from sansmail.mail.retry import RetryPolicy
from sansmail.sessions.qmgr import Attempt, QueueManager
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.maildir import MailStore
from sansmail.storage.queue import QueueStore
from sansmail.storage.users import UserStore
from sansmail_trio._dns import DNSError, Resolver
from sansmail_trio._tls import describe

__all__ = ["MAX_ACTIVE", "QueueRunner", "client_tls_context"]

#: Messages in delivery at once (Postfix: default_process_limit is 100).
MAX_ACTIVE = 100
#: How often the queue directory is listed for messages other processes queued.
SCAN_INTERVAL = 1.0
#: TCP connect timeout per address (Postfix: smtp_connect_timeout = 30s).
CONNECT_TIMEOUT = 30.0
#: How long a connection whose transaction is done waits for the next message to the
#: same host before QUIT (Postfix: smtp_connection_cache_time_limit = 2s), and how many
#: such connections are kept at most.
CACHE_TIME_LIMIT = 2.0
CACHE_SIZE = 100


def client_tls_context(*, verify: bool, cafile: os.PathLike[str] | str | None) -> ssl.SSLContext:
    """The context for outbound STARTTLS. Opportunistic TLS (``may``, ``encrypt``)
    checks no certificate: an MX host name comes from unauthenticated DNS, so a check
    proves nothing there, and refusing would push the mail to plain text (RFC 7435).
    ``verify`` checks the chain and the MX host name, as Postfix's ``verify`` level."""
    context = ssl.create_default_context(cafile=os.fspath(cafile) if cafile else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@attrs.define
class _Destination:
    semaphore: trio.Semaphore
    users: int = 0  # holding or waiting for a slot


#: What a cached connection can be reused for: address, port, TLS level, with AUTH.
_CacheKey = tuple[str, int, str, bool]


@attrs.define
class _Cached:
    session: outbound.OutboundSession
    stream: trio.abc.Stream
    tls: str | None
    since: float


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
        delivery = config.delivery
        self._tls = client_tls_context(verify=False, cafile=None)
        self._tls_verify = (
            client_tls_context(verify=True, cafile=delivery.tls_ca_file)
            if delivery.tls == "verify"
            else None
        )
        self._credentials: tuple[str, str] | None = None
        self._cache: dict[_CacheKey, list[_Cached]] = {}

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
        if self.config.delivery.relayhost_password_file is not None:
            text = await trio.to_thread.run_sync(
                self.config.delivery.relayhost_password_file.read_text
            )
            self._credentials = (self.config.delivery.relayhost_username, text.strip())
        next_scan = 0.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._expire_cache, nursery)
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
                plan.conversation_ended(await self._converse(plan.message, step))
                continue
            try:
                if isinstance(step, LookupMX):
                    plan.mx_found(await self.resolver.mx(step.domain))
                else:
                    plan.addresses_found(await self.resolver.addresses(step.host))
            except DNSError as exc:
                plan.lookup_failed(str(exc), permanent=exc.permanent)

    async def _converse(self, message: outbound.OutboundMessage, step: Connect) -> Conversation:
        ended = await self._talk(message, step)
        # Cached connections found dead are replaced at once; the cache is finite, and a
        # fresh connection never asks for another.
        for _ in range(CACHE_SIZE):
            if ended.again != "fresh":
                break
            ended = await self._talk(message, step)
        return ended

    async def _talk(self, message: outbound.OutboundMessage, step: Connect) -> Conversation:
        """One SMTP transaction with `step.ip`, on a cached connection when there is one."""
        credentials = self._credentials if step.authenticate else None
        key: _CacheKey = (step.ip, step.port, step.tls, credentials is not None)
        cached = self._take_cached(key)
        if cached is not None:
            session, stream, tls_text = cached.session, cached.stream, cached.tls
        else:
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    stream = await trio.open_tcp_stream(step.ip, step.port)
            except (OSError, trio.TooSlowError) as exc:
                return connect_failed(_oserror(exc))
            session = outbound.OutboundSession(
                helo_name=self.config.hostname,
                tls=step.tls,
                credentials=credentials,
                nonce=secrets.token_urlsafe(18),
            )
            tls_text = None
        reused = cached is not None
        sent_message = False
        keep = False
        try:
            while True:
                action = session.next_action()
                if isinstance(action, outbound.Send):
                    with trio.fail_after(session.timeout):
                        await stream.send_all(action.data)
                elif isinstance(action, outbound.NeedData):
                    with trio.fail_after(session.timeout):
                        data = await stream.receive_some(65536)
                    session.receive_data(data)
                elif isinstance(action, outbound.StartTLS):
                    context = (self._tls_verify if step.verify_name else None) or self._tls
                    tls_stream = trio.SSLStream(stream, context, server_hostname=step.verify_name)
                    try:
                        with trio.fail_after(session.timeout):
                            await tls_stream.do_handshake()
                    except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                        return handshake_failed(_tls_failure(exc), level=step.tls)
                    stream = tls_stream
                    tls_text = describe(tls_stream)
                    session.tls_started()
                elif isinstance(action, outbound.Ready):
                    if sent_message:
                        session.quit()
                    else:
                        sent_message = True
                        session.start_message(message)
                elif isinstance(action, outbound.MessageDone):
                    keep = self._put_cached(key, _Cached(session, stream, tls_text, 0.0))
                    if not keep:
                        session.quit()
                        await self._finish(session, stream)
                    return delivered(action, host=step.host, tls=tls_text)
                elif isinstance(action, outbound.SessionFailed):
                    return session_failed(action, host=step.host, reused=reused)
                elif isinstance(action, outbound.Closed):
                    return connection_closed(reused=reused)
        except trio.TooSlowError:
            return TIMED_OUT
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            return connection_lost(_oserror(exc), reused=reused)
        finally:
            if not keep:
                await trio.aclose_forcefully(stream)

    def _take_cached(self, key: _CacheKey) -> _Cached | None:
        pool = self._cache.get(key)
        if not pool:
            return None
        cached = pool.pop()
        if not pool:
            del self._cache[key]
        return cached

    def _put_cached(self, key: _CacheKey, cached: _Cached) -> bool:
        if sum(len(pool) for pool in self._cache.values()) >= CACHE_SIZE:
            return False
        cached.since = trio.current_time()
        self._cache.setdefault(key, []).append(cached)
        return True

    async def _expire_cache(self, nursery: trio.Nursery) -> None:
        try:
            while True:
                await trio.sleep(CACHE_TIME_LIMIT / 4)
                limit = trio.current_time() - CACHE_TIME_LIMIT
                for key in list(self._cache):
                    pool = self._cache[key]
                    old = [c for c in pool if c.since <= limit]
                    if not old:
                        continue
                    pool[:] = [c for c in pool if c.since > limit]
                    if not pool:
                        del self._cache[key]
                    for cached in old:
                        nursery.start_soon(self._close_cached, cached)
        finally:
            with trio.CancelScope(shield=True):
                for pool in self._cache.values():
                    for cached in pool:
                        await trio.aclose_forcefully(cached.stream)
                self._cache.clear()

    async def _close_cached(self, cached: _Cached) -> None:
        try:
            cached.session.quit()
            await self._finish(cached.session, cached.stream)
        finally:
            await trio.aclose_forcefully(cached.stream)

    async def _finish(self, session: outbound.OutboundSession, stream: trio.abc.Stream) -> None:
        # QUIT and its reply are a courtesy; the verdict is already in.
        with trio.move_on_after(10):
            try:
                while True:
                    action = session.next_action()
                    if isinstance(action, outbound.Send):
                        await stream.send_all(action.data)
                    elif isinstance(action, outbound.NeedData):
                        data = await stream.receive_some(65536)
                        session.receive_data(data)
                        if not data:
                            return
                    else:
                        return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            except RemoteProtocolError:
                return


# -- helpers ---------------------------------------------------------------------------


def _oserror(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _tls_failure(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "TLS handshake timed out"
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return f"TLS handshake failed: {cause.reason}"
    return "TLS handshake failed"
