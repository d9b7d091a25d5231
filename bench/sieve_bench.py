"""Delivery through Sieve, end to end: sansmail beside Postfix handing mail to Dovecot's LDA.

    flock /tmp/sansmail-bench.lock python3 bench/sieve_bench.py \\
        [--messages 2000] [--concurrency 10] [--size 10k] [--reps 3] [--no-peer]

Theory of operation
-------------------
A sansmail user without a script is served the direct way: the SMTP process stores the
message in the Maildir before its ``250``. A user with an active script has the copy
queued instead, and the queue runner's local delivery runs the script and stores it
through the IMAP account (`sansmail.sessions.lda`), as Postfix hands mail to Dovecot's
LDA. This bench measures what that path costs, and what the same path costs its peer.

* **sansmail**: one ``sansmail-trio serve`` (`bench_procs.SansmailServer`: one server
  process per core, plus the queue runner) serves bench@example.test throughout; scripts
  are put and activated with the Sieve store between runs (the intake asks at each RCPT,
  so no restart is needed).
* **postfix-lda**: Postfix (`postfix_peer.PostfixLdaServer`, the SMTP bench's instance)
  whose local(8) pipes each message to Dovecot's LDA with the Pigeonhole Sieve plugin:
  ``dovecot-lda -f "$SENDER" -a "$RECIPIENT"``, the ``mailbox_command`` of a Postfix +
  Dovecot site, with a dovecot.conf of its own. Scripts are Pigeonhole's files and the
  ``.dovecot.sieve`` link, switched between runs. The LDA rather than Dovecot's LMTP:
  it is the path sansmail's design copies (a delivery agent per message run by the MTA's
  queue), it needs no Dovecot daemon, and Debian installs it with dovecot-core.

The scripts: ``none`` (sansmail only, the direct path), ``keep`` (``keep;``, the least a
script can do) and ``fileinto`` (``fileinto "Lists";``, a folder made beforehand). Each
rep runs every (server, script) pair: ``loadgen`` pushes N messages of S bytes over C
connections (one message per connection, as smtp-source), then the bench waits until N
files are in the folder's Maildir (``new/`` and ``cur/``) and the server's queue is
empty. Per run it prints:

* accepted msgs/s: N / the load's wall time (last ``250``);
* delivered msgs/s: N / (from the first connection to the last file in the folder);
* server CPU seconds per 1000 messages: every process of the server's tree, live or
  reaped (sansmail's intake and runner; Postfix's daemons, local(8), the shell and every
  dovecot-lda it started).

and, per rep, sansmail's keep / none and the ratios sansmail / postfix-lda for the same
script (delivered rate, CPU). The machine is shared: the 1-minute load average is printed
beside the figures.
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
    BenchServer,
    SansmailServer,
    clear_maildir,
    count_files,
    proc_tree_cpu,
)
from bench_report import parse_size
from loadgen import LoadSpec, run_load
from postfix_peer import PostfixLdaServer

from sansmail.mail.address import MailboxId
from sansmail.storage.maildir import MaildirImapStore
from sansmail.storage.queue import QueueStore
from sansmail.storage.sieve import SieveStore

MAILBOX = MailboxId(domain="example.test", local="bench")
FOLDER = "Lists"
#: name -> (script text or None for no active script, folder the messages end in)
SCRIPTS: dict[str, tuple[bytes | None, str]] = {
    "none": (None, "INBOX"),
    "keep": (b"keep;\r\n", "INBOX"),
    "fileinto": (b'require "fileinto";\r\nfileinto "' + FOLDER.encode() + b'";\r\n', FOLDER),
}


def delivered(maildir: Path) -> int:
    return count_files(maildir / "new") + count_files(maildir / "cur")


class Target:
    """One server under test and how to switch its user's active script."""

    def __init__(self, server: BenchServer) -> None:
        self.server = server
        self.name = server.name

    def scripts(self) -> tuple[str, ...]:
        raise NotImplementedError

    def setup(self) -> None:
        """Store every script and make the folder, once the server runs."""
        raise NotImplementedError

    def activate(self, script: str) -> None:
        raise NotImplementedError

    def folder(self, name: str) -> Path:
        raise NotImplementedError

    def queue_empty(self) -> bool:
        raise NotImplementedError


