"""managesieve_bench.py on a tiny load: every session of both servers completes (the
script read back byte for byte, shown active) and the ratio line is printed; the figures
themselves are the bench's, not a test's. Dovecot needs root and dovecot-managesieved;
without them the bench says so and runs sansmail alone, as checked here too."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from managesieve_bench import SCRIPT, DovecotManageSieve, dovecot_conf, main

from sansmail.mail.sieve import parse

# 20 sessions, not fewer: the server's CPU is read in clock ticks (10 ms) per process,
# and 4 sessions' 20 ms over two server processes was once read as none at all.
TINY = ["--sessions", "20", "--clients", "2", "--reps", "1"]


def test_a_tiny_run_of_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figures.json"
    assert main([*TINY, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    [run] = json.loads(out.read_text())
    assert run["sansmail"]["sessions"] == 20
    assert run["sansmail"]["cpu_ms_per_session"] > 0
    why = DovecotManageSieve.unavailable()
    if why is not None:
        assert f"dovecot skipped: {why}" in printed
        assert "dovecot" not in run
        return
    assert run["dovecot"]["sessions"] == 20
    assert run["rate_ratio"] > 0
    assert "sansmail/dovecot sessions/s" in printed


def test_only_sansmail_with_a_picture(tmp_path: Path) -> None:
    out, png = tmp_path / "figures.json", tmp_path / "figures.png"
    assert main([*TINY, "--only", "sansmail", "--json", str(out), "--png", str(png)]) == 0
    [run] = json.loads(out.read_text())
    assert set(run) == {"rep", "sansmail"}
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.read_bytes().startswith(b"\x89PNG")
    else:
        assert not png.exists()


def test_the_script_is_one_both_servers_accept() -> None:
    # A script either server refused would make every PUTSCRIPT a NO, and the bench fail.
    parse(SCRIPT.decode())


def test_the_dovecot_config_serves_sieve_on_loopback_only(tmp_path: Path) -> None:
    conf = dovecot_conf(tmp_path, 4190)
    assert "protocols = sieve\n" in conf
    assert "listen = 127.0.0.1\n" in conf
    assert "    address = 127.0.0.1\n    port = 4190\n" in conf
    with pytest.raises(ValueError, match="not a port"):
        dovecot_conf(tmp_path, 0)
