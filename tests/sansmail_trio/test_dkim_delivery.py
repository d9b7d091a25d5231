"""Outbound DKIM signing and ARC sealing end to end: our server, with a key under
data_dir, relays to aiosmtpd on loopback (a server nobody here wrote), and what arrives
is checked by dkimpy and by our own verifier through the real resolver path (the tests'
DNS server serving the key records)."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator

import dkim as dkimpy
import pytest
import trio
import trustme
from delivery_helpers import FAILING, PEER, Sink, free_port, send, start_ours, submit, wait_for
from dns_server import DNSServer

from sansmail.config import Config
from sansmail.mail import dkim
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.mail.retry import RetryPolicy
from sansmail.sessions.qmgr import QueueManager
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.dkimkeys import DkimKeys, write_key
from sansmail.storage.maildir import MaildirStore
from sansmail.storage.queue import QueueStore
from sansmail.storage.users import UserStore
from sansmail_trio._dns import Resolver, run_check


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
        server.add("far.test", "MX", "10 mx.peer.test.")
        yield server


def publish(dns: DNSServer, data_dir: pathlib.Path, domain: str, algorithm="rsa") -> str:
    """Make a key for `domain` under the default selector, as `dkim keygen` does, and
    publish its record; the record's value."""
    private, txt = dkim.generate(algorithm)
    data_dir.mkdir(parents=True, exist_ok=True)
    write_key(data_dir, domain, "sansmail", private, txt)
    line = dkim.dns_record(domain, "sansmail", txt)
    dns.add(f"sansmail._domainkey.{domain}", "TXT", line.split(" IN TXT ", 1)[1])
    return txt


def dnsfunc(records: dict[str, str]):
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        value = records.get(name.decode().rstrip("."))
        return None if value is None else value.encode()

    return lookup


def data_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "ours" / "data"


async def verified(message: bytes, dns: DNSServer) -> tuple[dkim.DkimResult, ...]:
    resolver = Resolver([dns.address], timeout=5)
    return await run_check(dkim.verify(message), resolver)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
async def test_submission_is_signed_and_verifies(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    algorithm: str,
) -> None:
    txt = publish(dns, data_dir(tmp_path), "example.test", algorithm)
    with Sink(PEER, port) as sink:
        ours = await start_ours(nursery, tmp_path, dns, port, tls_ca)
        await trio.to_thread.run_sync(
            submit, ours, "alice@example.test", ["bob@peer.test"], "signed"
        )
        await wait_for(lambda: sink.received, what="delivery")
    (received,) = sink.received
    content = received.content
    assert content.startswith(b"DKIM-Signature: v=1; a=")
    assert b" d=example.test;" in content
    assert b"s=sansmail;" in content
    records = {"sansmail._domainkey.example.test": txt}
    assert dkimpy.verify(content, dnsfunc=dnsfunc(records))
    (result,) = await verified(content, dns)
    assert (result.result, result.domain, result.selector) == ("pass", "example.test", "sansmail")
    # The body changed on the way would fail.
    (altered,) = await verified(content.replace(b"signed", b"sighed"), dns)
    assert altered.result == "fail"


async def test_without_a_key_nothing_is_added(
    nursery: trio.Nursery, tmp_path: pathlib.Path, dns: DNSServer, port: int, tls_ca: trustme.CA
) -> None:
    # A key for another domain only: the From domain has none.
    publish(dns, data_dir(tmp_path), "other.test")
    with Sink(PEER, port) as sink:
        ours = await start_ours(nursery, tmp_path, dns, port, tls_ca)
        await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["bob@peer.test"])
        await wait_for(lambda: sink.received, what="delivery")
    (received,) = sink.received
    assert b"DKIM-Signature" not in received.content
    assert b"ARC-" not in received.content
    assert await verified(received.content, dns) == ()


async def test_forwarded_copy_carries_an_arc_set(
    nursery: trio.Nursery, tmp_path: pathlib.Path, dns: DNSServer, port: int, tls_ca: trustme.CA
) -> None:
    txt = publish(dns, data_dir(tmp_path), "example.test")
    with Sink(PEER, port) as sink:
        ours = await start_ours(
            nursery, tmp_path, dns, port, tls_ca, aliases="team: bob@peer.test\n"
        )
        await trio.to_thread.run_sync(send, ours, "eve@far.example", ["team@example.test"])
        await wait_for(lambda: sink.received, what="the forwarded copy")
    (received,) = sink.received
    assert received.mail_from.startswith("SRS0=")
    content = received.content
    assert content.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.test;")
    # An outsider's From is not ours to sign.
    assert b"DKIM-Signature" not in content
    records = {"sansmail._domainkey.example.test": txt}
    cv, sets, reason = dkimpy.arc_verify(content, dnsfunc=dnsfunc(records))
    assert cv == dkimpy.CV_Pass, reason
    assert sets[0]["as-domain"] == b"example.test"
    resolver = Resolver([dns.address], timeout=5)
    ours_says = await run_check(dkim.arc_verify(content), resolver)
    assert (ours_says.result, ours_says.instance) == ("pass", 1)


