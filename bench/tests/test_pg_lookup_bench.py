"""pg_lookup_bench.py on a tiny load: both ways are timed, every round, and written out;
the figures themselves are the bench's, not a test's."""

import json
from pathlib import Path

import pytest
from pg_bench import postgres_missing
from pg_lookup_bench import main


@pytest.mark.skipif(postgres_missing() is not None, reason="no PostgreSQL server binaries")
def test_a_tiny_run_times_both_ways(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lookups.json"
    assert main(["--calls", "20", "--rounds", "2", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert set(figures) == {
        "autocommit statement (as served)",
        "transaction (BEGIN, SELECT, COMMIT)",
    }
    for values in figures.values():
        assert len(values) == 2
        assert all(value > 0 for value in values)
    assert "ratio as served / transaction:" in capsys.readouterr().out
