"""The PostgreSQL backend beside the Maildir one, on one node and on two, in one command.

    python3 bench/pg_bench.py                      # 2000 x 10 KiB, c=10,50; IMAP on 3000
    python3 bench/pg_bench.py --concurrency 10,50 --reps 2 --profile
    python3 bench/pg_bench.py --quick              # smoke run, seconds

Theory of operation
-------------------
Three setups, started once and measured back to back in one invocation, so their ratios
compare like with like on a shared machine:

* ``maildir``: one ``sansmail-trio serve`` on 127.0.0.1 with the default backend.
* ``pg1``: one node on 127.0.0.1 with ``[storage] backend = "postgresql"``.
* ``pg2``: that node and a second one on 127.0.0.2 (its own data dir, its own host
  name), both on the same database; the load is split between them.

Every node runs ``processes = --processes`` (1 by default: a node's CPU is then one
process, and two nodes are two), with SMTP and IMAP listeners and the sender checks off
(no DNS), as ``smtp_bench.py`` runs sansmail.

Mailboxes. By default every message goes to one INBOX, the worst case for the
PostgreSQL backend: each delivery locks that folder's row (its next UID) until its
transaction commits, on every node. ``--mailboxes K`` splits the load over K mailboxes
(share i of the load goes to node i mod nodes and mailbox i mod K; with K = 2 on two
nodes, each node delivers into a mailbox of its own).

PostgreSQL is a private cluster of Debian's server binaries (``tests/pgcluster.py``'s
`Cluster`) with ``fsync = on`` and ``full_page_writes = on``: the durability a node's
``250`` stands on, as the Maildir store's file and directory fsyncs are. It also loads
``pg_stat_statements`` and times WAL writes (``track_wal_io_timing``) for the profile.

Delivery. For each rep, concurrency C and setup (in an order rotating with the rep):
the delivery mailbox is emptied (files, or rows and a VACUUM), ``sync``, an idle moment,
then N messages of S bytes over C connections with ``loadgen.py`` (one connection per
message, EHLO/MAIL/RCPT/DATA/QUIT, the time from the final dot to ``250``). On two
nodes the connections, the messages and the generator's processes are split in halves,
one ``run_load`` per node in a child process, started together; the rate is every
``250`` over the longer of the two walls. Then the delivered count is checked (N files
in ``new/`` with their trace fields, or N rows). Measured: msgs/s, p50/p99 latency,
CPU seconds per 1000 messages of the sansmail nodes (their process trees, from /proc)
and of PostgreSQL (the postmaster's tree: backends, WAL writer, checkpointer), how busy
the whole machine was, and on PostgreSQL what ``pg_stat_wal`` and ``pg_stat_database``
counted (WAL fsyncs and their time, commits, connections opened).

IMAP. A second user's INBOX gets M messages of ``mailbox_bench.py``'s mix through SMTP
(once for Maildir, once for the database both PostgreSQL setups read). Then K clients
(``imaplib``; on two nodes, split between them) each log in, SELECT INBOX and run
``UID FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)``, ``BODY.PEEK[HEADER]``,
``BODY.PEEK[]`` and four SEARCHes (SUBJECT, FROM, BODY, TEXT with no hit), every answer
checked against what the generator wrote. Each operation starts on every client at once
(a barrier) and its wall is until the last client has its answer. Rep 0 is cold (the
Maildir index and the PostgreSQL ENVELOPE cache are built by it); the table shows the
median of the warm reps.

Profile (``--profile``): one more delivery pass per PostgreSQL setup at the highest
concurrency with ``py-spy record`` on every node (non-blocking, the GIL's holders),
``pg_stat_activity`` sampled every 10 ms from a child process (what each backend of the
database waits on) and ``pg_stat_statements`` (reset before). These passes are slower
(the sampling) and are reported apart.

Ratios are taken within each rep: ``pg1/maildir`` and ``pg2/pg1`` of msgs/s (> 1:
faster), latency and CPU per message (> 1: more), and IMAP walls (> 1: slower).
The exit status is 0 when every pass and check succeeded, 1 otherwise (or when the
bench cannot run here, with one line saying why), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import imaplib
import importlib.util
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import bench_procs as procs
import loadgen
from bench_report import parse_size, size_label
from mailbox_bench import SEED, _message

SETUPS = ("maildir", "pg1", "pg2")
LABELS = {"maildir": "Maildir, 1 node", "pg1": "PostgreSQL, 1 node", "pg2": "PostgreSQL, 2 nodes"}
DELIVER_USER = "bench@example.test"


def deliver_users(mailboxes: int) -> list[str]:
    """The delivery mailboxes: bench@, then bench2@, bench3@..."""
    return [DELIVER_USER] + [f"bench{i}@example.test" for i in range(2, mailboxes + 1)]


READER = "reader@example.test"
PASSWORD = "bench-password"
DBNAME = "sansmail_bench"
HOSTS = ("127.0.0.1", "127.0.0.2")

# fsync and full_page_writes on: what the figures must include. pg_stat_statements and
# the WAL timing are for the profile; shared_buffers large enough for the bench's rows.
PG_SETTINGS = {
    "fsync": "on",
    "full_page_writes": "on",
    "shared_buffers": "128MB",
    "shared_preload_libraries": "pg_stat_statements",
    "track_wal_io_timing": "on",
    "pg_stat_statements.track": "all",
}

CONFIG = """\
hostname = "{hostname}"
domains = ["example.test"]
data_dir = "data"
processes = {processes}

[listen]
smtp = "{host}:{smtp_port}"
imap = "{host}:{imap_port}"

[smtp]
max_connections = 1000
max_connections_per_ip = 1000

[limits]
max_userip_connections = 100

# No check that needs DNS (as smtp_bench.py); a stray lookup fails fast on loopback.
[antispam]
spf = "off"
reverse_dns = "off"
dkim = "off"
dmarc = "off"

