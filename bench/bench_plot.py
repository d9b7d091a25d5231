"""Pictures of a bench run: the PNG beside the JSON, drawn from the JSON alone.

    python3 bench/bench_plot.py RESULTS.json [-o PICTURE.png]

* **SMTP** (``smtp_bench.py``): one column per message size. Top: msgs/s per
  concurrency, one bar per server (median of the reps, whiskers min-max), a black diamond
  for the end-to-end rate (to the last file in ``new/``), which sits below the bar only
  for a server that queues before it delivers. Bottom: the first server's msgs/s over
  each peer's, taken within each rep and cell (median, whiskers min-max), log scale,
  with 1.0 (as fast as the peer) drawn across.
* **IMAP/POP3** (``mailbox_peers_bench.py``): one panel per protocol, one bar per phase:
  sansmail's speed over Dovecot's (Dovecot wall / sansmail wall) within each warm rep,
  median with whiskers min-max, log scale, 1.0 drawn; a dot for the first (cold) rep.

Everything a picture shows is in the JSON, so a picture can be redrawn, or drawn again
differently, without running the bench again. matplotlib is the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, and no GUI toolkit to import

import matplotlib.pyplot as plt  # after use(): the backend must be chosen first
from bench_report import THROUGHPUT, PhaseRatio, RunRecord, Spread, ratios, size_label
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

__all__ = [
    "PhaseRatio",
    "Spread",
    "main",
    "plot_file",
    "plot_mailbox",
    "plot_smtp",
    "smtp_rates",
]

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")


def smtp_rates(
    records: Sequence[RunRecord], server: str, size: int, conc: int
) -> tuple[Spread | None, float | None]:
    """(msgs/s over the good throughput passes, median e2e msgs/s) of one server and cell."""
    good = [
        r
        for r in records
        if r.ok
        and r.phase == THROUGHPUT
        and (r.server, r.size, r.concurrency) == (server, size, conc)
    ]
    e2e = [r.messages / r.e2e_s for r in good if r.e2e_s > 0]
    return Spread.of([r.msgs_per_s for r in good]), (statistics.median(e2e) if e2e else None)


def _whiskers(spreads: Sequence[Spread | None]) -> list[list[float]]:
    return [
        [s.median - s.low if s else 0.0 for s in spreads],
        [s.high - s.median if s else 0.0 for s in spreads],
    ]


def plot_smtp(
    records: Sequence[RunRecord],
    servers: Sequence[str],
    cells: Sequence[tuple[int, int]],
    path: Path,
    title: str,
) -> None:
    """Rates per size and concurrency for each server, and the first server's ratios."""
    sizes = list(dict.fromkeys(size for size, _ in cells))
    concs = list(dict.fromkeys(conc for _, conc in cells))
    fig, axes = plt.subplots(
        2,
        len(sizes),
        figsize=(4.8 * len(sizes) + 1, 8),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 2]},
    )
    width = 0.8 / max(1, len(servers))
    for col, size in enumerate(sizes):
        top: Axes = axes[0][col]
        for i, server in enumerate(servers):
            stats = [smtp_rates(records, server, size, conc) for conc in concs]
            spreads = [s for s, _ in stats]
            xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(concs))]
            heights = [s.median if s else 0.0 for s in spreads]
            top.bar(
                xs,
                heights,
                width,
                yerr=_whiskers(spreads),
                capsize=3,
                ecolor="dimgray",
                color=COLORS[i % len(COLORS)],
                label=server,
            )
            e2e = [(x, e) for x, (_, e) in zip(xs, stats, strict=True) if e is not None]
            if e2e:
                # A diamond, not a tick: a tick would read as one of the whiskers' caps.
                top.scatter(
                    [x for x, _ in e2e],
                    [e for _, e in e2e],
                    marker="D",
                    s=22,
                    color="black",
                    edgecolors="white",
                    zorder=3,
                    label="end to end (median)" if i == 0 else None,
                )
        top.set_title(f"{size_label(size)} messages")
        top.set_xticks(range(len(concs)), [f"c={c}" for c in concs])
        top.set_ylabel("msgs/s (median, min-max)")
        top.grid(axis="y", alpha=0.3)
        if col == 0:
            top.legend(fontsize="small")
        _plot_smtp_ratios(axes[1][col], records, servers, size, concs)
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_smtp_ratios(
    ax: Axes, records: Sequence[RunRecord], servers: Sequence[str], size: int, concs: list[int]
) -> None:
    num, peers = servers[0], servers[1:]
    width = 0.8 / max(1, len(peers))
    values: list[float] = []
    for i, den in enumerate(peers):
        found = [
            ratios(records, num, den, size=size, conc=conc, metric=lambda r: r.msgs_per_s)
            for conc in concs
        ]
        points = [
            (j + (i - (len(peers) - 1) / 2) * width, Spread(r.median, r.low, r.high))
            for j, r in enumerate(found)
            if r is not None
        ]
        if not points:
            continue
        spreads = [s for _, s in points]
        values += [v for s in spreads for v in (s.low, s.high)]
        # A ring for the end-to-end ratio: around the dot when the peer delivers before
        # its 250, apart from it when the peer queues first (Postfix).
        e2e = [
            (j + (i - (len(peers) - 1) / 2) * width, r.median)
            for j, conc in enumerate(concs)
            if (r := ratios(records, num, den, size=size, conc=conc, metric=_e2e)) is not None
        ]
        values += [v for _, v in e2e]
        ax.scatter(
            [x for x, _ in e2e],
            [v for _, v in e2e],
            s=110,
            facecolors="none",
            edgecolors=COLORS[(i + 1) % len(COLORS)],
        )
        ax.errorbar(
            [x for x, _ in points],
            [s.median for s in spreads],
            yerr=_whiskers(spreads),
            fmt="o",
            capsize=4,
            color=COLORS[(i + 1) % len(COLORS)],
            label=f"{num} / {den}",
        )
        for x, s in points:
            ax.annotate(
                f"{s.median:.2f}",
                (x, s.median),
                textcoords="offset points",
                xytext=(6, 0),
                va="center",
                fontsize="x-small",
            )
    if values:  # one legend entry for the rings of every peer
        ax.scatter([], [], s=110, facecolors="none", edgecolors="gray", label="end to end")
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    _log_limits(ax, values, axis="y")
    ax.set_xticks(range(len(concs)), [f"c={c}" for c in concs])
    ax.set_xlim(-0.6, len(concs) - 0.4)
    ax.set_ylabel(f"{num} msgs/s over peer's (log)")
    ax.grid(axis="y", alpha=0.3, which="both")
    if peers:
        ax.legend(fontsize="small")


