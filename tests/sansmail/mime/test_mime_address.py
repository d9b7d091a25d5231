"""IMAP address structures (RFC 9051 §7.5.2) from RFC 5322 §3.4 address lists."""

from __future__ import annotations

import pytest

from sansmail.mime._address import MAX_TOKENS, address_list

M, D = b"MISSING_MAILBOX", b"MISSING_DOMAIN"
END = (None, None, None, None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"user@example.com", [(None, None, b"user", b"example.com")]),
        (b"<user@example.com>", [(None, None, b"user", b"example.com")]),
        (b"Jane Q. Public <j@x.test>", [(b"Jane Q. Public", None, b"j", b"x.test")]),
        (b'"Doe, Jane" <j@x.test>', [(b"Doe, Jane", None, b"j", b"x.test")]),
        (b'"a \\"b\\"" <j@x.test>', [(b'a "b"', None, b"j", b"x.test")]),
        (b'"" <j@x.test>', [(None, None, b"j", b"x.test")]),
        # without quotes the comma splits: two addresses, as RFC 5322 reads it
        (b"Doe, Jane <j@x.test>", [(None, None, b"Doe", D), (b"Jane", None, b"j", b"x.test")]),
        # the name of an addr-spec is its comment
        (b"j@x.test (Jane Doe)", [(b"Jane Doe", None, b"j", b"x.test")]),
        (b"j(c1)@x.test(c2)", [(b"c2", None, b"j", b"x.test")]),
        # encoded words stay encoded; folding is gone already
        (b"=?utf-8?q?J=C3=B6rg?= <j@x.test>", [(b"=?utf-8?q?J=C3=B6rg?=", None, b"j", b"x.test")]),
        # quoted local part: unquoted, as Dovecot stores it
        (b'"john doe"@x.test', [(None, None, b"john doe", b"x.test")]),
        # obsolete spaces around dots, and a domain literal
        (b"john . doe @ [192.0.2.1]", [(None, None, b"john.doe", b"[192.0.2.1]")]),
        # source route (RFC 5322 §4.4 obs-route)
        (b"<@a.test,@b.test:u@c.test>", [(None, b"@a.test,@b.test", b"u", b"c.test")]),
        (b"Name <@a.test:u@c.test>", [(b"Name", b"@a.test", b"u", b"c.test")]),
        # missing pieces get Dovecot's fillers: a NIL host would mean "group marker"
        (b"root", [(None, None, b"root", D)]),
        (b"John Smith", [(b"John Smith", None, M, D)]),
        (b"<>", [(None, None, M, D)]),
        (b"@x.test", [(None, None, M, b"x.test")]),
        (b"Name <unterminated@x.test", [(b"Name", None, b"unterminated", b"x.test")]),
        # groups
        (b"undisclosed-recipients:;", [(None, None, b"undisclosed-recipients", None), END]),
        (
            b"g: a@x.test, b@y.test; , c@z.test",
            [
                (None, None, b"g", None),
                (None, None, b"a", b"x.test"),
                (None, None, b"b", b"y.test"),
                END,
                (None, None, b"c", b"z.test"),
            ],
        ),
        (b"g: (nobody) ;", [(None, None, b"g", None), END]),
        (b"g: a@x.test", [(None, None, b"g", None), (None, None, b"a", b"x.test"), END]),
        # empty: NIL
        (b"", None),
        (b"   ", None),
        (b", ,", None),
        (b"(just a comment)", None),
        # junk is skipped to the next comma
        (b"> junk, a@x.test", [(None, None, b"a", b"x.test")]),
        (b"; a@x.test", None),  # no comma after the junk: nothing to resume at
        (b"a@x.test >>, b@y.test", [(None, None, b"a", b"x.test"), (None, None, b"b", b"y.test")]),
        # 8-bit stays as it is
        (b"Ren\xc3\xa9e <r@x.test>", [(b"Ren\xc3\xa9e", None, b"r", b"x.test")]),
    ],
)
def test_address_list(value: bytes, expected: object) -> None:
    assert address_list(value) == expected


def test_rfc5322_appendix_a_1_3() -> None:
    value = (
        b"Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>, "
        b"A Group(Some people):Chris Jones <c@(Chris's host.)public.example>, joe@example.org, "
        b"John <jdoe@one.test> (my dear friend); (the end of the group)"
    )
    assert address_list(value) == [
        (b"Pete", None, b"pete", b"silly.test"),
        (None, None, b"A Group", None),
        (b"Chris Jones", None, b"c", b"public.example"),
        (None, None, b"joe", b"example.org"),
        (b"John", None, b"jdoe", b"one.test"),
        END,
    ]


def test_a_huge_list_is_bounded() -> None:
    found = address_list(b"a@b," * MAX_TOKENS)
    assert found is not None
    assert len(found) <= MAX_TOKENS // 3
