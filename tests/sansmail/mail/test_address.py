"""Tests for sansmail.mail.address: the RFC 5321 path grammar, canonical domains, limits."""

from __future__ import annotations

import ipaddress
import string

import attrs
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import sansmail.mail.address
from sansmail.mail.address import (
    Address,
    AddressError,
    NonASCIIAddressError,
    canonical_domain,
    parse_address,
    read_path,
)


def test_public_surface() -> None:
    assert sorted(sansmail.mail.address.__all__) == [
        "Address",
        "AddressError",
        "MailboxId",
        "NonASCIIAddressError",
        "canonical_domain",
        "parse_address",
        "read_path",
    ]
    assert issubclass(NonASCIIAddressError, AddressError)
    assert issubclass(AddressError, ValueError)


# -- valid paths ---------------------------------------------------------------------------

# (path text, smtputf8, expected local part, expected domain, expected str())
VALID = [
    ("<user@example.org>", False, "user", "example.org", "user@example.org"),
    ("<User.Name@Example.ORG>", False, "User.Name", "example.org", "User.Name@example.org"),
    ("<a@b>", False, "a", "b", "a@b"),
    ("<!#$%&'*+-/=?^_`{|}~@x.y>", False, "!#$%&'*+-/=?^_`{|}~", "x.y", "!#$%&'*+-/=?^_`{|}~@x.y"),
    # "%" and "!" are plain atext: no percent-hack or bang-path routing (RFC 5321 §2.3.11).
    ("<user%remote@local>", False, "user%remote", "local", "user%remote@local"),
    ("<host!user@local>", False, "host!user", "local", "host!user@local"),
    # Quoted local parts: spaces, ">", "@", "," and escapes.
    ('<"a b"@x>', False, "a b", "x", '"a b"@x'),
    ('<"a>b"@x>', False, "a>b", "x", '"a>b"@x'),
    ('<"a@b,c:d"@x>', False, "a@b,c:d", "x", '"a@b,c:d"@x'),
    ('<"a\\"b"@x>', False, 'a"b', "x", '"a\\"b"@x'),
    ('<"a\\\\b"@x>', False, "a\\b", "x", '"a\\\\b"@x'),
    ('<"\\a\\b"@x>', False, "ab", "x", "ab@x"),  # needless escapes vanish
    ('<"abc"@x>', False, "abc", "x", "abc@x"),  # needless quotes vanish
    ('<"a..b"@x>', False, "a..b", "x", '"a..b"@x'),
    ('<".a"@x>', False, ".a", "x", '".a"@x'),
    ('<""@x>', False, "", "x", '""@x'),
    ('<"\\ "@x>', False, " ", "x", '" "@x'),
    # Address literals (RFC 5321 §4.1.3).
    ("<a@[192.0.2.1]>", False, "a", "[192.0.2.1]", "a@[192.0.2.1]"),
    ("<a@[192.000.002.001]>", False, "a", "[192.0.2.1]", "a@[192.0.2.1]"),
    ("<a@[255.255.255.255]>", False, "a", "[255.255.255.255]", "a@[255.255.255.255]"),
    ("<a@[IPv6:2001:db8::1]>", False, "a", "[IPv6:2001:db8::1]", "a@[IPv6:2001:db8::1]"),
    ("<a@[ipv6:2001:DB8:0:0:0:0:0:1]>", False, "a", "[IPv6:2001:db8::1]", "a@[IPv6:2001:db8::1]"),
    ("<a@[IPv6:1:0:2:3:4:5:6:7]>", False, "a", "[IPv6:1:0:2:3:4:5:6:7]", None),
    ("<a@[IPv6:::1]>", False, "a", "[IPv6:::1]", None),
    ("<a@[IPv6:1:2:3:4:5::]>", False, "a", "[IPv6:1:2:3:4:5::]", None),
    ("<a@[IPv6:::ffff:192.0.2.1]>", False, "a", "[IPv6:::ffff:c000:201]", None),
    ("<a@[IPv6:1:2:3:4:5:6:192.0.2.1]>", False, "a", "[IPv6:1:2:3:4:5:6:c000:201]", None),
    ("<a@[x-tag:any!thing]>", False, "a", "[x-tag:any!thing]", "a@[x-tag:any!thing]"),
    ("<a@[Tag:Kept-As-Is]>", False, "a", "[Tag:Kept-As-Is]", None),
    # Source routes are parsed and dropped (RFC 5321 §4.1.1.3, Appendix C).
    ("<@relay.example:user@example.org>", False, "user", "example.org", None),
    ("<@a,@b.c,@D:user@example.org>", False, "user", "example.org", None),
    # Domains: case folded, all-digit and hyphenated labels fine.
    ("<a@EXAMPLE.Org>", False, "a", "example.org", None),
    ("<a@1.2.3.4>", False, "a", "1.2.3.4", None),
    ("<a@a-b--c.x-y>", False, "a", "a-b--c.x-y", None),
    ("<a@xn--bcher-kva.example>", False, "a", "xn--bcher-kva.example", None),
    ("<a@XN--BCHER-KVA.example>", False, "a", "xn--bcher-kva.example", None),
    # UTF-8 under SMTPUTF8 (RFC 6531 §3.3).
    ("<Ü@bücher.example>", True, "Ü", "xn--bcher-kva.example", "Ü@xn--bcher-kva.example"),
    ("<a@BÜCHER.example>", True, "a", "xn--bcher-kva.example", None),
    ("<用户@例子.广告>", True, "用户", "xn--fsqu00a.xn--4rr70v", None),
    ('<"ü ü"@x>', True, "ü ü", "x", '"ü ü"@x'),
    ("<@bücher.example:a@b>", True, "a", "b", None),
    ("<Ω@xn--bcher-kva.example>", True, "Ω", "xn--bcher-kva.example", None),
]


