"""The metrics of one process (`sansmail_trio._metrics`), read back through
prometheus-client's own text parser: what the hooks count, under which labels, and the
live gauges (open connections, the queue's size and oldest message)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

import pytest
import trio
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.sessions.smtpd import REASONS, reason_of
from sansmail.storage.queue import QueueStore
from sansmail_trio._counts import Family, SharedCounts
from sansmail_trio._metrics import FLUSH_INTERVAL, Metrics, Spread


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def scraped(metrics: Metrics) -> bytes:
    """A scrape, after what was counted is flushed (as `Metrics.handle_scrape` does)."""
    metrics.flush()
    return metrics.scrape()


def value(text: bytes, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def queue_message(queue: QueueStore, arrival: float) -> str:
    queue_id = queue.new_id()
    writer = queue.begin(queue_id)
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    envelope = QueuedMessage(
        queue_id=queue_id,
        sender="a@example.org",
        arrival=arrival,
        size=writer.size,
        recipients=(QueuedRecipient(address="b@example.net"),),
    )
    writer.commit(envelope)
    return queue_id


def test_connections_sessions_and_refusals_per_listener() -> None:
    metrics = Metrics()
    smtp, imaps = metrics.probe("smtp"), metrics.probe("imaps")
    smtp.accepted(None)
    smtp.accepted(None)
    smtp.accepted("too_many_connections")
    imaps.accepted(None)
    text = scraped(metrics)
    assert value(text, "sansmail_connections_total", service="smtp") == 3
    assert value(text, "sansmail_sessions_total", service="smtp") == 2
    assert value(text, "sansmail_sessions_total", service="imaps") == 1
    refused = {"service": "smtp", "reason": "too_many_connections"}
    assert value(text, "sansmail_connections_refused_total", **refused) == 1


def test_tls_versions_and_logins() -> None:
    metrics = Metrics()
    probe = metrics.probe("submission")
    probe.tls("TLSv1.3")
    probe.tls("TLSv1.3")
    probe.tls("SSLv2-from-the-future")  # never a label value of its own
    probe.auth("plain", success=True)
    probe.auth("PLAIN", success=False)
    probe.auth("X-MADE-UP", success=False)
    text = scraped(metrics)
    tls = "sansmail_tls_handshakes_total"
    assert value(text, tls, service="submission", version="TLSv1.3") == 2
    assert value(text, tls, service="submission", version="other") == 1
    auth = "sansmail_auth_total"
    assert value(text, auth, service="submission", mechanism="PLAIN", result="success") == 1
    assert value(text, auth, service="submission", mechanism="PLAIN", result="failure") == 1
    assert value(text, auth, service="submission", mechanism="other", result="failure") == 1


def test_smtp_observer_counts_messages_refusals_and_verdicts() -> None:
    metrics = Metrics()
    observer = metrics.smtp("smtp")
    observer.stored(local=2, arrival=time.time() - 0.2)
    observer.stored(local=0, arrival=time.time())  # queued only: nothing delivered yet
    observer.rejected(stage="rcpt", reason="relay_denied", code=554)
    observer.rejected(stage="rcpt", reason="greylist", code=450)
    observer.rejected(stage="rcpt", reason="greylist", code=450)
    observer.verdict("spf", "pass")
    text = scraped(metrics)
    assert value(text, "sansmail_messages_received_total", service="smtp") == 2
    assert value(text, "sansmail_deliveries_total", kind="local", status="delivered") == 2
    latency = "sansmail_delivery_latency_seconds"
    assert value(text, latency + "_count", kind="local") == 2
    # Both copies waited about 0.2 s: under the 0.25 s bucket's bound, not the 0.1 s one.
    assert value(text, latency + "_bucket", kind="local", le="0.1") == 0
    assert value(text, latency + "_bucket", kind="local", le="2.5") == 2
    rejections = "sansmail_smtp_rejections_total"
    assert value(text, rejections, stage="rcpt", reason="relay_denied", status="5xx") == 1
    assert value(text, rejections, stage="rcpt", reason="greylist", status="4xx") == 2
    assert value(text, "sansmail_antispam_verdicts_total", check="spf", result="pass") == 1


def test_deliveries_and_store_latency() -> None:
    metrics = Metrics()
    arrival = time.time() - 30
    metrics.delivered("relay", "sent", 1, arrival)
    metrics.delivered("relay", "deferred", 2, arrival)
    metrics.delivered("relay", "bounced", 1, arrival)
    metrics.commit_took(0.002)
    metrics.stored_locally(0.3)
    text = scraped(metrics)
    deliveries = "sansmail_deliveries_total"
    assert value(text, deliveries, kind="relay", status="delivered") == 1
    assert value(text, deliveries, kind="relay", status="deferred") == 2
    assert value(text, deliveries, kind="relay", status="bounced") == 1
    # A deferral is no final status: only the delivered and the bounced copies.
    latency = "sansmail_delivery_latency_seconds"
    assert value(text, latency + "_count", kind="relay") == 2
    assert value(text, latency + "_bucket", kind="relay", le="10.0") == 0
    assert value(text, latency + "_bucket", kind="relay", le="60.0") == 2
    store = "sansmail_store_latency_seconds_count"
    assert value(text, store, operation="smtp_commit") == 1
    assert value(text, store, operation="local_delivery") == 1


def test_counts_reach_the_scrape_at_the_flush() -> None:
    metrics = Metrics()
    metrics.probe("smtp").accepted(None)
    assert value(metrics.scrape(), "sansmail_connections_total", service="smtp") == 0
    metrics.flush()
    assert value(metrics.scrape(), "sansmail_connections_total", service="smtp") == 1
    metrics.flush()  # nothing new: nothing counted twice
    assert value(metrics.scrape(), "sansmail_connections_total", service="smtp") == 1


async def test_run_flushes_periodically_and_when_stopped() -> None:
    metrics = Metrics()
    probe = metrics.probe("smtp")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(metrics.run)
        probe.accepted(None)
        await trio.sleep(FLUSH_INTERVAL * 1.5)
        assert value(metrics.scrape(), "sansmail_connections_total", service="smtp") == 1
        probe.accepted(None)
        nursery.cancel_scope.cancel()
    assert value(metrics.scrape(), "sansmail_connections_total", service="smtp") == 2


def test_each_metrics_object_counts_alone() -> None:
    # Two in-process servers (or two tests) must not see each other's counts.
    first, second = Metrics(), Metrics()
    first.probe("smtp").accepted(None)
    assert value(scraped(first), "sansmail_connections_total", service="smtp") == 1
    assert value(scraped(second), "sansmail_connections_total", service="smtp") == 0


def test_live_gauges_read_the_shared_counts_and_the_queue(tmp_path: pathlib.Path) -> None:
    counts = SharedCounts.create(2)
    queue = QueueStore(tmp_path / "queue")
    metrics = Metrics(counts, queue)
    text = scraped(metrics)
    assert value(text, "sansmail_queue_messages") == 0
    assert value(text, "sansmail_queue_oldest_age_seconds") == 0
    assert value(text, "sansmail_open_connections", family="smtp") == 0

    # Two processes' rows: the gauge is their sum.
    counts.opened(Family.SMTP, "192.0.2.1")
    counts.for_process(1).opened(Family.SMTP, "192.0.2.2")
    counts.for_process(1).opened(Family.IMAP, "192.0.2.2")
    now = time.time()
    old = queue_message(queue, now - 3600)
    queue_message(queue, now - 60)
    text = scraped(metrics)
    assert value(text, "sansmail_open_connections", family="smtp") == 2
    assert value(text, "sansmail_open_connections", family="imap") == 1
    assert value(text, "sansmail_open_connections", family="pop3") == 0
    assert value(text, "sansmail_queue_messages") == 2
    assert 3600 <= value(text, "sansmail_queue_oldest_age_seconds") < 3600 + 60

    # The oldest one delivered: the next oldest sets the age.
    queue.delete(old)
    text = scraped(metrics)
    assert value(text, "sansmail_queue_messages") == 1
    assert 60 <= value(text, "sansmail_queue_oldest_age_seconds") < 120


def test_refusal_reasons_stay_in_the_closed_set() -> None:
    for source in ("spf", "dnsbl", "reverse_dns", "greylist", "anvil", "antispam"):
        assert reason_of(source) in REASONS
    assert reason_of("milter inet:127.0.0.1:8891 (timeout)") == "milter"
    assert reason_of("something new") == "other"


def test_a_spread_adds_up_to_what_the_histogram_observes_itself() -> None:
    values = [0.0, 0.01, 0.010001, 0.5, 1, 2.5, 3, 14400, 14400.5, 1e9]
    registries = CollectorRegistry(), CollectorRegistry()
    buckets = (0.01, 0.5, 1, 2.5, 14400)
    ours, theirs = (Histogram("h", "h", buckets=buckets, registry=r) for r in registries)
    spread = Spread(ours)
    for value in values:
        spread.observe(value, 2)
        theirs.observe(value)
        theirs.observe(value)
    spread.flush()
    spread.flush()  # nothing twice
    got, want = (
        [s for s in next(iter(r.collect())).samples if not s.name.endswith("_created")]
        for r in registries
    )
    assert [(s.name, s.labels) for s in got] == [(s.name, s.labels) for s in want]
    # Equal, but for the rounding of a sum added up in another order.
    for ours_sample, their_sample in zip(got, want, strict=True):
        assert ours_sample.value == pytest.approx(their_sample.value, rel=1e-12)


def test_a_spread_without_the_histograms_insides_observes_at_once() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    plain = Plain()
    spread = Spread(plain)  # type: ignore[arg-type]
    spread.observe(1.5, 3)
    assert plain.seen == [1.5, 1.5, 1.5]
    spread.flush()
    assert plain.seen == [1.5, 1.5, 1.5]


def test_enable_multiprocess_empties_the_folder_and_counts_in_files(
    tmp_path: pathlib.Path,
) -> None:
    # In a process of its own: the mode is the whole interpreter's.
    folder = tmp_path / "run" / "metrics"
    folder.mkdir(parents=True)
    (folder / "counter_1.db").write_bytes(b"what a previous start counted")
    (folder / "keep.txt").write_text("not ours")
    script = (
        "import pathlib, sys\n"
        "from sansmail_trio._metrics import Metrics, enable_multiprocess, multiprocess_dir\n"
        "folder = pathlib.Path(sys.argv[1])\n"
        "enable_multiprocess(folder)\n"
        "assert multiprocess_dir() == str(folder)\n"
        "metrics = Metrics()\n"
        "metrics.probe('smtp').accepted(None)\n"
        "metrics.flush()\n"
        "sys.stdout.write(metrics.scrape().decode())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(folder)], capture_output=True, check=True, timeout=60
    )
    assert value(done.stdout, "sansmail_connections_total", service="smtp") == 1
    # The stale file is gone; the new process's file holds the count.
    names = sorted(p.name for p in folder.iterdir())
    assert names[-1] == "keep.txt"
    assert "counter_1.db" not in names
    assert len({name.split("_")[-1] for name in names[:-1]}) == 1  # one pid's files
