"""``GET /metrics`` after real sessions, read with prometheus-client's text parser: a
real ``sansmail-trio serve`` with two server processes and its queue runner, whose one
scrape shows what the run did summed over all of them, and still does after a server
process was killed and replaced; and an in-process `serve()` counting alone."""

from __future__ import annotations

import imaplib
import os
import pathlib
import shutil
import signal
import smtplib
import ssl
import subprocess
import time
import urllib.request

import pytest
import trio
from delivery_helpers import Sink, free_port, start_sansmail
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from trio_helpers import FAST_HASHER, wait_until_started

from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore

MESSAGE = b"Subject: metrics\r\n\r\nbody\r\n"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def smtp_connections_in(path: pathlib.Path) -> float:
    """What one process's file (``counter_<pid>.db``) counted of smtp connections."""
    merged = MultiProcessCollector.merge([str(path)], accumulate=True)  # type: ignore[no-untyped-call]
    for metric in merged:
        for sample in metric.samples:
            if sample.name == "sansmail_connections_total" and sample.labels == {"service": "smtp"}:
                return float(sample.value)
    return 0.0


def children(pid: int) -> list[int]:
    path = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def servers(pid: int) -> list[int]:
    return [
        c
        for c in children(pid)
        if pathlib.Path(f"/proc/{c}/comm").read_text().strip() != "sansmail-queue"
    ]


