"""Mailbox benchmark: IMAP and POP3 reading a 10,000-message INBOX, against Dovecot's figures.

    python3 bench/mailbox_bench.py [--messages N] [--reps R] [--processes P]
        [--quick] [--json FILE] [--tmpdir DIR] [--keep]

Theory of operation
-------------------
This repeats the IMAP/POP3 method of shared/research/perf-baseline.md, so that its
Dovecot 2.3.19.1 figures (taken on this machine class) and these can be read side by
side. Dovecot is not run here: the ratios are against the published baseline figures.

1. ``generate_mailbox`` writes N messages straight into the INBOX ``cur/`` of a fresh
   ``sansmail-trio serve`` data dir, named as the store expects
   (``<secs>.M<usecs>P<pid>Q<n>.<host>,S=<bytes>,W=<CRLF bytes>:2,<flags>``), LF line
   ends, mtime = the Date header (IMAP's INTERNALDATE). It is deterministic: the same
   seed and N give the same bytes. The mix is the baseline's: about 2.9 KiB per message,
   30% unseen, 5% flagged, "invoice" in 1% of subjects, "alice" in 10% of senders,
   "budget" in 2% of bodies, dates spread from 2025-01-01 to 2026-01-01 (so that
   UNSEEN SINCE 1-Jul-2025 hits about half of the unseen, as in the baseline).
2. The server starts once (``processes = 1`` unless ``--processes``) with IMAP and POP3
   on free loopback ports; the user is created with ``user add --password-stdin``.
3. Rep 0 is cold: no index exists, so its SELECT builds it. Then ``--reps`` warm reps;
   the tables show the warm medians and the cold rep beside them. All IMAP reps run
   before the POP3 ones (as the baseline did): POP3 marks what it retrieved \\Seen at
   QUIT, which would change what the later IMAP searches find. Each rep opens a new
   connection and times each phase with the stdlib clients (imaplib, poplib), plain
   text on 127.0.0.1. Server CPU is the whole process tree's, from /proc, read around
   each phase; client CPU is this process's.
4. Every phase checks its answer (message counts, body bytes, search hit counts against
   what the generator wrote), so a fast wrong answer is a failure, not a result.
"""

from __future__ import annotations

import argparse
import email.utils
import imaplib
import json
import os
import platform
import poplib
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bench_procs as procs

USER = "bench@example.test"
PASSWORD = "bench-password"
INBOX_PARTS = ("data", "mail", "example.test", "bench")
MIB = 1024 * 1024
TIMES = "\u00d7"  # the multiplication sign of the README's ratio tables
SEED = 20251127

CONFIG = """\
hostname = "bench.example.test"
domains = ["example.test"]
data_dir = "data"
processes = {processes}

[listen]
imap = "127.0.0.1:{imap_port}"
pop3 = "127.0.0.1:{pop3_port}"

[dns]
nameservers = ["127.0.0.1:53"]
"""

# The SEARCH phases, in order: (label, criteria).
SEARCHES: tuple[tuple[str, str], ...] = (
    ("search ALL", "ALL"),
    ("search SUBJECT invoice", "SUBJECT invoice"),
    ("search FROM alice", "FROM alice"),
    ("search UNSEEN SINCE 1-Jul-2025", "UNSEEN SINCE 1-Jul-2025"),
    ("search BODY budget", "BODY budget"),
    ("search TEXT quarterly-nomatch", "TEXT quarterly-nomatch"),
)
IMAP_PHASES = ("login", "select", "fetch_meta", "fetch_bodies", *(s[0] for s in SEARCHES), "logout")
POP3_PHASES = ("login", "stat", "uidl", "retr_all", "quit")

