"""The configuration file: TOML text in, a frozen, validated `Config` out.

The keys and their meaning are fixed by CONTRACT.md (the outside of sansmail). Besides
those, the ``[smtp]`` table takes these keys of ours:

- ``max_recipients = 1000``: RCPT commands per transaction (Postfix smtpd_recipient_limit;
  RFC 5321 §4.5.3.1.8 asks servers to accept at least 100).
- ``max_connections = 200``: simultaneous SMTP connections, all clients together.
- ``max_connections_per_ip = 20``: simultaneous connections from one address; more are
  answered ``421 4.7.0``.
- ``command_timeout = "5m"``: idle time allowed between commands (RFC 5321 §4.5.3.2.7).
- ``data_timeout = "10m"``: time allowed for the whole DATA content (RFC 5321 §4.5.3.2.6).
- ``max_invalid_commands = 20``: syntax errors and unknown commands before the session is
  closed (Postfix smtpd_hard_error_limit).
- ``shutdown_grace = "30s"``: how long SIGTERM waits for transactions in flight.
- ``bare_lf = "normalize"``: a bare LF in message content is ``"normalize"``-d to CRLF, or
  the message is refused (``"reject"``).

Durations are strings with a unit (``"30s"``, ``"5m"``, ``"2h"``, ``"5d"``, ``"1w"``) or
integers (seconds). Sizes are integers (octets). Every key is optional; absent keys take the
defaults shown in `DEFAULT_CONFIG_TOML`, except ``hostname`` (the machine's FQDN, given by the
caller), ``data_dir`` (``sansmail-data`` beside the file) and ``[listen]`` (a service that is
absent is not started).

Choices of ours where CONTRACT.md is silent:

- ``recipient_delimiter`` may hold several characters, each one a delimiter (as in Postfix
  2.11+); letters, digits, ``@``, ``.``, quotes, brackets and spaces are refused.
- A listen port of 0 lets the system choose a free port (handy in tests); a listen host may
  be a name (``localhost:2525``); the same address twice in ``[listen]`` is an error.
- A relay host or transport next hop written ``[host]:port`` is used as is; written
  ``host:port`` its MX records are looked up first, as in Postfix; the port defaults to 25.
  Both become a `NextHop`.
- Name servers must be IP addresses; the port defaults to 53.
- ``mynetworks`` entries with host bits set (``10.0.0.1/8``) are refused with a hint.
- ``recipient_restrictions`` that would make an open relay (no ``reject_unauth_destination``
  or ``reject`` before the first ``permit``; an exhausted list permits) are refused, as
  Postfix refuses to start with them.
- Paths may start with ``~``; ``aliases``, ``tls.cert`` and ``tls.key`` must exist, and the
  certificate and key must load together.

How errors are found: `tomllib` gives values but no positions, so `_KeyLines` scans the text
once for ``[table]`` headers and ``key = value`` lines and remembers the line of each
dotted key. Validation walks the parsed tables, collecting every problem (not just the
first) with the line of the key, the nearest enclosing key when the exact one was not
found (an entry of an inline table, an item of a list). A file with problems raises
`ConfigError` carrying all of them; one without returns a `Config` that needs no further
checking by its users.

Reading the file is the only I/O here (and, for ``[tls]``, loading the certificate and key
to prove they match); nothing here opens a socket.
"""

from __future__ import annotations

import difflib
import ipaddress
import pathlib
import re
import ssl
import tomllib
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal, TypeVar, cast, get_args

import attrs

from sansmail.address import AddressError, canonical_domain

