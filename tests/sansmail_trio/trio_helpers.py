"""A real sansmail server on 127.0.0.1 (port 0), in the test's own Trio loop."""

from __future__ import annotations

import pathlib
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import attrs
import pytest
import trio
import trustme
from argon2 import PasswordHasher

from sansmail.config import Config, load_config
from sansmail.mail.address import parse_address
from sansmail.mail.auth import AuthSettings
from sansmail.storage.users import UserStore
from sansmail_trio import serve

#: Cheap argon2 parameters for the users a test makes. argon2 verifies with the
#: parameters stored in the hash, so the server checks these passwords cheaply too; with
#: the defaults each user made and each login checked costs about 0.2 s of CPU, which was
#: a third of these tests' time. The cost itself is tested in tests/sansmail/storage.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def quick_auth(config: Config) -> AuthSettings:
    """The auth settings `serve` picks by default (mynetworks exempt from the delay and
    the throttle), with a short failure delay: a test that tries a wrong password on the
    way to its point would otherwise wait 2 s. The delay itself is tested with a virtual
    clock (test_smtp_adapter.py) and in tests/sansmail/mail/test_auth.py."""
    return AuthSettings(failure_delay=0.05, max_failure_delay=0.1, exempt=config.mynetworks)


@attrs.define
class RunningServer:
    config: Config
    host: str
    port: int
    shutdown: trio.Event
    done: trio.Event
    bound: Mapping[str, list[tuple[str, int]]] = attrs.Factory(dict)
    #: The database of ``[storage] backend = "postgresql"``; None: Maildir files.
    dsn: str | None = None

    @property
    def backend(self) -> str:
        return "maildir" if self.dsn is None else "postgresql"

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """The rows of one query on the server's database (PostgreSQL backend)."""
        assert self.dsn is not None, "a query needs the postgresql backend"
        return pg_query(self.dsn, sql, params)

    def port_of(self, service: str) -> int:
        return self.bound[service][0][1]

    @property
    def data_dir(self) -> pathlib.Path:
        return self.config.data_dir

    def maildir(self, address: str) -> pathlib.Path:
        local, _, domain = address.rpartition("@")
        return self.data_dir / "mail" / domain / local.lower()

    def new_messages(self, address: str) -> list[bytes]:
        """The messages delivered to `address`'s INBOX (on Maildir: in new/, not yet
        seen by IMAP), in the order stored, with LF line ends as Maildir files have."""
        if self.dsn is not None:
            return [m.replace(b"\r\n", b"\n") for m in inbox_rows(self.dsn, address)]
        new = self.maildir(address) / "new"
        if not new.exists():
            return []
        return [p.read_bytes() for p in sorted(new.iterdir())]

    def add_user(self, address: str, password: str = "secret") -> None:
        add_users(self.config, self.dsn, (address,), password)

    async def stop(self) -> None:
        self.shutdown.set()
        await self.done.wait()


def write_config(
    tmp_path: pathlib.Path,
    smtp: Mapping[str, Any] | None = None,
    *,
    tls: tuple[pathlib.Path, pathlib.Path] | None = None,
    mynetworks: list[str] | None = None,
    listen: Mapping[str, str] | None = None,
    antispam: Mapping[str, Any] | None = None,
    nameservers: list[str] | None = None,
    limits: Mapping[str, Any] | None = None,
    dsn: str | None = None,
) -> pathlib.Path:
    lines = [
        'hostname = "mx.example.test"',
        'domains = ["example.test", "other.example"]',
        'data_dir = "data"',
    ]
    if mynetworks is not None:
        lines.append("mynetworks = [" + ", ".join(f'"{n}"' for n in mynetworks) + "]")
    lines.append("[listen]")
    for service, address in (listen or {"smtp": "127.0.0.1:0"}).items():
        lines.append(f'{service} = "{address}"')
    if tls is not None:
        lines += ["[tls]", f'cert = "{tls[0]}"', f'key = "{tls[1]}"']
    # Tests never ask the machine's resolver (and so never the Internet): a queued
    # message for a domain no test set up meets a closed port on loopback.
    servers = nameservers or ["127.0.0.1:9"]
    lines += ["[dns]", "nameservers = [" + ", ".join(f'"{n}"' for n in servers) + "]"]
    # A client outside mynetworks would meet the default sender checks, whose DNS
    # questions go unanswered here (10 s each); the anti-spam tests set their own.
    checks: dict[str, Any] = {"spf": "off", "dkim": "off", "dmarc": "off"}
    checks.update(antispam or {})
    lines.append("[antispam]")
    lines += [f"{key} = {_toml(value)}" for key, value in checks.items()]
    lines.append("[smtp]")
    for key, value in (smtp or {}).items():
        lines.append(f"{key} = {_toml(value)}")
    lines.append("[limits]")
    lines += [f"{key} = {_toml(value)}" for key, value in (limits or {}).items()]
    path = tmp_path / "sansmail.toml"
    path.write_text("\n".join(lines) + "\n" + storage_table(dsn))
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value).replace("'", '"')


