"""The ``[auth]`` table: the auth cache's size and TTLs, their defaults (the embedded
default file says the same) and their checks. What `serve` builds from them is tested in
tests/sansmail_trio/test_auth_cache_e2e.py."""

from __future__ import annotations

import pytest

from sansmail.config import DEFAULT_CONFIG_TOML, ConfigError, parse_config
from sansmail.config._model import AuthConfig
from sansmail.config._tables import TABLE_KEYS
from sansmail.mail.authcache import AuthCacheSettings


def parse(text: str) -> AuthConfig:
    return parse_config(text, source=None, default_hostname="h.example").auth


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source=None, default_hostname="h.example")
    return [str(p) for p in info.value.problems]


def test_the_defaults_are_dovecots_ttls_and_ten_thousand_entries() -> None:
    assert parse("") == AuthConfig() == parse(DEFAULT_CONFIG_TOML)
    assert AuthConfig() == AuthConfig(cache_size=10_000, cache_ttl=3600, cache_negative_ttl=3600)
    # The attrs defaults of the pure cache agree with the file's.
    cache = AuthCacheSettings()
    assert (cache.size, cache.ttl, cache.negative_ttl) == (10_000, 3600, 3600)
    assert TABLE_KEYS["auth"] == ("cache_size", "cache_ttl", "cache_negative_ttl")


def test_values_are_read_with_units() -> None:
    text = '[auth]\ncache_size = 500\ncache_ttl = "15m"\ncache_negative_ttl = 0\n'
    assert parse(text) == AuthConfig(cache_size=500, cache_ttl=900, cache_negative_ttl=0)
    assert parse("[auth]\ncache_size = 0\n").cache_size == 0


def test_mistakes_are_reported_with_their_lines() -> None:
    text = (
        '[auth]\ncache_size = -1\ncache_ttl = "soon"\ncache_negative_ttl = "-5m"\ncache_sise = 3\n'
    )
    assert problems(text) == [
        "<embedded default>:2: auth.cache_size: must be between 0 and 1000000, not -1",
        '<embedded default>:3: auth.cache_ttl: expected a duration like "30s", "5m", "2h", '
        "\"5d\" or a number of seconds, not a string 'soon'",
        '<embedded default>:4: auth.cache_negative_ttl: expected a duration like "30s", '
        '"5m", "2h", "5d" or a number of seconds, not a string \'-5m\'',
        "<embedded default>:5: auth.cache_sise: unknown key; did you mean 'cache_size'?",
    ]
    assert problems("[auth]\ncache_size = 1000001\n") == [
        "<embedded default>:2: auth.cache_size: must be between 0 and 1000000, not 1000001"
    ]
    assert problems('[auth]\ncache_size = "big"\n') == [
        "<embedded default>:2: auth.cache_size: expected an integer, not a string 'big'"
    ]
    assert problems("cache_ttl = 5\n") == [
        "<embedded default>:1: cache_ttl: unknown key; 'cache_ttl' belongs in the [auth] table"
    ]
