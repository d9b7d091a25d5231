"""Commands per second per connection (``[limits] commands_per_second``): a token
bucket that slows a client sending commands faster than that, without dropping it.

Theory of operation: a connection's bucket holds up to `burst` tokens and gains `rate`
a second; each command takes one. While there is one, the command is handled at once;
when the bucket is empty the command takes one all the same (the bucket goes into debt)
and `take` says how long the adapter must wait before handing it to the session: the
time the debt takes to refill. So a client flooding commands gets `rate` of them
answered a second, the others simply wait in its socket buffer (and TCP's window slows
the client down in turn), while other connections, whose buckets are their own, are
not slowed at all.

`burst` is `BURST_SECONDS` of the rate: a mail client's sync sends thousands of
commands in a row (mbsync pipelines one ``UID FETCH`` per message), faster than the
rate for a few seconds and then nothing; those go through unpaced, and what is paced is
a client that keeps going. Clients in mynetworks are exempt (as they are from Postfix's
anvil rates), and a rate of 0 turns pacing off.

Nothing here reads a clock: the adapter gives the time (any monotonic clock in seconds)
to each call.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import attrs

from sansmail.config import Config
from sansmail.mail.policy import IPNetwork, in_networks

__all__ = ["BURST_SECONDS", "Pacer", "connection_pacer", "pacer_for"]

#: The bucket's size, in seconds of the rate: what a client may send in a row unpaced.
BURST_SECONDS = 5.0


@attrs.define
class Pacer:
    """One connection's token bucket: `rate` commands a second, `burst` in a row."""

    rate: float = attrs.field(validator=attrs.validators.gt(0))
    burst: float = attrs.field(validator=attrs.validators.ge(1))
    _tokens: float = attrs.field(init=False)
    _at: float = attrs.field(init=False, default=-math.inf)

    def __attrs_post_init__(self) -> None:
        self._tokens = self.burst  # a new connection starts with a full bucket

    @classmethod
    def per_second(cls, rate: float) -> Pacer:
        """A bucket for `rate` commands a second, `BURST_SECONDS` of them in a row."""
        return cls(rate=rate, burst=max(1.0, rate * BURST_SECONDS))

    def _refill(self, now: float) -> float:
        # The tokens at `now` (a clock that went back refills nothing).
        tokens = self._tokens
        if now > self._at:
            tokens += (now - self._at) * self.rate
            tokens = min(tokens, self.burst)
            self._at = now
        return tokens

    def take(self, now: float) -> float:
        """One command at `now`: the seconds to wait before handling it (0.0: at once).
        The token is taken either way; the wait pays the debt."""
        tokens = self._tokens = self._refill(now) - 1.0
        return 0.0 if tokens >= 0.0 else -tokens / self.rate

    def try_take(self, now: float) -> bool:
        """Take a token if one is there at `now` (the command needs no wait); False
        takes nothing (the caller then `take`s and waits)."""
        tokens = self._refill(now)
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


def pacer_for(client_ip: str, *, rate: int, exempt: Collection[IPNetwork]) -> Pacer | None:
    """The bucket for a connection from `client_ip`, or None when it is not paced
    (rate 0, or a client in `exempt`: mynetworks)."""
    if rate <= 0 or in_networks(client_ip, exempt):
        return None
    return Pacer.per_second(rate)


def connection_pacer(config: Config, client_ip: str) -> Pacer | None:
    """`pacer_for` with ``[limits] commands_per_second`` and mynetworks exempt: what every
    protocol's connection from `client_ip` is paced by."""
    return pacer_for(client_ip, rate=config.limits.commands_per_second, exempt=config.mynetworks)