async def test_forwarded_copy_of_our_user_is_signed_and_sealed(
    nursery: trio.Nursery, tmp_path: pathlib.Path, dns: DNSServer, port: int, tls_ca: trustme.CA
) -> None:
    txt = publish(dns, data_dir(tmp_path), "example.test")
    with Sink(PEER, port) as sink:
        ours = await start_ours(
            nursery, tmp_path, dns, port, tls_ca, aliases="team: bob@peer.test\n"
        )
        await trio.to_thread.run_sync(submit, ours, "alice@example.test", ["team@example.test"])
        await wait_for(lambda: sink.received, what="the forwarded copy")
    (received,) = sink.received
    content = received.content
    assert content.startswith(b"ARC-Seal: i=1;")
    records = {"sansmail._domainkey.example.test": txt}
    assert dkimpy.verify(content, dnsfunc=dnsfunc(records))
    cv, _sets, reason = dkimpy.arc_verify(content, dnsfunc=dnsfunc(records))
    assert cv == dkimpy.CV_Pass, reason


async def test_bounce_to_a_remote_sender_is_signed_for_the_hostname(
    nursery: trio.Nursery, tmp_path: pathlib.Path, dns: DNSServer, port: int, tls_ca: trustme.CA
) -> None:
    txt = publish(dns, data_dir(tmp_path), "mx.example.test")
    refusing = Sink(FAILING, port, rcpt={"nobody@fail.test": ["550 5.1.1 No such user"]})
    with Sink(PEER, port) as sink, refusing:
        ours = await start_ours(nursery, tmp_path, dns, port, tls_ca)
        # Relayed from mynetworks for a sender elsewhere, refused at the next hop: the
        # bounce goes back to far.test, whose MX is the sink.
        await trio.to_thread.run_sync(send, ours, "eve@far.test", ["nobody@fail.test"])
        await wait_for(lambda: sink.received, what="the bounce")
    (bounce,) = sink.received
    assert bounce.mail_from in ("", "<>")
    assert re.search(rb"^From: .*MAILER-DAEMON@mx\.example\.test", bounce.content, re.M)
    assert b" d=mx.example.test;" in bounce.content
    records = {"sansmail._domainkey.mx.example.test": txt}
    assert dkimpy.verify(bounce.content, dnsfunc=dnsfunc(records))


# -- the attempt, without sockets -----------------------------------------------------------

CONTENT = b"From: alice@example.test\r\nTo: bob@peer.test\r\nSubject: hi\r\n\r\nhello\r\n"


def manager(root: pathlib.Path) -> QueueManager:
    (root / "aliases").write_text("")
    config = Config(
        source=None,
        hostname="mx.example.test",
        domains=("example.test",),
        data_dir=root,
        aliases=root / "aliases",
    )
    return QueueManager(
        config=config,
        queue=QueueStore(root / "queue"),
        store=MaildirStore(root, hostname="mx.example.test"),
        users=UserStore(root / "users.json"),
        aliases=AliasSource(root / "aliases"),
        policy=RetryPolicy(minimal_backoff=300, maximal_backoff=3600, max_lifetime=86400),
        dkim_keys=DkimKeys(root, "sansmail"),
    )


def enqueue(queue: QueueManager, *recipients: str) -> str:
    qid = queue.queue.new_id()
    writer = queue.queue.begin(qid)
    writer.write(CONTENT)
    writer.commit(
        QueuedMessage(
            queue_id=qid,
            sender="alice@example.test",
            arrival=0.0,
            size=0,
            recipients=[QueuedRecipient(address=r) for r in recipients],
        )
    )
    return qid


def test_attempt_signs_what_goes_to_other_hosts_only(tmp_path: pathlib.Path) -> None:
    queue = manager(tmp_path)
    private, _txt = dkim.generate("ed25519")
    write_key(tmp_path, "example.test", "sansmail", private, _txt)
    remote = queue.open(enqueue(queue, "bob@peer.test", "carol@example.test"))
    assert remote is not None
    assert remote.content == CONTENT  # local copies and bounces quote it as queued
    assert remote.outbound.startswith(b"DKIM-Signature:")
    assert remote.outbound.endswith(CONTENT)
    (destination,) = [d for d in remote.destinations if not d.local]
    walk = queue.remote([(remote, destination)], shuffle=lambda hosts: None)
    assert walk.message.content == remote.outbound
    local = queue.open(enqueue(queue, "carol@example.test"))
    assert local is not None
    assert local.outbound == CONTENT  # no remote destination: nothing signed


def test_attempt_with_a_bad_key_goes_unsigned_with_a_warning(tmp_path: pathlib.Path) -> None:
    queue = manager(tmp_path)
    write_key(tmp_path, "example.test", "sansmail", b"not a key", "v=DKIM1; p=")
    qid = enqueue(queue, "bob@peer.test")
    attempt = queue.open(qid)
    assert attempt is not None
    assert attempt.outbound == CONTENT
    [line] = attempt.take_log()
    assert line.level == "warning"
    assert line.text.startswith(f"{qid}: sent unsigned: not a PEM private key")
