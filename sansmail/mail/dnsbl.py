"""DNS block and allow lists of client addresses (RFC 5782): zone specs, the check, the
decision.

Theory of operation
-------------------
A list is a DNS zone: the client 192.0.2.99 is listed at zen.spamhaus.org when
99.2.0.192.zen.spamhaus.org has an A record (IPv6: the 32 nibbles reversed, RFC 5782
§2.4); the address in the answer says why, and the zone's TXT record at the same name
may say it in words. Which answer addresses count is the zone's spec, in Postfix's
``reject_rbl_client`` syntax (postconf(5)): ``zone=d.d.d.d``, where each of the four
parts is a number or a bracketed list of numbers and ranges, ``127.0.0.[2..11]``,
``127.0.[0..255].[1;2;3]``. A zone without a spec counts any 127.0.0.0/8 address except
127.255.255.0/24, which Spamhaus and others return to say "query refused", not "listed".

`check_lists(ip, blocklists, allowlists)` asks the A record of the client in every zone
in one batch. An allow-list hit (Postfix's ``permit_dnswl_client``) wins over every
block-list hit and lets the session skip its other client checks; otherwise the first
block list that counts the answer lists the client, and one more query fetches its TXT
reason. A DNS error is the same as "not listed", as in Postfix: an unreachable list must
not stop the mail; the result carries the zones that failed for the log.

`decide_dnsbl(result)` gives the reply, Postfix's default_rbl_reply with the list named:
``554 5.7.1 Service unavailable; client [192.0.2.99] blocked using zen.spamhaus.org``, and
the TXT reason after a "; " when the list gave one (printable ASCII only, cut to
`MAX_REASON` characters: it is the list's text in our reply).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

import attrs

from sansmail.mail.dnsquery import DnsCheck, DnsQuery, IPAddress, ask, reverse_name
from sansmail.smtp import Reply

__all__ = [
    "MAX_REASON",
    "DnsblResult",
    "DnsblSyntaxError",
    "ListZone",
    "check_lists",
    "decide_dnsbl",
    "parse_zone",
    "query_name",
]

MAX_REASON = 200  # characters of a list's TXT reason we repeat in a reply
_ZONE = re.compile(
    r"(?=.{1,200}\Z)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z"
)
_PART = r"(\[[^\]]*\]|[^.\[\]]*)"
_PATTERN = re.compile(rf"{_PART}\.{_PART}\.{_PART}\.{_PART}\Z")
_RANGE = re.compile(r"([0-9]{1,3})(?:\.\.([0-9]{1,3}))?\Z")
_REFUSED = ipaddress.IPv4Network("127.255.255.0/24")
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


class DnsblSyntaxError(ValueError):
    """A zone spec outside the syntax above; str() says what is wrong (for the config)."""


Octet = tuple[tuple[int, int], ...]  # inclusive ranges


@attrs.frozen
class ListZone:
    """One list: its `zone` and the answer addresses that count (None: the default)."""

    zone: str
    codes: tuple[Octet, Octet, Octet, Octet] | None = None

    def counts(self, text: str) -> bool:
        """Whether the answer address `text` means "listed" for this zone."""
        try:
            answer = ipaddress.IPv4Address(text)
        except ValueError:
            return False
        if self.codes is None:
            return answer in _LOOPBACK and answer not in _REFUSED
        return all(
            any(low <= octet <= high for low, high in ranges)
            for octet, ranges in zip(answer.packed, self.codes, strict=True)
        )


def parse_zone(spec: str) -> ListZone:
    """A `ListZone` from ``zone`` or ``zone=d.d.d.d`` (see the module's text)."""
    zone, sep, pattern = spec.strip().partition("=")
    zone = zone.strip().rstrip(".").lower()
    if not _ZONE.match(zone):
        raise DnsblSyntaxError(f"not a DNS zone: {zone!r}")
    if not sep:
        return ListZone(zone)
    match = _PATTERN.match(pattern.strip())
    if not match:
        raise DnsblSyntaxError(f"{spec!r}: the reply pattern needs four parts, d.d.d.d")
    codes = tuple(_octet(part, spec) for part in match.groups())
    return ListZone(zone, (codes[0], codes[1], codes[2], codes[3]))


def _octet(part: str, spec: str) -> Octet:
    if part.startswith("[") and part.endswith("]"):
        items = part[1:-1].split(";")
    else:
        items = [part]
    ranges = []
    for item in items:
        match = _RANGE.match(item)
        if not match:
            raise DnsblSyntaxError(f"{spec!r}: {part!r} is not a number, range or list")
        low = int(match[1])
        high = int(match[2]) if match[2] is not None else low
        if not low <= high <= 255:
            raise DnsblSyntaxError(f"{spec!r}: {item!r} is not within 0..255")
        if match[2] is not None and not part.startswith("["):
            raise DnsblSyntaxError(f"{spec!r}: a range must be in brackets: [{item}]")
        ranges.append((low, high))
    return tuple(ranges)


def query_name(ip: IPAddress, zone: str) -> str:
    """The name to look up for `ip` in `zone` (RFC 5782 §2.1, §2.4)."""
    return reverse_name(ip, zone)


@attrs.frozen(kw_only=True)
class DnsblResult:
    """What the lists said about `ip`: `allowed_by` the allow list that listed it,
    `listed_by` the block list that did (only when not allowed), with the answer
    `code` and the TXT `reason`; `failed` the zones whose lookup failed."""

    ip: IPAddress
    allowed_by: str | None = None
    listed_by: str | None = None
    code: str | None = None
    reason: str | None = None
    failed: tuple[str, ...] = ()


def check_lists(
    ip: IPAddress, blocklists: Sequence[ListZone], allowlists: Sequence[ListZone] = ()
) -> DnsCheck[DnsblResult]:
    """Look `ip` up in every list at once (see the module's text)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    zones = [*allowlists, *blocklists]
    answers = yield from ask(*(DnsQuery(query_name(ip, z.zone), "A") for z in zones))
    failed = tuple(z.zone for z, answer in zip(zones, answers, strict=True) if answer.failed)
    for zone, answer in zip(allowlists, answers, strict=False):
        if any(zone.counts(text) for text in answer.records):
            return DnsblResult(ip=ip, allowed_by=zone.zone, failed=failed)
    for zone, answer in zip(blocklists, answers[len(allowlists) :], strict=True):
        code = next((text for text in answer.records if zone.counts(text)), None)
        if code is not None:
            (txt,) = yield from ask(DnsQuery(query_name(ip, zone.zone), "TXT"))
            reason = _reason(" ".join(txt.records)) if not txt.void and not txt.failed else None
            return DnsblResult(ip=ip, listed_by=zone.zone, code=code, reason=reason, failed=failed)
    return DnsblResult(ip=ip, failed=failed)


def decide_dnsbl(result: DnsblResult) -> Reply | None:
    """The refusal for a listed client; None when it is not listed (or allow-listed)."""
    if result.listed_by is None or result.allowed_by is not None:
        return None
    text = f"Service unavailable; client [{result.ip}] blocked using {result.listed_by}"
    if result.reason:
        text += f"; {result.reason}"
    return Reply(code=554, lines=(text,), enhanced="5.7.1")


def _reason(text: str) -> str | None:
    # The list's words go into our reply: printable ASCII only, bounded.
    clean = "".join(ch if " " <= ch <= "~" else "?" for ch in text).strip()
    return clean[:MAX_REASON] or None
