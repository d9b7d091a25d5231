"""Slow clients against delivery latency: while N connections dribble a byte every few
seconds, how long does another client take to deliver a message?

    python3 bench/slow_clients.py [--connections N] [--interval S] [--deliveries K]
        [--sources M] [--processes P] [--tmpdir DIR] [--keep]

Theory of operation
-------------------
A slow client (slowloris) holds a connection open as cheaply as it can for itself: a
byte every few seconds, never a whole command. Against a server with a thread or a
process per connection that exhausts them; here each connection is a Trio task waiting
on its socket, and the question is whether a thousand of them slow anyone else down.

One `sansmail-trio serve` (``--processes``, 1 by default) listens for SMTP on loopback
with ``max_connections`` and ``max_connections_per_ip`` raised to let the slow clients
in. ``--connections`` sockets (1,000) are opened from ``--sources`` loopback addresses
(127.0.0.2, 127.0.0.3 ...), each reads its greeting, and a thread then sends one byte of
``EHLO slow.example`` on each of them every ``--interval`` seconds (3), spread over
the interval. Meanwhile the main thread delivers ``--deliveries`` messages (20), each on
a new connection from 127.0.0.1 with smtplib (connect, EHLO, MAIL, RCPT, DATA, QUIT),
and times each from connect to the 250 after DATA. At the end the slow connections are
checked to be still open (none was dropped to make room) and closed.

The table gives the latency of a delivery (min, median, max) with the slow clients
there, and the same without them (measured first, on the same server) as the peer.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import resource
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MESSAGE = b"Subject: latency\r\n\r\nbody\r\n"
DRIBBLE = b"EHLO slow.example\r\n"


def start(
    tmp: pathlib.Path, connections: int, processes: int
) -> tuple[subprocess.Popen[bytes], int]:
    (tmp / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        f"processes = {processes}\n"
        '[listen]\nsmtp = "127.0.0.1:0"\n'
        '[dns]\nnameservers = ["127.0.0.1:9"]\n'
        f"[smtp]\nmax_connections = {connections + 100}\n"
        f"max_connections_per_ip = {connections + 100}\n"
    )
    (tmp / "data").mkdir()
    # Delivery to a local mailbox needs a user; the password is never used.
    subprocess.run(
        [_script(), "user", "add", "alice@example.test", "--password-stdin"],
        cwd=tmp,
        input=b"secret\n",
        check=True,
        capture_output=True,
    )
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([_script(), "serve"], cwd=tmp, stderr=out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text()
        if text.count(" started") >= 1 and (
            found := re.findall(r"smtp on 127\.0\.0\.1:(\d+)", text)
        ):
            return proc, int(found[-1])
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("server did not start:\n" + log.read_text())


def _script() -> str:
    script = shutil.which("sansmail-trio")
    assert script is not None, "sansmail-trio is not installed"
    return script


def open_slow(port: int, count: int, sources: int) -> list[socket.socket]:
    """`count` connections from 127.0.0.2 ... 127.0.0.(sources + 1), greeted."""
    socks = []
    for n in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((f"127.0.0.{2 + n % sources}", 0))
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
    for sock in socks:
        greeting = sock.recv(512)
        assert greeting.startswith(b"220"), greeting
    return socks


def dribble(socks: list[socket.socket], interval: float, stop: threading.Event) -> None:
    """One byte of `DRIBBLE` on each socket every `interval` seconds, spread evenly."""
    at = 0
    gap = interval / max(1, len(socks))
    while not stop.is_set():
        started = time.monotonic()
        for i, sock in enumerate(socks):
            if stop.is_set():
                return
            sock.send(DRIBBLE[at % len(DRIBBLE) : at % len(DRIBBLE) + 1])
            delay = started + (i + 1) * gap - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        at += 1


def deliver(port: int) -> float:
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.sendmail("sender@example.org", ["alice@example.test"], MESSAGE)
    return time.monotonic() - started


def still_open(socks: list[socket.socket]) -> int:
    alive = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            alive += sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            alive += 1  # nothing to read and not closed
        except OSError:
            pass
    return alive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=3.0)
    parser.add_argument("--deliveries", type=int, default=20)
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 2 * args.connections + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # the server inherits it
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="slow-clients-", dir=args.tmpdir))
    proc, port = start(tmp, args.connections, args.processes)
    socks: list[socket.socket] = []
    stop = threading.Event()
    try:
        deliver(port)  # warm-up: the first delivery creates the mailbox
        alone = [deliver(port) for _ in range(args.deliveries)]
        socks = open_slow(port, args.connections, args.sources)
        thread = threading.Thread(target=dribble, args=(socks, args.interval, stop), daemon=True)
        thread.start()
        time.sleep(args.interval)  # one full round of dribbling first
        beside = []
        for _ in range(args.deliveries):
            beside.append(deliver(port))
            time.sleep(args.interval / args.deliveries)
        stop.set()
        thread.join()
        alive = still_open(socks)
    finally:
        stop.set()
        for sock in socks:
            sock.close()
        proc.terminate()
        proc.wait(30)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"{args.connections} slow connections from {args.sources} addresses, a byte each every"
        f" {args.interval:g} s; processes = {args.processes}; {args.deliveries} deliveries each"
    )
    print(f"{'':24} {'min ms':>8} {'median ms':>10} {'max ms':>8}")
    for name, times in (("alone", alone), (f"beside {args.connections} slow", beside)):
        print(
            f"{name:24} {min(times) * 1000:8.1f} {statistics.median(times) * 1000:10.1f}"
            f" {max(times) * 1000:8.1f}"
        )
    print(f"slow connections still open at the end: {alive} of {args.connections}")
    ratio = statistics.median(beside) / statistics.median(alone)
    print(f"median beside / alone: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