__all__ = [
    "BUILT_SERVICES",
    "DEFAULT_CONFIG_TOML",
    "MECHANISMS",
    "RESTRICTIONS",
    "SERVICES",
    "AntispamConfig",
    "BareLF",
    "Config",
    "ConfigError",
    "DKIMConfig",
    "DKIMMode",
    "DMARCMode",
    "DNSConfig",
    "DeliveryConfig",
    "HostPort",
    "MilterAction",
    "MilterConfig",
    "NextHop",
    "OutboundTLS",
    "PlaintextAuth",
    "Problem",
    "ReverseDNSMode",
    "SMTPConfig",
    "SPFMode",
    "TLSConfig",
    "load_config",
    "parse_config",
    "warnings",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HostPort = tuple[str, int]
PlaintextAuth = Literal["never", "loopback", "always"]
BareLF = Literal["normalize", "reject"]
OutboundTLS = Literal["none", "may", "encrypt", "verify"]
SPFMode = Literal["off", "tag", "reject"]
ReverseDNSMode = Literal["off", "tag", "reject"]
DKIMMode = Literal["off", "tag"]
DMARCMode = Literal["off", "tag", "enforce"]
MilterAction = Literal["tempfail", "accept", "reject"]

#: Every service a ``[listen]`` table may name, in the order they are started.
SERVICES: Final = ("smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps")
#: The services this version can actually run; listeners for the others are skipped.
BUILT_SERVICES: Final = frozenset({"smtp"})

RESTRICTIONS: Final = (
    "permit_sasl_authenticated",
    "permit_mynetworks",
    "reject_unauth_destination",
    "reject_unlisted_recipient",
    "permit",
    "reject",
)
MECHANISMS: Final = ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "SCRAM-SHA-1")

#: The configuration used when no file is given and ./sansmail.toml does not exist. It is
#: parsed by the same code as a user's file; ``hostname`` is left out so that the caller's
#: default (the machine's FQDN) applies.
DEFAULT_CONFIG_TOML: Final = """\
# sansmail's embedded default configuration.
# hostname defaults to the machine's fully qualified domain name.
domains = ["localhost"]
data_dir = "./sansmail-data"            # relative to the current directory
mynetworks = ["127.0.0.0/8", "::1/128"]
recipient_delimiter = "+"

# No [tls] table: a self-signed certificate is generated into data_dir on first start.

[listen]                                # loopback only, unprivileged ports
smtp = "127.0.0.1:2525"
submission = "127.0.0.1:2587"
submissions = "127.0.0.1:2465"
pop3 = "127.0.0.1:2110"
pop3s = "127.0.0.1:2995"
imap = "127.0.0.1:2143"
imaps = "127.0.0.1:2993"

[smtp]
max_message_size = 26214400
recipient_restrictions = [
    "permit_sasl_authenticated",
    "permit_mynetworks",
    "reject_unauth_destination",
]
auth_mechanisms = ["PLAIN", "LOGIN", "SCRAM-SHA-256"]
broken_sasl_auth_clients = false
plaintext_auth = "loopback"
max_recipients = 1000
max_connections = 200
max_connections_per_ip = 20
command_timeout = "5m"
data_timeout = "10m"
max_invalid_commands = 20
shutdown_grace = "30s"
bare_lf = "normalize"

[delivery]
relayhost = ""
transport = {}
tls = "may"
max_queue_lifetime = "5d"

[dns]
nameservers = []

[antispam]
spf = "tag"
reverse_dns = "off"
dkim = "tag"
dmarc = "tag"

[dkim]
selector = "sansmail"

[milter]
milters = []
default_action = "tempfail"
"""

_EMBEDDED_NAME: Final = "<embedded default>"
_DEFAULT_MYNETWORKS: Final[tuple[IPNetwork, ...]] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)


# --- the result -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class NextHop:
    """Where to send mail instead of the recipient domain's MX: `host` and `port`, and
    whether to look up `host`'s MX records first (Postfix: ``[host]`` turns that off, and
    an IP address never has any)."""

    host: str
    port: int = 25
    mx_lookup: bool = False

    def __str__(self) -> str:
        host = self.host if self.mx_lookup else f"[{self.host}]"
        return f"{host}:{self.port}"


@attrs.frozen(kw_only=True)
class TLSConfig:
    """The server certificate; both None: generate a self-signed one into data_dir."""

    cert: pathlib.Path | None = None
    key: pathlib.Path | None = None


@attrs.frozen(kw_only=True)
class SMTPConfig:
    max_message_size: int = 26214400
    recipient_restrictions: tuple[str, ...] = (
        "permit_sasl_authenticated",
        "permit_mynetworks",
        "reject_unauth_destination",
    )
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN", "SCRAM-SHA-256")
    broken_sasl_auth_clients: bool = False
    plaintext_auth: PlaintextAuth = "loopback"
    max_recipients: int = 1000
    max_connections: int = 200
    max_connections_per_ip: int = 20
    command_timeout: int = 300  # seconds
    data_timeout: int = 600
    max_invalid_commands: int = 20
    shutdown_grace: int = 30
    bare_lf: BareLF = "normalize"


