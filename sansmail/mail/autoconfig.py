"""What the `http` listener serves so that mail clients configure themselves from an
address alone, and the MTA-STS policy: documents made from the configuration, no I/O.

- Thunderbird's autoconfig (``/mail/config-v1.1.xml?emailaddress=...`` at
  ``autoconfig.<domain>``, or ``/.well-known/autoconfig/mail/config-v1.1.xml`` at the
  domain itself): a ``clientConfig`` version 1.1 with an ``incomingServer`` per IMAP and
  POP3 listener and an ``outgoingServer`` per submission listener, best first (the
  client takes the first it can reach). The format is the ISPDB's
  (https://wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat); its
  repository checks files against the rules of ``tools/validation`` (types.rs), which
  the tests apply.
- Outlook's autodiscover, "POX" (Plain Old XML, [MS-OXDSCLI] and the Exchange POX
  reference): a POST of a small XML request naming ``EMailAddress``, answered with
  ``Protocol`` blocks for IMAP (or POP3) and SMTP. The request is parsed by
  `xml.etree` after refusing any DOCTYPE: with no document type there can be no entity
  declared, so no entity expansion (billion laughs) and no external entity; its size
  is bounded before the parser sees it.
- The MTA-STS policy (RFC 8461 §3.3) for ``mta-sts.<domain>``, as `dnsrecords` prints
  the TXT record of: the same text, so the same ``id``.

Servers, ports and TLS modes come from the ``[listen]`` table: a listener that is not
configured is not announced, and its port is the one `dnsrecords` puts in the SRV
records (the first address that is not loopback). Implicit TLS comes before STARTTLS
(RFC 8314 §5.1); IMAP before POP3. The login is the whole address (sansmail's users
are addresses) and the password goes in clear inside TLS (the mechanisms PLAIN and
LOGIN every client has); SMTP asks for it (``AuthRequired``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Final, Literal

import attrs

from sansmail.config import Config, HostPort
from sansmail.mail.address import AddressError, parse_address
from sansmail.mail.dnsrecords import mta_sts_policy, public_port

__all__ = [
    "AUTODISCOVER_RESPONSE_SCHEMA",
    "MAX_AUTODISCOVER_REQUEST",
    "AutodiscoverError",
    "Server",
    "autodiscover_address",
    "autodiscover_error_xml",
    "autodiscover_xml",
    "config_domain",
    "mta_sts_text",
    "servers",
    "thunderbird_xml",
]

Kind = Literal["imap", "pop3", "smtp"]
Socket = Literal["SSL", "STARTTLS"]

#: The listeners clients are told of, best first: (listener, protocol, TLS mode).
_CLIENT_LISTENERS: Final[tuple[tuple[str, Kind, Socket], ...]] = (
    ("imaps", "imap", "SSL"),
    ("imap", "imap", "STARTTLS"),
    ("pop3s", "pop3", "SSL"),
    ("pop3", "pop3", "STARTTLS"),
    ("submissions", "smtp", "SSL"),
    ("submission", "smtp", "STARTTLS"),
)

#: An autodiscover request is a few hundred octets; more is not one.
MAX_AUTODISCOVER_REQUEST: Final = 16 * 1024
AUTODISCOVER_REQUEST_SCHEMA: Final = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
)
AUTODISCOVER_RESPONSE_SCHEMA: Final = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
)
_AUTODISCOVER_ENVELOPE: Final = (
    "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
)
# A document type, in any case (XML names are case-sensitive, so "<!doctype" is not
# well-formed; refused all the same rather than left to the parser).
_DOCTYPE = re.compile(rb"<!\s*doctype", re.IGNORECASE)


class AutodiscoverError(ValueError):
    """The autodiscover request cannot be answered (the message says why)."""


@attrs.frozen
class Server:
    """One server a client is told of."""

    kind: Kind
    hostname: str
    port: int
    socket: Socket


def servers(config: Config) -> tuple[Server, ...]:
    """The client-facing servers the ``[listen]`` table configures, best first."""
    host = config.hostname.rstrip(".").lower()
    found: list[Server] = []
    listen: Mapping[str, Sequence[HostPort]] = config.listen
    for listener, kind, socket in _CLIENT_LISTENERS:
        port = public_port(listen.get(listener, ()))
        if port is not None:
            found.append(Server(kind, host, port, socket))
    return tuple(found)


def config_domain(config: Config, *, address: str | None, host: str | None) -> str | None:
    """The configured domain a request asks about: the domain of `address` (the
    ``emailaddress`` parameter) when given, else the Host header's name without an
    ``autoconfig.``/``autodiscover.`` label; None when that is not one of ours."""
    if address:
        try:
            domain = parse_address(address).domain
        except AddressError:
            return None
    elif host:
        domain = _host_name(host)
        for label in ("autoconfig.", "autodiscover."):
            if domain.startswith(label) and domain[len(label) :] in config.domains:
                domain = domain[len(label) :]
    else:
        return None
    return domain if domain in config.domains else None


def thunderbird_xml(config: Config, domain: str) -> bytes:
    """Thunderbird's ``config-v1.1.xml`` for `domain`."""
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    ET.SubElement(provider, "domain").text = domain
    ET.SubElement(provider, "displayName").text = domain
    ET.SubElement(provider, "displayShortName").text = domain.partition(".")[0]
    for server in servers(config):
        if server.kind == "smtp":
            element = ET.SubElement(provider, "outgoingServer", type="smtp")
        else:
            element = ET.SubElement(provider, "incomingServer", type=server.kind)
        ET.SubElement(element, "hostname").text = server.hostname
        ET.SubElement(element, "port").text = str(server.port)
        ET.SubElement(element, "socketType").text = server.socket
        ET.SubElement(element, "authentication").text = "password-cleartext"
        ET.SubElement(element, "username").text = "%EMAILADDRESS%"
    # ISPDB files put the incoming servers first; ours are already in that order.
    return _document(root)


