"""Reading a configuration: `parse_config` (text in, `Config` or `ConfigError` out),
`load_config` (which file, and reading it) and `warnings` (what is legal but worth
saying). Each ``_read_*`` function turns one TOML table into its part of the `Config`.

Reading the file is the only I/O here (and, for ``[tls]``, loading the certificate and
key to prove they match); nothing here opens a socket.
"""

from __future__ import annotations

import pathlib
import re
import tomllib
import types
from collections.abc import Mapping, Sequence

import attrs

from sansmail.config import _values
from sansmail.config._lines import KeyLines
from sansmail.config._model import (
    DEFAULT_CONFIG_TOML,
    DEFAULT_MYNETWORKS,
    EMBEDDED_NAME,
    SERVICES,
    AntispamConfig,
    AuthConfig,
    Config,
    ConfigError,
    DeliveryConfig,
    DKIMConfig,
    DNSConfig,
    HostPort,
    LimitsConfig,
    MilterConfig,
    NextHop,
    POP3Config,
    Problem,
    QuotaConfig,
    SieveConfig,
    SMTPConfig,
    StorageConfig,
    TLSChecker,
    TLSConfig,
)
from sansmail.config._tables import TABLE_KEYS, TOP_KEYS, Reader, Table
from sansmail.config._unbuilt import not_in_force

#: The most entries ``[auth] cache_size`` may ask for.
_MAX_AUTH_CACHE_SIZE = 1_000_000

# --- the front door ---------------------------------------------------------------------


def parse_config(
    text: str,
    *,
    source: pathlib.Path | None,
    default_hostname: str,
    check_tls: TLSChecker | None = None,
) -> Config:
    """Validate `text`, read from `source` (None: the embedded default), into a `Config`.

    Relative paths resolve against `source`'s folder, or the current directory when
    `source` is None. `default_hostname` applies when the text has no ``hostname``.
    `check_tls(cert, key)` says what is wrong with a ``[tls]`` pair (None: nothing); the
    adapter passes one, since loading certificates is the TLS layer's business.
    Raises `ConfigError` listing every problem found.
    """
    file = EMBEDDED_NAME if source is None else str(source)
    base = pathlib.Path.cwd() if source is None else source.absolute().parent
    reader = Reader(file, KeyLines(text), base, check_tls)
    config = _read(text, reader, default_hostname)
    if reader.problems or config is None:
        # Found table by table; read in file order.
        raise ConfigError(sorted(reader.problems, key=lambda p: p.line or 0))
    return attrs.evolve(config, source=None if source is None else source.absolute())


def load_config(
    path: pathlib.Path | None, *, default_hostname: str, check_tls: TLSChecker | None = None
) -> Config:
    """Read and validate the config file at `path`.

    None means ``./sansmail.toml`` when it exists, else `DEFAULT_CONFIG_TOML`. A file that
    cannot be read is reported as a `ConfigError` like any other problem.
    """
    if path is None:
        candidate = pathlib.Path("sansmail.toml")
        if not candidate.is_file():
            return parse_config(
                DEFAULT_CONFIG_TOML,
                source=None,
                default_hostname=default_hostname,
                check_tls=check_tls,
            )
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
    return parse_config(text, source=path, default_hostname=default_hostname, check_tls=check_tls)


def warnings(config: Config) -> list[str]:
    """Things worth telling the operator that do not stop the server from running,
    `not_in_force` included."""
    found = []
    where = config.source_name
    if not config.listen:
        found.append(f"{where}: listen: no listeners: serve will do nothing")
    if not config.domains:
        found.append(f"{where}: domains: empty: no mail is delivered locally")
    found.extend(not_in_force(config))
    if config.storage.dsn and config.storage.backend == "maildir":
        found.append(f'{where}: storage.dsn: used only with backend = "postgresql"; ignored')
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
    found.extend(
        f"{where}: limits.{service}_max_connections_per_ip: larger than "
        f"{service}_max_connections, so it never applies"
        for service in ("pop3", "imap")
        if getattr(config.limits, f"{service}_max_connections_per_ip")
        > getattr(config.limits, f"{service}_max_connections")
    )
    if config.smtp.plaintext_auth == "always":
        exposed = [
            _values.show_address(address)
            for addresses in config.listen.values()
            for address in addresses
            if not _values.is_loopback(address[0])
        ]
        if exposed:
            found.append(
                f'{where}: smtp.plaintext_auth: "always" lets passwords cross the network '
                f"in clear on {', '.join(exposed)}"
            )
    return found


