"""check_host() (RFC 7208 §4-§6) as a generator: it yields DNS questions, never does I/O.

Theory of operation
-------------------
`check_host` returns a generator. Each ``yield`` hands the caller a tuple of `DnsQuery`
(usually one; the address lookups of an "mx" or "ptr" term, which do not depend on each
other, come as one batch so that an adapter may run them concurrently); the caller sends
back a sequence of `DnsAnswer`, one per query, in order. When the generator returns, its
value (``StopIteration.value``) is the `SpfResult`. `evaluate` is the synchronous driver
for a resolver function (tests, tools). Time is an argument (`now`, for the %{t} macro);
there is no clock read and no randomness, so one DNS content gives one result.

Answers inside a batch are read in query order, exactly as if they had been asked one
after the other: a batch changes how fast, never what, we decide.

The rules, with their sections:

- The domain must be a well-formed, multi-label name, or the result is "none" (§4.3).
  Its TXT records are fetched; exactly one may start with "v=spf1" (§4.5): none of them
  gives "none", two give "permerror"; a DNS error gives "temperror" (§4.4).
- The whole record is parsed first: any syntax error is "permerror" (§4.6).
- Mechanisms are tried left to right; the first match gives its qualifier (§4.6.2).
  "redirect" is used only when none matched (§6.1); with neither, "neutral" (§4.7).
- Limits (§4.6.4): at most 10 terms that query DNS (include, a, mx, ptr, exists,
  redirect) in the whole evaluation, includes and redirects included; at most 10 MX
  names per "mx" (more is "permerror"); at most 10 PTR names per "ptr" or %{p} (the rest
  are ignored); at most 2 void lookups (NXDOMAIN or no data). Breaking the first, second
  or last is "permerror". "exp=" lookups after the result are not counted.
- include (§5.2): pass matches; fail, softfail, neutral do not; temperror and permerror
  propagate; none is "permerror". Its "exp=" is never used (§6.2).
- An IPv4-mapped IPv6 client is an IPv4 client, matched by ip4 and A only (§5).
- Names built by macro expansion lose a trailing dot, are cut to 253 octets from the
  left by whole labels (§7.3), and if still not a valid DNS name (an empty label or one
  longer than 63), the mechanism does not match, and nothing is asked. RFC 7208 leaves
  this case undefined and the openspf suite accepts "fail" or "permerror"; a no-match
  keeps a client from turning a policy into a permerror with a HELO of its choosing.
- "exp=" (§6.2) is fetched only for a "fail" of the record it is in; any problem with it
  (DNS, not exactly one TXT record, a syntax error, non-ASCII) drops the explanation,
  never the result.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Generator, Sequence

import attrs

from sansmail.mail.dnsquery import ask, drive

from ._macro import MacroString, expand, parse_macro_string
from ._record import Mechanism, is_spf_record, parse_record
from ._types import (
    DnsAnswer,
    DnsQuery,
    DnsStatus,
    IPAddress,
    RType,
    SpfResult,
    SpfSyntaxError,
    Verdict,
)

__all__ = [
    "MAX_LOOKUPS",
    "MAX_NAMES",
    "MAX_VOID_LOOKUPS",
    "SpfCheck",
    "check_helo",
    "check_host",
    "check_mail_from",
    "evaluate",
]

MAX_LOOKUPS = 10  # §4.6.4: DNS-querying terms per evaluation
MAX_NAMES = 10  # §4.6.4: MX names per "mx", PTR names per "ptr" / %{p}
MAX_VOID_LOOKUPS = 2  # §4.6.4: the recommended default
_MAX_NAME = 253  # §7.3 / RFC 1035 §2.3.4, without the trailing dot
_MAX_LABEL = 63

SpfCheck = Generator[tuple[DnsQuery, ...], Sequence[DnsAnswer], SpfResult]


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


@attrs.define
class _Context:
    ip: IPAddress
    sender: str
    local: str
    sender_domain: str
    helo: str
    receiver: str
    now: int
    lookups: int = 0
    voids: int = 0
    validated: tuple[str, ...] | None = None  # PTR names that resolve back (§5.5)
    ptr_void: bool = False  # whether the PTR lookup behind `validated` was void

    @property
    def address_type(self) -> RType:
        return "A" if self.ip.version == 4 else "AAAA"

    def count_lookup(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _PermError(f"more than {MAX_LOOKUPS} DNS-querying terms, at {term!r}")

    def count_void(self, term: str) -> None:
        self.voids += 1
        if self.voids > MAX_VOID_LOOKUPS:
            raise _PermError(f"more than {MAX_VOID_LOOKUPS} void lookups, at {term!r}")


@attrs.frozen
class _Outcome:
    verdict: Verdict
    mechanism: str | None = None
    explanation: str | None = None


def check_host(
    ip: IPAddress | str,
    domain: str,
    sender: str,
    helo: str,
    *,
    now: int,
    receiver: str = "unknown",
    identity: str = "mailfrom",
) -> SpfCheck:
    """check_host(<ip>, <domain>, <sender>) of RFC 7208 §4, as a query generator.

    `sender` is the full identity (``local@domain``; an empty local part reads as
    "postmaster", §4.3); `helo` feeds the %{h} macro; `now` (seconds since the epoch)
    the %{t} macro; `receiver` the %{r} macro and the Received-SPF header. `ip` may be a
    string; an IPv4-mapped IPv6 address is taken as the IPv4 address it maps (§5)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    local, at, sender_domain = sender.rpartition("@")
    if not at:
        local, sender_domain = "", sender
    ctx = _Context(
        ip=address,
        sender=f"{local or 'postmaster'}@{sender_domain}",
        local=local or "postmaster",
        sender_domain=sender_domain,
        helo=helo,
        receiver=receiver,
        now=now,
    )

    def result(
        verdict: Verdict,
        mechanism: str | None = None,
        explanation: str | None = None,
        problem: str | None = None,
    ) -> SpfResult:
        return SpfResult(
            verdict=verdict,
            domain=domain,
            ip=address,
            sender=ctx.sender,
            helo=helo,
            receiver=receiver,
            identity=identity,
            mechanism=mechanism,
            explanation=explanation,
            problem=problem,
            lookups=ctx.lookups,
            void_lookups=ctx.voids,
        )

    name = _initial_domain(domain)
    if name is None:
        return result(Verdict.NONE, problem="not a valid, fully qualified domain name")
    try:
        outcome = yield from _check(ctx, name)
    except _PermError as error:
        return result(Verdict.PERMERROR, problem=str(error))
    except _TempError as error:
        return result(Verdict.TEMPERROR, problem=str(error))
    problem = "no SPF record" if outcome.verdict is Verdict.NONE else None
    return result(
        outcome.verdict,
        mechanism=outcome.mechanism,
        explanation=outcome.explanation,
        problem=problem,
    )


