"""QRESYNC resync (RFC 7162) of sansmail beside Dovecot on the mailbox bench's mailbox.

    python3 bench/imap_qresync_bench.py [--messages N] [--changes C] [--reps R] [--tmpdir DIR]

The mailbox of ``mailbox_bench.generate_mailbox`` (10,000 messages by default) is written
into sansmail's INBOX and Dovecot's ``~/Maildir`` from one seed; both servers start on
127.0.0.1 (as ``mailbox_peers_bench.py`` does). A client ENABLEs QRESYNC, SELECTs INBOX
(which builds each server's index) and notes UIDVALIDITY and HIGHESTMODSEQ; another
session then makes ``--changes`` changes (four in five a flag set on one message, one in
five an expunge, spread over the mailbox). What is timed is a client coming back: on a
fresh logged-in connection with QRESYNC enabled, ``SELECT INBOX (QRESYNC (v m))`` and
``UID FETCH 1:* (FLAGS) (CHANGEDSINCE m VANISHED)``, ``--reps`` times per server, the
servers taking turns (the first run is each server's first resync after the changes).
The table gives the first run and the median of the others, in milliseconds, and
Dovecot's time over sansmail's (> 1: sansmail is faster). Both servers' answers are
checked: the vanished UIDs and the UIDs and flags of the changed messages, the same.
"""

from __future__ import annotations

import argparse
import imaplib
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import bench_procs as procs
import mailbox_bench as mb
from side_by_side import side_by_side


def connect(server: mb.MailServer) -> imaplib.IMAP4:
    conn = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=600)
    conn.login(mb.USER, mb.PASSWORD)
    return conn


def _check(typ: str, data: object, what: str) -> None:
    if typ != "OK":
        raise procs.ServerError(f"{what}: {typ} {data}")


def baseline(server: mb.MailServer) -> tuple[int, int]:
    """(UIDVALIDITY, HIGHESTMODSEQ) of INBOX as a QRESYNC client sees them."""
    conn = connect(server)
    _check(*conn.enable("QRESYNC"), "ENABLE")
    _check(*conn.select("INBOX"), "SELECT")
    typ, data = conn.status("INBOX", "(UIDVALIDITY HIGHESTMODSEQ)")
    _check(typ, data, "STATUS")
    found = re.search(rb"UIDVALIDITY (\d+) HIGHESTMODSEQ (\d+)", data[0] or b"")
    if found is None:
        raise procs.ServerError(f"STATUS: {data}")
    conn.logout()
    return int(found.group(1)), int(found.group(2))


def change(server: mb.MailServer, messages: int, changes: int) -> None:
    """`changes` changes, spread over the mailbox: a flag on four in five, an expunge of
    the fifth (one STORE or UID EXPUNGE each, as a client acting on single messages)."""
    conn = connect(server)
    _check(*conn.select("INBOX"), "SELECT")
    step = max(messages // changes, 1)
    for n in range(changes):
        uid = 1 + n * step
        if n % 5 == 4:
            _check(*conn.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)"), "STORE")
            _check(*conn.uid("EXPUNGE", str(uid)), "UID EXPUNGE")
        else:
            _check(*conn.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Flagged)"), "STORE")
    conn.logout()


Answer = tuple[list[int], list[tuple[int, str]]]


def resync(
    server: mb.MailServer, validity: int, modseq: int
) -> tuple[float, tuple[Answer, Answer]]:
    """The timed resync; returns its wall time and what it learnt (vanished UIDs, and
    (UID, flags) of the changed messages, from the SELECT and from the UID FETCH)."""
    conn = connect(server)
    _check(*conn.enable("QRESYNC"), "ENABLE")
    conn.untagged_responses.clear()
    started = time.perf_counter()
    typ, data = conn._simple_command("SELECT", "INBOX", f"(QRESYNC ({validity} {modseq}))")
    _check(typ, data, "SELECT (QRESYNC)")
    conn.state = "SELECTED"
    selected = (
        conn.untagged_responses.pop("VANISHED", []),
        conn.untagged_responses.pop("FETCH", []),
    )
    typ, data = conn.uid("FETCH", "1:*", "(FLAGS)", f"(CHANGEDSINCE {modseq} VANISHED)")
    elapsed = time.perf_counter() - started
    _check(typ, data, "UID FETCH (CHANGEDSINCE VANISHED)")
    fetched = (conn.untagged_responses.pop("VANISHED", []), [d for d in data if d])
    conn.logout()
    return elapsed, (_answer(*selected), _answer(*fetched))


def _answer(
    vanished: list[bytes], fetches: list[object]
) -> tuple[list[int], list[tuple[int, str]]]:
    # The UID sets expanded: servers may write the same set differently ("2:3" or "2,3").
    uids: list[int] = []
    for line in vanished:
        for part in line.decode().removeprefix("(EARLIER) ").split(","):
            first, _, last = part.partition(":")
            uids += range(int(first), int(last or first) + 1)
    changed = []
    for line in fetches:
        if not isinstance(line, bytes):
            continue
        uid = re.search(rb"UID (\d+)", line)
        flags = re.search(rb"FLAGS \(([^)]*)\)", line)
        if uid is not None and flags is not None:
            names = sorted(f for f in flags.group(1).decode().split() if f != "\\Recent")
            changed.append((int(uid.group(1)), " ".join(names)))
    return sorted(uids), sorted(changed)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--changes", type=int, default=100)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--tmpdir", type=Path)
    args = p.parse_args(argv)
    try:
        with side_by_side("imap-qresync-", args.messages, args.tmpdir) as both:
            exp, servers = both.exp, both.servers
            print(
                f"{exp.messages} messages, {exp.crlf_bytes / mb.MIB:.1f} MiB,"
                f" {args.changes} changes",
                flush=True,
            )
            states = {name: baseline(server) for name, server in servers}
            for _name, server in servers:
                change(server, args.messages, args.changes)
            times: dict[str, list[float]] = {}
            answers: dict[str, tuple[Answer, Answer]] = {}
            for rep in range(args.reps):
                order = servers if rep % 2 == 0 else servers[::-1]
                for name, server in order:
                    elapsed, answer = resync(server, *states[name])
                    times.setdefault(name, []).append(elapsed)
                    if answers.setdefault(name, answer) != answer:
                        raise procs.ServerError(f"{name} answered differently at rep {rep}")
            label = "SELECT (QRESYNC) + UID FETCH (CHANGEDSINCE VANISHED)"
            print(f"\n{'':<56}{'first ms':>10}{'warm ms':>10}{'dovecot/ours':>14}")
            warm = {name: statistics.median(times[name][1:] or times[name]) for name, _ in servers}
            for name, _server in servers:
                ratio = f"{warm['dovecot'] / warm['sansmail']:.2f}x" if name == "dovecot" else ""
                print(
                    f"{label + ' ' + name:<56}{times[name][0] * 1000:>10.1f}"
                    f"{warm[name] * 1000:>10.1f}{ratio:>14}"
                )
            for name, (at_select, at_fetch) in answers.items():
                print(
                    f"{name}: SELECT {len(at_select[0])} vanished, {len(at_select[1])} changed;"
                    f" UID FETCH {len(at_fetch[0])} vanished, {len(at_fetch[1])} changed"
                )
            if len(servers) == 2:
                same = answers["sansmail"] == answers["dovecot"]
                print(f"answers {'identical' if same else 'DIFFER'}")
                if not same:
                    print(f"  sansmail {answers['sansmail']}\n  dovecot  {answers['dovecot']}")
                    return 1
    except procs.ServerError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
