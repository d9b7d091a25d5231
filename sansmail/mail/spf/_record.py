"""SPF records (RFC 7208 §4.5, §4.6, §5, §6, §12): which TXT record is the policy, and its
parse into mechanisms and modifiers.

The whole record is parsed before any term is evaluated, because a syntax error anywhere
is a "permerror" even when an earlier mechanism would have matched (§4.6). Terms are
separated by one or more SP and nothing else (§4.6.1): a tab or CR inside a record makes
the term around it malformed. Text outside visible ASCII is malformed too (§3.1).

A term of the form ``name=...`` whose name is a modifier name (§12
``name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )``) is a modifier; anything else must
be a mechanism. "redirect" and "exp" may each appear once (§6); their domain-spec must
follow the grammar, so ``exp=`` or ``redirect=-all`` is a permerror rather than an unknown
modifier (the suite's reading of §6.1/§6.2). Unknown modifiers are ignored after their
macro-string is checked.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from ._macro import MacroString, parse_macro_string
from ._types import SpfSyntaxError, Verdict

__all__ = ["Mechanism", "Record", "is_spf_record", "parse_domain_spec", "parse_record"]

_QUALIFIERS = {"+": Verdict.PASS, "-": Verdict.FAIL, "~": Verdict.SOFTFAIL, "?": Verdict.NEUTRAL}
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)=(.*)", re.DOTALL)
_MECHANISM = re.compile(r"([+\-~?]?)([A-Za-z][A-Za-z0-9]*)(.*)", re.DOTALL)
# a / mx: [":" domain-spec] [dual-cidr-length]. The domain is matched lazily so that a
# trailing "/24" or "//64" is read as a prefix length, not as part of the name.
_A_OR_MX = re.compile(r"(?::(.+?))?(?:/([0-9]+))?(?://([0-9]+))?", re.DOTALL)
_IP4 = re.compile(r":([0-9.]+)(?:/([0-9]+))?")
_IP6 = re.compile(r":([0-9A-Fa-f:.]+)(?:/([0-9]+))?")
# toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
_TOPLABEL = re.compile(
    r"[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9]", re.ASCII
)
_DNS_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})


@attrs.frozen
class Mechanism:
    """One directive. `domain` is the domain-spec (None: the current domain);
    `network` is set for ip4/ip6; `cidr4`/`cidr6` are the a/mx prefix lengths."""

    text: str
    qualifier: Verdict
    kind: str
    domain: MacroString | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    cidr4: int = 32
    cidr6: int = 128

    @property
    def needs_dns(self) -> bool:
        """Whether it counts against the limit of 10 DNS-querying terms (§4.6.4)."""
        return self.kind in _DNS_MECHANISMS


@attrs.frozen
class Record:
    mechanisms: tuple[Mechanism, ...]
    redirect: MacroString | None = None
    explanation: MacroString | None = None


def is_spf_record(text: str) -> bool:
    """Whether a TXT record is an SPF record: "v=spf1", any case, then SP or end (§4.5)."""
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


def parse_record(text: str) -> Record:
    """Parse a record that `is_spf_record`; raise `SpfSyntaxError` if it is malformed."""
    if not is_spf_record(text):
        raise SpfSyntaxError("not an SPF record: no 'v=spf1' version")
    mechanisms: list[Mechanism] = []
    modifiers: dict[str, MacroString] = {}
    for term in text[6:].split(" "):
        if not term:
            continue
        modifier = _MODIFIER.fullmatch(term)
        if modifier is None:
            mechanisms.append(_parse_mechanism(term))
            continue
        name = modifier[1].lower()
        if name in ("redirect", "exp"):
            if name in modifiers:
                raise SpfSyntaxError(f"'{name}=' appears twice (RFC 7208 §6)")
            modifiers[name] = parse_domain_spec(modifier[2], term)
        else:
            parse_macro_string(modifier[2])  # unknown modifiers: checked, then ignored
    return Record(
        mechanisms=tuple(mechanisms),
        redirect=modifiers.get("redirect"),
        explanation=modifiers.get("exp"),
    )


def parse_domain_spec(text: str, term: str = "") -> MacroString:
    """domain-spec = macro-string domain-end;
    domain-end = ( "." toplabel [ "." ] ) / macro-expand (§7.1)."""
    where = f" in {_shown(term)}" if term else ""
    if not text:
        raise SpfSyntaxError(f"empty domain-spec{where}")
    spec = parse_macro_string(text)
    tail = spec.tail
    if tail:
        if tail.endswith("."):
            tail = tail[:-1]
        dot = tail.rfind(".")
        if dot < 0 or not _TOPLABEL.fullmatch(tail, dot + 1):
            raise SpfSyntaxError(
                f"domain-spec must end in '.' and a valid top label or a macro{where}"
            )
    return spec


def _parse_mechanism(term: str) -> Mechanism:
    match = _MECHANISM.fullmatch(term)
    if match is None:
        raise SpfSyntaxError(f"unknown term {_shown(term)}")
    qualifier = _QUALIFIERS.get(match[1], Verdict.PASS)
    kind = match[2].lower()
    rest = match[3]
    if kind == "all":
        if rest:
            raise SpfSyntaxError(f"'all' takes no argument: {_shown(term)}")
        return Mechanism(term, qualifier, kind)
    if kind in ("include", "exists"):
        if not rest.startswith(":"):
            raise SpfSyntaxError(f"'{kind}' needs ':' and a domain: {_shown(term)}")
        return Mechanism(term, qualifier, kind, parse_domain_spec(rest[1:], term))
    if kind == "ptr":
        if rest and not rest.startswith(":"):
            raise SpfSyntaxError(f"malformed 'ptr': {_shown(term)}")
        domain = parse_domain_spec(rest[1:], term) if rest else None
        return Mechanism(term, qualifier, kind, domain)
    if kind in ("a", "mx"):
        parts = _A_OR_MX.fullmatch(rest)
        if parts is None:
            raise SpfSyntaxError(f"malformed '{kind}': {_shown(term)}")
        domain = parse_domain_spec(parts[1], term) if parts[1] is not None else None
        cidr4 = _prefix(parts[2], 32, term) if parts[2] is not None else 32
        cidr6 = _prefix(parts[3], 128, term) if parts[3] is not None else 128
        return Mechanism(term, qualifier, kind, domain, cidr4=cidr4, cidr6=cidr6)
    if kind in ("ip4", "ip6"):
        parts = (_IP4 if kind == "ip4" else _IP6).fullmatch(rest)
        if parts is None:
            raise SpfSyntaxError(f"malformed '{kind}': {_shown(term)}")
        try:
            # Python's parser refuses leading zeros in IPv4 (as §5.6's qnum does) and
            # shortened forms such as "1.2.3" (§5.6: not permitted).
            address = ipaddress.ip_address(parts[1])
        except ValueError:
            raise SpfSyntaxError(f"malformed address in {_shown(term)}") from None
        bits = 32 if kind == "ip4" else 128
        if address.max_prefixlen != bits:
            raise SpfSyntaxError(f"'{kind}' with an address of the other family: {_shown(term)}")
        prefix = _prefix(parts[2], bits, term) if parts[2] is not None else bits
        network = ipaddress.ip_network((address, prefix), strict=False)
        return Mechanism(term, qualifier, kind, network=network)
    raise SpfSyntaxError(f"unknown mechanism {_shown(term)}")


def _prefix(digits: str, most: int, term: str) -> int:
    # "0" or no leading zero (§5.6 ip4-cidr-length / ip6-cidr-length), at most 32 / 128.
    if (len(digits) > 1 and digits[0] == "0") or len(digits) > 3 or int(digits) > most:
        raise SpfSyntaxError(f"invalid prefix length in {_shown(term)}")
    return int(digits)


def _shown(term: str) -> str:
    """A term for a message, cut short and with nothing unprintable in it."""
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in term[:60])
    return repr(text + ("..." if len(term) > 60 else ""))
