"""Login benchmark: how long IMAP and POP3 logins take on sansmail, with and without its
auth cache, against Dovecot with the same argon2id cost, in one run.

    python3 bench/login_bench.py [--reps R] [--parallel N] [--serial K] [--processes P]
        [--targets LIST] [--json FILE] [--tmpdir DIR] [--keep]

Theory of operation
-------------------
A login is mostly password hashing: argon2id with argon2-cffi's defaults (m=64 MiB, t=3,
p=4) is about 0.17 s of CPU, and everything else an IMAP LOGIN does is a few ms. What a
client sees depends on whether that hash is paid, and on how many are paid at once, so
each rep measures, on every target, back to back and in an order that rotates per rep:

1. ``new user``: the very first IMAP LOGIN of a user made for this rep: argon2, and the
   server making the user's mailbox.
2. ``cold``: after the server's auth cache is emptied (``sansmail-trio reload``;
   ``doveadm auth cache flush``), one IMAP LOGIN of that user: argon2 again, mailbox there.
3. ``repeat``: `--serial` more IMAP LOGINs with the same credentials, one at a time, each
   on a new connection (their median); then ``pop3``, as many POP3 USER/PASS with them.
4. ``cold xN``: another user logs in once (so that its mailbox exists), the cache is
   emptied again, then `--parallel` connections are opened at once by threads behind a
   barrier, each logging in as that user: the wall time until the last one is logged in
   (what a mail client opening N connections at start-up waits). ``repeat xN``: the same
   again, with the credentials now checked.

Targets (``--targets``, comma-separated):

* ``sansmail``: ``sansmail-trio serve`` with `--processes` processes (default: one per
  core) and the default ``[auth]`` cache; users made with ``sansmail-trio user add``.
* ``nocache``: the same with ``[auth] cache_size = 0`` (every login pays argon2, as
  before the cache).
* ``dovecot``: a Dovecot instance of our own on loopback, set up by
  ``shared/anchors/setup_dovecot.sh config`` (its own CONFDIR, base_dir, ports and log
  files, so that other instances on the machine are untouched), whose passwd-file users
  have ``{ARGON2ID}`` hashes made with the same parameters as sansmail's (Dovecot's
  libsodium verifies argon2-cffi's p=4 hashes). Dovecot 2.3's passwd-file has no auth
  cache by default (``auth_cache_size = 0``); ``dovecot-cache`` is a second instance with
  ``auth_cache_size = 10M``. ``dovecot-plain`` logs in to the first instance as a user with
  a ``{PLAIN}`` password: the floor a login without hashing has.

Server CPU (the whole process tree, reaped children included, from /proc) is read around
each phase. Medians over the reps are shown with their [min-max]; the ratios are taken
within each rep against ``dovecot`` (same rep, same phase), then their median is shown,
since on a shared machine only side-by-side figures compare. Every login's answer is
checked: a refused login fails the run. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
import platform
import poplib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bench_procs as procs
from argon2 import PasswordHasher

HOST = "127.0.0.1"
DOMAIN = "example.test"
SETUP_DOVECOT = procs.REPO_DIR.parent / "shared" / "anchors" / "setup_dovecot.sh"
ALL_TARGETS = ("sansmail", "nocache", "dovecot", "dovecot-cache", "dovecot-plain")
DEFAULT_TARGETS = "sansmail,nocache,dovecot,dovecot-plain"
PHASES = ("new user", "cold", "repeat", "pop3", "cold xN", "repeat xN")

SANSMAIL_CONFIG = """\
hostname = "bench.example.test"
domains = ["{domain}"]
data_dir = "data"
processes = {processes}

[listen]
imap = "{host}:{imap}"
pop3 = "{host}:{pop3}"

[smtp]
max_connections = 1000
max_connections_per_ip = 1000

[auth]
cache_size = {cache_size}

# No check needs DNS; a stray lookup fails on loopback instead of leaving the machine.
[antispam]
spf = "off"
reverse_dns = "off"
dkim = "off"
dmarc = "off"

