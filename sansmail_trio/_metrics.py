"""The server's Prometheus metrics: what is counted, where the counts live across
processes, and the text a scrape of ``GET /metrics`` on the ``metrics`` listener gets.

Theory of operation
-------------------
The counters and histograms are prometheus-client's own. Under ``sansmail-trio serve``
there are several processes (``processes = N`` servers and the queue runner, `_run.py`),
and a scrape reaches whichever server process the kernel hands the connection to, yet
must see the sum of all of them. prometheus-client's multiprocess mode does that: each
process keeps its values in memory-mapped files of its own, named by its pid, in the
directory ``PROMETHEUS_MULTIPROC_DIR`` names, and `MultiProcessCollector` adds up every
file at scrape time. A child that died and was replaced leaves its file behind, so what
it counted stays in the sum (counters never go down while the server runs). `_run.run`
empties the directory (``<data_dir>/run/metrics``) at every start, after dropping
privileges so the server's user owns it, and turns the mode on (`enable_multiprocess`)
before any child creates a metric. A `serve()` without `run` (tests, embedded use)
counts in a registry of its own instead, read by that process alone.

What is true now rather than counted (open connections per family, the queue's size
and the age of its oldest message) is read at scrape time by `LiveCollector`: the
connection table every server process shares (`_counts.SharedCounts`) and one listing
of the queue directory, with each envelope read once and its arrival time remembered
(a scrape reads only the envelopes it has not seen, at most `QUEUE_READS` of them). A
scrape runs in a worker thread: the files and the listing are blocking reads.

Cost on the hot paths. An increment of prometheus-client's counter is a lock, a pid
check and, in the multiprocess mode, a write into a mapped page: about 1.2 us, and a
small message counted four of them (connection, session, message, delivery). So the
counters are counted here first (`Tally`: an integer attribute bound to its labels
once, about 0.05 us) and written to prometheus-client's by `Metrics.flush`: every
`FLUSH_INTERVAL` seconds (`Metrics.run`, a task of each process), before a scrape in the
process that answers it, and when the process stops. A scrape may therefore miss what
the other processes counted in the last second, and a process killed outright loses at
most its last second of counts; what was flushed stays in its file. The delivery
latency, observed per recipient, is bucketed here too (`Spread`: a bisect and two
additions) and added to the histogram's bucket and sum at the flush; that reaches into
prometheus-client's histogram child (its bounds, buckets and sum, unchanged since
0.4), and observes each value as it comes should those ever be missing. Everything
counts in the event loop's thread but `commit_took`, which the group commit's worker
threads call, and which observes its histogram at once (the library's lock).

Labels are from small closed sets (services, stages, reasons, check results, TLS
versions, SASL mechanisms); never an address or a user, which would grow a series per
client.
"""

from __future__ import annotations

import bisect
import contextlib
import contextvars
import itertools
import os
import pathlib
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from sansmail import sasl
from sansmail.storage.queue import CorruptEnvelopeError, Queue, UnknownQueueIdError
from sansmail_trio._counts import Family, SharedCounts

if TYPE_CHECKING:
    from sansmail_trio._http import Request, Response

__all__ = [
    "CONTENT_TYPE",
    "FLUSH_INTERVAL",
    "PROBE",
    "QUEUE_READS",
    "LiveCollector",
    "Metrics",
    "Probe",
    "SmtpCounts",
    "Spread",
    "Tallies",
    "Tally",
    "enable_multiprocess",
    "multiprocess_dir",
]

#: What a scrape's answer is: the Prometheus text format, as prometheus-client writes it.
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Envelopes a scrape reads at most for the age of the oldest message (the rest at the
#: next scrapes): a scrape of a huge queue stays short.
QUEUE_READS = 10_000

_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Seconds between two writes of a process's counts to the files a scrape reads.
FLUSH_INTERVAL = 1.0

#: Seconds from a message's arrival to its final status (delivered or bounced): a local
#: copy is stored in milliseconds, a relayed one in seconds, a deferred one in hours.
_DELIVERY_BUCKETS = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
    14400,
    86400,
)
#: Seconds one store operation took (a group commit's batch, a local delivery).
_STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

#: The login methods counted by name (SASL's, POP3's USER); anything else is "other".
_MECHANISMS = frozenset({*sasl.MECHANISM_NAMES, "USER"})
#: The listeners whose logins open a mailbox.
_MAILBOX_SERVICES = frozenset({"pop3", "pop3s", "imap", "imaps"})
_TLS_VERSIONS = frozenset({"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"})


