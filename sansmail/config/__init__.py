"""The configuration file: TOML text in, a frozen, validated `Config` out, with every
problem as file:line. It reads the file it is given and nothing else; it decides no mail.

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

And an ``[auth]`` table of ours, for every protocol's logins (Dovecot's auth cache,
`sansmail.mail.authcache`):

- ``cache_size = 10000``: logins remembered, and apart as many wrong passwords; 0 turns the
  cache off (at most 1,000,000).
- ``cache_ttl = "1h"``: a login repeated with the same password within this time skips
  argon2 (Dovecot auth_cache_ttl); a password change or deletion ends it at once.
- ``cache_negative_ttl = "1h"``: a wrong password repeated within this time is refused
  without argon2, still delayed, counted and logged as before; 0 turns that off.

And a ``[limits]`` table of ours: what one client, user or connection may take (connection
caps of POP3 and IMAP, one user's sessions per address, IMAP line and command sizes,
commands per second, messages and recipients per minute per client address and per
authenticated user, the login lockout). `LimitsConfig` lists the keys; their defaults are
in `DEFAULT_CONFIG_TOML`. 0 turns a rate off; mynetworks are exempt from the rates, the
pacing and the lockout.

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
- Paths may start with ``~``; ``aliases``, ``tls.cert``, ``tls.key`` and ``sieve.before``
  must exist, and the certificate and key must load together.
- Sizes (``quota.storage``) are integers (octets) or strings with a binary unit:
  ``"500M"``, ``"10G"`` (K, M, G, T are powers of 1024, as in Dovecot).
- ``mail_owner`` is a user name (letters, digits, ``_ . -``, at most 32, not starting
  with a digit or ``-``); ``""`` means none. ``antispam.dnsbl`` zones are host names.
- ``storage.backend = "postgresql"`` needs ``storage.dsn``, a ``postgresql://`` URI; a
  dsn is never quoted in a message, since it may hold a password.

Keys for features not built yet (``[storage]``) are read and checked like the others, and
`not_in_force` lists, one line each, those that ask for something this version does not
do yet (see `_unbuilt`).

Every problem in a file is reported, not just the first, each with its line: a file with
problems raises `ConfigError` carrying all of them; one without returns a `Config` that
needs no further checking by its users.

The modules: `_model` (the result classes, the fixed lists, the embedded default),
`_lines` (the line of a key in the text), `_values` (one checker per kind of value),
`_tables` (reading a table, collecting problems), `_parse` (the sections and the front
door), `_unbuilt` (what is accepted but not in force yet).
"""

from sansmail.config._model import (
    BUILT_SERVICES,
    DEFAULT_CONFIG_TOML,
    MECHANISMS,
    RESTRICTIONS,
    SERVICES,
    AntispamConfig,
    BareLF,
    Config,
    ConfigError,
    DeliveryConfig,
    DKIMConfig,
    DKIMMode,
    DMARCMode,
    DNSConfig,
    HostPort,
    LimitsConfig,
    LogFormat,
    MilterAction,
    MilterConfig,
    NextHop,
    OutboundTLS,
    PlaintextAuth,
    Problem,
    QuotaConfig,
    ReverseDNSMode,
    SieveConfig,
    SMTPConfig,
    SPFMode,
    StorageBackend,
    StorageConfig,
    TLSConfig,
)
from sansmail.config._parse import load_config, parse_config, warnings
from sansmail.config._unbuilt import not_in_force
from sansmail.config._values import size as parse_size

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
    "LimitsConfig",
    "LogFormat",
    "MilterAction",
    "MilterConfig",
    "NextHop",
    "OutboundTLS",
    "PlaintextAuth",
    "Problem",
    "QuotaConfig",
    "ReverseDNSMode",
    "SMTPConfig",
    "SPFMode",
    "SieveConfig",
    "StorageBackend",
    "StorageConfig",
    "TLSConfig",
    "load_config",
    "not_in_force",
    "parse_config",
    "parse_size",
    "warnings",
]
