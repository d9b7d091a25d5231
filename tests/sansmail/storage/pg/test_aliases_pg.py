"""PgAliasSource and import_aliases beyond what test_alias_source.py runs on both
backends: what is stored, re-reading after `changed`, the database away, the notice."""

from __future__ import annotations

import pathlib

import pytest

from sansmail.mail.address import MailboxId
from sansmail.mail.aliases import expand
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.pg import Database
from sansmail.storage.pg._aliases import PgAliasSource, import_aliases
from sansmail.storage.pg._changes import catch_up, read_serial


def _aliases(tmp_path: pathlib.Path, text: str, staff: str = "alice\nbob\n") -> pathlib.Path:
    (tmp_path / "staff").write_text(staff)
    path = tmp_path / "aliases"
    path.write_text(text.format(staff=tmp_path / "staff"))
    return path


def test_import_stores_the_file_and_its_includes(tmp_path: pathlib.Path, pg_db: Database) -> None:
    path = _aliases(tmp_path, "all: :include:{staff}\npostmaster: alice\n")
    import_aliases(pg_db, AliasSource(path))
    with pg_db.transaction() as cur:
        cur.execute("SELECT path, position, text FROM aliases_files ORDER BY position")
        rows = cur.fetchall()
    assert rows == [
        (str(path), 0, path.read_text()),
        (str(tmp_path / "staff"), 1, "alice\nbob\n"),
    ]
    # The node reads no file: the database's copy is what it delivers with.
    (tmp_path / "staff").unlink()
    path.unlink()
    source = PgAliasSource(pg_db)
    found = expand(
        source.table,
        "all@example.test",
        domains=("example.test",),
        user_exists=lambda key: True,
        read_include=source.read_include,
    )
    assert found.local == (
        MailboxId(domain="example.test", local="alice"),
        MailboxId(domain="example.test", local="bob"),
    )
    with pytest.raises(OSError, match="not imported"):
        source.read_include("/elsewhere")


def test_a_new_import_replaces_and_notifies(tmp_path: pathlib.Path, pg_db: Database) -> None:
    listen = pg_db.connect(autocommit=True)
    try:
        listen.execute("LISTEN sansmail")
        import_aliases(pg_db, AliasSource(_aliases(tmp_path, "a: alice\n")))
        assert [n.payload for n in listen.notifies(timeout=5, stop_after=1)] == ["aliases"]
    finally:
        listen.close()
    node = PgAliasSource(pg_db)
    assert list(node.table) == ["a"]
    import_aliases(pg_db, AliasSource(_aliases(tmp_path, "b: bob\n")))
    assert list(node.table) == ["a"]  # not told yet
    assert node.reload_if_changed() is False
    node.changed()
    assert node.reload_if_changed() is True
    assert list(node.table) == ["b"]
    assert node.include_files == ()
    assert node.reload_if_changed() is False


def test_catch_up_sees_an_import_before_its_notice(tmp_path: pathlib.Path, pg_db: Database) -> None:
    node = PgAliasSource(pg_db)
    catch_up(pg_db, {"aliases": node})
    assert len(node.table) == 0
    import_aliases(pg_db, AliasSource(_aliases(tmp_path, "a: alice\n")))
    assert not node.stale  # nothing heard
    catch_up(pg_db, {"aliases": node})
    assert list(node.table) == ["a"]
    with pg_db.transaction() as cur:
        serial = read_serial(cur, "aliases")
    assert node.catch_up(serial) is False


def test_nothing_imported_is_no_aliases(pg_db: Database) -> None:
    source = PgAliasSource(pg_db)
    assert len(source.table) == 0
    assert source.problems == ()


def test_an_unreadable_file_is_not_imported(tmp_path: pathlib.Path, pg_db: Database) -> None:
    with pytest.raises(ValueError, match="nothing to import"):
        import_aliases(pg_db, AliasSource(tmp_path / "missing"))


def test_the_database_away_keeps_the_table(tmp_path: pathlib.Path, pg_db: Database) -> None:
    import_aliases(pg_db, AliasSource(_aliases(tmp_path, "a: alice\n")))
    source = PgAliasSource(pg_db)
    source._db = Database("host=127.0.0.1 port=1 dbname=nothing connect_timeout=2")
    source.changed()
    assert source.reload_if_changed() is False
    assert list(source.table) == ["a"]
    assert len(source.problems) == 1
    assert "stay in force" in source.problems[0]
    source._db = pg_db
    assert source.reload_if_changed() is True  # still stale: tried again
    assert source.problems == ()


def test_a_node_starting_while_the_database_is_away() -> None:
    source = PgAliasSource(Database("host=127.0.0.1 port=1 dbname=nothing connect_timeout=2"))
    assert len(source.table) == 0
    assert len(source.problems) == 1
    assert "connect" in source.problems[0]
