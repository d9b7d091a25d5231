"""A full ``mbsync`` pull of a big INBOX from sansmail beside Dovecot, in one command.

    python3 bench/mbsync_bench.py [--messages N] [--reps R] [--tmpdir DIR]

The mailbox of ``mailbox_bench.generate_mailbox`` (10,000 messages by default) is written
into sansmail's INBOX and Dovecot's ``~/Maildir`` from one seed; both servers start on
127.0.0.1 as ``mailbox_peers_bench.py`` starts them (plain IMAP, no TLS: neither bench
server has a certificate, and TLS would time OpenSSL more than the servers). Then, per
rep and per server (the order alternating by rep), ``mbsync`` (isync) pulls the INBOX
into an empty local Maildir: every message's flags (UID FETCH 1:* (UID FLAGS)) and body
(one UID FETCH BODY.PEEK[] per message, pipelined). Both log in with the LOGIN command
(``AuthMechs LOGIN``), so sansmail's SCRAM-SHA-256, which mbsync would pick otherwise,
costs nothing Dovecot's plain passwd-file login does not.

Rep 0 is the first pull: neither server has indexed the folder yet (sansmail builds its
SQLite index at the first SELECT, Dovecot its index files). The reps after it pull again
into a fresh Maildir from servers whose index is warm. Each pull is checked: mbsync's
status 0 and every message in the local Maildir.

mbsync (isync 1.4 and later) turns on COMPRESS=DEFLATE (RFC 4978) whenever the server
offers it, and has no setting to refuse it. Dovecot offers it only with its imap_zlib
plugin, off in a stock config: ``--dovecot-compress`` turns the plugin on, so that both
servers compress when sansmail offers COMPRESS too (each pull's line says whether the
server offered it).

Per pull: wall time; the server's CPU (its whole process tree, from /proc); mbsync's
CPU (getrusage of the children). The ratios are Dovecot's over sansmail's within the
same rep (wall: > 1 means sansmail is faster; CPU: > 1 means sansmail used less).
"""

from __future__ import annotations

import argparse
import imaplib
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import bench_procs as procs
import mailbox_bench as mb
from dovecot_peer import DovecotServer
from side_by_side import DovecotZlib, side_by_side

MBSYNC_CONFIG = """\
IMAPAccount bench
Host 127.0.0.1
Port {port}
User {user}
Pass {password}
SSLType None
AuthMechs LOGIN

IMAPStore far
Account bench

MaildirStore near
Path {local}/
Inbox {local}/INBOX

Channel pull
Far :far:
Near :near:
Patterns INBOX
Create Near
Sync Pull
SyncState *
"""


@dataclass
class Pull:
    server: str
    rep: int
    wall: float
    server_cpu: float
    client_cpu: float


def offers_compress(server: mb.MailServer) -> bool:
    conn = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=60)
    try:
        conn.login(mb.USER, mb.PASSWORD)
        # Asked after login: that is where both servers list it.
        _typ, data = conn.capability()
        return b"COMPRESS=DEFLATE" in b" ".join(d for d in data if isinstance(d, bytes))
    finally:
        conn.logout()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pull(
    mbsync: str, server: mb.MailServer, *, name: str, rep: int, work: Path, count: int
) -> Pull:
    """One full pull from `server` into a fresh Maildir, timed and checked."""
    local = work / f"{name}-{rep}"
    local.mkdir(parents=True)
    rc = work / f"{name}-{rep}.mbsyncrc"
    rc.write_text(
        MBSYNC_CONFIG.format(port=server.imap_port, user=mb.USER, password=mb.PASSWORD, local=local)
    )
    server_cpu0 = procs.proc_tree_cpu(server.pid).total
    client_cpu0 = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(
        [mbsync, "-c", str(rc), "-q", "-a"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    wall = time.perf_counter() - started
    client_cpu = _children_cpu() - client_cpu0
    # Dovecot's imap process for the session may still be on its way out: its CPU
    # counts once the master has reaped it (cutime) or while it is there to read.
    time.sleep(0.5)
    server_cpu = procs.proc_tree_cpu(server.pid).total - server_cpu0
    if done.returncode != 0:
        raise procs.ServerError(f"mbsync from {name} failed ({done.returncode}): {done.stderr}")
    got = sum(1 for sub in ("cur", "new") for _ in (local / "INBOX" / sub).iterdir())
    if got != count:
        raise procs.ServerError(f"mbsync from {name}: {got} messages of {count}")
    shutil.rmtree(local)
    return Pull(name, rep, wall, server_cpu, client_cpu)


def report(pulls: Sequence[Pull], servers: Sequence[str]) -> str:
    lines = [
        f"{'pull':<10}{'server':<10}{'wall s':>9}{'server CPU s':>14}{'mbsync CPU s':>14}"
        f"{'wall d/s':>10}{'CPU d/s':>9}"
    ]
    by = {(p.server, p.rep): p for p in pulls}
    reps = sorted({p.rep for p in pulls})

    def row(label: str, name: str, times: tuple[float, float, float], ratios: str) -> str:
        wall, cpu, client = times
        return f"{label:<10}{name:<10}{wall:>9.2f}{cpu:>14.2f}{client:>14.2f}{ratios}"

    for label, chosen in (("first", reps[:1]), ("warm", reps[1:])):
        if not chosen:
            continue
        med = {
            name: (
                statistics.median(by[(name, r)].wall for r in chosen),
                statistics.median(by[(name, r)].server_cpu for r in chosen),
                statistics.median(by[(name, r)].client_cpu for r in chosen),
            )
            for name in servers
        }
        for name in servers:
            ratios = ""
            if name == "dovecot":
                walls = [by[("dovecot", r)].wall / by[("sansmail", r)].wall for r in chosen]
                cpus = [
                    by[("dovecot", r)].server_cpu / by[("sansmail", r)].server_cpu for r in chosen
                ]
                ratios = f"{statistics.median(walls):>9.2f}x{statistics.median(cpus):>8.2f}x"
            lines.append(row(label, name, med[name], ratios))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--reps", type=int, default=2, help="warm pulls after the first")
    p.add_argument("--tmpdir", type=Path)
    p.add_argument(
        "--dovecot-compress", action="store_true", help="load Dovecot's imap_zlib plugin"
    )
    args = p.parse_args(argv)
    mbsync = shutil.which("mbsync")
    if mbsync is None:
        print("mbsync is not installed (apt-get install isync)", file=sys.stderr)
        return 1
    pulls: list[Pull] = []
    peer_class = DovecotZlib if args.dovecot_compress else DovecotServer
    try:
        with side_by_side(
            "mbsync-bench-", args.messages, args.tmpdir, peer_class=peer_class
        ) as both:
            exp, servers, top = both.exp, both.servers, both.top
            print(f"{exp.messages} messages, {exp.crlf_bytes / mb.MIB:.1f} MiB", flush=True)
            for name, server in servers:
                print(f"{name} offers COMPRESS=DEFLATE: {offers_compress(server)}", flush=True)
            for rep in range(args.reps + 1):
                order = servers if rep % 2 == 0 else servers[::-1]
                for name, server in order:
                    done = pull(
                        mbsync, server, name=name, rep=rep, work=top / "local", count=args.messages
                    )
                    pulls.append(done)
                    print(
                        f"rep {rep} {name}: {done.wall:.2f} s, server CPU {done.server_cpu:.2f} s",
                        flush=True,
                    )
    except procs.ServerError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print()
    print(report(pulls, [name for name, _ in servers]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
