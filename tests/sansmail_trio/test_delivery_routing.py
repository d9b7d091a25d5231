"""Outbound delivery, continued: the TLS levels, transport and relayhost (with AUTH),
delay warnings, SRS bounces sent back, and the queue commands against a running server."""

from __future__ import annotations

import pathlib
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import trio
import trustme
from delivery_helpers import (
    FAILING,
    PEER,
    Sink,
    free_port,
    start_ours,
    start_peer,
    submit,
    wait_for,
)
from dns_server import DNSServer

from sansmail.mail import srs
from sansmail.mail.address import parse_address
from sansmail.mail.envelope import QueuedMessage
from sansmail.storage.keys import load_or_create_srs_key
from sansmail.storage.queue import QueueStore


@pytest.fixture
def port() -> int:
    return free_port(PEER)


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    with DNSServer() as server:
        server.add("peer.test", "MX", "10 mx.peer.test.")
        server.add("mx.peer.test", "A", PEER)
        server.add("fail.test", "MX", "10 mx.fail.test.")
        server.add("mx.fail.test", "A", FAILING)
        yield server


async def test_tls_encrypt_defers_rather_than_send_in_clear(
    nursery: trio.Nursery, tmp_path: pathlib.Path, dns: DNSServer, port: int, tls_ca: trustme.CA
) -> None:
    ours = await start_ours(nursery, tmp_path, dns, port, tls_ca, delivery='tls = "encrypt"')
    with Sink(FAILING, port) as sink:  # aiosmtpd here offers no STARTTLS
        await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["x@fail.test"])
        (queued,) = await wait_for(
            lambda: [m for m in ours.queued() if m.recipients[0].attempts], what="a deferral"
        )
    assert "TLS" in queued.recipients[0].last_reason
    assert not sink.received


async def test_tls_may_sends_in_clear_when_not_offered(
    nursery: trio.Nursery, tmp_path: pathlib.Path, dns: DNSServer, port: int, tls_ca: trustme.CA
) -> None:
    ours = await start_ours(nursery, tmp_path, dns, port, tls_ca)
    with Sink(FAILING, port) as sink:
        await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["x@fail.test"])
        await wait_for(lambda: sink.received, what="delivery in plain text")


async def test_tls_verify_checks_the_certificate_against_the_mx_name(
    nursery: trio.Nursery, tmp_path: pathlib.Path, dns: DNSServer, port: int, tls_ca: trustme.CA
) -> None:
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    peer = await start_peer(nursery, tmp_path, port, tls_ca)
    ours = await start_ours(
        nursery,
        tmp_path,
        dns,
        port,
        tls_ca,
        delivery=f'tls = "verify"\ntls_ca_file = "{ca_file}"',
    )
    await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["bob@peer.test"])
    (message,) = await wait_for(lambda: peer.messages("bob@peer.test"), what="delivery")
    assert b"with ESMTPS" in message


async def test_tls_verify_refuses_a_certificate_for_another_name(
    nursery: trio.Nursery, tmp_path: pathlib.Path, dns: DNSServer, port: int, tls_ca: trustme.CA
) -> None:
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    peer = await start_peer(nursery, tmp_path, port, tls_ca, cert_name="impostor.test")
    ours = await start_ours(
        nursery,
        tmp_path,
        dns,
        port,
        tls_ca,
        delivery=f'tls = "verify"\ntls_ca_file = "{ca_file}"',
    )
    await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["bob@peer.test"])
    (queued,) = await wait_for(
        lambda: [m for m in ours.queued() if m.recipients[0].attempts], what="a deferral"
    )
    assert "TLS" in queued.recipients[0].last_reason or "certificate" in (
        queued.recipients[0].last_reason
    )
    assert not peer.messages("bob@peer.test")


async def test_transport_routes_without_dns(
    nursery: trio.Nursery, tmp_path: pathlib.Path, dns: DNSServer, port: int, tls_ca: trustme.CA
) -> None:
    peer = await start_peer(nursery, tmp_path, port, tls_ca)
    ours = await start_ours(
        nursery,
        tmp_path,
        dns,
        port,
        tls_ca,
        delivery=f'transport = {{ "elsewhere.test" = "[{PEER}]:{port}" }}',
    )
    await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["dan@elsewhere.test"])
    await wait_for(lambda: peer.messages("dan@elsewhere.test"), what="delivery by transport")
    assert not [q for q in dns.queries if "elsewhere" in q.name]


