"""Greylisting as postgrey does it: the triplet, the decision table, the texts."""

from __future__ import annotations

import ipaddress

import hypothesis.strategies as st
import pytest
from hypothesis import given

from sansmail.mail.address import Address
from sansmail.mail.greylist import (
    AUTO_WHITELIST,
    AWL_INTERVAL,
    DELAY,
    MAX_AGE,
    REFRESH,
    RETRY_WINDOW,
    Action,
    ClientRecord,
    Decision,
    GreylistSettings,
    TripletRecord,
    client_network,
    decide,
    greylist_reply,
    log_text,
    normalize_sender,
    recipient_key,
    sender_key,
    triplet,
    x_greylist,
)

S = GreylistSettings()
T0 = 1_800_000_000.0


def addr(text: str) -> Address:
    local, _, domain = text.rpartition("@")
    return Address(local_part=local, domain=domain)


class Greylist:
    """One triplet and its client's records, kept as a store would keep them."""

    def __init__(self, settings: GreylistSettings = S) -> None:
        self.settings = settings
        self.triplet: TripletRecord | None = None
        self.client: ClientRecord | None = None

    def at(self, now: float) -> Decision:
        decision = decide(self.settings, self.triplet, self.client, now)
        if decision.triplet is not None:
            self.triplet = decision.triplet
        if decision.client is not None:
            self.client = decision.client
        return decision


# -- the decision table ------------------------------------------------------------------


def test_first_attempt_is_greylisted() -> None:
    d = decide(S, None, None, T0)
    assert (d.action, d.reason, d.wait) == (Action.GREYLIST, "new", DELAY)
    assert d.triplet == TripletRecord(T0, T0, T0 + RETRY_WINDOW)
    assert d.client is None
    assert d.delayed is None


def test_retry_too_early_is_greylisted_with_the_time_left() -> None:
    g = Greylist()
    g.at(T0)
    d = g.at(T0 + 100)
    assert (d.action, d.reason, d.wait) == (Action.GREYLIST, "early-retry", DELAY - 100)
    # The first attempt is kept: waiting does not start again.
    assert g.triplet == TripletRecord(T0, T0 + 100, T0 + RETRY_WINDOW)
    assert g.at(T0 + DELAY - 0.5).wait == 1  # rounded up, never 0 while refused


def test_retry_after_the_delay_passes_and_is_remembered() -> None:
    g = Greylist()
    g.at(T0)
    d = g.at(T0 + DELAY)
    assert (d.action, d.reason, d.delayed) == (Action.PASS, "triplet found", DELAY)
    assert d.triplet == TripletRecord(T0, T0 + DELAY, T0 + DELAY + MAX_AGE)
    assert d.client == ClientRecord(1, T0 + DELAY, T0 + DELAY + MAX_AGE)
    # Remembered: days later it passes at once, with nothing to report as delayed.
    later = g.at(T0 + 10 * 86400)
    assert (later.action, later.delayed, later.client) == (Action.PASS, None, None)
    assert later.triplet == TripletRecord(T0, T0 + 10 * 86400, T0 + 10 * 86400 + MAX_AGE)


def test_retry_after_the_window_starts_again() -> None:
    g = Greylist()
    g.at(T0)
    d = g.at(T0 + RETRY_WINDOW + 1)
    assert (d.action, d.reason, d.wait) == (Action.GREYLIST, "new", DELAY)
    assert g.triplet is not None
    assert g.triplet.first == T0 + RETRY_WINDOW + 1
    # On the window's last second it still counts as the retry.
    g2 = Greylist()
    g2.at(T0)
    assert g2.at(T0 + RETRY_WINDOW).action is Action.PASS


def test_remembered_triplet_expires_max_age_after_last_seen() -> None:
    g = Greylist()
    g.at(T0)
    g.at(T0 + DELAY)
    assert g.at(T0 + DELAY + MAX_AGE).action is Action.PASS  # the last day
    assert g.triplet is not None
    last = g.triplet.last
    d = g.at(last + MAX_AGE + 1)
    assert (d.action, d.reason) == (Action.GREYLIST, "new")


def test_remembered_triplet_is_rewritten_at_most_hourly() -> None:
    g = Greylist()
    g.at(T0)
    g.at(T0 + DELAY)
    assert g.at(T0 + DELAY + REFRESH - 1).triplet is None  # nothing to write
    assert g.at(T0 + DELAY + REFRESH).triplet is not None


def test_client_network_auto_whitelisted_after_five_passes() -> None:
    client: ClientRecord | None = None
    now = T0
    for n in range(1, AUTO_WHITELIST + 1):
        # A new triplet from the same network, greylisted then passed, an hour apart.
        first = decide(S, None, client, now)
        assert first.action is Action.GREYLIST
        passed = decide(S, first.triplet, client, now + DELAY)
        assert passed.client is not None
        assert passed.client.count == n
        assert passed.whitelisted == (n == AUTO_WHITELIST)
        client = passed.client
        now += AWL_INTERVAL + DELAY
    d = decide(S, None, client, now)  # a triplet never seen
    assert (d.action, d.reason, d.triplet) == (Action.PASS, "client AWL", None)


