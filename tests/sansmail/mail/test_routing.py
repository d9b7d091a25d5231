"""Next-hop choice, MX ordering and the per-destination concurrency cap."""

from __future__ import annotations

import random
import types
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sansmail.mail.routing
from sansmail.config import DeliveryConfig, NextHop
from sansmail.mail.routing import (
    DEFAULT_DESTINATION_LIMIT,
    DestinationLimiter,
    MXLoopError,
    MXRecord,
    NullMXError,
    Route,
    RoutingError,
    order_mx,
    route_for,
)


def keep(hosts: list[str]) -> None:
    pass


def reverse(hosts: list[str]) -> None:
    hosts.reverse()


def mx(*pairs: tuple[int, str]) -> list[MXRecord]:
    return [MXRecord(pref, host) for pref, host in pairs]


def test_public_names() -> None:
    assert sorted(sansmail.mail.routing.__all__) == [
        "DEFAULT_DESTINATION_LIMIT",
        "DestinationLimiter",
        "MXLoopError",
        "MXRecord",
        "NullMXError",
        "Route",
        "RoutingError",
        "order_mx",
        "route_for",
    ]


# --- route_for --------------------------------------------------------------------------

TRANSPORT = types.MappingProxyType(
    {
        "peer.test": NextHop(host="127.0.0.1", port=2626),
        ".corp.test": NextHop(host="gw.corp.test", port=25, mx_lookup=True),
        "a.corp.test": NextHop(host="10.0.0.1", port=587),
    }
)
RELAY = NextHop(host="smarthost.test", port=587)


@pytest.mark.parametrize(
    ("domain", "relayhost", "route"),
    [
        ("peer.test", None, Route("transport", "127.0.0.1", 2626, False)),
        ("PEER.test.", None, Route("transport", "127.0.0.1", 2626, False)),
        # A plain key matches only itself (Postfix transport(5)).
        ("sub.peer.test", None, Route("mx", "sub.peer.test", 25, True)),
        # ".parent" keys match subdomains at any depth, not the parent itself.
        ("b.corp.test", None, Route("transport", "gw.corp.test", 25, True)),
        ("x.y.corp.test", None, Route("transport", "gw.corp.test", 25, True)),
        ("corp.test", None, Route("mx", "corp.test", 25, True)),
        # The exact entry beats the parent one.
        ("a.corp.test", None, Route("transport", "10.0.0.1", 587, False)),
        # The transport table beats the relayhost, which beats MX.
        ("peer.test", RELAY, Route("transport", "127.0.0.1", 2626, False)),
        ("example.org", RELAY, Route("relayhost", "smarthost.test", 587, False)),
        ("example.org", None, Route("mx", "example.org", 25, True)),
        ("[192.0.2.1]", None, Route("literal", "192.0.2.1", 25, False)),
        ("[IPv6:2001:DB8::1]", None, Route("literal", "2001:db8::1", 25, False)),
        ("[192.0.2.1]", RELAY, Route("relayhost", "smarthost.test", 587, False)),
    ],
)
def test_route_for(domain: str, relayhost: NextHop | None, route: Route) -> None:
    delivery = DeliveryConfig(relayhost=relayhost, transport=TRANSPORT)
    assert route_for(domain, delivery) == route


def test_relayhost_with_mx_lookup() -> None:
    delivery = DeliveryConfig(relayhost=NextHop(host="relay.test", mx_lookup=True))
    assert route_for("example.org", delivery) == Route("relayhost", "relay.test", 25, True)


def test_general_address_literal_has_no_route() -> None:
    with pytest.raises(ValueError):
        route_for("[x-tag:whatever]", DeliveryConfig())


# --- order_mx ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "shuffle", "hosts"),
    [
        (mx((10, "b.test"), (5, "a.test"), (20, "c.test")), keep, ["a.test", "b.test", "c.test"]),
        (
            mx((10, "x.test"), (10, "y.test"), (5, "a.test"), (10, "z.test")),
            reverse,
            ["a.test", "z.test", "y.test", "x.test"],
        ),
        # Duplicates are tried once, at their best preference; names are normalised.
        (mx((20, "A.test."), (10, "b.test"), (5, "a.test")), keep, ["a.test", "b.test"]),
        (mx((10, "b.test"), (10, "B.TEST.")), keep, ["b.test"]),
        # Implicit MX (RFC 5321 §5.1).
        ([], keep, ["example.org"]),
        # A "." among real hosts is dropped rather than treated as null MX.
        (mx((0, "."), (10, "mx.test")), keep, ["mx.test"]),
    ],
)
def test_order_mx(records: list[MXRecord], shuffle: object, hosts: list[str]) -> None:
    assert callable(shuffle)
    assert order_mx(records, domain="Example.ORG", shuffle=shuffle) == hosts


@pytest.mark.parametrize("records", [mx((0, ".")), mx((0, "")), mx((10, "."), (0, "."))])
def test_null_mx(records: list[MXRecord]) -> None:
    with pytest.raises(NullMXError) as info:
        order_mx(records, domain="nomail.test", shuffle=keep)
    assert info.value.status == "5.1.10"
    assert info.value.domain == "nomail.test"
    assert isinstance(info.value, RoutingError)


