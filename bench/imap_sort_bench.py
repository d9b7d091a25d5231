"""SORT (SUBJECT) and THREAD=REFERENCES of sansmail beside Dovecot on the mailbox bench's mailbox.

    python3 bench/imap_sort_bench.py [--messages N] [--reps R] [--tmpdir DIR]

The mailbox of ``mailbox_bench.generate_mailbox`` (10,000 messages by default) is written
into sansmail's INBOX and Dovecot's ``~/Maildir`` from one seed; both servers start on
127.0.0.1 (as ``mailbox_peers_bench.py`` does), each is logged in and has INBOX
selected (which builds its index), then each command runs ``--reps`` times per server,
the servers taking turns. The first run is cold for both: sansmail reads the header
fields of every message into its search index then, Dovecot its sort and thread
indexes. The table gives the first run and the median of the others, in seconds, and
Dovecot's time over sansmail's (> 1: sansmail is faster). Both servers' answers are
compared: the same numbers in the same order, or the difference is reported.
"""

from __future__ import annotations

import argparse
import imaplib
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import bench_procs as procs
import mailbox_bench as mb
from side_by_side import side_by_side

COMMANDS = (("SORT", "(SUBJECT) UTF-8 ALL"), ("THREAD", "REFERENCES UTF-8 ALL"))


def connect(server: mb.MailServer) -> imaplib.IMAP4:
    conn = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=600)
    conn.login(mb.USER, mb.PASSWORD)
    typ, data = conn.select("INBOX")
    if typ != "OK":
        raise procs.ServerError(f"SELECT: {typ} {data}")
    return conn


def timed(conn: imaplib.IMAP4, command: str, arguments: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    typ, data = conn.uid(command, *arguments.split(" ", 1))
    elapsed = time.perf_counter() - started
    if typ != "OK":
        raise procs.ServerError(f"UID {command} {arguments}: {typ} {data}")
    return elapsed, b" ".join(d for d in data if isinstance(d, bytes))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--tmpdir", type=Path)
    args = p.parse_args(argv)
    try:
        with side_by_side("imap-sort-", args.messages, args.tmpdir) as both:
            exp, servers = both.exp, both.servers
            print(f"{exp.messages} messages, {exp.crlf_bytes / mb.MIB:.1f} MiB", flush=True)
            conns = {name: connect(server) for name, server in servers}
            times: dict[tuple[str, str], list[float]] = {}
            answers: dict[tuple[str, str], bytes] = {}
            for command, arguments in COMMANDS:
                for rep in range(args.reps):
                    order = servers if rep % 2 == 0 else servers[::-1]
                    for name, _server in order:
                        elapsed, answer = timed(conns[name], command, arguments)
                        times.setdefault((command, name), []).append(elapsed)
                        answers[(command, name)] = answer
            print(f"\n{'command':<34}{'server':<10}{'first s':>9}{'warm s':>9}{'dovecot/ours':>14}")
            for command, arguments in COMMANDS:
                warm = {
                    name: statistics.median(times[(command, name)][1:] or [0])
                    for name, _ in servers
                }
                for name, _server in servers:
                    first = times[(command, name)][0]
                    ratio = ""
                    if name == "dovecot":
                        ratio = f"{warm['dovecot'] / warm['sansmail']:.2f}x"
                    print(
                        f"{'UID ' + command + ' ' + arguments:<34}{name:<10}"
                        f"{first:>9.3f}{warm[name]:>9.3f}{ratio:>14}"
                    )
                if len(servers) == 2:
                    same = answers[(command, "sansmail")] == answers[(command, "dovecot")]
                    print(f"{'':<34}answers {'identical' if same else 'DIFFER'}")
            for conn in conns.values():
                conn.logout()
    except procs.ServerError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
