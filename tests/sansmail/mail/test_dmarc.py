"""DMARC: the record parser (with RFC 7489 Appendix B records), the organizational domain,
alignment (Appendix B.1), record discovery, the policy picked, and the off/tag/enforce
decision with pct= sampling; hypothesis properties for the parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sansmail.mail.dmarc import (
    DmarcDecision,
    DmarcMode,
    DmarcRecord,
    DmarcResult,
    DmarcSyntaxError,
    DmarcVerdict,
    Policy,
    aligned,
    check_dmarc,
    decide_dmarc,
    organizational_domain,
    parse_record,
)
from sansmail.mail.dnsquery import DnsAnswer, DnsQuery, DnsStatus, drive

NXDOMAIN = DnsAnswer(DnsStatus.NXDOMAIN)
NODATA = DnsAnswer.of()


def run(from_domain, zone, *, spf=None, dkim=(), asked=None) -> DmarcResult:
    def resolve(query: DnsQuery) -> DnsAnswer:
        if asked is not None:
            asked.append(query)
        return zone.get((query.name, query.rtype), NXDOMAIN)

    return drive(check_dmarc(from_domain, spf_domain=spf, dkim_domains=dkim), resolve)


def txt(*records: str) -> DnsAnswer:
    return DnsAnswer.of(*records)


# -- parsing --------------------------------------------------------------------------


def test_appendix_b_2_1_monitoring() -> None:
    record = parse_record("v=DMARC1; p=none; rua=mailto:dmarc-feedback@example.com")
    assert record == DmarcRecord(p=Policy.NONE, rua=("mailto:dmarc-feedback@example.com",))


def test_appendix_b_2_4_sampled_quarantine() -> None:
    record = parse_record(
        "v=DMARC1; p=quarantine; "
        "rua=mailto:dmarc-feedback@example.com,mailto:tld-test@thirdparty.example.net!10m; "
        "pct=25"
    )
    assert record.p is Policy.QUARANTINE
    assert record.pct == 25
    assert record.rua == (
        "mailto:dmarc-feedback@example.com",
        "mailto:tld-test@thirdparty.example.net!10m",
    )


def test_every_tag() -> None:
    record = parse_record(
        "v = DMARC1 ;P=Reject; sp=quarantine; np=reject; pct=50; adkim=s; aspf=S; "
        "ruf=mailto:f@example.com; fo=1:d; rf=afrf; ri=3600; unknown=tag;"
    )
    assert record == DmarcRecord(
        p=Policy.REJECT,
        sp=Policy.QUARANTINE,
        np=Policy.REJECT,
        pct=50,
        adkim="s",
        aspf="s",
        ruf=("mailto:f@example.com",),
        fo="1:d",
        rf="afrf",
        ri=3600,
    )


@pytest.mark.parametrize(
    "text",
    [
        "p=reject; v=DMARC1",  # v= must come first
        "v=DMARC2; p=reject",
        "v=DMARC1p=reject",
        "v=spf1 -all",
        "",
        "v=DMARC1",  # no p=, no rua=
        "v=DMARC1; p=bogus",
        "v=DMARC1; p=reject; sp=bogus",  # §6.6.3: an invalid sp= too
        "v=DMARC1; p=bogus; rua=not a uri",
    ],
)
def test_records_without_a_policy(text: str) -> None:
    with pytest.raises(DmarcSyntaxError):
        parse_record(text)


def test_invalid_p_with_rua_is_p_none() -> None:
    record = parse_record("v=DMARC1; p=bogus; sp=reject; rua=mailto:r@example.com")
    assert (record.p, record.sp) == (Policy.NONE, None)


@pytest.mark.parametrize(
    ("text", "field", "default"),
    [
        ("pct=150", "pct", 100),
        ("pct=-1", "pct", 100),
        ("pct=x", "pct", 100),
        ("adkim=x", "adkim", "r"),
        ("aspf=", "aspf", "r"),
        ("fo=2", "fo", "0"),
        ("ri=soon", "ri", 86400),
        ("np=bogus", "np", None),
    ],
)
def test_invalid_values_take_their_default(text: str, field: str, default: object) -> None:
    assert getattr(parse_record(f"v=DMARC1; p=reject; {text}"), field) == default


def test_first_of_a_repeated_tag_wins() -> None:
    assert parse_record("v=DMARC1; p=none; p=reject").p is Policy.NONE


def _render(record: DmarcRecord) -> str:
    parts = ["v=DMARC1", f"p={record.p.value}"]
    if record.sp is not None:
        parts.append(f"sp={record.sp.value}")
    if record.np is not None:
        parts.append(f"np={record.np.value}")
    parts += [f"pct={record.pct}", f"adkim={record.adkim}", f"aspf={record.aspf}"]
    if record.rua:
        parts.append("rua=" + ",".join(record.rua))
    parts += [f"fo={record.fo}", f"rf={record.rf}", f"ri={record.ri}"]
    return "; ".join(parts)


policies = st.sampled_from(Policy)
records = st.builds(
    DmarcRecord,
    p=policies,
    sp=st.none() | policies,
    np=st.none() | policies,
    pct=st.integers(0, 100),
    adkim=st.sampled_from("rs"),
    aspf=st.sampled_from("rs"),
    rua=st.lists(
        st.from_regex(r"mailto:[a-z]{1,8}@[a-z]{1,8}\.example", fullmatch=True), max_size=3
    ).map(tuple),
    fo=st.sampled_from(["0", "1", "d", "s", "0:1:d:s"]),
    rf=st.just("afrf"),
    ri=st.integers(0, 10**9),
)


@given(records)
def test_rendered_records_parse_back(record: DmarcRecord) -> None:
    assert parse_record(_render(record)) == record


@given(st.text(max_size=300) | st.builds(lambda s: "v=DMARC1;" + s, st.text(max_size=300)))
def test_any_text_parses_or_raises_the_syntax_error(text: str) -> None:
    try:
        record = parse_record(text)
    except DmarcSyntaxError:
        return
    assert 0 <= record.pct <= 100
    assert record.adkim in ("r", "s")
    assert record.aspf in ("r", "s")


# -- organizational domain and alignment ----------------------------------------------


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("example.com", "example.com"),
        ("mail.example.com", "example.com"),
        ("a.b.example.com.", "example.com"),
        ("mail.example.co.uk", "example.co.uk"),
        ("MAIL.Example.CO.UK", "example.co.uk"),
        ("co.uk", "co.uk"),
        ("com", "com"),
        ("host.example.unknowntld", "example.unknowntld"),
    ],
)
def test_organizational_domain(domain: str, org: str) -> None:
    assert organizational_domain(domain) == org


@pytest.mark.parametrize(
    ("identifier", "from_domain", "relaxed", "strict"),
    [
        # RFC 7489 Appendix B.1.1 (SPF) and B.1.2 (DKIM) share these cases.
        ("example.com", "example.com", True, True),
        ("child.example.com", "example.com", True, False),
        ("example.com", "child.example.com", True, False),
        ("example.net", "example.com", False, False),
        ("Example.COM.", "example.com", True, True),
        ("a.example.co.uk", "b.example.co.uk", True, False),
        ("other.co.uk", "example.co.uk", False, False),
    ],
)
def test_alignment(identifier: str, from_domain: str, relaxed: bool, strict: bool) -> None:
    assert aligned(identifier, from_domain, "r") is relaxed
    assert aligned(identifier, from_domain, "s") is strict


# -- the check ------------------------------------------------------------------------

REJECT = txt("v=DMARC1; p=reject; rua=mailto:d@example.com")


def test_pass_via_spf_only() -> None:
    result = run("example.com", {("_dmarc.example.com", "TXT"): REJECT}, spf="example.com")
    assert result.verdict is DmarcVerdict.PASS
    assert (result.spf_aligned, result.dkim_aligned) == (True, False)


def test_pass_via_dkim_only() -> None:
    result = run(
        "example.com",
        {("_dmarc.example.com", "TXT"): REJECT},
        spf="bounces.esp.example",
        dkim=["other.example", "mail.example.com"],
    )
    assert result.verdict is DmarcVerdict.PASS
    assert (result.spf_aligned, result.dkim_aligned) == (False, True)


def test_fail_with_nothing_aligned() -> None:
    result = run(
        "example.com",
        {("_dmarc.example.com", "TXT"): REJECT},
        spf="example.net",
        dkim=["example.org"],
    )
    assert result.verdict is DmarcVerdict.FAIL
    assert result.policy is Policy.REJECT


@pytest.mark.parametrize(
    ("record", "verdict"),
    [
        ("v=DMARC1; p=reject", DmarcVerdict.PASS),
        ("v=DMARC1; p=reject; aspf=s; adkim=s", DmarcVerdict.FAIL),
        ("v=DMARC1; p=reject; aspf=s", DmarcVerdict.PASS),  # DKIM still relaxed
    ],
)
def test_relaxed_and_strict(record: str, verdict: DmarcVerdict) -> None:
    result = run(
        "example.com",
        {("_dmarc.example.com", "TXT"): txt(record)},
        spf="bounce.example.com",
        dkim=["mail.example.com"],
    )
    assert result.verdict is verdict


def test_org_domain_fallback_uses_sp_for_a_subdomain() -> None:
    asked: list[DnsQuery] = []
    zone = {("_dmarc.example.co.uk", "TXT"): txt("v=DMARC1; p=reject; sp=quarantine")}
    result = run("mail.example.co.uk", zone, asked=asked)
    assert asked == [
        DnsQuery("_dmarc.mail.example.co.uk", "TXT"),
        DnsQuery("_dmarc.example.co.uk", "TXT"),
    ]
    assert result.verdict is DmarcVerdict.FAIL
    assert (result.org_domain, result.record_domain) == ("example.co.uk", "example.co.uk")
    assert result.policy is Policy.QUARANTINE


def test_subdomain_without_sp_gets_p() -> None:
    zone = {("_dmarc.example.com", "TXT"): txt("v=DMARC1; p=reject")}
    assert run("a.b.example.com", zone).policy is Policy.REJECT


def test_record_at_the_subdomain_itself_uses_its_p() -> None:
    zone = {
        ("_dmarc.mail.example.com", "TXT"): txt("v=DMARC1; p=none; sp=reject"),
        ("_dmarc.example.com", "TXT"): txt("v=DMARC1; p=reject"),
    }
    result = run("mail.example.com", zone)
    assert (result.record_domain, result.policy) == ("mail.example.com", Policy.NONE)


def test_np_for_a_subdomain_that_does_not_exist() -> None:
    record = txt("v=DMARC1; p=none; sp=quarantine; np=reject")
    zone = {("_dmarc.example.com", "TXT"): record}
    assert run("ghost.example.com", zone).policy is Policy.REJECT
    zone[("real.example.com", "MX")] = txt("mx.example.com")
    assert run("real.example.com", zone).policy is Policy.QUARANTINE


def test_non_dmarc_txt_records_are_ignored() -> None:
    zone = {("_dmarc.example.com", "TXT"): txt("v=spf1 -all", "v=DMARC1; p=quarantine")}
    assert run("example.com", zone).policy is Policy.QUARANTINE


def test_no_record_is_none() -> None:
    result = run("example.com", {("_dmarc.example.com", "TXT"): NODATA})
    assert result.verdict is DmarcVerdict.NONE


def test_two_records_are_none_without_fallback() -> None:
    asked: list[DnsQuery] = []
    zone = {
        ("_dmarc.mail.example.com", "TXT"): txt("v=DMARC1; p=reject", "v=DMARC1; p=none"),
        ("_dmarc.example.com", "TXT"): txt("v=DMARC1; p=reject"),
    }
    result = run("mail.example.com", zone, asked=asked)
    assert result.verdict is DmarcVerdict.NONE
    assert len(asked) == 1


def test_invalid_record_is_permerror() -> None:
    result = run("example.com", {("_dmarc.example.com", "TXT"): txt("v=DMARC1; p=bogus")})
    assert result.verdict is DmarcVerdict.PERMERROR


@pytest.mark.parametrize("status", [DnsStatus.SERVFAIL, DnsStatus.TIMEOUT])
def test_dns_failure_is_temperror(status: DnsStatus) -> None:
    result = run("example.com", {("_dmarc.example.com", "TXT"): DnsAnswer(status)})
    assert result.verdict is DmarcVerdict.TEMPERROR


@pytest.mark.parametrize("domain", ["", "localhost", "[192.0.2.1]", "bad domain", "a..b"])
def test_from_domain_that_is_not_a_domain(domain: str) -> None:
    assert run(domain, {}).verdict is DmarcVerdict.PERMERROR


def test_idn_from_domain_is_looked_up_as_a_labels() -> None:
    asked: list[DnsQuery] = []
    run("bücher.example", {}, asked=asked)
    assert asked[0] == DnsQuery("_dmarc.xn--bcher-kva.example", "TXT")


# -- the decision ---------------------------------------------------------------------


def failing(p: str, pct: int = 100) -> DmarcResult:
    record = parse_record(f"v=DMARC1; p={p}; pct={pct}")
    return DmarcResult(
        verdict=DmarcVerdict.FAIL, from_domain="example.com", record=record, policy=record.p
    )


@pytest.mark.parametrize("p", ["none", "quarantine", "reject"])
@pytest.mark.parametrize("mode", [DmarcMode.OFF, DmarcMode.TAG])
def test_off_and_tag_apply_nothing(mode: DmarcMode, p: str) -> None:
    assert decide_dmarc(mode, failing(p), 0.0) == DmarcDecision()


def test_enforce_reject() -> None:
    decision = decide_dmarc(DmarcMode.ENFORCE, failing("reject"), 0.5)
    assert decision.reply is not None
    assert (decision.reply.code, decision.reply.enhanced) == (550, "5.7.1")
    assert "example.com" in decision.reply.text
    assert decision.disposition is Policy.REJECT
    assert not decision.junk


def test_enforce_quarantine_goes_to_junk() -> None:
    decision = decide_dmarc(DmarcMode.ENFORCE, failing("quarantine"), 0.5)
    assert decision == DmarcDecision(junk=True, disposition=Policy.QUARANTINE)


def test_enforce_none_delivers() -> None:
    assert decide_dmarc(DmarcMode.ENFORCE, failing("none"), 0.0) == DmarcDecision()


@pytest.mark.parametrize("sample", [0.0, 0.5, 0.999999])
def test_pct_0_and_100(sample: float) -> None:
    assert decide_dmarc(DmarcMode.ENFORCE, failing("reject", 100), sample).reply is not None
    outside = decide_dmarc(DmarcMode.ENFORCE, failing("reject", 0), sample)
    assert outside == DmarcDecision(junk=True, disposition=Policy.QUARANTINE)
    assert decide_dmarc(DmarcMode.ENFORCE, failing("quarantine", 0), sample) == DmarcDecision()


def test_pct_25_samples_a_quarter() -> None:
    assert decide_dmarc(DmarcMode.ENFORCE, failing("quarantine", 25), 0.24).junk
    assert not decide_dmarc(DmarcMode.ENFORCE, failing("quarantine", 25), 0.25).junk


@pytest.mark.parametrize(
    "verdict",
    [DmarcVerdict.PASS, DmarcVerdict.NONE, DmarcVerdict.TEMPERROR, DmarcVerdict.PERMERROR],
)
def test_only_fail_is_ever_enforced(verdict: DmarcVerdict) -> None:
    result = DmarcResult(verdict=verdict, from_domain="example.com", policy=Policy.REJECT)
    assert decide_dmarc(DmarcMode.ENFORCE, result, 0.0) == DmarcDecision()
    assert decide_dmarc(DmarcMode.ENFORCE, None, 0.0) == DmarcDecision()


def test_end_to_end_subdomain_sp_enforced() -> None:
    zone = {("_dmarc.example.co.uk", "TXT"): txt("v=DMARC1; p=reject; sp=quarantine")}
    result = run("mail.example.co.uk", zone, spf="example.net")
    assert decide_dmarc(DmarcMode.ENFORCE, result, 0.0).junk
    result = run("example.co.uk", zone, spf="example.net")
    assert decide_dmarc(DmarcMode.ENFORCE, result, 0.0).reply is not None
