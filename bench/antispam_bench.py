"""What the sender checks of ``[antispam]`` cost: sansmail with every check off beside
sansmail with them on, in one command.

    python3 bench/antispam_bench.py [--messages 2000] [--concurrency 50] [--size 10k]
        [--reps 3] [--configs off,on,greylist] [--profile [off,on]] [--out DIR]

Theory of operation
-------------------
1. A DNS server (``tests/sansmail_trio/dns_server.py``) runs in a child process on
   127.0.0.1 and publishes, with TTL 300, what a well-configured sender has: PTR
   1.0.0.127.in-addr.arpa -> mail.sender.test and its A record 127.0.0.1 (iprev pass),
   SPF ``v=spf1 ip4:127.0.0.1 -all`` for sender.test, an RSA-2048 DKIM key
   (``s1._domainkey``) and ``v=DMARC1; p=reject``. The DNSBL zone ``bl.sansmail.test``
   lists nothing, so the client's name there is NXDOMAIN (whose SOA minimum is 300 too).
   A child process rather than threads here: the harness forks (smtp-source, the load
   generator's workers), which is only safe while it is single-threaded.
2. One ``sansmail-trio serve`` per configuration, each in its own directory, all running
   for the whole bench and asking that DNS server; ``mynetworks`` leaves 127.0.0.1 out,
   so the bench's client is checked as a stranger would be:

   * ``off``: spf, reverse_dns, dkim, dmarc "off", no DNSBL (the config smtp_bench.py
     measures, but with 127.0.0.1 outside mynetworks);
   * ``on``: all four "tag" and ``dnsbl = ["bl.sansmail.test"]``: iprev and the DNSBL at
     CONNECT, SPF at MAIL, DKIM, ARC and DMARC at the end of DATA with the message held,
     Authentication-Results written;
   * ``greylist``: ``on`` plus greylisting with ``greylist_delay = "1s"``, its one
     triplet passed before the first pass (a first attempt is refused, by design).

3. The message is signed once, up front (``sansmail.mail.dkim.sign``, d=sender.test):
   From ann@sender.test, a body of SIZE bytes like smtp-source's. smtp-source sends it
   (``-F``: the same file each time; HELO mail.sender.test, MAIL FROM ann@sender.test),
   one connection per message, C at a time; without smtp-source, ``loadgen.py``'s
   workers send it (EHLO).
4. The passes go rep by rep, every configuration back to back in each rep, their order
   rotated per rep (``smtp_bench.schedule``); ratios are taken within a rep. Before each
   pass: empty the Maildir, ``sync``, idle a second. Server CPU is the whole process tree
   from /proc (``bench_procs``), from the generator's start to the last file in ``new/``.
5. A pass counts only when every message got its 250 and exactly N files are in
   ``new/`` with their trace fields; with the checks on, three stored messages must carry
   ``dkim=pass``, ``spf=pass``, ``dmarc=pass`` and ``iprev=pass`` in their
   Authentication-Results (with them off: no Authentication-Results), so that a pass that
   measured refusals or temperrors fails instead.
6. The DNS server counts the questions it got during each pass: per message they show
   the resolver's cache at work (each server process fills its own cache once; after
   that, until the TTL runs out, a repeated sender asks nothing).
7. ``--profile``: after the reps, one more pass per configuration named (default: off
   and on) with py-spy on every server process (by default sampling the thread that
   holds the GIL, as ``profile_smtp.py`` does). The samples are charged to categories
   (``PROFILE_CATEGORIES``, the innermost match wins) and shown as milliseconds per
   message side by side, so the difference between "off" and "on" says where the
   checks' cost goes; then the top functions of each.

Nothing is sent anywhere but 127.0.0.1; every process started goes away on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

import bench_procs as procs
import loadgen
import profile_smtp
from bench_report import Spread, parse_size, size_label
from smtp_bench import schedule

BENCH_DIR = Path(__file__).resolve().parent
TESTS_TRIO = BENCH_DIR.parent / "tests" / "sansmail_trio"

SENDER = "ann@sender.test"
SENDER_DOMAIN = "sender.test"
CLIENT_NAME = "mail.sender.test"
SELECTOR = "s1"
DNSBL_ZONE = "bl.sansmail.test"
TTL = 300
SETTLE_TIMEOUT = 60.0
EXPECTED_RESULTS = ("dkim=pass", "spf=pass", "dmarc=pass", "iprev=pass")

ANTISPAM: dict[str, str] = {
    "off": 'spf = "off"\nreverse_dns = "off"\ndkim = "off"\ndmarc = "off"\n',
    "on": (
        f'spf = "tag"\nreverse_dns = "tag"\ndkim = "tag"\ndmarc = "tag"\ndnsbl = ["{DNSBL_ZONE}"]\n'
    ),
    "greylist": (
        'spf = "tag"\nreverse_dns = "tag"\ndkim = "tag"\ndmarc = "tag"\n'
        f'dnsbl = ["{DNSBL_ZONE}"]\ngreylisting = true\ngreylist_delay = "1s"\n'
    ),
}

CONFIG = """\
hostname = "bench.example.test"
domains = ["example.test"]
data_dir = "data"
processes = {processes}
# Not 127.0.0.1: the bench's client is checked as a stranger would be.
mynetworks = ["192.0.2.0/24"]