@pytest.mark.parametrize(("text", "utf8", "local", "domain", "wire"), VALID)
def test_valid_path(text: str, utf8: bool, local: str, domain: str, wire: str | None) -> None:
    address, end = read_path(text, smtputf8=utf8)
    assert address == Address(local_part=local, domain=domain)
    assert address.local_part == local
    assert address.domain == domain
    assert end == len(text)
    if wire is not None:
        assert str(address) == wire
    # Parsing the canonical form again gives the same address.
    assert read_path(f"<{address}>", smtputf8=True)[0] == address


@pytest.mark.parametrize(("text", "utf8", "local", "domain", "wire"), VALID)
def test_valid_path_with_surroundings(
    text: str, utf8: bool, local: str, domain: str, wire: str | None
) -> None:
    line = f"MAIL FROM:{text} SIZE=100 BODY=8BITMIME"
    address, end = read_path(line, 10, smtputf8=utf8)
    assert address is not None
    assert (address.local_part, address.domain) == (local, domain)
    assert line[end:] == " SIZE=100 BODY=8BITMIME"


def test_null_path() -> None:
    assert read_path("<>") == (None, 2)
    assert read_path("MAIL FROM:<> SIZE=1", 10) == (None, 12)


@pytest.mark.parametrize("text", ["<Postmaster>", "<postmaster>", "<POSTMASTER>", "<PostMaster>"])
def test_bare_postmaster(text: str) -> None:
    address, end = read_path(text)
    assert address == Address(local_part="Postmaster", domain="")
    assert end == len(text)
    assert address is not None
    assert str(address) == "Postmaster"
    assert address.is_postmaster
    assert address.key == "postmaster@"


def test_postmaster_with_domain_keeps_case() -> None:
    address, _ = read_path("<PostMaster@Example.org>")
    assert address == Address(local_part="PostMaster", domain="example.org")
    assert address is not None
    assert address.is_postmaster
    assert address.key == "postmaster@example.org"


def test_quoted_gt_does_not_end_path() -> None:
    line = 'RCPT TO:<"x> y"@example.org> NOTIFY=NEVER'
    address, end = read_path(line, 8)
    assert address == Address(local_part="x> y", domain="example.org")
    assert line[end:] == " NOTIFY=NEVER"


# -- invalid paths -------------------------------------------------------------------------

