"""DNS for outbound delivery: MX, A/AAAA and PTR lookups, with errors the queue can act on.

A thin layer over dnspython's asynchronous stub resolver, which runs under Trio (its
backend is picked through sniffio). What this layer adds is the mail server's reading of
each outcome (RFC 5321 §5.1):

- An MX answer becomes `sansmail.mail.routing.MXRecord`s, exchange names without the final dot;
  the null MX of RFC 7505 (``0 .``) comes back with exchange ``"."``, which
  `sansmail.mail.routing.order_mx` turns into `NullMXError`.
- A domain that exists but has no MX gives ``[]``: the caller falls back to the domain
  itself (the implicit MX, RFC 5321 §5.1).
- NXDOMAIN is permanent (`DNSError.permanent`): the mail bounces. SERVFAIL, a timeout,
  REFUSED or no reachable name server is temporary: the mail is deferred and retried.
  dnspython follows a CNAME at the name for us (RFC 5321 §5.1 allows the MX name and the
  domain to be aliases).

Choices:

- Names are always queried absolute (``domain.``) with search lists off: a recipient domain
  is never relative to our own, and ``mail.example`` must not turn into
  ``mail.example.corp.local``.
- Configured name servers each keep their own port, and then /etc/resolv.conf is never
  read. With none configured, the system's resolv.conf is read once, here.
- EDNS0 with a 1232-octet UDP payload (the 2020 DNS flag day value: no IP fragmentation),
  so a large MX or address set rarely needs the TCP retry; dnspython does that retry when
  an answer comes back truncated.
- One bounded LRU cache of answers (positive and negative), each kept for its TTL only.
- `Resolver.answer` and `run_check` serve the pure sender checks (SPF, iprev, DNSBL,
  DMARC in `sansmail.mail`): each batch a check yields is asked at once, one task per
  question, through the same cache, within one deadline for the whole check.
- `Resolver.addresses` returns IPv4 before IPv6. RFC 6724 ordering would need the host's
  routes and source addresses; without them, IPv4 first is what works on the most hosts
  (many have an IPv6 address but no working IPv6 route), and the caller tries every
  address in turn anyway.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from typing import Any, Final, TypeVar

import attrs
import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.TXT
import dns.resolver
import dns.reversename
import trio

from sansmail.config import DNSConfig, HostPort
from sansmail.mail.address import AddressError, canonical_domain
from sansmail.mail.dnsquery import DnsAnswer, DnsCheck, DnsQuery, DnsStatus
from sansmail.mail.routing import MXRecord

__all__ = ["DNSError", "Resolver", "run_check"]

_T = TypeVar("_T")

#: Answers kept at most; each for no longer than its TTL.
CACHE_SIZE: Final = 10_000
#: RFC 6891 §6.2.5 lets the client choose; 1232 avoids fragmentation on any IPv6 path.
EDNS_PAYLOAD: Final = 1232


class DNSError(Exception):
    """A lookup gave no usable answer. `permanent`: the name does not exist (bounce);
    otherwise the failure may pass (defer). ``str()`` is one line for the mail log."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        self.message = " ".join(message.split())
        self.permanent = permanent
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class Resolver:
    """Asynchronous MX/A/AAAA/PTR lookups; see the module docstring.

    `nameservers` are (IP address, port) pairs; empty means the system resolver
    (/etc/resolv.conf, read here: build one at startup, not per message). `timeout` bounds
    each lookup in seconds, retries included; one try waits at most 2 s (dnspython's
    default) before the next server or the next round.
    """

    def __init__(self, nameservers: Sequence[HostPort] = (), *, timeout: float = 10.0) -> None:
        self._timeout = timeout
        self._unconfigured: str | None = None
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers
            ]
        else:
            try:
                resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration as exc:
                # No resolv.conf, or no name server in it: every lookup is a temporary
                # failure (the mail waits in the queue) rather than a crash at startup.
                resolver = dns.asyncresolver.Resolver(configure=False)
                self._unconfigured = f"no name server configured ({exc})"
        resolver.use_search_by_default = False
        resolver.lifetime = timeout
        resolver.use_edns(0, 0, EDNS_PAYLOAD)
        resolver.cache = dns.resolver.LRUCache(CACHE_SIZE)
        self._resolver = resolver
        self._hits: dict[tuple[str, str], tuple[float, DnsAnswer]] = {}
        self._asking: dict[tuple[str, str], trio.Event] = {}

    def cached(self, query: DnsQuery) -> DnsAnswer | None:
        """`answer`'s answer to `query` while its TTL lasts, without a task, a cancel
        scope or dnspython's resolve path (the checks ask the same few names over and
        over: a sender's SPF record, a signer's key); None when not known."""
        key = (query.name.lower(), query.rtype)
        entry = self._hits.get(key)
        if entry is None:
            return None
        if trio.current_time() >= entry[0]:
            del self._hits[key]
            return None
        return entry[1]

    def _remember(self, query: DnsQuery, answer: DnsAnswer, ttl: float) -> DnsAnswer:
        if ttl > 0:
            if len(self._hits) >= CACHE_SIZE:
                self._hits.clear()  # crude but bounded; dnspython's LRU cache stays behind it
            expiry = trio.current_time() + ttl
            self._hits[query.name.lower(), query.rtype] = (expiry, answer)
        return answer

    @classmethod
    def from_config(cls, dns: DNSConfig) -> Resolver:
        """The resolver ``[dns] nameservers`` asks for."""
        return cls(dns.nameservers)

    async def mx(self, domain: str) -> list[MXRecord]:
        """The MX records of `domain`, in no particular order (`order_mx` sorts); ``[]``
        when it has none. Raises `DNSError`."""
        try:
            answer = await self._resolve(domain, "MX")
        except dns.resolver.NoAnswer:
            return []
        except dns.resolver.NXDOMAIN:
            raise DNSError(f"{_show(domain)}: no such domain (NXDOMAIN)", permanent=True) from None
        return [
            MXRecord(rdata.preference, _host_text(rdata.exchange))
            for rdata in answer
            if isinstance(rdata, dns.rdtypes.ANY.MX.MX)
        ]

    async def addresses(self, host: str) -> list[str]:
        """The IPv4 then IPv6 addresses of `host`, never empty; an IP address is its own
        answer. Raises `DNSError`: permanent when neither type exists."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        # Per type: the addresses, the NoAnswer/NXDOMAIN that says there are none, or the
        # DNSError of a failed lookup.
        outcomes: dict[str, list[str] | dns.exception.DNSException | DNSError] = {}

        async def lookup(rdtype: str) -> None:
            try:
                answer = await self._resolve(host, rdtype)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN) as exc:
                outcomes[rdtype] = exc
            except DNSError as exc:
                outcomes[rdtype] = exc
            else:
                outcomes[rdtype] = [rdata.to_text() for rdata in answer]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(lookup, "A")
            nursery.start_soon(lookup, "AAAA")
        found = [address for rdtype in ("A", "AAAA") for address in _list(outcomes[rdtype])]
        if found:
            # One family failing temporarily does not hold the mail back: the other's
            # addresses are enough to try.
            return found
        for rdtype in ("A", "AAAA"):
            outcome = outcomes[rdtype]
            if isinstance(outcome, DNSError):
                raise outcome
        if any(isinstance(outcomes[t], dns.resolver.NXDOMAIN) for t in ("A", "AAAA")):
            raise DNSError(f"{_show(host)}: no such domain (NXDOMAIN)", permanent=True)
        raise DNSError(f"{_show(host)}: no A or AAAA record", permanent=True)

    async def ptr(self, ip: str) -> list[str]:
        """The names `ip` maps back to (RFC 1035 §3.5), ``[]`` when there are none.
        Raises `DNSError` (temporary) only when the answer is unknown, and ValueError
        when `ip` is not an IP address."""
        address = ipaddress.ip_address(ip)
        name = dns.reversename.from_address(str(address))
        try:
            answer = await self._resolve(name, "PTR")
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return []
        return [
            _host_text(rdata.target)
            for rdata in answer
            if isinstance(rdata, dns.rdtypes.ANY.PTR.PTR)
        ]

    async def answer(self, query: DnsQuery) -> DnsAnswer:
        """`query` answered as the pure checks read it (`sansmail.mail.dnsquery`): never
        raises for what the DNS says. Answers, negative ones included, are cached for
        their TTL (a negative one for its SOA minimum, RFC 2308 §5). A question already
        on its way is not asked twice: the sessions that start together after a restart
        all want the same sender's records, and wait for the one answer."""
        key = (query.name.lower(), query.rtype)
        pending = self._asking.get(key)
        if pending is not None:
            await pending.wait()
            found = self.cached(query)
            if found is not None:
                return found
            # Not kept (TTL 0, or a failure): ask for ourselves.
            return await self._ask(query)
        done = self._asking[key] = trio.Event()
        try:
            return await self._ask(query)
        finally:
            del self._asking[key]
            done.set()

    async def _ask(self, query: DnsQuery) -> DnsAnswer:
        if self._unconfigured is not None:
            return DnsAnswer(DnsStatus.SERVFAIL)
        try:
            name = _absolute(query.name)
        except DNSError:
            # A name that cannot be written in the DNS cannot exist there either.
            return DnsAnswer(DnsStatus.NXDOMAIN)
        try:
            answer = await self._resolver.resolve(name, query.rtype, search=False)
        except dns.resolver.NoAnswer as exc:
            ttl = _negative_ttl(exc.kwargs.get("response"))
            return self._remember(query, DnsAnswer(DnsStatus.OK), ttl)
        except dns.resolver.NXDOMAIN as exc:
            responses = exc.kwargs.get("responses") or {}
            ttl = _negative_ttl(responses.get(name) or next(iter(responses.values()), None))
            return self._remember(query, DnsAnswer(DnsStatus.NXDOMAIN), ttl)
        except dns.resolver.YXDOMAIN:
            return DnsAnswer(DnsStatus.NXDOMAIN)
        except dns.resolver.LifetimeTimeout:
            return DnsAnswer(DnsStatus.TIMEOUT)
        except dns.exception.DNSException:
            # SERVFAIL, REFUSED, no server to ask, a malformed answer: all transient for
            # the checks (RFC 7208 §2.6.6 "temperror").
            return DnsAnswer(DnsStatus.SERVFAIL)
        ttl = answer.expiration - time.time()
        return self._remember(query, DnsAnswer(DnsStatus.OK, _render(query.rtype, answer)), ttl)

    async def _resolve(self, domain: str | dns.name.Name, rdtype: str) -> dns.resolver.Answer:
        """Ask; NoAnswer and NXDOMAIN pass through for the caller to read, every other
        failure becomes a `DNSError`."""
        shown = _show(domain)
        if self._unconfigured is not None:
            raise _try_again(shown, rdtype, self._unconfigured)
        name = domain if isinstance(domain, dns.name.Name) else _absolute(domain)
        try:
            return await self._resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            raise
        except dns.resolver.YXDOMAIN:
            # The name grows too long through a DNAME (RFC 6672 §2.2): it cannot exist.
            raise DNSError(f"{shown}: name too long after DNAME", permanent=True) from None
        except dns.resolver.LifetimeTimeout:
            raise _try_again(shown, rdtype, f"no answer within {self._timeout:g}s") from None
        except dns.resolver.NoNameservers as exc:
            why = _server_failures(exc.kwargs.get("errors", []))
            raise _try_again(shown, rdtype, why) from None
        except dns.exception.DNSException as exc:
            # Anything else dnspython refuses (a malformed answer, a name that cannot be
            # asked) may pass when the zone is fixed: defer rather than bounce.
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise _try_again(shown, rdtype, first_line) from None


