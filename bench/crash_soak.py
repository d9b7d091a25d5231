"""Crash consistency under load, the long version of tests/sansmail_trio/test_crash_load.py.

    python3 bench/crash_soak.py [--duration 600] [--kills 60] [--processes 2] [--seed 1]
        [--clients 2] [--imap-clients 1] [--weights 1,2,2] [--sigterm] [--keep DIR]

A real ``sansmail-trio serve`` with ``processes`` server processes under SMTP senders
(``--clients``: to local mailboxes and to a relayed domain whose next hop is an SMTP
sink on loopback), IMAP clients (``--imap-clients`` pairs: one APPENDs, one flags with
``UID STORE`` and ``UID MOVE``s to Archive) and one POP3 client (TOP, DELE, QUIT), all
at once, while ``--kills`` ``kill -9``s fall at random moments over ``--duration``
seconds on the master, a server process or the queue runner (``--weights``, in that
order). A killed master is started again at once, as systemd would; a killed child is
the master's to replace, and a master whose crash-loop guard stopped it (more than 5
deaths within 60 s, sansmail_trio/_run.py) is started again too and counted. Then the
clients stop, the queue drains, and what is there is counted against what was
acknowledged (the rules are in tests/sansmail_trio/crash_load.py, which this drives):

* lost: acknowledged (``250``, ``OK [APPENDUID]``) and absent: must be 0;
* duplicated: present more than once. A relayed message may arrive twice when the
  runner died between the sink's ``250`` and our note of it (RFC 5321 §6.1): those are
  counted apart, as "in the window", when a runner or master death falls between the
  two arrivals; any other duplicate is a failure;
* unacknowledged: sent without an answer (the kill fell mid-command); each may be
  there once or not at all (RFC 1047);
* half-written: a file in cur/ or new/ (or a relayed copy) that is not the whole
  message sent; UIDVALIDITY changes; a UID naming two messages over time, or UIDNEXT
  at or below a UID acknowledged earlier; flags acknowledged and missing; a POP3
  deletion answered ``+OK`` at QUIT that came back.

``--sigterm`` ends with SIGTERM instead of a last restart-and-drain, and then restarts:
the zero-loss, zero-duplicate stop. Exit status 1 when any rule is broken. Run under
the shared lock: ``flock /tmp/sansmail-bench.lock python3 bench/crash_soak.py ...``.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

TESTS_TRIO = pathlib.Path(__file__).resolve().parent.parent / "tests" / "sansmail_trio"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--kills", type=int, default=60, help="kill -9s over the duration")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=2, help="SMTP senders")
    parser.add_argument("--imap-clients", type=int, default=1, help="APPEND+MOVE/STORE pairs")
    parser.add_argument(
        "--weights", default="1,2,2", help="odds of killing the master,server,runner"
    )
    parser.add_argument("--sigterm", action="store_true", help="end with SIGTERM, restart")
    parser.add_argument("--keep", type=pathlib.Path, help="run in DIR and keep it")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(TESTS_TRIO))
    from crash_load import KINDS, Harness, Sink  # noqa: PLC0415 (a test helper, found at run time)

    weights = [float(w) for w in args.weights.split(",")]
    rng = random.Random(args.seed)
    kinds = rng.choices(KINDS, weights=weights, k=args.kills)
    folder = args.keep or pathlib.Path(tempfile.mkdtemp(prefix="crash-soak-"))
    began = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - began:7.1f}s] {text}", flush=True)

    with Sink() as sink:
        harness = Harness(
            folder,
            sink,
            processes=args.processes,
            seed=args.seed,
            smtp_clients=args.clients,
            imap_clients=args.imap_clients,
            log=say,
        )
        try:
            harness.start()
            harness.start_clients()
            harness.run_kills(args.duration, kinds)
            if args.sigterm:
                status = harness.terminate()
                say(f"SIGTERM: the master exited with status {status}")
            harness.stop_all_clients()
            if args.sigterm:
                harness.start()
            say("clients stopped; draining the queue")
            harness.drain(timeout=600)
            say("counting")
            found = harness.check()
        finally:
            harness.close()
    kills = collections.Counter(kill.kind for kill in harness.kills)
    rows = [
        ("processes, seed", f"{args.processes}, {args.seed}"),
        ("load", f"{args.duration:.0f} s, {args.clients} SMTP, {args.imap_clients}x2 IMAP, 1 POP3"),
        (
            "kills (kill -9)",
            f"{sum(kills[k] for k in KINDS)}: master {kills['master']}, "
            f"server process {kills['server']}, queue runner {kills['runner']}",
        ),
        ("crash-loop stops", str(kills["stopped"])),
        ("acknowledged SMTP", str(found.acked["smtp"])),
        ("acknowledged IMAP APPEND", str(found.acked["append"])),
        ("relayed copies at the sink", str(found.relayed)),
        ("POP3 deleted (+OK at QUIT)", str(found.pop3_deleted)),
        ("IMAP flags acknowledged", str(len(harness.flags))),
        ("unacknowledged (0 or 1 allowed)", f"{found.unacked}, {found.unacked_present} there"),
        ("LOST", str(found.lost)),
        ("duplicated, outside the window", str(found.duplicated)),
        ("duplicated, in the window", str(found.duplicated_in_window)),
        ("half-written files", str(found.half_written)),
        ("UIDVALIDITY changes", str(found.uidvalidity_changes)),
        ("UID reuse", str(found.uid_reuse)),
        ("flags lost", str(found.flags_lost)),
        ("POP3 deletions come back", str(found.pop3_reappeared)),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    errors = dict(harness.client_errors)
    print(f"client errors (the kills' visible side): {errors}")
    for problem in found.problems:
        print("PROBLEM:", problem)
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"kept: {folder}")
    return 1 if found.problems else 0


if __name__ == "__main__":
    sys.exit(main())