@attrs.frozen(kw_only=True)
class DeliveryConfig:
    relayhost: NextHop | None = None
    transport: Mapping[str, NextHop] = attrs.field(factory=lambda: types.MappingProxyType({}))
    tls: OutboundTLS = "may"
    max_queue_lifetime: int = 5 * 86400  # seconds


@attrs.frozen(kw_only=True)
class DNSConfig:
    nameservers: tuple[HostPort, ...] = ()  # empty: the system resolver


@attrs.frozen(kw_only=True)
class AntispamConfig:
    spf: SPFMode = "tag"
    reverse_dns: ReverseDNSMode = "off"
    dkim: DKIMMode = "tag"
    dmarc: DMARCMode = "tag"


@attrs.frozen(kw_only=True)
class DKIMConfig:
    selector: str = "sansmail"


@attrs.frozen(kw_only=True)
class MilterConfig:
    # ("host", port) for "inet:host:port", an absolute Path for "unix:/path"
    milters: tuple[HostPort | pathlib.Path, ...] = ()
    default_action: MilterAction = "tempfail"


@attrs.frozen(kw_only=True)
class Config:
    """A validated configuration. Paths are absolute; domains are canonical (lower case,
    IDNs as A-labels); durations are seconds."""

    source: pathlib.Path | None  # the file, or None for the embedded default
    hostname: str
    domains: tuple[str, ...] = ("localhost",)
    data_dir: pathlib.Path
    mynetworks: tuple[IPNetwork, ...] = _DEFAULT_MYNETWORKS
    aliases: pathlib.Path | None = None
    recipient_delimiter: str = "+"
    tls: TLSConfig = TLSConfig()
    # service -> ((host, port), ...), in SERVICES order; "[::]:25" -> ("::", 25)
    listen: Mapping[str, tuple[HostPort, ...]] = attrs.field(
        factory=lambda: types.MappingProxyType({})
    )
    smtp: SMTPConfig = SMTPConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    dns: DNSConfig = DNSConfig()
    antispam: AntispamConfig = AntispamConfig()
    dkim: DKIMConfig = DKIMConfig()
    milter: MilterConfig = MilterConfig()

    @property
    def source_name(self) -> str:
        """The file name for messages, or ``<embedded default>``."""
        return _EMBEDDED_NAME if self.source is None else str(self.source)


@attrs.frozen
class Problem:
    """One thing wrong with a configuration; str() is ``file:line: key: message``."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` lists everything wrong with it."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --- finding the line of a key ----------------------------------------------------------

_BARE_KEY = r"[A-Za-z0-9_-]+"
_ONE_KEY = rf"(?:{_BARE_KEY}|\"(?:[^\"\\]|\\.)*\"|'[^']*')"
_DOTTED_KEY = rf"{_ONE_KEY}(?:\s*\.\s*{_ONE_KEY})*"
_TABLE_LINE = re.compile(rf"\s*\[\[?\s*({_DOTTED_KEY})\s*\]")
_KEY_LINE = re.compile(rf"\s*({_DOTTED_KEY})\s*=")
_KEY_PART = re.compile(_ONE_KEY)
_BARE_KEY_FULL = re.compile(rf"{_BARE_KEY}\Z")


def _split_dotted(text: str) -> tuple[str, ...]:
    parts = []
    for match in _KEY_PART.finditer(text):
        part = match.group()
        if part[0] in "\"'":
            # Let tomllib undo the quoting, escapes included, rather than reimplement it.
            part = tomllib.loads(f"k = {part}")["k"]
        parts.append(part)
    return tuple(parts)


class _KeyLines:
    """Line numbers of the keys of a TOML text, found by a line scan: good enough for
    ``[table]`` headers and ``key = value`` lines, which is how config files are written.
    Strings are followed across lines so that the text of a multi-line string is not
    taken for keys."""

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        open_quote: str | None = None
        # "\n" only, as tomllib counts lines; str.splitlines() also splits on \x0c etc.
        for number, line in enumerate(text.split("\n"), start=1):
            rest = line
            if open_quote is None:
                if match := _TABLE_LINE.match(line):
                    table = _split_dotted(match.group(1))
                    self._lines.setdefault(table, number)
                    continue
                if match := _KEY_LINE.match(line):
                    self._lines.setdefault(table + _split_dotted(match.group(1)), number)
                    rest = line[match.end() :]
            open_quote = _open_quote_after(rest, open_quote)

    def line_of(self, path: tuple[str, ...]) -> int | None:
        """The line of `path`, else of its nearest enclosing key that has one."""
        for end in range(len(path), 0, -1):
            if (line := self._lines.get(path[:end])) is not None:
                return line
        return None


def _open_quote_after(text: str, open_quote: str | None) -> str | None:
    """The multi-line string delimiter still open at the end of `text`, given the one
    open at its start (None: outside any string)."""
    i = 0
    while i < len(text):
        if open_quote is not None:
            if open_quote == '"""' and text[i] == "\\":
                i += 2  # an escape: \" does not close
            elif text.startswith(open_quote, i):
                open_quote = None
                i += 3
            else:
                i += 1
        elif text.startswith(('"""', "'''"), i):
            open_quote = text[i : i + 3]
            i += 3
        elif text[i] in "\"'":
            # A one-line string: skip to its end (escapes only in "basic" strings).
            quote, i = text[i], i + 1
            while i < len(text) and text[i] != quote:
                i += 2 if quote == '"' and text[i] == "\\" else 1
            i += 1
        elif text[i] == "#":
            break
        else:
            i += 1
    return open_quote


