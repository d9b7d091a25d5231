"""Crash consistency under load, shared by tests/sansmail_trio/test_crash_load.py (short)
and bench/crash_soak.py (long): a real `sansmail-trio serve` with `processes = N`,
clients of every protocol writing at once, `kill -9` of the master, of single server
processes and of the queue runner at random moments, and a count at the end.

Theory of operation:

* Every message carries a unique Message-ID, and the driver records, per Message-ID,
  where it was sent and whether the server acknowledged it (``250`` to DATA, ``OK
  [APPENDUID]``), with the SHA-256 of the octets sent. The clients never retry: a
  message without an answer may be there once or not at all (RFC 1047: the server may
  have stored it and died before its reply), never twice.
* Users have roles, so that every change is attributable: alice is emptied by a POP3
  client (TOP, DELE, QUIT: a QUIT answered ``+OK`` means those messages are gone for
  good); bob is written by SMTP and IMAP APPEND, and an IMAP client flags messages
  (``UID STORE +FLAGS``) and MOVEs them to Archive, but nothing ever deletes his mail.
  Relayed recipients go, through ``[delivery] transport``, to a sink on loopback that
  records each arrival with its time.
* UIDs are watched over time per mailbox: each one learnt (APPENDUID, COPYUID, FETCH)
  must always name the same Message-ID, UIDNEXT at a SELECT must be above every UID
  acknowledged before it, and UIDVALIDITY never changes.
* A master killed is started again at once, as systemd would (the old children shut
  down on their own when they see their parent gone); a killed child is the master's
  to replace. A master that stops by itself (its crash-loop guard) is started again too.
* At the end the clients stop, the queue drains, the server's own view (IMAP, with its
  UIDs and flags) and what it stored (the Maildir files, or on PostgreSQL the mailbox
  rows and their contents) are compared with what was acknowledged: lost
  (acknowledged, absent), duplicated (more than once: at the sink, within RFC 5321
  §6.1's window only if a runner or master kill fell between the two arrivals), files
  that are not what was sent (half-written), UIDs reused, UIDVALIDITY changes, flags
  acknowledged but missing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import imaplib
import itertools
import os
import pathlib
import poplib
import random
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
from aiosmtpd.controller import Controller
from trio_helpers import FAST_HASHER, started_lines, storage_table, wait_until_started

from sansmail.mail.address import parse_address
from sansmail.storage.queue import QueuedMessage, QueueStore
from sansmail.storage.users import UserStore

if TYPE_CHECKING:
    from sansmail.storage.pg import Database

DOMAIN = "example.test"
REMOTE = "remote.test"
POP_USER = f"alice@{DOMAIN}"
IMAP_USER = f"bob@{DOMAIN}"
PASSWORD = "pw"
FOLDERS = ("INBOX", "Archive")
FLAGS = ("\\Flagged", "\\Answered")
KINDS = ("master", "server", "runner")

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^>\s]+)>", re.IGNORECASE | re.MULTILINE)
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")
_COPYUID = re.compile(rb"\[COPYUID (\d+) ([\d:,]+) ([\d:,]+)\]")
_FETCHED = re.compile(rb"UID (\d+)")
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")


def message_id(data: bytes) -> str | None:
    match = _MESSAGE_ID.search(data)
    return match.group(1).decode("ascii", "replace") if match else None


def _normal(data: bytes) -> bytes:
    # Stored files and relayed copies may end lines with LF where the client sent CRLF.
    return data.replace(b"\r\n", b"\n")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@attrs.define
class Sent:
    """One message as the clients sent it: where to, and what the server answered."""

    digest: str  # of the message as sent, line ends normalised
    size: int
    places: tuple[str, ...]  # "alice", "bob" (local mailboxes), "remote"
    acked: set[str] = attrs.Factory(set)  # the places acknowledged
    via: str = "smtp"  # or "append"

    def whole(self, data: bytes) -> bool:
        """`data` (a stored file or relayed copy) ends with the whole message: what the
        server prepends (Received:, Return-Path:) is allowed, a missing end is not."""
        normal = _normal(data)
        return len(normal) >= self.size and _digest(normal[-self.size :]) == self.digest


@attrs.frozen
class Arrival:
    """A message the sink accepted: when its transaction began, when it ended."""

    started: float
    at: float
    mid: str | None
    whole: bool  # the message as sent, all of it


@attrs.define
class Kill:
    at: float  # time.monotonic()
    kind: str  # one of KINDS, or "stopped" (the master's crash-loop guard)
    pid: int


@attrs.define
class Findings:
    """What the count at the end found; `problems` lists each violation in words."""

    acked: collections.Counter[str] = attrs.Factory(collections.Counter)
    unacked: int = 0
    lost: int = 0
    duplicated: int = 0
    duplicated_in_window: int = 0
    unacked_present: int = 0
    half_written: int = 0
    uidvalidity_changes: int = 0
    uid_reuse: int = 0
    flags_lost: int = 0
    pop3_deleted: int = 0
    pop3_reappeared: int = 0
    relayed: int = 0
    problems: list[str] = attrs.Factory(list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(text)


class _SinkHandler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        # The transaction's start: a runner that died after sending the message (and so
        # possibly before our 250 reached it) died after this moment.
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.started = time.monotonic()
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = bytes(envelope.original_content)
        mid = message_id(content)
        whole = self.sink.verify(mid, content)
        arrival = Arrival(envelope.started, time.monotonic(), mid, whole)
        with self.sink.lock:
            self.sink.arrivals.append(arrival)
        # A next hop slow to answer the final dot (a content filter): the sender's
        # window between our taking the message and its noting our 250.
        await asyncio.sleep(self.sink.answer_delay)
        return "250 2.0.0 OK"


class Sink:
    """An SMTP server on loopback (aiosmtpd) recording every message with its time."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.lock = threading.Lock()
        self.arrivals: list[Arrival] = []
        self.answer_delay = 0.0
        #: Whether a message that arrives is one sent, whole (set by the `Harness`).
        self.verify: Callable[[str | None, bytes], bool] = lambda mid, content: True
        self.controller = Controller(
            _SinkHandler(self), hostname="127.0.0.1", port=self.port, ready_timeout=60
        )

    def __enter__(self) -> Sink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)


