"""sansmail.storage.dkimkeys: where keys live, how they are written, and the runner's
cached reads."""

from __future__ import annotations

import os
import pathlib
import stat

import pytest

from sansmail.storage import dkimkeys
from sansmail.storage.dkimkeys import DkimKeys, KeyExistsError, key_path, write_key

PEM = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
TXT = "v=DKIM1; k=rsa; p=AAAA"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_key_path(tmp_path: pathlib.Path) -> None:
    assert key_path(tmp_path, "Example.COM.", "Sel") == tmp_path / "dkim/example.com/sel.key"
    for domain, selector in [("..", "s"), ("a/b", "s"), ("example.com", "../x"), ("", "s")]:
        with pytest.raises(ValueError, match="not a valid DKIM"):
            key_path(tmp_path, domain, selector)


def test_write_key(tmp_path: pathlib.Path) -> None:
    path = write_key(tmp_path / "data", "example.com", "sel", PEM, TXT)
    assert path == tmp_path / "data/dkim/example.com/sel.key"
    assert path.read_bytes() == PEM
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.with_suffix(".txt").read_text() == TXT + "\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["sel.key", "sel.txt"]  # no tmp


def test_write_key_keeps_an_existing_key_unless_forced(tmp_path: pathlib.Path) -> None:
    path = write_key(tmp_path, "example.com", "sel", PEM, TXT)
    with pytest.raises(KeyExistsError, match="--force"):
        write_key(tmp_path, "example.com", "sel", b"other", "v=DKIM1; p=B")
    assert path.read_bytes() == PEM
    assert path.with_suffix(".txt").read_text() == TXT + "\n"
    write_key(tmp_path, "example.com", "sel", b"other", "v=DKIM1; p=B", force=True)
    assert path.read_bytes() == b"other"


def test_write_key_is_durable(tmp_path: pathlib.Path, monkeypatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    dirs: list[str] = []
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(dkimkeys, "fsync_dir", lambda p: dirs.append(str(p)))
    path = write_key(tmp_path, "example.com", "sel", PEM, TXT)
    # Each file's content is synced (under its temporary name), then the directory.
    assert [pathlib.Path(p).name for p in synced] == [
        f".sel.txt.{os.getpid()}.tmp",
        f".sel.key.{os.getpid()}.tmp",
    ]
    assert dirs[-1] == str(path.parent)
    assert str(tmp_path / "dkim") in dirs  # the new directories' entries too


def test_key_for_caches_and_rereads_a_changed_file(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    keys = DkimKeys(tmp_path, "sel", clock=clock)
    assert not keys.any()
    assert keys.key_for("example.com") is None
    write_key(tmp_path, "example.com", "sel", PEM, TXT)
    # Within RECHECK the answers are remembered, the missing key and the directory too.
    assert keys.key_for("example.com") is None
    assert not keys.any()
    clock.now += dkimkeys.RECHECK
    assert keys.any()
    assert keys.key_for("EXAMPLE.com.") == PEM
    write_key(tmp_path, "example.com", "sel", b"new key", TXT, force=True)
    assert keys.key_for("example.com") == PEM
    clock.now += dkimkeys.RECHECK
    assert keys.key_for("example.com") == b"new key"
    (tmp_path / "dkim/example.com/sel.key").unlink()
    clock.now += dkimkeys.RECHECK
    assert keys.key_for("example.com") is None


def test_key_for_other_selector_and_bad_names(tmp_path: pathlib.Path) -> None:
    write_key(tmp_path, "example.com", "sel", PEM, TXT)
    assert DkimKeys(tmp_path, "other").key_for("example.com") is None
    assert DkimKeys(tmp_path, "sel").key_for("../../etc") is None
    with pytest.raises(ValueError, match="selector"):
        DkimKeys(tmp_path, "../sel")


def test_key_for_unchanged_file_is_not_read_again(tmp_path: pathlib.Path, monkeypatch) -> None:
    clock = Clock()
    write_key(tmp_path, "example.com", "sel", PEM, TXT)
    keys = DkimKeys(tmp_path, "sel", clock=clock)
    assert keys.key_for("example.com") == PEM
    reads: list[pathlib.Path] = []
    real = pathlib.Path.read_bytes
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda p: reads.append(p) or real(p))
    clock.now += dkimkeys.RECHECK
    assert keys.key_for("example.com") == PEM
    assert reads == []