def test_passes_count_once_an_hour_for_the_auto_whitelist() -> None:
    passed = decide(S, TripletRecord(T0, T0, T0 + RETRY_WINDOW), None, T0 + DELAY)
    client = passed.client
    assert client == ClientRecord(1, T0 + DELAY, T0 + DELAY + MAX_AGE)
    again = decide(S, TripletRecord(T0, T0, T0 + RETRY_WINDOW), client, T0 + DELAY + 60)
    assert again.action is Action.PASS
    assert again.client is None


def test_auto_whitelist_entry_refreshed_hourly_and_expires() -> None:
    client = ClientRecord(AUTO_WHITELIST, T0, T0 + MAX_AGE)
    assert decide(S, None, client, T0 + 60).client is None
    refreshed = decide(S, None, client, T0 + AWL_INTERVAL).client
    assert refreshed == ClientRecord(
        AUTO_WHITELIST + 1, T0 + AWL_INTERVAL, T0 + AWL_INTERVAL + MAX_AGE
    )
    gone = decide(S, None, client, T0 + MAX_AGE + 1)
    assert (gone.action, gone.reason) == (Action.GREYLIST, "new")


def test_auto_whitelist_off() -> None:
    settings = GreylistSettings(auto_whitelist=0)
    client = ClientRecord(100, T0, T0 + MAX_AGE)
    assert decide(settings, None, client, T0).action is Action.GREYLIST
    passed = decide(settings, TripletRecord(T0, T0, T0 + RETRY_WINDOW), None, T0 + DELAY)
    assert passed.action is Action.PASS
    assert passed.client is None


def test_clock_going_back_waits_no_longer_than_the_delay() -> None:
    record = TripletRecord(T0, T0, T0 + RETRY_WINDOW)
    d = decide(S, record, None, T0 - 1000)
    assert d.action is Action.GREYLIST
    assert d.wait == DELAY


def test_settings_must_make_sense() -> None:
    with pytest.raises(ValueError):
        GreylistSettings(delay=3 * 86400)  # longer than the retry window
    with pytest.raises(ValueError):
        GreylistSettings(max_age=3600)
    with pytest.raises(ValueError):
        GreylistSettings(delay=-1)


@given(
    st.lists(st.floats(min_value=0, max_value=3 * MAX_AGE), min_size=1, max_size=12),
)
def test_a_retry_never_passes_before_the_delay(offsets: list[float]) -> None:
    g = Greylist()
    first: float | None = None
    for now in sorted(T0 + o for o in offsets):
        d = g.at(now)
        if d.action is Action.GREYLIST and d.reason == "new":
            first = now
        if d.delayed is not None:
            assert first is not None
            assert now - first >= DELAY
            assert d.delayed == now - first
        if d.action is Action.GREYLIST:
            assert 1 <= d.wait <= DELAY


# -- the triplet -------------------------------------------------------------------------


