"""The ``[limits]`` table: every key read, checked, defaulted, and warned about when one
cap makes another pointless."""

from __future__ import annotations

import pathlib

import attrs
import pytest

from sansmail.config import (
    DEFAULT_CONFIG_TOML,
    Config,
    ConfigError,
    LimitsConfig,
    load_config,
    warnings,
)


def parse(text: str, tmp_path: pathlib.Path) -> Config:
    path = tmp_path / "sansmail.toml"
    path.write_text(text)
    return load_config(path, default_hostname="mx.example.test")


def test_the_embedded_default_spells_out_every_limit(tmp_path: pathlib.Path) -> None:
    config = parse(DEFAULT_CONFIG_TOML, tmp_path)
    assert config.limits == LimitsConfig()
    for name in attrs.fields_dict(LimitsConfig):
        assert f"\n{name} = " in DEFAULT_CONFIG_TOML


def test_every_key_is_read(tmp_path: pathlib.Path) -> None:
    text = """
        [limits]
        pop3_max_connections = 7
        pop3_max_connections_per_ip = 3
        imap_max_connections = 9
        imap_max_connections_per_ip = 4
        max_userip_connections = 2
        imap_max_line_length = 10000
        imap_max_command_size = 70000
        commands_per_second = 0
        client_message_rate = 5
        client_recipient_rate = 6
        user_message_rate = 0
        user_recipient_rate = 8
        auth_max_failures = 3
        auth_failure_window = "2m"
        auth_lockout = "1h"
    """
    config = parse("\n".join(line.strip() for line in text.splitlines()), tmp_path)
    assert config.limits == LimitsConfig(
        pop3_max_connections=7,
        pop3_max_connections_per_ip=3,
        imap_max_connections=9,
        imap_max_connections_per_ip=4,
        max_userip_connections=2,
        imap_max_line_length=10000,
        imap_max_command_size=70000,
        commands_per_second=0,
        client_message_rate=5,
        client_recipient_rate=6,
        user_message_rate=0,
        user_recipient_rate=8,
        auth_max_failures=3,
        auth_failure_window=120,
        auth_lockout=3600,
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("imap_max_connections = 0", "limits.imap_max_connections"),
        ("max_userip_connections = -1", "limits.max_userip_connections"),
        ("imap_max_line_length = 8191", "limits.imap_max_line_length"),
        ("imap_max_command_size = 1024", "limits.imap_max_command_size"),
        ("client_message_rate = -5", "limits.client_message_rate"),
        ('client_message_rate = "fast"', "limits.client_message_rate"),
        ('auth_lockout = "never"', "limits.auth_lockout"),
        ("auth_max_failures = 0", "limits.auth_max_failures"),
        ("max_userip_conections = 3", "did you mean 'max_userip_connections'"),
    ],
)
def test_bad_values_are_problems_with_their_line(
    tmp_path: pathlib.Path, text: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(f"\n[limits]\n{text}\n", tmp_path)
    assert f"sansmail.toml:3: {fragment}" in str(caught.value) or (
        "sansmail.toml:3:" in str(caught.value) and fragment in str(caught.value)
    )


def test_a_per_ip_cap_above_the_total_is_warned_about(tmp_path: pathlib.Path) -> None:
    config = parse(
        "[limits]\nimap_max_connections = 5\nimap_max_connections_per_ip = 6\n", tmp_path
    )
    assert any("limits.imap_max_connections_per_ip: larger than" in w for w in warnings(config))
    assert not any("pop3_max" in w for w in warnings(config))


# Two findings of fuzz/fuzz_config.py: both raised out of the parser instead of a problem.


def test_a_path_too_long_to_look_at_is_a_problem(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(f'aliases = "{"a" * 300}"\n[tls]\ncert = "{"c" * 300}"\nkey = "k"\n', tmp_path)
    message = str(caught.value)
    assert "sansmail.toml:1: aliases: " in message
    assert "sansmail.toml:3: tls.cert: " in message
    assert message.count("cannot be looked at: File name too long") == 2


@pytest.mark.parametrize("header", ['[a."\\x"]', '["\\u0000"]', "['\\x01']"])
def test_a_table_name_toml_refuses_is_a_problem(tmp_path: pathlib.Path, header: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(f"{header}\nkey = 1\n", tmp_path)
    assert "sansmail.toml:1:" in str(caught.value)
