"""pg_bench.py end to end at tiny sizes: the three setups (Maildir, PostgreSQL on one
node, on two) each deliver every message and answer every IMAP phase correctly, the
ratios, the profile and the picture are made (the figures themselves are the bench's,
not a test's). Needs Debian's PostgreSQL server binaries, as the storage tests do."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from pg_bench import IMAP_PHASES, SETUPS, main, postgres_missing, summarize_stacks

TINY = [
    *("--messages", "12", "--concurrency", "2", "--reps", "1", "--idle", "0"),
    *("--imap-messages", "20", "--imap-reps", "1", "--clients", "2"),
]


@pytest.mark.skipif(postgres_missing() is not None, reason="no PostgreSQL server binaries")
def test_a_tiny_run_measures_every_setup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures.json"
    png = tmp_path / "figures.png"
    status = main([*TINY, "--profile", "--json", str(out), "--png", str(png)])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    data = json.loads(out.read_text())
    assert data["failures"] == []
    measured = [p for p in data["passes"] if not p["profiled"]]
    assert sorted(p["setup"] for p in measured) == sorted(SETUPS)
    for rec in measured:
        assert rec["ok"], rec["problems"]
        assert rec["msgs_per_s"] > 0
        assert rec["p99_ms"] >= rec["p50_ms"] > 0
        if rec["setup"] != "maildir":
            assert rec["pg"]["commits"] >= 1  # the deliveries' transactions, at least
    assert set(data["ratios"]["delivery"]) == {"pg1/maildir c=2", "pg2/pg1 c=2"}
    assert set(data["ratios"]["imap"]) == {"pg1/maildir", "pg2/pg1"}
    for rep in data["imap"]:
        assert set(rep["walls"]) == set(IMAP_PHASES)
    every = {(setup, rep) for setup in SETUPS for rep in (0, 1)}
    assert {(r["setup"], r["rep"]) for r in data["imap"]} == every
    assert set(data["profiles"]) == {"pg1", "pg2"}
    for profile in data["profiles"].values():
        assert profile["waits"]["samples"] > 0
        assert any("mail_folders" in row["query"] for row in profile["statements"])
        if shutil.which("py-spy") is not None:
            assert profile["py_spy"]["samples"] >= 0
    assert "pg2/pg1 c=2" in printed.out
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.stat().st_size > 0
    else:
        assert not png.exists()


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--setups", "pg2", "--clients", "1"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["--setups", "maildir,cassandra"])
    assert exc.value.code == 2


def test_stacks_are_charged_to_their_leaf(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    root = 'process 1:"serve";main (sansmail_trio/_cli.py:1);_child (sansmail_trio/_run.py:2)'
    raw.write_text(
        f"{root};commit_many (sansmail/storage/pg/_delivery.py:9);"
        "wait (psycopg/connection.py:5) 3\n"
        f"{root};get_events (trio/_core/_io_epoll.py:7) 1\n"
        "not a stack line\n"
    )
    summary = summarize_stacks([raw])
    assert summary["samples"] == 4
    assert dict(summary["categories"]) == {
        "psycopg: waiting for the database": 3,
        "trio (event loop, worker threads)": 1,
    }
    assert summary["own"][0] == ("wait (connection.py)", 3)
    under = dict(summary["under"])
    assert under["commit_many (_delivery.py)"] == 3
    assert "main (_cli.py)" not in under  # the roots every sample shares say nothing
