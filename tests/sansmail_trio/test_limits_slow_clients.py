"""Slow clients: 1,000 connections dribbling a byte at a time do not stop another
client from delivering, and none of them is dropped to make room. The latency is only
bounded generously here; bench/slow_clients.py measures it."""

from __future__ import annotations

import pathlib
import resource
import shutil
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from trio_helpers import FAST_HASHER, wait_until_started

from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore

SLOW = 1000
#: Loopback addresses the slow clients come from, 20 each. The per-address cap is 45:
#: two addresses that share a bucket of the shared count (`_counts.BUCKETS`) are counted
#: together, which a cap of exactly 20 would turn into refusals now and then.
SOURCES = 50
DRIBBLE = b"EHLO slow.example\r\n"
MESSAGE = b"Subject: beside the slow ones\r\n\r\nbody\r\n"


@pytest.fixture
def enough_files() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * SLOW + 512  # ours and the server's (which inherits the limit)
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _serve(tmp_path: pathlib.Path) -> tuple[subprocess.Popen[bytes], int]:
    (tmp_path / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        '[listen]\nsmtp = "127.0.0.1:0"\n[dns]\nnameservers = ["127.0.0.1:9"]\n'
        f"[smtp]\nmax_connections = {SLOW + 50}\nmax_connections_per_ip = 45\n"
    )
    UserStore(tmp_path / "data" / "users.json", hasher=FAST_HASHER).add(
        parse_address("alice@example.test"), "pw"
    )
    script = shutil.which("sansmail-trio")
    assert script is not None
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([script, "serve"], cwd=tmp_path, stderr=out)
    return proc, wait_until_started(proc, log)["smtp"]


def _dribble(
    socks: list[socket.socket], stop: threading.Event, rounds: threading.Semaphore
) -> None:
    """A byte on every connection each second; `rounds` counts the rounds done."""
    at = 0
    while not stop.is_set():
        for sock in socks:
            sock.send(DRIBBLE[at % len(DRIBBLE) : at % len(DRIBBLE) + 1])
        at += 1
        rounds.release()
        stop.wait(1.0)


def _deliver(port: int) -> float:
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("sender@example.org", ["alice@example.test"], MESSAGE)
    return time.monotonic() - started


def test_a_thousand_slow_clients_do_not_hold_up_a_delivery(
    tmp_path: pathlib.Path, enough_files: None
) -> None:
    proc, port = _serve(tmp_path)
    socks: list[socket.socket] = []
    stop = threading.Event()
    rounds = threading.Semaphore(0)
    thread = threading.Thread(target=_dribble, args=(socks, stop, rounds))
    try:
        for n in range(SLOW):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((f"127.0.0.{2 + n % SOURCES}", 0))
            sock.settimeout(30)
            sock.connect(("127.0.0.1", port))
        greetings = {sock.recv(512)[:4] for sock in socks}
        assert greetings == {b"220 "}
        thread.start()
        latencies = []
        for _ in range(3):
            rounds.acquire()  # one delivery after each round of dribbling
            latencies.append(_deliver(port))
        stop.set()
        thread.join()
        # Every slow client is still there: nothing was dropped to make room.
        for sock in socks:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1, socket.MSG_PEEK)
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
        for sock in socks:
            sock.close()
        proc.kill()
        proc.wait(10)
    print(f"delivery beside {SLOW} slow clients: {[round(t, 3) for t in latencies]} s")
    # The issue asks for "within a second"; only a generous bound is asserted here.
    assert max(latencies) < 10
    assert len(list((tmp_path / "data/mail/example.test/alice/new").iterdir())) == 3
