"""The processes a benchmark run involves, and what /proc says about them.

* ``BenchServer`` and its two kinds here (sansmail, aiosmtpd-maildir; Postfix is in
  ``postfix_peer.py``): prepare a data dir, start the server on a free loopback port with
  its log in a file, wait until it greets, stop it with SIGTERM and then sweep its process
  group. Servers are started with PR_SET_PDEATHSIG so that they die with the harness even
  when the harness itself is killed with SIGKILL.
* ``run_smtp_source``: Postfix's C load generator, with its CPU time from wait4(2).
* CPU accounting from /proc, the way shared/research/perf-baseline.md did it: utime +
  stime of every live process in the server's tree plus cutime + cstime (children it
  has reaped), so that a server that forks workers is charged for them.
* Maildir helpers: wait until N files are in ``new/``, check their trace headers, empty
  ``new/`` between runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AiosmtpdServer",
    "BenchServer",
    "CpuTimes",
    "SansmailServer",
    "ServerError",
    "SmtpSourceResult",
    "clear_maildir",
    "count_files",
    "find_smtp_source",
    "free_port",
    "group_members",
    "machine_ticks",
    "proc_tree_cpu",
    "proc_tree_rss_kib",
    "run_smtp_source",
    "stop_process_group",
    "verify_maildir",
    "wait_for_count",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1
RECIPIENT = "bench@example.test"


def checkout_env() -> dict[str, str]:
    """This process's environment with the checkout this bench lives in first on
    PYTHONPATH: a server started with it runs that sansmail, whatever is installed (an
    editable install made before sansmail/__init__.py existed resolves "sansmail" to a
    namespace package everywhere but the repository root)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH", "")) if p)
    return env


class ServerError(Exception):
    """A server did not start, or died; the message carries the tail of its log."""


