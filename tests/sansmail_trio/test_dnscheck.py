"""The pure sender checks driven by sansmail_trio._dns (Resolver.answer, run_check) against
the tests' authoritative server on 127.0.0.1 (dns_server.py)."""

from __future__ import annotations

import ipaddress

import pytest
import trio
import trio.testing
from dns_server import DNSServer, dns_server_fixture  # noqa: F401  (fixture)

from sansmail.mail.dmarc import DmarcVerdict, Policy, check_dmarc
from sansmail.mail.dnsbl import check_lists, parse_zone
from sansmail.mail.dnsquery import DnsAnswer, DnsCheck, DnsQuery, DnsStatus, ask
from sansmail.mail.iprev import IprevVerdict, check_iprev
from sansmail.mail.spf import Verdict, check_mail_from
from sansmail_trio._dns import Resolver, run_check


@pytest.fixture
def resolver(dns_server: DNSServer) -> Resolver:
    return Resolver([dns_server.address], timeout=2.0)


def asked(server: DNSServer) -> list[tuple[str, str]]:
    return [(q.name, q.rdtype) for q in server.queries]


def batch(*queries: DnsQuery) -> DnsCheck[tuple[DnsAnswer, ...]]:
    return ask(*queries)


def publish_spf(server: DNSServer) -> None:
    server.add("sender.test", "TXT", '"v=spf1 include:other.test mx -all"')
    server.add("other.test", "TXT", '"v=spf1 ip4:127.0.0.5 -all"')
    server.add("sender.test", "MX", "10 mx.sender.test.")
    server.add("mx.sender.test", "A", "127.0.0.7")


# --- the checks through real DNS ---------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "verdict", "mechanism"),
    [("127.0.0.5", Verdict.PASS, "include:other.test"), ("127.0.0.7", Verdict.PASS, "mx")],
)
async def test_spf_passes_through_include_and_mx(dns_server, resolver, ip, verdict, mechanism):
    publish_spf(dns_server)
    check = check_mail_from(ip, "someone@sender.test", "helo.test", now=0)
    result = await run_check(check, resolver)
    assert result.verdict is verdict
    assert result.mechanism == mechanism


async def test_spf_fails_an_address_outside_the_record(dns_server, resolver):
    publish_spf(dns_server)
    check = check_mail_from("127.0.0.9", "someone@sender.test", "helo.test", now=0)
    result = await run_check(check, resolver)
    assert result.verdict is Verdict.FAIL
    assert ("other.test", "TXT") in asked(dns_server)
    assert ("mx.sender.test", "A") in asked(dns_server)


async def test_iprev_passes_when_the_ptr_name_points_back(dns_server, resolver):
    dns_server.add("7.0.0.127.in-addr.arpa", "PTR", "MX.Sender.test.")
    dns_server.add("mx.sender.test", "A", "127.0.0.7")
    result = await run_check(check_iprev(ipaddress.ip_address("127.0.0.7")), resolver)
    assert result.verdict is IprevVerdict.PASS
    assert result.name == "mx.sender.test"


async def test_iprev_fails_when_the_ptr_name_points_elsewhere(dns_server, resolver):
    dns_server.add("8.0.0.127.in-addr.arpa", "PTR", "liar.test.")
    dns_server.add("liar.test", "A", "127.0.0.99")
    result = await run_check(check_iprev(ipaddress.ip_address("127.0.0.8")), resolver)
    assert result.verdict is IprevVerdict.FAIL
    assert result.ptr_names == ("liar.test",)


async def test_dnsbl_hit_carries_its_txt_reason(dns_server, resolver):
    dns_server.add("9.0.0.127.bl.test", "A", "127.0.0.2")
    dns_server.add("9.0.0.127.bl.test", "TXT", '"listed: see " "http://bl.test/9"')
    ip = ipaddress.ip_address("127.0.0.9")
    result = await run_check(check_lists(ip, [parse_zone("bl.test")]), resolver)
    assert result.listed_by == "bl.test"
    assert result.code == "127.0.0.2"
    assert result.reason == "listed: see http://bl.test/9"
    clean = await run_check(
        check_lists(ipaddress.ip_address("127.0.0.10"), [parse_zone("bl.test")]), resolver
    )
    assert clean.listed_by is None
    assert clean.failed == ()


async def test_dmarc_record_is_found_at_the_organizational_domain(dns_server, resolver):
    dns_server.add("_dmarc.sender.test", "TXT", '"v=DMARC1; p=reject"')
    check = check_dmarc("mail.sender.test", spf_domain="sender.test")
    result = await run_check(check, resolver)
    assert result.record_domain == "sender.test"
    assert result.policy is Policy.REJECT
    assert result.verdict is DmarcVerdict.PASS
    assert asked(dns_server) == [("_dmarc.mail.sender.test", "TXT"), ("_dmarc.sender.test", "TXT")]