[dns]
nameservers = ["127.0.0.1:53"]
"""


class BenchError(Exception):
    """A server did not start, or a login was refused."""


# --- clients --------------------------------------------------------------------------------


def imap_login(port: int, user: str, password: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4(HOST, port, timeout=60)
    try:
        client.login(user, password)
    except imaplib.IMAP4.error as exc:
        client.shutdown()
        raise BenchError(f"IMAP LOGIN {user} on port {port} refused: {exc}") from None
    return client


def pop3_login(port: int, user: str, password: str) -> poplib.POP3:
    client = poplib.POP3(HOST, port, timeout=60)
    try:
        client.user(user)
        client.pass_(password)
    except poplib.error_proto as exc:
        client.close()
        raise BenchError(f"POP3 USER/PASS {user} on port {port} refused: {exc}") from None
    return client


def timed(login: Callable[[], object], close: Callable[[object], None]) -> float:
    """Seconds from opening the connection to the login's OK; closed afterwards."""
    start = time.perf_counter()
    client = login()
    elapsed = time.perf_counter() - start
    close(client)
    return elapsed


def close_imap(client: object) -> None:
    assert isinstance(client, imaplib.IMAP4)
    client.logout()


def close_pop3(client: object) -> None:
    assert isinstance(client, poplib.POP3)
    client.quit()


def parallel_imap(port: int, user: str, password: str, n: int) -> float:
    """N connections opened at once; seconds until the last is logged in. Each client
    logs out only when all are in, so no logout overlaps a login."""
    start_line = threading.Barrier(n + 1)
    all_in = threading.Barrier(n + 1)
    done: list[float] = []
    errors: list[BaseException] = []

    def one() -> None:
        client = None
        try:
            start_line.wait()
            client = imap_login(port, user, password)
            done.append(time.perf_counter())
        except BaseException as exc:
            errors.append(exc)
        finally:
            try:
                all_in.wait()
            finally:
                if client is not None:
                    client.logout()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    start_line.wait()
    start = time.perf_counter()
    all_in.wait()
    for thread in threads:
        thread.join()
    if errors:
        raise BenchError(f"{len(errors)} of {n} parallel logins failed: {errors[0]}")
    return max(done) - start


# --- servers -----------------------------------------------------------------------------------


