"""The accounts commands on the PostgreSQL backend (``[storage] backend =
"postgresql"``): ``user``, ``sieve`` and ``newaliases`` write the database every node
reads, and say one line when it is away."""

from __future__ import annotations

import io
import pathlib
import sys

import pytest

from sansmail.mail.address import MailboxId
from sansmail.storage.pg import Database
from sansmail.storage.pg._aliases import PgAliasSource
from sansmail.storage.pg._sieve import PgSieveStore
from sansmail.storage.pg._users import PgUserStore
from sansmail_trio._cli import main

ALICE = "alice@example.test"
ALICE_BOX = MailboxId(domain="example.test", local="alice")


def _config(tmp_path: pathlib.Path, dsn: str, extra: str = "") -> str:
    path = tmp_path / "sansmail.toml"
    path.write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        f'{extra}[listen]\n[storage]\nbackend = "postgresql"\ndsn = "{dsn}"\n'
    )
    return str(path)


class Run:
    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        self.out = self.err = ""

    def __call__(self, *argv: str, stdin: str = "") -> int:
        self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        status = main(list(argv))
        self.out, self.err = self.capsys.readouterr()
        assert "Traceback" not in self.err
        return status


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    return Run(capsys, monkeypatch)


def test_user_commands_write_the_table(
    run: Run, tmp_path: pathlib.Path, pg_dsn: str, pg_db: Database
) -> None:
    conf = _config(tmp_path, pg_dsn)
    assert run("user", "add", ALICE, "--password-stdin", "--config", conf, stdin="pw1\n") == 0
    assert run.out == f"added {ALICE}\n"
    node = PgUserStore(pg_db)
    assert node.verify_password(ALICE, "pw1")
    assert run("user", "passwd", ALICE, "--password-stdin", "--config", conf, stdin="pw2\n") == 0
    node.changed()  # what the node's listener does when the notification comes
    assert node.verify_password(ALICE, "pw2")
    assert run("user", "quota", ALICE, "1M", "--config", conf) == 0
    assert run.out == f"{ALICE}: limit 1048576 octets (own), used 0 octets in 0 messages\n"
    assert run("user", "list", "--config", conf) == 0
    assert run.out == f"{ALICE}\n"
    assert run("user", "add", ALICE, "--password-stdin", "--config", conf, stdin="x\n") == 1
    assert run.err == f"sansmail-trio: user add: {ALICE}: user already exists\n"
    assert run("user", "del", ALICE, "--config", conf) == 0
    node.changed()
    assert node.reload_if_changed()
    assert ALICE not in node


def test_sieve_commands_write_the_table(
    run: Run, tmp_path: pathlib.Path, pg_dsn: str, pg_db: Database
) -> None:
    conf = _config(tmp_path, pg_dsn)
    assert run("user", "add", ALICE, "--password-stdin", "--config", conf, stdin="pw\n") == 0
    script = tmp_path / "away.sieve"
    script.write_text("keep;\n")
    assert run("sieve", "put", ALICE, "away", str(script), "--activate", "--config", conf) == 0
    assert PgSieveStore(pg_db).active(ALICE_BOX) == ("away", b"keep;\n")
    assert run("sieve", "list", ALICE, "--config", conf) == 0
    assert run.out == "away (active)\n"
    assert run("sieve", "deactivate", ALICE, "--config", conf) == 0
    assert run("sieve", "delete", ALICE, "away", "--config", conf) == 0
    assert PgSieveStore(pg_db).list(ALICE_BOX) == []


def test_newaliases_puts_the_file_in_the_database(
    run: Run, tmp_path: pathlib.Path, pg_dsn: str, pg_db: Database
) -> None:
    (tmp_path / "staff").write_text("alice\n")
    aliases = tmp_path / "aliases"
    aliases.write_text(f"postmaster: alice\nall: :include:{tmp_path / 'staff'}\n")
    conf = _config(tmp_path, pg_dsn, f'aliases = "{aliases}"\n')
    assert run("user", "add", ALICE, "--password-stdin", "--config", conf, stdin="pw\n") == 0
    assert run("newaliases", "--config", conf) == 0
    assert run.out == f"newaliases: 2 aliases in {aliases} (1 include file)\n"
    node = PgAliasSource(pg_db)
    assert sorted(node.table) == ["all", "postmaster"]
    assert node.include_files == (str(tmp_path / "staff"),)
    # A file that cannot be read (not UTF-8) changes nothing in force.
    aliases.write_bytes(b"postmaster: \xff\n")
    assert run("newaliases", "--config", conf) == 1
    assert "the aliases in force are kept" in run.err
    assert sorted(PgAliasSource(pg_db).table) == ["all", "postmaster"]


def test_the_database_away_is_one_line(run: Run, tmp_path: pathlib.Path) -> None:
    conf = _config(tmp_path, "postgresql://127.0.0.1:1/nothing?connect_timeout=2")
    assert run("user", "add", ALICE, "--password-stdin", "--config", conf, stdin="pw\n") == 1
    assert run.err.startswith("sansmail-trio: user add: cannot connect to the database")
    assert len(run.err.splitlines()) == 1
    assert run("user", "list", "--config", conf) == 0  # nothing could be read: nobody
