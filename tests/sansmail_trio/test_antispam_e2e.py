"""The sender checks through a real `serve()`: smtplib sends from 127.0.0.1 (outside
mynetworks here), the server asks the tests' DNS server on 127.0.0.1 for PTR, A, TXT
(SPF, DKIM keys, DMARC) with its real resolver, and the stored message carries the
Authentication-Results they add up to; the refusals come back to smtplib."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest
import trio
from dns_server import DNSServer, dns_server_fixture  # noqa: F401  (fixture)
from trio_helpers import StartServer

from sansmail.mail import dkim

OUTSIDE = ["192.0.2.0/24"]
KEY, KEY_TXT = dkim.generate("rsa")
MESSAGE = (
    b"From: Ann <ann@sender.test>\r\nTo: alice@example.test\r\nSubject: hi\r\n"
    b"Message-ID: <1@sender.test>\r\n\r\nHello Alice.\r\n"
)


def publish(dns: DNSServer) -> None:
    dns.add("1.0.0.127.in-addr.arpa", "PTR", "mail.sender.test.")
    dns.add("mail.sender.test", "A", "127.0.0.1")
    dns.add("sender.test", "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    # A 2048-bit key's record is longer than one 255-octet string: split, as zones do.
    chunks = [KEY_TXT[i : i + 200] for i in range(0, len(KEY_TXT), 200)]
    dns.add("s1._domainkey.sender.test", "TXT", " ".join(f'"{c}"' for c in chunks))
    dns.add("_dmarc.sender.test", "TXT", '"v=DMARC1; p=reject"')


def signed(message: bytes = MESSAGE) -> bytes:
    return dkim.sign(message, domain="sender.test", selector="s1", private_key=KEY) + message


def send(port: int, sender: str, message: bytes) -> Any:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mail.sender.test")
        return client.sendmail(sender, ["alice@example.test"], message)


def results(stored: bytes) -> str:
    head = stored.partition(b"\n\n")[0].decode()
    unfolded = head.replace("\n ", " ").replace("\n\t", " ")
    [line] = [x for x in unfolded.split("\n") if x.startswith("Authentication-Results:")]
    return line


async def server_with_checks(start_server: StartServer, dns: DNSServer, **antispam: Any) -> Any:
    checks = {"spf": "tag", "dkim": "tag", "dmarc": "tag", "reverse_dns": "tag"}
    checks.update(antispam)
    return await start_server(mynetworks=OUTSIDE, antispam=checks, nameservers=[dns.host_port])


async def test_incoming_mail_carries_every_result(
    start_server: StartServer, dns_server: DNSServer
) -> None:
    publish(dns_server)
    server = await server_with_checks(start_server, dns_server)
    forged = b"Authentication-Results: mx.example.test; dkim=pass header.d=bank.test\r\n"
    assert (
        await trio.to_thread.run_sync(
            send, server.port, "ann@sender.test", signed(forged + MESSAGE)
        )
        == {}
    )
    [stored] = server.new_messages("alice@example.test")
    value = results(stored)
    assert value.startswith("Authentication-Results: mx.example.test;")
    for part in (
        "spf=pass smtp.mailfrom=ann@sender.test",
        "dkim=pass header.d=sender.test header.s=s1",
        "dmarc=pass",
        "header.from=sender.test",
        "iprev=pass (mail.sender.test) policy.iprev=127.0.0.1",
    ):
        assert part in value
    assert b"bank.test" not in stored  # the forged field claiming our name is gone
    assert b"\nReceived-SPF: pass " in stored
    assert b"Received: from mail.sender.test (mail.sender.test [127.0.0.1])" in stored
    asked = {(q.name.rstrip(".").lower(), q.rdtype) for q in dns_server.queries}
    assert ("s1._domainkey.sender.test", "TXT") in asked
    assert ("_dmarc.sender.test", "TXT") in asked


async def test_spf_reject_refuses_the_sender(
    start_server: StartServer, dns_server: DNSServer
) -> None:
    publish(dns_server)
    dns_server.remove("sender.test", "TXT")
    dns_server.add("sender.test", "TXT", '"v=spf1 -all"')
    server = await server_with_checks(start_server, dns_server, spf="reject")
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        await trio.to_thread.run_sync(send, server.port, "ann@sender.test", MESSAGE)
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.23 ")


async def test_dmarc_enforce_refuses_at_the_end_of_data(
    start_server: StartServer, dns_server: DNSServer
) -> None:
    publish(dns_server)
    dns_server.remove("sender.test", "TXT")
    dns_server.add("sender.test", "TXT", '"v=spf1 -all"')
    # SPF tagged only: the unsigned message fails DMARC p=reject at its end.
    server = await server_with_checks(start_server, dns_server, dmarc="enforce")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await trio.to_thread.run_sync(send, server.port, "ann@sender.test", MESSAGE)
    assert refused.value.smtp_code == 550
    assert b"DMARC" in refused.value.smtp_error
    assert server.new_messages("alice@example.test") == []


async def test_an_unconfirmed_client_is_refused_at_rcpt(
    start_server: StartServer, dns_server: DNSServer
) -> None:
    publish(dns_server)
    dns_server.remove("mail.sender.test", "A")
    dns_server.add("mail.sender.test", "A", "127.0.0.9")  # the PTR name points elsewhere
    server = await server_with_checks(start_server, dns_server, reverse_dns="reject")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await trio.to_thread.run_sync(send, server.port, "ann@sender.test", signed())
    [(code, text)] = refused.value.recipients.values()
    assert (code, text[:6]) == (550, b"5.7.25")
