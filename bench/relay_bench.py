"""Relay throughput: sansmail's queue and SMTP client against Postfix's, side by side.

    python3 bench/relay_bench.py [--messages N] [--size 10k] [--concurrency 10]
        [--reps 3] [--sansmail-processes P] [--postfix]

Theory of operation
-------------------
Each system under test listens on 127.0.0.1 and relays everything to one next hop, a
Postfix ``smtp-sink`` on 127.0.0.2 (the protocol-only limit of perf-baseline.md), with
no TLS on either hop and no DNS (sansmail: ``relayhost = "[127.0.0.2]:port"``; Postfix
the same). ``smtp-source`` sends N messages with C connections. Two times are taken:

* **accept**: smtp-source has finished: every message got its 250, so it is durably
  queued (both systems fsync before 250);
* **relayed**: the queue is empty again: every message was delivered to the sink and
  forgotten. The queue directory is counted (sansmail: ``*.env`` files under
  ``data/queue``; Postfix: files under its incoming/active/deferred queues).

``--postfix`` runs Postfix too. It needs root, the ``postfix`` user, and a main.cf in
/etc/postfix that lists the bench's config directory in ``alternate_config_directories``
(Postfix refuses ``-c DIR`` otherwise); the script says what to add when it is missing
and never writes outside its temporary folder.
"""

from __future__ import annotations

import argparse
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

    def stop(self) -> None:
        raise NotImplementedError


class Sansmail(System):
    name = "sansmail"

    def __init__(self, root: Path, sink_port: int, processes: int) -> None:
        self.root = root / "sansmail"
        self.sink_port = sink_port
        self.processes = processes
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        port = procs.free_port()
        (self.root / "sansmail.toml").write_text(
            SANSMAIL_CONFIG.format(
                port=port, processes=self.processes, sink=SINK_HOST, sink_port=self.sink_port
            )
        )
        with open(self.root / "serve.log", "ab") as log:
            self.proc = subprocess.Popen(
                [*procs.sansmail_command(), "serve"], cwd=self.root, stderr=log
            )
        _wait_banner(port)
        return port

    def queued(self) -> int:
        queue = self.root / "data" / "queue"
        if not queue.exists():
            return 0
        return sum(1 for name in os.listdir(queue) if name.endswith(".env"))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


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


def run(
    system: System, smtp_source: str, args: argparse.Namespace, size: int
) -> list[dict[str, float]]:
    port = system.start()
    results = []
    try:
        for _rep in range(args.reps):
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
                raise RuntimeError(f"smtp-source failed: {sent.output}")
            drained = wait_empty(system.queued, 600)
            results.append(
                {
                    "accept": args.messages / (accepted - start),
                    "relayed": args.messages / (drained - start),
                }
            )
            time.sleep(1)
    finally:
        system.stop()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", default="10k")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sansmail-processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--postfix", action="store_true", help="run Postfix side by side")
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
            systems.append(Sansmail(Path(tmp), sink_port, args.sansmail_processes))
            if args.postfix:
                why = postfix_usable()
                if why is None:
                    systems.append(Postfix(sink_port))
                else:
                    print(f"postfix skipped: {why}", file=sys.stderr)
            table = {s.name: run(s, smtp_source, args, size) for s in systems}
        finally:
            sink_proc.terminate()
            sink_proc.wait(10)
    print(
        f"{args.messages} messages of {args.size}, {args.concurrency} connections, "
        f"{args.reps} reps, relayed to smtp-sink; msgs/s, median [min-max]"
    )
    for name, runs in table.items():
        for what in ("accept", "relayed"):
            values = [r[what] for r in runs]
            print(
                f"  {name:9} {what:8} {statistics.median(values):8,.0f} "
                f"[{min(values):,.0f}-{max(values):,.0f}]"
            )
    if "postfix" in table:
        for what in ("accept", "relayed"):
            ratios = [
                s[what] / p[what] for s, p in zip(table["sansmail"], table["postfix"], strict=True)
            ]
            print(f"  sansmail/postfix {what}: {statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
