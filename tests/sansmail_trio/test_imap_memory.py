"""`MemoryTrimmer`: memory is given back once after a burst of logouts, a little later, and
never more often than its interval; `release_memory` runs where there is glibc or not."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from sansmail_trio._imap_server import MemoryTrimmer, release_memory


async def _inline(function: Callable[[], None]) -> None:
    # In place of the worker thread: a thread would let the autojump clock run on while
    # it works, and the times noted would not be the times of the calls.
    function()


def _trimmer(calls: list[float], *, delay: float, interval: float) -> MemoryTrimmer:
    return MemoryTrimmer(
        delay=delay,
        interval=interval,
        release=lambda: calls.append(trio.current_time()),
        in_thread=_inline,
    )


async def test_a_burst_of_logouts_releases_once_after_the_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[float] = []
    trimmer = _trimmer(calls, delay=2.0, interval=10.0)
    start = trio.current_time()
    for _ in range(100):
        trimmer.session_ended()
        await trio.sleep(0.01)
    await trio.sleep(30)
    assert [round(t - start, 2) for t in calls] == [2.0]


async def test_releases_are_at_least_the_interval_apart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[float] = []
    trimmer = _trimmer(calls, delay=1.0, interval=10.0)
    start = trio.current_time()
    trimmer.session_ended()
    await trio.sleep(3)
    trimmer.session_ended()  # 3 s in: the next may come at 1 + 10 s, not 4
    await trio.sleep(20)
    trimmer.session_ended()  # long after: the delay alone
    await trio.sleep(20)
    assert [round(t - start, 2) for t in calls] == [1.0, 11.0, 24.0]


async def test_a_failed_release_is_logged_not_fatal(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    def fail() -> None:
        raise OSError("no")

    trimmer = MemoryTrimmer(delay=1.0, interval=1.0, release=fail, in_thread=_inline)
    trimmer.session_ended()
    await trio.sleep(2)
    trimmer.session_ended()
    await trio.sleep(2)
    assert caplog.text.count("giving memory back failed") == 2


def test_release_memory_runs() -> None:
    release_memory()
