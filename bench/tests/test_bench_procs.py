"""/proc accounting and Maildir checks."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import bench_procs as procs

# The child burns 0.3 s of CPU, says so, and lives until its stdin closes. The parent
# passes the news on, lets the child go when told, reaps it, says so, and lives until its
# own stdin closes. Each step waits for the last: nothing depends on the machine's speed.
_BURN = (
    "import sys, time\n"
    "t = time.process_time()\n"
    "while time.process_time() - t < 0.3: pass\n"
    "print('burnt', flush=True)\n"
    "sys.stdin.read()\n"
)
_PARENT = (
    "import subprocess, sys\n"
    f"p = subprocess.Popen([sys.executable, '-c', {_BURN!r}], stdin=subprocess.PIPE,"
    " stdout=subprocess.PIPE, text=True)\n"
    "print(p.stdout.readline(), end='', flush=True)\n"
    "sys.stdin.readline()\n"
    "p.stdin.close()\n"
    "p.wait()\n"
    "print('reaped', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_tree_cpu_includes_children():
    # A parent that idles while its child burns CPU: only the tree view sees the work.
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout.readline() == "burnt\n"
        live = procs.proc_tree_cpu(parent.pid)  # the child is alive, its work done
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline() == "reaped\n"
        reaped = procs.proc_tree_cpu(parent.pid)  # the child's work is in cutime now
    finally:
        parent.kill()
        parent.wait()
        parent.stdin.close()
        parent.stdout.close()
    assert live.total >= 0.15
    assert reaped.total >= 0.3
    assert procs.proc_tree_rss_kib(1) >= 0


def test_cpu_times_subtract():
    d = procs.CpuTimes(3.0, 2.0) - procs.CpuTimes(1.0, 0.5)
    assert (d.user, d.sys, d.total) == (2.0, 1.5, 3.5)


def test_machine_ticks_advance():
    busy0, total0 = procs.machine_ticks()
    time.sleep(0.05)
    busy1, total1 = procs.machine_ticks()
    assert 0 <= busy1 - busy0 <= total1 - total0
    assert total1 > total0


def write(path, text):
    path.write_bytes(text)


def test_verify_maildir(tmp_path):
    new = tmp_path / "new"
    new.mkdir()
    good = b"Return-Path: <a@b>\nReceived: from x\n\tby y; date\nFrom: a\n\nbody body body\n"
    write(new / "1", good)
    write(new / "2", good.replace(b"\r\n", b"\n"))
    assert procs.verify_maildir(new, 2, 10) == []
    assert procs.verify_maildir(new, 3, 10) == [f"2 files in {new}, expected 3"]
    assert procs.verify_maildir(new, 2, 1000)[0].endswith("less than the body")
    # A Received that is only a continuation line, or in the body, does not count.
    write(new / "3", b"Return-Path: <a@b>\nX: y\n Received: z\n\nReceived: in the body\n")
    problems = procs.verify_maildir(new, 3, 1)
    assert problems == ["3: no received header"]
    write(new / "4", b"Subject: x\r\n\r\nbody\r\n")
    assert procs.verify_maildir(new, 4, 1)[-1] == "4: no received, return-path header"
    assert procs.verify_maildir(tmp_path / "missing", 1, 1) == [
        f"0 files in {tmp_path / 'missing'}, expected 1"
    ]


def test_clear_and_count(tmp_path):
    for sub in ("new", "cur", "tmp"):
        (tmp_path / sub).mkdir()
        write(tmp_path / sub / "m", b"x")
    assert procs.count_files(tmp_path / "new") == 1
    procs.clear_maildir(tmp_path)
    assert procs.count_files(tmp_path / "new") == 0
    assert procs.count_files(tmp_path / "cur") == 0
    assert procs.count_files(tmp_path / "tmp") == 1  # may hold a delivery in progress
    assert procs.count_files(tmp_path / "nowhere") == 0
    count, waited = procs.wait_for_count(tmp_path / "new", 1, 0.1)
    assert count == 0
    assert waited >= 0.1


def test_free_port_is_loopback_and_unused():
    port = procs.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
