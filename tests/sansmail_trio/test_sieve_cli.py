"""`sansmail-trio sieve put/get/list/activate/deactivate/delete`: an admin managing users'
Sieve scripts, in-process through main() and through the installed console script
(as root with mail_owner: the files are the server's)."""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys

import pytest
from argon2 import PasswordHasher
from test_privileges import (  # noqa: F401  (fixtures)
    base,
    owner,
    system_user,
    traversable,
)

from sansmail.mail.address import MailboxId, parse_address
from sansmail.storage.sieve import ACTIVE_LINK, SieveStore
from sansmail.storage.users import UserStore
from sansmail_trio import _cli
from sansmail_trio._cli import main
from sansmail_trio._privileges import Account

CONFIG = """\
hostname = "mx.example.test"
domains = ["example.test"]
data_dir = "data"
[listen]
smtp = "127.0.0.1:0"
"""
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ALICE = MailboxId(domain="example.test", local="alice")
AWAY = b"""\
require "vacation";
vacation :days 7 :subject "Away until 2 January"
  "I am away until 2 January. For anything urgent, write to bob@example.test.";
"""


@pytest.fixture(autouse=True)
def fast_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        _cli, "_user_store", lambda config: UserStore(config.data_dir / "users.json", hasher=FAST)
    )


