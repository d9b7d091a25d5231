"""The IMAP services on Trio, `imap` (STARTTLS offered, RFC 9051 §6.2.1) and `imaps`
(implicit TLS, RFC 8314): one task per connection, moving bytes between the socket and a
`sansmail.sessions.imapd.ImapConversation`, which decides everything.

This file owns what the conversation cannot: time (the autologout timer, shutdown, the
failure delays of logging in, IDLE's keep-alives), the TLS handshake, COMPRESS's deflate
(`_compress.DeflateStream`, put under the core right after the OK), the worker threads
for the blocking calls (every command of a logged-in session, which work on the store),
learning that a folder changed (`_notify`: inotify), and writing the log lines the
conversation hands over.

IDLE. After "+ idling" the session waits for the client as between commands (the
autologout timer and shutdown cut that wait, as any other), while a second task
subscribes to the selected folder's directories (`ImapConversation.watch_paths`), or on
the PostgreSQL backend to its notification keys (``watch_keys``, heard by the process's
database listener, `_pgnotify`, so a change made through any node wakes it), and,
each time they change, has the conversation sync the view in a worker thread and sends
its news at once. A change is seen by every server process (the kernel tells each
watcher), whichever process, queue runner or outside tool made it. Every
`IDLE_KEEPALIVE` seconds the pusher also syncs (a check that costs two ``stat`` calls
when nothing changed, the net under what inotify cannot see: an index rebuilt, changes
on another machine's mount) and says ``* OK Still here``; a folder that cannot be
watched is synced every `FALLBACK_POLL` seconds instead. When DONE comes, the pusher
finishes what it was sending, so no news computed by a sync is lost (the view has
counted it as told), and the DONE is answered.

Time: `SessionTime`'s one cancel scope per session. Before each wait for a command its
deadline is set to the conversation's `timeout` (the autologout timer); expiry sends its
BYE and closes. Shutdown cancels the same scope, but only while the session waits for a
command: a command being answered (an APPEND being stored) is finished first, then the
session says BYE. Worker threads are never abandoned, so a store call always completes.

Pipelining. mbsync sends one ``UID FETCH`` per message, hundreds at a time, and the
session answers them as they stand in the core's buffer, without a wait between them:
no autologout timer is armed, nothing is flushed (answers go out when the client must
be waited for, or past `RUN_OCTETS`), and the commands that work on the store go to a
worker thread as runs, up to `RUN_COMMANDS` in one trip (`_answer_run`), instead of a
trip each; the core serialises the answers in the thread, in order, and hands out each
next command only once the one before is answered, so the commands run one after the
other as always (RFC 9051 §5.5). A run stops at a command the loop answers (IDLE,
STARTTLS, COMPRESS, LOGIN), at the end of the session, and at shutdown.

Memory after logout. What a session held is freed when it ends, but freed is not given
back: glibc's malloc keeps freed heap (and the heaps of the worker threads) for reuse, so
a server that held 1,000 sessions would stay that big after they left. `MemoryTrimmer`
runs, a little after sessions end and at most every `TRIM_INTERVAL`, a full garbage
collection (what sessions left in reference cycles) and glibc's ``malloc_trim(0)`` (free
pages go back to the system), in a worker thread, off any session's path. What it cannot
give back is CPython's own: an arena of small objects (1 MiB) goes back only once all of
it is free, and objects that outlive the sessions made beside theirs (Trio keeps up to
1,000 expired deadline entries until their time passes) keep some arenas; with
``PYTHONMALLOC=malloc`` those too are glibc's, trimmed page by page.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from time import time_ns

import attrs
import trio

from sansmail import PAUSED, LocalProtocolError, RemoteProtocolError, imap
from sansmail.config import Config
from sansmail.mail.pacing import connection_pacer
from sansmail.sessions.common import Refusal
from sansmail.sessions.imapd import IDLE_KEEPALIVE, ImapConversation, ImapService
from sansmail_trio._compress import DeflateStream, InflateError
from sansmail_trio._counts import SharedCounts
from sansmail_trio._log import line_logger
from sansmail_trio._login import log_in
from sansmail_trio._notify import FALLBACK_POLL, Subscription, key_watcher, watcher
from sansmail_trio._session import (
    SessionRegistry,
    SessionTime,
    UserSlot,
    carry,
    new_session_id,
    send_all,
    upgrade,
)
from sansmail_trio._tls import TLSContextHolder
from sansmail_trio._wire import Wire

__all__ = ["IMAPService", "MemoryTrimmer", "release_memory"]

log = logging.getLogger("sansmail.imap")

#: A run of pipelined commands answered in one worker-thread trip ends after this many
#: commands or once this many octets of answers wait to be written (see Pipelining).
RUN_COMMANDS = 64
RUN_OCTETS = 256 * 1024
#: Pipelined events taken from the core's buffer in a row without a checkpoint (a worker
#: thread trip is one), so that one client's pipeline of NOOPs cannot hold the loop.
EAGER_EVENTS = 16

#: Seconds after a session ends before memory is given back (a burst of logouts is
#: handled once), and the least seconds between two such.
TRIM_DELAY = 2.0
TRIM_INTERVAL = 10.0


def _malloc_trim() -> Callable[[int], int] | None:
    # glibc only; elsewhere (musl, macOS) there is nothing to call and nothing is kept.
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _malloc_trim()


def release_memory() -> None:
    """Collect reference cycles, then give the allocator's free pages back to the
    system (blocking: a worker thread's job)."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@attrs.define
class MemoryTrimmer:
    """Calls `release` (in a worker thread: `in_thread`) `delay` seconds after
    `session_ended`, at most once per `interval`: one call for a burst of logouts (see the
    module docstring)."""

    delay: float = TRIM_DELAY
    interval: float = TRIM_INTERVAL
    release: Callable[[], None] = release_memory
    in_thread: Callable[[Callable[[], None]], Awaitable[None]] = trio.to_thread.run_sync
    _scheduled: bool = False
    _last: float = -float("inf")

    def session_ended(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            # A system task: it outlives the connection that ended, and shutdown cancels it.
            trio.lowlevel.spawn_system_task(self._release_later)

    async def _release_later(self) -> None:
        try:
            await trio.sleep_until(
                max(trio.current_time() + self.delay, self._last + self.interval)
            )
        finally:
            self._scheduled = False
        self._last = trio.current_time()
        try:
            await self.in_thread(self.release)
        except Exception:  # a system task's error would end the server: log it instead
            log.exception("giving memory back failed")


@attrs.define
class IMAPService:
    """One `imap` or `imaps` listener."""

    shared: ImapService
    log: logging.Logger
    #: The server certificate; None: no TLS at all (STARTTLS is then not offered).
    tls: TLSContextHolder | None = None
    trimmer: MemoryTrimmer = attrs.field(factory=MemoryTrimmer)
    #: The table every server process counts in (None: no max_userip_connections).
    counts: SharedCounts | None = None

    @property
    def config(self) -> Config:
        return self.shared.config

    @property
    def implicit_tls(self) -> bool:
        return self.shared.implicit_tls

    async def handle(
        self,
        stream: trio.abc.Stream,
        peer: tuple[str, int],
        *,
        refuse: Refusal | None = None,
        registry: SessionRegistry | None = None,
        tls: str | None = None,
    ) -> None:
        """Run one session to its end: `refuse` (connection limits, shutdown) turns it
        away with a BYE; while it runs it is in `registry`, so shutdown can reach it.
        `tls` describes the TLS session when `stream` is already encrypted (imaps)."""
        session_id = new_session_id()
        log_line = line_logger(self.log, session_id)
        session = ImapConversation(
            self.shared, client_ip=peer[0], client_port=peer[1], log=log_line, tls=tls
        )
        # Through `counted`: the logout line reports the octets of the conversation.
        wire = Wire(stream, session.counted)
        slot = UserSlot(self.counts, "imap", peer[0])
        try:
            await carry(
                session,
                wire,
                self.log,
                registry=registry,
                refusal=refuse,
                loop=lambda time: _loop(self, session, wire, time, slot),
                pacer=connection_pacer(self.config, peer[0]),
                session_id=session_id,
                service=self.shared.service,
                peer=peer,
                log_line=log_line,
            )
        finally:
            slot.release()
        if session.mailbox is not None:  # it held a user's folders
            self.trimmer.session_ended()


async def _loop(
    service: IMAPService,
    session: ImapConversation,
    wire: Wire,
    time: SessionTime,
    slot: UserSlot,
) -> None:
    ahead: object = None  # an event the last run of answers took from the core
    eager = 0  # events taken from the core's buffer since the last checkpoint
    while not session.ended:
        if ahead is not None:
            event, ahead = ahead, None
        elif (event := _pipelined(wire, time)) is not None:
            eager += 1
            if eager >= EAGER_EVENTS:
                # Answered on the loop, a pipeline of NOOPs has no checkpoint of its own.
                eager = 0
                await trio.lowlevel.checkpoint()
        else:
            event = await _next_event(session, wire, time)
        if time.pacer is not None:
            await time.pace()
        if isinstance(event, imap.Idle) and session.mailbox is not None:
            event = await _idle(session, wire, time, event)
            if event is None:  # the selected folder went: its BYE is sent
                continue
        if event is PAUSED:
            # The core waits for something only we can do; nothing here leaves it paused
            # except a bug.
            raise LocalProtocolError(f"core paused in {session.conn.our_state}")
        if isinstance(event, imap.StartTLS):
            reply = session.starttls(event)
            await wire.send(reply, flush=True)
            if reply.status == "OK":
                await upgrade(session, wire, service.tls)
        elif isinstance(event, imap.Compress):
            reply = session.compress(event)
            await wire.send(reply, flush=True)
            if reply.status == "OK":
                # RFC 4978 §3: compressed from the octet after the OK's CRLF, which has
                # left; no checkpoint from here to the switch, so nothing else is sent
                # in between. What the client sent after COMPRESS is deflate already.
                received = session.compression_started()
                wire.stream = DeflateStream(wire.stream, received=received)
        elif isinstance(event, imap.Login | imap.Authenticate):
            await log_in(session, event, wire, time, userip=slot)
            slot.settle(session.user)
        else:
            assert isinstance(event, imap.Event)
            if session.blocks(event):
                eager = 0
                ahead = await trio.to_thread.run_sync(
                    _answer_run, session, wire, time, event, trio.current_time()
                )
            else:
                await send_all(wire, session.handle(event))


def _pipelined(wire: Wire, time: SessionTime) -> object:
    """The client's next event when it is already here (pipelined) and nothing needs
    a wait first, else None: then `_next_event` flushes, and arms the autologout timer
    if it has to wait (see the module docstring: Pipelining)."""
    if time.stopping or wire.corked >= RUN_OCTETS:
        return None
    return wire.buffered_event()


def _answer_run(
    session: ImapConversation, wire: Wire, time: SessionTime, event: object, now: float
) -> object:
    """Blocking (a worker thread): answer `event`, then the commands pipelined behind
    it that work on the store, in order, up to `RUN_COMMANDS` or `RUN_OCTETS` of
    answers, and while the connection's command rate lets them through at `now` (the
    time the run started: a stale time only paces sooner). The core is the worker's
    alone meanwhile (the session's task waits for it). Returns the event it took from
    the core and did not answer (one the loop answers, or paces first), or None."""
    answered = 0
    while True:
        assert isinstance(event, imap.Event)
        for response in session.handle(event):
            wire.queue(response)
        answered += 1
        if session.ended or time.stopping or answered >= RUN_COMMANDS or wire.corked >= RUN_OCTETS:
            return None
        following = wire.buffered_event()
        if not isinstance(following, imap.Event) or not session.blocks(following):
            return following
        if time.pacer is not None and not time.pacer.try_take(now):
            return following
        event = following


async def _next_event(session: ImapConversation, wire: Wire, time: SessionTime) -> object:
    """The client's next event, within the autologout timer; a compressed stream that
    does not inflate ends the session as any protocol error does (a BYE, a log line)."""
    try:
        return await time.wait_for_client(wire, session.timeout)
    except InflateError as exc:
        raise session.compression_error(str(exc)) from None


async def _idle(
    session: ImapConversation, wire: Wire, time: SessionTime, event: imap.Idle
) -> object:
    """Answer IDLE and push news until the client's next event, which is returned (see
    the module docstring); None when the session ended meanwhile (its folder gone)."""
    await send_all(wire, session.handle(event))
    if not session.idling:
        return None
    done: object = None
    failure: RemoteProtocolError | None = None
    with _subscribe(session) as changes:
        # The first round syncs at once: what changed since the last command (a FETCH
        # or STORE by number reports nothing, RFC 9051 §7.5.1) woke no watch of ours,
        # and would otherwise wait for the next change or keep-alive.
        changes.wake()
        stopped = _Stopped()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_push, session, wire, changes, stopped, nursery.cancel_scope)
            try:
                done = await _next_event(session, wire, time)
            except RemoteProtocolError as exc:
                # Raised out of the nursery it would come out in an ExceptionGroup, which
                # `converse` takes for a bug; the client's error is answered after it.
                failure = exc
            stopped.stop(changes)
    if failure is not None:
        raise failure
    return done


def _subscribe(session: ImapConversation) -> AbstractContextManager[Subscription]:
    """What tells of changes to the selected folder: the keys the database notifies for
    it on the PostgreSQL backend (the process's listener), else its directories."""
    keys = _watch_keys(session)
    if not keys:
        return watcher().subscribe(session.watch_paths)
    listening = key_watcher()
    if listening is None:
        # Keys but nobody listening (a bug in the wiring): poll rather than never hear.
        return contextlib.nullcontext(Subscription(False))
    return listening.subscribe(keys)


def _watch_keys(session: ImapConversation) -> tuple[str, ...]:
    # Read through getattr while the conversation and its selected-folder session do
    # not both have the property yet: conversation -> selected folder -> its view. A
    # view without it has no keys (it is watched by its directories).
    holder: object = session
    for step in ("mailbox", "view", None):
        keys: tuple[str, ...] | None = getattr(holder, "watch_keys", None)
        if keys is not None or step is None:
            return tuple(keys or ())
        holder = getattr(holder, step, None)
    return ()


class _Stopped:
    """The client's DONE (or anything else) came: the pusher ends after its round."""

    def __init__(self) -> None:
        self.is_set = False

    def stop(self, changes: Subscription) -> None:
        self.is_set = True
        changes.wake()


async def _push(
    session: ImapConversation,
    wire: Wire,
    changes: Subscription,
    stopped: _Stopped,
    scope: trio.CancelScope,
) -> None:
    poll = IDLE_KEEPALIVE if changes.available else FALLBACK_POLL
    keepalive = trio.current_time() + IDLE_KEEPALIVE
    while True:
        with trio.move_on_at(min(keepalive, trio.current_time() + poll)):
            await changes.wait()
        if stopped.is_set:
            return
        # Not cancellable (a worker thread is never abandoned) and followed by no
        # checkpoint before the news is queued: what the view counts as told is sent.
        # The wall clock now is after every change that woke us: a look at the folder
        # by another idler since then serves this one too (`FolderIndex.refresh`).
        woken = time_ns()
        async with changes.turn:
            news = await trio.to_thread.run_sync(session.idle_updates, woken)
        if trio.current_time() >= keepalive:
            news.append(session.still_here())
            keepalive = trio.current_time() + IDLE_KEEPALIVE
        await send_all(wire, news)
        try:
            await wire.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return  # the client is gone: the waiting side reads the end of the stream
        if session.ended:
            scope.cancel()  # the folder went (BYE sent): stop waiting for DONE
            return
