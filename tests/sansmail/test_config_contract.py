"""Every key of CONTRACT.md is accepted, its value checked, and the ones not in force yet
reported once each (`not_in_force`): the contract's example file, the new keys one by
one, and what their mistakes read like."""

from __future__ import annotations

import pathlib
import shutil
import textwrap
import tomllib

import pytest

from sansmail.config import (
    BUILT_SERVICES,
    DEFAULT_CONFIG_TOML,
    SERVICES,
    AntispamConfig,
    Config,
    ConfigError,
    Problem,
    QuotaConfig,
    SieveConfig,
    StorageConfig,
    load_config,
    not_in_force,
    parse_config,
    warnings,
)
from sansmail.config._tables import TABLE_KEYS, TOP_KEYS

CONTRACT_EXAMPLE = pathlib.Path(__file__).parent / "contract_example.toml"

#: The keys of the CONTRACT's example that ask for something not built yet.
EXAMPLE_NOT_IN_FORCE = [s for s in ["listen.http"] if s.split(".")[1] not in BUILT_SERVICES]


def parse(text: str, tmp_path: pathlib.Path) -> Config:
    path = tmp_path / "sansmail.toml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, default_hostname="default.example")


def problems(text: str, tmp_path: pathlib.Path) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse(text, tmp_path)
    return info.value.problems


