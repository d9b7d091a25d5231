"""AliasSource: loading, include files, change detection, keeping the last good table."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

import pytest

import sansmail.storage.aliasfile
from sansmail.mail.address import MailboxId
from sansmail.mail.aliases import expand
from sansmail.storage.aliasfile import Aliases, AliasSource
from sansmail.storage.generations import Counter, Generations, bump
from sansmail.storage.pg import Database
from sansmail.storage.pg._aliases import PgAliasSource, import_aliases

DOMAINS = ("example.test",)


def users(*names: str):
    keys = {f"{name}@example.test" for name in names}
    return keys.__contains__


def deliver(source: Aliases, recipient: str, *known: str):
    return expand(
        source.table,
        recipient,
        domains=DOMAINS,
        user_exists=users(*known),
        read_include=source.read_include,
    )


def replace(path: pathlib.Path, text: str) -> None:
    """Write a new file and rename it over `path`, as editors and scripts do."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


Load = Callable[[pathlib.Path], Aliases]


@pytest.fixture(params=["maildir", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def load(backend: str, request: pytest.FixtureRequest) -> Load:
    """The aliases file at a path as a server reads it: straight from the file, or
    from the database after ``newaliases`` imported it."""
    if backend == "maildir":
        return AliasSource
    db: Database = request.getfixturevalue("pg_db")

    def imported(path: pathlib.Path) -> Aliases:
        import_aliases(db, AliasSource(path))
        return PgAliasSource(db)

    return imported


def test_public_names() -> None:
    assert sorted(sansmail.storage.aliasfile.__all__) == [
        "AliasSource",
        "Aliases",
        "DEFAULT_MAX_SIZE",
        "IncludeWalk",
    ]


def test_no_path_is_an_empty_table() -> None:
    source = AliasSource(None)
    assert len(source.table) == 0
    assert source.problems == ()
    assert source.include_files == ()
    assert source.reload_if_changed() is False


def test_reads_the_file(tmp_path: pathlib.Path, load: Load) -> None:
    path = tmp_path / "aliases"
    path.write_text("postmaster: alice\nsales: bob, carol@elsewhere.test\n")
    source = load(path)
    assert sorted(source.table) == ["postmaster", "sales"]
    assert source.problems == ()
    assert source.reload_if_changed() is False
    found = deliver(source, "sales@example.test", "bob")
    assert found.local == (MailboxId(domain="example.test", local="bob"),)
    assert [str(a) for a in found.remote] == ["carol@elsewhere.test"]


def test_syntax_problems_keep_the_valid_entries(tmp_path: pathlib.Path, load: Load) -> None:
    path = tmp_path / "aliases"
    path.write_text("good: alice\nbad: |/bin/sh\nno colon here\n")
    source = load(path)
    assert list(source.table) == ["good"]
    assert len(source.problems) == 2
    assert source.problems[0].startswith(f"{path}:2: '|command' targets are not supported")
    assert source.problems[1].startswith(f"{path}:3: expected 'name: value, ...'")


# -- include files -------------------------------------------------------------------------


def test_include_files_are_read_and_cached(tmp_path: pathlib.Path, load: Load) -> None:
    staff = tmp_path / "staff"
    staff.write_text("# the staff\nalice\nbob, carol\n")
    path = tmp_path / "aliases"
    path.write_text(f"all: :include:{staff}\n")
    source = load(path)
    assert source.problems == ()
    assert source.include_files == (str(staff),)
    # Served from the cache: expansion does not touch the disk, even if the file goes.
    staff.unlink()
    found = deliver(source, "all@example.test", "alice", "bob", "carol")
    assert [m.local for m in found.local] == ["alice", "bob", "carol"]
    assert found.problems == ()


def test_nested_includes_and_their_problems(
    tmp_path: pathlib.Path, load: Load, backend: str
) -> None:
    inner = tmp_path / "inner"
    inner.write_text("dave\nx y\n")  # line 2: two values without a comma
    outer = tmp_path / "outer"
    outer.write_text(f"alice\n:include:{inner}\n:include:{tmp_path / 'missing'}\n")
    path = tmp_path / "aliases"
    path.write_text(f"list: :include:{outer}\nother: :include:{inner}\n")
    source = load(path)
    # What newaliases could not read is not in the database either.
    why = "No such file or directory" if backend == "maildir" else "not imported (run newaliases)"
    assert source.include_files == (str(outer), str(inner))
    assert source.problems == (
        f"{inner}:2: 'x y': space outside quotes; separate addresses with commas, "
        "or quote a local part that holds spaces",
        f"{outer}:3: cannot read :include:{tmp_path / 'missing'}: {why}",
    )


def test_include_loop_is_a_problem(tmp_path: pathlib.Path, load: Load) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text(f"alice\n:include:{b}\n")
    b.write_text(f":include:{a}\n")
    path = tmp_path / "aliases"
    path.write_text(f"loop: :include:{a}\n")
    source = load(path)
    assert source.problems == (f"{b}:1: include loop :include:{a} -> :include:{b} -> :include:{a}",)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"alice\n\xff\n", "not UTF-8 text (line 2)"), (b"x" * 101, "larger than 100 octets")],
)
def test_include_unreadable(tmp_path: pathlib.Path, content: bytes, reason: str) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(content)
    path = tmp_path / "aliases"
    path.write_text(f"list: bob, :include:{bad}\n")
    source = AliasSource(path, max_size=100)
    assert source.problems == (f"{path}:1: cannot read :include:{bad}: {reason}",)
    # Delivery goes on for what can be read, and reports the rest.
    found = deliver(source, "list@example.test", "bob")
    assert [m.local for m in found.local] == ["bob"]
    assert found.problems == (f"{path}:1: cannot read :include:{bad}: {reason}",)


