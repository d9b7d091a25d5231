"""The autoconfig, autodiscover and MTA-STS documents, parsed back with xml.etree and
checked field by field against the configuration. There is no published XML schema for
Thunderbird's config-v1.1.xml; the ISPDB checks its files with the rules of its
``tools/validation`` crate (types.rs: required elements, and the values allowed for
``type``, ``socketType`` and ``authentication``), which `ispdb_valid` applies."""

from __future__ import annotations

import contextlib
import hashlib
import pathlib
import types
import xml.etree.ElementTree as ET

import hypothesis
import pytest
from hypothesis import strategies as st

from sansmail.config import Config
from sansmail.mail.autoconfig import (
    MAX_AUTODISCOVER_REQUEST,
    AutodiscoverError,
    Server,
    autodiscover_address,
    autodiscover_xml,
    config_domain,
    mta_sts_text,
    servers,
    thunderbird_xml,
)
from sansmail.mail.dnsrecords import mta_sts_policy, records

PRODUCTION = {
    "smtp": (("0.0.0.0", 25),),
    "submission": (("0.0.0.0", 587),),
    "submissions": (("127.0.0.1", 10465), ("0.0.0.0", 465)),
    "imap": (("0.0.0.0", 143),),
    "imaps": (("0.0.0.0", 993),),
    "pop3s": (("0.0.0.0", 995),),
}
NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"


def config(listen: dict[str, tuple[tuple[str, int], ...]] | None = None) -> Config:
    return Config(
        source=None,
        hostname="MX.Example.test.",
        domains=("example.test", "other.example"),
        data_dir=pathlib.Path("/nonexistent"),
        listen=types.MappingProxyType(PRODUCTION if listen is None else listen),
    )


def ispdb_valid(root: ET.Element) -> None:
    """thunderbird/autoconfig tools/validation/autoconfig_validate/src/types.rs."""
    assert root.tag == "clientConfig"
    assert root.get("version")
    (provider,) = root.findall("emailProvider")
    assert provider.get("id")
    for name in ("displayName", "displayShortName"):
        assert len(provider.findall(name)) == 1
        assert provider.findtext(name)
    assert provider.findall("domain")
    for kind, types_allowed in (("incomingServer", {"imap", "pop3"}), ("outgoingServer", {"smtp"})):
        for server in provider.findall(kind):
            assert server.get("type") in types_allowed
            assert server.findtext("hostname")
            assert 0 < int(server.findtext("port") or "") < 65536
            assert server.findtext("socketType") in {"plain", "SSL", "STARTTLS"}
            assert server.findtext("username")
            assert server.findtext("authentication") in {
                "password-cleartext",
                "password-encrypted",
                "NTLM",
                "GSSAPI",
                "client-IP-address",
                "TLS-client-cert",
                "OAuth2",
                "None",
            }


def served(root: ET.Element, kind: str) -> list[tuple[str | None, str, int, str]]:
    provider = root.find("emailProvider")
    assert provider is not None
    return [
        (
            s.get("type"),
            s.findtext("hostname") or "",
            int(s.findtext("port") or 0),
            s.findtext("socketType") or "",
        )
        for s in provider.findall(kind)
    ]


def test_servers_follow_the_listen_table_best_first() -> None:
    assert servers(config()) == (
        Server("imap", "mx.example.test", 993, "SSL"),
        Server("imap", "mx.example.test", 143, "STARTTLS"),
        Server("pop3", "mx.example.test", 995, "SSL"),
        # The first address that is not loopback, as the SRV record has it.
        Server("smtp", "mx.example.test", 465, "SSL"),
        Server("smtp", "mx.example.test", 587, "STARTTLS"),
    )
    # The embedded default's unprivileged loopback ports are announced as configured.
    assert servers(config({"imap": (("127.0.0.1", 2143),)})) == (
        Server("imap", "mx.example.test", 2143, "STARTTLS"),
    )
    assert servers(config({"smtp": (("0.0.0.0", 25),)})) == ()


def test_thunderbird_xml_field_by_field() -> None:
    text = thunderbird_xml(config(), "example.test")
    assert text.startswith(b"<?xml version='1.0' encoding='utf-8'?>\n<clientConfig")
    root = ET.fromstring(text)
    ispdb_valid(root)
    provider = root.find("emailProvider")
    assert provider is not None
    assert provider.get("id") == "example.test"
    assert [d.text for d in provider.findall("domain")] == ["example.test"]
    assert provider.findtext("displayShortName") == "example"
    assert served(root, "incomingServer") == [
        ("imap", "mx.example.test", 993, "SSL"),
        ("imap", "mx.example.test", 143, "STARTTLS"),
        ("pop3", "mx.example.test", 995, "SSL"),
    ]
    assert served(root, "outgoingServer") == [
        ("smtp", "mx.example.test", 465, "SSL"),
        ("smtp", "mx.example.test", 587, "STARTTLS"),
    ]
    for server in provider.findall("incomingServer") + provider.findall("outgoingServer"):
        assert server.findtext("username") == "%EMAILADDRESS%"
        assert server.findtext("authentication") == "password-cleartext"
    # The incoming servers come first: Thunderbird reads them in document order.
    tags = [child.tag for child in provider if child.tag.endswith("Server")]
    assert tags == ["incomingServer"] * 3 + ["outgoingServer"] * 2


def test_config_domain_from_address_or_host() -> None:
    c = config()
    assert config_domain(c, address="Alice@Example.TEST", host=None) == "example.test"
    assert config_domain(c, address="alice@elsewhere.test", host="example.test") is None
    assert config_domain(c, address="not an address", host=None) is None
    assert config_domain(c, address=None, host="autoconfig.other.example:443") == "other.example"
    assert config_domain(c, address="", host="Example.Test.") == "example.test"
    assert config_domain(c, address=None, host="autoconfig.elsewhere.test") is None
    assert config_domain(c, address=None, host="[::1]:80") is None
    assert config_domain(c, address=None, host=None) is None