def example(tmp_path: pathlib.Path) -> pathlib.Path:
    """The CONTRACT's example, with the files it names (the TLS pair is not loaded here:
    this package has no checker for it)."""
    path = tmp_path / "sansmail.toml"
    shutil.copy(CONTRACT_EXAMPLE, path)
    for name in ("aliases", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("")
    return path


def keys_of(lines: list[str], where: str) -> list[str]:
    return [line.removeprefix(f"{where}: ").split(":")[0] for line in lines]


# --- the contract's example -------------------------------------------------------------


def test_every_key_of_the_example_is_known() -> None:
    # Read the way tomllib sees it: every top-level key and every table's keys.
    data = tomllib.loads(CONTRACT_EXAMPLE.read_text())
    for key, value in data.items():
        if isinstance(value, dict):
            assert key in TABLE_KEYS, key
            assert set(value) <= set(TABLE_KEYS[key]), (key, set(value) - set(TABLE_KEYS[key]))
        else:
            assert key in TOP_KEYS, key


def test_the_example_parses_with_its_values(tmp_path: pathlib.Path) -> None:
    config = load_config(example(tmp_path), default_hostname="unused.example")
    assert config.mail_owner == "sansmail"
    assert config.log_format == "text"
    assert list(config.listen) == list(SERVICES)  # every service, the unbuilt ones too
    assert config.listen["managesieve"] == (("127.0.0.1", 2190),)
    assert config.listen["metrics"] == (("127.0.0.1", 2980),)
    assert config.listen["http"] == (("127.0.0.1", 2080),)
    assert config.antispam == AntispamConfig()
    assert config.sieve == SieveConfig()
    assert config.storage == StorageConfig()
    assert config.quota == QuotaConfig()


def test_the_example_warns_once_per_key_not_in_force(tmp_path: pathlib.Path) -> None:
    config = load_config(example(tmp_path), default_hostname="unused.example")
    where = str(tmp_path / "sansmail.toml")
    lines = not_in_force(config)
    assert keys_of(lines, where) == EXAMPLE_NOT_IN_FORCE
    for line in lines:
        assert "accepted but not in force yet" in line
    for line in lines:
        if ": listen.http: " in line:
            assert "the listener on 127.0.0.1:2080 is skipped" in line
    # check-config's warnings hold those lines, once each.
    found = warnings(config)
    for line in lines:
        assert found.count(line) == 1


# --- the new keys ---------------------------------------------------------------------


def test_new_keys_read(tmp_path: pathlib.Path) -> None:
    (tmp_path / "before.sieve").write_text('require "fileinto";\n')
    config = parse(
        """\
        mail_owner = "_sansmail"
        log_format = "json"
        [listen]
        managesieve = "127.0.0.1:4190"
        metrics = ["127.0.0.1:9154", "[::1]:9154"]
        http = "0.0.0.0:80"
        [antispam]
        dnsbl = ["zen.spamhaus.org", "ZEN.spamhaus.org", "bl.example.net"]
        greylisting = true
        greylist_delay = "2m"
        [sieve]
        before = "before.sieve"
        [storage]
        backend = "postgresql"
        dsn = "postgresql://sansmail:s3cret@db.example.test:5432/mail"
        [quota]
        storage = "10G"
        """,
        tmp_path,
    )
    assert (config.mail_owner, config.log_format) == ("_sansmail", "json")
    assert config.listen["metrics"] == (("127.0.0.1", 9154), ("::1", 9154))
    assert config.antispam.dnsbl == ("zen.spamhaus.org", "bl.example.net")
    assert (config.antispam.greylisting, config.antispam.greylist_delay) == (True, 120)
    assert config.sieve.before == tmp_path / "before.sieve"
    assert config.storage.backend == "postgresql"
    assert config.storage.dsn.startswith("postgresql://")
    assert "s3cret" not in repr(config)  # the dsn may hold a password
    assert config.quota.storage == 10 * 2**30


@pytest.mark.parametrize(
    ("value", "octets"),
    [
        ("0", 0),
        ("123", 123),
        ('"123"', 123),
        ('"500M"', 500 * 2**20),
        ('"10G"', 10 * 2**30),
        ('"10 GB"', 10 * 2**30),
        ('"1t"', 2**40),
        ('"64k"', 64 * 2**10),
    ],
)
def test_quota_sizes(tmp_path: pathlib.Path, value: str, octets: int) -> None:
    assert parse(f"[quota]\nstorage = {value}\n", tmp_path).quota.storage == octets


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        ('mail_owner = "0day"', 1, "mail_owner", "is not a user name"),
        ('mail_owner = "has space"', 1, "mail_owner", "is not a user name"),
        ("mail_owner = 1000", 1, "mail_owner", "expected a string, not an integer 1000"),
        ('log_format = "xml"', 1, "log_format", '"text", "json"'),
        ('[listen]\nmetrics = "9154"', 2, "listen.metrics", "expected host:port"),
        ("[listen]\nhttp = 80", 2, "listen.http", "expected a string or an array of strings"),
        (
            '[listen]\nsmtp = "127.0.0.1:25"\nmanagesieve = "127.0.0.1:25"',
            3,
            "listen.managesieve",
            "is also used by smtp",
        ),
        ('[antispam]\ndnsbl = "zen.spamhaus.org"', 2, "antispam.dnsbl", "an array of strings"),
        ('[antispam]\ndnsbl = ["not a zone"]', 2, "antispam.dnsbl", "whitespace"),
        ('[antispam]\ndnsbl = ["[192.0.2.1]"]', 2, "antispam.dnsbl", "not a valid host name"),
        ('[antispam]\ngreylisting = "yes"', 2, "antispam.greylisting", "true or false"),
        ('[antispam]\ngreylist_delay = "soon"', 2, "antispam.greylist_delay", "a duration"),
        ("[antispam]\ngreylist_delay = 0", 2, "antispam.greylist_delay", "at least 1 second"),
        ('[sieve]\nbefore = "missing.sieve"', 2, "sieve.before", "no such file"),
        ("[sieve]\nbefore = true", 2, "sieve.before", "expected a string"),
        ('[storage]\nbackend = "mysql"', 2, "storage.backend", '"maildir", "postgresql"'),
        ('[storage]\nbackend = "postgresql"', 2, "storage.backend", "needs a dsn"),
        ('[storage]\ndsn = "mysql://root@db/mail"', 2, "storage.dsn", "PostgreSQL URI"),
        ("[storage]\ndsn = 5432", 2, "storage.dsn", "expected a string"),
        ('[quota]\nstorage = "10X"', 2, "quota.storage", 'like "500M", "10G"'),
        ('[quota]\nstorage = "1.5G"', 2, "quota.storage", 'like "500M", "10G"'),
        ("[quota]\nstorage = -1", 2, "quota.storage", "cannot be negative"),
        ("[quota]\nstorage = true", 2, "quota.storage", "not a boolean true"),
        ('[quota]\nstorag = "1G"', 2, "quota.storag", "did you mean 'storage'?"),
        ('[sieve]\nafter = "x"', 2, "sieve.after", "unknown key"),
        ('[quota]\nmail_owner = "x"', 2, "quota.mail_owner", "belongs at the top"),
        ('quota = "1G"', 1, "quota", "expected a table ([quota])"),
    ],
)
def test_wrong_values(
    tmp_path: pathlib.Path, text: str, line: int, key: str, fragment: str
) -> None:
    [problem] = problems(text, tmp_path)
    assert (problem.line, problem.key) == (line, key), problem
    assert fragment in problem.message, problem
    assert str(problem).startswith(f"{tmp_path / 'sansmail.toml'}:{line}: {key}: ")