@pytest.mark.parametrize(
    ("records", "hosts"),
    [
        # We are at 20: only the hosts before us.
        (mx((10, "a.test"), (20, "me.test"), (30, "c.test")), ["a.test"]),
        # Hosts equal to our preference go too.
        (mx((10, "a.test"), (20, "me.test"), (20, "b.test")), ["a.test"]),
        # Our name listed twice: the better entry counts.
        (mx((10, "a.test"), (20, "ME.test."), (5, "me.test"), (1, "z.test")), ["z.test"]),
        # Not us at all.
        (mx((10, "a.test"), (20, "b.test")), ["a.test", "b.test"]),
    ],
)
def test_self_name_rule(records: list[MXRecord], hosts: list[str]) -> None:
    got = order_mx(records, domain="d.test", shuffle=keep, self_names=["me.test", "me2.test"])
    assert got == hosts


@pytest.mark.parametrize(
    ("records", "domain"),
    [(mx((10, "me.test"), (20, "b.test")), "d.test"), ([], "me.test")],
)
def test_mx_loop(records: list[MXRecord], domain: str) -> None:
    with pytest.raises(MXLoopError) as info:
        order_mx(records, domain=domain, shuffle=keep, self_names={"me.test"})
    assert info.value.status == "5.4.6"


hostnames = st.sampled_from([f"h{i}.test" for i in range(12)])
records_strategy = st.lists(
    st.builds(MXRecord, st.integers(0, 5), hostnames), min_size=1, max_size=15
)


def best_preferences(records: Sequence[MXRecord]) -> dict[str, int]:
    best: dict[str, int] = {}
    for r in records:
        best[r.exchange] = min(r.preference, best.get(r.exchange, r.preference))
    return best


@settings(deadline=None, max_examples=200)
@given(records=records_strategy, seed=st.integers(0, 2**32))
def test_order_mx_properties(records: list[MXRecord], seed: int) -> None:
    hosts = order_mx(records, domain="d.test", shuffle=random.Random(seed).shuffle)
    best = best_preferences(records)
    # Every host once, and nothing else.
    assert sorted(hosts) == sorted(best)
    # Preference order is kept: shuffling only permutes hosts of equal preference.
    prefs = [best[h] for h in hosts]
    assert prefs == sorted(prefs)


@settings(deadline=None, max_examples=200)
@given(records=records_strategy, seed=st.integers(0, 2**32))
def test_shuffle_only_permutes_equals(records: list[MXRecord], seed: int) -> None:
    plain = order_mx(records, domain="d.test", shuffle=keep)
    mixed = order_mx(records, domain="d.test", shuffle=random.Random(seed).shuffle)
    best = best_preferences(records)
    assert [best[h] for h in plain] == [best[h] for h in mixed]
    assert sorted(plain) == sorted(mixed)


@settings(deadline=None, max_examples=200)
@given(records=records_strategy, me=hostnames)
def test_self_name_rule_properties(records: list[MXRecord], me: str) -> None:
    best = best_preferences(records)
    try:
        hosts = order_mx(records, domain="d.test", shuffle=keep, self_names=[me])
    except MXLoopError:
        assert me in best
        assert min(best.values()) == best[me]
        return
    assert me not in hosts
    if me in best:
        assert all(best[h] < best[me] for h in hosts)
        assert sorted(hosts) == sorted(h for h, p in best.items() if p < best[me])
    else:
        assert sorted(hosts) == sorted(best)


def test_shuffle_is_used_on_every_group_of_equals() -> None:
    seen: list[list[str]] = []

    def spy(hosts: list[str]) -> None:
        seen.append(list(hosts))

    order_mx(mx((10, "a.test"), (10, "b.test"), (20, "c.test")), domain="d", shuffle=spy)
    assert seen == [["a.test", "b.test"], ["c.test"]]


# --- DestinationLimiter -----------------------------------------------------------------


def test_limiter_caps_each_destination_separately() -> None:
    limiter = DestinationLimiter(limit=2)
    assert limiter.acquire("a.test")
    assert limiter.acquire("a.test")
    assert not limiter.acquire("a.test")
    assert limiter.in_flight("a.test") == 2
    assert limiter.acquire("b.test")
    limiter.release("a.test")
    assert limiter.acquire("a.test")
    assert not limiter.acquire("a.test")


def test_limiter_forgets_idle_destinations() -> None:
    limiter = DestinationLimiter()
    assert limiter.limit == DEFAULT_DESTINATION_LIMIT == 20
    limiter.acquire("a.test")
    assert len(limiter) == 1
    limiter.release("a.test")
    assert len(limiter) == 0
    assert limiter.in_flight("a.test") == 0


def test_limiter_refuses_unmatched_release_and_bad_limit() -> None:
    limiter = DestinationLimiter()
    with pytest.raises(ValueError):
        limiter.release("a.test")
    with pytest.raises(ValueError):
        DestinationLimiter(limit=0)


@settings(deadline=None, max_examples=100)
@given(
    limit=st.integers(1, 4),
    ops=st.lists(st.tuples(st.booleans(), st.sampled_from(["a", "b", "c"])), max_size=60),
)
def test_limiter_matches_a_model(limit: int, ops: list[tuple[bool, str]]) -> None:
    limiter = DestinationLimiter(limit)
    model: dict[str, int] = {}
    for take, dest in ops:
        if take:
            granted = limiter.acquire(dest)
            assert granted == (model.get(dest, 0) < limit)
            if granted:
                model[dest] = model.get(dest, 0) + 1
        elif model.get(dest, 0):
            limiter.release(dest)
            model[dest] -= 1
        for d in "abc":
            assert limiter.in_flight(d) == model.get(d, 0) <= limit
