"""How soon an idling IMAP client hears of a delivery: N sessions IDLE on one INBOX of
``sansmail-trio serve`` (one server process), M messages are sent one by one with
smtplib, and for each the time from the 250 to DATA until ``* n EXISTS`` reaches the
first idler is taken. A negative figure would be an EXISTS that came before the 250 was
read (the file is in new/ before the 250 is sent).

    python3 bench/imap_idle_latency.py [--idlers N] [--messages M] [--profile FILE]

``--profile`` runs py-spy (raw format, subprocesses) on the server during the
deliveries. Only 127.0.0.1 is connected to; the server and its data dir go away at the
end. Every idler must have heard of the last message, or the run fails.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import tempfile
import time

from argon2 import PasswordHasher

from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore

USER = "alice@example.test"
PASSWORD = "pw"  # a throwaway user in a throwaway data dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(sock: socket.socket, marker: bytes, buf: bytes = b"") -> bytes:
    while marker not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before {marker!r}: {buf[-200:]!r}")
        buf += data
    return buf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--idlers", type=int, default=20)
    p.add_argument("--messages", type=int, default=50)
    p.add_argument("--profile", type=pathlib.Path)
    args = p.parse_args()
    top = pathlib.Path(tempfile.mkdtemp(prefix="imap-idle-"))
    smtp_port, imap_port = _free_port(), _free_port()
    cap = args.idlers + 100
    (top / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        f'processes = 1\n[listen]\nsmtp = "127.0.0.1:{smtp_port}"\n'
        f'imap = "127.0.0.1:{imap_port}"\n[dns]\nnameservers = ["127.0.0.1:9"]\n'
        f"[smtp]\nmax_connections = {cap}\nmax_connections_per_ip = {cap}\n"
    )
    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    UserStore(top / "data/users.json", hasher=cheap).add(parse_address(USER), PASSWORD)
    script = shutil.which("sansmail-trio")
    assert script is not None, "sansmail-trio is not installed"
    log = top / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([script, "serve"], cwd=top, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while " started: smtp" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        socks = []
        for _ in range(args.idlers):
            s = socket.create_connection(("127.0.0.1", imap_port))
            _until(s, b"\r\n")
            s.sendall(f"a LOGIN {USER} {PASSWORD}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
            _until(s, b"+ idling")
            socks.append(s)
        spy = None
        if args.profile:
            spy = subprocess.Popen(
                [
                    *("py-spy", "record", "--subprocesses", "-r", "200", "-f", "raw"),
                    *("-o", str(args.profile), "--pid", str(proc.pid)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.5)
        latencies = []
        with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:
            for k in range(args.messages):
                smtp.sendmail("a@example.org", [USER], b"Subject: %d\r\n\r\nx\r\n" % k)
                t250 = time.monotonic()
                _until(socks[0], b"* %d EXISTS" % (k + 1))
                latencies.append(time.monotonic() - t250)
                time.sleep(0.02)
        for s in socks[1:]:
            s.settimeout(10)
            _until(s, b"* %d EXISTS" % args.messages)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        latencies.sort()
        ms = [x * 1000 for x in latencies]
        print(
            f"{args.idlers} idlers, {args.messages} deliveries: 250 -> EXISTS at the first "
            f"idler median {statistics.median(ms):.2f} ms, p90 {ms[int(len(ms) * 0.9)]:.2f} ms,"
            f" max {ms[-1]:.2f} ms"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(top)


if __name__ == "__main__":
    main()
