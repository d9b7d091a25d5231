"""Run records, and the tables made from them.

Every pass of the load generator against a server is one ``RunRecord``; the JSON file the
harness writes is the list of them plus a description of the machine, so that anything
printed can be recomputed. The tables follow shared/research/perf-baseline.md:

* per server and cell (size, concurrency): medians over the repetitions of msgs/s,
  payload MiB/s, server CPU seconds per 1000 messages [user/sys], generator CPU, and of
  the per-run p50/p99 latencies; "runs (failed)" says how many runs stand behind them.
  A failed run contributes no number, it is only counted.
* per pair of servers: the ratio is taken within each (rep, size, concurrency), where the
  two ran back to back, and the table shows the median of those ratios [min-max]. Ratios
  between runs minutes apart would mostly measure the machine's drift.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "LATENCY",
    "THROUGHPUT",
    "CellSummary",
    "PhaseRatio",
    "RunRecord",
    "Spread",
    "acceptance_lines",
    "format_ratio_table",
    "format_server_table",
    "load_line",
    "parse_size",
    "ratios",
    "size_label",
    "summarize",
]

THROUGHPUT = "throughput"
LATENCY = "latency"


@dataclass
class RunRecord:
    server: str
    size: int
    concurrency: int
    rep: int
    phase: str  # THROUGHPUT, or LATENCY: an extra pass with the timing generator
    generator: str  # "smtp-source" | "python"
    messages: int
    ok: bool = False
    error: str = ""
    wall_s: float = 0.0  # generator start to its last 250 (smtp-source: to its exit)
    e2e_s: float = 0.0  # generator start to the last file in new/ (accept + delivery lag)
    msgs_per_s: float = 0.0
    mib_per_s: float = 0.0  # payload only, as the baseline counts it
    server_cpu_user: float = 0.0
    server_cpu_sys: float = 0.0
    server_rss_kib: int = 0
    gen_cpu_user: float = 0.0
    gen_cpu_sys: float = 0.0
    gen_processes: int = 1
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50 p90 p99 max
    machine_busy_pct: float = 0.0  # all cores, during the pass
    background_busy_pct: float = 0.0  # all cores, during the idle pause before it
    load_1m: float = 0.0  # the 1-minute load average as the pass began
    delivered: int = 0

    def per_1000(self, seconds: float) -> float:
        return seconds / self.messages * 1000


def parse_size(text: str) -> int:
    """``"10k"`` -> 10240, ``"1m"`` -> 1048576, ``"300"`` -> 300 (k = KiB, as in the baseline)."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = 1
    if t[-1:] in ("k", "m"):
        factor = 1024 if t[-1] == "k" else 1024 * 1024
        t = t[:-1]
    if not t.isdigit():
        raise ValueError(f"not a size: {text!r} (examples: 1k, 10k, 100k, 300)")
    return int(t) * factor


def size_label(size: int) -> str:
    if size >= 1024 * 1024 and size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)} MiB"
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


@dataclass
class CellSummary:
    runs: int
    failed: int
    msgs_per_s: float | None
    e2e_msgs_per_s: float | None
    mib_per_s: float | None
    cpu_per_1000: float | None
    cpu_user_per_1000: float | None
    cpu_sys_per_1000: float | None
    gen_cpu_per_1000: float | None
    busy_pct: float | None
    p50_ms: float | None
    p99_ms: float | None
    latency_msgs_per_s: float | None  # the timing generator's own rate, for comparison


