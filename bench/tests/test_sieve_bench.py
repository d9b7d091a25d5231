"""sieve_bench.py end to end on a tiny load: both kinds of run deliver every message and
the ratio line is printed (the figures themselves are the bench's, not a test's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sieve_bench import main


def test_a_tiny_run_delivers_both_ways(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figures.json"
    assert main(["--messages", "20", "--concurrency", "2", "--size", "1k", "--reps", "1",
                 "--json", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "delivered keep/none" in printed
    [run] = json.loads(out.read_text())
    assert set(run) == {"rep", "none", "keep", "ratio", "cpu_ratio"}
    assert run["keep"]["delivered_per_s"] > 0
    assert run["none"]["delivered_per_s"] > 0
