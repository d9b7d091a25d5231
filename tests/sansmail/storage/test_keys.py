"""The SRS key file: made once, kept, never replaced, agreed on by racing creators."""

from __future__ import annotations

import os
import pathlib
import stat
import threading

import pytest

import sansmail.storage.keys
from sansmail.mail.srs import KEY_OCTETS
from sansmail.storage.keys import SRSKeyError, load_or_create_srs_key


def test_public_names() -> None:
    assert sorted(sansmail.storage.keys.__all__) == ["SRSKeyError", "load_or_create_srs_key"]


def test_key_is_made_once_and_kept(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "data" / "srs.key"
    key = load_or_create_srs_key(path)
    assert len(key) == KEY_OCTETS
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == key.hex() + "\n"
    assert load_or_create_srs_key(path) == key  # after a restart
    assert sorted(os.listdir(path.parent)) == ["srs.key"]  # no temporary file left


def test_two_keys_differ(tmp_path: pathlib.Path) -> None:
    assert load_or_create_srs_key(tmp_path / "a") != load_or_create_srs_key(tmp_path / "b")


def test_existing_key_is_used(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "srs.key"
    path.write_text("ab" * 32 + "\n")
    assert load_or_create_srs_key(path) == bytes([0xAB]) * 32


@pytest.mark.parametrize("content", [b"", b"abc\n", b"zz" * 32, b"ab" * 31, b"\xff" * 64])
def test_broken_key_file(tmp_path: pathlib.Path, content: bytes) -> None:
    path = tmp_path / "srs.key"
    path.write_bytes(content)
    with pytest.raises(SRSKeyError, match=f"{path}: expected 64 hex digits"):
        load_or_create_srs_key(path)
    assert path.read_bytes() == content  # never replaced: addresses may carry the old key


def test_racing_creators_agree(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "srs.key"
    keys: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: keys.append(load_or_create_srs_key(path))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8
    assert len(set(keys)) == 1
