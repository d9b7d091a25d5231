"""Message and recipient rates per client and per user (Postfix's anvil): what counts,
in which window, and when a client is over its limit.

Theory of operation
-------------------
Postfix's smtpd asks its anvil(8) server at each MAIL and RCPT how many such requests the
client made "per time unit" (``anvil_rate_time_unit``, 60 s) and refuses when the answer
is over the limit (``smtpd_client_message_rate_limit``,
``smtpd_client_recipient_rate_limit``)::

    450 4.7.1 Error: too much mail from 192.0.2.1
    450 4.7.1 Error: too many recipients from 192.0.2.1

We count the same way, and also per authenticated (SASL) user, whatever address the user
comes from, which Postfix leaves to policy services:

* The window is anvil's: it opens at a key's first event and lasts `TIME_UNIT`; the first
  event after it ends opens a new one with the count at zero (not a sliding window: a
  client can send a limit's worth at the end of one window and another at the start of
  the next). A clock that went back also opens a new window.
* Every request counts, the refused ones too (anvil counts before smtpd compares), and
  the refusal is for ``count > limit``.
* One key holds a window of both counts (messages and recipients), as anvil keeps one per
  client. A client is its address; IPv6 clients are counted per /84 (`IPV6_PREFIX`, the
  default of Postfix 3.8's ``smtpd_client_ipv6_prefix_length``), since one host may hold
  many addresses of its prefix; an IPv4-mapped IPv6 address counts as the IPv4 one.
  Postfix also keeps each master.cf service apart; we count a client over all listeners.
* Clients in mynetworks (`RateLimits.exempt`) are never counted, for the client or the
  user limits: Postfix's ``smtpd_client_event_limit_exceptions`` defaults to
  ``$mynetworks``. A limit of 0 is off.

This module only decides: time is a parameter, and where the windows are kept is the
caller's business (`sansmail.storage.anvil` keeps them in a file every server process
shares; `MemoryWindows` in a dict, for one process).
"""

from __future__ import annotations

import collections
import enum
import functools
import ipaddress
from collections.abc import Iterable
from typing import Final

import attrs

from sansmail.config import Config
from sansmail.mail.logtext import client_address
from sansmail.mail.policy import in_networks
from sansmail.smtp import Reply

__all__ = [
    "IPV6_PREFIX",
    "MAX_COUNT",
    "TIME_UNIT",
    "Event",
    "MemoryWindows",
    "Over",
    "RateLimits",
    "Window",
    "client_key",
    "counted",
    "over",
    "refusal",
    "user_key",
]

#: Seconds per window (Postfix's anvil_rate_time_unit).
TIME_UNIT: Final = 60.0
#: IPv6 clients are counted per this prefix (Postfix 3.8's smtpd_client_ipv6_prefix_length).
IPV6_PREFIX: Final = 84
#: Counts stop here (they are kept in 32 bits).
MAX_COUNT: Final = 2**32 - 1

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Event(enum.Enum):
    """What is counted: a MAIL command (a message) or a RCPT command (a recipient)."""

    MESSAGE = "message"
    RECIPIENT = "recipient"


@attrs.frozen
class Window:
    """One key's counts since `start` (seconds, the caller's clock)."""

    start: float
    messages: int = 0
    recipients: int = 0

    def count(self, event: Event) -> int:
        return self.messages if event is Event.MESSAGE else self.recipients


def counted(window: Window | None, event: Event, now: float, unit: float = TIME_UNIT) -> Window:
    """`window` with `event` at `now` counted: in it while ``start <= now < start +
    unit``, else in a new window that opens at `now` (anvil's rule; see the module
    docstring). None is a key never seen."""
    if window is None or not window.start <= now < window.start + unit:
        start, messages, recipients = now, 0, 0
    else:
        start, messages, recipients = window.start, window.messages, window.recipients
    # Made directly: attrs.evolve would be most of the cost of a count.
    if event is Event.MESSAGE:
        return Window(start, min(messages + 1, MAX_COUNT), recipients)
    return Window(start, messages, min(recipients + 1, MAX_COUNT))


