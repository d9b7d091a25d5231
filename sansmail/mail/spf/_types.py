"""SPF vocabulary: the DNS questions the evaluator asks, the answers it is given, its result.

The evaluator never resolves a name itself (RFC 7208 leaves the DNS to the caller, and
sansmail's cores never do I/O): it yields batches of `DnsQuery` and is sent back one
`DnsAnswer` per query, in the same order. How the adapter got the answer (cache, timeout,
concurrency) is its business; what each status means for SPF is ours (RFC 7208 §2.6,
§4.4, §5).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from typing import Literal

import attrs

__all__ = [
    "DnsAnswer",
    "DnsQuery",
    "DnsStatus",
    "IPAddress",
    "RType",
    "SpfResult",
    "SpfSyntaxError",
    "Verdict",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
RType = Literal["TXT", "A", "AAAA", "MX", "PTR"]


class SpfSyntaxError(ValueError):
    """A record, term or macro-string outside the RFC 7208 grammar; str() says where.

    The only exception the parser and the macro expander raise on any text. The
    evaluator turns it into a "permerror" result (§4.6)."""


class Verdict(enum.Enum):
    """The seven results of check_host() (RFC 7208 §2.6); the value is the RFC's word."""

    PASS = "pass"  # noqa: S105 (a result name, not a password)
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class DnsStatus(enum.Enum):
    """How a DNS query ended, as far as SPF cares.

    OK with no records is "no data"; it and NXDOMAIN are the "void lookups" of §4.6.4.
    SERVFAIL (any RCODE other than 0 and 3) and TIMEOUT are the transient errors that
    make a result "temperror" (§2.6.6)."""

    OK = "ok"
    NXDOMAIN = "nxdomain"
    SERVFAIL = "servfail"
    TIMEOUT = "timeout"


def _records(records: Iterable[str]) -> tuple[str, ...]:
    return tuple(records)


@attrs.frozen
class DnsQuery:
    """One question: a name (no trailing dot, as the evaluator builds it) and a type."""

    name: str
    rtype: RType


@attrs.frozen
class DnsAnswer:
    """The answer to one `DnsQuery`.

    `records` hold, per type: TXT, each record's character-strings joined with nothing
    between them (§3.3), decoded as latin-1 so that every octet stays one character and
    non-ASCII is seen as such; A and AAAA, the addresses as text; MX, the exchange names
    (preference order is irrelevant to SPF; "." or "" is a null MX); PTR, the names."""

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
        """NXDOMAIN, or success with no answer: a "void lookup" (§4.6.4)."""
        return self.status is DnsStatus.NXDOMAIN or (
            self.status is DnsStatus.OK and not self.records
        )


@attrs.frozen(kw_only=True)
class SpfResult:
    """What check_host() decided, with what a reply or a Received-SPF header needs.

    `mechanism` is the directive that matched, as written (None for the default result
    and for errors); `explanation` is the expanded "exp=" text, only ever on "fail" and
    only when the domain published a usable one (§6.2); `problem` says why the result
    is "permerror", "temperror" or "none". `lookups` and `void_lookups` count the terms
    charged against the limits of §4.6.4."""

    verdict: Verdict
    domain: str
    ip: IPAddress
    sender: str
    helo: str
    receiver: str
    identity: str
    mechanism: str | None = None
    explanation: str | None = None
    problem: str | None = None
    lookups: int = 0
    void_lookups: int = 0
