"""``sansmail-trio storage migrate|import|export`` against a real PostgreSQL (the
``pg_cluster`` fixtures): what each prints, and the one line it gives for a
configuration that names no usable database."""

from __future__ import annotations

import pathlib
import sys

import pytest
from pgcluster import Cluster

from sansmail.storage.pg import SCHEMA_VERSION, Database, schema_version
from sansmail_trio._cli import main

PROG = "sansmail-trio"


def _config(tmp_path: pathlib.Path, storage: str) -> pathlib.Path:
    path = tmp_path / "sansmail.toml"
    path.write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        f"[listen]\n[storage]\n{storage}\n"
    )
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def test_migrate_a_new_database_then_again(
    pg_cluster: Cluster, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pg_cluster.database() as dsn:
        conf = str(_config(tmp_path, f'backend = "postgresql"\ndsn = "{dsn}"'))
        assert _run(capsys, "storage", "migrate", "--config", conf) == (
            0,
            f"schema version 0 -> {SCHEMA_VERSION}\n",
            "",
        )
        assert _run(capsys, "storage", "migrate", "--config", conf) == (
            0,
            f"already at version {SCHEMA_VERSION}\n",
            "",
        )
        db = Database(dsn)
        try:
            assert schema_version(db) == SCHEMA_VERSION
        finally:
            db.close()


def test_migrate_refuses_the_maildir_backend(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _config(tmp_path, 'backend = "maildir"')
    status, out, err = _run(capsys, "storage", "migrate", "--config", str(conf))
    assert (status, out) == (1, "")
    assert err.splitlines() == [
        f'{PROG}: storage migrate: [storage] backend is "maildir" in {conf}: these commands'
        ' work on a PostgreSQL database; set backend = "postgresql" and dsn = "postgresql://..."'
    ]


def test_migrate_an_unreachable_database_is_one_line(
    pg_cluster: Cluster, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A port nobody listens on (the cluster's own, plus one, is free in practice; a
    # listener there would still refuse this database name).
    dsn = "postgresql://sansmail@127.0.0.1:1/nowhere?connect_timeout=2"
    conf = _config(tmp_path, f'backend = "postgresql"\ndsn = "{dsn}"')
    status, out, err = _run(capsys, "storage", "migrate", "--config", str(conf))
    assert (status, out) == (1, "")
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{PROG}: storage migrate: cannot connect to the database: ")


def test_migrate_without_psycopg_says_what_to_install(
    pg_dsn: str,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(sys.modules):
        if name == "psycopg" or name.startswith(("psycopg.", "sansmail.storage.pg")):
            monkeypatch.delitem(sys.modules, name)
    # None in sys.modules makes the import fail, as when the package is not installed.
    monkeypatch.setitem(sys.modules, "psycopg", None)  # type: ignore[arg-type]
    conf = _config(tmp_path, f'backend = "postgresql"\ndsn = "{pg_dsn}"')
    status, out, err = _run(capsys, "storage", "migrate", "--config", str(conf))
    assert (status, out) == (1, "")
    assert err.splitlines() == [
        f"{PROG}: storage migrate: PostgreSQL support is not installed:"
        " install sansmail[postgresql] (psycopg)"
    ]
