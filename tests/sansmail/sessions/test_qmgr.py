"""sansmail.sessions.qmgr: one delivery attempt without sockets, over a real queue
(the directory, or the PostgreSQL table every node shares), Maildir, users file and
aliases file in tmp_path: verdicts in, envelope, notifications and log lines out."""

from __future__ import annotations

import email
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
from argon2 import PasswordHasher

import sansmail.sessions.qmgr
from sansmail.config import Config
from sansmail.mail.address import MailboxId, parse_address
from sansmail.mail.attempt import Outcome
from sansmail.mail.delivery import (
    Connect,
    Destination,
    DomainResult,
    Done,
    LogLine,
    LookupMX,
    LookupPolicy,
    connect_failed,
)
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.mail.retry import RetryPolicy
from sansmail.mail.routing import MXRecord
from sansmail.sessions.qmgr import Attempt, Finished, QueueManager
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.generations import Generations
from sansmail.storage.maildir import Delivery, MaildirStore
from sansmail.storage.pg import Database
from sansmail.storage.pg._queue import PgQueueStore
from sansmail.storage.queue import Queue, QueueEntryWriter, QueueStore
from sansmail.storage.queue._format import PREFIX
from sansmail.storage.users import UserStore

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)  # no test logs in
POLICY = RetryPolicy(minimal_backoff=300, maximal_backoff=3600, max_lifetime=86400)
NOW = 1_700_000_000.0
CONTENT = b"From: someone\r\nSubject: hi\r\n\r\nhello\r\n"
ALIASES = "info: alice, outside@far.test\nnowhere: :include:/nonexistent/list\n"
SENT = Outcome(
    status="sent", reason="250 2.0.0 Ok", dsn="2.0.0", remote_mta="mx.far.test", smtp_reply=True
)
LATER = Outcome(
    status="deferred",
    reason="451 4.3.0 later",
    dsn="4.3.0",
    remote_mta="mx.far.test",
    smtp_reply=True,
)
REFUSED = Outcome(
    status="bounced",
    reason="550 5.1.1 No such user",
    dsn="5.1.1",
    remote_mta="mx.far.test",
    smtp_reply=True,
)


class Server:
    """The storage of one server in `root`, and its queue manager; the queue in
    ``root/queue``, or `queue` when given."""

    def __init__(self, root: pathlib.Path, queue: Queue | None = None) -> None:
        (root / "aliases").write_text(ALIASES)
        self.config = Config(
            source=None,
            hostname="mx.example.test",
            domains=("example.test",),
            data_dir=root,
            aliases=root / "aliases",
        )
        self.queue = queue if queue is not None else QueueStore(root / "queue")
        self.store = MaildirStore(root, hostname="mx.example.test")
        users = UserStore(root / "users.json", hasher=FAST)
        users.add(parse_address("alice@example.test"), "secret")
        self.manager = QueueManager(
            config=self.config,
            queue=self.queue,
            store=self.store,
            users=users,
            aliases=AliasSource(root / "aliases"),
            policy=POLICY,
        )

    def enqueue(
        self,
        *recipients: str | QueuedRecipient,
        sender: str = "bob@far.test",
        content: bytes = CONTENT,
        arrival: float = NOW - 60,
        queue_id: str | None = None,
    ) -> str:
        qid = queue_id or self.queue.new_id()
        writer = self.queue.begin(qid)
        writer.write(content)
        writer.commit(
            QueuedMessage(
                queue_id=qid,
                sender=sender,
                arrival=arrival,
                size=0,
                recipients=[
                    r if isinstance(r, QueuedRecipient) else QueuedRecipient(address=r)
                    for r in recipients
                ],
            )
        )
        return qid

    def open(self, qid: str) -> Attempt:
        attempt = self.manager.open(qid)
        assert attempt is not None
        return attempt

    def queued(self) -> dict[str, QueuedMessage]:
        return {m.queue_id: m for m in self.queue.list()}

    def mailbox(self, local: str) -> list[bytes]:
        new = self.store.maildir(MailboxId(domain="example.test", local=local)) / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


