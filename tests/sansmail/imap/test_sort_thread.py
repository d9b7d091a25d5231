"""RFC 5256 SORT and THREAD orders (sansmail.imap._thread): base subjects, sent dates, the
answer's grammar from the RFC's examples, REFERENCES on hand-made conversations, and
properties on random mailboxes (every message once in the tree; ORDEREDSUBJECT threads
are the base subjects)."""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail.imap._thread import (
    SortItem,
    ThreadNode,
    base_subject,
    format_threads,
    sent_date,
    sent_seconds,
    sort,
    thread_ordered_subject,
    thread_references,
)

UTC = datetime.UTC
T0 = datetime.datetime(2025, 1, 1, tzinfo=UTC)


def item(seq: int, *, size: int = 100, arrival: int = 0, **fields: str) -> SortItem:
    named = {name.rstrip("_").replace("_", "-"): value for name, value in fields.items()}
    return SortItem(
        number=seq,
        seq=seq,
        arrival=T0 + datetime.timedelta(hours=arrival),
        size=size,
        fields=named,
    )


@pytest.mark.parametrize(
    ("subject", "base"),
    [
        ("Hello", "hello"),
        ("Re: Hello", "hello"),
        ("RE: re: Fwd: FW: hello", "hello"),
        ("Re[2]: hello", "hello"),  # subj-refwd = "re" *WSP [subj-blob] ":"
        ("Re [2]: hello", "hello"),
        ("Rex: hello", "rex: hello"),
        ("[list] Re: hello", "hello"),
        ("[list] [other] hello", "hello"),
        ("[only a blob]", "[only a blob]"),  # (4): kept when nothing would be left
        ("hello (fwd)", "hello"),
        ("hello (FWD) (fwd)  ", "hello"),
        ("[Fwd: hello]", "hello"),
        ("[Fwd: Re: [list] hello (fwd)]", "hello"),
        ("  hello \t  world  ", "hello world"),
        ("", ""),
        ("Re:", ""),
        ("Réponse: Grüße", "réponse: grüsse"),
    ],
)
def test_base_subject(subject: str, base: str) -> None:
    assert base_subject(subject) == base


def test_sent_date_falls_back_to_the_internal_date() -> None:
    dated = item(1, date="Tue, 3 Jun 2025 23:59:59 -1100")
    assert sent_date(dated) == datetime.datetime(2025, 6, 4, 10, 59, 59, tzinfo=UTC)
    assert sent_date(item(2, arrival=5, date="not a date")) == T0 + datetime.timedelta(hours=5)
    assert sent_date(item(3, arrival=6)) == T0 + datetime.timedelta(hours=6)


def test_format_from_the_rfc() -> None:
    # RFC 5256 §4: "(2)(3 6 (4 23)(44 7 96))" and "((3)(5))".
    threads = [
        ThreadNode(2),
        ThreadNode(
            3,
            (
                ThreadNode(
                    6,
                    (
                        ThreadNode(4, (ThreadNode(23),)),
                        ThreadNode(44, (ThreadNode(7, (ThreadNode(96),)),)),
                    ),
                ),
            ),
        ),
    ]
    assert format_threads(threads) == "(2)(3 6 (4 23)(44 7 96))"
    assert format_threads([ThreadNode(None, (ThreadNode(3), ThreadNode(5)))]) == "((3)(5))"
    assert format_threads([]) == ""


