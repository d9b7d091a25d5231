"""DNS block and allow lists: zone specs, query names, the check, the reply."""

from __future__ import annotations

import ipaddress

import pytest

from sansmail.mail.dnsbl import (
    MAX_REASON,
    DnsblResult,
    DnsblSyntaxError,
    ListZone,
    check_lists,
    decide_dnsbl,
    parse_zone,
    query_name,
)
from sansmail.mail.dnsquery import DnsAnswer, DnsQuery, DnsStatus, drive

NXDOMAIN = DnsAnswer(DnsStatus.NXDOMAIN)
IP = ipaddress.ip_address("192.0.2.99")
ZEN = parse_zone("zen.spamhaus.org=127.0.0.[2..11]")
BARRACUDA = parse_zone("b.barracudacentral.org")
DNSWL = parse_zone("list.dnswl.org=127.0.[0..255].[1..3]")


def run(ip, blocklists, allowlists=(), zone=None, asked=None) -> DnsblResult:
    zone = zone or {}

    def resolve(query: DnsQuery) -> DnsAnswer:
        if asked is not None:
            asked.append(query)
        return zone.get((query.name, query.rtype), NXDOMAIN)

    return drive(check_lists(ip, blocklists, allowlists), resolve)


def test_query_names() -> None:
    # RFC 5782 §2.1 and §2.4 examples.
    assert query_name(ipaddress.ip_address("192.168.42.23"), "dnsbl.example.net") == (
        "23.42.168.192.dnsbl.example.net"
    )
    v6 = ipaddress.ip_address("2001:db8:1:2:3:4:567:89ab")
    assert query_name(v6, "ugly.example.com") == (
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
    )
    mapped = ipaddress.ip_address("::ffff:192.0.2.99")
    assert query_name(mapped, "z.example") == "99.2.0.192.z.example"


def test_parse_zone_forms() -> None:
    assert parse_zone("b.barracudacentral.org") == ListZone("b.barracudacentral.org")
    assert parse_zone(" ZEN.Spamhaus.org. ").zone == "zen.spamhaus.org"
    assert ZEN.codes == (((127, 127),), ((0, 0),), ((0, 0),), ((2, 11),))
    mixed = parse_zone("x.example=127.0.0.[2;4..6;10]")
    assert mixed.codes is not None
    assert mixed.codes[3] == ((2, 2), (4, 6), (10, 10))


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "=127.0.0.2",
        "bad zone.example",
        "x.example=127.0.0",
        "x.example=127.0.0.256",
        "x.example=127.0.0.[3..2]",
        "x.example=127.0.0.2..4",
        "x.example=127.0.0.[a]",
        "x.example=127.0.0.[]",
        "nodots",
    ],
)
def test_parse_zone_errors(spec: str) -> None:
    with pytest.raises(DnsblSyntaxError):
        parse_zone(spec)


@pytest.mark.parametrize(
    ("zone", "answer", "counts"),
    [
        (ZEN, "127.0.0.2", True),
        (ZEN, "127.0.0.11", True),
        (ZEN, "127.0.0.1", False),
        (ZEN, "127.0.0.12", False),
        (ZEN, "127.255.255.254", False),
        (BARRACUDA, "127.0.0.2", True),
        (BARRACUDA, "127.1.2.3", True),
        (BARRACUDA, "127.255.255.254", False),  # "query refused", not listed
        (BARRACUDA, "10.0.0.2", False),
        (BARRACUDA, "not an address", False),
        (DNSWL, "127.0.15.0", False),  # trust "none"
        (DNSWL, "127.0.15.2", True),
        (DNSWL, "127.0.0.255", False),  # dnswl.org's "over the limit"
    ],
)
def test_codes_that_count(zone: ListZone, answer: str, counts: bool) -> None:
    assert zone.counts(answer) is counts


def test_miss_asks_every_list_in_one_batch() -> None:
    check = check_lists(IP, [ZEN, BARRACUDA], [DNSWL])
    batch = next(check)
    assert batch == (
        DnsQuery("99.2.0.192.list.dnswl.org", "A"),
        DnsQuery("99.2.0.192.zen.spamhaus.org", "A"),
        DnsQuery("99.2.0.192.b.barracudacentral.org", "A"),
    )
    with pytest.raises(StopIteration) as done:
        check.send([NXDOMAIN, NXDOMAIN, NXDOMAIN])
    result = done.value.value
    assert result == DnsblResult(ip=IP)
    assert decide_dnsbl(result) is None


