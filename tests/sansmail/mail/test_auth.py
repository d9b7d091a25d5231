"""AuthService: failure delays, per-client throttling, bounded memory, log lines."""

from __future__ import annotations

import ipaddress
import pathlib
import re

import pytest
from argon2 import PasswordHasher
from hypothesis import given, settings
from hypothesis import strategies as st

import sansmail.mail.auth
from sansmail.mail.address import Address
from sansmail.mail.auth import (
    FAIL2BAN_FAILREGEX,
    AuthResult,
    AuthService,
    AuthSettings,
    Verdict,
    authzid_allowed,
    failure_log_line,
    login_key,
    password_allowed,
    throttle_log_line,
)
from sansmail.storage.users import UserStore

SECRET = b"k" * 32
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
IP = "192.0.2.1"
OTHER = "198.51.100.7"


class Passwords:
    """A stand-in user store that counts the checks it is asked for."""

    def __init__(self, passwords: dict[str, str] | None = None) -> None:
        self.passwords = passwords if passwords is not None else {"alice@example.test": "pw"}
        self.checked: list[str] = []

    def verify_password(self, key: str, password: str) -> bool:
        self.checked.append(key)
        return self.passwords.get(key) == password


def service(**changes: object) -> AuthService:
    return AuthService(Passwords(), secret=SECRET, settings=AuthSettings(**changes))  # type: ignore[arg-type]


def fail(auth: AuthService, ip: str, now: float, n: int = 1) -> list[float]:
    return [auth.record(ip, False, now) for _ in range(n)]


def test_public_surface() -> None:
    assert sorted(sansmail.mail.auth.__all__) == [
        "AuthResult",
        "AuthService",
        "AuthSettings",
        "FAIL2BAN_FAILREGEX",
        "PasswordVerifier",
        "Verdict",
        "authzid_allowed",
        "failure_log_line",
        "login_key",
        "password_allowed",
        "throttle_log_line",
    ]


# -- the failure delay ------------------------------------------------------------------------


def test_delay_doubles_up_to_the_cap() -> None:
    # Dovecot's auth penalty: 2, 4, 8, then 15 s for every further failure.
    auth = service(max_failures=100)
    delays = [auth.record(IP, False, now) for now in range(0, 60, 10)]
    assert delays == [2.0, 4.0, 8.0, 15.0, 15.0, 15.0]


def test_success_resets_the_delay() -> None:
    auth = service()
    assert fail(auth, IP, 0.0, 3) == [2.0, 4.0, 8.0]
    assert auth.record(IP, True, 20.0) == 0.0
    assert auth.record(IP, False, 21.0) == 2.0


def test_quiet_window_resets_the_delay() -> None:
    auth = service()
    assert fail(auth, IP, 0.0, 3) == [2.0, 4.0, 8.0]
    assert auth.record(IP, False, 599.0) == 15.0  # still within the window
    assert auth.record(IP, False, 599.0 + 600.5) == 2.0


def test_begin_delays_parallel_attempts() -> None:
    # A failure at t=0 costs 2 s; an attempt on another connection at t=0.5 waits for the
    # rest, so more connections do not buy more guesses.
    auth = service()
    assert auth.begin(IP, 0.0) == Verdict(allowed=True)
    auth.record(IP, False, 0.0)
    assert auth.begin(IP, 0.5) == Verdict(allowed=True, delay=1.5)
    assert auth.begin(IP, 2.0) == Verdict(allowed=True, delay=0.0)
    auth.record(IP, False, 2.0)  # streak 2: 4 s
    assert auth.begin(IP, 3.0).delay == pytest.approx(3.0)
    assert auth.begin(OTHER, 3.0) == Verdict(allowed=True)  # other clients are not slowed


def test_begin_changes_nothing() -> None:
    auth = service()
    for now in range(100):
        assert auth.begin(IP, float(now)).allowed
    assert auth.tracked_clients == 0


# -- throttling -------------------------------------------------------------------------------