# --- value checkers: each returns the converted value or raises ValueError ---------------

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_DURATION = re.compile(r" *([0-9]+) *([smhdw]?) *\Z")
_UNIT_SECONDS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _canonical_domain(text: str) -> str:
    try:
        return canonical_domain(text)
    except AddressError as exc:
        raise ValueError(f"{text!r}: {exc}") from None


def _hostname(text: str) -> str:
    """A host name in LDH syntax (RFC 1123 §2.1), as an A-label string, lower case."""
    name = _canonical_domain(text)
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{text!r} is not a valid host name")
    return name


def _domain(text: str) -> str:
    name = _canonical_domain(text)
    if not name:
        raise ValueError("empty domain")
    return name


def _network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a network like 192.0.2.0/24 or 2001:db8::/32") from None
    raise ValueError(f"{text!r} has host bits set; did you mean {loose}?")


def _duration(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(
            f'expected a duration like "30s", "5m", "2h", "5d" or a number of seconds, '
            f"not {_show(value)}"
        )
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


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
        host = _hostname(host)
    return host, port, bracketed


def _listen_address(text: str) -> HostPort:
    host, port, _ = _split_host_port(text, None)
    return host, port


def _next_hop(text: str) -> NextHop:
    host, port, bracketed = _split_host_port(text, 25)
    if port == 0:
        raise ValueError(f"{text!r}: port 0 is not a destination")
    return NextHop(host=host, port=port, mx_lookup=not bracketed and not _is_ip(host))


def _nameserver(text: str) -> HostPort:
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


def _show(value: object) -> str:
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


# --- walking the tables -----------------------------------------------------------------

T = TypeVar("T")
S = TypeVar("S", bound=str)
# The allowed values of each enumerated key: the arguments of its field's Literal type.
_CHOICES: Final[Mapping[tuple[str, ...], tuple[str, ...]]] = {
    ("smtp", "plaintext_auth"): get_args(PlaintextAuth),
    ("smtp", "bare_lf"): get_args(BareLF),
    ("delivery", "tls"): get_args(OutboundTLS),
    ("antispam", "spf"): get_args(SPFMode),
    ("antispam", "reverse_dns"): get_args(ReverseDNSMode),
    ("antispam", "dkim"): get_args(DKIMMode),
    ("antispam", "dmarc"): get_args(DMARCMode),
    ("milter", "default_action"): get_args(MilterAction),
}
_TOP_KEYS: Final = (
    "hostname",
    "domains",
    "data_dir",
    "mynetworks",
    "aliases",
    "recipient_delimiter",
)
_TABLE_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "tls": ("cert", "key"),
    "listen": SERVICES,
    "smtp": tuple(attrs.fields_dict(SMTPConfig)),
    "delivery": tuple(attrs.fields_dict(DeliveryConfig)),
    "dns": tuple(attrs.fields_dict(DNSConfig)),
    "antispam": tuple(attrs.fields_dict(AntispamConfig)),
    "dkim": tuple(attrs.fields_dict(DKIMConfig)),
    "milter": tuple(attrs.fields_dict(MilterConfig)),
}


