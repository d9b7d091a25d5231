"""SPF vocabulary: the DNS questions the evaluator asks, the answers it is given, its result.

The evaluator never resolves a name itself (RFC 7208 leaves the DNS to the caller, and
sansmail's cores never do I/O): it yields batches of `DnsQuery` and is sent back one
`DnsAnswer` per query, in the same order. How the adapter got the answer (cache, timeout,
concurrency) is its business; what each status means for SPF is ours (RFC 7208 §2.6,
§4.4, §5).
"""

from __future__ import annotations

import enum

import attrs

from sansmail.mail.dnsquery import DnsAnswer, DnsQuery, DnsStatus, IPAddress, RType

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