def test_include_that_is_not_a_regular_file(tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would block without O_NONBLOCK
    path = tmp_path / "aliases"
    path.write_text(f"a: :include:{fifo}\nb: :include:{tmp_path}\n")
    source = AliasSource(path)
    assert source.problems == (
        f"{path}:1: cannot read :include:{fifo}: not a regular file",
        f"{path}:2: cannot read :include:{tmp_path}: not a regular file",
    )


def test_include_read_later_is_watched(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: alice\n")
    source = AliasSource(path)
    extra = tmp_path / "extra"
    extra.write_text("bob\n")
    assert source.read_include(str(extra)) == "bob\n"
    assert source.reload_if_changed() is False
    replace(extra, "carol\n")
    assert source.reload_if_changed() is True


# -- change detection ----------------------------------------------------------------------


def test_replaced_file_is_reloaded(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: alice\n")
    source = AliasSource(path)
    replace(path, "a: bob\n")  # same size: the new inode tells
    assert source.reload_if_changed() is True
    assert deliver(source, "a@example.test", "bob").local[0].local == "bob"
    assert source.reload_if_changed() is False


def test_file_rewritten_in_place_is_reloaded(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: alice\n")
    source = AliasSource(path)
    with open(path, "a") as file:
        file.write("b: bob\n")
    assert source.reload_if_changed() is True
    assert sorted(source.table) == ["a", "b"]


def test_same_size_same_inode_new_mtime(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: alice\n")
    before = path.stat()
    source = AliasSource(path)
    with open(path, "r+") as file:
        file.write("b")  # "b: alice", same size, same inode
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert source.reload_if_changed() is True
    assert list(source.table) == ["b"]


def test_changed_include_reloads(tmp_path: pathlib.Path) -> None:
    staff = tmp_path / "staff"
    staff.write_text("alice\n")
    path = tmp_path / "aliases"
    path.write_text(f"all: :include:{staff}\n")
    source = AliasSource(path)
    assert source.reload_if_changed() is False
    replace(staff, "bob\n")
    assert source.reload_if_changed() is True
    assert [m.local for m in deliver(source, "all@example.test", "bob").local] == ["bob"]


def test_missing_include_that_appears_reloads(tmp_path: pathlib.Path) -> None:
    staff = tmp_path / "staff"
    path = tmp_path / "aliases"
    path.write_text(f"all: :include:{staff}\n")
    source = AliasSource(path)
    assert len(source.problems) == 1
    assert source.reload_if_changed() is False
    staff.write_text("alice\n")
    assert source.reload_if_changed() is True
    assert source.problems == ()


def test_vanished_file_keeps_the_last_good_table(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: alice\n")
    source = AliasSource(path)
    path.unlink()
    assert source.reload_if_changed() is True
    assert list(source.table) == ["a"]
    assert source.problems == (
        f"{path}: cannot read: No such file or directory; the aliases read before stay in force",
    )
    # Recorded once: nothing changed since, so nothing more to log.
    assert source.reload_if_changed() is False
    path.write_text("b: bob\n")
    assert source.reload_if_changed() is True
    assert list(source.table) == ["b"]
    assert source.problems == ()


def test_file_turned_unreadable_keeps_the_last_good_table(tmp_path: pathlib.Path) -> None:
    # Tests may run as root, for whom mode 000 does not stop a read; invalid UTF-8 does.
    path = tmp_path / "aliases"
    path.write_text("a: alice\n")
    source = AliasSource(path)
    path.write_bytes(b"a: bob\n\xff\n")
    assert source.reload_if_changed() is True
    assert list(source.table) == ["a"]
    assert deliver(source, "a@example.test", "alice").local[0].local == "alice"
    assert source.problems == (
        f"{path}: cannot read: not UTF-8 text (line 2); the aliases read before stay in force",
    )
    assert source.reload_if_changed() is False


def test_unreadable_at_start_is_an_empty_table(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "aliases"
    source = AliasSource(path)
    assert len(source.table) == 0
    assert source.problems == (f"{path}: cannot read: No such file or directory",)
    assert source.reload_if_changed() is False
    path.write_text("a: alice\n")
    assert source.reload_if_changed() is True
    assert list(source.table) == ["a"]


def test_too_large(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: alice\n" * 20)
    source = AliasSource(path, max_size=100)
    assert source.problems == (f"{path}: cannot read: larger than 100 octets",)
    assert len(source.table) == 0


# -- in force when newaliases returns (storage/generations.py) -----------------------------


def watching(path: pathlib.Path, data_dir: pathlib.Path) -> AliasSource:
    """A source as the server makes it: following the shared counters of data_dir."""
    data_dir.mkdir(exist_ok=True)
    return AliasSource(path, generations=Generations.open(data_dir))


def test_an_announced_change_is_seen_by_the_next_lookup(tmp_path: pathlib.Path) -> None:
    path, data_dir = tmp_path / "aliases", tmp_path / "data"
    path.write_text("a: alice\n")
    server = watching(path, data_dir)
    # newaliases: it loads the file (and reports), then announces it.
    with open(path, "a") as file:
        file.write("b: bob\n")
    assert list(server.table) == ["a"]  # not announced yet: the file is not looked at
    newaliases = AliasSource(path)
    assert newaliases.problems == ()
    assert bump(data_dir, Counter.ALIASES)
    assert sorted(server.table) == ["a", "b"]
    assert deliver(server, "b@example.test", "bob").local[0].local == "bob"
    # The housekeeping call reports the lookup's reload once, for the log.
    assert server.reload_if_changed() is True
    assert server.reload_if_changed() is False


def test_an_announced_include_change_is_seen_at_once(tmp_path: pathlib.Path) -> None:
    staff, path, data_dir = tmp_path / "staff", tmp_path / "aliases", tmp_path / "data"
    staff.write_text("alice\n")
    path.write_text(f"all: :include:{staff}\n")
    server = watching(path, data_dir)
    assert [m.local for m in deliver(server, "all@example.test", "alice").local] == ["alice"]
    replace(staff, "bob\n")
    assert bump(data_dir, Counter.ALIASES)
    assert [m.local for m in deliver(server, "all@example.test", "bob").local] == ["bob"]


def test_problems_follow_the_counter_too(tmp_path: pathlib.Path) -> None:
    path, data_dir = tmp_path / "aliases", tmp_path / "data"
    path.write_text("a: alice\n")
    server = watching(path, data_dir)
    replace(path, "a: alice\nbad: |/bin/sh\n")
    assert bump(data_dir, Counter.ALIASES)
    [problem] = server.problems
    assert problem.startswith(f"{path}:2: '|command' targets are not supported")
    assert list(server.table) == ["a"]


def test_lookups_touch_no_file_while_the_counter_stands(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staff, path, data_dir = tmp_path / "staff", tmp_path / "aliases", tmp_path / "data"
    staff.write_text("alice\n")
    path.write_text(f"all: :include:{staff}\n")
    server = watching(path, data_dir)

    def no_io(*args: object, **kwargs: object) -> None:
        raise AssertionError("a lookup did file I/O")

    monkeypatch.setattr(os, "stat", no_io)
    monkeypatch.setattr(os, "open", no_io)
    for _ in range(3):
        assert deliver(server, "all@example.test", "alice").local[0].local == "alice"
