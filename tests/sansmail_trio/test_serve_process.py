"""`sansmail-trio serve` as a real process: start, deliver, stop on signals; with
`processes = 2`, the children share the listener, follow the parent's signals, and stop
when the parent is killed."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time

import pytest
from trio_helpers import FAST_HASHER, wait_until_started

from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore

MESSAGE = b"Subject: proc\r\n\r\nbody\r\n"


def _start(
    tmp_path: pathlib.Path, processes: int, smtp: str = ""
) -> tuple[subprocess.Popen[bytes], int]:
    (tmp_path / "sansmail.toml").write_text(
        f'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        f'processes = {processes}\n[listen]\nsmtp = "127.0.0.1:0"\n[smtp]\n{smtp}\n'
    )
    # Made here rather than by `sansmail-trio user add` (tested in test_cli.py): these
    # tests only deliver to alice, and a process start and a default argon2 hash are
    # most of a second.
    UserStore(tmp_path / "data" / "users.json", hasher=FAST_HASHER).add(
        parse_address("alice@example.test"), "pw"
    )
    script = shutil.which("sansmail-trio")
    assert script is not None
    path = tmp_path / "serve.log"
    with path.open("wb") as log:
        proc = subprocess.Popen([script, "serve"], cwd=tmp_path, stderr=log)
    # No probe connection: it would count against the caps until the server saw it close.
    return proc, wait_until_started(proc, path, processes=processes)["smtp"]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def _wait_for_log(path: pathlib.Path, text: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and path.read_text().count(text) < count:
        time.sleep(0.05)
    assert path.read_text().count(text) >= count, path.read_text()


def _children(pid: int) -> list[int]:
    path = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _servers(pid: int) -> list[int]:
    """The server processes among `pid`'s children: all but the queue runner."""
    return [c for c in _children(pid) if _name(c) != "sansmail-queue"]


def _name(pid: int) -> str:
    return pathlib.Path(f"/proc/{pid}/comm").read_text().strip()


def _send(port: int, count: int) -> None:
    for _ in range(count):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@example.org", ["alice@example.test"], MESSAGE)


def _delivered(tmp_path: pathlib.Path) -> int:
    return len(list((tmp_path / "data/mail/example.test/alice/new").iterdir()))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_single_process_delivers_and_stops_on_signal(tmp_path: pathlib.Path, signum: int) -> None:
    proc, port = _start(tmp_path, 1)
    try:
        _send(port, 3)
        proc.send_signal(signum)
        assert proc.wait(20) == 0
    finally:
        _stop(proc)
    assert _delivered(tmp_path) == 3
    log = (tmp_path / "serve.log").read_text()
    assert "shutting down gracefully" in log
    assert log.count("status=sent") == 3


def test_two_processes_share_the_listener_and_stop_together(tmp_path: pathlib.Path) -> None:
    proc, port = _start(tmp_path, 2)
    try:
        children = _children(proc.pid)
        assert len(_servers(proc.pid)) == 2
        assert len(children) == 3  # and the queue runner
        _send(port, 20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        for child in children:
            assert not pathlib.Path(f"/proc/{child}").exists() or _is_zombie(child)
    finally:
        _stop(proc)
    assert _delivered(tmp_path) == 20
    log = (tmp_path / "serve.log").read_text()
    assert log.count("started (process") == 2
    assert log.count("status=sent") == 20


def test_sighup_reloads_every_process_and_kills_none(tmp_path: pathlib.Path) -> None:
    proc, port = _start(tmp_path, 2)
    log = tmp_path / "serve.log"
    try:
        # Both servers must be up (their SIGHUP watcher installed) before the signal.
        _wait_for_log(log, "started (process", 2)
        proc.send_signal(signal.SIGHUP)
        _wait_for_log(log, "SIGHUP: reloading", 2)
        assert proc.poll() is None
        _send(port, 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        _stop(proc)
    assert _delivered(tmp_path) == 2


def test_children_stop_when_the_parent_is_killed(tmp_path: pathlib.Path) -> None:
    proc, _port = _start(tmp_path, 2)
    children = _children(proc.pid)
    assert len(children) == 3  # two servers and the queue runner
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_running(c) for c in children):
        time.sleep(0.1)
    leftover = [c for c in children if _running(c)]
    for child in leftover:
        os.kill(child, signal.SIGKILL)
    assert leftover == []
    assert "the parent process is gone" in (tmp_path / "serve.log").read_text()


def test_port_in_use_fails_before_forking(tmp_path: pathlib.Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "sansmail.toml").write_text(
            f'domains = ["example.test"]\ndata_dir = "data"\nprocesses = 2\n'
            f'[listen]\nsmtp = "127.0.0.1:{port}"\n'
        )
        done = subprocess.run(
            [sys.executable, "-m", "sansmail_trio", "serve"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def _is_zombie(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def _running(pid: int) -> bool:
    return pathlib.Path(f"/proc/{pid}").exists() and not _is_zombie(pid)


def test_per_ip_cap_holds_across_processes(tmp_path: pathlib.Path) -> None:
    # The kernel spreads connections over the two processes as it likes; the cap is
    # the configured one whatever the spread, neither a share of it nor twice it.
    proc, port = _start(tmp_path, 2, smtp="max_connections_per_ip = 4")
    opened: list[socket.socket] = []
    try:
        greetings = []
        for _ in range(6):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            opened.append(sock)
            greetings.append(sock.recv(200)[:3])
        assert greetings == [b"220"] * 4 + [b"421"] * 2
    finally:
        for sock in opened:
            sock.close()
        _stop(proc)
