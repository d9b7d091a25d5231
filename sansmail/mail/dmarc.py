"""DMARC (RFC 7489): the organizational domain, the policy record, alignment, the decision.

Theory of operation
-------------------
`check_dmarc(from_domain, spf_domain=..., dkim_domains=...)` is a generator in the style of
`sansmail.mail.dnsquery`. It is given what SPF and DKIM already established: the domain
SPF passed for (the MAIL FROM domain, or the HELO name for a null sender; None unless SPF
said "pass") and the d= of every DKIM signature that verified. It then:

1. finds the policy record (§6.6.3): the TXT records at _dmarc.<From domain> that start
   with "v=DMARC1"; none there, those at _dmarc.<organizational domain>; more than one
   valid-looking record is no record at all. A transient DNS error is "temperror".
2. parses it (§6.3, `parse_record`): v=DMARC1 first; an absent or invalid p= (or an
   invalid sp=) with a usable rua= reads as p=none, without one as no policy
   ("permerror"); other invalid values fall back to their defaults.
3. aligns (§3.1): an identifier is aligned when it equals the From domain (strict) or
   has the same organizational domain (relaxed, the default). "pass" needs one aligned,
   authenticated identifier of either kind; otherwise "fail".
4. picks the policy a "fail" asks for: p=, or for a From domain below the domain whose
   record was used, sp= (else p=), or np= (RFC 9091) when that domain does not exist
   (NXDOMAIN for its A, AAAA and MX, asked only then).

The organizational domain (§3.2) comes from the Public Suffix List as the
`publicsuffixlist` package ships it (kept up to date by its releases), not a hand list.

`decide_dmarc(mode, result, sample)` applies the setting: "tag" only records the result;
"enforce" refuses a failing p=reject message (550 5.7.1) and files a failing
p=quarantine one in the Junk folder, each for the pct= share of the messages: `sample`
is a number in [0, 1) the caller draws (the core has no randomness); a message outside
the share gets the next weaker policy (§6.6.4). A temperror or permerror never stops a
message.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable

import attrs
from publicsuffixlist import PublicSuffixList

from sansmail.mail.address import AddressError, canonical_domain
from sansmail.mail.dnsquery import DnsCheck, DnsQuery, DnsStatus, ask
from sansmail.smtp import Reply

__all__ = [
    "DmarcDecision",
    "DmarcMode",
    "DmarcRecord",
    "DmarcResult",
    "DmarcSyntaxError",
    "DmarcVerdict",
    "Policy",
    "aligned",
    "check_dmarc",
    "decide_dmarc",
    "organizational_domain",
    "parse_record",
]

_MAX_NAME = 253
_VERSION = re.compile(r"[ \t]*v[ \t]*=[ \t]*DMARC1[ \t]*(?:;|\Z)", re.IGNORECASE)
_FO = re.compile(r"[01ds](?:[ \t]*:[ \t]*[01ds])*\Z")
_RF = re.compile(r"[A-Za-z0-9-]+(?:[ \t]*:[ \t]*[A-Za-z0-9-]+)*\Z")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s!,;]+(?:![0-9]+[kmgtKMGT]?)?\Z")


class DmarcSyntaxError(ValueError):
    """A record that gives no policy (§6.6.3); str() says why."""


class Policy(enum.Enum):
    """A requested policy, weakest first (§6.3 "p")."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"

    def weaker(self) -> Policy:
        return Policy.QUARANTINE if self is Policy.REJECT else Policy.NONE


class DmarcVerdict(enum.Enum):
    """The DMARC results of RFC 7489 §11.2 (RFC 8601's registry); the value is the word."""

    PASS = "pass"  # noqa: S105 (a result name, not a password)
    FAIL = "fail"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class DmarcMode(enum.Enum):
    """The ``dmarc`` setting."""

    OFF = "off"
    TAG = "tag"
    ENFORCE = "enforce"


@attrs.frozen(kw_only=True)
class DmarcRecord:
    """A parsed record (§6.3). `sp` and `np` are None when absent (sp then means p, np
    means sp); rua, ruf, fo, rf and ri are kept as read but not used: we send no reports."""

    p: Policy
    sp: Policy | None = None
    np: Policy | None = None
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: str = "0"
    rf: str = "afrf"
    ri: int = 86400


