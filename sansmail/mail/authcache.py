"""The auth cache: password checks made recently, so that a client logging in again with
the same name and password does not pay argon2 again (Dovecot's auth cache).

Theory of operation
-------------------
argon2id is slow on purpose (about 0.17 s of CPU and 64 MiB per check with argon2-cffi's
defaults): it is what makes a stolen ``users.json`` expensive to crack. But a mail client
logs in again and again with the same password (a phone's IMAP connection per folder, a
POP3 poll every few minutes), and paying that price each time made a login ten times
slower than Dovecot's with a clear-text password. So the first check of a (user,
password) pair pays it, and for `AuthCacheSettings.ttl` after that the verdict is
remembered here. What is remembered, and why it is safe:

* The key is a *fingerprint*: HMAC-SHA-256 of the user's key and the password under a
  secret drawn at start (`secrets.token_bytes`), which never leaves this object and never
  survives the process. Neither the password nor an unkeyed hash of it is ever kept
  (a plain SHA-256 of a password is cracked at billions of guesses a second). Whoever
  can read this process's memory can read the secret too, and then try guesses at HMAC
  speed against the fingerprints of the last `ttl`; but they could equally read the
  passwords as clients send them, which is why Dovecot keeps its cache in memory too.
* Each entry holds the verdict and the user's *record* as it was when the password was
  checked (any object the caller compares: the session passes the user store's `User`,
  or None for an unknown name). A lookup names the record now in force; an entry whose
  record differs is dropped and missed. So ``user passwd`` (a new hash, new salt) makes
  the old password fail at the very next login, ``user del`` makes every password of
  that user fail, and ``user add`` ends a remembered failure for a name that did not
  exist, in every server process, because the store follows the shared change counter
  at each lookup (`sansmail.storage.generations`). There is no window and no hook to
  miss: a check racing a change stores the record it saw before the change, which the
  next lookup finds stale. The other users' entries stay.
* `reloads` (optional) is a counter that moves when everything must be forgotten:
  ``sansmail-trio reload``, like Dovecot's SIGHUP, empties the cache. It is read at each
  lookup and store (the server passes a word of shared memory, no system call).
* Failures are cached apart from successes, and never as one: a lookup answers True only
  for an entry stored with True. Remembering a wrong password (Dovecot's negative cache,
  `negative_ttl`, 0 turns it off) spares argon2 for the phone that retries a stale
  password every few minutes; the auth service still counts, delays and logs each of
  those failures exactly as before (it is told the same attempt id either way). The two
  kinds live in separate tables of `size` entries each, so a flood of failures cannot
  push the successful logins out.
* Bounded: least recently used first out of each table (`size` entries; about 250 octets
  each, so the default 10,000 is about 2.5 MiB a table). An entry's age counts from its
  check, not its last use: a user logging in all day pays argon2 once per `ttl`.
  Expired entries are dropped when looked up, and stale ones at the cold end of a table
  at each store, so a quiet cache does not keep old fingerprints for long.

Time is a parameter (``now``, seconds on any monotonic clock), as in `sansmail.mail.auth`:
nothing here reads a clock, draws a random number or blocks. Not thread-safe: call it
from one thread (the sessions call it from the event loop's, before and after the
worker-thread check).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
from collections.abc import Callable
from typing import Final

import attrs

__all__ = ["AuthCache", "AuthCacheSettings"]

_MIN_SECRET_OCTETS: Final = 16
# At most this many stale entries are dropped per store: the cost of a store stays
# constant, and a table drains over a few stores.
_SWEEP_PER_STORE: Final = 4


def _not_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must not be negative")


@attrs.frozen(kw_only=True)
class AuthCacheSettings:
    """How much to remember and for how long (the ``[auth]`` table): `size` successful
    logins and as many failed ones (0: no cache), successes for `ttl` seconds, failures
    for `negative_ttl` (0: failures are not remembered). Dovecot's ``auth_cache_size``,
    ``auth_cache_ttl`` and ``auth_cache_negative_ttl`` (both TTLs 1 hour by default)."""

    size: int = attrs.field(default=10_000, validator=attrs.validators.ge(0))
    ttl: float = attrs.field(default=3600.0, validator=_not_negative)
    negative_ttl: float = attrs.field(default=3600.0, validator=_not_negative)

    @property
    def enabled(self) -> bool:
        """Whether anything is ever remembered."""
        return self.size > 0 and (self.ttl > 0 or self.negative_ttl > 0)


class _Entry:
    __slots__ = ("created", "record")

    def __init__(self, record: object, created: float) -> None:
        self.record = record
        self.created = created


class AuthCache:
    """Recent password verdicts, keyed by fingerprint (see the module docstring).

    `secret` (at least 16 random bytes, drawn at start) keys the fingerprints. `reloads`
    returns a counter whose every change empties the cache.
    """

    def __init__(
        self,
        *,
        secret: bytes,
        settings: AuthCacheSettings | None = None,
        reloads: Callable[[], int] | None = None,
    ) -> None:
        if not isinstance(secret, bytes) or len(secret) < _MIN_SECRET_OCTETS:
            raise ValueError(f"secret must be at least {_MIN_SECRET_OCTETS} bytes")
        self._secret = secret
        self.settings = settings if settings is not None else AuthCacheSettings()
        self._reloads = reloads
        self._seen_reload = reloads() if reloads is not None else 0
        # Least recently used first. Successes and failures apart (module docstring).
        self._good: collections.OrderedDict[bytes, _Entry] = collections.OrderedDict()
        self._bad: collections.OrderedDict[bytes, _Entry] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def fingerprint(self, key: str, password: str) -> bytes:
        """The cache key of `password` for the user `key` (`login_key` of the name the
        client sent): useless to anyone without this cache's secret. Pure; safe from any
        thread."""
        # The NUL cannot occur in a key or a password that reaches here (SASL and the
        # stores refuse it), so no two (key, password) pairs share a message.
        message = b"%s\0%s" % (
            key.encode("utf-8", "surrogatepass"),
            password.encode("utf-8", "surrogatepass"),
        )
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def lookup(self, fingerprint: bytes, *, record: object, now: float) -> bool | None:
        """The remembered verdict for `fingerprint`, if it was reached against `record`
        (the user's record now in force) less than its TTL before `now`; None when there
        is none, and then the password must be checked."""
        self._follow_reloads()
        for table, ttl, verdict in (
            (self._good, self.settings.ttl, True),
            (self._bad, self.settings.negative_ttl, False),
        ):
            entry = table.get(fingerprint)
            if entry is None:
                continue
            if _fresh(entry, ttl, now) and _same(entry.record, record):
                table.move_to_end(fingerprint)
                self.hits += 1
                return verdict
            del table[fingerprint]  # stale, or checked against a record since replaced
            break
        self.misses += 1
        return None

    def store(self, fingerprint: bytes, ok: bool, *, record: object, now: float) -> None:
        """Remember that the password of `fingerprint` was `ok` when checked at `now`
        against `record` (the user's record read *before* the check, None for no such
        user)."""
        self._follow_reloads()
        settings = self.settings
        table, other = (self._good, self._bad) if ok else (self._bad, self._good)
        other.pop(fingerprint, None)
        ttl = settings.ttl if ok else settings.negative_ttl
        if settings.size == 0 or ttl <= 0:
            table.pop(fingerprint, None)
            return
        self._sweep(table, ttl, now)
        table[fingerprint] = _Entry(record, now)
        table.move_to_end(fingerprint)
        while len(table) > settings.size:
            table.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        self._good.clear()
        self._bad.clear()

    def __len__(self) -> int:
        return len(self._good) + len(self._bad)

    def fingerprints(self) -> frozenset[bytes]:
        """Every key held (for tests and inspection: fingerprints only)."""
        return frozenset(self._good) | frozenset(self._bad)

    def _follow_reloads(self) -> None:
        if self._reloads is None:
            return
        seen = self._reloads()
        if seen != self._seen_reload:
            self._seen_reload = seen
            self.clear()

    @staticmethod
    def _sweep(table: collections.OrderedDict[bytes, _Entry], ttl: float, now: float) -> None:
        # The cold end holds the entries unused longest; those past their TTL go. One
        # still fresh there stops the sweep (a hot entry may be older, and is dropped at
        # its next lookup).
        for _ in range(_SWEEP_PER_STORE):
            if not table:
                return
            entry = next(iter(table.values()))
            if _fresh(entry, ttl, now):
                return
            table.popitem(last=False)


def _fresh(entry: _Entry, ttl: float, now: float) -> bool:
    # A negative age is possible and harmless: a lookup may carry the time its login was
    # let in, a moment before another login stored the entry.
    return now - entry.created < ttl


def _same(stored: object, current: object) -> bool:
    # Identity first: the store keeps the same object for a record that did not change.
    return stored is current or (stored is not None and stored == current)
