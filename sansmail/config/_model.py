"""The result of reading a configuration: the frozen `Config` and its parts, the Literal
types of the enumerated keys, the fixed lists of services, restrictions and mechanisms,
`Problem` and `ConfigError`, and the embedded default file.

The defaults live twice, on purpose: as the attrs defaults below (what a `Config` built
in code gets) and as `DEFAULT_CONFIG_TOML` (what a user reads and copies). They sit in
one file so that a change to one is seen beside the other; the tests compare them.
"""

from __future__ import annotations

import ipaddress
import pathlib
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal

import attrs

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
StorageBackend = Literal["maildir", "postgresql"]
LogFormat = Literal["text", "json"]

#: Every service a ``[listen]`` table may name, in the order they are started.
SERVICES: Final = (
    "smtp",
    "submission",
    "submissions",
    "pop3",
    "pop3s",
    "imap",
    "imaps",
    "managesieve",
    "metrics",
    "http",
)
#: The services this version can actually run; listeners for the others are accepted,
#: reported and skipped. Every one of CONTRACT.md's is built now; a service the contract
#: names before it is built leaves this set until then.
BUILT_SERVICES: Final = frozenset(SERVICES)

RESTRICTIONS: Final = (
    "permit_sasl_authenticated",
    "permit_mynetworks",
    "reject_unauth_destination",
    "reject_unlisted_recipient",
    "permit",
    "reject",
)
MECHANISMS: Final = ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "SCRAM-SHA-1")

#: Says what is wrong with a TLS certificate and key pair, or None when they load.
TLSChecker = Callable[[pathlib.Path, pathlib.Path], str | None]

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
processes = 1                           # server processes sharing the listeners (one per core)
log_format = "text"
# mail_owner = "sansmail"               # started as root: bind, then run as this user

# No [tls] table: a self-signed certificate is generated into data_dir on first start.

[listen]                                # loopback only, unprivileged ports
smtp = "127.0.0.1:2525"
submission = "127.0.0.1:2587"
submissions = "127.0.0.1:2465"
pop3 = "127.0.0.1:2110"
pop3s = "127.0.0.1:2995"
imap = "127.0.0.1:2143"
imaps = "127.0.0.1:2993"
managesieve = "127.0.0.1:2190"          # RFC 5804; STARTTLS offered
metrics = "127.0.0.1:2980"              # Prometheus text format at GET /metrics

[smtp]
max_message_size = 26214400
recipient_restrictions = [
    "permit_sasl_authenticated",
    "permit_mynetworks",
    "reject_unauth_destination",
]
auth_mechanisms = ["PLAIN", "LOGIN", "SCRAM-SHA-256"]
broken_sasl_auth_clients = false
reject_sender_login_mismatch = true     # submission: users send only as themselves
plaintext_auth = "loopback"
max_recipients = 1000
max_connections = 200
max_connections_per_ip = 20
command_timeout = "5m"
data_timeout = "10m"
max_invalid_commands = 20
shutdown_grace = "30s"
bare_lf = "normalize"

[pop3]
no_flag_updates = false                 # true: what RETR sent stays unread at QUIT

[auth]
cache_size = 10000                      # logins remembered, and as many wrong passwords; 0: none
cache_ttl = "1h"                        # a repeated login skips argon2 this long
cache_negative_ttl = "1h"               # a repeated wrong password likewise; 0: not remembered

[delivery]
relayhost = ""
transport = {}
tls = "may"
max_queue_lifetime = "5d"
delay_warning = "4h"
minimal_backoff = "5m"
maximal_backoff = "1h"
destination_concurrency_limit = 20
smtp_port = 25
relayhost_username = ""
mta_sts = true
mta_sts_port = 443

[dns]
nameservers = []

[antispam]
spf = "tag"
reverse_dns = "off"
dkim = "tag"
dmarc = "tag"
dnsbl = []
greylisting = false
greylist_delay = "5m"

[dkim]
selector = "sansmail"

[milter]
milters = []
default_action = "tempfail"

[sieve]
before = ""

[storage]
backend = "maildir"
dsn = ""
queue_lease = "1m"

[quota]
storage = 0

