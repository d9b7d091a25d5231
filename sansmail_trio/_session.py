"""What every server session shares about time and shutdown.

A session has one cancel scope for its whole life. Before each wait for the client its
deadline is set to the idle timeout, and after the wait back to infinity, so our own
work (a slow disk) never counts against the client. Shutdown uses the same scope:
`request_stop()` cancels it at once when the session is waiting for the client, and
otherwise only marks the session, which then stops at its next wait. Whatever the
session owes the client is flushed before that wait starts, so shutdown cuts a wait,
never an answer.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from sansmail_trio._wire import Wire

__all__ = ["SessionRegistry", "SessionTime", "Stoppable", "run_registered"]


class Stoppable(Protocol):
    def request_stop(self) -> None: ...


class SessionRegistry(Protocol):
    """Where sessions announce themselves so that shutdown can reach them."""

    shutting_down: bool

    def add(self, session: Stoppable) -> None: ...

    def discard(self, session: Stoppable) -> None: ...


async def run_registered(
    session: Stoppable, registry: SessionRegistry | None, run: Callable[[], Awaitable[None]]
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


class SessionTime:
    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.idle = False
        self.stopping = False

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
        scope.deadline = trio.current_time() + timeout
        try:
            if interruptible:
                await wire.flush()
                if self.stopping:
                    scope.cancel()
                    await trio.lowlevel.checkpoint()
                self.idle = True
            return await wire.next_event()
        finally:
            self.idle = False
            scope.deadline = math.inf
