"""MTA-STS (RFC 8461) end to end: a running sansmail relays through its queue runner to a
domain whose ``_mta-sts`` TXT and MX records the loopback DNS server publishes, whose
policy Python's http.server serves over HTTPS from 127.0.0.1 (a trustme certificate for
mta-sts.peer.test), and whose MX is a second sansmail (STARTTLS with a certificate for a
name the test picks, or none) or aiosmtpd (no STARTTLS). Last, a sansmail peer serves
its own policy on its http listener."""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Iterator

import pytest
import trio
import trustme
from delivery_helpers import (
    FAILING,
    PEER,
    Server,
    Sink,
    free_port,
    start_ours,
    start_peer,
    start_sansmail,
    submit,
    wait_for,
)
from dns_server import DNSServer
from mtasts_helpers import PolicyServer, policy_text

from sansmail.mail.envelope import QueuedRecipient


@pytest.fixture
def port() -> int:
    return free_port(PEER)


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    with DNSServer() as server:
        server.add("peer.test", "MX", "20 mx.peer.test.")
        server.add("mx.peer.test", "A", PEER)
        server.add("_mta-sts.peer.test", "TXT", '"v=STSv1; id=one"')
        server.add("mta-sts.peer.test", "A", "127.0.0.1")
        yield server


@pytest.fixture
def https(tls_ca: trustme.CA, tmp_path: pathlib.Path) -> Iterator[PolicyServer]:
    with PolicyServer(tls_ca, tmp_path / "https", "mta-sts.peer.test") as server:
        server.serve(policy_text("enforce", "mx.peer.test"))
        yield server


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="sansmail.queue")
    return caplog


async def ours_with_mta_sts(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    https: PolicyServer,
) -> Server:
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    # [delivery] tls stays "may": the policy alone asks for more.
    return await start_ours(
        nursery,
        tmp_path,
        dns,
        port,
        tls_ca,
        delivery=f'tls_ca_file = "{ca_file}"\nmta_sts_port = {https.port}',
    )


async def deferred(ours: Server) -> QueuedRecipient:
    (queued,) = await wait_for(
        lambda: [m for m in ours.queued() if m.recipients[0].attempts], what="a deferral"
    )
    recipient: QueuedRecipient = queued.recipients[0]
    return recipient


async def test_enforce_delivers_over_verified_tls_and_caches_the_policy(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    https: PolicyServer,
    logs: pytest.LogCaptureFixture,
) -> None:
    peer = await start_peer(nursery, tmp_path, port, tls_ca)
    ours = await ours_with_mta_sts(nursery, tmp_path, dns, port, tls_ca, https)
    await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["bob@peer.test"])
    (message,) = await wait_for(lambda: peer.messages("bob@peer.test"), what="delivery")
    assert b"with ESMTPS" in message
    assert https.requests == [("/.well-known/mta-sts.txt", "mta-sts.peer.test")]
    assert (ours.data_dir / "mta-sts" / "peer.test.json").exists()
    assert "MTA-STS policy of peer.test: id=one, mode=enforce" in logs.text
    # The second delivery: the TXT id is the same, the policy is used from the cache.
    await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["bob@peer.test"])
    await wait_for(lambda: len(peer.messages("bob@peer.test")) == 2, what="second delivery")
    assert len(https.requests) == 1


async def test_enforce_defers_a_certificate_for_another_name(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    https: PolicyServer,
    logs: pytest.LogCaptureFixture,
) -> None:
    peer = await start_peer(nursery, tmp_path, port, tls_ca, cert_name="impostor.test")
    ours = await ours_with_mta_sts(nursery, tmp_path, dns, port, tls_ca, https)
    await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["bob@peer.test"])
    recipient = await deferred(ours)
    assert recipient.last_reason.startswith("MTA-STS policy of peer.test (enforce): mx.peer.test[")
    assert "certificate not verified" in recipient.last_reason
    assert not peer.messages("bob@peer.test")
    (line,) = [r.getMessage() for r in logs.records if "status=deferred" in r.getMessage()]
    assert "dsn=4.7.5" in line
    assert "MTA-STS" in line


async def test_enforce_defers_when_starttls_is_not_offered(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    https: PolicyServer,
    logs: pytest.LogCaptureFixture,
) -> None:
    ours = await ours_with_mta_sts(nursery, tmp_path, dns, port, tls_ca, https)
    with Sink(PEER, port) as sink:  # aiosmtpd here offers no STARTTLS
        await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["bob@peer.test"])
        recipient = await deferred(ours)
    assert "MTA-STS policy of peer.test (enforce)" in recipient.last_reason
    assert "TLS required but not offered" in recipient.last_reason
    assert not sink.received
    (line,) = [r.getMessage() for r in logs.records if "status=deferred" in r.getMessage()]
    assert "dsn=4.7.4" in line


async def test_enforce_skips_an_mx_host_the_policy_does_not_list(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    https: PolicyServer,
) -> None:
    # The preferred MX is not in the policy: it would take the mail in plain text.
    dns.add("peer.test", "MX", "10 mx0.peer.test.")
    dns.add("mx0.peer.test", "A", FAILING)
    peer = await start_peer(nursery, tmp_path, port, tls_ca)
    ours = await ours_with_mta_sts(nursery, tmp_path, dns, port, tls_ca, https)
    with Sink(FAILING, port) as sink:
        await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["bob@peer.test"])
        await wait_for(lambda: peer.messages("bob@peer.test"), what="delivery to mx.peer.test")
    assert not sink.received
    assert sink.ehlos == 0


