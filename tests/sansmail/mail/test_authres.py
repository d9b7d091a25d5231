"""Authentication-Results: RFC 8601 Appendix B examples rendered, quoting of hostile text,
the builders from each check's result, and finding forged fields that claim our id;
hypothesis properties for both."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sansmail.mail.authres import (
    MAX_TEXT,
    MethodResult,
    authentication_results,
    claiming_fields,
    claims,
    dkim_method,
    dmarc_method,
    field,
    iprev_method,
    remove_claiming_fields,
    spf_method,
)
from sansmail.mail.dmarc import DmarcDecision, DmarcResult, DmarcVerdict, Policy, parse_record
from sansmail.mail.iprev import IprevResult, IprevVerdict
from sansmail.mail.spf import SpfResult, Verdict

IP = ipaddress.ip_address("192.0.2.200")


def m(method: str, result: str, *props: tuple[str, str, str], **kw) -> MethodResult:
    return MethodResult(method=method, result=result, properties=props, **kw)


# -- RFC 8601 Appendix B --------------------------------------------------------------


def test_b2_nothing_checked() -> None:
    assert authentication_results("example.org", []) == "example.org; none"


def test_b3_spf() -> None:
    value = authentication_results(
        "example.com", [m("spf", "pass", ("smtp", "mailfrom", "example.net"))]
    )
    assert value == "example.com; spf=pass smtp.mailfrom=example.net"


def test_b4_auth_spf_iprev() -> None:
    value = authentication_results(
        "example.com",
        [
            m("auth", "pass", ("smtp", "auth", "sender@example.net"), comment="cram-md5"),
            m("spf", "pass", ("smtp", "mailfrom", "example.net")),
        ],
    )
    assert value == (
        "example.com; auth=pass (cram-md5) smtp.auth=sender@example.net; "
        "spf=pass smtp.mailfrom=example.net"
    )
    iprev = IprevResult(verdict=IprevVerdict.PASS, ip=IP)
    assert authentication_results("example.com", [iprev_method(iprev)]) == (
        "example.com; iprev=pass policy.iprev=192.0.2.200"
    )


def test_b5_two_dkim_results() -> None:
    value = authentication_results(
        "example.com",
        [
            m("dkim", "pass", ("header", "d", "mail-router.example.net"), comment="good signature"),
            m("dkim", "fail", ("header", "d", "newyork.example.com"), comment="bad signature"),
        ],
    )
    assert value == (
        "example.com; dkim=pass (good signature) header.d=mail-router.example.net; "
        "dkim=fail (bad signature) header.d=newyork.example.com"
    )


def test_b7_reason_and_header_i() -> None:
    value = authentication_results(
        "example.com",
        [
            m("dkim", "pass", ("header", "i", "@mail-router.example.net"), reason="good signature"),
            m("dkim", "fail", ("header", "i", "@newyork.example.com"), reason="bad signature"),
        ],
    )
    assert value == (
        'example.com; dkim=pass reason="good signature" header.i=@mail-router.example.net; '
        'dkim=fail reason="bad signature" header.i=@newyork.example.com'
    )


# -- quoting --------------------------------------------------------------------------


def test_hostile_values_are_quoted() -> None:
    value = authentication_results(
        "mx.example.org",
        [
            m("spf", "fail", ("smtp", "helo", 'evil"; dkim=pass\r\nX-Bad: 1')),
            m("spf", "pass", ("smtp", "mailfrom", "a b@example.com"), comment="x) (y\\"),
        ],
    )
    assert value == (
        'mx.example.org; spf=fail smtp.helo="evil\\"; dkim=pass??X-Bad: 1"; '
        'spf=pass (x\\) \\(y\\\\) smtp.mailfrom="a b@example.com"'
    )


def test_base64_b_value_and_non_ascii() -> None:
    value = authentication_results("h.example", [m("dkim", "pass", ("header", "b", "ab/+=é"))])
    assert value == 'h.example; dkim=pass header.b="ab/+=?"'


def test_authserv_id_is_a_value() -> None:
    assert authentication_results("mx.example", []) == "mx.example; none"
    assert authentication_results("a b", []) == '"a b"; none'


def test_free_text_is_bounded() -> None:
    value = authentication_results("h", [m("spf", "none", comment="x" * 1000)])
    assert value == "h; spf=none (" + "x" * MAX_TEXT + ")"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "sp f", "result": "pass"},
        {"method": "spf", "result": "pass;"},
        {"method": "", "result": "pass"},
        {"method": "spf", "result": "pass", "properties": [("smtp", "mail from", "x")]},
        {"method": "spf", "result": "pass", "properties": [("-", "mailfrom", "x")]},
    ],
)
def test_keywords_are_checked(kwargs) -> None:
    with pytest.raises(ValueError):
        MethodResult(**kwargs)


def test_field_is_folded_between_results() -> None:
    results = [m("spf", "pass", ("smtp", "mailfrom", "example.net")), m("dkim", "none")]
    assert field("mx.example", results) == (
        b"Authentication-Results: mx.example;\r\n\tspf=pass smtp.mailfrom=example.net;\r\n"
        b"\tdkim=none\r\n"
    )


# -- from the checks ------------------------------------------------------------------


def spf(verdict: Verdict, identity: str = "mailfrom", **kw) -> SpfResult:
    return SpfResult(
        verdict=verdict,
        domain="example.net",
        ip=IP,
        sender="alice@example.net",
        helo="mail.example.net",
        receiver="mx.example.org",
        identity=identity,
        **kw,
    )


def test_spf_method() -> None:
    assert spf_method(spf(Verdict.PASS)).render() == ("spf=pass smtp.mailfrom=alice@example.net")
    assert spf_method(spf(Verdict.NEUTRAL, "helo")).render() == (
        "spf=neutral smtp.helo=mail.example.net"
    )
    temp = spf_method(spf(Verdict.TEMPERROR, problem="DNS timeout looking up TXT example.net"))
    assert temp.render() == (
        "spf=temperror (DNS timeout looking up TXT example.net) smtp.mailfrom=alice@example.net"
    )


def test_dkim_method() -> None:
    method = dkim_method(
        "pass", domain="example.net", selector="sel1", signature="dGhpcyBpcyBh\r\n IHNpZw=="
    )
    assert method.render() == "dkim=pass header.d=example.net header.s=sel1 header.b=dGhpcyBp"
    assert dkim_method("none").render() == "dkim=none"
    assert dkim_method("fail", domain="x.example", reason="body hash mismatch").render() == (
        'dkim=fail reason="body hash mismatch" header.d=x.example'
    )


def test_dmarc_method() -> None:
    record = parse_record("v=DMARC1; p=reject; sp=quarantine")
    fail = DmarcResult(
        verdict=DmarcVerdict.FAIL,
        from_domain="example.com",
        record=record,
        policy=Policy.REJECT,
        problem="no aligned identifier passed SPF or DKIM",
    )
    decision = DmarcDecision(disposition=Policy.QUARANTINE, junk=True)
    assert dmarc_method(fail, decision).render() == (
        "dmarc=fail (p=reject sp=quarantine dis=quarantine; no aligned identifier passed "
        "SPF or DKIM) header.from=example.com"
    )
    passed = DmarcResult(
        verdict=DmarcVerdict.PASS, from_domain="example.com", record=parse_record("v=DMARC1;p=none")
    )
    assert dmarc_method(passed).render() == "dmarc=pass (p=none) header.from=example.com"
    none = DmarcResult(
        verdict=DmarcVerdict.NONE, from_domain="example.com", problem="no DMARC record"
    )
    assert dmarc_method(none).render() == "dmarc=none (no DMARC record) header.from=example.com"


def test_iprev_method() -> None:
    ok = IprevResult(verdict=IprevVerdict.PASS, ip=IP, name="mail.example.net")
    assert iprev_method(ok).render() == "iprev=pass (mail.example.net) policy.iprev=192.0.2.200"
    v6 = IprevResult(
        verdict=IprevVerdict.PERMERROR, ip=ipaddress.ip_address("2001:db8::1"), problem="no PTR"
    )
    # ":" is a tspecial (RFC 2045), so an IPv6 address is a quoted-string.
    assert iprev_method(v6).render() == 'iprev=permerror (no PTR) policy.iprev="2001:db8::1"'


# -- claims ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ours"),
    [
        (" mx.example.org; spf=pass smtp.mailfrom=x", True),
        ("MX.Example.ORG; none", True),
        ("mx.example.org 1; none", True),
        ('"mx.example.org"; none', True),
        ('"mx.exa\\mple.org"; none', True),
        ("(forged (nested) \\) x)\r\n\t mx.example.org;none", True),
        ("mx.example.org", True),
        ("other.example; spf=pass (mx.example.org)", False),
        ("mx.example.org.evil; none", False),
        ("mx.example.or; none", False),
        ("", False),
        ("(unterminated mx.example.org; none", False),
        ('"mx.example.org', True),
    ],
)
def test_claims(value: str, ours: bool) -> None:
    assert claims(value, "mx.example.org") is ours
    assert claims(value.encode("latin-1"), "mx.example.org") is ours


HEADERS = (
    b"Received: from x\r\n\tby y\r\n"
    b"Authentication-Results: mx.example.org;\r\n\tspf=pass smtp.mailfrom=x\r\n"
    b"authentication-results : other.example; none\r\n"
    b"AUTHENTICATION-RESULTS:(c) MX.EXAMPLE.ORG; dkim=pass\r\n"
    b"ARC-Authentication-Results: i=1; mx.example.org; none\r\n"
    b"Subject: hi\r\n"
    b"\r\n"
    b"Authentication-Results: mx.example.org; in the body\r\n"
)


def test_claiming_fields_in_a_header_block() -> None:
    spans = claiming_fields(HEADERS, "mx.example.org")
    assert [HEADERS[a:b] for a, b in spans] == [
        b"Authentication-Results: mx.example.org;\r\n\tspf=pass smtp.mailfrom=x\r\n",
        b"AUTHENTICATION-RESULTS:(c) MX.EXAMPLE.ORG; dkim=pass\r\n",
    ]
    assert remove_claiming_fields(HEADERS, "mx.example.org") == (
        b"Received: from x\r\n\tby y\r\n"
        b"authentication-results : other.example; none\r\n"
        b"ARC-Authentication-Results: i=1; mx.example.org; none\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"Authentication-Results: mx.example.org; in the body\r\n"
    )


def test_claiming_fields_last_line_without_line_end_and_bare_lf() -> None:
    block = b"X: 1\nAuthentication-Results: mx.example.org; none"
    assert claiming_fields(block, "mx.example.org") == [(5, len(block))]
    assert claiming_fields(b"", "mx.example.org") == []


# -- properties -----------------------------------------------------------------------

keywords = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
method_results = st.builds(
    MethodResult,
    method=keywords,
    result=keywords,
    comment=st.none() | st.text(max_size=50),
    reason=st.none() | st.text(max_size=50),
    properties=st.lists(st.tuples(keywords, keywords, st.text(max_size=50)), max_size=3),
)


def _top_level_semicolons(value: str) -> int:
    count, depth, quoted, escaped = 0, 0, False, False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif ch == '"' and not depth:
            quoted = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == ";" and not depth:
            count += 1
    return count


@given(st.text(max_size=60), st.lists(method_results, max_size=4))
def test_rendering_is_printable_and_keeps_its_structure(authserv_id: str, results) -> None:
    value = authentication_results(authserv_id, results)
    assert all(" " <= ch <= "~" for ch in value)
    assert _top_level_semicolons(value) == max(len(results), 1)
    printable = "".join(ch if " " <= ch <= "~" else "?" for ch in authserv_id)
    assert claims(value, printable)
    whole = field(authserv_id, results)
    assert whole.endswith(b"\r\n")
    assert b"\r\n" not in whole[:-2].replace(b";\r\n\t", b"")
    assert b"\n" not in whole[:-2].replace(b";\r\n\t", b"")


@given(st.binary(max_size=400), st.text(max_size=20))
def test_finding_claims_never_raises(block: bytes, authserv_id: str) -> None:
    spans = claiming_fields(block, authserv_id)
    last = 0
    for start, end in spans:
        assert last <= start < end <= len(block)
        last = end
    assert len(remove_claiming_fields(block, authserv_id)) == len(block) - sum(
        end - start for start, end in spans
    )
    claims(block, authserv_id)
    claims(block.decode("latin-1"), authserv_id)
