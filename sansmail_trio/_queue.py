"""The queue runner: delivers what the SMTP sessions queued, retries, bounces.

Theory of operation
-------------------
The queue is the directory `sansmail.storage.queue.QueueStore` keeps; every SMTP process writes
into it, and one runner (in process 0) reads it. The runner keeps a schedule in memory
(queue id -> when it is next due), filled by listing the directory: at start, when an
SMTP session of this process wakes it, and once a second for messages queued by the
other processes or put back by hand. An envelope is read again at the start of every
attempt, so `queue delete` takes effect at once and nothing is decided from a stale copy.

One attempt takes one message: its pending recipients are grouped by domain, and each
domain is delivered over one SMTP connection (all its recipients in one transaction),
the domains side by side. A domain's next hop comes from `sansmail.mail.routing` (transport,
relayhost, else MX from DNS with shuffling among equals, implicit MX, null MX); each
host of the list, and each address of each host, is tried in turn until one gives a
verdict on the recipients. The SMTP conversation itself is `sansmail.mail.outbound`, a
sans-I/O state machine; this file only moves its bytes, does the TLS handshake it asks
for, and keeps time (RFC 5321 §4.5.3.2's timeouts). Recipients in our own domains (the
bounces we send to local senders) are stored locally through the aliases.

After the attempt `sansmail.storage.queue.record_attempt` (pure) says what changed: the new
envelope is written (atomically, `QueueStore.update`) before anything else happens, so
a crash repeats at most the last attempt and never forgets a verdict it logged. Bounces
(RFC 3464) and delay warnings are queued as new messages, with the null sender, before
the original leaves the queue, so a crash between the two may send a bounce twice but
never loses one. A copy of each bounce's headers goes to the postmaster (Postfix's
``notify_classes = bounce``). Nothing is ever sent to the null sender.

Connections are reused: after a transaction the connection waits up to
`CACHE_TIME_LIMIT` for the next message to the same address, port and TLS level
(Postfix's connection cache), so a backlog for one destination costs one TCP and TLS
handshake per connection, not per message. A cached connection that turns out dead is
replaced by a fresh one at once, without counting as a failed attempt.

Limits: at most `MAX_ACTIVE` messages in delivery at once, and
``destination_concurrency_limit`` connections per destination domain.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import random
import re
import secrets
import ssl
import time
from collections.abc import Callable, Iterable, Sequence

import attrs
import trio

from sansmail import RemoteProtocolError
from sansmail.config import Config, OutboundTLS
from sansmail.mail import bounce, outbound, trace
from sansmail.mail.address import Address, AddressError, MailboxId, parse_address
from sansmail.mail.aliases import expand
from sansmail.mail.attempt import AttemptResult, Outcome, dsn_status, record_attempt
from sansmail.mail.envelope import CorruptEnvelopeError, QueuedMessage, QueuedRecipient
from sansmail.mail.policy import postmaster_mailbox
from sansmail.mail.retry import RetryPolicy
from sansmail.mail.routing import MXLoopError, NullMXError, Route, order_mx, route_for
from sansmail.smtp import Reply
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.maildir import MailStore
from sansmail.storage.queue import QueueStore, UnknownQueueIdError
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
#: Received headers past this mean a forwarding loop (Postfix: hopcount_limit = 50).
HOP_LIMIT = 50
#: How long a connection whose transaction is done waits for the next message to the
#: same host before QUIT (Postfix: smtp_connection_cache_time_limit = 2s), and how many
#: such connections are kept at most.
CACHE_TIME_LIMIT = 2.0
CACHE_SIZE = 100
_RECEIVED = re.compile(rb"^Received:", re.IGNORECASE | re.MULTILINE)


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
class _DestinationSlots:
    """At most `limit` deliveries at once per destination domain."""

    limit: int
    _semaphores: dict[str, trio.Semaphore] = attrs.Factory(dict)
    _users: dict[str, int] = attrs.Factory(dict)

    async def __call__(self, destination: str) -> _Slot:
        semaphore = self._semaphores.get(destination)
        if semaphore is None:
            semaphore = self._semaphores[destination] = trio.Semaphore(self.limit)
        self._users[destination] = self._users.get(destination, 0) + 1
        try:
            await semaphore.acquire()
        except BaseException:
            self._leave(destination)
            raise
        return _Slot(self, destination, semaphore)

    def _leave(self, destination: str) -> None:
        # Forget idle destinations so the table stays as small as the traffic.
        self._users[destination] -= 1
        if not self._users[destination]:
            del self._users[destination]
            del self._semaphores[destination]


@attrs.define
class _Slot:
    owner: _DestinationSlots
    destination: str
    semaphore: trio.Semaphore

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.semaphore.release()
        self.owner._leave(self.destination)


@attrs.define
class _Try:
    """How the conversation with one address ended."""

    results: dict[str, Outcome] | None  # None: no verdict on any recipient
    reason: str = ""
    tls: str | None = None  # the session's TLS, for the log
    permanent: bool = False
    retry_plain: bool = False  # "may" and the TLS handshake failed: try again in clear
    retry_fresh: bool = False  # a cached connection had died: open a new one


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
        self.store = store
        self.users = users
        self.aliases = aliases
        self.resolver = resolver
        self.log = log
        self.clock = clock
        self.rng = rng or random.SystemRandom()
        self.policy = RetryPolicy.from_config(config.delivery)
        self._schedule: dict[str, float] = {}
        self._active: set[str] = set()
        self._wake = trio.Event()
        self._flush = False
        self._slots = trio.CapacityLimiter(MAX_ACTIVE)
        self._destinations = _DestinationSlots(config.delivery.destination_concurrency_limit)
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
        names = await trio.to_thread.run_sync(_queue_ids, self.queue)
        for gone in set(self._schedule) - names:
            if gone not in self._active:
                del self._schedule[gone]
        new = [qid for qid in names if qid not in self._schedule and qid not in self._active]
        if new:
            due = await trio.to_thread.run_sync(self._load_due, new)
            self._schedule.update(due)
        if self._flush:
            self._flush = False
            now = self.clock()
            for qid in self._schedule:
                self._schedule[qid] = now

    def _load_due(self, ids: Iterable[str]) -> dict[str, float]:
        due: dict[str, float] = {}
        for qid in ids:
            try:
                message = self.queue.load(qid)
            except (UnknownQueueIdError, CorruptEnvelopeError, ValueError):
                continue  # being written, deleted, or for `recover` to set aside
            pending = message.pending
            due[qid] = min((r.next_attempt for r in pending), default=0.0)
        return due

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
        try:
            message, content = await trio.to_thread.run_sync(self._read, qid)
        except (UnknownQueueIdError, CorruptEnvelopeError, ValueError):
            return None
        pending = message.pending
        outcomes: dict[str, Outcome] = {}
        if len(_RECEIVED.findall(content, 0, _header_end(content))) > HOP_LIMIT:
            loop = Outcome(
                status="bounced",
                reason=f"mail forwarding loop: more than {HOP_LIMIT} Received headers",
                dsn="5.4.6",
            )
            outcomes = {r.address: loop for r in pending}
        else:
            groups: dict[str, list[QueuedRecipient]] = {}
            for recipient in pending:
                domain = recipient.address.rpartition("@")[2].lower()
                groups.setdefault(domain, []).append(recipient)
            async with trio.open_nursery() as nursery:
                for domain, recipients in groups.items():
                    nursery.start_soon(
                        self._deliver_domain, message, content, domain, recipients, outcomes
                    )
        now = self.clock()
        result = record_attempt(
            message, outcomes, now=now, policy=self.policy, jitter=self.rng.random()
        )
        try:
            if not result.finished:
                await trio.to_thread.run_sync(self.queue.update, result.message)
            await self._notify(message, content, result, now)
            if result.finished:
                await trio.to_thread.run_sync(self.queue.delete, qid)
                self.log.info("%s: removed", qid)
        except UnknownQueueIdError:
            self.log.info("%s: deleted from the queue during delivery", qid)
            return None
        for recipient in result.expired:
            self.log.info("%s: to=<%s>: expired in the queue", qid, _printable(recipient.address))
        return result.next_due

    def _read(self, qid: str) -> tuple[QueuedMessage, bytes]:
        return self.queue.load(qid), self.queue.read_message(qid)

    async def _deliver_domain(
        self,
        message: QueuedMessage,
        content: bytes,
        domain: str,
        recipients: list[QueuedRecipient],
        outcomes: dict[str, Outcome],
    ) -> None:
        start = self.clock()
        if domain in self.config.domains:
            results, relay = await self._deliver_local(message, content, recipients), "local"
            tls = None
        else:
            with await self._destinations(domain):
                results, relay, tls = await self._deliver_remote(
                    message, content, domain, recipients
                )
        delay = self.clock() - start
        for recipient in recipients:
            outcome = results[recipient.address]
            outcomes[recipient.address] = outcome
            self._log_outcome(
                message, recipient=recipient, outcome=outcome, relay=relay, tls=tls, delay=delay
            )

    def _log_outcome(
        self,
        message: QueuedMessage,
        *,
        recipient: QueuedRecipient,
        outcome: Outcome,
        relay: str,
        tls: str | None,
        delay: float,
    ) -> None:
        in_queue = max(0.0, self.clock() - message.arrival)
        parts = [
            f"from=<{_printable(message.sender)}>",
            f"to=<{_printable(recipient.address)}>",
            f"relay={relay}",
            f"size={message.size}",
            f"delay={in_queue:.1f}",
            f"delays={delay:.1f}",
        ]
        if relay not in {"local", "none"}:
            parts.append(f"tls={tls}" if tls else "tls=none")
        parts.append(f"dsn={outcome.dsn}")
        parts.append(f"status={outcome.status} ({_printable(outcome.reason)})")
        self.log.info("%s: %s", message.queue_id, ", ".join(parts))

    # -- local recipients (bounces to our own users) --------------------------------------

    async def _deliver_local(
        self, message: QueuedMessage, content: bytes, recipients: list[QueuedRecipient]
    ) -> dict[str, Outcome]:
        results: dict[str, Outcome] = {}
        mailboxes: list[MailboxId] = []
        accepted: list[QueuedRecipient] = []
        for recipient in recipients:
            expansion = expand(
                self.aliases.table,
                _address_key(recipient.address),
                domains=self.config.domains,
                user_exists=self.users.__contains__,
                recipient_delimiter=self.config.recipient_delimiter,
                read_include=self.aliases.read_include,
            )
            if not expansion.local and not expansion.remote:
                why = "; ".join(expansion.problems) or "no such user"
                results[recipient.address] = Outcome(
                    status="bounced", reason=f"550 5.1.1 <{recipient.address}>: {why}", dsn="5.1.1"
                )
                continue
            # A bounce is delivered where the aliases say, but not forwarded on: an
            # outside target of a local sender's alias is not the sender.
            mailboxes.extend(expansion.local)
            accepted.append(recipient)
        if mailboxes:
            sender = None
            if message.sender:
                sender = parse_address(message.sender, smtputf8=True)
            prefix = trace.return_path(sender)

            def store() -> None:
                delivery = self.store.begin(list(dict.fromkeys(mailboxes)), prefix=prefix)
                try:
                    delivery.write(content)
                    delivery.commit()
                except BaseException:
                    delivery.abort()
                    raise

            try:
                await trio.to_thread.run_sync(store)
                outcome = Outcome(status="sent", reason="delivered to maildir", dsn="2.0.0")
            except OSError as exc:
                outcome = Outcome(
                    status="deferred", reason=f"cannot store the message: {exc}", dsn="4.3.0"
                )
            for recipient in accepted:
                results[recipient.address] = outcome
        return results

    # -- remote recipients -----------------------------------------------------------

    async def _deliver_remote(
        self,
        message: QueuedMessage,
        content: bytes,
        domain: str,
        recipients: list[QueuedRecipient],
    ) -> tuple[dict[str, Outcome], str, str | None]:
        def everyone(outcome: Outcome) -> dict[str, Outcome]:
            return {r.address: outcome for r in recipients}

        delivery = self.config.delivery
        try:
            route = route_for(domain, delivery)
        except ValueError as exc:
            return everyone(Outcome(status="bounced", reason=str(exc), dsn="5.1.2")), "none", None
        try:
            hosts = await self._hosts(route, domain)
        except (NullMXError, MXLoopError) as exc:
            reason = str(exc)
            return everyone(Outcome(status="bounced", reason=reason, dsn=exc.status)), "none", None
        except DNSError as exc:
            if exc.permanent:
                # RFC 3463 X.1.2: bad destination system address.
                outcome = Outcome(status="bounced", reason=str(exc), dsn="5.1.2")
            else:
                outcome = Outcome(status="deferred", reason=str(exc), dsn="4.4.3")
            return everyone(outcome), "none", None
        port = delivery.smtp_port if route.kind in ("mx", "literal") else route.port
        last = "no host to deliver to"
        for host in hosts:
            try:
                addresses = await self.resolver.addresses(host)
            except DNSError as exc:
                last = str(exc)
                continue
            for ip in addresses:
                relay = f"{host}[{ip}]:{port}"
                tls_mode = delivery.tls
                attempt = await self._talk(
                    message, content, recipients, host, ip, port, route, tls_mode=tls_mode
                )
                for _ in range(CACHE_SIZE):
                    if not attempt.retry_fresh:
                        break
                    attempt = await self._talk(
                        message, content, recipients, host, ip, port, route, tls_mode=tls_mode
                    )
                if attempt.retry_plain:
                    # Opportunistic TLS that fails its handshake falls back to plain
                    # text, as Postfix does at "may": the mail still goes, unencrypted.
                    attempt = await self._talk(
                        message, content, recipients, host, ip, port, route, tls_mode="none"
                    )
                if attempt.results is not None:
                    return attempt.results, relay, attempt.tls
                last = f"{relay}: {attempt.reason}"
        return everyone(Outcome(status="deferred", reason=last, dsn="4.4.1")), "none", None

    async def _hosts(self, route: Route, domain: str) -> list[str]:
        if not route.mx_lookup:
            return [route.host]
        records = await self.resolver.mx(route.host)
        return order_mx(
            records, domain=route.host, shuffle=self.rng.shuffle, self_names={self.config.hostname}
        )

    async def _talk(  # noqa: PLR0917 (one call site, and each is a different thing)
        self,
        message: QueuedMessage,
        content: bytes,
        recipients: Sequence[QueuedRecipient],
        host: str,
        ip: str,
        port: int,
        route: Route,
        *,
        tls_mode: OutboundTLS,
    ) -> _Try:
        """One SMTP transaction with `ip`, on a cached connection when there is one."""
        credentials = self._credentials if route.kind == "relayhost" else None
        key: _CacheKey = (ip, port, tls_mode, credentials is not None)
        cached = self._take_cached(key)
        if cached is not None:
            session, stream, tls_text = cached.session, cached.stream, cached.tls
        else:
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    stream = await trio.open_tcp_stream(ip, port)
            except (OSError, trio.TooSlowError) as exc:
                return _Try(None, reason=f"connect failed: {_oserror(exc)}")
            session = outbound.OutboundSession(
                helo_name=self.config.hostname,
                tls=tls_mode,
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
                    verify = tls_mode == "verify"
                    context = self._tls_verify if verify and self._tls_verify else self._tls
                    tls_stream = trio.SSLStream(
                        stream, context, server_hostname=host if verify else None
                    )
                    try:
                        with trio.fail_after(session.timeout):
                            await tls_stream.do_handshake()
                    except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                        why = _tls_failure(exc)
                        return _Try(None, reason=why, retry_plain=tls_mode == "may")
                    stream = tls_stream
                    tls_text = describe(tls_stream)
                    session.tls_started()
                elif isinstance(action, outbound.Ready):
                    if sent_message:
                        session.quit()
                    else:
                        sent_message = True
                        session.start_message(_outbound_message(message, content, recipients))
                elif isinstance(action, outbound.MessageDone):
                    results = {r.address: _outcome(r, host) for r in action.results}
                    keep = self._put_cached(key, _Cached(session, stream, tls_text, 0.0))
                    if not keep:
                        session.quit()
                        await self._finish(session, stream)
                    return _Try(results, tls=tls_text)
                elif isinstance(action, outbound.SessionFailed):
                    if reused:
                        return _Try(None, reason="cached connection failed", retry_fresh=True)
                    reason = action.reason
                    if action.reply is not None:
                        reason = f"{host} said: {_reply_text(action.reply)}"
                    return _Try(None, reason=reason, permanent=action.permanent)
                elif isinstance(action, outbound.Closed):
                    if reused:
                        return _Try(None, reason="cached connection closed", retry_fresh=True)
                    return _Try(None, reason="connection closed")
        except trio.TooSlowError:
            return _Try(None, reason="conversation timed out")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if reused:
                return _Try(None, reason="cached connection lost", retry_fresh=True)
            return _Try(None, reason=f"lost connection: {_oserror(exc)}")
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

    # -- notices -----------------------------------------------------------------------

    async def _notify(
        self, message: QueuedMessage, content: bytes, result: AttemptResult, now: float
    ) -> None:
        if not message.sender:
            for recipient, outcome in result.failed:
                # Never bounce a bounce (RFC 3464 §2); the log has it.
                self.log.info(
                    "%s: to=<%s>: undeliverable bounce discarded (%s)",
                    message.queue_id,
                    _printable(recipient.address),
                    _printable(outcome.reason),
                )
            return
        when = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
        if result.failed:
            statuses = [
                dsn_status(r, o, action="failed", last_attempt=when) for r, o in result.failed
            ]
            await self._send_dsn(message, content, statuses, now, postmaster_copy=True)
        if result.delayed:
            until = datetime.datetime.fromtimestamp(
                message.arrival + self.policy.max_lifetime, tz=datetime.UTC
            )
            statuses = [
                dsn_status(r, None, action="delayed", last_attempt=when, will_retry_until=until)
                for r in result.delayed
            ]
            await self._send_dsn(message, content, statuses, now, postmaster_copy=False)
        if result.succeeded:
            statuses = [
                dsn_status(r, o, action="delivered" if o.remote_mta is None else "relayed")
                for r, o in result.succeeded
            ]
            await self._send_dsn(message, content, statuses, now, postmaster_copy=False)

    async def _send_dsn(
        self,
        message: QueuedMessage,
        content: bytes,
        statuses: Sequence[bounce.RecipientStatus | None],
        now: float,
        *,
        postmaster_copy: bool,
    ) -> None:
        present = [s for s in statuses if s is not None]
        if not present:
            return
        try:
            sender = parse_address(message.sender, smtputf8=True)
        except AddressError:
            self.log.warning("%s: cannot report to sender <%s>", message.queue_id, message.sender)
            return
        hostname = self.config.hostname
        qid = self.queue.new_id()
        dsn = bounce.compose_dsn(
            reporting_mta=hostname,
            original_envelope_id=message.envid,
            arrival=datetime.datetime.fromtimestamp(message.arrival, tz=datetime.UTC),
            sender=sender,
            recipients=present,
            original=content,
            return_full=message.ret == "FULL",
            now=datetime.datetime.fromtimestamp(now, tz=datetime.UTC),
            message_id=f"{qid}@{hostname}",
        )
        await self._enqueue(qid, dsn, sender)
        self.log.info("%s: sender notification (%s): %s", message.queue_id, present[0].action, qid)
        if postmaster_copy:
            postmaster = self._postmaster()
            copy = bounce.postmaster_copy(dsn, postmaster=postmaster)
            copy_qid = self.queue.new_id()
            await self._enqueue(copy_qid, copy, postmaster)
            self.log.info("%s: postmaster notification: %s", message.queue_id, copy_qid)

    def _postmaster(self) -> Address:
        mailbox = postmaster_mailbox(self.config.domains)
        return Address(local_part="postmaster", domain=mailbox.domain)

    async def _enqueue(self, qid: str, content: bytes, recipient: Address) -> None:
        def write() -> None:
            writer = self.queue.begin(qid)
            writer.write(content)
            writer.commit(
                QueuedMessage(
                    queue_id=qid,
                    sender="",
                    arrival=self.clock(),
                    size=0,
                    recipients=[QueuedRecipient(address=str(recipient))],
                    smtputf8=recipient.needs_smtputf8,
                    body_8bit=not content.isascii(),
                )
            )

        await trio.to_thread.run_sync(write)
        self._schedule[qid] = 0.0
        self._wake.set()


# -- helpers ---------------------------------------------------------------------------


def _queue_ids(queue: QueueStore) -> set[str]:
    try:
        names = os.listdir(queue.root)
    except FileNotFoundError:
        return set()
    return {name[:-4] for name in names if name.endswith(".env")}


def _header_end(content: bytes) -> int:
    end = content.find(b"\r\n\r\n")
    return len(content) if end < 0 else end


def _address_key(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local.lower()}@{domain.lower()}"


def _outbound_message(
    message: QueuedMessage, content: bytes, recipients: Iterable[QueuedRecipient]
) -> outbound.OutboundMessage:
    return outbound.OutboundMessage(
        sender=message.sender,
        recipients=tuple(
            outbound.OutboundRecipient(address=r.address, notify=r.notify, orcpt=r.orcpt)
            for r in recipients
        ),
        content=content,
        smtputf8=message.smtputf8,
        body_8bit=message.body_8bit,
        ret=message.ret,
        envid=message.envid,
    )


def _reply_text(reply: Reply) -> str:
    enhanced = f" {reply.enhanced}" if reply.enhanced else ""
    return f"{reply.code}{enhanced} {' '.join(reply.lines)}"


def _outcome(result: outbound.RecipientResult, host: str) -> Outcome:
    reply = result.reply
    dsn = reply.enhanced or f"{reply.code // 100}.0.0"
    # `remote` is False when the session refused the message itself (SMTPUTF8 or SIZE
    # the next hop does not offer): our words, not the host's.
    return Outcome(
        status=result.status,
        reason=_reply_text(reply),
        dsn=dsn,
        remote_mta=host,
        smtp_reply=result.remote,
    )


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


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
