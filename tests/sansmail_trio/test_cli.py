"""The `sansmail-trio` command: exit statuses, one-line errors, the user commands, and
check-config, run in-process; plus real runs of the installed console script."""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import trustme
from argon2 import PasswordHasher

from sansmail import __version__
from sansmail.config import Config, not_in_force
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.storage.generations import Counter, Generations
from sansmail.storage.queue import QueueStore
from sansmail.storage.users import UserStore
from sansmail_trio import _cli, _run
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


def test_user_quota(run, config_file):
    conf = str(config_file)
    data = config_file.parent / "data"
    add = ("user", "add", "a@example.test", "--password-stdin", "--quota", "10M")
    assert run(*add, "--config", conf, stdin="pw\n") == 0
    assert _store(data).get("a@example.test").quota == 10 * 2**20
    assert run("user", "quota", "A@example.test", "--config", conf) == 0
    assert run.out == "a@example.test: limit 10485760 octets (own), used 0 octets (no mail yet)\n"
    maildir = data / "mail" / "example.test" / "a" / "cur"
    maildir.mkdir(parents=True)
    (maildir / "1.M1P1.h,S=10,W=12:2,S").write_bytes(b"x\n" * 5)
    assert run("user", "quota", "a@example.test", "2G", "--config", conf) == 0
    assert run.out == (
        "a@example.test: limit 2147483648 octets (own), used 12 octets in 1 messages\n"
    )
    assert (maildir.parent / "maildirsize").read_bytes() == b"2147483648S\n12 1\n"
    assert run("user", "quota", "a@example.test", "none", "--config", conf) == 0
    assert run.out.startswith("a@example.test: limit none (own), used 12 octets")
    assert _store(data).get("a@example.test").quota == 0
    assert run("user", "quota", "a@example.test", "default", "--config", conf) == 0
    assert run.out.startswith("a@example.test: limit none ([quota] storage), used 12")
    assert _store(data).get("a@example.test").quota is None
    assert run("user", "quota", "a@example.test", "lots", "--config", conf) == 1
    [line] = run.err_lines
    assert line.startswith("sansmail-trio: user quota: 'lots': expected a size like")
    assert run("user", "quota", "z@example.test", "1G", "--config", conf) == 1
    [line] = run.err_lines
    assert line == "sansmail-trio: user quota: z@example.test: no such user"


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
    assert run.out == "config OK: <embedded default>, 9 listeners, domains localhost\n"
    assert all(line.startswith("warning: ") for line in run.err_lines)
    # Every key of the embedded default is in force.
    assert not any("not built yet" in line for line in run.err_lines)
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

    monkeypatch.setattr(_run, "run", fake_run)
    assert run("--config", str(config_file), "serve") == 3
    [config] = seen
    assert config.hostname == "mx.example.test"
    assert config.data_dir == config_file.parent / "data"


def test_serve_bad_config_starts_nothing(run, tmp_path, monkeypatch):
    monkeypatch.setattr(_run, "run", lambda config: pytest.fail("must not start"))
    path = tmp_path / "bad.toml"
    path.write_text("[listen]\nsmtp = 25\n")
    assert run("serve", "--config", str(path)) == 1
    assert run.err_lines == [
        f"{path}:2: listen.smtp: expected a string or an array of strings, not an integer 25"
    ]


# --- newaliases and the aliases check -----------------------------------------------------


def _with_aliases(config_file: pathlib.Path, aliases: str) -> pathlib.Path:
    """Add `aliases = "aliases"` to the config and write that file; returns its path."""
    path = config_file.parent / "aliases"
    path.write_text(aliases)
    config_file.write_text('aliases = "aliases"\n' + CONFIG)
    return path


def _add_user(run: Run, config_file: pathlib.Path, address: str) -> None:
    argv = ("user", "add", address, "--password-stdin", "--config", str(config_file))
    assert run(*argv, stdin="pw\n") == 0


def test_newaliases_without_aliases_key(run, config_file):
    assert run("newaliases", "--config", str(config_file)) == 0
    assert run.out == f"newaliases: no aliases file: {config_file} has no 'aliases' key\n"
    assert run.err == ""


def test_newaliases_good(run, config_file):
    staff = config_file.parent / "staff"
    staff.write_text("alice\nbob\n")
    path = _with_aliases(
        config_file,
        f"postmaster: alice\nabuse: alice\nstaff: :include:{staff}\nsales: carol@remote.test\n",
    )
    for user in ("alice@example.test", "alice@other.example", "bob@example.test"):
        _add_user(run, config_file, user)
    assert run("newaliases", "--config", str(config_file)) == 0
    assert run.out == f"newaliases: 4 aliases in {path} (1 include file)\n"
    assert run.err == ""


