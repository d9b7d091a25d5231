"""Idle deadlines of the sessions of one event loop, kept by one watcher task.

A session's idle timeout used to be its cancel scope's Trio deadline. Trio keeps its
deadlines in a heap whose entries for a moved or abandoned deadline stay until they are
popped at their time or until the heap holds more than twice the live ones plus a
thousand. An IMAP session's abandoned deadline is 30 minutes away: a thousand sessions
that logged out left a thousand entries behind, each keeping the session's cancel scope
alive, scattered over the allocator's arenas so that none of them could go back to the
system (the memory bench: 11 MiB of 95 held a minute after 1,000 sessions left; with the
heap pruned by hand, nothing).

So the sessions' deadlines live here instead, in a heap of our own that is pruned when
its dead entries outnumber the live ones, and emptied when the last one is disarmed,
and one system task per event loop sleeps until the earliest deadline and cancels the
sessions whose deadline has passed. Arming and disarming are a dictionary store and a
heap push; Trio's deadline heap sees only the watcher's one sleep.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Protocol

import trio

__all__ = ["Expirable", "IdleWatch", "idle_watch"]

# Dead entries allowed besides twice the live ones before the heap is rebuilt.
_SLACK = 64


class Expirable(Protocol):
    def expire(self) -> None: ...


class IdleWatch:
    """The armed deadlines of one event loop (see the module docstring)."""

    def __init__(self) -> None:
        self._armed: dict[Expirable, int] = {}  # owner -> the sequence number of its entry
        self._heap: list[tuple[float, int, Expirable]] = []
        self._seq = itertools.count()
        self._wake_at = math.inf  # when the watcher's current sleep ends
        self._sleep: trio.CancelScope | None = None
        self._started = False

    def __len__(self) -> int:
        return len(self._armed)

    def arm(self, owner: Expirable, deadline: float) -> None:
        """`owner.expire()` is called at `deadline` unless `disarm(owner)` comes first;
        a second `arm` replaces the first."""
        seq = next(self._seq)
        self._armed[owner] = seq
        heapq.heappush(self._heap, (deadline, seq, owner))
        if not self._started:
            self._started = True
            trio.lowlevel.spawn_system_task(self._watch, name="sansmail idle watch")
        elif deadline < self._wake_at and self._sleep is not None:
            self._sleep.cancel()  # sleeping past it: look again

    def disarm(self, owner: Expirable) -> None:
        if self._armed.pop(owner, None) is None:
            return
        if not self._armed:
            self._heap.clear()  # the last one left: nothing of theirs stays
            if self._sleep is not None and self._wake_at != math.inf:
                # No timer for a deadline nobody has: a mock clock in autojump would
                # jump to it while a worker thread checks a password, and a real one
                # would wake the loop for nothing.
                self._sleep.cancel()
        elif len(self._heap) > 2 * len(self._armed) + _SLACK:
            self._prune()

    def _prune(self) -> None:
        armed = self._armed
        self._heap = [entry for entry in self._heap if armed.get(entry[2]) == entry[1]]
        heapq.heapify(self._heap)

    def _expire_due(self, now: float) -> float:
        """Expire what is due; the next deadline."""
        heap, armed = self._heap, self._armed
        while heap:
            deadline, seq, owner = heap[0]
            if armed.get(owner) != seq:
                heapq.heappop(heap)  # disarmed or armed again since
            elif deadline <= now:
                heapq.heappop(heap)
                del armed[owner]
                owner.expire()
            else:
                return deadline
        return math.inf

    async def _watch(self) -> None:
        while True:
            self._wake_at = self._expire_due(trio.current_time())
            with trio.CancelScope(deadline=self._wake_at) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None


_WATCH: trio.lowlevel.RunVar[IdleWatch] = trio.lowlevel.RunVar("sansmail_idle_watch")


def idle_watch() -> IdleWatch:
    """The watch of the running event loop (made at first use)."""
    try:
        return _WATCH.get()
    except LookupError:
        watch = IdleWatch()
        _WATCH.set(watch)
        return watch
