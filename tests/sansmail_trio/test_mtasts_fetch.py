"""MTA-STS policies fetched over HTTPS from 127.0.0.1 (Python's http.server with a trustme
certificate), the TXT record from the loopback DNS server, and the cache on disk."""

from __future__ import annotations

import functools
import logging
import pathlib
import ssl
from collections.abc import Iterator

import pytest
import trio
import trustme
from delivery_helpers import free_port
from dns_server import DNSServer
from mtasts_helpers import PolicyServer, policy_text

from sansmail.mail.mtasts import Policy
from sansmail_trio._dns import Resolver
from sansmail_trio._mtasts import MtaSts
from sansmail_trio._smtp_client import client_tls_context

ENFORCE = Policy(mode="enforce", mx=("mx.peer.test",), max_age=86400)


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    with DNSServer() as server:
        server.add("_mta-sts.peer.test", "TXT", '"v=STSv1; id=one"')
        server.add("mta-sts.peer.test", "A", "127.0.0.1")
        yield server


@pytest.fixture
def https(tls_ca: trustme.CA, tmp_path: pathlib.Path) -> Iterator[PolicyServer]:
    with PolicyServer(tls_ca, tmp_path / "https", "mta-sts.peer.test") as server:
        server.serve(policy_text("enforce", "mx.peer.test"))
        yield server


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def policies(
    tmp_path: pathlib.Path,
    dns: DNSServer,
    https: PolicyServer,
    tls_ca: trustme.CA,
    clock: Clock | None = None,
) -> MtaSts:
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    return MtaSts(
        tmp_path / "data" / "mta-sts",
        resolver=Resolver([dns.address]),
        context=client_tls_context(verify=True, cafile=ca_file),
        port=https.port,
        timeout=10.0,
        clock=clock or Clock(),
    )


async def test_the_policy_is_fetched_then_used_from_the_cache(
    tmp_path: pathlib.Path, dns: DNSServer, https: PolicyServer, tls_ca: trustme.CA
) -> None:
    sts = policies(tmp_path, dns, https, tls_ca)
    assert await sts.policy("peer.test") == ENFORCE
    assert https.requests == [("/.well-known/mta-sts.txt", "mta-sts.peer.test")]
    assert await sts.policy("Peer.Test.") == ENFORCE
    assert len(https.requests) == 1  # the same id: no second request
    assert (tmp_path / "data" / "mta-sts" / "peer.test.json").exists()


async def test_the_cache_on_disk_outlives_a_restart(
    tmp_path: pathlib.Path, dns: DNSServer, https: PolicyServer, tls_ca: trustme.CA
) -> None:
    clock = Clock()
    assert await policies(tmp_path, dns, https, tls_ca, clock).policy("peer.test") == ENFORCE
    https.serve(b"gone")
    again = policies(tmp_path, dns, https, tls_ca, clock)
    assert await again.policy("peer.test") == ENFORCE
    assert len(https.requests) == 1
    assert again.fetches == 0


async def test_a_new_id_refetches_and_max_age_expires(
    tmp_path: pathlib.Path, dns: DNSServer, https: PolicyServer, tls_ca: trustme.CA
) -> None:
    clock = Clock()
    sts = policies(tmp_path, dns, https, tls_ca, clock)
    assert await sts.policy("peer.test") == ENFORCE
    https.serve(policy_text("testing", "*.peer.test", max_age=60))
    dns.remove("_mta-sts.peer.test")
    dns.add("_mta-sts.peer.test", "TXT", '"v=STSv1; id=two"')
    testing = Policy(mode="testing", mx=("*.peer.test",), max_age=60)
    assert await sts.policy("peer.test") == testing
    assert len(https.requests) == 2
    clock.now += 61
    https.serve(policy_text("none", max_age=60))
    assert await sts.policy("peer.test") == Policy(mode="none", max_age=60)
    assert len(https.requests) == 3


async def test_no_record_and_nothing_cached_is_no_policy_and_no_request(
    tmp_path: pathlib.Path, dns: DNSServer, https: PolicyServer, tls_ca: trustme.CA
) -> None:
    dns.remove("_mta-sts.peer.test")
    assert await policies(tmp_path, dns, https, tls_ca).policy("peer.test") is None
    assert not https.requests


