"""Outbound delivery end to end: our server queues, finds the MX through the tests' own
DNS server, delivers to a second sansmail or to aiosmtpd on another loopback address,
retries, bounces, expands aliases. Real sockets, real resolver path, real smtplib.

On both storage backends of our server: Maildir files, or PostgreSQL (its mailboxes,
queue, users and aliases in the database). The remote ends stay on Maildir: they stand
for someone else's server."""

from __future__ import annotations

import email
import email.policy
import pathlib
import smtplib
from collections.abc import Iterator

import pytest
import trio
import trustme
from delivery_helpers import (
    DEAD,
    FAILING,
    PEER,
    Sink,
    free_port,
    import_aliases,
    send,
    start_ours,
    start_peer,
    start_sansmail,
    submit,
    wait_for,
)
from dns_server import DNSServer
from trio_helpers import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS


@pytest.fixture
def port() -> int:
    # One port for every remote host: MX records carry none.
    return free_port(PEER)


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    with DNSServer() as server:
        server.add("peer.test", "MX", "10 mx.peer.test.")
        server.add("mx.peer.test", "A", PEER)
        server.add("fail.test", "MX", "10 mx.fail.test.")
        server.add("mx.fail.test", "A", FAILING)
        server.add("backup.test", "MX", "10 dead.backup.test.")
        server.add("backup.test", "MX", "20 mx.peer.test.")
        server.add("dead.backup.test", "A", DEAD)
        server.add("nullmx.test", "MX", "0 .")
        server.add("implicit.test", "A", PEER)
        yield server


async def test_authenticated_mail_goes_to_the_mx_over_starttls(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    backend_dsn: str | None,
) -> None:
    peer = await start_peer(nursery, tmp_path, port, tls_ca)
    ours = await start_ours(nursery, tmp_path, dns, port, tls_ca, dsn=backend_dsn)
    await trio.to_thread.run_sync(
        submit, ours, "alice@example.test", ["bob@peer.test"], "over the wire"
    )
    (message,) = await wait_for(lambda: peer.messages("bob@peer.test"), what="delivery")
    assert b"over the wire" in message
    # The peer's Received header says the hop was encrypted (RFC 3848 ESMTPS).
    assert b"with ESMTPS" in message
    assert b"Return-Path: <alice@example.test>" in message
    await wait_for(lambda: not ours.queued(), what="the queue to empty")
    asked = {(q.name, q.rdtype) for q in dns.queries}
    assert ("peer.test", "MX") in asked or ("peer.test.", "MX") in asked


async def test_mx_preference_falls_back_to_the_next_host(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    backend_dsn: str | None,
) -> None:
    peer = await start_peer(nursery, tmp_path, port, tls_ca)
    ours = await start_ours(nursery, tmp_path, dns, port, tls_ca, dsn=backend_dsn)
    await trio.to_thread.run_sync(send, ours, "someone@example.test", ["bob@backup.test"])
    # backup.test's best MX refuses connections; the mail goes to the second.
    await wait_for(lambda: peer.messages("bob@backup.test"), what="delivery via MX 20")
    await wait_for(lambda: not ours.queued(), what="the queue to empty")


async def test_implicit_mx(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    backend_dsn: str | None,
) -> None:
    peer = await start_peer(nursery, tmp_path, port, tls_ca)
    ours = await start_ours(nursery, tmp_path, dns, port, tls_ca, dsn=backend_dsn)
    await trio.to_thread.run_sync(send, ours, "someone@example.test", ["carol@implicit.test"])
    await wait_for(lambda: peer.messages("carol@implicit.test"), what="delivery by A record")