def _networks(value: Iterable[IPNetwork | str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(net) for net in value)


def _limit(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{attribute.name} must be 0 (off) .. {MAX_COUNT}")


@attrs.frozen(kw_only=True)
class RateLimits:
    """The four limits, per `unit` seconds (0: off), and who is exempt."""

    client_message: int = attrs.field(default=0, validator=_limit)
    client_recipient: int = attrs.field(default=0, validator=_limit)
    user_message: int = attrs.field(default=0, validator=_limit)
    user_recipient: int = attrs.field(default=0, validator=_limit)
    exempt: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_networks)
    unit: float = attrs.field(default=TIME_UNIT, validator=attrs.validators.gt(0))
    ipv6_prefix: int = attrs.field(
        default=IPV6_PREFIX, validator=[attrs.validators.ge(0), attrs.validators.le(128)]
    )

    @classmethod
    def from_config(cls, config: Config) -> RateLimits:
        """``[limits]``'s rates, with ``mynetworks`` exempt."""
        limits = config.limits
        return cls(
            client_message=limits.client_message_rate,
            client_recipient=limits.client_recipient_rate,
            user_message=limits.user_message_rate,
            user_recipient=limits.user_recipient_rate,
            exempt=config.mynetworks,
        )

    @property
    def enabled(self) -> bool:
        return any(
            (self.client_message, self.client_recipient, self.user_message, self.user_recipient)
        )

    def client_limit(self, event: Event) -> int:
        return self.client_message if event is Event.MESSAGE else self.client_recipient

    def user_limit(self, event: Event) -> int:
        return self.user_message if event is Event.MESSAGE else self.user_recipient

    def is_exempt(self, client_ip: str) -> bool:
        """`client_ip` is in `exempt` (an address that does not parse is not)."""
        return in_networks(client_ip, self.exempt)


#: Who the client is (`client_address`), parsed once per client: it comes back at every
#: MAIL and RCPT.
_address = functools.lru_cache(maxsize=1024)(client_address)


def client_key(client_ip: str, ipv6_prefix: int = IPV6_PREFIX) -> str:
    """The key a client's windows are kept under: its address, or its IPv6 prefix
    (``c:2001:db8::/84``). A client address that does not parse is its own key."""
    address = _address(client_ip)
    if address is None:
        return f"c:{client_ip}"
    if address.version == 6 and ipv6_prefix < 128:
        network = ipaddress.IPv6Network((int(address), ipv6_prefix), strict=False)
        return f"c:{network}"
    return f"c:{address}"


def user_key(user: str) -> str:
    """The key an authenticated user's windows are kept under."""
    return f"u:{user}"


@attrs.frozen
class Over:
    """A limit passed: `count` events of `event` in the window, more than `limit`;
    `user` says whose (None: the client's)."""

    event: Event
    count: int
    limit: int
    user: str | None = None


def over(
    limits: RateLimits,
    event: Event,
    client: Window | None,
    user: Window | None = None,
    *,
    user_name: str | None = None,
) -> Over | None:
    """Which limit the windows, with this event already counted, are over: the client's
    first, then the user's (`user_name`'s); None when neither (or the limit is off)."""
    limit = limits.client_limit(event)
    if limit and client is not None and client.count(event) > limit:
        return Over(event, client.count(event), limit)
    limit = limits.user_limit(event)
    if limit and user is not None and user.count(event) > limit:
        return Over(event, user.count(event), limit, user=user_name or "")
    return None


def refusal(over: Over, client_ip: str) -> Reply:
    """The 450 for a limit passed, in Postfix's words; a user's names the user."""
    who = client_ip if over.user is None else over.user
    what = "too much mail" if over.event is Event.MESSAGE else "too many recipients"
    return Reply(code=450, lines=f"Error: {what} from {who}", enhanced="4.7.1")


class MemoryWindows:
    """Windows kept in this process only, at most `max_keys` of them (the key whose
    window opened longest ago is dropped first: it is the likeliest to be over)."""

    def __init__(self, *, max_keys: int = 65536, unit: float = TIME_UNIT) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self.unit = unit
        self._windows: collections.OrderedDict[str, Window] = collections.OrderedDict()

    def count(self, key: str, event: Event, now: float) -> Window:
        """Count `event` at `now` for `key`; the window after it."""
        before = self._windows.get(key)
        window = counted(before, event, now, self.unit)
        if before is None or window.start != before.start:
            self._windows.pop(key, None)
            self._windows[key] = window  # a new window goes to the back
            while len(self._windows) > self.max_keys:
                self._windows.popitem(last=False)
        else:
            self._windows[key] = window
        return window

    def __len__(self) -> int:
        return len(self._windows)