def test_client_networks() -> None:
    assert client_network("192.0.2.77") == "192.0.2.0/24"
    assert client_network("::ffff:192.0.2.77") == "192.0.2.0/24"
    assert client_network("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert client_network("2001:db8:1:2:bbbb::9%eth0") == "2001:db8:1:2::/64"
    assert client_network("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert client_network("unix-socket") == "unknown"
    assert client_network(None) == "unknown"


def test_ipv6_clients_of_one_64_share_a_triplet_and_the_next_64_does_not() -> None:
    s, r = addr("a@example.org"), addr("b@example.net")
    g = Greylist()
    key = triplet("2001:db8:1:2::25", s, r)
    assert key == triplet("2001:db8:1:2:ffff:ffff:ffff:ffff", s, r)
    assert key != triplet("2001:db8:1:3::25", s, r)
    g.at(T0)
    assert g.at(T0 + DELAY).action is Action.PASS


def test_sender_and_recipient_keys() -> None:
    assert sender_key(None) == ""
    assert sender_key(addr("Alice@Example.ORG")) == "alice@example.org"
    assert recipient_key(addr("Bob+News@example.net")) == "bob+news@example.net"
    # postgrey's substitutions, on the sender only.
    assert sender_key(addr("owner-list+bob=example.net@lists.example")) == (
        "owner-list@lists.example"
    )
    assert sender_key(addr("bounce-12345-67@lists.example")) == "bounce-#-#@lists.example"
    assert sender_key(addr("bounce-12345-67@lists.example"), normalize=False) == (
        "bounce-12345-67@lists.example"
    )
    assert sender_key(addr("v2x42@example.org")) == "v2x42@example.org"  # not alone


@pytest.mark.parametrize(
    ("local", "key"),
    [
        ("prvs=0123456789=alice", "alice"),  # prvs=tag=local (the standard)
        ("prvs=alice=0123456789", "alice"),  # prvs=local=tag (seen in the wild)
        ("prvs=1234abcdef=bounce-7", "bounce-#"),
        ("srs0=hhhh=tt=example.org=alice", "srs0=#=#=example.org=alice"),
        ("SRS0+Ab+c=Q2=example.org=alice", "srs0=#=#=example.org=alice"),
        (
            "srs1=gggg=first.example==hhhh=tt=example.org=alice",
            ("srs1=#=first.example==#=#=example.org=alice"),
        ),
        ("user+ext+more", "user"),
        ("12", "#"),
        ("é-123", "é-#"),
    ],
)
def test_sender_substitutions(local: str, key: str) -> None:
    assert normalize_sender(local.lower()) == key


_LOCAL = st.text(alphabet="abcdefgXYZ0123456789-._=", min_size=1, max_size=30).filter(
    lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s
)


@given(_LOCAL, st.integers(0, 10**9), st.integers(0, 10**9))
def test_verp_numbers_make_one_sender(prefix: str, n: int, m: int) -> None:
    one = addr(f"{prefix}-{n}@lists.example")
    two = addr(f"{prefix}-{m}@lists.example")
    assert sender_key(one) == sender_key(two)


@given(_LOCAL)
def test_normalisation_is_idempotent_and_ignores_case(local: str) -> None:
    a = addr(f"{local}@Example.ORG")
    key = sender_key(a)
    assert sender_key(addr(key)) == key
    assert sender_key(addr(f"{local.upper()}@example.org")) == key
    assert sender_key(a, normalize=False) == a.key


@given(_LOCAL, _LOCAL)
def test_extensions_are_dropped_from_the_sender_only(user: str, ext: str) -> None:
    assert sender_key(addr(f"{user}+{ext}@example.org")) == sender_key(addr(f"{user}@example.org"))
    plain = recipient_key(addr(f"{user}@example.org"))
    assert recipient_key(addr(f"{user}+{ext}@example.org")) != plain


@given(st.integers(0, 2**32 - 1), st.integers(0, 255))
def test_ipv4_clients_of_one_24_share_a_triplet(address: int, last: int) -> None:
    ip = ipaddress.IPv4Address(address)
    neighbour = ipaddress.IPv4Address((address & ~0xFF) | last)
    assert client_network(str(ip)) == client_network(str(neighbour))
    other = ipaddress.IPv4Address(address ^ 0x100)
    assert client_network(str(ip)) != client_network(str(other))


@given(st.integers(0, 2**128 - 1), st.integers(0, 2**64 - 1))
def test_ipv6_clients_of_one_64_share_a_triplet(address: int, host: int) -> None:
    ip = ipaddress.IPv6Address(address)
    if ip.ipv4_mapped is not None:
        return
    neighbour = ipaddress.IPv6Address((address >> 64 << 64) | host)
    if neighbour.ipv4_mapped is not None:
        return
    assert client_network(str(ip)) == client_network(str(neighbour))


# -- texts -------------------------------------------------------------------------------


def test_reply_is_450_4_7_1_and_says_when() -> None:
    d = decide(S, None, None, T0)
    reply = greylist_reply(d, addr("bob@example.net"))
    assert (reply.code, reply.enhanced) == (450, "4.7.1")
    assert reply.text.startswith("<bob@example.net>: Recipient address rejected: Greylisted")
    assert reply.text.endswith("try again in 300 seconds")


def test_x_greylist_only_on_the_first_pass() -> None:
    g = Greylist()
    g.at(T0)
    first_pass = g.at(T0 + 312)
    assert x_greylist(first_pass, "mx.example.net") == (
        "X-Greylist",
        "delayed 312 seconds by sansmail at mx.example.net; Fri, 15 Jan 2027 08:05:12 +0000",
    )
    assert x_greylist(g.at(T0 + 400), "mx.example.net") is None


def test_log_lines_read_like_postgrey() -> None:
    s, r = addr("a@example.org"), addr("b@example.net")
    g = Greylist()
    common = {"client_ip": "192.0.2.7", "client_name": "mail.example.org", "sender": s}
    assert log_text(g.at(T0), recipient=r, **common) == (
        "action=greylist, reason=new, client_name=mail.example.org,"
        " client_address=192.0.2.7, sender=a@example.org, recipient=b@example.net"
    )
    assert log_text(g.at(T0 + 60), recipient=r, **common).startswith(
        "action=greylist, reason=early-retry (240s missing), "
    )
    assert log_text(g.at(T0 + 301), recipient=r, **common).startswith(
        "action=pass, reason=triplet found, delay=301, "
    )
    failed = log_text(
        None,
        client_ip="::ffff:192.0.2.7",
        client_name=None,
        sender=None,
        recipient=r,
        failure="database is locked",
    )
    assert failed == (
        "action=pass, reason=store failed (database is locked), client_address=192.0.2.7,"
        " sender=, recipient=b@example.net"
    )