async def test_permanent_failure_bounces_to_sender_with_postmaster_copy(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    backend_dsn: str | None,
) -> None:
    ours = await start_ours(nursery, tmp_path, dns, port, tls_ca, dsn=backend_dsn)
    with Sink(FAILING, port, rcpt={"nobody@fail.test": ["550 5.1.1 No such user here"]}):
        await trio.to_thread.run_sync(
            submit, ours, "alice@example.test", ["nobody@fail.test"], "bounce me"
        )
        (dsn,) = await wait_for(lambda: ours.messages("alice@example.test"), what="the bounce")
    parsed = email.message_from_bytes(dsn, policy=email.policy.default)
    assert dsn.startswith(b"Return-Path: <>")
    assert parsed["From"].addresses[0].username == "MAILER-DAEMON"
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    text = dsn.decode()
    assert "Final-Recipient: rfc822; nobody@fail.test" in text
    assert "Action: failed" in text
    assert "Status: 5.1.1" in text
    assert "Diagnostic-Code: smtp; 550 5.1.1 No such user here" in text
    assert "bounce me" in text or "Subject: test" in text
    (copy,) = await wait_for(
        lambda: ours.messages("postmaster@example.test"), what="the postmaster copy"
    )
    assert b"Postmaster Copy:" in copy
    assert b"bounce me" not in copy  # headers only: the postmaster does not read mail
    # A notice is stored before it leaves the queue: the copy can be read a moment
    # before the queue is empty.
    await wait_for(lambda: not ours.queued(), what="the queue to empty")


async def test_null_mx_bounces_at_once(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    backend_dsn: str | None,
) -> None:
    ours = await start_ours(nursery, tmp_path, dns, port, tls_ca, dsn=backend_dsn)
    await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["x@nullmx.test"])
    (dsn,) = await wait_for(lambda: ours.messages("alice@example.test"), what="the bounce")
    assert b"Status: 5.1.10" in dsn


async def test_temporary_failure_is_retried_then_delivered(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    backend_dsn: str | None,
) -> None:
    ours = await start_ours(nursery, tmp_path, dns, port, tls_ca, dsn=backend_dsn)
    answers = ["451 4.3.0 Greylisted, try again", "250 2.1.5 OK"]
    with Sink(FAILING, port, rcpt={"grey@fail.test": answers}) as sink:
        await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["grey@fail.test"])
        deferred = await wait_for(
            lambda: [m for m in ours.queued() if m.recipients[0].attempts], what="a deferral"
        )
        assert "451 4.3.0 Greylisted" in deferred[0].recipients[0].last_reason
        await wait_for(lambda: sink.received, what="the retry")
        await wait_for(lambda: not ours.queued(), what="the queue to empty")
    assert sink.received[0].rcpt_tos == ["grey@fail.test"]
    assert not ours.messages("alice@example.test")  # no bounce


async def test_temporary_failure_expires_into_a_bounce(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    backend_dsn: str | None,
) -> None:
    ours = await start_ours(
        nursery, tmp_path, dns, port, tls_ca, delivery='max_queue_lifetime = "1s"', dsn=backend_dsn
    )
    with Sink(FAILING, port, rcpt={"slow@fail.test": ["451 4.3.0 Try later"]}):
        await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["slow@fail.test"])
        (dsn,) = await wait_for(lambda: ours.messages("alice@example.test"), what="the bounce")
    assert b"Action: failed" in dsn
    assert b"451 4.3.0 Try later" in dsn
    assert b"expired" in dsn


async def test_bounce_of_a_bounce_is_dropped(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    backend_dsn: str | None,
) -> None:
    ours = await start_ours(nursery, tmp_path, dns, port, tls_ca, dsn=backend_dsn)
    with Sink(FAILING, port, rcpt={"nobody@fail.test": ["550 5.1.1 No such user"]}):
        await trio.to_thread.run_sync(send, ours, "", ["nobody@fail.test"])
        await wait_for(lambda: not ours.queued(), what="a verdict")
    assert not ours.messages("postmaster@example.test")