class SansmailTarget(Target):
    def __init__(self, workdir: Path) -> None:
        super().__init__(SansmailServer(workdir))
        self.store = SieveStore(workdir / "data")

    def scripts(self) -> tuple[str, ...]:
        return tuple(SCRIPTS)

    def setup(self) -> None:
        for name, (text, _folder) in SCRIPTS.items():
            if text is not None:
                self.store.put(MAILBOX, name, text)
        imap = MaildirImapStore(self.server.workdir / "data", hostname="bench.example.test")
        account = imap.account(MAILBOX)
        try:
            account.create(FOLDER)
        finally:
            account.close()

    def activate(self, script: str) -> None:
        self.store.activate(MAILBOX, script if SCRIPTS[script][0] is not None else None)

    def folder(self, name: str) -> Path:
        # Maildir++, as the IMAP account lays folders out: ".NAME" inside the INBOX's.
        return self.server.maildir if name == "INBOX" else self.server.maildir / f".{name}"

    def queue_empty(self) -> bool:
        return not QueueStore(self.server.workdir / "data" / "queue").ids()


class PostfixLdaTarget(Target):
    server: PostfixLdaServer

    def __init__(self, workdir: Path) -> None:
        super().__init__(PostfixLdaServer(workdir))

    def scripts(self) -> tuple[str, ...]:
        # Without a script the LDA still runs (and still looks for one): not the peer of
        # sansmail's direct path, which Postfix's own local(8) Maildir delivery is; the
        # SMTP bench measures that.
        return ("keep", "fileinto")

    def setup(self) -> None:
        for name, (text, _folder) in SCRIPTS.items():
            if text is not None:
                self.server.put_script(name, text)
        self.server.create_folder(FOLDER)

    def activate(self, script: str) -> None:
        self.server.activate(script if SCRIPTS[script][0] is not None else None)

    def folder(self, name: str) -> Path:
        return self.server.folder(name)

    def queue_empty(self) -> bool:
        return self.server.settle(0) is None


def one_run(
    target: Target, script: str, *, messages: int, concurrency: int, size: int, timeout: float
) -> dict[str, float]:
    target.activate(script)
    folder = target.folder(SCRIPTS[script][1])
    clear_maildir(folder)
    before = proc_tree_cpu(target.server.pid)
    start = time.perf_counter()
    load = run_load(
        LoadSpec(port=target.server.port, messages=messages, concurrency=concurrency, size=size)
    )
    if not load.ok:
        raise SystemExit(f"{target.name}: load failed: {load.failure_samples[:3]}")
    deadline = time.monotonic() + timeout
    while delivered(folder) < messages or not target.queue_empty():
        if time.monotonic() > deadline:
            raise SystemExit(
                f"{target.name} {script}: {delivered(folder)} of {messages} in {folder}"
                f" after {timeout} s:\n{problems(target)}"
            )
        time.sleep(0.005)
    wall = time.perf_counter() - start
    cpu = (proc_tree_cpu(target.server.pid) - before).total
    if delivered(folder) != messages:
        raise SystemExit(f"{target.name} {script}: {delivered(folder)} files, expected {messages}")
    return {
        "accepted_per_s": messages / load.wall,
        "delivered_per_s": messages / wall,
        "cpu_per_1000": cpu * 1000 / messages,
    }