@pytest.fixture(params=["maildir", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(tmp_path: pathlib.Path, backend: str, request: pytest.FixtureRequest) -> Server:
    if backend == "postgresql":
        db: Database = request.getfixturevalue("pg_db")
        return Server(tmp_path, PgQueueStore(db, node="test:1"))
    return Server(tmp_path)


def queue_dir(server: Server) -> pathlib.Path:
    """The queue directory of a server on the file queue (the tests of its files)."""
    assert isinstance(server.queue, QueueStore)
    return server.queue.root


#: For the tests of the queue directory's files and fsyncs.
files_only = pytest.mark.parametrize("backend", ["maildir"])


def remote(attempt: Attempt, outcomes: dict[str, Outcome]) -> None:
    """Record `outcomes` as the verdicts of the one remote destination of `attempt`."""
    (destination,) = [d for d in attempt.destinations if not d.local]
    result = DomainResult(outcomes=outcomes, relay="mx.far.test[192.0.2.1]:25", tls="TLSv1.3")
    attempt.record(destination, result, delay=1.5, now=NOW)


def texts(lines: Sequence[LogLine]) -> list[str]:
    return [line.text for line in lines]


def test_public_names_are_pinned() -> None:
    assert sorted(sansmail.sessions.qmgr.__all__) == [
        "Attempt",
        "Finished",
        "Opened",
        "QueueManager",
    ]


# -- reading the queue ---------------------------------------------------------------------


def test_queue_ids_and_due_times(server: Server) -> None:
    assert server.manager.queue_ids() == set()  # nothing queued yet
    first = server.enqueue("x@far.test")
    later = server.enqueue(
        QueuedRecipient(address="y@far.test", next_attempt=NOW + 600),
        QueuedRecipient(address="z@far.test", next_attempt=NOW + 300),
        QueuedRecipient(address="w@far.test", state="sent", next_attempt=NOW - 5),
    )
    assert server.manager.queue_ids() == {first, later}
    assert server.manager.due([first, later, "F00D"]) == {first: 0.0, later: NOW + 300}


@files_only
def test_open_reads_afresh_and_skips_what_is_gone_or_damaged(server: Server) -> None:
    qid = server.enqueue("x@far.test")
    attempt = server.open(qid)
    assert attempt.content == CONTENT
    assert attempt.message.sender == "bob@far.test"
    assert server.manager.open("F00D") is None
    (queue_dir(server) / f"{qid}.q").write_bytes(b"{not json")
    assert server.manager.open(qid) is None
    assert server.manager.due([qid]) == {}


def test_destinations_split_local_from_remote(server: Server) -> None:
    qid = server.enqueue("a@far.test", "alice@example.test", "b@Far.Test", "c@near.test")
    attempt = server.open(qid)
    assert [(d.domain, d.local, len(d.recipients)) for d in attempt.destinations] == [
        ("far.test", False, 2),
        ("example.test", True, 1),
        ("near.test", False, 1),
    ]
    plan = attempt.remote(attempt.destinations[0], shuffle=lambda hosts: None)
    assert plan.next_step() == LookupMX("far.test")
    assert [r.address for r in plan.message.recipients] == ["a@far.test", "b@Far.Test"]
    assert plan.message.content == CONTENT


# -- the loop check ---------------------------------------------------------------------------


def test_a_looping_message_is_bounced_without_delivery(server: Server) -> None:
    looping = b"Received: from a by b\r\n" * 51 + CONTENT
    qid = server.enqueue("alice@example.test", "x@far.test", content=looping)
    attempt = server.open(qid)
    assert attempt.destinations == []
    finished = attempt.finish(now=NOW, jitter=0.0)
    assert finished.next_due is None
    bounce_id, copy_id = finished.queued
    assert texts(attempt.take_log()) == [
        f"{qid}: sender notification (failed): {bounce_id}",
        f"{qid}: postmaster notification: {copy_id}",
        f"{qid}: removed",
    ]
    queued = server.queued()
    assert set(queued) == {bounce_id, copy_id}
    assert queued[bounce_id].sender == ""
    assert [r.address for r in queued[bounce_id].recipients] == ["bob@far.test"]
    assert [r.address for r in queued[copy_id].recipients] == ["postmaster@example.test"]
    report = server.queue.read_message(bounce_id)
    assert b"Status: 5.4.6" in report
    assert b"mail forwarding loop: more than 50 Received headers" in report
    assert server.mailbox("alice") == []


# -- local delivery ---------------------------------------------------------------------------


def test_local_recipients_go_through_the_aliases_but_are_not_forwarded(server: Server) -> None:
    qid = server.enqueue("alice@example.test", "Info@example.test", "ghost@example.test")
    attempt = server.open(qid)
    (destination,) = attempt.destinations
    result = attempt.deliver_local(destination, now=NOW)
    assert result.relay == "local"
    assert result.outcomes["alice@example.test"] == Outcome(
        status="sent", reason="delivered to maildir", dsn="2.0.0"
    )
    assert result.outcomes["Info@example.test"] == result.outcomes["alice@example.test"]
    assert result.outcomes["ghost@example.test"] == Outcome(
        status="bounced",
        reason="550 5.1.1 <ghost@example.test>: ghost@example.test: no such user or alias",
        dsn="5.1.1",
    )
    # One copy for alice, named twice; the return path of the sender first (Maildir
    # files have LF line ends).
    (stored,) = server.mailbox("alice")
    assert stored == b"Return-Path: <bob@far.test>\n" + CONTENT.replace(b"\r\n", b"\n")
    # The alias's outside target gets nothing: a bounce is not forwarded on.
    assert set(server.queued()) == {qid}


def test_local_recipient_the_aliases_lead_nowhere_says_why(server: Server) -> None:
    qid = server.enqueue("nowhere@example.test")
    attempt = server.open(qid)
    (destination,) = attempt.destinations
    outcome = attempt.deliver_local(destination, now=NOW).outcomes["nowhere@example.test"]
    assert outcome.status == "bounced"
    assert outcome.reason.startswith("550 5.1.1 <nowhere@example.test>: ")
    assert "/nonexistent/list" in outcome.reason


def test_a_bounce_to_a_local_sender_is_stored_with_an_empty_return_path(server: Server) -> None:
    qid = server.enqueue("alice@example.test", sender="")
    attempt = server.open(qid)
    (destination,) = attempt.destinations
    attempt.record(destination, attempt.deliver_local(destination, now=NOW), delay=0.04, now=NOW)
    assert texts(attempt.take_log()) == [
        f"{qid}: from=<>, to=<alice@example.test>, relay=local, size={len(CONTENT)}, "
        "delay=60.0, delays=0.0, dsn=2.0.0, status=sent (delivered to maildir)"
    ]
    assert attempt.finish(now=NOW, jitter=0.0) == Finished(None)
    assert texts(attempt.take_log()) == [f"{qid}: removed"]
    (stored,) = server.mailbox("alice")
    assert stored.startswith(b"Return-Path: <>\n")


@attrs.define
class FullDisk:
    """A mail store whose every delivery fails as a full disk does."""

    aborted: int = 0

    def begin(self, mailboxes: Sequence[MailboxId], *, prefix: bytes) -> Delivery:
        store = self

        class Failing:
            def write(self, data: bytes) -> None:
                raise OSError(28, "No space left on device")

            def commit(self) -> list[str]:
                raise AssertionError("not reached")

            def abort(self) -> None:
                store.aborted += 1

        return Failing()  # type: ignore[return-value]

    def maildir(self, mailbox: MailboxId) -> pathlib.Path:
        raise NotImplementedError


def test_a_store_that_fails_defers_the_local_recipients(server: Server) -> None:
    full = FullDisk()
    server.manager.store = full  # type: ignore[assignment]
    qid = server.enqueue("alice@example.test", "ghost@example.test")
    attempt = server.open(qid)
    (destination,) = attempt.destinations
    outcomes = attempt.deliver_local(destination, now=NOW).outcomes
    assert outcomes["alice@example.test"] == Outcome(
        status="deferred",
        reason="cannot store the message: [Errno 28] No space left on device",
        dsn="4.3.0",
    )
    assert outcomes["ghost@example.test"].status == "bounced"
    assert full.aborted == 1


def test_an_unreadable_users_file_defers_the_local_recipients(server: Server) -> None:
    # No good copy at all: who exists cannot be told, so nothing may bounce.
    users_file = server.config.data_dir / "users.json"
    users_file.write_text("{ not json")
    users_file.with_name("users.json.bak").unlink(missing_ok=True)
    # A server's store (it follows the generations): it starts on a broken file.
    users = UserStore(users_file, hasher=FAST, generations=Generations.open(server.config.data_dir))
    assert users.unavailable is not None
    server.manager.users = users
    qid = server.enqueue("alice@example.test", "ghost@example.test")
    attempt = server.open(qid)
    (destination,) = attempt.destinations
    outcomes = attempt.deliver_local(destination, now=NOW).outcomes
    for address in ("alice@example.test", "ghost@example.test"):
        assert outcomes[address].status == "deferred"
        assert outcomes[address].dsn == "4.3.0"
        assert outcomes[address].reason.startswith("user database unavailable: ")
    assert server.mailbox("alice") == []


# -- remote verdicts, the envelope and the notifications -------------------------------------


def test_a_deferral_updates_the_envelope_and_owes_nothing(server: Server) -> None:
    qid = server.enqueue("x@far.test")
    attempt = server.open(qid)
    remote(attempt, {"x@far.test": LATER})
    assert texts(attempt.take_log()) == [
        f"{qid}: from=<bob@far.test>, to=<x@far.test>, relay=mx.far.test[192.0.2.1]:25, "
        f"size={len(CONTENT)}, delay=60.0, delays=1.5, tls=TLSv1.3, dsn=4.3.0, "
        "status=deferred (451 4.3.0 later)"
    ]
    finished = attempt.finish(now=NOW, jitter=0.5)
    assert finished == Finished(NOW + 300)
    assert attempt.take_log() == []
    (recipient,) = server.queued()[qid].recipients
    assert (recipient.state, recipient.attempts, recipient.next_attempt) == (
        "pending",
        1,
        NOW + 300,
    )
    assert recipient.last_reason == "451 4.3.0 later"


def test_a_refusal_bounces_to_the_sender_and_the_postmaster(server: Server) -> None:
    qid = server.enqueue("x@far.test", "y@far.test")
    attempt = server.open(qid)
    remote(attempt, {"x@far.test": SENT, "y@far.test": REFUSED})
    attempt.take_log()
    finished = attempt.finish(now=NOW, jitter=0.0)
    bounce_id, copy_id = finished.queued
    assert finished == Finished(None, (bounce_id, copy_id))
    assert texts(attempt.take_log()) == [
        f"{qid}: sender notification (failed): {bounce_id}",
        f"{qid}: postmaster notification: {copy_id}",
        f"{qid}: removed",
    ]
    report = email.message_from_bytes(server.queue.read_message(bounce_id))
    assert report["To"] == "<bob@far.test>"
    assert report["Message-ID"] == f"<{bounce_id}@mx.example.test>"
    assert b"Final-Recipient: rfc822; y@far.test" in server.queue.read_message(bounce_id)
    assert b"x@far.test" not in server.queue.read_message(bounce_id)
    assert qid not in server.queued()
    assert server.queued()[bounce_id].arrival == NOW


def test_a_bounce_that_fails_is_discarded_not_bounced(server: Server) -> None:
    qid = server.enqueue("x@far.test", sender="")
    attempt = server.open(qid)
    remote(attempt, {"x@far.test": REFUSED})
    attempt.take_log()
    assert attempt.finish(now=NOW, jitter=0.0) == Finished(None)
    assert texts(attempt.take_log()) == [
        f"{qid}: to=<x@far.test>: undeliverable bounce discarded (550 5.1.1 No such user)",
        f"{qid}: removed",
    ]
    assert server.queued() == {}


def test_success_is_reported_only_when_asked(server: Server) -> None:
    qid = server.enqueue(
        QueuedRecipient(address="x@far.test", notify=("SUCCESS",)),
        QueuedRecipient(address="y@far.test"),
    )
    attempt = server.open(qid)
    remote(attempt, {"x@far.test": SENT, "y@far.test": SENT})
    attempt.take_log()
    finished = attempt.finish(now=NOW, jitter=0.0)
    (notice,) = finished.queued
    assert texts(attempt.take_log()) == [
        f"{qid}: sender notification (relayed): {notice}",
        f"{qid}: removed",
    ]


def test_expiry_bounces_with_the_last_reason_and_says_so(server: Server) -> None:
    qid = server.enqueue("x@far.test", arrival=NOW - POLICY.max_lifetime - 1)
    attempt = server.open(qid)
    remote(attempt, {"x@far.test": LATER})
    attempt.take_log()
    finished = attempt.finish(now=NOW, jitter=0.0)
    assert finished.next_due is None
    bounce_id, copy_id = finished.queued
    assert texts(attempt.take_log()) == [
        f"{qid}: sender notification (failed): {bounce_id}",
        f"{qid}: postmaster notification: {copy_id}",
        f"{qid}: removed",
        f"{qid}: to=<x@far.test>: expired in the queue",
    ]
    assert b"last error: 451 4.3.0 later" in server.queue.read_message(bounce_id)


def test_a_message_deleted_during_delivery_owes_nothing(server: Server) -> None:
    qid = server.enqueue("x@far.test", "y@far.test")
    attempt = server.open(qid)
    server.queue.delete(qid)  # `queue delete` while the attempt was out
    remote(attempt, {"x@far.test": LATER, "y@far.test": REFUSED})
    attempt.take_log()
    assert attempt.finish(now=NOW, jitter=0.0) == Finished(None)
    assert texts(attempt.take_log()) == [f"{qid}: deleted from the queue during delivery"]
    assert server.queued() == {}


class Recording:
    """A queue (any) that remembers the order of its writes, and can fail one of them."""

    def __init__(self, queue: Queue, fail: str = "") -> None:
        self.queue = queue
        self.calls: list[str] = []
        self.fail = fail

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)

    def _note(self, what: str) -> None:
        self.calls.append(what)
        if what == self.fail:
            raise OSError(5, "Input/output error")

    def update(self, message: QueuedMessage) -> None:
        self._note("update")
        self.queue.update(message)

    def begin(self, queue_id: str) -> QueueEntryWriter:
        self._note("notice")
        return self.queue.begin(queue_id)

    def delete(self, queue_id: str, *, sync: bool = True) -> None:
        self._note("delete")
        self.queue.delete(queue_id, sync=sync)


@pytest.mark.parametrize(
    ("outcome", "calls"),
    [
        (REFUSED, ["notice", "notice", "delete"]),
        (LATER, ["update"]),
    ],
)
def test_envelope_then_notifications_then_removal(
    server: Server, outcome: Outcome, calls: list[str]
) -> None:
    qid = server.enqueue("x@far.test", "y@far.test")
    recording = Recording(server.queue)
    server.manager.queue = recording  # type: ignore[assignment]
    attempt = server.open(qid)
    remote(attempt, {"x@far.test": outcome, "y@far.test": outcome})
    attempt.finish(now=NOW, jitter=0.0)
    assert recording.calls == calls


def test_partial_failure_still_hands_over_the_lines_of_what_was_done(server: Server) -> None:
    qid = server.enqueue("x@far.test")
    server.manager.queue = Recording(server.queue, fail="delete")  # type: ignore[assignment]
    attempt = server.open(qid)
    remote(attempt, {"x@far.test": REFUSED})
    attempt.take_log()
    with pytest.raises(OSError, match="Input/output error"):
        attempt.finish(now=NOW, jitter=0.0)
    lines = texts(attempt.take_log())
    assert [line.split(": ")[1] for line in lines] == [
        "sender notification (failed)",
        "postmaster notification",
    ]
    assert qid in server.queued()  # kept: the next attempt repeats, nothing is lost


def test_a_sender_that_no_longer_parses_is_logged_as_a_warning(server: Server) -> None:
    qid = server.enqueue("x@far.test")
    damaged = attrs.evolve(server.queue.load(qid), sender="bob at far")
    server.queue.update(damaged)  # as if edited by hand
    attempt = server.open(qid)
    remote(attempt, {"x@far.test": REFUSED})
    attempt.take_log()
    attempt.finish(now=NOW, jitter=0.0)
    assert attempt.take_log() == [
        LogLine(f"{qid}: cannot report to sender <bob at far>", level="warning"),
        LogLine(f"{qid}: removed"),
    ]


# -- batches ------------------------------------------------------------------------------------


@files_only
def test_open_all_opens_what_it_can_and_sets_aside_what_is_damaged(server: Server) -> None:
    first = server.enqueue("x@far.test")
    second = server.enqueue("y@far.test")
    torn = server.enqueue("z@far.test")
    path = queue_dir(server) / f"{torn}.q"
    data = bytearray(path.read_bytes())
    data[PREFIX + 3] ^= 0xFF  # inside the content: its checksum no longer matches
    path.write_bytes(bytes(data))
    opened = server.manager.open_all([first, "F00D", torn, second])
    assert [a.message.queue_id for a in opened.attempts] == [first, second]
    assert opened.attempts[0].content == CONTENT
    assert opened.gone == ("F00D", torn)
    (line,) = opened.log
    assert line.level == "warning"
    assert line.text.startswith(f"{torn}: damaged queue file moved to corrupt/: ")
    assert "checksum" in line.text
    assert set(server.queued()) == {first, second}
    assert os.listdir(queue_dir(server) / "corrupt") == [f"{torn}.q"]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_claim_opens_what_is_due_for_this_node_and_sets_aside_what_is_damaged(
    server: Server, pg_db: Database
) -> None:
    first = server.enqueue("x@far.test")
    later = server.enqueue(QueuedRecipient(address="y@far.test", next_attempt=NOW + 600))
    damaged = server.enqueue("z@far.test")
    with pg_db.transaction() as cur:
        cur.execute("UPDATE queue_messages SET envelope = '[]' WHERE queue_id = %s", (damaged,))
    opened = server.manager.claim(10, now=NOW)
    assert [(a.message.queue_id, a.content) for a in opened.attempts] == [(first, CONTENT)]
    assert opened.gone == ()
    (line,) = opened.log
    assert line.level == "warning"
    assert line.text == f"{damaged}: damaged queue entry set aside: envelope is not a JSON object"
    assert server.manager.claim(10, now=NOW + 299).attempts == ()  # held by this node now
    # Its lease ended (the node died), and the other one fell due.
    again = server.manager.claim(10, now=NOW + 600).attempts
    assert {a.message.queue_id for a in again} == {first, later}
    assert set(server.queued()) == {first, later}


@pytest.mark.parametrize("backend", ["postgresql"])
# Deferred: no envelope written. Finished: neither the bounce (the node that holds the
# message now sends it) nor the removal from under the other node's attempt.
@pytest.mark.parametrize("first", [LATER, SENT], ids=["deferred", "finished"])
def test_an_attempt_whose_claim_was_taken_over_writes_nothing(
    server: Server, pg_db: Database, first: Outcome
) -> None:
    qid = server.enqueue("x@far.test", "y@far.test")
    (attempt,) = server.manager.claim(10, now=NOW).attempts
    # This node stalled past its lease; another took the message over.
    other = PgQueueStore(pg_db, node="other:1")
    assert [m.queue_id for m, _c in other.claim(10, now=NOW + 301).messages] == [qid]
    remote(attempt, {"x@far.test": first, "y@far.test": REFUSED})
    attempt.take_log()
    assert attempt.finish(now=NOW, jitter=0.0) == Finished(None)
    assert attempt.take_log() == [
        LogLine(f"{qid}: taken over by another node during delivery", level="warning")
    ]
    assert [r.attempts for r in server.queued()[qid].recipients] == [0, 0]  # not written
    assert set(server.queued()) == {qid}  # and no bounce queued


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_finished_attempt_on_a_message_deleted_meanwhile_bounces_nothing(
    server: Server, pg_db: Database
) -> None:
    qid = server.enqueue("x@far.test", "y@far.test")
    (attempt,) = server.manager.claim(10, now=NOW).attempts
    PgQueueStore(pg_db, node="cli:1").delete(qid)  # `queue delete`
    remote(attempt, {"x@far.test": SENT, "y@far.test": REFUSED})
    attempt.take_log()
    assert attempt.finish(now=NOW, jitter=0.0) == Finished(None)
    assert attempt.take_log() == [LogLine(f"{qid}: deleted from the queue during delivery")]
    assert server.queued() == {}


@files_only
def test_only_a_shared_queue_is_claimed_from(server: Server) -> None:
    with pytest.raises(TypeError):
        server.manager.claim(10, now=NOW)


def test_one_walk_for_several_messages_to_one_domain(server: Server) -> None:
    ids = [server.enqueue(f"r{n}@far.test", "alice@example.test") for n in range(3)]
    attempts = server.manager.open_all(ids).attempts
    items = [(a, d) for a in attempts for d in a.destinations if not d.local]
    plan = server.manager.remote(items, shuffle=lambda hosts: None)
    assert [[r.address for r in m.recipients] for m in plan.messages] == [
        [f"r{n}@far.test"] for n in range(3)
    ]
    assert plan.next_step() == LookupMX("far.test")
    with pytest.raises(ValueError):
        server.manager.remote(
            [(a, d) for a in attempts for d in a.destinations], shuffle=lambda hosts: None
        )


@files_only
def test_finish_all_removes_a_batch_with_one_directory_fsync(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [server.enqueue("x@far.test") for _ in range(3)] + [server.enqueue("y@far.test")]
    attempts = server.manager.open_all(ids).attempts
    for attempt in attempts[:3]:
        remote(attempt, {"x@far.test": SENT})
    remote(attempts[3], {"y@far.test": LATER})
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))
    )
    finished = server.manager.finish_all(attempts, now=NOW, jitters=[0.0] * 4)
    assert finished == [Finished(None)] * 3 + [Finished(NOW + 300)]
    assert synced == [str(queue_dir(server))]  # one, for the three removals
    assert set(server.queued()) == {ids[3]}
    assert [texts(a.take_log())[-1] for a in attempts[:3]] == [f"{q}: removed" for q in ids[:3]]


