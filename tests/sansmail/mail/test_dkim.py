"""sansmail.mail.dkim: our signatures and seals checked by dkimpy itself, our verifier on
every result, the key records, and what a message leaving us gets."""

from __future__ import annotations

import base64
import functools
import hashlib
import re

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization

from sansmail.mail import delivery, dkim
from sansmail.mail.dnsquery import DnsAnswer, DnsQuery, DnsStatus, drive
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: hello\r\n"
    b"Date: Mon, 7 Dec 2026 05:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"a line\r\n"
)


@functools.cache
def _key(algorithm: dkim.KeyAlgorithm) -> tuple[bytes, str]:
    return dkim.generate(algorithm)


def key(algorithm: dkim.KeyAlgorithm = "rsa") -> tuple[bytes, str]:
    """One key per algorithm for the whole module (RSA keys take a while to make)."""
    return _key(algorithm)


# 768 bits: below RFC 8301's 1024, which cryptography will no longer generate.
SMALL_KEY = b"""-----BEGIN RSA PRIVATE KEY-----
MIIBzAIBAAJhAOEsM98ibtB4+MBvjw51WXZ2s5Ft6s6r3afPX6xX94fig+d7HwbZ
ty3zHoM/PWncoShXsCt+xmJg3Mm2AP/JPZ4qKtRmIy5+ADULqjbHeCRpqyn4EviB
O6efHWmvTI1QvQIDAQABAmEA4FPUPamlMsZCNB0wLVxVy4KIdQtHkayBgCxGCYH9
1f+iH5x2lbGTIBEExgbb3Tpx6IBeYLVSfRh0fN+/VqwnldrrdP/mcI7bGkrSgOvr
vOSx4yLI7/Dy8rGCKRSFzkFBAjEA/iVnfYFVOuxUFkigy85+yhTNmU0SxqQFRvrd
/WUeKIBLSOhEXjKv+FKwJN6ELb4tAjEA4tCxZyLu1lHxAu05WF8UmCeBR62/Qrwp
u7WuOe5zZ2zV6TDqNwGgLkV8xhDLwAbRAjEAzcH0tpy2Jz1cmqn0XOzyo6MSDbJj
qCT1DNFgVp2+O+YajY1WhLke1LoFV+Q7OVmFAjEAgAD7PZOPatDPzbEHngH642vY
IBXETOtYOiFsdDFIW+QmTPZYGDcIqVR5+GXeNz8hAjBP1xtbeA78kwlIcMrSWpzh
qvddT9vQiVbOwm1oWluPiDIHV+akz9C+aoIRbUwTSXM=
-----END RSA PRIVATE KEY-----
"""


def dnsfunc(records: dict[str, str]):
    """dkimpy's own DNS function, from names to TXT values."""

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        value = records.get(name.decode().rstrip(".").lower())
        return None if value is None else value.encode()

    return lookup


def zone(records: dict[str, str], asked: list[DnsQuery] | None = None):
    def resolve(query: DnsQuery) -> DnsAnswer:
        if asked is not None:
            asked.append(query)
        assert query.rtype == "TXT"
        value = records.get(query.name)
        return DnsAnswer.of(value) if value is not None else DnsAnswer(DnsStatus.NXDOMAIN)

    return resolve


def signed(algorithm: dkim.KeyAlgorithm = "rsa", message: bytes = MESSAGE) -> bytes:
    private, _txt = key(algorithm)
    return dkim.sign(message, domain="example.com", selector="sel", private_key=private) + message


def records(algorithm: dkim.KeyAlgorithm = "rsa") -> dict[str, str]:
    return {"sel._domainkey.example.com": key(algorithm)[1]}


