"""The mail log: where a session's lines go (`LogSink`), text from a client made safe for
one log line, and the client's address as the firewall sees it (what fail2ban matches)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Final

__all__ = [
    "ClientAddress",
    "LogSink",
    "client_address",
    "command_for_log",
    "printable",
    "show_ip",
]

#: Where a session hands its log lines: ``(level, text)``, e.g. `logging.Logger.log`.
LogSink = Callable[[int, str], None]

ClientAddress = str | ipaddress.IPv4Address | ipaddress.IPv6Address | None


def printable(text: str) -> str:
    """Attacker-controlled text made safe for one log line: controls and other
    unprintable characters as ``\\xNN``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


#: A command that carries a password or a SASL response, IMAP's after its tag: SMTP and
#: POP3 AUTH (an initial response), POP3 PASS and APOP, IMAP LOGIN and AUTHENTICATE. The
#: mechanism after AUTH/AUTHENTICATE is kept, for the reader of the log.
_SECRET_COMMAND: Final = re.compile(
    rb"\A((?:[^ \t]+[ \t]+)?(?:(?:AUTH|AUTHENTICATE)(?:[ \t][A-Za-z0-9_-]{1,20}\b)?"
    rb"|PASS|APOP|LOGIN))(?=[ \t]|\Z)",
    re.IGNORECASE,
)


def command_for_log(line: bytes, limit: int = 100) -> str:
    """A command line from a client, for one log line: made `printable`, cut at `limit`
    characters, and with what follows the verb of a command that carries a secret
    (`_SECRET_COMMAND`) replaced by ``<hidden>``: a rejected ``AUTH PLAIN <base64>``
    or ``PASS <password>`` must not write the password into the log."""
    secret = _SECRET_COMMAND.match(line)
    if secret is not None and len(line) > secret.end():
        line = secret.group(1) + b" <hidden>"
    return printable(line.decode("utf-8", "replace")[:limit])


def client_address(
    client_ip: ClientAddress,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Who the client is: an IPv4 client on a dual-stack socket (``::ffff:a.b.c.d``) as
    IPv4, an IPv6 zone (``%eth0``) dropped; None when it is not an address."""
    if client_ip is None:
        return None
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        address = ipaddress.IPv6Address(int(address))
    return address


def show_ip(client_ip: ClientAddress) -> str:
    """The address for the log, as the firewall sees it: fail2ban would otherwise ban
    ``::ffff:a.b.c.d``, which no IPv4 rule matches."""
    address = client_address(client_ip)
    return "unknown" if address is None else str(address)