@files_only
def test_finish_all_can_leave_the_directory_fsync_to_a_later_sync(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [server.enqueue("x@far.test") for _ in range(4)]
    attempts = server.manager.open_all(ids).attempts
    for attempt in attempts:
        remote(attempt, {"x@far.test": SENT})
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))
    )
    first = server.manager.finish_all(attempts[:2], now=NOW, jitters=[0.0] * 2, sync=False)
    second = server.manager.finish_all(attempts[2:], now=NOW, jitters=[0.0] * 2, sync=False)
    assert first == second == [Finished(None)] * 2
    assert synced == []  # removed, not yet durably
    assert not server.queued()
    server.manager.sync()
    assert synced == [str(queue_dir(server))]  # one, for both batches


def test_finish_all_hands_back_each_failure_in_its_place(server: Server) -> None:
    ids = [server.enqueue("x@far.test") for _ in range(2)]
    server.manager.queue = Recording(server.queue, fail="update")  # type: ignore[assignment]
    attempts = server.manager.open_all(ids).attempts
    remote(attempts[0], {"x@far.test": LATER})  # its update fails
    remote(attempts[1], {"x@far.test": SENT})
    first, second = server.manager.finish_all(attempts, now=NOW, jitters=[0.0, 0.0])
    assert isinstance(first, OSError)
    assert second == Finished(None)
    assert set(server.queued()) == {ids[0]}  # kept as it was: the next attempt repeats