class _Table:
    """One TOML table being read: typed getters that record problems and fall back to
    the default, so that reading goes on and every problem is found in one pass."""

    def __init__(
        self,
        reader: _Reader,
        path: tuple[str, ...],
        data: Mapping[str, object],
        known: Sequence[str],
    ) -> None:
        self.reader = reader
        self.path = path
        self.data = data
        self.known = known

    def problem(self, key: str, message: str) -> None:
        self.reader.problem((*self.path, key), message)

    def get(self, key: str, check: Callable[[object], T], default: T) -> T:
        if key not in self.data:
            return default
        try:
            return check(self.data[key])
        except ValueError as exc:
            self.problem(key, str(exc))
            return default

    def string(self, key: str, default: str) -> str:
        return self.get(key, _expect(str, "a string"), default)

    def choice(self, key: str, default: S) -> S:
        """One of the values of the Literal type that `default` belongs to."""
        choices = _CHOICES[(*self.path, key)]

        def check(value: object) -> S:
            text = _expect(str, "a string")(value)
            if text not in choices:
                raise ValueError(f"{text!r} is not one of {_quoted(choices)}")
            return cast(S, text)

        return self.get(key, check, default)

    def integer(self, key: str, default: int, minimum: int) -> int:
        def check(value: object) -> int:
            number = _expect(int, "an integer")(value)
            if number < minimum:
                raise ValueError(f"must be at least {minimum}, not {number}")
            return number

        return self.get(key, check, default)

    def duration(self, key: str, default: int, minimum: int) -> int:
        def check(value: object) -> int:
            seconds = _duration(value)
            if seconds < minimum:
                raise ValueError(f"must be at least {minimum} second(s)")
            return seconds

        return self.get(key, check, default)

    def items(
        self, key: str, check: Callable[[str], T], default: tuple[T, ...], *, single: bool = False
    ) -> tuple[T, ...]:
        """A list of strings, each converted by `check`; bad items are each reported.
        With `single`, one string is taken as a list of one."""
        if key not in self.data:
            return default
        value = self.data[key]
        if single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            expected = "a string or an array of strings" if single else "an array of strings"
            self.problem(key, f"expected {expected}, not {_show(value)}")
            return default
        result = []
        for item in value:
            try:
                result.append(check(_expect(str, "a string")(item)))
            except ValueError as exc:
                self.problem(key, str(exc))
        return tuple(result)

    def path_value(self, key: str, default: pathlib.Path | None) -> pathlib.Path | None:
        """A path relative to the config file's folder; "" means none."""
        text = self.string(key, "")
        if not text:
            return default if key not in self.data else None
        if "\0" in text:
            self.problem(key, "a path cannot contain a NUL character")
            return default
        try:
            path = pathlib.Path(text).expanduser()
        except RuntimeError:  # "~nosuchuser/..."
            self.problem(key, f"{text!r}: cannot find the home directory of {text.split('/')[0]}")
            return default
        return self.reader.base / path

    def table(self, key: str) -> _Table:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            self.problem(key, f"expected a table ([{key}]), not {_show(value)}")
            value = {}
        return _Table(self.reader, (*self.path, key), value, _TABLE_KEYS.get(key, ()))

    def check_unknown(self) -> None:
        for key in self.data:
            if key not in self.known and not (not self.path and key in _TABLE_KEYS):
                self.problem(key, f"unknown key{self._hint(key)}")

    def _hint(self, key: str) -> str:
        known = [*self.known, *(_TABLE_KEYS if not self.path else ())]
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
        if close:
            return f"; did you mean {close[0]!r}?"
        if self.path and key in _TOP_KEYS:
            # The classic TOML slip: a top-level key written below a [table] header.
            return f"; {key!r} belongs at the top, before the first [table] header"
        for table, keys in _TABLE_KEYS.items():
            if key in keys and (table,) != self.path:
                return f"; {key!r} belongs in the [{table}] table"
        return ""


def _expect(kind: type[T], name: str) -> Callable[[object], T]:
    def check(value: object) -> T:
        # bool is an int in Python but not in TOML: `max_recipients = true` is an error.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"expected {name}, not {_show(value)}")
        return value

    return check


