"""Memory per idle IMAP session: sansmail beside Dovecot, on the 10,000-message mailbox.

    python3 bench/imap_memory_bench.py [--sessions N] [--messages M] [--processes LIST]
        [--reps R] [--servers LIST] [--after LIST] [--clients C] [--trace]
        [--server-env KEY=VALUE] [--json FILE] [--tmpdir DIR] [--keep] [--deadline S]
        [--idle]

Theory of operation
-------------------
What an idle IMAP user costs is what a server holds for a connection that logged in,
SELECTed a big INBOX and then waits: mail clients keep such a connection open all day,
often two or three per user. So, for each target and rep, back to back, the order
rotated by rep:

1. The server starts afresh on the mailbox ``mailbox_bench.generate_mailbox`` wrote
   (``--messages``, 10,000 by default; the same bytes for every target). One warm-up
   session (LOGIN, SELECT INBOX, LOGOUT) builds the index on the first start, then 8 per
   server process at once make every process load what a first session loads (a process
   that served none would charge its first-time costs to the sessions); then, after
   ``--settle`` seconds (5 by default: longer than
   the 2 s sansmail waits after a logout before it gives memory back, so that before is
   a settled level, not the warm-up's leftovers), **before** is read.
2. ``--clients`` threads open ``--sessions`` connections between them, each with LOGIN
   and SELECT INBOX over a raw socket (the EXISTS count is checked), and leave them
   open and silent; with ``--idle`` each then sends IDLE (RFC 2177) and waits in it,
   as a phone or Thunderbird does (DONE before the LOGOUT of step 3). After ``--settle``
   seconds, **held** is read: per session is (held - before) / N.
3. Every session sends LOGOUT (its BYE and OK are read) and closes. The clock starts when
   the last one is closed; the memory is read at each of ``--after`` (3, 10 and 60 s):
   what a server gives back once its users leave.

Memory is the sum over the server's process tree (its root and every descendant) of Rss
and Pss from ``/proc/<pid>/smaps_rollup``. PSS is the fair sum: a page shared by k
processes counts 1/k in each, so a forking server (sansmail's processes share the
interpreter's pages with the parent; Dovecot's imap processes share libraries) is not
charged k times. RSS is shown beside it.

Targets: ``sansmail`` once per ``--processes`` value (``sansmail-p1``, ``sansmail-p2``:
``sansmail-trio serve`` with that many server processes; the parent and the queue runner
count too), and ``dovecot`` when it can run (installed, and this run is root:
``dovecot_peer.py``, with its process and connection limits raised for N sessions of one
user from one address: ``service imap { process_limit }``, ``mail_max_userip_connections``
and the defaults they derive from). Dovecot runs one ``imap`` process per session.

File descriptors. The bench holds N client sockets and the servers inherit its limits, so
it raises its soft RLIMIT_NOFILE to the hard one and refuses an N it cannot hold. A
sansmail server process needs about one descriptor per session (its socket; the folder's
SQLite files are shared) plus a few dozen; Dovecot's imap processes need a handful each,
its master one per child.

``--trace`` profiles instead of only measuring: the sansmail servers start with
``PYTHONTRACEMALLOC`` (8 frames) and a hook, added by this bench only, that on SIGUSR2
writes a tracemalloc snapshot and a census of the garbage collector's objects by type.
The bench takes one before the sessions, one while they are held and one after the last
``--after``, and prints the difference by line and by type (where a session's memory is)
and what is still traced after the logouts. Traced figures are
inflated by the tracing itself, so ``--trace`` runs are for the profile, not the table.

Only 127.0.0.1 is ever connected to; the whole run has a deadline (``--deadline``); the
servers and the temporary folder go away on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

import bench_procs as procs
import mailbox_bench as mb
from bench_report import Spread
from dovecot_peer import DovecotServer

__all__ = [
    "Memory",
    "RepRecord",
    "format_table",
    "main",
    "parse_args",
    "tree_memory",
]

HOST = "127.0.0.1"
MIB = 1024 * 1024
# Descriptors the bench needs besides its client sockets (pipes, logs, /proc reads).
FD_SPARE = 64
TRACE_FRAMES = 8
# Warm-up sessions held at once per server process (connections go to the processes as
# the kernel hands them out: with 8 each, two processes both get one but 3 times in 10^5).
WARM_UP_PER_PROCESS = 8

SANSMAIL_CONFIG = """\
hostname = "bench.example.test"
domains = ["example.test"]
data_dir = "data"
processes = {processes}