# --- /proc --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuTimes:
    user: float
    sys: float

    @property
    def total(self) -> float:
        return self.user + self.sys

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user - other.user, self.sys - other.sys)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # the process exited between listing and reading
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    return raw[raw.rindex(")") + 2 :].split()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def _tree(root: int) -> list[int]:
    children = _children_map()
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def proc_tree_cpu(root: int) -> CpuTimes:
    """User and system CPU seconds of ``root`` and every descendant, live or reaped."""
    user = system = 0
    for pid in _tree(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # After the state field: utime, stime, cutime, cstime are fields 14-17 of stat(5).
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        user += utime + cutime
        system += stime + cstime
    return CpuTimes(user / _CLK_TCK, system / _CLK_TCK)


def proc_tree_rss_kib(root: int) -> int:
    total = 0
    for pid in _tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from the "cpu" line of /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user/nice
    return total - idle, total


# --- Maildir ------------------------------------------------------------------------------


def count_files(directory: Path) -> int:
    try:
        with os.scandir(directory) as it:
            return sum(1 for e in it if e.is_file())
    except FileNotFoundError:
        return 0


def wait_for_count(directory: Path, expected: int, timeout: float) -> tuple[int, float]:
    """Poll until ``expected`` files are in ``directory``; return (count, seconds waited).

    A server that queues first and delivers later (as Postfix does) reaches this later
    than its last 250; the difference is its end-to-end lag.
    """
    start = time.perf_counter()
    while True:
        count = count_files(directory)
        waited = time.perf_counter() - start
        if count >= expected or waited >= timeout:
            return count, waited
        time.sleep(0.01)


def verify_maildir(directory: Path, expected: int, min_body: int) -> list[str]:
    """Problems with the delivered files: count, trace headers, truncation. [] is good."""
    problems: list[str] = []
    entries = [e for e in os.scandir(directory) if e.is_file()] if directory.is_dir() else []
    if len(entries) != expected:
        problems.append(f"{len(entries)} files in {directory}, expected {expected}")
    for entry in entries:
        with open(entry.path, "rb") as f:
            head = f.read(16384)
        end = head.find(b"\n\n")
        if end < 0:
            end = head.find(b"\r\n\r\n")
        header_names = {
            line.split(b":", 1)[0].strip().lower()
            for line in head[: max(end, 0)].splitlines()
            if line[:1] not in (b" ", b"\t")
        }
        missing = {b"return-path", b"received"} - header_names
        if missing:
            names = ", ".join(sorted(m.decode() for m in missing))
            problems.append(f"{entry.name}: no {names} header")
        elif entry.stat().st_size < min_body:
            problems.append(f"{entry.name}: {entry.stat().st_size} bytes, less than the body")
        if len(problems) >= 5:
            problems.append("(more not checked)")
            break
    return problems


def clear_maildir(maildir: Path) -> None:
    """Delete delivered messages so that the next run starts from an empty mailbox."""
    for sub in ("new", "cur"):
        directory = maildir / sub
        if directory.is_dir():
            for entry in os.scandir(directory):
                if entry.is_file():
                    os.unlink(entry.path)


# --- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the harness dies, so does the server.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM a server started in a session of its own, then kill what is left of it.

    Postfix's master and Dovecot's leave the work to children that may outlive them by a
    moment, and a crashed root leaves them running; a bench must leave no process behind,
    so once the root is gone every process still in its process group gets SIGKILL. The
    root is waited for with WNOWAIT (not reaped) first: while it is a zombie, or while any
    member of its group lives, its pid (the group's id) cannot go to another process.
    """
    if proc.returncode is None:
        # os.kill, not Popen.send_signal, which polls and so may reap the root first.
        # Not reaped, the pid is still this child's (a zombie at worst).
        os.kill(proc.pid, signal.SIGTERM)
        pidfd = os.pidfd_open(proc.pid)
        try:
            exited = bool(select.select([pidfd], [], [], timeout)[0])
        finally:
            os.close(pidfd)
        if not exited:
            os.kill(proc.pid, signal.SIGKILL)
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    if group_members(proc.pid):
        with contextlib.suppress(ProcessLookupError):  # they went in the meantime
            os.killpg(proc.pid, signal.SIGKILL)
        # SIGKILL is delivered asynchronously: wait (boundedly) until it has been.
        deadline = time.monotonic() + 5.0
        while group_members(proc.pid, live=True) and time.monotonic() < deadline:
            time.sleep(0.01)
    proc.wait()


def group_members(pgid: int, *, live: bool = False) -> list[int]:
    """The processes whose process group is ``pgid``; zombies too unless ``live``."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            # The state, ppid, pgrp: fields 3 to 5 of stat(5).
            if fields is not None and int(fields[2]) == pgid and not (live and fields[0] == "Z"):
                members.append(int(entry.name))
    return members


class BenchServer:
    """One server under test, running in its own directory for the whole benchmark."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def maildir(self) -> Path:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def prepare(self) -> None:
        """Write config, create users: whatever must exist before the first start."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.prepare()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for the harness must not kill the server
                # in the middle of a run; the harness stops it itself.
                start_new_session=True,
                # preexec_fn is safe here: the harness is single-threaded.
                preexec_fn=_die_with_parent,
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerError(f"{self.name} exited during startup\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    greeting = s.recv(4096)
                    if greeting.startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        s.recv(4096)
                        return
                    last_error = f"greeting {greeting[:80]!r}"
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.05)
        self.stop()
        raise ServerError(
            f"{self.name} did not greet on port {self.port} within {timeout:.0f} s "
            f"({last_error})\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        stop_process_group(self.proc, timeout)
        self.proc = None

    def settle(self, timeout: float) -> str | None:
        """Wait until the server has nothing left in flight; None when it got there.

        A server that answers 250 only once the message is in the Maildir is settled as
        soon as the files are there; one that queues first (Postfix) overrides this.
        """
        return None

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this server cannot run on this machine, or None when it can."""
        return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        tail = text.splitlines()[-lines:]
        return "\n".join(f"    | {line}" for line in tail) or "    | (log is empty)"


class AiosmtpdServer(BenchServer):
    """aiosmtpd with the Maildir handler of ``aiosmtpd_maildir.py``."""

    name = "aiosmtpd"

    @property
    def maildir(self) -> Path:
        return self.workdir / "Maildir"

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import aiosmtpd  # noqa: F401, PLC0415 (an optional peer)
        except ImportError:
            return "aiosmtpd is not importable (pip install aiosmtpd)"
        return None

    def command(self) -> list[str]:
        script = BENCH_DIR / "aiosmtpd_maildir.py"
        return [sys.executable, str(script), "--port", str(self.port), "--maildir", "Maildir"]


SANSMAIL_CONFIG = """\
hostname = "bench.example.test"
domains = ["example.test"]
data_dir = "data"
processes = {processes}

[listen]
smtp = "127.0.0.1:{port}"

[smtp]
max_connections = 1000
max_connections_per_ip = 1000

# No check that needs DNS: the peer does none either, and a benchmark must never send a
# packet off this machine. The resolver points at loopback so that a stray lookup fails
# fast here instead of leaving it.
[antispam]
spf = "off"
reverse_dns = "off"
dkim = "off"
dmarc = "off"

[dns]
nameservers = ["127.0.0.1:53"]
"""


def sansmail_command() -> list[str]:
    """``sansmail-trio`` beside this interpreter (a venv), else on PATH."""
    beside = Path(sys.executable).with_name("sansmail-trio")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("sansmail-trio")
    if found:
        return [found]
    return [
        sys.executable,
        "-c",
        "import sys; from sansmail_trio._cli import main; sys.exit(main())",
    ]


class SansmailServer(BenchServer):
    """``sansmail-trio serve`` with one user, bench@example.test."""

    name = "sansmail"
    #: Server processes sharing the listener (the `processes` setting); one per core.
    processes = os.cpu_count() or 1

    @property
    def config_path(self) -> Path:
        return self.workdir / "sansmail.toml"

    @property
    def maildir(self) -> Path:
        return self.workdir / "data" / "mail" / "example.test" / "bench"

    def env(self) -> dict[str, str]:
        return checkout_env()

    def prepare(self) -> None:
        self.config_path.write_text(
            SANSMAIL_CONFIG.format(port=self.port, processes=self.processes)
        )
        if (self.workdir / ".user-added").exists():
            return
        cmd = [*sansmail_command(), "user", "add", RECIPIENT, "--password-stdin"]
        done = subprocess.run(
            [*cmd, "--config", str(self.config_path)],
            cwd=self.workdir,
            env=self.env(),
            input=b"bench-password\n",
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace").strip()
            raise ServerError(f"`{' '.join(cmd)}` failed ({done.returncode}): {output}")
        (self.workdir / ".user-added").touch()

    def command(self) -> list[str]:
        return [*sansmail_command(), "serve", "--config", str(self.config_path)]


# --- smtp-source --------------------------------------------------------------------------


def find_smtp_source() -> str | None:
    found = shutil.which("smtp-source")
    if found:
        return found
    return "/usr/sbin/smtp-source" if os.access("/usr/sbin/smtp-source", os.X_OK) else None


@dataclass
class SmtpSourceResult:
    ok: bool
    wall: float
    cpu: CpuTimes
    output: str


def run_smtp_source(
    binary: str, *, port: int, messages: int, concurrency: int, size: int, timeout: float
) -> SmtpSourceResult:
    """``smtp-source -m N -s C -l SIZE`` against 127.0.0.1:port, as in the baseline.

    smtp-source exits non-zero on the first unexpected reply ("fatal: ..."), which makes
    the run a failure; the caller also counts the delivered files.
    """
    cmd = [
        binary,
        *("-m", str(messages), "-s", str(concurrency), "-l", str(size)),
        *("-M", "loadgen.example.test", "-f", "loadgen@loadgen.example.test"),
        *("-t", RECIPIENT, f"127.0.0.1:{port}"),
    ]
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        # A pidfd turns "exited or timed out" into one poll(2), with no polling loop whose
        # period would blur the wall time; wait4 (not Popen.wait) then yields the rusage.
        pidfd = os.pidfd_open(proc.pid)
        try:
            finished = bool(select.select([pidfd], [], [], timeout)[0])
        except BaseException:  # Ctrl-C, SIGTERM: do not leave it running
            proc.kill()
            proc.wait()
            raise
        finally:
            os.close(pidfd)
        wall = time.perf_counter() - start
        if not finished:
            proc.kill()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        output = out.read().decode(errors="replace").strip()
    if not finished:
        output = f"timed out after {timeout:.0f} s\n{output}"
    cpu = CpuTimes(usage.ru_utime, usage.ru_stime)
    return SmtpSourceResult(finished and proc.returncode == 0, wall, cpu, output)