REQUEST = b"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>alice@example.test</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>
"""

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<Autodiscover><Request><EMailAddress>&lol3;</EMailAddress></Request></Autodiscover>
"""


def test_autodiscover_request_address() -> None:
    assert autodiscover_address(REQUEST) == "alice@example.test"
    # No namespace at all, as some clients send it.
    bare = (
        b"<Autodiscover><Request><EMailAddress> bob@x.test </EMailAddress></Request></Autodiscover>"
    )
    assert autodiscover_address(bare) == "bob@x.test"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (BILLION_LAUGHS, "DOCTYPE"),
        (b'<!DOCTYPE a SYSTEM "file:///etc/passwd"><a>&x;</a>', "DOCTYPE"),
        (b"<!doctype a><a/>", "DOCTYPE"),
        # In UTF-16 the DOCTYPE's octets are not those the check looks for.
        pytest.param(
            BILLION_LAUGHS.replace(b'"1.0"', b'"1.0" encoding="UTF-16"').decode().encode("utf-16"),
            "NUL",
            id="utf-16-declared",
        ),
        pytest.param(
            b"\xff\xfe" + b"<!DOCTYPE a><a/>".decode().encode("utf-16-le"), "NUL", id="utf-16-bom"
        ),
        (b"<Autodiscover><Request/></Autodiscover>", "no EMailAddress"),
        (b"<Autodiscover><EMailAddress>", "not well-formed"),
        (b"", "not well-formed"),
        (b"<a>" + b" " * MAX_AUTODISCOVER_REQUEST + b"</a>", "over"),
    ],
)
def test_autodiscover_refused_requests(body: bytes, why: str) -> None:
    with pytest.raises(AutodiscoverError, match=why):
        autodiscover_address(body)


FRAGMENTS = st.sampled_from(
    [
        *(b"<a>", b"</a>", b"<EMailAddress>", b"</EMailAddress>", b"&amp;", b"&x;", b"&#0;"),
        *(b"<!ENTITY x 'y'>", b"<!DOCTYPE", b"<![CDATA[", b"]]>", b"<?xml version='1.0'?>", b"@"),
    ]
)


@hypothesis.given(st.lists(st.one_of(FRAGMENTS, st.binary(max_size=20)), max_size=20))
def test_autodiscover_any_bytes_an_address_or_the_error(parts: list[bytes]) -> None:
    with contextlib.suppress(AutodiscoverError):
        assert autodiscover_address(b"".join(parts))


def test_autodiscover_response_field_by_field() -> None:
    root = ET.fromstring(autodiscover_xml(config(), "alice@example.test"))
    assert (
        root.tag
        == "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}Autodiscover"
    )
    response = root.find(f"{NS}Response")
    assert response is not None
    assert response.findtext(f"{NS}User/{NS}EMailAddress") == "alice@example.test"
    account = response.find(f"{NS}Account")
    assert account is not None
    assert account.findtext(f"{NS}AccountType") == "email"
    assert account.findtext(f"{NS}Action") == "settings"
    protocols = [
        {child.tag.removeprefix(NS): child.text for child in p}
        for p in account.findall(f"{NS}Protocol")
    ]
    common = {
        "Server": "mx.example.test",
        "DomainRequired": "off",
        "LoginName": "alice@example.test",
        "SPA": "off",
        "SSL": "on",
        "AuthRequired": "on",
    }
    assert protocols == [
        {"Type": "IMAP", "Port": "993", "Encryption": "SSL", **common},
        {
            "Type": "SMTP",
            "Port": "465",
            "Encryption": "SSL",
            "UsePOPAuth": "off",
            "SMTPLast": "off",
            **common,
        },
    ]
    # STARTTLS only: port 143 and 587, Encryption TLS; without IMAP, POP3.
    root = ET.fromstring(
        autodiscover_xml(
            config({"pop3": (("0.0.0.0", 110),), "submission": (("0.0.0.0", 587),)}),
            "a@example.test",
        )
    )
    got = [
        (p.findtext(f"{NS}Type"), p.findtext(f"{NS}Port"), p.findtext(f"{NS}Encryption"))
        for p in root.iter(f"{NS}Protocol")
    ]
    assert got == [("POP3", "110", "TLS"), ("SMTP", "587", "TLS")]


def test_autodiscover_response_escapes_the_address() -> None:
    address = '"a<b>&c"@example.test'
    root = ET.fromstring(autodiscover_xml(config(), address))
    assert root.findtext(f"{NS}Response/{NS}User/{NS}EMailAddress") == address


def test_mta_sts_policy_for_our_domains_only() -> None:
    c = config()
    policy = mta_sts_text(c, "mta-sts.example.test")
    assert policy == mta_sts_policy("mx.example.test")
    assert policy == "version: STSv1\r\nmode: testing\r\nmx: mx.example.test\r\nmax_age: 86400\r\n"
    assert mta_sts_text(c, "MTA-STS.Other.Example.:443") == policy
    assert mta_sts_text(c, "example.test") is None
    assert mta_sts_text(c, "mta-sts.elsewhere.test") is None
    assert mta_sts_text(c, "") is None
    # The same text dns-records digests into the _mta-sts TXT record's id.
    txt = next(r for r in records(c, "example.test", ()) if r.name == "_mta-sts.example.test")
    assert hashlib.sha256(policy.encode()).hexdigest()[:20] in txt.value