# --- how a batch is asked ----------------------------------------------------------------


async def test_a_batch_is_asked_at_once(dns_server):
    # Neither answer comes before both questions have been asked: asking one after the
    # other would time out on the first (no clock involved).
    dns_server.add("both.test", "A", "127.0.0.2")
    dns_server.add("both.test", "TXT", '"hello"')
    dns_server.hold("both.test", ["A", "TXT"])
    resolver = Resolver([dns_server.address], timeout=10.0)
    answers = await run_check(
        batch(DnsQuery("both.test", "TXT"), DnsQuery("both.test", "A")), resolver
    )
    assert answers == (DnsAnswer.of("hello"), DnsAnswer.of("127.0.0.2"))


async def test_past_the_deadline_unanswered_questions_time_out(dns_server):
    dns_server.fail("slow.test", "drop")
    dns_server.add("fast.test", "A", "127.0.0.3")
    resolver = Resolver([dns_server.address], timeout=10.0)
    check = batch(DnsQuery("slow.test", "A"), DnsQuery("fast.test", "A"))
    answers = await run_check(check, resolver, timeout=0.3)
    assert answers == (DnsAnswer(DnsStatus.TIMEOUT), DnsAnswer.of("127.0.0.3"))


async def test_an_empty_check_asks_nothing(dns_server, resolver):
    assert await run_check(batch(), resolver) == ()
    assert dns_server.queries == []


# --- Resolver.answer ---------------------------------------------------------------------


async def test_txt_strings_of_one_record_are_joined_and_read_as_latin1(dns_server, resolver):
    dns_server.add("multi.test", "TXT", '"v=spf1 " "ip4:127.0.0.1" " -all"')
    dns_server.add("multi.test", "TXT", '"caf\\233"')
    answer = await resolver.answer(DnsQuery("multi.test", "TXT"))
    assert answer.status is DnsStatus.OK
    assert sorted(answer.records) == ["caf\xe9", "v=spf1 ip4:127.0.0.1 -all"]


async def test_records_of_each_type_as_the_checks_read_them(dns_server, resolver):
    dns_server.add("kinds.test", "MX", "10 MX1.Kinds.test.")
    dns_server.add("kinds.test", "AAAA", "0:0:0:0:0:0:0:1")
    dns_server.add("null.test", "MX", "0 .")
    dns_server.add("1.0.0.127.in-addr.arpa", "PTR", "host.kinds.test.")
    assert await resolver.answer(DnsQuery("kinds.test", "MX")) == DnsAnswer.of("mx1.kinds.test")
    assert await resolver.answer(DnsQuery("kinds.test", "AAAA")) == DnsAnswer.of("::1")
    assert await resolver.answer(DnsQuery("null.test", "MX")) == DnsAnswer.of(".")
    ptr = DnsQuery("1.0.0.127.in-addr.arpa", "PTR")
    assert await resolver.answer(ptr) == DnsAnswer.of("host.kinds.test")


async def test_nxdomain_differs_from_no_data(dns_server, resolver):
    dns_server.add("exists.test", "A", "127.0.0.2")
    assert await resolver.answer(DnsQuery("gone.test", "A")) == DnsAnswer(DnsStatus.NXDOMAIN)
    no_data = await resolver.answer(DnsQuery("exists.test", "TXT"))
    assert no_data == DnsAnswer(DnsStatus.OK)
    assert no_data.void
    assert not no_data.failed


@pytest.mark.parametrize(("name", "how"), [("broken.test", "servfail"), ("shut.test", "refused")])
async def test_server_failures_are_servfail(dns_server, resolver, name, how):
    dns_server.fail(name, how)
    answer = await resolver.answer(DnsQuery(name, "TXT"))
    assert answer == DnsAnswer(DnsStatus.SERVFAIL)
    assert answer.failed


async def test_no_answer_is_timeout(dns_server):
    dns_server.fail("slow.test", "drop")
    resolver = Resolver([dns_server.address], timeout=0.3)
    assert await resolver.answer(DnsQuery("slow.test", "TXT")) == DnsAnswer(DnsStatus.TIMEOUT)


async def test_a_name_that_cannot_exist_is_nxdomain_without_a_query(dns_server, resolver):
    answer = await resolver.answer(DnsQuery("a.." + "b" * 70 + ".test", "A"))
    assert answer == DnsAnswer(DnsStatus.NXDOMAIN)
    assert dns_server.queries == []