[listen]
imap = "127.0.0.1:{imap_port}"

# The connection caps are server-wide (every service): N sessions from one address.
[smtp]
max_connections = {cap}
max_connections_per_ip = {cap}

[dns]
nameservers = ["127.0.0.1:53"]
"""

# Appended to dovecot_peer's configuration: room for N sessions of one user from one
# address (stock Dovecot allows 10 per user and address, and 1024 imap processes).
DOVECOT_LIMITS = """\
# Added by bench/imap_memory_bench.py: N idle sessions of one user.
default_process_limit = {cap}
default_client_limit = {cap}
mail_max_userip_connections = {cap}
service imap {{
  process_limit = {cap}
}}
service anvil {{
  client_limit = {anvil}
}}
"""

# Run by the traced server before `sansmail-trio serve`: SIGUSR2 makes each process
# (the forked children inherit the handler and the tracing) write a snapshot named by
# the label file, and a census of the collector's objects by type.
TRACE_HOOK = """\
import collections, gc, json, os, signal, sys, tracemalloc

def _dump(signum, frame):
    where = os.environ["IMAP_MEMORY_BENCH_TRACE"]
    with open(os.path.join(where, "label")) as f:
        label = f.read().strip()
    gc.collect()
    stem = os.path.join(where, f"{os.getpid()}-{label}")
    tracemalloc.take_snapshot().dump(stem + ".part")
    counts, sizes = collections.Counter(), collections.Counter()
    for obj in gc.get_objects():
        name = type(obj).__module__ + "." + type(obj).__qualname__
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj)
    with open(stem + ".types", "w") as f:
        json.dump({"counts": counts, "sizes": sizes}, f)
    os.rename(stem + ".part", stem + ".snap")

signal.signal(signal.SIGUSR2, _dump)
from sansmail_trio._cli import main
sys.exit(main())
"""


class DeadlineError(Exception):
    """The run's --deadline passed."""


class SessionError(Exception):
    """A session that did not log in and select as it should."""


# --- /proc --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """A process tree's memory, KiB, at one moment."""

    rss_kib: int
    pss_kib: int
    processes: int

    @property
    def pss_mib(self) -> float:
        return self.pss_kib / 1024


