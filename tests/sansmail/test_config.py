"""The configuration: the embedded default, every CONTRACT.md key, and how each kind of
mistake is reported (file, line, key, message)."""

from __future__ import annotations

import ipaddress
import pathlib
import textwrap

import attrs
import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail import config as config_module
from sansmail.config import (
    BUILT_SERVICES,
    DEFAULT_CONFIG_TOML,
    SERVICES,
    AntispamConfig,
    Config,
    ConfigError,
    DeliveryConfig,
    DKIMConfig,
    DNSConfig,
    MilterConfig,
    NextHop,
    Problem,
    QuotaConfig,
    SieveConfig,
    SMTPConfig,
    StorageConfig,
    TLSConfig,
    load_config,
    parse_config,
    warnings,
)


def parse(text: str, tmp_path: pathlib.Path, name: str = "sansmail.toml") -> Config:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_config(path, default_hostname="default.example")


def problems(text: str, tmp_path: pathlib.Path) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse(text, tmp_path)
    return info.value.problems


def only_problem(text: str, tmp_path: pathlib.Path) -> Problem:
    found = problems(text, tmp_path)
    assert len(found) == 1, found
    return found[0]


# --- the embedded default -----------------------------------------------------------


def test_embedded_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None, default_hostname="mx.machine.example")
    assert config.source is None
    assert config.source_name == "<embedded default>"
    assert config.hostname == "mx.machine.example"
    assert config.domains == ("localhost",)
    assert config.data_dir == tmp_path / "sansmail-data"
    assert config.mynetworks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert config.aliases is None
    assert config.tls == TLSConfig(cert=None, key=None)
    assert dict(config.listen) == {
        "smtp": (("127.0.0.1", 2525),),
        "submission": (("127.0.0.1", 2587),),
        "submissions": (("127.0.0.1", 2465),),
        "pop3": (("127.0.0.1", 2110),),
        "pop3s": (("127.0.0.1", 2995),),
        "imap": (("127.0.0.1", 2143),),
        "imaps": (("127.0.0.1", 2993),),
        "managesieve": (("127.0.0.1", 2190),),
        "metrics": (("127.0.0.1", 2980),),
    }
    # Every built service, in SERVICES order, but http: off by default (CONTRACT.md).
    assert list(config.listen) == [s for s in SERVICES if s in BUILT_SERVICES - {"http"}]


def test_embedded_default_matches_the_class_defaults():
    # The TOML text is the documentation of the defaults: it must not drift from the
    # attrs defaults that an empty file (or a missing table) gets.
    default = parse_config(DEFAULT_CONFIG_TOML, source=None, default_hostname="h.example")
    empty = parse_config("", source=None, default_hostname="h.example")
    for config in (default, empty):
        assert config.smtp == SMTPConfig()
        assert config.delivery == DeliveryConfig()
        assert config.dns == DNSConfig()
        assert config.antispam == AntispamConfig()
        assert config.dkim == DKIMConfig()
        assert config.milter == MilterConfig()
        assert (config.sieve, config.storage, config.quota) == (
            SieveConfig(),
            StorageConfig(),
            QuotaConfig(),
        )
        assert (config.mail_owner, config.log_format) == (None, "text")
        assert config.recipient_delimiter == "+"
    assert attrs.evolve(empty, listen=default.listen) == default
    assert dict(empty.listen) == {}  # in a file, an absent service is not started


def test_load_prefers_sansmail_toml_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sansmail.toml").write_text('hostname = "mx.file.example"\n')
    config = load_config(None, default_hostname="unused.example")
    assert config.hostname == "mx.file.example"
    assert config.source == tmp_path / "sansmail.toml"


def test_public_names():
    assert sorted(config_module.__all__) == sorted(
        [
            "BUILT_SERVICES", "DEFAULT_CONFIG_TOML", "MECHANISMS", "RESTRICTIONS", "SERVICES",
            "AntispamConfig", "BareLF", "Config", "ConfigError", "DKIMConfig", "DKIMMode",
            "DMARCMode", "DNSConfig", "DeliveryConfig", "HostPort", "LogFormat", "MilterAction",
            "LimitsConfig", "MilterConfig", "NextHop", "OutboundTLS", "PlaintextAuth", "Problem",
            "QuotaConfig", "ReverseDNSMode", "SMTPConfig", "SPFMode", "SieveConfig",
            "StorageBackend", "StorageConfig", "TLSConfig", "load_config", "not_in_force",
            "parse_config", "parse_size", "warnings",
        ]
    )  # fmt: skip
    for name in config_module.__all__:
        assert hasattr(config_module, name)


