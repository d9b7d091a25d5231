"""Trace header fields a receiving MTA prepends: Return-Path and Received.

RFC 5321 §4.4 says what a server adds when it accepts a message: a Received line per hop
("Time-stamp-line") and, at final delivery, the reverse-path as Return-Path. RFC 5322
§3.6.7 gives their header syntax. The layout follows Postfix, which log readers and spam
filters already parse::

    Received: from helo.example (client.example [192.0.2.1])
    \t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)
    \tby mx.example.test (sansmail) with ESMTPS id 4ABC123
    \tfor <alice@example.test>; Tue, 03 Jun 2025 10:00:00 +0000

Every value but our own configuration is attacker text: the HELO argument is anything the
client typed, the reverse-DNS name is whatever a PTR record holds. Each value is reduced to
the characters its slot can carry (anything else becomes "?"), so none can end the header,
open a comment or forge the ";" before the date. UTF-8 passes only when the message
travels under SMTPUTF8 (RFC 6531 §3.7.3, RFC 6532 §3).

Pure functions: no I/O, and the time comes in as an argument.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import ipaddress
from typing import Final

from sansmail.mail.address import Address

__all__ = ["received", "received_by", "return_path", "with_protocol"]

_WIDTH: Final = 78  # RFC 5322 §2.1.1: lines SHOULD stay within 78 characters
_MAX_NAME: Final = 255  # RFC 1035 §2.3.4; longer HELO text is cut, not carried
_SAFE_NAME: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
# A HELO argument may also be an address literal, "[192.0.2.1]" or "[IPv6:2001:db8::1]".
_SAFE_HELO: Final = _SAFE_NAME | frozenset("[]:")


def with_protocol(*, esmtp: bool, tls: bool, auth: bool, utf8: bool) -> str:
    """The Received ``with`` value: RFC 3848 (ESMTP, ESMTPS, ESMTPA, ESMTPSA) and RFC 6531
    §3.7.3 (UTF8SMTP, UTF8SMTPS, UTF8SMTPA, UTF8SMTPSA).

    A HELO session is plain "SMTP" whatever else holds: the registry has no TLS or AUTH
    variant of it. SMTPUTF8 can only be negotiated through EHLO, so `utf8` wins over
    `esmtp`.
    """
    if utf8:
        base = "UTF8SMTP"
    elif esmtp:
        base = "ESMTP"
    else:
        return "SMTP"
    return base + ("S" if tls else "") + ("A" if auth else "")


def return_path(reverse_path: Address | None) -> bytes:
    """``Return-Path: <path>`` with CRLF (RFC 5321 §4.4; ``<>`` for the null path), the
    address as the client gave it (RFC 6531 §3.7). It is already validated; UTF-8 was
    accepted under SMTPUTF8 only."""
    path = "" if reverse_path is None else reverse_path.as_given
    return f"Return-Path: <{path}>\r\n".encode()


def received(
    *,
    helo: str,
    client_ip: str,
    client_name: str | None,
    by: str,
    protocol: str,
    queue_id: str,
    recipient: Address | None,
    when: datetime.datetime,
    tls: str | None = None,
) -> bytes:
    """One Received field, folded, ending in CRLF (RFC 5321 §4.4 Stamp).

    `recipient` is given only when the message has exactly one, so the header never lists
    a Bcc (as Postfix does). `tls` is "<version> <cipher>", e.g. "TLSv1.3
    TLS_AES_256_GCM_SHA384". `when` must carry a time zone: the date is written with a
    numeric zone (RFC 5322 §3.3).
    """
    if when.utcoffset() is None:
        raise ValueError("received() needs an aware datetime for the zone")
    utf8 = protocol.startswith("UTF8")
    lines = [
        [
            # The field name, "from" and the HELO name stay together however long.
            "Received: from " + (_clean(helo, _SAFE_HELO, utf8=utf8) or "unknown"),
            f"({_clean(client_name or 'unknown', _SAFE_NAME, utf8=False)}",
            f"[{_ip_literal(client_ip)}])",
        ]
    ]
    parts = tls.split(None, 1) if tls else []
    if parts:
        words = ["(using", _clean(parts[0], _SAFE_NAME, utf8=False)]
        if len(parts) > 1:
            words += ["with", "cipher", _clean(parts[1].strip(), _SAFE_NAME, utf8=False)]
        words[-1] += ")"
        lines.append(words)
    by_line = [
        "by",
        _clean(by, _SAFE_NAME, utf8=False) or "unknown",
        "(sansmail)",
        "with",
        _clean(protocol, _SAFE_NAME, utf8=False) or "SMTP",
        "id",
        _clean(queue_id, _SAFE_NAME, utf8=False) or "unknown",
    ]
    date = _date(when)
    rcpt = _path(recipient, utf8=utf8)
    if rcpt is None:
        by_line[-1] += ";"
        lines += [by_line, [date]]
    else:
        lines += [by_line, ["for", f"<{rcpt}>;", date]]
    text = "\r\n\t".join(_fill(words, 8 if i else 0) for i, words in enumerate(lines))
    return (text + "\r\n").encode()


def received_by(
    *, by: str, source: str, queue_id: str, recipient: Address | None, when: datetime.datetime
) -> bytes:
    """A Received field for a message that enters the queue from inside, with no client
    (a Sieve redirect), as Postfix's pickup writes one: ``Received: by host (sansmail,
    from SOURCE) id QUEUEID for <rcpt>; date``. It counts as a hop like any other, so a
    redirect loop between two users ends at `sansmail.mail.delivery.HOP_LIMIT`."""
    if when.utcoffset() is None:
        raise ValueError("received_by() needs an aware datetime for the zone")
    head = [
        "Received: by",
        _clean(by, _SAFE_NAME, utf8=False) or "unknown",
        f"(sansmail, from {_clean(source, _SAFE_NAME, utf8=False) or 'unknown'})",
    ]
    rcpt = _path(recipient, utf8=False)
    tail = ["id", _clean(queue_id, _SAFE_NAME, utf8=False) or "unknown"]
    tail += [_date(when)] if rcpt is None else ["for", f"<{rcpt}>;", _date(when)]
    if rcpt is None:
        tail[1] += ";"
    return ("\r\n\t".join((_fill(head, 0), _fill(tail, 8))) + "\r\n").encode()


def _date(when: datetime.datetime) -> str:
    # format_datetime costs 4 µs, a lookup 1: the messages of one second share the text.
    # The key holds the offset too: aware datetimes compare equal across zones, their
    # texts do not.
    return _second(when.replace(microsecond=0), when.utcoffset())


@functools.lru_cache(maxsize=8)
def _second(when: datetime.datetime, _offset: datetime.timedelta | None) -> str:
    return email.utils.format_datetime(when)


def _fill(words: list[str], indent: int) -> str:
    # The Postfix layout puts each clause on its own line; a clause that is still too
    # long (a long HELO name) is folded again between words. Continuation lines start
    # with a tab (folding whitespace, RFC 5322 §3.2.2), counted as 8 columns.
    out = [words[0]]
    width = indent + len(words[0])
    for word in words[1:]:
        if width + 1 + len(word) > _WIDTH:
            out.append("\r\n\t" + word)
            width = 8 + len(word)
        else:
            out.append(" " + word)
            width += 1 + len(word)
    return "".join(out)


def _clean(text: str, safe: frozenset[str], *, utf8: bool) -> str:
    text = text[:_MAX_NAME]
    if safe.issuperset(text):  # the common case, checked in C
        return text
    return "".join(
        ch
        if ch in safe or (utf8 and not ch.isascii() and ch.isprintable() and not ch.isspace())
        else "?"
        for ch in text
    )


@functools.lru_cache(maxsize=1024)  # the same few clients come back: parsing costs 13 µs
def _ip_literal(text: str) -> str:
    # RFC 5321 §4.1.3: an IPv6 address literal carries the "IPv6:" tag.
    try:
        ip = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return _clean(text, _SAFE_HELO, utf8=False) or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # a v4 client on a dual-stack socket
            return str(ip.ipv4_mapped)
        return f"IPv6:{ip.compressed}"
    return ip.compressed


def _path(recipient: Address | None, *, utf8: bool) -> str | None:
    if recipient is None:
        return None
    text = str(recipient)
    if not utf8 and not text.isascii():
        return None  # no place for UTF-8 in this header: leave the clause out
    return text
