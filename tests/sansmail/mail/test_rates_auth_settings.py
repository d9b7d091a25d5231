"""The auth lockout's keys of ``[limits]`` reach `AuthSettings` (what `serve` builds)."""

from __future__ import annotations

import ipaddress

from sansmail.config import Config, parse_config
from sansmail.mail.auth import AuthService, AuthSettings


def _config(text: str) -> Config:
    return parse_config(
        'hostname = "mx.example.test"\ndata_dir = "/nonexistent"\n' + text,
        source=None,
        default_hostname="mx.example.test",
    )


class _Nobody:
    def verify_password(self, key: str, password: str) -> bool:
        return False


def test_the_limits_table_sets_failures_window_and_lockout() -> None:
    config = _config(
        'mynetworks = ["192.0.2.0/24"]\n[limits]\nauth_max_failures = 3\n'
        'auth_failure_window = "2m"\nauth_lockout = "1h"\n'
    )
    settings = AuthSettings.from_config(config)
    assert (settings.max_failures, settings.window, settings.lockout) == (3, 120.0, 3600.0)
    assert settings.exempt == (ipaddress.ip_network("192.0.2.0/24"),)
    # The delays are not in the table: Dovecot's.
    assert (settings.failure_delay, settings.max_failure_delay) == (2.0, 15.0)
    # The default table gives the documented defaults.
    default = AuthSettings.from_config(_config(""))
    assert (default.max_failures, default.window, default.lockout) == (10, 600.0, 600.0)


def test_the_third_failure_locks_the_address_out_for_the_lockout() -> None:
    config = _config('[limits]\nauth_max_failures = 3\nauth_lockout = "5m"\n')
    auth = AuthService(_Nobody(), secret=bytes(16), settings=AuthSettings.from_config(config))
    for n in range(3):
        assert auth.begin("198.51.100.7", 100.0 + n).allowed
        auth.record("198.51.100.7", False, 100.0 + n, attempt=bytes([n]))
    verdict = auth.begin("198.51.100.7", 103.0)
    assert not verdict.allowed
    assert verdict.retry_after == 300.0 - 1.0
    assert auth.begin("198.51.100.7", 102.0 + 300.0).allowed
    assert auth.begin("127.0.0.1", 103.0).allowed  # another address
