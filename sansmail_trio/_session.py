"""What every server connection shares, whatever its protocol: its life cycle around a
`sansmail.sessions` session (`converse`), time and shutdown (`SessionTime`), and the
STARTTLS upgrade (`upgrade`).

`converse` greets (or refuses), runs the protocol's own loop, and ends every way a
connection can end with the session's own last words: a timeout, shutdown, a protocol
error from the core, a bug (logged with its traceback; it costs one connection, never the
server), or the shutdown grace running out. Then the session hears that the connection
is gone, its blocking cleanup runs in a worker thread, and the stream is closed.

A session has one cancel scope for its whole life. Its idle deadline is the idle
timeout from the moment a wait for the client starts; it is armed only once the wait
really blocks (on a `PlainStream`: when the kernel has nothing to read or no room to
write; reading a `DeflateStream`: when it has nothing inflated or on the socket; on
other streams: for the whole wait), and disarmed after it, so our own work (a slow
disk) never counts against the client. The deadlines are kept by the loop's
`IdleWatch` (`_idle`), which cancels the scope when one passes, rather than by Trio's
deadline heap, whose abandoned entries kept logged-out sessions' scopes alive for their
30 minutes; and arming only when a wait blocks saves most of the work, since under load
most commands are already there when the session asks. Shutdown uses the same scope:
`request_stop()` cancels it at once when the session is waiting for the client, and
otherwise only marks the session, which then stops at its next wait. Whatever the
session owes the client is flushed before that wait starts, so shutdown cuts a wait,
never an answer.

Pacing (``[limits] commands_per_second``). Each connection outside mynetworks has a
token bucket (`sansmail.mail.pacing.Pacer`, on `SessionTime.pacer`); the protocol
loops call `SessionTime.pace` before they hand a command to the session, which sleeps
while the client is over its rate. Only that connection waits, its commands stay in its
socket buffer, and the sleep is our time, not the client's idleness.

One user's sessions per address (max_userip_connections): a `UserSlot` per POP3 or
IMAP connection is what `sansmail.sessions.login` asks for the count, and holds this
connection's place in the shared table (`_counts.SharedCounts`) from the login that
opened a mailbox to the end of the connection.

Who is connected. Each connection gets a session id at accept (`new_session_id`), which
every log line of it carries (the adapters bind it into the session's log callable,
`_log.line_logger`). While it runs, the connection is in its process's registry as a
`LiveSession` (id, service, client, since, the user once logged in), which is what
`sansmail-trio who` lists and `kick` ends (`_control.py`), and what shutdown stops.
"""

from __future__ import annotations

import base64
import logging
import math
import random
import time as wall
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import trio

from sansmail import RemoteProtocolError
from sansmail.mail.pacing import Pacer
from sansmail.sessions.common import Refusal, ServerSession
from sansmail_trio._counts import SharedCounts
from sansmail_trio._idle import IdleWatch, idle_watch
from sansmail_trio._tls import (
    TLSContextHolder,
    TLSHandshakeError,
    describe,
    received_tls,
    start_tls,
)
from sansmail_trio._wire import Wire

__all__ = [
    "LiveSession",
    "SessionRegistry",
    "SessionTime",
    "Stoppable",
    "UserSlot",
    "carry",
    "converse",
    "new_session_id",
    "run_registered",
    "send_all",
    "upgrade",
]


class Stoppable(Protocol):
    def request_stop(self) -> None: ...


class SessionRegistry(Protocol):
    """Where sessions announce themselves so that shutdown, `who` and `kick` can reach
    them."""

    shutting_down: bool

    def add(self, session: LiveSession) -> None: ...

    def discard(self, session: LiveSession) -> None: ...


def new_session_id() -> str:
    """A connection's name in the log and in `who`: 12 characters of [A-Za-z0-9] from
    72 random bits, as long as Dovecot's ``session=<...>``. Only the log's reader needs
    them apart: two alike in a year of logs is a long shot, and harmless."""
    # Python's generator, not the kernel's: an id names a session and guards nothing,
    # and os.urandom's system call was half the cost (0.84 -> 0.41 us). The random
    # module reseeds itself in each forked process, so server processes differ. base64
    # of 9 octets is 12 characters; "+" and "/" made letters so that an id is one word
    # for grep and for a double click (a few ids lose a little entropy).
    return base64.b64encode(random.randbytes(9), b"xz").decode("ascii")  # noqa: S311


class _Seen(Protocol):
    """What a session shows `who`: the client as logged, the user once logged in."""

    client: str
    user: str | None


