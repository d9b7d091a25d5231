"""The value checkers: each takes a value as `tomllib` returned it and gives back the
converted value, or raises `ValueError` with a message fit for the operator.

Durations and sizes, host names and domains, networks, ``host:port`` forms (listen
addresses, next hops, name servers, milters), restrictions, SASL mechanisms, the DKIM
selector, the recipient delimiter, a system user name and a PostgreSQL URI. Nothing here
knows where the value came from; `_tables` adds the file, line and key.
"""

from __future__ import annotations

import ipaddress
import pathlib
import re
import urllib.parse
from collections.abc import Callable
from typing import Final, TypeVar

from sansmail.config._model import MECHANISMS, RESTRICTIONS, HostPort, IPNetwork, NextHop
from sansmail.mail.address import AddressError, canonical_domain

T = TypeVar("T")

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_DURATION = re.compile(r" *([0-9]+) *([smhdw]?) *\Z")
_UNIT_SECONDS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE = re.compile(r" *([0-9]+) *([kmgt]?)b? *\Z", re.IGNORECASE)
# Binary multiples, as Dovecot's quota sizes and du -h count.
_UNIT_OCTETS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# The portable user names of POSIX (3.437) that useradd accepts: no leading digit or dash.
_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")
_DSN_SCHEMES: Final = ("postgresql", "postgres")


def _canonical_domain(text: str) -> str:
    try:
        return canonical_domain(text)
    except AddressError as exc:
        raise ValueError(f"{text!r}: {exc}") from None


def hostname(text: str) -> str:
    """A host name in LDH syntax (RFC 1123 §2.1), as an A-label string, lower case."""
    name = _canonical_domain(text)
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{text!r} is not a valid host name")
    return name


def domain(text: str) -> str:
    """A domain or address literal, canonical: lower case, A-labels (see `canonical_domain`)."""
    name = _canonical_domain(text)
    if not name:
        raise ValueError("empty domain")
    return name


def network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a network like 192.0.2.0/24 or 2001:db8::/32") from None
    raise ValueError(f"{text!r} has host bits set; did you mean {loose}?")


