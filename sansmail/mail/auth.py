"""The authentication service: who may try to log in, whether a password is right, how
long to make a failing client wait, and the log line that records each failure.

One service for every protocol, as Dovecot's auth process serves Postfix and its own IMAP
and POP3: SMTP AUTH, POP3 USER/PASS and AUTH, IMAP LOGIN and AUTHENTICATE all use it, so
a client that fails over IMAP is also slowed down over SMTP.

Theory of operation
-------------------
Time is a parameter (``now``, in seconds on any monotonic clock) and waiting is the
caller's job: the service says how long to wait and never sleeps, reads a clock, starts a
thread or draws a random number. One attempt takes three steps, so that the adapter can run
the expensive middle one (argon2, deliberately slow CPU work) in a worker thread::

    verdict = service.begin(client_ip, now)          # may this client try at all?
    if not verdict.allowed:
        answer "temporary failure" (SMTP: 454 4.7.0, RFC 4954 §6); log throttle_log_line()
    else:
        wait verdict.delay
        ok = service.verify_password(key, password)   # blocking: a worker thread
        delay = service.record(client_ip, ok, now, attempt=service.attempt_id(key, password))
        wait delay, then answer (SMTP: 235 2.7.0, or 535 5.7.8); on failure log
        failure_log_line(...)

SCRAM and CRAM-MD5 check their proofs inside the mechanism (`sansmail.sasl`); for them the
adapter calls `begin` and `record` around the exchange and skips `verify_password`.
`check_password` does all three steps in one blocking call.

The auth cache. A service may carry an `AuthCache` (`cache`, `sansmail.mail.authcache`):
the verdicts of recent password checks, so that a client logging in again with the same
password skips argon2 and the worker thread. The sessions' logins consult it
(`sansmail.sessions.login`), since they know the user's record it is checked against;
`verify_password` and `check_password` never do. A remembered verdict goes through
`begin` and `record` like a fresh one: the throttle, the delays and the repeat rule below
see no difference.

The numbers, and where they come from (all in `AuthSettings`):

* Failure delay. Each failed attempt is answered only after a delay that starts at 2 s and
  doubles with each consecutive failure from the same client, up to 15 s: Dovecot's auth
  penalty (``AUTH_PENALTY_INIT_SECS`` 2, ``AUTH_PENALTY_MAX_SECS`` 15 in auth-penalty.h).
  A success resets the streak, and so does a quiet `window`. `begin` also makes a
  *parallel* attempt from that client wait until the penalty of its last failure has run
  out, so opening more connections does not buy more guesses (Dovecot delays the next
  request by the penalty in the same way).
* Throttling. After `max_failures` (10) failures within `window` (10 minutes) the client
  is refused outright for `lockout` (10 minutes), without a password check (``[limits]``
  auth_max_failures, auth_failure_window and auth_lockout): a temporary
  error, like Postfix's anvil-based ``smtpd_client_auth_rate_limit`` (counted per
  ``anvil_rate_time_unit``, 60 s by default; we count over a longer window because a
  patient guesser at one try per delay would never hit a per-minute limit). fail2ban's
  stock jails use 5 failures in 10 minutes; we allow more so that fail2ban, which bans at
  the firewall, acts first where it is installed, and a user fumbling a password on a new
  phone is not locked out at once.
* Repeats are free. A client that sends the *same* wrong password for the same user again
  (a phone with a stale password, retrying every minute) is not counted again: Dovecot
  keeps checksums of recent wrong passwords for the same reason. `attempt_id` is a keyed
  hash (HMAC-SHA-256 with the service's `secret`, truncated) so that wrong passwords,
  often near-misses of the right one, are never kept in memory in the clear.
* Clients. A client is its IP address; IPv6 clients are grouped by /48 (Dovecot's
  ``PENALTY_IPV6_MASK_BITS``), since one IPv6 attacker has a whole prefix to hop around
  in. An IPv4-mapped IPv6 address counts as the IPv4 address.
* Trusted networks (`AuthSettings.exempt`, normally ``mynetworks``) are never throttled
  and get the flat first-failure delay: Postfix's ``smtpd_client_event_limit_exceptions``
  defaults to ``$mynetworks`` for the same reason (a webmail or a test suite on localhost
  must not lock itself out).
* Bounded memory. Only clients that failed are tracked; entries are dropped once quiet for
  `window` and out of lockout, and at most `max_clients` are kept, the least recently
  failing dropped first. Each entry holds at most `max_failures` timestamps and
  `remembered_attempts` 16-byte ids, about 1 KiB, so the default cap is about 10 MiB. An
  attacker with more addresses than the cap can push a locked-out address out of the
  table: the limit is a brake on guessing, not a ban (that is fail2ban's job).

Constant time. `verify_password` goes to `UserStore.verify_password`, which checks an
unknown user against a dummy argon2 hash, so the answer takes as long either way; the
failure reason given to the client never says which it was.

Logging. `failure_log_line` gives one line per failure, in a fixed form::

    auth failed: service=smtp, method=PLAIN, user=<alice@example.test>, rip=192.0.2.1

The client's IP comes last, and the user name (chosen by the client) has every character
that could end the field or forge a line (``<``, ``>``, ``\\``, controls, non-ASCII)
escaped, so one fail2ban filter matches it exactly (``FAIL2BAN_FAILREGEX``)::

    # /etc/fail2ban/filter.d/sansmail.conf
    [Definition]
    failregex = auth failed: service=\\S+, method=\\S+, user=<[^>]*>, rip=<HOST>$
    ignoreregex =

`throttle_log_line` words the refusals differently (``auth throttled: ...``) so that the
filter counts guesses, not refusals.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable
from typing import Final, Protocol

import attrs

from sansmail.config import Config
from sansmail.mail.address import AddressError, parse_address
from sansmail.mail.authcache import AuthCache
from sansmail.mail.logtext import ClientAddress, client_address, show_ip

__all__ = [
    "FAIL2BAN_FAILREGEX",
    "AuthResult",
    "AuthService",
    "AuthSettings",
    "PasswordVerifier",
    "Verdict",
    "authzid_allowed",
    "failure_log_line",
    "login_key",
    "password_allowed",
    "throttle_log_line",
]

#: The fail2ban ``failregex`` that matches `failure_log_line` (fail2ban replaces
#: ``<HOST>`` with its address pattern).
FAIL2BAN_FAILREGEX: Final = r"auth failed: service=\S+, method=\S+, user=<[^>]*>, rip=<HOST>$"

#: What the service answers for a refused password; the same for an unknown user.
AUTHENTICATION_FAILED: Final = "authentication failed"
#: Why `begin` refused a client.
TOO_MANY_FAILURES: Final = "too many authentication failures from this address"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_ATTEMPT_ID_OCTETS: Final = 16
_MAX_LOGGED_USER: Final = 256  # characters of a user name kept in a log line
_SERVICE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_METHOD: Final = re.compile(r"[A-Z0-9][A-Z0-9_-]{0,31}")


class PasswordVerifier(Protocol):
    """What `AuthService` needs from a user store (`sansmail.storage.users.UserStore` is one)."""

    def verify_password(self, key: str, password: str) -> bool: ...


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive")


def _networks(value: Iterable[IPNetwork | str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(net) for net in value)


@attrs.frozen(kw_only=True)
class AuthSettings:
    """The numbers of the failure delay and the throttle; the defaults and their sources
    are in the module docstring. Durations are seconds."""

    failure_delay: float = attrs.field(default=2.0, validator=_positive)
    max_failure_delay: float = attrs.field(default=15.0, validator=_positive)
    max_failures: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    window: float = attrs.field(default=600.0, validator=_positive)
    lockout: float = attrs.field(default=600.0, validator=_positive)
    max_clients: int = attrs.field(default=10_000, validator=attrs.validators.ge(1))
    ipv6_prefix: int = attrs.field(
        default=48, validator=[attrs.validators.ge(0), attrs.validators.le(128)]
    )
    remembered_attempts: int = attrs.field(default=8, validator=attrs.validators.ge(0))
    exempt: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_networks)

    def __attrs_post_init__(self) -> None:
        if self.max_failure_delay < self.failure_delay:
            raise ValueError("max_failure_delay must be at least failure_delay")

    @classmethod
    def from_config(cls, config: Config) -> AuthSettings:
        """``[limits]``'s auth_max_failures, auth_failure_window and auth_lockout, with
        ``mynetworks`` exempt; the delays are the defaults."""
        limits = config.limits
        return cls(
            max_failures=limits.auth_max_failures,
            window=float(limits.auth_failure_window),
            lockout=float(limits.auth_lockout),
            exempt=config.mynetworks,
        )


@attrs.frozen(kw_only=True)
class Verdict:
    """`begin`'s answer. When `allowed`, wait `delay` seconds before going on; when not,
    answer with a temporary failure: `reason` says why, `retry_after` when it ends."""

    allowed: bool
    delay: float = 0.0
    reason: str = ""
    retry_after: float = 0.0


@attrs.frozen(kw_only=True)
class AuthResult:
    """`check_password`'s answer: wait `delay` seconds, then answer. `throttled` means the
    password was not even checked (`begin` refused); `reason` is empty on success."""

    ok: bool
    delay: float
    throttled: bool = False
    reason: str = ""


class _Client:
    """What we remember about one client (an address, or an IPv6 prefix) that failed."""

    __slots__ = ("attempts", "blocked_until", "failures", "last_failure", "streak")

    def __init__(self) -> None:
        self.failures: list[float] = []  # times of counted failures within the window
        self.attempts: list[bytes] = []  # ids of recent wrong attempts, oldest first
        self.streak = 0  # consecutive failures, for the delay
        self.last_failure = 0.0
        self.blocked_until = 0.0


class AuthService:
    """Password checks with a failure delay and per-client throttling, for every protocol.

    `users` checks passwords (a `sansmail.storage.users.UserStore`). `secret` (at least 16 random
    bytes, e.g. ``secrets.token_bytes(32)``) keys `attempt_id`; it need not survive a
    restart. `cache` is the auth cache the sessions' logins consult (None: every password
    is checked). Not thread-safe, on purpose (this package has no threads): call `begin`,
    `record` and the cache from one thread, the event loop's; only `verify_password`,
    which reads nothing here, belongs in a worker thread.
    """

    def __init__(
        self,
        users: PasswordVerifier,
        *,
        secret: bytes,
        settings: AuthSettings | None = None,
        cache: AuthCache | None = None,
    ) -> None:
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise ValueError("secret must be at least 16 bytes")
        self._users = users
        self._secret = secret
        self.settings = settings if settings is not None else AuthSettings()
        self.cache = cache
        # Oldest failure first: the front is what goes stale, or gets evicted, first.
        self._clients: collections.OrderedDict[str, _Client] = collections.OrderedDict()

    # -- the three steps -------------------------------------------------------------------

    def begin(self, client_ip: ClientAddress, now: float) -> Verdict:
        """May `client_ip` attempt to authenticate at `now`? Changes nothing."""
        bucket, exempt = self._classify(client_ip)
        if exempt:
            return Verdict(allowed=True)
        client = self._clients.get(bucket)
        if client is None:
            return Verdict(allowed=True)
        if now < client.blocked_until:
            return Verdict(
                allowed=False,
                reason=TOO_MANY_FAILURES,
                retry_after=client.blocked_until - now,
            )
        if client.streak == 0 or now - client.last_failure > self.settings.window:
            return Verdict(allowed=True)
        wait = client.last_failure + self._penalty(client.streak) - now
        return Verdict(allowed=True, delay=max(0.0, wait))

    def verify_password(self, key: str, password: str) -> bool:
        """Check `password` for the user `key` (`login_key` of what the client sent).
        Blocking CPU work (argon2): run it in a worker thread. As slow for an unknown
        user as for a known one."""
        return self._users.verify_password(key, password)

    def record(
        self, client_ip: ClientAddress, ok: bool, now: float, *, attempt: bytes | None = None
    ) -> float:
        """Record the outcome of an attempt from `client_ip`; returns how many seconds to
        wait before answering the client. `attempt` (from `attempt_id`) lets a repeat of
        the same wrong password go uncounted; leave it None where there is no password
        (SCRAM, CRAM-MD5)."""
        bucket, exempt = self._classify(client_ip)
        if exempt:
            return 0.0 if ok else self.settings.failure_delay
        if ok:
            self._succeeded(bucket, now)
            return 0.0
        client = self._failed(bucket, now, attempt)
        return self._penalty(client.streak)

    # -- conveniences ----------------------------------------------------------------------

    def check_password(
        self, key: str, password: str, *, client_ip: ClientAddress, now: float
    ) -> AuthResult:
        """`begin`, `verify_password` and `record` in one blocking call; the result's
        `delay` covers both waits."""
        verdict = self.begin(client_ip, now)
        if not verdict.allowed:
            return AuthResult(ok=False, delay=verdict.delay, throttled=True, reason=verdict.reason)
        ok = self.verify_password(key, password)
        delay = self.record(client_ip, ok, now, attempt=self.attempt_id(key, password))
        return AuthResult(
            ok=ok, delay=verdict.delay + delay, reason="" if ok else AUTHENTICATION_FAILED
        )

    def attempt_id(self, key: str, password: str) -> bytes:
        """A keyed fingerprint of (user, password), for `record`: equal for a repeated
        attempt, and useless to anyone without this service's secret."""
        message = (
            key.encode("utf-8", "surrogatepass") + b"\0" + password.encode("utf-8", "surrogatepass")
        )
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:_ATTEMPT_ID_OCTETS]

    @property
    def tracked_clients(self) -> int:
        """How many clients the throttle currently remembers."""
        return len(self._clients)

    # -- the table -------------------------------------------------------------------------

    def _succeeded(self, bucket: str, now: float) -> None:
        client = self._clients.get(bucket)
        if client is None:
            return
        # The delay streak ends; counted failures stay, or an attacker holding one
        # account could reset the throttle by logging into it between guesses.
        client.streak = 0
        self._expire(client, now)
        if not client.failures and now >= client.blocked_until:
            del self._clients[bucket]

    def _failed(self, bucket: str, now: float, attempt: bytes | None) -> _Client:
        settings = self.settings
        self._sweep(now)
        client = self._clients.get(bucket)
        if client is None:
            while len(self._clients) >= settings.max_clients:
                self._clients.popitem(last=False)
            client = self._clients[bucket] = _Client()
        else:
            self._clients.move_to_end(bucket)
            self._expire(client, now)
        client.last_failure = now
        if attempt is not None and attempt in client.attempts:
            return client  # the same wrong password again: no new information
        if attempt is not None and settings.remembered_attempts:
            client.attempts.append(attempt)
            del client.attempts[: -settings.remembered_attempts]
        client.streak += 1
        client.failures.append(now)
        if len(client.failures) >= settings.max_failures:
            client.blocked_until = now + settings.lockout
            # A fresh count after the lockout: each lockout buys at most max_failures
            # guesses.
            client.failures.clear()
        return client

    def _expire(self, client: _Client, now: float) -> None:
        horizon = now - self.settings.window
        if client.failures and client.failures[0] < horizon:
            client.failures = [t for t in client.failures if t >= horizon]
        if client.last_failure < horizon:
            client.streak = 0
            client.attempts.clear()

    def _sweep(self, now: float) -> None:
        # Entries are ordered by last failure, so the stale ones are at the front; each is
        # dropped once, which keeps the cost per call constant on average.
        horizon = now - self.settings.window
        while self._clients:
            client = next(iter(self._clients.values()))
            if client.last_failure >= horizon or now < client.blocked_until:
                break
            self._clients.popitem(last=False)

    def _penalty(self, streak: int) -> float:
        settings = self.settings
        # 2, 4, 8, 15, 15 ... (the exponent is capped so the float cannot overflow).
        doubled = settings.failure_delay * 2.0 ** min(max(streak, 1) - 1, 64)
        return min(doubled, settings.max_failure_delay)

    def _classify(self, client_ip: ClientAddress) -> tuple[str, bool]:
        """The table key for a client, and whether it is exempt from throttling."""
        address = client_address(client_ip)
        if address is None:
            # Not an IP (a Unix socket, a test harness): all such clients share a slot.
            return "unknown", False
        exempt = any(
            address.version == net.version and address in net for net in self.settings.exempt
        )
        if isinstance(address, ipaddress.IPv6Address):
            network = ipaddress.IPv6Network((address, self.settings.ipv6_prefix), strict=False)
            return str(network), exempt
        return str(address), exempt


