"""The `sansmail-trio` command: exit statuses, one-line errors, the user commands, and
check-config, run in-process; plus real runs of the installed console script."""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from argon2 import PasswordHasher

from sansmail import __version__
from sansmail.config import Config
from sansmail.users import UserStore
from sansmail_trio import _cli
from sansmail_trio._cli import main

CONFIG = """\
hostname = "mx.example.test"
domains = ["example.test", "other.example"]
data_dir = "data"
[listen]
smtp = "127.0.0.1:0"
"""

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture(autouse=True)
def fast_hashes(monkeypatch):
    monkeypatch.setattr(_cli, "_user_store", lambda config: _store(config.data_dir))


def _store(data_dir: pathlib.Path) -> UserStore:
    return UserStore(data_dir / "users.json", hasher=FAST)


@pytest.fixture
def config_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "etc" / "sansmail.toml"
    path.parent.mkdir()
    path.write_text(CONFIG)
    return path


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Run:
    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        self.out = self.err = ""

    def __call__(self, *argv: str, stdin: str = "", tty: bool = False) -> int:
        self.monkeypatch.setattr(sys, "stdin", (_Terminal if tty else io.StringIO)(stdin))
        status = main(list(argv))
        self.out, self.err = self.capsys.readouterr()
        assert "Traceback" not in self.err
        return status

    def usage(self, *argv: str) -> int:
        with pytest.raises(SystemExit) as info:
            main(list(argv))
        self.out, self.err = self.capsys.readouterr()
        assert isinstance(info.value.code, int)
        return info.value.code

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


@pytest.fixture
def run(capsys, monkeypatch) -> Run:
    return Run(capsys, monkeypatch)


# --- users ------------------------------------------------------------------------------


def test_user_add_then_list(run, config_file):
    conf = str(config_file)
    assert (
        run(
            "user",
            "add",
            "Alice@Example.Test",
            "--password-stdin",
            "--config",
            conf,
            stdin="s3cret pass\n",
        )
        == 0
    )
    assert run.out == "added Alice@example.test\n"
    assert run("--config", conf, "user", "list") == 0
    assert run.out == "Alice@example.test\n"
    data = config_file.parent / "data"
    assert (data.stat().st_mode & 0o777) == 0o700
    store = _store(data)
    # Only the trailing newline is stripped: the space inside is part of the password.
    assert store.verify_password("alice@example.test", "s3cret pass")


def test_user_add_duplicate(run, config_file):
    conf = str(config_file)
    assert (
        run("user", "add", "bob@example.test", "--password-stdin", "--config", conf, stdin="pw\n")
        == 0
    )
    assert (
        run("user", "add", "BOB@example.test", "--password-stdin", "--config", conf, stdin="pw\n")
        == 1
    )
    assert run.out == ""
    [line] = run.err_lines
    assert line.startswith("sansmail-trio: user add: ")
    assert "already exists" in line


def test_user_del(run, config_file):
    conf = str(config_file)
    for address in ("a@example.test", "b@other.example"):
        assert run("user", "add", address, "--password-stdin", "--config", conf, stdin="x") == 0
    assert run("user", "del", "A@example.test", "--config", conf) == 0
    assert run("user", "list", "--config", conf) == 0
    assert run.out == "b@other.example\n"
    assert run("user", "del", "a@example.test", "--config", conf) == 1
    [line] = run.err_lines
    assert "no such user" in line


def test_user_passwd(run, config_file):
    conf = str(config_file)
    assert (
        run("user", "add", "a@example.test", "--password-stdin", "--config", conf, stdin="old\n")
        == 0
    )
    assert (
        run(
            "user",
            "passwd",
            "a@example.test",
            "--password-stdin",
            "--config",
            conf,
            stdin="new\r\n",
        )
        == 0
    )
    store = _store(config_file.parent / "data")
    assert store.verify_password("a@example.test", "new")
    assert not store.verify_password("a@example.test", "old")
    assert (
        run("user", "passwd", "z@example.test", "--password-stdin", "--config", conf, stdin="new\n")
        == 1
    )
    [line] = run.err_lines
    assert line == "sansmail-trio: user passwd: no such user: z@example.test"


