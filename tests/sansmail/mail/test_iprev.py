"""iprev / FCrDNS: the queries asked, every result, and the reverse_dns decision."""

from __future__ import annotations

import ipaddress

import pytest

from sansmail.mail.dnsquery import DnsAnswer, DnsQuery, DnsStatus, drive, reverse_name
from sansmail.mail.iprev import (
    MAX_NAMES,
    IprevResult,
    IprevVerdict,
    ReverseDnsMode,
    check_iprev,
    decide_reverse_dns,
)

NXDOMAIN = DnsAnswer(DnsStatus.NXDOMAIN)
V4 = ipaddress.ip_address("192.0.2.10")
V6 = ipaddress.ip_address("2001:db8::a")
V4_PTR = "10.2.0.192.in-addr.arpa"
V6_PTR = "a.0.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2.ip6.arpa"


def run(ip, zone: dict[tuple[str, str], DnsAnswer], asked: list[DnsQuery] | None = None):
    def resolve(query: DnsQuery) -> DnsAnswer:
        if asked is not None:
            asked.append(query)
        return zone.get((query.name, query.rtype), NXDOMAIN)

    return drive(check_iprev(ip), resolve)


def test_reverse_names() -> None:
    assert reverse_name(V4) == V4_PTR
    assert reverse_name(V6) == V6_PTR
    assert reverse_name(V6) == V6.reverse_pointer
    assert reverse_name(ipaddress.ip_address("::ffff:192.0.2.10")) == V4_PTR
    assert reverse_name(V4, "zen.example") == "10.2.0.192.zen.example"


def test_pass_v4_asks_ptr_then_a() -> None:
    asked: list[DnsQuery] = []
    result = run(
        V4,
        {
            (V4_PTR, "PTR"): DnsAnswer.of("Mail.Example.COM."),
            ("mail.example.com", "A"): DnsAnswer.of("192.0.2.9", "192.0.2.10"),
        },
        asked,
    )
    assert result.verdict is IprevVerdict.PASS
    assert result.name == "mail.example.com"
    assert asked == [DnsQuery(V4_PTR, "PTR"), DnsQuery("mail.example.com", "A")]


def test_pass_v6_asks_aaaa() -> None:
    asked: list[DnsQuery] = []
    result = run(
        V6,
        {
            (V6_PTR, "PTR"): DnsAnswer.of("mx.example.net"),
            ("mx.example.net", "AAAA"): DnsAnswer.of("2001:db8:0:0::a"),
        },
        asked,
    )
    assert result.verdict is IprevVerdict.PASS
    assert result.name == "mx.example.net"
    assert asked[1] == DnsQuery("mx.example.net", "AAAA")


def test_mapped_v6_client_is_checked_as_v4() -> None:
    result = run(
        ipaddress.ip_address("::ffff:192.0.2.10"),
        {
            (V4_PTR, "PTR"): DnsAnswer.of("mail.example.com"),
            ("mail.example.com", "A"): DnsAnswer.of("192.0.2.10"),
        },
    )
    assert result.verdict is IprevVerdict.PASS
    assert result.ip == V4


def test_second_name_verifies() -> None:
    result = run(
        V4,
        {
            (V4_PTR, "PTR"): DnsAnswer.of("a.example", "b.example"),
            ("a.example", "A"): DnsAnswer.of("198.51.100.1"),
            ("b.example", "A"): DnsAnswer.of("192.0.2.10"),
        },
    )
    assert (result.verdict, result.name) == (IprevVerdict.PASS, "b.example")
    assert result.ptr_names == ("a.example", "b.example")


def test_fail_forward_mismatch() -> None:
    result = run(
        V4,
        {
            (V4_PTR, "PTR"): DnsAnswer.of("dyn.example"),
            ("dyn.example", "A"): DnsAnswer.of("198.51.100.1"),
        },
    )
    assert result.verdict is IprevVerdict.FAIL
    assert result.name is None
    assert result.ptr_names == ("dyn.example",)


def test_fail_forward_nxdomain() -> None:
    result = run(V4, {(V4_PTR, "PTR"): DnsAnswer.of("gone.example")})
    assert result.verdict is IprevVerdict.FAIL