# -- a whole attempt, as an adapter drives it --------------------------------------------------


def test_one_attempt_end_to_end_without_sockets(server: Server) -> None:
    qid = server.enqueue("alice@example.test", "x@far.test", "y@far.test")
    attempt = server.open(qid)
    written: list[str] = []
    for destination in attempt.destinations:
        if destination.local:
            result = attempt.deliver_local(destination, now=NOW)
        else:
            result = drive(attempt, destination)
        attempt.record(destination, result, delay=0.0, now=NOW)
        written += texts(attempt.take_log())
    finished = attempt.finish(now=NOW, jitter=0.0)
    written += texts(attempt.take_log())
    assert finished == Finished(NOW + 300)
    assert [line.split(", ")[1] for line in written] == [
        "to=<alice@example.test>",
        "to=<x@far.test>",
        "to=<y@far.test>",
    ]
    assert "relay=none" in written[1]
    assert "status=deferred (mx.far.test[192.0.2.1]:25: connect failed: refused)" in written[1]
    assert [r.state for r in server.queued()[qid].recipients] == ["sent", "pending", "pending"]
    assert len(server.mailbox("alice")) == 1


def drive(attempt: Attempt, destination: Destination) -> DomainResult:
    """The adapter's part for a remote destination, with DNS and the network scripted:
    one MX with one address, which refuses the connection."""
    plan = attempt.remote(destination, shuffle=lambda hosts: None)
    while True:
        step = plan.next_step()
        if isinstance(step, Done):
            return step.result
        if isinstance(step, LookupMX):
            plan.mx_found([MXRecord(10, "mx.far.test")])
        elif isinstance(step, LookupPolicy):
            plan.policy_found(None)  # far.test publishes no MTA-STS policy
        elif isinstance(step, Connect):
            plan.conversation_ended(connect_failed("refused"))
        else:
            plan.addresses_found(["192.0.2.1"])


def test_nothing_here_reads_a_clock_or_opens_a_socket() -> None:
    source = pathlib.Path(sansmail.sessions.qmgr.__file__).read_text()
    for forbidden in ("import time", "import socket", "import trio", "import asyncio"):
        assert forbidden not in source
