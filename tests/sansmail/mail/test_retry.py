"""The retry schedule: backoff, jitter bounds, expiry and the delay warning."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sansmail.mail.retry
from sansmail.config import DeliveryConfig
from sansmail.mail.retry import JITTER, RetryPolicy, delay_warning_due, expired, next_attempt

T0 = 1_700_000_000.0
POLICY = RetryPolicy()
DAY = 86400.0


def test_public_names() -> None:
    assert sorted(sansmail.mail.retry.__all__) == [
        "JITTER",
        "RetryPolicy",
        "delay_warning_due",
        "expired",
        "next_attempt",
    ]


@pytest.mark.parametrize(
    ("attempts", "spacing"),
    [
        (1, 300.0),
        (2, 600.0),
        (3, 1200.0),
        (4, 2400.0),
        (5, 4000.0),  # 4800 clamped to maximal_backoff
        (6, 4000.0),
        (50, 4000.0),
        (10**6, 4000.0),
    ],
)
def test_backoff_doubles_to_the_maximum(attempts: int, spacing: float) -> None:
    now = T0 + 100.0
    # jitter 0.5 is the middle of the spread: no displacement.
    got = next_attempt(arrival=T0, attempts=attempts, now=now, policy=POLICY, jitter=0.5)
    assert got == pytest.approx(now + spacing)


def test_no_failure_yet_means_now() -> None:
    assert next_attempt(arrival=T0, attempts=0, now=T0 + 5, policy=POLICY) == T0 + 5


@pytest.mark.parametrize(
    ("jitter", "spacing"),
    [(0.0, 600.0 * (1 - JITTER)), (0.5, 600.0), (0.75, 600.0 * (1 + JITTER / 2))],
)
def test_jitter_spreads_both_ways(jitter: float, spacing: float) -> None:
    got = next_attempt(arrival=T0, attempts=2, now=T0, policy=POLICY, jitter=jitter)
    assert got == pytest.approx(T0 + spacing)


def test_jitter_never_goes_below_the_minimum_or_above_the_maximum() -> None:
    assert next_attempt(arrival=T0, attempts=1, now=T0, policy=POLICY, jitter=0.0) == T0 + 300
    late = next_attempt(arrival=T0, attempts=9, now=T0, policy=POLICY, jitter=0.999)
    assert late == T0 + 4000


@pytest.mark.parametrize(
    ("age", "result"),
    [(5 * DAY - 1, False), (5 * DAY, True), (5 * DAY + 1, True), (0.0, False), (-10.0, False)],
)
def test_expiry_boundary(age: float, result: bool) -> None:
    assert expired(arrival=T0, now=T0 + age, policy=POLICY) is result
    after = next_attempt(arrival=T0, attempts=3, now=T0 + age, policy=POLICY)
    assert (after is None) is result


def test_zero_lifetime_means_a_single_attempt() -> None:
    policy = RetryPolicy(max_lifetime=0)
    assert next_attempt(arrival=T0, attempts=1, now=T0, policy=policy) is None


def test_policy_from_config() -> None:
    policy = RetryPolicy.from_config(DeliveryConfig(max_queue_lifetime=3600))
    assert policy.max_lifetime == 3600.0
    assert policy.minimal_backoff == 300.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"minimal_backoff": 0.0},
        {"maximal_backoff": -1.0},
        {"minimal_backoff": 500.0, "maximal_backoff": 400.0},
        {"max_lifetime": -1.0},
        {"delay_warning": -1.0},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize(("attempts", "jitter"), [(-1, 0.0), (1, 1.0), (1, -0.1)])
def test_bad_arguments_are_refused(attempts: int, jitter: float) -> None:
    with pytest.raises(ValueError):
        next_attempt(arrival=T0, attempts=attempts, now=T0, policy=POLICY, jitter=jitter)


@pytest.mark.parametrize(
    ("age", "warned", "delay_warning", "due"),
    [
        (4 * 3600 - 1, False, 4 * 3600.0, False),
        (4 * 3600, False, 4 * 3600.0, True),
        (4 * 3600, True, 4 * 3600.0, False),  # once only
        (DAY, False, None, False),  # off
        (DAY, False, 0.0, False),  # off, Postfix style
        (5 * DAY, False, 4 * 3600.0, False),  # expired: the bounce says it all
    ],
)
def test_delay_warning(age: float, warned: bool, delay_warning: float | None, due: bool) -> None:
    policy = RetryPolicy(delay_warning=delay_warning)
    got = delay_warning_due(arrival=T0, now=T0 + age, warned=warned, policy=policy)
    assert got is due


# --- properties ---------------------------------------------------------------------------

minimal_backoffs = st.floats(1.0, 10_000.0)
extra_backoffs = st.floats(0.0, 100_000.0)
policies = st.builds(
    lambda lo, extra, life: RetryPolicy(
        minimal_backoff=lo, maximal_backoff=lo + extra, max_lifetime=life
    ),
    minimal_backoffs,
    extra_backoffs,
    # Whole seconds, as the config gives them: T0 + a tiny float is T0 again, which would
    # test float rounding rather than the schedule.
    st.integers(0, 30 * 86400).map(float),
)
ages = st.integers(0, 40 * 86400).map(float)
jitters = st.floats(0.0, 1.0, exclude_max=True)


@settings(deadline=None, max_examples=300)
@given(
    policy=policies,
    attempts=st.integers(1, 2000),
    age=ages,
    jitter=jitters,
)
def test_spacing_stays_between_minimum_and_maximum(
    policy: RetryPolicy, attempts: int, age: float, jitter: float
) -> None:
    now = T0 + age
    got = next_attempt(arrival=T0, attempts=attempts, now=now, policy=policy, jitter=jitter)
    if got is None:
        assert age >= policy.max_lifetime
        return
    assert age < policy.max_lifetime
    # Relative tolerance: T0 is large, so float addition loses a little.
    assert got - now >= policy.minimal_backoff - 1e-6
    assert got - now <= policy.maximal_backoff + 1e-6


@settings(deadline=None, max_examples=300)
@given(policy=policies, attempts=st.integers(1, 2000), age=ages, j=jitters)
def test_spacing_never_shrinks_with_more_attempts(
    policy: RetryPolicy, attempts: int, age: float, j: float
) -> None:
    now = T0 + age
    first = next_attempt(arrival=T0, attempts=attempts, now=now, policy=policy, jitter=j)
    second = next_attempt(arrival=T0, attempts=attempts + 1, now=now, policy=policy, jitter=j)
    assert (first is None) == (second is None)
    if first is not None and second is not None:
        assert second >= first


@settings(deadline=None, max_examples=200)
@given(policy=policies, attempts=st.integers(0, 2000), extra=st.integers(0, 10 * 86400).map(float))
def test_always_none_after_expiry(policy: RetryPolicy, attempts: int, extra: float) -> None:
    now = T0 + policy.max_lifetime + extra
    assert next_attempt(arrival=T0, attempts=attempts, now=now, policy=policy) is None


#: How many maximal spacings a policy of `short_lived_policies` lives at most.
_SPACINGS = 1000


@st.composite
def short_lived_policies(draw: st.DrawFn) -> RetryPolicy:
    """Like `policies`, but living at most `_SPACINGS` maximal spacings, so that a whole
    schedule is at most about a thousand attempts: a 1 s spacing for 30 days is 2.6
    million of them, seconds of CPU in one example, all repeating the same clamped
    spacing. Every shape stays: a bounce before the first retry, during the doubling and
    after the clamp, and lifetimes up to 30 days when the spacings are long."""
    lo = draw(minimal_backoffs)
    hi = lo + draw(extra_backoffs)
    life = draw(st.integers(0, min(30 * 86400, int(_SPACINGS * hi))).map(float))
    return RetryPolicy(minimal_backoff=lo, maximal_backoff=hi, max_lifetime=life)


@settings(deadline=None, max_examples=100)
@given(policy=short_lived_policies(), jitter=jitters)
def test_a_whole_schedule_ends_in_a_bounce(policy: RetryPolicy, jitter: float) -> None:
    # Simulate the queue: fail every attempt, retry when told, until told to bounce.
    now, attempts = T0, 0
    while True:
        attempts += 1
        after = next_attempt(arrival=T0, attempts=attempts, now=now, policy=policy, jitter=jitter)
        if after is None:
            break
        assert after > now
        now = after
    assert now - T0 >= policy.max_lifetime
    # The last retry was scheduled before the deadline, so it is late by at most one spacing.
    assert now - T0 < policy.max_lifetime + policy.maximal_backoff + 1e-6
