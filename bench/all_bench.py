"""Every bench in one invocation, and one table of the project's performance targets.

    python3 bench/all_bench.py [--out DIR] [--reps R] [--only LIST] [--quick]
        [--summary DIR]

Theory of operation
-------------------
The four benches each run sansmail beside its peers, a moment apart on the same machine:

========  ==============================  =============================================
name      bench                           peers
========  ==============================  =============================================
smtp      ``smtp_bench.py`` (10 KiB, 50   aiosmtpd (fsync'd Maildir), Postfix delivered
          connections)
relay     ``relay_bench.py --postfix``    Postfix relayed to the same ``smtp-sink``
mailbox   ``mailbox_peers_bench.py``      Dovecot: IMAP and POP3 phases, 10,000 messages
memory    ``imap_memory_bench.py``        Dovecot: 1,000 idle sessions on that INBOX
========  ==============================  =============================================

This runs them one after the other (never two at once: each wants the whole machine),
each writing its JSON, its PNG where it draws one, and its printed report into ``--out``.
Then it reads the JSON files back and prints one table: every target of the performance
issue with the figure measured, the target, and whether it was met. Every ratio in it was
taken within one rep of one bench, as the benches themselves take them; the table shows
the median [min-max] over the reps.

``--summary DIR`` prints the table again from a finished run's folder, without running.
A bench that fails or cannot run its peer leaves its rows empty ("-"), and the exit status
is 1; it is 0 when every bench ran, whether or not each target was met.

The peers need root and Debian's postfix, dovecot-imapd and dovecot-pop3d (see
bench/README.md); only 127.0.0.1 and 127.0.0.2 are ever connected to.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Row", "format_rows", "main", "rows"]

HERE = Path(__file__).resolve().parent
BENCHES = ("smtp", "relay", "mailbox", "memory")
KIB10 = 10 * 1024
MIB = 1024

Json = dict[str, Any]


@dataclass(frozen=True)
class Row:
    """One target: what was measured against it, and whether it was met."""

    work: str
    measured: str  # "-" when the bench gave no figure
    target: str
    met: bool | None  # None: not measured


def _spread(values: Sequence[float], form: str = ".2f", unit: str = "x") -> str:
    if len(values) == 1:
        return f"{values[0]:{form}}{unit}"
    mid = statistics.median(values)
    return f"{mid:{form}}{unit} [{min(values):{form}}-{max(values):{form}}]"


def _ratio_row(work: str, values: Sequence[float], target: str, ok: Callable[[float], bool]) -> Row:
    if not values:
        return Row(work, "-", target, None)
    return Row(work, _spread(values), target, ok(statistics.median(values)))


# --- smtp --------------------------------------------------------------------------------


def _smtp_ratios(data: Json, den: str, *, e2e: bool) -> list[float]:
    """sansmail over `den` at 10 KiB / 50 connections, per rep where both ran ok."""
    by_rep: dict[int, dict[str, Json]] = {}
    for run in data.get("runs", []):
        if (
            run.get("phase") == "throughput"
            and run.get("ok")
            and (run.get("size"), run.get("concurrency")) == (KIB10, 50)
        ):
            by_rep.setdefault(run["rep"], {})[run["server"]] = run

    def rate(run: Json) -> float:
        if not e2e:
            return float(run["msgs_per_s"])
        return run["messages"] / run["e2e_s"] if run.get("e2e_s") else 0.0

    return [
        rate(pair["sansmail"]) / rate(pair[den])
        for pair in by_rep.values()
        if "sansmail" in pair and den in pair and rate(pair[den]) > 0
    ]


def smtp_rows(data: Json | None) -> list[Row]:
    data = data or {}
    return [
        _ratio_row(
            "SMTP durable delivery, 10 KiB, 50 conns: sansmail / aiosmtpd msgs/s",
            _smtp_ratios(data, "aiosmtpd", e2e=False),
            ">= 1.5x",
            lambda v: v >= 1.5,
        ),
        # Postfix answers 250 once queued: its rate to the last file in new/ is what it
        # delivered, while sansmail's 250 already means delivered.
        _ratio_row(
            "same: sansmail / Postfix delivered (to the last file in new/)",
            _smtp_ratios(data, "postfix", e2e=True),
            ">= 1.5x",
            lambda v: v >= 1.5,
        ),
    ]


# --- relay -------------------------------------------------------------------------------


def relay_rows(data: Json | None) -> list[Row]:
    runs = (data or {}).get("runs", {})
    mine, theirs = runs.get("sansmail", []), runs.get("postfix", [])
    relayed = [
        m["relayed"] / t["relayed"] for m, t in zip(mine, theirs, strict=False) if t.get("relayed")
    ]
    return [
        _ratio_row(
            "relay 10 KiB through the queue to smtp-sink: sansmail / Postfix relayed",
            relayed,
            ">= 1x",
            lambda v: v >= 1.0,
        )
    ]


# --- mailbox -----------------------------------------------------------------------------

# (protocol, phase, what the row says, target text, the least speed ratio that meets it)
MAILBOX_TARGETS = (
    ("IMAP", "fetch_meta", "IMAP FETCH FLAGS INTERNALDATE RFC822.SIZE ENVELOPE of 10,000, warm",
     "within 2x of Dovecot", 0.5),
    ("IMAP", "search SUBJECT invoice", "IMAP SEARCH SUBJECT", "within 2x", 0.5),
    ("IMAP", "search FROM alice", "IMAP SEARCH FROM", "within 2x", 0.5),
    ("IMAP", "search BODY budget", "IMAP SEARCH BODY", "no slower than Dovecot", 1.0),
    ("IMAP", "search TEXT quarterly-nomatch", "IMAP SEARCH TEXT", "no slower than Dovecot",
     1.0),
    ("POP3", "retr_all", "POP3 RETR of 10,000", "within 2x", 0.5),
)  # fmt: skip


def mailbox_rows(data: Json | None) -> list[Row]:
    ratios = (data or {}).get("ratios", {})
    out = []
    for protocol, phase, work, target, least in MAILBOX_TARGETS:
        found = next((r for r in ratios.get(protocol, []) if r.get("phase") == phase), None)
        warm = (found or {}).get("warm")
        if not warm:
            out.append(Row(work + " (speed / Dovecot's)", "-", target, None))
            continue
        text = f"{warm['median']:.2f}x [{warm['low']:.2f}-{warm['high']:.2f}]"
        out.append(Row(work + " (speed / Dovecot's)", text, target, warm["median"] >= least))
    return out


# --- memory ------------------------------------------------------------------------------


def memory_rows(data: Json | None, *, limit_mib: float = 200.0) -> list[Row]:
    runs = [
        r
        for r in (data or {}).get("runs", [])
        if r.get("target", "").startswith("sansmail") and not r.get("error") and r.get("held")
    ]
    if not runs:
        return [
            Row("1,000 idle IMAP sessions on 10,000 messages: server PSS held", "-",
                f"< {limit_mib:.0f} MiB", None),
            Row("memory a minute after they log out / before", "-", "<= 1.10", None),
        ]  # fmt: skip
    sessions = runs[0]["sessions"]
    held = [r["held"]["pss_kib"] / MIB for r in runs]
    returned = []
    for r in runs:
        if not r.get("after") or not r.get("before"):
            continue
        last = max(r["after"], key=float)
        returned.append(r["after"][last]["pss_kib"] / r["before"]["pss_kib"])
    last_s = max(runs[0].get("after") or {"?": 0}, key=lambda k: float(k) if k != "?" else 0)
    return [
        Row(
            f"{sessions:,} idle IMAP sessions: server PSS held (all processes)",
            _spread(held, ".1f", " MiB"),
            f"< {limit_mib:.0f} MiB",
            statistics.median(held) < limit_mib,
        ),
        _ratio_row(
            f"memory {last_s} s after they log out / before they came",
            returned,
            "<= 1.10",
            lambda v: v <= 1.10,
        ),
    ]


# --- the table ---------------------------------------------------------------------------


def _load(path: Path) -> Json | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def rows(out: Path) -> list[Row]:
    """Every target's row, from the JSON files of a run in `out`."""
    return [
        *smtp_rows(_load(out / "smtp.json")),
        *relay_rows(_load(out / "relay.json")),
        *mailbox_rows(_load(out / "mailbox.json")),
        *memory_rows(_load(out / "memory.json")),
    ]