def wait_until(condition: object, what: str, timeout: float = 30.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start(tmp_path: pathlib.Path, sink_port: int) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    (tmp_path / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        # Loopback untrusted: an unauthenticated relay is refused, logins are counted.
        'processes = 2\nmynetworks = ["192.0.2.0/24"]\n'
        "[listen]\n"
        'smtp = "127.0.0.1:0"\nsubmission = "127.0.0.1:0"\nimap = "127.0.0.1:0"\n'
        'metrics = "127.0.0.1:0"\n'
        f'[delivery]\nrelayhost = "[127.0.0.1]:{sink_port}"\n'
        "[limits]\nclient_message_rate = 0\nclient_recipient_rate = 0\n"
    )
    UserStore(tmp_path / "data" / "users.json", hasher=FAST_HASHER).add(
        parse_address("alice@example.test"), "pw"
    )
    script = shutil.which("sansmail-trio")
    assert script is not None
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([script, "serve"], cwd=tmp_path, stderr=out)
    return proc, wait_until_started(proc, log, processes=2)


def send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.sendmail("a@example.org", ["alice@example.test"], MESSAGE)


def test_one_scrape_sums_every_process_and_survives_a_killed_one(tmp_path: pathlib.Path) -> None:
    sink_port = free_port()
    with Sink("127.0.0.1", sink_port, rcpt={"later@example.net": ["451 4.3.0 try later"]}) as sink:
        proc, ports = start(tmp_path, sink_port)
        try:
            run(tmp_path, proc, ports, sink)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def run(
    tmp_path: pathlib.Path, proc: subprocess.Popen[bytes], ports: dict[str, int], sink: Sink
) -> None:
    files = tmp_path / "data" / "run" / "metrics"
    pids = servers(proc.pid)
    assert len(pids) == 2

    # Messages to a local user, one connection each, until each server process took
    # some: the kernel, not we, picks the process that accepts. Each process writes its
    # counts to its file within a second (FLUSH_INTERVAL).
    sent = 0

    def in_files() -> list[float]:
        paths = [files / f"counter_{pid}.db" for pid in pids]
        return [smtp_connections_in(p) if p.exists() else 0.0 for p in paths]

    while sent == 0 or not all(in_files()):
        assert sent < 200, f"every connection went to the same process: {in_files()}"
        for _ in range(10):
            send(ports["smtp"])
        sent += 10
        wait_until(lambda n=sent: sum(in_files()) == n, "the counts in the files")

    # Two recipients refused: an unknown user, and a relay for an untrusted client.
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=20) as client:
        client.ehlo("client.example")
        client.mail("a@example.org")
        assert client.rcpt("nobody@example.test")[0] == 550
        assert client.rcpt("someone@example.net")[0] == 554

    # Submission over STARTTLS: a wrong password, then the right one and two relayed
    # messages, one the next hop takes and one it defers.
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=20) as client:
        client.starttls(context=context)
        client.ehlo("client.example")
        client.user, client.password = "alice@example.test", "wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.auth("PLAIN", client.auth_plain)
    with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=20) as client:
        client.user, client.password = "alice@example.test", "pw"
        client.ehlo("client.example")
        client.auth("PLAIN", client.auth_plain)
        client.sendmail("alice@example.test", ["bob@example.net"], MESSAGE)
        client.sendmail("alice@example.test", ["later@example.net"], MESSAGE)

    imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=20)
    imap.login("alice@example.test", "pw")
    imap.logout()

    # The queue runner, a process of its own, counts the relayed verdicts; every
    # process's counts are in its file within a second.
    def complete() -> Samples:
        found = scrape(ports["metrics"])
        relay = get(found, "sansmail_deliveries_total", kind="relay", status="delivered")
        deferred = get(found, "sansmail_deliveries_total", kind="relay", status="deferred")
        login = {"service": "imap", "mechanism": "LOGIN", "result": "success"}
        imap = get(found, "sansmail_auth_total", **login)
        smtp = get(found, "sansmail_connections_total", service="smtp")
        return found if relay and deferred and imap and smtp == sent + 1 else {}

    wait_until(complete, "the counts of every process")
    first = complete()
    assert len(sink.received) == 1

    smtp, submission = {"service": "smtp"}, {"service": "submission"}
    assert get(first, "sansmail_connections_total", **smtp) == sent + 1
    assert get(first, "sansmail_sessions_total", **smtp) == sent + 1
    assert get(first, "sansmail_messages_received_total", **smtp) == sent
    assert get(first, "sansmail_messages_received_total", **submission) == 2
    assert get(first, "sansmail_connections_total", **submission) == 2
    assert get(first, "sansmail_deliveries_total", kind="local", status="delivered") == sent
    assert get(first, "sansmail_delivery_latency_seconds_count", kind="local") == sent
    assert get(first, "sansmail_delivery_latency_seconds_count", kind="relay") == 1
    rejections = "sansmail_smtp_rejections_total"
    assert get(first, rejections, stage="rcpt", reason="unknown_user", status="5xx") == 1
    assert get(first, rejections, stage="rcpt", reason="relay_denied", status="5xx") == 1
    auth = "sansmail_auth_total"
    assert get(first, auth, service="submission", mechanism="PLAIN", result="failure") == 1
    assert get(first, auth, service="submission", mechanism="PLAIN", result="success") == 1
    assert get(first, auth, service="imap", mechanism="LOGIN", result="success") == 1
    assert get(first, "sansmail_sessions_total", service="imap") == 1
    tls = "sansmail_tls_handshakes_total"
    assert get(first, tls, service="submission", version="TLSv1.3") == 1
    assert get(first, "sansmail_store_latency_seconds_count", operation="smtp_commit") >= 1
    assert get(first, "sansmail_store_latency_seconds_count", operation="mailbox_open") == 1
    # The deferred message waits in the queue.
    assert get(first, "sansmail_queue_messages") == 1
    assert get(first, "sansmail_queue_oldest_age_seconds") >= 0

    # A server process killed: the master replaces it; what it counted stays counted.
    victim = pids[0]
    os.kill(victim, signal.SIGKILL)
    log = tmp_path / "serve.log"
    wait_until(lambda: "started pid" in log.read_text(), "the replacement")
    wait_until(lambda: len(servers(proc.pid)) == 2 and victim not in servers(proc.pid), "it")
    second = scrape(ports["metrics"])
    for key, value in first.items():
        if key[0].endswith(("_total", "_count", "_sum", "_bucket")):
            assert second.get(key, 0.0) >= value, key
    assert get(second, "sansmail_connections_total", **smtp) == sent + 1
    assert get(second, "sansmail_messages_received_total", **smtp) == sent


async def test_in_process_serve_counts_alone(tmp_path: pathlib.Path, nursery: trio.Nursery) -> None:
    toml = (
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        '[listen]\nsmtp = "127.0.0.1:0"\nmetrics = "127.0.0.1:0"\n'
    )
    server = await start_sansmail(nursery, tmp_path, toml, users=("alice@example.test",))
    try:
        await trio.to_thread.run_sync(send, server.port("smtp"))
        await trio.to_thread.run_sync(send, server.port("smtp"))
        found = await trio.to_thread.run_sync(scrape, server.port("metrics"))
    finally:
        await server.stop()
    assert get(found, "sansmail_messages_received_total", service="smtp") == 2
    assert get(found, "sansmail_connections_total", service="smtp") == 2
    assert get(found, "sansmail_deliveries_total", kind="local", status="delivered") == 2
    assert get(found, "sansmail_queue_messages") == 0