StartServer = Callable[..., Any]

# One line per server process, once it listens: "sansmail 1.0 started (process 1 of 2):
# smtp on 127.0.0.1:2525; submission on 127.0.0.1:2587; domains=..."
_STARTED = re.compile(r"sansmail \S+ started[^:]*: (.*?); domains=")
_LISTENER = re.compile(r"(\w+) on 127\.0\.0\.1:(\d+)")


def wait_until_started(
    proc: subprocess.Popen[bytes], log: pathlib.Path, *, processes: int = 1, seen: int = 0
) -> dict[str, int]:
    """Wait until `sansmail-trio serve` (`proc`, logging to `log` after `seen` earlier
    "started" lines) has logged that each of its `processes` listens, and return the
    port of each service, from the last line. A test that listens on port 0 and reads
    its port here leaves no moment in which another process could take the port; and
    waiting for the log rather than for a greeting opens no probe connection."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        started = _STARTED.findall(log.read_text())
        if len(started) >= seen + processes:
            return {name: int(port) for name, port in _LISTENER.findall(started[-1])}
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    pytest.fail("server did not start: " + log.read_text())


def started_lines(log: pathlib.Path) -> int:
    """How many "started" lines `log` holds (none if it does not exist yet)."""
    return len(_STARTED.findall(log.read_text())) if log.exists() else 0


def pg_query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The rows of one query on the database `dsn`, on a connection of its own."""
    # Imported here: psycopg is there only with the postgresql extra.
    from sansmail.storage.pg import Database  # noqa: PLC0415

    db = Database(dsn)
    try:
        with db.transaction() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        db.close()


def inbox_rows(dsn: str, address: str) -> list[bytes]:
    """The contents of `address`'s INBOX rows in the database `dsn`, by UID."""
    rows = pg_query(
        dsn,
        "SELECT c.content FROM mail_messages m"
        " JOIN mail_folders f ON f.id = m.folder_id"
        " JOIN mail_contents c ON c.digest = m.digest"
        " WHERE f.mailbox = %s AND f.name = 'INBOX' ORDER BY m.uid",
        (parse_address(address).key,),
    )
    return [bytes(row[0]) for row in rows]


def add_users(
    config: Config, dsn: str | None, addresses: Iterable[str], password: str = "secret"
) -> None:
    """Make `addresses` users of the server of `config`: in its users.json, or with
    `dsn` in the database's users table (whose NOTIFY reaches a running server)."""
    cram_md5 = "CRAM-MD5" in config.smtp.auth_mechanisms
    if dsn is None:
        store: Any = UserStore(
            config.data_dir / "users.json", cram_md5=cram_md5, hasher=FAST_HASHER
        )
        for address in addresses:
            store.add(parse_address(address), password)
        return
    # Imported here: psycopg is there only with the postgresql extra.
    from sansmail.storage.pg import Database  # noqa: PLC0415
    from sansmail.storage.pg._users import PgUserStore  # noqa: PLC0415

    db = Database(dsn)
    try:
        store = PgUserStore(db, hasher=FAST_HASHER, cram_md5=cram_md5)
        for address in addresses:
            store.add(parse_address(address), password)
    finally:
        db.close()


#: A module's ``pytestmark`` (or a test's mark) that runs its tests on both storage
#: backends: `server_backend` is parametrized by conftest's ``pytest_generate_tests``
#: with the args of the closest ``server_backends`` mark, so that one test can narrow
#: its module's mark (two ``parametrize`` marks of one name are an error).
BOTH_BACKENDS = pytest.mark.server_backends("maildir", "postgresql")


def maildir_only(reason: str) -> pytest.MarkDecorator:
    """For a test of a `BOTH_BACKENDS` module that looks at Maildir files (`reason`)."""
    return pytest.mark.server_backends("maildir", reason=reason)


def postgresql_xfail(reason: str) -> pytest.MarkDecorator:
    """For a test of a `BOTH_BACKENDS` module that fails on PostgreSQL (a known bug:
    `reason`); strict, so that its fix shows."""
    xfail = pytest.mark.xfail(strict=True, reason=reason)
    return pytest.mark.server_backends("maildir", pytest.param("postgresql", marks=xfail))