@pytest.fixture
def conf(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "sansmail.toml"
    path.write_text(CONFIG)
    (tmp_path / "data").mkdir()
    UserStore(tmp_path / "data" / "users.json", hasher=FAST).add(
        parse_address("Alice@example.test"), "pw"
    )
    return path


@pytest.fixture
def scripts(tmp_path: pathlib.Path) -> SieveStore:
    return SieveStore(tmp_path / "data")


class Run:
    def __init__(
        self,
        capfdbinary: pytest.CaptureFixture[bytes],
        monkeypatch: pytest.MonkeyPatch,
        conf: pathlib.Path,
    ) -> None:
        self.capture = capfdbinary
        self.monkeypatch = monkeypatch
        self.conf = conf
        self.out = b""
        self.err = ""

    def __call__(self, *argv: str, stdin: bytes = b"") -> int:
        self.monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        status = main(["sieve", *argv, "--config", str(self.conf)])
        sys.stdout.flush()
        captured = self.capture.readouterr()
        self.out, self.err = captured.out, captured.err.decode()
        assert "Traceback" not in self.err
        return status

    @property
    def text(self) -> str:
        return self.out.decode()


@pytest.fixture
def run(
    capfdbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch, conf: pathlib.Path
) -> Run:
    return Run(capfdbinary, monkeypatch, conf)


def test_an_admin_sets_a_vacation_reply_then_removes_it(
    run: Run, scripts: SieveStore, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "away.sieve").write_bytes(AWAY)
    assert run("put", "alice@example.test", "away", str(tmp_path / "away.sieve"), "--activate") == 0
    assert run.text == "stored script 'away' for alice@example.test (active)\n"
    assert scripts.active(ALICE) == ("away", AWAY)
    home = tmp_path / "data" / "sieve" / "example.test" / "alice"
    assert os.readlink(home / ACTIVE_LINK) == "away.sieve"

    assert run("list", "alice@example.test") == 0
    assert run.text == "away (active)\n"
    assert run("get", "ALICE@example.test", "away") == 0
    assert run.out == AWAY

    assert run("deactivate", "alice@example.test") == 0
    assert run.text == "script 'away' is no longer active for alice@example.test\n"
    assert scripts.list(ALICE) == [("away", False)]
    assert run("delete", "alice@example.test", "away") == 0
    assert run.text == "deleted script 'away' of alice@example.test\n"
    assert scripts.list(ALICE) == []


def test_put_from_standard_input_without_activating(run: Run, scripts: SieveStore) -> None:
    scripts.put(ALICE, "main", b"keep;\n")
    scripts.activate(ALICE, "main")
    assert run("put", "alice@example.test", "away", "-", stdin=AWAY) == 0
    assert run("put", "alice@example.test", "other", stdin=b"discard;\n") == 0  # - by default
    assert run.text == "stored script 'other' for alice@example.test\n"
    assert scripts.list(ALICE) == [("away", False), ("main", True), ("other", False)]
    assert scripts.get(ALICE, "away") == AWAY


def test_put_replaces_a_script(run: Run, scripts: SieveStore) -> None:
    assert run("put", "alice@example.test", "main", stdin=b"keep;\n") == 0
    assert run("put", "alice@example.test", "main", stdin=AWAY) == 0
    assert scripts.get(ALICE, "main") == AWAY


def test_put_of_a_bad_script_prints_where_and_stores_nothing(
    run: Run, scripts: SieveStore, tmp_path: pathlib.Path
) -> None:
    bad = tmp_path / "bad.sieve"
    bad.write_bytes(b'keep;\nfileinto "Lists";\n')  # fileinto without its require
    assert run("put", "alice@example.test", "bad", str(bad)) == 1
    [line] = run.err.splitlines()
    assert line.startswith(f"{bad}:2:1: "), line
    assert run.out == b""
    assert scripts.list(ALICE) == []
    assert run("put", "alice@example.test", "bad", stdin=b"keep;\n\xff") == 1
    assert run.err == "<stdin>:2:1: the script is not valid UTF-8\n"
    assert run("put", "alice@example.test", "bad", stdin=b"if true {") == 1
    assert run.err.startswith("<stdin>:1:")
    assert scripts.list(ALICE) == []


def test_put_over_quota_stores_nothing(run: Run, scripts: SieveStore) -> None:
    for number in range(10):  # 10 MiB in all, the default quota's
        scripts.put(ALICE, f"big{number}", b"#" * (1 << 20))
    assert run("put", "alice@example.test", "main", stdin=b"keep;\n") == 1
    assert run.err == (
        "sansmail-trio: sieve put: alice@example.test: over the Sieve quota (maxstorage):"
        " a user's scripts may have at most 10485760 octets in all\n"
    )
    assert len(scripts.list(ALICE)) == 10
    too_big = b"#" * ((1 << 20) + 1)
    assert run("put", "alice@example.test", "main", stdin=too_big) == 1
    assert run.err.startswith("<stdin>:1:1: script is too large")


def test_unknown_users_and_bad_names_are_refused(run: Run, tmp_path: pathlib.Path) -> None:
    for argv in (
        ("put", "bob@example.test", "main"),
        ("get", "bob@example.test", "main"),
        ("list", "bob@example.test"),
        ("activate", "bob@example.test", "main"),
        ("deactivate", "bob@example.test"),
        ("delete", "bob@example.test", "main"),
    ):
        assert run(*argv, stdin=b"keep;\n") == 1
        assert run.err == f"sansmail-trio: sieve {argv[0]}: no such user: bob@example.test\n"
    assert run("list", "alice@elsewhere.test") == 1
    assert "is not one of the configured domains" in run.err
    assert run("put", "alice@example.test", ".hidden", stdin=b"keep;\n") == 1
    assert run.err == (
        "sansmail-trio: sieve put: '.hidden': a script name must not start with \".\"\n"
    )
    assert run("get", "alice@example.test", "a/b") == 1
    assert run.err == "sansmail-trio: sieve get: 'a/b': a script name must not contain \"/\"\n"
    assert not (tmp_path / "data" / "sieve").exists()


def test_missing_scripts_and_the_active_one(run: Run, scripts: SieveStore) -> None:
    assert run("get", "alice@example.test", "main") == 1
    assert run.err == "sansmail-trio: sieve get: alice@example.test: no script named 'main'\n"
    assert run("activate", "alice@example.test", "main") == 1
    assert run.err == (
        "sansmail-trio: sieve activate: alice@example.test: no script named 'main'\n"
    )
    assert run("delete", "alice@example.test", "main") == 1
    assert run("deactivate", "alice@example.test") == 0
    assert run.text == "alice@example.test had no active script\n"
    scripts.put(ALICE, "main", b"keep;\n")
    assert run("activate", "alice@example.test", "main") == 0
    assert run.text == "script 'main' is active for alice@example.test\n"
    assert run("delete", "alice@example.test", "main") == 1
    assert run.err == (
        "sansmail-trio: sieve delete: alice@example.test: script 'main' is active:"
        " deactivate it first\n"
    )
    assert scripts.list(ALICE) == [("main", True)]


def test_list_plain_and_json(run: Run, scripts: SieveStore) -> None:
    assert run("list", "alice@example.test") == 0
    assert run.out == b""
    assert run("list", "alice@example.test", "--json") == 0
    assert json.loads(run.out) == []
    for name in ("vacation", "été", "main"):
        scripts.put(ALICE, name, b"keep;\n")
    scripts.activate(ALICE, "vacation")
    assert run("list", "alice@example.test") == 0
    assert run.text == "main\nvacation (active)\nété\n"
    assert run("list", "alice@example.test", "--json") == 0
    assert json.loads(run.out) == [
        {"name": "main", "active": False},
        {"name": "vacation", "active": True},
        {"name": "été", "active": False},
    ]


@pytest.mark.parametrize("action", ["put", "get", "list", "activate", "deactivate", "delete"])
def test_every_action_has_help_with_the_vacation_example(
    capsys: pytest.CaptureFixture[str], action: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["sieve", action, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "sansmail-trio sieve put alice@example.test away away.sieve --activate" in out
    assert "not built" not in out


def test_the_help_example_script_is_valid(tmp_path: pathlib.Path) -> None:
    (tmp_path / "away.sieve").write_bytes(AWAY)
    assert main(["sieve", "check", str(tmp_path / "away.sieve")]) == 0
    assert AWAY.decode() in _cli._SIEVE_EXAMPLES.replace("\n  ", "\n")


# --- the command run as a program --------------------------------------------------------


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="needs root and useradd: writing as mail_owner is root's",
)
def test_console_script_as_root_writes_as_mail_owner(
    owner: Account,  # noqa: F811  (the fixture imported above)
    base: pathlib.Path,  # noqa: F811
) -> None:
    text = CONFIG.replace(
        'data_dir = "data"\n', f'data_dir = "data"\nmail_owner = "{owner.name}"\n'
    )
    (base / "sansmail.toml").write_text(text)
    data = base / "data"
    data.mkdir(mode=0o700)
    UserStore(data / "users.json", hasher=FAST).add(parse_address("alice@example.test"), "pw")
    (base / "away.sieve").write_bytes(AWAY)
    # `python -m sansmail_trio` of this checkout, whatever the installed script points at.
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[2])}

    def console(*argv: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "sansmail_trio", "sieve", *argv],
            cwd=base,
            env=env,
            capture_output=True,
            check=False,
            timeout=60,
        )

    done = console("put", "alice@example.test", "away", str(base / "away.sieve"), "--activate")
    assert (done.returncode, done.stderr) == (0, b"")
    got = console("get", "alice@example.test", "away")
    assert (got.returncode, got.stdout) == (0, AWAY)
    home = data / "sieve" / "example.test" / "alice"
    for path in (data / "sieve", home.parent, home, *home.iterdir()):
        info = path.lstat()
        assert (info.st_uid, info.st_gid) == (owner.uid, owner.gid), path
        if stat.S_ISDIR(info.st_mode):
            assert stat.S_IMODE(info.st_mode) == 0o700, path
        elif stat.S_ISREG(info.st_mode):
            assert stat.S_IMODE(info.st_mode) == 0o600, path
    assert sorted(p.name for p in home.iterdir()) == [ACTIVE_LINK, ".sieve.lock", "away.sieve"]
