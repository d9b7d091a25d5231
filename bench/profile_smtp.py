"""Where sansmail's CPU goes while it receives mail: py-spy on every server process under
smtp-source, summed up by category and by function.

    python3 bench/profile_smtp.py [--messages 8000] [--size 10k] [--concurrency 50]
        [--processes 2] [--all-threads] [--keep DIR] [--source CHECKOUT]

Theory of operation
-------------------
The server is `bench_procs.SansmailServer` (the config smtp_bench.py measures), started
from this checkout or `--source`. Once it greets, one ``py-spy record --format raw
--nonblocking`` runs per server process; smtp-source then sends N messages of S bytes
over C connections (one connection per message, as in the baseline), and py-spy is
stopped with SIGINT, which makes it write its collapsed stacks.

By default py-spy samples only the thread holding the GIL (``--gil``): Python's own
time, without the waits in fsync or epoll. Note that a thread keeps the GIL while the
kernel has it preempted, so on a loaded machine these are closer to wall time spent
holding the GIL than to CPU time; compare shares, not absolute counts, and read the
CPU per message from smtp_bench.py. ``--all-threads`` samples every thread that is not
idle (the worker threads' syscalls too).

Each sample is charged to the innermost frame that matches a category (`CATEGORIES`,
in order), so "core parsing" is time in the SMTP core itself and not in what it calls.
The report prints the categories, then the top functions by inclusive and by self
samples (line numbers dropped).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import bench_procs as procs
from bench_report import parse_size

#: (category, pattern over a frame "function (file:line)"); the first that matches the
#: innermost frame of a sample wins, so the specific ones come first.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("storage: file writes, fsync", r"sansmail/storage/|_MaildirDelivery|MaildirStore"),
    ("Received header, dates", r"mail/trace\.py|email/utils|datetime"),
    ("log formatting and writing", r"logging/|sansmail_trio/_log\.py|logtext"),
    ("replies: construction, serialisation", r"smtp/_writers\.py|Reply\.|LockstepServer\.send"),
    ("SMTP core: parsing, state", r"sansmail/smtp/|_linebuffer|_lockstep|mail/address\.py"),
    ("session: decisions, transaction", r"sansmail/sessions/|sansmail/mail/"),
    ("thread hand-offs", r"trio/_threads\.py|_thread_cache|threading\.py|sansmail_trio/_commit"),
    ("sockets (send, recv, accept, close)", r"trio/_socket\.py|_highlevel_socket|socket\.py"),
    ("adapter (wire, session time, serve)", r"sansmail_trio/"),
    ("Trio scheduler, cancel scopes", r"trio/|contextlib|outcome/"),
)

_LINE = re.compile(r":\d+\)$")


def parse_raw(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """py-spy's raw format: one "frame;frame;...;frame count" per line, outermost
    first. Frames lose their line numbers, so a function counts once per sample."""
    samples = []
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            samples.append(([_LINE.sub(")", f) for f in stack.split(";")], int(count)))
    return samples


def categorize(
    samples: Iterable[tuple[list[str], int]],
    categories: Sequence[tuple[str, str]] = CATEGORIES,
) -> collections.Counter[str]:
    """Samples per category (see the module docstring); "other" when nothing matches."""
    compiled = [(name, re.compile(pattern)) for name, pattern in categories]
    counts: collections.Counter[str] = collections.Counter()
    for frames, count in samples:
        for frame in reversed(frames):
            name = next((n for n, rx in compiled if rx.search(frame)), None)
            if name is not None:
                counts[name] += count
                break
        else:
            counts["other"] += count
    return counts


def by_function(
    samples: Iterable[tuple[list[str], int]],
) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """Inclusive and self samples per function."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for frames, count in samples:
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return inclusive, own


def report(samples: list[tuple[list[str], int]], *, top: int = 25) -> str:
    total = sum(count for _frames, count in samples) or 1
    out = ["| category | share |", "|---|---:|"]
    for name, count in categorize(samples).most_common():
        out.append(f"| {name} | {100 * count / total:.1f}% |")
    inclusive, own = by_function(samples)
    for title, counter in (("inclusive", inclusive), ("self", own)):
        out += ["", f"top functions, {title} (share of {total} samples):"]
        for frame, count in counter.most_common(top):
            out.append(f"  {100 * count / total:5.1f}%  {frame}")
    return "\n".join(out)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class _Checkout(procs.SansmailServer):
    """sansmail run from another source tree (a ``git worktree`` of another commit)."""

    def __init__(self, workdir: Path, source: Path) -> None:
        super().__init__(workdir)
        self.source = source

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(self.source))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--messages", type=int, default=8000)
    parser.add_argument("--size", default="10k", help="body bytes (k = KiB)")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--processes", type=int, default=2, help="sansmail's `processes`")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--all-threads", action="store_true", help="not only the GIL holder")
    parser.add_argument("--keep", help="keep the data dir and the raw profiles here")
    parser.add_argument("--source", help="a checkout to run sansmail from (default: this one)")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy")
    source = procs.find_smtp_source()
    if spy is None or source is None:
        print("profile_smtp.py needs py-spy and smtp-source (Debian: postfix)", file=sys.stderr)
        return 2
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="profile-smtp-"))
    server = (
        _Checkout(workdir / "sansmail", Path(args.source).resolve())
        if args.source
        else procs.SansmailServer(workdir / "sansmail")
    )
    server.processes = args.processes
    spies: list[subprocess.Popen[bytes]] = []
    try:
        server.start()
        for pid in _children(server.pid) or [server.pid]:
            command = [spy, "record", "--format", "raw", "--nonblocking"]
            command += ["--rate", str(args.rate), "--pid", str(pid)]
            command += ["-o", str(workdir / f"profile-{pid}.txt")]
            command += [] if args.all_threads else ["--gil"]
            spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
        time.sleep(1.0)  # py-spy attaches
        result = procs.run_smtp_source(
            source,
            port=server.port,
            messages=args.messages,
            concurrency=args.concurrency,
            size=parse_size(args.size),
            timeout=600,
        )
    finally:
        for process in spies:
            process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for process in spies:
            process.wait(60)
        server.stop()
    rate = args.messages / result.wall if result.wall else 0.0
    print(f"{args.messages} messages of {args.size} over {args.concurrency} connections:")
    print(f"{rate:.0f} msgs/s under py-spy; smtp-source {'ok' if result.ok else 'FAILED'}\n")
    samples = []
    for path in workdir.glob("profile-*.txt"):
        samples += parse_raw(path.read_text().splitlines())
    print(report(samples))
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
