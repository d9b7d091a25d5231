"""ManageSieve beside Pigeonhole: sansmail's managesieve listener against Dovecot's.

    flock /tmp/sansmail-bench.lock python3 bench/managesieve_bench.py \\
        [--sessions 2000] [--clients 4] [--reps 3] [--only sansmail|dovecot]

Theory of operation
-------------------
Both servers are started by the bench on free ports of 127.0.0.1, each in a folder of its
own, and run side by side for the whole invocation; each rep drives one, then the other.

* **sansmail**: ``sansmail-trio serve`` with only the managesieve listener, one server
  process per core (``processes``), users made with ``sansmail-trio user add`` (argon2
  hashes: the cost of a login is part of a session). No pacing (``commands_per_second =
  0``), as Dovecot has none. Plain-text logins on loopback, as by default.
* **dovecot**: ``dovecot -F`` with a dovecot.conf of its own (``protocols = sieve``,
  ``managesieve-login`` on the port, no TLS, plain-text logins), users in a passwd-file
  with ``{PLAIN}`` passwords (Dovecot's cheapest check; sansmail's argon2 costs more),
  scripts in ``~/sieve`` with the active link ``~/.dovecot.sieve``, as Pigeonhole keeps
  them, owned by ``nobody``. Stock otherwise: a ``managesieve`` process per session.

One session = connect, greeting, ``AUTHENTICATE "PLAIN"``, ``PUTSCRIPT`` (a 1.3 KB script
using fileinto, vacation, imap4flags, variables, relational: parsed and checked by each
server), ``SETACTIVE``, ``LISTSCRIPTS``, ``GETSCRIPT`` (checked byte for byte),
``LOGOUT``. ``--clients`` threads each log in as a user of their own and run their share
of ``--sessions`` one after another, cycling over 5 script names. A warm-up of 4 sessions
per client precedes each server's first rep.

Per server and rep: sessions/s (sessions / wall time) and the server's CPU milliseconds
per session (its whole process tree, live or reaped: for Dovecot the master, auth,
login and managesieve processes); per rep, the ratios sansmail / dovecot. Dovecot is
skipped, with the reason, where it or its managesieve server (dovecot-managesieved) is
not installed, or the bench is not root.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bench_procs as procs

SCRIPT = (
    b'require ["fileinto", "vacation", "imap4flags", "envelope", "variables", "relational",'
    b' "comparator-i;ascii-numeric"];\r\n'
    b'if header :contains "List-Id" "dev.lists.example.org" {\r\n'
    b'  fileinto "Lists/dev";\r\n  stop;\r\n}\r\n'
    b'if header :contains "List-Id" "announce.example.org" {\r\n'
    b'  fileinto "Lists/announce";\r\n  stop;\r\n}\r\n'
    b'if anyof (header :contains "X-Spam-Flag" "YES", header :value "ge" :comparator'
    b' "i;ascii-numeric" "X-Spam-Score" "5") {\r\n  fileinto "Junk";\r\n  stop;\r\n}\r\n'
    b'if address :is "from" ["boss@example.com", "ceo@example.com"] {\r\n'
    b'  addflag "\\\\Flagged";\r\n}\r\n'
    b'if envelope :domain :is "from" "partner.example.net" {\r\n'
    b'  fileinto "Partners";\r\n}\r\n'
    b'if header :matches "Subject" "*[ticket #*]*" {\r\n'
    b'  set "ticket" "${2}";\r\n  fileinto "Tickets";\r\n}\r\n'
    b'vacation :days 7 :subject "Out of office" :addresses ["me@example.test"]\r\n'
    b'  "I am away until Monday; for urgent matters write to desk@example.test.";\r\n'
)
PASSWORD = "bench-password"
SCRIPT_NAMES = 5  # per user, cycled: PUTSCRIPT replaces as often as it creates
MAX_LINE = 1 << 20  # a reply line longer than this is a broken server, not a slow one


def user(n: int) -> str:
    return f"u{n}@example.test"


# --- one client session -------------------------------------------------------------------


class ProtocolError(Exception):
    """A reply the session did not expect (NO, BYE, a closed connection, a wrong script)."""


class Client:
    """Just enough of a ManageSieve client: lines, literals, and the final OK/NO/BYE."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ProtocolError(f"connection closed; unread {self.buf[:200]!r}")
        self.buf += chunk
        if len(self.buf) > MAX_LINE + len(SCRIPT):
            raise ProtocolError("reply too long")

    def line(self) -> bytes:
        """One response line, a literal ({N} or {N+}) and what follows it included."""
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        if line.endswith(b"}") and b"{" in line:
            size = int(line[line.rindex(b"{") + 1 : -1].rstrip(b"+"))
            while len(self.buf) < size:
                self._fill()
            literal, self.buf = self.buf[:size], self.buf[size:]
            return line + b"\r\n" + literal + self.line()
        return line

    def response(self) -> list[bytes]:
        lines = []
        while True:
            lines.append(self.line())
            if lines[-1].split(b" ", 1)[0] in (b"OK", b"NO", b"BYE"):
                return lines

    def command(self, data: bytes) -> list[bytes]:
        self.sock.sendall(data + b"\r\n")
        lines = self.response()
        if not lines[-1].startswith(b"OK"):
            raise ProtocolError(f"{data[:40]!r}: {lines[-1][:200]!r}")
        return lines

    def close(self) -> None:
        self.sock.close()