def test_built_services():
    assert set(SERVICES) - BUILT_SERVICES <= {"http"}
    assert set(SERVICES) >= BUILT_SERVICES


# --- a full file ----------------------------------------------------------------------


@pytest.fixture
def full_config(tmp_path: pathlib.Path) -> pathlib.Path:
    ca = trustme.CA()
    cert = ca.issue_cert("mx.example.test")
    folder = tmp_path / "etc"
    folder.mkdir()
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    (folder / "aliases").write_text("postmaster: alice\n")
    path = folder / "sansmail.toml"
    path.write_text(
        textwrap.dedent(
            """\
            hostname = "MX.Example.Test"
            domains = ["example.test", "Bücher.example"]
            data_dir = "data"
            mynetworks = ["127.0.0.0/8", "::1/128", "192.0.2.0/24"]
            aliases = "aliases"
            recipient_delimiter = "+-"

            [tls]
            cert = "cert.pem"
            key = "key.pem"

            [listen]
            smtp = ["0.0.0.0:25", "[::]:25"]
            submission = "127.0.0.1:2587"
            submissions = "127.0.0.1:2465"
            pop3 = "127.0.0.1:2110"
            pop3s = "127.0.0.1:2995"
            imap = "localhost:2143"
            imaps = "[::1]:2993"

            [smtp]
            max_message_size = 10485760
            recipient_restrictions = ["permit_mynetworks", "reject_unauth_destination",
                                      "reject_unlisted_recipient"]
            auth_mechanisms = ["PLAIN", "cram-md5", "SCRAM-SHA-1"]
            broken_sasl_auth_clients = true
            plaintext_auth = "never"
            max_recipients = 150
            max_connections = 50
            max_connections_per_ip = 5
            command_timeout = "2m"
            data_timeout = 900
            max_invalid_commands = 7
            shutdown_grace = "0s"
            bare_lf = "reject"

            [delivery]
            relayhost = "[smarthost.example.net]:587"
            transport = { "peer.test" = "127.0.0.1:2626", "mx.test" = "relay.example.net" }
            tls = "verify"
            max_queue_lifetime = "2d"

            [dns]
            nameservers = ["127.0.0.1:5353", "[::1]", "192.0.2.53"]

            [antispam]
            spf = "reject"
            reverse_dns = "tag"
            dkim = "off"
            dmarc = "enforce"

            [dkim]
            selector = "mail2024"

            [milter]
            milters = ["inet:127.0.0.1:8891", "unix:/run/rspamd/milter.sock", "unix:m.sock"]
            default_action = "accept"
            """
        ),
        encoding="utf-8",
    )
    return path


