"""SMTP throughput of sansmail against aiosmtpd-maildir and Postfix, in one command.

    python3 bench/smtp_bench.py [--sizes 1k,10k,100k] [--concurrency 1,10,50]
        [--messages N] [--reps R] [--servers sansmail,aiosmtpd,postfix]
        [--generator auto|smtp-source|python] [--quick] [--json FILE] [--png FILE]

Theory of operation
-------------------
This reproduces the method of shared/research/perf-baseline.md so that its figures and
these can be read side by side:

1. Each server starts once, in its own directory under a temporary folder, on a free
   port of 127.0.0.1, and runs for the whole benchmark (as the baseline's did). Postfix
   is an instance of its own (``postfix_peer.py``), used when it is installed and the
   bench runs as root; a peer that cannot run here is left out with a note.
2. The matrix is walked rep by rep; inside a rep, cell by cell (size x concurrency); in
   each cell every server runs back to back, the order rotated by rep and cell so that
   no server always goes first. Ratios are taken within a cell of a rep only.
3. Before every pass the mailbox is emptied, ``sync`` flushes the deleted files, and the
   harness idles ``--idle`` seconds, measuring what the rest of the machine is doing.
4. A throughput pass sends N messages with smtp-source (``-m N -s C -l SIZE``) when it is
   installed, or with the Python generator of ``loadgen.py``. smtp-source cannot time
   messages, so it is followed by a timing pass with the Python generator, which gives
   the p50/p99 latency from end of data to 250 (and its own msgs/s, for comparison).
5. A pass counts only if every reply was the expected one and exactly N files with
   Return-Path and Received headers are in ``new/``. The server's CPU (whole process
   tree, from /proc) is read before the generator starts and after the last file
   arrived and the server has settled (Postfix: its queue is empty again); the
   generator's own CPU is reported beside it, so that a saturated generator shows up.
6. The report gives per-server tables, then sansmail's ratios to each peer within each
   rep and cell; the JSON file keeps every pass, and a PNG draws the rates and ratios
   (``bench_plot.py``, which can also redraw it from the JSON).

Nothing here opens a socket to anything but 127.0.0.1, every run has a deadline, and the
temporary folder and all processes go away on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TypeVar

import bench_procs as procs
import loadgen
from bench_report import (
    LATENCY,
    THROUGHPUT,
    RunRecord,
    acceptance_lines,
    format_ratio_table,
    format_server_table,
    load_line,
    parse_size,
    size_label,
)
from postfix_peer import PostfixServer

SERVERS: dict[str, type[procs.BenchServer]] = {
    "sansmail": procs.SansmailServer,
    "aiosmtpd": procs.AiosmtpdServer,
    "postfix": PostfixServer,
}
LARGE = 64 * 1024  # at and above this size the default message count is halved
MAX_RESTARTS = 2
SETTLE_TIMEOUT = 60.0  # after the generator: for the last files, then an empty queue
TARGET_PEER = "aiosmtpd"  # the acceptance targets are against this peer
T = TypeVar("T")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="smtp_bench.py",
        description="SMTP throughput, latency and CPU of sansmail, aiosmtpd-maildir and Postfix.",
    )
    p.add_argument("--sizes", default="1k,10k,100k", help="payload sizes (default %(default)s)")
    p.add_argument("--concurrency", default="1,10,50", help="connections (default %(default)s)")
    p.add_argument(
        "--messages",
        type=int,
        help="messages per pass; halved for sizes >= 64 KiB (default 2000; --quick: 200)",
    )
    p.add_argument("--reps", type=int, help="repetitions (default 3; --quick: 1)")
    p.add_argument(
        "--servers",
        default="sansmail,aiosmtpd,postfix",
        help="the first is the numerator of the ratios; peers that cannot run here are "
        "left out (default %(default)s)",
    )
    p.add_argument(
        "--sansmail-processes",
        type=int,
        default=procs.SansmailServer.processes,
        help="sansmail's `processes` setting (default: one per core, %(default)s)",
    )
    p.add_argument(
        "--generator",
        choices=("auto", "smtp-source", "python"),
        default="auto",
        help="throughput generator; auto: smtp-source when installed (default %(default)s)",
    )
    p.add_argument(
        "--latency",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after an smtp-source pass, a timing pass with the Python generator",
    )
    p.add_argument(
        "--latency-messages",
        type=int,
        default=0,
        help="messages in a timing pass (default: half the pass's messages, at least 200)",
    )
    p.add_argument("--idle", type=float, help="idle seconds before each pass (default 1)")
    p.add_argument("--gen-processes", type=int, default=0, help="Python generator processes")
    p.add_argument("--run-timeout", type=float, default=300.0, help="deadline of one pass (s)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 200 messages, 1 rep, 0.2 s idle",
    )
    p.add_argument("--json", type=Path, help="raw results (default smtp-bench-<time>.json)")
    p.add_argument("--png", type=Path, help="the picture (default: the JSON's name, .png)")
    p.add_argument("--no-png", action="store_true", help="draw no picture")
    p.add_argument("--tmpdir", type=Path, help="where the temporary data dirs go")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)
    try:
        args.size_list = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
        args.conc_list = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError as exc:
        p.error(str(exc))
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in args.server_list if s not in SERVERS]
    if unknown or not args.server_list:
        p.error(f"unknown server {unknown}; choose from {', '.join(SERVERS)}")
    if not args.size_list or not args.conc_list or min(args.conc_list) < 1:
        p.error("need at least one size and one concurrency >= 1")
    quick = {"messages": 200, "reps": 1, "idle": 0.2}
    full = {"messages": 2000, "reps": 3, "idle": 1.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.messages < 1 or args.reps < 1:
        p.error("--messages and --reps must be >= 1")
    args.smtp_source = procs.find_smtp_source()
    if args.generator == "smtp-source" and args.smtp_source is None:
        p.error("smtp-source is not installed (Debian: apt-get install postfix)")
    if args.generator == "auto":
        args.generator = "smtp-source" if args.smtp_source else "python"
    return args


def messages_for(args: argparse.Namespace, size: int) -> int:
    n = int(args.messages)
    return max(1, n // 2) if size >= LARGE else n


def schedule(
    reps: int, cells: Sequence[tuple[int, int]], servers: Sequence[T]
) -> list[tuple[int, tuple[int, int], T]]:
    """The order of the passes: rep by rep, cell by cell, every server back to back.

    Within a cell the servers' order rotates with rep and cell, so that none always goes
    first (onto a machine the previous server left with dirty pages and warm caches).
    """
    order = []
    for rep in range(reps):
        for index, cell in enumerate(cells):
            shift = (rep + index) % len(servers) if servers else 0
            order += [(rep, cell, server) for server in [*servers[shift:], *servers[:shift]]]
    return order


class Bench:
    """The benchmark's state: the servers, the records, the options."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.records: list[RunRecord] = []
        self.servers = [SERVERS[name](tmp / name) for name in args.server_list]
        for server in self.servers:
            if isinstance(server, procs.SansmailServer):
                server.processes = args.sansmail_processes
        self.failed_servers: dict[str, str] = {}
        self.restarts: dict[str, int] = {}
        self.tmp_fs = filesystem_type(tmp)

    def start_servers(self) -> None:
        for server in self.servers:
            try:
                server.start()
                print(f"started {server.name} on 127.0.0.1:{server.port} (pid {server.pid})")
            except (procs.ServerError, OSError, FileNotFoundError) as exc:
                self.failed_servers[server.name] = str(exc)
                print(f"!! {server.name} did not start: {exc}", file=sys.stderr)
        self.servers = [s for s in self.servers if s.name not in self.failed_servers]

    def stop_servers(self) -> None:
        for server in self.servers:
            server.stop()

    def run_matrix(self) -> None:
        cells = [(size, conc) for size in self.args.size_list for conc in self.args.conc_list]
        for rep, (size, conc), server in schedule(self.args.reps, cells, self.servers):
            self.run_cell(server, rep, size, conc)

    def run_cell(self, server: procs.BenchServer, rep: int, size: int, conc: int) -> None:
        n = messages_for(self.args, size)
        gen = self.args.generator
        self.run_pass(server, RunRecord(server.name, size, conc, rep, THROUGHPUT, gen, n))
        if gen == "smtp-source" and self.args.latency:
            n_lat = self.args.latency_messages or max(min(n, 200), n // 2)
            self.run_pass(server, RunRecord(server.name, size, conc, rep, LATENCY, "python", n_lat))

    def run_pass(self, server: procs.BenchServer, rec: RunRecord) -> None:
        self.records.append(rec)
        rep, size, conc, n, gen = rec.rep, rec.size, rec.concurrency, rec.messages, rec.generator
        tag = f"rep {rep + 1} {size_label(size):>7} c={conc:<3} {server.name:<8} {gen:<11}"
        if not server.alive():
            # A crash fails its own pass, not the rest of the matrix; a server that keeps
            # crashing is given up on rather than restarted for every remaining pass.
            self.restarts[server.name] = self.restarts.get(server.name, 0) + 1
            try:
                if self.restarts[server.name] > MAX_RESTARTS:
                    raise procs.ServerError(f"gave up after {MAX_RESTARTS} restarts")
                print(f"!! {server.name} is not running; restarting it\n{server.log_tail(5)}")
                server.start()
            except (procs.ServerError, OSError) as exc:
                rec.error = f"server down: {exc}"
                print(f"{tag} FAILED: {rec.error}")
                return
        procs.clear_maildir(server.maildir)
        os.sync()
        busy0, total0 = procs.machine_ticks()
        time.sleep(self.args.idle)
        busy1, total1 = procs.machine_ticks()
        rec.background_busy_pct = 100 * (busy1 - busy0) / max(1, total1 - total0)
        rec.load_1m = os.getloadavg()[0]

        cpu0 = procs.proc_tree_cpu(server.pid)
        start = time.perf_counter()
        gen_ok, detail = self.generate(rec, server.port)
        new_dir = server.maildir / "new"
        expected = n if gen_ok else rec.delivered
        count, _ = procs.wait_for_count(new_dir, expected, SETTLE_TIMEOUT if gen_ok else 2.0)
        rec.e2e_s = time.perf_counter() - start
        # What the server still does after the last file landed (Postfix: removing the
        # queue file, logging) is part of its cost, and must not run into the next pass.
        unsettled = server.settle(SETTLE_TIMEOUT if gen_ok else 2.0) if server.alive() else None
        cpu = procs.proc_tree_cpu(server.pid) - cpu0 if server.alive() else None
        busy2, total2 = procs.machine_ticks()
        rec.machine_busy_pct = 100 * (busy2 - busy1) / max(1, total2 - total1)
        rec.delivered = count

        # Servers may store LF line ends (Maildir is Unix text): the payload then shrinks by
        # one byte per line, and that is the least a complete message file can hold.
        min_body = len(loadgen.build_payload(size).replace(b"\r\n", b"\n"))
        problems = [] if not gen_ok else procs.verify_maildir(new_dir, n, min_body)
        if cpu is None:
            problems.insert(0, f"{server.name} died during the pass\n{server.log_tail()}")
        else:
            rec.server_cpu_user, rec.server_cpu_sys = cpu.user, cpu.sys
            rec.server_rss_kib = procs.proc_tree_rss_kib(server.pid)
        if unsettled:
            problems.append(unsettled)
        if not gen_ok:
            problems.insert(0, detail)
        rec.ok = not problems
        rec.error = "; ".join(problems)
        rec.msgs_per_s = n / rec.wall_s if rec.wall_s else 0.0
        rec.mib_per_s = rec.msgs_per_s * size / (1024 * 1024)
        self.print_pass(tag, rec)

    def generate(self, rec: RunRecord, port: int) -> tuple[bool, str]:
        """Run the pass's generator; fill in its figures; return (ok, why not)."""
        args = self.args
        if rec.generator == "smtp-source":
            assert args.smtp_source is not None
            res = procs.run_smtp_source(
                args.smtp_source,
                port=port,
                messages=rec.messages,
                concurrency=rec.concurrency,
                size=rec.size,
                timeout=args.run_timeout,
            )
            rec.wall_s = res.wall
            rec.gen_cpu_user, rec.gen_cpu_sys = res.cpu.user, res.cpu.sys
            return res.ok, f"smtp-source: {res.output[-500:]}"
        spec = loadgen.LoadSpec(
            port=port,
            messages=rec.messages,
            concurrency=rec.concurrency,
            size=rec.size,
            processes=args.gen_processes,
            deadline=args.run_timeout,
        )
        load = loadgen.run_load(spec)
        rec.wall_s = load.wall
        rec.gen_cpu_user, rec.gen_cpu_sys = load.cpu_user, load.cpu_sys
        rec.gen_processes = load.processes
        rec.delivered = load.accepted
        if load.latencies:
            rec.latency_ms = {
                name: 1000 * loadgen.percentile(load.latencies, q)
                for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
            }
        why = f"{load.failed} of {load.messages} failed: " + "; ".join(load.failure_samples[:3])
        return load.ok, why

    @staticmethod
    def print_pass(tag: str, rec: RunRecord) -> None:
        if not rec.ok:
            print(f"{tag} FAILED: {rec.error}")
            return
        cpu = rec.per_1000(rec.server_cpu_user + rec.server_cpu_sys)
        gen_cpu = rec.per_1000(rec.gen_cpu_user + rec.gen_cpu_sys)
        lat = ""
        if rec.latency_ms:
            lat = f"  p50 {rec.latency_ms['p50']:.2f} ms  p99 {rec.latency_ms['p99']:.2f} ms"
        print(
            f"{tag} {rec.msgs_per_s:8,.0f} msgs/s {rec.mib_per_s:6.1f} MiB/s"
            f"  cpu {cpu:.2f} s/1000  gen {gen_cpu:.2f} s/1000"
            f"  busy {rec.machine_busy_pct:3.0f}% (bg {rec.background_busy_pct:.0f}%){lat}",
            flush=True,
        )

    def report(self) -> str:
        cells = [(size, conc) for size in self.args.size_list for conc in self.args.conc_list]
        names = [n for n in self.args.server_list if any(r.server == n for r in self.records)]
        out = []
        n_small = self.args.messages
        out.append(
            f"\nmedian of {self.args.reps} rep(s); {n_small} messages per pass "
            f"({max(1, n_small // 2)} at >= 64 KiB); throughput generator: {self.args.generator}"
            "; p50/p99: end of data to 250, Python generator; CPU: server process tree;"
            " busy: all cores during the pass"
        )
        for name in names:
            out += [f"\n### {name}\n", format_server_table(self.records, name, cells)]
        if len(names) >= 2:
            num = names[0]
            for den in names[1:]:
                out += [
                    f"\n### {num} / {den} (within each rep and cell: median [min-max])\n",
                    format_ratio_table(self.records, num, den, cells),
                ]
                if den == TARGET_PEER:
                    out += ["", *acceptance_lines(self.records, num, den)]
        out.append(f"\n{load_line(self.records)}")
        noisy = [r for r in self.records if r.background_busy_pct > 10]
        if noisy:
            worst = max(r.background_busy_pct for r in noisy)
            out.append(
                f"\nnote: before {len(noisy)} of {len(self.records)} passes other processes "
                f"kept the machine up to {worst:.0f}% busy; those figures are contended."
            )
        failed = [r for r in self.records if not r.ok]
        if failed:
            out.append(f"\n{len(failed)} pass(es) FAILED; first: {failed[0].error[:800]}")
        for name, why in self.failed_servers.items():
            out.append(f"\n{name} did not start:\n{why}")
        return "\n".join(out)

    def write_json(self, path: Path, started: float, interrupted: bool) -> None:
        loads = [r.load_1m for r in self.records]
        data = {
            "kind": "smtp",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),
            "interrupted": interrupted,
            "argv": sys.argv,
            "options": {
                k: str(v) if isinstance(v, Path) else v
                for k, v in vars(self.args).items()
                if not k.endswith("_list")
            },
            "machine": machine_info(self.args.smtp_source),
            "servers": [s.name for s in self.servers],
            "load_1m": [min(loads), max(loads)] if loads else None,
            "cells": [[size, conc] for size in self.args.size_list for conc in self.args.conc_list],
            "tmp_filesystem": self.tmp_fs,
            "failed_servers": self.failed_servers,
            "runs": [dataclasses.asdict(r) for r in self.records],
        }
        path.parent.mkdir(parents=True, exist_ok=True)  # not to lose a long run's figures
        path.write_text(json.dumps(data, indent=1) + "\n")


