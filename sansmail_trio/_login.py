"""Logging in, for every Trio service: the one place that waits out the auth service's
delays and hops to a worker thread for the expensive step of a `sansmail.sessions.login`
exchange. What the steps mean is the session's; each protocol passes its own framing of
a challenge (SMTP's 334, POP3's and IMAP's ``+``)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable

import trio

from sansmail.sessions.common import LoginSteps
from sansmail.sessions.login import BLOCKING, FINISHED, Exchange, Login, Result, UserSessions
from sansmail_trio._metrics import PROBE
from sansmail_trio._session import SessionTime, send_all
from sansmail_trio._wire import Wire

__all__ = ["admitted", "drive", "log_in", "nonce", "wall_clock"]

#: The password checks running in this process, by `Exchange.pending_check`: a login
#: with the same name and password waits for that check instead of paying argon2 again.
_CHECKS: dict[bytes, trio.Event] = {}


async def admitted(login: Login) -> bool:
    """Whether this client may try now; when it may, after its delay (the auth service's
    answer to parallel guessing). A refusal is already logged."""
    verdict = login.gate(trio.current_time())
    if not verdict.allowed:
        return False
    if verdict.delay:
        await trio.sleep(verdict.delay)
    return True


async def drive(
    exchange: Exchange, challenge: Callable[[bytes], Awaitable[bytes | None]]
) -> Result:
    """Run `exchange` to its end: `challenge(data)` sends one challenge and returns the
    client's decoded answer, or None (cancelled, undecodable, gone). A failure is
    answered only after its delay, which this waits out."""
    ours: bytes | None = None
    try:
        step = exchange.start()
        while step is not FINISHED:
            if step is BLOCKING:
                key = exchange.pending_check
                running = None if key is None else _CHECKS.get(key)
                if running is not None:
                    await running.wait()
                    step = exchange.retry()
                    continue
                if key is not None:
                    ours, _CHECKS[key] = key, trio.Event()
                step = await trio.to_thread.run_sync(exchange.work)
            else:
                assert not isinstance(step, type(BLOCKING))
                step = exchange.answer(await challenge(step.data))
        result = exchange.finish(trio.current_time())
    finally:
        # After `finish` stored the verdict (or on the way out without one): whoever
        # waited retries.
        if ours is not None:
            _CHECKS.pop(ours).set()
    if result.user is None and not result.interrupted:
        await trio.sleep(result.delay)
    return result


async def log_in(
    session: LoginSteps,
    event: object,
    wire: Wire,
    time: SessionTime,
    *,
    userip: UserSessions | None = None,
) -> None:
    """One login command (SMTP AUTH, POP3 PASS or AUTH, IMAP LOGIN or AUTHENTICATE),
    whatever the protocol: the session words every answer and frames every challenge.
    `userip` counts the user's sessions per address (max_userip_connections)."""
    refusal = session.login_refusal(event)
    if refusal is not None:
        await send_all(wire, refusal)
        return
    login = session.login()
    login.userip = userip
    if not await admitted(login):
        await send_all(wire, session.throttled(event))
        return
    exchange = session.exchange(event, login, nonce=nonce(), now=wall_clock())
    last: object = None

    async def challenge(data: bytes) -> bytes | None:
        nonlocal last
        await wire.send(session.challenge(data))
        last = await time.wait_for_client(wire, session.timeout)
        return session.answer(last)

    result = await drive(exchange, challenge)
    # For the metrics: the listener is the connection's (set at accept).
    probe = PROBE.get()
    success = result.user is not None and not result.refusal
    if probe is not None and not result.interrupted:
        probe.auth(result.mechanism, success=success)
    # Blocking for POP3 and IMAP: a good login opens the mailbox.
    began = trio.current_time()
    answer = await trio.to_thread.run_sync(session.login_result, event, result, last)
    if probe is not None and success:
        probe.logged_in(trio.current_time() - began)
    await send_all(wire, answer)


def nonce() -> str:
    """Fresh randomness for SCRAM and CRAM-MD5 challenges."""
    return secrets.token_urlsafe(18)


def wall_clock() -> float:
    """Seconds since the epoch, for the decisions that need the date (SRS stamps,
    Received dates, queue arrival, CRAM-MD5 timestamps)."""
    return time.time()