def _quoted(choices: Sequence[str]) -> str:
    return ", ".join(f'"{choice}"' for choice in choices)


class _Reader:
    def __init__(self, file: str, lines: _KeyLines, base: pathlib.Path) -> None:
        self.file = file
        self.lines = lines
        self.base = base
        self.problems: list[Problem] = []

    def problem(self, path: tuple[str, ...], message: str) -> None:
        line = self.lines.line_of(path)
        key = ".".join(part if _BARE_KEY_FULL.match(part) else f'"{part}"' for part in path)
        self.problems.append(Problem(self.file, line, key, message))


# --- the sections ------------------------------------------------------------------------


def _read_tls(table: _Table) -> TLSConfig:
    cert = table.path_value("cert", None)
    key = table.path_value("key", None)
    if (cert is None) != (key is None):
        given, missing = ("cert", "key") if key is None else ("key", "cert")
        table.problem(given, f"{missing} is missing: cert and key go together (or neither)")
        return TLSConfig()
    if cert is None or key is None:
        return TLSConfig()
    ok = True
    for name, path in (("cert", cert), ("key", key)):
        if not path.is_file():
            table.problem(name, f"{path}: no such file")
            ok = False
    if ok:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            table.problem("cert", f"cannot load {cert} with key {key}: {exc}")
    return TLSConfig(cert=cert, key=key)


def _read_listen(table: _Table) -> Mapping[str, tuple[HostPort, ...]]:
    listen: dict[str, tuple[HostPort, ...]] = {}
    owner: dict[HostPort, str] = {}
    for service in SERVICES:
        if service not in table.data:
            continue
        addresses = table.items(service, _listen_address, (), single=True)
        for address in addresses:
            other = owner.setdefault(address, service)
            if other != service and address[1] != 0:
                table.problem(service, f"{_show_address(address)} is also used by {other}")
        if addresses:
            listen[service] = tuple(dict.fromkeys(addresses))
    return types.MappingProxyType(listen)


def _show_address(address: HostPort) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _read_smtp(table: _Table) -> SMTPConfig:
    d = SMTPConfig()
    before = len(table.reader.problems)
    restrictions = table.items("recipient_restrictions", _restriction, d.recipient_restrictions)
    valid = len(table.reader.problems) == before
    if "recipient_restrictions" in table.data and valid and _is_open_relay(restrictions):
        table.problem(
            "recipient_restrictions",
            "this would make an open relay: reject_unauth_destination (or reject) must be "
            'in the list, before any "permit"',
        )
    mechanisms = table.items("auth_mechanisms", _mechanism, d.auth_mechanisms)
    return SMTPConfig(
        max_message_size=table.integer("max_message_size", d.max_message_size, 1),
        recipient_restrictions=restrictions,
        auth_mechanisms=tuple(dict.fromkeys(mechanisms)),
        broken_sasl_auth_clients=table.get(
            "broken_sasl_auth_clients", _expect(bool, "true or false"), False
        ),
        plaintext_auth=table.choice("plaintext_auth", d.plaintext_auth),
        max_recipients=table.integer("max_recipients", d.max_recipients, 1),
        max_connections=table.integer("max_connections", d.max_connections, 1),
        max_connections_per_ip=table.integer("max_connections_per_ip", d.max_connections_per_ip, 1),
        command_timeout=table.duration("command_timeout", d.command_timeout, 1),
        data_timeout=table.duration("data_timeout", d.data_timeout, 1),
        max_invalid_commands=table.integer("max_invalid_commands", d.max_invalid_commands, 1),
        shutdown_grace=table.duration("shutdown_grace", d.shutdown_grace, 0),
        bare_lf=table.choice("bare_lf", d.bare_lf),
    )


def _restriction(text: str) -> str:
    if text not in RESTRICTIONS:
        raise ValueError(f"unknown restriction {text!r}; known: {', '.join(RESTRICTIONS)}")
    return text


def _is_open_relay(restrictions: Sequence[str]) -> bool:
    # The list is evaluated in order and an exhausted list permits (as in Postfix), so
    # relaying is closed only if a rule refusing foreign destinations comes before any
    # unconditional permit.
    for rule in restrictions:
        if rule in ("reject_unauth_destination", "reject"):
            return False
        if rule == "permit":
            return True
    return True