def duration(value: object) -> int:
    """Seconds, from an integer or a string with a unit (``"30s"``, ``"5m"``, ``"1w"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(
            f'expected a duration like "30s", "5m", "2h", "5d" or a number of seconds, '
            f"not {show(value)}"
        )
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def size(value: object) -> int:
    """Octets, from an integer or a string with a binary unit (``"500M"``, ``"10G"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        octets = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        octets = int(match.group(1)) * _UNIT_OCTETS[match.group(2).lower()]
    else:
        raise ValueError(
            f'expected a size like "500M", "10G" or a number of octets, not {show(value)}'
        )
    if octets < 0:
        raise ValueError("a size cannot be negative")
    return octets


def user_name(value: object) -> str | None:
    """A system user name (``""``: none)."""
    text = expect(str, "a string")(value)
    if not text:
        return None
    if not _USER_NAME.match(text):
        raise ValueError(
            f"{text!r} is not a user name (letters, digits, '_', '.', '-', at most 32, "
            "not starting with a digit or '-')"
        )
    return text


def dsn(value: object) -> str:
    """A PostgreSQL connection URI (``""``: none). The value is never quoted back in a
    message: it may hold a password."""
    text = expect(str, "a string")(value)
    if not text:
        return text
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in _DSN_SCHEMES or any(c.isspace() for c in text):
        raise ValueError("expected a PostgreSQL URI like postgresql://user@host:5432/sansmail")
    return text


def _split_host_port(text: str, default_port: int | None) -> tuple[str, int, bool]:
    """``host:port``, ``[host]:port`` (IPv6 addresses must be bracketed when a port
    follows) -> (host, port, bracketed). The port may be left out when `default_port`
    is given."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"{text!r}: '[' without ']'")
        bracketed = True
    else:
        host, colon, port_text = text.rpartition(":")
        if ":" in host:
            # An IPv6 address holds colons: only brackets say where the port begins.
            if default_port is None or not _is_ip(text):
                raise ValueError(f"{text!r}: write an IPv6 address in brackets: [::1]:25")
            host, rest = text, ""
        else:
            host, rest = (host, ":" + port_text) if colon else (port_text, "")
        bracketed = False
    if not host:
        raise ValueError(f"{text!r}: no host")
    if not rest:
        if default_port is None:
            raise ValueError(f"{text!r}: expected host:port, like 127.0.0.1:25 or [::1]:25")
        port = default_port
    elif rest.startswith(":") and rest[1:].isdigit() and rest[1:].isascii():
        port = int(rest[1:])
        if port > 65535:
            raise ValueError(f"{text!r}: port {port} is out of range (0-65535)")
    else:
        raise ValueError(f"{text!r}: expected host:port, like 127.0.0.1:25 or [::1]:25")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        host = hostname(host)
    return host, port, bracketed


def listen_address(text: str) -> HostPort:
    host, port, _ = _split_host_port(text, None)
    return host, port


def next_hop(text: str) -> NextHop:
    host, port, bracketed = _split_host_port(text, 25)
    if port == 0:
        raise ValueError(f"{text!r}: port 0 is not a destination")
    return NextHop(host=host, port=port, mx_lookup=not bracketed and not _is_ip(host))


def nameserver(text: str) -> HostPort:
    host, port, _ = _split_host_port(text, 53)
    if not _is_ip(host):
        raise ValueError(f"{text!r}: a name server must be an IP address")
    if port == 0:
        raise ValueError(f"{text!r}: port 0 is not a destination")
    return host, port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def show(value: object) -> str:
    """How a value reads in a message: TOML's name for its type, and the value when short."""
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    for kind, name in kinds.items():
        if isinstance(value, kind):
            text = repr(value).lower() if kind is bool else repr(value)
            return f"{name} {text}" if len(text) <= 40 else name
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def expect(kind: type[T], name: str) -> Callable[[object], T]:
    """A checker accepting only values of type `kind`, called `name` in its message."""

    def check(value: object) -> T:
        # bool is an int in Python but not in TOML: `max_recipients = true` is an error.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"expected {name}, not {show(value)}")
        return value

    return check


def optional_next_hop(value: object) -> NextHop | None:
    text = expect(str, "a string")(value)
    return next_hop(text) if text else None


def restriction(text: str) -> str:
    if text not in RESTRICTIONS:
        raise ValueError(f"unknown restriction {text!r}; known: {', '.join(RESTRICTIONS)}")
    return text


def mechanism(text: str) -> str:
    name = text.upper()
    if name not in MECHANISMS:
        raise ValueError(f"unknown SASL mechanism {text!r}; known: {', '.join(MECHANISMS)}")
    return name


def milter(base: pathlib.Path) -> Callable[[str], HostPort | pathlib.Path]:
    """``inet:host:port`` or ``unix:/path``; a relative path resolves against `base`."""

    def check(text: str) -> HostPort | pathlib.Path:
        kind, colon, rest = text.partition(":")
        if colon and kind == "inet":
            return listen_address(rest)
        if colon and kind == "unix" and rest:
            return base / rest
        raise ValueError(f"{text!r}: expected inet:host:port or unix:/path")

    return check


def _label(text: str) -> str:
    if not _LABEL.match(text.lower()):
        raise ValueError(f"{text!r} is not a DNS label (letters, digits, '-')")
    return text.lower()


def selector(value: object) -> str:
    return _label(expect(str, "a string")(value))


def delimiter(value: object) -> str:
    text = expect(str, "a string")(value)
    for char in text:
        # A delimiter must be a character that can appear in a dot-atom local part and
        # is not usually part of a user name (RFC 5322 §3.2.3 atext).
        if char.isalnum() or char in '@."\\ ()<>[]:;,' or char.isspace() or not char.isascii():
            raise ValueError(f'{char!r} cannot be a recipient delimiter (try "+" or "-")')
    return "".join(dict.fromkeys(text))


def show_address(address: HostPort) -> str:
    """How a listen address reads in a message: an IPv6 host in brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether a listen host accepts connections from this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