def test_sort_keys_and_ties() -> None:
    items = [
        item(1, size=300, arrival=3, subject="Re: beta", from_="Zed <a@x>", to="b@y"),
        item(2, size=100, arrival=1, subject="alpha", from_="Amy <z@x>", cc="c@y"),
        item(3, size=200, arrival=2, subject="[list] beta", from_="m@x", to="Bob <a@y>"),
        item(4, size=200, arrival=0, subject="Fwd: Alpha"),
    ]
    assert sort(items, [("ARRIVAL", False)]) == [4, 2, 3, 1]
    assert sort(items, [("SIZE", False)]) == [2, 3, 4, 1]  # 3 before 4: sequence order
    assert sort(items, [("SIZE", True)]) == [1, 3, 4, 2]  # REVERSE keeps ties in order
    assert sort(items, [("SUBJECT", False)]) == [2, 4, 1, 3]
    assert sort(items, [("SUBJECT", False), ("SIZE", True)]) == [4, 2, 1, 3]
    # FROM is the local part; no From sorts as "" first.
    assert sort(items, [("FROM", False)]) == [4, 1, 3, 2]
    # DISPLAYFROM is the display name, or the address where there is none.
    assert sort(items, [("DISPLAYFROM", False)]) == [4, 2, 3, 1]
    assert sort(items, [("TO", False)]) == [2, 4, 3, 1]
    assert sort(items, [("DISPLAYTO", False)]) == [2, 4, 1, 3]
    assert sort(items, [("CC", True)]) == [2, 1, 3, 4]
    assert sort(items, [("DATE", False)]) == [4, 2, 3, 1]  # no Date: the internal date


def conversation() -> list[SortItem]:
    return [
        item(1, arrival=1, message_id="<a@x>", subject="Plans"),
        item(2, arrival=2, message_id="<b@x>", references="<a@x>", subject="Re: Plans"),
        # Its parent <c@x> never arrived: a dummy holds it with its sibling 4.
        item(3, arrival=3, message_id="<d@x>", references="<a@x> <c@x>", subject="Re: Plans"),
        item(4, arrival=4, message_id="<e@x>", in_reply_to="<b@x> <zz@x>", subject="Re: Plans"),
        item(5, arrival=5, message_id="<f@x>", subject="Other"),
        # Same base subject as 1 but no references, and no "Re:": a dummy groups them.
        item(6, arrival=6, message_id="<g@x>", subject="Plans"),
        # A reply by subject only: it becomes a child of 5.
        item(7, arrival=7, message_id="<h@x>", subject="Re: Other"),
        # A duplicate Message-ID: this one gets a unique one.
        item(8, arrival=8, message_id="<f@x>", subject="Third"),
        item(9, arrival=9, subject=""),
    ]


def test_references() -> None:
    threads = thread_references(conversation())
    # 3's parent <c@x> is a dummy without a message: pruned, 3 promoted under 1.
    assert format_threads(threads) == "((1 (2 4)(3))(6))(5 7)(8)(9)"


def test_references_loops_are_not_made() -> None:
    items = [
        item(1, message_id="<a@x>", references="<b@x>"),
        item(2, message_id="<b@x>", references="<a@x>"),
        item(3, message_id="<c@x>", references="<c@x>"),
    ]
    assert (
        format_threads(thread_references(items)) == "(2 1)(3)"
    )  # 1 is first linked under the dummy <b@x> that 2 fills


def test_ordered_subject() -> None:
    threads = thread_ordered_subject(conversation())
    assert format_threads(threads) == "(1 (2)(3)(4)(6))(5 7)(8)(9)"
    # ... the RFC's example shape: "(166)(167)...(174 (175)(176)...)".


# -- properties ----------------------------------------------------------------------------

IDS = [f"<{n}@x>" for n in range(6)]


@st.composite
def mailboxes(draw: st.DrawFn) -> list[SortItem]:
    count = draw(st.integers(0, 12))
    out = []
    for seq in range(1, count + 1):
        fields = {}
        if draw(st.booleans()):
            fields["message-id"] = draw(st.sampled_from(IDS))
        if draw(st.booleans()):
            fields["references"] = " ".join(draw(st.lists(st.sampled_from(IDS), max_size=4)))
        if draw(st.booleans()):
            fields["in-reply-to"] = draw(st.sampled_from(IDS))
        fields["subject"] = draw(st.sampled_from(["a", "Re: a", "b", "[l] b (fwd)", "", "Fwd: c"]))
        if draw(st.booleans()):
            fields["date"] = f"{draw(st.integers(1, 3))} Jan 2025 10:00:00 +0000"
        out.append(
            item(
                seq,
                arrival=draw(st.integers(0, 100)),
                **{k.replace("-", "_"): v for k, v in fields.items()},
            )
        )
    return out