class LiveSession:
    """One connection while it runs, as `who` and `kick` see it (`_control.py`) and as
    shutdown reaches it (`request_stop`)."""

    __slots__ = ("_log", "_seen", "_time", "client", "id", "service", "since")

    def __init__(
        self,
        session_id: str,
        *,
        service: str,
        client: tuple[str, int],
        seen: _Seen,
        time: SessionTime,
        log: Callable[[int, str], None],
    ) -> None:
        self.id = session_id
        self.service = service
        self.client = client
        #: Wall-clock seconds since the epoch, for display.
        self.since = wall.time()
        self._seen = seen
        self._time = time
        self._log = log

    @property
    def user(self) -> str | None:
        """Who is logged in now (the user store's key), or None."""
        return self._seen.user

    def request_stop(self) -> None:
        self._time.request_stop()

    def kick(self) -> None:
        """End the session as shutdown does, with its protocol's closing words: at
        once when it waits for the client, else after what it is doing (an SMTP
        transaction in flight is let finish)."""
        user = self._seen.user
        who = f" user=<{user}>:" if user is not None else ""
        self._log(logging.INFO, f"{self._seen.client}:{who} kicked by the administrator")
        self._time.request_stop()


async def run_registered(
    session: LiveSession, registry: SessionRegistry | None, run: Callable[[], Awaitable[None]]
) -> None:
    """`run()` the session while it is in `registry`, so shutdown can ask it to stop;
    one that starts during shutdown is asked at once."""
    if registry is None:
        await run()
        return
    registry.add(session)
    if registry.shutting_down:
        session.request_stop()
    try:
        await run()
    finally:
        registry.discard(session)


class UserSlot:
    """A POP3 or IMAP connection's place in the count of one user's sessions from one
    address over one protocol (see the module docstring): `sessions` is what a login
    asks (`sansmail.sessions.login.UserSessions`), `settle` counts the user a login
    opened a mailbox for, `release` takes them off at the end."""

    def __init__(self, counts: SharedCounts | None, protocol: str, ip: str) -> None:
        self._counts = counts
        self._protocol = protocol
        self._ip = ip
        self._held: str | None = None

    def sessions(self, protocol: str, user: str, ip: str) -> int:
        return 0 if self._counts is None else self._counts.sessions(protocol, user, ip)

    def settle(self, user: str | None) -> None:
        """After a login command: `user` is who is logged in now (None: nobody)."""
        if self._counts is None or user == self._held:
            return
        self.release()
        if user is not None:
            self._counts.session_opened(self._protocol, user, self._ip)
            self._held = user

    def release(self) -> None:
        if self._counts is not None and self._held is not None:
            self._counts.session_closed(self._protocol, self._held, self._ip)
            self._held = None


class SessionTime:
    def __init__(self, pacer: Pacer | None = None, paced: Callable[[], None] | None = None) -> None:
        #: The connection's command rate (None: not paced), and what to call the first
        #: time it makes the client wait (the log line an operator sees).
        self.pacer = pacer
        self._paced = paced
        self.scope = trio.CancelScope()
        self.idle = False
        self.stopping = False
        self._due = math.inf
        self._armed = False
        self._arm = self._arm_deadline  # bound once, not per wait
        self._watch: IdleWatch | None = None  # the loop's, at the first wait

    def expire(self) -> None:
        """The idle deadline passed (called by the loop's `IdleWatch`)."""
        self._armed = False
        self.scope.cancel()

    def request_stop(self) -> None:
        self.stopping = True
        if self.idle:
            self.scope.cancel()

    async def wait_for_client(
        self, wire: Wire, timeout: float, *, interruptible: bool = True
    ) -> object:
        """The next event from `wire`, within `timeout` seconds of idleness. A wait that
        is not `interruptible` (inside an SMTP transaction) is not cut by shutdown: the
        session stops at its next interruptible wait instead."""
        scope = self.scope
        self._due = trio.current_time() + timeout
        try:
            if interruptible:
                await wire.flush(before_wait=self._arm)
                if self.stopping:
                    scope.cancel()
                    await trio.lowlevel.checkpoint()
                self.idle = True
            return await wire.next_event(before_wait=self._arm)
        finally:
            self.idle = False
            if self._armed:
                self._armed = False
                assert self._watch is not None
                self._watch.disarm(self)

    async def pace(self) -> None:
        """Before a command is handed to the session: wait while the client is over its
        command rate (no wait, and no checkpoint, when it is not)."""
        pacer = self.pacer
        if pacer is not None:
            wait = pacer.take(trio.current_time())
            if wait:
                if self._paced is not None:
                    paced, self._paced = self._paced, None
                    paced()
                await trio.sleep(wait)

    def _arm_deadline(self) -> None:
        # The wire is about to block on the client (see the module docstring).
        if not self._armed:
            self._armed = True
            if self._watch is None:
                self._watch = idle_watch()
            self._watch.arm(self, self._due)