[listen]
smtp = "127.0.0.1:{port}"

[smtp]
max_connections = 1000
max_connections_per_ip = 1000

[limits]                # off, as Postfix's are by default: every message is one client's
client_message_rate = 0
client_recipient_rate = 0

[antispam]
{antispam}
[dns]
nameservers = ["{dns}"]
"""

#: profile_smtp's categories, with the checks' own first (the innermost match wins).
PROFILE_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("DKIM/ARC: dkimpy (canonicalisation, hashing, RSA)", r"/dkim/|sansmail/mail/dkim\.py"),
    ("crypto (cryptography, hashlib)", r"cryptography/|hashlib"),
    ("DNS: resolver, cache, dnspython", r"/dns/|sansmail_trio/_dns\.py|sansmail/mail/dnsquery"),
    ("SPF", r"sansmail/mail/spf/"),
    (
        "DMARC, iprev, DNSBL, Authentication-Results",
        r"sansmail/mail/(dmarc|iprev|dnsbl|authres|headeredit)\.py",
    ),
    ("greylist (sqlite)", r"greylist|sqlite3"),
    ("sender checks glue", r"sessions/smtpd/_(sender|checks|intake)\.py|sansmail_trio/_inquir"),
    *profile_smtp.CATEGORIES,
)


# --- DNS server (child process) -----------------------------------------------------------


def dns_child() -> int:
    """Run the DNS server: records as JSON on the first stdin line, the port printed, then
    one JSON line of the questions asked since the last one for each line read; EOF
    stops it."""
    sys.path.insert(0, str(TESTS_TRIO))
    from dns_server import DNSServer  # noqa: PLC0415 (a test helper, found at run time)

    records = json.loads(sys.stdin.readline())
    with DNSServer(zones=("test", "in-addr.arpa"), ttl=TTL) as dns:
        for name, rdtype, text in records:
            dns.add(name, rdtype, text)
        print(dns.host_port, flush=True)
        seen = 0
        for _line in sys.stdin:
            queries = dns.queries
            fresh = Counter(f"{q.name} {q.rdtype}" for q in queries[seen:])
            seen = len(queries)
            print(json.dumps(dict(fresh)), flush=True)
    return 0


class DnsChild:
    """The DNS server's process, seen from the harness."""

    def __init__(self, records: Sequence[tuple[str, str, str]]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--dns-child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(list(records)) + "\n")
        self.proc.stdin.flush()
        self.host_port = self.proc.stdout.readline().strip()
        if not self.host_port:
            self.stop()
            raise procs.ServerError("the DNS server did not start")

    def questions(self) -> dict[str, int]:
        """The questions asked since the last call, "name TYPE" -> count."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        counts: dict[str, int] = json.loads(self.proc.stdout.readline())
        return counts

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def dns_records(key_txt: str) -> list[tuple[str, str, str]]:
    # A 2048-bit key's record is longer than one 255-octet string: split, as zones do.
    chunks = " ".join(f'"{key_txt[i : i + 200]}"' for i in range(0, len(key_txt), 200))
    return [
        ("1.0.0.127.in-addr.arpa", "PTR", f"{CLIENT_NAME}."),
        (CLIENT_NAME, "A", "127.0.0.1"),
        (SENDER_DOMAIN, "TXT", '"v=spf1 ip4:127.0.0.1 -all"'),
        (f"{SELECTOR}._domainkey.{SENDER_DOMAIN}", "TXT", chunks),
        (f"_dmarc.{SENDER_DOMAIN}", "TXT", '"v=DMARC1; p=reject"'),
        # Something in the list's zone, so the zone exists and the client is NXDOMAIN in it.
        (f"2.0.0.127.{DNSBL_ZONE}", "A", "127.0.0.2"),
    ]


# --- the message --------------------------------------------------------------------------


def signed_message(size: int) -> tuple[bytes, str]:
    """A message of `size` body bytes signed for sender.test, and the key's TXT value."""
    from sansmail.mail import dkim  # noqa: PLC0415 (the checkout's, after sys.path is set)

    key, key_txt = dkim.generate("rsa")
    header = (
        f"From: Ann <{SENDER}>\r\nTo: <{procs.RECIPIENT}>\r\nSubject: antispam bench\r\n"
        f"Date: Mon, 07 Dec 2026 06:00:00 +0000\r\nMessage-ID: <bench@{SENDER_DOMAIN}>\r\n\r\n"
    ).encode()
    message = header + loadgen.build_payload(size)
    signature = dkim.sign(message, domain=SENDER_DOMAIN, selector=SELECTOR, private_key=key)
    return signature + message, key_txt