def test_too_many_failures_lock_the_client_out() -> None:
    auth = service()
    for i in range(9):
        auth.record(IP, False, float(i))
        assert auth.begin(IP, float(i) + 20).allowed
    auth.record(IP, False, 9.0)
    verdict = auth.begin(IP, 10.0)
    assert not verdict.allowed
    assert verdict.retry_after == pytest.approx(599.0)
    assert "too many" in verdict.reason
    assert auth.begin(OTHER, 10.0).allowed
    assert not auth.begin(IP, 608.9).allowed
    assert auth.begin(IP, 609.0).allowed
    # After the lockout the count starts afresh: one more failure does not lock again.
    auth.record(IP, False, 609.0)
    assert auth.begin(IP, 700.0).allowed


def test_failures_spread_beyond_the_window_do_not_lock() -> None:
    auth = service()
    for i in range(30):
        auth.record(IP, False, i * 67.0)  # 10 failures take 603 s > 600 s
        assert auth.begin(IP, i * 67.0 + 1).allowed
    locked = service()
    for i in range(10):
        locked.record(IP, False, i * 61.0)  # 10 failures within 549 s
    assert not locked.begin(IP, 550.0).allowed


def test_success_does_not_reset_the_count() -> None:
    # Otherwise an attacker with one account could log into it between guesses.
    auth = service()
    for i in range(9):
        auth.record(IP, False, float(i))
        auth.record(IP, True, float(i))
    auth.record(IP, False, 9.0)
    assert not auth.begin(IP, 10.0).allowed


def test_repeating_the_same_wrong_password_is_not_counted() -> None:
    auth = service()
    same = auth.attempt_id("alice@example.test", "old password")
    delays = [auth.record(IP, False, float(i), attempt=same) for i in range(50)]
    assert delays == [2.0] * 50  # still delayed, never escalated
    assert auth.begin(IP, 51.0).allowed
    # Different passwords count.
    for i in range(9):
        auth.record(IP, False, 60.0 + i, attempt=auth.attempt_id("alice@example.test", f"g{i}"))
    assert not auth.begin(IP, 70.0).allowed


def test_remembered_attempts_are_bounded() -> None:
    auth = service(remembered_attempts=2, max_failures=100)
    a, b, c = (auth.attempt_id("u@example.test", p) for p in "abc")
    assert [auth.record(IP, False, 0.0, attempt=x) for x in (a, b, c)] == [2.0, 4.0, 8.0]
    assert auth.record(IP, False, 0.0, attempt=c) == 8.0  # remembered
    assert auth.record(IP, False, 0.0, attempt=a) == 15.0  # forgotten: counted again


def test_ipv6_clients_are_grouped_by_prefix() -> None:
    auth = service(max_failures=3)
    auth.record("2001:db8:1:2::1", False, 0.0)
    auth.record("2001:db8:1:ffff::9", False, 0.0)
    auth.record("2001:db8:1:0:1234::1", False, 0.0)
    assert not auth.begin("2001:db8:1:abcd::77", 1.0).allowed
    assert auth.begin("2001:db8:2::1", 1.0).allowed
    assert auth.tracked_clients == 1


def test_ipv4_mapped_addresses_count_as_ipv4() -> None:
    auth = service(max_failures=2)
    auth.record("::ffff:192.0.2.1", False, 0.0)
    auth.record(ipaddress.ip_address("192.0.2.1"), False, 0.0)
    assert not auth.begin(IP, 1.0).allowed
    assert not auth.begin("::ffff:192.0.2.1", 1.0).allowed


def test_exempt_networks_are_never_throttled() -> None:
    auth = service(exempt=["127.0.0.0/8", "::1/128"])
    for i in range(50):
        assert auth.record("127.0.0.1", False, float(i)) == 2.0  # flat, never doubled
        assert auth.record("::1", False, float(i)) == 2.0
    assert auth.begin("127.0.0.1", 50.0) == Verdict(allowed=True)
    assert auth.begin("::ffff:127.0.0.1", 50.0) == Verdict(allowed=True)
    assert auth.tracked_clients == 0


def test_unparseable_clients_share_one_slot() -> None:
    auth = service(max_failures=2)
    auth.record(None, False, 0.0)
    auth.record("not an address", False, 0.0)
    assert not auth.begin(None, 1.0).allowed
    assert auth.begin(IP, 1.0).allowed


# -- memory -----------------------------------------------------------------------------------


