"""The records `dns-records` prints, byte for byte, and the pure check against answers."""

from __future__ import annotations

import ipaddress
import pathlib
import types

import pytest

from sansmail.config import Config, DeliveryConfig, DKIMConfig, NextHop
from sansmail.mail import dkim
from sansmail.mail.dnsquery import DnsAnswer, DnsQuery, DnsStatus, drive, reverse_name
from sansmail.mail.dnsrecords import (
    DkimKey,
    Record,
    Status,
    check,
    failing,
    mta_sts_policy,
    records,
    txt_strings,
    zone_text,
)

LONG_KEY = "v=DKIM1; k=rsa; p=" + "A" * 300


def config(**listen: tuple[tuple[str, int], ...]) -> Config:
    return Config(
        source=None,
        hostname="mx.example.test",
        domains=("example.test",),
        data_dir=pathlib.Path("/nonexistent"),
        listen=types.MappingProxyType(listen),
    )


def lines(found: tuple[Record, ...], kind: str) -> list[str]:
    return [record.line for record in found if record.kind == kind]


def test_every_record_byte_for_byte():
    found = records(
        config(smtp=(("0.0.0.0", 25),), submission=(("0.0.0.0", 587),)),
        "Example.TEST.",
        [DkimKey(selector="sansmail", txt="v=DKIM1; k=ed25519; p=abc=")],
    )
    policy_id = lines(found, "MTA-STS")[0].split("id=")[1].rstrip('"')
    assert [record.line for record in found] == [
        "example.test. IN MX 10 mx.example.test.",
        'example.test. IN TXT "v=spf1 mx -all"',
        'sansmail._domainkey.example.test. IN TXT "v=DKIM1; k=ed25519; p=abc="',
        '_dmarc.example.test. IN TXT "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.test"',
        f'_mta-sts.example.test. IN TXT "v=STSv1; id={policy_id}"',
        "mta-sts.example.test. IN CNAME mx.example.test.",
        '_smtp._tls.example.test. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@example.test"',
        "_submissions._tcp.example.test. IN SRV 0 0 0 .",
        "_submission._tcp.example.test. IN SRV 10 1 587 mx.example.test.",
        "_imaps._tcp.example.test. IN SRV 0 0 0 .",
        "_imap._tcp.example.test. IN SRV 0 0 0 .",
        "_pop3s._tcp.example.test. IN SRV 0 0 0 .",
        "_pop3._tcp.example.test. IN SRV 0 0 0 .",
        "autoconfig.example.test. IN CNAME mx.example.test.",
        "autodiscover.example.test. IN CNAME mx.example.test.",
    ]
    assert [record.kind for record in found if record.required] == ["MX", "SPF", "DKIM"]
    assert policy_id.isalnum()  # RFC 8461 §3.1: 1 to 32 letters and digits
    assert 1 <= len(policy_id) <= 32


def test_srv_records_only_for_the_configured_listeners_with_their_public_port():
    found = records(
        config(
            imaps=(("127.0.0.1", 993), ("192.0.2.1", 10993)),
            pop3=(("127.0.0.1", 2110),),
            submissions=(("::", 465),),
        ),
        "example.test",
        [],
    )
    assert lines(found, "SRV") == [
        "_submissions._tcp.example.test. IN SRV 0 1 465 mx.example.test.",
        "_submission._tcp.example.test. IN SRV 0 0 0 .",
        "_imaps._tcp.example.test. IN SRV 0 1 10993 mx.example.test.",
        "_imap._tcp.example.test. IN SRV 0 0 0 .",
        "_pop3s._tcp.example.test. IN SRV 0 0 0 .",
        "_pop3._tcp.example.test. IN SRV 30 1 2110 mx.example.test.",
    ]


def test_a_long_dkim_key_is_split_into_255_octet_strings_as_dkim_keygen_prints_it():
    [record] = [r for r in records(config(), "example.test", [DkimKey(selector="s1", txt=LONG_KEY)])
                if r.kind == "DKIM"]  # fmt: skip
    strings = record.value.split('" "')
    assert [len(s.strip('"')) for s in strings] == [255, len(LONG_KEY) - 255]
    assert "".join(s.strip('"') for s in strings) == LONG_KEY
    assert record.line == dkim.dns_record("example.test", "s1", LONG_KEY)
    assert not record.required  # [dkim] selector is "sansmail": s1 is published, not signed with


