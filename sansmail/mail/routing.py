"""Where the outbound queue sends mail for a domain: the next hop, the order of the MX
hosts, and how many connections one destination may have at once.

Pure decisions: DNS answers come in as data (`MXRecord`), randomness as a `shuffle`
function, and the concurrency cap is bookkeeping the queue runner consults.

Theory of operation
-------------------
`route_for` picks the next hop for a recipient domain the way Postfix does, first match
wins:

1. ``[delivery] transport``: the entry for the domain itself, then entries written
   ``.parent`` for each parent domain, nearest first (Postfix transport(5): a ``.domain``
   key matches subdomains; a plain key only itself).
2. ``[delivery] relayhost``: every other remote domain goes to the smarthost.
3. Otherwise the domain's own MX records, port 25 (RFC 5321 §5.1). An address literal
   (``[192.0.2.1]``) names its host directly: no MX lookup (RFC 5321 §5.1, §4.1.3).

A `Route` carries the host, the port, and whether the caller must look up the host's MX
records first (`mx_lookup`); `kind` only says why, for logs. With `mx_lookup` false the
caller resolves A/AAAA for `host` and connects.

`order_mx` turns an MX answer into the list of hosts to try in turn (RFC 5321 §5.1):

* Lower preference first; hosts of equal preference in random order (the caller's
  `shuffle`), so that load spreads over them.
* No MX records: the domain itself is the only host, the "implicit MX".
* Null MX (RFC 7505 §3: a lone record whose exchange is the root, ``.``): the domain
  accepts no mail; `NullMXError` tells the caller to bounce at once with 5.1.10 (§4.1) rather
  than fall back to A/AAAA. A ``.`` among real hosts breaks §3's MUST NOT; we drop it and
  use the real hosts, since they are what the domain owner evidently maintains.
* Duplicates (one host listed twice, perhaps at two preferences) are tried once, at their
  best preference.
* Loop rule: when one of our own names appears, we are an MX for the domain, and only
  hosts strictly more preferred than us may be tried; our entry and everything at or after
  its preference are dropped. If nothing is left the mail would come back to us:
  `MXLoopError`, a permanent 5.4.6 failure (RFC 3463 X.4.6 "routing loop detected").

`DestinationLimiter` caps the connections open to one destination at once (Postfix
``default_destination_concurrency_limit``, 20), so a large queue for one domain does not
look like an attack to its server nor starve every other domain.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Sequence
from typing import Final, Literal

import attrs

from sansmail.config import DeliveryConfig, NextHop

__all__ = [
    "DEFAULT_DESTINATION_LIMIT",
    "DestinationLimiter",
    "MXLoopError",
    "MXRecord",
    "NullMXError",
    "Route",
    "RoutingError",
    "order_mx",
    "route_for",
]

SMTP_PORT: Final = 25  # RFC 5321 §4.5.4.2 (well-known port)
#: Postfix default_destination_concurrency_limit.
DEFAULT_DESTINATION_LIMIT: Final = 20

RouteKind = Literal["transport", "relayhost", "mx", "literal"]


@attrs.frozen
class Route:
    """The next hop for a domain. When `mx_lookup` is true, `host` is a domain whose MX
    records the caller looks up (then `order_mx`); otherwise it is the host to connect to
    (a name for A/AAAA, or an IP address)."""

    kind: RouteKind
    host: str
    port: int
    mx_lookup: bool


def _normalize(domain: str) -> str:
    # Config keys and Address.domain are canonical already; DNS answers and callers may
    # still hand us "Example.ORG." and that must not miss a match.
    return domain.rstrip(".").lower()


def _from_next_hop(kind: RouteKind, hop: NextHop) -> Route:
    return Route(kind, hop.host, hop.port, hop.mx_lookup)


def _literal_host(domain: str) -> str | None:
    # "[192.0.2.1]" -> "192.0.2.1", "[IPv6:2001:db8::1]" -> "2001:db8::1"; a general
    # address literal ("[tag:...]") has no meaning we know and is not a host.
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def route_for(domain: str, delivery: DeliveryConfig) -> Route:
    """The next hop for mail to `domain` (see the module docstring for the order)."""
    name = _normalize(domain)
    transport = {_normalize(key): hop for key, hop in delivery.transport.items()}
    if name in transport:
        return _from_next_hop("transport", transport[name])
    if not name.startswith("["):
        labels = name.split(".")
        for i in range(1, len(labels)):
            parent = "." + ".".join(labels[i:])
            if parent in transport:
                return _from_next_hop("transport", transport[parent])
    if delivery.relayhost is not None:
        return _from_next_hop("relayhost", delivery.relayhost)
    if name.startswith("["):
        host = _literal_host(name)
        if host is None:
            raise ValueError(f"{domain!r} is not an address literal we can deliver to")
        return Route("literal", host, SMTP_PORT, False)
    return Route("mx", name, SMTP_PORT, True)


# --- MX ordering ------------------------------------------------------------------------


@attrs.frozen
class MXRecord:
    """One MX resource record (RFC 1035 §3.3.9); `exchange` as DNS gave it."""

    preference: int
    exchange: str


class RoutingError(Exception):
    """Mail for the domain cannot be delivered by any route; bounce it at once.

    `status` is the RFC 3463 enhanced status code for the bounce."""

    status: str = "5.4.4"  # RFC 3463 X.4.4: unable to route

    def __init__(self, domain: str, message: str) -> None:
        super().__init__(message)
        self.domain = domain


class NullMXError(RoutingError):
    """The domain publishes a null MX: it accepts no mail (RFC 7505)."""

    status = "5.1.10"  # RFC 7505 §4.1


class MXLoopError(RoutingError):
    """We are the best MX for the domain, yet it is not ours: the mail would loop."""

    status = "5.4.6"  # RFC 3463 X.4.6


def order_mx(
    records: Sequence[MXRecord],
    *,
    domain: str,
    shuffle: Callable[[list[str]], None],
    self_names: Collection[str] = (),
) -> list[str]:
    """The hosts to try, in order, for mail to `domain` given its MX `records` (empty
    when the domain has none). `shuffle` permutes a list in place (``random.shuffle``);
    `self_names` are this server's own host names. Host names come back lower case,
    without a trailing dot. Raises `NullMXError` or `MXLoopError`."""
    name = _normalize(domain)
    if not records:
        # RFC 5321 §5.1: no MX at all means the domain itself, at preference 0.
        records = [MXRecord(0, name)]
    hosts = [r for r in records if _normalize(r.exchange)]
    if not hosts:
        raise NullMXError(name, f"{name} publishes a null MX and accepts no mail")

    best: dict[str, int] = {}
    for record in hosts:
        host = _normalize(record.exchange)
        if host not in best or record.preference < best[host]:
            best[host] = record.preference

    ours = {_normalize(n) for n in self_names}
    own_preferences = [pref for host, pref in best.items() if host in ours]
    if own_preferences:
        ceiling = min(own_preferences)
        best = {host: pref for host, pref in best.items() if pref < ceiling}
        if not best:
            raise MXLoopError(name, f"mail for {name} loops back to myself")

    by_preference: dict[int, list[str]] = {}
    for host, pref in best.items():
        by_preference.setdefault(pref, []).append(host)
    ordered: list[str] = []
    for pref in sorted(by_preference):
        group = by_preference[pref]
        shuffle(group)
        ordered.extend(group)
    return ordered


# --- concurrency ------------------------------------------------------------------------


class DestinationLimiter:
    """How many deliveries are in flight to each destination, capped at `limit`.

    A destination is whatever key the caller groups by (the recipient domain, or the
    next hop for a relayhost/transport route). Keys are compared as given. Idle
    destinations are forgotten, so memory follows what is in flight, not history."""

    def __init__(self, limit: int = DEFAULT_DESTINATION_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.limit = limit
        self._in_flight: dict[str, int] = {}

    def acquire(self, destination: str) -> bool:
        """Take a slot for `destination`; False (and nothing taken) when it is full."""
        count = self._in_flight.get(destination, 0)
        if count >= self.limit:
            return False
        self._in_flight[destination] = count + 1
        return True

    def release(self, destination: str) -> None:
        """Give back a slot taken by `acquire`."""
        count = self._in_flight.get(destination, 0)
        if count <= 0:
            raise ValueError(f"release of {destination!r} without a matching acquire")
        if count == 1:
            del self._in_flight[destination]
        else:
            self._in_flight[destination] = count - 1

    def in_flight(self, destination: str) -> int:
        """The slots `destination` holds now."""
        return self._in_flight.get(destination, 0)

    def __len__(self) -> int:
        """The number of destinations with a delivery in flight."""
        return len(self._in_flight)
