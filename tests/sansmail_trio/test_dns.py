"""sansmail_trio._dns against a real authoritative server on 127.0.0.1 (dns_server.py)."""

from __future__ import annotations

import pathlib
import socket

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.resolver
import pytest
import trio
from dns_server import DNSServer, Query, dns_server_fixture  # noqa: F401  (fixture)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sansmail.config import parse_config
from sansmail.mail.routing import MXRecord, NullMXError, order_mx
from sansmail_trio._dns import DNSError, Resolver


@pytest.fixture
def resolver(dns_server: DNSServer) -> Resolver:
    return Resolver([dns_server.address], timeout=2.0)


def asked(server: DNSServer, transport: str | None = None) -> list[tuple[str, str]]:
    return [(q.name, q.rdtype) for q in server.queries if transport in (None, q.transport)]


def no_shuffle(hosts: list[str]) -> None:
    pass


# --- MX ---------------------------------------------------------------------------------


async def test_mx_records_keep_their_preferences(dns_server, resolver):
    dns_server.add("peer.test", "MX", "20 backup.peer.test.")
    dns_server.add("peer.test", "MX", "10 mx1.peer.test.")
    dns_server.add("peer.test", "MX", "10 mx2.peer.test")  # no final dot: absolute all the same
    records = await resolver.mx("peer.test")
    assert sorted(records, key=lambda r: (r.preference, r.exchange)) == [
        MXRecord(10, "mx1.peer.test"),
        MXRecord(10, "mx2.peer.test"),
        MXRecord(20, "backup.peer.test"),
    ]
    hosts = order_mx(records, domain="peer.test", shuffle=no_shuffle)
    assert hosts[2] == "backup.peer.test"
    assert set(hosts[:2]) == {"mx1.peer.test", "mx2.peer.test"}
    assert asked(dns_server) == [("peer.test", "MX")]


async def test_a_trailing_dot_and_case_ask_the_same_name(dns_server, resolver):
    dns_server.add("peer.test", "MX", "10 mx1.peer.test.")
    assert await resolver.mx("Peer.TEST.") == [MXRecord(10, "mx1.peer.test")]
    assert asked(dns_server) == [("peer.test", "MX")]


async def test_domain_without_mx_gives_no_records(dns_server, resolver):
    # The caller then uses the domain itself: the implicit MX of RFC 5321 §5.1.
    dns_server.add("plain.test", "A", "127.0.0.2")
    records = await resolver.mx("plain.test")
    assert records == []
    assert order_mx(records, domain="plain.test", shuffle=no_shuffle) == ["plain.test"]


async def test_name_with_only_names_below_it_has_no_mx_but_exists(dns_server, resolver):
    dns_server.add("host.parent.test", "A", "127.0.0.2")
    assert await resolver.mx("parent.test") == []


async def test_null_mx_comes_back_as_the_root(dns_server, resolver):
    dns_server.add("nullmx.test", "MX", "0 .")
    records = await resolver.mx("nullmx.test")
    assert records == [MXRecord(0, ".")]
    with pytest.raises(NullMXError):
        order_mx(records, domain="nullmx.test", shuffle=no_shuffle)


async def test_nxdomain_is_permanent(dns_server, resolver):
    with pytest.raises(DNSError) as caught:
        await resolver.mx("nowhere.test")
    assert caught.value.permanent
    assert str(caught.value) == "nowhere.test: no such domain (NXDOMAIN)"


async def test_servfail_is_temporary_and_names_the_server(dns_server, resolver):
    dns_server.add("broken.test", "MX", "10 mx.broken.test.")
    dns_server.fail("broken.test", "servfail")
    with pytest.raises(DNSError) as caught:
        await resolver.mx("broken.test")
    assert not caught.value.permanent
    assert str(caught.value).endswith(
        f"type=MX: Host not found, try again ({dns_server.host_port} SERVFAIL)"
    )
    dns_server.heal("broken.test")
    assert await resolver.mx("broken.test") == [MXRecord(10, "mx.broken.test")]


async def test_refused_is_temporary(dns_server, resolver):
    with pytest.raises(DNSError) as caught:
        await resolver.mx("outside.example")  # not one of the server's zones
    assert not caught.value.permanent
    assert "REFUSED" in str(caught.value)


