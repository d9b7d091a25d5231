"""Trace headers: exact bytes, folding, and attacker text that must not break them."""

from __future__ import annotations

import datetime
import email.parser
import email.policy
import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail.mail import trace
from sansmail.mail.address import Address

WHEN = datetime.datetime(2025, 6, 3, 10, 0, 0, tzinfo=datetime.UTC)
WHEN_PARIS = datetime.datetime(
    2025, 1, 5, 8, 7, 6, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
)
ALICE = Address(local_part="alice", domain="example.test")


def stamp(**overrides: object) -> bytes:
    args: dict[str, object] = {
        "helo": "client.example",
        "client_ip": "192.0.2.1",
        "client_name": "mail.client.example",
        "by": "mx.example.test",
        "protocol": "ESMTP",
        "queue_id": "4ABC123",
        "recipient": ALICE,
        "when": WHEN,
        "tls": None,
    }
    args.update(overrides)
    return trace.received(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("esmtp", "tls", "auth", "utf8", "expected"),
    [
        (False, False, False, False, "SMTP"),
        (False, True, True, False, "SMTP"),
        (True, False, False, False, "ESMTP"),
        (True, True, False, False, "ESMTPS"),
        (True, False, True, False, "ESMTPA"),
        (True, True, True, False, "ESMTPSA"),
        (True, False, False, True, "UTF8SMTP"),
        (True, True, False, True, "UTF8SMTPS"),
        (True, False, True, True, "UTF8SMTPA"),
        (True, True, True, True, "UTF8SMTPSA"),
        (False, True, True, True, "UTF8SMTPSA"),
    ],
)
def test_with_protocol(esmtp: bool, tls: bool, auth: bool, utf8: bool, expected: str) -> None:
    assert trace.with_protocol(esmtp=esmtp, tls=tls, auth=auth, utf8=utf8) == expected


def test_with_protocol_values_are_all_registered() -> None:
    # RFC 3848 and RFC 6531 §3.7.3 register exactly these.
    registered = {"SMTP", "ESMTP", "ESMTPS", "ESMTPA", "ESMTPSA"} | {
        "UTF8SMTP",
        "UTF8SMTPS",
        "UTF8SMTPA",
        "UTF8SMTPSA",
    }
    seen = {
        trace.with_protocol(esmtp=e, tls=t, auth=a, utf8=u)
        for e, t, a, u in itertools.product([False, True], repeat=4)
    }
    assert seen == registered


def test_return_path() -> None:
    assert trace.return_path(None) == b"Return-Path: <>\r\n"
    assert trace.return_path(ALICE) == b"Return-Path: <alice@example.test>\r\n"
    quoted = Address(local_part="john doe", domain="example.test")
    assert trace.return_path(quoted) == b'Return-Path: <"john doe"@example.test>\r\n'
    utf8 = Address(local_part="jöran", domain="example.test")
    assert trace.return_path(utf8) == "Return-Path: <jöran@example.test>\r\n".encode()


def test_received_one_recipient_with_tls() -> None:
    assert stamp(protocol="ESMTPS", tls="TLSv1.3 TLS_AES_256_GCM_SHA384") == (
        b"Received: from client.example (mail.client.example [192.0.2.1])\r\n"
        b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n"
        b"\tby mx.example.test (sansmail) with ESMTPS id 4ABC123\r\n"
        b"\tfor <alice@example.test>; Tue, 03 Jun 2025 10:00:00 +0000\r\n"
    )


def test_received_no_recipient_no_name() -> None:
    assert stamp(recipient=None, client_name=None, protocol="SMTP", when=WHEN_PARIS) == (
        b"Received: from client.example (unknown [192.0.2.1])\r\n"
        b"\tby mx.example.test (sansmail) with SMTP id 4ABC123;\r\n"
        b"\tSun, 05 Jan 2025 08:07:06 +0100\r\n"
    )


def test_received_by_has_no_client() -> None:
    assert trace.received_by(
        by="mx.example.test", source="sieve", queue_id="4ABC123", recipient=ALICE, when=WHEN
    ) == (
        b"Received: by mx.example.test (sansmail, from sieve)\r\n"
        b"\tid 4ABC123 for <alice@example.test>; Tue, 03 Jun 2025 10:00:00 +0000\r\n"
    )
    assert trace.received_by(
        by="mx.example.test", source="sieve", queue_id="4ABC123", recipient=None, when=WHEN_PARIS
    ) == (
        b"Received: by mx.example.test (sansmail, from sieve)\r\n"
        b"\tid 4ABC123; Sun, 05 Jan 2025 08:07:06 +0100\r\n"
    )
    with pytest.raises(ValueError, match="aware"):
        trace.received_by(
            by="h", source="s", queue_id="q", recipient=None, when=datetime.datetime(2025, 1, 1)
        )