def test_no_ptr_is_permerror() -> None:
    assert run(V4, {}).verdict is IprevVerdict.PERMERROR
    assert run(V4, {(V4_PTR, "PTR"): DnsAnswer.of()}).verdict is IprevVerdict.PERMERROR


@pytest.mark.parametrize("status", [DnsStatus.SERVFAIL, DnsStatus.TIMEOUT])
def test_ptr_failure_is_temperror(status: DnsStatus) -> None:
    result = run(V4, {(V4_PTR, "PTR"): DnsAnswer(status)})
    assert result.verdict is IprevVerdict.TEMPERROR


def test_forward_failure_is_temperror_unless_another_name_passes() -> None:
    zone = {
        (V4_PTR, "PTR"): DnsAnswer.of("a.example", "b.example"),
        ("a.example", "A"): DnsAnswer(DnsStatus.TIMEOUT),
        ("b.example", "A"): DnsAnswer.of("198.51.100.1"),
    }
    assert run(V4, zone).verdict is IprevVerdict.TEMPERROR
    zone[("b.example", "A")] = DnsAnswer.of("192.0.2.10")
    assert run(V4, zone).verdict is IprevVerdict.PASS


def test_names_that_are_not_host_names_are_never_asked_nor_kept() -> None:
    asked: list[DnsQuery] = []
    bad = ["evil\r\nX-Injected: 1", "a..b", "-x.example", "x" * 64 + ".example", ""]
    result = run(V4, {(V4_PTR, "PTR"): DnsAnswer.of(*bad)}, asked)
    assert result.verdict is IprevVerdict.FAIL
    assert asked == [DnsQuery(V4_PTR, "PTR")]


def test_at_most_ten_names_are_asked() -> None:
    asked: list[DnsQuery] = []
    names = [f"h{i}.example" for i in range(15)]
    run(V4, {(V4_PTR, "PTR"): DnsAnswer.of(*names)}, asked)
    assert len(asked) == 1 + MAX_NAMES
    assert [q.name for q in asked[1:]] == names[:MAX_NAMES]


def test_answers_are_checked() -> None:
    check = check_iprev(V4)
    next(check)
    with pytest.raises(TypeError):
        check.send([])


# -- the decision ---------------------------------------------------------------------

PASS = IprevResult(verdict=IprevVerdict.PASS, ip=V4, name="mail.example.com")
FAIL = IprevResult(verdict=IprevVerdict.FAIL, ip=V4, ptr_names=("dyn.example",))
PERM = IprevResult(verdict=IprevVerdict.PERMERROR, ip=V4)
TEMP = IprevResult(verdict=IprevVerdict.TEMPERROR, ip=V4)


@pytest.mark.parametrize("result", [PASS, FAIL, PERM, TEMP, None])
def test_off_does_nothing(result: IprevResult | None) -> None:
    decision = decide_reverse_dns(ReverseDnsMode.OFF, result)
    assert decision.reply is None
    assert decision.client_name is None


@pytest.mark.parametrize("mode", [ReverseDnsMode.TAG, ReverseDnsMode.REJECT])
def test_pass_gives_the_verified_name(mode: ReverseDnsMode) -> None:
    decision = decide_reverse_dns(mode, PASS)
    assert decision.reply is None
    assert decision.client_name == "mail.example.com"


@pytest.mark.parametrize("result", [FAIL, PERM, TEMP])
def test_tag_never_refuses_and_never_names_an_unverified_host(result: IprevResult) -> None:
    decision = decide_reverse_dns(ReverseDnsMode.TAG, result)
    assert decision.reply is None
    assert decision.client_name is None


@pytest.mark.parametrize(
    ("result", "code", "enhanced"),
    [(FAIL, 550, "5.7.25"), (PERM, 550, "5.7.25"), (TEMP, 450, "4.7.25")],
)
def test_reject(result: IprevResult, code: int, enhanced: str) -> None:
    decision = decide_reverse_dns(ReverseDnsMode.REJECT, result)
    assert decision.reply is not None
    assert (decision.reply.code, decision.reply.enhanced) == (code, enhanced)
    assert "[192.0.2.10]" in decision.reply.text
    assert decision.client_name is None