def enable_multiprocess(directory: pathlib.Path) -> None:
    """Count in files under `directory`, summed over every process at scrape time (see
    the module docstring). Call once, in the parent, before forking and before any
    metric exists; the directory (in an existing folder) is emptied: what a previous
    start counted is gone, as a restarted exporter's counters are."""
    # Only the server's user reads them (the run/ folder is the control sockets' too).
    for folder in (directory.parent, directory):
        folder.mkdir(mode=0o700, exist_ok=True)
    for entry in directory.iterdir():
        if entry.suffix == ".db":
            entry.unlink(missing_ok=True)
    os.environ[_ENV] = str(directory)
    # prometheus-client picks its value class when its `values` module is first
    # imported, which the CLI has done by now; pick again now that the variable is set.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def multiprocess_dir() -> str | None:
    """The directory of the multiprocess mode, or None when this process counts alone."""
    directory = os.environ.get(_ENV)
    multiprocess = getattr(values.ValueClass, "_multiprocess", False)
    return directory if directory and multiprocess else None


class Metrics:
    """Every metric of one server process; `registry` answers a scrape (`scrape`).

    `counts` and `queue` feed the live gauges (`LiveCollector`); without them (the queue
    runner's process, which no scrape reaches) there are none."""

    def __init__(self, counts: SharedCounts | None = None, queue: Queue | None = None) -> None:
        directory = multiprocess_dir()
        # Multiprocess: the metrics write their files and register nowhere; a scrape
        # reads every process's files. Otherwise: a registry of this process alone.
        own = None if directory is not None else CollectorRegistry()
        self.registry = own if own is not None else CollectorRegistry()
        if directory is not None:
            MultiProcessCollector(self.registry, path=directory)  # type: ignore[no-untyped-call]
        if counts is not None and queue is not None:
            self.registry.register(LiveCollector(counts, queue))
        self.connections = Counter(
            "sansmail_connections",
            "Connections accepted, per listener (refused ones included).",
            ["service"],
            registry=own,
        )
        self.refused = Counter(
            "sansmail_connections_refused",
            "Connections refused at the greeting (connection caps, shutdown).",
            ["service", "reason"],
            registry=own,
        )
        self.sessions = Counter(
            "sansmail_sessions",
            "Sessions started (connections admitted and greeted), per listener.",
            ["service"],
            registry=own,
        )
        self.received = Counter(
            "sansmail_messages_received",
            "Messages accepted (stored, then answered 250) by the SMTP listeners.",
            ["service"],
            registry=own,
        )
        self.deliveries = Counter(
            "sansmail_deliveries",
            "Delivery verdicts per recipient: kind local (a mailbox here) or relay"
            " (another server); status delivered, deferred or bounced.",
            ["kind", "status"],
            registry=own,
        )
        self.delivery_latency = Histogram(
            "sansmail_delivery_latency_seconds",
            "Seconds from a message's arrival to a recipient's final status.",
            ["kind"],
            buckets=_DELIVERY_BUCKETS,
            registry=own,
        )
        self.rejections = Counter(
            "sansmail_smtp_rejections",
            "SMTP refusals by stage, reason and reply class (4xx or 5xx).",
            ["stage", "reason", "status"],
            registry=own,
        )
        self.auth = Counter(
            "sansmail_auth",
            "Login attempts that ended, per listener, mechanism and result.",
            ["service", "mechanism", "result"],
            registry=own,
        )
        self.tls = Counter(
            "sansmail_tls_handshakes",
            "TLS handshakes completed (STARTTLS and implicit TLS), per listener and version.",
            ["service", "version"],
            registry=own,
        )
        self.verdicts = Counter(
            "sansmail_antispam_verdicts",
            "Results of the anti-spam checks (spf, dkim, dmarc, arc, iprev, dnsbl,"
            " greylist, milter).",
            ["check", "result"],
            registry=own,
        )
        self.store_latency = Histogram(
            "sansmail_store_latency_seconds",
            "Seconds a store operation took: smtp_commit (one group commit of the SMTP"
            " intake, all its messages durable), local_delivery (the queue runner's),"
            " mailbox_open (a POP3 or IMAP login's).",
            ["operation"],
            buckets=_STORE_BUCKETS,
            registry=own,
        )
        self._smtp_commit = self.store_latency.labels("smtp_commit")
        self._local_store = self.store_latency.labels("local_delivery")
        self.mailbox_open = self.store_latency.labels("mailbox_open")
        self._tallies: list[Tally] = []
        self._delivered = Tallies(self, self.deliveries)
        self._latency = {k: Spread(self.delivery_latency.labels(k)) for k in ("local", "relay")}

    def tally(self, counter: Counter, *labels: str) -> Tally:
        """`counter`'s child for `labels`, counted here until the next `flush`."""
        tally = Tally(counter.labels(*labels))
        self._tallies.append(tally)
        return tally

    def flush(self) -> None:
        """Write what the tallies counted since the last flush to prometheus-client's
        counters (in the thread that counts: the event loop's)."""
        for tally in self._tallies:
            if tally.n:
                n, tally.n = tally.n, 0
                tally.child.inc(n)
        for spread in self._latency.values():
            spread.flush()

    async def run(self) -> None:
        """Flush every `FLUSH_INTERVAL` seconds, and once more when cancelled."""
        try:
            while True:
                await trio.sleep(FLUSH_INTERVAL)
                self.flush()
        finally:
            self.flush()

    # -- scrape -----------------------------------------------------------------------

    def scrape(self) -> bytes:
        """BLOCKING (reads every process's files and lists the queue): the text of a
        scrape."""
        return generate_latest(self.registry)

    async def handle_scrape(self, request: Request) -> Response:
        """``GET /metrics`` on the ``metrics`` listener (`_http.HTTPService`)."""
        # Here, not at the top: _http imports _tls, which counts with this module's PROBE.
        from sansmail_trio._http import Response  # noqa: PLC0415

        self.flush()  # what this process counted; the others' flush on their own
        body = await trio.to_thread.run_sync(self.scrape)
        return Response(status=200, body=body, content_type=CONTENT_TYPE)

    # -- what the adapters call -----------------------------------------------------------

    def probe(self, service: str) -> Probe:
        """What the connections of listener `service` count with."""
        return Probe(self, service)

    def smtp(self, service: str) -> SmtpCounts:
        """The observer of the SMTP sessions of listener `service`
        (`sansmail.sessions.smtpd.SmtpObserver`)."""
        return SmtpCounts(self, service)

    def commit_took(self, seconds: float) -> None:
        """One group commit of the SMTP intake took `seconds` (called in its thread)."""
        self._smtp_commit.observe(seconds)

    def delivered(self, kind: str, status: str, recipients: int, arrival: float) -> None:
        """`recipients` of a message that arrived at `arrival` got `status` ("sent",
        "deferred", "bounced") by a `kind` ("local", "relay") delivery."""
        shown = "delivered" if status == "sent" else status
        self._delivered[kind, shown].n += recipients
        if shown != "deferred":
            self._latency[kind].observe(max(0.0, time.time() - arrival), recipients)

    def stored_locally(self, seconds: float) -> None:
        """One local delivery of the queue runner took `seconds`."""
        self._local_store.observe(seconds)