def test_newaliases_role_accounts_reaching_nobody_are_warnings(run, config_file):
    path = _with_aliases(config_file, "postmaster: nobody-here\n")
    _add_user(run, config_file, "abuse@example.test")
    assert run("newaliases", "--config", str(config_file)) == 0
    assert run.out == f"newaliases: 1 alias in {path} (0 include files)\n"
    assert all(line.startswith("warning: ") for line in run.err_lines)
    warned = {line.split()[1] for line in run.err_lines}
    # abuse@example.test is a user; the rest reach nobody.
    assert warned == {
        "postmaster@example.test",
        "postmaster@other.example",
        "abuse@other.example",
    }
    assert "nobody-here@example.test: no such user or alias" in run.err


def test_newaliases_problems_with_file_and_line(run, config_file):
    inner = config_file.parent / "inner"
    inner.write_text("alice\n\nbad value\n")
    path = _with_aliases(
        config_file,
        f"postmaster: alice\nbin: |/bin/true\nlist: :include:{inner}\n"
        f"gone: :include:{config_file.parent / 'gone'}\n",
    )
    _add_user(run, config_file, "alice@example.test")
    assert run("newaliases", "--config", str(config_file)) == 1
    assert run.out == ""
    problems = [line for line in run.err_lines if not line.startswith("warning: ")]
    assert problems[0].startswith(f"{path}:2: '|command' targets are not supported")
    assert problems[1].startswith(f"{inner}:3: 'bad value': space outside quotes")
    assert problems[2] == (
        f"{path}:4: cannot read :include:{config_file.parent / 'gone'}: No such file or directory"
    )
    assert problems[3] == (
        f"sansmail-trio: newaliases: 3 problems in {path} or its include files; "
        "a running server uses the entries without problems"
    )
    assert len(problems) == 4


def test_newaliases_aliases_file_missing(run, config_file):
    path = _with_aliases(config_file, "a: b\n")
    path.unlink()
    assert run("newaliases", "--config", str(config_file)) == 1
    # Found by the configuration check, with the key that names the file.
    [line] = run.err_lines
    assert line.startswith(f"{config_file}:1: aliases: ")


def test_newaliases_aliases_file_not_utf8(run, config_file):
    path = _with_aliases(config_file, "")
    path.write_bytes(b"a: b\n\xff\n")
    assert run("newaliases", "--config", str(config_file)) == 1
    assert run.err_lines[0] == f"{path}: cannot read: not UTF-8 text (line 2)"
    assert run.err_lines[-1].startswith("sansmail-trio: newaliases: 1 problem in ")


def test_check_config_runs_the_aliases_check(run, config_file):
    path = _with_aliases(config_file, "postmaster: alice\nbroken line\n")
    _add_user(run, config_file, "alice@example.test")
    assert run("check-config", "--config", str(config_file)) == 1
    assert run.out == ""  # no "config OK"
    assert f"{path}:2: expected 'name: value, ...' (no ':' on this line)" in run.err_lines
    # Role accounts are checked through the aliases, as warnings.
    assert any(
        line.startswith("warning: abuse@example.test reaches no user") for line in run.err_lines
    )
    assert not any("postmaster@example.test reaches" in line for line in run.err_lines)


def test_check_config_good_aliases(run, config_file):
    _with_aliases(config_file, "postmaster: alice\n")
    _add_user(run, config_file, "alice@example.test")
    assert run("check-config", "--config", str(config_file)) == 0
    assert run.out.startswith("config OK: ")
    # The plain "no user postmaster" check gives way to the aliases.
    assert "no user postmaster" not in run.err


# --- queue ------------------------------------------------------------------------------


def _queue(config_file: pathlib.Path, queue_id: str, sender: str = "alice@example.test") -> None:
    store = QueueStore(config_file.parent / "data" / "queue")
    writer = store.begin(queue_id)
    writer.write(b"Subject: hi\r\n\r\nhello\r\n")
    writer.commit(
        QueuedMessage(
            queue_id=queue_id,
            sender=sender,
            arrival=1_700_000_000.0,
            size=0,
            recipients=(
                QueuedRecipient(
                    address="bob@remote.test",
                    attempts=1,
                    next_attempt=4_000_000_000.0,
                    last_reason="451 4.3.0 try later",
                ),
            ),
        )
    )


