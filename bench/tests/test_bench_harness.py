"""The whole harness, once, against aiosmtpd-maildir: the README's command in small."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import bench_procs
import pytest

SCRIPT = Path(bench_procs.__file__).with_name("smtp_bench.py")


def run_bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "out.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--servers",
            "aiosmtpd",
            "--sizes",
            "2k",
            "--idle",
            "0",
            "--json",
            str(out),
            "--tmpdir",
            str(work),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert not list(work.iterdir()), "the temporary folder was left behind"
    return done, json.loads(out.read_text())


def test_python_generator_matrix(tmp_path):
    done, data = run_bench(
        tmp_path,
        "--generator",
        "python",
        "--concurrency",
        "1,4",
        "--messages",
        "30",
        "--reps",
        "2",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    runs = data["runs"]
    assert len(runs) == 4  # 2 reps x 2 cells, no separate timing pass
    assert all(r["ok"] and r["delivered"] == 30 for r in runs)
    assert all(r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] for r in runs)
    assert all(r["server_cpu_user"] + r["server_cpu_sys"] > 0 for r in runs)
    assert "### aiosmtpd" in done.stdout
    assert "| 2 KiB | 4 |" in done.stdout
    assert data["machine"]["aiosmtpd"]


@pytest.mark.skipif(bench_procs.find_smtp_source() is None, reason="smtp-source not installed")
def test_smtp_source_pass_is_followed_by_a_timing_pass(tmp_path):
    done, data = run_bench(
        tmp_path, "--quick", "--concurrency", "3", "--messages", "20", "--latency-messages", "10"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    phases = [(r["phase"], r["generator"], r["messages"]) for r in data["runs"]]
    assert phases == [("throughput", "smtp-source", 20), ("latency", "python", 10)]
    assert data["runs"][0]["gen_cpu_user"] + data["runs"][0]["gen_cpu_sys"] > 0
    assert all(r["ok"] for r in data["runs"])


def test_usage_errors_exit_2(tmp_path):
    for bad in (["--sizes", "huge"], ["--servers", "postfix"], ["--concurrency", "0"]):
        done = subprocess.run(
            [sys.executable, str(SCRIPT), *bad], capture_output=True, text=True, check=False
        )
        assert done.returncode == 2, bad