async def test_alias_fans_out_locally_and_remotely_with_srs(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    backend_dsn: str | None,
) -> None:
    peer = await start_peer(nursery, tmp_path, port, tls_ca)
    include = tmp_path / "ours" / "team.list"
    include.parent.mkdir(parents=True, exist_ok=True)
    include.write_text("# the team\nbob@peer.test\n")
    ours = await start_ours(
        nursery,
        tmp_path,
        dns,
        port,
        tls_ca,
        aliases=f"team: alice, :include:{include}\nroot: alice\n",
        dsn=backend_dsn,
    )
    # From outside mynetworks? smtplib connects from 127.0.0.1, which is trusted here;
    # the alias works for anyone, the relay policy is tested elsewhere.
    await trio.to_thread.run_sync(send, ours, "eve@far.example", ["team@example.test"])
    (local,) = await wait_for(lambda: ours.messages("alice@example.test"), what="local copy")
    (remote,) = await wait_for(lambda: peer.messages("bob@peer.test"), what="remote copy")
    assert b"Return-Path: <eve@far.example>" in local
    # Forwarded with an SRS sender at our domain, so SPF at the next hop passes.
    first = remote.split(b"\n", 1)[0].decode()  # a Maildir file has LF line ends
    assert first.startswith("Return-Path: <SRS0=")
    assert first.endswith("@example.test>")
    assert "far.example" in first


async def test_alias_changes_are_picked_up_without_restart(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    backend_dsn: str | None,
) -> None:
    ours = await start_ours(nursery, tmp_path, dns, port, tls_ca, aliases="", dsn=backend_dsn)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await trio.to_thread.run_sync(send, ours, "eve@far.example", ["sales@example.test"])
    path = tmp_path / "ours" / "aliases"
    path.write_text("sales: alice\n")
    # On PostgreSQL the file is read by newaliases, not by the server.
    await trio.to_thread.run_sync(import_aliases, ours.config)

    def accepted() -> bool:
        try:
            send(ours, "eve@far.example", ["sales@example.test"])
        except smtplib.SMTPRecipientsRefused:
            return False
        return True

    await wait_for(accepted, timeout=5, what="the new alias")
    await wait_for(lambda: ours.messages("alice@example.test"), what="delivery through it")


async def test_queue_survives_restart_and_delivers_once(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    backend_dsn: str | None,
) -> None:
    ours = await start_ours(nursery, tmp_path, dns, port, tls_ca, dsn=backend_dsn)
    # The peer is down: the message waits in the queue.
    await trio.to_thread.run_sync(send, ours, "someone@example.test", ["bob@peer.test"])
    await wait_for(
        lambda: [m for m in ours.queued() if m.recipients[0].attempts], what="a deferral"
    )
    await ours.stop()
    assert len(ours.queued()) == 1
    peer = await start_peer(nursery, tmp_path, port, tls_ca)
    again = await start_sansmail(
        nursery, tmp_path / "ours", (tmp_path / "ours" / "sansmail.toml").read_text()
    )
    await wait_for(lambda: peer.messages("bob@peer.test"), what="delivery after restart")
    await wait_for(lambda: not again.queued(), what="the queue to empty")
    await trio.sleep(1.5)
    assert len(peer.messages("bob@peer.test")) == 1


async def test_dsn_parameters_are_passed_to_a_next_hop_that_offers_dsn(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    backend_dsn: str | None,
) -> None:
    ours = await start_ours(nursery, tmp_path, dns, port, tls_ca, dsn=backend_dsn)
    with Sink(FAILING, port) as sink:

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", ours.port("smtp"), timeout=10) as client:
                client.ehlo()
                assert client.has_extn("dsn")
                client.sendmail(
                    "someone@example.test",
                    ["x@fail.test"],
                    b"Subject: dsn\r\n\r\nbody\r\n",
                    mail_options=["RET=HDRS", "ENVID=abc123"],
                    rcpt_options=["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;x@fail.test"],
                )

        await trio.to_thread.run_sync(send)
        await wait_for(lambda: sink.received, what="delivery")
    # aiosmtpd does not offer DSN, so the parameters must not have been sent to it.
    assert sink.rcpt_options == [[]]
