"""The [delivery] keys of outbound delivery: retry schedule, concurrency, relayhost
credentials, the MX port, parent-domain transport entries."""

from __future__ import annotations

import pathlib
import textwrap

import pytest

from sansmail.config import Config, ConfigError, NextHop, load_config
from sansmail.mail.retry import RetryPolicy


def parse(text: str, tmp_path: pathlib.Path) -> Config:
    path = tmp_path / "sansmail.toml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, default_hostname="default.example")


def problems(text: str, tmp_path: pathlib.Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, tmp_path)
    return [str(p) for p in info.value.problems]


def test_defaults_are_postfix_like(tmp_path):
    d = parse("", tmp_path).delivery
    assert (d.minimal_backoff, d.maximal_backoff) == (300, 3600)
    assert d.delay_warning == 4 * 3600
    assert d.destination_concurrency_limit == 20
    assert d.smtp_port == 25
    assert d.mta_sts is True
    assert d.mta_sts_port == 443
    assert d.relayhost_username == ""
    assert d.relayhost_password_file is None
    policy = RetryPolicy.from_config(d)
    assert policy.max_lifetime == 5 * 86400
    assert policy.delay_warning == 4 * 3600


def test_every_key(tmp_path):
    (tmp_path / "relay.secret").write_text("s3cret\n")
    (tmp_path / "ca.pem").write_text("x")
    d = parse(
        """\
        [delivery]
        relayhost = "[smtp.isp.example]:587"
        transport = { ".corp.example" = "[10.1.1.1]:25", "peer.test" = "127.0.0.1:2626" }
        delay_warning = 0
        minimal_backoff = "1m"
        maximal_backoff = "2h"
        destination_concurrency_limit = 3
        smtp_port = 2526
        relayhost_username = "me@example.org"
        relayhost_password_file = "relay.secret"
        tls_ca_file = "ca.pem"
        mta_sts = false
        mta_sts_port = 8443
        """,
        tmp_path,
    ).delivery
    assert d.transport[".corp.example"] == NextHop(host="10.1.1.1", port=25, mx_lookup=False)
    assert (d.minimal_backoff, d.maximal_backoff, d.delay_warning) == (60, 7200, 0)
    assert d.destination_concurrency_limit == 3
    assert d.smtp_port == 2526
    assert d.relayhost_password_file == tmp_path / "relay.secret"
    assert d.tls_ca_file == tmp_path / "ca.pem"
    assert d.mta_sts is False
    assert d.mta_sts_port == 8443
    assert RetryPolicy.from_config(d).delay_warning is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('minimal_backoff = "1h"\nmaximal_backoff = "1m"', "delivery.maximal_backoff"),
        ("smtp_port = 70000", "delivery.smtp_port: must be at most 65535"),
        ("smtp_port = 0", "delivery.smtp_port"),
        ("destination_concurrency_limit = 0", "delivery.destination_concurrency_limit"),
        ('relayhost = "[r.example]"\nrelayhost_username = "me"', "go together"),
        ('relayhost_username = "me"\nrelayhost_password_file = "pw"', "no such file"),
        ('tls_ca_file = "missing.pem"', "delivery.tls_ca_file"),
        ('mta_sts = "yes"', "delivery.mta_sts"),
        ("mta_sts_port = 0", "delivery.mta_sts_port"),
        ("mta_sts_port = 65536", "delivery.mta_sts_port: must be at most 65535"),
        ('transport = { ".bad domain" = "h:25" }', "delivery.transport"),
    ],
)
def test_mistakes_are_reported_with_key(tmp_path, text, needle):
    found = problems("[delivery]\n" + text + "\n", tmp_path)
    assert any(needle in p for p in found), found


def test_credentials_without_relayhost(tmp_path):
    (tmp_path / "pw").write_text("x")
    found = problems(
        '[delivery]\nrelayhost_username = "me"\nrelayhost_password_file = "pw"\n', tmp_path
    )
    assert any("only used with a relayhost" in p for p in found), found