# -- signing, checked by dkimpy ---------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_dkimpy_verifies_our_signature(algorithm) -> None:
    message = signed(algorithm)
    assert dkimpy.verify(message, dnsfunc=dnsfunc(records(algorithm)))
    # And fails it once the body changes: the signature covers it.
    assert not dkimpy.verify(message + b"more\r\n", dnsfunc=dnsfunc(records(algorithm)))


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_signature_tags(algorithm) -> None:
    private, _txt = key(algorithm)
    field = dkim.sign(MESSAGE, domain="example.com", selector="sel", private_key=private)
    assert field.startswith(b"DKIM-Signature: ")
    assert field.endswith(b"\r\n")
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))  # folded
    tags = dkimpy.util.parse_tag_value(field.split(b":", 1)[1].replace(b"\r\n", b""))
    assert tags[b"a"] == {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}[algorithm]
    assert tags[b"c"] == b"relaxed/relaxed"
    assert tags[b"d"] == b"example.com"
    assert tags[b"s"] == b"sel"
    signed_fields = [h.strip() for h in tags[b"h"].split(b":")]
    # Those present, in order, and From once more than it occurs (oversigned).
    assert signed_fields == [
        b"from",
        b"to",
        b"subject",
        b"date",
        b"message-id",
        b"mime-version",
        b"content-type",
        b"from",
    ]


@pytest.mark.parametrize("hash_name", ["sha256", "sha1"])
def test_openssl_rsa_gives_dkimpys_octets(hash_name) -> None:
    # dkimpy's signer calls our OpenSSL version of its pure-Python RSA step; PKCS #1
    # v1.5 is deterministic, so both must give the same signature for the same digest.
    assert dkimpy.RSASSA_PKCS1_v1_5_sign is dkim._rsa_sign
    parsed = dkimpy.crypto.parse_pem_private_key(key()[0])
    digest = hashlib.new(hash_name, b"the headers, canonicalized")
    pure = bytes(dkimpy.crypto.RSASSA_PKCS1_v1_5_sign(digest, parsed))
    assert dkim._rsa_sign(digest, parsed) == pure
    small = dkimpy.crypto.parse_pem_private_key(SMALL_KEY)
    assert dkim._rsa_sign(digest, small) == bytes(
        dkimpy.crypto.RSASSA_PKCS1_v1_5_sign(digest, small)
    )


def test_oversigned_from_refuses_an_added_from() -> None:
    message = signed()
    assert not dkimpy.verify(b"From: mallory@example.net\r\n" + message, dnsfunc=dnsfunc(records()))


def test_relaxed_canonicalization_survives_refolding() -> None:
    message = signed().replace(b"Subject: hello", b"Subject:   hello  ")
    assert drive(dkim.verify(message), zone(records()))[0].result == "pass"


def test_sign_refuses_a_message_without_from_and_a_bad_key() -> None:
    private, _txt = key()
    with pytest.raises(dkim.DkimError, match="no From"):
        dkim.sign(
            b"To: b@example.org\r\n\r\nx\r\n", domain="d.test", selector="s", private_key=private
        )
    with pytest.raises(dkim.DkimError, match="PEM"):
        dkim.sign(MESSAGE, domain="d.test", selector="s", private_key=b"not a key")


# -- verifying ----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_verify_pass(algorithm) -> None:
    asked: list[DnsQuery] = []
    message = signed(algorithm)
    (result,) = drive(dkim.verify(message), zone(records(algorithm), asked))
    assert asked == [DnsQuery("sel._domainkey.example.com", "TXT")]
    assert result.result == "pass"
    assert result.domain == "example.com"
    assert result.selector == "sel"
    assert result.identity == "@example.com"
    assert result.algorithm == {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}[algorithm]
    b = dkimpy.util.parse_tag_value(
        message.split(b"\r\n\r\n")[0].split(b":", 1)[1].replace(b"\r\n", b"")
    )[b"b"]
    assert result.b == b.replace(b" ", b"").decode()[:8]
    assert result.reason is None


def test_verify_none() -> None:
    assert drive(dkim.verify(MESSAGE), zone({})) == ()


def test_verify_fail_body_altered() -> None:
    message = signed().replace(b"a line", b"a lime")
    (result,) = drive(dkim.verify(message), zone(records()))
    assert (result.result, result.reason) == ("fail", "body hash did not verify")


def test_verify_fail_header_altered() -> None:
    message = signed().replace(b"Subject: hello", b"Subject: jello")
    (result,) = drive(dkim.verify(message), zone(records()))
    assert (result.result, result.reason) == ("fail", "signature did not verify")


