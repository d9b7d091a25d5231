"""IMAP and POP3 of sansmail beside Dovecot, on the same generated mailbox, in one command.

    python3 bench/mailbox_peers_bench.py [--messages N] [--reps R] [--processes P]
        [--quick] [--json FILE] [--png FILE] [--tmpdir DIR] [--keep] [--deadline S]

Theory of operation
-------------------
``mailbox_bench.py`` measures sansmail against the Dovecot figures published in
shared/research/perf-baseline.md; this runs Dovecot itself, beside sansmail, in the same
invocation, so that every ratio is between two runs made a moment apart on the same
machine in the same state. It reuses that bench's mailbox, phases and checks, so the
two benches cannot drift apart in what they measure.

1. ``mailbox_bench.generate_mailbox`` writes the mailbox twice from one seed: into
   sansmail's INBOX and into Dovecot's ``~/Maildir``. The two are the same bytes under
   the same names (``S=``/``W=`` sizes and flags, which Dovecot reads too), and the
   bench checks that the generator said the same both times.
2. sansmail (``serve``, ``processes = 1`` unless ``--processes``) and Dovecot
   (``dovecot_peer.py``: standalone config, stock settings) start once, on free ports of
   127.0.0.1, and run for the whole bench.
3. IMAP first: rep 0 is cold for both (no index exists yet, so SELECT builds it), then
   ``--reps`` warm reps. Within a rep the servers run back to back, their order rotated
   by rep. Then POP3 the same way. POP3 goes last because a POP3 session marks what it
   retrieved \\Seen at QUIT (both servers do, as the baseline's Dovecot did), which would
   change what later IMAP searches find; its rep 0 therefore pays for those flag
   changes, and is shown apart as the first rep.
4. Every phase's answer is checked against the generator (counts, octets, hits): a
   server that answers wrongly fails its protocol, and is not timed further.
5. The ratio of a phase is Dovecot's wall time over sansmail's in the same rep, that is
   sansmail's speed over Dovecot's: > 1 means sansmail is faster. The table shows the
   median over the warm reps [min-max] and the first rep's apart; the PNG draws them.

Only 127.0.0.1 is ever connected to; the whole run has a deadline (``--deadline``), and
the servers and the temporary folder go away on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
import platform
import poplib
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import TypeVar

import bench_procs as procs
import mailbox_bench as mb
from bench_report import PhaseRatio, Spread
from dovecot_peer import DovecotServer

__all__ = [
    "RepRecord",
    "format_peer_table",
    "main",
    "phase_ratios",
    "rotation",
]

NUM = "sansmail"
PEER = "dovecot"
PROTOCOLS: tuple[tuple[str, Sequence[str]], ...] = (
    ("IMAP", mb.IMAP_PHASES),
    ("POP3", mb.POP3_PHASES),
)
# What sets each protocol's first rep apart from the others.
FIRST_REP = {"IMAP": "cold: no index yet", "POP3": "marks what it read \\Seen"}
T = TypeVar("T")


class DeadlineError(Exception):
    """The run's --deadline passed."""


@dataclass
class RepRecord:
    """One rep of one protocol against one server: its phases, or why it failed."""

    server: str
    protocol: str
    rep: int
    phases: list[mb.Phase] = field(default_factory=list)
    error: str = ""
    load_1m: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error


def rotation(items: Sequence[T], rep: int) -> list[T]:
    """The servers' order in a rep: rotated by one each rep, so that none always leads."""
    if not items:
        return []
    shift = rep % len(items)
    return [*items[shift:], *items[:shift]]


def _walls(records: Sequence[RepRecord], server: str, protocol: str) -> dict[int, dict[str, float]]:
    """rep -> phase -> wall seconds, for the good reps of one server and protocol."""
    out: dict[int, dict[str, float]] = {}
    for r in records:
        if (r.server, r.protocol) == (server, protocol) and r.ok:
            out[r.rep] = {p.name: p.wall for p in r.phases}
    return out


