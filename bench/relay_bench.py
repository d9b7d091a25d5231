"""Relay throughput: sansmail's queue and SMTP client against Postfix's, side by side.

    python3 bench/relay_bench.py [--messages N] [--size 10k] [--concurrency 10]
        [--reps 3] [--sansmail-processes P] [--postfix] [--source CHECKOUT]
        [--base CHECKOUT] [--py-spy DIR [--gil]]

Theory of operation
-------------------
Each system under test listens on 127.0.0.1 and relays everything to one next hop, a
Postfix ``smtp-sink`` on 127.0.0.2 (the protocol-only limit of perf-baseline.md), with
no TLS on either hop and no DNS (sansmail: ``relayhost = "[127.0.0.2]:port"``; Postfix
the same). ``smtp-source`` sends N messages with C connections. Two times are taken:

* **accept**: smtp-source has finished: every message got its 250, so it is durably
  queued (both systems fsync before 250);
* **relayed**: the queue is empty again: every message was delivered to the sink and
  forgotten. The queue directory is counted (sansmail: the distinct queue ids of the
  files in ``data/queue``, whatever the queue format; Postfix: files under its
  incoming/active/deferred queues).

Server CPU is utime+stime of each system's whole process tree (bench_procs), read before
smtp-source starts and once the queue is empty, per 1000 messages; it is also split by
process name (``/proc/PID/comm``: sansmail's ``sansmail-queue`` runner apart from its
SMTP processes, Postfix's smtpd, cleanup, qmgr, smtp ...), so a change can be seen to
move CPU from one role to another.

The machine is shared, so systems are compared inside one invocation only: every system
is started once, then each rep runs them one after the other, in an order that rotates
from rep to rep, and the ratios are taken within a rep (median [min-max] over the reps).
``--base CHECKOUT`` adds a second sansmail run from another source tree (a
``git worktree`` of the old commit), so an optimisation is measured as an interleaved
A/B against the code it replaces (``--source CHECKOUT`` runs the new side from a
checkout too, rather than the installed package). ``--py-spy DIR`` records the sansmail
processes of the first rep (``py-spy record --subprocesses``, collapsed stacks) into
DIR; with ``--gil``, only the thread holding the GIL is sampled (Python's CPU time,
without the waits in fsync and in the kernel).

``--postfix`` runs Postfix too. It needs root, the ``postfix`` user, and a main.cf in
/etc/postfix that lists the bench's config directory in ``alternate_config_directories``
(Postfix refuses ``-c DIR`` otherwise); the script says what to add when it is missing
and never writes outside its temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import bench_procs as procs
from bench_report import parse_size

SINK_HOST = "127.0.0.2"
POSTFIX_ETC = Path("/tmp/sansmail-relay-bench-postfix")

SANSMAIL_CONFIG = """\
hostname = "relay.bench.test"
domains = ["bench.test"]
data_dir = "data"
mynetworks = ["127.0.0.0/8"]
processes = {processes}
[listen]
smtp = "127.0.0.1:{port}"
[smtp]
max_connections_per_ip = 1000           # one client, many connections: that is the bench
[delivery]
relayhost = "[{sink}]:{sink_port}"
tls = "none"
[dns]
nameservers = ["127.0.0.1:53"]
"""

POSTFIX_MAIN = """\
compatibility_level = 3.6
myhostname = relay.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [{sink}]:{sink_port}
queue_directory = {root}/spool
data_directory = {root}/data
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
disable_dns_lookups = yes
"""


def queue_count(directory: Path) -> int:
    total = 0
    for _dirpath, _dirs, files in os.walk(directory):
        total += len(files)
    return total


def wait_empty(count: Callable[[], int], timeout: float) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if count() == 0:
            return time.perf_counter()
        time.sleep(0.01)
    raise TimeoutError("the queue did not drain")


class System:
    name = "system"

    def start(self) -> int:
        raise NotImplementedError

    def queued(self) -> int:
        raise NotImplementedError

    def cpu(self) -> float:
        """CPU seconds used so far by the whole process tree."""
        return sum(self.cpu_by_role().values())

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds used so far by the process tree, by process name."""
        return cpu_by_role(self.root_pid())

    def root_pid(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class Sansmail(System):
    def __init__(
        self,
        root: Path,
        sink_port: int,
        processes: int,
        *,
        name: str = "sansmail",
        source: Path | None = None,
    ) -> None:
        self.name = name
        self.root = root / name
        self.sink_port = sink_port
        self.processes = processes
        self.source = source
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        if self.source is None:
            return [*procs.sansmail_command(), "serve"], dict(os.environ)
        # The checkout first on the path: it wins over the installed (editable) package.
        env = dict(os.environ, PYTHONPATH=str(self.source))
        code = "import sys; from sansmail_trio._cli import main; sys.exit(main())"
        return [sys.executable, "-c", code, "serve"], env

    def start(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        port = procs.free_port()
        (self.root / "sansmail.toml").write_text(
            SANSMAIL_CONFIG.format(
                port=port, processes=self.processes, sink=SINK_HOST, sink_port=self.sink_port
            )
        )
        command, env = self.command()
        with open(self.root / "serve.log", "ab") as log:
            self.proc = subprocess.Popen(command, cwd=self.root, stderr=log, env=env)
        _wait_banner(port)
        return port

    def queued(self) -> int:
        return queued_ids(self.root / "data" / "queue")

    def root_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def cpu_by_role(root: int) -> dict[str, float]:
    """utime+stime (children reaped by a process counted with it) of `root` and its
    descendants, summed by process name."""
    ticks = os.sysconf("SC_CLK_TCK")
    roles: dict[str, float] = {}
    for pid in procs._tree(root):
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # gone between listing and reading
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        used = sum(int(x) for x in fields[11:15]) / ticks
        roles[name] = roles.get(name, 0.0) + used
    return roles


def queued_ids(queue: Path) -> int:
    """Messages in a sansmail queue directory: distinct queue ids (upper-case letters and
    digits before the first dot) among its files, temporary ones left out, so the count
    is right for every queue format sansmail has written (``.msg`` + ``.env`` pairs, one
    file per message)."""
    try:
        names = os.listdir(queue)
    except FileNotFoundError:
        return 0
    ids = set()
    for name in names:
        stem, dot, _rest = name.partition(".")
        if dot and not name.endswith(".tmp") and _QUEUE_ID.fullmatch(stem):
            ids.add(stem)
    return len(ids)


_QUEUE_ID = re.compile(r"[0-9A-Z]{1,64}")


class Postfix(System):
    name = "postfix"

    def __init__(self, sink_port: int) -> None:
        self.root = POSTFIX_ETC
        self.sink_port = sink_port

    def start(self) -> int:
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root / "etc").mkdir(parents=True)
        (self.root / "data").mkdir()
        (self.root / "spool").mkdir()  # postfix-script makes the queues inside
        port = procs.free_port()
        main = POSTFIX_MAIN.format(root=self.root, sink=SINK_HOST, sink_port=self.sink_port)
        (self.root / "etc" / "main.cf").write_text(main)
        master = listen_on(Path("/etc/postfix/master.cf").read_text(), port)
        (self.root / "etc" / "master.cf").write_text(master)
        shutil.chown(self.root / "data", "postfix")
        os.chmod(self.root, 0o755)
        done = subprocess.run(
            ["postfix", "-c", str(self.root / "etc"), "start"], capture_output=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"postfix did not start: see {self.root}/maillog")
        _wait_banner(port)
        return port

    def queued(self) -> int:
        spool = self.root / "spool"
        return sum(queue_count(spool / q) for q in ("incoming", "active", "deferred", "maildrop"))

    def root_pid(self) -> int:
        return int((self.root / "spool" / "pid" / "master.pid").read_text().split()[0])

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.root / "etc"), "stop"], check=False)


