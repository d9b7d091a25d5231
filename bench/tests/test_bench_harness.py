"""The whole harness, once, against aiosmtpd-maildir: the README's command in small."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_procs
import postfix_peer
import pytest
import smtp_bench

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
    for bad in (["--sizes", "huge"], ["--servers", "exim"], ["--concurrency", "0"]):
        done = subprocess.run(
            [sys.executable, str(SCRIPT), *bad], capture_output=True, text=True, check=False
        )
        assert done.returncode == 2, bad


def test_schedule_runs_every_server_once_per_cell_and_rotates_the_lead():
    cells = [(1024, 1), (1024, 10), (10240, 1)]
    order = smtp_bench.schedule(2, cells, ["s", "a", "p"])
    assert len(order) == 2 * 3 * 3
    assert [o[:2] for o in order[::3]] == [(r, c) for r in range(2) for c in cells]
    for i in range(0, len(order), 3):
        assert sorted(server for _, _, server in order[i : i + 3]) == ["a", "p", "s"]
    leads = [order[i][2] for i in range(0, len(order), 3)]
    assert leads == ["s", "a", "p", "a", "p", "s"]
    assert smtp_bench.schedule(1, cells, []) == []


@pytest.mark.skipif(
    bench_procs.find_smtp_source() is None or postfix_peer.PostfixServer.unavailable() is not None,
    reason="Postfix cannot run here",
)
def test_postfix_beside_aiosmtpd(tmp_path):
    # Postfix's delivery agent (nobody) must reach its Maildir, which it cannot below
    # pytest's 0700 folders: the bench's folder goes into one that lets it through.
    open_dir = Path(tempfile.mkdtemp(prefix="bench-harness-test-"))
    open_dir.chmod(0o711)
    try:
        done, data = run_bench(tmp_path, "--tmpdir", str(open_dir), *POSTFIX_ARGS)
        assert not list(open_dir.iterdir()), "the temporary folder was left behind"
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(r["server"], r["ok"], r["delivered"]) for r in data["runs"]] == [
        ("aiosmtpd", True, 20),
        ("postfix", True, 20),
    ]
    assert "### aiosmtpd / postfix" in done.stdout
    assert "load average (1 min)" in done.stdout
    assert data["machine"]["postfix"]
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")


POSTFIX_ARGS = (
    "--servers",
    "aiosmtpd,postfix",
    "--quick",
    "--concurrency",
    "3",
    "--messages",
    "20",
    "--no-latency",
)