def rollup(pid: int) -> tuple[int, int] | None:
    """(Rss, Pss) KiB of one process from its smaps_rollup; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key] = int(rest.split()[0])
    if not values:  # a zombie: its memory is gone already
        return None
    return values.get("Rss", 0), values.get("Pss", 0)


def tree_memory(root: int) -> Memory:
    """Rss and Pss of `root` and every descendant, summed."""
    rss = pss = count = 0
    for pid in procs._tree(root):
        got = rollup(pid)
        if got is not None:
            rss += got[0]
            pss += got[1]
            count += 1
    return Memory(rss, pss, count)


# --- the servers ----------------------------------------------------------------------------


class SansmailTarget(mb.MailServer):
    """``sansmail-trio serve`` with IMAP only, its caps raised for N sessions."""

    def __init__(self, workdir: Path, processes: int, cap: int, env: dict[str, str]) -> None:
        super().__init__(workdir, processes)
        self.cap = cap
        self.extra_env = env
        self.trace_dir: Path | None = None
        self._user_added = False

    def env(self) -> dict[str, str]:
        env = {**super().env(), **self.extra_env}
        if self.trace_dir is not None:
            env["PYTHONTRACEMALLOC"] = str(TRACE_FRAMES)
            env["IMAP_MEMORY_BENCH_TRACE"] = str(self.trace_dir)
        return env

    def prepare(self) -> None:
        """Write the config (fresh ports each start) and, the first time, the user."""
        if not self._user_added:
            super().prepare()  # the user, with mailbox_bench's config
            self._user_added = True
        self.imap_port = procs.free_port()
        (self.workdir / "sansmail.toml").write_text(
            SANSMAIL_CONFIG.format(processes=self.processes, imap_port=self.imap_port, cap=self.cap)
        )

    def start(self, timeout: float = 60.0) -> None:
        if self.trace_dir is None:
            super().start(timeout)
            return
        # The same as MailServer.start, through the hook.
        command = [sys.executable, "-c", TRACE_HOOK, "serve", "--config", "sansmail.toml"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=procs._die_with_parent,  # the harness's own threads are done
            )
        wait_for_greeting(self, timeout)

    def servers(self) -> list[int]:
        """The server processes (not the parent, not the queue runner)."""
        out = []
        for pid in procs._tree(self.pid)[1:]:
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm != "sansmail-queue":
                out.append(pid)
        return out


class DovecotTarget(DovecotServer):
    """dovecot_peer's instance, with room for N sessions of one user."""

    def __init__(self, workdir: Path, cap: int) -> None:
        super().__init__(workdir)
        self.cap = cap

    def prepare(self) -> None:
        super().prepare()
        # anvil hears from every login and imap process; Dovecot's own check wants room
        # for all of them.
        limits = DOVECOT_LIMITS.format(cap=self.cap, anvil=3 * self.cap + 100)
        with open(self.config_path, "a") as f:
            f.write(limits)
        done = subprocess.run(
            ["doveconf", "-c", str(self.config_path), "-n"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise procs.ServerError(f"doveconf refused the limits:\n{done.stderr.strip()}")


def wait_for_greeting(server: mb.MailServer, timeout: float) -> None:
    assert server.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise procs.ServerError(
                f"{server.workdir.name} exited at startup:\n{server.log_tail()}"
            )
        try:
            with socket.create_connection((HOST, server.imap_port), timeout=5) as s:
                if s.recv(512).startswith(b"* OK"):
                    return
        except OSError:
            time.sleep(0.05)
    raise procs.ServerError(f"{server.workdir.name} did not greet within {timeout:.0f} s")


# --- the clients ----------------------------------------------------------------------------


def _read_until(sock: socket.socket, done: bytes, buf: bytearray) -> bytes:
    """Read until a line starts with `done`; return everything up to that line's end."""
    while True:
        at = buf.find(b"\r\n" + done) if not buf.startswith(done) else -2
        if at != -1:
            start = 0 if at == -2 else at + 2
            end = buf.find(b"\r\n", start)
            if end >= 0:
                out = bytes(buf[: end + 2])
                del buf[: end + 2]
                return out
        data = sock.recv(65536)
        if not data:
            raise SessionError(f"connection closed while waiting for {done!r}")
        buf += data


#: ``--idle``: sessions wait in IDLE rather than silent after SELECT.
IDLE = False


def open_session(port: int, messages: int) -> socket.socket:
    """A connection that has logged in and SELECTed INBOX (`messages` EXISTS), and
    under ``--idle`` is idling."""
    sock = socket.create_connection((HOST, port), timeout=120)
    try:
        buf = bytearray()
        greeting = _read_until(sock, b"* ", buf)
        if not greeting.startswith(b"* OK"):
            raise SessionError(f"greeting {greeting[:80]!r}")
        sock.sendall(f"a LOGIN {mb.USER} {mb.PASSWORD}\r\n".encode())
        reply = _read_until(sock, b"a ", buf)
        if b"\r\na OK" not in b"\r\n" + reply:
            raise SessionError(f"LOGIN: {reply[-200:]!r}")
        sock.sendall(b"b SELECT INBOX\r\n")
        reply = _read_until(sock, b"b ", buf)
        if b"\r\nb OK" not in b"\r\n" + reply:
            raise SessionError(f"SELECT: {reply[-200:]!r}")
        if f"* {messages} EXISTS\r\n".encode() not in reply:
            raise SessionError(f"SELECT did not say {messages} EXISTS: {reply[:300]!r}")
        if IDLE:
            sock.sendall(b"c IDLE\r\n")
            reply = _read_until(sock, b"+", buf)
            if not reply.startswith(b"+"):
                raise SessionError(f"IDLE: {reply[-200:]!r}")
    except BaseException:
        sock.close()
        raise
    return sock


def close_session(sock: socket.socket) -> None:
    """LOGOUT (after DONE under ``--idle``), its BYE and OK read, then close."""
    try:
        if IDLE:
            sock.sendall(b"DONE\r\n")
            _read_until(sock, b"c ", bytearray())
        sock.sendall(b"z LOGOUT\r\n")
        _read_until(sock, b"z ", bytearray())
    finally:
        sock.close()


def in_threads(items: Sequence[object], work: object, clients: int) -> list[object]:
    """Run ``work(i)`` for each index of `items` in `clients` threads; results in order.
    The first exception stops the others and is raised."""
    assert callable(work)
    results: list[object] = [None] * len(items)
    errors: list[BaseException] = []
    next_index = iter(range(len(items)))
    lock = threading.Lock()

    def worker() -> None:
        while not errors:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            try:
                results[i] = work(i)
            except BaseException as exc:  # handed to the caller
                errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# --- one rep ----------------------------------------------------------------------------------


@dataclass
class RepRecord:
    """One rep against one target."""

    target: str
    rep: int
    sessions: int
    before: Memory | None = None
    held: Memory | None = None
    after: dict[str, Memory] = field(default_factory=dict)  # seconds -> memory
    open_s: float = 0.0  # wall time to open the N sessions
    error: str = ""
    load_1m: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error and self.held is not None

    def per_session_kib(self, kind: str = "pss") -> float | None:
        if self.before is None or self.held is None or not self.sessions:
            return None
        delta = getattr(self.held, f"{kind}_kib") - getattr(self.before, f"{kind}_kib")
        return delta / self.sessions

    def returned(self, after: str) -> float | None:
        """PSS at `after` seconds over PSS before (1.0: all given back)."""
        mem = self.after.get(after)
        if mem is None or self.before is None or not self.before.pss_kib:
            return None
        return mem.pss_kib / self.before.pss_kib


def run_rep(
    server: SansmailTarget | DovecotTarget,
    record: RepRecord,
    args: argparse.Namespace,
    trace: TraceSession | None,
) -> None:
    port = server.imap_port
    # Warm-up: first a session alone (it builds the index), then a few at once, so that
    # every server process has served one and loaded what a first session loads.
    close_session(open_session(port, args.messages))
    warm = in_threads(
        range(WARM_UP_PER_PROCESS * getattr(server, "processes", 1)),
        lambda _i: open_session(port, args.messages),
        args.clients,
    )
    in_threads(warm, lambda i: close_session(warm[i]), args.clients)  # type: ignore[arg-type]
    time.sleep(args.settle)
    record.before = tree_memory(server.pid)
    if trace is not None:
        trace.take("before")
    started = time.perf_counter()
    sockets: list[object] = []
    try:
        sockets = in_threads(
            range(args.sessions), lambda _i: open_session(port, args.messages), args.clients
        )
        record.open_s = time.perf_counter() - started
        time.sleep(args.settle)
        record.held = tree_memory(server.pid)
        if trace is not None:
            trace.take("held")
        in_threads(sockets, lambda i: close_session(sockets[i]), args.clients)  # type: ignore[arg-type]
    finally:
        for sock in sockets:
            if isinstance(sock, socket.socket):
                sock.close()
    gone = time.monotonic()
    for after in args.after_list:
        time.sleep(max(0.0, gone + after - time.monotonic()))
        record.after[_seconds(after)] = tree_memory(server.pid)
    if trace is not None:
        trace.take("after")


def _seconds(value: float) -> str:
    return f"{value:g}"


# --- tracing ------------------------------------------------------------------------------


class TraceSession:
    """The SIGUSR2 hook's side in the bench: ask each server process for a snapshot."""

    def __init__(self, directory: Path, server: SansmailTarget) -> None:
        self.directory = directory
        self.server = server

    def take(self, label: str, timeout: float = 120.0) -> None:
        (self.directory / "label").write_text(label)
        pids = self.server.servers()
        for pid in pids:
            os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        for pid in pids:
            path = self.directory / f"{pid}-{label}.snap"
            while not path.exists():
                if time.monotonic() > deadline:
                    raise procs.ServerError(f"no snapshot from {pid} within {timeout:.0f} s")
                time.sleep(0.1)

    def report(self, sessions: int, top: int = 25) -> str:
        out = []
        for before in sorted(self.directory.glob("*-before.snap")):
            pid = before.name.split("-")[0]
            held = self.directory / f"{pid}-held.snap"
            if not held.exists():
                continue
            a = tracemalloc.Snapshot.load(str(before))
            b = tracemalloc.Snapshot.load(str(held))
            diff = b.compare_to(a, "lineno")
            total = sum(d.size_diff for d in diff)
            out.append(
                f"\n*server process {pid}: tracemalloc, held - before: "
                f"{total / MIB:.1f} MiB, {total / sessions / 1024:.1f} KiB per session*\n"
            )
            out.append("| KiB per session | blocks per session | where |")
            out.append("|---:|---:|---|")
            for d in diff[:top]:
                frame = d.traceback[0]
                out.append(
                    f"| {d.size_diff / sessions / 1024:.2f} | {d.count_diff / sessions:.1f} | "
                    f"{_short(frame.filename)}:{frame.lineno} |"
                )
            out.append(self._types(pid, sessions, top))
            after = self.directory / f"{pid}-after.snap"
            if after.exists():
                left = tracemalloc.Snapshot.load(str(after)).compare_to(a, "lineno")
                kept = sum(d.size_diff for d in left)
                out.append(f"\nstill traced after logout, over before: {kept / MIB:.2f} MiB")
                for d in left[:8]:
                    frame = d.traceback[0]
                    out.append(
                        f"  {d.size_diff / 1024:+.1f} KiB {d.count_diff:+d} blocks "
                        f"{_short(frame.filename)}:{frame.lineno}"
                    )
        return "\n".join(out) or "(no snapshots)"

    def _types(self, pid: str, sessions: int, top: int) -> str:
        try:
            before = json.loads((self.directory / f"{pid}-before.types").read_text())
            held = json.loads((self.directory / f"{pid}-held.types").read_text())
        except (OSError, ValueError):
            return ""
        sizes = collections.Counter(held["sizes"])
        sizes.subtract(before["sizes"])
        counts = collections.Counter(held["counts"])
        counts.subtract(before["counts"])
        lines = [
            "\nobjects the collector tracks, held - before, by type (shallow sizes):\n",
            "| objects per session | bytes per session | type |",
            "|---:|---:|---|",
        ]
        for name, size in sizes.most_common(top):
            lines.append(f"| {counts[name] / sessions:.1f} | {size / sessions:.0f} | {name} |")
        return "\n".join(lines)


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/lib/python3", str(procs.REPO_DIR) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# --- reporting ----------------------------------------------------------------------------


def _spread(values: Sequence[float], fmt: str) -> str:
    got = Spread.of([v for v in values if v is not None])
    if got is None:
        return "-"
    return f"{got.median:{fmt}} [{got.low:{fmt}}-{got.high:{fmt}}]"


def format_table(records: Sequence[RepRecord], targets: Sequence[str], after: Sequence[str]) -> str:
    """Medians over the good reps [min-max], per target."""
    head = [
        "target",
        "before PSS MiB",
        "held PSS MiB",
        "per session PSS KiB",
        "per session RSS KiB",
        *(f"+{a} s PSS MiB" for a in after),
        f"+{after[-1]} s / before" if after else "",
        "open s",
        "processes held",
    ]
    head = [h for h in head if h]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for target in targets:
        good = [r for r in records if r.target == target and r.ok]
        if not good:
            continue
        assert all(r.before and r.held for r in good)
        cells = [
            target,
            _spread([r.before.pss_mib for r in good if r.before], ".1f"),
            _spread([r.held.pss_mib for r in good if r.held], ".1f"),
            _spread([r.per_session_kib("pss") or 0.0 for r in good], ".0f"),
            _spread([r.per_session_kib("rss") or 0.0 for r in good], ".0f"),
            *(_spread([r.after[a].pss_mib for r in good if a in r.after], ".1f") for a in after),
        ]
        if after:
            cells.append(_spread([r.returned(after[-1]) or 0.0 for r in good], ".2f"))
        cells += [
            _spread([r.open_s for r in good], ".1f"),
            _spread([r.held.processes for r in good if r.held], ".0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_ratios(records: Sequence[RepRecord], targets: Sequence[str], peer: str) -> str:
    """Per session PSS of each target over the peer's, within each rep."""
    lines = []
    for target in targets:
        if target == peer:
            continue
        ratios = []
        for r in records:
            if r.target != target or not r.ok:
                continue
            theirs = next(
                (p for p in records if p.target == peer and p.rep == r.rep and p.ok), None
            )
            ours_kib, theirs_kib = r.per_session_kib(), theirs and theirs.per_session_kib()
            if ours_kib is not None and theirs_kib:
                ratios.append(ours_kib / theirs_kib)
        if ratios:
            lines.append(
                f"{target} / {peer}, PSS per session, within each rep: {_spread(ratios, '.2f')}"
            )
    return "\n".join(lines)


# --- running ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="imap_memory_bench.py",
        description="Server memory per idle IMAP session (LOGIN + SELECT of a big INBOX), "
        "sansmail beside Dovecot.",
    )
    p.add_argument("--sessions", type=int, help="idle sessions held at once (default 1000)")
    p.add_argument("--messages", type=int, help="messages in the INBOX (default 10000)")
    p.add_argument(
        "--processes", default="1,2", help="sansmail's server processes, one target each (1,2)"
    )
    p.add_argument("--reps", type=int, help="repetitions per target (default 3)")
    p.add_argument("--servers", default="sansmail,dovecot", help="sansmail and/or dovecot (both)")
    p.add_argument("--after", help="seconds after the last logout to read memory at (3,10,60)")
    p.add_argument("--clients", type=int, default=4, help="client threads (%(default)s)")
    p.add_argument("--settle", type=float, help="seconds to wait before reading memory (default 5)")
    p.add_argument("--quick", action="store_true", help="smoke run: 100 sessions, 1000 messages")
    p.add_argument("--trace", action="store_true", help="profile sansmail with tracemalloc")
    p.add_argument("--idle", action="store_true", help="sessions wait in IDLE after SELECT")
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the sansmail servers, e.g. MALLOC_ARENA_MAX=2 (repeatable)",
    )
    p.add_argument("--seed", type=int, default=mb.SEED, help="the generator's seed")
    p.add_argument("--json", type=Path, help="raw results (default imap-memory-<time>.json)")
    p.add_argument("--tmpdir", type=Path, help="where the data dirs go (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the data dirs afterwards")
    p.add_argument(
        "--deadline", type=float, default=7200.0, help="seconds for the whole run (%(default)s)"
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.sessions = args.sessions or (100 if quick else 1000)
    args.messages = args.messages or (1000 if quick else 10000)
    args.reps = args.reps or (1 if quick else 3)
    args.settle = 0.5 if quick and args.settle is None else args.settle or 5.0
    try:
        args.process_list = [int(v) for v in args.processes.split(",") if v.strip()]
        after_text = args.after or ("1,3" if quick else "3,10,60")
        args.after_list = [float(v) for v in after_text.split(",") if v.strip()]
    except ValueError as exc:
        p.error(f"--processes and --after take comma-separated numbers: {exc}")
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not args.server_list or set(args.server_list) - {"sansmail", "dovecot"}:
        p.error("--servers: sansmail and/or dovecot")
    if min(args.sessions, args.messages, args.reps, args.clients) < 1 or args.deadline <= 0:
        p.error("--sessions, --messages, --reps, --clients and --deadline must be positive")
    if not args.process_list or min(args.process_list) < 1 or args.settle < 0:
        p.error("--processes must be positive, --settle not negative")
    if sorted(args.after_list) != args.after_list or any(a < 0 for a in args.after_list):
        p.error("--after: ascending seconds")
    env = {}
    for item in args.server_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--server-env {item!r}: KEY=VALUE")
        env[key] = value
    args.env = env
    return args


def raise_fd_limit(sessions: int) -> int:
    """Raise the soft descriptor limit to the hard one (the servers inherit it); the
    limit now in force. Refuses an N the limit cannot hold."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if sessions + FD_SPARE > soft:
        raise SystemExit(
            f"{sessions} sessions need about {sessions + FD_SPARE} descriptors here and as "
            f"many in the server; the hard limit is {hard} (raise it: ulimit -Hn, or "
            "LimitNOFILE= in a service)"
        )
    return soft


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGALRM:
        raise DeadlineError("the --deadline passed")
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    global IDLE  # one switch for every session of the run
    IDLE = args.idle
    fd_limit = raise_fd_limit(args.sessions)
    targets: list[str] = []
    if "sansmail" in args.server_list:
        targets += [f"sansmail-p{n}" for n in args.process_list]
    if "dovecot" in args.server_list:
        why = DovecotServer.unavailable()
        if why is None:
            targets.append("dovecot")
        else:
            print(f"dovecot left out: {why}", file=sys.stderr)
    if not targets:
        print("no server can run", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGALRM, _on_signal)
    signal.setitimer(signal.ITIMER_REAL, args.deadline)
    started = time.time()
    json_path = args.json or Path(time.strftime("imap-memory-%Y%m%dT%H%M%S.json"))
    top = Path(tempfile.mkdtemp(prefix="imap-memory-", dir=args.tmpdir))
    top.chmod(0o711)  # Dovecot's mail processes (nobody) pass through to the mailbox
    cap = args.sessions + 100
    records: list[RepRecord] = []
    status = "ok"
    traces: list[str] = []
    servers: dict[str, SansmailTarget | DovecotTarget] = {}
    try:
        for target in targets:
            if target == "dovecot":
                dovecot = DovecotTarget(top / "dovecot", cap)
                dovecot.prepare()
                mb.generate_mailbox(dovecot.inbox, args.messages, args.seed)
                dovecot.own()
                servers[target] = dovecot
            else:
                processes = int(target.removeprefix("sansmail-p"))
                sansmail = SansmailTarget(top / target, processes, cap, args.env)
                sansmail.workdir.mkdir(parents=True)
                mb.generate_mailbox(sansmail.inbox, args.messages, args.seed)
                servers[target] = sansmail
        print(
            f"{args.sessions} sessions x {args.reps} rep(s), {args.messages} messages, "
            f"targets {', '.join(targets)}; descriptor limit {fd_limit}",
            flush=True,
        )
        for rep in range(args.reps):
            shift = rep % len(targets)
            for target in [*targets[shift:], *targets[:shift]]:
                server = servers[target]
                record = RepRecord(target, rep, args.sessions, load_1m=os.getloadavg()[0])
                records.append(record)
                trace = None
                try:
                    if isinstance(server, SansmailTarget):
                        server.prepare()
                        if args.trace:
                            server.trace_dir = top / f"trace-{target}-{rep}"
                            server.trace_dir.mkdir()
                            trace = TraceSession(server.trace_dir, server)
                    server.start()
                    run_rep(server, record, args, trace)
                    if trace is not None:
                        traces.append(f"\n## {target}, rep {rep}\n" + trace.report(args.sessions))
                except (SessionError, OSError, procs.ServerError) as exc:
                    record.error = f"{type(exc).__name__}: {exc}"
                    print(f"!! {target} rep {rep} FAILED: {record.error}\n{server.log_tail()}")
                finally:
                    if server.proc is not None:
                        procs.stop_process_group(server.proc)
                        server.proc = None
                if record.ok:
                    print(progress(record, args.after_list), flush=True)
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
        for server in servers.values():
            if server.proc is not None:
                procs.stop_process_group(server.proc)
                server.proc = None
        if args.keep:
            print(f"kept {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)
    after = [_seconds(a) for a in args.after_list]
    print(report(records, targets, after, args))
    for text in traces:
        print(text)
    write_json(json_path, records, args=args, started=started, status=status, fd_limit=fd_limit)
    print(f"\nraw results: {json_path}")
    bad = status != "ok" or not records or any(not r.ok for r in records)
    return 1 if bad else 0


def progress(record: RepRecord, after: Sequence[float]) -> str:
    """One line for a rep that went well."""
    assert record.before is not None
    assert record.held is not None
    line = (
        f"rep {record.rep} {record.target}: {record.per_session_kib():.0f} KiB PSS per session,"
        f" held {record.held.pss_mib:.1f} MiB (before {record.before.pss_mib:.1f})"
    )
    for seconds in after:
        mem = record.after.get(_seconds(seconds))
        if mem is not None:
            line += f", +{_seconds(seconds)} s {mem.pss_mib:.1f}"
    return line


def report(
    records: Sequence[RepRecord],
    targets: Sequence[str],
    after: Sequence[str],
    args: argparse.Namespace,
) -> str:
    out = [
        f"\n*{args.sessions} idle IMAP sessions (LOGIN + SELECT INBOX of {args.messages} "
        f"messages); memory of the server's process tree, median of {args.reps} rep(s) "
        "[min-max]*\n",
        format_table(records, targets, after),
    ]
    if "dovecot" in targets:
        out.append("\n" + format_ratios(records, targets, "dovecot"))
    if args.trace:
        out.append("(traced with tracemalloc: the figures include its own overhead)")
    if args.env:
        out.append(f"sansmail's environment: {' '.join(args.server_env)}")
    loads = sorted(r.load_1m for r in records)
    if loads:
        out.append(
            f"load average (1 min) at rep starts: min {loads[0]:.2f}, median "
            f"{statistics.median(loads):.2f}, max {loads[-1]:.2f} ({os.cpu_count() or 1} cores)"
        )
    out += [
        f"FAILED: {r.target} rep {r.rep}: {r.error[:500] or 'cut short'}"
        for r in records
        if not r.ok
    ]
    return "\n".join(out)


def write_json(
    path: Path,
    records: Sequence[RepRecord],
    *,
    args: argparse.Namespace,
    started: float,
    status: str,
    fd_limit: int,
) -> None:
    data = {
        "kind": "imap-memory",
        "status": status,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "argv": sys.argv,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "fd_limit": fd_limit,
        },
        "runs": [asdict(r) for r in records],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