class Probe:
    """One listener's counters, bound to its name once; what a connection's task holds
    in `PROBE` for the code that counts without knowing the listener (`_tls`, `_login`)."""

    __slots__ = ("_auth", "_metrics", "_tls", "connections", "service", "sessions")

    def __init__(self, metrics: Metrics, service: str) -> None:
        self._metrics = metrics
        self.service = service
        self.connections = metrics.tally(metrics.connections, service)
        self.sessions = metrics.tally(metrics.sessions, service)
        self._tls = Tallies(metrics, metrics.tls, service)
        self._auth = Tallies(metrics, metrics.auth, service)

    def accepted(self, refused: str | None) -> None:
        """A connection was accepted; `refused` names why it is turned away, if it is."""
        self.connections.n += 1
        if refused is None:
            self.sessions.n += 1
        else:  # rare: at the caps, or shutting down
            self._metrics.refused.labels(self.service, refused).inc()

    def tls(self, version: str | None) -> None:
        """A TLS handshake completed with `version` (``TLSv1.3`` ...)."""
        self._tls[version if version in _TLS_VERSIONS else "other",].n += 1

    def logged_in(self, seconds: float) -> None:
        """A login's mailbox took `seconds` to open (POP3, IMAP; the store's
        ``mailbox_open`` latency). Once per login: observed at once."""
        if self.service in _MAILBOX_SERVICES:
            self._metrics.mailbox_open.observe(seconds)

    def auth(self, mechanism: str, *, success: bool) -> None:
        """A login with `mechanism` ended, accepted or not."""
        shown = mechanism.upper() if mechanism.upper() in _MECHANISMS else "other"
        self._auth[shown, "success" if success else "failure"].n += 1


#: The listener of the connection this task serves (set by the listener's accepting task,
#: whose context each connection's task starts with a copy of), or None: counted
#: nowhere (a service driven without `serve`, in tests).
PROBE: contextvars.ContextVar[Probe | None] = contextvars.ContextVar("sansmail_probe", default=None)


