"""Crash consistency under load (issue 14): `sansmail-trio serve` with `processes = 2`
under SMTP (local and relayed), IMAP (APPEND, MOVE, STORE) and POP3 (DELE, QUIT)
clients, killed with SIGKILL (the master, single server processes, the queue runner)
at random moments; then a count of what was acknowledged against what is there
(crash_load.py says how). The long version with its figures is bench/crash_soak.py.
On both storage backends: on PostgreSQL the count reads the mailbox rows and the queue
table where on Maildir it reads the files and the queue folder."""

from __future__ import annotations

import os
import pathlib
import signal
import smtplib
import time
from collections.abc import Iterator

import pytest
from crash_load import Findings, Harness, Sink
from trio_helpers import BOTH_BACKENDS

from sansmail_trio._run import MAX_DEATHS

pytestmark = BOTH_BACKENDS

SEED = int(os.environ.get("SANSMAIL_CRASH_SEED", "14"))


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


@pytest.fixture
def harness(tmp_path: pathlib.Path, sink: Sink, backend_dsn: str | None) -> Iterator[Harness]:
    # The database (a fixture before this one) is dropped after the harness has closed.
    running = Harness(tmp_path, sink, processes=2, seed=SEED, dsn=backend_dsn)
    try:
        yield running
    finally:
        running.close()


def _report(harness: Harness) -> str:
    return "\n".join(
        [
            f"kills: {harness.kills}",
            f"client errors: {dict(harness.client_errors)}",
            harness.log_path.read_text()[-6000:],
        ]
    )


def _assert_consistent(harness: Harness, found: Findings) -> None:
    report = _report(harness)
    assert found.problems == [], "\n".join(found.problems) + "\n" + report
    # Each figure on its own, for the message when one is not zero.
    assert found.lost == 0
    assert found.duplicated == 0
    assert found.half_written == 0
    assert found.uid_reuse == 0
    assert found.uidvalidity_changes == 0
    assert found.flags_lost == 0
    assert found.pop3_reappeared == 0


def test_kill_9_under_load_loses_and_duplicates_nothing_acknowledged(harness: Harness) -> None:
    harness.start()
    harness.start_clients()
    harness.run_kills(8.0, ["server", "runner", "master", "server", "runner"])
    harness.stop_all_clients()
    harness.drain()
    found = harness.check()
    _assert_consistent(harness, found)
    # The test must have tested something: the clients got answers across the kills.
    report = _report(harness)
    assert found.acked["smtp"] >= 20, report
    assert found.acked["append"] >= 10, report
    assert found.pop3_deleted >= 3, report
    assert harness.flags, report
    assert [k.kind for k in harness.kills].count("master") == 1, report
    # Each child killed was replaced, and the master killed was started again.
    log = harness.log_path.read_text()
    for kill in harness.kills:
        if kill.kind != "master":
            assert f"(pid {kill.pid}) killed by signal 9; started pid" in log, report


def test_sigterm_under_load_loses_and_duplicates_nothing(harness: Harness) -> None:
    harness.start()
    harness.start_clients()
    time.sleep(3)
    assert harness.terminate() == 0
    harness.stop_all_clients()
    harness.start()
    harness.drain()
    found = harness.check()
    _assert_consistent(harness, found)
    # No kill: not even the duplicates RFC 5321 §6.1 allows after one.
    assert found.duplicated_in_window == 0
    assert found.acked["smtp"] >= 10, _report(harness)
    assert found.acked["append"] >= 5, _report(harness)


def test_sigterm_while_the_next_hop_answers_the_dot_sends_it_once(harness: Harness) -> None:
    # The runner stops only once the conversation under way has its answer (within
    # shutdown_grace): cut there, the message would be the sink's and still queued.
    harness.sink.answer_delay = 1.0
    harness.start()
    with smtplib.SMTP("127.0.0.1", harness.port("smtp"), timeout=10) as client:
        client.sendmail("a@example.org", ["r1@remote.test"], b"Message-ID: <slow@t>\r\n\r\nx\r\n")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not harness.sink.count():
        time.sleep(0.01)
    assert harness.sink.count() == 1
    assert harness.terminate() == 0
    harness.sink.answer_delay = 0.0
    harness.start()
    harness.drain()
    assert [arrival.mid for arrival in harness.sink.arrivals] == ["slow@t"]


def _kill_and_wait(harness: Harness, kind: str) -> int:
    """kill -9 a child of `kind`; its pid, once the master has dealt with it."""
    pid = harness.child_of_kind(kind)
    assert pid is not None
    deaths = harness.log_path.read_text().count(f"(pid {pid}) killed by signal 9")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not deaths:
        deaths = harness.log_path.read_text().count(f"(pid {pid}) killed by signal 9")
        time.sleep(0.02)
    return pid


def test_a_killed_worker_is_replaced_until_children_keep_dying(harness: Harness) -> None:
    harness.start()
    assert harness.proc is not None
    server = _kill_and_wait(harness, "server")
    runner = _kill_and_wait(harness, "runner")
    log = harness.log_path.read_text()
    assert f"server process 1 (pid {server}) killed by signal 9; started pid" in log or (
        f"server process 2 (pid {server}) killed by signal 9; started pid" in log
    )
    assert f"the queue runner (pid {runner}) killed by signal 9; started pid" in log
    children = harness.children()
    assert len(children) == 3
    assert server not in children
    assert runner not in children
    # The server processes answer (the kernel spreads connections over them), and the
    # new runner relays.
    for n in range(6):
        with smtplib.SMTP("127.0.0.1", harness.port("smtp"), timeout=10) as client:
            message = f"Message-ID: <{n}@replaced.test>\r\n\r\nx\r\n"
            client.sendmail("a@example.org", ["r1@remote.test"], message)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and harness.sink.count() < 6:
        time.sleep(0.05)
    assert harness.sink.count() == 6
    # Children that keep dying are a crash loop: the master stops, for systemd to see.
    for _ in range(MAX_DEATHS - 1):
        _kill_and_wait(harness, "server")
    assert harness.proc.wait(30) == 1
    log = harness.log_path.read_text()
    assert log.count("killed by signal 9; started pid") == MAX_DEATHS
    assert f"{MAX_DEATHS + 1} deaths within 60s: stopping the server" in log
