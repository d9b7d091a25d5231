"""A small mail network on loopback for outbound delivery tests.

* `Sink`: aiosmtpd (a server nobody here wrote) on 127.0.0.x, whose answers a test
  scripts per recipient and per attempt, recording what it received.
* `start_sansmail`: a sansmail server in the test's Trio loop from a TOML text, so a
  test can run two of them (ours and the "remote" one). Its storage is the TOML's: a
  ``[storage] backend = "postgresql"`` table (`start_ours`'s `dsn`) puts its users,
  aliases, mailboxes and queue in that database, and `Server` reads them there.

Every remote host of a test listens on the same port at a different 127.0.0.x address,
because an MX record has no port: `[delivery] smtp_port` points our server at it.
"""

from __future__ import annotations

import email
import pathlib
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio
import trustme
from aiosmtpd.controller import Controller
from dns_server import DNSServer
from trio_helpers import FAST_HASHER, add_users, inbox_rows, quick_auth, storage_table

from sansmail.config import Config, load_config
from sansmail.mail.address import parse_address
from sansmail.mail.envelope import QueuedMessage
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.queue import QueueStore
from sansmail.storage.users import UserStore
from sansmail_trio import serve

PEER = "127.0.0.2"
FAILING = "127.0.0.3"
DEAD = "127.0.0.4"  # nothing listens here


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@attrs.define
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sink.ehlos += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.sink.rcpt_options.append(options)
        answer = self.sink.rcpt_answer(address)
        if answer.startswith("250"):
            envelope.rcpt_tos.append(address)
        return answer

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        answer = self.sink.data_answer()
        if answer.startswith("250"):
            self.sink.received.append(
                Received(
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    content=envelope.original_content,
                )
            )
        return answer


class Sink:
    """aiosmtpd on `host`:`port`. `rcpt` maps a recipient to the list of answers it gets
    at successive attempts (the last one repeats); `data` likewise for the end of DATA."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        rcpt: dict[str, list[str]] | None = None,
        data: list[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.rcpt = rcpt or {}
        self.data = data or ["250 2.0.0 OK"]
        self.received: list[Received] = []
        self.rcpt_options: list[list[str]] = []
        self.ehlos = 0
        self._rcpt_seen: dict[str, int] = {}
        self._data_seen = 0
        # aiosmtpd gives its thread 5 s to start serving by default, which a loaded
        # machine running the suite in parallel can exceed; the bound only matters when
        # the sink is broken.
        self.controller = Controller(_Handler(self), hostname=host, port=port, ready_timeout=60)

    def rcpt_answer(self, address: str) -> str:
        answers = self.rcpt.get(address.lower(), ["250 2.1.5 OK"])
        n = self._rcpt_seen.get(address.lower(), 0)
        self._rcpt_seen[address.lower()] = n + 1
        return answers[min(n, len(answers) - 1)]

    def tries(self, address: str) -> int:
        """How many RCPT commands named `address` so far."""
        return self._rcpt_seen.get(address.lower(), 0)

    def data_answer(self) -> str:
        n = self._data_seen
        self._data_seen += 1
        return self.data[min(n, len(self.data) - 1)]

    def __enter__(self) -> Sink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@attrs.define
class Server:
    config: Config
    bound: dict[str, list[tuple[str, int]]]
    shutdown: trio.Event
    done: trio.Event

    def port(self, service: str = "smtp") -> int:
        return self.bound[service][0][1]

    @property
    def data_dir(self) -> pathlib.Path:
        return self.config.data_dir

    @property
    def dsn(self) -> str | None:
        """The database of ``[storage] backend = "postgresql"``; None: Maildir files."""
        return _dsn(self.config)

    @property
    def backend(self) -> str:
        return self.config.storage.backend

    def messages(self, address: str) -> list[bytes]:
        """`address`'s INBOX (on Maildir: new/, not yet seen by IMAP), in the order
        stored, with LF line ends as Maildir files have."""
        if self.dsn is not None:
            return [m.replace(b"\r\n", b"\n") for m in inbox_rows(self.dsn, address)]
        local, _, domain = address.rpartition("@")
        new = self.data_dir / "mail" / domain / local.lower() / "new"
        if not new.exists():
            return []
        return [p.read_bytes() for p in sorted(new.iterdir())]

    def queued(self) -> list[QueuedMessage]:
        if self.dsn is None:
            return QueueStore(self.data_dir / "queue").list()
        # Imported here: psycopg is there only with the postgresql extra.
        from sansmail.storage.pg import Database  # noqa: PLC0415
        from sansmail.storage.pg._queue import PgQueueStore  # noqa: PLC0415

        # A look, not a node: list() claims nothing, so the node name is arbitrary.
        db = Database(self.dsn)
        try:
            return PgQueueStore(db, node="test").list()
        finally:
            db.close()

    async def stop(self) -> None:
        self.shutdown.set()
        await self.done.wait()


def _dsn(config: Config) -> str | None:
    return config.storage.dsn if config.storage.backend == "postgresql" else None


def import_aliases(config: Config) -> None:
    """On PostgreSQL, what ``newaliases`` does: every node delivers with the aliases in
    the database, not with its aliases file (nothing to do on Maildir, where the server
    reads the file itself)."""
    dsn = _dsn(config)
    if dsn is None or config.aliases is None:
        return
    # Imported here: psycopg is there only with the postgresql extra.
    from sansmail.storage.pg import Database  # noqa: PLC0415
    from sansmail.storage.pg._aliases import import_aliases as store  # noqa: PLC0415

    db = Database(dsn)
    try:
        store(db, AliasSource(config.aliases))
    finally:
        db.close()


async def start_sansmail(
    nursery: trio.Nursery, folder: pathlib.Path, toml: str, users: tuple[str, ...] = ()
) -> Server:
    """Start a server from `toml` in `folder`, with `users` (password "secret") made
    before it starts; on PostgreSQL, its aliases file is imported first too."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sansmail.toml"
    path.write_text(toml)
    config = load_config(path, default_hostname="unused.test")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if _dsn(config) is None:
        store = UserStore(config.data_dir / "users.json", hasher=FAST_HASHER)
        for address in users:
            store.add(parse_address(address), "secret")
    else:
        add_users(config, _dsn(config), users)
        import_aliases(config)
    shutdown, done = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve(
                config, shutdown=shutdown, task_status=task_status, auth_settings=quick_auth(config)
            )
        finally:
            done.set()

    bound = await nursery.start(run)
    return Server(config=config, bound=dict(bound), shutdown=shutdown, done=done)


