"""MTA-STS without I/O: the policy and TXT record parsers, MX matching, the cache rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sansmail.mail import mtasts
from sansmail.mail.dnsrecords import mta_sts_policy
from sansmail.mail.mtasts import (
    MAX_AGE_LIMIT,
    Cached,
    Fetch,
    Invalid,
    Policy,
    Record,
    Use,
    after_fetch,
    cache_from_json,
    cache_to_json,
    mx_matches,
    parse_policy,
    parse_record,
    plan,
)

GOOGLE_LIKE = (
    "version: STSv1\nmode: enforce\nmx: smtp.example.com\nmx: *.mx.example.com\nmax_age: 86400\n"
)


def test_a_policy_with_lf_line_ends() -> None:
    assert parse_policy(GOOGLE_LIKE) == Policy(
        mode="enforce", mx=("smtp.example.com", "*.mx.example.com"), max_age=86400
    )


def test_crlf_and_lf_read_the_same() -> None:
    assert parse_policy(GOOGLE_LIKE.replace("\n", "\r\n")) == parse_policy(GOOGLE_LIKE)


def test_what_dns_records_tells_people_to_publish_parses() -> None:
    policy = parse_policy(mta_sts_policy("mx.example.com", mode="enforce"))
    assert isinstance(policy, Policy)
    assert policy.mode == "enforce"
    assert policy.mx == ("mx.example.com",)


def test_unknown_fields_are_ignored_and_the_first_of_a_repeated_field_counts() -> None:
    text = (
        "version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\nfoo_bar: x y\nmax_age: 10\n"
    )
    assert parse_policy(text) == Policy(mode="testing", mx=("a.example",), max_age=10)


def test_names_and_modes_without_case_patterns_lower_case() -> None:
    text = "Version: STSv1\nMODE: Enforce\nMX: MX.Example.COM\nmax_age:5"
    assert parse_policy(text) == Policy(mode="enforce", mx=("mx.example.com",), max_age=5)


def test_mode_none_needs_no_mx() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0\n") == Policy(
        mode="none", mx=(), max_age=0
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("mode: enforce\nmx: a.example\nmax_age: 1\n", "version"),
        ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", "version"),
        ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", "mode"),
        ("version: STSv1\nmode: enforce\nmx: a.example\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n", "max_age"),
        (f"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: {MAX_AGE_LIMIT + 1}\n", "over"),
        ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
        ("version: STSv1\nmode: testing\nmax_age: 1\n", "no mx"),
        ("version: STSv1\nmode: enforce\nmx: a.*.example\nmax_age: 1\n", "mx pattern"),
        ("version: STSv1\nmode: enforce\nmx: -a.example\nmax_age: 1\n", "mx pattern"),
        ("version: STSv1\nmode: enforce\nmx: bücher.example\nmax_age: 1\n", "mx pattern"),
        ("<html>404</html>\n", "not a field"),
        ("version STSv1\n", "not a field"),
        ("version: STSv1\rmode: enforce\nmx: a.example\nmax_age: 1\n", "value"),
    ],
)
def test_invalid_policies_say_why(text: str, why: str) -> None:
    result = parse_policy(text)
    assert isinstance(result, Invalid)
    assert why in result.why


def test_octets_must_be_utf8_and_at_most_64k() -> None:
    assert parse_policy(b"version: STSv1\xff\n") == Invalid("not UTF-8")
    big = GOOGLE_LIKE.encode() + b"x: " + b"y" * mtasts.POLICY_SIZE_LIMIT + b"\n"
    assert isinstance(parse_policy(big), Invalid)
    assert isinstance(parse_policy(GOOGLE_LIKE.encode()), Policy)


@given(st.text(max_size=300))
def test_any_text_is_a_policy_or_invalid(text: str) -> None:
    assert isinstance(parse_policy(text), Policy | Invalid)


@given(st.binary(max_size=300))
def test_any_octets_are_a_policy_or_invalid(data: bytes) -> None:
    assert isinstance(parse_policy(data), Policy | Invalid)


_FIELD_LINES = st.sampled_from(
    [
        "version: STSv1",
        "mode: enforce",
        "mode: testing",
        "mode: none",
        "mx: mx.example.com",
        "mx: *.example.net",
        "max_age: 604800",
        "other: thing",
        "",
    ]
)


@given(st.lists(_FIELD_LINES, max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_shuffled_fields_parse_or_say_why(lines: list[str], end: str) -> None:
    result = parse_policy(end.join(lines))
    if isinstance(result, Policy):
        assert "version: STSv1" in lines
        assert "max_age: 604800" in lines
        assert result.mode != "enforce" or result.mx
    else:
        assert result.why


# -- the TXT record -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (["v=STSv1; id=20160831085700Z;"], Record("20160831085700Z")),
        (["v=STSv1;id=abc"], Record("abc")),
        (["v=STSv1 ; id=abc ; ext=1"], Record("abc")),
        (["v=spf1 -all", "v=STSv1; id=abc"], Record("abc")),
        (["v=STSv1; id=abc", "v=STSv1; id=def"], None),  # §3.1: not exactly one
        ([], None),
        (["v=STSv1"], None),
        (["v=STSv1; id="], None),
        (["v=STSv1; id=has-hyphen"], None),
        (["v=STSv1; id=" + "a" * 33], None),
        (["V=STSv1; id=abc"], None),  # %s: case-sensitive
        (["v=STSv1; id=abc; bad ext"], None),
    ],
)
def test_the_record(texts: list[str], expected: Record | None) -> None:
    assert parse_record(texts) == expected


@given(st.lists(st.text(max_size=80), max_size=3))
def test_any_txt_answer_is_a_record_or_none(texts: list[str]) -> None:
    assert parse_record(texts) is None or isinstance(parse_record(texts), Record)


# -- MX matching ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "matches"),
    [
        ("mx.example.com", True),
        ("MX.Example.COM.", True),
        ("a.example.net", True),
        ("example.net", False),  # the wildcard is one label, not none
        ("a.b.example.net", False),  # nor two
        ("mx2.example.com", False),
        ("example.com", False),
    ],
)
def test_mx_matching(host: str, matches: bool) -> None:
    assert mx_matches(host, ("mx.example.com", "*.example.net")) is matches


@given(st.text(max_size=40), st.lists(st.text(max_size=40), max_size=3))
def test_matching_never_raises(host: str, patterns: list[str]) -> None:
    assert mx_matches(host, patterns) in (True, False)


# -- the cache ------------------------------------------------------------------------------

ENFORCE = Policy(mode="enforce", mx=("mx.example.com",), max_age=100)


def cached(fetched: float = 1000.0, ident: str = "one") -> Cached:
    return Cached(policy=ENFORCE, id=ident, fetched=fetched)


def test_nothing_cached_and_no_record_is_no_policy() -> None:
    assert plan(None, None, now=0) == Use(None)


def test_a_record_and_nothing_cached_is_a_fetch() -> None:
    assert plan(None, Record("one"), now=0) == Fetch("one")


def test_a_good_policy_with_the_same_id_is_used_without_a_fetch() -> None:
    assert plan(cached(), Record("one"), now=1099) == Use(ENFORCE)


def test_a_new_id_is_a_refetch() -> None:
    assert plan(cached(), Record("two"), now=1001) == Fetch("two")


def test_an_expired_policy_is_refetched_or_dropped() -> None:
    assert plan(cached(), Record("one"), now=1100) == Fetch("one")
    assert plan(cached(), None, now=1100) == Use(None)


def test_a_record_gone_keeps_a_good_policy() -> None:
    # An attacker who removes the TXT record must not switch enforcement off.
    assert plan(cached(), None, now=1050) == Use(ENFORCE)


def test_a_failed_refetch_keeps_the_cached_policy_while_good() -> None:
    old = cached()
    assert after_fetch(old, Fetch("two"), None, now=1050) == (old, ENFORCE)
    assert after_fetch(old, Fetch("two"), Invalid("x"), now=1050) == (old, ENFORCE)
    assert after_fetch(old, Fetch("two"), None, now=1100) == (None, None)


def test_a_fetched_policy_replaces_the_cached_one() -> None:
    new = Policy(mode="none", max_age=5)
    assert after_fetch(cached(), Fetch("two"), new, now=2000) == (
        Cached(policy=new, id="two", fetched=2000),
        new,
    )


def test_the_cache_file_round_trips() -> None:
    entry = cached(fetched=1234.5)
    assert cache_from_json(cache_to_json("Example.COM.", entry)) == entry


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        '{"mode": "enforce", "mx": [], "max_age": 1, "fetched": 1, "id": "a"}',
        '{"mode": "enforce", "mx": ["a.example"], "max_age": 1, "fetched": "1", "id": "a"}',
        '{"mode": "bad", "mx": ["a.example"], "max_age": 1, "fetched": 1, "id": "a"}',
        '{"mode": "enforce", "mx": ["a.example"], "max_age": 1, "fetched": NaN, "id": "a"}',
    ],
)
def test_a_cache_file_we_did_not_write_is_none(text: str) -> None:
    assert cache_from_json(text) is None


@given(st.text(max_size=200))
def test_any_cache_text_is_cached_or_none(text: str) -> None:
    assert cache_from_json(text) is None or isinstance(cache_from_json(text), Cached)
