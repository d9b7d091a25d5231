"""`sansmail-trio sieve check FILE`: silent and 0 for a good script, FILE:LINE:COLUMN:
message and 1 for a bad one, without reading any configuration."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from sansmail_trio._cli import main

GOOD = """require ["fileinto", "vacation"];
if header :contains "list-id" "<dev.lists.example.com>" {
    fileinto "Lists/dev";
} elsif address :is "from" "boss@example.com" {
    vacation :days 3 "Back on Monday.";
}
"""


@pytest.fixture
def check(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]):
    def run(content: str | bytes) -> tuple[int, str, str, pathlib.Path]:
        path = tmp_path / "script.sieve"
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        status = main(["sieve", "check", str(path)])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return status, out, err, path

    return run


def test_good_script_prints_nothing(check) -> None:
    status, out, err, _ = check(GOOD)
    assert (status, out, err) == (0, "", "")


def test_bad_script_gives_file_line_column(check) -> None:
    status, out, err, path = check(GOOD.replace('"Lists/dev"', '"Lists/dev" "x"'))
    assert status == 1
    assert out == ""
    assert (
        err == f"{path}:3:26: the fileinto command takes 1 positional argument, but 2 were found\n"
    )


def test_missing_require(check) -> None:
    status, _, err, path = check('keep;\nif true { redirect :copy "a@example.com"; }\n')
    assert status == 1
    assert err.startswith(f"{path}:2:20: unknown tagged argument ':copy'")


def test_not_utf8(check) -> None:
    status, _, err, path = check(b'keep;\nfileinto "caf\xe9";\n')
    assert status == 1
    assert err == f"{path}:2:14: the script is not valid UTF-8\n"


def test_missing_file(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sieve", "check", str(tmp_path / "nope.sieve")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"sansmail-trio sieve check: {tmp_path / 'nope.sieve'}: ")
    assert "Traceback" not in err


def test_as_a_program(tmp_path: pathlib.Path) -> None:
    # The real entry point, as an admin runs it: exit status and standard error.
    path = tmp_path / "bad.sieve"
    path.write_text('require "frobnicate";\n')
    done = subprocess.run(
        [sys.executable, "-m", "sansmail_trio", "sieve", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == f"{path}:1:9: require command: unknown Sieve capability 'frobnicate'\n"


def test_too_large(check) -> None:
    # Read no further than the limit: a huge file is refused, not loaded.
    status, _, err, path = check("keep;\n" * 200_000)
    assert status == 1
    assert err == f"{path}:1:1: script is too large (max {1 << 20} bytes)\n"