async def converse(
    session: ServerSession,
    wire: Wire,
    time: SessionTime,
    log: logging.Logger,
    *,
    refusal: Refusal | None,
    loop: Callable[[], Awaitable[None]],
    before_greeting: Callable[[], Awaitable[None]] | None = None,
    session_id: str | None = None,
) -> None:
    """One connection from greeting to close (see the module docstring); `loop` is the
    protocol's part, run until the session has `ended`; `before_greeting` what must be
    found out first (SMTP's CONNECT checks); `session_id` tags the traceback of a bug."""
    last_words = b""
    try:
        with time.scope:
            if refusal is None and before_greeting is not None:
                await before_greeting()
            greeting = session.greeting() if refusal is None else session.refuse(refusal)
            await wire.send(greeting, flush=True)
            await loop()
        if time.scope.cancelled_caught:
            hint = session.shutdown_reply() if time.stopping else session.timeout_reply()
            last_words = session.last_words(hint)
    except RemoteProtocolError as exc:
        session.protocol_error(exc)
        last_words = session.last_words(exc.reply_hint)
    except Exception:  # LocalProtocolError, a disk error, or any other bug
        # A bug must cost one connection, never the server: its task would otherwise
        # take the whole nursery down.
        log.exception(
            "%s: internal error, closing",
            getattr(session, "client", "?"),
            extra=None if session_id is None else {"session": session_id},
        )
        last_words = session.last_words(session.internal_error())
    except trio.Cancelled:
        # The shutdown grace period ran out with this session still busy.
        last_words = session.last_words(session.shutdown_reply())
        raise
    finally:
        session.closed()
        if session.cleanup_due:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(session.cleanup)
        # Needs no shield: it bounds its own writing by a shielded grace period, and
        # closing is never cut short (a cancel scope per connection saved).
        await wire.aclose(last_words=last_words)


async def send_all(wire: Wire, answer: Any) -> None:
    """Send a session's answer: one event, a list or tuple of them, or None."""
    if answer is None:
        return
    for event in answer if isinstance(answer, list | tuple) else [answer]:
        await wire.send(event)


async def upgrade(session: ServerSession, wire: Wire, holder: TLSContextHolder | None) -> None:
    """STARTTLS/STLS after the session's positive answer went out: the handshake, then
    the session hears how it went."""
    assert holder is not None, "TLS is never offered without a certificate"
    try:
        stream = await start_tls(wire, holder)
    except TLSHandshakeError as exc:
        session.tls_failed(str(exc))
        return
    session.tls_started(received_tls(stream), describe(stream))


async def carry(
    session: ServerSession,
    wire: Wire,
    log: logging.Logger,
    *,
    registry: SessionRegistry | None,
    refusal: Refusal | None,
    loop: Callable[[SessionTime], Awaitable[None]],
    before_greeting: Callable[[], Awaitable[None]] | None = None,
    pacer: Pacer | None = None,
    session_id: str,
    service: str,
    peer: tuple[str, int],
    log_line: Callable[[int, str], None],
) -> None:
    """Run one connection to its end: `converse`, with the session in `registry` (as a
    `LiveSession` named `session_id`, of listener `service`, from `peer`) while it runs,
    so that shutdown, `who` and `kick` can reach it. `loop(time)` is the protocol's
    part; `pacer` its command rate (None: not paced); `log_line` the session's own log
    callable (its lines tagged with `session_id`)."""
    time = SessionTime(
        pacer,
        paced=lambda: log_line(
            logging.INFO,
            f"{getattr(session, 'client', '?')}: over "
            f"{pacer.rate if pacer is not None else 0:g} commands a second: paced",
        ),
    )

    async def run() -> None:
        await converse(
            session,
            wire,
            time,
            log,
            refusal=refusal,
            loop=lambda: loop(time),
            before_greeting=before_greeting,
            session_id=session_id,
        )

    if registry is None:
        await run()
        return
    # Every session has `client` and `user` (ServerSession does not promise them).
    seen = cast(_Seen, session)
    live = LiveSession(session_id, service=service, client=peer, seen=seen, time=time, log=log_line)
    await run_registered(live, registry, run)