async def test_relayhost_with_auth(
    nursery: trio.Nursery, tmp_path: pathlib.Path, dns: DNSServer, port: int, tls_ca: trustme.CA
) -> None:
    submission = free_port(PEER)
    peer = await start_peer(
        nursery,
        tmp_path,
        port,
        tls_ca,
        listen=f'submission = "{PEER}:{submission}"',
        smtp="reject_sender_login_mismatch = false",
    )
    secret = tmp_path / "relay.password"
    secret.write_text("secret\n")
    ours = await start_ours(
        nursery,
        tmp_path,
        dns,
        port,
        tls_ca,
        delivery=(
            f'relayhost = "[{PEER}]:{submission}"\n'
            'relayhost_username = "bob@peer.test"\n'
            f'relayhost_password_file = "{secret}"'
        ),
    )
    await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["carol@implicit.test"])
    (message,) = await wait_for(lambda: peer.messages("carol@implicit.test"), what="delivery")
    # RFC 3848: ESMTPSA is TLS and AUTH both.
    assert b"with ESMTPSA" in message
    assert not [q for q in dns.queries if "implicit" in q.name]


async def test_relayhost_with_a_wrong_password_defers(
    nursery: trio.Nursery, tmp_path: pathlib.Path, dns: DNSServer, port: int, tls_ca: trustme.CA
) -> None:
    submission = free_port(PEER)
    peer = await start_peer(
        nursery, tmp_path, port, tls_ca, listen=f'submission = "{PEER}:{submission}"'
    )
    secret = tmp_path / "relay.password"
    secret.write_text("wrong\n")
    ours = await start_ours(
        nursery,
        tmp_path,
        dns,
        port,
        tls_ca,
        delivery=(
            f'relayhost = "[{PEER}]:{submission}"\n'
            'relayhost_username = "bob@peer.test"\n'
            f'relayhost_password_file = "{secret}"'
        ),
    )
    await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["carol@implicit.test"])
    (queued,) = await wait_for(
        lambda: [m for m in ours.queued() if m.recipients[0].attempts], what="a deferral"
    )
    assert "535" in queued.recipients[0].last_reason
    assert not peer.messages("carol@implicit.test")


async def test_delay_warning_goes_out_once(
    nursery: trio.Nursery, tmp_path: pathlib.Path, dns: DNSServer, port: int, tls_ca: trustme.CA
) -> None:
    ours = await start_ours(nursery, tmp_path, dns, port, tls_ca, delivery='delay_warning = "1s"')

    def attempts() -> int:
        # The warning (from the null sender) is queued too, on its way to alice.
        return sum(m.recipients[0].attempts for m in ours.queued() if m.sender)

    with Sink(FAILING, port, rcpt={"slow@fail.test": ["451 4.3.0 Try later"]}):
        await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["slow@fail.test"])
        (warning,) = await wait_for(
            lambda: ours.messages("alice@example.test"), what="the delay warning"
        )
        # Every attempt after the warning would send another if the first were not
        # remembered. Wait for attempts rather than for a while: on a loaded machine a
        # fixed sleep may cover no attempt at all. Once attempt seen + 2 has updated the
        # envelope, attempt seen + 1 is over, and a warning it owed is in the queue or,
        # delivered, in the mailbox. A notice is stored before it leaves the queue, so
        # once the queue holds the message alone, the mailbox holds every warning.
        seen = await trio.to_thread.run_sync(attempts)
        await wait_for(lambda: attempts() >= seen + 2, what="two more attempts")
        await wait_for(lambda: len(ours.queued()) == 1, what="no notice in the queue")
        assert len(ours.messages("alice@example.test")) == 1
    assert b"Action: delayed" in warning
    assert b"Subject: Delayed Mail (still being retried)" in warning
    assert b"Will-Retry-Until:" in warning
    assert ours.queued()  # still trying


async def test_bounce_to_an_srs_address_goes_back_to_the_original_sender(
    nursery: trio.Nursery, tmp_path: pathlib.Path, dns: DNSServer, port: int, tls_ca: trustme.CA
) -> None:
    # Loopback is not trusted here: only a good SRS signature may relay.
    ours = await start_ours(nursery, tmp_path, dns, port, tls_ca, mynetworks='["192.0.2.0/24"]')
    key = load_or_create_srs_key(ours.data_dir / "srs.key")
    original = parse_address("eve@fail.test")
    address = srs.forward(original, domain="example.test", key=key, day=srs.today(time.time()))
    forged = srs.forward(original, domain="example.test", key=b"k" * 32, day=srs.today(time.time()))

    def bounce() -> tuple[int, int, int]:
        with smtplib.SMTP("127.0.0.1", ours.port("smtp"), timeout=10) as client:
            client.ehlo()
            client.mail("")
            bad = client.rcpt(str(forged))[0]
            elsewhere = client.rcpt("eve@fail.test")[0]
            good = client.rcpt(str(address))[0]
            client.data(b"Subject: Undelivered Mail Returned to Sender\r\n\r\nsorry\r\n")
            return bad, elsewhere, good

    with Sink(FAILING, port) as sink:
        bad, elsewhere, good = await trio.to_thread.run_sync(bounce)
        assert (bad, elsewhere, good) == (550, 554, 250)
        await wait_for(lambda: sink.received, what="the bounce sent on")
    assert sink.received[0].mail_from in ("", "<>")  # aiosmtpd keeps the brackets
    assert sink.received[0].rcpt_tos == ["eve@fail.test"]