def parse_record(text: str) -> DmarcRecord:
    """The `DmarcRecord` of a TXT record; `DmarcSyntaxError` if it gives no policy."""
    if not _VERSION.match(text):
        raise DmarcSyntaxError("the record does not start with v=DMARC1")
    tags: dict[str, str] = {}
    for part in text.split(";")[1:]:
        name, sep, value = part.partition("=")
        name = name.strip(" \t").lower()
        if sep and name and name not in tags:  # the first of a repeated tag wins
            tags[name] = value.strip(" \t")
    rua = _uris(tags.get("rua", ""))
    ruf = _uris(tags.get("ruf", ""))
    p = _policy(tags.get("p"))
    sp = _policy(tags["sp"]) if "sp" in tags else None
    if p is None or ("sp" in tags and sp is None):
        if not rua:
            raise DmarcSyntaxError("no valid p= (or an invalid sp=) and no usable rua=")
        p, sp = Policy.NONE, None  # §6.6.3: as if the record were "v=DMARC1; p=none"
    pct = _number(tags.get("pct"), 100)
    return DmarcRecord(
        p=p,
        sp=sp,
        np=_policy(tags.get("np")),
        pct=pct if pct <= 100 else 100,
        adkim=_mode(tags.get("adkim")),
        aspf=_mode(tags.get("aspf")),
        rua=rua,
        ruf=ruf,
        fo=_colon_list(tags.get("fo"), _FO, "0"),
        rf=_colon_list(tags.get("rf"), _RF, "afrf"),
        ri=_number(tags.get("ri"), 86400),
    )


def _policy(value: str | None) -> Policy | None:
    try:
        return Policy(value.lower()) if value is not None else None
    except ValueError:
        return None


def _mode(value: str | None) -> str:
    return value.lower() if value is not None and value.lower() in ("r", "s") else "r"


def _number(value: str | None, default: int) -> int:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 10:
        return default
    return int(value)


def _colon_list(value: str | None, grammar: re.Pattern[str], default: str) -> str:
    if value is None or not grammar.match(value):
        return default
    return re.sub(r"[ \t]+", "", value).lower()


def _uris(value: str) -> tuple[str, ...]:
    return tuple(uri for uri in (u.strip(" \t") for u in value.split(",")) if _URI.match(uri))


# -- the organizational domain (§3.2) -------------------------------------------------


@functools.cache
def _default_list() -> PublicSuffixList:
    # The package's own copy of the list, read once per process (the adapter may call
    # organizational_domain() at start-up so that no session pays for it).
    return PublicSuffixList()


def organizational_domain(domain: str, psl: PublicSuffixList | None = None) -> str:
    """The organizational domain of `domain` (lower case, no trailing dot): its public
    suffix and one more label; a public suffix itself is its own."""
    domain = domain.rstrip(".").lower()
    private = (psl or _default_list()).privatesuffix(domain)
    return private if isinstance(private, str) else domain


def aligned(
    identifier: str, from_domain: str, mode: str, psl: PublicSuffixList | None = None
) -> bool:
    """Whether an authenticated `identifier` aligns with `from_domain` (§3.1): equal
    ("s"), or sharing the organizational domain ("r")."""
    identifier = identifier.rstrip(".").lower()
    from_domain = from_domain.rstrip(".").lower()
    if identifier == from_domain:
        return True
    return mode == "r" and organizational_domain(identifier, psl) == organizational_domain(
        from_domain, psl
    )


# -- the check ------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DmarcResult:
    """The outcome: `policy` is what the domain asks for a failing message (p, sp or np;
    NONE when there is no record), `record_domain` where the record was found,
    `spf_aligned` / `dkim_aligned` which identifier made it pass, `problem` why it is
    not pass (for the log and the header's comment)."""

    verdict: DmarcVerdict
    from_domain: str
    org_domain: str | None = None
    record_domain: str | None = None
    record: DmarcRecord | None = None
    policy: Policy = Policy.NONE
    spf_aligned: bool = False
    dkim_aligned: bool = False
    problem: str | None = None