# Dovecot 2.3.19.1, perf-baseline.md "IMAP / POP3", batch 1: (warm median wall s, cold wall s).
DOVECOT_IMAP: dict[str, tuple[float, float]] = {
    "login": (0.008, 0.035),
    "select": (0.004, 0.021),
    "fetch_meta": (0.088, 0.843),
    "fetch_bodies": (0.114, 0.125),
    "search ALL": (0.002, 0.002),
    "search SUBJECT invoice": (0.016, 0.133),
    "search FROM alice": (0.017, 0.137),
    "search UNSEEN SINCE 1-Jul-2025": (0.007, 0.007),
    "search BODY budget": (0.245, 0.243),
    "search TEXT quarterly-nomatch": (0.314, 0.329),
    "logout": (0.000, 0.004),
}
DOVECOT_POP3: dict[str, tuple[float, float]] = {
    "login": (0.010, 0.009),
    "stat": (0.012, 0.004),
    "uidl": (0.008, 0.008),
    "retr_all": (0.960, 0.979),
    "quit": (0.000, 0.044),
}
DOVECOT_NOTE = (
    "Dovecot is not installed here: ratios are against the published Dovecot 2.3.19.1 "
    "figures of shared/research/perf-baseline.md (10,000 messages, same machine class). "
    "ratio = Dovecot wall / sansmail wall; > 1 means sansmail is faster."
)


# --- the mailbox ------------------------------------------------------------------------

_WORDS = tuple(
    [
        "the",
        "report",
        "meeting",
        "project",
        "schedule",
        "review",
        "update",
        "team",
        "plan",
        "quarter",
        "numbers",
        "please",
        "find",
        "attached",
        "notes",
        "draft",
        "agenda",
        "office",
        "travel",
        "customer",
        "order",
        "shipping",
        "status",
        "weekly",
        "summary",
        "results",
        "figures",
        "forecast",
        "contract",
        "support",
        "release",
        "server",
        "account",
        "access",
        "change",
        "request",
        "approval",
        "deadline",
        "friday",
        "monday",
        "thanks",
        "regards",
    ]
)
_FIRST = tuple(
    [
        "bob",
        "carol",
        "dave",
        "erin",
        "frank",
        "grace",
        "heidi",
        "ivan",
        "judy",
        "mallory",
        "oscar",
        "peggy",
        "trent",
        "victor",
    ]
)
_TOPICS = (
    "lunch plans",
    "project update",
    "weekly notes",
    "travel request",
    "meeting agenda",
    "release status",
)
_START = 1735689600  # 2025-01-01T00:00:00Z
_SPAN = 365 * 86400  # to 2026-01-01


@dataclass
class Expected:
    """What the generator wrote, for checking the server's answers."""

    messages: int = 0
    lf_bytes: int = 0
    crlf_bytes: int = 0
    unseen: int = 0
    flagged: int = 0
    hits: dict[str, int] = field(default_factory=dict)


def _message(rng: random.Random, i: int) -> tuple[bytes, int, str, dict[str, bool]]:
    """(LF bytes, internal date, flag letters, which search terms it matches)."""
    when = _START + rng.randrange(_SPAN)
    alice = rng.random() < 0.10
    invoice = rng.random() < 0.01
    budget = rng.random() < 0.02
    sender = "alice" if alice else rng.choice(_FIRST)
    topic = rng.choice(_TOPICS)
    subject = f"Invoice {1000 + i} for {topic}" if invoice else f"Re: {topic} #{i}"
    # Body: 1.4-4.0 KiB of 72-column lines, averaging ~2.6 KiB so that the whole message
    # (with ~300 bytes of header) averages the baseline's 2.9 KiB.
    target = rng.randrange(1400, 4000)
    lines: list[str] = []
    size = 0
    budget_line = rng.randrange(1, 20) if budget else -1
    while size < target:
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < 64:
            words.append(rng.choice(_WORDS))
        if len(lines) == budget_line:
            words[2] = "budget"
        line = " ".join(words)
        lines.append(line)
        size += len(line) + 1
    if budget and budget_line >= len(lines):
        lines[-1] = "budget " + lines[-1]
    head = (
        f"From: {sender.capitalize()} <{sender}@example.org>\n"
        f"To: Bench <{USER}>\n"
        f"Subject: {subject}\n"
        f"Date: {email.utils.formatdate(when, localtime=False)}\n"
        f"Message-ID: <{i}.{when}@example.org>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=us-ascii\n"
    )
    data = (head + "\n" + "\n".join(lines) + "\n").encode()
    roll = rng.random()
    seen = roll >= 0.30
    flagged = rng.random() < 0.05
    letters = ("F" if flagged else "") + ("S" if seen else "")
    terms = {"invoice": invoice, "alice": alice, "budget": budget}
    return data, when, letters, terms


