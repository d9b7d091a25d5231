"""UserStore: accounts, passwords, the file on disk, and reloading."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import stat
import tempfile
import threading
from typing import Any, Literal, Protocol

import pytest
from argon2 import PasswordHasher
from hypothesis import given, settings
from hypothesis import strategies as st

import sansmail.storage.users
from sansmail.mail.address import Address
from sansmail.mail.auth import login_key
from sansmail.sasl import (
    Challenge,
    CramMD5Credentials,
    Failure,
    NeedCredentials,
    PlainClient,
    ScramCredentials,
    Step,
    Success,
    client_mechanism,
    derive_cram_md5_credentials,
    derive_scram_credentials,
    server_mechanism,
)
from sansmail.storage.generations import Counter, Generations, bump
from sansmail.storage.pg import Database
from sansmail.storage.pg._users import PgUserStore
from sansmail.storage.users import User, UserError, Users, UserStore, check_password

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
CREDENTIALS = ("scram-sha-1", "scram-sha-256", "cram-md5")
ALICE = Address(local_part="Alice", domain="Example.TEST")


def make(path: pathlib.Path) -> UserStore:
    return UserStore(path, hasher=FAST)


@pytest.fixture
def path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "data" / "users.json"


class Make(Protocol):
    """Makes a store of the backend under test (all on the same users)."""

    def __call__(
        self,
        *,
        hasher: PasswordHasher = ...,
        cram_md5: bool = ...,
        scram_iterations: int = ...,
    ) -> Users: ...


@pytest.fixture(params=["maildir", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_store(backend: str, path: pathlib.Path, request: pytest.FixtureRequest) -> Make:
    """The tests that do not look at users.json run against both stores."""
    if backend == "maildir":

        def file_store(*, hasher: PasswordHasher = FAST, **options: Any) -> Users:
            return UserStore(path, hasher=hasher, **options)

        return file_store
    db: Database = request.getfixturevalue("pg_db")

    def table_store(*, hasher: PasswordHasher = FAST, **options: Any) -> Users:
        return PgUserStore(db, hasher=hasher, **options)

    return table_store


def test_public_surface() -> None:
    assert sorted(sansmail.storage.users.__all__) == [
        "MAX_PASSWORD_OCTETS",
        "SCRAM_HASHES",
        "User",
        "UserError",
        "UserStore",
        "Users",
        "UsersUnavailableError",
        "check_password",
        "new_record",
        "password_fields",
        "replace_password",
        "replace_quota",
        "user_of",
    ]


def test_add_get_list(new_store: Make) -> None:
    users = new_store()
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


def test_add_twice_fails(new_store: Make) -> None:
    users = new_store()
    users.add(ALICE, "one")
    with pytest.raises(UserError, match="already exists"):
        users.add(Address(local_part="ALICE", domain="example.test"), "two")
    assert users.verify_password("alice@example.test", "one")


def test_verify_password(new_store: Make) -> None:
    users = new_store()
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


def test_unknown_user_costs_one_verification(new_store: Make) -> None:
    hasher = SpyHasher()
    users = new_store(hasher=hasher)
    users.add(ALICE, "pw")
    assert not users.verify_password("nobody@example.test", "pw")
    assert not users.verify_password("nobody@example.test", "pw")
    assert not users.verify_password("alice@example.test", "wrong")
    assert len(hasher.checked) == 3
    dummy = hasher.checked[0]
    assert dummy.startswith("$argon2id$")
    assert hasher.checked[1] == dummy  # made once
    assert hasher.checked[2] == users.get("alice@example.test").password_hash  # type: ignore[union-attr]


def test_bad_passwords_are_refused(new_store: Make, path: pathlib.Path) -> None:
    users = new_store()
    for password in ("", "a\nb", "a\rb", "a\x00b"):
        with pytest.raises(UserError, match="password"):
            users.add(ALICE, password)
    assert not path.exists()
    assert users.list() == []
    users.add(ALICE, "good")
    with pytest.raises(UserError, match="password"):
        users.set_password("alice@example.test", "")


def test_set_password(new_store: Make) -> None:
    users = new_store()
    users.add(ALICE, "old")
    users.set_password("alice@example.test", "new")
    assert users.verify_password("alice@example.test", "new")
    assert not users.verify_password("alice@example.test", "old")
    with pytest.raises(UserError, match="no such user"):
        users.set_password("nobody@example.test", "pw")


def test_delete(new_store: Make) -> None:
    users = new_store()
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
    assert sorted(os.listdir(path.parent)) == ["users.json", "users.json.bak", "users.json.lock"]
    assert (path.parent / "users.json.bak").read_bytes() == path.read_bytes()  # a good copy
    assert stat.S_IMODE((path.parent / "users.json.bak").stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["version"] == 2
    assert list(document["users"]) == ["alice@example.test"]
    record = document["users"]["alice@example.test"]
    assert sorted(record) == ["address", "password_hash", "scram-sha-1", "scram-sha-256"]
    assert record["address"] == "Alice@example.test"
    assert record["password_hash"] == users.get("alice@example.test").password_hash  # type: ignore[union-attr]


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


# -- in force when the writer returns (storage/generations.py) -------------------------


def watching(path: pathlib.Path) -> UserStore:
    """A store as the server makes it: following the shared counters of its data_dir."""
    path.parent.mkdir(exist_ok=True)
    return UserStore(path, hasher=FAST, generations=Generations.open(path.parent))


def test_a_write_is_seen_by_the_next_lookup_of_another_store(path: pathlib.Path) -> None:
    server = watching(path)
    cli = make(path)  # as the CLI makes it: no generations of its own
    cli.add(ALICE, "pw")
    assert "alice@example.test" in server  # no reload_if_changed, no waiting
    cli.set_password("alice@example.test", "pw2")
    assert server.verify_password("alice@example.test", "pw2")
    assert not server.verify_password("alice@example.test", "pw")
    cli.delete("alice@example.test")
    assert server.get("alice@example.test") is None
    assert server.list() == []
    # The housekeeping call reports the lookups' reloads once, for the log.
    assert server.reload_if_changed() is True
    assert server.reload_if_changed() is False


def test_each_kind_of_lookup_follows_the_counter(path: pathlib.Path) -> None:
    lookups = {
        "in": lambda users: "alice@example.test" in users,
        "get": lambda users: users.get("alice@example.test") is not None,
        "list": lambda users: len(users.list()) == 1,
        "get_scram": lambda users: users.get_scram("alice@example.test", "sha256") is not None,
        "verify_password": lambda users: users.verify_password("alice@example.test", "pw"),
    }
    for name, lookup in lookups.items():
        server = watching(path)
        assert not lookup(server), name
        make(path).add(ALICE, "pw")
        assert lookup(server), name
        make(path).delete("alice@example.test")


def test_lookups_touch_no_file_while_the_counter_stands(
    path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make(path).add(ALICE, "pw")
    server = watching(path)

    def no_io(*args: object, **kwargs: object) -> None:
        raise AssertionError("a lookup did file I/O")

    monkeypatch.setattr(os, "stat", no_io)
    monkeypatch.setattr(os, "open", no_io)
    monkeypatch.setattr("builtins.open", no_io)
    for _ in range(3):
        assert "alice@example.test" in server
        assert server.get_scram("alice@example.test", "sha1") is not None
        assert "bob@example.test" not in server


def test_a_hand_edit_waits_for_reload_if_changed(path: pathlib.Path) -> None:
    make(path).add(ALICE, "pw")
    server = watching(path)
    document = json.loads(path.read_text())
    del document["users"]["alice@example.test"]
    path.write_text(json.dumps(document))  # by hand: nobody bumps the counter
    assert "alice@example.test" in server
    assert server.reload_if_changed() is True
    assert "alice@example.test" not in server


def test_a_broken_file_announced_keeps_the_users(path: pathlib.Path) -> None:
    make(path).add(ALICE, "pw")
    server = watching(path)
    path.write_text("{ not json")
    assert bump(path.parent, Counter.USERS)
    assert server.verify_password("alice@example.test", "pw")  # the old users stay
    assert "alice@example.test" in server  # and the file is not read at every lookup
    with pytest.raises(UserError, match="not valid JSON"):
        server.reload_if_changed()  # said once, by the housekeeping call
    assert server.reload_if_changed() is False


def test_unchanged_users_keep_their_objects(path: pathlib.Path) -> None:
    make(path).add(ALICE, "pw")
    server = watching(path)
    alice = server.get("alice@example.test")
    make(path).add(Address(local_part="bob", domain="example.test"), "pw")
    assert server.get("bob@example.test") is not None
    assert server.get("alice@example.test") is alice
    make(path).set_password("alice@example.test", "pw2")
    assert server.get("alice@example.test") is not alice


def test_a_write_through_the_watching_store_is_announced(path: pathlib.Path) -> None:
    server, other = watching(path), watching(path)
    server.add(ALICE, "pw")
    assert "alice@example.test" in other
    assert "alice@example.test" in server


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
    scram = {"quota": "1G", "nested": [1, 2]}
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "comment": "kept",
                "users": {
                    "x@example.test": {
                        "address": "x@example.test",
                        "password_hash": FAST.hash("pw"),
                        "future": scram,
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
    assert document["users"]["x@example.test"]["future"] == scram
    assert list(document) == ["version", "comment", "users"]


def test_newer_format_is_read_but_not_rewritten(path: pathlib.Path) -> None:
    path.parent.mkdir()
    record = {"address": "x@example.test", "password_hash": FAST.hash("pw"), "new": True}
    text = json.dumps({"version": 3, "users": {"x@example.test": record}})
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
        st.text(max_size=8).filter(lambda k: k not in ("address", "password_hash", *CREDENTIALS)),
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


# -- SCRAM and CRAM-MD5 credentials ---------------------------------------------------------


def run_sasl(users: Users, mechanism: str, authcid: str, password: str) -> Step:
    """One exchange between a real client mechanism and a server mechanism fed from the
    store, the way the adapter will do it: `login_key` of the name, then the store."""
    server = server_mechanism(
        mechanism,
        nonce="serverNONCE-0123456789",
        timestamp=1,
        hostname="mx.example.test",
        fake_salt_key=users.scram_secret(),
        fake_iterations=users.scram_iterations,
    )
    client = client_mechanism(mechanism, authcid, password, nonce="clientNONCE_abcdef")
    step = server.receive(client.initial_response())
    while True:
        if isinstance(step, Challenge):
            step = server.receive(client.respond(step.data))
        elif isinstance(step, NeedCredentials):
            key = login_key(step.authcid)
            if mechanism == "CRAM-MD5":
                step = server.provide(users.get_cram_md5(key))
            else:
                hash_name = "sha1" if mechanism == "SCRAM-SHA-1" else "sha256"
                step = server.provide(users.get_scram(key, hash_name))
        else:
            assert isinstance(step, Success | Failure)
            if isinstance(step, Success):
                client.verify_server_final(step.data)
            return step


def test_add_stores_scram_keys_for_both_hashes(new_store: Make) -> None:
    users = new_store()
    user = users.add(ALICE, "correct horse")
    for hash_name, size in (("sha1", 20), ("sha256", 32)):
        keys = users.get_scram("alice@example.test", hash_name)
        assert keys is not None
        assert len(keys.salt) == 16
        assert keys.iterations == 4096
        assert len(keys.stored_key) == len(keys.server_key) == size
        # The stored keys are exactly RFC 5802's for this password and salt.
        assert keys == derive_scram_credentials("correct horse", keys.salt, 4096, hash_name)
    assert user.scram_sha1 == users.get_scram("alice@example.test", "sha1")
    assert user.scram_sha256 == users.get_scram("alice@example.test", "sha256")
    assert user.scram_sha1 is not None
    assert user.scram_sha256 is not None
    assert user.scram_sha1.salt != user.scram_sha256.salt  # a fresh salt per hash
    bob = users.add(Address(local_part="bob", domain="example.test"), "correct horse")
    assert bob.scram_sha256 is not None
    assert bob.scram_sha256 != user.scram_sha256
    assert users.get_scram("nobody@example.test", "sha256") is None
    assert user.cram_md5 is None
    assert users.get_cram_md5("alice@example.test") is None


def test_get_scram_refuses_unknown_hash(new_store: Make) -> None:
    users = new_store()
    users.add(ALICE, "pw")
    with pytest.raises(ValueError, match="hash_name"):
        users.get_scram("alice@example.test", "SCRAM-SHA-256")


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_scram_logins_against_the_store(new_store: Make, mechanism: str) -> None:
    users = new_store()
    users.add(ALICE, "correct horse")
    assert isinstance(run_sasl(users, mechanism, "Alice@Example.test", "correct horse"), Success)
    assert isinstance(run_sasl(users, mechanism, "alice@example.test", "wrong"), Failure)
    assert isinstance(run_sasl(users, mechanism, "nobody@example.test", "correct horse"), Failure)
    # A reloading server sees a password change made by another process (the CLI).
    server = new_store()
    assert server.get("alice@example.test") is not None
    new_store().set_password("alice@example.test", "battery staple")
    if isinstance(server, PgUserStore):
        server.changed()  # what the listener does when the notification arrives
    assert server.reload_if_changed()
    assert isinstance(run_sasl(server, mechanism, "alice@example.test", "correct horse"), Failure)
    assert isinstance(run_sasl(server, mechanism, "alice@example.test", "battery staple"), Success)


def test_set_password_replaces_every_credential(new_store: Make) -> None:
    users = new_store(cram_md5=True)
    users.add(ALICE, "old")
    before = users.get("alice@example.test")
    assert before is not None
    assert before.cram_md5 is not None
    users.set_password("alice@example.test", "new")
    after = users.get("alice@example.test")
    assert after is not None
    assert after.password_hash != before.password_hash
    assert after.scram_sha1 is not None
    assert after.scram_sha256 is not None
    assert after.scram_sha1.salt != before.scram_sha1.salt  # type: ignore[union-attr]
    assert after.scram_sha256 == derive_scram_credentials(
        "new", after.scram_sha256.salt, 4096, "sha256"
    )
    assert after.cram_md5 == derive_cram_md5_credentials("new")
    assert isinstance(run_sasl(users, "CRAM-MD5", "alice@example.test", "new"), Success)
    assert isinstance(run_sasl(users, "CRAM-MD5", "alice@example.test", "old"), Failure)


def test_cram_md5_only_where_enabled(path: pathlib.Path) -> None:
    # Enabling CRAM-MD5 takes effect at a user's next password change, and disabling it
    # removes the password-equivalent keys at the next change.
    plain = make(path)
    plain.add(ALICE, "pw")
    assert "cram-md5" not in json.loads(path.read_text())["users"]["alice@example.test"]
    assert isinstance(run_sasl(plain, "CRAM-MD5", "alice@example.test", "pw"), Failure)
    enabled = UserStore(path, hasher=FAST, cram_md5=True)
    assert enabled.get_cram_md5("alice@example.test") is None
    enabled.set_password("alice@example.test", "pw")
    record = json.loads(path.read_text())["users"]["alice@example.test"]
    assert record["cram-md5"] == derive_cram_md5_credentials("pw").to_hex()
    assert isinstance(run_sasl(enabled, "CRAM-MD5", "alice@example.test", "pw"), Success)
    plain.set_password("alice@example.test", "pw")
    assert "cram-md5" not in json.loads(path.read_text())["users"]["alice@example.test"]
    assert plain.get_cram_md5("alice@example.test") is None


def test_users_without_keys_keep_working(path: pathlib.Path) -> None:
    # A version-1 file: argon2 only. PLAIN/LOGIN work; SCRAM has nothing until the next
    # password change, which also moves the file to version 2.
    path.parent.mkdir()
    record = {"address": "x@example.test", "password_hash": FAST.hash("pw")}
    path.write_text(json.dumps({"version": 1, "users": {"x@example.test": record}}))
    users = make(path)
    assert users.verify_password("x@example.test", "pw")
    assert users.get_scram("x@example.test", "sha256") is None
    assert isinstance(run_sasl(users, "SCRAM-SHA-256", "x@example.test", "pw"), Failure)
    users.set_password("x@example.test", "pw")
    assert json.loads(path.read_text())["version"] == 2
    assert isinstance(run_sasl(users, "SCRAM-SHA-256", "x@example.test", "pw"), Success)


def test_adding_to_a_version_1_file_upgrades_it(path: pathlib.Path) -> None:
    path.parent.mkdir()
    record = {"address": "x@example.test", "password_hash": FAST.hash("pw")}
    path.write_text(json.dumps({"version": 1, "users": {"x@example.test": record}}))
    make(path).add(ALICE, "pw")
    document = json.loads(path.read_text())
    assert document["version"] == 2
    assert document["users"]["x@example.test"] == record


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("a\x07b", "SCRAM"),  # ASCII control: RFC 4013 §2.3 (C.2.1)
        ("\ue000secret", "SCRAM"),  # private use (C.3)
        ("\u0221x", "SCRAM"),  # unassigned in Unicode 3.2 (A.1)
        ("\u05d0a\u05d1", "SCRAM"),  # mixed right-to-left and left-to-right (RFC 3454 §6)
        ("\u00ad\u200b", "empty"),  # only characters SASLprep maps to nothing
        ("ab\ud800", "UTF-8"),  # a lone surrogate
        ("x" * 1025, "longer than 1024"),
        ("é" * 513, "longer than 1024"),  # 1026 octets
    ],
)
def test_passwords_scram_cannot_use_are_refused(
    new_store: Make, path: pathlib.Path, password: str, message: str
) -> None:
    users = new_store()
    with pytest.raises(UserError, match=message):
        users.add(ALICE, password)
    assert not path.exists()
    assert users.list() == []
    users.add(ALICE, "good")
    with pytest.raises(UserError, match=message):
        users.set_password("alice@example.test", password)
    assert users.verify_password("alice@example.test", "good")


def test_longest_password_and_non_ascii(new_store: Make) -> None:
    users = new_store()
    users.add(ALICE, "x" * 1024)
    assert users.verify_password("alice@example.test", "x" * 1024)
    users.set_password("alice@example.test", "pässwörd\u00a0ünïcode")  # NBSP maps to space
    assert users.verify_password("alice@example.test", "pässwörd\u00a0ünïcode")
    step = run_sasl(users, "SCRAM-SHA-256", "alice@example.test", "pässwörd ünïcode")
    assert isinstance(step, Success)  # SASLprep'd on both sides (RFC 5802 §2.2)


@settings(deadline=None, max_examples=40)
@given(password=st.text(max_size=12))
def test_check_password_accepts_only_what_every_mechanism_can_use(password: str) -> None:
    try:
        check_password(password)
    except UserError:
        return
    # Whatever passes can be hashed by SCRAM and CRAM-MD5 and sent by PLAIN.
    derive_scram_credentials(password, b"s" * 16, 4096, "sha256")
    derive_cram_md5_credentials(password)
    PlainClient(authcid="a@b.test", password=password)


def test_scram_iterations(new_store: Make) -> None:
    with pytest.raises(ValueError, match="4096"):
        new_store(scram_iterations=4095)
    users = new_store(scram_iterations=5000)
    assert users.scram_iterations == 5000
    users.add(ALICE, "pw")
    keys = users.get_scram("alice@example.test", "sha1")
    assert keys is not None
    assert keys.iterations == 5000
    assert isinstance(run_sasl(users, "SCRAM-SHA-1", "alice@example.test", "pw"), Success)


def _record_with(changes: dict[str, Any]) -> dict[str, Any]:
    """A user record with good SCRAM-SHA-256 keys, then `changes`: ``"field"`` or
    ``"scram-sha-256.attribute"`` -> new value."""
    good = derive_scram_credentials("pw", b"s" * 16, 4096, "sha256")
    scram = {
        "salt": base64.b64encode(good.salt).decode(),
        "iterations": 4096,
        "stored_key": base64.b64encode(good.stored_key).decode(),
        "server_key": base64.b64encode(good.server_key).decode(),
    }
    record: dict[str, Any] = {
        "address": "x@example.test",
        "password_hash": "h",
        "scram-sha-256": scram,
    }
    for name, value in changes.items():
        field, dot, attribute = name.partition(".")
        if dot:
            record[field][attribute] = value
        else:
            record[field] = value
    return record


def test_well_formed_credentials_are_read(path: pathlib.Path) -> None:
    path.parent.mkdir()
    record = _record_with({"cram-md5": "ab" * 32})
    path.write_text(json.dumps({"version": 2, "users": {"x@example.test": record}}))
    users = make(path)
    assert users.get_scram("x@example.test", "sha256") == derive_scram_credentials(
        "pw", b"s" * 16, 4096, "sha256"
    )
    assert users.get_scram("x@example.test", "sha1") is None
    assert users.get_cram_md5("x@example.test") == CramMD5Credentials.from_hex("ab" * 32)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scram-sha-256.salt": "not base64!"}, "scram-sha-256"),
        ({"scram-sha-256.salt": "c2FsdA"}, "scram-sha-256"),  # padding missing
        ({"scram-sha-256.salt": ""}, "scram-sha-256"),
        ({"scram-sha-256.salt": 7}, "scram-sha-256"),
        ({"scram-sha-256.iterations": 4095}, "scram-sha-256"),
        ({"scram-sha-256.iterations": "4096"}, "scram-sha-256"),
        ({"scram-sha-256.iterations": True}, "scram-sha-256"),
        ({"scram-sha-256.iterations": None}, "scram-sha-256"),
        ({"scram-sha-256.stored_key": base64.b64encode(b"k" * 20).decode()}, "scram-sha-256"),
        ({"scram-sha-256.server_key": base64.b64encode(b"k" * 31).decode()}, "scram-sha-256"),
        ({"scram-sha-256": "x"}, "scram-sha-256"),  # not an object
        ({"scram-sha-256": {}}, "scram-sha-256"),
        ({"cram-md5": "zz" * 32}, "cram-md5"),
        ({"cram-md5": "ab" * 31}, "cram-md5"),
        ({"cram-md5": 5}, "cram-md5"),
    ],
)
def test_malformed_credentials(path: pathlib.Path, fields: dict[str, Any], message: str) -> None:
    path.parent.mkdir()
    record = _record_with(fields)
    path.write_text(json.dumps({"version": 2, "users": {"x@example.test": record}}))
    with pytest.raises(UserError, match=message):
        make(path)


def test_sha1_field_must_hold_sha1_keys(path: pathlib.Path) -> None:
    path.parent.mkdir()
    record = _record_with({})
    record["scram-sha-1"] = record.pop("scram-sha-256")  # 32-byte keys under SHA-1
    path.write_text(json.dumps({"version": 2, "users": {"x@example.test": record}}))
    with pytest.raises(UserError, match="scram-sha-1"):
        make(path)


@settings(deadline=None, max_examples=30)
@given(
    salt=st.binary(min_size=1, max_size=64),
    iterations=st.integers(min_value=4096, max_value=2**31),
    keys=st.sampled_from([("sha1", 20), ("sha256", 32)]).flatmap(
        lambda spec: st.tuples(
            st.just(spec[0]),
            st.binary(min_size=spec[1], max_size=spec[1]),
            st.binary(min_size=spec[1], max_size=spec[1]),
        )
    ),
)
def test_scram_credentials_round_trip_through_the_file(
    salt: bytes, iterations: int, keys: tuple[str, bytes, bytes]
) -> None:
    hash_name, stored_key, server_key = keys
    field = {"sha1": "scram-sha-1", "sha256": "scram-sha-256"}[hash_name]
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "users.json"
        record = {
            "address": "x@example.test",
            "password_hash": "h",
            field: {
                "salt": base64.b64encode(salt).decode(),
                "iterations": iterations,
                "stored_key": base64.b64encode(stored_key).decode(),
                "server_key": base64.b64encode(server_key).decode(),
            },
        }
        path.write_text(json.dumps({"version": 2, "users": {"x@example.test": record}}))
        users = make(path)
        got = users.get_scram("x@example.test", hash_name)
        assert got == ScramCredentials(
            salt=salt, iterations=iterations, stored_key=stored_key, server_key=server_key
        )
        users.add(ALICE, "pw")  # a rewrite keeps the record byte for byte
        assert json.loads(path.read_text())["users"]["x@example.test"] == record


# -- the SCRAM secret -------------------------------------------------------------------------


def test_scram_secret_is_made_once_and_kept(path: pathlib.Path) -> None:
    users = make(path)
    secret = users.scram_secret()
    assert len(secret) == 32
    assert users.scram_secret() is secret
    secret_path = path.with_name("users.json.scram-secret")
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert secret_path.read_text() == secret.hex() + "\n"
    assert make(path).scram_secret() == secret  # a restart reads the same one
    assert sorted(os.listdir(path.parent)) == ["users.json.scram-secret"]  # no temp files
    other = make(path.parent / "other" / "users.json").scram_secret()
    assert other != secret


def test_scram_secret_race(path: pathlib.Path) -> None:
    # Several processes (here: stores on threads) making the secret at once agree on it.
    stores = [make(path) for _ in range(8)]
    results: list[bytes] = []
    barrier = threading.Barrier(len(stores))

    def get(users: UserStore) -> None:
        barrier.wait()
        results.append(users.scram_secret())

    threads = [threading.Thread(target=get, args=(users,)) for users in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert len(set(results)) == 1
    assert sorted(os.listdir(path.parent)) == ["users.json.scram-secret"]


@pytest.mark.parametrize("content", ["", "zz" * 32, "ab" * 31, "ab" * 33])
def test_broken_scram_secret(path: pathlib.Path, content: str) -> None:
    path.parent.mkdir()
    path.with_name("users.json.scram-secret").write_text(content)
    with pytest.raises(UserError, match="64 hex digits"):
        make(path).scram_secret()