def test_address_outside_domains_refused(run, config_file):
    assert (
        run(
            "user",
            "add",
            "a@elsewhere.example",
            "--password-stdin",
            "--config",
            str(config_file),
            stdin="pw\n",
        )
        == 1
    )
    [line] = run.err_lines
    assert "elsewhere.example is not one of the configured domains" in line
    assert "example.test, other.example" in line
    assert not (config_file.parent / "data" / "users.json").exists()


@pytest.mark.parametrize("address", ["no-at-sign", "a@@example.test", "a b@example.test", ""])
def test_bad_address(run, config_file, address):
    assert (
        run("user", "add", address, "--password-stdin", "--config", str(config_file), stdin="pw\n")
        == 1
    )
    [line] = run.err_lines
    assert "is not a valid address" in line


@pytest.mark.parametrize("stdin", ["", "\n", "\r\n"])
def test_empty_password_refused(run, config_file, stdin):
    assert (
        run(
            "user",
            "add",
            "a@example.test",
            "--password-stdin",
            "--config",
            str(config_file),
            stdin=stdin,
        )
        == 1
    )
    [line] = run.err_lines
    assert line == "sansmail-trio: user add: empty password refused"


def test_password_prompt_needs_a_terminal(run, config_file):
    assert run("user", "add", "a@example.test", "--config", str(config_file)) == 1
    [line] = run.err_lines
    assert "not a terminal" in line
    assert "--password-stdin" in line


def _fake_terminal(monkeypatch, answers: list[str]) -> list[str]:
    prompts: list[str] = []

    def getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return answers.pop(0)

    monkeypatch.setattr(_cli.getpass, "getpass", getpass)
    return prompts


def test_password_prompted_twice(run, config_file, monkeypatch):
    prompts = _fake_terminal(monkeypatch, ["hunter2", "hunter2"])
    assert run("user", "add", "a@example.test", "--config", str(config_file), tty=True) == 0
    assert len(prompts) == 2
    assert _store(config_file.parent / "data").verify_password("a@example.test", "hunter2")


def test_password_prompts_must_match(run, config_file, monkeypatch):
    _fake_terminal(monkeypatch, ["hunter2", "hunter3"])
    assert run("user", "add", "a@example.test", "--config", str(config_file), tty=True) == 1
    [line] = run.err_lines
    assert line == "sansmail-trio: user add: the passwords do not match"


def test_user_list_empty_creates_nothing(run, config_file):
    assert run("user", "list", "--config", str(config_file)) == 0
    assert run.out == ""
    assert not (config_file.parent / "data").exists()


def test_broken_users_file(run, config_file):
    data = config_file.parent / "data"
    data.mkdir()
    (data / "users.json").write_text("{not json")
    assert run("user", "list", "--config", str(config_file)) == 1
    assert len(run.err_lines) == 1
    assert run.err.startswith("sansmail-trio: user list: ")


def test_data_dir_is_a_file(run, config_file):
    (config_file.parent / "data").write_text("")
    assert (
        run(
            "user",
            "add",
            "a@example.test",
            "--password-stdin",
            "--config",
            str(config_file),
            stdin="pw\n",
        )
        == 1
    )
    assert len(run.err_lines) == 1
    assert run.err.startswith("sansmail-trio: user add: ")


# --- check-config ---------------------------------------------------------------------


def test_check_config_good(run, config_file):
    assert run("check-config", "--config", str(config_file)) == 0
    assert (
        run.out == f"config OK: {config_file}, 1 listeners, domains example.test, other.example\n"
    )
    # postmaster@<first domain> has no user yet (CONTRACT.md "Where mail lives").
    [warning] = [line for line in run.err_lines if "postmaster" in line]
    assert warning.startswith("warning: no user postmaster@example.test")
    assert "user add postmaster@example.test" in warning


