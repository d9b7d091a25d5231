"""Word from the other nodes: PostgreSQL ``LISTEN``/``NOTIFY`` for a node on the
PostgreSQL backend, the counterpart of `_notify`'s inotify on Maildir.

Why one connection per process. Every writer sends ``pg_notify('sansmail', payload)`` in
its transaction (`sansmail.storage.pg._mailrows.notify`), which PostgreSQL delivers at
commit to every connection listening on the channel: one per process is enough, and a
connection per idler would cost the database a backend each. The payload says what
changed: ``mail:<folder id>`` (a delivery, a flag, an expunge), ``users``, ``aliases``,
``sieve:<mailbox>``, ``queue``.

`Listener.run` holds that connection (`sansmail.storage.pg._listen`) and reads it in a
worker thread, in calls of at most `POLL` seconds each, so that cancelling the task
(shutdown) waits for one short call rather than abandoning a thread. Each payload goes
to:

- the subscriptions to it: `subscribe(keys)` gives a `_notify.Subscription`, the very
  object IMAP IDLE waits on for inotify, woken (not queued to: a burst of flag changes
  wakes an idler once) when one of its keys arrives;
- the handlers registered with `on`, for a key or a prefix (``"sieve:"``): plain
  callables run on the event loop, which must not block (the stores' ``changed`` marks
  a snapshot stale; the reload runs in a worker thread, see `run_listener`).

A lost connection. PostgreSQL keeps a notification only for the connections listening
when it commits, so whatever was sent while this node was not listening is lost. After
every (re)connection therefore every subscription is woken and every handler called
with its own key, as if everything had changed: idlers sync their views, stores re-read.
The first connection does the same: a change committed between a store's first read and
the ``LISTEN`` would otherwise go unheard. Reconnecting is retried every `RETRY` seconds
while the database is away, with a warning the first time.

While this node cannot listen, it cannot know what the others change: a password
changed or a user deleted on another node would stay in force here for as long as the
listener is away (the database may well answer the other connections: its
``max_connections`` reached, a LISTEN refused). So the handlers are called at once when
the connection is lost, and again every `RESYNC` seconds until it is back: the stores
re-read, and what they hold is never more than `RESYNC` seconds behind the database
while it answers. A re-read that fails is tried again every `RESYNC` seconds (the store
stays stale meanwhile, so `verify_password` tries it too), not left until the next
notification.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final, Protocol

import trio

from sansmail.storage.pg._db import Database, DatabaseError
from sansmail.storage.pg._listen import NotificationConnection
from sansmail.storage.users import UserError
from sansmail_trio._notify import Subscription, set_key_watcher

__all__ = ["POLL", "RESYNC", "RETRY", "Listener", "Reloadable", "run_listener"]

log = logging.getLogger("sansmail.notify")

#: Seconds one read of the connection waits at most (how long shutdown may wait for it).
POLL: Final = 0.2
#: Seconds between attempts to connect again after the connection was lost.
RETRY: Final = 1.0
#: Seconds between the stores' re-reads while the node cannot listen, and between
#: attempts of a re-read that failed (see the module docstring).
RESYNC: Final = 10.0

Handler = Callable[[str], None]


class Listener:
    """One process's ``LISTEN`` connection and who waits on it (see the module
    docstring). Subscribe and register handlers from the event loop; `run` it in a
    task."""

    def __init__(
        self, db: Database, *, poll: float = POLL, retry: float = RETRY, resync: float = RESYNC
    ) -> None:
        self._db = db
        self._poll = poll
        self._retry = retry
        self._resync = resync
        self._subscribers: dict[str, set[Subscription]] = {}
        # keys -> the turn their subscribers share, and how many hold it (as `_notify`).
        self._turns: dict[tuple[str, ...], tuple[trio.Lock, int]] = {}
        self._handlers: dict[str, list[Handler]] = {}
        self._prefix_handlers: list[tuple[str, Handler]] = []
        #: Connections made so far (1 after the first, +1 after each reconnection).
        self.connections = 0
        #: The server process of the current connection, or None while there is none.
        self.backend_pid: int | None = None

    @contextlib.contextmanager
    def subscribe(self, keys: Iterable[str]) -> Iterator[Subscription]:
        """A `Subscription` woken when any of `keys` (payloads) is notified, and after a
        reconnection. Idlers subscribing to the same keys share one turn."""
        wanted = tuple(dict.fromkeys(keys))
        turn, holders = self._turns.get(wanted, (trio.Lock(), 0))
        self._turns[wanted] = (turn, holders + 1)
        subscription = Subscription(True, turn)
        for key in wanted:
            self._subscribers.setdefault(key, set()).add(subscription)
        try:
            yield subscription
        finally:
            for key in wanted:
                subscribers = self._subscribers.get(key)
                if subscribers is not None:
                    subscribers.discard(subscription)
                    if not subscribers:
                        del self._subscribers[key]
            turn, holders = self._turns[wanted]
            if holders == 1:
                del self._turns[wanted]
            else:
                self._turns[wanted] = (turn, holders - 1)

    def on(self, key: str, handler: Handler) -> None:
        """Call `handler(payload)` on the event loop for each notification of `key`, or,
        when `key` ends with ":", of every payload starting with it. After a
        reconnection it is called with `key` itself (everything may have changed)."""
        if key.endswith(":"):
            self._prefix_handlers.append((key, handler))
        else:
            self._handlers.setdefault(key, []).append(handler)

    async def run(
        self, *, task_status: trio.TaskStatus[Listener] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled, reconnecting as needed. Started (`nursery.start`) once
        the first attempt to connect is over, whether it succeeded or not: a node whose
        database is away starts all the same, and hears again when it is back."""
        started = False
        warned = False
        resync_at = trio.current_time()
        while True:
            try:
                connection = await trio.to_thread.run_sync(NotificationConnection, self._db)
            except DatabaseError as exc:
                if not warned:
                    log.warning("cannot listen for other nodes' changes (%s); retrying", exc)
                    warned = True
                if not started:
                    task_status.started(self)
                    started = True
                if trio.current_time() >= resync_at:
                    # Deaf: the stores re-read on a clock instead (module docstring).
                    self._handlers_changed()
                    resync_at = trio.current_time() + self._resync
                await trio.sleep(self._retry)
                continue
            connected_at = trio.current_time()
            try:
                self.connections += 1
                self.backend_pid = connection.backend_pid
                if warned:
                    log.warning("listening for other nodes' changes again")
                    warned = False
                self._everything_changed()
                if not started:
                    task_status.started(self)
                    started = True
                while True:
                    payloads = await trio.to_thread.run_sync(connection.wait, self._poll)
                    for payload in payloads:
                        self._dispatch(payload)
            except DatabaseError as exc:
                log.warning("%s; listening again (every change is taken as made)", exc)
                warned = True
                # What the others change from now on goes unheard: the stores re-read at
                # once (the idlers are woken once listening again, as the docstring says).
                self._handlers_changed()
                resync_at = trio.current_time() + self._resync
            finally:
                self.backend_pid = None
                connection.close()
            if trio.current_time() - connected_at < self._retry:
                # A connection the server ends at once (a pooler refusing LISTEN, a
                # session timeout) must not become a loop of connections and re-reads.
                await trio.sleep(self._retry)

    def _dispatch(self, payload: str) -> None:
        for subscription in self._subscribers.get(payload, ()):
            subscription.wake()
        for handler in self._handlers.get(payload, ()):
            _call(handler, payload)
        for prefix, handler in self._prefix_handlers:
            if payload.startswith(prefix):
                _call(handler, payload)

    def _everything_changed(self) -> None:
        for subscribers in self._subscribers.values():
            for subscription in subscribers:
                subscription.wake()
        self._handlers_changed()

    def _handlers_changed(self) -> None:
        for key, handlers in self._handlers.items():
            for handler in handlers:
                _call(handler, key)
        for prefix, handler in self._prefix_handlers:
            _call(handler, prefix)