# -- names and log lines -------------------------------------------------------------------


def login_key(authcid: str) -> str:
    """The user-store key for the name a client logged in with: `Address.key` of it
    (local part lower-cased, domain canonical), or "" (which no user has, so the check
    still costs a dummy verification) when it is not an address."""
    try:
        return parse_address(authcid).key
    except AddressError:
        return ""


def password_allowed(*, tls_active: bool, client_ip: str, plaintext_auth: str) -> bool:
    """Whether a client may send a password now, in SMTP, POP3 and IMAP alike: always
    over TLS; in clear only as ``[smtp] plaintext_auth`` says ("always", or "loopback"
    for 127.0.0.0/8 and ::1), since passwords do not travel in the clear (RFC 8314 §5.2,
    RFC 4954 §4, RFC 2595 §2.3, RFC 9051 §11.1)."""
    if tls_active or plaintext_auth == "always":
        return True
    if plaintext_auth != "loopback":
        return False
    try:
        return ipaddress.ip_address(client_ip).is_loopback
    except ValueError:
        return False


def authzid_allowed(authzid: str, key: str) -> bool:
    """Whether a user authenticated as `key` may act as `authzid` (RFC 4422 §3.4.1): only
    as themselves, named any way that folds to the same key; an empty authzid means
    "as myself" (RFC 4616 §2)."""
    return not authzid or (login_key(authzid) == key and key != "")