def phase_ratios(
    records: Sequence[RepRecord],
    protocol: str,
    phases: Sequence[str],
    num: str = NUM,
    den: str = PEER,
) -> list[PhaseRatio]:
    """Per phase: den wall / num wall within each rep; warm = reps >= 1, first = rep 0."""
    ours, theirs = _walls(records, num, protocol), _walls(records, den, protocol)
    rows = []
    for phase in phases:
        per_rep = {
            rep: theirs[rep][phase] / ours[rep][phase]
            for rep in ours.keys() & theirs.keys()
            if ours[rep].get(phase, 0) > 0 and theirs[rep].get(phase, 0) > 0
        }
        warm = [v for rep, v in sorted(per_rep.items()) if rep >= 1]
        rows.append(PhaseRatio(phase, Spread.of(warm), per_rep.get(0)))
    return rows


def _median_of(
    records: Sequence[RepRecord],
    server: str,
    protocol: str,
    phase: str,
    value: Callable[[mb.Phase], float],
    *,
    warm: bool,
) -> float | None:
    values = [
        value(p)
        for r in records
        if (r.server, r.protocol) == (server, protocol) and r.ok and (r.rep >= 1) == warm
        for p in r.phases
        if p.name == phase
    ]
    return statistics.median(values) if values else None


def _wall(p: mb.Phase) -> float:
    return p.wall