def test_check_config_postmaster_user_silences_the_warning(run, config_file):
    conf = str(config_file)
    assert (
        run(
            "user",
            "add",
            "Postmaster@example.test",
            "--password-stdin",
            "--config",
            conf,
            stdin="pw\n",
        )
        == 0
    )
    assert run("--config", conf, "check-config") == 0
    assert "no user postmaster" not in run.err


def test_check_config_embedded_default(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("check-config") == 0
    assert run.out == "config OK: <embedded default>, 7 listeners, domains localhost\n"
    assert any("not built yet" in line for line in run.err_lines)
    assert all(line.startswith("warning: ") for line in run.err_lines)
    assert not (tmp_path / "sansmail-data").exists()  # checking writes nothing


def test_check_config_uses_sansmail_toml_in_cwd(run, config_file, monkeypatch):
    monkeypatch.chdir(config_file.parent)
    assert run("check-config") == 0
    assert run.out.startswith(f"config OK: {config_file}, ")


def test_check_config_bad(run, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('hostname = "mx.example.test"\n[smtp]\nbare_lf = "keep"\nmax_rcpt = 5\n')
    assert run("check-config", "--config", str(path)) == 1
    assert run.out == ""
    assert run.err_lines == [
        f'{path}:3: smtp.bare_lf: \'keep\' is not one of "normalize", "reject"',
        f"{path}:4: smtp.max_rcpt: unknown key; did you mean 'max_recipients'?",
    ]


@pytest.mark.parametrize(
    "content",
    [b"[[[", b"\xff\xfe garbage", b'hostname = "a"\nhostname = "b"\n', b"listen = []"],
)
@pytest.mark.parametrize("command", [["check-config"], ["serve"], ["user", "list"]])
def test_bad_config_never_a_traceback(run, tmp_path, content, command):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    assert run(*command, "--config", str(path)) == 1
    assert run.out == ""
    assert run.err_lines
    assert all(line.startswith(f"{path}") for line in run.err_lines)


def test_config_is_a_directory(run, tmp_path):
    assert run("check-config", "--config", str(tmp_path)) == 1
    [line] = run.err_lines
    assert line.startswith(f"{tmp_path}: cannot read")


def test_missing_config(run, tmp_path):
    assert run("user", "list", "--config", str(tmp_path / "nope.toml")) == 1
    [line] = run.err_lines
    assert line == f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory"


# --- serve ------------------------------------------------------------------------------


def test_serve_runs_the_loaded_config(run, config_file, monkeypatch):
    seen: list[Config] = []

    def fake_run(config: Config) -> int:
        seen.append(config)
        return 3

    monkeypatch.setattr(_cli, "run", fake_run)
    assert run("--config", str(config_file), "serve") == 3
    [config] = seen
    assert config.hostname == "mx.example.test"
    assert config.data_dir == config_file.parent / "data"


def test_serve_bad_config_starts_nothing(run, tmp_path, monkeypatch):
    monkeypatch.setattr(_cli, "run", lambda config: pytest.fail("must not start"))
    path = tmp_path / "bad.toml"
    path.write_text("[listen]\nsmtp = 25\n")
    assert run("serve", "--config", str(path)) == 1
    assert run.err_lines == [
        f"{path}:2: listen.smtp: expected a string or an array of strings, not an integer 25"
    ]


# --- commands not built yet, usage ----------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["newaliases"], "newaliases: aliases are not supported yet in this version"),
        (["queue", "list"], "queue list: the outbound queue is not supported yet"),
        (["queue", "flush"], "queue flush: the outbound queue is not supported yet"),
        (["queue", "delete", "4FxK2"], "queue delete: the outbound queue is not supported yet"),
        (["dkim", "keygen", "example.test"], "dkim keygen: DKIM signing is not supported yet"),
        (
            ["dkim", "keygen", "example.test", "--selector", "s1", "--config", "x.toml"],
            "dkim keygen: DKIM signing is not supported yet",
        ),
    ],
)
def test_not_built_yet(run, argv, line):
    assert run(*argv) == 1
    [only] = run.err_lines
    assert only.startswith(f"sansmail-trio: {line}")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["user"],
        ["user", "add"],
        ["user", "frob", "a@example.test"],
        ["queue", "delete"],
        ["dkim", "keygen"],
        ["check-config", "--config"],
        ["user", "list", "extra"],
    ],
)
def test_usage_errors_exit_2(run, argv):
    assert run.usage(*argv) == 2
    assert "usage: sansmail-trio" in run.err