async def test_no_answer_at_all_is_a_temporary_timeout(dns_server):
    resolver = Resolver([dns_server.address], timeout=0.3)
    dns_server.fail("slow.test", "drop")
    start = trio.current_time()
    with pytest.raises(DNSError) as caught:
        await resolver.mx("slow.test")
    assert not caught.value.permanent
    assert str(caught.value) == (
        "Host or domain name not found. Name service error for name=slow.test type=MX: "
        "Host not found, try again (no answer within 0.3s)"
    )
    assert trio.current_time() - start < 2.0
    assert ("slow.test", "MX") in asked(dns_server)


async def test_unreachable_name_server_is_temporary():
    resolver = Resolver([("127.0.0.1", closed_udp_port())], timeout=0.3)
    with pytest.raises(DNSError) as caught:
        await resolver.mx("peer.test")
    assert not caught.value.permanent


async def test_cname_at_the_name_is_followed(dns_server, resolver):
    dns_server.add("alias.test", "CNAME", "peer.test.")
    dns_server.add("peer.test", "MX", "10 mx1.peer.test.")
    dns_server.add("peer.test", "A", "127.0.0.7")
    assert await resolver.mx("alias.test") == [MXRecord(10, "mx1.peer.test")]
    assert await resolver.addresses("alias.test") == ["127.0.0.7"]


async def test_cname_to_nothing_is_nxdomain(dns_server, resolver):
    dns_server.add("dangling.test", "CNAME", "gone.test.")
    with pytest.raises(DNSError) as caught:
        await resolver.mx("dangling.test")
    assert caught.value.permanent


@pytest.mark.parametrize("bad", ["a..test", "x" * 64 + ".test", "", "."])
async def test_a_name_that_cannot_exist_is_permanent_without_a_query(dns_server, resolver, bad):
    with pytest.raises(DNSError) as caught:
        await resolver.mx(bad)
    assert caught.value.permanent
    assert "\n" not in str(caught.value)
    assert dns_server.queries == []


async def test_unicode_domain_is_asked_as_a_labels(dns_server, resolver):
    dns_server.add("xn--bcher-kva.test", "MX", "10 mx.xn--bcher-kva.test.")
    assert await resolver.mx("bücher.test") == [MXRecord(10, "mx.xn--bcher-kva.test")]


HOST_NAME = r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    records=st.lists(
        st.tuples(
            st.integers(0, 65535),
            st.from_regex(
                r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True
            ),
        ),
        max_size=8,
        unique=True,
    )
)
async def test_mx_answer_is_what_the_zone_holds(dns_server, resolver, records):
    dns_server.remove("any.test")
    for preference, exchange in records:
        dns_server.add("any.test", "MX", f"{preference} {exchange}.")
    if not records:
        dns_server.add("any.test", "TXT", '"no mx here"')
    got = await resolver.mx("any.test")
    assert sorted((r.preference, r.exchange) for r in got) == sorted(records)


# --- A and AAAA -------------------------------------------------------------------------


async def test_addresses_put_ipv4_before_ipv6(dns_server, resolver):
    dns_server.add("mx1.peer.test", "AAAA", "::1")
    dns_server.add("mx1.peer.test", "AAAA", "fd00::2")
    dns_server.add("mx1.peer.test", "A", "127.0.0.2")
    addresses = await resolver.addresses("mx1.peer.test")
    assert addresses[:1] == ["127.0.0.2"]
    assert sorted(addresses[1:]) == ["::1", "fd00::2"]
    assert sorted(asked(dns_server)) == [("mx1.peer.test", "A"), ("mx1.peer.test", "AAAA")]


@pytest.mark.parametrize(("rdtype", "address"), [("A", "127.0.0.3"), ("AAAA", "::1")])
async def test_one_family_is_enough(dns_server, resolver, rdtype, address):
    dns_server.add("single.test", rdtype, address)
    assert await resolver.addresses("single.test") == [address]


async def test_addresses_are_asked_at_once(dns_server):
    # Asked in parallel, a lookup whose answers are slow (or never come) takes one
    # timeout, not two. Shown without a clock: neither type is answered before both
    # have been asked, so asking one after the other would time out on the first and
    # miss its addresses.
    dns_server.add("both.test", "A", "127.0.0.2")
    dns_server.add("both.test", "AAAA", "::1")
    dns_server.hold("both.test", ["A", "AAAA"])
    resolver = Resolver([dns_server.address], timeout=10.0)
    assert await resolver.addresses("both.test") == ["127.0.0.2", "::1"]
    assert sorted(asked(dns_server)) == [("both.test", "A"), ("both.test", "AAAA")]