def test_verify_fail_wrong_key() -> None:
    other = {"sel._domainkey.example.com": dkim.generate("ed25519")[1]}
    (result,) = drive(dkim.verify(signed("ed25519")), zone(other))
    assert result.result == "fail"


@pytest.mark.parametrize("status", [DnsStatus.SERVFAIL, DnsStatus.TIMEOUT])
def test_verify_temperror(status) -> None:
    (result,) = drive(dkim.verify(signed()), lambda _q: DnsAnswer(status))
    assert result.result == "temperror"
    assert "sel._domainkey.example.com" in result.reason


@pytest.mark.parametrize("answer", [DnsAnswer(DnsStatus.NXDOMAIN), DnsAnswer.of()])
def test_verify_permerror_no_key(answer) -> None:
    (result,) = drive(dkim.verify(signed()), lambda _q: answer)
    assert result.result == "permerror"
    assert result.reason.startswith("no key")


def test_verify_permerror_bad_key_record() -> None:
    (result,) = drive(dkim.verify(signed()), lambda _q: DnsAnswer.of("v=DKIM1; k=rsa; p=!!"))
    assert result.result == "permerror"


def test_verify_permerror_hash_the_key_excludes() -> None:
    # RFC 6376 §6.1.2: a key record whose h= does not list the signature's hash.
    txt = key()[1].replace("k=rsa;", "k=rsa; h=sha1;")
    (result,) = drive(dkim.verify(signed()), zone({"sel._domainkey.example.com": txt}))
    assert result.result == "permerror"
    assert "hash" in result.reason
    txt = key()[1].replace("k=rsa;", "k=rsa; h=sha1:SHA256;")
    (result,) = drive(dkim.verify(signed()), zone({"sel._domainkey.example.com": txt}))
    assert result.result == "pass"


def test_verify_permerror_missing_tag() -> None:
    message = (
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; h=from; b=AAAA\r\n" + MESSAGE
    )
    (result,) = drive(dkim.verify(message), zone(records()))
    assert result.result == "permerror"
    assert "bh" in result.reason


def test_verify_neutral_unparseable_tags() -> None:
    message = b"DKIM-Signature: v=1; v=1; ;;=\r\n" + MESSAGE
    (result,) = drive(dkim.verify(message), lambda _q: pytest.fail("no key to ask for"))
    assert result.result == "neutral"


def test_verify_policy_small_key() -> None:
    field = dkimpy.sign(MESSAGE, b"sel", b"example.com", SMALL_KEY)
    small = {"sel._domainkey.example.com": dkim.txt_record(SMALL_KEY)}
    (result,) = drive(dkim.verify(field + MESSAGE), zone(small))
    assert result.result == "policy"
    with pytest.raises(dkim.DkimError, match="1024"):
        dkim.sign(MESSAGE, domain="example.com", selector="sel", private_key=SMALL_KEY)


def test_verify_several_signatures_one_batch_bounded() -> None:
    rsa_key, rsa_txt = key("rsa")
    ed_key, ed_txt = key("ed25519")
    message = MESSAGE
    message = (
        dkim.sign(message, domain="example.com", selector="sel", private_key=rsa_key) + message
    )
    message = dkim.sign(message, domain="example.net", selector="ed", private_key=ed_key) + message
    answers = {"sel._domainkey.example.com": rsa_txt, "ed._domainkey.example.net": ed_txt}
    batches: list[tuple[DnsQuery, ...]] = []
    check = dkim.verify(message)
    queries = next(check)
    batches.append(queries)
    with pytest.raises(StopIteration) as done:
        check.send([DnsAnswer.of(answers[q.name]) for q in queries])
    assert len(batches) == 1
    assert len(queries) == 2
    assert [(r.domain, r.result) for r in done.value.value] == [
        ("example.net", "pass"),
        ("example.com", "pass"),
    ]
    (only,) = drive(dkim.verify(message, max_signatures=1), zone(answers))
    assert only.domain == "example.net"


def test_verify_never_raises_on_junk() -> None:
    for message in (
        b"",
        b"DKIM-Signature:\r\n\r\n",
        b"DKIM-Signature: d=../..; s=x\r\n\r\n",
        b"\x00\xffDKIM-Signature: v=1\r\n\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; h=from; bh=AAAA; b=AAAA\r\n"
        b"bad header line\r\n\r\nbody",
    ):
        results = drive(dkim.verify(message), lambda _q: DnsAnswer.of("v=DKIM1; p="))
        assert all(r.result != "pass" for r in results)