def numbers(threads: list[ThreadNode]) -> Iterator[int]:
    for thread in threads:
        if thread.number is not None:
            yield thread.number
        yield from numbers(list(thread.children))


@settings(max_examples=300, derandomize=True)
@given(mailboxes())
def test_every_message_once(items: list[SortItem]) -> None:
    everyone = sorted(i.number for i in items)
    for threads in (thread_references(items), thread_ordered_subject(items)):
        assert sorted(numbers(threads)) == everyone
        text = format_threads(threads)
        assert text.count("(") == text.count(")")
        assert "()" not in text


@settings(max_examples=200, derandomize=True)
@given(mailboxes())
def test_ordered_subject_groups_by_base_subject(items: list[SortItem]) -> None:
    by_number = {i.number: i for i in items}
    threads = thread_ordered_subject(items)
    subjects = [base_subject(by_number[t.number].fields["subject"]) for t in threads]  # type: ignore[index]
    assert len(set(subjects)) == len(subjects)
    for thread in threads:
        base = base_subject(by_number[thread.number].fields["subject"])  # type: ignore[index]
        assert all(not c.children for c in thread.children)
        assert {base_subject(by_number[c.number].fields["subject"]) for c in thread.children} <= {
            base
        }  # type: ignore[index]


@settings(max_examples=200, derandomize=True)
@given(
    mailboxes(),
    st.lists(
        st.tuples(st.sampled_from(["SIZE", "SUBJECT", "DATE", "ARRIVAL", "FROM"]), st.booleans()),
        min_size=1,
        max_size=3,
    ),
)
def test_sort_is_a_permutation(items: list[SortItem], keys: list[tuple[str, bool]]) -> None:
    assert sorted(sort(items, keys)) == sorted(i.number for i in items)


def test_a_reply_chain_deeper_than_recursion_goes() -> None:
    depth = 5000
    items = [
        item(n, arrival=n, message_id=f"<{n}@x>", in_reply_to=f"<{n - 1}@x>" if n > 1 else "")
        for n in range(1, depth + 1)
    ]
    assert (
        format_threads(thread_references(items))
        == "(" + " ".join(map(str, range(1, depth + 1))) + ")"
    )
    # Fan-out below the chain: each of the last message's replies in parentheses.
    items += [item(depth + k, arrival=depth + k, in_reply_to=f"<{depth}@x>") for k in (1, 2)]
    expected = " ".join(map(str, range(1, depth + 1))) + f" ({depth + 1})({depth + 2})"
    assert format_threads(thread_references(items)) == f"({expected})"


@settings(max_examples=300, derandomize=True)
@given(
    st.datetimes(
        min_value=datetime.datetime(1900, 1, 1),
        max_value=datetime.datetime(2200, 1, 1),
        timezones=st.sampled_from(
            [datetime.timezone(datetime.timedelta(minutes=m)) for m in (-690, -60, 0, 330, 840)]
        ),
    ),
    st.sampled_from(["{}", "{} (UTC)", "  {}  "]),
    st.booleans(),
)
def test_sent_seconds_agree_with_email_utils(
    when: datetime.datetime, frame: str, weekday: bool
) -> None:
    when = when.replace(microsecond=0)
    text = email.utils.format_datetime(when)
    if not weekday:
        text = text.split(", ", 1)[1]
    value = frame.format(text)
    expected = email.utils.mktime_tz(email.utils.parsedate_tz(value))  # type: ignore[arg-type]
    assert sent_seconds(item(1, date=value)) == expected


@pytest.mark.parametrize(
    "value",
    ["Tue, 3 Jun 25 23:59:59 EST", "3 Jun 2025 23:59 GMT", "Tue, 31 Feb 2025 10:00:00 +0000"],
)
def test_date_other_forms(value: str) -> None:
    parsed = email.utils.parsedate_tz(value)
    assert parsed is not None
    try:
        expected: float = email.utils.mktime_tz(parsed)
        datetime.date(*parsed[:3])
    except ValueError:
        expected = T0.timestamp()  # 31 February: the internal date stands in
    assert sent_seconds(item(1, date=value)) == expected