@pytest.mark.parametrize(
    ("status", "content_type", "body", "why"),
    [
        (302, "text/plain", b"", "redirect not followed"),
        (404, "text/plain", b"", "HTTP 404"),
        (200, "text/html", policy_text("enforce", "mx.peer.test").encode(), "text/html"),
        (200, "text/plain", b"<html>", "invalid policy"),
        (200, "text/plain", b"x: " + b"y" * 70000, "larger than"),
    ],
)
async def test_a_failed_fetch_is_no_policy_and_says_why(
    tmp_path: pathlib.Path,
    dns: DNSServer,
    https: PolicyServer,
    tls_ca: trustme.CA,
    caplog: pytest.LogCaptureFixture,
    status: int,
    content_type: str,
    body: bytes,
    why: str,
) -> None:
    https.status, https.content_type, https.location = status, content_type, "https://x.test/"
    https.serve(body)
    with caplog.at_level(logging.WARNING, logger="sansmail.queue"):
        assert await policies(tmp_path, dns, https, tls_ca).policy("peer.test") is None
    assert len(https.requests) == 1  # the redirect was not followed
    assert why in caplog.text
    assert "MTA-STS policy of peer.test: cannot fetch" in caplog.text


async def test_a_certificate_for_another_name_is_no_policy(
    tmp_path: pathlib.Path, dns: DNSServer, tls_ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    with PolicyServer(tls_ca, tmp_path / "other", "www.peer.test") as https:
        https.serve(policy_text("enforce", "mx.peer.test"))
        with caplog.at_level(logging.WARNING, logger="sansmail.queue"):
            assert await policies(tmp_path, dns, https, tls_ca).policy("peer.test") is None
    assert "certificate not verified" in caplog.text


async def test_a_failed_refetch_keeps_the_cached_policy_and_waits_before_the_next(
    tmp_path: pathlib.Path, dns: DNSServer, https: PolicyServer, tls_ca: trustme.CA
) -> None:
    clock = Clock()
    sts = policies(tmp_path, dns, https, tls_ca, clock)
    assert await sts.policy("peer.test") == ENFORCE
    https.status = 500
    dns.remove("_mta-sts.peer.test")
    dns.add("_mta-sts.peer.test", "TXT", '"v=STSv1; id=two"')
    assert await sts.policy("peer.test") == ENFORCE
    assert await sts.policy("peer.test") == ENFORCE
    assert len(https.requests) == 2  # the failure is not retried at once
    clock.now += 301
    https.status = 200
    https.serve(policy_text("testing", "mx.peer.test"))
    assert (await sts.policy("peer.test")) == Policy(
        mode="testing", mx=("mx.peer.test",), max_age=86400
    )


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"garbage\r\n\r\n", "bad HTTP answer"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 99\r\n\r\nversion",
            "closed",
        ),
        (b"", "closed"),
        (None, "no answer within"),
    ],
)
async def test_a_broken_policy_host_is_no_policy_never_an_exception(
    tmp_path: pathlib.Path,
    dns: DNSServer,
    tls_ca: trustme.CA,
    caplog: pytest.LogCaptureFixture,
    nursery: trio.Nursery,
    answer: bytes | None,
    why: str,
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls_ca.issue_cert("mta-sts.peer.test").configure_cert(context)

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.receive_some(65536)
            if answer is None:
                await trio.sleep_forever()
            await stream.send_all(answer)
        finally:
            await trio.aclose_forcefully(stream)

    (listener,) = await nursery.start(
        functools.partial(trio.serve_ssl_over_tcp, handler, 0, context, host="127.0.0.1")
    )
    port = listener.transport_listener.socket.getsockname()[1]
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    sts = MtaSts(
        tmp_path / "cache",
        resolver=Resolver([dns.address]),
        context=client_tls_context(verify=True, cafile=ca_file),
        port=port,
        timeout=1.0,
    )
    with caplog.at_level(logging.WARNING, logger="sansmail.queue"):
        assert await sts.policy("peer.test") is None
    assert why in caplog.text


async def test_no_policy_host_listening_is_no_policy(
    tmp_path: pathlib.Path, dns: DNSServer, tls_ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    sts = MtaSts(
        tmp_path / "cache",
        resolver=Resolver([dns.address]),
        context=client_tls_context(verify=True, cafile=None),
        port=free_port("127.0.0.1"),
    )
    with caplog.at_level(logging.WARNING, logger="sansmail.queue"):
        assert await sts.policy("peer.test") is None
    assert "connect to 127.0.0.1:" in caplog.text
    assert "Connection refused" in caplog.text