# -- ARC ------------------------------------------------------------------------------------

ARRIVED = (
    b"Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=example.com;\r\n"
    b"\tdkim=pass header.d=example.com header.s=sel header.b=AbCdEf12;\r\n"
    b"\tdmarc=pass (p=reject dis=none) header.from=example.com\r\n"
    b"Received: from a by mx.example.org; Mon, 7 Dec 2026 05:00:00 +0000\r\n"
) + MESSAGE


def arc_records() -> dict[str, str]:
    return {"arc._domainkey.example.org": key()[1], "sel._domainkey.example.com": key()[1]}


def seal(message: bytes, authserv_id: str = "mx.example.org", domain: str = "example.org") -> bytes:
    return dkim.arc_seal(
        message, domain=domain, selector="arc", private_key=key()[0], authserv_id=authserv_id
    )


def test_dkimpy_validates_our_seal() -> None:
    arc_set = seal(ARRIVED)
    assert arc_set.startswith(b"ARC-Seal: i=1; cv=none;")
    assert b"\r\nARC-Message-Signature: i=1;" in arc_set
    assert b"\r\nARC-Authentication-Results: i=1; mx.example.org;" in arc_set
    assert b"spf=pass" in arc_set
    assert b"dkim=pass" in arc_set
    cv, _sets, reason = dkimpy.arc_verify(arc_set + ARRIVED, dnsfunc=dnsfunc(arc_records()))
    assert (cv, reason) == (dkimpy.CV_Pass, "success")
    result = drive(dkim.arc_verify(arc_set + ARRIVED), zone(arc_records()))
    assert result == dkim.ArcResult(result="pass", instance=1, domain="example.org")


def test_a_chain_of_two() -> None:
    first = seal(ARRIVED) + ARRIVED
    # The second hop records the chain's validation, then seals with cv=pass.
    second_hop = (
        b"Authentication-Results: mx.example.net; arc=pass; dkim=pass header.d=example.com\r\n"
        + first
    )
    arc_set = seal(second_hop, authserv_id="mx.example.net", domain="example.net")
    assert arc_set.startswith(b"ARC-Seal: i=2; cv=pass;")
    chain = arc_set + second_hop
    records = {**arc_records(), "arc._domainkey.example.net": key()[1]}
    cv, sets, _reason = dkimpy.arc_verify(chain, dnsfunc=dnsfunc(records))
    assert cv == dkimpy.CV_Pass
    assert len(sets) == 2
    result = drive(dkim.arc_verify(chain), zone(records))
    assert (result.result, result.instance, result.domain) == ("pass", 2, "example.net")
    # Changing the body breaks the newest AMS: the chain fails.
    broken = drive(dkim.arc_verify(chain + b"x\r\n"), zone(records))
    assert broken.result == "fail"


def test_seal_without_our_results_says_none() -> None:
    arc_set = seal(MESSAGE)
    # dkimpy (through authres) writes a result list of "none" as nothing at all.
    assert arc_set.endswith(b"\r\nARC-Authentication-Results: i=1; mx.example.org\r\n")
    assert not arc_set.count(b"Authentication-Results: mx.example.org")  # not added
    cv, _sets, _reason = dkimpy.arc_verify(arc_set + MESSAGE, dnsfunc=dnsfunc(arc_records()))
    assert cv == dkimpy.CV_Pass


def test_seal_needs_rsa() -> None:
    with pytest.raises(dkim.DkimError, match="rsa-sha256"):
        dkim.arc_seal(
            ARRIVED,
            domain="example.org",
            selector="arc",
            private_key=key("ed25519")[0],
            authserv_id="mx.example.org",
        )


def test_arc_verify_none_and_temporary_failure() -> None:
    assert drive(dkim.arc_verify(MESSAGE), zone({})) == dkim.ArcResult(result="none")
    chain = seal(ARRIVED) + ARRIVED
    result = drive(dkim.arc_verify(chain), lambda _q: DnsAnswer(DnsStatus.SERVFAIL))
    assert result.result == "fail"
    assert "servfail" in result.reason
    missing = drive(dkim.arc_verify(chain), zone({}))
    assert missing.result == "fail"