@pytest.mark.parametrize(
    ("ip", "literal"),
    [
        ("2001:db8::1", "[IPv6:2001:db8::1]"),
        ("2001:DB8:0:0:0:0:0:1", "[IPv6:2001:db8::1]"),
        ("::ffff:192.0.2.7", "[192.0.2.7]"),
        ("fe80::1%eth0", "[IPv6:fe80::1]"),
        ("not an ip", "[not?an?ip]"),
    ],
)
def test_received_address_literals(ip: str, literal: str) -> None:
    first_line = stamp(client_ip=ip).split(b"\r\n")[0]
    assert first_line.endswith(f" {literal})".encode())


def test_received_quoted_recipient() -> None:
    rcpt = Address(local_part="a (b);c", domain="example.test")
    assert b'\tfor <"a (b);c"@example.test>; Tue' in stamp(recipient=rcpt)


def test_received_utf8() -> None:
    rcpt = Address(local_part="jöran", domain="example.test")
    header = stamp(helo="bücher.example", protocol="UTF8SMTP", recipient=rcpt)
    assert header.startswith("Received: from bücher.example (".encode())
    assert "for <jöran@example.test>;".encode() in header
    # Without SMTPUTF8 there is no room for UTF-8: replaced, and the clause left out.
    header = stamp(helo="bücher.example", protocol="ESMTP", recipient=rcpt)
    assert header.isascii()
    assert header.startswith(b"Received: from b?cher.example (")
    assert b"for <" not in header
    assert b"with ESMTP id 4ABC123;\r\n" in header


@pytest.mark.parametrize(
    "helo",
    [
        "evil\r\nBcc: victim@example.test",
        "evil\nX-Injected: 1",
        "evil\rX",
        "evil (forged comment) by trusted.example",
        "evil; Mon, 01 Jan 2001 00:00:00 +0000",
        "evil\x00\x1b[31m",
        "evil\u2028next\u0085line",
        "",
    ],
)
def test_received_helo_injection(helo: str) -> None:
    header = stamp(helo=helo)
    check_shape(header)
    assert header.count(b";") == 1
    first = header.replace(b"\r\n\t", b" ").split(b" by ")[0]
    assert re.fullmatch(
        rb"Received: from [A-Za-z0-9.\-_\[\]:?]+ \(mail\.client\.example "
        rb"\[192\.0\.2\.1\]\)",
        first,
    ), first


def test_received_long_helo_is_folded_and_cut() -> None:
    header = stamp(helo="a" * 600, client_name="b" * 70 + ".example")
    check_shape(header)
    lines = header.split(b"\r\n")
    assert lines[0] == b"Received: from " + b"a" * 255
    assert lines[1] == b"\t(" + b"b" * 70 + b".example"
    assert lines[2] == b"\t[192.0.2.1])"


def test_received_needs_a_zone() -> None:
    with pytest.raises(ValueError, match="aware"):
        stamp(when=datetime.datetime(2025, 1, 1))


def check_shape(header: bytes) -> None:
    """One header field: CRLF only as fold + final line end, every line within 998."""
    assert header.endswith(b"\r\n")
    body = header[:-2]
    assert b"\n" not in body.replace(b"\r\n\t", b"")
    assert b"\r" not in body.replace(b"\r\n\t", b"")
    assert all(len(line) <= 998 for line in header.split(b"\r\n"))
    assert all(line.strip(b" \t") for line in body.split(b"\r\n"))
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
        header + b"\r\nbody\r\n"
    )
    assert message.keys() == ["Received"]
    assert message.get_payload() == "body\r\n"


text = st.text(st.characters(codec="utf-8"), max_size=300)


@settings(deadline=None, max_examples=300)
@given(helo=text, name=st.none() | text, ip=text, qid=text, tls=st.none() | text)
def test_received_any_attacker_text(
    helo: str, name: str | None, ip: str, qid: str, tls: str | None
) -> None:
    for protocol in ("ESMTP", "UTF8SMTPS"):
        header = stamp(
            helo=helo, client_name=name, client_ip=ip, queue_id=qid, tls=tls, protocol=protocol
        )
        check_shape(header)
        unfolded = header.replace(b"\r\n\t", b" ").decode()
        assert unfolded.count(";") == 1
        assert unfolded.count("(") == unfolded.count(")")
        assert re.fullmatch(
            r"Received: from \S+ \(\S+ \[\S+\]\)( \(using [^()]+\))?"
            r" by mx\.example\.test \(sansmail\) with \S+ id \S+"
            r" for <alice@example\.test>; Tue, 03 Jun 2025 10:00:00 \+0000\r\n",
            unfolded,
        ), unfolded
        if protocol == "ESMTP":
            assert unfolded.isascii()
