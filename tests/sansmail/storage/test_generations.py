"""The shared change counters: made by the server, bumped by writers, seen at once by
every mapping, in this process and others."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys
import textwrap

import sansmail.storage.generations
from sansmail.storage.generations import FILE_NAME, SIZE, Counter, Generations, bump


def test_public_names() -> None:
    assert sorted(sansmail.storage.generations.__all__) == [
        "Counter",
        "FILE_NAME",
        "Generations",
        "SIZE",
        "bump",
    ]


def test_open_makes_the_file(tmp_path: pathlib.Path) -> None:
    generations = Generations.open(tmp_path)
    path = tmp_path / FILE_NAME
    assert path.stat().st_size == SIZE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [generations[c] for c in Counter] == [0, 0, 0]
    # Opening again keeps the counters.
    bump(tmp_path, Counter.USERS)
    assert Generations.open(tmp_path)[Counter.USERS] == 1


def test_bump_without_a_server_writes_nothing(tmp_path: pathlib.Path) -> None:
    assert bump(tmp_path, Counter.USERS) is False
    assert list(tmp_path.iterdir()) == []


def test_a_bump_is_seen_by_every_mapping_at_once(tmp_path: pathlib.Path) -> None:
    first, second = Generations.open(tmp_path), Generations.open(tmp_path)
    assert bump(tmp_path, Counter.USERS, Counter.TLS) is True
    for generations in (first, second):
        assert generations[Counter.USERS] == 1
        assert generations[Counter.ALIASES] == 0
        assert generations[Counter.TLS] == 1
    first.bump(Counter.ALIASES)
    assert second[Counter.ALIASES] == 1


def test_a_bump_by_another_process_is_seen_without_a_system_call(
    tmp_path: pathlib.Path,
) -> None:
    generations = Generations.open(tmp_path)
    code = textwrap.dedent(
        f"""
        import pathlib
        from sansmail.storage.generations import Counter, bump
        for _ in range(3):
            assert bump(pathlib.Path({str(tmp_path)!r}), Counter.ALIASES)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert generations[Counter.ALIASES] == 3


def test_concurrent_writers_lose_no_increment(tmp_path: pathlib.Path) -> None:
    generations = Generations.open(tmp_path)
    code = textwrap.dedent(
        f"""
        import pathlib
        from sansmail.storage.generations import Counter, bump
        for _ in range(200):
            bump(pathlib.Path({str(tmp_path)!r}), Counter.USERS)
        """
    )
    writers = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(4)]
    assert [writer.wait(60) for writer in writers] == [0] * 4
    assert generations[Counter.USERS] == 800


def test_a_damaged_file_is_repaired_and_readers_see_a_change(tmp_path: pathlib.Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(b"not ours at all, and far too long for the file we make" * 3)
    generations = Generations.open(tmp_path)
    assert path.stat().st_size == SIZE
    assert [generations[c] for c in Counter] == [0, 0, 0]
    bump(tmp_path, Counter.USERS)
    bump(tmp_path, Counter.USERS)
    # A writer finding garbage (same size, wrong magic) starts over at zero, and bumps.
    with open(path, "r+b") as file:
        file.write(b"XXXXXXXX")
    assert bump(tmp_path, Counter.USERS) is True
    assert generations[Counter.USERS] == 1


def test_a_replaced_file_is_followed(tmp_path: pathlib.Path) -> None:
    generations = Generations.open(tmp_path)
    assert generations.reopen_if_replaced() is False
    os.unlink(tmp_path / FILE_NAME)
    # Deleted: a writer finds no file and cannot reach us until we make a new one.
    assert bump(tmp_path, Counter.USERS) is False
    assert generations.reopen_if_replaced() is True
    assert bump(tmp_path, Counter.USERS) is True
    assert generations[Counter.USERS] == 1
    assert generations.reopen_if_replaced() is False