async def wait_for(
    condition: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition"
) -> Any:
    """Poll `condition` (run in a thread: it reads files) until it is truthy. The
    timeout only bounds a failing test: it is generous because the suite runs in
    parallel on machines shared with other work."""
    deadline = time.monotonic() + timeout
    while True:
        value = await trio.to_thread.run_sync(condition)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await trio.sleep(0.05)


def parse(message: bytes) -> email.message.Message:
    return email.message_from_bytes(message)


def tls_pair(ca: trustme.CA, folder: pathlib.Path, name: str) -> tuple[pathlib.Path, pathlib.Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert(name)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


async def start_ours(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    port: int,
    tls_ca: trustme.CA,
    *,
    aliases: str = "",
    delivery: str = "",
    mynetworks: str = '["127.0.0.0/8"]',
    dsn: str | None = None,
) -> Server:
    """Our server, on Maildir files, or with `dsn` on that PostgreSQL database."""
    folder = tmp_path / "ours"
    cert, key = tls_pair(tls_ca, folder, "mx.example.test")
    # Retries a second apart unless the test sets its own schedule.
    for name in ("minimal_backoff", "maximal_backoff"):
        if name not in delivery:
            delivery += f'\n{name} = "1s"'
    storage = storage_table(dsn)

    (folder / "aliases").write_text(aliases)
    return await start_sansmail(
        nursery,
        folder,
        f"""\
hostname = "mx.example.test"
domains = ["example.test"]
data_dir = "data"
mynetworks = {mynetworks}
aliases = "aliases"
[tls]
cert = "{cert}"
key = "{key}"
[listen]
smtp = "127.0.0.1:0"
submission = "127.0.0.1:0"
[dns]
nameservers = ["{dns.host_port}"]
[delivery]
smtp_port = {port}
{delivery}
{storage}""",
        users=("alice@example.test",),
    )


async def start_peer(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    port: int,
    tls_ca: trustme.CA | None,
    *,
    listen: str = "",
    smtp: str = "",
    cert_name: str = "mx.peer.test",
) -> Server:
    """The remote end: a second sansmail on PEER, STARTTLS offered when `tls_ca` makes
    it a certificate for `cert_name` (with no certificate at all, none is offered)."""
    folder = tmp_path / "peer"
    folder.mkdir(parents=True, exist_ok=True)
    tls = ""
    if tls_ca is not None:
        cert, key = tls_pair(tls_ca, folder, cert_name)
        tls = f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
    return await start_sansmail(
        nursery,
        folder,
        f"""\
hostname = "mx.peer.test"
domains = ["peer.test", "implicit.test", "backup.test", "elsewhere.test"]
data_dir = "data"
mynetworks = ["192.0.2.0/24"]
{tls}[listen]
smtp = "{PEER}:{port}"
{listen}
[dns]
nameservers = ["127.0.0.1:9"]
[antispam]
spf = "off"
dkim = "off"
dmarc = "off"
[smtp]
{smtp}
""",
        users=("bob@peer.test", "carol@implicit.test", "bob@backup.test", "dan@elsewhere.test"),
    )


def submit(server: Server, sender: str, recipients: list[str], body: str = "Hello") -> None:
    """As a mail client does: submission port, STARTTLS, AUTH."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    message = f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: test\r\n\r\n{body}\r\n"
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=10) as client:
        client.starttls(context=context)
        client.login("alice@example.test", "secret")
        client.sendmail(sender, recipients, message)


def send(server: Server, sender: str, recipients: list[str], body: str = "Hello") -> None:
    """As another MTA does: port 25 (here from mynetworks, so relaying is allowed)."""
    message = f"From: {sender}\r\nSubject: test\r\n\r\n{body}\r\n"
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as client:
        client.sendmail(sender, recipients, message)