def _call(handler: Handler, payload: str) -> None:
    # A handler's bug must not stop the node from hearing the rest.
    try:
        handler(payload)
    except Exception:
        log.exception("handling the notification %r failed", payload)


class Reloadable(Protocol):
    """A store kept in memory and re-read when told (`PgUserStore`, `PgAliasSource`)."""

    def changed(self) -> None: ...

    @property
    def stale(self) -> bool:
        """Whether a re-read is still owed (one failed: `PgAliasSource` says so here,
        not by raising)."""
        ...

    def reload_if_changed(self) -> bool: ...


async def run_listener(
    db: Database,
    *,
    reload: Mapping[str, Reloadable] | None = None,
    reloaded: Callable[[str], None] | None = None,
    poll: float = POLL,
    retry: float = RETRY,
    resync: float = RESYNC,
    task_status: trio.TaskStatus[Listener] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The node's `Listener`, run until cancelled, made the event loop's `KeyWatcher`
    (`_notify.key_watcher`, which IMAP IDLE subscribes on). `reload` maps a payload
    (``"users"``, ``"aliases"``) to the store it concerns: when it is notified the store
    is marked stale at once and re-read in a worker thread (one re-read at a time per
    store; notifications arriving during one make one more), then `reloaded(payload)` is
    called. Started with the `Listener` once its first connection attempt is over."""
    pg_listener = Listener(db, poll=poll, retry=retry, resync=resync)
    followers = [_Follower(key, store, reloaded, resync) for key, store in (reload or {}).items()]
    for follower in followers:
        pg_listener.on(follower.key, follower.heard)
    set_key_watcher(pg_listener)
    try:
        async with trio.open_nursery() as nursery:
            for follower in followers:
                nursery.start_soon(follower.run)
            await nursery.start(pg_listener.run)
            task_status.started(pg_listener)
    finally:
        set_key_watcher(None)


class _Follower:
    """Re-reads one store each time its key is heard, in a worker thread; a re-read that
    failed is tried again every `resync` seconds until one succeeds."""

    def __init__(
        self,
        key: str,
        store: Reloadable,
        reloaded: Callable[[str], None] | None,
        resync: float = RESYNC,
    ) -> None:
        self.key = key
        self._store = store
        self._reloaded = reloaded
        self._resync = resync
        self._pending = trio.Event()

    def heard(self, _payload: str) -> None:
        self._store.changed()
        self._pending.set()

    async def run(self) -> None:
        failing = False
        while True:
            if failing:
                # Not only the next notification: with the listener connected there may
                # be none for long, and the snapshot stays stale meanwhile.
                with trio.move_on_after(self._resync):
                    await self._pending.wait()
            else:
                await self._pending.wait()
            self._pending = trio.Event()
            try:
                changed = await trio.to_thread.run_sync(self._store.reload_if_changed)
            except Exception as exc:
                # The database away: the store keeps what it read and stays stale.
                if not failing:
                    if isinstance(exc, UserError | DatabaseError):
                        log.warning(
                            "cannot re-read %s after a change (%s); keeping what was read,"
                            " retrying",
                            self.key,
                            exc,
                        )
                    else:
                        log.exception(
                            "cannot re-read %s after a change; keeping what was read, retrying",
                            self.key,
                        )
                failing = True
                continue
            if changed:
                log.info("%s reloaded (changed on a node)", self.key)
            if self._reloaded is not None:
                self._reloaded(self.key)
            # Stale still: the re-read failed without raising (the aliases keep their
            # table and say why in their problems), so it is tried again.
            still = self._store.stale
            if failing and not still:
                log.warning("re-read %s again", self.key)
            failing = still
