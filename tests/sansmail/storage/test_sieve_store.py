"""The Sieve script store: layout, names, quota, activation, rename, delete, durability
order, and what a hand may leave in a user's directory."""

from __future__ import annotations

import logging
import os
import pathlib
import stat
import threading
from collections.abc import Callable

import pytest

from sansmail.mail.address import MailboxId
from sansmail.storage import durable
from sansmail.storage import sieve as sieve_module
from sansmail.storage.pg import Database
from sansmail.storage.pg._sieve import PgSieveStore
from sansmail.storage.sieve import (
    ACTIVE_LINK,
    ActiveScriptError,
    InvalidScriptNameError,
    NoSuchScriptError,
    ScriptExistsError,
    SieveQuota,
    SieveQuotaError,
    SieveScripts,
    SieveStore,
    SieveStoreError,
    valid_script_name,
)

ALICE = MailboxId(domain="example.org", local="alice")
SCRIPT = b'require "fileinto";\r\nfileinto "Lists";\r\n'


@pytest.fixture
def store(tmp_path: pathlib.Path) -> SieveStore:
    return SieveStore(tmp_path)


MakeScripts = Callable[..., SieveScripts]


@pytest.fixture(params=["maildir", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_scripts(
    backend: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> MakeScripts:
    """Makes a store of the backend under test (`quota=` as the stores take it); the
    tests that do not look at files run against both."""
    if backend == "maildir":
        return lambda **options: SieveStore(tmp_path, **options)
    db: Database = request.getfixturevalue("pg_db")
    return lambda **options: PgSieveStore(db, **options)


@pytest.fixture
def scripts(make_scripts: MakeScripts) -> SieveScripts:
    return make_scripts()


def user_dir(tmp_path: pathlib.Path, mailbox: MailboxId = ALICE) -> pathlib.Path:
    return tmp_path / "sieve" / mailbox.domain / mailbox.local


# -- layout -------------------------------------------------------------------------------


def test_pigeonhole_layout_with_a_relative_link(store: SieveStore, tmp_path: pathlib.Path) -> None:
    store.put(ALICE, "main", SCRIPT)
    store.activate(ALICE, "main")
    home = user_dir(tmp_path)
    assert (home / "main.sieve").read_bytes() == SCRIPT
    assert os.readlink(home / ACTIVE_LINK) == "main.sieve"
    assert stat.S_IMODE((home / "main.sieve").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert store.directory(ALICE) == str(home)


def test_components_are_escaped_as_the_maildir_store_does(
    store: SieveStore, tmp_path: pathlib.Path
) -> None:
    climber = MailboxId(domain="example.org", local="../x/.y")
    store.put(climber, "s", SCRIPT)
    assert (tmp_path / "sieve" / "example.org" / "%2E.%2Fx%2F.y" / "s.sieve").exists()
    assert store.list(climber) == [("s", False)]
    assert store.list(ALICE) == []


def test_no_directory_means_no_scripts(scripts: SieveScripts, tmp_path: pathlib.Path) -> None:
    store = scripts
    assert store.list(ALICE) == []
    assert store.active(ALICE) is None
    assert not store.has_active(ALICE)
    store.activate(ALICE, None)
    with pytest.raises(NoSuchScriptError):
        store.get(ALICE, "main")
    with pytest.raises(NoSuchScriptError):
        store.delete(ALICE, "main")
    with pytest.raises(NoSuchScriptError):
        store.rename(ALICE, "main", "other")
    with pytest.raises(NoSuchScriptError):
        store.activate(ALICE, "main")
    assert not (tmp_path / "sieve").exists()


def test_list_is_sorted_and_marks_the_active_one(scripts: SieveScripts) -> None:
    store = scripts
    for name in ("zeta", "alpha", "vacation"):
        store.put(ALICE, name, SCRIPT)
    store.activate(ALICE, "vacation")
    assert store.list(ALICE) == [("alpha", False), ("vacation", True), ("zeta", False)]
    assert store.active(ALICE) == ("vacation", SCRIPT)
    assert store.has_active(ALICE)


def test_put_replaces_and_get_reads(scripts: SieveScripts) -> None:
    store = scripts
    store.put(ALICE, "main", b"keep;")
    store.put(ALICE, "main", SCRIPT)
    assert store.get(ALICE, "main") == SCRIPT
    assert store.list(ALICE) == [("main", False)]


def test_no_temporary_file_is_left_behind(store: SieveStore, tmp_path: pathlib.Path) -> None:
    store.put(ALICE, "a", SCRIPT)
    store.activate(ALICE, "a")
    store.rename(ALICE, "a", "b")
    store.activate(ALICE, None)
    assert sorted(os.listdir(user_dir(tmp_path))) == [".sieve.lock", "b.sieve"]


# -- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", ".hidden", "a/b", "tab\there", "nul\x00", "del\x7f", "c1\x85", "ls\u2028",
     "x" * 201, "e\u0301", "\udc80"],
)  # fmt: skip
def test_invalid_names_are_refused_everywhere(scripts: SieveScripts, name: str) -> None:
    store = scripts
    assert valid_script_name(name) is not None
    store.put(ALICE, "good", SCRIPT)
    for call in (
        lambda: store.put(ALICE, name, SCRIPT),
        lambda: store.get(ALICE, name),
        lambda: store.activate(ALICE, name),
        lambda: store.delete(ALICE, name),
        lambda: store.rename(ALICE, "good", name),
        lambda: store.rename(ALICE, name, "other"),
        lambda: store.have_space(ALICE, name, 1),
    ):
        with pytest.raises(InvalidScriptNameError):
            call()
    assert store.list(ALICE) == [("good", False)]


@pytest.mark.parametrize(
    "name", ["main", "Vacation 2026", "\u00e9t\u00e9", "a.b", "x" * 200, "\u00e9" * 100, "-"]
)
def test_valid_names(scripts: SieveScripts, name: str) -> None:
    store = scripts
    assert valid_script_name(name) is None
    store.put(ALICE, name, SCRIPT)
    assert store.list(ALICE) == [(name, False)]


def test_an_invalid_name_is_a_store_error() -> None:
    assert issubclass(InvalidScriptNameError, SieveStoreError)
    assert issubclass(SieveQuotaError, SieveStoreError)


# -- quota --------------------------------------------------------------------------------


def test_quota_maxsize(make_scripts: MakeScripts) -> None:
    store = make_scripts(quota=SieveQuota(max_script_size=10))
    store.have_space(ALICE, "a", 10)
    with pytest.raises(SieveQuotaError) as caught:
        store.put(ALICE, "a", b"x" * 11)
    assert caught.value.kind == "maxsize"
    assert store.list(ALICE) == []


def test_quota_maxscripts_counts_a_replacement_once(make_scripts: MakeScripts) -> None:
    store = make_scripts(quota=SieveQuota(max_scripts=2))
    store.put(ALICE, "a", SCRIPT)
    store.put(ALICE, "b", SCRIPT)
    store.put(ALICE, "b", SCRIPT + b"#")  # a replacement, not a third
    with pytest.raises(SieveQuotaError) as caught:
        store.put(ALICE, "c", SCRIPT)
    assert caught.value.kind == "maxscripts"
    with pytest.raises(SieveQuotaError):
        store.have_space(ALICE, "c", 1)
    store.delete(ALICE, "a")
    store.put(ALICE, "c", SCRIPT)


def test_quota_maxstorage_leaves_out_the_script_replaced(make_scripts: MakeScripts) -> None:
    store = make_scripts(quota=SieveQuota(max_storage=100))
    store.put(ALICE, "a", b"x" * 60)
    store.put(ALICE, "a", b"x" * 100)  # the 60 it replaces do not count
    with pytest.raises(SieveQuotaError) as caught:
        store.put(ALICE, "b", b"x")
    assert caught.value.kind == "maxstorage"
    store.put(ALICE, "a", b"x" * 40)
    store.put(ALICE, "b", b"x" * 60)
    assert store.get(ALICE, "b") == b"x" * 60


def test_quota_is_per_user(make_scripts: MakeScripts) -> None:
    store = make_scripts(quota=SieveQuota(max_scripts=1))
    store.put(ALICE, "a", SCRIPT)
    store.put(MailboxId(domain="example.org", local="bob"), "a", SCRIPT)


def test_concurrent_puts_cannot_both_pass_the_quota_check(make_scripts: MakeScripts) -> None:
    # Each thread's check and write are under the user's lock, so of many racing puts of
    # new names with room for one more script, exactly one lands.
    store = make_scripts(quota=SieveQuota(max_scripts=1))
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def racer(number: int) -> None:
        barrier.wait()
        try:
            store.put(ALICE, f"s{number}", SCRIPT)
        except SieveQuotaError as exc:
            outcomes.append(exc.kind)
        else:
            outcomes.append("stored")

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["maxscripts"] * 7 + ["stored"]
    assert len(store.list(ALICE)) == 1


# -- activation, delete, rename -----------------------------------------------------------


def test_activate_switches_and_deactivate_clears(
    scripts: SieveScripts, tmp_path: pathlib.Path
) -> None:
    store = scripts
    store.put(ALICE, "a", b"keep;")
    store.put(ALICE, "b", SCRIPT)
    store.activate(ALICE, "a")
    store.activate(ALICE, "b")
    assert store.active(ALICE) == ("b", SCRIPT)
    store.activate(ALICE, "b")  # again: no change
    store.activate(ALICE, None)
    assert store.active(ALICE) is None
    assert not store.has_active(ALICE)
    assert not os.path.lexists(user_dir(tmp_path) / ACTIVE_LINK)
    store.activate(ALICE, None)  # again: nothing to do
    assert store.list(ALICE) == [("a", False), ("b", False)]


def test_activate_a_missing_script(scripts: SieveScripts) -> None:
    store = scripts
    store.put(ALICE, "a", SCRIPT)
    store.activate(ALICE, "a")
    with pytest.raises(NoSuchScriptError):
        store.activate(ALICE, "nope")
    assert store.active(ALICE) == ("a", SCRIPT)


def test_delete_of_the_active_script_is_refused(scripts: SieveScripts) -> None:
    store = scripts
    store.put(ALICE, "a", SCRIPT)
    store.put(ALICE, "b", SCRIPT)
    store.activate(ALICE, "a")
    with pytest.raises(ActiveScriptError):
        store.delete(ALICE, "a")
    store.delete(ALICE, "b")
    assert store.list(ALICE) == [("a", True)]
    with pytest.raises(NoSuchScriptError):
        store.delete(ALICE, "b")
    store.activate(ALICE, None)
    store.delete(ALICE, "a")
    assert store.list(ALICE) == []


def test_rename_of_the_active_script_keeps_it_active(
    scripts: SieveScripts, tmp_path: pathlib.Path
) -> None:
    store = scripts
    store.put(ALICE, "a", SCRIPT)
    store.activate(ALICE, "a")
    store.rename(ALICE, "a", "b")
    assert store.list(ALICE) == [("b", True)]
    if isinstance(store, SieveStore):
        assert os.readlink(user_dir(tmp_path) / ACTIVE_LINK) == "b.sieve"
    assert store.active(ALICE) == ("b", SCRIPT)


def test_rename_of_an_inactive_script(scripts: SieveScripts) -> None:
    store = scripts
    store.put(ALICE, "a", b"keep;")
    store.put(ALICE, "b", SCRIPT)
    store.activate(ALICE, "b")
    store.rename(ALICE, "a", "c")
    assert store.list(ALICE) == [("b", True), ("c", False)]
    assert store.get(ALICE, "c") == b"keep;"


def test_rename_onto_an_existing_name_is_refused(scripts: SieveScripts) -> None:
    store = scripts
    store.put(ALICE, "a", b"keep;")
    store.put(ALICE, "b", SCRIPT)
    with pytest.raises(ScriptExistsError):
        store.rename(ALICE, "a", "b")
    with pytest.raises(ScriptExistsError):
        store.rename(ALICE, "a", "a")
    with pytest.raises(NoSuchScriptError):
        store.rename(ALICE, "nope", "c")
    assert store.get(ALICE, "b") == SCRIPT
    assert store.list(ALICE) == [("a", False), ("b", False)]


# -- durability order ---------------------------------------------------------------------


class Journal:
    """Records the file-system steps in order, to check what is fsync'd before what."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps: list[str] = []
        real_fsync, real_rename, real_fsync_dir = os.fsync, os.rename, durable.fsync_dir
        real_link, real_unlink = os.link, os.unlink

        def fsync(fd: int) -> None:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):  # directories: fsync_dir's
                self.steps.append("fsync file")
            real_fsync(fd)

        def rename(src: str, dst: str) -> None:
            self.steps.append(f"rename {os.path.basename(dst)}")
            real_rename(src, dst)

        def fsync_dir(path: str) -> None:
            self.steps.append("fsync dir")
            real_fsync_dir(path)

        def link(src: str, dst: str) -> None:
            self.steps.append(f"link {os.path.basename(dst)}")
            real_link(src, dst)

        def unlink(path: str) -> None:
            self.steps.append(f"unlink {os.path.basename(path)}")
            real_unlink(path)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(os, "link", link)
        monkeypatch.setattr(os, "unlink", unlink)
        monkeypatch.setattr(sieve_module, "fsync_dir", fsync_dir)


def test_put_is_durable_before_it_returns(
    store: SieveStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put(ALICE, "warm", SCRIPT)  # the directories exist from here on
    journal = Journal(monkeypatch)
    store.put(ALICE, "main", SCRIPT)
    assert journal.steps == ["fsync file", "rename main.sieve", "fsync dir"]


def test_new_directories_are_made_durable(
    store: SieveStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(monkeypatch)
    store.put(ALICE, "main", SCRIPT)
    # sieve/, its domain and the user's directory, each synced in its parent; then the
    # script.
    assert journal.steps == ["fsync dir"] * 3 + ["fsync file", "rename main.sieve", "fsync dir"]


def test_activation_renames_a_new_link_over_the_old_then_syncs(
    store: SieveStore, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    store.put(ALICE, "a", SCRIPT)
    store.put(ALICE, "b", SCRIPT)
    store.activate(ALICE, "a")
    journal = Journal(monkeypatch)
    store.activate(ALICE, "b")
    assert journal.steps == [f"rename {ACTIVE_LINK}", "fsync dir"]
    assert os.readlink(user_dir(tmp_path) / ACTIVE_LINK) == "b.sieve"


def test_rename_links_before_it_moves_the_link_and_unlinks(
    store: SieveStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put(ALICE, "a", SCRIPT)
    store.activate(ALICE, "a")
    journal = Journal(monkeypatch)
    store.rename(ALICE, "a", "b")
    assert journal.steps == [
        "link b.sieve",
        "fsync dir",
        f"rename {ACTIVE_LINK}",
        "fsync dir",
        "unlink a.sieve",
        "fsync dir",
    ]


def test_a_failed_write_leaves_the_old_script(
    store: SieveStore, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    store.put(ALICE, "main", b"keep;")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        store.put(ALICE, "main", SCRIPT)
    assert store.get(ALICE, "main") == b"keep;"
    assert sorted(os.listdir(user_dir(tmp_path))) == [".sieve.lock", "main.sieve"]


# -- what a hand may leave ----------------------------------------------------------------


def test_a_dangling_link_is_no_active_script(store: SieveStore, tmp_path: pathlib.Path) -> None:
    store.put(ALICE, "a", SCRIPT)
    store.activate(ALICE, "a")
    os.unlink(user_dir(tmp_path) / "a.sieve")  # by hand
    assert store.active(ALICE) is None
    assert not store.has_active(ALICE)
    assert store.list(ALICE) == []
    store.put(ALICE, "b", SCRIPT)
    assert store.list(ALICE) == [("b", False)]
    store.activate(ALICE, "b")
    assert store.active(ALICE) == ("b", SCRIPT)


@pytest.mark.parametrize("target", ["/etc/passwd", "../bob/a.sieve", "a", ".x.sieve"])
def test_a_link_pointing_elsewhere_is_not_followed(
    store: SieveStore, tmp_path: pathlib.Path, target: str
) -> None:
    store.put(ALICE, "a", SCRIPT)
    os.symlink(target, user_dir(tmp_path) / ACTIVE_LINK)
    assert store.active(ALICE) is None
    assert store.list(ALICE) == [("a", False)]
    store.activate(ALICE, "a")  # replaced by ours
    assert store.active(ALICE) == ("a", SCRIPT)


def test_a_regular_file_is_taken_in_as_dovecot_orig(
    store: SieveStore, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.put(ALICE, "main", b"keep;")
    (user_dir(tmp_path) / ACTIVE_LINK).write_bytes(SCRIPT)
    assert store.has_active(ALICE)
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        assert store.active(ALICE) == ("dovecot.orig", SCRIPT)
    (line,) = [r for r in caplog.records if r.name == "sansmail.repair"]
    assert "taken in as the script 'dovecot.orig'" in line.message
    assert store.list(ALICE) == [("dovecot.orig", True), ("main", False)]
    assert os.readlink(user_dir(tmp_path) / ACTIVE_LINK) == "dovecot.orig.sieve"


def test_a_regular_file_is_taken_in_under_a_free_name(
    store: SieveStore, tmp_path: pathlib.Path
) -> None:
    store.put(ALICE, "dovecot.orig", b"keep;")
    (user_dir(tmp_path) / ACTIVE_LINK).write_bytes(SCRIPT)
    store.put(ALICE, "other", b"keep;")  # a change takes it in too
    assert store.list(ALICE) == [
        ("dovecot.orig", False),
        ("dovecot.orig-2", True),
        ("other", False),
    ]
    assert store.get(ALICE, "dovecot.orig-2") == SCRIPT


def test_a_regular_file_then_deactivated_is_kept(store: SieveStore, tmp_path: pathlib.Path) -> None:
    (user_dir(tmp_path).mkdir(parents=True))
    (user_dir(tmp_path) / ACTIVE_LINK).write_bytes(SCRIPT)
    store.activate(ALICE, None)
    assert store.list(ALICE) == [("dovecot.orig", False)]
    assert store.get(ALICE, "dovecot.orig") == SCRIPT


def test_stray_files_are_not_scripts(store: SieveStore, tmp_path: pathlib.Path) -> None:
    store.put(ALICE, "a", SCRIPT)
    home = user_dir(tmp_path)
    (home / ".tmp.0123").write_bytes(b"half")
    (home / "notes.txt").write_bytes(b"x")
    assert store.list(ALICE) == [("a", False)]
    tight = SieveStore(tmp_path, quota=SieveQuota(max_scripts=2, max_storage=len(SCRIPT) + 1))
    tight.have_space(ALICE, "b", 1)  # neither counted as a script nor as storage


def test_a_crashed_writers_temporary_files_go_at_the_next_change(
    store: SieveStore, tmp_path: pathlib.Path
) -> None:
    store.put(ALICE, "a", SCRIPT)
    home = user_dir(tmp_path)
    (home / ".tmp.0123").write_bytes(b"half a script")
    os.symlink("a.sieve", home / ".tmp.4567")  # half an activation
    store.activate(ALICE, "a")
    assert sorted(os.listdir(home)) == [ACTIVE_LINK, ".sieve.lock", "a.sieve"]
