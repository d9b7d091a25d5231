"""A ``users.json`` that does not parse never stops the server: it serves the last good
copy (``users.json.bak``), or with none recognises nobody without bouncing anybody
(`UsersUnavailableError`, answered 451), and leaves the broken file as it is; the CLI's
store says what is wrong in one line and changes nothing."""

from __future__ import annotations

import json
import logging
import pathlib

import pytest
from argon2 import PasswordHasher

from sansmail.mail.address import Address
from sansmail.storage.generations import Counter, Generations, bump
from sansmail.storage.users import UserError, UserStore, UsersUnavailableError

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ALICE = Address(local_part="alice", domain="example.test")
BOB = Address(local_part="bob", domain="example.test")
BROKEN = b'{"version": 2, "users": {"alice@example.test": {"addr'  # cut short


@pytest.fixture
def path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "data" / "users.json"


def cli(path: pathlib.Path) -> UserStore:
    return UserStore(path, hasher=FAST)


def server(path: pathlib.Path) -> UserStore:
    path.parent.mkdir(exist_ok=True)
    return UserStore(path, hasher=FAST, generations=Generations.open(path.parent))


def repairs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sansmail.repair"]


def test_every_write_leaves_a_good_copy(path: pathlib.Path) -> None:
    cli(path).add(ALICE, "pw")
    cli(path).add(BOB, "pw")
    backup = path.with_name("users.json.bak")
    assert backup.read_bytes() == path.read_bytes()
    assert set(json.loads(backup.read_bytes())["users"]) == {
        "alice@example.test",
        "bob@example.test",
    }


def test_a_server_starting_on_a_broken_file_serves_the_copy(
    path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    cli(path).add(ALICE, "pw")
    path.write_bytes(BROKEN)
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        users = server(path)
    (line,) = repairs(caplog)
    assert line.levelno == logging.WARNING
    assert f"{path}: not valid JSON" in line.message
    assert "serving the 1 user(s) of" in line.message
    assert "users.json.bak" in line.message
    assert users.unavailable is None
    assert "alice@example.test" in users
    assert users.verify_password("alice@example.test", "pw")
    assert users.reload_if_changed() is False  # said once, at start
    assert path.read_bytes() == BROKEN  # left for the admin


def test_with_no_good_copy_nobody_is_recognised_and_nobody_refused(
    path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    path.parent.mkdir()
    path.write_bytes(BROKEN)
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        users = server(path)
    (line,) = repairs(caplog)
    assert line.levelno == logging.ERROR
    assert "no users.json.bak" in line.message
    assert "deferred (451)" in line.message
    assert users.unavailable is not None
    with pytest.raises(UsersUnavailableError):
        _ = "alice@example.test" in users  # the SMTP server answers 451 4.3.0
    assert not users.verify_password("alice@example.test", "pw")
    assert users.get("alice@example.test") is None
    assert users.get_scram("alice@example.test", "sha256") is None
    assert path.read_bytes() == BROKEN
    assert not path.with_name("users.json.bak").exists()  # nothing good to copy


def test_a_broken_copy_is_no_copy(path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    cli(path).add(ALICE, "pw")
    path.write_bytes(BROKEN)
    path.with_name("users.json.bak").write_bytes(b"[]")
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        users = server(path)
    assert users.unavailable is not None
    (line,) = repairs(caplog)
    assert "the copy is no good either" in line.message


def test_mending_the_file_ends_the_fallback(path: pathlib.Path) -> None:
    path.parent.mkdir()
    path.write_bytes(BROKEN)
    users = server(path)
    assert users.unavailable is not None
    path.unlink()
    cli(path).add(BOB, "pw")  # the admin starts afresh; the CLI bumps the counter
    assert "bob@example.test" in users
    assert users.unavailable is None
    path.write_bytes(BROKEN)  # broken again while running: the users in force stay
    bump(path.parent, Counter.USERS)
    assert "bob@example.test" in users
    with pytest.raises(UserError, match="not valid JSON"):
        users.reload_if_changed()


def test_a_missing_file_beside_its_copy_is_served_from_the_copy(path: pathlib.Path) -> None:
    cli(path).add(ALICE, "pw")
    path.unlink()  # by mistake: users do not vanish by themselves
    users = server(path)
    assert "alice@example.test" in users
    assert cli(path).list() == []  # the CLI sees no file: `user add` starts one


def test_a_valid_edit_by_hand_is_copied_by_the_server(path: pathlib.Path) -> None:
    cli(path).add(ALICE, "pw")
    document = json.loads(path.read_bytes())
    document["users"]["carol@example.test"] = dict(
        document["users"]["alice@example.test"], address="carol@example.test"
    )
    path.write_text(json.dumps(document))  # by hand
    users = server(path)
    assert "carol@example.test" in users
    assert path.with_name("users.json.bak").read_bytes() == path.read_bytes()


def test_the_cli_refuses_a_broken_file_and_leaves_it(path: pathlib.Path) -> None:
    cli(path).add(ALICE, "pw")
    path.write_bytes(BROKEN)
    with pytest.raises(UserError, match="not valid JSON"):
        cli(path)
    store = server(path)  # a store that got going on the copy cannot write either
    with pytest.raises(UserError, match="not valid JSON"):
        store.add(BOB, "pw")
    assert path.read_bytes() == BROKEN


def test_a_damaged_scram_secret_is_replaced_by_a_server(
    path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    cli(path).add(ALICE, "pw")
    secret = path.with_name("users.json.scram-secret")
    secret.write_text("not hex\n")
    with pytest.raises(UserError, match="64 hex digits"):
        cli(path).scram_secret()  # the CLI only reports it
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        made = server(path).scram_secret()
    assert len(made) == 32
    assert server(path).scram_secret() == made  # kept from now on
    assert path.with_name("users.json.scram-secret.broken").read_text() == "not hex\n"
    (line,) = repairs(caplog)
    assert "expected 64 hex digits" in line.message