def test_hit_with_txt_reason() -> None:
    name = "99.2.0.192.zen.spamhaus.org"
    asked: list[DnsQuery] = []
    result = run(
        IP,
        [ZEN, BARRACUDA],
        zone={
            (name, "A"): DnsAnswer.of("127.0.0.4"),
            (name, "TXT"): DnsAnswer.of("https://www.spamhaus.org/query/ip/192.0.2.99"),
            ("99.2.0.192.b.barracudacentral.org", "A"): DnsAnswer.of("127.0.0.2"),
        },
        asked=asked,
    )
    assert (result.listed_by, result.code) == ("zen.spamhaus.org", "127.0.0.4")
    assert asked[-1] == DnsQuery(name, "TXT")
    reply = decide_dnsbl(result)
    assert reply is not None
    assert (reply.code, reply.enhanced) == (554, "5.7.1")
    assert reply.text == (
        "Service unavailable; client [192.0.2.99] blocked using zen.spamhaus.org; "
        "https://www.spamhaus.org/query/ip/192.0.2.99"
    )


def test_hit_without_txt() -> None:
    result = run(
        IP,
        [BARRACUDA],
        zone={("99.2.0.192.b.barracudacentral.org", "A"): DnsAnswer.of("127.0.0.2")},
    )
    reply = decide_dnsbl(result)
    assert reply is not None
    assert reply.text == (
        "Service unavailable; client [192.0.2.99] blocked using b.barracudacentral.org"
    )


def test_code_that_does_not_count_is_a_miss_and_the_next_list_is_used() -> None:
    result = run(
        IP,
        [ZEN, BARRACUDA],
        zone={
            ("99.2.0.192.zen.spamhaus.org", "A"): DnsAnswer.of("127.255.255.254"),
            ("99.2.0.192.b.barracudacentral.org", "A"): DnsAnswer.of("127.0.0.2"),
        },
    )
    assert result.listed_by == "b.barracudacentral.org"
    only_zen = run(
        IP, [ZEN], zone={("99.2.0.192.zen.spamhaus.org", "A"): DnsAnswer.of("127.0.0.1")}
    )
    assert decide_dnsbl(only_zen) is None


def test_allow_list_wins_and_no_txt_is_asked() -> None:
    asked: list[DnsQuery] = []
    result = run(
        IP,
        [ZEN],
        [DNSWL],
        zone={
            ("99.2.0.192.list.dnswl.org", "A"): DnsAnswer.of("127.0.10.3"),
            ("99.2.0.192.zen.spamhaus.org", "A"): DnsAnswer.of("127.0.0.2"),
        },
        asked=asked,
    )
    assert result.allowed_by == "list.dnswl.org"
    assert result.listed_by is None
    assert decide_dnsbl(result) is None
    assert len(asked) == 2


def test_allow_list_code_that_does_not_count() -> None:
    result = run(
        IP,
        [ZEN],
        [DNSWL],
        zone={
            ("99.2.0.192.list.dnswl.org", "A"): DnsAnswer.of("127.0.10.0"),
            ("99.2.0.192.zen.spamhaus.org", "A"): DnsAnswer.of("127.0.0.2"),
        },
    )
    assert result.allowed_by is None
    assert result.listed_by == "zen.spamhaus.org"


def test_dns_failure_is_not_listed_but_reported() -> None:
    result = run(
        IP, [ZEN], zone={("99.2.0.192.zen.spamhaus.org", "A"): DnsAnswer(DnsStatus.TIMEOUT)}
    )
    assert result.listed_by is None
    assert result.failed == ("zen.spamhaus.org",)
    assert decide_dnsbl(result) is None


def test_v6_client() -> None:
    ip = ipaddress.ip_address("2001:db8::1")
    name = "1.0.0.0" + ".0" * 20 + ".8.b.d.0.1.0.0.2.zen.spamhaus.org"
    result = run(ip, [ZEN], zone={(name, "A"): DnsAnswer.of("127.0.0.3")})
    reply = decide_dnsbl(result)
    assert reply is not None
    assert "client [2001:db8::1] blocked using zen.spamhaus.org" in reply.text


def test_txt_reason_is_cleaned_and_bounded() -> None:
    name = "99.2.0.192.zen.spamhaus.org"
    result = run(
        IP,
        [ZEN],
        zone={
            (name, "A"): DnsAnswer.of("127.0.0.2"),
            (name, "TXT"): DnsAnswer.of("bad\r\n250 ok\x00\xe9" + "x" * 500),
        },
    )
    reply = decide_dnsbl(result)
    assert reply is not None
    assert result.reason is not None
    assert len(result.reason) == MAX_REASON
    assert result.reason.startswith("bad??250 ok??x")
    assert all(" " <= ch <= "~" for ch in reply.text)