def test_full_config(full_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on the cwd
    folder = full_config.parent
    config = load_config(full_config, default_hostname="unused.example")
    assert config.source == full_config
    assert config.hostname == "mx.example.test"
    assert config.domains == ("example.test", "xn--bcher-kva.example")
    assert config.data_dir == folder / "data"
    assert config.mynetworks[2] == ipaddress.ip_network("192.0.2.0/24")
    assert config.aliases == folder / "aliases"
    assert config.recipient_delimiter == "+-"
    assert config.tls == TLSConfig(cert=folder / "cert.pem", key=folder / "key.pem")
    assert dict(config.listen) == {
        "smtp": (("0.0.0.0", 25), ("::", 25)),
        "submission": (("127.0.0.1", 2587),),
        "submissions": (("127.0.0.1", 2465),),
        "pop3": (("127.0.0.1", 2110),),
        "pop3s": (("127.0.0.1", 2995),),
        "imap": (("localhost", 2143),),
        "imaps": (("::1", 2993),),
    }
    assert config.smtp == SMTPConfig(
        max_message_size=10485760,
        recipient_restrictions=(
            "permit_mynetworks",
            "reject_unauth_destination",
            "reject_unlisted_recipient",
        ),
        auth_mechanisms=("PLAIN", "CRAM-MD5", "SCRAM-SHA-1"),
        broken_sasl_auth_clients=True,
        plaintext_auth="never",
        max_recipients=150,
        max_connections=50,
        max_connections_per_ip=5,
        command_timeout=120,
        data_timeout=900,
        max_invalid_commands=7,
        shutdown_grace=0,
        bare_lf="reject",
    )
    delivery = config.delivery
    assert delivery.relayhost == NextHop(host="smarthost.example.net", port=587, mx_lookup=False)
    assert str(delivery.relayhost) == "[smarthost.example.net]:587"
    assert dict(delivery.transport) == {
        "peer.test": NextHop(host="127.0.0.1", port=2626, mx_lookup=False),
        "mx.test": NextHop(host="relay.example.net", port=25, mx_lookup=True),
    }
    assert delivery.tls == "verify"
    assert delivery.max_queue_lifetime == 2 * 86400
    assert config.dns == DNSConfig(
        nameservers=(("127.0.0.1", 5353), ("::1", 53), ("192.0.2.53", 53))
    )
    assert config.antispam == AntispamConfig(
        spf="reject", reverse_dns="tag", dkim="off", dmarc="enforce"
    )
    assert config.dkim == DKIMConfig(selector="mail2024")
    assert config.milter == MilterConfig(
        milters=(
            ("127.0.0.1", 8891),
            pathlib.Path("/run/rspamd/milter.sock"),
            folder / "m.sock",
        ),
        default_action="accept",
    )


def test_contract_example_parses(tmp_path):
    # The example of CONTRACT.md, as written there (minus the files it names).
    config = parse(
        """\
        hostname = "mx.example.test"
        domains = ["example.test"]
        data_dir = "data"
        mynetworks = ["127.0.0.0/8", "::1/128"]
        recipient_delimiter = "+"
        [listen]
        smtp = "127.0.0.1:2525"
        [smtp]
        max_message_size = 26214400
        recipient_restrictions = ["permit_sasl_authenticated", "permit_mynetworks",
                                  "reject_unauth_destination"]
        auth_mechanisms = ["PLAIN", "LOGIN", "SCRAM-SHA-256"]   # "CRAM-MD5" is opt-in
        broken_sasl_auth_clients = false
        plaintext_auth = "loopback"
        [delivery]
        relayhost = ""
        transport = { }
        tls = "may"
        max_queue_lifetime = "5d"
        [dns]
        nameservers = []
        [antispam]
        spf = "tag"
        [milter]
        milters = []
        default_action = "tempfail"
        """,
        tmp_path,
    )
    assert config.delivery.relayhost is None
    assert config.data_dir == tmp_path / "data"


def test_absolute_and_home_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = parse(f'data_dir = "{tmp_path}/abs"\n[tls]\n', tmp_path)
    assert config.data_dir == tmp_path / "abs"
    assert parse('data_dir = "~/mail"', tmp_path).data_dir == tmp_path / "home" / "mail"


def test_listen_accepts_port_zero_and_hostnames(tmp_path):
    config = parse('[listen]\nsmtp = "127.0.0.1:0"\npop3 = "127.0.0.1:0"\n', tmp_path)
    assert config.listen["smtp"] == (("127.0.0.1", 0),)
    assert config.listen["pop3"] == (("127.0.0.1", 0),)


def test_recipient_delimiter_can_be_turned_off(tmp_path):
    assert parse('recipient_delimiter = ""', tmp_path).recipient_delimiter == ""


def test_relayhost_forms(tmp_path):
    def hop(text: str) -> NextHop | None:
        return parse(f'[delivery]\nrelayhost = "{text}"\n', tmp_path).delivery.relayhost

    assert hop("smart.example") == NextHop(host="smart.example", port=25, mx_lookup=True)
    assert hop("smart.example:2525") == NextHop(host="smart.example", port=2525, mx_lookup=True)
    assert hop("[smart.example]") == NextHop(host="smart.example", port=25, mx_lookup=False)
    assert hop("[2001:db8::1]:26") == NextHop(host="2001:db8::1", port=26, mx_lookup=False)
    assert hop("192.0.2.1") == NextHop(host="192.0.2.1", port=25, mx_lookup=False)


# --- durations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ('"30s"', 30),
        ('"5m"', 300),
        ('"2h"', 7200),
        ('"5d"', 432000),
        ('"1w"', 604800),
        ('"45"', 45),
        ("45", 45),
        ("0", 0),
    ],
)
def test_durations(tmp_path, value, seconds):
    config = parse(f"[smtp]\nshutdown_grace = {value}\n", tmp_path)
    assert config.smtp.shutdown_grace == seconds


