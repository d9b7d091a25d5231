"""UserStore: accounts, passwords, the file on disk, and reloading."""

from __future__ import annotations

import json
import os
import pathlib
import stat
import tempfile
import threading
from typing import Any, Literal

import pytest
from argon2 import PasswordHasher
from hypothesis import given, settings
from hypothesis import strategies as st

import sansmail.users
from sansmail.address import Address
from sansmail.users import User, UserError, UserStore

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ALICE = Address(local_part="Alice", domain="Example.TEST")


def make(path: pathlib.Path) -> UserStore:
    return UserStore(path, hasher=FAST)


@pytest.fixture
def path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "data" / "users.json"


def test_public_surface() -> None:
    assert sorted(sansmail.users.__all__) == ["User", "UserError", "UserStore", "check_password"]


def test_add_get_list(path: pathlib.Path) -> None:
    users = make(path)
    assert users.list() == []
    user = users.add(ALICE, "correct horse")
    assert user.address == "Alice@example.test"
    assert user.key == "alice@example.test"
    assert user.password_hash.startswith("$argon2id$")
    assert users.get("alice@example.test") == user
    assert "alice@example.test" in users
    assert "Alice@example.test" not in users  # keys are already canonical
    users.add(Address(local_part="bob", domain="example.test"), "pw")
    assert [u.key for u in users.list()] == ["alice@example.test", "bob@example.test"]


def test_add_twice_fails(path: pathlib.Path) -> None:
    users = make(path)
    users.add(ALICE, "one")
    with pytest.raises(UserError, match="already exists"):
        users.add(Address(local_part="ALICE", domain="example.test"), "two")
    assert users.verify_password("alice@example.test", "one")


def test_verify_password(path: pathlib.Path) -> None:
    users = make(path)
    users.add(ALICE, "s3cret")
    assert users.verify_password("alice@example.test", "s3cret")
    assert not users.verify_password("alice@example.test", "S3cret")
    assert not users.verify_password("alice@example.test", "")
    assert not users.verify_password("nobody@example.test", "s3cret")


class SpyHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.checked: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.checked.append(str(hash))
        return super().verify(hash, password)


def test_unknown_user_costs_one_verification(path: pathlib.Path) -> None:
    hasher = SpyHasher()
    users = UserStore(path, hasher=hasher)
    users.add(ALICE, "pw")
    assert not users.verify_password("nobody@example.test", "pw")
    assert not users.verify_password("nobody@example.test", "pw")
    assert not users.verify_password("alice@example.test", "wrong")
    assert len(hasher.checked) == 3
    dummy = hasher.checked[0]
    assert dummy.startswith("$argon2id$")
    assert hasher.checked[1] == dummy  # made once
    assert hasher.checked[2] == users.get("alice@example.test").password_hash  # type: ignore[union-attr]


def test_bad_passwords_are_refused(path: pathlib.Path) -> None:
    users = make(path)
    for password in ("", "a\nb", "a\rb", "a\x00b"):
        with pytest.raises(UserError, match="password"):
            users.add(ALICE, password)
    assert not path.exists()
    users.add(ALICE, "good")
    with pytest.raises(UserError, match="password"):
        users.set_password("alice@example.test", "")


def test_set_password(path: pathlib.Path) -> None:
    users = make(path)
    users.add(ALICE, "old")
    users.set_password("alice@example.test", "new")
    assert users.verify_password("alice@example.test", "new")
    assert not users.verify_password("alice@example.test", "old")
    with pytest.raises(UserError, match="no such user"):
        users.set_password("nobody@example.test", "pw")


def test_delete(path: pathlib.Path) -> None:
    users = make(path)
    users.add(ALICE, "pw")
    users.delete("alice@example.test")
    assert "alice@example.test" not in users
    assert users.get("alice@example.test") is None
    assert not users.verify_password("alice@example.test", "pw")
    with pytest.raises(UserError, match="no such user"):
        users.delete("alice@example.test")


def test_file_mode_and_leftovers(path: pathlib.Path) -> None:
    users = make(path)
    users.add(ALICE, "pw")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(os.listdir(path.parent)) == ["users.json", "users.json.lock"]
    document = json.loads(path.read_text())
    assert document == {
        "version": 1,
        "users": {
            "alice@example.test": {
                "address": "Alice@example.test",
                "password_hash": users.get("alice@example.test").password_hash,  # type: ignore[union-attr]
            }
        },
    }


