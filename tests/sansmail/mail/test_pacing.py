"""The commands-per-second token bucket: times are given, so no test waits."""

from __future__ import annotations

import ipaddress

import pytest

from sansmail.mail.pacing import BURST_SECONDS, Pacer, pacer_for


def test_a_burst_goes_through_then_the_rate_holds() -> None:
    pacer = Pacer(rate=10, burst=20)
    assert [pacer.take(0.0) for _ in range(20)] == [0.0] * 20
    # The 21st is one token in debt: a tenth of a second; the 22nd two.
    assert pacer.take(0.0) == pytest.approx(0.1)
    assert pacer.take(0.0) == pytest.approx(0.2)


def test_a_client_that_waits_as_told_gets_exactly_the_rate() -> None:
    pacer = Pacer(rate=100, burst=100)
    now = 0.0
    for _ in range(100):
        assert pacer.take(now) == 0.0
    handled = 0
    while now < 10.0:
        now += pacer.take(now)  # the adapter sleeps this long, then handles it
        handled += 1
    assert handled == pytest.approx(1000, abs=2)


def test_the_bucket_refills_to_its_burst_only() -> None:
    pacer = Pacer(rate=10, burst=5)
    for _ in range(5):
        pacer.take(0.0)
    # An hour idle refills 5 tokens, not 36,000.
    assert [pacer.take(3600.0) for _ in range(5)] == [0.0] * 5
    assert pacer.take(3600.0) > 0


def test_try_take_takes_nothing_when_empty() -> None:
    pacer = Pacer(rate=10, burst=2)
    assert pacer.try_take(0.0)
    assert pacer.try_take(0.0)
    assert not pacer.try_take(0.0)
    assert not pacer.try_take(0.05)  # half a token
    assert pacer.try_take(0.1)
    # take() after a refused try_take owes only its own token.
    assert pacer.take(0.1) == pytest.approx(0.1)


def test_a_clock_that_goes_back_refills_nothing() -> None:
    pacer = Pacer(rate=10, burst=1)
    pacer.take(5.0)
    assert pacer.take(4.0) == pytest.approx(0.1)


def test_pacer_for_rate_zero_and_mynetworks() -> None:
    nets = (ipaddress.ip_network("192.0.2.0/24"),)
    assert pacer_for("198.51.100.1", rate=0, exempt=nets) is None
    assert pacer_for("192.0.2.9", rate=1000, exempt=nets) is None
    pacer = pacer_for("198.51.100.1", rate=1000, exempt=nets)
    assert pacer is not None
    assert pacer.rate == 1000
    assert pacer.burst == 1000 * BURST_SECONDS