def check_dmarc(
    from_domain: str,
    *,
    spf_domain: str | None,
    dkim_domains: Iterable[str] = (),
    psl: PublicSuffixList | None = None,
) -> DnsCheck[DmarcResult]:
    """DMARC for a message whose RFC 5322.From domain is `from_domain` (see above)."""
    try:
        domain = canonical_domain(from_domain.rstrip("."))
    except AddressError:
        domain = ""
    if not domain or domain.startswith("[") or "." not in domain:
        return DmarcResult(
            verdict=DmarcVerdict.PERMERROR,
            from_domain=from_domain,
            problem="the From domain is not a domain name",
        )
    org = organizational_domain(domain, psl)
    found: tuple[str, str] | None = None
    for where in dict.fromkeys((domain, org)):
        name = f"_dmarc.{where}"
        if len(name) > _MAX_NAME:
            continue
        (answer,) = yield from ask(DnsQuery(name, "TXT"))
        if answer.failed:
            return DmarcResult(
                verdict=DmarcVerdict.TEMPERROR,
                from_domain=domain,
                org_domain=org,
                problem=f"DNS {answer.status.value} looking up TXT {name}",
            )
        texts = [text for text in answer.records if _VERSION.match(text)]
        if len(texts) > 1:
            # §6.6.3: more than one record is no record, and no fallback either.
            return DmarcResult(
                verdict=DmarcVerdict.NONE,
                from_domain=domain,
                org_domain=org,
                problem=f"more than one DMARC record at {name}",
            )
        if texts:
            found = (where, texts[0])
            break
    if found is None:
        return DmarcResult(
            verdict=DmarcVerdict.NONE,
            from_domain=domain,
            org_domain=org,
            problem="no DMARC record",
        )
    record_domain, text = found
    try:
        record = parse_record(text)
    except DmarcSyntaxError as error:
        return DmarcResult(
            verdict=DmarcVerdict.PERMERROR,
            from_domain=domain,
            org_domain=org,
            record_domain=record_domain,
            problem=f"_dmarc.{record_domain}: {error}",
        )
    spf_ok = spf_domain is not None and aligned(spf_domain, domain, record.aspf, psl)
    dkim_ok = any(aligned(d, domain, record.adkim, psl) for d in dkim_domains)
    policy = record.p
    if domain != record_domain:
        policy = record.sp or record.p
        if record.np is not None and not (spf_ok or dkim_ok):
            answers = yield from ask(*(DnsQuery(domain, t) for t in ("A", "AAAA", "MX")))
            if all(a.status is DnsStatus.NXDOMAIN for a in answers):
                policy = record.np
    passed = spf_ok or dkim_ok
    return DmarcResult(
        verdict=DmarcVerdict.PASS if passed else DmarcVerdict.FAIL,
        from_domain=domain,
        org_domain=org,
        record_domain=record_domain,
        record=record,
        policy=policy,
        spf_aligned=spf_ok,
        dkim_aligned=dkim_ok,
        problem=None if passed else "no aligned identifier passed SPF or DKIM",
    )


# -- the decision ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DmarcDecision:
    """What to do with the message: `reply` refuses it (None: accept); `junk` files it
    in the Junk folder; `disposition` is the policy applied after pct= (for the
    Authentication-Results comment "dis=")."""

    reply: Reply | None = None
    junk: bool = False
    disposition: Policy = Policy.NONE


def decide_dmarc(mode: DmarcMode, result: DmarcResult | None, sample: float) -> DmarcDecision:
    """Apply `mode` to `result`; `sample` in [0, 1) is the caller's draw for pct=."""
    if result is None or result.verdict is not DmarcVerdict.FAIL or result.record is None:
        return DmarcDecision()
    applied = result.policy
    if applied is not Policy.NONE and not sample * 100 < result.record.pct:
        applied = applied.weaker()  # §6.6.4: outside the sampled share
    if mode is not DmarcMode.ENFORCE or applied is Policy.NONE:
        return DmarcDecision()  # "tag" records the result, applies nothing
    if applied is Policy.QUARANTINE:
        return DmarcDecision(junk=True, disposition=applied)
    reply = Reply(
        code=550,
        lines=(f"Rejected by the DMARC policy of {result.from_domain}",),
        enhanced="5.7.1",
    )
    return DmarcDecision(reply=reply, disposition=applied)