def _queued(config_file: pathlib.Path) -> list[str]:
    store = QueueStore(config_file.parent / "data" / "queue")
    return [message.queue_id for message in store.list()]


def test_queue_list_empty(run, config_file):
    assert run("queue", "list", "--config", str(config_file)) == 0
    assert run.out == "Mail queue is empty\n"
    assert not (config_file.parent / "data").exists()  # listing writes nothing


def test_queue_list(run, config_file):
    _queue(config_file, "A1B2")
    _queue(config_file, "C3D4", sender="")
    assert run("queue", "list", "--config", str(config_file)) == 0
    lines = run.out.splitlines()
    assert lines[0].startswith("-Queue ID-")
    assert lines[1].split()[:2] == ["A1B2", "22"]
    assert lines[1].endswith(" 2023 alice@example.test")
    assert "(451 4.3.0 try later; retry in " in lines[2]
    assert lines[3].strip() == "bob@remote.test"
    assert lines[5].startswith("C3D4 ")
    assert lines[5].endswith("MAILER-DAEMON")
    assert lines[-1] == "-- 1 Kbytes in 2 Requests."


def test_queue_list_json_has_postqueue_j_keys(run, config_file):
    _queue(config_file, "A1B2")
    _queue(config_file, "C3D4", sender="")
    assert run("queue", "list", "--json", "--config", str(config_file)) == 0
    first, second = (json.loads(line) for line in run.out.splitlines())
    assert first["queue_id"] == "A1B2"
    assert first["queue_name"] == "deferred"  # tried once, 451
    assert first["sender"] == "alice@example.test"
    assert isinstance(first["arrival_time"], int)
    assert first["message_size"] == 22
    (recipient,) = first["recipients"]
    assert recipient["address"] == "bob@remote.test"
    assert recipient["delay_reason"] == "451 4.3.0 try later"
    assert recipient["attempts"] == 1
    assert second["queue_id"] == "C3D4"
    assert second["sender"] == ""


def test_queue_list_json_of_an_empty_queue_prints_nothing(run, config_file):
    assert run("queue", "list", "--json", "--config", str(config_file)) == 0
    assert run.out == ""


def test_queue_delete(run, config_file):
    for queue_id in ("A1", "B2", "C3"):
        _queue(config_file, queue_id)
    assert run("queue", "delete", "A1", "C3", "--config", str(config_file)) == 0
    assert run.out == "deleted A1\ndeleted C3\n"
    assert _queued(config_file) == ["B2"]


def test_queue_delete_unknown_and_bad_ids(run, config_file):
    _queue(config_file, "A1")
    assert run("queue", "delete", "NOPE", "a1", "A1", "--config", str(config_file)) == 1
    assert run.out == "deleted A1\n"
    assert run.err_lines == [
        "sansmail-trio: queue delete: NOPE: no such message in the queue",
        "sansmail-trio: queue delete: 'a1' is not a queue id (upper-case letters and digits, "
        "as queue list shows them)",
    ]
    assert _queued(config_file) == []


def test_queue_delete_all(run, config_file):
    for queue_id in ("A1", "B2"):
        _queue(config_file, queue_id)
    assert run("queue", "delete", "ALL", "--config", str(config_file)) == 0
    assert run.out == "deleted A1\ndeleted B2\n"
    assert _queued(config_file) == []
    assert run("queue", "delete", "ALL", "--config", str(config_file)) == 0
    assert run.out == "Mail queue is empty: nothing deleted\n"


def test_queue_delete_all_must_be_alone(run, config_file):
    _queue(config_file, "A1")
    assert run("queue", "delete", "ALL", "A1", "--config", str(config_file)) == 1
    assert run.err_lines == [
        "sansmail-trio: queue delete: ALL deletes every message: give it alone"
    ]
    assert _queued(config_file) == ["A1"]


def test_queue_flush(run, config_file):
    _queue(config_file, "A1")
    assert run("queue", "flush", "--config", str(config_file)) == 0
    assert run.out.startswith("flush requested: the running server retries every deferred")
    store = QueueStore(config_file.parent / "data" / "queue")
    assert store.take_flush_request() is True
    assert _queued(config_file) == ["A1"]


def test_queue_flush_without_a_queue(run, config_file):
    assert run("queue", "flush", "--config", str(config_file)) == 0
    assert run.out == "Mail queue is empty: nothing to flush\n"
    assert not (config_file.parent / "data").exists()


