"""The auth cache alone, with an injected clock: hits and misses, the two TTLs, the LRU
bounds, records that change, the reload counter, failures never answered as successes,
and nothing but keyed fingerprints in memory."""

from __future__ import annotations

import gc
import hashlib
import hmac
from typing import Any

import attrs
import pytest

from sansmail.mail.authcache import AuthCache, AuthCacheSettings

SECRET = b"s" * 32
ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD = "correct horse battery staple"


@attrs.frozen
class Record:
    """Stands in for the user store's `User`: compared by value."""

    password_hash: str


R1 = Record("$argon2id$one")
R2 = Record("$argon2id$two")


def cache(**settings: Any) -> AuthCache:
    return AuthCache(secret=SECRET, settings=AuthCacheSettings(**settings))


def test_a_stored_success_is_a_hit_and_anything_else_a_miss() -> None:
    c = cache()
    fp = c.fingerprint(ALICE, PASSWORD)
    assert c.lookup(fp, record=R1, now=0.0) is None
    c.store(fp, True, record=R1, now=0.0)
    assert c.lookup(fp, record=R1, now=1.0) is True
    # Another password, or the same password for another user, is another fingerprint.
    assert c.lookup(c.fingerprint(ALICE, PASSWORD + "!"), record=R1, now=1.0) is None
    assert c.lookup(c.fingerprint(BOB, PASSWORD), record=R1, now=1.0) is None
    assert (c.hits, c.misses) == (1, 3)


def test_a_failure_is_remembered_as_a_failure_never_as_a_success() -> None:
    c = cache()
    wrong = c.fingerprint(ALICE, "wrong")
    c.store(wrong, False, record=R1, now=0.0)
    assert c.lookup(wrong, record=R1, now=1.0) is False
    # A later verdict for the same fingerprint replaces the earlier one, in either table.
    c.store(wrong, True, record=R1, now=2.0)
    assert c.lookup(wrong, record=R1, now=3.0) is True
    c.store(wrong, False, record=R1, now=4.0)
    assert c.lookup(wrong, record=R1, now=5.0) is False
    assert len(c) == 1


def test_failures_are_not_remembered_with_a_zero_negative_ttl() -> None:
    c = cache(negative_ttl=0)
    wrong = c.fingerprint(ALICE, "wrong")
    c.store(wrong, False, record=R1, now=0.0)
    assert c.lookup(wrong, record=R1, now=0.0) is None
    assert len(c) == 0
    right = c.fingerprint(ALICE, PASSWORD)
    c.store(right, True, record=R1, now=0.0)
    assert c.lookup(right, record=R1, now=0.0) is True


def test_entries_last_their_ttl_from_the_check_not_from_the_last_use() -> None:
    c = cache(ttl=10, negative_ttl=5)
    right, wrong = c.fingerprint(ALICE, PASSWORD), c.fingerprint(ALICE, "wrong")
    c.store(right, True, record=R1, now=100.0)
    c.store(wrong, False, record=R1, now=100.0)
    assert c.lookup(wrong, record=R1, now=104.9) is False
    assert c.lookup(wrong, record=R1, now=105.0) is None  # negative_ttl
    assert c.lookup(right, record=R1, now=109.9) is True  # a hit does not renew it ...
    assert c.lookup(right, record=R1, now=110.0) is None  # ... so it ends at 100 + ttl
    assert len(c) == 0  # expired entries are dropped when met


def test_a_lookup_a_moment_before_the_store_still_hits() -> None:
    # A login carries the time its gate let it in; another login may store the entry
    # after that instant.
    c = cache(ttl=10)
    fp = c.fingerprint(ALICE, PASSWORD)
    c.store(fp, True, record=R1, now=50.0)
    assert c.lookup(fp, record=R1, now=49.5) is True


def test_stale_entries_at_the_cold_end_go_at_the_next_store() -> None:
    c = cache(ttl=10, negative_ttl=10)
    old = [c.fingerprint(f"u{i}@example.test", PASSWORD) for i in range(3)]
    for fp in old:
        c.store(fp, True, record=R1, now=0.0)
    c.store(c.fingerprint(ALICE, PASSWORD), True, record=R1, now=20.0)
    assert c.fingerprints() == {c.fingerprint(ALICE, PASSWORD)}


def test_each_table_is_bounded_least_recently_used_first() -> None:
    c = cache(size=3)
    fps = {name: c.fingerprint(f"{name}@example.test", PASSWORD) for name in "abcd"}
    for name in "abc":
        c.store(fps[name], True, record=R1, now=0.0)
    assert c.lookup(fps["a"], record=R1, now=1.0) is True  # a is now the most recent
    c.store(fps["d"], True, record=R1, now=2.0)
    assert c.fingerprints() == {fps["a"], fps["c"], fps["d"]}  # b went
    assert len(c) == 3


def test_a_flood_of_failures_cannot_push_out_the_successes() -> None:
    c = cache(size=2)
    good = [c.fingerprint(f"user{i}@example.test", PASSWORD) for i in range(2)]
    for fp in good:
        c.store(fp, True, record=R1, now=0.0)
    for i in range(100):
        c.store(c.fingerprint(ALICE, f"guess{i}"), False, record=R1, now=1.0)
    assert all(c.lookup(fp, record=R1, now=2.0) is True for fp in good)
    assert len(c) == 4  # two successes, the last two failures