@pytest.mark.parametrize("value", ['"5x"', '"-5s"', "-1", "true", "1.5", '""', '"5 m s"', "[]"])
def test_bad_durations(tmp_path, value):
    problem = only_problem(f"[delivery]\ntls = 'may'\nmax_queue_lifetime = {value}\n", tmp_path)
    assert (problem.line, problem.key) == (3, "delivery.max_queue_lifetime")


def test_timeouts_must_be_positive(tmp_path):
    problem = only_problem('[smtp]\ncommand_timeout = "0s"\n', tmp_path)
    assert (problem.line, problem.key) == (2, "smtp.command_timeout")
    assert "at least 1" in problem.message


@settings(deadline=None, max_examples=100)
@given(number=st.integers(min_value=0, max_value=10**6), unit=st.sampled_from("smhdw"))
def test_duration_units(number, unit):
    text = f'[delivery]\nmax_queue_lifetime = "{number}{unit}"\n'
    config = parse_config(text, source=None, default_hostname="h.example")
    factor = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert config.delivery.max_queue_lifetime == number * factor


# --- bad values: the right line, the right key ------------------------------------------

BAD = [
    # (file text, line, key, part of the message)
    ('hostname = "bad_host.example"', 1, "hostname", "bad_host"),
    ('hostname = "-lead.example"', 1, "hostname", "-lead.example"),
    ('hostname = "[192.0.2.1]"', 1, "hostname", "not a valid host name"),
    ("hostname = 5", 1, "hostname", "expected a string, not an integer 5"),
    ('domains = "example.test"', 1, "domains", "expected an array"),
    ('domains = ["ok.example", "bad domain"]', 1, "domains", "bad domain"),
    ('domains = ["ok.example", ""]', 1, "domains", "empty"),
    ("domains = [1]", 1, "domains", "expected a string"),
    ('mynetworks = ["10.0.0.1/8"]', 1, "mynetworks", "did you mean 10.0.0.0/8"),
    ('mynetworks = ["10.0.0.0/33"]', 1, "mynetworks", "is not a network"),
    ('mynetworks = ["not-a-net"]', 1, "mynetworks", "is not a network"),
    ('aliases = "no-such-file"', 1, "aliases", "no such file"),
    ('recipient_delimiter = "@"', 1, "recipient_delimiter", "cannot be a recipient delimiter"),
    ('recipient_delimiter = "a"', 1, "recipient_delimiter", "cannot be a recipient delimiter"),
    ('data_dir = "~no-such-user-here/x"', 1, "data_dir", "home directory"),
    ("data_dir = 7", 1, "data_dir", "expected a string"),
    ('\n[tls]\ncert = "c.pem"', 3, "tls.cert", "key is missing"),
    ('\n[tls]\nkey = "k.pem"', 3, "tls.key", "cert is missing"),
    ('\n[listen]\nsmtp = "127.0.0.1"', 3, "listen.smtp", "expected host:port"),
    ('\n[listen]\nsmtp = "127.0.0.1:65536"', 3, "listen.smtp", "out of range"),
    ('\n[listen]\nsmtp = "127.0.0.1:x"', 3, "listen.smtp", "expected host:port"),
    ('\n[listen]\nsmtp = "::1:25"', 3, "listen.smtp", "brackets"),
    ('\n[listen]\nsmtp = "[::1:25"', 3, "listen.smtp", "without ']'"),
    ('\n[listen]\nsmtp = ":25"', 3, "listen.smtp", "no host"),
    ('\n[listen]\nsmtp = "bad_host:25"', 3, "listen.smtp", "bad_host"),
    ("\n[listen]\nsmtp = 25", 3, "listen.smtp", "expected a string or an array of strings"),
    ('\n[listen]\nsmtpd = "127.0.0.1:25"', 3, "listen.smtpd", "did you mean 'smtp'"),
    ('\n[listen]\nsmtp = "127.0.0.1:25"\npop3 = "127.0.0.1:25"', 4, "listen.pop3", "also used"),
    ("listen = 5", 1, "listen", "expected a table"),
    ("[smtp]\nmax_message_size = 0", 2, "smtp.max_message_size", "at least 1"),
    ("[smtp]\nmax_message_size = true", 2, "smtp.max_message_size", "not a boolean"),
    ('[smtp]\nmax_message_size = "25M"', 2, "smtp.max_message_size", "expected an integer"),
    ("[smtp]\nmax_recipients = 0", 2, "smtp.max_recipients", "at least 1"),
    ("[smtp]\nmax_connections = -3", 2, "smtp.max_connections", "at least 1"),
    ("[smtp]\nmax_connections_per_ip = 1.5", 2, "smtp.max_connections_per_ip", "a float"),
    ("[smtp]\nmax_invalid_commands = 0", 2, "smtp.max_invalid_commands", "at least 1"),
    (
        '[smtp]\nrecipient_restrictions = ["permit_al"]',
        2,
        "smtp.recipient_restrictions",
        "unknown restriction",
    ),
    ('[smtp]\nrecipient_restrictions = ["permit"]', 2, "smtp.recipient_restrictions", "open relay"),
    (
        '[smtp]\nrecipient_restrictions = ["permit_mynetworks"]',
        2,
        "smtp.recipient_restrictions",
        "open relay",
    ),
    ('[smtp]\nauth_mechanisms = ["XOAUTH2"]', 2, "smtp.auth_mechanisms", "unknown SASL"),
    (
        '[smtp]\nbroken_sasl_auth_clients = "yes"',
        2,
        "smtp.broken_sasl_auth_clients",
        "true or false",
    ),
    ('[smtp]\nplaintext_auth = "sometimes"', 2, "smtp.plaintext_auth", '"never", "loopback"'),
    ('[smtp]\nbare_lf = "allow"', 2, "smtp.bare_lf", '"normalize", "reject"'),
    ('[delivery]\nrelayhost = "host:port"', 2, "delivery.relayhost", "expected host:port"),
    ('[delivery]\nrelayhost = "[h.example]:0"', 2, "delivery.relayhost", "port 0"),
    (
        '[delivery]\ntransport = { "peer.test" = "peer:99999" }',
        2,
        'delivery.transport."peer.test"',
        "out of range",
    ),
    (
        '[delivery]\ntransport = { "bad domain" = "peer:25" }',
        2,
        'delivery.transport."bad domain"',
        "bad domain",
    ),
    (
        '[delivery]\ntransport = { "peer.test" = 25 }',
        2,
        'delivery.transport."peer.test"',
        "expected a string",
    ),
    ('[delivery]\ntransport = "peer:25"', 2, "delivery.transport", "expected a table"),
    ('[delivery]\ntls = "required"', 2, "delivery.tls", '"none", "may", "encrypt", "verify"'),
    ('[dns]\nnameservers = ["dns.example"]', 2, "dns.nameservers", "must be an IP address"),
    ('[dns]\nnameservers = ["127.0.0.1:0"]', 2, "dns.nameservers", "port 0"),
    ('[antispam]\nspf = "enforce"', 2, "antispam.spf", '"off", "tag", "reject"'),
    ('[antispam]\nreverse_dns = "on"', 2, "antispam.reverse_dns", '"off"'),
    ('[antispam]\ndkim = "reject"', 2, "antispam.dkim", '"off", "tag"'),
    ('[antispam]\ndmarc = "reject"', 2, "antispam.dmarc", '"enforce"'),
    ('[dkim]\nselector = "a.b"', 2, "dkim.selector", "not a DNS label"),
    ('[milter]\nmilters = ["tcp:127.0.0.1:1"]', 2, "milter.milters", "inet:host:port"),
    ('[milter]\nmilters = ["inet:127.0.0.1"]', 2, "milter.milters", "expected host:port"),
    ('[milter]\nmilters = ["unix:"]', 2, "milter.milters", "unix:/path"),
    ('[milter]\ndefault_action = "drop"', 2, "milter.default_action", '"tempfail"'),
]