def test_version(run):
    assert run.usage("--version") == 0
    assert run.out == f"sansmail-trio {__version__}\n"


@pytest.mark.parametrize(
    ("argv", "phrases"),
    [
        (
            [],
            [
                "./sansmail.toml",
                "embedded",
                "Maildir",
                "<data_dir>/mail/<domain>/<local-part>/",
                "examples:",
                "check-config",
                "serve",
                "user",
            ],
        ),
        (["serve"], ["SIGTERM", "shutdown_grace", "--config FILE", "examples:"]),
        (["check-config"], ["file:line: key: message", 'domains = ["localhost"]', "example:"]),
        (["user"], ["users.json", "Maildir", "--password-stdin", "user del"]),
        (["user", "add"], ["ADDRESS", "--password-stdin", "standard input", "examples:"]),
        (["user", "passwd"], ["ADDRESS", "--password-stdin"]),
        (["user", "del"], ["ADDRESS"]),
        (["user", "list"], ["users.json"]),
        (["newaliases"], ["not supported yet"]),
        (["queue"], ["mailq", "postsuper -d"]),
        (["queue", "delete"], ["ID"]),
        (["dkim", "keygen"], ["DOMAIN", "--selector NAME"]),
    ],
)
def test_help(run, argv, phrases):
    assert run.usage(*argv, "--help") == 0
    for phrase in phrases:
        assert phrase in run.out


# --- the real console script ---------------------------------------------------------


def _console(
    tmp_path: pathlib.Path, *argv: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    script = shutil.which("sansmail-trio")
    assert script is not None, "the sansmail-trio console script is not installed"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [script, *argv],
        cwd=tmp_path,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_console_script_user_add_and_list(tmp_path):
    (tmp_path / "sansmail.toml").write_text(CONFIG)
    added = _console(
        tmp_path, "user", "add", "carol@example.test", "--password-stdin", stdin="pw\n"
    )
    assert (added.returncode, added.stdout, added.stderr) == (0, "added carol@example.test\n", "")
    listed = _console(tmp_path, "user", "list")
    assert (listed.returncode, listed.stdout) == (0, "carol@example.test\n")


def test_console_script_bad_config(tmp_path):
    (tmp_path / "sansmail.toml").write_text('hostname = "mx.example.test"\ndomains = ["a b"]\n')
    checked = _console(tmp_path, "check-config")
    assert checked.returncode == 1
    # Found as ./sansmail.toml, so named as the user would type it.
    assert checked.stderr.startswith("sansmail.toml:2: domains: ")
    assert "Traceback" not in checked.stderr


def test_python_dash_m(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "sansmail_trio", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, f"sansmail-trio {__version__}\n")


def test_config_option_on_the_command_group(run, config_file):
    assert run("user", "--config", str(config_file), "list") == 0


def test_password_stdin_not_utf8(run, config_file, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfe\n"), "utf-8"))
    assert (
        main(["user", "add", "a@example.test", "--password-stdin", "--config", str(config_file)])
        == 1
    )
    err = run.capsys.readouterr().err
    assert err == "sansmail-trio: user add: the password read from standard input is not UTF-8\n"


def test_password_with_nul_refused(run, config_file):
    assert (
        run(
            "user",
            "add",
            "a@example.test",
            "--password-stdin",
            "--config",
            str(config_file),
            stdin="a\0b\n",
        )
        == 1
    )
    assert len(run.err_lines) == 1
    assert "NUL" in run.err


def test_config_path_with_nul(run):
    assert run("check-config", "--config", "a\0b") == 1
    [line] = run.err_lines
    assert "cannot read" in line
