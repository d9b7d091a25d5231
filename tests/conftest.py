"""Fixtures every test directory may use: a private PostgreSQL (`pgcluster`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pgcluster import Cluster, find_bindir

from sansmail.storage.pg import Database, migrate

_TEMPLATE = "sansmail_template"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """This test process's PostgreSQL, with a template database at the current schema.
    Skips where the server's binaries are missing (`.ci/run` installs Debian's
    ``postgresql``)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (Debian package postgresql)")
    cluster = Cluster(bindir)
    try:
        cluster.start()
        cluster.execute(f"CREATE DATABASE {_TEMPLATE}")
        db = Database(cluster.dsn(_TEMPLATE))
        try:
            migrate(db)
        finally:
            db.close()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_dsn(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh database at the current schema, for this test alone."""
    with pg_cluster.database(template=_TEMPLATE) as dsn:
        yield dsn


@pytest.fixture
def pg_db(pg_dsn: str) -> Iterator[Database]:
    """`Database` on a fresh database at the current schema."""
    db = Database(pg_dsn)
    try:
        yield db
    finally:
        db.close()