def check_mail_from(
    ip: IPAddress | str, mail_from: str, helo: str, *, now: int, receiver: str = "unknown"
) -> SpfCheck:
    """The "MAIL FROM" identity (§2.4): the reverse-path's domain, or for the null
    reverse-path, ``postmaster@`` the HELO name."""
    if not mail_from:
        mail_from = f"postmaster@{helo}"
    domain = mail_from.rpartition("@")[2]
    return check_host(ip, domain, mail_from, helo, now=now, receiver=receiver)


def check_helo(ip: IPAddress | str, helo: str, *, now: int, receiver: str = "unknown") -> SpfCheck:
    """The "HELO" identity (§2.3): check_host with ``postmaster@`` the HELO name."""
    return check_host(
        ip, helo, f"postmaster@{helo}", helo, now=now, receiver=receiver, identity="helo"
    )


def evaluate(check: SpfCheck, resolve: Callable[[DnsQuery], DnsAnswer]) -> SpfResult:
    """Run `check` to its end, answering each query with `resolve` (one at a time)."""
    return drive(check, resolve)


# -- the evaluation -------------------------------------------------------------------


def _check(
    ctx: _Context, domain: str
) -> Generator[tuple[DnsQuery, ...], Sequence[DnsAnswer], _Outcome]:
    (answer,) = yield from ask(DnsQuery(domain, "TXT"))
    if answer.failed:
        raise _TempError(f"DNS {answer.status.value} looking up TXT {domain}")
    records = [text for text in answer.records if is_spf_record(text)]
    if not records:
        return _Outcome(Verdict.NONE)
    if len(records) > 1:
        raise _PermError(f"{domain} publishes {len(records)} SPF records (RFC 7208 §4.5)")
    try:
        record = parse_record(records[0])
    except SpfSyntaxError as error:
        raise _PermError(f"{domain}: {error}") from None
    for mechanism in record.mechanisms:
        if (yield from _matches(ctx, mechanism, domain)):
            explanation = None
            if mechanism.qualifier is Verdict.FAIL and record.explanation is not None:
                explanation = yield from _explain(ctx, record.explanation, domain)
            return _Outcome(mechanism.qualifier, mechanism.text, explanation)
    if record.redirect is not None:
        ctx.count_lookup("redirect=" + record.redirect.text)
        target = yield from _target(ctx, record.redirect, domain)
        if target is None:
            raise _PermError(f"redirect={record.redirect.text} is not a valid domain name")
        outcome = yield from _check(ctx, target)
        if outcome.verdict is Verdict.NONE:
            raise _PermError(f"redirect target {target} has no SPF record (RFC 7208 §6.1)")
        return outcome
    return _Outcome(Verdict.NEUTRAL)


