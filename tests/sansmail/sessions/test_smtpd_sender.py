"""The ``[antispam]`` sender checks in the SMTP session (`SenderChecks`), end to end
without sockets: test_smtpd's synchronous adapter answers their DNS questions from a
table, the messages land in a real Maildir, and each policy decision is tried: SPF fail
tagged or refused, temperror, FCrDNS pass/fail/temporary, a DNSBL hit, DKIM pass, fail
and none, DMARC reject and quarantine, trusted clients left alone."""

from __future__ import annotations

import pathlib
from typing import Any

import attrs
import pytest

from sansmail.config._model import DEFAULT_MYNETWORKS, AntispamConfig
from sansmail.mail import dkim
from sansmail.mail.dnsquery import DnsAnswer, DnsQuery, DnsStatus
from sansmail.sessions.smtpd import sender_checks
from tests.sansmail.sessions.test_smtpd import Server

CLIENT = "192.0.2.7"
GOOD_NAME = "mail.sender.example"
KEY, KEY_TXT = dkim.generate("ed25519")
BODY = b"From: Ann <ann@sender.example>\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nhello\r\n"


def signed(message: bytes = BODY) -> bytes:
    return dkim.sign(message, domain="sender.example", selector="s1", private_key=KEY) + message


@attrs.define
class Zone:
    """The DNS as the checks see it: (name, type) -> answer; anything else NXDOMAIN."""

    records: dict[tuple[str, str], DnsAnswer] = attrs.Factory(dict)
    asked: list[DnsQuery] = attrs.Factory(list)

    def add(self, name: str, rtype: str, *values: str) -> None:
        self.records[(name.lower(), rtype)] = DnsAnswer.of(*values)

    def fail(self, name: str, rtype: str) -> None:
        self.records[(name.lower(), rtype)] = DnsAnswer(DnsStatus.SERVFAIL)

    def __call__(self, query: DnsQuery) -> DnsAnswer:
        self.asked.append(query)
        return self.records.get(
            (query.name.lower().rstrip("."), query.rtype), DnsAnswer(DnsStatus.NXDOMAIN)
        )