# -- keys and records -------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_generate(algorithm) -> None:
    private, txt = dkim.generate(algorithm)
    assert private.startswith(b"-----BEGIN ")
    assert txt.startswith(f"v=DKIM1; k={algorithm}; p=")
    assert dkim.key_algorithm(private) == algorithm
    assert dkim.txt_record(private) == txt
    public = base64.b64decode(txt.split("p=")[1])
    if algorithm == "ed25519":
        assert len(public) == 32  # RFC 8463 §4.2: the raw key
    else:
        _pk, size, _ktag, _tls = dkimpy.evaluate_pk("x", txt.encode())
        assert size == 2048


def test_txt_record_of_a_public_key() -> None:
    private, txt = key()
    public = (
        serialization.load_pem_private_key(private, None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert dkim.txt_record(public) == txt
    with pytest.raises(dkim.DkimError):
        dkim.txt_record(b"junk")


def test_dns_record_splits_into_strings_of_255() -> None:
    _private, txt = key()
    line = dkim.dns_record("example.com", "sansmail", txt)
    assert line.startswith('sansmail._domainkey.example.com. IN TXT "v=DKIM1; k=rsa; p=')
    rest = line.split(" IN TXT ", 1)[1]
    strings = re.findall(r'"([^"]*)"', rest)
    assert " ".join(f'"{s}"' for s in strings) == rest
    assert all(len(s) <= 255 for s in strings)
    assert "".join(strings) == txt
    assert len(strings) == 2  # a 2048-bit key's record needs two


# -- what leaves us ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "domain"),
    [
        (b"From: Alice <alice@Example.COM>", "example.com"),
        (b'From: "a@b.test" <alice@example.com>', "example.com"),
        (b"From: alice@example.com,\r\n bob@example.com", "example.com"),
        (b"From: alice@example.com, bob@example.net", None),
        (b"From: undisclosed", None),
        (b"To: alice@example.com", None),
        (b"From: Mail Delivery System <MAILER-DAEMON@mx.example.com>", "mx.example.com"),
    ],
)
def test_from_domain(field, domain) -> None:
    assert dkim.from_domain(field + b"\r\nSubject: x\r\n\r\nbody\r\n") == domain


def test_from_domain_two_from_fields() -> None:
    assert dkim.from_domain(b"From: a@x.test\r\nFrom: b@x.test\r\n\r\n") is None


def outbound(message: bytes, keys: dict[str, bytes], **kw) -> bytes:
    kw = {"forwarded": False, "own_sender": True, **kw}
    return dkim.outbound_fields(
        message,
        domains=("example.com", "example.org"),
        hostname="mx.example.com",
        selector="sel",
        key_for=keys.get,
        **kw,
    )


def test_outbound_signs_with_the_from_domains_key() -> None:
    fields = outbound(MESSAGE, {"example.com": key()[0]})
    assert fields.startswith(b"DKIM-Signature:")
    assert b"d=example.com;" in fields
    assert dkimpy.verify(fields + MESSAGE, dnsfunc=dnsfunc(records()))
    assert outbound(MESSAGE, {"example.org": key()[0]}) == b""  # no key for the From domain
    assert outbound(MESSAGE, {}) == b""


def test_outbound_bounce_signed_for_the_hostname() -> None:
    bounce = MESSAGE.replace(
        b"From: Alice <alice@example.com>",
        b"From: Mail Delivery System <MAILER-DAEMON@mx.example.com>",
    )
    fields = outbound(bounce, {"mx.example.com": key()[0]})
    assert b"d=mx.example.com;" in fields
    records = {"sel._domainkey.mx.example.com": key()[1]}
    assert dkimpy.verify(fields + bounce, dnsfunc=dnsfunc(records))


def test_outbound_forwarded_copy_of_an_outside_sender_is_sealed_not_signed() -> None:
    outside = ARRIVED.replace(b"alice@example.com", b"carol@elsewhere.test").replace(
        b"mx.example.org", b"mx.example.com"
    )
    keys = {"example.org": key()[0], "elsewhere.test": key("ed25519")[0]}
    fields = outbound(outside, keys, forwarded=True, own_sender=False)
    assert fields.startswith(b"ARC-Seal: i=1; cv=none;")
    assert b"DKIM-Signature" not in fields
    assert b"d=example.org;" in fields  # the first of our domains with a key
    records = {"sel._domainkey.example.org": key()[1]}
    cv, _sets, reason = dkimpy.arc_verify(fields + outside, dnsfunc=dnsfunc(records))
    assert cv == dkimpy.CV_Pass, reason


def test_outbound_forwarded_copy_of_our_user_is_signed_and_sealed() -> None:
    keys = {"example.com": key()[0]}
    fields = outbound(ARRIVED, keys, forwarded=True, own_sender=True)
    seal_end = fields.index(b"DKIM-Signature:")
    assert fields.startswith(b"ARC-Seal:")
    sent = fields + ARRIVED
    assert dkimpy.verify(sent[seal_end:], dnsfunc=dnsfunc(records()))
    assert dkimpy.verify(sent, dnsfunc=dnsfunc(records()))
    cv, _sets, reason = dkimpy.arc_verify(
        sent, dnsfunc=dnsfunc({"sel._domainkey.example.com": key()[1]})
    )
    assert cv == dkimpy.CV_Pass, reason


def test_outbound_forwarded_spoof_of_our_domain_is_not_signed() -> None:
    # From says example.com, but the envelope sender was an outsider's (SRS-rewritten).
    fields = outbound(ARRIVED, {"example.com": key()[0]}, forwarded=True, own_sender=False)
    assert b"DKIM-Signature" not in fields
    assert fields.startswith(b"ARC-Seal:")


def test_outbound_forwarded_seal_skips_ed25519_keys() -> None:
    keys = {"example.com": key("ed25519")[0], "mx.example.com": key()[0]}
    fields = outbound(ARRIVED, keys, forwarded=True, own_sender=False)
    assert b"ARC-Seal:" in fields
    assert b"d=mx.example.com;" in fields


# -- which queued copies are forwarded (sansmail.mail.delivery) -------------------------------


def envelope(sender: str, *recipients: tuple[str, str | None]) -> QueuedMessage:
    return QueuedMessage(
        queue_id="A1",
        sender=sender,
        arrival=0.0,
        size=1,
        recipients=[QueuedRecipient(address=a, orcpt=o) for a, o in recipients],
    )


OURS = ("example.com",)


@pytest.mark.parametrize(
    ("message", "forwarded", "own"),
    [
        # Relayed for one of our users: not forwarded.
        (envelope("alice@example.com", ("bob@far.test", None)), False, True),
        (envelope("alice@example.com", ("bob@far.test", "rfc822;bob@far.test")), False, True),
        # An outsider's mail, forwarded with an SRS sender.
        (envelope("SRS0=HHHH=TT=else.test=carol@example.com", ("b@far.test", None)), True, False),
        (envelope("srs1=G=x.test==H=TT=e.test=c@Example.COM", ("b@far.test", None)), True, False),
        # Our user's mail to an alias that forwards: ORCPT names the alias.
        (
            envelope("alice@example.com", ("bob@far.test", "rfc822;list@example.com")),
            True,
            True,
        ),
        # A bounce forwarded (null sender), the ORCPT xtext-encoded.
        (envelope("", ("bob@far.test", "rfc822;list+2Bx@EXAMPLE.com")), True, False),
        # An SRS-looking sender at another domain is someone else's.
        (envelope("SRS0=HHHH=TT=else.test=carol@far.test", ("b@far.test", None)), False, False),
        # A local recipient's ORCPT says nothing.
        (envelope("carol@else.test", ("bob@example.com", "rfc822;a@example.com")), False, False),
        (envelope("carol@else.test", ("bob@far.test", "utf-8;a@example.com")), False, False),
    ],
)
def test_forwarded_and_own_sender(message, forwarded, own) -> None:
    assert delivery.forwarded(message, domains=OURS) is forwarded
    assert delivery.own_sender(message, domains=OURS) is own
