"""COMPRESS=DEFLATE (RFC 4978): octets on the wire and server CPU for one
``UID FETCH 1:* (BODY.PEEK[])`` of a whole mailbox, with and without compression, for
sansmail and for Dovecot with its imap_zlib plugin.

    python3 bench/imap_compress_bench.py [--messages N] [--reps R] [--profile] [--tmpdir DIR]

The mailbox of ``mailbox_bench.generate_mailbox`` (1,000 messages of about 2.9 KiB of
text by default) is written into sansmail's INBOX and Dovecot's ``~/Maildir`` from one
seed; both servers start on 127.0.0.1 (``mailbox_peers_bench.py``'s way; Dovecot with
``mail_plugins = imap_zlib`` for IMAP, when the plugin is installed). Each rep, for
each server and each mode (``plain``, ``deflate``) in turn, one connection logs in,
selects INBOX, sends COMPRESS DEFLATE in the deflate mode, then times ``--fetches`` FETCHes
(5): the wall time at the client, the octets the client received (what crossed the
socket), and the server's CPU (its whole process tree, from /proc, in 10 ms ticks)
around them, each divided by the number of FETCHes. The client
is a raw socket that inflates with zlib, so its own cost stays out of the way and what
it counts is exact; the inflated answer must equal the plain one byte for byte, and
hold every message.

Then the same FETCHes again while a second session sends NOOP after NOOP: the median
and largest round trip show how long other sessions waited while the FETCH was
answered (compressing on the event loop would hold them all). Its NOOPs are kept out of
the CPU figures above.

The table gives medians over the reps after a first, unrecorded one (the index built,
the page cache warm): octets, wire ratio (plain / deflate), server CPU, and CPU ratio
(deflate / plain). ``--profile`` then runs py-spy (all busy threads, raw format) on the
sansmail server over ``--reps`` more deflate FETCHes and prints its top functions.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import bench_procs as procs
import mailbox_bench as mb
from profile_smtp import by_function, parse_raw
from side_by_side import DovecotZlib, side_by_side

MODES = ("plain", "deflate")
#: Leaf frames of a thread that waits (see `profile`).
WAITING = (
    "Committer._work ",
    "WorkerThread._work ",
    "EpollIOManager.get_events ",
    "_supervise ",
    "process ",
)


class Client:
    """A blocking IMAP client on a raw socket, deflating both ways after `compress()`,
    counting the octets it receives."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.buf = bytearray()
        self.deflate: zlib._Compress | None = None
        self.inflate: zlib._Decompress | None = None
        self.wire_in = 0

    def send(self, line: bytes) -> None:
        data = line + b"\r\n"
        if self.deflate is not None:
            data = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise procs.ServerError(f"connection closed; unread: {bytes(self.buf[-200:])!r}")
        self.wire_in += len(chunk)
        self.buf += self.inflate.decompress(chunk) if self.inflate is not None else chunk

    def answer(self, tag: bytes) -> bytes:
        """Everything up to and including the tagged line of `tag` (literals skipped
        by their counts, so a message line that looks like it is not taken for it)."""
        pos = 0
        while True:
            end = self.buf.find(b"\r\n", pos)
            if end < 0:
                self._more()
                continue
            line = bytes(self.buf[pos:end])
            if line.endswith(b"}") and b"{" in line:
                size = int(line[line.rindex(b"{") + 1 : -1].rstrip(b"+"))
                pos = end + 2 + size
                while len(self.buf) < pos:
                    self._more()
                continue
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise procs.ServerError(line.decode(errors="replace"))
                data = bytes(self.buf[: end + 2])
                del self.buf[: end + 2]
                return data
            pos = end + 2

    def login_select(self, compress: bool) -> None:
        self.answer(b"*")  # the greeting ends with its own line: "* OK ..."
        self.send(f"a LOGIN {mb.USER} {mb.PASSWORD}".encode())
        self.answer(b"a")
        if compress:
            self.send(b"z COMPRESS DEFLATE")
            self.answer(b"z")
            self.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
            self.inflate = zlib.decompressobj(-15)
            self.buf = bytearray(self.inflate.decompress(bytes(self.buf)))
        self.send(b"s SELECT INBOX")
        self.answer(b"s")

    def close(self) -> None:
        try:
            self.send(b"l LOGOUT")
            self.answer(b"l")
        finally:
            self.sock.close()


