"""Delivery to a user with a trivial active Sieve script against one without, end to end.

    python3 bench/sieve_bench.py [--messages 2000] [--concurrency 10] [--size 10k] [--reps 3]

Theory of operation
-------------------
A user without a script is served the direct way: the SMTP process stores the message in
the Maildir before its ``250``. A user with an active script (here ``keep;``, the least a
script can do) has the copy queued instead, and the queue runner's local delivery runs
the script and stores it through the IMAP account (`sansmail.sessions.lda`), as Postfix
hands mail to Dovecot's LDA. This bench measures what that path costs.

One ``sansmail-trio serve`` (`bench_procs.SansmailServer`: one server process per core,
plus the queue runner) serves bench@example.test throughout; the script is activated and
deactivated between runs (the intake asks at each RCPT, so no restart is needed). Each
rep runs "none" then "keep": ``loadgen`` pushes N messages of S bytes over C connections
(one message per connection, as smtp-source), then the bench waits until N files are in
the Maildir (``new/`` and ``cur/``) and the queue is empty. Per run it prints:

* accepted msgs/s: N / the load's wall time (last ``250``);
* delivered msgs/s: N / (from the first connection to the last file in the Maildir);
* server CPU seconds per 1000 messages (every process of the server: intake, runner).

and, per rep, the ratio keep / none of the delivered rate and the CPU. The machine is
shared: the 1-minute load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_procs import (
    SansmailServer,
    clear_maildir,
    count_files,
    proc_tree_cpu,
)
from bench_report import parse_size
from loadgen import LoadSpec, run_load

from sansmail.mail.address import MailboxId
from sansmail.storage.queue import QueueStore
from sansmail.storage.sieve import SieveStore

MAILBOX = MailboxId(domain="example.test", local="bench")
SCRIPT = b"keep;\r\n"


def delivered(maildir: Path) -> int:
    return count_files(maildir / "new") + count_files(maildir / "cur")


def one_run(
    server: SansmailServer, *, messages: int, concurrency: int, size: int, timeout: float
) -> dict[str, float]:
    clear_maildir(server.maildir)
    queue = QueueStore(server.workdir / "data" / "queue")
    before = proc_tree_cpu(server.pid)
    start = time.perf_counter()
    load = run_load(
        LoadSpec(port=server.port, messages=messages, concurrency=concurrency, size=size)
    )
    if not load.ok:
        raise SystemExit(f"load failed: {load.failure_samples[:3]}")
    deadline = time.monotonic() + timeout
    while delivered(server.maildir) < messages or queue.ids():
        if time.monotonic() > deadline:
            problems = [
                line
                for line in server.log_path.read_text(errors="replace").splitlines()
                if "deferred" in line or "warning" in line.lower() or "error" in line.lower()
            ]
            raise SystemExit(
                f"not delivered within {timeout} s:\n" + "\n".join(problems[-20:])
                or server.log_tail()
            )
        time.sleep(0.005)
    wall = time.perf_counter() - start
    after = proc_tree_cpu(server.pid)
    cpu = (after - before).total
    return {
        "accepted_per_s": messages / load.wall,
        "delivered_per_s": messages / wall,
        "cpu_per_1000": cpu * 1000 / messages,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--size", type=parse_size, default=parse_size("10k"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sieve-bench-") as tmp:
        server = SansmailServer(Path(tmp))
        server.start()
        try:
            scripts = SieveStore(server.workdir / "data")
            scripts.put(MAILBOX, "trivial", SCRIPT)
            runs: list[dict[str, object]] = []
            # A first small run of each kind warms both paths (imports, parsed script).
            for name in ("trivial", None):
                scripts.activate(MAILBOX, name)
                one_run(server, messages=50, concurrency=5, size=args.size, timeout=args.timeout)
            print(
                f"{args.messages} messages of {args.size} B over {args.concurrency} connections,"
                f" {server.processes} server processes; load average {os.getloadavg()[0]:.2f}"
            )
            print(
                f"{'rep':>3} {'script':>6} {'accepted/s':>11} {'delivered/s':>12} {'cpu s/1k':>9}"
            )
            for rep in range(1, args.reps + 1):
                figures = {}
                for name in (None, "trivial"):
                    scripts.activate(MAILBOX, name)
                    label = "keep" if name else "none"
                    figures[label] = one_run(
                        server,
                        messages=args.messages,
                        concurrency=args.concurrency,
                        size=args.size,
                        timeout=args.timeout,
                    )
                    f = figures[label]
                    print(
                        f"{rep:>3} {label:>6} {f['accepted_per_s']:>11.0f}"
                        f" {f['delivered_per_s']:>12.0f} {f['cpu_per_1000']:>9.2f}"
                    )
                ratio = figures["keep"]["delivered_per_s"] / figures["none"]["delivered_per_s"]
                cpu = figures["keep"]["cpu_per_1000"] / figures["none"]["cpu_per_1000"]
                print(f"    rep {rep}: delivered keep/none {ratio:.2f}, cpu keep/none {cpu:.2f}")
                runs.append({"rep": rep, **figures, "ratio": ratio, "cpu_ratio": cpu})
            ratios = [float(r["ratio"]) for r in runs]  # type: ignore[arg-type]
            print(
                f"median delivered keep/none {statistics.median(ratios):.2f};"
                f" load average {os.getloadavg()[0]:.2f}"
            )
            if args.json is not None:
                args.json.write_text(json.dumps(runs, indent=2))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