@pytest.mark.parametrize(("text", "line", "key", "message"), BAD)
def test_bad_value(tmp_path, text, line, key, message):
    problem = only_problem(text, tmp_path)
    assert problem.file == str(tmp_path / "sansmail.toml")
    assert (problem.line, problem.key) == (line, key)
    assert message in problem.message


def test_problem_str():
    assert str(Problem("a.toml", 3, "smtp.bare_lf", "bad")) == "a.toml:3: smtp.bare_lf: bad"
    assert str(Problem("a.toml", None, "", "cannot read")) == "a.toml: cannot read"
    assert str(ConfigError([Problem("a", 1, "k", "m"), Problem("a", 2, "j", "n")])) == (
        "a:1: k: m\na:2: j: n"
    )


def test_several_problems_reported_in_file_order(tmp_path):
    found = problems(
        """\
        hostname = "bad_host"
        domains = ["example.test"]

        [smtp]
        max_message_size = -1
        bare_lf = "keep"

        [listen]
        smtp = "nonsense"
        """,
        tmp_path,
    )
    assert [(p.line, p.key) for p in found] == [
        (1, "hostname"),
        (5, "smtp.max_message_size"),
        (6, "smtp.bare_lf"),
        (9, "listen.smtp"),
    ]


def test_every_bad_item_of_a_list_is_reported(tmp_path):
    found = problems('mynetworks = ["x", "127.0.0.0/8", "y"]', tmp_path)
    assert [p.message.split()[0] for p in found] == ["'x'", "'y'"]