def test_the_signing_selector_comes_first_and_is_the_required_one():
    keys = [DkimKey(selector="a2024", txt="v=DKIM1; p=x"), DkimKey(selector="sansmail", txt="p=y")]
    found = [r for r in records(config(), "example.test", keys) if r.kind == "DKIM"]
    assert [(r.name, r.required) for r in found] == [
        ("sansmail._domainkey.example.test", True),
        ("a2024._domainkey.example.test", False),
    ]


def test_txt_strings_escape_quotes_and_backslashes():
    assert txt_strings('a"b\\c') == '"a\\"b\\\\c"'
    assert txt_strings("") == '""'


@pytest.mark.parametrize(
    ("relayhost", "spf"),
    [
        (NextHop(host="smtp.relay.test", port=587), "v=spf1 mx a:smtp.relay.test -all"),
        (NextHop(host="192.0.2.7"), "v=spf1 mx ip4:192.0.2.7 -all"),
        (NextHop(host="2001:db8::7"), "v=spf1 mx ip6:2001:db8::7 -all"),
    ],
)
def test_a_relayhost_is_allowed_to_send_by_spf(relayhost, spf):
    base = config()
    relayed = Config(
        source=None,
        hostname=base.hostname,
        domains=base.domains,
        data_dir=base.data_dir,
        delivery=DeliveryConfig(relayhost=relayhost),
    )
    found = records(relayed, "example.test", [])
    assert lines(found, "SPF") == [f'example.test. IN TXT "{spf}"']
    assert "mail leaves through the relayhost" in zone_text(relayed, "example.test", found)


def test_the_mta_sts_policy_and_its_id_change_together():
    policy = mta_sts_policy("mx.example.test")
    assert policy == "version: STSv1\r\nmode: testing\r\nmx: mx.example.test\r\nmax_age: 86400\r\n"
    testing = lines(records(config(), "example.test", [], mta_sts_mode="testing"), "MTA-STS")[0]
    enforce = lines(records(config(), "example.test", [], mta_sts_mode="enforce"), "MTA-STS")[0]
    assert testing != enforce


def test_zone_text_has_comments_the_policy_and_the_ptr_reminder():
    found = records(config(imap=(("127.0.0.1", 2143),)), "example.test", [])
    text = zone_text(config(imap=(("127.0.0.1", 2143),)), "example.test", found)
    assert text.endswith("\n")
    body = [line for line in text.splitlines() if line and not line.startswith(";")]
    assert body == [record.line for record in found]
    assert ";   mode: testing" in text.splitlines()
    assert "dkim keygen example.test" in text  # no key yet: how to make one
    assert "loopback address only" in text
    assert "IN PTR mx.example.test." in text.splitlines()[-1]


def test_a_domain_that_is_also_the_hostname_gets_no_cname_to_itself():
    host = Config(
        source=None,
        hostname="autoconfig.example.test",
        domains=("example.test",),
        data_dir=pathlib.Path("/x"),
        dkim=DKIMConfig(),
    )
    assert lines(records(host, "example.test", []), "AUTOCONFIG") == [
        "autodiscover.example.test. IN CNAME autoconfig.example.test."
    ]


# --- the check ------------------------------------------------------------------------------

KEY = DkimKey(selector="sansmail", txt="v=DKIM1; k=rsa; p=ABCD" + "E" * 300)


def run_check(published: dict[tuple[str, str], DnsAnswer]):
    found = records(config(imaps=(("0.0.0.0", 993),)), "example.test", [KEY])
    asked: list[DnsQuery] = []

    def resolve(query: DnsQuery) -> DnsAnswer:
        asked.append(query)
        return published.get((query.name, query.rtype), DnsAnswer(DnsStatus.NXDOMAIN))

    findings = drive(check(found), resolve)
    assert [(q.name, q.rtype) for q in asked] == [(r.name, r.rtype) for r in found]
    return {(f.record.kind, f.record.name): f for f in findings}