def _cli(config: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sansmail_trio", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


async def test_queue_list_and_flush_against_a_running_server(
    nursery: trio.Nursery, tmp_path: pathlib.Path, dns: DNSServer, port: int, tls_ca: trustme.CA
) -> None:
    ours = await start_ours(
        nursery,
        tmp_path,
        dns,
        port,
        tls_ca,
        delivery='minimal_backoff = "1h"\nmaximal_backoff = "1h"',
    )
    config = tmp_path / "ours" / "sansmail.toml"
    answers = ["451 4.3.0 Greylisted, come back later", "250 2.1.5 OK"]
    with Sink(FAILING, port, rcpt={"grey@fail.test": answers}) as sink:
        await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["grey@fail.test"])
        (queued,) = await wait_for(
            lambda: [m for m in ours.queued() if m.recipients[0].attempts], what="a deferral"
        )
        listed = await trio.to_thread.run_sync(_cli, config, "queue", "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.startswith("-Queue ID-")
        assert queued.queue_id in listed.stdout
        assert "Greylisted, come back later" in listed.stdout
        assert "grey@fail.test" in listed.stdout
        flushed = await trio.to_thread.run_sync(_cli, config, "queue", "flush")
        assert flushed.returncode == 0, flushed.stderr
        # Without the flush the next try would be an hour away.
        await wait_for(lambda: sink.received, what="the flushed retry")
        await wait_for(lambda: not ours.queued(), what="the queue to empty")


async def test_queue_delete_against_a_running_server(
    nursery: trio.Nursery, tmp_path: pathlib.Path, dns: DNSServer, port: int, tls_ca: trustme.CA
) -> None:
    # Retries an hour apart, so none is in flight while the message is deleted: the test
    # makes them happen with a flush instead.
    ours = await start_ours(
        nursery,
        tmp_path,
        dns,
        port,
        tls_ca,
        delivery='minimal_backoff = "1h"\nmaximal_backoff = "1h"',
    )
    config = tmp_path / "ours" / "sansmail.toml"
    later = ["451 4.3.0 Later"]

    def deferred(address: str) -> list[QueuedMessage]:
        return [
            m
            for m in ours.queued()
            if m.recipients[0].attempts and address in m.recipients[0].address
        ]

    with Sink(FAILING, port, rcpt={"grey@fail.test": later, "witness@fail.test": later}) as sink:
        await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["grey@fail.test"])
        (queued,) = await wait_for(lambda: deferred("grey@"), what="a deferral")
        deleted = await trio.to_thread.run_sync(_cli, config, "queue", "delete", queued.queue_id)
        assert deleted.returncode == 0, deleted.stderr
        assert not ours.queued()
        tries = sink.tries("grey@fail.test")
        # A witness for the same host, then a flush, which retries every message the
        # runner still knows of: once the witness has been retried, so would the
        # deleted message have been. Waiting for that rather than for a while proves
        # the runner went on running.
        await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["witness@fail.test"])
        await wait_for(lambda: deferred("witness@"), what="the witness's deferral")
        await trio.to_thread.run_sync(QueueStore(ours.data_dir / "queue").request_flush)
        await wait_for(
            lambda: [m for m in deferred("witness@") if m.recipients[0].attempts >= 2],
            what="the witness's flushed retry",
        )
        assert sink.tries("grey@fail.test") == tries  # no attempt after the delete
    assert not ours.messages("alice@example.test")  # deleted without a bounce


async def test_connection_is_reused_for_the_next_message(
    nursery: trio.Nursery, tmp_path: pathlib.Path, dns: DNSServer, port: int, tls_ca: trustme.CA
) -> None:
    ours = await start_ours(nursery, tmp_path, dns, port, tls_ca)
    with Sink(FAILING, port) as sink:

        def three() -> None:
            for n in range(3):
                submit(ours, "alice@example.test", [f"r{n}@fail.test"])

        await trio.to_thread.run_sync(three)
        await wait_for(lambda: len(sink.received) == 3, what="three deliveries")
    # One EHLO: the second and third message went over the cached connection.
    assert sink.ehlos == 1