@dataclass(frozen=True)
class Spread:
    """A median with the range it came from."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        return cls(statistics.median(values), min(values), max(values)) if values else None


@dataclass(frozen=True)
class PhaseRatio:
    """One phase of the mailbox bench: sansmail's speed over the peer's."""

    phase: str
    warm: Spread | None  # over the warm reps, each ratio within its rep
    first: float | None  # the first (cold) rep's ratio


def _median(values: Iterable[float]) -> float | None:
    vals = list(values)
    return statistics.median(vals) if vals else None


def summarize(records: Sequence[RunRecord], server: str, size: int, conc: int) -> CellSummary:
    cell = [r for r in records if (r.server, r.size, r.concurrency) == (server, size, conc)]
    main = [r for r in cell if r.phase == THROUGHPUT]
    good = [r for r in main if r.ok]
    timed = [r for r in cell if r.ok and r.latency_ms]
    extra = [r for r in cell if r.ok and r.phase == LATENCY]
    return CellSummary(
        runs=len(main),
        failed=len(main) - len(good),
        msgs_per_s=_median(r.msgs_per_s for r in good),
        e2e_msgs_per_s=_median(r.messages / r.e2e_s for r in good if r.e2e_s > 0),
        mib_per_s=_median(r.mib_per_s for r in good),
        cpu_per_1000=_median(r.per_1000(r.server_cpu_user + r.server_cpu_sys) for r in good),
        cpu_user_per_1000=_median(r.per_1000(r.server_cpu_user) for r in good),
        cpu_sys_per_1000=_median(r.per_1000(r.server_cpu_sys) for r in good),
        gen_cpu_per_1000=_median(r.per_1000(r.gen_cpu_user + r.gen_cpu_sys) for r in good),
        busy_pct=_median(r.machine_busy_pct for r in good),
        p50_ms=_median(r.latency_ms["p50"] for r in timed),
        p99_ms=_median(r.latency_ms["p99"] for r in timed),
        latency_msgs_per_s=_median(r.msgs_per_s for r in extra),
    )


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def format_server_table(
    records: Sequence[RunRecord], server: str, cells: Sequence[tuple[int, int]]
) -> str:
    has_latency_pass = any(r.phase == LATENCY for r in records if r.server == server)
    head = [
        "size",
        "conc",
        "msgs/s",
        "e2e msgs/s",
        "MiB/s",
        "p50 ms",
        "p99 ms",
        "server CPU s/1000 [user/sys]",
        "gen CPU s/1000",
        "busy %",
        "runs (failed)",
    ]
    if has_latency_pass:
        head.insert(7, "timing-pass msgs/s")
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for size, conc in cells:
        s = summarize(records, server, size, conc)
        if s.runs == 0:
            continue
        rate = "FAILED" if s.msgs_per_s is None else _num(s.msgs_per_s)
        cpu = (
            "-"
            if s.cpu_per_1000 is None
            else f"{s.cpu_per_1000:.2f} [{s.cpu_user_per_1000:.2f}/{s.cpu_sys_per_1000:.2f}]"
        )
        row = [
            size_label(size),
            str(conc),
            rate,
            _num(s.e2e_msgs_per_s),
            _num(s.mib_per_s, ".1f"),
            _num(s.p50_ms, ".2f"),
            _num(s.p99_ms, ".2f"),
            cpu,
            _num(s.gen_cpu_per_1000, ".2f"),
            _num(s.busy_pct, ".0f"),
            f"{s.runs} ({s.failed})",
        ]
        if has_latency_pass:
            row.insert(7, _num(s.latency_msgs_per_s))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


@dataclass
class Ratio:
    median: float
    low: float
    high: float
    count: int

    def __str__(self) -> str:
        return f"{self.median:.2f} [{self.low:.2f}-{self.high:.2f}]"


def ratios(
    records: Sequence[RunRecord],
    num: str,
    den: str,
    *,
    size: int,
    conc: int,
    metric: Callable[[RunRecord], float],
) -> Ratio | None:
    """metric(num) / metric(den) per rep where both ran ok, then median [min-max]."""
    by_rep: dict[int, dict[str, RunRecord]] = {}
    for r in records:
        if r.phase == THROUGHPUT and r.ok and (r.size, r.concurrency) == (size, conc):
            by_rep.setdefault(r.rep, {})[r.server] = r
    values = [
        metric(pair[num]) / metric(pair[den])
        for pair in by_rep.values()
        if num in pair and den in pair and metric(pair[den]) > 0
    ]
    if not values:
        return None
    return Ratio(statistics.median(values), min(values), max(values), len(values))


def _rate(r: RunRecord) -> float:
    return r.msgs_per_s


def _e2e_rate(r: RunRecord) -> float:
    return r.messages / r.e2e_s if r.e2e_s > 0 else 0.0


def _cpu(r: RunRecord) -> float:
    return r.per_1000(r.server_cpu_user + r.server_cpu_sys)


def format_ratio_table(
    records: Sequence[RunRecord], num: str, den: str, cells: Sequence[tuple[int, int]]
) -> str:
    """msgs/s (to the last 250), e2e msgs/s (to the last file in new/) and CPU ratios.

    The two rates differ for a server that queues before it delivers (Postfix): its
    accept rate is how fast mail is safe, its e2e rate how fast it can be read.
    """
    lines = [
        f"| size | conc | msgs/s {num}/{den} | e2e msgs/s {num}/{den} "
        f"| CPU per msg {num}/{den} | reps |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for size, conc in cells:
        rate = ratios(records, num, den, size=size, conc=conc, metric=_rate)
        e2e = ratios(records, num, den, size=size, conc=conc, metric=_e2e_rate)
        cpu = ratios(records, num, den, size=size, conc=conc, metric=_cpu)
        reps = rate.count if rate else 0
        lines.append(
            f"| {size_label(size)} | {conc} | {rate or '-'} | {e2e or '-'} | {cpu or '-'} "
            f"| {reps} |"
        )
    return "\n".join(lines)


def load_line(records: Sequence[RunRecord]) -> str:
    """The 1-minute load average over the passes' starts: how shared the machine was."""
    loads = sorted(r.load_1m for r in records)
    if not loads:
        return "load average (1 min) at pass starts: no pass ran"
    return (
        f"load average (1 min) at pass starts: min {loads[0]:.2f}, "
        f"median {statistics.median(loads):.2f}, max {loads[-1]:.2f} "
        f"({os.cpu_count() or 1} cores)"
    )


# The acceptance targets: (size, concurrency, minimum median msgs/s ratio).
TARGETS = ((10 * 1024, 50, 1.2), (100 * 1024, 50, 2.0))


def acceptance_lines(records: Sequence[RunRecord], num: str, den: str) -> list[str]:
    out = []
    for size, conc, target in TARGETS:
        r = ratios(records, num, den, size=size, conc=conc, metric=_rate)
        if r is None:
            continue
        verdict = "PASS" if r.median >= target else "FAIL"
        out.append(
            f"{verdict}: {size_label(size)} c={conc}: {num}/{den} = {r} (target >= {target})"
        )
    return out