def test_check_reads_ok_across_spellings():
    findings = run_check(
        {
            ("example.test", "MX"): DnsAnswer.of("MX.Example.test"),
            ("example.test", "TXT"): DnsAnswer.of("google-site-verification=1", "v=spf1  MX -all"),
            ("sansmail._domainkey.example.test", "TXT"): DnsAnswer.of(
                "k=rsa;v=DKIM1;  p=AB CD" + "E" * 300
            ),
            ("_imaps._tcp.example.test", "SRV"): DnsAnswer.of("0 1 993 mx.example.test."),
            ("_imap._tcp.example.test", "SRV"): DnsAnswer.of("0 0 0 ."),
            ("autoconfig.example.test", "CNAME"): DnsAnswer.of("mx.example.test"),
        }
    )
    for key in [
        ("MX", "example.test"),
        ("SPF", "example.test"),
        ("DKIM", "sansmail._domainkey.example.test"),
        ("SRV", "_imaps._tcp.example.test"),
        ("SRV", "_imap._tcp.example.test"),
        ("AUTOCONFIG", "autoconfig.example.test"),
    ]:
        assert findings[key].status is Status.OK, key
    assert findings["DMARC", "_dmarc.example.test"].status is Status.MISSING
    assert failing(findings.values()) == []


def test_check_says_what_is_missing_different_or_unknown():
    findings = run_check(
        {
            ("example.test", "MX"): DnsAnswer.of("mx.elsewhere.test"),
            ("example.test", "TXT"): DnsAnswer.of("google-site-verification=1"),
            ("sansmail._domainkey.example.test", "TXT"): DnsAnswer(DnsStatus.TIMEOUT),
            ("_dmarc.example.test", "TXT"): DnsAnswer.of("v=DMARC1; p=none"),
        }
    )
    mx = findings["MX", "example.test"]
    assert (mx.status, mx.published) == (Status.DIFFERENT, ("mx.elsewhere.test",))
    assert findings["SPF", "example.test"].status is Status.MISSING  # other TXT records only
    assert findings["DKIM", "sansmail._domainkey.example.test"].status is Status.FAILED
    assert findings["DMARC", "_dmarc.example.test"].status is Status.DIFFERENT
    assert [f.record.kind for f in failing(findings.values())] == ["MX", "SPF", "DKIM"]


def test_two_spf_records_are_different_even_when_one_is_right():
    findings = run_check({("example.test", "TXT"): DnsAnswer.of("v=spf1 mx -all", "v=spf1 a -all")})
    assert findings["SPF", "example.test"].status is Status.DIFFERENT  # RFC 7208 §4.5


def test_a_different_dkim_key_is_different():
    findings = run_check(
        {("sansmail._domainkey.example.test", "TXT"): DnsAnswer.of("v=DKIM1; k=rsa; p=OTHER")}
    )
    assert findings["DKIM", "sansmail._domainkey.example.test"].status is Status.DIFFERENT


def test_check_with_the_hostname_asks_its_addresses_then_their_ptr_records():
    found = records(config(), "example.test", [KEY])
    asked: list[list[DnsQuery]] = []
    published = {
        ("mx.example.test", "A"): DnsAnswer.of("192.0.2.10"),
        ("mx.example.test", "AAAA"): DnsAnswer.of("2001:db8::25"),
        ("10.2.0.192.in-addr.arpa", "PTR"): DnsAnswer.of("MX.example.test"),
        (reverse_name(ipaddress.ip_address("2001:db8::25")), "PTR"): DnsAnswer.of("host.isp.test"),
    }
    batches = check(found, hostname="mx.example.test.")
    queries = next(batches)
    try:
        while True:
            asked.append(list(queries))
            queries = batches.send(
                [published.get((q.name, q.rtype), DnsAnswer(DnsStatus.NXDOMAIN)) for q in queries]
            )
    except StopIteration as done:
        findings = done.value
    assert [(q.name, q.rtype) for q in asked[0][-2:]] == [
        ("mx.example.test", "A"),
        ("mx.example.test", "AAAA"),
    ]
    assert [q.rtype for q in asked[1]] == ["PTR", "PTR"]
    v4, v6 = findings[-2:]
    assert (v4.record.line, v4.status) == (
        "10.2.0.192.in-addr.arpa. IN PTR mx.example.test.",
        Status.OK,
    )
    assert (v6.status, v6.published, v6.record.required) == (
        Status.DIFFERENT,
        ("host.isp.test",),
        False,
    )
    assert len(findings) == len(found) + 2


def test_check_with_a_hostname_without_address_fails_the_mx():
    found = records(config(), "example.test", [KEY])
    findings = drive(
        check(found, hostname="mx.example.test"),
        lambda query: DnsAnswer(DnsStatus.NXDOMAIN),
    )
    last = findings[-1]
    assert (last.record.kind, last.record.rtype, last.status) == ("MX", "A", Status.MISSING)
    assert last in failing(findings)