def autodiscover_address(body: bytes) -> str:
    """The ``EMailAddress`` of an autodiscover POX request. Raises `AutodiscoverError`
    for a request over `MAX_AUTODISCOVER_REQUEST`, in UTF-16, with a DOCTYPE, not
    well-formed, or without an address."""
    if len(body) > MAX_AUTODISCOVER_REQUEST:
        raise AutodiscoverError(f"request over {MAX_AUTODISCOVER_REQUEST} octets")
    if b"\0" in body:
        # UTF-16 (expat reads it, by its byte order mark or declaration) would hide a
        # DOCTYPE from the check below; its XML always has NUL octets ("<" is 00 3C),
        # and NUL is no character of XML in an encoding the check can read.
        raise AutodiscoverError("not UTF-8 XML (a NUL octet)")
    if _DOCTYPE.search(body):
        raise AutodiscoverError("a DOCTYPE is not accepted")
    try:
        root = ET.fromstring(body)  # noqa: S314  (no DOCTYPE: no entities; bounded)
    except ET.ParseError as exc:
        raise AutodiscoverError(f"not well-formed XML: {exc}") from None
    # Clients differ on the namespace (some send none): match the local name.
    for element in root.iter():
        if element.tag.rpartition("}")[2] == "EMailAddress":
            address = (element.text or "").strip()
            if address:
                return address
    raise AutodiscoverError("no EMailAddress in the request")


def autodiscover_xml(config: Config, address: str) -> bytes:
    """The POX response for `address`: an IMAP (or, without IMAP, a POP3) and an SMTP
    ``Protocol``, each the best listener of its kind. ``SSL`` is on for both TLS modes
    and ``Encryption`` says which one (``SSL``: implicit, ``TLS``: STARTTLS)."""
    envelope = ET.Element("Autodiscover", xmlns=_AUTODISCOVER_ENVELOPE)
    response = ET.SubElement(envelope, "Response", xmlns=AUTODISCOVER_RESPONSE_SCHEMA)
    user = ET.SubElement(response, "User")
    ET.SubElement(user, "EMailAddress").text = address
    account = ET.SubElement(response, "Account")
    ET.SubElement(account, "AccountType").text = "email"
    ET.SubElement(account, "Action").text = "settings"
    chosen: dict[str, Server] = {}
    for server in servers(config):
        chosen.setdefault(server.kind, server)
    incoming = chosen.get("imap") or chosen.get("pop3")
    for server in (s for s in (incoming, chosen.get("smtp")) if s is not None):
        protocol = ET.SubElement(account, "Protocol")
        ET.SubElement(protocol, "Type").text = server.kind.upper()
        ET.SubElement(protocol, "Server").text = server.hostname
        ET.SubElement(protocol, "Port").text = str(server.port)
        ET.SubElement(protocol, "DomainRequired").text = "off"
        ET.SubElement(protocol, "LoginName").text = address
        ET.SubElement(protocol, "SPA").text = "off"
        ET.SubElement(protocol, "SSL").text = "on"
        ET.SubElement(protocol, "Encryption").text = "SSL" if server.socket == "SSL" else "TLS"
        ET.SubElement(protocol, "AuthRequired").text = "on"
        if server.kind == "smtp":
            ET.SubElement(protocol, "UsePOPAuth").text = "off"
            ET.SubElement(protocol, "SMTPLast").text = "off"
    return _document(envelope)


def autodiscover_error_xml(code: int, message: str) -> bytes:
    """The POX error response (for an address that is not ours)."""
    envelope = ET.Element("Autodiscover", xmlns=_AUTODISCOVER_ENVELOPE)
    response = ET.SubElement(envelope, "Response")
    error = ET.SubElement(response, "Error")
    ET.SubElement(error, "ErrorCode").text = str(code)
    ET.SubElement(error, "Message").text = message
    return _document(envelope)


def mta_sts_text(config: Config, host: str) -> str | None:
    """The MTA-STS policy served at ``https://mta-sts.<domain>/.well-known/mta-sts.txt``
    when `host` (the Host header, port allowed) is ``mta-sts.`` and a configured domain;
    None otherwise (RFC 8461 §3.3: the policy host is that name)."""
    name = _host_name(host)
    prefix = "mta-sts."
    if not name.startswith(prefix) or name[len(prefix) :] not in config.domains:
        return None
    return mta_sts_policy(config.hostname.rstrip(".").lower())


def _host_name(host: str) -> str:
    """A Host header's name: no port, no final dot, lower case."""
    host = host.strip()
    if host.startswith("["):  # an IPv6 literal is never one of our names
        return host.lower()
    return host.rpartition(":")[0].rstrip(".").lower() if ":" in host else host.rstrip(".").lower()


def _document(root: ET.Element) -> bytes:
    ET.indent(root)
    text: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return text + b"\n"