def _e2e(r: RunRecord) -> float:
    return r.messages / r.e2e_s if r.e2e_s > 0 else 0.0


def _log_limits(ax: Axes, values: Sequence[float], axis: str) -> None:
    """Log scale around the values, always showing 1.0 with some room on both sides."""
    positive = [v for v in values if v > 0] + [1.0]
    low = 10 ** (math.floor(math.log10(min(positive)) * 4 - 1) / 4)
    high = 10 ** (math.ceil(math.log10(max(positive)) * 4 + 1) / 4)
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")  # 0.5, 1, 2 rather than 5x10^-1
    # Labels on some minor ticks only, fewer the more decades are shown: all eight of
    # them would crowd each other.
    decades = math.log10(high / low)
    digits = "235" if decades <= 1.6 else "5" if decades <= 3.1 else ""
    some = FuncFormatter(lambda v, _pos: f"{v:g}" if f"{v:e}"[0] in digits else "")
    target = ax.yaxis if axis == "y" else ax.xaxis
    if axis == "y":
        ax.set_yscale("log")
        ax.set_ylim(low, high)
    else:
        ax.set_xscale("log")
        ax.set_xlim(low, high)
    target.set_major_formatter(plain)
    target.set_minor_formatter(some)


def plot_mailbox(
    panels: Mapping[str, Sequence[PhaseRatio]],
    peer: str,
    path: Path,
    title: str,
    first_notes: Mapping[str, str] | None = None,
) -> None:
    """One panel per protocol: each phase's speed ratio to the peer, log scale.

    Bars grow from 1.0, right when sansmail is faster and left when it is slower, so
    that their length is the size of the difference whichever way it goes.
    """
    heights = [max(1, len(rows)) for rows in panels.values()] or [1]
    fig, axes = plt.subplots(
        len(heights),
        1,
        figsize=(8.5, 1.4 + 0.36 * sum(heights) + 1.1 * len(heights)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for ax, (protocol, rows) in zip((a[0] for a in axes), panels.items(), strict=True):
        ys = list(range(len(rows)))[::-1]  # the first phase at the top
        warm = [r.warm for r in rows]
        ax.barh(
            ys,
            [s.median - 1.0 if s else 0.0 for s in warm],
            left=1.0,
            xerr=_whiskers(warm),
            capsize=3,
            color=[COLORS[0] if s and s.median >= 1 else COLORS[3] for s in warm],
            alpha=0.8,
        )
        # Stand-ins in the legend: the bars' own entry would take the first bar's color.
        handles: list[Artist] = [
            Patch(color=color, alpha=0.8, label=f"warm reps, sansmail {meaning}")
            for color, meaning in ((COLORS[0], "faster"), (COLORS[3], "slower"))
        ]
        firsts = [(y, r.first) for y, r in zip(ys, rows, strict=True) if r.first]
        if firsts:
            note = (first_notes or {}).get(protocol)
            dots = ax.scatter(
                [f for _, f in firsts],
                [y for y, _ in firsts],
                color="black",
                zorder=3,
                s=18,
                label=f"first rep ({note})" if note else "first rep",
            )
            handles.append(dots)
        ax.axvline(1.0, color="gray", linestyle="--", linewidth=1)
        values = [v for s in warm if s for v in (s.low, s.high)]
        values += [f for _, f in firsts]
        _log_limits(ax, values, axis="x")
        # The median in the label: beside the bars it would collide with the whiskers.
        labels = [f"{r.phase}  {r.warm.median:.2f}\u00d7" if r.warm else r.phase for r in rows]
        ax.set_yticks(ys, labels)
        ax.set_title(f"{protocol}: sansmail speed / {peer} speed (> 1: sansmail is faster)")
        ax.grid(axis="x", alpha=0.3, which="both")
        ax.legend(
            handles=handles,
            fontsize="x-small",
            loc="upper center",
            bbox_to_anchor=(0.5, -0.12),
            ncols=2,
        )
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _spread(data: Mapping[str, Any] | None) -> Spread | None:
    return None if data is None else Spread(data["median"], data["low"], data["high"])


def plot_file(json_path: Path, png_path: Path) -> None:
    """Draw the picture of a bench's JSON file (SMTP or mailbox, by its ``kind``)."""
    data = json.loads(json_path.read_text())
    kind = data.get("kind")
    when = data.get("started", "")
    if kind == "smtp":
        names = {f.name for f in fields(RunRecord)}
        records = [RunRecord(**{k: v for k, v in r.items() if k in names}) for r in data["runs"]]
        servers = [s for s in data["servers"] if any(r.server == s for r in records)]
        cells = [(int(size), int(conc)) for size, conc in data["cells"]]
        gen = data["options"].get("generator", "?")
        load = data.get("load_1m")
        title = f"SMTP, {gen}, {data['options'].get('reps')} rep(s), {when}"
        if load:
            title += f"; load avg {load[0]:.1f}-{load[1]:.1f}"
        plot_smtp(records, servers, cells, png_path, title)
    elif kind == "mailbox-peers":
        panels = {
            protocol: [PhaseRatio(r["phase"], _spread(r["warm"]), r["first"]) for r in rows]
            for protocol, rows in data["ratios"].items()
        }
        title = (
            f"{data['expected']['messages']} messages, {data['options']['reps']} warm rep(s), "
            f"{when}"
        )
        notes = data.get("first_rep")
        plot_mailbox(panels, data.get("peer", "Dovecot"), png_path, title, notes)
    else:
        raise ValueError(f"{json_path}: not a bench result (kind {kind!r})")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_plot.py", description="Redraw a bench's PNG.")
    p.add_argument("json", type=Path, help="smtp_bench.py or mailbox_peers_bench.py JSON")
    p.add_argument("-o", "--output", type=Path, help="default: the JSON's name, .png")
    args = p.parse_args(argv)
    out = args.output or args.json.with_suffix(".png")
    try:
        plot_file(args.json, out)
    except (OSError, ValueError, KeyError) as exc:
        print(f"bench_plot.py: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
