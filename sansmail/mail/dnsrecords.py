"""The DNS records a domain publishes for this server, and how they compare with the DNS.

`records` turns the configuration (hostname, listeners, relayhost), the domain's DKIM
public keys and the MTA-STS policy into `Record`s; `zone_text` writes them in zone-file
form with a comment above each group saying what it is for; `check` is a pure DNS check
(`sansmail.mail.dnsquery`) that asks for each record and says, per record, whether what
is published is the same, missing or different. ``sansmail-trio dns-records`` prints the
first and runs the second through the configured resolver.

Choices:

- Names are written absolute (final dot) and without a TTL, so the lines paste into any
  zone file and take its default TTL.
- SPF is ``v=spf1 mx -all``: the hosts of the domain's MX send its mail, nothing else
  does. With a relayhost the mail leaves from the relay, so its host (``a:``) or address
  (``ip4:``/``ip6:``) is added; a comment says to use what the relay's provider
  documents instead when it gives an ``include:``.
- MTA-STS (RFC 8461): the policy's ``id`` is a digest of the policy text, so it changes
  exactly when the policy does (§3.1 asks for a new id on each change), and the policy
  starts in ``testing`` mode.
- RFC 6186 SRV records: every one of the six services, with port 0 and target "." for
  those this server does not offer (§4: "the service is not available"), so a client does
  not try a guess. Implicit TLS is preferred over STARTTLS (RFC 8314 §5.1) and IMAP over
  POP3 by priority, as RFC 6186 §3.4 lets a client compare them.
- TXT values longer than 255 octets are split into several character-strings (RFC 1035
  §3.3), as ``dkim keygen`` prints them; the DNS joins them back (RFC 7208 §3.3, RFC 6376
  §3.6.2.2).
- A check compares meanings, not spelling: tags of a TXT record in any order and with any
  spaces around them, names without case or final dot. Only the records of its kind at a
  name are looked at (``v=spf1`` among a domain's other TXT records).
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import attrs

from sansmail.config import Config, HostPort, NextHop
from sansmail.mail import mtasts
from sansmail.mail.dnsquery import DnsAnswer, DnsCheck, DnsQuery, RType, ask, reverse_name

__all__ = [
    "MTA_STS_MAX_AGE",
    "SRV_SERVICES",
    "DkimKey",
    "Finding",
    "MtaStsMode",
    "Record",
    "Status",
    "check",
    "failing",
    "mta_sts_policy",
    "public_port",
    "records",
    "txt_strings",
    "zone_text",
]

#: RFC 8461 §3.2 allows up to a year; a day while in "testing" lets a mistake pass soon.
MTA_STS_MAX_AGE: Final = 86400

#: RFC 6186 §3.1-3.3 service names, the listener that offers each and its priority
#: (lower first: implicit TLS before STARTTLS, RFC 8314 §5.1; IMAP before POP3).
SRV_SERVICES: Final = (
    ("_submissions._tcp", "submissions", 0),
    ("_submission._tcp", "submission", 10),
    ("_imaps._tcp", "imaps", 0),
    ("_imap._tcp", "imap", 10),
    ("_pop3s._tcp", "pop3s", 20),
    ("_pop3._tcp", "pop3", 30),
)

#: RFC 8461 §5: "enforce", "testing" (report, deliver anyway) or "none" (policy withdrawn);
#: the policy reader's own type, so what we publish is what we enforce.
MtaStsMode = mtasts.Mode

_TXT_CHUNK: Final = 255  # octets in one character-string (RFC 1035 §3.3)


@attrs.frozen(kw_only=True)
class DkimKey:
    """One published DKIM key: its selector and its TXT record value
    (``v=DKIM1; k=rsa; p=...``, as `sansmail.mail.dkim.txt_record` makes it)."""

    selector: str
    txt: str


@attrs.frozen(kw_only=True)
class Record:
    """One record to publish. `kind` names its purpose ("MX", "SPF", "DKIM", ...);
    `name` is the owner without the final dot; `value` is the data in zone-file form;
    `required`: mail does not flow or is not trusted without it (MX, SPF, DKIM)."""

    kind: str
    name: str
    rtype: RType
    value: str
    required: bool = False

    @property
    def line(self) -> str:
        """The zone-file line: ``<name>. IN <type> <data>``."""
        return f"{self.name}. IN {self.rtype} {self.value}"


class Status(enum.Enum):
    """What `check` found for one record."""

    OK = "ok"
    MISSING = "missing"
    DIFFERENT = "different"
    FAILED = "failed"  # no answer (SERVFAIL, timeout): cannot tell


@attrs.frozen(kw_only=True)
class Finding:
    """`record` as published: `status`, and `published`, the records of its kind found
    at its name (as `DnsAnswer` renders them), or the failure."""

    record: Record
    status: Status
    published: tuple[str, ...] = ()


# --- what to publish ----------------------------------------------------------------------


def mta_sts_policy(
    hostname: str, *, mode: MtaStsMode = "testing", max_age: int = MTA_STS_MAX_AGE
) -> str:
    """The MTA-STS policy text (RFC 8461 §3.2), CRLF line ends, to be served at
    ``https://mta-sts.<domain>/.well-known/mta-sts.txt``: this server is the one MX."""
    return mtasts.Policy(mode=mode, mx=(hostname,), max_age=max_age).text()