def problems(target: Target) -> str:
    """The deferrals, warnings and errors of the server's log, else its tail."""
    try:
        lines = target.server.log_path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    found = [
        line
        for line in lines
        if "deferred" in line or "warning" in line.lower() or "error" in line.lower()
    ]
    return "\n".join(found[-20:]) or target.server.log_tail()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        epilog="Run it under `flock /tmp/sansmail-bench.lock` on a shared machine.",
    )
    parser.add_argument("--messages", type=int, default=2000, help="per run (default 2000)")
    parser.add_argument("--concurrency", type=int, default=10, help="connections (default 10)")
    parser.add_argument("--size", type=parse_size, default=parse_size("10k"), help="e.g. 10k")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="per run, for delivery")
    parser.add_argument(
        "--no-peer", action="store_true", help="sansmail only (no Postfix + Dovecot LDA)"
    )
    parser.add_argument(
        "--tmpdir",
        type=Path,
        default=None,
        help="where the servers' folders go (must let nobody through: the LDA runs as it)",
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sieve-bench-", dir=args.tmpdir) as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # the peer's LDA runs as nobody below it
        targets: list[Target] = [SansmailTarget(root / "sansmail")]
        if not args.no_peer:
            why = PostfixLdaServer.unavailable()
            if why is None:
                targets.append(PostfixLdaTarget(root / "postfix-lda"))
            else:
                print(f"postfix-lda skipped: {why}")
        try:
            for target in targets:
                target.server.start()
                target.setup()
                # A first small run of each kind warms every path (imports, compiled script).
                for script in target.scripts():
                    one_run(
                        target,
                        script,
                        messages=50,
                        concurrency=5,
                        size=args.size,
                        timeout=args.timeout,
                    )
            runs = measure(targets, args)
        finally:
            for target in targets:
                target.server.stop()
    if args.json is not None:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


def measure(targets: list[Target], args: argparse.Namespace) -> list[dict[str, object]]:
    print(
        f"{args.messages} messages of {args.size} B over {args.concurrency} connections,"
        f" sansmail with {SansmailServer.processes} server processes;"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'rep':>3} {'server':>11} {'script':>8} {'accepted/s':>11} {'delivered/s':>12}"
        f" {'cpu s/1k':>9}"
    )
    runs: list[dict[str, object]] = []
    for rep in range(1, args.reps + 1):
        figures: dict[str, dict[str, dict[str, float]]] = {}
        for target in targets:
            for script in target.scripts():
                f = one_run(
                    target,
                    script,
                    messages=args.messages,
                    concurrency=args.concurrency,
                    size=args.size,
                    timeout=args.timeout,
                )
                figures.setdefault(target.name, {})[script] = f
                print(
                    f"{rep:>3} {target.name:>11} {script:>8} {f['accepted_per_s']:>11.0f}"
                    f" {f['delivered_per_s']:>12.0f} {f['cpu_per_1000']:>9.2f}"
                )
        ratios: dict[str, float] = {}
        ours = figures["sansmail"]
        ratios["keep/none delivered"] = (
            ours["keep"]["delivered_per_s"] / ours["none"]["delivered_per_s"]
        )
        ratios["keep/none cpu"] = ours["keep"]["cpu_per_1000"] / ours["none"]["cpu_per_1000"]
        peer = figures.get("postfix-lda")
        for script in ("keep", "fileinto"):
            if peer is not None:
                ratios[f"{script} sansmail/postfix-lda delivered"] = (
                    ours[script]["delivered_per_s"] / peer[script]["delivered_per_s"]
                )
                ratios[f"{script} sansmail/postfix-lda cpu"] = (
                    ours[script]["cpu_per_1000"] / peer[script]["cpu_per_1000"]
                )
        print(f"    rep {rep}: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
        runs.append({"rep": rep, **figures, "ratios": ratios})
    keys = list(runs[0]["ratios"])  # type: ignore[call-overload]
    medians = {k: statistics.median(float(r["ratios"][k]) for r in runs) for k in keys}  # type: ignore[index]
    print(
        "median: "
        + ", ".join(f"{k} {v:.2f}" for k, v in medians.items())
        + f"; load average {os.getloadavg()[0]:.2f}"
    )
    return runs


if __name__ == "__main__":
    sys.exit(main())
