"""The DNS vocabulary of every check that needs the DNS: questions, answers, the driver.

A check (SPF, iprev, DNSBL, DMARC) never resolves a name itself: it is a generator that
yields batches of `DnsQuery` and is sent back one `DnsAnswer` per query, in the same order,
and whose return value is its result. How the adapter got each answer (cache, timeout,
concurrency) is its business; what each status means is the check's.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Literal, TypeAlias, TypeVar

import attrs

__all__ = [
    "DnsAnswer",
    "DnsCheck",
    "DnsQuery",
    "DnsStatus",
    "IPAddress",
    "RType",
    "ask",
    "drive",
    "reverse_name",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
RType = Literal["TXT", "A", "AAAA", "MX", "PTR", "SRV", "CNAME"]

_T = TypeVar("_T")


class DnsStatus(enum.Enum):
    """How a DNS query ended.

    OK with no records is "no data"; it and NXDOMAIN are the "void lookups" of RFC 7208
    §4.6.4. SERVFAIL (any RCODE other than 0 and 3) and TIMEOUT are transient errors."""

    OK = "ok"
    NXDOMAIN = "nxdomain"
    SERVFAIL = "servfail"
    TIMEOUT = "timeout"


def _records(records: Iterable[str]) -> tuple[str, ...]:
    return tuple(records)


@attrs.frozen
class DnsQuery:
    """One question: a name (no trailing dot, as the checks build it) and a type."""

    name: str
    rtype: RType


@attrs.frozen
class DnsAnswer:
    """The answer to one `DnsQuery`.

    `records` hold, per type: TXT, each record's character-strings joined with nothing
    between them (RFC 7208 §3.3), decoded as latin-1 so that every octet stays one
    character and non-ASCII is seen as such; A and AAAA, the addresses as text; MX, the
    exchange names ("." or "" is a null MX); PTR and CNAME, the names; SRV, the records
    in zone-file form ("0 1 993 mx.example.com.")."""

    status: DnsStatus = DnsStatus.OK
    records: tuple[str, ...] = attrs.field(default=(), converter=_records)

    @classmethod
    def of(cls, *records: str) -> DnsAnswer:
        return cls(DnsStatus.OK, records)

    @property
    def failed(self) -> bool:
        return self.status in (DnsStatus.SERVFAIL, DnsStatus.TIMEOUT)

    @property
    def void(self) -> bool:
        """NXDOMAIN, or success with no answer: a "void lookup" (RFC 7208 §4.6.4)."""
        return self.status is DnsStatus.NXDOMAIN or (
            self.status is DnsStatus.OK and not self.records
        )


# A check: yields batches of questions, is sent the answers, returns its result.
DnsCheck: TypeAlias = Generator[tuple[DnsQuery, ...], Sequence[DnsAnswer], _T]


def ask(*queries: DnsQuery) -> DnsCheck[tuple[DnsAnswer, ...]]:
    """``answers = yield from ask(q1, q2)``: one batch, its answers checked and in order."""
    if not queries:
        return ()  # an empty batch would only cost the adapter a round trip
    answers = tuple((yield queries))
    if len(answers) != len(queries) or not all(isinstance(a, DnsAnswer) for a in answers):
        raise TypeError(f"expected {len(queries)} DnsAnswer, got {answers!r}")
    return answers


def drive(check: DnsCheck[_T], resolve: Callable[[DnsQuery], DnsAnswer]) -> _T:
    """Run `check` to its end, answering each query with `resolve` (tests, tools)."""
    try:
        queries = next(check)
        while True:
            queries = check.send([resolve(query) for query in queries])
    except StopIteration as done:
        result: _T = done.value
        return result


def reverse_name(ip: IPAddress, suffix: str | None = None) -> str:
    """The name under which `ip` is looked up: reversed octets (IPv4) or nibbles (IPv6)
    under `suffix`, or under in-addr.arpa / ip6.arpa when it is None (RFC 1035 §3.5,
    RFC 3596 §2.5). An IPv4-mapped IPv6 address is its IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        labels = reversed(str(ip).split("."))
        default = "in-addr.arpa"
    else:
        labels = reversed(ip.exploded.replace(":", ""))
        default = "ip6.arpa"
    return ".".join((*labels, suffix if suffix is not None else default))