INVALID = [
    "",
    "user@example.org",  # no angle brackets
    " <a@b>",  # the caller skips whatever comes before
    "<",
    "<a@b",
    "<a@b ",
    "<a",
    "<a>",  # only Postmaster may go without a domain
    '<"Postmaster">',  # RFC 5321 §4.1.1.3 names the bare word only
    "<@a:Postmaster>",
    "<@>",
    "<@a>",
    "<@a:>",
    "<@a,b:c@d>",  # every route element starts with "@"
    "<@a;c@d>",
    "<@[1.2.3.4]:c@d>",  # At-domain is a Domain, no literals
    "<a@>",
    "<@b>",
    "<a@@b>",
    "<a@b@c>",
    "<a@b.>",  # trailing dot: not SMTP
    "<a@.b>",
    "<a@b..c>",
    "<a@-b>",
    "<a@b->",
    "<a@b_c>",
    "<a@b c>",
    "< a@b>",
    "<a@b >",
    "<a @b>",
    "<a b@c>",
    "<a\t@b>",
    "<a..b@c>",
    "<.a@c>",
    "<a.@c>",
    "<a(comment)@b>",  # RFC 5322 CFWS is not SMTP
    "<a@b(comment)>",
    "<a,b@c>",
    "<a:b@c>",
    "<a;b@c>",
    "<[a]@c>",
    '<"a@c>',  # unterminated quote
    '<"a\\',
    '<"a"b@c>',
    '<a"b"@c>',
    '<"a\x00"@c>',
    '<"a\\\x01"@c>',  # quoted-pairSMTP is %d32-126 only
    '<"a\r"@c>',
    '<"a\n"@c>',
    '<"a\x7f"@c>',
    '<"a\\\x7f"@c>',
    "<a\x00@b>",
    "<a@b\r\n>",
    # Address literals.
    "<a@[]>",
    "<a@[1.2.3]>",
    "<a@[1.2.3.4.5]>",
    "<a@[256.1.1.1]>",
    "<a@[1.2.3.1000]>",
    "<a@[1.2.3.4>",
    "<a@[1.2.3.4]x>",
    "<a@[ 1.2.3.4]>",
    "<a@[IPv6:]>",
    "<a@[IPv6:1.2.3.4]>",
    "<a@[IPv6:2001:db8::g]>",
    "<a@[IPv6:1:2:3:4:5:6:7::]>",  # "::" must stand for at least two groups (§4.1.3)
    "<a@[IPv6:::1:2:3:4:5:6:7]>",
    "<a@[IPv6:1:2:3:4:5::192.0.2.1]>",
    "<a@[IPv6:1:2:3:4:5:6:7:8:9]>",
    "<a@[IPv6:1:2:3:4:5:6:7]>",
    "<a@[IPv6:fe80::1%eth0]>",  # zone ids are not in the grammar
    "<a@[IPv6:12345::1]>",
    "<a@[IPv6:1::2::3]>",
    "<a@[tag-:x]>",  # Standardized-tag is an Ldh-str: ends with a letter or digit
    "<a@[:x]>",
    "<a@[tag:]>",
    "<a@[tag:a\\b]>",
    "<a@[tag:a[b]>",
    "<a@[tag:a b]>",
    # Non-ASCII without SMTPUTF8.
    "<ü@example.org>",
    "<a@bücher.example>",
    '<"ü"@x>',
    "<@bücher.example:a@b>",
]


@pytest.mark.parametrize("text", INVALID)
def test_invalid_path(text: str) -> None:
    with pytest.raises(AddressError) as info:
        read_path(text)
    message = str(info.value)
    assert message
    assert message.isascii()
    assert message.isprintable()


INVALID_EVEN_WITH_UTF8 = [
    '<"a\\ü"@x>',  # quoted-pairSMTP stays ASCII
    "<a@[tag:ü]>",  # dcontent stays ASCII
    "<a@[IPv6:ü::1]>",
    "<\ud800@x>",  # invalid UTF-8 decoded with surrogateescape
    '<"\udcff"@x>',
    "<a@b\udcff.c>",
    "<a@b。c>",  # a full-width dot maps to "." under UTS 46: not one label
    "<a@-ü.example>",
    "<a@ü-.example>",
    "<a@ab--ü.example>",  # hyphens in positions 3 and 4 of a U-label (RFC 5891 §4.2.3.1)
    "<a@\u0301b.example>",  # a label may not start with a combining mark
    "<\uff41 @x>",  # full-width "a" is fine under SMTPUTF8, the space is not
]


@pytest.mark.parametrize("text", INVALID_EVEN_WITH_UTF8)
def test_invalid_with_smtputf8(text: str) -> None:
    with pytest.raises(AddressError) as info:
        read_path(text, smtputf8=True)
    assert str(info.value).isascii()


@pytest.mark.parametrize(
    "text", ["<ü@example.org>", "<a@bücher.example>", '<"a ü"@x>', "<@ü:a@b>", "<a@b.ü>"]
)
def test_non_ascii_without_smtputf8_is_its_own_error(text: str) -> None:
    with pytest.raises(NonASCIIAddressError, match="SMTPUTF8"):
        read_path(text)
    address, _ = read_path(text, smtputf8=True)
    assert address is not None


