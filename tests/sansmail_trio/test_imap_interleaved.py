"""Two and three IMAP sessions on one INBOX, against a real serve() on 127.0.0.1, with
STORE, EXPUNGE, UID EXPUNGE, MOVE, COPY, APPEND, SMTP deliveries and POP3 DELE
interleaved (issue 13 item 7): after every step each session's view (sequence number ->
UID, flags, EXISTS) must equal the model and the store, learnt only from the untagged
responses the session was sent (see imap_interleave.py).

Each script runs twice: once with a NOOP of every session after each step (the change
must show at once: the server notices its own changes synchronously), once with the
sessions that take no part in a step IDLE-ing through it (they must hear of it while
idling, through inotify, or PostgreSQL's NOTIFY). Some steps act on stale views on
purpose: a FETCH, SEARCH or STORE by sequence number after another session expunged
must see the old numbers and no EXPUNGE (RFC 9051 §7.5.1), a STORE .SILENT on a
message another session reflagged must be corrected at the next NOOP, a MOVE of a
message expunged elsewhere is all or nothing.

Every test runs on both storage backends; on PostgreSQL the model's look at the store
is the database's (imap_interleave_pg.py).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
from imap_interleave import ALICE, Session, World
from imap_interleave_pg import database, make_world
from test_imap_e2e import imap_server
from trio_helpers import (
    BOTH_BACKENDS,
    RunningServer,
    add_users,
    storage_table,
    wait_until_started,
)

from sansmail.config import load_config

if TYPE_CHECKING:
    from sansmail.storage.pg import Database

pytestmark = BOTH_BACKENDS

Body = Callable[[World, list[Session]], None]


@attrs.frozen
class Step:
    """A step's operations, and the sessions that run them (indexes into the sessions,
    modulo their number; none: SMTP or POP3). The others may idle through it."""

    body: Body
    actors: tuple[int, ...]

    def acting(self, sessions: list[Session]) -> list[Session]:
        return [sessions[i % len(sessions)] for i in self.actors]


def _step(*actors: int) -> Callable[[Body], Step]:
    return lambda body: Step(body, actors)


def _uid(world: World, index: int) -> int:
    return sorted(world.model)[index]


@_step()
def deliver_three(w: World, s: list[Session]) -> None:
    w.deliver(3)


@_step(0)
def seen_by_number(w: World, s: list[Session]) -> None:
    w.store(s[0], [1], "+", ["\\Seen"], uid=False)


@_step(1)
def flag_by_uid(w: World, s: list[Session]) -> None:
    w.store(s[1], [_uid(w, 1)], "+", ["\\Flagged", "$Label1"], uid=True)


@_step(-1)
def delete_silently(w: World, s: list[Session]) -> None:
    w.store(s[-1], [2, 3], "+", ["\\Deleted"], uid=False, silent=True)


@_step(1)
def uid_expunge_one(w: World, s: list[Session]) -> None:
    w.expunge(s[1], [_uid(w, 2)])


@_step(0)
def append_seen(w: World, s: list[Session]) -> None:
    w.append(s[0], ["\\Seen"])


@_step()
def deliver_two(w: World, s: list[Session]) -> None:
    w.deliver(2)


@_step(0)
def copy_into_inbox(w: World, s: list[Session]) -> None:
    w.copy(s[0], [1, 2], "INBOX", uid=False, move=False)


@_step(1)
def move_to_archive(w: World, s: list[Session]) -> None:
    w.copy(s[1], [1], "Archive", uid=False, move=True)


@_step()
def pop3_dele(w: World, s: list[Session]) -> None:
    w.pop3_delete([_uid(w, 0), _uid(w, -1)])


@_step(-1)
def expunge_deleted(w: World, s: list[Session]) -> None:
    w.expunge(s[-1])


@_step(1)
def uid_move_last(w: World, s: list[Session]) -> None:
    w.copy(s[1], [_uid(w, -1)], "Archive", uid=True, move=True)


@_step(1, 0)
def stale_numbers(w: World, s: list[Session]) -> None:
    # B expunges message 1 and reflags message 2; A, not told yet, still numbers from 1
    # and keeps doing so through FETCH, SEARCH and STORE (which do not carry EXPUNGE).
    first, second = _uid(w, 0), _uid(w, 1)
    w.store(s[1], [first], "+", ["\\Deleted"], uid=True)
    w.expunge(s[1], [first])
    w.store(s[1], [second], "+", ["\\Answered"], uid=True)
    w.fetch_all(s[0], uid=False)
    w.search_all(s[0], uid=False)
    # Message 1 is gone: STORE on it changes nothing; message 2 answers with the flags
    # B gave it too.
    w.store(s[0], [1, 2], "+", ["\\Seen"], uid=False)
    w.fetch_all(s[0], uid=False)


@_step(1, 0)
def silent_over_another_change(w: World, s: list[Session]) -> None:
    # B flags a message; A, not told yet, stores .SILENT on it: A's belief lacks B's flag
    # until the server tells it.
    target = _uid(w, 0)
    w.store(s[1], [target], "+", ["\\Flagged"], uid=True)
    w.store(s[0], [1], "+", ["\\Seen"], uid=False, silent=True)


@_step(1, 0)
def move_of_an_expunged_message(w: World, s: list[Session]) -> None:
    # B expunges the first message; A, not told yet, moves messages 1 and 2 to Archive:
    # NO [EXPUNGEISSUED] and nothing moved, or the move without it.
    first = _uid(w, 0)
    w.store(s[1], [first], "+", ["\\Deleted"], uid=True)
    w.expunge(s[1])
    w.copy(s[0], [1, 2], "Archive", uid=False, move=True)


@_step(0, 1)
def uid_commands_carry_expunges(w: World, s: list[Session]) -> None:
    # After a UID command the session hears of others' expunges at once.
    target = _uid(w, -1)
    w.store(s[0], [target], "", ["\\Deleted"], uid=True)
    w.expunge(s[0], [target])
    w.fetch_all(s[1], uid=True)
    w.search_all(s[1], uid=True)


SCRIPT: list[Step] = [
    deliver_three,
    seen_by_number,
    flag_by_uid,
    delete_silently,
    uid_expunge_one,
    append_seen,
    deliver_two,
    copy_into_inbox,
    move_to_archive,
    pop3_dele,
    expunge_deleted,
    stale_numbers,
    deliver_two,
    silent_over_another_change,
    copy_into_inbox,
    move_of_an_expunged_message,
    uid_commands_carry_expunges,
    uid_move_last,
    deliver_three,
]


def run_script(world: World, *, idle: bool) -> None:
    sessions = world.sessions
    world.noop_all()
    for step in SCRIPT:
        if idle:
            idlers = [x for x in sessions if x not in step.acting(sessions)]
            for session in idlers:
                session.idle()
            step.body(world, sessions)
            world.idle_until(idlers)
        else:
            step.body(world, sessions)
        world.noop_all()
    world.check_archive()


@pytest.fixture
def sessions_of() -> Iterator[Callable[[RunningServer, int, object], list[Session]]]:
    opened: list[Session] = []

    def make(server: RunningServer, count: int, context: object) -> list[Session]:
        made = [
            Session.connect(  # type: ignore[arg-type]
                "ABC"[i], server.port_of("imaps"), context, enable=MODES[i]
            )
            for i in range(count)
        ]
        opened.extend(made)
        return made

    yield make
    for session in opened:
        session.close()


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("idle", [False, True], ids=["noop", "idle"])
async def test_sessions_agree_with_the_model(
    start_server, tls_files, client_tls, sessions_of, count: int, idle: bool
) -> None:
    server = await imap_server(start_server, tls_files)

    def run() -> None:
        with database(server.dsn) as db:
            world = make_world(
                sessions_of(server, count, client_tls),
                inbox=str(server.maildir(ALICE)),
                db=db,
                smtp_port=server.port_of("smtp"),
                pop3_port=server.port_of("pop3"),
            )
            run_script(world, idle=idle)
        if count == 3:
            # C enabled QRESYNC: it heard of expunges as VANISHED, never as EXPUNGE.
            heard = world.sessions[2].transcript
            assert any(line.startswith(b"* VANISHED ") for line in heard)
            assert not any(line.endswith(b" EXPUNGE") for line in heard)

    await trio.to_thread.run_sync(run)


async def test_idle_reports_what_changed_before_it_began(
    start_server, tls_files, client_tls, sessions_of
) -> None:
    # Changes made after the idler's last command and before its IDLE wake no watch of
    # its own: the idler must still hear of them at once, not at the next change.
    server = await imap_server(start_server, tls_files)

    def run() -> None:
        idler, other = sessions_of(server, 2, client_tls)
        with database(server.dsn) as db:
            world = make_world(
                [idler, other],
                inbox=str(server.maildir(ALICE)),
                db=db,
                smtp_port=server.port_of("smtp"),
            )
            world.deliver(2)
            world.noop_all()
            world.store(other, [_uid(world, 0)], "+", ["\\Flagged"], uid=True)
            world.deliver(1)
            # A FETCH by number (which may carry no EXPUNGE and carries no news here).
            world.fetch_all(idler, uid=False)
            idler.idle()
            world.idle_until([idler])
            world.noop_all()

    await trio.to_thread.run_sync(run)


# --- processes = 2 ----------------------------------------------------------------------


@attrs.frozen
class TwoProcesses:
    """A running `sansmail-trio serve` with ``processes = 2``: the port of each service,
    the pids of the two server processes, and where ALICE's mail is (`inbox`, her
    Maildir INBOX; `db`: the database, on PostgreSQL)."""

    ports: dict[str, int]
    pids: list[int]
    inbox: str
    db: Database | None

    def world(self, sessions: list[Session], archive_watcher: Session | None = None) -> World:
        return make_world(
            sessions,
            inbox=self.inbox,
            db=self.db,
            smtp_port=self.ports["smtp"],
            pop3_port=self.ports["pop3"],
            archive_watcher=archive_watcher,
        )


@pytest.fixture
def two_processes(tmp_path: pathlib.Path, backend_dsn: str | None) -> Iterator[TwoProcesses]:
    with serving_two_processes(tmp_path, backend_dsn) as running:
        yield running


@contextlib.contextmanager
def serving_two_processes(tmp_path: pathlib.Path, dsn: str | None) -> Iterator[TwoProcesses]:
    """`sansmail-trio serve` with ``processes = 2``, on Maildir files or, with `dsn`, on
    that PostgreSQL database."""
    storage = storage_table(dsn)
    config = tmp_path / "sansmail.toml"
    config.write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        'processes = 2\n[listen]\nsmtp = "127.0.0.1:0"\nimap = "127.0.0.1:0"\n'
        'pop3 = "127.0.0.1:0"\n[dns]\nnameservers = ["127.0.0.1:9"]\n' + storage
    )
    add_users(load_config(config, default_hostname="unused.test"), dsn, (ALICE,))
    script = shutil.which("sansmail-trio")
    assert script is not None
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([script, "serve"], cwd=tmp_path, stderr=out)
    try:
        ports = wait_until_started(proc, log, processes=2)
        children = pathlib.Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text()
        servers = [
            int(pid)
            for pid in children.split()
            if pathlib.Path(f"/proc/{pid}/comm").read_text().strip() != "sansmail-queue"
        ]
        assert len(servers) == 2
        inbox = tmp_path / "data" / "mail" / "example.test" / "alice"
        with database(dsn) as db:
            yield TwoProcesses(ports, servers, str(inbox), db)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


#: What sessions A, B and C ENABLE in the scripts.
MODES = ("", "IMAP4rev2", "QRESYNC")


def spread_sessions(
    port: int, pids: list[int], count: int, modes: tuple[str, ...] = MODES
) -> list[Session]:
    """`count` sessions, in both server processes (A and B never in the same one), each
    ENABLE-ing its `modes` entry.

    One process tends to take every connection made one at a time (whichever accepts
    first), so they are made a few at once and the processes race for them."""
    wanted = [pids[i % 2] for i in range(count)]
    made: dict[int, Session] = {}
    try:
        for _attempt in range(20):
            burst = [
                Session("?", socket.create_connection(("127.0.0.1", port), timeout=10))
                for _ in range(6)
            ]
            for session in burst:
                # Accepted once the greeting comes: only then does a process hold it.
                greeting = session.read_response()
                assert greeting.startswith(b"* OK"), greeting
            processes = _serving_processes(pids, port, [session.sock for session in burst])
            for session, process in zip(burst, processes, strict=True):
                open_slots = (i for i in range(count) if i not in made)
                slot = next((i for i in open_slots if wanted[i] == process), None)
                if slot is None:
                    session.sock.close()
                    continue
                session.name, session.process = "ABC"[slot], process
                session.log_in(enable=modes[slot])
                made[slot] = session
            if len(made) == count:
                return [made[i] for i in range(count)]
        raise AssertionError("the kernel never gave a connection to the other process")
    except BaseException:
        for session in made.values():
            session.close()
        raise


def _serving_processes(pids: list[int], port: int, socks: list[socket.socket]) -> list[int]:
    """The server process holding the other end of each of `socks`, connected to `port`
    (through /proc: the server side's socket inode in /proc/net/tcp, then the process
    with that fd). Each file is read once for the burst, not once a socket as
    test_imap_idle's `_serving_process` does: /proc/net/tcp lists every connection of
    the machine, thousands while other tests run, and reading it for each socket was
    most of the two-process tests' time."""
    index = {sock.getsockname()[1]: i for i, sock in enumerate(socks)}
    inodes: dict[str, int] = {}
    listening = f":{port:04X} "
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        if listening not in line:
            continue  # the cheap test first: most lines are other tests' connections
        fields = line.split()
        ours = int(fields[1].split(":")[1], 16)
        theirs = int(fields[2].split(":")[1], 16)
        # Established only: an earlier connection from the same port may linger in
        # TIME_WAIT (state 06), with no inode.
        if fields[3] == "01" and ours == port and theirs in index:
            inodes[f"socket:[{fields[9]}]"] = index[theirs]
    found: dict[int, int] = {}
    for pid in pids:
        for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                held = inodes.get(os.readlink(fd))
                if held is not None:
                    found[held] = pid
    assert len(found) == len(socks), (found, inodes)
    return [found[i] for i in range(len(socks))]


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("idle", [False, True], ids=["noop", "idle"])
def test_sessions_in_two_processes_agree_with_the_model(
    two_processes: TwoProcesses, count: int, idle: bool
) -> None:
    # The NOOPs are not polled: a change made in the other process shows at the next
    # NOOP as one made in this one does (the index is shared, the directories listed;
    # on PostgreSQL, the rows are read).
    sessions = spread_sessions(two_processes.ports["imap"], two_processes.pids, count)
    try:
        run_script(two_processes.world(sessions), idle=idle)
    finally:
        for session in sessions:
            session.close()


def test_shutdown_ends_idlers_in_both_processes_with_bye(two_processes: TwoProcesses) -> None:
    ports, pids = two_processes.ports, two_processes.pids
    idlers = spread_sessions(ports["imap"], pids, 2)
    try:
        for session in idlers:
            session.command("SELECT INBOX")
            session.idle()
        # The master: the parent of the server processes.
        master = int(pathlib.Path(f"/proc/{pids[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
        os.kill(master, signal.SIGTERM)
        for session in idlers:
            last = b""
            with contextlib.suppress(ConnectionError):
                while True:
                    last = session.read_response()
            assert last == b"* BYE [UNAVAILABLE] Server shutting down", session.name
    finally:
        for session in idlers:
            session.sock.close()
