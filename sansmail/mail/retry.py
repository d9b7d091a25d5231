"""When the outbound queue tries a deferred message again, and when it gives up.

Pure arithmetic: the clock is the `now` argument (seconds since the epoch, as a float)
and randomness is the `jitter` argument, so the queue runner owns both and the tests can
replay any schedule exactly.

Theory of operation
-------------------
Postfix's queue manager, on deferring a message, waits for the message's *age* clamped
to ``[minimal_backoff_time, maximal_backoff_time]`` (qmgr, ``qmgr_active.c``). A message
retried at age *t* is next retried at age about *2t*, so the spacing doubles from the
minimum until it reaches the maximum and then stays there. We keep that shape (the
defaults are Postfix's: 300 s doubling to 4000 s, about an hour) but count the doublings
from the number of failed attempts instead of the age. The age-based rule puts a message
that waited long in the active queue straight onto a long delay; counting attempts gives
every message the same short first retries, and makes the schedule a function of
(attempts, jitter) alone, easy to state and test:

    spacing(n) = clamp(minimal * 2 ** (n - 1) * spread(jitter), minimal, maximal)

``spread(jitter)`` maps the caller's random fraction in [0, 1) to a factor in
[1 - JITTER, 1 + JITTER) (JITTER = 10%). Without it, every message deferred by a
destination that went down at one moment would come back at the same moment and hit the
destination together when it returns. The clamp is applied after the spread, so the
guarantees the queue relies on hold whatever the jitter: a retry never comes sooner than
`minimal_backoff` after a failure, and never later than `maximal_backoff`. For a fixed
jitter the spacing never shrinks as attempts grow.

A message is *expired* once it has been queued for `max_lifetime` (Postfix
``max_queue_lifetime``); the next failure after that bounces it (`next_attempt` returns
None). As in Postfix, a lifetime of 0 means one attempt and then a bounce. A retry may be
scheduled past the deadline: the message then gets that last attempt and bounces if it
fails, rather than bouncing without a try.

The delay warning (Postfix ``delay_warning_time``; RFC 3464 ``Action: delayed``) is due
once, when the message has waited `delay_warning` seconds without being delivered, unless
it has already expired, in which case the bounce says more.
"""

from __future__ import annotations

from typing import Final

import attrs

from sansmail.config import DeliveryConfig

__all__ = ["JITTER", "RetryPolicy", "delay_warning_due", "expired", "next_attempt"]

#: How far `jitter` moves a retry either way, as a fraction of its spacing.
JITTER: Final = 0.1

# 2.0 ** 1000 times any sane backoff is still a finite float; past that many failures the
# spacing has long been clamped to the maximum anyway.
_MAX_DOUBLINGS: Final = 1000


def _check_positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


def _check_not_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """The retry schedule; durations in seconds. The defaults are Postfix's."""

    minimal_backoff: float = attrs.field(default=300.0, validator=_check_positive)
    maximal_backoff: float = attrs.field(default=4000.0, validator=_check_positive)
    max_lifetime: float = attrs.field(default=5 * 86400.0, validator=_check_not_negative)
    # 0 or None: never warn (Postfix's delay_warning_time = 0).
    delay_warning: float | None = 4 * 3600.0

    def __attrs_post_init__(self) -> None:
        if self.maximal_backoff < self.minimal_backoff:
            raise ValueError("maximal_backoff must not be less than minimal_backoff")
        if self.delay_warning is not None and not self.delay_warning >= 0:
            raise ValueError(f"delay_warning must not be negative, not {self.delay_warning!r}")

    @classmethod
    def from_config(cls, delivery: DeliveryConfig) -> RetryPolicy:
        """The policy a ``[delivery]`` table sets."""
        return cls(
            minimal_backoff=float(delivery.minimal_backoff),
            maximal_backoff=float(delivery.maximal_backoff),
            max_lifetime=float(delivery.max_queue_lifetime),
            delay_warning=float(delivery.delay_warning) or None,
        )


def expired(*, arrival: float, now: float, policy: RetryPolicy) -> bool:
    """Whether a message queued at `arrival` has outlived the policy's lifetime."""
    return now - arrival >= policy.max_lifetime


def next_attempt(
    *, arrival: float, attempts: int, now: float, policy: RetryPolicy, jitter: float = 0.0
) -> float | None:
    """When to try a message again after `attempts` failed tries, the last one ending at
    `now`; None when it has expired and must bounce now. With no failure yet, that is
    `now`. `jitter` is a random fraction in [0, 1) (``random.random()``) that spreads
    retries by up to `JITTER` either way."""
    if attempts < 0:
        raise ValueError(f"attempts must not be negative, not {attempts}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), not {jitter!r}")
    if expired(arrival=arrival, now=now, policy=policy):
        return None
    if attempts == 0:
        return now
    doublings = min(attempts - 1, _MAX_DOUBLINGS)
    spacing = policy.minimal_backoff * 2.0**doublings
    spacing *= 1.0 + JITTER * (2.0 * jitter - 1.0)
    spacing = min(max(spacing, policy.minimal_backoff), policy.maximal_backoff)
    return now + spacing


def delay_warning_due(*, arrival: float, now: float, warned: bool, policy: RetryPolicy) -> bool:
    """Whether to send the sender a "still trying" notice now: once (`warned` says it was
    sent), after `delay_warning` seconds in the queue, and not for an expired message."""
    if warned or not policy.delay_warning:
        return False
    if expired(arrival=arrival, now=now, policy=policy):
        return False
    return now - arrival >= policy.delay_warning