def test_error_messages_say_what_is_wrong() -> None:
    def message(text: str) -> str:
        with pytest.raises(AddressError) as info:
            read_path(text)
        return str(info.value)

    assert message("<a@b.>") == "domain must not end with '.'"
    assert message("<a b@c>") == "unexpected whitespace in path"
    assert message("<a@b") == "path has no closing '>'"
    assert message("a@b") == "path must start with '<'"
    assert message("<a..b@c>") == "two dots in a row in local part"
    assert message("<a>") == "address has no '@domain'"
    assert "64" in message(f"<{'a' * 65}@b>")
    assert message('<"a\r"@b>') == "control character in quoted local part"


# -- limits (RFC 5321 §4.5.3.1) ------------------------------------------------------------

DOMAIN_189 = f"{'b' * 63}.{'c' * 63}.{'d' * 61}"
DOMAIN_255 = f"{'b' * 63}.{'c' * 63}.{'d' * 63}.{'e' * 63}"


def test_limits_local_part() -> None:
    assert read_path(f"<{'a' * 64}@b>")[0] == Address(local_part="a" * 64, domain="b")
    with pytest.raises(AddressError, match="local part longer than 64"):
        read_path(f"<{'a' * 65}@b>")
    # Quotes count: they are part of the Local-part on the wire.
    assert read_path(f'<"{" " * 62}"@b>')[0] is not None
    with pytest.raises(AddressError, match="local part"):
        read_path(f'<"{" " * 63}"@b>')
    # Octets, not characters.
    assert read_path(f"<{'é' * 32}@b>", smtputf8=True)[0] is not None
    with pytest.raises(AddressError, match="local part"):
        read_path(f"<{'é' * 32}a@b>", smtputf8=True)


def test_limits_label_and_domain() -> None:
    assert canonical_domain("a" * 63 + ".b") == "a" * 63 + ".b"
    with pytest.raises(AddressError, match="63"):
        canonical_domain("a" * 64 + ".b")
    assert canonical_domain(DOMAIN_255) == DOMAIN_255
    with pytest.raises(AddressError, match="255"):
        canonical_domain(DOMAIN_255[:-1] + ".f")
    with pytest.raises(AddressError, match="255"):
        canonical_domain(DOMAIN_255 + ".f")


def test_limits_path() -> None:
    path = f"<{'a' * 64}@{DOMAIN_189}>"
    assert len(path) == 256
    address, end = read_path(path)
    assert address is not None
    assert end == 256
    with pytest.raises(AddressError, match=r"256|254"):
        read_path(f"<{'a' * 64}@{DOMAIN_189}x>")
    # A source route counts toward the path even though it is dropped.
    route = "@" + "r" * 60 + ","
    short = f"<{route * 3}@r:{'a' * 10}@example.org>"
    assert read_path(short)[0] == Address(local_part="a" * 10, domain="example.org")
    long = f"<{route * 4}@r:{'a' * 10}@example.org>"
    assert len(long) > 256
    with pytest.raises(AddressError, match="path longer than 256"):
        read_path(long)


def test_limits_on_the_constructor() -> None:
    with pytest.raises(AddressError):
        Address(local_part="a" * 65, domain="b")
    # 64 + "@" + 190 does not fit in a 256-octet path with its "<" and ">".
    with pytest.raises(AddressError, match="254"):
        Address(local_part="a" * 64, domain=DOMAIN_189 + "x")
    assert str(Address(local_part="a" * 64, domain=DOMAIN_189)) == f"{'a' * 64}@{DOMAIN_189}"


# -- Address, canonical_domain, parse_address -----------------------------------------------


def test_address_folds_domain_on_construction() -> None:
    assert Address(local_part="a", domain="Bücher.DE").domain == "xn--bcher-kva.de"
    assert Address(local_part="a", domain="[ipv6:2001:DB8::0:1]").domain == "[IPv6:2001:db8::1]"
    assert Address.from_parts("a", "EXAMPLE.org") == Address(local_part="a", domain="example.org")
    with pytest.raises(AddressError):
        Address(local_part="a", domain="example.org.")


@pytest.mark.parametrize("local", ["a\r\nRCPT TO:<x@y>", "a\x00", "\t", "\x7f", "\ud800"])
def test_address_refuses_unsendable_local_parts(local: str) -> None:
    with pytest.raises(AddressError):
        Address(local_part=local, domain="example.org")