async def test_one_family_failing_does_not_hide_the_other(dns_server, resolver):
    dns_server.add("half.test", "A", "127.0.0.4")
    dns_server.fail("half.test", "servfail", rdtype="AAAA")
    assert await resolver.addresses("half.test") == ["127.0.0.4"]


async def test_no_address_and_one_failure_is_temporary(dns_server, resolver):
    dns_server.add("half.test", "MX", "10 elsewhere.test.")
    dns_server.fail("half.test", "servfail", rdtype="A")
    with pytest.raises(DNSError) as caught:
        await resolver.addresses("half.test")
    assert not caught.value.permanent
    assert "SERVFAIL" in str(caught.value)


async def test_a_name_without_addresses_is_permanent(dns_server, resolver):
    dns_server.add("mailonly.test", "MX", "10 mx1.peer.test.")
    with pytest.raises(DNSError) as caught:
        await resolver.addresses("mailonly.test")
    assert caught.value.permanent
    assert str(caught.value) == "mailonly.test: no A or AAAA record"


async def test_addresses_of_a_missing_name_are_permanent(dns_server, resolver):
    with pytest.raises(DNSError) as caught:
        await resolver.addresses("gone.test")
    assert caught.value.permanent
    assert "NXDOMAIN" in str(caught.value)


@pytest.mark.parametrize(
    ("literal", "expected"),
    [("127.0.0.9", "127.0.0.9"), ("::1", "::1"), ("0:0:0:0:0:0:0:1", "::1")],
)
async def test_an_ip_address_is_its_own_answer(dns_server, resolver, literal, expected):
    assert await resolver.addresses(literal) == [expected]
    assert dns_server.queries == []


async def test_truncated_answer_is_asked_again_over_tcp(dns_server, resolver):
    # 150 A records need about 2.4 kB: more than the 1232 octets EDNS0 asks for.
    for i in range(150):
        dns_server.add("big.test", "A", f"127.0.{i // 100 + 1}.{i % 100}")
    addresses = await resolver.addresses("big.test")
    assert len(addresses) == 150
    assert ("big.test", "A") in asked(dns_server, "tcp")
    assert ("big.test", "AAAA") not in asked(dns_server, "tcp")


# --- PTR --------------------------------------------------------------------------------


async def test_ptr_names(dns_server, resolver):
    dns_server.add("2.0.0.127.in-addr.arpa", "PTR", "mx1.peer.test.")
    dns_server.add(
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
        "PTR",
        "localhost.test.",
    )
    assert await resolver.ptr("127.0.0.2") == ["mx1.peer.test"]
    assert await resolver.ptr("::1") == ["localhost.test"]


async def test_ptr_absent_is_empty_and_failure_is_temporary(dns_server, resolver):
    assert await resolver.ptr("127.0.0.3") == []  # NXDOMAIN
    dns_server.add("4.0.0.127.in-addr.arpa", "TXT", '"no ptr"')
    assert await resolver.ptr("127.0.0.4") == []  # no PTR at an existing name
    dns_server.fail("5.0.0.127.in-addr.arpa", "servfail")
    with pytest.raises(DNSError) as caught:
        await resolver.ptr("127.0.0.5")
    assert not caught.value.permanent
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        await resolver.ptr("mx1.peer.test")


# --- configuration and cache ------------------------------------------------------------


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_from_config_uses_each_servers_own_port(dns_server):
    # The first server refuses everything: the resolver moves on to the second; neither
    # listens on port 53.
    with DNSServer(zones=()) as refusing:
        servers = f'["{refusing.host_port}", "{dns_server.host_port}"]'
        config = parse_config(
            f"[dns]\nnameservers = {servers}\n", source=None, default_hostname="mx.sansmail.test"
        )
        resolver = Resolver.from_config(config.dns)
        dns_server.add("peer.test", "MX", "10 mx1.peer.test.")
        assert await resolver.mx("peer.test") == [MXRecord(10, "mx1.peer.test")]
        assert asked(refusing) == [("peer.test", "MX")]


def test_configured_servers_never_read_resolv_conf(monkeypatch):
    def forbidden(self, f):
        raise AssertionError(f"read {f}")

    monkeypatch.setattr(dns.resolver.BaseResolver, "read_resolv_conf", forbidden)
    Resolver([("127.0.0.1", 5353)])
    with pytest.raises(AssertionError, match=r"resolv\.conf"):
        Resolver()