def generate_mailbox(inbox: Path, count: int, seed: int = SEED) -> Expected:
    """Write ``count`` messages into ``inbox/cur`` (deterministic for a given seed)."""
    rng = random.Random(seed)
    for sub in ("cur", "new", "tmp"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    exp = Expected(messages=count)
    hits = dict.fromkeys(("invoice", "alice", "budget", "unseen_since"), 0)
    july = 1751328000  # 2025-07-01T00:00:00Z; SINCE compares dates, a margin is not needed
    for i in range(count):
        data, when, letters, terms = _message(rng, i)
        crlf = len(data) + data.count(b"\n")
        name = f"{when}.M{i % 1000000}P4242Q{i}.bench,S={len(data)},W={crlf}:2,{letters}"
        path = inbox / "cur" / name
        path.write_bytes(data)
        os.utime(path, (when, when))
        exp.lf_bytes += len(data)
        exp.crlf_bytes += crlf
        for term, hit in terms.items():
            hits[term] += hit
        if "S" not in letters:
            exp.unseen += 1
            # SINCE is by date in the server's zone; a message within a day of the edge
            # may fall either way, so the check allows for those.
            hits["unseen_since"] += when >= july
        exp.flagged += "F" in letters
    exp.hits = hits
    return exp


# --- the server -------------------------------------------------------------------------


class MailServer:
    """``sansmail-trio serve`` with IMAP and POP3 on loopback and one user."""

    def __init__(self, workdir: Path, processes: int) -> None:
        self.workdir = workdir
        self.processes = processes
        self.imap_port = 0
        self.pop3_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "sansmail.log"

    @property
    def inbox(self) -> Path:
        return self.workdir.joinpath(*INBOX_PARTS)

    def env(self) -> dict[str, str]:
        return procs.checkout_env()

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.imap_port = procs.free_port()
        self.pop3_port = procs.free_port()
        config = self.workdir / "sansmail.toml"
        config.write_text(
            CONFIG.format(
                processes=self.processes, imap_port=self.imap_port, pop3_port=self.pop3_port
            )
        )
        done = subprocess.run(
            [
                *procs.sansmail_command(),
                "user",
                "add",
                USER,
                "--password-stdin",
                "--config",
                str(config),
            ],
            cwd=self.workdir,
            env=self.env(),
            input=PASSWORD.encode() + b"\n",
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace").strip()
            raise procs.ServerError(f"user add failed ({done.returncode}): {output}")

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*procs.sansmail_command(), "serve", "--config", "sansmail.toml"],
                cwd=self.workdir,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session (a Ctrl-C is for the harness, which then stops the
                # server itself), and it dies with the harness even on SIGKILL.
                start_new_session=True,
                preexec_fn=procs._die_with_parent,  # the harness is single-threaded
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise procs.ServerError(f"sansmail exited at startup:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.imap_port), timeout=5) as s:
                    if s.recv(512).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.05)
        raise procs.ServerError(f"sansmail did not greet within {timeout:.0f} s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# --- timing -------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    wall: float
    client_cpu: float
    server_cpu: float
    count: int = 0  # messages handled, or search hits
    nbytes: int = 0


class Timer:
    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.phases: list[Phase] = []

    def run(self, name: str, action: Callable[[], tuple[int, int]]) -> None:
        cpu0 = procs.proc_tree_cpu(self.server_pid).total
        client0 = time.process_time()
        start = time.perf_counter()
        count, nbytes = action()
        wall = time.perf_counter() - start
        client = time.process_time() - client0
        cpu = procs.proc_tree_cpu(self.server_pid).total - cpu0
        self.phases.append(Phase(name, wall, client, cpu, count, nbytes))


class CheckError(Exception):
    """A server answer that does not match the generated mailbox."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise CheckError(what)


def imap_rep(server: MailServer, exp: Expected) -> list[Phase]:
    timer = Timer(server.pid)
    holder: list[imaplib.IMAP4] = []

    def login() -> tuple[int, int]:
        conn = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=600)
        conn.login(USER, PASSWORD)
        holder.append(conn)
        return 0, 0

    timer.run("login", login)
    conn = holder[0]

    def select() -> tuple[int, int]:
        typ, data = conn.select("INBOX")
        _check(typ == "OK" and int(data[0] or 0) == exp.messages, f"SELECT: {typ} {data}")
        return exp.messages, 0

    def fetch(items: str, expect_bytes: int) -> Callable[[], tuple[int, int]]:
        def action() -> tuple[int, int]:
            typ, data = conn.uid("FETCH", "1:*", items)
            _check(typ == "OK", f"FETCH {items}: {typ}")
            parts = [d for d in data if isinstance(d, tuple)]
            count = len(parts) if parts else len(data)
            nbytes = sum(len(d[1]) for d in parts)
            _check(count == exp.messages, f"FETCH {items}: {count} messages")
            _check(expect_bytes < 0 or nbytes == expect_bytes, f"FETCH: {nbytes} bytes")
            return count, nbytes

        return action

    timer.run("select", select)
    timer.run("fetch_meta", fetch("(FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)", -1))
    timer.run("fetch_bodies", fetch("BODY.PEEK[]", exp.crlf_bytes))
    want = {
        "ALL": exp.messages,
        "SUBJECT invoice": exp.hits["invoice"],
        "FROM alice": exp.hits["alice"],
        "BODY budget": exp.hits["budget"],
        "TEXT quarterly-nomatch": 0,
    }
    for label, criteria in SEARCHES:

        def search(criteria: str = criteria) -> tuple[int, int]:
            typ, data = conn.uid("SEARCH", criteria)
            _check(typ == "OK", f"SEARCH {criteria}: {typ}")
            hits = len((data[0] or b"").split())
            if criteria in want:
                _check(hits == want[criteria], f"SEARCH {criteria}: {hits} hits")
            else:  # the date edge depends on the server's zone: within 1% is right
                near = exp.hits["unseen_since"]
                _check(abs(hits - near) <= max(5, near // 100), f"SEARCH {criteria}: {hits}")
            return hits, 0

        timer.run(label, search)

    def logout() -> tuple[int, int]:
        conn.logout()
        return 0, 0

    timer.run("logout", logout)
    return timer.phases


def pop3_rep(server: MailServer, exp: Expected) -> list[Phase]:
    timer = Timer(server.pid)
    holder: list[poplib.POP3] = []

    def login() -> tuple[int, int]:
        conn = poplib.POP3("127.0.0.1", server.pop3_port, timeout=600)
        conn.user(USER)
        conn.pass_(PASSWORD)
        holder.append(conn)
        return 0, 0

    timer.run("login", login)
    conn = holder[0]

    def stat() -> tuple[int, int]:
        count, size = conn.stat()
        _check(count == exp.messages and size == exp.crlf_bytes, f"STAT: {count} {size}")
        return count, 0

    def uidl() -> tuple[int, int]:
        _, listing, _ = conn.uidl()
        _check(len(listing) == exp.messages, f"UIDL: {len(listing)} lines")
        return len(listing), 0

    def retr_all() -> tuple[int, int]:
        total = 0
        for n in range(1, exp.messages + 1):
            _, _lines, octets = conn.retr(n)
            total += octets
        # poplib counts the dot-unstuffed lines plus CRLF, which is the message size.
        _check(total == exp.crlf_bytes, f"RETR: {total} octets, expected {exp.crlf_bytes}")
        return exp.messages, total

    def quit_() -> tuple[int, int]:
        conn.quit()
        return 0, 0

    timer.run("stat", stat)
    timer.run("uidl", uidl)
    timer.run("retr_all", retr_all)
    timer.run("quit", quit_)
    return timer.phases


# --- reporting ----------------------------------------------------------------------------


@dataclass
class Row:
    phase: str
    wall: float
    msgs_per_s: float | None
    mib_per_s: float | None
    client_cpu: float
    server_cpu: float
    cold_wall: float | None
    hits: int | None
    dovecot_wall: float | None
    ratio: float | None
    cold_ratio: float | None


def _ratio(base: float | None, ours: float | None) -> float | None:
    # Baseline figures are rounded to the millisecond: a 0.000 one has no meaningful ratio.
    if base is None or ours is None or base <= 0 or ours <= 0:
        return None
    return base / ours


def summarize(
    names: Sequence[str],
    warm: Sequence[Sequence[Phase]],
    cold: Sequence[Phase] | None,
    baseline: dict[str, tuple[float, float]],
    *,
    rate_phases: Sequence[str] = (),
    search: bool = False,
) -> list[Row]:
    """One row per phase: warm medians, the cold rep, and the ratios to Dovecot."""
    rows = []
    for name in names:
        runs = [p for rep in warm for p in rep if p.name == name]
        cold_phase = next((p for p in cold or () if p.name == name), None)
        if not runs and cold_phase is not None:
            runs = [cold_phase]
        if not runs:
            continue
        wall = statistics.median(p.wall for p in runs)
        count = runs[0].count
        nbytes = runs[0].nbytes
        rated = name in rate_phases and wall > 0
        base = baseline.get(name)
        rows.append(
            Row(
                phase=name,
                wall=wall,
                msgs_per_s=count / wall if rated and count else None,
                mib_per_s=nbytes / MIB / wall if rated and nbytes else None,
                client_cpu=statistics.median(p.client_cpu for p in runs),
                server_cpu=statistics.median(p.server_cpu for p in runs),
                cold_wall=cold_phase.wall if cold_phase else None,
                hits=count if search and name.startswith("search") else None,
                dovecot_wall=base[0] if base else None,
                ratio=_ratio(base[0] if base else None, wall),
                cold_ratio=_ratio(
                    base[1] if base else None, cold_phase.wall if cold_phase else None
                ),
            )
        )
    return rows


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def format_table(title: str, rows: Sequence[Row]) -> str:
    head = (
        "| phase | wall s (median) | msgs/s | MiB/s | client CPU s | server CPU s "
        "| cold wall s | hits | Dovecot wall s | ratio | cold ratio |"
    )
    lines = [f"*{title}*", "", head, "|---|" + "---:|" * 10]
    for r in rows:
        cells = [
            r.phase,
            f"{r.wall:.3f}",
            _num(r.msgs_per_s, ",.0f"),
            _num(r.mib_per_s, ".1f"),
            f"{r.client_cpu:.2f}",
            f"{r.server_cpu:.2f}",
            _num(r.cold_wall, ".3f"),
            "" if r.hits is None else str(r.hits),
            _num(r.dovecot_wall, ".3f"),
            _num(r.ratio, ".2f") + (TIMES if r.ratio is not None else ""),
            _num(r.cold_ratio, ".2f") + (TIMES if r.cold_ratio is not None else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="mailbox_bench.py",
        description="IMAP and POP3 read speed of sansmail on a generated mailbox, "
        "compared with Dovecot's published baseline figures.",
    )
    p.add_argument("--messages", type=int, help="messages in the INBOX (default 10000)")
    p.add_argument("--reps", type=int, help="warm repetitions after the cold one (default 3)")
    p.add_argument("--processes", type=int, default=1, help="server processes (default 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1000 messages, 1 rep")
    p.add_argument("--seed", type=int, default=SEED, help="generator seed")
    p.add_argument("--json", type=Path, help="write the raw results here")
    p.add_argument("--tmpdir", type=Path, help="where the data dir goes (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the data dir afterwards")
    args = p.parse_args(argv)
    if args.messages is None:
        args.messages = 1000 if args.quick else 10000
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.messages < 1 or args.reps < 1 or args.processes < 1:
        p.error("--messages, --reps and --processes must be at least 1")
    return args


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    top = Path(tempfile.mkdtemp(prefix="mailbox-bench-", dir=args.tmpdir))
    server = MailServer(top / "sansmail", args.processes)
    status = 0
    try:
        server.prepare()
        t0 = time.perf_counter()
        exp = generate_mailbox(server.inbox, args.messages, args.seed)
        print(
            f"generated {exp.messages} messages, {exp.crlf_bytes / MIB:.1f} MiB "
            f"(avg {exp.lf_bytes / exp.messages / 1024:.2f} KiB), {exp.unseen} unseen, "
            f"{exp.flagged} flagged, in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        server.start()
        imap_runs = []
        pop3_runs = []
        # Every IMAP rep before the first POP3 one, as the baseline ran them: a POP3
        # session marks what it retrieved \Seen at QUIT, which changes UNSEEN.
        for rep in range(args.reps + 1):
            label = "cold" if rep == 0 else f"warm {rep}"
            imap_runs.append(imap_rep(server, exp))
            took = sum(p.wall for p in imap_runs[-1])
            print(f"IMAP rep {rep} ({label}): {took:.2f} s", flush=True)
        for rep in range(args.reps + 1):
            label = "first" if rep == 0 else f"again {rep}"
            pop3_runs.append(pop3_rep(server, exp))
            took = sum(p.wall for p in pop3_runs[-1])
            print(f"POP3 rep {rep} ({label}): {took:.2f} s", flush=True)
    except (procs.ServerError, CheckError, OSError, imaplib.IMAP4.error, poplib.error_proto) as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}\n{server.log_tail()}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 1
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(top, ignore_errors=True)
        else:
            print(f"kept {top}")
    if status:
        return status
    n = args.messages
    imap_rows = summarize(
        IMAP_PHASES,
        imap_runs[1:],
        imap_runs[0],
        DOVECOT_IMAP,
        rate_phases=("fetch_meta", "fetch_bodies"),
        search=True,
    )
    pop3_rows = summarize(
        POP3_PHASES, pop3_runs[1:], pop3_runs[0], DOVECOT_POP3, rate_phases=("uidl", "retr_all")
    )
    mib = exp.crlf_bytes / MIB
    reps = f"median of {args.reps} warm reps (+1 cold rep shown separately)"
    print()
    print(format_table(f"sansmail IMAP: {n} messages, {mib:.1f} MiB; {reps}", imap_rows))
    print()
    print(format_table(f"sansmail POP3: {n} messages, {mib:.1f} MiB; {reps}", pop3_rows))
    print()
    print(DOVECOT_NOTE)
    if n != 10000:
        print(f"(the baseline has 10,000 messages, this run {n}: ratios are only indicative)")
    if args.json:
        record = {
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "expected": asdict(exp),
            "imap": [[asdict(p) for p in rep] for rep in imap_runs],
            "pop3": [[asdict(p) for p in rep] for rep in pop3_runs],
            "imap_rows": [asdict(r) for r in imap_rows],
            "pop3_rows": [asdict(r) for r in pop3_rows],
            "note": DOVECOT_NOTE,
        }
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