async def run_check(
    check: DnsCheck[_T], resolver: Resolver, *, timeout: float = 20.0, heavy: bool = False
) -> _T:
    """Run the pure `check` to its end and return its result, asking each batch it yields
    at once (one task per question, answers in question order). Past `timeout` seconds
    from the start, every question not yet answered gets TIMEOUT, so a check costs one
    deadline however many rounds it takes. `heavy`: the check computes between batches
    (DKIM hashing a whole body), so each of its steps runs in a worker thread instead of
    on the event loop."""
    deadline = trio.current_time() + timeout

    async def ask(answers: list[DnsAnswer], index: int, query: DnsQuery) -> None:
        with trio.move_on_at(deadline):
            answers[index] = await resolver.answer(query)

    try:
        if heavy:
            step = await trio.to_thread.run_sync(_step, check, None)
        else:
            step = _step(check, None)
        while not step.done:
            queries: tuple[DnsQuery, ...] = step.value
            hits = [resolver.cached(query) for query in queries]
            answers = [DnsAnswer(DnsStatus.TIMEOUT) if a is None else a for a in hits]
            if None in hits:
                async with trio.open_nursery() as nursery:
                    for index, query in enumerate(queries):
                        if hits[index] is None:
                            nursery.start_soon(ask, answers, index, query)
            if heavy:
                step = await trio.to_thread.run_sync(_step, check, answers)
            else:
                step = _step(check, answers)
        result: _T = step.value
        return result
    finally:
        # Cancelled mid-check: the generator's own cleanup runs now, not at collection.
        # (A step in a worker thread has ended by then: the thread is waited for.)
        check.close()