def machine_info(smtp_source: str | None) -> dict[str, object]:
    info: dict[str, object] = {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "smtp_source": smtp_source,
    }
    try:
        import aiosmtpd  # noqa: PLC0415 (optional peer)

        info["aiosmtpd"] = aiosmtpd.__version__
    except ImportError:
        info["aiosmtpd"] = None
    info["postfix"] = postfix_version()
    try:
        from sansmail._version import __version__  # noqa: PLC0415

        info["sansmail"] = __version__
    except ImportError:
        info["sansmail"] = None
    return info


def postfix_version() -> str | None:
    """``mail_version`` of the installed Postfix (compiled-in, nothing is configured)."""
    try:
        done = subprocess.run(
            ["postconf", "-d", "-h", "mail_version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def filesystem_type(path: Path) -> str:
    """The type of the mount holding ``path`` (longest mount point that is a prefix)."""
    best, fstype = "", "?"
    resolved = str(path.resolve())
    with open("/proc/mounts") as f:
        for line in f:
            _, mount, kind, *_ = line.split()
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, fstype = mount, kind
    return fstype


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for name in list(args.server_list):
        why = SERVERS[name].unavailable()
        if why is not None:
            print(f"{name} left out: {why}", file=sys.stderr)
            args.server_list.remove(name)
    if not args.server_list:
        return 2
    signal.signal(signal.SIGTERM, _sigterm)
    started = time.time()
    json_path = args.json or Path(time.strftime("smtp-bench-%Y%m%dT%H%M%S.json"))
    png_path = None if args.no_png else (args.png or json_path.with_suffix(".png"))
    tmp = Path(tempfile.mkdtemp(prefix="smtp-bench-", dir=args.tmpdir))
    # Postfix's delivery agent runs as nobody and must pass through to its Maildir;
    # o+x lets it through without letting anyone list the folder.
    tmp.chmod(0o711)
    bench = Bench(args, tmp)
    if bench.tmp_fs in ("tmpfs", "ramfs"):
        print(f"warning: {tmp} is on {bench.tmp_fs}: fsync is free there; see --tmpdir")
    interrupted = False
    try:
        bench.start_servers()
        bench.run_matrix()
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping servers, reporting what was measured", file=sys.stderr)
        for rec in bench.records:
            if not rec.ok and not rec.error:  # the pass that was cut short
                rec.error = "interrupted"
    finally:
        bench.stop_servers()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(bench.report())
    bench.write_json(json_path, started, interrupted)
    print(f"\nraw results: {json_path}")
    if png_path is not None:
        print(draw(json_path, png_path))
    bad = interrupted or bench.failed_servers or any(not r.ok for r in bench.records)
    return 1 if bad else 0


def draw(json_path: Path, png_path: Path) -> str:
    """Draw the PNG from the JSON just written; say where it went, or why it did not."""
    try:
        import bench_plot  # noqa: PLC0415 (matplotlib is optional and slow to import)

        bench_plot.plot_file(json_path, png_path)
    except ImportError as exc:
        return f"no picture: {exc} (pip install -e '.[bench]')"
    except (ValueError, KeyError, OSError) as exc:
        return f"no picture: {exc}"
    return f"picture: {png_path}"


if __name__ == "__main__":
    sys.exit(main())
