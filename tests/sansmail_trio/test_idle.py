"""The loop's idle watch (`_idle`): deadlines expire on time, disarmed ones never, and
what logged-out sessions armed leaves neither our heap nor Trio's."""

from __future__ import annotations

import gc
import weakref

import trio
import trio.testing

from sansmail_trio._idle import IdleWatch, idle_watch
from sansmail_trio._session import SessionTime


class Owner:
    def __init__(self) -> None:
        self.expired_at: float | None = None

    def expire(self) -> None:
        self.expired_at = trio.current_time()


async def test_a_deadline_expires_at_its_time(autojump_clock: trio.testing.MockClock) -> None:
    watch = IdleWatch()
    late, early, disarmed = Owner(), Owner(), Owner()
    start = trio.current_time()
    watch.arm(late, start + 30)
    await trio.sleep(1)
    # Earlier than what the watcher sleeps for: it wakes for it.
    watch.arm(early, start + 5)
    watch.arm(disarmed, start + 3)
    watch.disarm(disarmed)
    await trio.sleep(60)
    assert early.expired_at == start + 5
    assert late.expired_at == start + 30
    assert disarmed.expired_at is None
    assert len(watch) == 0


async def test_arming_again_replaces_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    watch = IdleWatch()
    owner = Owner()
    start = trio.current_time()
    watch.arm(owner, start + 5)
    watch.arm(owner, start + 20)
    await trio.sleep(10)
    assert owner.expired_at is None
    await trio.sleep(20)
    assert owner.expired_at == start + 20


async def test_logged_out_owners_are_not_kept(autojump_clock: trio.testing.MockClock) -> None:
    watch = IdleWatch()
    owners = [Owner() for _ in range(1000)]
    refs = [weakref.ref(o) for o in owners]
    for owner in owners:
        watch.arm(owner, trio.current_time() + 1800)
    await trio.sleep(1)
    for owner in owners[1:]:
        watch.disarm(owner)
    # Rebuilt whenever the dead entries outnumbered the live ones.
    assert len(watch._heap) <= 2 + 64
    watch.disarm(owners[0])
    assert not watch._heap  # the last one gone: nothing at all
    # The watcher's stopped sleep holds the disarming frame until the watcher runs.
    await trio.testing.wait_all_tasks_blocked()
    del owners, owner
    gc.collect()
    assert all(ref() is None for ref in refs)


async def test_sessions_share_one_watch_and_leave_no_trio_deadlines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sessions = [SessionTime() for _ in range(200)]
    for time in sessions:
        time._due = trio.current_time() + 1800
        time._arm_deadline()
    assert {id(t._watch) for t in sessions} == {id(idle_watch())}
    assert len(idle_watch()) == 200
    for time in sessions:
        time._armed = False
        idle_watch().disarm(time)
    refs = [weakref.ref(t) for t in sessions]
    del sessions, time
    gc.collect()
    assert all(ref() is None for ref in refs)


async def test_an_idle_session_is_cancelled_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    time = SessionTime()
    start = trio.current_time()
    with time.scope:
        time._due = start + 300
        time._arm_deadline()
        await trio.sleep_forever()
    assert time.scope.cancelled_caught
    assert trio.current_time() == start + 300
    assert not time._armed


async def test_no_timer_is_left_when_the_last_deadline_is_disarmed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    watch = IdleWatch()
    owner = Owner()
    watch.arm(owner, trio.current_time() + 300)
    await trio.sleep(1)
    assert watch._wake_at == trio.current_time() + 299
    watch.disarm(owner)
    await trio.testing.wait_all_tasks_blocked()
    assert watch._wake_at == float("inf")
    # Work done off the loop must not see the clock jump to the dropped deadline.
    start = trio.current_time()
    await trio.to_thread.run_sync(lambda: __import__("time").sleep(0.05))
    assert trio.current_time() == start
