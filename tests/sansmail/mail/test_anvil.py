"""The rate rules of Postfix's anvil: the window, what is over a limit, the keys, the
replies, and the one-process table."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from sansmail.config import Config, parse_config
from sansmail.mail.anvil import (
    IPV6_PREFIX,
    MAX_COUNT,
    TIME_UNIT,
    Event,
    MemoryWindows,
    Over,
    RateLimits,
    Window,
    client_key,
    counted,
    over,
    refusal,
    user_key,
)

T0 = 1_800_000_000.0
LIMITS = RateLimits(
    client_message=3, client_recipient=5, user_message=2, user_recipient=4, exempt=["10.0.0.0/8"]
)


def test_a_window_opens_at_the_first_event_and_counts_both_kinds() -> None:
    w = counted(None, Event.MESSAGE, T0)
    assert w == Window(start=T0, messages=1, recipients=0)
    w = counted(w, Event.RECIPIENT, T0 + 1)
    w = counted(w, Event.RECIPIENT, T0 + 59.9)
    assert w == Window(start=T0, messages=1, recipients=2)


def test_the_first_event_after_the_window_opens_a_new_one_at_zero() -> None:
    w = Window(start=T0, messages=50, recipients=70)
    assert counted(w, Event.MESSAGE, T0 + TIME_UNIT) == Window(start=T0 + TIME_UNIT, messages=1)
    # A clock that went back does not leave a client stuck in an old window.
    assert counted(w, Event.RECIPIENT, T0 - 5) == Window(start=T0 - 5, recipients=1)


def test_counts_stop_at_the_top_of_32_bits() -> None:
    w = Window(start=T0, messages=MAX_COUNT, recipients=MAX_COUNT)
    assert counted(w, Event.MESSAGE, T0) == w


@given(st.lists(st.tuples(st.sampled_from(list(Event)), st.floats(0, 600)), max_size=60))
def test_the_count_is_the_events_since_the_window_opened(
    events: list[tuple[Event, float]],
) -> None:
    """Events replayed in time order: each window opens at an event, at least a unit
    after the previous window opened, and counts exactly the events since it opened."""
    timed = sorted(((event, T0 + t) for event, t in events), key=lambda e: e[1])
    w: Window | None = None
    for i, (event, t) in enumerate(timed):
        previous = w
        w = counted(w, event, t)
        assert w.start <= t < w.start + TIME_UNIT
        assert any(u == w.start for _, u in timed[: i + 1])
        if previous is not None and previous.start != w.start:
            assert w.start >= previous.start + TIME_UNIT
        inside = [e for e, u in timed[: i + 1] if w.start <= u]
        assert w.messages == inside.count(Event.MESSAGE)
        assert w.recipients == inside.count(Event.RECIPIENT)


def test_the_refusal_is_for_a_count_over_the_limit() -> None:
    at_limit = Window(start=T0, messages=3, recipients=5)
    assert over(LIMITS, Event.MESSAGE, at_limit) is None
    assert over(LIMITS, Event.RECIPIENT, at_limit) is None
    past = Window(start=T0, messages=4, recipients=6)
    assert over(LIMITS, Event.MESSAGE, past) == Over(Event.MESSAGE, 4, 3)
    assert over(LIMITS, Event.RECIPIENT, past) == Over(Event.RECIPIENT, 6, 5)


def test_the_user_is_over_only_when_the_client_is_not() -> None:
    client = Window(start=T0, messages=1)
    user = Window(start=T0, messages=3, recipients=4)
    assert over(LIMITS, Event.MESSAGE, client, user, user_name="alice@example.test") == Over(
        Event.MESSAGE, 3, 2, user="alice@example.test"
    )
    assert over(LIMITS, Event.RECIPIENT, client, user, user_name="alice@example.test") is None
    both = Window(start=T0, messages=9)
    assert over(LIMITS, Event.MESSAGE, both, user, user_name="a") == Over(Event.MESSAGE, 9, 3)


def test_a_limit_of_zero_is_off() -> None:
    off = RateLimits()
    assert not off.enabled
    huge = Window(start=T0, messages=MAX_COUNT, recipients=MAX_COUNT)
    for event in Event:
        assert over(off, event, huge, huge, user_name="u") is None
    assert RateLimits(user_recipient=1).enabled


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="client_message"):
        RateLimits(client_message=-1)
    with pytest.raises(ValueError):
        RateLimits(unit=0)


def test_replies_are_postfix_words() -> None:
    reply = refusal(Over(Event.MESSAGE, 4, 3), "192.0.2.1")
    assert (reply.code, reply.enhanced, reply.text) == (
        450,
        "4.7.1",
        "Error: too much mail from 192.0.2.1",
    )
    reply = refusal(Over(Event.RECIPIENT, 6, 5), "192.0.2.1")
    assert reply.text == "Error: too many recipients from 192.0.2.1"
    reply = refusal(Over(Event.MESSAGE, 3, 2, user="alice@example.test"), "192.0.2.1")
    assert reply.text == "Error: too much mail from alice@example.test"


def test_client_keys() -> None:
    assert client_key("192.0.2.1") == "c:192.0.2.1"
    assert client_key("::ffff:192.0.2.1") == "c:192.0.2.1"
    # IPv6 by /84: the low 44 bits are one host's to choose.
    assert IPV6_PREFIX == 84
    assert client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2:3:fff:ffff:ffff")
    assert client_key("2001:db8:1:2:3:4:5:6") != client_key("2001:db8:1:2:3:1000::")
    assert client_key("2001:db8:1:2:3:4:5:6") == "c:2001:db8:1:2:3::/84"
    assert client_key("2001:db8::1", 128) == "c:2001:db8::1"
    assert client_key("not an address") == "c:not an address"
    assert user_key("alice@example.test") == "u:alice@example.test"
    assert client_key("192.0.2.1") != user_key("192.0.2.1")


def test_exempt_networks() -> None:
    assert LIMITS.is_exempt("10.1.2.3")
    assert LIMITS.is_exempt("::ffff:10.1.2.3")
    assert not LIMITS.is_exempt("192.0.2.1")
    assert not LIMITS.is_exempt("garbage")


def _config(text: str) -> Config:
    return parse_config(
        'hostname = "mx.example.test"\ndata_dir = "/nonexistent"\n' + text,
        source=None,
        default_hostname="mx.example.test",
    )


def test_from_config_reads_the_limits_table() -> None:
    limits = RateLimits.from_config(
        _config(
            'mynetworks = ["192.0.2.0/24"]\n[limits]\nclient_message_rate = 1\n'
            "client_recipient_rate = 2\nuser_message_rate = 3\nuser_recipient_rate = 4\n"
        )
    )
    assert (
        limits.client_message,
        limits.client_recipient,
        limits.user_message,
        limits.user_recipient,
    ) == (1, 2, 3, 4)
    assert limits.is_exempt("192.0.2.9")
    assert not limits.is_exempt("127.0.0.1")
    # The defaults: 100 messages and 1000 recipients a minute, for clients and users,
    # with loopback (the default mynetworks) exempt.
    default = RateLimits.from_config(_config(""))
    assert (default.client_message, default.client_recipient) == (100, 1000)
    assert (default.user_message, default.user_recipient) == (100, 1000)
    assert default.is_exempt("127.0.0.1")
    assert default.is_exempt("::1")


def test_memory_windows_count_and_forget_the_oldest() -> None:
    table = MemoryWindows(max_keys=2)
    assert table.count("a", Event.MESSAGE, T0).messages == 1
    assert table.count("a", Event.MESSAGE, T0 + 1).messages == 2
    table.count("b", Event.MESSAGE, T0 + 2)
    table.count("c", Event.MESSAGE, T0 + 3)  # "a" opened longest ago: forgotten
    assert len(table) == 2
    assert table.count("a", Event.MESSAGE, T0 + 4).messages == 1
    assert table.count("c", Event.RECIPIENT, T0 + 5) == Window(T0 + 3, 1, 1)
    with pytest.raises(ValueError):
        MemoryWindows(max_keys=0)