class _SignedWorker(loadgen._Worker):
    """loadgen's worker sending `message` (wire form, dot-stuffed, with the final dot)."""

    message = b""

    def on_reply(self, conn: loadgen._Conn, reply: loadgen.Reply, now: float) -> bool:
        if conn.state == loadgen._DATA and reply.code == 354:
            conn.state = loadgen._DOT
            self.send(conn, self.message)
            return True
        return super().on_reply(conn, reply, now)


@contextlib.contextmanager
def sending(message: bytes) -> Iterator[None]:
    """Make loadgen's forked workers send `message` instead of smtp-source's."""
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    _SignedWorker.message = stuffed + b".\r\n"
    original = loadgen._Worker
    loadgen._Worker = _SignedWorker
    try:
        yield
    finally:
        loadgen._Worker = original


# --- the servers --------------------------------------------------------------------------


class CheckedSansmail(procs.SansmailServer):
    """``sansmail-trio serve`` with one of the `ANTISPAM` settings and our DNS server."""

    def __init__(self, workdir: Path, config: str, dns: str, processes: int) -> None:
        self.name = config
        super().__init__(workdir)
        self.config = config
        self.dns = dns
        self.processes = processes

    def prepare(self) -> None:
        super().prepare()  # the user, and bench_procs' config, which we replace
        self.config_path.write_text(
            CONFIG.format(
                processes=self.processes,
                port=self.port,
                antispam=ANTISPAM[self.config],
                dns=self.dns,
            )
        )


def seed_greylist(port: int) -> str | None:
    """Pass the bench's one triplet through greylisting; None when it passed."""

    def attempt() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo(CLIENT_NAME)
            client.mail(SENDER)
            code, text = client.rcpt(procs.RECIPIENT)
            client.rset()
            return code, text

    first = attempt()
    if first[0] != 450:
        return f"greylisting: first attempt got {first}, expected 450"
    time.sleep(1.5)  # greylist_delay = 1s
    second = attempt()
    return None if second[0] == 250 else f"greylisting: retry got {second}, expected 250"


# --- one pass -----------------------------------------------------------------------------


@dataclass
class Pass:
    config: str
    rep: int
    messages: int
    generator: str
    ok: bool = False
    error: str = ""
    wall_s: float = 0.0
    msgs_per_s: float = 0.0
    server_cpu_s: float = 0.0
    cpu_per_1000: float = 0.0
    gen_cpu_s: float = 0.0
    dns_questions: int = 0
    dns_per_message: float = 0.0
    dns_asked: dict[str, int] = field(default_factory=dict)
    auth_results: str = ""
    load_1m: float = 0.0
    background_busy_pct: float = 0.0
    machine_busy_pct: float = 0.0