def test_multiline_array_reports_the_key_line(tmp_path):
    problem = only_problem(
        """\
        [smtp]
        auth_mechanisms = [
            "PLAIN",
            "NOPE",
        ]
        """,
        tmp_path,
    )
    assert (problem.line, problem.key) == (2, "smtp.auth_mechanisms")


def test_quotes_inside_strings_do_not_hide_keys(tmp_path):
    found = problems('hostname = "\'\'\'"\n[smtp]\nbare_lf = "x"\n', tmp_path)
    assert [(p.line, p.key) for p in found] == [(1, "hostname"), (3, "smtp.bare_lf")]


def test_dotted_and_quoted_keys_are_found(tmp_path):
    problem = only_problem('\n\n"smtp".bare_lf = "x"\n', tmp_path)
    assert (problem.line, problem.key) == (3, "smtp.bare_lf")
    problem = only_problem('[delivery]\n"tls" = "x"\n', tmp_path)
    assert (problem.line, problem.key) == (2, "delivery.tls")


def test_multiline_strings_are_not_taken_for_keys(tmp_path):
    found = problems(
        '''\
        hostname = """mx.example
        [smtp]
        bare_lf = 1"""
        [smtp]
        bare_lf = "x"
        ''',
        tmp_path,
    )
    assert [(p.line, p.key) for p in found] == [(1, "hostname"), (5, "smtp.bare_lf")]


# --- unknown keys, syntax errors, unreadable files ---------------------------------------


def test_unknown_key_with_hint(tmp_path):
    problem = only_problem('\nhostnmae = "mx.example"\n', tmp_path)
    assert (problem.line, problem.key) == (2, "hostnmae")
    assert problem.message == "unknown key; did you mean 'hostname'?"


def test_unknown_key_without_hint(tmp_path):
    problem = only_problem("[smtp]\nzzz = 1\n", tmp_path)
    assert (problem.line, problem.key, problem.message) == (2, "smtp.zzz", "unknown key")


def test_unknown_table(tmp_path):
    problem = only_problem("[smpt]\nbare_lf = 1\n", tmp_path)
    assert (problem.line, problem.key) == (1, "smpt")
    assert "did you mean 'smtp'" in problem.message


def test_top_level_key_below_a_table(tmp_path):
    problem = only_problem('[listen]\nsmtp = "127.0.0.1:25"\ndomains = ["a.example"]\n', tmp_path)
    assert (problem.line, problem.key) == (3, "listen.domains")
    assert "belongs at the top" in problem.message


def test_table_key_at_the_top(tmp_path):
    problem = only_problem("max_message_size = 1000\n", tmp_path)
    assert problem.key == "max_message_size"
    assert "belongs in the [smtp] table" in problem.message