async def test_enforce_with_no_listed_mx_defers_without_connecting(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    https: PolicyServer,
) -> None:
    https.serve(policy_text("enforce", "*.elsewhere.test"))
    ours = await ours_with_mta_sts(nursery, tmp_path, dns, port, tls_ca, https)
    with Sink(PEER, port) as sink:
        await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["bob@peer.test"])
        recipient = await deferred(ours)
    assert recipient.last_reason == (
        "MTA-STS policy of peer.test (enforce): no MX host is listed "
        "(mx.peer.test not in *.elsewhere.test)"
    )
    assert sink.ehlos == 0


async def test_testing_mode_delivers_and_logs_what_enforce_would_refuse(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    https: PolicyServer,
    logs: pytest.LogCaptureFixture,
) -> None:
    https.serve(policy_text("testing", "mx.peer.test"))
    peer = await start_peer(nursery, tmp_path, port, tls_ca, cert_name="impostor.test")
    ours = await ours_with_mta_sts(nursery, tmp_path, dns, port, tls_ca, https)
    await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["bob@peer.test"])
    (message,) = await wait_for(lambda: peer.messages("bob@peer.test"), what="delivery")
    assert b"with ESMTPS" in message  # "may": encrypted, the certificate not checked
    (warning,) = [r for r in logs.records if "would be refused" in r.getMessage()]
    assert warning.getMessage().startswith(
        f"MTA-STS policy of peer.test (testing): mx.peer.test[{PEER}]:{port} would be "
        "refused in enforce mode: Cannot start TLS: server certificate not verified"
    )
    assert warning.levelno == logging.WARNING


async def test_a_new_txt_id_refetches_the_policy(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    https: PolicyServer,
) -> None:
    peer = await start_peer(nursery, tmp_path, port, tls_ca, cert_name="impostor.test")
    https.serve(policy_text("testing", "mx.peer.test"))
    ours = await ours_with_mta_sts(nursery, tmp_path, dns, port, tls_ca, https)
    await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["bob@peer.test"])
    await wait_for(lambda: peer.messages("bob@peer.test"), what="delivery in testing mode")
    # The domain moves to enforce: a new policy, a new id; the certificate is now refused.
    https.serve(policy_text("enforce", "mx.peer.test"))
    dns.remove("_mta-sts.peer.test")
    dns.add("_mta-sts.peer.test", "TXT", '"v=STSv1; id=two"')
    await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["bob@peer.test"])
    recipient = await deferred(ours)
    assert "MTA-STS policy of peer.test (enforce)" in recipient.last_reason
    assert len(https.requests) == 2
    assert len(peer.messages("bob@peer.test")) == 1


async def test_a_transport_entry_is_not_subject_to_the_policy(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    https: PolicyServer,
) -> None:
    # The operator chose this hop: its certificate would fail the enforce policy.
    peer = await start_peer(nursery, tmp_path, port, tls_ca, cert_name="impostor.test")
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    ours = await start_ours(
        nursery,
        tmp_path,
        dns,
        port,
        tls_ca,
        delivery=(
            f'tls_ca_file = "{ca_file}"\nmta_sts_port = {https.port}\n'
            f'transport = {{ "peer.test" = "[mx.peer.test]:{port}" }}'
        ),
    )
    await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["bob@peer.test"])
    await wait_for(lambda: peer.messages("bob@peer.test"), what="delivery through transport")
    assert not [q for q in dns.queries if q.name == "_mta-sts.peer.test"]
    assert not https.requests


async def test_the_policy_a_sansmail_http_listener_serves_is_applied(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    logs: pytest.LogCaptureFixture,
) -> None:
    # The peer publishes its own policy (testing mode, itself the one MX) on its http
    # listener, with one certificate for its MX name and its policy host.
    folder = tmp_path / "peer"
    folder.mkdir()
    cert = tls_ca.issue_cert("mx.peer.test", "mta-sts.peer.test")
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    peer = await start_sansmail(
        nursery,
        folder,
        f"""\
hostname = "mx.peer.test"
domains = ["peer.test"]
data_dir = "data"
mynetworks = ["192.0.2.0/24"]
[tls]
cert = "cert.pem"
key = "key.pem"
[listen]
smtp = "{PEER}:{port}"
http = "127.0.0.1:0"
[dns]
nameservers = ["127.0.0.1:9"]
[antispam]
spf = "off"
dkim = "off"
dmarc = "off"
""",
        users=("bob@peer.test",),
    )
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    ours = await start_ours(
        nursery,
        tmp_path,
        dns,
        port,
        tls_ca,
        delivery=f'tls_ca_file = "{ca_file}"\nmta_sts_port = {peer.port("http")}',
    )
    await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["bob@peer.test"])
    (message,) = await wait_for(lambda: peer.messages("bob@peer.test"), what="delivery")
    assert b"with ESMTPS" in message
    assert "MTA-STS policy of peer.test: id=one, mode=testing" in logs.text
    assert "mx=mx.peer.test" in logs.text
    assert "would be refused" not in logs.text