def test_table_is_capped() -> None:
    auth = service(max_clients=100)
    for i in range(1000):
        auth.record(str(ipaddress.IPv4Address(0x0A000000 + i)), False, 0.0)
        assert auth.tracked_clients <= 100
    assert auth.tracked_clients == 100
    # The least recently failing went first; the latest are still tracked.
    assert auth.begin("10.0.3.231", 0.5).delay > 0  # the 1000th
    assert auth.begin("10.0.0.0", 0.5).delay == 0  # the first, evicted


def test_quiet_clients_are_forgotten() -> None:
    auth = service()
    for i in range(50):
        auth.record(f"10.0.0.{i}", False, 0.0)
    assert auth.tracked_clients == 50
    auth.record(OTHER, False, 601.0)  # any later failure sweeps the stale ones
    assert auth.tracked_clients == 1


def test_locked_out_clients_are_kept_until_the_lockout_ends() -> None:
    auth = service(max_failures=1, window=10.0, lockout=100.0)
    auth.record(IP, False, 0.0)
    auth.record(OTHER, False, 50.0)  # sweeps; IP is quiet for 50 s but still locked out
    assert auth.tracked_clients == 2
    assert not auth.begin(IP, 50.0).allowed
    auth.record("203.0.113.1", False, 101.0)  # IP's lockout is over: swept now
    assert auth.begin(IP, 101.0) == Verdict(allowed=True)
    assert auth.tracked_clients == 2  # OTHER (locked until 150) and the newcomer
    assert not auth.begin(OTHER, 101.0).allowed


def test_success_drops_a_clean_entry() -> None:
    auth = service()
    auth.record(IP, True, 0.0)
    assert auth.tracked_clients == 0
    auth.record(IP, False, 0.0)
    auth.record(IP, True, 1.0)
    assert auth.tracked_clients == 1  # the failure still counts in the window
    auth.record(IP, True, 700.0)
    assert auth.tracked_clients == 0


operations = st.lists(
    st.tuples(
        st.sampled_from(["begin", "fail", "ok", "repeat"]),
        st.sampled_from(
            ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8:0:1::1", "10.9.8.7", None]
        ),
        st.floats(min_value=0, max_value=200),
    ),
    max_size=60,
)


@settings(deadline=None, max_examples=150)
@given(ops=operations, max_clients=st.integers(min_value=1, max_value=4))
def test_any_sequence_stays_bounded(
    ops: list[tuple[str, str | None, float]], max_clients: int
) -> None:
    auth = service(max_clients=max_clients, max_failures=3, window=50.0, lockout=30.0)
    now = 0.0
    for op, ip, step in ops:
        now += step
        if op == "begin":
            verdict = auth.begin(ip, now)
            assert 0 <= verdict.delay <= 15.0
            assert verdict.allowed or 0 < verdict.retry_after <= 30.0
        else:
            attempt = auth.attempt_id("u@example.test", "same") if op == "repeat" else None
            delay = auth.record(ip, op == "ok", now, attempt=attempt)
            assert delay == 0.0 if op == "ok" else 2.0 <= delay <= 15.0
        assert auth.tracked_clients <= max_clients


@settings(deadline=None, max_examples=100)
@given(gaps=st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=40))
def test_guesses_per_window_are_limited(gaps: list[float]) -> None:
    # Whatever the timing, a client that only starts when `begin` allows it never gets
    # more than max_failures counted guesses into any window.
    auth = service(max_failures=5, window=100.0, lockout=100.0)
    now = 0.0
    guesses: list[float] = []
    for gap in gaps:
        now += gap
        verdict = auth.begin(IP, now)
        if verdict.allowed:
            now += verdict.delay
            guesses.append(now)
            now += auth.record(IP, False, now)
    for start in guesses:
        assert sum(1 for t in guesses if start <= t < start + 100.0) <= 5


# -- checking passwords -----------------------------------------------------------------------