_SMTPD_LINE = re.compile(r"^smtp(?=\s+inet\s)", re.MULTILINE)


def listen_on(master: str, port: int) -> str:
    """`master` (a master.cf) with its smtpd service listening on `port` instead of 25.

    Only the first uncommented ``smtp ... inet`` line is rewritten, whatever its spacing;
    a master.cf without one is an error, not a Postfix silently listening on port 25
    while the bench waits on another port.
    """
    edited, count = _SMTPD_LINE.subn(str(port), master, count=1)
    if count != 1:
        raise RuntimeError("master.cf has no 'smtp inet' service line to move to the bench port")
    return edited


def _wait_banner(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                if probe.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answers on port {port}")


def postfix_usable() -> str | None:
    """None when Postfix can run here, else why not."""
    if os.geteuid() != 0:
        return "Postfix needs root"
    if shutil.which("postfix") is None:
        return "postfix is not installed"
    try:
        main = Path("/etc/postfix/main.cf").read_text()
    except OSError:
        main = ""
    if str(POSTFIX_ETC / "etc") not in main:
        return f"add 'alternate_config_directories = {POSTFIX_ETC}/etc' to /etc/postfix/main.cf"
    return None


def one_run(
    system: System, port: int, smtp_source: str, args: argparse.Namespace, size: int
) -> dict[str, float]:
    cpu_before = system.cpu_by_role()
    start = time.perf_counter()
    sent = procs.run_smtp_source(
        smtp_source,
        port=port,
        messages=args.messages,
        concurrency=args.concurrency,
        size=size,
        timeout=600,
    )
    accepted = time.perf_counter()
    if not sent.ok:
        raise RuntimeError(f"{system.name}: smtp-source failed: {sent.output}")
    drained = wait_empty(system.queued, 600)
    cpu_after = system.cpu_by_role()
    result = {
        "accept": args.messages / (accepted - start),
        "relayed": args.messages / (drained - start),
        "cpu": (sum(cpu_after.values()) - sum(cpu_before.values())) * 1000 / args.messages,
    }
    for role, used in cpu_after.items():
        result[f"cpu:{role}"] = (used - cpu_before.get(role, 0.0)) * 1000 / args.messages
    return result


def spy(system: System, directory: Path, *, gil: bool) -> subprocess.Popen[bytes] | None:
    """py-spy recording `system`'s processes (children included) until terminated."""
    if not isinstance(system, Sansmail) or system.proc is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{system.name}.collapsed"
    return subprocess.Popen(
        [
            "py-spy", "record", "--subprocesses", "--format", "raw", "--rate", "200",
            *(["--gil"] if gil else []),
            "--nonblocking", "-p", str(system.proc.pid), "-o", str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def run_all(
    systems: list[System], smtp_source: str, args: argparse.Namespace, size: int
) -> dict[str, list[dict[str, float]]]:
    """Every rep runs every system once, in an order that rotates from rep to rep."""
    ports: dict[str, int] = {}
    table: dict[str, list[dict[str, float]]] = {s.name: [] for s in systems}
    try:
        for system in systems:
            ports[system.name] = system.start()
        for rep in range(args.reps):
            shift = rep % len(systems)
            for system in systems[shift:] + systems[:shift]:
                spying = (
                    spy(system, Path(args.py_spy), gil=args.gil)
                    if args.py_spy and rep == 0
                    else None
                )
                try:
                    result = one_run(system, ports[system.name], smtp_source, args, size)
                finally:
                    if spying is not None:
                        spying.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                        spying.wait(60)
                table[system.name].append(result)
                print(
                    f"rep {rep + 1} {system.name:9} accept {result['accept']:7,.0f}/s "
                    f"relayed {result['relayed']:7,.0f}/s cpu {result['cpu']:5.2f} s/1000",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(1)
    finally:
        for system in systems:
            if system.name in ports:
                system.stop()
    return table


def _spread(values: list[float], form: str) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:{form}} [{low:{form}}-{high:{form}}]"


def report(table: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    print(
        f"{args.messages} messages of {args.size}, {args.concurrency} connections, "
        f"{args.reps} reps interleaved, relayed to smtp-sink; median [min-max]"
    )
    print(f"  {'system':9} {'accept msgs/s':>22} {'relayed msgs/s':>22} {'CPU s/1000':>22}")
    for name, runs in table.items():
        cells = [
            _spread([r["accept"] for r in runs], ",.0f"),
            _spread([r["relayed"] for r in runs], ",.0f"),
            _spread([r["cpu"] for r in runs], ".2f"),
        ]
        print(f"  {name:9} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22}")
    print("  CPU s/1000 by process name, median over the reps:")
    for name, runs in table.items():
        roles = sorted({key for run in runs for key in run if key.startswith("cpu:")})
        split = [
            (statistics.median(run.get(role, 0.0) for run in runs), role[4:]) for role in roles
        ]
        text = ", ".join(f"{role} {used:.2f}" for used, role in sorted(split, reverse=True))
        print(f"  {name:9} {text}")
    pairs = [("sansmail", "postfix"), ("base", "postfix"), ("sansmail", "base")]
    for mine, theirs in pairs:
        if mine not in table or theirs not in table:
            continue
        for what in ("accept", "relayed", "cpu"):
            ratios = [m[what] / t[what] for m, t in zip(table[mine], table[theirs], strict=True)]
            print(f"  {mine}/{theirs} {what}: {_spread(ratios, '.2f')}x")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", default="10k")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sansmail-processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--postfix", action="store_true", help="run Postfix side by side")
    parser.add_argument(
        "--source", type=Path, help="run sansmail from this checkout, not the installed one"
    )
    parser.add_argument(
        "--base", type=Path, help="also run sansmail from this checkout (named 'base')"
    )
    parser.add_argument("--py-spy", help="record the sansmail processes of rep 1 here")
    parser.add_argument("--gil", action="store_true", help="py-spy samples Python's CPU only")
    parser.add_argument(
        "--json", type=Path, help="write every rep's figures here (for all_bench.py)"
    )
    args = parser.parse_args(argv)
    smtp_source = procs.find_smtp_source()
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if smtp_source is None or not os.access(sink, os.X_OK):
        print("needs Postfix's smtp-source and smtp-sink", file=sys.stderr)
        return 1
    size = parse_size(args.size)
    systems: list[System] = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        sink_port = procs.free_port()
        # smtp-sink refuses to run as root without a user to become.
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        sink_proc = subprocess.Popen(
            [sink, *user, f"{SINK_HOST}:{sink_port}", "1024"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            source = args.source.resolve() if args.source else None
            systems.append(Sansmail(Path(tmp), sink_port, args.sansmail_processes, source=source))
            if args.base is not None:
                systems.append(
                    Sansmail(
                        Path(tmp),
                        sink_port,
                        args.sansmail_processes,
                        name="base",
                        source=args.base.resolve(),
                    )
                )
            if args.postfix:
                why = postfix_usable()
                if why is None:
                    systems.append(Postfix(sink_port))
                else:
                    print(f"postfix skipped: {why}", file=sys.stderr)
            table = run_all(systems, smtp_source, args, size)
        finally:
            sink_proc.terminate()
            sink_proc.wait(10)
    report(table, args)
    if args.json is not None:
        options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        data = {"kind": "relay", "argv": sys.argv, "options": options, "runs": table}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