def _mechanism(text: str) -> str:
    name = text.upper()
    if name not in MECHANISMS:
        raise ValueError(f"unknown SASL mechanism {text!r}; known: {', '.join(MECHANISMS)}")
    return name


def _read_delivery(table: _Table) -> DeliveryConfig:
    d = DeliveryConfig()
    relayhost = table.get("relayhost", _optional_next_hop, None)
    transport: dict[str, NextHop] = {}
    routes: dict[str, object] = table.get(
        "transport", _expect(dict, "a table of domain = host:port"), {}
    )
    for domain, hop in routes.items():
        key = ("transport", str(domain))
        try:
            transport[_domain(domain)] = _next_hop(_expect(str, "a string")(hop))
        except ValueError as exc:
            table.reader.problem((*table.path, *key), str(exc))
    return DeliveryConfig(
        relayhost=relayhost,
        transport=types.MappingProxyType(transport),
        tls=table.choice("tls", d.tls),
        max_queue_lifetime=table.duration("max_queue_lifetime", d.max_queue_lifetime, 0),
    )


def _optional_next_hop(value: object) -> NextHop | None:
    text = _expect(str, "a string")(value)
    return _next_hop(text) if text else None


def _milter(reader: _Reader) -> Callable[[str], HostPort | pathlib.Path]:
    def check(text: str) -> HostPort | pathlib.Path:
        kind, colon, rest = text.partition(":")
        if colon and kind == "inet":
            return _listen_address(rest)
        if colon and kind == "unix" and rest:
            return reader.base / rest
        raise ValueError(f"{text!r}: expected inet:host:port or unix:/path")

    return check


def _label(text: str) -> str:
    if not _LABEL.match(text.lower()):
        raise ValueError(f"{text!r} is not a DNS label (letters, digits, '-')")
    return text.lower()


def _read(text: str, reader: _Reader, default_hostname: str) -> Config | None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"at line (\d+)", str(exc))
        # "at end of document" is the last line.
        line = int(match.group(1)) if match else text.rstrip("\n").count("\n") + 1
        reader.problems.append(Problem(reader.file, line, "", f"invalid TOML: {exc}"))
        return None
    top = _Table(reader, (), data, _TOP_KEYS)
    top.check_unknown()
    for name in _TABLE_KEYS:
        if isinstance(data.get(name), dict):
            top.table(name).check_unknown()

    domains = top.items("domains", _domain, ("localhost",))
    milter = top.table("milter")
    return Config(
        source=None,
        hostname=top.get(
            "hostname", lambda v: _hostname(_expect(str, "a string")(v)), default_hostname
        ),
        domains=tuple(dict.fromkeys(domains)),
        data_dir=top.path_value("data_dir", None) or reader.base / "sansmail-data",
        mynetworks=top.items("mynetworks", _network, _DEFAULT_MYNETWORKS),
        aliases=_existing(top, "aliases"),
        recipient_delimiter=top.get("recipient_delimiter", _delimiter, "+"),
        tls=_read_tls(top.table("tls")),
        listen=_read_listen(top.table("listen")),
        smtp=_read_smtp(top.table("smtp")),
        delivery=_read_delivery(top.table("delivery")),
        dns=DNSConfig(nameservers=top.table("dns").items("nameservers", _nameserver, ())),
        antispam=_read_antispam(top.table("antispam")),
        dkim=DKIMConfig(selector=top.table("dkim").get("selector", _selector, "sansmail")),
        milter=MilterConfig(
            milters=milter.items("milters", _milter(reader), ()),
            default_action=milter.choice("default_action", MilterConfig().default_action),
        ),
    )


def _selector(value: object) -> str:
    return _label(_expect(str, "a string")(value))


def _delimiter(value: object) -> str:
    text = _expect(str, "a string")(value)
    for char in text:
        # A delimiter must be a character that can appear in a dot-atom local part and
        # is not usually part of a user name (RFC 5322 §3.2.3 atext).
        if char.isalnum() or char in '@."\\ ()<>[]:;,' or char.isspace() or not char.isascii():
            raise ValueError(f'{char!r} cannot be a recipient delimiter (try "+" or "-")')
    return "".join(dict.fromkeys(text))


def _existing(table: _Table, key: str) -> pathlib.Path | None:
    path = table.path_value(key, None)
    if path is not None and not path.is_file():
        table.problem(key, f"{path}: no such file")
    return path