def session(port: int, name: str, k: int) -> None:
    client = Client(port)
    try:
        client.response()  # the greeting (capabilities, then OK)
        plain = base64.b64encode(f"\0{name}\0{PASSWORD}".encode())
        client.command(b'AUTHENTICATE "PLAIN" "' + plain + b'"')
        script = b"s%d" % (k % SCRIPT_NAMES)
        client.command(b'PUTSCRIPT "' + script + b'" {%d+}\r\n' % len(SCRIPT) + SCRIPT)
        client.command(b'SETACTIVE "' + script + b'"')
        listed = client.command(b"LISTSCRIPTS")
        if not any(line.startswith(b'"' + script + b'" ACTIVE') for line in listed):
            raise ProtocolError(f"LISTSCRIPTS does not show {script!r} active: {listed!r}")
        got = client.command(b'GETSCRIPT "' + script + b'"')
        if SCRIPT not in got[0]:
            raise ProtocolError(f"GETSCRIPT {script!r} is not the script put: {got[0][:80]!r}")
        client.command(b"LOGOUT")
    finally:
        client.close()


def drive(port: int, clients: int, sessions: int) -> float:
    """Run ``sessions`` sessions over ``clients`` threads; the wall time in seconds."""
    per = max(1, sessions // clients)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for k in range(per):
                session(port, user(n), k)
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


# --- the servers --------------------------------------------------------------------------


def _wait_greeting(server: procs.BenchServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if not server.alive():
            raise procs.ServerError(f"{server.name} exited during startup\n{server.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                greeting = s.recv(4096)
                if b'"IMPLEMENTATION"' in greeting:
                    s.sendall(b"LOGOUT\r\n")
                    s.recv(4096)
                    return
                last = f"greeting {greeting[:80]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    server.stop()
    raise procs.ServerError(
        f"{server.name} did not greet on port {server.port} ({last})\n{server.log_tail()}"
    )


SANSMAIL_CONFIG = """\
hostname = "bench.example.test"
domains = ["example.test"]
data_dir = "data"
processes = {processes}

[listen]
managesieve = "127.0.0.1:{port}"

# Dovecot paces no command; neither does sansmail here.
[limits]
commands_per_second = 0
"""


class SansmailManageSieve(procs.SansmailServer):
    """``sansmail-trio serve`` with its managesieve listener only, and ``clients`` users."""

    def __init__(self, workdir: Path, clients: int) -> None:
        super().__init__(workdir)
        self.clients = clients

    def prepare(self) -> None:
        self.config_path.write_text(
            SANSMAIL_CONFIG.format(port=self.port, processes=self.processes)
        )
        for n in range(self.clients):
            cmd = [*procs.sansmail_command(), "user", "add", user(n), "--password-stdin"]
            done = subprocess.run(
                [*cmd, "--config", str(self.config_path)],
                cwd=self.workdir,
                env=self.env(),
                input=(PASSWORD + "\n").encode(),
                capture_output=True,
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                output = (done.stdout + done.stderr).decode(errors="replace").strip()
                raise procs.ServerError(f"`{' '.join(cmd)}` failed ({done.returncode}): {output}")

    def _wait_ready(self, timeout: float) -> None:
        _wait_greeting(self, timeout)


DOVECOT_CONF = """\
# Written by bench/managesieve_bench.py: a loopback-only benchmark instance.
instance_name = dovecot-msbench-{name}
base_dir = {root}/run
state_dir = {root}/state
protocols = sieve
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:~/Maildir
log_path = {root}/dovecot.log
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
service managesieve-login {{
  inet_listener sieve {{
    address = 127.0.0.1
    port = {port}
  }}
}}
plugin {{
  sieve = file:~/sieve;active=~/.dovecot.sieve
}}
"""


def dovecot_conf(root: Path, port: int) -> str:
    if not 0 < port < 65536:
        raise ValueError(f"not a port: {port}")
    return DOVECOT_CONF.format(root=root, port=port, name=root.name)


class DovecotManageSieve(procs.BenchServer):
    """``dovecot -F -c <own conf>`` serving ManageSieve only (Pigeonhole's managesieve)."""

    name = "dovecot"

    def __init__(self, workdir: Path, clients: int) -> None:
        super().__init__(workdir)
        self.clients = clients
        self.log_path = workdir / "dovecot.log"

    @classmethod
    def unavailable(cls) -> str | None:
        if shutil.which("dovecot") is None:
            return "Dovecot is not installed (see bench/README.md, 'Installing the peers')"
        if not Path("/usr/lib/dovecot/managesieve").exists():
            return "no Pigeonhole managesieve (Debian's dovecot-managesieved)"
        if os.geteuid() != 0:
            return "Dovecot's master must run as root here (it switches to the mail user)"
        for name in ("dovecot", "dovenull", "nobody"):
            try:
                pwd.getpwnam(name)
            except KeyError:
                return f"no {name!r} user"
        return None

    def prepare(self) -> None:
        for sub in ("run", "state", "home"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        nobody = pwd.getpwnam("nobody")
        lines = []
        for n in range(self.clients):
            home = self.workdir / "home" / f"u{n}"
            home.mkdir(exist_ok=True)
            os.chown(home, nobody.pw_uid, nobody.pw_gid)
            lines.append(
                f"{user(n)}:{{PLAIN}}{PASSWORD}:{nobody.pw_uid}:{nobody.pw_gid}::{home}::\n"
            )
        users = self.workdir / "users"
        users.write_text("".join(lines))
        # The auth process runs as dovecot and reads the passwords; nobody else may.
        users.chmod(0o640)
        shutil.chown(users, group="dovecot")
        conf = self.workdir / "dovecot.conf"
        conf.write_text(dovecot_conf(self.workdir, self.port))
        done = subprocess.run(
            ["doveconf", "-c", str(conf), "-n"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise procs.ServerError(f"doveconf refused the config:\n{done.stderr.strip()}")

    def command(self) -> list[str]:
        return ["dovecot", "-F", "-c", str(self.workdir / "dovecot.conf")]

    def _wait_ready(self, timeout: float) -> None:
        _wait_greeting(self, timeout)


# --- the bench ----------------------------------------------------------------------------


def measure(server: procs.BenchServer, args: argparse.Namespace) -> dict[str, float]:
    before = procs.proc_tree_cpu(server.pid)
    wall = drive(server.port, args.clients, args.sessions)
    cpu = procs.proc_tree_cpu(server.pid) - before
    sessions = max(1, args.sessions // args.clients) * args.clients
    return {
        "sessions": sessions,
        "wall": wall,
        "sessions_per_s": sessions / wall,
        "cpu_ms_per_session": cpu.total * 1000 / sessions,
        "cpu_user": cpu.user,
        "cpu_sys": cpu.sys,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        epilog="Run it under `flock /tmp/sansmail-bench.lock` on a shared machine.",
    )
    parser.add_argument("--sessions", type=int, default=2000, help="per server and rep")
    parser.add_argument("--clients", type=int, default=4, help="concurrent sessions (users)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", choices=("sansmail", "dovecot"))
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the servers' folders go")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--png", type=Path, help="draw sessions/s and CPU per session here")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.clients < 1:
        parser.error("--sessions and --clients must be at least 1")
    with tempfile.TemporaryDirectory(prefix="managesieve-bench-", dir=args.tmpdir) as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # Dovecot's mail processes run as nobody below it
        servers: list[procs.BenchServer] = []
        if args.only in (None, "sansmail"):
            servers.append(SansmailManageSieve(root / "sansmail", args.clients))
        if args.only in (None, "dovecot"):
            why = DovecotManageSieve.unavailable()
            if why is None:
                servers.append(DovecotManageSieve(root / "dovecot", args.clients))
            else:
                print(f"dovecot skipped: {why}")
        try:
            for server in servers:
                server.start()
                drive(server.port, args.clients, args.clients * 4)  # warm up
            runs = run_reps(servers, args)
        finally:
            for server in servers:
                server.stop()
    if args.json is not None:
        args.json.write_text(json.dumps(runs, indent=2))
    if args.png is not None:
        if importlib.util.find_spec("matplotlib") is None:
            # The figures are in the JSON and the report; a traceback would hide them.
            print("no picture: matplotlib is not installed (pip install -e '.[bench]')")
        else:
            plot(runs, args.png)
    return 0


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Two panels, one bar per server and rep: sessions/s, and CPU ms per session."""
    import matplotlib  # noqa: PLC0415 (the bench extra; only --png needs it)

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt  # noqa: PLC0415 (after use())

    names = [name for name in ("sansmail", "dovecot") if name in runs[0]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    width = 0.8 / len(names)
    for ax, key, title in (
        (axes[0], "sessions_per_s", "sessions/s (higher is better)"),
        (axes[1], "cpu_ms_per_session", "server CPU ms per session (lower is better)"),
    ):
        for i, name in enumerate(names):
            xs = [r["rep"] + (i - (len(names) - 1) / 2) * width for r in runs]
            ax.bar(xs, [r[name][key] for r in runs], width, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("rep")
        ax.set_xticks([r["rep"] for r in runs])
    axes[0].legend(loc="lower right")
    fig.suptitle("ManageSieve: AUTHENTICATE, PUTSCRIPT, SETACTIVE, LISTSCRIPTS, GETSCRIPT")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_reps(servers: list[procs.BenchServer], args: argparse.Namespace) -> list[dict[str, object]]:
    print(
        f"{args.sessions} sessions over {args.clients} clients per server and rep,"
        f" sansmail with {procs.SansmailServer.processes} server processes;"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'rep':>3} {'server':>8} {'wall s':>7} {'sessions/s':>11} {'cpu ms/session':>15}")
    runs: list[dict[str, object]] = []
    for rep in range(1, args.reps + 1):
        figures = {}
        for server in servers:
            f = figures[server.name] = measure(server, args)
            print(
                f"{rep:>3} {server.name:>8} {f['wall']:>7.2f} {f['sessions_per_s']:>11.1f}"
                f" {f['cpu_ms_per_session']:>15.2f}"
            )
        run: dict[str, object] = {"rep": rep, **figures}
        if len(figures) == 2:
            s, d = figures["sansmail"], figures["dovecot"]
            run["rate_ratio"] = s["sessions_per_s"] / d["sessions_per_s"]
            run["cpu_ratio"] = s["cpu_ms_per_session"] / d["cpu_ms_per_session"]
            print(
                f"    rep {rep}: sansmail/dovecot sessions/s {run['rate_ratio']:.2f},"
                f" cpu per session {run['cpu_ratio']:.2f}"
            )
        runs.append(run)
    if len(servers) == 2:
        rate = statistics.median(float(r["rate_ratio"]) for r in runs)  # type: ignore[arg-type]
        cpu = statistics.median(float(r["cpu_ratio"]) for r in runs)  # type: ignore[arg-type]
        print(
            f"median sansmail/dovecot: sessions/s {rate:.2f}, cpu per session {cpu:.2f};"
            f" load average {os.getloadavg()[0]:.2f}"
        )
    return runs


if __name__ == "__main__":
    sys.exit(main())
