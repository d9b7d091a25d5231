"""The outbound SMTP client's connection cache (`sansmail_trio._smtp_client`): what a
cached connection may be reused for, and what becomes of a connection whose
conversation ends after the client has stopped (the queue runner's shutdown grace)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
import trio
import trustme
from delivery_helpers import PEER, free_port, start_peer

from sansmail.config import DeliveryConfig
from sansmail.mail import outbound
from sansmail.mail.delivery import Connect
from sansmail_trio import _smtp_client
from sansmail_trio._smtp_client import SMTPClient, _Cached

MESSAGE = outbound.OutboundMessage(
    sender="alice@example.test",
    recipients=(outbound.OutboundRecipient(address="bob@peer.test"),),
    content=b"Subject: test\r\n\r\nHello\r\n",
)


def connect(port: int, name: str) -> Connect:
    return Connect(
        host=name, ip=PEER, port=port, tls="verify", verify_name=name, authenticate=False
    )


def client_for(tls_ca: trustme.CA, tmp_path: pathlib.Path) -> SMTPClient:
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    delivery = DeliveryConfig(tls="verify", tls_ca_file=ca_file)
    return SMTPClient(hostname="mx.example.test", delivery=delivery)


async def test_a_connection_verified_for_one_name_is_not_reused_for_another(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    tls_ca: trustme.CA,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two MX names at one address (DNS says so, and DNS may lie): the certificate is
    # checked for each name, never taken on trust from a connection made for the other.
    monkeypatch.setattr(_smtp_client, "CACHE_TIME_LIMIT", 3600.0)
    port = free_port(PEER)
    await start_peer(nursery, tmp_path, port, tls_ca, cert_name="mx.peer.test")
    client = client_for(tls_ca, tmp_path)
    await nursery.start(client.run)
    first = await client.deliver(MESSAGE, connect(port, "mx.peer.test"))
    assert first.outcomes is not None
    assert first.tls is not None
    second = await client.deliver(MESSAGE, connect(port, "mx.impostor.test"))
    assert second.outcomes is None
    assert "certificate not verified" in second.reason
    # The connection made for the right name is still reused for it.
    third = await client.deliver(MESSAGE, connect(port, "mx.peer.test"))
    assert third.outcomes is not None


async def test_a_conversation_ending_after_the_client_stopped_closes_its_connection(
    nursery: trio.Nursery, tmp_path: pathlib.Path, tls_ca: trustme.CA
) -> None:
    # At a stop, the runner lets conversations end under a shield after the client's
    # run (which closes the cached connections) is over: a connection cached then would
    # never be closed (a ResourceWarning for its socket at garbage collection).
    port = free_port(PEER)
    await start_peer(nursery, tmp_path, port, tls_ca, cert_name="mx.peer.test")
    client = client_for(tls_ca, tmp_path)
    async with trio.open_nursery() as inner:
        await inner.start(client.run)
        inner.cancel_scope.cancel()
    ended = await client.deliver(MESSAGE, connect(port, "mx.peer.test"))
    assert ended.outcomes is not None
    assert not client._cache


class _TakingStream(trio.abc.Stream):
    """A cached connection whose close, as it yields, lets another conversation start."""

    def __init__(self, on_close: Callable[[], None]) -> None:
        self.on_close = on_close
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    async def wait_send_all_might_not_block(self) -> None:
        raise NotImplementedError

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        raise NotImplementedError

    async def aclose(self) -> None:
        self.on_close()
        self.closed = True
        await trio.lowlevel.checkpoint()


async def test_a_conversation_starting_while_the_stop_closes_the_cache_takes_nothing() -> None:
    client = SMTPClient(hostname="mx.example.test", delivery=DeliveryConfig())
    keys = [(f"192.0.2.{n}", 25, "may", False, None) for n in range(2)]
    taken: list[object] = []
    streams = [_TakingStream(lambda: taken.append(client._take_cached(keys[1]))) for _ in keys]
    for key, stream in zip(keys, streams, strict=True):
        session = outbound.OutboundSession(helo_name="mx.example.test", tls="may", nonce="n")
        client._cache[key] = [_Cached(session, stream, None, 0.0)]
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        nursery.cancel_scope.cancel()
    assert taken == [None, None]
    assert all(stream.closed for stream in streams)


async def test_a_step_asking_for_a_check_gets_it_whatever_the_settings(
    nursery: trio.Nursery, tmp_path: pathlib.Path, tls_ca: trustme.CA
) -> None:
    # With tls = "may" and MTA-STS off no verifying context is made at start; a step
    # that names a certificate to check must still have it checked (fail closed), not
    # fall back to the context that checks nothing.
    port = free_port(PEER)
    await start_peer(nursery, tmp_path, port, tls_ca, cert_name="mx.peer.test")
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    delivery = DeliveryConfig(tls="may", mta_sts=False, tls_ca_file=ca_file)
    client = SMTPClient(hostname="mx.example.test", delivery=delivery)
    await nursery.start(client.run)
    refused = await client.deliver(MESSAGE, connect(port, "mx.impostor.test"))
    assert refused.outcomes is None
    assert "certificate not verified" in refused.reason
    accepted = await client.deliver(MESSAGE, connect(port, "mx.peer.test"))
    assert accepted.outcomes is not None