def test_toml_syntax_error_has_its_line(tmp_path):
    problem = only_problem('hostname = "mx.example"\n\ndomains = [\n"a", = \n]\n', tmp_path)
    assert problem.line == 4
    assert problem.key == ""
    assert "invalid TOML" in problem.message
    assert str(problem).startswith(f"{tmp_path / 'sansmail.toml'}:4: invalid TOML")


def test_toml_error_at_end_of_document(tmp_path):
    problem = only_problem('hostname = "mx.example"\ndomains = [', tmp_path)
    assert problem.line == 2


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml", default_hostname="h.example")
    [problem] = info.value.problems
    assert str(problem) == f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory"


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('hostname = "caf\xe9.example"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path, default_hostname="h.example")
    assert "not UTF-8" in str(info.value)


# --- TLS files ------------------------------------------------------------------------


def test_tls_missing_files(tmp_path):
    found = problems('[tls]\ncert = "c.pem"\nkey = "k.pem"\n', tmp_path)
    assert [(p.line, p.key) for p in found] == [(2, "tls.cert"), (3, "tls.key")]
    assert "no such file" in found[0].message


def test_tls_key_does_not_match(tmp_path):
    ca = trustme.CA()
    one, two = ca.issue_cert("a.example"), ca.issue_cert("b.example")
    one.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    two.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    path = tmp_path / "sansmail.toml"
    path.write_text('[tls]\ncert = "cert.pem"\nkey = "key.pem"\n')
    seen = []

    def check(cert: pathlib.Path, key: pathlib.Path) -> str | None:
        seen.append((cert.name, key.name))
        return "the key does not match the certificate"

    with pytest.raises(ConfigError) as info:
        load_config(path, default_hostname="d.example", check_tls=check)
    [problem] = info.value.problems
    assert seen == [("cert.pem", "key.pem")]
    assert (problem.line, problem.key) == (2, "tls.cert")
    assert "cannot load" in problem.message
    assert problem.message.endswith("the key does not match the certificate")
    # Without a checker (this package loads no certificates) the pair is taken as given.
    assert load_config(path, default_hostname="d.example").tls.key == tmp_path / "key.pem"


# --- warnings -------------------------------------------------------------------------


def test_warnings_of_the_embedded_default():
    config = parse_config(DEFAULT_CONFIG_TOML, source=None, default_hostname="h.example")
    found = warnings(config)
    assert not any("listen:" in w for w in found)  # every default listener is built
    assert not any("not built yet" in w for w in found)  # the sender checks are built
    assert not any("smtp," in w.split("listen:")[-1] for w in found)
    assert not any("submission" in w for w in found)


def test_quiet_config_has_no_warnings(tmp_path):
    config = parse(
        """\
        [listen]
        smtp = "127.0.0.1:2525"
        [antispam]
        spf = "off"
        dkim = "off"
        dmarc = "off"
        """,
        tmp_path,
    )
    assert warnings(config) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no listeners"),
        ('domains = []\n[listen]\nsmtp = "127.0.0.1:1"', "domains: empty"),
        ('[listen]\nsmtp = "127.0.0.1:1"\n[smtp]\nmax_recipients = 10', "§4.5.3.1.8"),
        ('[listen]\nsmtp = "127.0.0.1:1"\n[smtp]\nmax_connections = 5', "never applies"),
        ('[listen]\nsmtp = "0.0.0.0:25"\n[smtp]\nplaintext_auth = "always"', "in clear on"),
    ],
)
def test_warnings(tmp_path, text, expected):
    config = parse(text + '\n[antispam]\nspf = "off"\ndkim = "off"\ndmarc = "off"\n', tmp_path)
    found = warnings(config)
    assert len(found) == 1, found
    assert expected in found[0]


def test_aliases_are_in_force_so_no_warning(tmp_path):
    (tmp_path / "aliases").write_text("")
    config = parse('aliases = "aliases"\n[listen]\nsmtp = "127.0.0.1:1"', tmp_path)
    assert not any(": aliases:" in w for w in warnings(config))


def test_plaintext_always_on_loopback_is_fine(tmp_path):
    config = parse(
        '[listen]\nsmtp = ["127.0.0.1:25", "[::1]:25"]\n[smtp]\nplaintext_auth = "always"\n',
        tmp_path,
    )
    assert not any("in clear" in w for w in warnings(config))


# --- properties -------------------------------------------------------------------------

