"""What a RCPT's catch-up with other nodes' user and alias changes costs on PostgreSQL.

On the PostgreSQL backend every RCPT first reads the ``account_changes`` serials
(`sansmail.storage.pg._changes.catch_up`), so that a ``user add`` or ``newaliases`` on
any node is in force for it. This bench times that call as the server makes it (one
autocommit statement) beside the same query in a transaction (BEGIN, SELECT, COMMIT: how
it was first written), interleaved in one run on a private cluster, so the two are
measured under the same load. The delivery a RCPT leads to costs milliseconds (see
pg_bench.py); this is the part the catch-up adds.

    python3 bench/pg_lookup_bench.py [--calls 1000] [--rounds 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import bench_procs as procs


def _repo_imports() -> None:
    """The checkout's sansmail and tests/pgcluster.py."""
    for path in (procs.REPO_DIR, procs.REPO_DIR / "tests"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def measure(calls: int, rounds: int) -> dict[str, list[float]]:
    """Microseconds per call, one figure per round, of each way."""
    _repo_imports()
    import pgcluster  # noqa: PLC0415  (tests/, put on the path just above)

    from sansmail.storage.pg import Database, migrate  # noqa: PLC0415
    from sansmail.storage.pg._aliases import PgAliasSource  # noqa: PLC0415
    from sansmail.storage.pg._changes import catch_up  # noqa: PLC0415
    from sansmail.storage.pg._users import PgUserStore  # noqa: PLC0415

    bindir = pgcluster.find_bindir()
    if bindir is None:
        raise SystemExit("no PostgreSQL server binaries (apt-get install postgresql)")
    cluster = pgcluster.Cluster(bindir)
    cluster.start()
    try:
        cluster.execute("CREATE DATABASE lookups")
        db = Database(cluster.dsn("lookups"))
        try:
            migrate(db)
            users = PgUserStore(db)
            users.reload_if_changed()
            followers = {"users": users, "aliases": PgAliasSource(db)}

            def as_served() -> None:
                catch_up(db, followers)

            def in_a_transaction() -> None:
                with db.transaction() as cur:
                    cur.execute("SELECT what, serial FROM account_changes")
                    cur.fetchall()

            ways: dict[str, Callable[[], None]] = {
                "autocommit statement (as served)": as_served,
                "transaction (BEGIN, SELECT, COMMIT)": in_a_transaction,
            }
            for way in ways.values():  # warm: connections made, plans cached
                for _ in range(calls // 3):
                    way()
            figures: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(rounds):
                for name, way in ways.items():
                    started = time.perf_counter()
                    for _ in range(calls):
                        way()
                    figures[name].append((time.perf_counter() - started) / calls * 1e6)
            return figures
        finally:
            db.close()
    finally:
        cluster.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=10, help="default 10")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    figures = measure(args.calls, args.rounds)
    for name, values in figures.items():
        print(
            f"{name:38} {statistics.median(values):7.0f} us per call"
            f" (min {min(values):.0f}, max {max(values):.0f};"
            f" {args.rounds} rounds of {args.calls})"
        )
    served, transaction = (statistics.median(v) for v in figures.values())
    print(f"ratio as served / transaction: {served / transaction:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