def test_address_without_domain_must_be_postmaster() -> None:
    with pytest.raises(AddressError, match="Postmaster"):
        Address(local_part="user", domain="")
    with pytest.raises(AddressError, match="Postmaster"):
        Address(local_part="postmaster", domain="")


def test_address_is_frozen_and_hashable() -> None:
    a = Address(local_part="a", domain="b")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        a.local_part = "c"  # type: ignore[misc]
    assert {a, Address(local_part="a", domain="B")} == {a}


def test_properties() -> None:
    a = Address(local_part="Ünïcode.User", domain="xn--bcher-kva.example")
    assert a.needs_smtputf8
    assert a.domain_unicode == "bücher.example"
    assert a.key == "ünïcode.user@xn--bcher-kva.example"
    assert not a.is_postmaster
    b = Address(local_part="User", domain="EXAMPLE.org")
    assert not b.needs_smtputf8
    assert b.domain_unicode == "example.org"
    assert b.key == "user@example.org"
    assert b != Address(local_part="user", domain="example.org")  # local parts keep case
    # An A-label that IDNA 2008 refuses is shown as it is rather than failing.
    assert Address(local_part="a", domain="xn--zz.example").domain_unicode == "xn--zz.example"
    assert Address(local_part="a", domain="[192.0.2.1]").domain_unicode == "[192.0.2.1]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.org", "example.org"),
        ("Example.ORG", "example.org"),
        ("Bücher.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.org", "example.org"),  # full-width folds
        ("[192.0.2.01]", "[192.0.2.1]"),
        ("[IPv6:0:0::1]", "[IPv6:::1]"),
    ],
)
def test_canonical_domain(text: str, expected: str) -> None:
    assert canonical_domain(text) == expected
    assert canonical_domain(expected) == expected


@pytest.mark.parametrize(
    "text", ["", ".", "example.org.", " example.org", "a b", "a@b", "-a", "[1.2.3]", "a..b"]
)
def test_canonical_domain_invalid(text: str) -> None:
    with pytest.raises(AddressError):
        canonical_domain(text)


def test_idn_spellings_compare_equal() -> None:
    spellings = [
        "<a@bücher.example>",
        "<a@Bücher.Example>",
        "<a@BÜCHER.EXAMPLE>",
        "<a@xn--bcher-kva.example>",
        "<a@XN--BCHER-KVA.EXAMPLE>",
    ]
    addresses = {read_path(text, smtputf8=True)[0] for text in spellings}
    assert len(addresses) == 1
    assert read_path("<a@xn--bcher-kva.example>")[0] in addresses


def test_parse_address() -> None:
    assert parse_address("user@Example.org") == Address(local_part="user", domain="example.org")
    assert parse_address('"a b"@x') == Address(local_part="a b", domain="x")
    assert parse_address("ü@bücher.example").domain == "xn--bcher-kva.example"
    assert parse_address("a@[192.0.2.1]").domain == "[192.0.2.1]"
    with pytest.raises(NonASCIIAddressError):
        parse_address("ü@x", smtputf8=False)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "user",
        "Postmaster",
        "<a@b>",
        "a@b ",
        " a@b",
        "a@b>",
        "a@",
        "@b",
        "a@b.",
        "a@b,c",
        "a b@c",
    ],
)
def test_parse_address_invalid(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text)


# -- properties ----------------------------------------------------------------------------

_ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
_NON_ASCII = st.characters(min_codepoint=0x80, codec="utf-8")  # no surrogates
_ATOM = st.text(alphabet=st.one_of(st.sampled_from(_ATEXT), _NON_ASCII), min_size=1, max_size=8)
_LOCAL = st.one_of(
    st.lists(_ATOM, min_size=1, max_size=4).map(".".join),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
    st.text(
        alphabet=st.one_of(st.characters(min_codepoint=32, max_codepoint=126), _NON_ASCII),
        max_size=12,
    ),
)
_LDH_LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,12}[A-Za-z0-9])?", fullmatch=True)
_U_LABEL = st.sampled_from(["bücher", "BÜCHER", "例子", "пример", "δοκιμή", "xn--bcher-kva"])
_NAME = st.lists(st.one_of(_LDH_LABEL, _U_LABEL), min_size=1, max_size=4).map(".".join)
_GENERAL = st.from_regex(r"[A-Za-z0-9-]{0,5}[A-Za-z0-9]:[!-Z^-~]{1,10}", fullmatch=True)
_DOMAIN = st.one_of(
    _NAME,
    st.ip_addresses(v=4).map(lambda ip: f"[{ip}]"),
    st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip.exploded}]"),
    st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip}]"),
    _GENERAL.filter(lambda s: not s.lower().startswith("ipv6:")).map(lambda s: f"[{s}]"),
)