ip_addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))


@settings(deadline=None, max_examples=200)
@given(address=ip_addresses, port=st.integers(min_value=0, max_value=65535))
def test_listen_address_round_trip(address, port):
    shown = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    text = f'[listen]\nsmtp = "{shown}"\n'
    config = parse_config(text, source=None, default_hostname="h.example")
    assert config.listen["smtp"] == ((str(address), port),)


_KEYS = {
    (): ["hostname", "domains", "data_dir", "mynetworks", "recipient_delimiter", "bogus"],
    ("listen",): ["smtp", "imap", "pop"],
    ("smtp",): ["max_message_size", "bare_lf", "command_timeout", "auth_mechanisms"],
    ("delivery",): ["relayhost", "tls", "max_queue_lifetime"],
    ("milter",): ["milters"],
}
# Text with the pieces that could fool a line scanner: quotes of every kind, escapes,
# and a line that looks like a table and a key.
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)  # TOML has no surrogates
_TRICKY_TEXT = st.lists(
    st.one_of(
        st.text(st.characters(exclude_categories=["Cs"]), max_size=5),
        st.sampled_from(["'''", '"""', "'", '"', "\\", "#", "\n[smtp]\nbare_lf = 1\n"]),
    ),
    max_size=6,
).map("".join)
_STRINGS = st.one_of(
    _TEXT,
    _TRICKY_TEXT,
    st.sampled_from(["127.0.0.1:25", "[::1]:0", "5m", "normalize", "PLAIN", "inet:1.2.3.4:5"]),
)
_VALUES = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    _STRINGS,
    st.lists(_STRINGS, max_size=3),
)
_STYLES = st.sampled_from(["basic", "literal", "multiline", "multiline-literal"])


def _escape(text: str, keep: str = "") -> str:
    return "".join(
        c if (c.isprintable() and c not in '"\\') or c in keep else f"\\U{ord(c):08x}" for c in text
    )


def _toml_value(value: object, style: str) -> str:
    """`value` as TOML, strings written in `style` when they can be."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item, style) for item in value) + "]"
    assert isinstance(value, str)
    plain = all(c.isprintable() or c == "\n" for c in value)
    if style == "literal" and plain and "'" not in value and "\n" not in value:
        return f"'{value}'"
    if style == "multiline-literal" and plain and "'''" not in value and not value.endswith("'"):
        return f"'''{value}'''"
    if style == "multiline":
        return '"""' + _escape(value, keep="\n") + '"""'
    return '"' + _escape(value) + '"'


@st.composite
def toml_documents(draw: st.DrawFn) -> tuple[str, dict[tuple[str, ...], int]]:
    """A config file of random known and unknown keys with random values, and the line
    each key is written on."""
    text = ""
    where: dict[tuple[str, ...], int] = {}
    tables = draw(st.lists(st.sampled_from(list(_KEYS)[1:]), unique=True))
    for table in [(), *tables]:  # top-level keys must come before any [table]
        if table:
            text += f"[{table[0]}]\n"
        for key in draw(st.lists(st.sampled_from(_KEYS[table]), unique=True, max_size=4)):
            where[(*table, key)] = text.count("\n") + 1
            text += f"{key} = {_toml_value(draw(_VALUES), draw(_STYLES))}\n"
    return text, where


@settings(deadline=None, max_examples=300)
@given(document=toml_documents())
def test_random_documents_give_a_config_or_located_problems(document):
    text, where = document
    located = {".".join(path): line for path, line in where.items()}
    try:
        parse_config(text, source=None, default_hostname="h.example")
    except ConfigError as exc:
        found = exc.problems
    else:
        found = []
    assert not any("invalid TOML" in p.message for p in found), text  # the generator's fault
    for problem in found:
        assert problem.line is not None
        assert problem.file == "<embedded default>"
        if problem.key in located:
            assert problem.line == located[problem.key], (problem, text)


@settings(deadline=None, max_examples=300)
@given(text=st.text(max_size=200))
def test_arbitrary_text_never_crashes(text):
    try:
        parse_config(text, source=None, default_hostname="h.example")
    except ConfigError as exc:
        problems = exc.problems
    else:
        problems = [Problem("", None, "", "none")]
    assert problems  # a ConfigError always says what is wrong