def _policy_id(policy: str) -> str:
    # RFC 8461 §3.1: 1 to 32 letters and digits, changed whenever the policy changes.
    return hashlib.sha256(policy.encode("utf-8")).hexdigest()[:20]


def records(
    config: Config,
    domain: str,
    dkim_keys: Sequence[DkimKey],
    *,
    mta_sts_mode: MtaStsMode = "testing",
) -> tuple[Record, ...]:
    """Every record to publish for `domain` (one of `config.domains`), in the order
    `zone_text` prints them. The DKIM records are required only for the key of
    ``[dkim] selector``, the one mail is signed with."""
    host = config.hostname.rstrip(".").lower()
    domain = domain.rstrip(".").lower()
    postmaster = f"mailto:postmaster@{domain}"
    policy = mta_sts_policy(host, mode=mta_sts_mode)
    found = [
        Record(kind="MX", name=domain, rtype="MX", value=f"10 {host}.", required=True),
        Record(
            kind="SPF",
            name=domain,
            rtype="TXT",
            value=txt_strings(_spf(config.delivery.relayhost)),
            required=True,
        ),
    ]
    selector = config.dkim.selector.lower()
    found.extend(
        Record(
            kind="DKIM",
            name=f"{key.selector.lower()}._domainkey.{domain}",
            rtype="TXT",
            value=txt_strings(key.txt),
            required=key.selector.lower() == selector,
        )
        for key in sorted(dkim_keys, key=lambda key: key.selector.lower() != selector)
    )
    found.extend(
        (
            Record(
                kind="DMARC",
                name=f"_dmarc.{domain}",
                rtype="TXT",
                value=txt_strings(f"v=DMARC1; p=quarantine; rua={postmaster}"),
            ),
            Record(
                kind="MTA-STS",
                name=f"_mta-sts.{domain}",
                rtype="TXT",
                value=txt_strings(f"v=STSv1; id={_policy_id(policy)}"),
            ),
            *(
                Record(kind="MTA-STS", name=name, rtype="CNAME", value=f"{host}.")
                for name in (f"mta-sts.{domain}",)
                if name != host  # a CNAME to itself would be a loop
            ),
            Record(
                kind="TLS-RPT",
                name=f"_smtp._tls.{domain}",
                rtype="TXT",
                value=txt_strings(f"v=TLSRPTv1; rua={postmaster}"),
            ),
        )
    )
    for service, listener, priority in SRV_SERVICES:
        port = public_port(config.listen.get(listener, ()))
        value = "0 0 0 ." if port is None else f"{priority} 1 {port} {host}."
        found.append(Record(kind="SRV", name=f"{service}.{domain}", rtype="SRV", value=value))
    found.extend(
        Record(kind="AUTOCONFIG", name=name, rtype="CNAME", value=f"{host}.")
        for name in (f"autoconfig.{domain}", f"autodiscover.{domain}")
        if name != host  # a CNAME to itself would be a loop
    )
    return tuple(found)


def _spf(relayhost: NextHop | None) -> str:
    if relayhost is None:
        return "v=spf1 mx -all"
    try:
        address = ipaddress.ip_address(relayhost.host)
    except ValueError:
        sender = f"a:{relayhost.host.rstrip('.').lower()}"
    else:
        sender = f"ip{address.version}:{address}"
    return f"v=spf1 mx {sender} -all"