def test_a_changed_record_ends_the_entry_and_an_equal_one_keeps_it() -> None:
    c = cache()
    fp = c.fingerprint(ALICE, PASSWORD)
    c.store(fp, True, record=R1, now=0.0)
    # Equal, not identical: the user store rebuilt an unchanged record.
    assert c.lookup(fp, record=Record(R1.password_hash), now=1.0) is True
    # user passwd: a new hash. The entry is dropped, not merely skipped ...
    assert c.lookup(fp, record=R2, now=1.0) is None
    # ... so the record coming back (a restored backup) does not revive it.
    assert c.lookup(fp, record=R1, now=1.0) is None
    assert len(c) == 0


def test_a_deleted_user_misses_at_once() -> None:
    c = cache()
    fp = c.fingerprint(ALICE, PASSWORD)
    c.store(fp, True, record=R1, now=0.0)
    assert c.lookup(fp, record=None, now=1.0) is None


def test_a_failure_for_an_unknown_name_ends_when_the_user_is_added() -> None:
    c = cache()
    fp = c.fingerprint(ALICE, PASSWORD)
    c.store(fp, False, record=None, now=0.0)
    assert c.lookup(fp, record=None, now=1.0) is False
    assert c.lookup(fp, record=R1, now=1.0) is None


def test_a_change_for_one_user_leaves_the_others_cached() -> None:
    c = cache()
    alice, bob = c.fingerprint(ALICE, PASSWORD), c.fingerprint(BOB, PASSWORD)
    c.store(alice, True, record=R1, now=0.0)
    c.store(bob, True, record=R2, now=0.0)
    assert c.lookup(alice, record=Record("$argon2id$new"), now=1.0) is None
    assert c.lookup(bob, record=R2, now=1.0) is True


def test_the_reload_counter_empties_everything() -> None:
    reloads = [7]
    c = AuthCache(secret=SECRET, reloads=lambda: reloads[0])
    fps = [c.fingerprint(user, PASSWORD) for user in (ALICE, BOB)]
    for fp in fps:
        c.store(fp, True, record=R1, now=0.0)
    assert c.lookup(fps[0], record=R1, now=1.0) is True
    reloads[0] += 1
    assert c.lookup(fps[1], record=R1, now=1.0) is None
    assert len(c) == 0
    # Once followed, the counter empties nothing more.
    c.store(fps[0], True, record=R1, now=2.0)
    assert c.lookup(fps[0], record=R1, now=3.0) is True


def test_a_reload_before_a_store_empties_the_cache_first() -> None:
    reloads = [0]
    c = AuthCache(secret=SECRET, reloads=lambda: reloads[0])
    alice, bob = c.fingerprint(ALICE, PASSWORD), c.fingerprint(BOB, PASSWORD)
    c.store(alice, True, record=R1, now=0.0)
    reloads[0] += 1
    c.store(bob, True, record=R1, now=1.0)
    assert c.fingerprints() == {bob}


def test_clear_and_a_zero_size() -> None:
    c = cache()
    c.store(c.fingerprint(ALICE, PASSWORD), True, record=R1, now=0.0)
    c.clear()
    assert len(c) == 0
    off = cache(size=0)
    assert not off.settings.enabled
    off.store(off.fingerprint(ALICE, PASSWORD), True, record=R1, now=0.0)
    assert len(off) == 0


def test_settings_are_checked() -> None:
    assert AuthCacheSettings() == AuthCacheSettings(size=10_000, ttl=3600, negative_ttl=3600)
    assert AuthCacheSettings().enabled
    assert not AuthCacheSettings(ttl=0, negative_ttl=0).enabled
    with pytest.raises(ValueError):
        AuthCacheSettings(size=-1)
    with pytest.raises(ValueError):
        AuthCacheSettings(ttl=-1)
    with pytest.raises(ValueError):
        AuthCacheSettings(negative_ttl=float("nan"))
    with pytest.raises(ValueError):
        AuthCache(secret=b"short")


def test_keys_are_keyed_fingerprints_not_passwords_or_plain_hashes() -> None:
    c = cache()
    fp = c.fingerprint(ALICE, PASSWORD)
    message = f"{ALICE}\0{PASSWORD}".encode()
    assert fp == hmac.new(SECRET, message, hashlib.sha256).digest()
    unkeyed = {
        hashlib.sha256(PASSWORD.encode()).digest(),
        hashlib.sha256(message).digest(),
        hashlib.sha1(PASSWORD.encode()).digest(),
        hashlib.md5(PASSWORD.encode()).digest(),
    }
    assert fp not in unkeyed
    assert PASSWORD.encode() not in fp
    # Another secret (another process, a restart): other fingerprints.
    assert AuthCache(secret=b"t" * 32).fingerprint(ALICE, PASSWORD) != fp
    # The same pair always gets the same one; the user is part of it.
    assert c.fingerprint(ALICE, PASSWORD) == fp
    assert c.fingerprint(BOB, PASSWORD) != fp


def test_nothing_reachable_from_the_cache_holds_the_password() -> None:
    c = cache()
    passwords = [f"{PASSWORD} {i}" for i in range(5)]
    for i, password in enumerate(passwords):
        c.store(c.fingerprint(ALICE, password), i % 2 == 0, record=R1, now=0.0)
    assert len(c.fingerprints()) == len(passwords)
    forbidden: set[bytes] = set()
    for password in passwords:
        raw = password.encode()
        forbidden |= {raw, hashlib.sha256(raw).digest(), hashlib.sha256(raw).hexdigest().encode()}
    # Every object the cache holds, transitively (its tables, entries, keys, settings).
    seen: set[int] = set()
    reached: set[bytes] = set()
    todo: list[object] = [c]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            assert all(p not in obj for p in passwords)
        elif isinstance(obj, bytes):
            reached.add(obj)
            assert obj not in forbidden
            assert all(p.encode() not in obj for p in passwords)
        todo.extend(gc.get_referents(obj))
    assert c.fingerprints() <= reached  # the walk did see the stored keys