# --- usage ----------------------------------------------------------------------------


def test_every_contract_command_is_in_the_help(run):
    assert run.usage("--help") == 0
    for command in ("serve", "check-config", "user", "newaliases", "queue", "dkim",
                    "dns-records", "sieve", "status", "reload", "who", "kick", "mailbox",
                    "storage"):  # fmt: skip
        assert f"    {command} " in run.out or f"    {command}\n" in run.out, command
    groups = {
        "user": ["add", "passwd", "del", "list"],
        "queue": ["list", "flush", "delete"],
        "dkim": ["keygen"],
        "sieve": ["check", "put", "get", "list", "activate", "deactivate", "delete"],
        "mailbox": ["list", "status", "resync", "expunge"],
        "storage": ["migrate", "export", "import"],
    }
    for group, actions in groups.items():
        assert run.usage(group, "--help") == 0
        for action in actions:
            assert f"    {action} " in run.out, (group, action)


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        # argparse lists the options first.
        (["dkim", "keygen"], "[--selector NAME] DOMAIN"),
        (["dns-records"], "[--check] DOMAIN"),
        (["sieve", "check"], "FILE"),
        (["sieve", "put"], "USER NAME [FILE|-]"),
        (["status"], "[--json]"),
        (["who"], "[--json]"),
        (["kick"], "USER"),
        (["mailbox", "expunge"], "--before DATE [--json] USER FOLDER"),
        (["mailbox", "status"], "[--json] USER [FOLDER]"),
        (["mailbox", "resync"], "[--json] USER [FOLDER]"),
        (["mailbox", "list"], "[--json] USER"),
        (["storage", "export"], "--to maildir DIR"),
        (["storage", "import"], "--from maildir DIR"),
        (["reload"], "[--config FILE]"),
    ],
)
def test_contract_arguments_in_usage(run, argv, usage):
    assert run.usage(*argv, "--help") == 0
    assert usage in " ".join(run.out.split()), run.out


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
        (["newaliases"], ["file:line: message", "in force", "include file", "newaliases after"]),
        (["queue"], ["mailq", "postqueue -f", "postsuper -d", "queue delete ALL"]),
        (["queue", "list"], ["mailq", "--config FILE"]),
        (["queue", "delete"], ["ID", "ALL"]),
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


# --- the CONTRACT's configuration example ---------------------------------------------

CONTRACT_EXAMPLE = pathlib.Path(__file__).parents[1] / "sansmail" / "contract_example.toml"


def _contract_example(tmp_path: pathlib.Path) -> pathlib.Path:
    """The CONTRACT's example file with the files it names: an aliases file and a TLS
    pair that loads."""
    path = tmp_path / "sansmail.toml"
    shutil.copy(CONTRACT_EXAMPLE, path)
    (tmp_path / "aliases").write_text("postmaster: alice\n")
    cert = trustme.CA().issue_cert("mx.example.test")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    return path


def test_check_config_of_the_contract_example(run, tmp_path):
    path = _contract_example(tmp_path)
    assert run("check-config", "--config", str(path)) == 0
    assert run.out == f"config OK: {path}, 10 listeners, domains example.test\n"
    assert all(line.startswith("warning: ") for line in run.err_lines), run.err
    not_in_force = [line for line in run.err_lines if "accepted but not in force yet" in line]
    keys = [line.removeprefix(f"warning: {path}: ").split(":")[0] for line in not_in_force]
    assert keys == []  # every listener of the example is built


def test_check_config_of_every_feature_not_built(run, tmp_path):
    path = _contract_example(tmp_path)
    (tmp_path / "before.sieve").write_text("keep;\n")
    text = path.read_text()
    for old, new in [
        ('log_format = "text"', 'log_format = "json"'),
        ("dnsbl = []", 'dnsbl = ["zen.spamhaus.org"]'),
        ("greylisting = false", "greylisting = true"),
        ('before = ""', 'before = "before.sieve"'),
        ('backend = "maildir"', 'backend = "postgresql"'),
        ('dsn = ""', 'dsn = "postgresql://sansmail@db.example.test/mail"'),
        ("storage = 0", 'storage = "10G"'),
        ("milters = []", 'milters = ["inet:127.0.0.1:8891"]'),
    ]:
        assert old in text
        text = text.replace(old, new, 1)
    path.write_text(text)
    assert run("check-config", "--config", str(path)) == 0
    assert all(line.startswith("warning: ") for line in run.err_lines), run.err
    # The sender checks, milters, quota, the site Sieve script, the JSON log and the
    # PostgreSQL backend are built: in force, so not reported.
    assert not [line for line in run.err_lines if "accepted but not in force yet" in line]
    assert not [
        line
        for line in run.err_lines
        if ": antispam." in line or ": milter." in line or ": quota." in line or ": sieve." in line
    ]
    assert not [line for line in run.err_lines if f"{path}: log_format: " in line]