def unfolded_header(path: Path) -> list[str]:
    head = path.read_bytes().replace(b"\r\n", b"\n").partition(b"\n\n")[0].decode("latin-1")
    return head.replace("\n ", " ").replace("\n\t", " ").split("\n")


def check_results(new_dir: Path, config: str) -> tuple[list[str], str]:
    """Problems with the Authentication-Results of three stored messages, and one field."""
    files = sorted(new_dir.iterdir())
    sample = [files[0], files[len(files) // 2], files[-1]] if files else []
    problems, shown = [], ""
    for path in sample:
        fields = [f for f in unfolded_header(path) if f.startswith("Authentication-Results:")]
        if config == "off":
            if fields:
                problems.append(f"{path.name}: checks off, yet {fields[0][:200]}")
            continue
        if len(fields) != 1:
            problems.append(f"{path.name}: {len(fields)} Authentication-Results fields")
            continue
        shown = fields[0]
        missing = [r for r in EXPECTED_RESULTS if f" {r}" not in fields[0]]
        if missing:
            problems.append(f"{path.name}: no {', '.join(missing)} in {fields[0][:300]}")
    return problems, shown


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.passes: list[Pass] = []
        self.servers: dict[str, CheckedSansmail] = {}
        self.dns: DnsChild | None = None
        self.message = b""
        self.message_file = tmp / "message.txt"

    def start(self) -> None:
        self.message, key_txt = signed_message(self.args.size)
        # smtp-source -F appends CRLF to each line of the file itself.
        self.message_file.write_bytes(self.message.replace(b"\r\n", b"\n"))
        self.dns = DnsChild(dns_records(key_txt))
        print(f"DNS server on {self.dns.host_port} (TTL {TTL} s)")
        for config in self.args.config_list:
            server = CheckedSansmail(
                self.tmp / config, config, self.dns.host_port, self.args.processes
            )
            server.start()
            self.servers[config] = server
            print(f"started sansmail ({config}) on 127.0.0.1:{server.port} (pid {server.pid})")
            if config == "greylist":
                why = seed_greylist(server.port)
                if why is not None:
                    raise procs.ServerError(why)

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        if self.dns is not None:
            self.dns.stop()

    def run(self) -> None:
        cell = [(self.args.size, self.args.concurrency)]
        for rep, _cell, config in schedule(self.args.reps, cell, self.args.config_list):
            self.run_pass(self.servers[config], rep)

    def generate(self, rec: Pass, port: int) -> tuple[bool, str]:
        args = self.args
        if rec.generator == "smtp-source":
            assert args.smtp_source is not None
            command = [
                args.smtp_source,
                *("-m", str(rec.messages), "-s", str(args.concurrency)),
                *("-F", str(self.message_file), "-M", CLIENT_NAME, "-f", SENDER),
                *("-t", procs.RECIPIENT, f"127.0.0.1:{port}"),
            ]
            with tempfile.TemporaryFile() as out:
                start = time.perf_counter()
                before = os.times()
                done = subprocess.run(
                    command, stdout=out, stderr=subprocess.STDOUT, timeout=args.run_timeout
                )
                rec.wall_s = time.perf_counter() - start
                after = os.times()
                rec.gen_cpu_s = (after.children_user - before.children_user) + (
                    after.children_system - before.children_system
                )
                out.seek(0)
                output = out.read().decode(errors="replace").strip()
            return done.returncode == 0, f"smtp-source: {output[-500:]}"
        spec = loadgen.LoadSpec(
            port=port,
            messages=rec.messages,
            concurrency=args.concurrency,
            size=args.size,
            sender=SENDER,
            helo=CLIENT_NAME,
            deadline=args.run_timeout,
        )
        with sending(self.message):
            load = loadgen.run_load(spec)
        rec.wall_s = load.wall
        rec.gen_cpu_s = load.cpu_user + load.cpu_sys
        why = f"{load.failed} of {load.messages} failed: " + "; ".join(load.failure_samples[:3])
        return load.ok, why

    def run_pass(
        self, server: CheckedSansmail, rep: int, *, quiet: bool = False, messages: int = 0
    ) -> Pass:
        args = self.args
        assert self.dns is not None
        rec = Pass(server.config, rep, messages or args.messages, args.generator)
        procs.clear_maildir(server.maildir)
        os.sync()
        busy0, total0 = procs.machine_ticks()
        time.sleep(args.idle)
        busy1, total1 = procs.machine_ticks()
        rec.background_busy_pct = 100 * (busy1 - busy0) / max(1, total1 - total0)
        rec.load_1m = os.getloadavg()[0]
        self.dns.questions()  # forget what came before this pass

        cpu0 = procs.proc_tree_cpu(server.pid)
        gen_ok, detail = self.generate(rec, server.port)
        new_dir = server.maildir / "new"
        procs.wait_for_count(new_dir, rec.messages, SETTLE_TIMEOUT if gen_ok else 2.0)
        alive = server.alive()
        cpu = procs.proc_tree_cpu(server.pid) - cpu0 if alive else None
        busy2, total2 = procs.machine_ticks()
        rec.machine_busy_pct = 100 * (busy2 - busy1) / max(1, total2 - total1)
        rec.dns_asked = self.dns.questions()
        rec.dns_questions = sum(rec.dns_asked.values())
        rec.dns_per_message = rec.dns_questions / rec.messages

        min_body = len(loadgen.build_payload(args.size).replace(b"\r\n", b"\n"))
        problems = procs.verify_maildir(new_dir, rec.messages, min_body) if gen_ok else [detail]
        if cpu is None:
            problems.insert(0, f"sansmail ({server.config}) died\n{server.log_tail()}")
        else:
            rec.server_cpu_s = cpu.total
            rec.cpu_per_1000 = cpu.total / rec.messages * 1000
        if gen_ok and not problems:
            wrong, rec.auth_results = check_results(new_dir, server.config)
            problems += wrong
        rec.ok = not problems
        rec.error = "; ".join(problems)
        rec.msgs_per_s = rec.messages / rec.wall_s if rec.wall_s else 0.0
        if not quiet:
            self.passes.append(rec)
            self.print_pass(rec)
        if not alive:
            server.start()  # the next pass of this configuration gets a server again
        return rec

    @staticmethod
    def print_pass(rec: Pass) -> None:
        tag = f"rep {rec.rep + 1} {rec.config:<8}"
        if not rec.ok:
            print(f"{tag} FAILED: {rec.error[:1500]}", flush=True)
            return
        print(
            f"{tag} {rec.msgs_per_s:7,.0f} msgs/s  cpu {rec.cpu_per_1000:6.2f} s/1000"
            f"  dns {rec.dns_questions:4d} questions ({rec.dns_per_message:.4f}/msg)"
            f"  gen {rec.gen_cpu_s / rec.messages * 1000:.2f} s/1000"
            f"  busy {rec.machine_busy_pct:3.0f}% (bg {rec.background_busy_pct:.0f}%)"
            f"  load {rec.load_1m:.1f}",
            flush=True,
        )

    # --- summary --------------------------------------------------------------------

    def summary(self) -> dict[str, object]:
        good = [p for p in self.passes if p.ok]
        configs: dict[str, object] = {}
        for config in self.args.config_list:
            mine = [p for p in good if p.config == config]
            configs[config] = {
                "runs": sum(p.config == config for p in self.passes),
                "failed": sum(p.config == config and not p.ok for p in self.passes),
                "msgs_per_s": _spread([p.msgs_per_s for p in mine]),
                "cpu_per_1000": _spread([p.cpu_per_1000 for p in mine]),
                # The first pass fills the resolver caches; the others should ask nothing.
                "dns_cold_per_message": mine[0].dns_per_message if mine else None,
                "dns_warm_per_message": _spread([p.dns_per_message for p in mine[1:]]),
            }
        ratios: dict[str, object] = {}
        base = self.args.config_list[0]
        for config in self.args.config_list[1:]:
            for den in dict.fromkeys([base, "on"]):
                if den == config or den not in self.args.config_list:
                    continue
                rate, cpu = [], []
                for rep in range(self.args.reps):
                    num_p = _find(good, config, rep)
                    den_p = _find(good, den, rep)
                    if num_p is not None and den_p is not None:
                        rate.append(num_p.msgs_per_s / den_p.msgs_per_s)
                        cpu.append(num_p.cpu_per_1000 / den_p.cpu_per_1000)
                ratios[f"{config}/{den}"] = {
                    "msgs_per_s": _spread(rate),
                    "cpu_per_1000": _spread(cpu),
                }
        return {"configs": configs, "ratios": ratios}

    def report(self, summary: dict[str, object]) -> str:
        args = self.args
        out = [
            f"\n{args.messages} DKIM-signed messages of {size_label(args.size)} per pass over "
            f"{args.concurrency} connections, {args.generator}, {args.processes} server "
            f"processes; median [min-max] of {args.reps} rep(s); CPU: server process tree",
            "",
            "| config | msgs/s | server CPU s/1000 msgs | DNS questions/msg: first pass "
            "| later passes |",
            "|---|---:|---:|---:|---:|",
        ]
        configs = summary["configs"]
        assert isinstance(configs, dict)
        for config, row in configs.items():
            failed = f" ({row['failed']} failed)" if row["failed"] else ""
            out.append(
                f"| {config}{failed} | {_show(row['msgs_per_s'], ',.0f')} "
                f"| {_show(row['cpu_per_1000'], '.2f')} "
                f"| {_num(row['dns_cold_per_message'], '.4f')} "
                f"| {_show(row['dns_warm_per_message'], '.4f')} |"
            )
        ratios = summary["ratios"]
        assert isinstance(ratios, dict)
        if ratios:
            out += [
                "",
                "| ratio (within each rep) | msgs/s | CPU per message |",
                "|---|---:|---:|",
            ]
            for name, row in ratios.items():
                out.append(
                    f"| {name} | {_show(row['msgs_per_s'], '.2f')} "
                    f"| {_show(row['cpu_per_1000'], '.2f')} |"
                )
        loads = [p.load_1m for p in self.passes]
        if loads:
            out.append(
                f"\nload average (1 min) at pass starts: {min(loads):.1f} - {max(loads):.1f}"
            )
        shown = next((p.auth_results for p in self.passes if p.ok and p.auth_results), "")
        if shown:
            out.append(f"a stored message's field: {shown[:400]}")
        failed = [p for p in self.passes if not p.ok]
        if failed:
            out.append(f"\n{len(failed)} pass(es) FAILED; first: {failed[0].error[:800]}")
        return "\n".join(out)

    # --- profile --------------------------------------------------------------------

    def profile(self, out_dir: Path) -> str:
        """One more pass per `--profile` configuration under py-spy; the report."""
        spy = shutil.which("py-spy")
        if spy is None:
            return "no profile: py-spy is not installed"
        rate = self.args.profile_rate
        profiles: dict[str, tuple[Pass, list[tuple[list[str], int]]]] = {}
        for config in self.args.profile_list:
            server = self.servers[config]
            folder = out_dir / f"profile-{config}"
            folder.mkdir(parents=True, exist_ok=True)
            spies = []
            for pid in profile_smtp._children(server.pid) or [server.pid]:
                command = [spy, "record", "--format", "raw", "--nonblocking"]
                command += ["--rate", str(rate), "--pid", str(pid)]
                command += ["-o", str(folder / f"{pid}.txt")]
                command += [] if self.args.profile_all_threads else ["--gil"]
                spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
            time.sleep(1.0)  # py-spy attaches
            try:
                rec = self.run_pass(server, 0, quiet=True, messages=self.args.profile_messages)
            finally:
                for process in spies:
                    process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                for process in spies:
                    process.wait(60)
            samples = []
            for path in folder.glob("*.txt"):
                samples += profile_smtp.parse_raw(path.read_text().splitlines())
            profiles[config] = (rec, samples)
        what = "all busy threads" if self.args.profile_all_threads else "the GIL holder"
        out = [f"profile: py-spy on every server process, sampling {what} at {rate} Hz"]
        for config, (rec, _samples) in profiles.items():
            state = "" if rec.ok else f" FAILED: {rec.error[:300]}"
            out.append(f"  {config}: {rec.messages} messages, {rec.msgs_per_s:.0f} msgs/s{state}")
        out += ["", profile_table(profiles, rate)]
        for config, (_rec, samples) in profiles.items():
            out += ["", f"### {config}", profile_top(samples)]
        return "\n".join(out)


def profile_table(profiles: dict[str, tuple[Pass, list[tuple[list[str], int]]]], rate: int) -> str:
    """Milliseconds of samples per message in each category, per configuration: where
    the difference between them goes."""
    per_message: dict[str, dict[str, float]] = {}
    for config, (rec, samples) in profiles.items():
        counts = profile_smtp.categorize(samples, PROFILE_CATEGORIES)
        per_message[config] = {
            name: 1000 * count / rate / rec.messages for name, count in counts.items()
        }
    names = sorted(
        {n for counts in per_message.values() for n in counts},
        key=lambda n: -max(c.get(n, 0.0) for c in per_message.values()),
    )
    configs = list(per_message)
    out = [
        "| category (ms of samples per message) | " + " | ".join(configs) + " |",
        "|---|" + "---:|" * len(configs),
    ]
    for name in [*names, "total"]:
        cells = [
            sum(per_message[c].values()) if name == "total" else per_message[c].get(name, 0.0)
            for c in configs
        ]
        out.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    return "\n".join(out)


def profile_top(samples: list[tuple[list[str], int]], top: int = 25) -> str:
    total = sum(count for _frames, count in samples) or 1
    inclusive, own = profile_smtp.by_function(samples)
    out: list[str] = []
    for title, counter in (("inclusive", inclusive), ("self", own)):
        out += [f"top functions, {title} (share of {total} samples):"]
        for frame, count in counter.most_common(top):
            out.append(f"  {100 * count / total:5.1f}%  {frame}")
    return "\n".join(out)


def _find(passes: Sequence[Pass], config: str, rep: int) -> Pass | None:
    return next((p for p in passes if p.config == config and p.rep == rep), None)


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    spread = Spread.of(values)
    return None if spread is None else asdict(spread)


def _num(value: object, fmt: str) -> str:
    return "-" if not isinstance(value, float | int) else f"{value:{fmt}}"


def _show(spread: object, fmt: str) -> str:
    if not isinstance(spread, dict):
        return "-"
    return (
        f"{spread['median']:{fmt}} [{spread['low']:{fmt}}-{spread['high']:{fmt}}]"
        if spread["low"] != spread["high"]
        else f"{spread['median']:{fmt}}"
    )


# --- picture ------------------------------------------------------------------------------


def draw(summary: dict[str, object], png: Path, title: str) -> str:
    try:
        import matplotlib  # noqa: PLC0415 (optional, slow to import)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        return f"no picture: {exc}"
    configs = summary["configs"]
    assert isinstance(configs, dict)
    names = [n for n, row in configs.items() if row["msgs_per_s"] is not None]
    if not names:
        return "no picture: no pass succeeded"
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    panels = (
        ("msgs_per_s", "msgs/s (higher is better)", ",.0f"),
        ("cpu_per_1000", "server CPU s / 1000 messages", ".2f"),
    )
    colors = ("#1f77b4", "#d62728", "#9467bd", "#2ca02c")
    for ax, (key, label, fmt) in zip(axes, panels, strict=False):
        med = [configs[n][key]["median"] for n in names]
        low = [configs[n][key]["median"] - configs[n][key]["low"] for n in names]
        high = [configs[n][key]["high"] - configs[n][key]["median"] for n in names]
        bars = ax.bar(names, med, yerr=[low, high], capsize=4, color=colors[: len(names)])
        for bar, value in zip(bars, med, strict=True):
            # Inside the bar, so the whiskers do not run through the figure.
            x, y = bar.get_x() + bar.get_width() / 2, bar.get_height() / 2
            ax.text(x, y, f"{value:{fmt}}", ha="center", va="center", color="white", fontsize=9)
        ax.set_title(label, fontsize=10)
        ax.margins(y=0.15)
    ax = axes[2]
    cold = [configs[n]["dns_cold_per_message"] or 0.0 for n in names]
    warm = [(configs[n]["dns_warm_per_message"] or {"median": 0.0})["median"] for n in names]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], cold, width=0.4, color="#7f7f7f", label="first pass")
    ax.bar([x + 0.2 for x in xs], warm, width=0.4, color="#2ca02c", label="later (median)")
    for x, value in zip(xs, cold, strict=True):
        ax.text(x - 0.2, value, f"{value:.3f}", ha="center", va="bottom", fontsize=8)
    for x, value in zip(xs, warm, strict=True):
        ax.text(x + 0.2, value, f"{value:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), names)
    ax.set_title("DNS questions / message (resolver cache)", fontsize=10)
    ax.legend(fontsize=8)
    ax.margins(y=0.15)
    ratios = summary["ratios"]
    assert isinstance(ratios, dict)
    text = "; ".join(
        f"{name}: msgs/s x{row['msgs_per_s']['median']:.2f}, "
        f"CPU x{row['cpu_per_1000']['median']:.2f}"
        for name, row in ratios.items()
        if row["msgs_per_s"] is not None
    )
    fig.suptitle(f"{title}\n{text}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return f"picture: {png}"


# --- command line -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--messages", type=int, default=2000, help="messages per pass")
    p.add_argument("--concurrency", type=int, default=50, help="simultaneous connections")
    p.add_argument("--size", default="10k", help="body bytes (k = KiB)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--configs", default="off,on,greylist", help="of: off, on, greylist")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    p.add_argument("--generator", choices=("auto", "smtp-source", "python"), default="auto")
    p.add_argument("--idle", type=float, default=1.0, help="idle seconds before each pass")
    p.add_argument("--run-timeout", type=float, default=300.0)
    p.add_argument(
        "--profile",
        nargs="?",
        const="off,on",
        default="",
        help="one more pass of these configs under py-spy (alone: off,on)",
    )
    p.add_argument("--profile-messages", type=int, help="messages per profile pass")
    p.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--profile-all-threads", action="store_true", help="not only the GIL")
    p.add_argument("--out", type=Path, help="write antispam-bench.json and .png here")
    p.add_argument("--keep", action="store_true", help="keep the data dirs")
    args = p.parse_args(argv)
    try:
        args.size = parse_size(args.size)
    except ValueError as exc:
        p.error(str(exc))
    args.config_list = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not args.config_list or any(c not in ANTISPAM for c in args.config_list):
        p.error(f"--configs: choose from {', '.join(ANTISPAM)}")
    args.profile_list = [c.strip() for c in args.profile.split(",") if c.strip()]
    if any(c not in args.config_list for c in args.profile_list):
        p.error("--profile: only configurations that --configs runs")
    args.profile_messages = args.profile_messages or args.messages
    if args.messages < 1 or args.reps < 1 or args.concurrency < 1:
        p.error("--messages, --reps and --concurrency must be >= 1")
    args.smtp_source = procs.find_smtp_source()
    if args.generator == "smtp-source" and args.smtp_source is None:
        p.error("smtp-source is not installed (Debian: apt-get install postfix)")
    if args.generator == "auto":
        args.generator = "smtp-source" if args.smtp_source else "python"
    return args


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and sys.argv[1:] == ["--dns-child"]:
        return dns_child()
    args = parse_args(argv)
    sys.path.insert(0, str(procs.REPO_DIR))  # sign with the checkout's sansmail
    signal.signal(signal.SIGTERM, _sigterm)
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="antispam-bench-"))
    bench = Bench(args, tmp)
    interrupted = False
    profile_text = ""
    try:
        bench.start()
        bench.run()
        if args.profile_list:
            profile_text = bench.profile(args.out or tmp / "profile")
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping, reporting what was measured", file=sys.stderr)
    except procs.ServerError as exc:
        print(f"!! {exc}", file=sys.stderr)
        interrupted = True
    finally:
        bench.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = bench.summary()
    print(bench.report(summary))
    if profile_text:
        print(f"\n{profile_text}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        data = {
            "kind": "antispam",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),
            "interrupted": interrupted,
            "argv": sys.argv,
            "options": {
                k: str(v) if isinstance(v, Path) else v
                for k, v in vars(args).items()
                if k not in ("config_list", "profile_list")
            },
            "summary": summary,
            "passes": [asdict(p) for p in bench.passes],
            "profile": profile_text,
        }
        json_path = args.out / "antispam-bench.json"
        json_path.write_text(json.dumps(data, indent=1) + "\n")
        print(f"\nraw results: {json_path}")
        title = (
            f"sender checks: {args.messages} signed {size_label(args.size)} messages, "
            f"c={args.concurrency}, {args.reps} reps"
        )
        print(draw(summary, json_path.with_suffix(".png"), title))
    bad = interrupted or not bench.passes or any(not p.ok for p in bench.passes)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