class Harness:
    """A `sansmail-trio serve` in `folder`, its clients, its killer and its checker."""

    def __init__(
        self,
        folder: pathlib.Path,
        sink: Sink,
        *,
        processes: int = 2,
        seed: int = 0,
        smtp_clients: int = 2,
        imap_clients: int = 1,
        log: Callable[[str], None] | None = None,
        dsn: str | None = None,
    ) -> None:
        self.folder = folder
        #: The server's storage: Maildir files in `folder`, or with `dsn` this database.
        self.dsn = dsn
        self._db: Database | None = None
        self.sink = sink
        self.processes = processes
        self.rng = random.Random(seed)
        self.seed = seed
        self.smtp_clients = smtp_clients
        self.imap_clients = imap_clients
        self.say = log or (lambda text: None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.old: list[subprocess.Popen[bytes]] = []
        self.ports: dict[str, int] = {}
        self.lock = threading.Lock()
        self.sent: dict[str, Sent] = {}
        self.kills: list[Kill] = []
        self.stop_clients = threading.Event()
        self.threads: list[threading.Thread] = []
        self.counter = 0
        # (folder): {uid: Message-ID}, highest UIDNEXT, UIDVALIDITY values seen.
        self.uids: dict[str, dict[int, str]] = {f: {} for f in FOLDERS}
        self.validity: dict[str, set[int]] = {f: set() for f in FOLDERS}
        self.flags: dict[str, set[str]] = collections.defaultdict(set)
        self.pop3_gone: set[str] = set()  # DELE'd, QUIT answered +OK
        self.pop3_maybe: set[str] = set()  # DELE'd, QUIT unanswered
        self.uid_problems: list[str] = []
        self.client_errors: collections.Counter[str] = collections.Counter()
        self.log_path = folder / "serve.log"
        sink.verify = self._verify
        self._configure()

    # -- setup ---------------------------------------------------------------------------

    def _configure(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "sansmail.toml").write_text(
            f"""\
hostname = "mx.{DOMAIN}"
domains = ["{DOMAIN}"]
data_dir = "data"
processes = {self.processes}
mynetworks = ["127.0.0.0/8"]
[listen]
smtp = "127.0.0.1:0"
pop3 = "127.0.0.1:0"
imap = "127.0.0.1:0"
[smtp]
max_connections_per_ip = 1000
shutdown_grace = "3s"
[dns]
nameservers = ["127.0.0.1:9"]
[antispam]
spf = "off"
dkim = "off"
dmarc = "off"
[delivery]
transport = {{ "{REMOTE}" = "[127.0.0.1]:{self.sink.port}" }}
tls = "none"
minimal_backoff = "1s"
maximal_backoff = "2s"
[limits]
imap_max_connections_per_ip = 1000
pop3_max_connections_per_ip = 1000
max_userip_connections = 100
client_message_rate = 0
client_recipient_rate = 0
user_message_rate = 0
user_recipient_rate = 0
commands_per_second = 0
{self._storage()}"""
        )
        users: Any
        if self.dsn is None:
            users = UserStore(self.folder / "data" / "users.json", hasher=FAST_HASHER)
        else:
            # Imported here: psycopg is there only with the postgresql extra.
            from sansmail.storage.pg._users import PgUserStore  # noqa: PLC0415

            users = PgUserStore(self.db, hasher=FAST_HASHER)
        for address in (POP_USER, IMAP_USER):
            users.add(parse_address(address), PASSWORD)

    def _storage(self) -> str:
        """The config's [storage] table: none for Maildir."""
        # queue_lease: a runner killed with SIGKILL cannot give its claims back, and
        # they are taken again only when their lease ends; the default (a minute) is
        # longer than `drain` waits for a short run. A live runner renews its leases
        # while it works on them, so a short one does not make it lose a claim.
        return storage_table(self.dsn, queue_lease="2s")

    @property
    def db(self) -> Database:
        """The harness's own connection to the server's database (with `dsn`)."""
        assert self.dsn is not None
        if self._db is None:
            # Imported here: psycopg is there only with the postgresql extra.
            from sansmail.storage.pg import Database  # noqa: PLC0415

            self._db = Database(self.dsn)
        return self._db

    def queued(self) -> list[QueuedMessage]:
        """The messages in the server's queue (on PostgreSQL every node's)."""
        if self.dsn is None:
            return QueueStore(self.folder / "data" / "queue").list()
        from sansmail.storage.pg._queue import PgQueueStore  # noqa: PLC0415

        # `list` reads every node's rows; the node name is only the claims' holder.
        return PgQueueStore(self.db, node="crash-load").list()

    def _verify(self, mid: str | None, content: bytes) -> bool:
        with self.lock:
            sent = self.sent.get(mid) if mid is not None else None
        return sent is not None and sent.whole(content)

    def start(self) -> None:
        seen = started_lines(self.log_path)
        # Not the sansmail-trio script: a restart is started while the clients load
        # both cores, and a wrapper (pyenv's shim) takes seconds of it.
        command = [sys.executable, "-m", "sansmail_trio", "serve"]
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(command, cwd=self.folder, stderr=log)
        ports = wait_until_started(proc, self.log_path, processes=self.processes, seen=seen)
        with self.lock:
            self.proc = proc
            self.ports = ports

    def port(self, service: str) -> int:
        with self.lock:
            return self.ports[service]

    def children(self) -> list[int]:
        assert self.proc is not None
        pid = self.proc.pid
        path = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
        with contextlib.suppress(OSError):
            return [int(p) for p in path.read_text().split()]
        return []

    def child_of_kind(self, kind: str) -> int | None:
        found = []
        for pid in self.children():
            with contextlib.suppress(OSError):
                name = pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
                if (name == "sansmail-queue") == (kind == "runner"):
                    found.append(pid)
        return self.rng.choice(found) if found else None

    def ensure_running(self) -> None:
        """Start the master again if it stopped by itself (the crash-loop guard)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            self.kills.append(Kill(time.monotonic(), "stopped", self.proc.pid))
            self.say(f"master {self.proc.pid} stopped with status {self.proc.returncode}")
            self.start()

    def kill(self, kind: str) -> int | None:
        """`kill -9` one process of `kind`; for the master, start the server again."""
        assert self.proc is not None
        self.ensure_running()
        if kind == "master":
            pid = self.proc.pid
            self.proc.kill()
            self.proc.wait(10)
            self.kills.append(Kill(time.monotonic(), kind, pid))
            self.old.append(self.proc)
            self.start()
            return pid
        child = self.child_of_kind(kind)
        if child is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
            self.kills.append(Kill(time.monotonic(), kind, child))
        return child

    def terminate(self) -> int:
        """SIGTERM to the master; its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def close(self) -> None:
        """Stop the clients, the server and whatever killed masters left, and wait
        until none of them can write into the folder any more."""
        self.stop_all_clients()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        deadline = time.monotonic() + 30
        while (left := _orphans(self.folder)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        if self._db is not None:
            # Before the database is dropped (the test's pg_dsn fixture).
            self._db.close()
            self._db = None

    # -- clients -------------------------------------------------------------------------

    def start_clients(self) -> None:
        targets: list[Callable[[int], None]] = [self._smtp_client] * self.smtp_clients
        targets += [self._appender, self._imap_worker] * self.imap_clients
        targets.append(self._pop3_client)  # one: a second would meet the maildrop lock
        for n, target in enumerate(targets):
            thread = threading.Thread(target=target, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop_all_clients(self) -> None:
        self.stop_clients.set()
        for thread in self.threads:
            thread.join(60)
        self.threads = []

    def _message(self, rng: random.Random, places: tuple[str, ...], via: str) -> tuple[str, bytes]:
        with self.lock:
            self.counter += 1
            number = self.counter
        mid = f"{via}.{number}.{self.seed}.{rng.getrandbits(32):08x}@crash.test"
        lines = [
            f"line {i} of {mid} {'x' * rng.randrange(60)}" for i in range(rng.randrange(4, 200))
        ]
        data = (
            f"From: <sender@example.org>\r\nTo: <{places[0]}>\r\nSubject: crash {number}\r\n"
            f"Message-ID: <{mid}>\r\n\r\n" + "\r\n".join(lines) + "\r\n"
        ).encode()
        normal = _normal(data)
        with self.lock:
            self.sent[mid] = Sent(_digest(normal), len(normal), places, via=via)
        return mid, data

    def _smtp_client(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        choices = (("alice",), ("bob",), ("remote",), ("bob", "remote"), ("alice", "bob"))
        while not self.stop_clients.is_set():
            try:
                with _smtp(self.port("smtp")) as client:
                    for _ in range(rng.randrange(1, 6)):
                        if self.stop_clients.is_set():
                            break
                        places = rng.choice(choices)
                        rcpts = [_address(p, rng) for p in places]
                        mid, data = self._message(rng, places, "smtp")
                        refused = client.sendmail("sender@example.org", rcpts, data)
                        with self.lock:
                            self.sent[mid].acked.update(
                                p for p, r in zip(places, rcpts, strict=True) if r not in refused
                            )
            except (OSError, smtplib.SMTPException) as exc:
                self._client_error("smtp", exc)

    def _imap(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.port("imap"), timeout=20)
        try:
            client.login(IMAP_USER, PASSWORD)
        except BaseException:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise
        return client

    def _appender(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        while not self.stop_clients.is_set():
            try:
                client = self._imap()
                try:
                    while not self.stop_clients.is_set():
                        folder = rng.choice(FOLDERS)
                        mid, data = self._message(rng, ("bob",), "append")
                        typ, answer = client.append(folder, None, None, data)
                        match = _APPENDUID.search(answer[-1] or b"") if typ == "OK" else None
                        if match is None:
                            self.client_errors[f"append {typ}"] += 1
                            continue
                        with self.lock:
                            self.sent[mid].acked.add("bob")
                        self._learn(folder, int(match.group(1)), {int(match.group(2)): mid})
                finally:
                    with contextlib.suppress(Exception):
                        client.shutdown()
            except (OSError, imaplib.IMAP4.error) as exc:
                self._client_error("append", exc)

    def _learn(self, folder: str, validity: int, uids: dict[int, str]) -> None:
        with self.lock:
            self.validity[folder].add(validity)
            known = self.uids[folder]
            for uid, mid in uids.items():
                if known.setdefault(uid, mid) != mid:
                    self.uid_problems.append(f"{folder} UID {uid} was {known[uid]}, now {mid}")

    def _imap_worker(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        while not self.stop_clients.is_set():
            try:
                client = self._imap()
                # What this connection knows of each folder: only new UIDs are fetched.
                known: dict[str, dict[int, str]] = {}
                try:
                    while not self.stop_clients.is_set():
                        folder = "INBOX" if rng.random() < 0.8 else "Archive"
                        present = self._select(client, folder, known.get(folder))
                        known[folder] = present
                        for _ in range(rng.randrange(1, 8)):
                            if not present or self.stop_clients.is_set():
                                break
                            uid = rng.choice(list(present))
                            if folder == "INBOX" and rng.random() < 0.3:
                                self._move(client, uid, present.pop(uid))
                            else:
                                self._store(client, uid, present[uid], rng.choice(FLAGS))
                        time.sleep(0.01)
                finally:
                    with contextlib.suppress(Exception):
                        client.shutdown()
            except (OSError, imaplib.IMAP4.error) as exc:
                self._client_error("imap", exc)

    def _select(
        self, client: imaplib.IMAP4, folder: str, present: dict[int, str] | None
    ) -> dict[int, str]:
        """SELECT `folder`, check UIDNEXT, learn the UIDs in it (those above `present`'s,
        if given); {uid: Message-ID} of the folder."""
        with self.lock:
            before = max(self.uids[folder], default=0)
        typ, _ = client.select(folder)
        if typ != "OK":
            raise imaplib.IMAP4.error(f"SELECT {folder}: {typ}")
        validity = _code(client, "UIDVALIDITY")
        uidnext = _code(client, "UIDNEXT")
        if uidnext <= before:
            with self.lock:
                self.uid_problems.append(f"{folder} UIDNEXT {uidnext} after UID {before}")
        present = dict(present or {})
        present.update(fetch_ids(client, max(present, default=0) + 1))
        self._learn(folder, validity, present)
        return present

    def _move(self, client: imaplib.IMAP4, uid: int, mid: str) -> None:
        client.untagged_responses.pop("COPYUID", None)
        typ, data = client.uid("MOVE", str(uid), "Archive")
        if typ != "OK":
            return
        texts = [d for d in data if isinstance(d, bytes)]
        codes = client.untagged_responses.pop("COPYUID", [])
        texts += [b"[COPYUID " + c + b"]" for c in codes if isinstance(c, bytes)]
        for text in texts:
            match = _COPYUID.search(text)
            if match and match.group(2) == str(uid).encode():
                self._learn("Archive", int(match.group(1)), {int(match.group(3)): mid})

    def _store(self, client: imaplib.IMAP4, uid: int, mid: str, flag: str) -> None:
        typ, _ = client.uid("STORE", str(uid), "+FLAGS.SILENT", f"({flag})")
        if typ == "OK":
            with self.lock:
                self.flags[mid].add(flag)

    def _pop3_client(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        while not self.stop_clients.is_set():
            time.sleep(rng.uniform(0.05, 0.3))
            marked: list[str] = []
            try:
                client = _POP3(self.port("pop3"))
                try:
                    client.user(POP_USER)
                    client.pass_(PASSWORD)
                    count = client.stat()[0]
                    for number in rng.sample(range(1, count + 1), min(count, rng.randrange(1, 4))):
                        mid = message_id(b"\r\n".join(client.top(number, 0)[1]))
                        client.dele(number)
                        if mid is not None:
                            marked.append(mid)
                    with self.lock:
                        self.pop3_maybe.update(marked)
                    client.quit()
                    with self.lock:
                        self.pop3_gone.update(marked)
                finally:
                    with contextlib.suppress(Exception):
                        client.close()
            except (OSError, poplib.error_proto) as exc:
                self._client_error("pop3", exc)

    def _client_error(self, what: str, exc: BaseException) -> None:
        self.client_errors[f"{what} {type(exc).__name__}"] += 1
        time.sleep(0.05)

    # -- the run -------------------------------------------------------------------------

    def run_kills(self, duration: float, kinds: list[str]) -> None:
        """Kill one process of each of `kinds`, at random moments over `duration`."""
        begin = time.monotonic()
        moments = sorted(self.rng.uniform(0.1, 0.95) * duration for _ in kinds)
        for at, kind in zip(moments, kinds, strict=True):
            while time.monotonic() - begin < at:
                time.sleep(0.02)
            pid = self.kill(kind)
            self.say(f"kill -9 {kind} {pid}")
        while time.monotonic() - begin < duration:
            time.sleep(0.05)
        self.ensure_running()

    def drain(self, timeout: float = 120.0) -> None:
        """Wait until the queue is empty and the old masters' children are gone."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ensure_running()
            if not self.queued() and not _orphans(self.folder, self.proc):
                # A relayed copy accepted by the sink just before a kill may be sent
                # again after a backoff; a moment more lets such a copy arrive.
                time.sleep(0.5)
                if not self.queued():
                    return
            time.sleep(0.2)
        raise TimeoutError(f"the queue did not drain: {len(self.queued())} left")

    # -- the count -----------------------------------------------------------------------

    def check(self) -> Findings:
        """Compare what the server holds (IMAP, then the files, then the sink) with what
        was acknowledged. Call with the server running and the queue drained."""
        found = Findings()
        imap_view = self._imap_view(found)
        with self.lock:
            sent = dict(self.sent)
            found.problems.extend(self.uid_problems[:20])
            found.uid_reuse += len(self.uid_problems)
        stored = self._files if self.dsn is None else self._rows
        on_disk = {user: stored(user, sent, found) for user in ("alice", "bob")}
        for folder, ids in imap_view.items():
            files = on_disk["bob"].get(folder, collections.Counter())
            if collections.Counter(ids.values()) != files:
                found.problem(f"IMAP {folder} and its stored messages disagree")
        counts = {
            "alice": sum(on_disk["alice"].values(), collections.Counter()),
            "bob": sum(on_disk["bob"].values(), collections.Counter()),
            "remote": self._relayed(sent, found),
        }
        for mid, message in sent.items():
            if message.acked:
                found.acked[message.via] += 1
            else:
                found.unacked += 1
            for place in message.places:
                n = counts[place][mid]
                if place == "alice" and mid in self.pop3_gone:
                    found.pop3_deleted += 1
                    if n:
                        found.pop3_reappeared += 1
                        found.problem(f"{mid}: deleted by POP3 (+OK at QUIT), yet there")
                    continue
                if place in message.acked and n == 0:
                    if place == "alice" and mid in self.pop3_maybe:
                        continue  # DELE'd, QUIT unanswered: it may be gone
                    found.lost += 1
                    found.problem(f"{mid}: acknowledged for {place}, not there")
                if place not in message.acked and n:
                    found.unacked_present += 1
                if n > 1 and place != "remote":
                    found.duplicated += 1
                    found.problem(f"{mid}: {n} copies in {place}'s mailbox")
        for folder, values in self.validity.items():
            if len(values) > 1:
                found.uidvalidity_changes += len(values) - 1
                found.problem(f"{folder}: UIDVALIDITY took the values {sorted(values)}")
        for mid, flags in self.flags.items():
            seen = [f for ids in imap_view.values() for f in [ids.get_flags(mid)] if f is not None]
            if not seen:
                continue  # not in bob's mailboxes: counted as lost above if acknowledged
            for have in seen:
                if not flags <= have:
                    found.flags_lost += 1
                    found.problem(f"{mid}: flags {sorted(flags - have)} acknowledged, missing")
        return found

    def _imap_view(self, found: Findings) -> dict[str, _FolderView]:
        client = self._imap()
        view: dict[str, _FolderView] = {}
        try:
            for folder in FOLDERS:
                typ, _ = client.select(folder, readonly=True)
                assert typ == "OK", folder
                validity = _code(client, "UIDVALIDITY")
                view[folder] = folder_view = _FolderView()
                typ, data = client.uid(
                    "FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
                )
                for head, body in _fetched(data):
                    uid = int(_FETCHED.search(head).group(1))  # type: ignore[union-attr]
                    flags_match = _FLAGS.search(head)
                    flags = set(flags_match.group(1).decode().split()) if flags_match else set()
                    mid = message_id(body)
                    if mid is None:
                        found.problem(f"{folder} UID {uid}: no Message-ID")
                        continue
                    folder_view[uid] = mid
                    folder_view.flags.setdefault(mid, []).append(flags)
                self._learn(folder, validity, dict(folder_view))
        finally:
            with contextlib.suppress(Exception):
                client.logout()
        return view

    def _files(
        self, user: str, sent: dict[str, Sent], found: Findings
    ) -> dict[str, collections.Counter[str]]:
        """{folder: Message-ID counts} of `user`'s files in cur/ and new/, each checked
        to be the whole message sent."""
        root = self.folder / "data" / "mail" / DOMAIN / user
        folders: dict[str, collections.Counter[str]] = {}
        for directory, _dirs, names in os.walk(root):
            path = pathlib.Path(directory)
            if path.name not in ("cur", "new"):
                continue
            folder = "INBOX" if path.parent == root else path.parent.name.lstrip(".")
            counts = folders.setdefault(folder, collections.Counter())
            for name in names:
                data = (path / name).read_bytes()
                mid = message_id(data)
                if mid is None or mid not in sent or not sent[mid].whole(data):
                    found.half_written += 1
                    found.problem(f"{path / name}: not a message as sent ({mid})")
                    continue
                counts[mid] += 1
        return folders

    def _rows(
        self, user: str, sent: dict[str, Sent], found: Findings
    ) -> dict[str, collections.Counter[str]]:
        """`_files` on PostgreSQL: {folder: Message-ID counts} of `user`'s message rows,
        each one's content checked to be the whole message sent."""
        with self.db.transaction() as cur:
            cur.execute(
                "SELECT f.name, m.uid, c.content FROM mail_folders f"
                " JOIN mail_messages m ON m.folder_id = f.id"
                " JOIN mail_contents c ON c.digest = m.digest"
                " WHERE f.mailbox = %s",
                (parse_address(f"{user}@{DOMAIN}").key,),
            )
            rows = cur.fetchall()
        folders: dict[str, collections.Counter[str]] = {}
        for name, uid, content in rows:
            counts = folders.setdefault(name, collections.Counter())
            data = bytes(content)
            mid = message_id(data)
            if mid is None or mid not in sent or not sent[mid].whole(data):
                found.half_written += 1
                found.problem(f"{user} {name} UID {uid}: not a message as sent ({mid})")
                continue
            counts[mid] += 1
        return folders

    def _relayed(self, sent: dict[str, Sent], found: Findings) -> collections.Counter[str]:
        """Message-ID counts at the sink; duplicates told apart: within the window (a
        runner or master killed between the arrivals) or not."""
        arrivals: dict[str, list[Arrival]] = collections.defaultdict(list)
        with self.sink.lock:
            received = list(self.sink.arrivals)
        for arrival in received:
            mid = arrival.mid
            if mid is None or mid not in sent or not arrival.whole:
                found.half_written += 1
                found.problem(f"relayed: not a message as sent ({mid})")
                continue
            arrivals[mid].append(arrival)
        found.relayed = len(received)
        kills = [k.at for k in self.kills if k.kind in ("master", "runner", "stopped")]
        for mid, copies in arrivals.items():
            copies.sort(key=lambda arrival: arrival.at)
            for first, second in itertools.pairwise(copies):
                # RFC 5321 §6.1: the runner died after the sink had the message (its
                # transaction had begun) and before the copy sent again.
                if any(first.started <= at <= second.at for at in kills):
                    found.duplicated_in_window += 1
                else:
                    found.duplicated += 1
                    found.problem(f"{mid}: relayed twice, no runner death between")
        return collections.Counter({mid: len(copies) for mid, copies in arrivals.items()})


class _FolderView(dict[int, str]):
    """{uid: Message-ID} of a folder as IMAP shows it, with each message's flags."""

    def __init__(self) -> None:
        super().__init__()
        self.flags: dict[str, list[set[str]]] = {}

    def get_flags(self, mid: str) -> set[str] | None:
        copies = self.flags.get(mid)
        return set.intersection(*copies) if copies else None


def _fetched(data: list[Any]) -> Iterator[tuple[bytes, bytes]]:
    for item in data:
        if isinstance(item, tuple):
            yield item[0], item[1]


def fetch_ids(client: imaplib.IMAP4, first: int = 1) -> dict[int, str]:
    """{uid: Message-ID} of the selected folder's messages from UID `first` on."""
    typ, data = client.uid("FETCH", f"{first}:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    if typ != "OK":
        raise imaplib.IMAP4.error(f"FETCH: {typ}")
    present = {}
    for head, body in _fetched(data):
        match = _FETCHED.search(head)
        mid = message_id(body)
        # `first:*` names the last message even when its UID is below `first`.
        if match and mid and int(match.group(1)) >= first:
            present[int(match.group(1))] = mid
    return present


def _code(client: imaplib.IMAP4, name: str) -> int:
    """The number of the last ``[name n]`` response code (UIDNEXT, UIDVALIDITY)."""
    values = client.untagged_responses.get(name) or [b"0"]
    last = values[-1]
    return int(last if isinstance(last, bytes) else last[0])


def _smtp(port: int) -> smtplib.SMTP:
    """A connected client; no socket left behind when the greeting never comes (the
    server died): the clients count on no ResourceWarning."""
    client = smtplib.SMTP(timeout=20)
    try:
        client.connect("127.0.0.1", port)
    except BaseException:
        client.close()
        raise
    return client


class _POP3(poplib.POP3):
    """poplib's client, closing its socket when the greeting never comes."""

    def __init__(self, port: int) -> None:
        self.sock = self.file = None  # type: ignore[assignment]
        try:
            super().__init__("127.0.0.1", port, timeout=20)
        except BaseException:
            self.close()
            raise


def _address(place: str, rng: random.Random) -> str:
    if place == "remote":
        return f"r{rng.randrange(50)}@{REMOTE}"
    return f"{place}@{DOMAIN}"


def _orphans(folder: pathlib.Path, current: subprocess.Popen[bytes] | None = None) -> list[int]:
    """Processes still running in `folder` (children of killed masters), but for the
    current master's."""
    keep: set[int] = set()
    if current is not None and current.poll() is None:
        keep.add(current.pid)
        path = pathlib.Path(f"/proc/{current.pid}/task/{current.pid}/children")
        with contextlib.suppress(OSError):
            keep.update(int(p) for p in path.read_text().split())
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in keep:
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "cwd") == str(folder) and _state(entry) != "Z":
                found.append(int(entry.name))
    return found


def _state(entry: pathlib.Path) -> str:
    return (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
