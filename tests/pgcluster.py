"""A private PostgreSQL cluster for the tests: Debian's server binaries, a data directory
and socket directory in /tmp, a port of its own on 127.0.0.1, started once per test
process (each pytest-xdist worker has its own) and stopped at its end.

Every test that wants a database gets a fresh one, copied from a template that holds the
migrated schema (``CREATE DATABASE ... TEMPLATE``: a file copy, far cheaper than
migrating again), dropped when the test ends.

``fsync = off`` and ``full_page_writes = off``: they protect against the machine losing
power, which no test does; every commit is still a commit (``synchronous_commit`` stays
on), so what a test sees after a commit is what a node would. Root cannot run the
server: as root the cluster belongs to the ``postgres`` user the Debian package makes.
`Cluster`'s ``settings`` override those (``bench/pg_bench.py`` measures with ``fsync =
on``, the durability a node's figures must include).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping

import psycopg

__all__ = ["Cluster", "find_bindir"]


def find_bindir() -> pathlib.Path | None:
    """Where initdb and postgres are: on PATH, or Debian's newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return pathlib.Path(found).parent
    versions = sorted(
        pathlib.Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """One running cluster (see the module docstring). `user` is the superuser role."""

    user = "sansmail"

    def __init__(self, bindir: pathlib.Path, settings: Mapping[str, str] | None = None) -> None:
        self.bindir = bindir
        self.settings = dict(settings or {})
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="sansmail-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._names = itertools.count(1)
        self._process: subprocess.Popen[bytes] | None = None
        self._owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._owner = pwd.getpwnam("postgres")
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)
        self.root.chmod(0o700)

    def _as_owner(self, argv: list[str]) -> list[str]:
        if self._owner is None:
            return argv
        return [
            "setpriv",
            f"--reuid={self._owner.pw_uid}",
            f"--regid={self._owner.pw_gid}",
            "--init-groups",
            *argv,
        ]

    def start(self) -> None:
        subprocess.run(
            self._as_owner(
                [
                    str(self.bindir / "initdb"),
                    "--pgdata",
                    str(self.data),
                    "--username",
                    self.user,
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C",
                    "--no-sync",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        log = open(self.root / "server.log", "wb")  # noqa: SIM115  (lives as long as the server)
        self._process = subprocess.Popen(
            self._as_owner(
                [
                    str(self.bindir / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.root),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "shared_buffers=32MB",
                    # Later -c options win: the caller's replace the defaults above.
                    *(f"-c{name}={value}" for name, value in self.settings.items()),
                ]
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the test PostgreSQL did not start:\n"
                        + (self.root / "server.log").read_text()
                    ) from None
                time.sleep(0.05)
        # Accepting TCP comes just before accepting logins: wait for a real one.
        while True:
            try:
                self.execute("SELECT 1")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)

    def new_database(self, template: str | None = None) -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        clause = f" TEMPLATE {template}" if template else ""
        self.execute(f"CREATE DATABASE {name}{clause}")
        return name

    def drop_database(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    @contextlib.contextmanager
    def database(self, template: str | None = None) -> Iterator[str]:
        """A fresh database's DSN for the block, dropped after."""
        name = self.new_database(template)
        try:
            yield self.dsn(name)
        finally:
            self.drop_database(name)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown; SIGTERM's "smart" one waits for clients.
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