def wait_for_greeting(port: int, greeting: bytes, alive: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    last = "no attempt"
    while time.monotonic() < deadline:
        if not alive():
            raise BenchError(f"{what} exited during startup")
        try:
            with socket.create_connection((HOST, port), timeout=5) as sock:
                line = sock.recv(512)
                if line.startswith(greeting):
                    return
                last = repr(line[:80])
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise BenchError(f"{what} did not greet on port {port} ({last})")


class Target:
    """One server (or one kind of user on a server) under test."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.imap = 0
        self.pop3 = 0

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def root_pid(self) -> int:
        raise NotImplementedError

    def flush_cache(self) -> None:
        """Forget every password checked so far (none: there is no cache)."""

    def add_users(self, labels: Sequence[str]) -> None:
        """Make a user for each label, before the server starts: the file-based user
        databases are then read once, not raced by a write during a phase."""
        raise NotImplementedError

    @staticmethod
    def credentials(label: str) -> tuple[str, str]:
        """The (user, password) of a label's user."""
        return f"{label}@{DOMAIN}", f"pw-{label}"

    def cpu(self) -> float:
        return procs.proc_tree_cpu(self.root_pid()).total


class Sansmail(Target):
    def __init__(self, workdir: Path, *, processes: int, cache: bool) -> None:
        super().__init__(workdir)
        self.name = "sansmail" if cache else "nocache"
        self.processes = processes
        self.cache = cache
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = workdir / "sansmail.toml"

    def env(self) -> dict[str, str]:
        return procs.checkout_env()

    def write_config(self) -> None:
        if not self.imap:
            self.imap, self.pop3 = procs.free_port(), procs.free_port()
        self.config.write_text(
            SANSMAIL_CONFIG.format(
                domain=DOMAIN,
                host=HOST,
                processes=self.processes,
                imap=self.imap,
                pop3=self.pop3,
                cache_size=10_000 if self.cache else 0,
            )
        )

    def start(self) -> None:
        with open(self.workdir / "serve.log", "ab") as log:
            self.proc = subprocess.Popen(
                [*procs.sansmail_command(), "serve", "--config", str(self.config)],
                cwd=self.workdir,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.proc
        wait_for_greeting(self.imap, b"* OK", lambda: proc.poll() is None, self.name)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def root_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def flush_cache(self) -> None:
        # `reload` empties the auth cache of every server process (at its next login).
        done = subprocess.run(
            [*procs.sansmail_command(), "reload", "--config", str(self.config)],
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"reload: {done.stderr.decode(errors='replace')}")

    def add_users(self, labels: Sequence[str]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        command = [*procs.sansmail_command(), "user", "add"]
        for label in labels:
            user, password = self.credentials(label)
            done = subprocess.run(
                [*command, user, "--password-stdin", "--config", str(self.config)],
                cwd=self.workdir,
                env=self.env(),
                input=f"{password}\n".encode(),
                capture_output=True,
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                raise BenchError(f"user add {user}: {done.stderr.decode(errors='replace')}")


class Dovecot(Target):
    """Our own Dovecot instance (see the module docstring); `plain` makes it hand out
    users with clear-text passwords instead of argon2id ones."""

    def __init__(self, workdir: Path, *, name: str, cache: bool) -> None:
        super().__init__(workdir)
        self.name = name
        self.cache = cache
        self.confdir = workdir / "conf"
        self.base_dir = workdir / "run"
        self.conf = self.confdir / "dovecot.conf"
        self.users = self.confdir / "users"
        self.system_user = "sansloginbench"
        self.hasher = PasswordHasher()  # argon2-cffi's defaults: sansmail's cost
        self.uid_gid = ("", "")
        self.homes = workdir / "homes"
        self.plain_view: Dovecot | None = None
        self.started = False

    def configure(self) -> None:
        if self.conf.exists():
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.imap, self.pop3 = procs.free_port(), procs.free_port()
        env = dict(
            os.environ,
            HOST=HOST,
            IMAP_PORT=str(self.imap),
            POP3_PORT=str(self.pop3),
            BENCH_USER=self.system_user,
            BENCH_PASS="unused-system-password",
            CONFDIR=str(self.confdir),
            BASE_DIR=str(self.base_dir),
        )
        done = subprocess.run(
            ["bash", str(SETUP_DOVECOT), "config"],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"setup_dovecot.sh config: {done.stderr.decode(errors='replace')}")
        # Our own instance name and log files: other instances on the machine (the
        # anchors' own, a colleague's) are neither confused with this one nor written to.
        text = self.conf.read_text()
        text = text.replace("instance_name = dovecot-bench", f"instance_name = {self.instance}")
        text = text.replace("/var/log/dovecot-bench.log", str(self.workdir / "dovecot.log"))
        text = text.replace(
            "/var/log/dovecot-bench-info.log", str(self.workdir / "dovecot-info.log")
        )
        # N parallel logins of one user from one address, and the previous phase's
        # sessions perhaps still closing: above Dovecot's default of 10 per user and IP
        # (sansmail's per-address cap is raised the same way).
        text += "protocol imap {\n  mail_max_userip_connections = 1000\n}\n"
        text += "protocol pop3 {\n  mail_max_userip_connections = 1000\n}\n"
        if self.cache:
            text += "auth_cache_size = 10M\nauth_cache_ttl = 1 hour\n"
        self.conf.write_text(text)
        # The system user's line gives the uid and gid every bench user runs as. Each
        # gets a home of its own, made by Dovecot at the first login, as sansmail makes
        # each user's mailbox at theirs.
        first = self.users.read_text().splitlines()[0].split(":")
        self.uid_gid = (first[2], first[3])
        self.homes.mkdir(exist_ok=True)
        os.chown(self.homes, int(first[2]), int(first[3]))

    def start(self) -> None:
        self.configure()
        # Detached: Dovecot's master would otherwise keep our stdout open.
        subprocess.run(
            ["dovecot", "-c", str(self.conf)],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.started = True
        wait_for_greeting(self.imap, b"* OK", lambda: True, self.name)

    @property
    def instance(self) -> str:
        return "dovecot-loginbench-cache" if self.cache else "dovecot-loginbench"

    def stop(self) -> None:
        if not self.started:
            return
        subprocess.run(["doveadm", "-c", str(self.conf), "stop"], capture_output=True, check=False)
        self.started = False

    def root_pid(self) -> int:
        return int((self.base_dir / "master.pid").read_text().split()[0])

    def flush_cache(self) -> None:
        if self.cache:
            subprocess.run(
                ["doveadm", "-c", str(self.conf), "auth", "cache", "flush"],
                capture_output=True,
                timeout=60,
                check=True,
            )

    def add_users(self, labels: Sequence[str], *, plain: bool = False) -> None:
        self.configure()
        with self.users.open("a") as f:
            for label in labels:
                user, password = (DovecotPlain if plain else Dovecot).credentials(label)
                secret = f"{{PLAIN}}{password}" if plain else self.argon2(password)
                uid, gid = self.uid_gid
                f.write(f"{user}:{secret}:{uid}:{gid}::{self.homes / user}::\n")

    def argon2(self, password: str) -> str:
        return f"{{ARGON2ID}}{self.hasher.hash(password)}"


class DovecotPlain(Target):
    """Clear-text users on a running `Dovecot`: no hashing at all."""

    def __init__(self, server: Dovecot) -> None:
        super().__init__(server.workdir)
        self.name = "dovecot-plain"
        self.server = server

    def start(self) -> None:
        self.imap, self.pop3 = self.server.imap, self.server.pop3

    def stop(self) -> None:
        pass

    def root_pid(self) -> int:
        return self.server.root_pid()

    def add_users(self, labels: Sequence[str]) -> None:
        self.server.add_users(labels, plain=True)

    @staticmethod
    def credentials(label: str) -> tuple[str, str]:
        # Other names than the argon2 users' of the same server.
        return Target.credentials(f"plain-{label}")


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Sample:
    target: str
    rep: int
    phase: str
    seconds: float
    server_cpu: float


@dataclass
class Run:
    options: dict[str, object]
    machine: dict[str, object]
    samples: list[Sample] = field(default_factory=list)


def measure(target: Target, run: Run, rep: int, phase: str, work: Callable[[], float]) -> None:
    before = target.cpu()
    seconds = work()
    run.samples.append(Sample(target.name, rep, phase, seconds, target.cpu() - before))


def labels(rep: int) -> tuple[str, str]:
    """The users of one rep: one for the single logins, one for the parallel ones."""
    return f"r{rep}-single", f"r{rep}-parallel"


def one_rep(target: Target, run: Run, rep: int, args: argparse.Namespace) -> None:
    single, parallel = labels(rep)
    user, password = target.credentials(single)
    port, pop3 = target.imap, target.pop3

    def login() -> object:
        return imap_login(port, user, password)

    measure(target, run, rep, "new user", lambda: timed(login, close_imap))
    target.flush_cache()
    measure(target, run, rep, "cold", lambda: timed(login, close_imap))
    measure(
        target,
        run,
        rep,
        "repeat",
        lambda: statistics.median(timed(login, close_imap) for _ in range(args.serial)),
    )
    measure(
        target,
        run,
        rep,
        "pop3",
        lambda: statistics.median(
            timed(lambda: pop3_login(pop3, user, password), close_pop3) for _ in range(args.serial)
        ),
    )
    user, password = target.credentials(parallel)
    close_imap(imap_login(port, user, password))  # its mailbox exists from now on
    target.flush_cache()
    n = args.parallel
    measure(target, run, rep, "cold xN", lambda: parallel_imap(port, user, password, n))
    measure(target, run, rep, "repeat xN", lambda: parallel_imap(port, user, password, n))


def spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def report(run: Run, targets: Sequence[str], parallel: int) -> str:
    by: dict[tuple[str, str], dict[int, Sample]] = {}
    for s in run.samples:
        by.setdefault((s.target, s.phase), {})[s.rep] = s
    phases = [p.replace("N", str(parallel)) for p in PHASES]
    lines = [
        "wall ms, median [min-max] over reps (first/repeat/pop3: one login; "
        f"x{parallel}: until all {parallel} are logged in)",
        "",
        "| target | " + " | ".join(phases) + " |",
        "|---|" + "---:|" * len(PHASES),
    ]
    for t in targets:
        cells = [spread([s.seconds * 1000 for s in by[(t, p)].values()]) for p in PHASES]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "server CPU ms per phase, median", ""]
    lines += ["| target | " + " | ".join(phases) + " |", "|---|" + "---:|" * len(PHASES)]
    for t in targets:
        cells = [
            f"{statistics.median(s.server_cpu * 1000 for s in by[(t, p)].values()):.0f}"
            for p in PHASES
        ]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    if "dovecot" in targets:
        lines += [
            "",
            "wall time / dovecot's (argon2id, same cost), same rep; median [min-max]; "
            "below 1 is faster",
            "",
            "| target | " + " | ".join(phases) + " |",
            "|---|" + "---:|" * len(PHASES),
        ]
        for t in targets:
            if t == "dovecot":
                continue
            cells = []
            for p in PHASES:
                ours, peer = by[(t, p)], by[("dovecot", p)]
                ratios = [ours[r].seconds / peer[r].seconds for r in ours if r in peer]
                cells.append(
                    f"{statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]"
                )
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="login_bench.py",
        description=(
            "IMAP/POP3 login latency and N parallel logins on sansmail (with and without "
            "its auth cache) beside Dovecot with the same argon2id cost, interleaved."
        ),
        epilog=(
            "examples:\n"
            "  python3 bench/login_bench.py                      # 5 reps, all but dovecot-cache\n"
            "  python3 bench/login_bench.py --reps 9 --parallel 10\n"
            "  python3 bench/login_bench.py --targets sansmail,nocache   # no Dovecot\n"
            "Dovecot targets need root and Debian's dovecot-imapd/dovecot-pop3d."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument(
        "--parallel", type=int, default=10, help="connections opened at once (default 10)"
    )
    parser.add_argument(
        "--serial", type=int, default=5, help="repeat logins per rep for the medians (default 5)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="sansmail server processes (default: one per core)",
    )
    parser.add_argument(
        "--targets",
        default=DEFAULT_TARGETS,
        help=f"comma-separated, from {','.join(ALL_TARGETS)} (default {DEFAULT_TARGETS})",
    )
    parser.add_argument("--json", type=Path, help="write every sample here")
    parser.add_argument("--tmpdir", type=Path, help="where the servers' directories go")
    parser.add_argument("--keep", action="store_true", help="keep those directories")
    args = parser.parse_args(argv)
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(args.target_list) - set(ALL_TARGETS))
    if unknown or not args.target_list:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(ALL_TARGETS)}")
    if args.reps < 1 or args.parallel < 1 or args.serial < 1 or args.processes < 1:
        parser.error("--reps, --parallel, --serial and --processes must be at least 1")
    wants_dovecot = any(t.startswith("dovecot") for t in args.target_list)
    if wants_dovecot and (os.geteuid() != 0 or shutil.which("dovecot") is None):
        parser.error("the dovecot targets need root and an installed dovecot")
    return args


def make_targets(names: Sequence[str], root: Path, processes: int) -> dict[str, Target]:
    targets: dict[str, Target] = {}
    dovecot: Dovecot | None = None
    for name in names:
        if name in ("sansmail", "nocache"):
            targets[name] = Sansmail(root / name, processes=processes, cache=name == "sansmail")
        elif name == "dovecot-cache":
            targets[name] = Dovecot(root / name, name=name, cache=True)
        elif name in ("dovecot", "dovecot-plain") and dovecot is None:
            dovecot = Dovecot(root / "dovecot", name="dovecot", cache=False)
    if dovecot is not None:
        if "dovecot" in names:
            targets["dovecot"] = dovecot
        if "dovecot-plain" in names:
            targets["dovecot-plain"] = DovecotPlain(dovecot)
    return {name: targets[name] for name in names}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="login-bench-", dir=args.tmpdir))
    if any(t.startswith("dovecot") for t in args.target_list):
        root.chmod(0o755)  # Dovecot's processes run as other users
    names = args.target_list
    targets = make_targets(names, root, args.processes)
    run = Run(
        options={k: v for k, v in vars(args).items() if k != "json"} | {"tmpdir": str(args.tmpdir)},
        machine={
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "loadavg_start": os.getloadavg(),
        },
    )
    servers = [t for t in targets.values() if not isinstance(t, DovecotPlain)]
    servers += [t for t in targets.values() if isinstance(t, DovecotPlain)]
    status = 0
    try:
        every_label = [label for rep in range(args.reps) for label in labels(rep)]
        for target in targets.values():
            target.add_users(every_label)
        for target in servers:
            target.start()
        for rep in range(args.reps):
            # Rotate the order so that no target always runs first or after the same one.
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                one_rep(targets[name], run, rep, args)
            print(f"rep {rep + 1}/{args.reps} done ({', '.join(order)})", file=sys.stderr)
    except (BenchError, OSError) as exc:
        print(f"login_bench: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        status = 1
    finally:
        for target in servers:
            target.stop()
        run.machine["loadavg_end"] = os.getloadavg()
        if args.json:
            args.json.write_text(
                json.dumps(asdict(run), indent=2, default=str) + "\n", encoding="utf-8"
            )
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if status == 0:
        print(report(run, names, args.parallel))
        load = (run.machine["loadavg_start"], run.machine["loadavg_end"])
        print(f"\nload average at start, end: {load}")
    return status


if __name__ == "__main__":
    sys.exit(main())