[limits]                                # what one client, user or connection may take
pop3_max_connections = 200              # simultaneous POP3 connections (pop3 and pop3s together)
pop3_max_connections_per_ip = 20
imap_max_connections = 1000             # simultaneous IMAP connections (imap and imaps together)
imap_max_connections_per_ip = 50
max_userip_connections = 10             # one user's IMAP (and POP3) sessions from one address
imap_max_line_length = 65536            # octets of an IMAP command line between literals
imap_max_command_size = 1048576         # octets of any IMAP command but APPEND, literals included
commands_per_second = 1000              # per connection, every protocol, then paced; 0: none
client_message_rate = 100               # messages a minute from one client address; 0: none
client_recipient_rate = 1000            # recipients a minute from one client address; 0: none
user_message_rate = 100                 # messages a minute from one authenticated user; 0: none
user_recipient_rate = 1000              # recipients a minute from one authenticated user; 0: none
auth_max_failures = 10                  # failed logins from one address in auth_failure_window...
auth_failure_window = "10m"
auth_lockout = "10m"                    # ...then its logins are refused this long
"""

EMBEDDED_NAME: Final = "<embedded default>"
DEFAULT_MYNETWORKS: Final[tuple[IPNetwork, ...]] = (
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
    # On submission/submissions, an authenticated user may use only their own address
    # (and its +detail forms) as envelope sender (Postfix: reject_sender_login_mismatch).
    reject_sender_login_mismatch: bool = True
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
class POP3Config:
    # Dovecot's pop3_no_flag_updates: False marks the messages RETR sent \Seen at QUIT.
    no_flag_updates: bool = False


@attrs.frozen(kw_only=True)
class AuthConfig:
    # Dovecot's auth_cache_size, auth_cache_ttl and auth_cache_negative_ttl: a login
    # repeated with the same password within cache_ttl skips argon2
    # (sansmail.mail.authcache). cache_size counts entries (Dovecot counts octets), of
    # successes and, apart, of failures.
    cache_size: int = 10_000
    cache_ttl: int = 3600  # seconds
    cache_negative_ttl: int = 3600


@attrs.frozen(kw_only=True)
class DeliveryConfig:
    relayhost: NextHop | None = None
    transport: Mapping[str, NextHop] = attrs.field(factory=lambda: types.MappingProxyType({}))
    tls: OutboundTLS = "may"
    max_queue_lifetime: int = 5 * 86400  # seconds
    # Postfix's delay_warning_time; 0 sends none.
    delay_warning: int = 4 * 3600
    # Postfix's minimal_backoff_time / maximal_backoff_time: the retry spacing doubles
    # from one to the other.
    minimal_backoff: int = 300
    maximal_backoff: int = 3600
    # Postfix's default_destination_concurrency_limit.
    destination_concurrency_limit: int = 20
    # The port of MX hosts, implicit MX hosts and address literals. Always 25 on the
    # Internet; tests and odd networks point it elsewhere.
    smtp_port: int = 25
    # AUTH at the relayhost (Postfix: smtp_sasl_password_maps). The password lives in
    # its own file so the config can be world-readable.
    relayhost_username: str = ""
    relayhost_password_file: pathlib.Path | None = None
    # Trust anchors for tls = "verify" (Postfix: smtp_tls_CAfile); None: the system's.
    tls_ca_file: pathlib.Path | None = None
    # MTA-STS (RFC 8461): mail to a domain whose policy is in enforce mode goes only to
    # the MX hosts it lists, over TLS with a certificate valid for the host. Also the
    # trust anchors of the policy fetch (https://mta-sts.<domain>/) are tls_ca_file.
    mta_sts: bool = True
    # The port of the policy host. Always 443 on the Internet; tests point it elsewhere.
    mta_sts_port: int = 443


@attrs.frozen(kw_only=True)
class DNSConfig:
    nameservers: tuple[HostPort, ...] = ()  # empty: the system resolver


@attrs.frozen(kw_only=True)
class AntispamConfig:
    spf: SPFMode = "tag"
    reverse_dns: ReverseDNSMode = "off"
    dkim: DKIMMode = "tag"
    dmarc: DMARCMode = "tag"
    dnsbl: tuple[str, ...] = ()  # zones queried for the client address
    greylisting: bool = False
    greylist_delay: int = 300  # seconds


@attrs.frozen(kw_only=True)
class DKIMConfig:
    selector: str = "sansmail"


@attrs.frozen(kw_only=True)
class MilterConfig:
    # ("host", port) for "inet:host:port", an absolute Path for "unix:/path"
    milters: tuple[HostPort | pathlib.Path, ...] = ()
    default_action: MilterAction = "tempfail"


@attrs.frozen(kw_only=True)
class SieveConfig:
    # A site script run before each user's own (Pigeonhole's sieve_before).
    before: pathlib.Path | None = None


@attrs.frozen(kw_only=True)
class StorageConfig:
    backend: StorageBackend = "maildir"
    # backend = "postgresql": a libpq URI. It may hold a password: never print it.
    dsn: str = attrs.field(default="", repr=False)
    # backend = "postgresql": how long a node's claim on a queued message lasts unless
    # renewed (every third of it, while the attempt runs); a node that died gives its
    # messages up to the other nodes when its claims end.
    queue_lease: int = 60  # seconds


@attrs.frozen(kw_only=True)
class QuotaConfig:
    storage: int = 0  # octets per user; 0: no limit


@attrs.frozen(kw_only=True)
class LimitsConfig:
    """What one client, user or connection may take (README "Security and limits").
    Clients in mynetworks are exempt from the rates and from the auth lockout, as
    Postfix's smtpd_client_event_limit_exceptions defaults to $mynetworks; the
    connection caps count them like everyone."""

    # Connection caps per service family; SMTP's are smtp.max_connections(_per_ip).
    pop3_max_connections: int = 200
    pop3_max_connections_per_ip: int = 20
    imap_max_connections: int = 1000
    imap_max_connections_per_ip: int = 50
    # Dovecot's mail_max_userip_connections: sessions of one user from one address,
    # counted per protocol (IMAP apart from POP3).
    max_userip_connections: int = 10
    # The IMAP core's limits (sansmail.imap.Config); APPEND's is smtp.max_message_size.
    imap_max_line_length: int = 65536
    imap_max_command_size: int = 1_048_576
    # Per connection, every protocol; a client faster than this is read more slowly.
    commands_per_second: int = 1000
    # Postfix's anvil (smtpd_client_message_rate_limit, smtpd_client_recipient_rate_limit),
    # per minute; the user_ ones count per authenticated user. 0: no limit.
    client_message_rate: int = 100
    client_recipient_rate: int = 1000
    user_message_rate: int = 100
    user_recipient_rate: int = 1000
    # Logins: auth_max_failures failures from one address (or IPv6 /48) within
    # auth_failure_window lock it out for auth_lockout (sansmail.mail.auth).
    auth_max_failures: int = 10
    auth_failure_window: int = 600  # seconds
    auth_lockout: int = 600


@attrs.frozen(kw_only=True)
class Config:
    """A validated configuration. Paths are absolute; domains are canonical (lower case,
    IDNs as A-labels); durations are seconds."""

    source: pathlib.Path | None  # the file, or None for the embedded default
    hostname: str
    domains: tuple[str, ...] = ("localhost",)
    data_dir: pathlib.Path
    mynetworks: tuple[IPNetwork, ...] = DEFAULT_MYNETWORKS
    aliases: pathlib.Path | None = None
    recipient_delimiter: str = "+"
    # Processes that share the listening sockets (Postfix and Dovecot scale the same way:
    # several smtpd/imap processes). Connection caps count the connections of all of them.
    processes: int = 1
    # Started as root: the user to run as after binding (None: stay as started).
    mail_owner: str | None = None
    log_format: LogFormat = "text"
    tls: TLSConfig = TLSConfig()
    # service -> ((host, port), ...), in SERVICES order; "[::]:25" -> ("::", 25)
    listen: Mapping[str, tuple[HostPort, ...]] = attrs.field(
        factory=lambda: types.MappingProxyType({})
    )
    smtp: SMTPConfig = SMTPConfig()
    pop3: POP3Config = POP3Config()
    auth: AuthConfig = AuthConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    dns: DNSConfig = DNSConfig()
    antispam: AntispamConfig = AntispamConfig()
    dkim: DKIMConfig = DKIMConfig()
    milter: MilterConfig = MilterConfig()
    sieve: SieveConfig = SieveConfig()
    storage: StorageConfig = StorageConfig()
    quota: QuotaConfig = QuotaConfig()
    limits: LimitsConfig = LimitsConfig()

    @property
    def source_name(self) -> str:
        """The file name for messages, or ``<embedded default>``."""
        return EMBEDDED_NAME if self.source is None else str(self.source)


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