def good_zone() -> Zone:
    zone = Zone()
    zone.add("7.2.0.192.in-addr.arpa", "PTR", GOOD_NAME)
    zone.add(GOOD_NAME, "A", CLIENT)
    zone.add("sender.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    zone.add("s1._domainkey.sender.example", "TXT", KEY_TXT)
    zone.add("_dmarc.sender.example", "TXT", "v=DMARC1; p=reject")
    return zone


def server(tmp_path: pathlib.Path, **antispam: Any) -> Server:
    made = Server(tmp_path)
    config = attrs.evolve(
        made.config, antispam=attrs.evolve(AntispamConfig(), **antispam), mynetworks=()
    )
    checks = sender_checks(config)
    assert checks is not None
    made.config = config
    made.shared = attrs.evolve(made.shared, config=config, checks=[checks])
    return made


def send(
    made: Server, zone: Zone, message: bytes, *, sender: str = "ann@sender.example"
) -> tuple[bytes, Any]:
    client = made.session(CLIENT, resolve=zone)
    return client.transaction(sender, "alice@example.test", content=message), client


def results(stored: bytes) -> str:
    head = stored.partition(b"\n\n")[0].decode()
    lines = head.replace("\n ", " ").replace("\n\t", " ").split("\n")
    [value] = [line for line in lines if line.startswith("Authentication-Results:")]
    return value


def test_a_good_message_gets_every_result(tmp_path: pathlib.Path) -> None:
    made = server(tmp_path)
    answer, _client = send(made, good_zone(), signed())
    assert answer.startswith(b"250 2.0.0")
    [stored] = made.messages("alice")
    value = results(stored)
    assert value.startswith("Authentication-Results: mx.example.test;")
    assert "spf=pass smtp.mailfrom=ann@sender.example" in value
    assert "dkim=pass header.d=sender.example header.s=s1 header.b=" in value
    assert "dmarc=pass" in value
    assert "header.from=sender.example" in value
    assert "arc=none" in value
    assert f"iprev=pass ({GOOD_NAME}) policy.iprev={CLIENT}" in value
    head = stored.partition(b"\n\n")[0]
    assert b"\nReceived-SPF: pass (mx.example.test: domain of ann@sender.example" in head
    # The Received field names the client by its verified name.
    assert f"Received: from client.example ({GOOD_NAME} [{CLIENT}])".encode() in head


def test_spf_fail_is_tagged_by_default_and_refused_when_asked(tmp_path: pathlib.Path) -> None:
    zone = good_zone()
    zone.add("sender.example", "TXT", "v=spf1 ip4:198.51.100.0/24 -all")
    (tmp_path / "tag").mkdir()
    tagged = server(tmp_path / "tag", dmarc="off")
    answer, _ = send(tagged, zone, BODY)
    assert answer.startswith(b"250")
    assert "spf=fail" in results(tagged.messages("alice")[0])
    (tmp_path / "reject").mkdir()
    refusing = server(tmp_path / "reject", spf="reject", dmarc="off")
    client = refusing.session(CLIENT, resolve=zone)
    client.say("EHLO client.example")
    answer = client.say("MAIL FROM:<ann@sender.example>")
    assert answer.startswith(b"550 5.7.23 SPF: 192.0.2.7 is not allowed to send mail from")
    assert refusing.messages("alice") == []


def test_an_spf_temperror_is_451_when_refusing(tmp_path: pathlib.Path) -> None:
    zone = good_zone()
    zone.fail("sender.example", "TXT")
    made = server(tmp_path, spf="reject", dmarc="off")
    client = made.session(CLIENT, resolve=zone)
    client.say("EHLO client.example")
    assert client.say("MAIL FROM:<ann@sender.example>").startswith(b"451 4.7.24 ")


@pytest.mark.parametrize(
    ("break_it", "reply"),
    [
        (lambda z: z.records.pop(("7.2.0.192.in-addr.arpa", "PTR")), b"550 5.7.25 "),
        (lambda z: z.add(GOOD_NAME, "A", "192.0.2.99"), b"550 5.7.25 "),  # not confirmed
        (lambda z: z.fail("7.2.0.192.in-addr.arpa", "PTR"), b"450 4.7.25 "),
    ],
)
def test_reverse_dns_refuses_at_the_recipient(
    tmp_path: pathlib.Path, break_it: Any, reply: bytes
) -> None:
    zone = good_zone()
    break_it(zone)
    made = server(tmp_path, reverse_dns="reject")
    client = made.session(CLIENT, resolve=zone)
    assert client.say("EHLO client.example").startswith(b"250")
    assert client.say("MAIL FROM:<ann@sender.example>").startswith(b"250")
    assert client.say("RCPT TO:<alice@example.test>").startswith(reply)


def test_reverse_dns_lets_a_confirmed_client_in(tmp_path: pathlib.Path) -> None:
    made = server(tmp_path, reverse_dns="reject")
    answer, _ = send(made, good_zone(), signed())
    assert answer.startswith(b"250")


def test_a_listed_client_is_refused_naming_the_list(tmp_path: pathlib.Path) -> None:
    zone = good_zone()
    zone.add("7.2.0.192.zen.example", "A", "127.0.0.2")
    made = server(tmp_path, dnsbl=("zen.example",))
    client = made.session(CLIENT, resolve=zone)
    client.say("EHLO client.example")
    client.say("MAIL FROM:<ann@sender.example>")
    answer = client.say("RCPT TO:<alice@example.test>")
    assert answer.startswith(b"554 5.7.1 ")
    assert b"zen.example" in answer


def test_dkim_fail_and_none(tmp_path: pathlib.Path) -> None:
    made = server(tmp_path, dmarc="off")
    altered = signed().replace(b"hello", b"HELLO")
    send(made, good_zone(), altered)
    send(made, good_zone(), BODY)
    values = sorted(results(m) for m in made.messages("alice"))
    assert any("dkim=fail" in v for v in values)
    assert any("dkim=none" in v for v in values)


def test_dmarc_enforce_rejects_a_failing_p_reject_message(tmp_path: pathlib.Path) -> None:
    zone = good_zone()
    zone.add("sender.example", "TXT", "v=spf1 -all")
    made = server(tmp_path, dmarc="enforce")
    answer, _ = send(made, zone, BODY)  # unsigned, SPF fail: DMARC fails
    assert b"550 5.7.1 " in answer
    assert b"DMARC" in answer
    assert made.messages("alice") == []
    # Signed by the From domain: it passes whatever SPF says.
    answer, _ = send(made, zone, signed())
    assert answer.startswith(b"250")


def test_dmarc_tag_only_records(tmp_path: pathlib.Path) -> None:
    zone = good_zone()
    zone.add("sender.example", "TXT", "v=spf1 -all")
    made = server(tmp_path)
    answer, _ = send(made, zone, BODY)
    assert answer.startswith(b"250")
    assert "dmarc=fail" in results(made.messages("alice")[0])


def test_dmarc_quarantine_files_the_message_in_junk(tmp_path: pathlib.Path) -> None:
    zone = good_zone()
    zone.add("sender.example", "TXT", "v=spf1 -all")
    zone.add("_dmarc.sender.example", "TXT", "v=DMARC1; p=quarantine")
    made = server(tmp_path, dmarc="enforce")
    answer, _ = send(made, zone, BODY)
    assert answer.startswith(b"250")
    assert made.messages("alice") == []
    junk = tmp_path / "mail" / "example.test" / "alice" / ".Junk" / "new"
    [stored] = [p.read_bytes() for p in junk.iterdir()]
    assert "dmarc=fail" in results(stored)


def test_trusted_clients_are_not_checked(tmp_path: pathlib.Path) -> None:
    made = server(tmp_path, spf="reject", reverse_dns="reject", dmarc="enforce")
    made.shared = attrs.evolve(
        made.shared, config=attrs.evolve(made.config, mynetworks=DEFAULT_MYNETWORKS)
    )
    zone = good_zone()
    client = made.session("127.0.0.1", resolve=zone)
    assert client.transaction("ann@sender.example", "alice@example.test", content=BODY).startswith(
        b"250"
    )
    assert zone.asked == []
    assert b"Authentication-Results" not in made.messages("alice")[0]


def test_forged_results_are_replaced_by_ours(tmp_path: pathlib.Path) -> None:
    made = server(tmp_path)
    forged = b"Authentication-Results: mx.example.test; dkim=pass header.d=bank.example\r\n"
    send(made, good_zone(), forged + BODY)
    [stored] = made.messages("alice")
    assert b"bank.example" not in stored
    assert results(stored).startswith("Authentication-Results: mx.example.test;")


def test_spf_macros_see_the_adapters_clock(tmp_path: pathlib.Path) -> None:
    zone = good_zone()
    zone.records.pop(("sender.example", "TXT"))
    zone.add("sender.example", "TXT", "v=spf1 -all exp=why.sender.example")
    zone.add("why.sender.example", "TXT", "refused at %{t}")  # %{t}: explanations only
    made = server(tmp_path, spf="reject", dmarc="off")
    client = made.session(CLIENT, resolve=zone)
    client.say("EHLO client.example")
    # test_smtpd's adapter gives NOW as the clock.
    answer = client.say("MAIL FROM:<ann@sender.example>")
    assert answer == b"550 5.7.23 refused at 1700000000\r\n"


def test_without_message_checks_the_results_come_at_the_end_of_the_header(
    tmp_path: pathlib.Path,
) -> None:
    made = server(tmp_path, dkim="off", dmarc="off", reverse_dns="tag")
    client = made.session(CLIENT, resolve=good_zone())
    client.say("EHLO client.example")
    client.say("MAIL FROM:<ann@sender.example>")
    client.say("RCPT TO:<alice@example.test>")
    client.say("DATA")
    # Nothing holds the message: its header section is all the checks wait for.
    assert client.session.transaction is not None
    assert client.session.transaction.message is None
    assert client.say(BODY + b".\r\n").startswith(b"250")
    value = results(made.messages("alice")[0])
    assert "spf=pass" in value
    assert "iprev=pass" in value
    assert "dkim" not in value
    assert "dmarc" not in value