class SmtpCounts:
    """`sansmail.sessions.smtpd.SmtpObserver` for one SMTP listener."""

    __slots__ = ("_metrics", "_received", "_rejections", "_verdicts")

    def __init__(self, metrics: Metrics, service: str) -> None:
        self._metrics = metrics
        self._received = metrics.tally(metrics.received, service)
        self._rejections = Tallies(metrics, metrics.rejections)
        self._verdicts = Tallies(metrics, metrics.verdicts)

    def stored(self, *, local: int, arrival: float) -> None:
        self._received.n += 1
        if local:
            self._metrics.delivered("local", "sent", local, arrival)

    def rejected(self, *, stage: str, reason: str, code: int) -> None:
        self._rejections[stage, reason, "4xx" if code < 500 else "5xx"].n += 1

    def verdict(self, check: str, result: str) -> None:
        self._verdicts[check, result].n += 1


class Tally:
    """One counter child's increments since the last `Metrics.flush` (see the module
    docstring): ``tally.n += 1`` on a hot path."""

    __slots__ = ("child", "n")

    def __init__(self, child: Counter) -> None:
        self.child = child
        self.n = 0


class Tallies(dict[tuple[str, ...], Tally]):
    """The tallies of one counter by the values of its last labels (the first ones,
    `fixed`, bound once), each made on first use."""

    def __init__(self, metrics: Metrics, counter: Counter, *fixed: str) -> None:
        super().__init__()
        self._metrics = metrics
        self._counter = counter
        self._fixed = fixed

    def __missing__(self, labels: tuple[str, ...]) -> Tally:
        tally = self[labels] = self._metrics.tally(self._counter, *self._fixed, *labels)
        return tally


class Spread:
    """One histogram child's observations since the last flush, bucketed here (see the
    module docstring)."""

    __slots__ = ("_bounds", "_counts", "_sum", "child")

    def __init__(self, child: Histogram) -> None:
        self.child = child
        bounds = getattr(child, "_upper_bounds", None)
        fits = hasattr(child, "_buckets") and hasattr(child, "_sum")
        # None: observed at once, through the library's own observe.
        self._bounds: list[float] | None = list(bounds) if bounds and fits else None
        self._counts = [0] * len(self._bounds or ())
        self._sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        """`times` observations of `value`."""
        if self._bounds is None:
            for _ in range(times):
                self.child.observe(value)
            return
        # The first bucket whose bound is at least `value`, as Histogram.observe picks.
        self._counts[bisect.bisect_left(self._bounds, value)] += times
        self._sum += value * times

    def flush(self) -> None:
        counts = self._counts
        if not any(counts):
            return
        child: Any = self.child
        child._sum.inc(self._sum)
        for index, count in enumerate(counts):
            if count:
                child._buckets[index].inc(count)
                counts[index] = 0
        self._sum = 0.0


class LiveCollector(Collector):
    """The gauges read at scrape time: open connections per family over every server
    process, the queue's size and the age of its oldest message (see the module
    docstring)."""

    def __init__(self, counts: SharedCounts, queue: Queue) -> None:
        self._counts = counts
        self._queue = queue
        self._lock = threading.Lock()  # scrapes may overlap, each in a thread
        self._arrivals: dict[str, float] = {}

    def collect(self) -> Iterable[Metric]:
        open_now = GaugeMetricFamily(
            "sansmail_open_connections",
            "Connections open now, per service family, over every server process.",
            labels=["family"],
        )
        for family in Family:
            open_now.add_metric([family.name.lower()], self._counts.total(family))
        yield open_now
        size, oldest = self._queue_state(time.time())
        yield GaugeMetricFamily("sansmail_queue_messages", "Messages in the queue now.", value=size)
        yield GaugeMetricFamily(
            "sansmail_queue_oldest_age_seconds",
            "Age of the oldest message in the queue (0 when it is empty).",
            value=oldest,
        )

    def _queue_state(self, now: float) -> tuple[int, float]:
        with self._lock:
            ids = self._queue.ids()
            arrivals = self._arrivals
            for gone in arrivals.keys() - ids:
                del arrivals[gone]
            for queue_id in itertools.islice(ids - arrivals.keys(), QUEUE_READS):
                # Being written, just removed, or unreadable (`QueueStore.list` skips it too).
                with contextlib.suppress(
                    UnknownQueueIdError, CorruptEnvelopeError, ValueError, OSError
                ):
                    arrivals[queue_id] = self._queue.load(queue_id).arrival
            known = [arrivals[i] for i in ids if i in arrivals]
            return len(ids), max(0.0, now - min(known)) if known else 0.0