@attrs.frozen
class _Step:
    done: bool
    value: Any


def _step(check: DnsCheck[Any], answers: list[DnsAnswer] | None) -> _Step:
    """One step of `check`. StopIteration is caught here: raised through a coroutine
    (the worker thread's result) it would become a RuntimeError (PEP 479)."""
    try:
        return _Step(False, next(check) if answers is None else check.send(answers))
    except StopIteration as done:
        return _Step(True, done.value)


def _render(rtype: str, answer: dns.resolver.Answer) -> list[str]:
    """The records of `answer` in the text `DnsAnswer` documents for `rtype`."""
    records: list[str] = []
    for rdata in answer:
        if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
            # One record's strings run together (RFC 7208 §3.3); latin-1 keeps each octet.
            records.append(b"".join(rdata.strings).decode("latin-1"))
        elif isinstance(rdata, dns.rdtypes.ANY.MX.MX):
            records.append(_host_text(rdata.exchange))
        elif isinstance(rdata, (dns.rdtypes.ANY.PTR.PTR, dns.rdtypes.ANY.CNAME.CNAME)):
            records.append(_host_text(rdata.target))
        elif rtype in ("A", "AAAA", "SRV"):
            records.append(rdata.to_text())
    return records


def _try_again(shown: str, rdtype: str, why: str) -> DNSError:
    """A temporary failure, in the words of Postfix's deferral (which an operator
    greps for in ``queue list``), with what the name servers did after them."""
    return DNSError(
        f"Host or domain name not found. Name service error for name={shown} type={rdtype}: "
        f"Host not found, try again ({why})",
        permanent=False,
    )