@st.composite
def addresses(draw: st.DrawFn) -> Address:
    local = draw(_LOCAL)
    domain = draw(_DOMAIN)
    try:
        return Address(local_part=local, domain=domain)
    except AddressError:
        assume(False)
        raise  # unreachable: assume(False) raises


@settings(deadline=None, max_examples=300)
@given(addresses(), st.text(max_size=10))
def test_round_trip(address: Address, tail: str) -> None:
    path = f"<{address}>"
    line = f"RCPT TO:{path}{tail}"
    assert read_path(line, 8, smtputf8=True) == (address, 8 + len(path))
    if not address.needs_smtputf8:
        assert read_path(line, 8) == (address, 8 + len(path))
    else:
        with pytest.raises(NonASCIIAddressError):
            read_path(line, 8)
    assert parse_address(str(address)) == address
    assert canonical_domain(address.domain) == address.domain
    assert address.domain.isascii()


@settings(deadline=None, max_examples=150)
@given(addresses())
def test_domain_unicode_folds_back(address: Address) -> None:
    assert canonical_domain(address.domain_unicode) == address.domain


_PATHISH = st.lists(
    st.one_of(
        st.sampled_from(list('<>@."\\[]:,; \t\r\x00aZ9-_üß例。\ud800\u0301')),
        st.sampled_from(["IPv6:", "xn--", "Postmaster", "::", "1.2.3.4", "ffff", "tag:"]),
    ),
    max_size=30,
).map("".join)
_TEXT = st.one_of(st.text(max_size=40), _PATHISH, _PATHISH.map(lambda s: "<" + s))


@settings(deadline=None, max_examples=1000)
@given(_TEXT, st.booleans())
def test_arbitrary_text_raises_only_address_error(text: str, utf8: bool) -> None:
    for parse in (
        lambda: read_path(text, smtputf8=utf8),
        lambda: parse_address(text, smtputf8=utf8),
        lambda: canonical_domain(text),
    ):
        try:
            parse()
        except AddressError as exc:
            message = str(exc)
        else:
            continue
        assert message.isascii()
        assert message.isprintable()


@settings(deadline=None, max_examples=1000)
@given(_TEXT, st.booleans())
def test_parse_str_parse_is_stable(text: str, utf8: bool) -> None:
    try:
        address, end = read_path(text, smtputf8=utf8)
    except AddressError:
        return
    assert text[end - 1] == ">"
    if address is None:
        assert text.startswith("<>")
        return
    wire = str(address)
    again, _ = read_path(f"<{wire}>", smtputf8=True)
    assert again == address
    assert again is not None
    assert str(again) == wire
    # For ASCII input the canonical form never grows, so whatever fitted the limits as sent
    # still fits. (An A-label can be longer than its U-label, hence the guard.)
    if text[:end].isascii():
        assert len(f"<{wire}>") <= end


def test_ipv6_canonical_matches_ipaddress() -> None:
    # Spot check that a literal reads back as the address ipaddress would compute.
    for text in ["2001:db8::1", "::", "fe80::1:2", "1:2:3:4:5:6:7:8"]:
        (address, _) = read_path(f"<a@[IPv6:{text}]>")
        assert address is not None
        assert address.domain == f"[IPv6:{ipaddress.IPv6Address(text).compressed}]"


def test_a_utf8_domain_is_kept_as_given_beside_its_canonical_form() -> None:
    address, _ = read_path("<jörg@Bücher.example>", smtputf8=True)
    assert address is not None
    assert address.domain == "xn--bcher-kva.example"
    assert address.as_given == "jörg@Bücher.example"
    assert str(address) == "jörg@xn--bcher-kva.example"
    # The spelling is not part of who the address is.
    assert address == parse_address("jörg@xn--bcher-kva.example")
    ascii_only, _ = read_path("<Bob@Example.ORG>")
    assert ascii_only is not None
    assert ascii_only.as_given == "Bob@example.org"


def test_the_domain_as_given_must_spell_the_domain() -> None:
    with pytest.raises(AddressError, match="not a spelling"):
        Address(local_part="a", domain="example.org", domain_as_given="bücher.example")