def test_a_bad_dsn_is_not_quoted_back(tmp_path: pathlib.Path) -> None:
    [problem] = problems('[storage]\ndsn = "mysql://root:hunter2@db/mail"', tmp_path)
    assert "hunter2" not in str(problem)


def test_every_problem_of_the_new_keys_at_once(tmp_path: pathlib.Path) -> None:
    found = problems(
        'log_format = "xml"\n[quota]\nstorage = "lots"\n[storage]\nbackend = "x"\n', tmp_path
    )
    assert [p.key for p in found] == ["log_format", "quota.storage", "storage.backend"]


# --- what is not in force yet -------------------------------------------------------


def test_inert_values_are_not_reported(tmp_path: pathlib.Path) -> None:
    config = parse(
        """\
        log_format = "text"
        mail_owner = ""
        [listen]
        smtp = "127.0.0.1:2525"
        [antispam]
        spf = "off"
        reverse_dns = "off"
        dkim = "off"
        dmarc = "off"
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
        [quota]
        storage = 0
        """,
        tmp_path,
    )
    assert not_in_force(config) == []
    assert warnings(config) == []


def test_each_key_asking_for_something_is_reported_once(tmp_path: pathlib.Path) -> None:
    (tmp_path / "before.sieve").write_text("keep;\n")
    config = parse(
        """\
        mail_owner = "sansmail"
        log_format = "json"
        [listen]
        smtp = "127.0.0.1:2525"
        metrics = "127.0.0.1:2980"
        [antispam]
        spf = "reject"
        reverse_dns = "tag"
        dkim = "tag"
        dmarc = "enforce"
        dnsbl = ["zen.spamhaus.org"]
        greylisting = true
        greylist_delay = "10m"
        [dkim]
        selector = "s2024"
        [milter]
        milters = ["inet:127.0.0.1:8891"]
        default_action = "accept"
        [sieve]
        before = "before.sieve"
        [storage]
        backend = "postgresql"
        dsn = "postgresql://sansmail@db/mail"
        [quota]
        storage = "1G"
        """,
        tmp_path,
    )
    where = str(tmp_path / "sansmail.toml")
    # Every key is built now (the PostgreSQL backend last): nothing is reported.
    assert keys_of(not_in_force(config), where) == []


def test_a_dsn_without_its_backend_is_a_plain_warning(tmp_path: pathlib.Path) -> None:
    config = parse('[storage]\ndsn = "postgresql://db/mail"\n', tmp_path)
    assert not_in_force(config) == []
    [line] = [w for w in warnings(config) if "storage.dsn" in w]
    assert 'used only with backend = "postgresql"; ignored' in line


def test_the_embedded_default_reports_only_its_checks() -> None:
    config = parse_config(DEFAULT_CONFIG_TOML, source=None, default_hostname="h.example")
    assert keys_of(not_in_force(config), "<embedded default>") == []
    # Its listeners are the built ones but http, off by default (CONTRACT.md).
    assert set(config.listen) == BUILT_SERVICES - {"http"}
