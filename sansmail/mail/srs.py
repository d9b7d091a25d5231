"""The Sender Rewriting Scheme (SRS): the envelope sender of mail we forward, and the way
back for its bounces. Pure, except `load_or_create_key`; the day and the key are arguments.

Why
---
When mail to one of our aliases is forwarded to an outside address, we become the sending
host, but the envelope sender is still the original one, say ``alice@example.org``. The
next hop checks SPF (RFC 7208) for example.org, whose record does not list us: the mail
fails SPF and may be refused. So the forwarded copy gets a sender at *our* first domain,
which our SPF record covers, and which encodes the original sender::

    alice@example.org  ->  SRS0=HHHH=TT=example.org=alice@our.example

A bounce of the forwarded copy then comes to us; we check the address, reverse it, and
send the bounce on to alice@example.org. Postfix users get this from postsrsd, Exim and
Sendmail users from libsrs2; sansmail builds it in, in the same de-facto format, so the
addresses look like what postmasters elsewhere know.

The format (libsrs2 / postsrsd, "SRS" by Shevek, 2004)
------------------------------------------------------
``SRS0=HHHH=TT=domain=local@our-domain``

- ``TT``: the day of forwarding, days since the epoch modulo 1024, as two base32 digits
  (``A``-``Z``, ``2``-``7``). A bounce is honoured for `max_age_days` (21, libsrs2's
  default) after that day; 1024 days is far longer, so the wrap-around never confuses us.
- ``HHHH``: the first 4 characters of the base64 HMAC-SHA1, keyed with our secret, of
  ``TT``, ``domain`` and ``local`` one after the other (libsrs2 hashes them in that
  order, each lower-cased). Without it, anyone could make us relay mail to any address
  by sending "bounces" to made-up SRS addresses: the hash makes us an open relay for
  nobody. 24 bits is libsrs2's choice; guessing one needs about 8 million tries, each an
  SMTP transaction, and a valid one opens a single address for 21 days.
- ``local`` is the last field and may itself hold ``=``; ``domain`` never does.
  The hashed fields are concatenated without a separator, as libsrs2 does (so its test
  vectors hold for us); a valid address can therefore be re-split only into another
  split of the same text (``x@example.com`` into ``mx@example.co``), nothing else.

Forwarding an address that is already SRS0 (we are the second forwarder) does not wrap
it again, which would grow it at every hop. The standard shortcut is SRS1::

    SRS0=HHHH=TT=example.org=alice@first.example  (from the first forwarder)
    ->  SRS1=GGGG=first.example==HHHH=TT=example.org=alice@our.example

``GGGG`` is our hash of ``first.example`` and ``=HHHH=TT=example.org=alice``. A bounce
to it goes straight back to the first forwarder, as ``SRS0=HHHH=...@first.example``,
which it can check with its own key. Forwarding an SRS1 address keeps its first
forwarder and replaces the hash with ours, so a chain of any length stays one SRS1 deep.

Case. Some hosts lower-case the addresses they bounce to. The hash is computed on
lower-cased text and compared without regard to case, as libsrs2 does; so
``srs0=hhhh=tt=example.org=alice@our.example`` reverses to ``alice@example.org`` (the
original case of the local part is lost, which no real mailbox cares about). Comparing
base64 case-insensitively leaves about 21 bits of the 24. The tags ``SRS0``/``SRS1`` and
``TT`` are read case-insensitively, and ``=``, ``+`` or ``-`` are all accepted after the
tag (libsrs2's separators), though we write ``=``.

UTF-8 local parts (RFC 6531) pass through as they are; the hash is over their UTF-8 bytes,
lower-cased with Unicode rules (libsrs2 lower-cases ASCII only; the two agree on ASCII,
and only we check our own hashes).

Length. The SRS0 local part is the original local part plus the domain plus 14 octets,
and can pass the 64 octets of RFC 5321 §4.5.3.1.1. postsrsd sends such addresses anyway,
and most servers take them; but `Address` refuses any local part it could not send, and
our own SMTP server would refuse the bounce coming back to it. So `forward` raises
`SRSError` for them, and the caller forwards with the original sender unchanged (as
Postfix without postsrsd does): the copy may fail SPF at the next hop, but a bounce still
reaches the sender.

What the caller decides. `forward` rewrites whatever it is given: the caller does not
call it for a sender in one of our own domains (our SPF already covers it, and a bounce
must reach our user directly), nor for the null sender of a bounce. `reverse` does not
check the domain of the address it is given; the caller calls it for recipients at our
domains whose local part `is_srs`.

The key. 32 random bytes made once by `load_or_create_key`, the only I/O here, and kept:
a new key at each restart would turn away every bounce of mail forwarded before. Every
MX of one domain must share the file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from typing import Final

from sansmail.mail.address import Address, AddressError

__all__ = [
    "KEY_OCTETS",
    "MAX_AGE_DAYS",
    "SRSError",
    "forward",
    "forward_sender",
    "is_srs",
    "reverse",
    "today",
]

#: How many days a bounce to an SRS address is honoured (libsrs2's and postsrsd's default).
MAX_AGE_DAYS: Final = 21
#: The size of an SRS key (`sansmail.storage.keys` makes them).
KEY_OCTETS: Final = 32

_SECONDS_PER_DAY: Final = 86400
_BASE32: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_STAMP_SLOTS: Final = len(_BASE32) ** 2  # two base32 digits: 1024 days
_HASH_LENGTH: Final = 4
_SEPARATORS: Final = "=+-"
_SEP: Final = "="
_SRS0: Final = "SRS0"
_SRS1: Final = "SRS1"


class SRSError(ValueError):
    """An address that cannot be rewritten, or an SRS address that is malformed, carries
    a bad hash or is too old; str() says which in one line. The messages of `reverse`
    are ASCII and never echo the address, so they fit an SMTP reply."""


def today(now: float) -> int:
    """Days since the epoch at `now` (seconds since the epoch, UTC): the `day` and `today`
    that `forward` and `reverse` take."""
    return int(now // _SECONDS_PER_DAY)


def is_srs(local_part: str) -> bool:
    """Does `local_part` look like an SRS0 or SRS1 address, in any case? (Says nothing
    about its hash: only `reverse` checks that.)"""
    return (
        len(local_part) > len(_SRS0)
        and local_part[:4].upper() in (_SRS0, _SRS1)
        and local_part[4] in _SEPARATORS
    )


def _stamp(day: int) -> str:
    slot = day % _STAMP_SLOTS
    return _BASE32[slot >> 5] + _BASE32[slot & 31]


def _hash(key: bytes, *fields: str) -> str:
    mac = hmac.new(key, digestmod=hashlib.sha1)
    for field in fields:
        mac.update(field.lower().encode("utf-8"))
    # The first 4 base64 characters are exactly the first 3 octets of the digest.
    return base64.b64encode(mac.digest()[:3]).decode("ascii")


def _hash_matches(given: str, expected: str) -> bool:
    # Case-insensitive (see the module docstring); constant time all the same.
    return hmac.compare_digest(given.lower().encode("utf-8"), expected.lower().encode("ascii"))


def _split_srs1(rest: str) -> tuple[str, str, str] | None:
    """(hash, first forwarder, inner) of what follows ``SRS1=``, or None."""
    hash_, sep1, tail = rest.partition(_SEP)
    host, sep2, inner = tail.partition(_SEP)
    if not (hash_ and sep1 and host and sep2 and inner):
        return None
    return hash_, host, inner


def _rewritten(local: str, domain: str) -> Address:
    try:
        return Address(local_part=local, domain=domain)
    except AddressError as exc:
        raise SRSError(f"the rewritten sender {local}@{domain} cannot be sent: {exc}") from None


def forward(sender: Address, *, domain: str, key: bytes, day: int) -> Address:
    """The envelope sender for mail from `sender` that we forward, at our `domain`
    (the first of our domains), on `day` (`today`). See the module docstring for the
    format, and for which senders the caller must not rewrite.

    Raises `SRSError` when the result would not be a valid address (a local part over
    64 octets, RFC 5321 §4.5.3.1.1) or `sender` cannot be encoded (no domain, or an
    address literal holding ``=``); the caller then keeps `sender`."""
    if not key:
        raise ValueError("the SRS key is empty")
    local, host = sender.local_part, sender.domain
    if not host or _SEP in host:
        raise SRSError(f"{sender}: a sender without an ordinary domain cannot be rewritten")
    tag = local[:4].upper()
    if is_srs(local) and tag == _SRS0:
        # We are the second forwarder: point bounces straight at the first one, which
        # holds the key for the SRS0 part (kept as it is, separator included).
        inner = local[4:]
        return _rewritten(
            f"{_SRS1}{_SEP}{_hash(key, host, inner)}{_SEP}{host}{_SEP}{inner}", domain
        )
    if is_srs(local) and tag == _SRS1:
        parts = _split_srs1(local[5:])
        if parts is not None:
            _old_hash, first, inner = parts
            # The old hash was the previous forwarder's; only ours can be checked here.
            return _rewritten(
                f"{_SRS1}{_SEP}{_hash(key, first, inner)}{_SEP}{first}{_SEP}{inner}", domain
            )
        # A malformed SRS1 local part is just a local part: wrap it like any other.
    stamp = _stamp(day)
    hash_ = _hash(key, stamp, host, local)
    return _rewritten(f"{_SRS0}{_SEP}{hash_}{_SEP}{stamp}{_SEP}{host}{_SEP}{local}", domain)


def forward_sender(
    reverse_path: Address | None, *, domains: Sequence[str], key: bytes, day: int
) -> Address | None:
    """The envelope sender of a copy we forward (an alias's outside target, a Sieve
    redirect): `forward` at the first of our `domains`, so the next hop's SPF check
    passes and bounces find their way back. The null sender stays null, a sender in our
    `domains` needs no rewriting, and one too long to rewrite (RFC 5321 §4.5.3.1.1)
    stays as it is, as a server without SRS would send it."""
    if reverse_path is None or reverse_path.domain in domains:
        return reverse_path
    try:
        return forward(reverse_path, domain=domains[0], key=key, day=day)
    except SRSError:
        return reverse_path


def _check_stamp(stamp: str, today: int, max_age_days: int) -> None:
    if len(stamp) != 2 or any(ch not in _BASE32 for ch in stamp.upper()):
        raise SRSError("malformed SRS address: bad time stamp")
    upper = stamp.upper()
    then = _BASE32.index(upper[0]) << 5 | _BASE32.index(upper[1])
    # A stamp "in the future" is one from about 1024 days ago: expired, as in libsrs2.
    age = (today - then) % _STAMP_SLOTS
    if age > max_age_days:
        raise SRSError(
            f"SRS address expired: the mail was forwarded {age} days ago, and bounces "
            f"are accepted for {max_age_days} days"
        )


def _original(local: str, domain: str) -> Address:
    try:
        return Address(local_part=local, domain=domain)
    except AddressError as exc:
        raise SRSError(f"malformed SRS address: {exc}") from None


def reverse(
    address: Address, *, key: bytes, today: int, max_age_days: int = MAX_AGE_DAYS
) -> Address:
    """Where a bounce to the SRS `address` must go: the original sender for SRS0, the
    first forwarder's SRS0 address for SRS1. `today` is `today(now)`.

    Raises `SRSError` when `address` is not SRS, is malformed, carries a hash our `key`
    did not make, or (SRS0) was made more than `max_age_days` days before `today`."""
    if not key:
        raise ValueError("the SRS key is empty")
    if not 0 <= max_age_days < _STAMP_SLOTS:
        raise ValueError(f"max_age_days must be in 0..{_STAMP_SLOTS - 1}")
    local = address.local_part
    if not is_srs(local):
        raise SRSError("not an SRS address")
    rest = local[5:]
    if local[:4].upper() == _SRS1:
        parts = _split_srs1(rest)
        if parts is None:
            raise SRSError("malformed SRS1 address: expected SRS1=hash=host=address")
        hash_, first, inner = parts
        expected = _hash(key, first, inner)
        if len(hash_) != _HASH_LENGTH or not _hash_matches(hash_, expected):
            raise SRSError("SRS address with a bad hash: it was not made here")
        return _original(_SRS0 + inner, first)
    hash_, _, rest = rest.partition(_SEP)
    stamp, _, rest = rest.partition(_SEP)
    host, _, original_local = rest.partition(_SEP)
    if not (hash_ and stamp and host and original_local):
        raise SRSError("malformed SRS0 address: expected SRS0=hash=time=domain=local")
    # The hash first: whether a forged address is also too old is nobody's business.
    expected = _hash(key, stamp, host, original_local)
    if len(hash_) != _HASH_LENGTH or not _hash_matches(hash_, expected):
        raise SRSError("SRS address with a bad hash: it was not made here")
    _check_stamp(stamp, today, max_age_days)
    return _original(original_local, host)