# --- the sections ------------------------------------------------------------------------


def _read(text: str, reader: Reader, default_hostname: str) -> Config | None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"at line (\d+)", str(exc))
        # "at end of document" is the last line.
        line = int(match.group(1)) if match else text.rstrip("\n").count("\n") + 1
        reader.problems.append(Problem(reader.file, line, "", f"invalid TOML: {exc}"))
        return None
    top = Table(reader, (), data, TOP_KEYS)
    top.check_unknown()
    for name in TABLE_KEYS:
        if isinstance(data.get(name), dict):
            top.table(name).check_unknown()

    domains = top.items("domains", _values.domain, ("localhost",))
    milter = top.table("milter")
    return Config(
        source=None,
        hostname=top.get(
            "hostname",
            lambda v: _values.hostname(_values.expect(str, "a string")(v)),
            default_hostname,
        ),
        domains=tuple(dict.fromkeys(domains)),
        data_dir=top.path_value("data_dir", None) or reader.base / "sansmail-data",
        mynetworks=top.items("mynetworks", _values.network, DEFAULT_MYNETWORKS),
        aliases=_existing(top, "aliases"),
        recipient_delimiter=top.get("recipient_delimiter", _values.delimiter, "+"),
        processes=top.integer("processes", 1, 1),
        mail_owner=top.get("mail_owner", _values.user_name, None),
        log_format=top.choice("log_format", "text"),
        tls=_read_tls(top.table("tls")),
        listen=_read_listen(top.table("listen")),
        smtp=_read_smtp(top.table("smtp")),
        pop3=POP3Config(
            no_flag_updates=top.table("pop3").get(
                "no_flag_updates", _values.expect(bool, "true or false"), False
            )
        ),
        auth=_read_auth(top.table("auth")),
        delivery=_read_delivery(top.table("delivery")),
        dns=DNSConfig(nameservers=top.table("dns").items("nameservers", _values.nameserver, ())),
        antispam=_read_antispam(top.table("antispam")),
        dkim=DKIMConfig(selector=top.table("dkim").get("selector", _values.selector, "sansmail")),
        milter=MilterConfig(
            milters=milter.items("milters", _values.milter(reader.base), ()),
            default_action=milter.choice("default_action", MilterConfig().default_action),
        ),
        sieve=SieveConfig(before=_existing(top.table("sieve"), "before")),
        storage=_read_storage(top.table("storage")),
        quota=QuotaConfig(storage=top.table("quota").get("storage", _values.size, 0)),
        limits=_read_limits(top.table("limits")),
    )


def _read_limits(table: Table) -> LimitsConfig:
    d = LimitsConfig()

    def count(key: str, minimum: int = 1) -> int:
        return table.integer(key, getattr(d, key), minimum)

    return LimitsConfig(
        pop3_max_connections=count("pop3_max_connections"),
        pop3_max_connections_per_ip=count("pop3_max_connections_per_ip"),
        imap_max_connections=count("imap_max_connections"),
        imap_max_connections_per_ip=count("imap_max_connections_per_ip"),
        max_userip_connections=count("max_userip_connections"),
        # The IMAP core's own floors (RFC 7162 §4 asks for 8192-octet lines).
        imap_max_line_length=count("imap_max_line_length", 8192),
        imap_max_command_size=count("imap_max_command_size", 65536),
        commands_per_second=count("commands_per_second", 0),
        client_message_rate=count("client_message_rate", 0),
        client_recipient_rate=count("client_recipient_rate", 0),
        user_message_rate=count("user_message_rate", 0),
        user_recipient_rate=count("user_recipient_rate", 0),
        auth_max_failures=count("auth_max_failures"),
        auth_failure_window=table.duration("auth_failure_window", d.auth_failure_window, 1),
        auth_lockout=table.duration("auth_lockout", d.auth_lockout, 1),
    )