def _matches(
    ctx: _Context, mechanism: Mechanism, domain: str
) -> Generator[tuple[DnsQuery, ...], Sequence[DnsAnswer], bool]:
    kind = mechanism.kind
    if kind == "all":
        return True
    if kind in ("ip4", "ip6"):
        assert mechanism.network is not None
        return ctx.ip.version == mechanism.network.version and ctx.ip in mechanism.network
    ctx.count_lookup(mechanism.text)
    if mechanism.domain is None:
        target: str | None = domain
    else:
        target = yield from _target(ctx, mechanism.domain, domain)
    if kind == "include":
        if target is None:
            raise _PermError(f"{mechanism.text}: not a valid domain name")
        outcome = yield from _check(ctx, target)
        if outcome.verdict in (Verdict.NONE, Verdict.PERMERROR):
            raise _PermError(f"{mechanism.text}: {target} has no SPF record (RFC 7208 §5.2)")
        return outcome.verdict is Verdict.PASS
    if target is None:
        return False  # an impossible name: nothing to look up, so nothing matches
    if kind == "exists":
        (answer,) = yield from ask(DnsQuery(target, "A"))
        return _usable(ctx, answer, mechanism, target)
    if kind == "a":
        (answer,) = yield from ask(DnsQuery(target, ctx.address_type))
        if not _usable(ctx, answer, mechanism, target):
            return False
        return _any_in(ctx, answer, mechanism)
    if kind == "mx":
        (answer,) = yield from ask(DnsQuery(target, "MX"))
        if not _usable(ctx, answer, mechanism, target):
            return False
        if len(answer.records) > MAX_NAMES:
            raise _PermError(f"{mechanism.text}: more than {MAX_NAMES} MX records")
        hosts = [name for name in map(_query_name, answer.records) if name is not None]
        answers = yield from ask(*(DnsQuery(host, ctx.address_type) for host in hosts))
        for host, host_answer in zip(hosts, answers, strict=True):
            if host_answer.failed:
                raise _TempError(f"DNS {host_answer.status.value} looking up {host}")
            if _any_in(ctx, host_answer, mechanism):
                return True
        return False
    assert kind == "ptr"
    names = yield from _validated_names(ctx, mechanism)
    target = target.lower()
    return any(name == target or name.endswith("." + target) for name in names)


def _usable(ctx: _Context, answer: DnsAnswer, mechanism: Mechanism, name: str) -> bool:
    if answer.failed:
        raise _TempError(f"DNS {answer.status.value} looking up {name} for {mechanism.text}")
    if answer.void:
        ctx.count_void(mechanism.text)
        return False
    return True


def _any_in(ctx: _Context, answer: DnsAnswer, mechanism: Mechanism) -> bool:
    prefix = mechanism.cidr4 if ctx.ip.version == 4 else mechanism.cidr6
    shift = ctx.ip.max_prefixlen - prefix
    mine = int(ctx.ip) >> shift
    for text in answer.records:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue  # a resolver's garbage is not a match
        if address.version == ctx.ip.version and int(address) >> shift == mine:
            return True
    return False


def _validated_names(
    ctx: _Context, mechanism: Mechanism | None
) -> Generator[tuple[DnsQuery, ...], Sequence[DnsAnswer], tuple[str, ...]]:
    """The names of the client's PTR records whose addresses include the client (§5.5).

    For the "ptr" mechanism a void PTR lookup counts (§4.6.4); a DNS error on the PTR
    lookup is no match, and on an address lookup skips that name (§5.5)."""
    if ctx.validated is None:
        ctx.validated = yield from _lookup_validated(ctx)
    if mechanism is not None and ctx.ptr_void:
        ctx.count_void(mechanism.text)
    return ctx.validated


