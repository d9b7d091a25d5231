"""The sender checks of ``[antispam]`` as one `Check` of the SMTP session: reverse DNS
(iprev), DNS block and allow lists, SPF, DKIM verification and DMARC, and the
Authentication-Results and Received-SPF fields that record them.

When each runs
--------------
Clients that are trusted (authenticated, or in mynetworks) are not checked, as in
Postfix, where permit_sasl_authenticated and permit_mynetworks come first.

- CONNECT: the reverse lookup (PTR, then the names' A/AAAA: forward-confirmed) and the
  DNSBL/DNSWL queries start, concurrently; the greeting waits for them, as Postfix's
  smtpd waits for its reverse lookup. The verified name goes into the Received field.
- MAIL: SPF for the MAIL FROM identity (the HELO name's for the null sender, RFC 7208
  §2.4). ``spf = "reject"`` refuses a fail with ``550 5.7.23`` and a temperror with
  ``451 4.7.24`` there.
- RCPT: the client refusals, delayed to the recipient as Postfix's smtpd_delay_reject
  does so that a client may still authenticate first: ``reverse_dns = "reject"``
  (``450 4.7.25`` / ``550 5.7.25``) and a DNSBL hit (``554 5.7.1 ... blocked using``).
- END_OF_DATA: with ``dkim`` or ``dmarc`` on, the message is held; the DKIM keys and the
  DMARC record are fetched (the signatures' hashes are computed off the event loop),
  then one Authentication-Results field (spf, dkim, dmarc, iprev) and the Received-SPF
  field go above Received. ``dmarc = "enforce"`` refuses a failing p=reject message with
  ``550 5.7.1`` and files a failing p=quarantine one in the recipients' Junk folder.
  With both off, the fields are written at the end of the header section instead and the
  message is not held.

A DNS question that ran out of time counts as a temporary error (temperror), never as
a pass.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Generator, Sequence
from typing import Any

import attrs

from sansmail import smtp
from sansmail.config import Config
from sansmail.mail import authres, dkim
from sansmail.mail.dkim import ArcResult, DkimResult
from sansmail.mail.dmarc import DmarcDecision, DmarcMode, DmarcResult, check_dmarc, decide_dmarc
from sansmail.mail.dnsbl import DnsblResult, ListZone, check_lists, decide_dnsbl, parse_zone
from sansmail.mail.dnsquery import DnsAnswer, DnsQuery
from sansmail.mail.headeredit import split_fields
from sansmail.mail.iprev import (
    IprevResult,
    IprevVerdict,
    ReverseDnsMode,
    check_iprev,
    decide_reverse_dns,
)
from sansmail.mail.spf import SpfResult, check_mail_from, decide_spf, received_spf
from sansmail.mail.spf import Verdict as SpfVerdict
from sansmail.mime._address import address_list
from sansmail.sessions.smtpd._checks import (
    CLIENT_NAME,
    Inquiry,
    Lookup,
    SessionView,
    Stage,
    Verdict,
)

__all__ = ["SenderChecks", "sender_checks"]

SOURCE = "antispam"
_IPREV = "antispam.iprev"
_DNSBL = "antispam.dnsbl"
_SPF = "antispam.spf"
_MESSAGE = "antispam.message"  # (dkim results, dmarc result) of the transaction's message


@attrs.frozen
class _MessageFindings:
    dkim: tuple[DkimResult, ...] | None  # None: not checked, or out of time
    dmarc: DmarcResult | None
    from_domain: str | None
    arc: ArcResult | None = None


@attrs.define
class SenderChecks:
    """The ``[antispam]`` checks (see the module docstring); one per listener."""

    authserv_id: str
    spf: str = "tag"
    reverse_dns: ReverseDnsMode = ReverseDnsMode.OFF
    dkim: str = "tag"
    dmarc: DmarcMode = DmarcMode.TAG
    blocklists: tuple[ListZone, ...] = ()
    allowlists: tuple[ListZone, ...] = ()

    @property
    def _looks_up_client(self) -> bool:
        # The reverse name is looked up whenever anything is checked: the Received field
        # and Authentication-Results' iprev want it, and it is one cached query or two.
        return self.reverse_dns is not ReverseDnsMode.OFF or self._checks_sender

    @property
    def _checks_sender(self) -> bool:
        return self.spf != "off" or self.dmarc is not DmarcMode.OFF

    @property
    def _checks_message(self) -> bool:
        return self.dkim != "off" or self.dmarc is not DmarcMode.OFF

    # -- Inquiring ------------------------------------------------------------------

    def wants_message(self, session: SessionView) -> bool:
        return self._checks_message and not session.trusted

    def inquiries(
        self, stage: Stage, session: SessionView, command: smtp.Event | None
    ) -> Sequence[Inquiry]:
        if session.trusted:
            return ()
        findings = session.findings
        ip = _address(session.client_ip)
        if ip is None:
            return ()
        if stage is Stage.CONNECT:
            found: list[Inquiry] = []
            if self._looks_up_client:
                found.append(Lookup("iprev", check_iprev(ip), _store(findings, _IPREV)))
            if self.blocklists or self.allowlists:
                found.append(
                    Lookup(
                        "dnsbl",
                        check_lists(ip, self.blocklists, self.allowlists),
                        _store(findings, _DNSBL),
                    )
                )
            return found
        if stage is Stage.MAIL and isinstance(command, smtp.Mail) and self._checks_sender:
            findings.pop(_SPF, None)
            sender = "" if command.reverse_path is None else str(command.reverse_path)
            check = check_mail_from(
                ip,
                sender,
                session.helo or "unknown",
                now=int(session.now),
                receiver=self.authserv_id,
            )
            return [Lookup("spf", check, _store(findings, _SPF))]
        if stage is Stage.END_OF_DATA and self._checks_message:
            tx = session.transaction
            if tx is None or tx.message is None:
                return ()
            findings.pop(_MESSAGE, None)
            spf = findings.get(_SPF)
            return [
                Lookup(
                    "dkim+dmarc",
                    self._message_check(bytes(tx.message), bytes(tx.headers), spf),
                    _store(findings, _MESSAGE),
                    heavy=len(tx.message) >= 65536,
                )
            ]
        return ()

    def _message_check(
        self, message: bytes, headers: bytes, spf: SpfResult | None
    ) -> Generator[tuple[DnsQuery, ...], Sequence[DnsAnswer], _MessageFindings]:
        signatures = yield from dkim.verify(message)
        arc = (yield from dkim.arc_verify(message)) if self.dkim != "off" else None
        from_domain = _from_domain(headers)
        result = None
        if self.dmarc is not DmarcMode.OFF and from_domain is not None:
            spf_domain = spf.domain if spf is not None and spf.verdict is SpfVerdict.PASS else None
            passed = [s.domain for s in signatures or () if s.result == "pass"]
            result = yield from check_dmarc(from_domain, spf_domain=spf_domain, dkim_domains=passed)
        return _MessageFindings(dkim=signatures, dmarc=result, from_domain=from_domain, arc=arc)

    # -- Check ----------------------------------------------------------------------

    def check(self, stage: Stage, session: SessionView) -> Verdict | None:
        if session.trusted:
            return None
        findings = session.findings
        if stage is Stage.CONNECT:
            decision = decide_reverse_dns(self.reverse_dns, findings.get(_IPREV))
            iprev = findings.get(_IPREV)
            if isinstance(iprev, IprevResult) and iprev.verdict is IprevVerdict.PASS:
                findings[CLIENT_NAME] = iprev.name
            elif decision.client_name is not None:
                findings[CLIENT_NAME] = decision.client_name
            listed = findings.get(_DNSBL)
            if isinstance(listed, DnsblResult):
                # Once per connection, for the metrics; the refusal waits for RCPT.
                return Verdict(source="dnsbl", results=(("dnsbl", _dnsbl_result(listed)),))
            return None
        if stage is Stage.MAIL:
            reply = decide_spf(self.spf, findings.get(_SPF))
            return None if reply is None else Verdict(source="spf", reply=reply)
        if stage is Stage.RCPT:
            decision = decide_reverse_dns(self.reverse_dns, findings.get(_IPREV))
            if decision.reply is not None:
                return Verdict(source="reverse_dns", reply=decision.reply)
            listed = findings.get(_DNSBL)
            if isinstance(listed, DnsblResult):
                reply = decide_dnsbl(listed)
                if reply is not None:
                    return Verdict(source="dnsbl", reply=reply)
            return None
        tx = session.transaction
        if tx is None:
            return None
        held = tx.message is not None
        if stage is Stage.END_OF_HEADERS and not held:
            return self._results(session, None, None)
        if stage is Stage.END_OF_DATA and held:
            message = findings.get(_MESSAGE)
            if not isinstance(message, _MessageFindings):
                message = _MessageFindings(dkim=None, dmarc=None, from_domain=None)
            sample = _sample(tx.queue_id)
            policy = decide_dmarc(self.dmarc, message.dmarc, sample)
            verdict = self._results(session, message, policy)
            return attrs.evolve(
                verdict,
                reply=policy.reply,
                quarantine=f"DMARC policy of {message.from_domain}" if policy.junk else None,
            )
        return None

    def _results(
        self,
        session: SessionView,
        message: _MessageFindings | None,
        decision: DmarcDecision | None,
    ) -> Verdict:
        findings = session.findings
        methods: list[authres.MethodResult] = []
        fields: list[tuple[str, str]] = []
        spf = findings.get(_SPF)
        if self.spf != "off" and isinstance(spf, SpfResult):
            methods.append(authres.spf_method(spf))
            fields.append(("Received-SPF", received_spf(spf)))
        if message is not None and self.dkim != "off":
            methods.extend(_dkim_methods(message.dkim))
            if message.arc is not None:
                # RFC 8617 §10.2 (and what arc_seal needs to seal a forwarded copy).
                methods.append(
                    authres.MethodResult(
                        method="arc", result=message.arc.result, reason=message.arc.reason
                    )
                )
        if message is not None and self.dmarc is not DmarcMode.OFF and message.dmarc is not None:
            methods.append(authres.dmarc_method(message.dmarc, decision))
        iprev = findings.get(_IPREV)
        if isinstance(iprev, IprevResult):
            methods.append(authres.iprev_method(iprev))
        value = authres.authentication_results(self.authserv_id, methods)
        return Verdict(
            source=SOURCE,
            header_fields=[("Authentication-Results", value), *fields],
            results=tuple((m.method, m.result) for m in methods),
        )


def sender_checks(config: Config) -> SenderChecks | None:
    """The checks `config` asks for; None when every one is off."""
    a = config.antispam
    lists = [parse_zone(zone) for zone in a.dnsbl]
    checks = SenderChecks(
        authserv_id=config.hostname,
        spf=a.spf,
        reverse_dns=ReverseDnsMode(a.reverse_dns),
        dkim=a.dkim,
        dmarc=DmarcMode(a.dmarc),
        blocklists=tuple(lists),
    )
    if (
        checks.spf == "off"
        and checks.reverse_dns is ReverseDnsMode.OFF
        and checks.dkim == "off"
        and checks.dmarc is DmarcMode.OFF
        and not lists
    ):
        return None
    return checks


def _dnsbl_result(found: DnsblResult) -> str:
    if found.allowed_by is not None:
        return "allowed"
    if found.listed_by is not None:
        return "listed"
    return "failed" if found.failed else "clean"


def _dkim_methods(results: tuple[DkimResult, ...] | None) -> list[authres.MethodResult]:
    if results is None:
        return [authres.dkim_method("temperror", reason="DNS lookups timed out")]
    if not results:
        return [authres.dkim_method("none")]
    return [
        authres.dkim_method(
            r.result, domain=r.domain, selector=r.selector, signature=r.b, reason=r.reason
        )
        for r in results
    ]


def _store(findings: dict[str, Any], key: str) -> Any:
    def deliver(result: object) -> None:
        findings[key] = result

    return deliver


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _from_domain(headers: bytes) -> str | None:
    """The one RFC5322.From domain (RFC 7489 §6.6.1); None when the message has no From
    field, several, or one with other than exactly one address."""
    fields, _rest = split_fields(headers)
    values = [f.split(b":", 1)[1] for f in fields if f.split(b":", 1)[0].strip().lower() == b"from"]
    if len(values) != 1:
        return None
    addresses = address_list(values[0].replace(b"\r\n", b""))
    if not addresses or len(addresses) != 1:
        return None
    host = addresses[0][3]
    if not host:
        return None
    return host.decode("utf-8", "replace").lower().rstrip(".") or None


def _sample(queue_id: str) -> float:
    # DMARC's pct= asks for a share of the messages: the draw comes from the queue id,
    # so one message always gets the same answer and the session needs no randomness.
    digest = hashlib.sha256(queue_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