async def test_names_are_asked_absolute(dns_server, resolver):
    dns_server.add("abs.test", "A", "127.0.0.2")
    assert await resolver.answer(DnsQuery("abs.test", "A")) == DnsAnswer.of("127.0.0.2")
    assert asked(dns_server) == [("abs.test", "A")]


# --- the cache ---------------------------------------------------------------------------


async def test_a_repeat_is_answered_from_the_cache(dns_server, resolver):
    dns_server.add("cached.test", "TXT", '"v=spf1 -all"', ttl=300)
    first = await resolver.answer(DnsQuery("cached.test", "TXT"))
    second = await resolver.answer(DnsQuery("cached.test", "TXT"))
    assert first == second == DnsAnswer.of("v=spf1 -all")
    assert asked(dns_server) == [("cached.test", "TXT")]


async def test_a_zero_ttl_is_asked_again(dns_server, resolver):
    dns_server.add("fresh.test", "TXT", '"one"')  # the server's default TTL is 0
    await resolver.answer(DnsQuery("fresh.test", "TXT"))
    await resolver.answer(DnsQuery("fresh.test", "TXT"))
    assert asked(dns_server) == [("fresh.test", "TXT")] * 2


async def test_negative_answers_are_cached_for_the_soa_minimum():
    with DNSServer(ttl=300) as server:
        server.add("exists.test", "A", "127.0.0.2")
        resolver = Resolver([server.address], timeout=2.0)
        for _ in range(2):
            assert await resolver.answer(DnsQuery("gone.test", "A")) == DnsAnswer(
                DnsStatus.NXDOMAIN
            )
            assert await resolver.answer(DnsQuery("exists.test", "MX")) == DnsAnswer()
        assert asked(server) == [("gone.test", "A"), ("exists.test", "MX")]


async def test_failures_are_not_cached(dns_server, resolver):
    dns_server.fail("flaky.test", "servfail")
    assert (await resolver.answer(DnsQuery("flaky.test", "A"))).status is DnsStatus.SERVFAIL
    dns_server.heal("flaky.test")
    dns_server.add("flaky.test", "A", "127.0.0.2", ttl=300)
    assert await resolver.answer(DnsQuery("flaky.test", "A")) == DnsAnswer.of("127.0.0.2")


async def test_the_checks_own_cache_keeps_answers_for_their_ttl(
    mock_clock: trio.testing.MockClock,
) -> None:
    # run_check takes what `cached` has without a task or dnspython's path.
    with DNSServer(ttl=300) as server:
        server.add("kept.test", "TXT", '"v=spf1 -all"')
        server.add("brief.test", "TXT", '"x"', ttl=0)
        resolver = Resolver([server.address], timeout=2.0)
        kept, brief, gone = (
            DnsQuery("kept.test", "TXT"),
            DnsQuery("brief.test", "TXT"),
            DnsQuery("gone.test", "TXT"),
        )
        assert resolver.cached(kept) is None
        result = await run_check(ask(kept, brief, gone), resolver)
        assert result == (
            DnsAnswer.of("v=spf1 -all"),
            DnsAnswer.of("x"),
            DnsAnswer(DnsStatus.NXDOMAIN),
        )
        assert resolver.cached(kept) == DnsAnswer.of("v=spf1 -all")
        assert resolver.cached(DnsQuery("KEPT.test", "TXT")) == DnsAnswer.of("v=spf1 -all")
        assert resolver.cached(brief) is None  # TTL 0: never kept
        assert resolver.cached(gone) == DnsAnswer(DnsStatus.NXDOMAIN)  # the SOA minimum
        # The clock stands still but when told (autojump would jump over the DNS
        # server's thread answering).
        mock_clock.jump(301)
        assert resolver.cached(kept) is None
        assert resolver.cached(gone) is None


async def test_a_question_on_its_way_is_not_asked_again(dns_server: DNSServer) -> None:
    dns_server.add("busy.test", "TXT", '"v=spf1 -all"', ttl=300)
    resolver = Resolver([dns_server.address], timeout=2.0)
    answers: list[DnsAnswer] = []

    async def one() -> None:
        answers.append(await resolver.answer(DnsQuery("busy.test", "TXT")))

    async with trio.open_nursery() as nursery:
        for _ in range(20):  # twenty sessions started together, one sender
            nursery.start_soon(one)
    assert answers == [DnsAnswer.of("v=spf1 -all")] * 20
    assert asked(dns_server) == [("busy.test", "TXT")]