def _list(outcome: object) -> list[str]:
    return outcome if isinstance(outcome, list) else []


def _absolute(domain: str) -> dns.name.Name:
    """`domain` as an absolute name; a name that cannot exist is a permanent `DNSError`."""
    text = domain.rstrip(".")
    try:
        if not text:
            raise dns.name.EmptyLabel
        if not text.isascii():
            # U-labels as `sansmail.mail.address` encodes them (IDNA 2008, RFC 5891): one
            # policy for the whole server (dnspython's own needs a newer idna package).
            text = canonical_domain(text)
        return dns.name.from_text(text + ".")
    except (dns.exception.DNSException, AddressError) as exc:
        raise DNSError(
            f"{_show(domain)}: not a valid domain name ({exc})", permanent=True
        ) from None


def _host_text(name: dns.name.Name) -> str:
    # The root stays "." so a null MX reads as one in logs; order_mx treats it as empty.
    # Lower case: DNS compares names without case (RFC 4343), and name compression may
    # hand back the question's own spelling inside an answer.
    return "." if name == dns.name.root else name.to_text(omit_final_dot=True).lower()


def _show(domain: str | dns.name.Name) -> str:
    text = domain.to_text(omit_final_dot=True) if isinstance(domain, dns.name.Name) else domain
    return repr(text) if not text or not text.isprintable() else text


def _server_failures(errors: Sequence[tuple[object, ...]]) -> str:
    """One line saying what each name server did: ``127.0.0.1:53 SERVFAIL``."""
    if not errors:
        return "no name server to ask"
    seen: list[str] = []
    for server, _tcp, port, error, response in errors:
        if isinstance(response, dns.message.Message):
            what = dns.rcode.to_text(response.rcode())
        elif isinstance(error, OSError) and error.strerror:
            what = error.strerror
        else:
            what = type(error).__name__
        # dnspython names a server "Do53:127.0.0.1@53"; the log wants what the config says.
        host = str(server).removeprefix("Do53:").rpartition("@")[0] or str(server)
        text = f"[{host}]:{port} {what}" if ":" in host else f"{host}:{port} {what}"
        if text not in seen:
            seen.append(text)
    return ", ".join(seen)


def _negative_ttl(response: dns.message.Message | None) -> float:
    """How long a negative answer may be kept: its SOA's TTL, at most the SOA's minimum
    (RFC 2308 §5); 0 (not kept by us) when the answer carries no SOA."""
    if response is None:
        return 0.0
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, rrset[0].minimum))
    return 0.0