def _read_tls(table: Table) -> TLSConfig:
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
        if (problem := _not_a_file(path)) is not None:
            table.problem(name, problem)
            ok = False
    # Whether the pair actually loads is the TLS layer's to judge (this package has no
    # ssl): the adapter passes its checker in.
    if ok and table.reader.check_tls is not None:
        reason = table.reader.check_tls(cert, key)
        if reason is not None:
            table.problem("cert", f"cannot load {cert} with key {key}: {reason}")
    return TLSConfig(cert=cert, key=key)


def _read_listen(table: Table) -> Mapping[str, tuple[HostPort, ...]]:
    listen: dict[str, tuple[HostPort, ...]] = {}
    owner: dict[HostPort, str] = {}
    for service in SERVICES:
        if service not in table.data:
            continue
        addresses = table.items(service, _values.listen_address, (), single=True)
        for address in addresses:
            other = owner.setdefault(address, service)
            if other != service and address[1] != 0:
                table.problem(service, f"{_values.show_address(address)} is also used by {other}")
        if addresses:
            listen[service] = tuple(dict.fromkeys(addresses))
    return types.MappingProxyType(listen)


def _read_smtp(table: Table) -> SMTPConfig:
    d = SMTPConfig()
    before = len(table.reader.problems)
    restrictions = table.items(
        "recipient_restrictions", _values.restriction, d.recipient_restrictions
    )
    valid = len(table.reader.problems) == before
    if "recipient_restrictions" in table.data and valid and _is_open_relay(restrictions):
        table.problem(
            "recipient_restrictions",
            "this would make an open relay: reject_unauth_destination (or reject) must be "
            'in the list, before any "permit"',
        )
    mechanisms = table.items("auth_mechanisms", _values.mechanism, d.auth_mechanisms)
    return SMTPConfig(
        max_message_size=table.integer("max_message_size", d.max_message_size, 1),
        recipient_restrictions=restrictions,
        auth_mechanisms=tuple(dict.fromkeys(mechanisms)),
        reject_sender_login_mismatch=table.get(
            "reject_sender_login_mismatch", _values.expect(bool, "true or false"), True
        ),
        broken_sasl_auth_clients=table.get(
            "broken_sasl_auth_clients", _values.expect(bool, "true or false"), False
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


def _read_auth(table: Table) -> AuthConfig:
    d = AuthConfig()

    def entries(value: object) -> int:
        number = _values.expect(int, "an integer")(value)
        if not 0 <= number <= _MAX_AUTH_CACHE_SIZE:
            # About 250 octets an entry, twice (successes and failures): the cap is
            # about 500 MiB, more than any site with fewer users than that needs.
            raise ValueError(f"must be between 0 and {_MAX_AUTH_CACHE_SIZE}, not {number}")
        return number

    return AuthConfig(
        cache_size=table.get("cache_size", entries, d.cache_size),
        cache_ttl=table.duration("cache_ttl", d.cache_ttl, 0),
        cache_negative_ttl=table.duration("cache_negative_ttl", d.cache_negative_ttl, 0),
    )


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


def _read_delivery(table: Table) -> DeliveryConfig:
    d = DeliveryConfig()
    relayhost = table.get("relayhost", _values.optional_next_hop, None)
    transport: dict[str, NextHop] = {}
    routes: dict[str, object] = table.get(
        "transport", _values.expect(dict, "a table of domain = host:port"), {}
    )
    for domain, hop in routes.items():
        key = ("transport", str(domain))
        try:
            # ".example.org" covers every subdomain, as in Postfix's transport(5).
            dot = "." if str(domain).startswith(".") else ""
            name = dot + _values.domain(str(domain)[len(dot) :])
            transport[name] = _values.next_hop(_values.expect(str, "a string")(hop))
        except ValueError as exc:
            table.reader.problem((*table.path, *key), str(exc))
    minimal = table.duration("minimal_backoff", d.minimal_backoff, 1)
    maximal = table.duration("maximal_backoff", d.maximal_backoff, 1)
    if maximal < minimal:
        table.problem("maximal_backoff", "must not be shorter than minimal_backoff")
        maximal = minimal
    username = table.get("relayhost_username", _values.expect(str, "a string"), "")
    password_file = _existing(table, "relayhost_password_file")
    if bool(username) != (password_file is not None):
        table.problem(
            "relayhost_username",
            "relayhost_username and relayhost_password_file go together (or neither)",
        )
        username, password_file = "", None
    if username and relayhost is None:
        table.problem("relayhost_username", "credentials are only used with a relayhost")
    return DeliveryConfig(
        relayhost=relayhost,
        transport=types.MappingProxyType(transport),
        tls=table.choice("tls", d.tls),
        max_queue_lifetime=table.duration("max_queue_lifetime", d.max_queue_lifetime, 0),
        delay_warning=table.duration("delay_warning", d.delay_warning, 0),
        minimal_backoff=minimal,
        maximal_backoff=maximal,
        destination_concurrency_limit=table.integer(
            "destination_concurrency_limit", d.destination_concurrency_limit, 1
        ),
        smtp_port=_port(table, "smtp_port", d.smtp_port),
        relayhost_username=username,
        relayhost_password_file=password_file,
        tls_ca_file=_existing(table, "tls_ca_file"),
        mta_sts=table.get("mta_sts", _values.expect(bool, "true or false"), d.mta_sts),
        mta_sts_port=_port(table, "mta_sts_port", d.mta_sts_port),
    )


def _port(table: Table, key: str, default: int) -> int:
    port = table.integer(key, default, 1)
    if port > 65535:
        table.problem(key, f"must be at most 65535, not {port}")
        return default
    return port


def _existing(table: Table, key: str) -> pathlib.Path | None:
    path = table.path_value(key, None)
    if path is not None and (problem := _not_a_file(path)) is not None:
        table.problem(key, problem)
    return path


def _not_a_file(path: pathlib.Path) -> str | None:
    """Why `path` is no file to read, or None. `is_file` raises for a name too long or a
    folder that cannot be searched (ENAMETOOLONG, EACCES): a problem like the others."""
    try:
        if path.is_file():
            return None
    except OSError as exc:
        return f"{path}: cannot be looked at: {exc.strerror}"
    return f"{path}: no such file"


def _read_antispam(table: Table) -> AntispamConfig:
    d = AntispamConfig()
    zones = table.items("dnsbl", _values.hostname, d.dnsbl)
    return AntispamConfig(
        spf=table.choice("spf", d.spf),
        reverse_dns=table.choice("reverse_dns", d.reverse_dns),
        dkim=table.choice("dkim", d.dkim),
        dmarc=table.choice("dmarc", d.dmarc),
        dnsbl=tuple(dict.fromkeys(zones)),
        greylisting=table.get("greylisting", _values.expect(bool, "true or false"), False),
        greylist_delay=table.duration("greylist_delay", d.greylist_delay, 1),
    )


def _read_storage(table: Table) -> StorageConfig:
    backend = table.choice("backend", StorageConfig().backend)
    dsn = table.get("dsn", _values.dsn, "")
    if backend == "postgresql" and not dsn:
        table.problem("backend", '"postgresql" needs a dsn: postgresql://user@host:5432/sansmail')
    lease = table.duration("queue_lease", StorageConfig().queue_lease, 1)
    return StorageConfig(backend=backend, dsn=dsn, queue_lease=lease)