def test_check_config_of_a_wrong_new_value(run, tmp_path):
    path = _contract_example(tmp_path)
    path.write_text(path.read_text().replace("storage = 0", 'storage = "ten gigs"'))
    assert run("check-config", "--config", str(path)) == 1
    line = len(path.read_text().split("storage = ")[0].splitlines()) + 1
    assert run.err_lines[0].startswith(f"{path}:{line}: quota.storage: expected a size like ")


async def test_serve_logs_what_check_config_warns(start_server, caplog):
    caplog.set_level("WARNING", logger="sansmail")
    server = await start_server(listen={"smtp": "127.0.0.1:0", "http": "127.0.0.1:0"})
    logged = [r.getMessage() for r in caplog.records if r.name == "sansmail.master"]
    expected = not_in_force(server.config)
    for line in expected:
        assert logged.count(line) == 1, (line, logged)
    # Every listener is built now: none is reported, and http is bound.
    assert not [line for line in logged if "listen." in line]
    assert "http" in server.bound


# --- in force when the command exits: the counters the servers follow -------------------


def _running_server_counters(config_file: pathlib.Path) -> Generations:
    """What a server on that data_dir has made at start."""
    data_dir = config_file.parent / "data"
    data_dir.mkdir(exist_ok=True)
    return Generations.open(data_dir)


def test_user_commands_announce_their_change(run, config_file):
    generations = _running_server_counters(config_file)
    conf = str(config_file)
    assert (
        run("user", "add", "a@example.test", "--password-stdin", "--config", conf, stdin="p\n") == 0
    )
    assert generations[Counter.USERS] == 1
    assert (
        run("user", "passwd", "a@example.test", "--password-stdin", "--config", conf, stdin="q\n")
        == 0
    )
    assert generations[Counter.USERS] == 2
    assert run("user", "del", "a@example.test", "--config", conf) == 0
    assert generations[Counter.USERS] == 3
    assert run("user", "del", "a@example.test", "--config", conf) == 1  # nothing changed
    assert run("user", "list", "--config", conf) == 0
    assert generations[Counter.USERS] == 3
    assert (generations[Counter.ALIASES], generations[Counter.TLS]) == (0, 0)


def test_user_add_without_a_server_makes_no_counters(run, config_file):
    conf = str(config_file)
    assert (
        run("user", "add", "a@example.test", "--password-stdin", "--config", conf, stdin="p\n") == 0
    )
    assert not (config_file.parent / "data" / "generations").exists()


def test_newaliases_announces_the_file(run, config_file):
    _with_aliases(config_file, "postmaster: a@elsewhere.test\n")
    generations = _running_server_counters(config_file)
    assert run("newaliases", "--config", str(config_file)) == 0
    assert generations[Counter.ALIASES] == 1
    # With problems too: the server uses the entries without them, as it would anyway.
    _with_aliases(config_file, "postmaster: a@elsewhere.test\nbad: |/bin/sh\n")
    assert run("newaliases", "--config", str(config_file)) == 1
    assert generations[Counter.ALIASES] == 2
    assert generations[Counter.USERS] == 0


def test_newaliases_without_a_data_dir_writes_nothing(run, config_file):
    _with_aliases(config_file, "postmaster: a@elsewhere.test\n")
    assert run("newaliases", "--config", str(config_file)) == 0
    assert not (config_file.parent / "data").exists()


def test_reload(run, config_file):
    assert run("reload", "--config", str(config_file)) == 1
    data_dir = config_file.parent / "data"
    assert run.err_lines == [
        f"sansmail-trio: reload: no server has ever run on {data_dir}: nothing to reload"
    ]
    assert not data_dir.exists()
    generations = _running_server_counters(config_file)
    assert run("reload", "--config", str(config_file)) == 0
    assert run.out.startswith("reload requested: ")
    assert [generations[c] for c in Counter] == [1, 1, 1]


def test_reload_checks_the_configuration_first(run, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('log_format = "xml"\n')
    assert run("reload", "--config", str(path)) == 1
    assert run.err_lines[0].startswith(f"{path}:1: log_format: ")
