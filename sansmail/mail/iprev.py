"""Reverse DNS of the client (FCrDNS, "iprev" of RFC 8601 §3): the check and the decision.

Theory of operation
-------------------
`check_iprev(ip)` is a generator in the style of `sansmail.mail.dnsquery`: it asks for the
PTR records of the client's reverse name, then, in one batch, for the A (IPv4 client) or
AAAA (IPv6 client) records of each PTR name, at most `MAX_NAMES` of them (RFC 8601 §3 and
RFC 7208 §5.5 share the limit of ten). The first name whose addresses include the client's
is the verified name. The results are RFC 8601's for iprev:

- pass: a PTR name resolves back to the client address;
- fail: PTR names exist but none resolves back (or none is a host name at all);
- temperror: the PTR lookup failed transiently, or a forward lookup failed transiently
  and no other name resolved back;
- permerror: no PTR data (NXDOMAIN or an empty answer), as RFC 8601 §3 words it.

`decide_reverse_dns(mode, result)` turns the result into what the session does, as
Postfix's ``reject_unknown_client_hostname`` does: with "reject", a temporary failure is
450 4.7.25 and anything but pass is 550 5.7.25 (RFC 7372 §3.2: "Client host rejected:
cannot find your hostname"); with "tag" only the Authentication-Results header says it.
Either way, the Received header's client name is the verified name, never an unverified
PTR name, which the owner of the address could set to anything.
"""

from __future__ import annotations

import enum
import ipaddress
import re

import attrs

from sansmail.mail.dnsquery import DnsCheck, DnsQuery, IPAddress, RType, ask, reverse_name
from sansmail.smtp import Reply

__all__ = [
    "MAX_NAMES",
    "IprevResult",
    "IprevVerdict",
    "ReverseDnsDecision",
    "ReverseDnsMode",
    "check_iprev",
    "decide_reverse_dns",
]

MAX_NAMES = 10  # PTR names whose addresses we ask for (RFC 8601 §3, RFC 7208 §5.5)
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z"
)


class IprevVerdict(enum.Enum):
    """The iprev results of RFC 8601 §2.7.3; the value is the RFC's word."""

    PASS = "pass"  # noqa: S105 (a result name, not a password)
    FAIL = "fail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class ReverseDnsMode(enum.Enum):
    """The ``reverse_dns`` setting: no lookup, a header only, or a refusal."""

    OFF = "off"
    TAG = "tag"
    REJECT = "reject"


@attrs.frozen(kw_only=True)
class IprevResult:
    """What the check found: `name` is the verified name (pass only), `ptr_names` the
    host names the PTR records gave (lower case, no trailing dot, at most `MAX_NAMES`),
    `problem` a sentence for the log and the header's comment when not pass."""

    verdict: IprevVerdict
    ip: IPAddress
    name: str | None = None
    ptr_names: tuple[str, ...] = ()
    problem: str | None = None


@attrs.frozen(kw_only=True)
class ReverseDnsDecision:
    """`reply` refuses the client (None: go on); `client_name` is the name for the
    Received header (None: "unknown")."""

    reply: Reply | None
    client_name: str | None


def check_iprev(ip: IPAddress) -> DnsCheck[IprevResult]:
    """The FCrDNS check of `ip` as a generator of DNS questions (see the module's text)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    (answer,) = yield from ask(DnsQuery(reverse_name(ip), "PTR"))
    if answer.failed:
        return IprevResult(
            verdict=IprevVerdict.TEMPERROR,
            ip=ip,
            problem=f"DNS {answer.status.value} looking up PTR of {ip}",
        )
    if answer.void:
        return IprevResult(verdict=IprevVerdict.PERMERROR, ip=ip, problem=f"no PTR for {ip}")
    names: list[str] = []
    for record in answer.records:
        name = record.rstrip(".").lower()
        # A PTR may hold any octets; only host names can resolve back, and only they may
        # reach a header or a log line.
        if _HOSTNAME.match(name) and name not in names:
            names.append(name)
    names = names[:MAX_NAMES]
    if not names:
        return IprevResult(
            verdict=IprevVerdict.FAIL, ip=ip, problem=f"no host name in the PTR of {ip}"
        )
    rtype: RType = "A" if isinstance(ip, ipaddress.IPv4Address) else "AAAA"
    answers = yield from ask(*(DnsQuery(name, rtype) for name in names))
    transient = False
    for name, forward in zip(names, answers, strict=True):
        if forward.failed:
            transient = True
        elif any(_same(ip, text) for text in forward.records):
            return IprevResult(verdict=IprevVerdict.PASS, ip=ip, name=name, ptr_names=tuple(names))
    if transient:
        return IprevResult(
            verdict=IprevVerdict.TEMPERROR,
            ip=ip,
            ptr_names=tuple(names),
            problem=f"DNS failure looking up the addresses of the PTR names of {ip}",
        )
    return IprevResult(
        verdict=IprevVerdict.FAIL,
        ip=ip,
        ptr_names=tuple(names),
        problem=f"no PTR name of {ip} resolves back to it",
    )


def decide_reverse_dns(mode: ReverseDnsMode, result: IprevResult | None) -> ReverseDnsDecision:
    """What to do with the client after `check_iprev` (`result` None: not checked)."""
    if mode is ReverseDnsMode.OFF or result is None:
        return ReverseDnsDecision(reply=None, client_name=None)
    name = result.name if result.verdict is IprevVerdict.PASS else None
    if mode is ReverseDnsMode.TAG or result.verdict is IprevVerdict.PASS:
        return ReverseDnsDecision(reply=None, client_name=name)
    if result.verdict is IprevVerdict.TEMPERROR:
        reply = Reply(
            code=450,
            lines=(f"Client host rejected: cannot find your hostname, [{result.ip}]",),
            enhanced="4.7.25",
        )
    else:
        reply = Reply(
            code=550,
            lines=(f"Client host rejected: cannot find your hostname, [{result.ip}]",),
            enhanced="5.7.25",
        )
    return ReverseDnsDecision(reply=reply, client_name=None)


def _same(ip: IPAddress, text: str) -> bool:
    try:
        return ipaddress.ip_address(text) == ip
    except ValueError:
        return False