def public_port(addresses: Iterable[HostPort]) -> int | None:
    """The port to announce for a listener's addresses: of the first one that is not
    loopback (the one clients reach), else of the first; None when there is none."""
    addresses = list(addresses)
    if not addresses:
        return None
    for host, port in addresses:
        if not _loopback(host):
            return port
    return addresses[0][1]


def _loopback_only(listen: Mapping[str, Sequence[HostPort]]) -> bool:
    """Whether a client listener offered by SRV listens on loopback addresses only."""
    for _service, listener, _priority in SRV_SERVICES:
        addresses = listen.get(listener, ())
        if addresses and all(_loopback(host) for host, _port in addresses):
            return True
    return False


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def txt_strings(value: str) -> str:
    """`value` as the quoted character-strings of a TXT record, each at most 255
    characters (RFC 1035 §3.3); quotes and backslashes escaped (§5.1)."""
    chunks = [value[i : i + _TXT_CHUNK] for i in range(0, len(value), _TXT_CHUNK)] or [""]
    return " ".join('"' + chunk.replace("\\", "\\\\").replace('"', '\\"') + '"' for chunk in chunks)


_COMMENTS: Final[Mapping[str, str]] = {
    "MX": "Mail for {domain} comes to this server (RFC 5321 §5.1)",
    "SPF": "SPF (RFC 7208): only the domain's MX hosts send its mail",
    "DKIM": "DKIM (RFC 6376): the public key of each selector with a key under data_dir; "
    "mail is signed with {selector!r} ([dkim] selector)",
    "DMARC": "DMARC (RFC 7489): unaligned mail goes to the junk folder; reports to postmaster",
    "MTA-STS": "MTA-STS (RFC 8461): senders require TLS to this server; "
    "https://mta-sts.{domain}/.well-known/mta-sts.txt serves the policy below",
    "TLS-RPT": "TLS-RPT (RFC 8460): daily reports of TLS failures to postmaster",
    "SRV": "Mail clients find the servers (RFC 6186); port 0 and target . : not offered",
    "AUTOCONFIG": "Client autoconfiguration (Thunderbird's autoconfig, Outlook's autodiscover)",
}


def zone_text(
    config: Config, domain: str, found: Sequence[Record], *, mta_sts_mode: MtaStsMode = "testing"
) -> str:
    """`found` in zone-file form: each kind under a comment saying what it is for, the
    MTA-STS policy to serve and the PTR to ask for as comments; ends with a newline."""
    host = config.hostname.rstrip(".").lower()
    domain = domain.rstrip(".").lower()
    lines = [f"; DNS records for {domain}: this server is {host}"]
    kinds = [record.kind for record in found]
    for kind in dict.fromkeys(kinds):
        comment = _COMMENTS[kind].format(domain=domain, selector=config.dkim.selector)
        lines.extend(("", f"; {comment}"))
        lines.extend(record.line for record in found if record.kind == kind)
        if kind == "SPF" and config.delivery.relayhost is not None:
            lines.append(
                f"; mail leaves through the relayhost {config.delivery.relayhost.host}: "
                "where its provider documents an include:, use that instead"
            )
        if kind == "MX" and "DKIM" not in kinds:
            lines.extend(
                (
                    "",
                    f"; DKIM: no key for {domain} yet: make one with "
                    f"`sansmail-trio dkim keygen {domain}` and run this again",
                )
            )
        if kind == "MTA-STS":
            policy = mta_sts_policy(host, mode=mta_sts_mode)
            lines.extend(f";   {line}" for line in policy.splitlines())
            if mta_sts_mode == "testing":
                lines.append(
                    "; (testing: senders report failures by TLS-RPT but still deliver; "
                    "a policy in mode enforce has another id)"
                )
        if kind == "SRV" and _loopback_only(config.listen):
            lines.append("; (a listener on a loopback address only is not reachable by clients)")
    lines.extend(
        (
            "",
            f"; PTR (reverse DNS): each public address of {host} must point back to it,",
            f"; <address> IN PTR {host}. (set by whoever owns the address, not in this zone)",
        )
    )
    return "\n".join(lines) + "\n"


# --- what is published ----------------------------------------------------------------------

_TXT_VERSION: Final[Mapping[str, str]] = {
    "SPF": "v=spf1",
    "DMARC": "v=DMARC1",
    "MTA-STS": "v=STSv1",
    "TLS-RPT": "v=TLSRPTv1",
}