class Prober:
    """A second session that sends NOOP after NOOP while the FETCHes run: its round
    trips show how long the server's event loop was held by other work (a deflate run
    on the loop holds every session of the process)."""

    def __init__(self, server: mb.MailServer) -> None:
        self.client = Client(server.imap_port)
        self.client.login_select(False)
        self.stop = threading.Event()
        self.rtts: list[float] = []
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            self.client.send(b"N1 NOOP")
            self.client.answer(b"N1")
            self.rtts.append(time.perf_counter() - t0)
            time.sleep(0.002)

    def finish(self) -> tuple[float, float]:
        """Median and largest NOOP round trip, in seconds."""
        self.stop.set()
        self.thread.join()
        self.client.close()
        return statistics.median(self.rtts), max(self.rtts)


@dataclass
class Run:
    server: str
    mode: str
    wire: int  # octets received for the FETCH
    plain: int  # octets of the answer, inflated
    wall: float
    server_cpu: float
    client_cpu: float
    noop_median: float = 0.0
    noop_max: float = 0.0


def fetch(
    name: str,
    server: mb.MailServer,
    mode: str,
    messages: int,
    times: int = 1,
    *,
    probe: bool = False,
) -> tuple[Run, bytes]:
    """`times` FETCHes on one connection; the figures are per FETCH (the server's CPU is
    read in clock ticks, 10 ms: several FETCHes make it readable)."""
    client = Client(server.imap_port)
    prober = Prober(server) if probe else None
    try:
        client.login_select(mode == "deflate")
        before = client.wire_in
        cpu0 = procs.proc_tree_cpu(server.pid)
        client0, t0 = time.process_time(), time.perf_counter()
        for _ in range(times):
            client.send(b"F1X UID FETCH 1:* (BODY.PEEK[])")
            data = client.answer(b"F1X")
        wall = time.perf_counter() - t0
        client_cpu = time.process_time() - client0
        server_cpu = (procs.proc_tree_cpu(server.pid) - cpu0).total
        wire = client.wire_in - before
    finally:
        noop_median, noop_max = prober.finish() if prober is not None else (0.0, 0.0)
        client.close()
    found = data.count(b" FETCH (")
    if found != messages:
        raise procs.ServerError(f"{name} {mode}: {found} messages in the FETCH answer")
    run = Run(
        name,
        mode,
        wire // times,
        len(data),
        wall / times,
        server_cpu / times,
        client_cpu / times,
        noop_median,
        noop_max,
    )
    return run, data