def use_resolv_conf(monkeypatch, tmp_path: pathlib.Path, text: str, server: DNSServer) -> None:
    """Make the system-resolver path read `text` as /etc/resolv.conf, then point it at
    `server` (resolv.conf cannot say a port)."""
    conf = tmp_path / "resolv.conf"
    conf.write_text(text)
    original = dns.resolver.BaseResolver.read_resolv_conf

    def read(self, f):
        original(self, conf)
        self.nameservers = [dns.nameserver.Do53Nameserver(*server.address)]

    monkeypatch.setattr(dns.resolver.BaseResolver, "read_resolv_conf", read)


async def test_system_resolver_never_applies_search_domains(dns_server, monkeypatch, tmp_path):
    use_resolv_conf(
        monkeypatch, tmp_path, "nameserver 127.0.0.1\nsearch test\noptions ndots:5\n", dns_server
    )
    dns_server.add("peer.test", "MX", "10 mx1.peer.test.")
    resolver = Resolver(timeout=2.0)
    assert await resolver.mx("peer.test") == [MXRecord(10, "mx1.peer.test")]
    # With the search list, "peer" would become "peer.test" and find the MX above.
    with pytest.raises(DNSError):
        await resolver.mx("peer")
    assert asked(dns_server) == [("peer.test", "MX"), ("peer", "MX")]


async def test_no_system_resolver_makes_every_lookup_temporary(monkeypatch, tmp_path):
    missing = tmp_path / "absent"
    original = dns.resolver.BaseResolver.read_resolv_conf
    monkeypatch.setattr(
        dns.resolver.BaseResolver, "read_resolv_conf", lambda self, f: original(self, missing)
    )
    resolver = Resolver()
    for lookup in (resolver.mx, resolver.addresses):
        with pytest.raises(DNSError) as caught:
            await lookup("peer.test")
        assert not caught.value.permanent
        assert "no name server configured" in str(caught.value)


async def test_ttl_zero_answers_are_not_reused(dns_server, resolver):
    dns_server.add("moving.test", "A", "127.0.0.2")
    assert await resolver.addresses("moving.test") == ["127.0.0.2"]
    dns_server.remove("moving.test", "A")
    dns_server.add("moving.test", "A", "127.0.0.3")
    assert await resolver.addresses("moving.test") == ["127.0.0.3"]
    assert asked(dns_server).count(("moving.test", "A")) == 2


async def test_answers_are_cached_for_their_ttl(dns_server, resolver):
    # The counterpart of the test above: with a TTL the second lookup is served from the
    # cache, stale data and all, and the server is asked once.
    dns_server.add("steady.test", "MX", "10 mx1.steady.test.", ttl=300)
    assert await resolver.mx("steady.test") == [MXRecord(10, "mx1.steady.test")]
    dns_server.remove("steady.test")
    dns_server.add("steady.test", "MX", "10 mx2.steady.test.", ttl=300)
    assert await resolver.mx("steady.test") == [MXRecord(10, "mx1.steady.test")]
    assert asked(dns_server) == [("steady.test", "MX")]


async def test_a_name_created_after_nxdomain_is_found(dns_server, resolver):
    # Negative answers carry the SOA minimum (0 here): they must not be cached beyond it.
    with pytest.raises(DNSError):
        await resolver.mx("late.test")
    dns_server.add("late.test", "MX", "10 mx1.late.test.")
    assert await resolver.mx("late.test") == [MXRecord(10, "mx1.late.test")]


def test_dns_error_reads_as_one_line():
    error = DNSError("peer.test MX:\n  SERVFAIL\r\n", permanent=False)
    assert str(error) == error.message == "peer.test MX: SERVFAIL"
    assert not error.permanent


async def test_test_server_answers_tcp_and_logs_it(dns_server):
    # The server itself: a direct TCP query gets an authoritative answer.
    dns_server.add("peer.test", "MX", "10 mx1.peer.test.")
    host, port = dns_server.address
    query = dns.message.make_query("peer.test.", "MX")
    response = await dns.asyncquery.tcp(query, host, port=port, timeout=2.0)
    assert response.flags & dns.flags.AA
    assert [rrset.to_text() for rrset in response.answer] == [
        "peer.test. 0 IN MX 10 mx1.peer.test."
    ]
    assert dns_server.queries == [Query("peer.test", "MX", "tcp")]
    assert response.question[0].name == dns.name.from_text("peer.test.")