def _read_antispam(table: _Table) -> AntispamConfig:
    d = AntispamConfig()
    return AntispamConfig(
        spf=table.choice("spf", d.spf),
        reverse_dns=table.choice("reverse_dns", d.reverse_dns),
        dkim=table.choice("dkim", d.dkim),
        dmarc=table.choice("dmarc", d.dmarc),
    )


# --- the front door ---------------------------------------------------------------------


def parse_config(text: str, *, source: pathlib.Path | None, default_hostname: str) -> Config:
    """Validate `text`, read from `source` (None: the embedded default), into a `Config`.

    Relative paths resolve against `source`'s folder, or the current directory when
    `source` is None. `default_hostname` applies when the text has no ``hostname``.
    Raises `ConfigError` listing every problem found.
    """
    file = _EMBEDDED_NAME if source is None else str(source)
    base = pathlib.Path.cwd() if source is None else source.absolute().parent
    reader = _Reader(file, _KeyLines(text), base)
    config = _read(text, reader, default_hostname)
    if reader.problems or config is None:
        # Found table by table; read in file order.
        raise ConfigError(sorted(reader.problems, key=lambda p: p.line or 0))
    return attrs.evolve(config, source=None if source is None else source.absolute())


def load_config(path: pathlib.Path | None, *, default_hostname: str) -> Config:
    """Read and validate the config file at `path`.

    None means ``./sansmail.toml`` when it exists, else `DEFAULT_CONFIG_TOML`. A file that
    cannot be read is reported as a `ConfigError` like any other problem.
    """
    if path is None:
        candidate = pathlib.Path("sansmail.toml")
        if not candidate.is_file():
            return parse_config(DEFAULT_CONFIG_TOML, source=None, default_hostname=default_hostname)
        path = candidate
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Problem(str(path), None, "", f"not UTF-8 text ({exc.reason})")]
        ) from None
    except OSError as exc:
        raise ConfigError([Problem(str(path), None, "", f"cannot read: {exc.strerror}")]) from None
    except ValueError as exc:  # a NUL in the path
        raise ConfigError([Problem(repr(str(path)), None, "", f"cannot read: {exc}")]) from None
    return parse_config(text, source=path, default_hostname=default_hostname)


def warnings(config: Config) -> list[str]:
    """Things worth telling the operator that do not stop the server from running."""
    found = []
    where = config.source_name
    if not config.listen:
        found.append(f"{where}: listen: no listeners: serve will do nothing")
    skipped = [service for service in config.listen if service not in BUILT_SERVICES]
    if skipped:
        found.append(
            f"{where}: listen: {', '.join(skipped)} not built yet in this version; "
            f"{'it' if len(skipped) == 1 else 'they'} will be skipped"
        )
    if not config.domains:
        found.append(f"{where}: domains: empty: no mail is delivered locally")
    if config.aliases is not None:
        found.append(f"{where}: aliases: aliases are not supported yet; the file is ignored")
    checks = {
        "spf": config.antispam.spf,
        "reverse_dns": config.antispam.reverse_dns,
        "dkim": config.antispam.dkim,
        "dmarc": config.antispam.dmarc,
    }
    active = [name for name, mode in checks.items() if mode != "off"]
    if active:
        found.append(
            f"{where}: antispam: {', '.join(active)} checks are not built yet; "
            "nothing is tagged or rejected"
        )
    if config.milter.milters:
        found.append(f"{where}: milter: milters are not supported yet; none is called")
    if config.smtp.max_recipients < 100:
        found.append(
            f"{where}: smtp.max_recipients: below 100, the minimum RFC 5321 §4.5.3.1.8 "
            "asks servers to accept"
        )
    if config.smtp.max_connections_per_ip > config.smtp.max_connections:
        found.append(
            f"{where}: smtp.max_connections_per_ip: larger than max_connections, so it "
            "never applies"
        )
    if config.smtp.plaintext_auth == "always":
        exposed = [
            _show_address(address)
            for addresses in config.listen.values()
            for address in addresses
            if not _is_loopback(address[0])
        ]
        if exposed:
            found.append(
                f'{where}: smtp.plaintext_auth: "always" lets passwords cross the network '
                f"in clear on {', '.join(exposed)}"
            )
    return found


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