def test_check_password() -> None:
    users = Passwords()
    auth = AuthService(users, secret=SECRET)
    result = auth.check_password("alice@example.test", "pw", client_ip=IP, now=0.0)
    assert result == AuthResult(ok=True, delay=0.0)
    result = auth.check_password("alice@example.test", "nope", client_ip=IP, now=1.0)
    assert result == AuthResult(ok=False, delay=2.0, reason="authentication failed")
    # An unknown user is told exactly the same thing.
    result = auth.check_password("bob@example.test", "pw", client_ip=OTHER, now=1.0)
    assert result == AuthResult(ok=False, delay=2.0, reason="authentication failed")
    assert users.checked == ["alice@example.test", "alice@example.test", "bob@example.test"]


def test_check_password_adds_the_parallel_wait() -> None:
    auth = AuthService(Passwords(), secret=SECRET)
    auth.check_password("alice@example.test", "x", client_ip=IP, now=0.0)  # penalty 2 s
    result = auth.check_password("alice@example.test", "y", client_ip=IP, now=0.5)
    assert result.delay == pytest.approx(1.5 + 4.0)


def test_throttled_check_does_not_verify() -> None:
    users = Passwords()
    auth = AuthService(users, secret=SECRET, settings=AuthSettings(max_failures=2))
    for i in range(2):
        auth.check_password("alice@example.test", f"guess{i}", client_ip=IP, now=float(i * 20))
    checked = len(users.checked)
    result = auth.check_password("alice@example.test", "pw", client_ip=IP, now=50.0)
    assert result.throttled
    assert not result.ok
    assert "too many" in result.reason
    assert len(users.checked) == checked  # the right password was never even tried


def test_with_the_real_user_store(tmp_path: pathlib.Path) -> None:
    users = UserStore(tmp_path / "users.json", hasher=FAST)
    users.add(Address(local_part="Alice", domain="example.test"), "pw")
    auth = AuthService(users, secret=SECRET)
    key = login_key("ALICE@Example.Test")
    assert auth.verify_password(key, "pw")
    assert not auth.verify_password(key, "PW")
    assert not auth.verify_password(login_key("not an address"), "pw")
    assert auth.check_password(key, "pw", client_ip=IP, now=0.0).ok


def test_attempt_id() -> None:
    auth = service()
    first = auth.attempt_id("alice@example.test", "pw")
    assert len(first) == 16
    assert auth.attempt_id("alice@example.test", "pw") == first
    assert auth.attempt_id("alice@example.test", "pw2") != first
    assert auth.attempt_id("bob@example.test", "pw") != first
    # NUL separates the parts, so shifting characters between them changes the id.
    assert auth.attempt_id("a", "bc") != auth.attempt_id("ab", "c")
    other = AuthService(Passwords(), secret=b"z" * 32)
    assert other.attempt_id("alice@example.test", "pw") != first
    assert b"pw" not in first


def test_construction_is_checked() -> None:
    with pytest.raises(ValueError, match="secret"):
        AuthService(Passwords(), secret=b"short")
    for bad in (
        {"failure_delay": 0},
        {"window": -1},
        {"lockout": 0},
        {"max_failures": 0},
        {"max_clients": 0},
        {"ipv6_prefix": 129},
        {"remembered_attempts": -1},
        {"failure_delay": 5, "max_failure_delay": 4},
    ):
        with pytest.raises(ValueError):
            AuthSettings(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AuthSettings(exempt=["not a network"])


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authcid", "key"),
    [
        ("alice@example.test", "alice@example.test"),
        ("ALICE@Example.TEST", "alice@example.test"),
        ('"Alice"@example.test', "alice@example.test"),
        ("alice@bücher.example", "alice@xn--bcher-kva.example"),
        ("alice", ""),
        ("", ""),
        ("alice@example.test.", ""),
        ("alice@example.test\r\nx", ""),
    ],
)
def test_login_key(authcid: str, key: str) -> None:
    assert login_key(authcid) == key


def test_authzid_allowed() -> None:
    assert authzid_allowed("", "alice@example.test")
    assert authzid_allowed("Alice@EXAMPLE.test", "alice@example.test")
    assert not authzid_allowed("bob@example.test", "alice@example.test")
    assert not authzid_allowed("garbage", "")


# -- log lines --------------------------------------------------------------------------------

FAILREGEX = re.compile(FAIL2BAN_FAILREGEX.replace("<HOST>", r"(?P<host>\S+)"))