@pytest.fixture
def server_backend() -> str:
    """The storage backend of `start_server`'s servers: Maildir files, unless the test
    is parametrized (`BOTH_BACKENDS`)."""
    return "maildir"


@pytest.fixture
def backend_dsn(server_backend: str, request: pytest.FixtureRequest) -> str | None:
    """The database of a server a test starts itself on `server_backend`: a fresh one
    (`pg_dsn`) on PostgreSQL, None on Maildir files."""
    if server_backend != "postgresql":
        return None
    return str(request.getfixturevalue("pg_dsn"))


def storage_table(dsn: str | None, *, queue_lease: str | None = None) -> str:
    """The config's ``[storage]`` table of a server on the database `dsn`, with its
    `queue_lease` if given; "" for Maildir files (None)."""
    if dsn is None:
        return ""
    table = f'[storage]\nbackend = "postgresql"\ndsn = {_toml(dsn)}\n'
    if queue_lease is not None:
        table += f"queue_lease = {_toml(queue_lease)}\n"
    return table


@pytest.fixture
def start_server(
    tmp_path: pathlib.Path,
    nursery: trio.Nursery,
    server_backend: str,
    request: pytest.FixtureRequest,
) -> Iterator[StartServer]:
    # A fresh database only for the tests that run on one.
    dsn = request.getfixturevalue("pg_dsn") if server_backend == "postgresql" else None

    async def start(
        users: tuple[str, ...] = ("alice@example.test",),
        tls: tuple[pathlib.Path, pathlib.Path] | None = None,
        mynetworks: list[str] | None = None,
        listen: Mapping[str, str] | None = None,
        auth_settings: AuthSettings | None = None,
        antispam: Mapping[str, Any] | None = None,
        nameservers: list[str] | None = None,
        limits: Mapping[str, Any] | None = None,
        **smtp: Any,
    ) -> RunningServer:
        path = write_config(
            tmp_path,
            smtp,
            tls=tls,
            mynetworks=mynetworks,
            listen=listen,
            antispam=antispam,
            nameservers=nameservers,
            limits=limits,
            dsn=dsn,
        )
        config = load_config(path, default_hostname="unused.test")
        config.data_dir.mkdir(parents=True, exist_ok=True)
        shutdown = trio.Event()
        done = trio.Event()

        settings = auth_settings if auth_settings is not None else quick_auth(config)

        async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await serve(
                    config, shutdown=shutdown, task_status=task_status, auth_settings=settings
                )
            finally:
                done.set()

        add_users(config, dsn, users)
        bound = await nursery.start(run)
        first = next(iter(bound))
        host, port = bound[first][0]
        return RunningServer(
            config=config,
            host=host,
            port=port,
            shutdown=shutdown,
            done=done,
            bound=bound,
            dsn=dsn,
        )

    yield start
    for client in RawClient.opened:
        client.close()
    RawClient.opened.clear()


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(tls_ca: trustme.CA, tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A certificate for mx.example.test signed by the test CA, as [tls] files."""
    cert = tls_ca.issue_cert("mx.example.test", "localhost", "127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


@pytest.fixture
def client_tls(tls_ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts only the test CA."""
    context = ssl.create_default_context()
    tls_ca.configure_trust(context)
    return context


class RawClient:
    """A deliberately dumb blocking client for byte-exact tests (run it in a thread)."""

    #: Every client ever opened, closed by the fixture's teardown, so a test that fails
    #: half-way does not leak sockets into the next one.
    opened: ClassVar[list[RawClient]] = []

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        RawClient.opened.append(self)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> list[bytes]:
        """One complete (possibly multi-line) reply, as its lines without CRLF."""
        lines: list[bytes] = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {lines!r} + {self.buf!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if len(line) < 4 or line[3:4] == b" ":
                return lines

    def code(self) -> int:
        return int(self.reply()[-1][:3])

    def closed(self) -> bool:
        """True when the server closed the connection (and sent nothing more)."""
        try:
            chunk = self.sock.recv(1)
        except OSError:
            return True
        return chunk == b""

    def close(self) -> None:
        self.sock.close()


async def logged(
    caplog: pytest.LogCaptureFixture,
    logger: str,
    until: Callable[[list[str]], bool],
    timeout: float = 10.0,
) -> list[str]:
    """The messages `logger` has logged, once `until(messages)` holds: a session's last
    lines are written after its client has gone, so a test waits for them, not a while."""
    with trio.fail_after(timeout):
        while True:
            lines = [r.getMessage() for r in caplog.records if r.name == logger]
            if until(lines):
                return lines
            await trio.sleep(0.01)
