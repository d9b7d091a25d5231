"""SPF: the parser, the macros of RFC 7208 §7.4, the query protocol, the limits, the
Received-SPF field, and properties over arbitrary records, macro-strings and DNS answers.

The scenarios of the openspf suite are in test_spf_suite.py."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sansmail.mail.spf
from sansmail.mail.spf import (
    MAX_LOOKUPS,
    MAX_VOID_LOOKUPS,
    DnsAnswer,
    DnsQuery,
    DnsStatus,
    SpfResult,
    SpfSyntaxError,
    Verdict,
    check_helo,
    check_host,
    check_mail_from,
    decide_spf,
    evaluate,
    expand,
    parse_macro_string,
    parse_record,
    received_spf,
)

NOW = 1_700_000_000
NXDOMAIN = DnsAnswer(DnsStatus.NXDOMAIN)
TIMEOUT = DnsAnswer(DnsStatus.TIMEOUT)


def resolver(zone: dict[tuple[str, str], DnsAnswer], asked: list[DnsQuery] | None = None):
    def resolve(query: DnsQuery) -> DnsAnswer:
        if asked is not None:
            asked.append(query)
        return zone.get((query.name.lower(), query.rtype), NXDOMAIN)

    return resolve


def txt(*records: str) -> DnsAnswer:
    return DnsAnswer.of(*records)


def test_public_names() -> None:
    assert sorted(sansmail.mail.spf.__all__) == sorted(
        [
            "MAX_LOOKUPS",
            "MAX_NAMES",
            "MAX_VOID_LOOKUPS",
            "DnsAnswer",
            "DnsQuery",
            "DnsStatus",
            "IPAddress",
            "MacroString",
            "Mechanism",
            "RType",
            "Record",
            "SpfCheck",
            "SpfResult",
            "SpfSyntaxError",
            "Verdict",
            "check_helo",
            "check_host",
            "check_mail_from",
            "decide_spf",
            "evaluate",
            "expand",
            "is_spf_record",
            "parse_domain_spec",
            "parse_macro_string",
            "parse_record",
            "received_spf",
        ]
    )


# -- the record parser ------------------------------------------------------------------


def test_record_parse_keeps_mechanisms_in_order_and_reads_the_modifiers() -> None:
    record = parse_record(
        "v=spf1 +a -mx:mx.example.com/24//64 ~ptr ?ip4:192.0.2.0/24 ip6:2001:db8::/32 "
        "exists:%{i}.bl.example.com include:_spf.example.net all "
        "redirect=_spf.example.com exp=why.%{d} x-unknown=%{l}"
    )
    kinds = [(m.kind, m.qualifier) for m in record.mechanisms]
    assert kinds == [
        ("a", Verdict.PASS),
        ("mx", Verdict.FAIL),
        ("ptr", Verdict.SOFTFAIL),
        ("ip4", Verdict.NEUTRAL),
        ("ip6", Verdict.PASS),
        ("exists", Verdict.PASS),
        ("include", Verdict.PASS),
        ("all", Verdict.PASS),
    ]
    mx = record.mechanisms[1]
    assert (mx.cidr4, mx.cidr6) == (24, 64)
    assert mx.domain is not None
    assert mx.domain.text == "mx.example.com"
    assert record.mechanisms[3].network == ipaddress.ip_network("192.0.2.0/24")
    assert record.redirect is not None
    assert record.redirect.text == "_spf.example.com"
    assert record.explanation is not None
    assert record.explanation.text == "why.%{d}"
    assert [m.needs_dns for m in record.mechanisms] == [1, 1, 1, 0, 0, 1, 1, 0]


@pytest.mark.parametrize(
    "text",
    [
        "v=spf1 ip4:192.0.2.1/24 IP4:192.0.2.1",  # names are case-insensitive
        "V=SPF1 A:Example.COM MX",
        "v=spf1",
        "v=spf1   ",
        "v=spf1 a:%{d}",  # domain-end may be a macro
        "v=spf1 a:%{d}.example.com.",
        "v=spf1 a:x.%%",  # "%%" is a macro-expand too
        "v=spf1 ip6:::1/0 ip4:0.0.0.0/0",
        "v=spf1 unknown.mod-ifier_x=anything%%goes",
    ],
)
def test_valid_records(text: str) -> None:
    parse_record(text)


@pytest.mark.parametrize(
    "text",
    [
        "v=spf1 a:example.com\tmx",  # only SP separates terms
        "v=spf1 ip4:192.0.2.01",  # leading zero
        "v=spf1 ip4:192.0.2.1/",
        "v=spf1 ip6:2001:db8::1/0129",
        "v=spf1 ip6:1.2.3.4",  # ip6 with an IPv4 address
        "v=spf1 a:%{d0}",  # part count zero
        "v=spf1 a:%{d",
        "v=spf1 a:%{}",
        "v=spf1 a:%{z}.example.com",
        "v=spf1 a:%{c}.example.com",  # c, r, t only in explanations
        "v=spf1 a:example.com//",
        "v=spf1 +-all",
        "v=spf1 exp=a.example.com exp=b.example.com",
        "v=spf1 redirect=a.example.com REDIRECT=b.example.com",
        "v=spf1 a:ex\u00e4mple.com",
    ],
)
def test_invalid_records(text: str) -> None:
    with pytest.raises(SpfSyntaxError):
        parse_record(text)


def test_a_record_that_is_not_spf_is_refused_by_the_parser() -> None:
    with pytest.raises(SpfSyntaxError):
        parse_record("v=spf10 -all")


# -- macros (RFC 7208 §7.4) ---------------------------------------------------------


RFC_EXAMPLES_IP4 = [
    ("%{s}", "strong-bad@email.example.com"),
    ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"),
    ("%{d4}", "email.example.com"),
    ("%{d3}", "email.example.com"),
    ("%{d2}", "example.com"),
    ("%{d1}", "com"),
    ("%{dr}", "com.example.email"),
    ("%{d2r}", "example.email"),
    ("%{l}", "strong-bad"),
    ("%{l-}", "strong.bad"),
    ("%{lr}", "strong-bad"),
    ("%{lr-}", "bad.strong"),
    ("%{l1r-}", "strong"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
]


def exists_query(spec: str, ip: str) -> str:
    """The name the evaluator asks for `exists:<spec>`, for sender strong-bad@email..."""
    asked: list[DnsQuery] = []
    zone = {("email.example.com", "TXT"): txt(f"v=spf1 exists:{spec} -all")}
    result = evaluate(
        check_mail_from(ip, "strong-bad@email.example.com", "mx.example.org", now=NOW),
        resolver(zone, asked),
    )
    assert result.verdict is Verdict.FAIL
    assert asked[1].rtype == "A"
    return asked[1].name


@pytest.mark.parametrize(("spec", "expected"), RFC_EXAMPLES_IP4)
def test_rfc_7208_macro_examples(spec: str, expected: str) -> None:
    assert exists_query(spec, "192.0.2.3") == expected


def test_rfc_7208_macro_example_ipv6() -> None:
    assert exists_query("%{ir}.%{v}._spf.%{d2}", "2001:db8::cb01") == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
    )


def test_explanation_letters_c_r_t_and_escapes() -> None:
    zone = {
        ("example.com", "TXT"): txt("v=spf1 -all exp=why.example.com"),
        ("why.example.com", "TXT"): txt("%{c} to %{r} at %{t}: 100%% %{h}%_%-%{L}"),
    }
    result = evaluate(
        check_mail_from(
            "2001:db8::1", "a b@example.com", "helo.test", now=NOW, receiver="mx.our.test"
        ),
        resolver(zone),
    )
    assert result.explanation == f"2001:db8::1 to mx.our.test at {NOW}: 100% helo.test %20a%20b"


def test_explanation_never_carries_control_characters() -> None:
    zone = {
        ("example.com", "TXT"): txt("v=spf1 -all exp=why.example.com"),
        ("why.example.com", "TXT"): txt("helo was %{h}"),
    }
    result = evaluate(
        check_mail_from("192.0.2.1", "x@example.com", "evil\r\n250 ok", now=NOW), resolver(zone)
    )
    assert result.explanation == "helo was evil??250 ok"


def test_macro_part_count_is_capped_not_trusted() -> None:
    spec = parse_macro_string("%{d99999999999999999999r}")
    assert expand(spec, {"d": "a.b.c"}) == "c.b.a"


# -- the query protocol -------------------------------------------------------------


def test_generator_yields_batches_and_takes_answers_in_order() -> None:
    check = check_mail_from("192.0.2.9", "x@example.com", "helo.test", now=NOW)
    assert next(check) == (DnsQuery("example.com", "TXT"),)
    assert check.send([txt("v=spf1 mx -all")]) == (DnsQuery("example.com", "MX"),)
    batch = check.send([DnsAnswer.of("mx1.example.com", "mx2.example.com.", ".")])
    # The null MX is skipped; the two address lookups come together.
    assert batch == (DnsQuery("mx1.example.com", "A"), DnsQuery("mx2.example.com", "A"))
    with pytest.raises(StopIteration) as done:
        check.send([DnsAnswer.of("192.0.2.8"), DnsAnswer.of("192.0.2.9")])
    result = done.value.value
    assert isinstance(result, SpfResult)
    assert (result.verdict, result.mechanism, result.lookups) == (Verdict.PASS, "mx", 1)


def test_a_batch_is_read_in_order_like_one_query_after_another() -> None:
    # A timeout before the match decides, as it would have sequentially...
    zone = {
        ("example.com", "TXT"): txt("v=spf1 mx -all"),
        ("example.com", "MX"): DnsAnswer.of("a.example.com", "b.example.com"),
        ("a.example.com", "A"): TIMEOUT,
        ("b.example.com", "A"): DnsAnswer.of("192.0.2.1"),
    }
    check = check_mail_from("192.0.2.1", "x@example.com", "h.test", now=NOW)
    assert evaluate(check, resolver(zone)).verdict is Verdict.TEMPERROR
    # ... and a match before a timeout decides too.
    zone[("a.example.com", "A")], zone[("b.example.com", "A")] = DnsAnswer.of("192.0.2.1"), TIMEOUT
    check = check_mail_from("192.0.2.1", "x@example.com", "h.test", now=NOW)
    assert evaluate(check, resolver(zone)).verdict is Verdict.PASS


def test_wrong_number_of_answers_is_a_caller_bug() -> None:
    check = check_mail_from("192.0.2.1", "x@example.com", "h.test", now=NOW)
    next(check)
    with pytest.raises(TypeError):
        check.send([])


def test_null_sender_is_postmaster_at_helo() -> None:
    zone = {("helo.example.com", "TXT"): txt("v=spf1 ip4:192.0.2.1 -all")}
    result = evaluate(check_mail_from("192.0.2.1", "", "helo.example.com", now=NOW), resolver(zone))
    assert (result.verdict, result.sender, result.domain, result.identity) == (
        Verdict.PASS,
        "postmaster@helo.example.com",
        "helo.example.com",
        "mailfrom",
    )


def test_helo_identity() -> None:
    zone = {("helo.example.com", "TXT"): txt("v=spf1 a -all")}
    zone[("helo.example.com", "A")] = DnsAnswer.of("192.0.2.7")
    result = evaluate(check_helo("192.0.2.7", "helo.example.com", now=NOW), resolver(zone))
    assert (result.verdict, result.identity, result.sender) == (
        Verdict.PASS,
        "helo",
        "postmaster@helo.example.com",
    )


def test_ipv4_mapped_client_is_ipv4() -> None:
    zone = {("example.com", "TXT"): txt("v=spf1 ip4:192.0.2.0/24 -all")}
    check = check_host("::ffff:192.0.2.1", "example.com", "x@example.com", "h.test", now=NOW)
    result = evaluate(check, resolver(zone))
    assert result.verdict is Verdict.PASS
    assert result.ip == ipaddress.IPv4Address("192.0.2.1")


# -- the limits (§4.6.4) ------------------------------------------------------------


def a_terms(count: int) -> dict[tuple[str, str], DnsAnswer]:
    zone = {
        ("example.com", "TXT"): txt(
            "v=spf1 " + " ".join(f"a:h{n}.example.com" for n in range(count)) + " +all"
        )
    }
    for n in range(count):
        zone[(f"h{n}.example.com", "A")] = DnsAnswer.of("198.51.100.1")
    return zone


@pytest.mark.parametrize(
    ("terms", "verdict"), [(MAX_LOOKUPS, Verdict.PASS), (MAX_LOOKUPS + 1, Verdict.PERMERROR)]
)
def test_ten_dns_terms_at_most(terms: int, verdict: Verdict) -> None:
    asked: list[DnsQuery] = []
    check = check_mail_from("192.0.2.1", "x@example.com", "h.test", now=NOW)
    result = evaluate(check, resolver(a_terms(terms), asked))
    assert result.verdict is verdict
    assert result.lookups == min(terms, MAX_LOOKUPS + 1)
    assert len(asked) == 1 + min(terms, MAX_LOOKUPS)  # nothing asked past the limit
    if verdict is Verdict.PERMERROR:
        assert result.problem is not None
        assert "10 DNS-querying terms" in result.problem


def test_mx_with_more_than_ten_names_is_permerror_before_any_address_lookup() -> None:
    asked: list[DnsQuery] = []
    zone = {
        ("example.com", "TXT"): txt("v=spf1 mx -all"),
        ("example.com", "MX"): DnsAnswer.of(*(f"m{n}.example.com" for n in range(11))),
    }
    check = check_mail_from("192.0.2.1", "x@example.com", "h.test", now=NOW)
    assert evaluate(check, resolver(zone, asked)).verdict is Verdict.PERMERROR
    assert len(asked) == 2


def test_ptr_looks_at_ten_names_only() -> None:
    asked: list[DnsQuery] = []
    names = [f"n{n}.example.com" for n in range(12)]
    zone = {
        ("example.com", "TXT"): txt("v=spf1 ptr -all"),
        ("1.2.0.192.in-addr.arpa", "PTR"): DnsAnswer.of(*names),
        **{(name, "A"): DnsAnswer.of("192.0.2.1") for name in names},
    }
    check = check_mail_from("192.0.2.1", "x@example.com", "h.test", now=NOW)
    assert evaluate(check, resolver(zone, asked)).verdict is Verdict.PASS
    assert [q.name for q in asked if q.rtype == "A"] == names[:10]


@pytest.mark.parametrize(
    ("voids", "verdict"),
    [(MAX_VOID_LOOKUPS, Verdict.NEUTRAL), (MAX_VOID_LOOKUPS + 1, Verdict.PERMERROR)],
)
def test_void_lookups(voids: int, verdict: Verdict) -> None:
    terms = " ".join(f"exists:v{n}.example.com" for n in range(voids))
    zone = {("example.com", "TXT"): txt(f"v=spf1 {terms} ?all")}
    zone[("v0.example.com", "A")] = DnsAnswer.of()  # "no data" is void like NXDOMAIN
    check = check_mail_from("192.0.2.1", "x@example.com", "h.test", now=NOW)
    result = evaluate(check, resolver(zone))
    assert result.verdict is verdict
    assert result.void_lookups == voids


def test_include_temperror_propagates() -> None:
    zone = {
        ("example.com", "TXT"): txt("v=spf1 include:other.example.com -all"),
        ("other.example.com", "TXT"): TIMEOUT,
    }
    check = check_mail_from("192.0.2.1", "x@example.com", "h.test", now=NOW)
    result = evaluate(check, resolver(zone))
    assert result.verdict is Verdict.TEMPERROR
    assert result.problem == "DNS timeout looking up TXT other.example.com"


def test_servfail_is_temperror() -> None:
    zone = {("example.com", "TXT"): DnsAnswer(DnsStatus.SERVFAIL)}
    check = check_mail_from("192.0.2.1", "x@example.com", "h.test", now=NOW)
    assert evaluate(check, resolver(zone)).verdict is Verdict.TEMPERROR


# -- Received-SPF (§9.1) -----------------------------------------------------------


def result_for(verdict: Verdict, **changes: object) -> SpfResult:
    fields: dict[str, object] = {
        "verdict": verdict,
        "domain": "example.com",
        "ip": ipaddress.ip_address("192.0.2.1"),
        "sender": "alice@example.com",
        "helo": "mail.example.com",
        "receiver": "mx.our.test",
        "identity": "mailfrom",
        "mechanism": "ip4:192.0.2.0/24",
    }
    fields.update(changes)
    return SpfResult(**fields)  # type: ignore[arg-type]


def test_received_spf_pass() -> None:
    assert received_spf(result_for(Verdict.PASS)) == (
        "pass (mx.our.test: domain of alice@example.com designates 192.0.2.1 as permitted"
        ' sender) client-ip=192.0.2.1; envelope-from="alice@example.com";'
        " helo=mail.example.com; receiver=mx.our.test; identity=mailfrom;"
        ' mechanism="ip4:192.0.2.0/24";'
    )


def test_received_spf_permerror_has_the_problem_and_ipv6_is_quoted() -> None:
    value = received_spf(
        result_for(
            Verdict.PERMERROR,
            ip=ipaddress.ip_address("2001:db8::1"),
            mechanism=None,
            problem='bad "term"',
            identity="helo",
        )
    )
    assert value.startswith("permerror (mx.our.test: permanent error in processing domain of")
    assert 'client-ip="2001:db8::1";' in value
    assert 'problem="bad \\"term\\"";' in value
    assert "mechanism=" not in value


@given(st.text(max_size=40), st.text(max_size=40))
@settings(max_examples=200)
def test_received_spf_keeps_client_text_out_of_the_syntax(helo: str, sender: str) -> None:
    value = received_spf(result_for(Verdict.NEUTRAL, helo=helo, sender=sender))
    assert "\r" not in value
    assert "\n" not in value
    assert all(ch >= " " and ch != "\x7f" for ch in value)
    value.encode("utf-8")
    # The comment closes where we close it: every "(" and ")" inside is escaped.
    depth = 0
    escaped = False
    for index, ch in enumerate(value):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                assert value[index + 1 : index + 12] == " client-ip="
                break
    assert depth == 0


# -- properties ----------------------------------------------------------------------


@given(st.text(max_size=80))
@settings(max_examples=500)
def test_record_parser_raises_only_its_own_error(text: str) -> None:
    for candidate in (text, "v=spf1 " + text):
        with contextlib.suppress(SpfSyntaxError):
            parse_record(candidate)


MACRO_TEXT = st.text(alphabet=st.sampled_from("%{}slodiphvcrtSLR0129r.-+,/_=x \x00\xe9"))


@given(MACRO_TEXT | st.text(max_size=40), st.booleans(), st.text(max_size=30))
@settings(max_examples=500)
def test_macro_parser_raises_only_its_own_error_and_expansion_never_raises(
    text: str, explanation: bool, value: str
) -> None:
    try:
        spec = parse_macro_string(text, explanation=explanation)
    except SpfSyntaxError:
        return
    expanded = expand(spec, dict.fromkeys("slodiphvcrt", value))
    assert isinstance(expanded, str)


TERMS = st.sampled_from(
    [
        "a",
        "mx",
        "ptr",
        "-all",
        "~all",
        "a:h1.example.com",
        "mx:h2.example.com/24//64",
        "include:d1.example.com",
        "include:d2.example.com",
        "exists:%{i}.d1.example.com",
        "exists:%{p}.x.example.com",
        "ip4:192.0.2.0/24",
        "ip6:2001:db8::/32",
        "redirect=d2.example.com",
        "redirect=%{d1r}.example.com",
        "exp=e.example.com",
        "a:%{l}.%{d2}",
        "ptr:example.com",
    ]
)
RECORDS = st.lists(TERMS | st.text(max_size=12), max_size=12).map(
    lambda terms: "v=spf1 " + " ".join(terms)
)
NAMES = st.sampled_from(["d1.example.com", "h1.example.com", "x.example.com", "."])
ADDRESSES = st.sampled_from(["192.0.2.1", "198.51.100.1", "2001:db8::1", "not-an-ip"])


def random_dns(data: st.DataObject) -> Callable[[DnsQuery], DnsAnswer]:
    def resolve(query: DnsQuery) -> DnsAnswer:
        failure = data.draw(
            st.sampled_from([None] * 6 + [NXDOMAIN, TIMEOUT, DnsAnswer.of()]),
            label=f"{query.rtype} {query.name}",
        )
        if failure is not None:
            return failure
        if query.rtype == "TXT":
            return DnsAnswer.of(*data.draw(st.lists(RECORDS, min_size=1, max_size=2)))
        if query.rtype in ("A", "AAAA"):
            return DnsAnswer.of(*data.draw(st.lists(ADDRESSES, max_size=3)))
        return DnsAnswer.of(*data.draw(st.lists(NAMES, max_size=12)))

    return resolve


@given(st.data(), st.sampled_from(["192.0.2.1", "2001:db8::1"]))
@settings(max_examples=300, deadline=None)
def test_any_dns_gives_a_result_within_the_limits(data: st.DataObject, ip: str) -> None:
    asked: list[DnsQuery] = []
    resolve = random_dns(data)

    def counting(query: DnsQuery) -> DnsAnswer:
        asked.append(query)
        assert len(asked) <= 150  # 10 terms of 1 + 10 lookups, the %{p} ones, exp
        return resolve(query)

    check = check_mail_from(ip, "a-b@d0.example.com", "h.example.com", now=NOW)
    result = evaluate(check, counting)
    assert result.lookups <= MAX_LOOKUPS + 1
    assert result.void_lookups <= MAX_VOID_LOOKUPS + 1
    if result.lookups > MAX_LOOKUPS or result.void_lookups > MAX_VOID_LOOKUPS:
        assert result.verdict is Verdict.PERMERROR
    assert (result.explanation is None) or result.verdict is Verdict.FAIL
    received_spf(result)


IDENTITY_ZONE = {
    ("example.com", "TXT"): txt(
        "v=spf1 exists:%{l}.%{h}.%{o}.x.example.com a:%{S}.%{H} ptr:%{p} -all exp=e.%{d}"
    ),
    ("e.example.com", "TXT"): txt("%{s} %{l} %{h} %{p} %{c} %{r} %{t} %{L}%{H}%{S}"),
}


@given(st.text(max_size=70), st.text(max_size=70), st.ip_addresses())
@settings(max_examples=300, deadline=None)
def test_any_sender_and_helo_text_is_handled(
    local: str, helo: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    asked: list[DnsQuery] = []
    check = check_mail_from(ip, f"{local}@example.com", helo, now=NOW, receiver=helo)
    result = evaluate(check, resolver(IDENTITY_ZONE, asked))
    assert result.verdict in (Verdict.FAIL, Verdict.PERMERROR)
    for query in asked:  # every name asked is printable ASCII and fits the DNS
        assert query.name.isascii()
        assert query.name.isprintable()
        assert len(query.name) <= 253
    if result.explanation is not None:
        assert result.explanation.isprintable()
        result.explanation.encode("utf-8")
    received_spf(result).encode("utf-8")


@pytest.mark.parametrize(
    ("mode", "verdict", "code", "enhanced"),
    [
        ("reject", "fail", 550, "5.7.23"),
        ("reject", "temperror", 451, "4.7.24"),
        ("reject", "softfail", None, None),
        ("reject", "permerror", None, None),
        ("reject", "pass", None, None),
        ("tag", "fail", None, None),
        ("off", "fail", None, None),
    ],
)
def test_the_spf_setting_decides(
    mode: str, verdict: str, code: int | None, enhanced: str | None
) -> None:
    result = SpfResult(
        verdict=Verdict(verdict),
        domain="example.org",
        ip=ipaddress.ip_address("192.0.2.1"),
        sender="a@example.org",
        helo="h.example.org",
        receiver="mx.example.test",
        identity="mailfrom",
        explanation="see \x01 http://example.org/why" if verdict == "fail" else None,
    )
    reply = decide_spf(mode, result)
    if code is None:
        assert reply is None
        return
    assert reply is not None
    assert (reply.code, reply.enhanced) == (code, enhanced)
    if verdict == "fail":
        assert reply.text == "see ? http://example.org/why"  # the domain's words, printable