def test_reload_sees_another_instance(path: pathlib.Path) -> None:
    server = make(path)
    cli = make(path)
    assert server.reload_if_changed() is False
    cli.add(ALICE, "pw")
    assert "alice@example.test" not in server
    assert server.reload_if_changed() is True
    assert server.verify_password("alice@example.test", "pw")
    assert server.reload_if_changed() is False
    cli.set_password("alice@example.test", "pw2")
    assert server.reload_if_changed() is True
    assert server.verify_password("alice@example.test", "pw2")
    cli.delete("alice@example.test")
    assert server.reload_if_changed() is True
    assert "alice@example.test" not in server
    path.unlink()
    assert server.reload_if_changed() is True
    assert server.list() == []
    assert server.reload_if_changed() is False


def test_writers_do_not_lose_each_others_changes(path: pathlib.Path) -> None:
    # Two stores (two CLI runs) writing at once: each re-reads under the lock.
    first, second = make(path), make(path)
    errors: list[BaseException] = []

    def add_many(users: UserStore, prefix: str) -> None:
        try:
            for i in range(10):
                users.add(Address(local_part=f"{prefix}{i}", domain="example.test"), "pw")
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=add_many, args=(first, "a")),
        threading.Thread(target=add_many, args=(second, "b")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(make(path).list()) == 20


def test_broken_file(path: pathlib.Path) -> None:
    server = make(path)
    make(path).add(ALICE, "pw")
    assert server.reload_if_changed() is True
    path.write_text("{ not json")
    with pytest.raises(UserError, match="not valid JSON"):
        server.reload_if_changed()
    assert server.reload_if_changed() is False  # said once per change
    assert server.verify_password("alice@example.test", "pw")  # the old users stay
    with pytest.raises(UserError, match="not valid JSON"):
        make(path)
    with pytest.raises(UserError, match="not valid JSON"):
        server.add(Address(local_part="bob", domain="example.test"), "pw")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "JSON object"),
        ({"users": {}}, "version"),
        ({"version": "1", "users": {}}, "version"),
        ({"version": 1, "users": []}, "users"),
        ({"version": 1, "users": {"a@b": "x"}}, "expected an object"),
        ({"version": 1, "users": {"a@b": {"address": "a@b"}}}, "password_hash"),
    ],
)
def test_malformed_documents(path: pathlib.Path, document: Any, message: str) -> None:
    path.parent.mkdir()
    path.write_text(json.dumps(document))
    with pytest.raises(UserError, match=message):
        make(path)


def test_corrupt_hash_never_verifies(path: pathlib.Path) -> None:
    path.parent.mkdir()
    record = {"address": "a@example.test", "password_hash": "not-a-hash"}
    path.write_text(json.dumps({"version": 1, "users": {"a@example.test": record}}))
    assert not make(path).verify_password("a@example.test", "not-a-hash")


def test_unknown_fields_survive_a_rewrite(path: pathlib.Path) -> None:
    path.parent.mkdir()
    scram = {"salt": "c2FsdA==", "iterations": 4096}
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "comment": "kept",
                "users": {
                    "x@example.test": {
                        "address": "x@example.test",
                        "password_hash": FAST.hash("pw"),
                        "scram-sha-256": scram,
                    }
                },
            }
        )
    )
    users = make(path)
    users.add(ALICE, "pw")
    users.set_password("x@example.test", "pw2")
    document = json.loads(path.read_text())
    assert document["comment"] == "kept"
    assert document["users"]["x@example.test"]["scram-sha-256"] == scram
    assert list(document) == ["version", "comment", "users"]


def test_newer_format_is_read_but_not_rewritten(path: pathlib.Path) -> None:
    path.parent.mkdir()
    record = {"address": "x@example.test", "password_hash": FAST.hash("pw"), "new": True}
    text = json.dumps({"version": 2, "users": {"x@example.test": record}})
    path.write_text(text)
    users = make(path)
    assert users.verify_password("x@example.test", "pw")
    with pytest.raises(UserError, match="newer"):
        users.add(ALICE, "pw")
    assert path.read_text() == text


def test_user_is_frozen() -> None:
    user = User(address="a@b", key="a@b", password_hash="h")
    with pytest.raises(AttributeError):
        user.key = "c@d"  # type: ignore[misc]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(deadline=None, max_examples=25)
@given(
    top=st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in ("version", "users")), json_values, max_size=3
    ),
    extra=st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in ("address", "password_hash")),
        json_values,
        max_size=3,
    ),
)
def test_any_extra_fields_round_trip(top: dict[str, Any], extra: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "users.json"
        record = {"address": "x@example.test", "password_hash": "h", **extra}
        path.write_text(json.dumps({"version": 1, **top, "users": {"x@example.test": record}}))
        users = make(path)
        users.add(ALICE, "pw")
        document = json.loads(path.read_text())
        assert {k: document[k] for k in top} == top
        assert document["users"]["x@example.test"] == record
        assert users.get("x@example.test") == User(
            address="x@example.test", key="x@example.test", password_hash="h"
        )