def check(found: Sequence[Record], *, hostname: str | None = None) -> DnsCheck[tuple[Finding, ...]]:
    """Ask for each record in `found` at once; one `Finding` per record, in order.

    With `hostname` (this server, the MX), also ask for its addresses and then for the
    PTR record of each (FCrDNS, which receivers check, RFC 8601 §3 "iprev"): one more
    `Finding` per address, not required, or a required "MX" one when the name has no
    address at all, since mail cannot arrive then."""
    queries = [DnsQuery(record.name, record.rtype) for record in found]
    host = hostname.rstrip(".").lower() if hostname is not None else None
    if host is not None:
        queries.extend((DnsQuery(host, "A"), DnsQuery(host, "AAAA")))
    answers = yield from ask(*queries)
    findings = [_compare(record, answer) for record, answer in zip(found, answers, strict=False)]
    if host is None:
        return tuple(findings)
    a, aaaa = answers[len(found) :]
    addresses = [*a.records, *aaaa.records]
    if not addresses:
        record = Record(
            kind="MX", name=host, rtype="A", value="<its public address>", required=True
        )
        status = Status.FAILED if a.failed and aaaa.failed else Status.MISSING
        findings.append(Finding(record=record, status=status))
        return tuple(findings)
    ptrs = [
        Record(
            kind="PTR",
            name=reverse_name(ipaddress.ip_address(address)),
            rtype="PTR",
            value=f"{host}.",
        )
        for address in addresses
    ]
    answers = yield from ask(*(DnsQuery(record.name, "PTR") for record in ptrs))
    findings.extend(_compare(record, answer) for record, answer in zip(ptrs, answers, strict=True))
    return tuple(findings)


def _compare(record: Record, answer: DnsAnswer) -> Finding:
    if answer.failed:
        return Finding(record=record, status=Status.FAILED, published=(answer.status.value,))
    published = tuple(value for value in answer.records if _same_kind(record, value))
    if not published:
        return Finding(record=record, status=Status.MISSING)
    if record.rtype == "MX":
        # The answer holds the exchanges only: the preference is ours to choose.
        wanted = _meaning("MX", record.value.split()[-1])
    elif record.rtype == "TXT":
        wanted = _meaning("TXT", _unquote(record.value))
    else:
        wanted = _meaning(record.rtype, record.value)
    if record.kind == "SPF" and len(published) > 1:
        same = False  # RFC 7208 §4.5: two SPF records are a permerror for every receiver
    else:
        same = any(_meaning(record.rtype, value) == wanted for value in published)
    return Finding(
        record=record, status=Status.OK if same else Status.DIFFERENT, published=published
    )


def _same_kind(record: Record, value: str) -> bool:
    version = _TXT_VERSION.get(record.kind)
    if record.rtype != "TXT" or version is None:
        return True
    head = value.strip().split(";")[0].split(" ")[0]
    return head.lower() == version.lower()


def _meaning(rtype: str, value: str) -> object:
    """What a record says, in a form that compares equal across spellings."""
    spf = value.lower().startswith("v=spf1")
    if rtype == "TXT" and not spf and "=" in value.split(";", maxsplit=1)[0]:
        # A tag-list (DKIM, DMARC, MTA-STS, TLS-RPT): tags in any order, spaces ignored;
        # a base64 key may be split by spaces anywhere (RFC 6376 §3.6.1).
        tags: dict[str, str] = {}
        for part in value.split(";"):
            tag, _, tag_value = part.partition("=")
            if tag.strip():
                tags[tag.strip().lower()] = "".join(tag_value.split())
        return tags
    if rtype == "TXT":
        return " ".join(value.lower().split())
    # MX, SRV, CNAME: numbers and names; names without case or final dot.
    return tuple(word.lower().rstrip(".") or "." for word in value.split())


def _unquote(strings: str) -> str:
    """The value `txt_strings` wrote, joined back."""
    parts: list[str] = []
    inside = False
    escaped = False
    for char in strings:
        if escaped:
            parts.append(char)
            escaped = False
        elif char == "\\" and inside:
            escaped = True
        elif char == '"':
            inside = not inside
        elif inside:
            parts.append(char)
    return "".join(parts)


def failing(findings: Iterable[Finding]) -> list[Finding]:
    """The findings that make the check fail: a required record not as printed."""
    return [
        finding
        for finding in findings
        if finding.record.required and finding.status is not Status.OK
    ]