def _cpu(p: mb.Phase) -> float:
    return p.server_cpu


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_peer_table(
    records: Sequence[RepRecord],
    protocol: str,
    phases: Sequence[str],
    num: str = NUM,
    den: str = PEER,
) -> str:
    """Warm medians of both servers, the ratio [min-max], the first rep apart, CPU, hits."""
    head = [
        "phase",
        f"{num} s",
        f"{den} s",
        f"speed {num}/{den}",
        f"first rep {num} s",
        f"first rep {den} s",
        "first rep ratio",
        f"server CPU s {num} / {den}",
        "hits",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in phase_ratios(records, protocol, phases, num, den):
        name = row.phase
        hits = next(
            (
                str(p.count)
                for r in records
                if r.protocol == protocol and r.ok
                for p in r.phases
                if p.name == name and name.startswith("search")
            ),
            "",
        )
        warm = row.warm
        cells = [
            name,
            _cell(_median_of(records, num, protocol, name, _wall, warm=True), ".3f"),
            _cell(_median_of(records, den, protocol, name, _wall, warm=True), ".3f"),
            f"{warm.median:.2f} [{warm.low:.2f}-{warm.high:.2f}]" if warm else "-",
            _cell(_median_of(records, num, protocol, name, _wall, warm=False), ".3f"),
            _cell(_median_of(records, den, protocol, name, _wall, warm=False), ".3f"),
            _cell(row.first, ".2f"),
            f"{_cell(_median_of(records, num, protocol, name, _cpu, warm=True), '.2f')} / "
            f"{_cell(_median_of(records, den, protocol, name, _cpu, warm=True), '.2f')}",
            hits,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- running -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="mailbox_peers_bench.py",
        description="IMAP and POP3 read speed of sansmail beside Dovecot, on one mailbox.",
    )
    p.add_argument("--messages", type=int, help="messages in the INBOX (default 10000)")
    p.add_argument("--reps", type=int, help="warm reps after the first (default 3)")
    p.add_argument("--processes", type=int, default=1, help="sansmail's processes (default 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1000 messages, 1 warm rep")
    p.add_argument("--seed", type=int, default=mb.SEED, help="the generator's seed")
    p.add_argument("--json", type=Path, help="raw results (default mailbox-peers-<time>.json)")
    p.add_argument("--png", type=Path, help="the picture (default: the JSON's name, .png)")
    p.add_argument("--no-png", action="store_true", help="draw no picture")
    p.add_argument("--tmpdir", type=Path, help="where the data dirs go (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the data dirs afterwards")
    p.add_argument(
        "--deadline", type=float, default=1800.0, help="seconds for the whole run (%(default)s)"
    )
    args = p.parse_args(argv)
    if args.messages is None:
        args.messages = 1000 if args.quick else 10000
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if min(args.messages, args.reps, args.processes) < 1 or args.deadline <= 0:
        p.error("--messages, --reps, --processes and --deadline must be positive")
    return args


RepFunction = Callable[[mb.MailServer, mb.Expected], list[mb.Phase]]
REP_FUNCTIONS: dict[str, RepFunction] = {"IMAP": mb.imap_rep, "POP3": mb.pop3_rep}
CLIENT_ERRORS = (mb.CheckError, OSError, imaplib.IMAP4.error, poplib.error_proto, EOFError)


def run_protocol(
    servers: Sequence[tuple[str, mb.MailServer]],
    protocol: str,
    reps: int,
    exp: mb.Expected,
    records: list[RepRecord],
) -> None:
    """Rep 0 and ``reps`` more of one protocol, the servers back to back in each rep."""
    failed: set[str] = set()
    for rep in range(reps + 1):
        took = []
        for name, server in rotation(servers, rep):
            if name in failed:
                continue
            rec = RepRecord(name, protocol, rep, load_1m=os.getloadavg()[0])
            records.append(rec)
            try:
                rec.phases = REP_FUNCTIONS[protocol](server, exp)
            except CLIENT_ERRORS as exc:
                rec.error = f"{type(exc).__name__}: {exc}"
                failed.add(name)
                print(f"!! {protocol} rep {rep} {name} FAILED: {rec.error}\n{server.log_tail()}")
                continue
            took.append(f"{name} {sum(p.wall for p in rec.phases):.2f} s")
        label = "first" if rep == 0 else f"warm {rep}"
        print(f"{protocol} rep {rep} ({label}): {', '.join(took) or 'nothing ran'}", flush=True)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGALRM:
        raise DeadlineError("the --deadline passed")
    raise KeyboardInterrupt


def report(records: Sequence[RepRecord], exp: mb.Expected, args: argparse.Namespace) -> str:
    mib = exp.crlf_bytes / mb.MIB
    out = []
    for protocol, phases in PROTOCOLS:
        first = FIRST_REP[protocol]
        out += [
            f"\n*{protocol}: {exp.messages} messages, {mib:.1f} MiB; median of {args.reps} "
            f"warm rep(s); the first rep ({first}) apart*\n",
            format_peer_table(records, protocol, phases),
        ]
    out.append(
        f"\nspeed {NUM}/{PEER} = {PEER} wall / {NUM} wall within each rep, median [min-max]; "
        f"> 1: {NUM} is faster."
    )
    loads = sorted(r.load_1m for r in records)
    if loads:
        out.append(
            f"load average (1 min) at rep starts: min {loads[0]:.2f}, "
            f"median {statistics.median(loads):.2f}, max {loads[-1]:.2f} "
            f"({os.cpu_count() or 1} cores)"
        )
    failed = [r for r in records if not r.ok]
    for r in failed:
        out.append(f"FAILED: {r.protocol} rep {r.rep} {r.server}: {r.error[:500]}")
    return "\n".join(out)


def write_json(
    path: Path,
    records: Sequence[RepRecord],
    *,
    exp: mb.Expected,
    args: argparse.Namespace,
    started: float,
    status: str,
) -> None:
    loads = [r.load_1m for r in records]
    data = {
        "kind": "mailbox-peers",
        "peer": "Dovecot",
        "status": status,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "argv": sys.argv,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "load_1m": [min(loads), max(loads)] if loads else None,
        "expected": asdict(exp),
        "runs": [asdict(r) for r in records],
        "first_rep": FIRST_REP,
        "ratios": {
            protocol: [asdict(row) for row in phase_ratios(records, protocol, phases)]
            for protocol, phases in PROTOCOLS
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    why = DovecotServer.unavailable()
    if why is not None:
        print(
            f"Dovecot cannot run here: {why}; mailbox_bench.py compares with its published "
            "figures instead",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGALRM, _on_signal)
    signal.setitimer(signal.ITIMER_REAL, args.deadline)
    started = time.time()
    json_path = args.json or Path(time.strftime("mailbox-peers-%Y%m%dT%H%M%S.json"))
    png_path = None if args.no_png else (args.png or json_path.with_suffix(".png"))
    top = Path(tempfile.mkdtemp(prefix="mailbox-peers-", dir=args.tmpdir))
    top.chmod(0o711)  # Dovecot's mail processes (nobody) pass through to the mailbox
    sansmail = mb.MailServer(top / NUM, args.processes)
    dovecot = DovecotServer(top / PEER)
    records: list[RepRecord] = []
    exp = mb.Expected()
    status = "ok"
    try:
        # Each server is started before the next picks its free ports, so that the
        # two cannot be handed the same one.
        sansmail.prepare()
        t0 = time.perf_counter()
        exp = mb.generate_mailbox(sansmail.inbox, args.messages, args.seed)
        sansmail.start()
        dovecot.prepare()
        if mb.generate_mailbox(dovecot.inbox, args.messages, args.seed) != exp:
            raise procs.ServerError("the generator wrote two different mailboxes")
        dovecot.own()
        print(
            f"generated {exp.messages} messages twice, {exp.crlf_bytes / mb.MIB:.1f} MiB each, "
            f"{exp.unseen} unseen, {exp.flagged} flagged, in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        dovecot.start()
        print(
            f"sansmail: IMAP {sansmail.imap_port}, POP3 {sansmail.pop3_port}; "
            f"dovecot: IMAP {dovecot.imap_port}, POP3 {dovecot.pop3_port} (127.0.0.1)",
            flush=True,
        )
        servers: list[tuple[str, mb.MailServer]] = [(NUM, sansmail), (PEER, dovecot)]
        for protocol, _ in PROTOCOLS:
            run_protocol(servers, protocol, args.reps, exp, records)
    except procs.ServerError as exc:
        status = f"failed: {exc}"
        print(f"FAILED: {exc}", file=sys.stderr)
    except DeadlineError as exc:
        status = f"failed: {exc}"
        print(f"\n{exc}: stopping, reporting what was measured", file=sys.stderr)
    except KeyboardInterrupt:
        status = "interrupted"
        print("\ninterrupted: stopping, reporting what was measured", file=sys.stderr)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for server in (sansmail, dovecot):
            # The group sweep of bench_procs, for sansmail too: no process stays behind.
            if server.proc is not None:
                procs.stop_process_group(server.proc)
                server.proc = None
        if args.keep:
            print(f"kept {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)
    for rec in records:
        if rec.ok and not rec.phases:  # the rep that was running when the run was cut short
            rec.error = status
    if records:
        print(report(records, exp, args))
    write_json(json_path, records, exp=exp, args=args, started=started, status=status)
    print(f"\nraw results: {json_path}")
    if png_path is not None and records:
        print(draw(json_path, png_path))
    bad = status != "ok" or not records or any(not r.ok for r in records)
    return 1 if bad else 0


def draw(json_path: Path, png_path: Path) -> str:
    """Draw the PNG from the JSON just written; say where it went, or why it did not."""
    try:
        import bench_plot  # noqa: PLC0415

        bench_plot.plot_file(json_path, png_path)
    except ImportError as exc:
        return f"no picture: {exc} (pip install -e '.[bench]')"
    except (ValueError, KeyError, OSError) as exc:
        return f"no picture: {exc}"
    return f"picture: {png_path}"


if __name__ == "__main__":
    sys.exit(main())