def _lookup_validated(
    ctx: _Context,
) -> Generator[tuple[DnsQuery, ...], Sequence[DnsAnswer], tuple[str, ...]]:
    (answer,) = yield from ask(DnsQuery(ctx.ip.reverse_pointer, "PTR"))
    if answer.failed or answer.void:
        ctx.ptr_void = answer.void
        return ()
    names = [name for name in map(_query_name, answer.records[:MAX_NAMES]) if name is not None]
    answers = yield from ask(*(DnsQuery(name, ctx.address_type) for name in names))
    return tuple(
        name.lower()
        for name, address_answer in zip(names, answers, strict=True)
        if not address_answer.failed and _has_address(address_answer, ctx.ip)
    )


def _has_address(answer: DnsAnswer, ip: IPAddress) -> bool:
    for text in answer.records:
        try:
            if ipaddress.ip_address(text) == ip:
                return True
        except ValueError:
            continue
    return False


def _target(
    ctx: _Context, spec: MacroString, domain: str
) -> Generator[tuple[DnsQuery, ...], Sequence[DnsAnswer], str | None]:
    text = yield from _expand(ctx, spec, domain)
    return _query_name(text)


def _expand(
    ctx: _Context, spec: MacroString, domain: str, *, explanation: bool = False
) -> Generator[tuple[DnsQuery, ...], Sequence[DnsAnswer], str]:
    """Expand `spec` (§7.3); %{p} costs PTR and address lookups, done once per check."""
    letters = spec.letters
    p = "unknown"
    if "p" in letters:
        names = yield from _validated_names(ctx, None)
        p = _preferred(names, domain.lower())
    ip = ctx.ip
    if ip.version == 4:
        dotted = str(ip)
    else:
        dotted = ".".join(f"{int(ip):032x}")
    values = {
        "s": ctx.sender,
        "l": ctx.local,
        "o": ctx.sender_domain,
        "d": domain,
        "i": dotted,
        "p": p,
        "v": "in-addr" if ip.version == 4 else "ip6",
        "h": ctx.helo,
    }
    if explanation:
        values.update(c=str(ip), r=ctx.receiver, t=str(ctx.now))
    return expand(spec, values)


def _preferred(names: tuple[str, ...], domain: str) -> str:
    # §7.3: the domain itself if validated, else a subdomain of it, else any name.
    if domain in names:
        return domain
    for name in names:
        if name.endswith("." + domain):
            return name
    return names[0] if names else "unknown"


def _explain(
    ctx: _Context, spec: MacroString, domain: str
) -> Generator[tuple[DnsQuery, ...], Sequence[DnsAnswer], str | None]:
    """The expanded "exp=" text, or None whenever §6.2 says to proceed without one."""
    target = yield from _target(ctx, spec, domain)
    if target is None:
        return None
    (answer,) = yield from ask(DnsQuery(target, "TXT"))
    if answer.status is not DnsStatus.OK or len(answer.records) != 1:
        return None
    try:
        text_spec = parse_macro_string(answer.records[0], explanation=True)
    except SpfSyntaxError:
        return None
    text = yield from _expand(ctx, text_spec, domain, explanation=True)
    # Macro values come from the client (local part, HELO) and the text goes into an SMTP
    # reply: keep it one line of printable ASCII, as the record's own text must be (§6.2).
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text)


def _initial_domain(domain: str) -> str | None:
    """The <domain> argument as a query name, or None if §4.3 says "none" for it:
    a label empty or over 63 octets, a single label, an address literal."""
    name = domain[:-1] if domain.endswith(".") else domain
    if not name or len(name) > _MAX_NAME or not name.isascii():
        return None
    labels = name.split(".")
    if len(labels) < 2:
        return None
    for label in labels:
        if not 0 < len(label) <= _MAX_LABEL:
            return None
        if not all(ch.isalnum() or ch in "-_" for ch in label):
            return None
    return name


def _query_name(text: str) -> str | None:
    """A name built by expansion, ready to query: no trailing dot, cut from the left to
    253 octets by whole labels (§7.3); None if no valid DNS name remains."""
    if text.endswith("."):
        text = text[:-1]
    while len(text) > _MAX_NAME and "." in text:
        text = text.split(".", 1)[1]
    if not text or len(text) > _MAX_NAME:
        return None
    if not all(" " <= ch < "\x7f" for ch in text):
        return None
    if any(not 0 < len(label) <= _MAX_LABEL for label in text.split(".")):
        return None
    return text