def failure_log_line(*, service: str, method: str, user: str, client_ip: ClientAddress) -> str:
    """The one line logged for a failed authentication (see the module docstring and
    `FAIL2BAN_FAILREGEX`). `service` is ours (``smtp``, ``imap`` ...); `method` and `user`
    come from the client and are made safe here."""
    return (
        f"auth failed: service={_service(service)}, method={_method(method)}, "
        f"user=<{_escape_user(user)}>, rip={show_ip(client_ip)}"
    )


def throttle_log_line(*, service: str, client_ip: ClientAddress, retry_after: float) -> str:
    """The line logged when `begin` refuses a client (not matched by the fail2ban
    filter, which counts guesses)."""
    return (
        f"auth throttled: service={_service(service)}, retry_after={max(0, round(retry_after))}s, "
        f"rip={show_ip(client_ip)}"
    )


def _service(service: str) -> str:
    if _SERVICE.fullmatch(service) is None:
        raise ValueError(f"bad service name {service!r}")
    return service


def _method(method: str) -> str:
    upper = method.upper()
    return upper if _METHOD.fullmatch(upper) else "unknown"


def _escape_user(user: str) -> str:
    # Printable ASCII stays, except the field's brackets and the escape character itself;
    # everything else becomes a Python-style escape, so the field can neither end early,
    # break the line, nor show look-alike or right-to-left text.
    out = []
    for ch in user[:_MAX_LOGGED_USER]:
        if " " <= ch <= "~" and ch not in "<>\\":
            out.append(ch)
        elif ord(ch) <= 0xFF:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    if len(user) > _MAX_LOGGED_USER:
        out.append("...")
    return "".join(out)