def profile(server: mb.MailServer, reps: int, messages: int, workdir: Path) -> str:
    spy = shutil.which("py-spy")
    if spy is None:
        return "py-spy is not installed"
    out = workdir / "profile.txt"
    command = [spy, "record", "--format", "raw", "--rate", "500", "--subprocesses"]
    command += ["--pid", str(server.pid), "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # py-spy attaches
        fetch("sansmail", server, "deflate", messages, reps)
    finally:
        process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        process.wait(60)
    # Without --gil py-spy samples every thread it finds running, and a thread waiting in
    # a lock acquired from C (the worker threads, the group committer) or in epoll
    # counts as running: those samples are the server waiting, not working.
    samples = [
        (frames, count)
        for frames, count in parse_raw(out.read_text().splitlines())
        if not frames[-1].startswith(WAITING)
    ]
    total = sum(count for _frames, count in samples) or 1
    inclusive, own = by_function(samples)
    lines = [f"py-spy over {reps} deflate FETCHes: {total} busy samples"]
    for title, counter in (("self", own), ("inclusive", inclusive)):
        lines.append(f"top functions, {title}:")
        for frame, count in counter.most_common(15):
            lines.append(f"  {100 * count / total:5.1f}%  {frame}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--fetches", type=int, default=5, help="FETCHes per measurement")
    p.add_argument("--profile", action="store_true", help="py-spy on sansmail afterwards")
    p.add_argument("--tmpdir", type=Path)
    args = p.parse_args(argv)
    runs: list[Run] = []
    with side_by_side("imap-compress-", args.messages, args.tmpdir, peer_class=DovecotZlib) as both:
        exp, servers, ours, top = both.exp, both.servers, both.ours, both.top
        print(f"{exp.messages} messages, {exp.crlf_bytes / mb.MIB:.2f} MiB", flush=True)
        for rep in range(args.reps + 1):
            for name, server in servers:
                answers = {}
                for mode in MODES if rep % 2 else reversed(MODES):
                    run, answers[mode] = fetch(name, server, mode, exp.messages, args.fetches)
                    if rep:  # rep 0 warms up (the index, the page cache)
                        runs.append(run)
                        print(
                            f"rep {rep} {name:8} {mode:7} {run.wire:>10,} octets"
                            f" {run.wall * 1000:7.1f} ms server CPU {run.server_cpu:.3f} s",
                            flush=True,
                        )
                # Up to the tagged line, whose text may carry timings (Dovecot's does).
                plain, deflated = (answers[m][: answers[m].rindex(b"F1X ")] for m in MODES)
                if plain != deflated:
                    raise procs.ServerError(f"{name}: the inflated answer differs")
        print()
        print(table(runs))
        print()
        print("NOOP round trips of another session meanwhile, ms (median of the reps):")
        print("| server | mode | median | max |\n|---|---|---:|---:|")
        for name, server in servers:
            for mode in MODES:
                probed = [
                    fetch(name, server, mode, exp.messages, args.fetches, probe=True)[0]
                    for _ in range(args.reps)
                ]
                median = statistics.median(r.noop_median for r in probed) * 1000
                largest = statistics.median(r.noop_max for r in probed) * 1000
                print(f"| {name} | {mode} | {median:.1f} | {largest:.1f} |", flush=True)
        if args.profile:
            print()
            print(profile(ours, args.reps * args.fetches, exp.messages, top))
    return 0


def table(runs: list[Run]) -> str:
    grouped: dict[tuple[str, str], list[Run]] = collections.defaultdict(list)
    for run in runs:
        grouped[run.server, run.mode].append(run)

    def med(server: str, mode: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in grouped[server, mode])

    out = [
        "| server | mode | octets on the wire | wall ms | server CPU s | client CPU s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    servers = sorted({s for s, _m in grouped}, key=lambda s: s != "sansmail")
    out += [
        f"| {server} | {mode} | {med(server, mode, 'wire'):,.0f}"
        f" | {med(server, mode, 'wall') * 1000:.1f}"
        f" | {med(server, mode, 'server_cpu'):.3f}"
        f" | {med(server, mode, 'client_cpu'):.3f} |"
        for server in servers
        for mode in MODES
    ]
    out.append("")
    for server in servers:
        wire = med(server, "plain", "wire") / med(server, "deflate", "wire")
        plain_cpu = med(server, "plain", "server_cpu")
        cpu = med(server, "deflate", "server_cpu") / plain_cpu if plain_cpu else float("nan")
        out.append(f"{server}: wire plain/deflate {wire:.2f}x, server CPU deflate/plain {cpu:.2f}x")
    if len(servers) == 2:
        ours, theirs = servers
        wire = med(ours, "deflate", "wire") / med(theirs, "deflate", "wire")
        cpu = med(ours, "deflate", "server_cpu") / med(theirs, "deflate", "server_cpu")
        out.append(f"sansmail/dovecot, deflate: wire {wire:.2f}x, server CPU {cpu:.2f}x")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