def test_failure_log_line() -> None:
    line = failure_log_line(
        service="smtp", method="PLAIN", user="alice@example.test", client_ip="192.0.2.1"
    )
    assert (
        line == "auth failed: service=smtp, method=PLAIN, user=<alice@example.test>, rip=192.0.2.1"
    )
    match = FAILREGEX.search("Nov 27 19:13:02 mx sansmail[12]: " + line)
    assert match is not None
    assert match["host"] == "192.0.2.1"


@pytest.mark.parametrize(
    ("user", "shown"),
    [
        ("x>, rip=203.0.113.9", r"x\x3e, rip=203.0.113.9"),
        ("a\r\nauth failed: rip=203.0.113.9", r"a\x0d\x0aauth failed: rip=203.0.113.9"),
        ("<evil>", r"\x3cevil\x3e"),
        ("back\\slash", r"back\x5cslash"),
        ("müller", r"m\xfcller"),
        ("\u202eevil", r"\u202eevil"),  # right-to-left override
        ("\U0001f600", r"\U0001f600"),
        ("", ""),
        ("x" * 300, "x" * 256 + "..."),
    ],
)
def test_user_names_cannot_forge_log_lines(user: str, shown: str) -> None:
    line = failure_log_line(service="imap", method="LOGIN", user=user, client_ip="2001:db8::1")
    assert line == f"auth failed: service=imap, method=LOGIN, user=<{shown}>, rip=2001:db8::1"


@settings(deadline=None, max_examples=200)
@given(
    user=st.text(),
    method=st.text(max_size=40),
    ip=st.one_of(
        st.ip_addresses().map(str),
        st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    ),
)
def test_fail2ban_always_finds_the_real_client(user: str, method: str, ip: str) -> None:
    line = failure_log_line(service="smtp", method=method, user=user, client_ip=ip)
    assert "\n" not in line
    assert "\r" not in line
    assert line.isascii()
    assert line.isprintable()
    match = FAILREGEX.search(line)
    assert match is not None
    expected = ipaddress.ip_address(ip)
    if isinstance(expected, ipaddress.IPv6Address) and expected.ipv4_mapped is not None:
        expected = expected.ipv4_mapped
    assert ipaddress.ip_address(match["host"]) == expected
    assert FAILREGEX.findall(line) == [match["host"]]  # one address, and it is the client's


def test_method_and_service() -> None:
    line = failure_log_line(service="pop3", method="scram-sha-256", user="u", client_ip=None)
    assert line == "auth failed: service=pop3, method=SCRAM-SHA-256, user=<u>, rip=unknown"
    line = failure_log_line(service="smtp", method="X Y, rip=1.2.3.4", user="u", client_ip=IP)
    assert "method=unknown," in line
    with pytest.raises(ValueError, match="service"):
        failure_log_line(service="smtp, rip=1.2.3.4", method="PLAIN", user="u", client_ip=IP)


def test_throttle_log_line_is_not_a_failure() -> None:
    line = throttle_log_line(service="smtp", client_ip="::ffff:192.0.2.1", retry_after=599.6)
    assert line == "auth throttled: service=smtp, retry_after=600s, rip=192.0.2.1"
    assert FAILREGEX.search(line) is None


def test_the_documented_filter_is_the_tested_one() -> None:
    assert f"failregex = {FAIL2BAN_FAILREGEX}\n" in (sansmail.mail.auth.__doc__ or "")


def test_password_allowed_over_tls_or_as_plaintext_auth_says() -> None:
    for mode in ("never", "loopback", "always"):
        assert password_allowed(tls_active=True, client_ip="192.0.2.1", plaintext_auth=mode)
    assert password_allowed(tls_active=False, client_ip="192.0.2.1", plaintext_auth="always")
    assert password_allowed(tls_active=False, client_ip="127.0.0.1", plaintext_auth="loopback")
    assert password_allowed(tls_active=False, client_ip="::1", plaintext_auth="loopback")
    assert not password_allowed(tls_active=False, client_ip="192.0.2.1", plaintext_auth="loopback")
    assert not password_allowed(tls_active=False, client_ip="127.0.0.1", plaintext_auth="never")
    assert not password_allowed(tls_active=False, client_ip="garbage", plaintext_auth="loopback")