[dns]
nameservers = ["127.0.0.1:53"]
{storage}"""

IMAP_OPS: tuple[tuple[str, str, str], ...] = (
    # (label, command, argument): FETCH of every UID, or a UID SEARCH.
    ("fetch meta", "FETCH", "(FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)"),
    ("fetch headers", "FETCH", "BODY.PEEK[HEADER]"),
    ("fetch bodies", "FETCH", "BODY.PEEK[]"),
    ("search SUBJECT", "SEARCH", "SUBJECT invoice"),
    ("search FROM", "SEARCH", "FROM alice"),
    ("search BODY", "SEARCH", "BODY budget"),
    ("search TEXT", "SEARCH", "TEXT quarterly-nomatch"),
)
IMAP_PHASES = ("login", "select", *(op[0] for op in IMAP_OPS))


class BenchError(Exception):
    """The bench cannot go on: a node did not start, a check failed."""


def _repo_imports() -> None:
    """The checkout's sansmail (as the nodes run it) and tests/pgcluster.py."""
    for path in (procs.REPO_DIR, procs.REPO_DIR / "tests"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


# --- PostgreSQL ---------------------------------------------------------------------------


def postgres_missing() -> str | None:
    """Why PostgreSQL cannot run here, or None when it can."""
    _repo_imports()
    import pgcluster  # noqa: PLC0415  (tests/, put on the path by _repo_imports)

    if pgcluster.find_bindir() is None:
        return "no PostgreSQL server binaries (apt-get install postgresql)"
    return None


class Postgres:
    """The private cluster, the bench's database, and what it counts."""

    def __init__(self) -> None:
        _repo_imports()
        import pgcluster  # noqa: PLC0415  (tests/, put on the path just above)

        bindir = pgcluster.find_bindir()
        if bindir is None:
            raise BenchError("no PostgreSQL server binaries (apt-get install postgresql)")
        self.cluster = pgcluster.Cluster(bindir, settings=PG_SETTINGS)
        self.dsn = ""

    def start(self, users: Sequence[str]) -> None:
        _repo_imports()
        from sansmail.mail.address import parse_address  # noqa: PLC0415
        from sansmail.storage.pg import Database, migrate  # noqa: PLC0415
        from sansmail.storage.pg._users import PgUserStore  # noqa: PLC0415

        self.cluster.start()
        self.cluster.execute(f"CREATE DATABASE {DBNAME}")
        self.dsn = self.cluster.dsn(DBNAME)
        self.sql("CREATE EXTENSION pg_stat_statements")
        db = Database(self.dsn)
        try:
            migrate(db)
            users_store = PgUserStore(db)
            for user in users:
                users_store.add(parse_address(user), PASSWORD)
        finally:
            db.close()

    @property
    def pid(self) -> int:
        return int((self.cluster.data / "postmaster.pid").read_text().split()[0])

    def cpu(self) -> float:
        return procs.proc_tree_cpu(self.pid).total

    def sql(self, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """One statement on a connection of its own (none is kept open across the load
        generator's forks), autocommit."""
        import psycopg  # noqa: PLC0415  (the postgresql extra)

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return list(cur.fetchall()) if cur.description else []

    def clear(self, user: str) -> None:
        self.sql(
            "DELETE FROM mail_messages WHERE folder_id IN"
            " (SELECT id FROM mail_folders WHERE mailbox = %s)",
            (user,),
        )
        self.sql(
            "DELETE FROM mail_contents c WHERE NOT EXISTS"
            " (SELECT 1 FROM mail_messages m WHERE m.digest = c.digest)"
        )
        self.sql("UPDATE mail_usage SET octets = 0, messages = 0 WHERE mailbox = %s", (user,))
        self.sql("VACUUM (ANALYZE) mail_messages, mail_contents, mail_folders, mail_usage")

    def count(self, user: str) -> int:
        rows = self.sql(
            "SELECT count(*) FROM mail_messages m JOIN mail_folders f ON f.id = m.folder_id"
            " WHERE f.mailbox = %s AND f.name = 'INBOX'",
            (user,),
        )
        return int(rows[0][0])

    def counters(self) -> dict[str, float]:
        """Cumulative WAL and database counters (differences make a pass's figures)."""
        (wal,) = self.sql(
            "SELECT wal_records, wal_bytes, wal_write, wal_sync, wal_write_time,"
            " wal_sync_time FROM pg_stat_wal"
        )
        (db,) = self.sql(
            "SELECT xact_commit, sessions FROM pg_stat_database WHERE datname = %s", (DBNAME,)
        )
        names = ("wal_records", "wal_bytes", "wal_write", "wal_sync", "wal_write_ms")
        out = {name: float(value) for name, value in zip(names, wal, strict=False)}
        out["wal_sync_ms"] = float(wal[5])
        out["commits"] = float(db[0])
        out["sessions"] = float(db[1])
        return out

    def stop(self) -> None:
        self.cluster.stop()


# --- nodes --------------------------------------------------------------------------------


class Node:
    """One ``sansmail-trio serve`` on `host`, in a directory of its own."""

    def __init__(self, name: str, workdir: Path, host: str, processes: int, dsn: str) -> None:
        self.name = name
        self.workdir = workdir
        self.host = host
        self.processes = processes
        self.dsn = dsn
        self.smtp_port = self.imap_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "sansmail.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "sansmail.toml"

    def inbox(self, user: str) -> Path:
        local, domain = user.split("@")
        return self.workdir / "data" / "mail" / domain / local

    def env(self) -> dict[str, str]:
        return procs.checkout_env()

    def configure(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.smtp_port = procs.free_port()
        self.imap_port = procs.free_port()
        storage = f'\n[storage]\nbackend = "postgresql"\ndsn = "{self.dsn}"\n' if self.dsn else ""
        self.config_path.write_text(
            CONFIG.format(
                hostname=f"{self.name}.example.test",
                processes=self.processes,
                host=self.host,
                smtp_port=self.smtp_port,
                imap_port=self.imap_port,
                storage=storage,
            )
        )

    def add_users_command(self, user: str) -> subprocess.Popen[bytes]:
        """``user add`` (the Maildir backend's users file), its password given; the
        caller waits."""
        cmd = [*procs.sansmail_command(), "user", "add", user, "--password-stdin"]
        proc = subprocess.Popen(
            [*cmd, "--config", str(self.config_path)],
            cwd=self.workdir,
            env=self.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdin is not None
        proc.stdin.write(PASSWORD.encode() + b"\n")
        proc.stdin.close()
        return proc

    def spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*procs.sansmail_command(), "serve", "--config", str(self.config_path)],
                cwd=self.workdir,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C is the harness's; it stops the node
                preexec_fn=procs._die_with_parent,  # the harness is single-threaded here
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for port, greeting in ((self.smtp_port, b"220"), (self.imap_port, b"* OK")):
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    raise BenchError(f"{self.name} exited at startup:\n{self.log_tail()}")
                try:
                    with socket.create_connection((self.host, port), timeout=5) as s:
                        if s.recv(512).startswith(greeting):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.name} did not greet on {self.host}:{port}")
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return procs.proc_tree_cpu(self.pid).total

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop_process_group(self.proc)
            self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# --- delivery -----------------------------------------------------------------------------


def _load_child(
    spec: loadgen.LoadSpec,
    barrier: Any,
    pipe: multiprocessing.connection.Connection,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
    barrier.wait()
    result = loadgen.run_load(spec)
    pipe.send(asdict(result))
    pipe.close()


def split_load(
    nodes: Sequence[Node],
    users: Sequence[str],
    *,
    messages: int,
    concurrency: int,
    size: int,
    gen_processes: int,
) -> loadgen.LoadResult:
    """N messages over C connections, split evenly over `nodes` and the mailboxes of
    `users` (share i: node i mod nodes, mailbox i mod users), each share driven by a
    `loadgen.run_load` of its own started at the same moment (see the module docstring);
    the result's wall is the longest share's."""
    ctx = multiprocessing.get_context("fork")
    parts = max(len(nodes), len(users))
    shares = loadgen.split_slots(messages, parts)
    conns = loadgen.split_slots(concurrency, parts)
    gens = loadgen.split_slots(max(gen_processes, parts), parts)
    barrier = ctx.Barrier(parts)
    children = []
    for i, (share, conc, gen) in enumerate(zip(shares, conns, gens, strict=True)):
        node = nodes[i % len(nodes)]
        spec = loadgen.LoadSpec(
            host=node.host,
            port=node.smtp_port,
            messages=share,
            concurrency=conc,
            size=size,
            recipient=users[i % len(users)],
            processes=gen,
            deadline=240.0,
        )
        parent_end, child_end = ctx.Pipe(duplex=False)
        # Not a daemon: run_load forks workers of its own, which a daemon may not.
        child = ctx.Process(target=_load_child, args=(spec, barrier, child_end))
        child.start()
        child_end.close()
        children.append((child, parent_end))
    total = loadgen.LoadResult(messages=messages)
    try:
        for child, pipe in children:
            if not pipe.poll(300):
                raise BenchError("a load generator did not finish")
            part = loadgen.LoadResult(**pipe.recv())
            total.accepted += part.accepted
            total.failed += part.failed
            total.unsent += part.unsent
            total.failure_samples += part.failure_samples
            total.latencies += part.latencies
            total.cpu_user += part.cpu_user
            total.cpu_sys += part.cpu_sys
            total.processes += part.processes
            total.wall = max(total.wall, part.wall)
            child.join(10)
    finally:
        for child, pipe in children:
            if child.is_alive():
                child.kill()
                child.join()
            pipe.close()
    total.latencies.sort()
    return total


@dataclass
class Pass:
    """One delivery pass of one setup."""

    setup: str
    rep: int
    concurrency: int
    messages: int
    size: int
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    wall: float = 0.0
    msgs_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    sansmail_cpu: float = 0.0  # seconds, every node's tree
    pg_cpu: float = 0.0
    gen_cpu: float = 0.0
    busy_pct: float = 0.0  # the whole machine during the pass
    load1: float = 0.0
    pg: dict[str, float] = field(default_factory=dict)  # pg_stat_wal / _database deltas
    profiled: bool = False

    def per_1000(self, seconds: float) -> float:
        return seconds * 1000 / self.messages if self.messages else 0.0


# --- IMAP ---------------------------------------------------------------------------------


@dataclass
class Mailbox:
    """What the IMAP mailbox holds, for checking answers."""

    messages: int = 0
    octets: int = 0  # CRLF octets as generated (the stored ones add trace fields)
    hits: dict[str, int] = field(default_factory=dict)


def generate(count: int) -> tuple[list[bytes], Mailbox]:
    rng = random.Random(SEED)
    box = Mailbox(messages=count, hits={"invoice": 0, "alice": 0, "budget": 0})
    out = []
    for i in range(count):
        data, _when, _letters, terms = _message(rng, i)
        crlf = data.replace(b"\n", b"\r\n")
        out.append(crlf)
        box.octets += len(crlf)
        for term, hit in terms.items():
            box.hits[term] += hit
    return out, box


def fill(node: Node, messages: Sequence[bytes], senders: int = 4) -> float:
    """Send `messages` to READER through `node`'s SMTP (smtplib, `senders` sessions at
    once, many messages each); returns the seconds it took."""
    errors: list[str] = []

    def send(share: Sequence[bytes]) -> None:
        try:
            with smtplib.SMTP(node.host, node.smtp_port, timeout=60) as client:
                for data in share:
                    client.sendmail("filler@example.org", [READER], data)
        except (OSError, smtplib.SMTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    start = time.perf_counter()
    threads = [threading.Thread(target=send, args=(messages[i::senders],)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise BenchError(f"filling the IMAP mailbox through {node.name}: {errors[0]}")
    return time.perf_counter() - start


@dataclass
class ImapRep:
    setup: str
    rep: int
    clients: int
    walls: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    cpu: dict[str, float] = field(default_factory=dict)  # phase -> sansmail + PostgreSQL
    load1: float = 0.0


def imap_rep(
    setup: str,
    *,
    rep: int,
    nodes: Sequence[Node],
    clients: int,
    box: Mailbox,
    cpu: Callable[[], float],
) -> ImapRep:
    """Every client runs every phase at once (barriers); see the module docstring."""
    result = ImapRep(setup, rep, clients, load1=os.getloadavg()[0])
    marks: dict[str, list[float]] = {}
    current: list[str] = [""]

    def started() -> None:
        marks[current[0]] = [time.perf_counter(), cpu()]

    def ended() -> None:
        t0, c0 = marks[current[0]]
        result.walls[current[0]] = time.perf_counter() - t0
        result.cpu[current[0]] = cpu() - c0

    start_gate = threading.Barrier(clients, action=started)
    end_gate = threading.Barrier(clients, action=ended)
    phase_gate = threading.Barrier(clients)
    errors: list[str] = []
    want = {
        "SUBJECT invoice": box.hits["invoice"],
        "FROM alice": box.hits["alice"],
        "BODY budget": box.hits["budget"],
        "TEXT quarterly-nomatch": 0,
    }

    def check(ok: bool, what: str) -> None:
        if not ok:
            raise BenchError(what)

    def client(index: int) -> None:
        node = nodes[index % len(nodes)]
        conn: imaplib.IMAP4 | None = None

        def timed(name: str, action: Callable[[], None]) -> None:
            if index == 0:
                current[0] = name
            phase_gate.wait()  # the name is set before anyone starts
            start_gate.wait()
            try:
                action()
            finally:
                end_gate.wait()

        try:

            def login() -> None:
                nonlocal conn
                conn = imaplib.IMAP4(node.host, node.imap_port, timeout=300)
                conn.login(READER, PASSWORD)

            timed("login", login)
            assert conn is not None
            imap = conn

            def select() -> None:
                typ, data = imap.select("INBOX")
                check(typ == "OK" and int(data[0] or 0) == box.messages, f"SELECT: {data}")

            timed("select", select)
            for label, command, argument in IMAP_OPS:

                def op(command: str = command, argument: str = argument) -> None:
                    if command == "FETCH":
                        typ, data = imap.uid("FETCH", "1:*", argument)
                        parts = [d for d in data if isinstance(d, tuple)]
                        count = len(parts) if parts else len(data)
                        check(typ == "OK" and count == box.messages, f"FETCH: {count}")
                        if argument == "BODY.PEEK[]":
                            octets = sum(len(d[1]) for d in parts)
                            check(octets > box.octets, f"FETCH BODY[]: {octets} octets")
                    else:
                        typ, data = imap.uid("SEARCH", argument)
                        hits = len((data[0] or b"").split())
                        check(typ == "OK" and hits == want[argument], f"{argument}: {hits}")

                timed(label, op)
            imap.logout()
        except (BenchError, OSError, imaplib.IMAP4.error, threading.BrokenBarrierError) as exc:
            errors.append(f"client {index} on {node.name}: {type(exc).__name__}: {exc}")
            for gate in (phase_gate, start_gate, end_gate):
                gate.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    real = [e for e in errors if "BrokenBarrierError" not in e] or errors
    if real:
        raise BenchError(f"IMAP {setup} rep {rep}: {real[0]}")
    return result


# --- profile ------------------------------------------------------------------------------


def _sample_waits(dsn: str, stop: Any, pipe: multiprocessing.connection.Connection) -> None:
    """Child process: what the database's client backends wait on, every 10 ms."""
    import psycopg  # noqa: PLC0415

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    counts: Counter[str] = Counter()
    samples = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            rows = conn.execute(
                "SELECT state, wait_event_type, wait_event FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'",
                (DBNAME,),
            ).fetchall()
            samples += 1
            for state, kind, event in rows:
                if state == "idle":
                    counts["idle (between transactions)"] += 1
                elif kind is None:
                    counts[f"{state}: on CPU"] += 1
                else:
                    counts[f"{state}: {kind}:{event}"] += 1
            time.sleep(0.01)
    pipe.send({"samples": samples, "counts": dict(counts)})
    pipe.close()


@contextlib.contextmanager
def profiling(
    nodes: Sequence[Node], pg: Postgres, outdir: Path, tag: str, out: dict[str, Any]
) -> Iterator[None]:
    """py-spy on every node, wait events sampled, pg_stat_statements reset; fills `out`."""
    spy = shutil.which("py-spy")
    spies: list[tuple[subprocess.Popen[bytes], Path]] = []
    if spy is None:
        out["py_spy"] = "py-spy not found: no CPU profile"
    else:
        for node in nodes:
            raw = outdir / f"pg-bench-profile-{tag}-{node.name}.txt"
            spies.append(
                (
                    subprocess.Popen(
                        [
                            *(spy, "record", "--pid", str(node.pid), "--subprocesses"),
                            *("--nonblocking", "--rate", "100", "--format", "raw", "-o", str(raw)),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    ),
                    raw,
                )
            )
        time.sleep(1.0)  # py-spy attaches
    pg.sql("SELECT pg_stat_statements_reset()")
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    parent_end, child_end = ctx.Pipe(duplex=False)
    sampler = ctx.Process(target=_sample_waits, args=(pg.dsn, stop, child_end), daemon=True)
    sampler.start()
    child_end.close()
    try:
        yield
    finally:
        stop.set()
        if parent_end.poll(10):
            out["waits"] = parent_end.recv()
        sampler.join(5)
        parent_end.close()
        for proc, _raw in spies:
            proc.send_signal(signal.SIGINT)
        for proc, raw in spies:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out.setdefault("py_spy_files", []).append(str(raw))
        if spies:
            out["py_spy"] = summarize_stacks([raw for _, raw in spies])
        out["statements"] = [
            {"query": " ".join(str(q).split())[:160], "calls": int(c), "total_ms": float(t)}
            for q, c, t in pg.sql(
                "SELECT query, calls, total_exec_time FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s)"
                " ORDER BY total_exec_time DESC LIMIT 8",
                (DBNAME,),
            )
        ]


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({Path(path).name})" if path else name


def _category(frame: str) -> str:
    """What a leaf frame's time is spent on (paths as py-spy prints them)."""
    if "psycopg" in frame:
        name = frame.split(" (", maxsplit=1)[0].lower()
        return "psycopg: waiting for the database" if "wait" in name else "psycopg: other"
    if "sansmail/storage/pg" in frame:
        return "sansmail.storage.pg"
    if "sansmail/" in frame:
        return "sansmail core (sessions, protocols, mail)"
    if "sansmail_trio/" in frame:
        return "sansmail_trio adapter"
    if "trio/" in frame:
        return "trio (event loop, worker threads)"
    return "stdlib and other"


# Frames under which everything runs: no information in their share.
_ROOTS = ("_cli.py", "_run.py", "_serve.py:", "sansmail-trio:")


def summarize_stacks(files: Sequence[Path], top: int = 12) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks: samples, a category per leaf frame, the top
    functions by own samples, and the top sansmail/psycopg functions by the samples
    under them."""
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    total = 0
    for path in files:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [f for f in stack.split(";") if " (" in f and ".py" in f]
            if not frames:
                continue
            total += n
            own[_frame_name(frames[-1])] += n
            kinds[_category(frames[-1])] += n
            mine = {
                _frame_name(f)
                for f in frames
                if ("sansmail" in f or "psycopg" in f) and not any(r in f for r in _ROOTS)
            }
            for name in mine:
                under[name] += n
    return {
        "samples": total,
        "categories": kinds.most_common(),
        "own": own.most_common(top),
        "under": under.most_common(top),
    }


# --- the run ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.pg: Postgres | None = None
        self.nodes: dict[str, Node] = {}
        self.passes: list[Pass] = []
        self.imap: list[ImapRep] = []
        self.fills: dict[str, float] = {}
        self.profiles: dict[str, dict[str, Any]] = {}
        self.failures: list[str] = []
        self.users = deliver_users(args.mailboxes)
        #: Where py-spy's raw stacks go (beside the JSON, so they outlive the data dirs).
        self.profile_dir = tmp

    def setup_nodes(self, setup: str) -> list[Node]:
        if setup == "maildir":
            return [self.nodes["maildir"]]
        if setup == "pg1":
            return [self.nodes["node-a"]]
        return [self.nodes["node-a"], self.nodes["node-b"]]

    def start(self) -> None:
        setups = self.args.setups
        wanted: list[tuple[str, str, str]] = []
        adders = []
        if "maildir" in setups:
            maildir = self.nodes["maildir"] = Node(
                "maildir", self.tmp / "maildir", HOSTS[0], self.args.processes, ""
            )
            maildir.configure()
            # Meanwhile PostgreSQL starts: the CLI's start-up is a second each.
            adders = [maildir.add_users_command(u) for u in (*self.users, READER)]
        if {"pg1", "pg2"} & set(setups):
            self.pg = Postgres()
            self.pg.start([*self.users, READER])
            wanted.append(("node-a", HOSTS[0], self.pg.dsn))
        if "pg2" in setups:
            assert self.pg is not None
            wanted.append(("node-b", HOSTS[1], self.pg.dsn))
        for name, host, dsn in wanted:
            self.nodes[name] = Node(name, self.tmp / name, host, self.args.processes, dsn)
            self.nodes[name].configure()
        if adders:
            for adder in adders:
                assert adder.stdout is not None
                with adder.stdout:
                    output = adder.stdout.read()
                adder.wait(60)
                if adder.returncode != 0:
                    raise BenchError(f"user add: {output.decode(errors='replace').strip()}")
        for node in self.nodes.values():
            node.spawn()
        for node in self.nodes.values():
            node.wait_ready()

    def stop(self) -> None:
        # SIGTERM to every node first: their shutdowns overlap instead of adding up.
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                os.kill(node.pid, signal.SIGTERM)
        for node in self.nodes.values():
            node.stop()
        if self.pg is not None:
            self.pg.stop()

    def total_cpu(self, nodes: Sequence[Node]) -> float:
        return sum(self.server_cpu(nodes))

    def server_cpu(self, nodes: Sequence[Node]) -> tuple[float, float]:
        pg = self.pg.cpu() if self.pg is not None and nodes[0].dsn else 0.0
        return sum(node.cpu() for node in nodes), pg

    # -- delivery ---------------------------------------------------------------------------

    def deliver(self, setup: str, rep: int, conc: int, *, profile: bool = False) -> Pass:
        args = self.args
        nodes = self.setup_nodes(setup)
        rec = Pass(setup, rep, conc, args.messages, args.size, profiled=profile)
        pg = self.pg if nodes[0].dsn else None
        for user in self.users:
            if pg is not None:
                pg.clear(user)
            else:
                procs.clear_maildir(nodes[0].inbox(user))
        os.sync()
        time.sleep(args.idle)
        rec.load1 = os.getloadavg()[0]
        counters = pg.counters() if pg is not None else {}
        cpu0 = self.server_cpu(nodes)
        ticks0 = procs.machine_ticks()
        prof: dict[str, Any] = {}
        with (
            profiling(nodes, pg, self.profile_dir, f"{setup}-c{conc}", prof)
            if profile and pg is not None
            else contextlib.nullcontext()
        ):
            result = split_load(
                nodes,
                self.users,
                messages=args.messages,
                concurrency=conc,
                size=args.size,
                gen_processes=args.gen_processes,
            )
        ticks1 = procs.machine_ticks()
        parts = max(len(nodes), len(self.users))
        expected = Counter[str]()
        for i, share in enumerate(loadgen.split_slots(args.messages, parts)):
            expected[self.users[i % len(self.users)]] += share
        for user, wanted in expected.items():
            if pg is not None:
                count = pg.count(user)
                if count != wanted:
                    rec.problems.append(f"{count} rows in {user}'s INBOX, expected {wanted}")
            else:
                new = nodes[0].inbox(user) / "new"
                procs.wait_for_count(new, wanted, 60)
                rec.problems += procs.verify_maildir(new, wanted, args.size)
        cpu1 = self.server_cpu(nodes)
        if pg is not None:
            after = pg.counters()
            rec.pg = {name: after[name] - counters[name] for name in after}
        if not result.ok:
            rec.problems.append(
                f"{result.accepted}/{args.messages} accepted; {result.failure_samples[:2]}"
            )
        rec.ok = not rec.problems
        rec.wall = result.wall
        rec.msgs_per_s = result.accepted / result.wall if result.wall else 0.0
        if result.latencies:
            rec.p50_ms = loadgen.percentile(result.latencies, 50) * 1000
            rec.p99_ms = loadgen.percentile(result.latencies, 99) * 1000
        rec.sansmail_cpu = cpu1[0] - cpu0[0]
        rec.pg_cpu = cpu1[1] - cpu0[1]
        rec.gen_cpu = result.cpu_user + result.cpu_sys
        busy = ticks1[0] - ticks0[0]
        rec.busy_pct = 100.0 * busy / max(1, ticks1[1] - ticks0[1])
        if profile:
            prof["pass"] = asdict(rec)
            self.profiles[setup] = prof
        return rec

    def run_delivery(self) -> None:
        setups = list(self.args.setups)
        for rep in range(self.args.reps):
            order = setups[rep % len(setups) :] + setups[: rep % len(setups)]
            for conc in self.args.concurrency:
                for setup in order:
                    rec = self.deliver(setup, rep, conc)
                    self.passes.append(rec)
                    print_pass(rec)
                    if not rec.ok:
                        self.failures.append(f"{setup} c={conc} rep {rep}: {rec.problems[0]}")

    def run_profile(self) -> None:
        conc = max(self.args.concurrency)
        for setup in ("pg1", "pg2"):
            if setup in self.args.setups:
                rec = self.deliver(setup, 0, conc, profile=True)
                print_pass(rec, "profiled ")
                if not rec.ok:
                    self.failures.append(f"profiled {setup}: {rec.problems[0]}")

    # -- IMAP -------------------------------------------------------------------------------

    def run_imap(self) -> None:
        args = self.args
        messages, box = generate(args.imap_messages)
        filled: set[str] = set()
        for setup in args.setups:
            nodes = self.setup_nodes(setup)
            store = "database" if nodes[0].dsn else "maildir"
            if store not in filled:
                self.fills[store] = fill(nodes[0], messages)
                filled.add(store)
                rate = len(messages) / self.fills[store]
                print(f"IMAP mailbox: {len(messages)} messages into the {store} ({rate:,.0f}/s)")
        for rep in range(args.imap_reps + 1):
            setups = list(args.setups)
            order = setups[rep % len(setups) :] + setups[: rep % len(setups)]
            for setup in order:
                nodes = self.setup_nodes(setup)
                try:
                    result = imap_rep(
                        setup,
                        rep=rep,
                        nodes=nodes,
                        clients=args.clients,
                        box=box,
                        cpu=functools.partial(self.total_cpu, nodes),
                    )
                except BenchError as exc:
                    self.failures.append(str(exc))
                    print(f"  FAILED {exc}")
                    continue
                self.imap.append(result)
                walls = " ".join(
                    f"{name.split()[-1]}={result.walls[name] * 1000:.0f}"
                    for name in IMAP_PHASES[2:]
                )
                print(f"  imap {setup:7} rep {rep}{' (cold)' if rep == 0 else ''}: ms {walls}")


def print_pass(rec: Pass, prefix: str = "") -> None:
    status = "ok" if rec.ok else f"FAILED ({rec.problems[0]})"
    print(
        f"  {prefix}{rec.setup:7} c={rec.concurrency:<3} rep {rec.rep}: "
        f"{rec.msgs_per_s:7,.0f} msgs/s  p50 {rec.p50_ms:6.1f} ms  p99 {rec.p99_ms:6.1f} ms  "
        f"cpu/1000 sansmail {rec.per_1000(rec.sansmail_cpu):5.2f} s  "
        f"pg {rec.per_1000(rec.pg_cpu):5.2f} s  busy {rec.busy_pct:3.0f}%  "
        f"load {rec.load1:.1f}  {status}"
    )


# --- report -------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    text = f"{statistics.median(values):.2f}"
    return text + (f" [{min(values):.2f}-{max(values):.2f}]" if len(values) > 1 else "")


DELIVERY_METRICS: tuple[tuple[str, Callable[[Pass], float]], ...] = (
    ("msgs/s", lambda p: p.msgs_per_s),
    ("p50 ms", lambda p: p.p50_ms),
    ("p99 ms", lambda p: p.p99_ms),
    ("sansmail CPU s/1000", lambda p: p.per_1000(p.sansmail_cpu)),
    ("PostgreSQL CPU s/1000", lambda p: p.per_1000(p.pg_cpu)),
    ("total CPU s/1000", lambda p: p.per_1000(p.sansmail_cpu + p.pg_cpu)),
)
PAIRS = (("pg1", "maildir"), ("pg2", "pg1"))


def delivery_ratios(passes: Sequence[Pass]) -> dict[str, dict[str, list[float]]]:
    """'pg1/maildir c=10' -> metric -> the ratio in each rep (both passes good)."""
    good = {(p.setup, p.concurrency, p.rep): p for p in passes if p.ok and not p.profiled}
    out: dict[str, dict[str, list[float]]] = {}
    for num, den in PAIRS:
        for (setup, conc, rep), top in sorted(good.items()):
            bottom = good.get((den, conc, rep))
            if setup != num or bottom is None:
                continue
            cell = out.setdefault(f"{num}/{den} c={conc}", {})
            for name, metric in DELIVERY_METRICS:
                if metric(bottom):
                    cell.setdefault(name, []).append(metric(top) / metric(bottom))
    return out


def imap_ratios(reps: Sequence[ImapRep]) -> dict[str, dict[str, list[float]]]:
    """'pg1/maildir' -> phase -> wall ratio in each warm rep."""
    by = {(r.setup, r.rep): r for r in reps if r.rep > 0}
    out: dict[str, dict[str, list[float]]] = {}
    for num, den in PAIRS:
        for (setup, rep), top in sorted(by.items()):
            bottom = by.get((den, rep))
            if setup != num or bottom is None:
                continue
            cell = out.setdefault(f"{num}/{den}", {})
            for phase in IMAP_PHASES:
                if bottom.walls.get(phase):
                    cell.setdefault(phase, []).append(top.walls[phase] / bottom.walls[phase])
    return out


def report(bench: Bench) -> str:
    args = bench.args
    lines = [
        f"Delivery: {args.messages} messages of {size_label(args.size)} "
        f"into {args.mailboxes} mailbox(es), "
        f"{args.processes} process(es) per node, medians of {args.reps} rep(s)"
    ]
    header = f"{'setup':22} {'c':>4}" + "".join(f" {n:>22}" for n, _ in DELIVERY_METRICS)
    lines.append(header)
    for setup in args.setups:
        for conc in args.concurrency:
            cell = [
                p
                for p in bench.passes
                if p.setup == setup and p.concurrency == conc and p.ok and not p.profiled
            ]
            row = f"{LABELS[setup]:22} {conc:>4}"
            for _, metric in DELIVERY_METRICS:
                value = _median([metric(p) for p in cell])
                row += f" {'-' if value is None else f'{value:,.2f}':>22}"
            lines.append(row)
    lines.append("")
    lines.append("Ratios within each rep, median [min-max] (msgs/s > 1: faster; others > 1: more)")
    for cell_name, metrics in delivery_ratios(bench.passes).items():
        parts = [f"{name} {_spread(values)}" for name, values in metrics.items()]
        lines.append(f"  {cell_name:18} " + "; ".join(parts))
    pg_passes = [p for p in bench.passes if p.pg and not p.profiled]
    if pg_passes:
        lines.append("")
        lines.append("PostgreSQL per pass (medians): WAL fsyncs/message, ms fsyncing/message,")
        lines.append("commits/message, connections opened/message")
        for setup in ("pg1", "pg2"):
            for conc in args.concurrency:
                cell = [p for p in pg_passes if p.setup == setup and p.concurrency == conc]
                if not cell:
                    continue

                def per(key: str, cell: list[Pass] = cell) -> float:
                    return statistics.median(p.pg.get(key, 0.0) / p.messages for p in cell)

                lines.append(
                    f"  {LABELS[setup]:22} c={conc:<3} wal_sync {per('wal_sync'):.2f}  "
                    f"sync ms {per('wal_sync_ms'):.2f}  commits {per('commits'):.2f}  "
                    f"sessions {per('sessions'):.3f}"
                )
    if bench.imap:
        lines.append("")
        lines.append(
            f"IMAP: {args.imap_messages} messages, {args.clients} clients at once, wall ms "
            f"(warm median of {args.imap_reps}; cold rep in parentheses)"
        )
        lines.append(f"{'phase':16}" + "".join(f" {LABELS[s]:>24}" for s in args.setups))
        for phase in IMAP_PHASES:
            row = f"{phase:16}"
            for setup in args.setups:
                warm = [r.walls[phase] * 1000 for r in bench.imap if r.setup == setup and r.rep]
                cold = [r.walls[phase] * 1000 for r in bench.imap if r.setup == setup and not r.rep]
                value = _median(warm)
                text = "-" if value is None else f"{value:,.0f}"
                text += f" ({cold[0]:,.0f})" if cold else ""
                row += f" {text:>24}"
            lines.append(row)
        lines.append("IMAP wall ratios within each warm rep, median [min-max] (> 1: slower)")
        for pair, phases in imap_ratios(bench.imap).items():
            parts = [f"{phase} {_spread(values)}" for phase, values in phases.items()]
            lines.append(f"  {pair}: " + "; ".join(parts))
    for setup, prof in bench.profiles.items():
        lines.append("")
        lines.append(f"Profile of {LABELS[setup]} (one pass at c={max(args.concurrency)}):")
        waits = prof.get("waits")
        if waits and waits["samples"]:
            total = sum(waits["counts"].values())
            lines.append(f"  backends' states ({waits['samples']} samples of pg_stat_activity):")
            for what, n in Counter(waits["counts"]).most_common(8):
                lines.append(f"    {100 * n / total:5.1f}%  {what}")
        lines.extend(
            f"  {row['total_ms']:9.0f} ms {row['calls']:7} calls  {row['query'][:90]}"
            for row in prof.get("statements", [])[:5]
        )
        spy = prof.get("py_spy")
        if isinstance(spy, dict) and spy["samples"]:
            lines.append(f"  py-spy: {spy['samples']} samples (non-idle threads, every node)")
            for name, n in spy["categories"]:
                lines.append(f"    kind  {100 * n / spy['samples']:5.1f}%  {name}")
            for name, n in spy["own"][:8]:
                lines.append(f"    own   {100 * n / spy['samples']:5.1f}%  {name}")
            for name, n in spy["under"][:10]:
                lines.append(f"    under {100 * n / spy['samples']:5.1f}%  {name}")
        elif spy:
            lines.append(f"  {spy}")
    loads = [p.load1 for p in bench.passes] + [r.load1 for r in bench.imap]
    if loads:
        lines.append("")
        lines.append(f"load average (1 min) at pass starts: {min(loads):.1f} to {max(loads):.1f}")
    return "\n".join(lines)


def write_json(bench: Bench, path: Path, started: float) -> None:
    args = bench.args
    data = {
        "bench": "pg_bench",
        "started": started,
        "options": {k: v for k, v in vars(args).items() if k not in ("json", "png", "tmpdir")},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "postgresql": PG_SETTINGS,
        "passes": [asdict(p) for p in bench.passes],
        "imap": [asdict(r) for r in bench.imap],
        "imap_fill_s": bench.fills,
        "ratios": {
            "delivery": delivery_ratios(bench.passes),
            "imap": imap_ratios(bench.imap),
        },
        "profiles": bench.profiles,
        "failures": bench.failures,
    }
    path.write_text(json.dumps(data, indent=1))


def _draw_imap(
    imap_ax: Any,
    data: dict[str, Any],
    setups: Sequence[str],
    colors: dict[str, str],
    width: float,
) -> None:
    phases = [p for p in IMAP_PHASES if p not in ("login",)]
    for i, setup in enumerate(setups):
        walls = []
        for phase in phases:
            mine = [r for r in data["imap"] if r["setup"] == setup]
            warm = [r["walls"][phase] for r in mine if r["rep"]]
            warm = warm or [r["walls"][phase] for r in mine]  # no warm rep: the cold one
            walls.append(statistics.median(warm) * 1000 if warm else float("nan"))
        ys = [j + (i - (len(setups) - 1) / 2) * width for j in range(len(phases))]
        imap_ax.barh(ys, walls, width, color=colors[setup], label=LABELS[setup])
    imap_ax.set_yticks(range(len(phases)), phases, fontsize=8)
    imap_ax.invert_yaxis()
    imap_ax.set_xscale("log")
    imap_ax.set_title(
        f"IMAP wall ms, warm median ({data['options']['clients']} clients)", fontsize=10
    )
    imap_ax.grid(axis="x", alpha=0.3)
    imap_ax.legend(fontsize=8)


def draw(json_path: Path, png_path: Path) -> None:
    """Three panels: msgs/s by concurrency, CPU per 1000 messages (sansmail and
    PostgreSQL stacked), IMAP warm walls by phase."""
    import matplotlib  # noqa: PLC0415  (the bench extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    data = json.loads(json_path.read_text())
    setups: list[str] = data["options"]["setups"]
    concs: list[int] = data["options"]["concurrency"]
    passes = [p for p in data["passes"] if p["ok"] and not p["profiled"]]
    colors = {"maildir": "#1f77b4", "pg1": "#ff7f0e", "pg2": "#2ca02c"}
    panels = 3 if data["imap"] else 2  # --no-imap: no third panel
    fig, axes = plt.subplots(1, panels, figsize=(5.7 * panels, 5.2))
    rate_ax, cpu_ax = axes[0], axes[1]
    width = 0.8 / len(setups)

    def cell(setup: str, conc: int, key: Callable[[dict[str, Any]], float]) -> float:
        values = [key(p) for p in passes if p["setup"] == setup and p["concurrency"] == conc]
        return statistics.median(values) if values else 0.0

    for i, setup in enumerate(setups):
        xs = [j + (i - (len(setups) - 1) / 2) * width for j in range(len(concs))]
        rates = [cell(setup, c, lambda p: p["msgs_per_s"]) for c in concs]
        rate_ax.bar(xs, rates, width, color=colors[setup], label=LABELS[setup])
        for x, rate in zip(xs, rates, strict=True):
            rate_ax.annotate(f"{rate:.0f}", (x, rate), ha="center", va="bottom", fontsize=8)
        own = [cell(setup, c, lambda p: p["sansmail_cpu"] * 1000 / p["messages"]) for c in concs]
        pg = [cell(setup, c, lambda p: p["pg_cpu"] * 1000 / p["messages"]) for c in concs]
        cpu_ax.bar(xs, own, width, color=colors[setup], label=f"{LABELS[setup]}: sansmail")
        cpu_ax.bar(
            xs, pg, width, bottom=own, color=colors[setup], alpha=0.45, hatch="//", label=None
        )
    for ax, title in (
        (rate_ax, "delivery msgs/s (to the last 250)"),
        (cpu_ax, "CPU s per 1000 messages (hatched: PostgreSQL)"),
    ):
        ax.set_xticks(range(len(concs)), [f"c={c}" for c in concs])
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    rate_ax.legend(fontsize=8)
    cpu_ax.legend(fontsize=7)
    if data["imap"]:
        _draw_imap(axes[2], data, setups, colors, width)
    opts = data["options"]
    fig.suptitle(
        f"pg_bench: {opts['messages']} x {size_label(opts['size'])} into "
        f"{opts.get('mailboxes', 1)} mailbox(es), "
        f"{opts['processes']} process(es)/node, fsync on; IMAP {opts['imap_messages']} messages",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


# --- command line -------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of integers >= 1")
    return values


def _setups(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [v for v in values if v not in SETUPS]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"setups are {', '.join(SETUPS)}")
    return [s for s in SETUPS if s in values]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Delivery and IMAP figures of the Maildir backend, PostgreSQL on one "
        "node and PostgreSQL on two nodes, side by side with their ratios.",
        epilog="example: flock /tmp/sansmail-bench.lock python3 bench/pg_bench.py "
        "--concurrency 10,50 --reps 2 --profile --json pg.json",
    )
    parser.add_argument("--messages", type=int, default=None, help="per pass (default 2000)")
    parser.add_argument("--size", type=parse_size, default=parse_size("10k"), help="10k")
    parser.add_argument("--concurrency", type=_int_list, default=[10, 50], help="10,50")
    parser.add_argument("--reps", type=int, default=None, help="delivery reps (default 2)")
    parser.add_argument("--setups", type=_setups, default=list(SETUPS), help=",".join(SETUPS))
    parser.add_argument("--processes", type=int, default=1, help="per node (default 1)")
    parser.add_argument(
        "--mailboxes", type=int, default=1, help="delivery mailboxes the load is split over"
    )
    parser.add_argument("--no-imap", action="store_true", help="delivery only")
    parser.add_argument("--gen-processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--imap-messages", type=int, default=None, help="default 3000")
    parser.add_argument("--imap-reps", type=int, default=None, help="warm reps (default 2)")
    parser.add_argument("--clients", type=int, default=2, help="IMAP clients at once")
    parser.add_argument("--idle", type=float, default=None, help="seconds before a pass")
    parser.add_argument("--profile", action="store_true", help="py-spy and wait events")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    parser.add_argument("--json", type=Path, default=None, help="pg-bench-<time>.json")
    parser.add_argument("--png", type=Path, default=None, help="the JSON's name, .png")
    parser.add_argument("--no-png", action="store_true")
    parser.add_argument("--tmpdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data dirs")
    args = parser.parse_args(argv)
    quick = args.quick
    args.messages = args.messages or (100 if quick else 2000)
    args.reps = args.reps or (1 if quick else 2)
    args.imap_messages = args.imap_messages or (100 if quick else 3000)
    args.imap_reps = args.imap_reps if args.imap_reps is not None else (1 if quick else 2)
    args.idle = args.idle if args.idle is not None else (0.2 if quick else 1.0)
    counts = (args.messages, args.reps, args.imap_messages, args.processes, args.clients)
    if min(*counts, args.mailboxes) < 1:
        parser.error("counts must be >= 1")
    if "pg2" in args.setups and args.clients < 2:
        parser.error("pg2 needs --clients 2 or more (a client on each node)")
    parts = max(args.mailboxes, 2 if "pg2" in args.setups else 1)
    if min(args.concurrency) < parts:
        parser.error(f"the concurrency must be {parts} or more (a connection to each share)")
    return args


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    started = time.time()
    json_path = args.json or Path(f"pg-bench-{time.strftime('%Y%m%d-%H%M%S')}.json")
    tmp = Path(tempfile.mkdtemp(prefix="pg-bench-", dir=args.tmpdir))
    bench = Bench(args, tmp)
    bench.profile_dir = json_path.resolve().parent
    try:
        try:
            bench.start()
        except (BenchError, OSError, subprocess.SubprocessError) as exc:
            print(f"pg_bench: cannot start: {exc}", file=sys.stderr)
            return 1
        print(
            "nodes: "
            + ", ".join(f"{n.name} {n.host}:{n.smtp_port}" for n in bench.nodes.values())
            + (f"; PostgreSQL pid {bench.pg.pid}" if bench.pg else "")
        )
        bench.run_delivery()
        if not args.no_imap:
            bench.run_imap()
        if args.profile:
            bench.run_profile()
    except KeyboardInterrupt:
        bench.failures.append("interrupted")
    except BenchError as exc:
        bench.failures.append(str(exc))
        print(f"pg_bench: {exc}", file=sys.stderr)
    finally:
        bench.stop()
        if args.keep:
            print(f"data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(report(bench))
    write_json(bench, json_path, started)
    print(f"\nJSON: {json_path}")
    if not args.no_png:
        png = args.png or json_path.with_suffix(".png")
        if importlib.util.find_spec("matplotlib") is None:
            # The figures are in the JSON and the report; a traceback would hide them.
            print("PNG: none, matplotlib is not installed (pip install -e '.[bench]')")
        else:
            draw(json_path, png)
            print(f"PNG: {png}")
    for failure in bench.failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