def format_rows(table: Sequence[Row]) -> str:
    mark = {True: "met", False: "NOT met", None: "not measured"}
    lines = ["| work | measured (median [min-max]) | target | |", "|---|---:|---|---|"]
    lines += [f"| {r.work} | {r.measured} | {r.target} | {mark[r.met]} |" for r in table]
    return "\n".join(lines)


def commands(args: argparse.Namespace, out: Path) -> dict[str, list[str]]:
    """The command line of each bench: what the table's figures come from."""
    py = sys.executable
    reps = str(args.reps)
    quick = ["--quick"] if args.quick else []
    return {
        "smtp": [
            py, str(HERE / "smtp_bench.py"), "--sizes", "10k", "--concurrency", "50",
            "--reps", reps, *(["--messages", "300"] if args.quick else []),
            "--json", str(out / "smtp.json"), "--png", str(out / "smtp.png"),
        ],
        "relay": [
            py, str(HERE / "relay_bench.py"), "--postfix", "--reps", reps,
            "--messages", "300" if args.quick else "4000", "--json", str(out / "relay.json"),
        ],
        "mailbox": [
            py, str(HERE / "mailbox_peers_bench.py"), *quick, "--reps", reps,
            "--json", str(out / "mailbox.json"), "--png", str(out / "mailbox.png"),
        ],
        "memory": [
            py, str(HERE / "imap_memory_bench.py"), *quick, "--processes", "1",
            "--reps", "1", "--after", "3,60", "--json", str(out / "memory.json"),
        ],
    }  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="all_bench.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="folder for every result (default all-bench-<time>)")
    p.add_argument("--reps", type=int, default=3, help="reps of each bench (%(default)s)")
    p.add_argument("--only", default=",".join(BENCHES), help="benches to run (%(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke run: small counts, 1 rep")
    p.add_argument("--summary", type=Path, metavar="DIR", help="only print DIR's table")
    args = p.parse_args(argv)
    args.only_list = [b.strip() for b in args.only.split(",") if b.strip()]
    if set(args.only_list) - set(BENCHES):
        p.error(f"--only: some of {','.join(BENCHES)}")
    if args.quick:
        args.reps = 1
    if args.reps < 1:
        p.error("--reps must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summary is not None:
        print(format_rows(rows(args.summary)))
        return 0
    out = args.out or Path(time.strftime("all-bench-%Y%m%dT%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    status = 0
    ran = {}
    for name, cmd in commands(args, out).items():
        if name not in args.only_list:
            continue
        print(f"== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        started = time.monotonic()
        with open(out / f"{name}.txt", "w") as log:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
        ran[name] = {"cmd": cmd, "status": done.returncode, "s": time.monotonic() - started}
        print(
            f"   exit {done.returncode} after {ran[name]['s']:.0f} s; report in {out}/{name}.txt",
            file=sys.stderr,
            flush=True,
        )
        status |= done.returncode != 0
    (out / "commands.json").write_text(json.dumps(ran, indent=1) + "\n")
    print(format_rows(rows(out)))
    return status


if __name__ == "__main__":
    sys.exit(main())
