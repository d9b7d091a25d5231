"""PgQueueStore's claims: one node per message however many claim at once, leases that
hold while alive and are taken over once they end, outcomes fenced by the lease, and
what the SMTP side's commit tells the other nodes."""

from __future__ import annotations

import threading
from typing import Any

import attrs
import pytest

from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.storage.pg import Database, _queue
from sansmail.storage.pg._mailrows import CHANNEL
from sansmail.storage.pg._queue import LeaseLostError, PgQueueStore, QueueUnavailableError
from sansmail.storage.queue import SharedQueue, UnknownQueueIdError

NOW = 1_700_000_000.0
CONTENT = b"Subject: hi\r\n\r\nhello\r\n"


def envelope(queue_id: str, **changes: Any) -> QueuedMessage:
    fields: dict[str, Any] = {
        "queue_id": queue_id,
        "sender": "alice@example.test",
        "arrival": NOW - 60,
        "size": 0,
        "recipients": (QueuedRecipient(address="bob@remote.test"),),
    }
    fields.update(changes)
    return QueuedMessage(**fields)


def queue(store: PgQueueStore, queue_id: str, **changes: Any) -> QueuedMessage:
    writer = store.begin(queue_id)
    writer.write(CONTENT)
    return writer.commit(envelope(queue_id, **changes))


def claimed_ids(store: PgQueueStore, limit: int = 100, now: float = NOW) -> list[str]:
    return [message.queue_id for message, _content in store.claim(limit, now=now).messages]


def test_is_a_shared_queue(pg_db: Database) -> None:
    store = PgQueueStore(pg_db, node="a:1")
    assert isinstance(store, SharedQueue)
    assert (store.node, store.lease) == ("a:1", 300.0)
    with pytest.raises(ValueError):
        PgQueueStore(pg_db, node="")
    with pytest.raises(ValueError):
        PgQueueStore(pg_db, node="a", lease=0)


def test_a_claim_takes_due_messages_soonest_first_with_their_content(pg_db: Database) -> None:
    a = PgQueueStore(pg_db, node="a:1")
    later = QueuedRecipient(address="x@remote.test", next_attempt=NOW + 100, attempts=1)
    queue(a, "DUE1", arrival=NOW - 10)
    queue(a, "LATER1", recipients=(later,))
    queue(a, "DUE2", arrival=NOW - 20)
    claim = a.claim(10, now=NOW)
    assert [(m.queue_id, c) for m, c in claim.messages] == [("DUE2", CONTENT), ("DUE1", CONTENT)]
    assert claim.damaged == ()
    assert claimed_ids(a) == []  # held: not due again until the lease ends
    assert a.soonest() == NOW + 100
    assert claimed_ids(a, now=NOW + 100) == ["LATER1"]
    assert a.soonest() == NOW + 300
    assert a.claim(0, now=NOW).messages == ()


def test_a_held_lease_is_not_taken_and_an_ended_one_is(pg_db: Database) -> None:
    a = PgQueueStore(pg_db, node="a:1", lease=60)
    b = PgQueueStore(pg_db, node="b:1", lease=60)
    queue(a, "HELD1")
    assert claimed_ids(a) == ["HELD1"]
    assert claimed_ids(b, now=NOW + 59) == []  # a's lease holds
    assert a.renew({"HELD1"}, now=NOW + 59) == {"HELD1"}
    assert claimed_ids(b, now=NOW + 118) == []  # renewed until NOW + 119
    # a died: nothing renews its lease, and b takes the message over once it ends.
    assert claimed_ids(b, now=NOW + 119) == ["HELD1"]
    assert a.renew({"HELD1"}, now=NOW + 120) == set()  # a, back, learns it lost it
    # a's verdicts are not written over b's; b's are.
    stored = a.load("HELD1")
    with pytest.raises(LeaseLostError, match="b:1"):
        a.update(attrs.evolve(stored, warned=True))
    assert not a.load("HELD1").warned
    b.update(attrs.evolve(stored, warned=True))
    assert a.load("HELD1").warned
    assert claimed_ids(a, now=NOW + 120) == ["HELD1"]  # b let go with its update


def test_a_stalled_node_does_not_write_over_the_outcome_of_the_one_that_took_over(
    pg_db: Database,
) -> None:
    a = PgQueueStore(pg_db, node="a:1", lease=60)
    b = PgQueueStore(pg_db, node="b:1", lease=60)
    stored = queue(a, "STALL1")
    assert claimed_ids(a) == ["STALL1"]
    assert claimed_ids(b, now=NOW + 60) == ["STALL1"]  # a stalled past its lease
    deferred = attrs.evolve(stored, recipients=[attrs.evolve(stored.recipients[0], attempts=1)])
    b.update(deferred)  # b's attempt ends first, and lets go
    with pytest.raises(LeaseLostError):
        a.update(attrs.evolve(stored, warned=True))  # no holder now, but not a's claim
    assert a.load("STALL1") == deferred
    # An update of a message this store never claimed (no node holds it) is written.
    a.update(attrs.evolve(deferred, warned=True))
    assert a.load("STALL1").warned


def test_update_lets_go_and_makes_the_message_due_at_its_next_retry(pg_db: Database) -> None:
    a = PgQueueStore(pg_db, node="a:1")
    stored = queue(a, "RETRY1")
    assert claimed_ids(a) == ["RETRY1"]
    deferred = attrs.evolve(
        stored,
        recipients=[
            attrs.evolve(r, attempts=1, next_attempt=NOW + 600, last_reason="451 later")
            for r in stored.recipients
        ],
    )
    a.update(deferred)
    assert a.load("RETRY1") == deferred
    assert a.soonest() == NOW + 600
    assert claimed_ids(a, now=NOW + 599) == []
    assert claimed_ids(PgQueueStore(pg_db, node="b:1"), now=NOW + 600) == ["RETRY1"]


def test_release_gives_claims_back_due_at_the_time_given(pg_db: Database) -> None:
    a = PgQueueStore(pg_db, node="a:1")
    b = PgQueueStore(pg_db, node="b:1")
    queue(a, "REL1")
    queue(a, "REL2")
    assert claimed_ids(a) == ["REL1", "REL2"]
    b.release({"REL1": NOW})  # not b's to give back
    assert claimed_ids(b) == []
    a.release({"REL1": NOW, "REL2": NOW + 50})
    assert claimed_ids(b) == ["REL1"]
    assert claimed_ids(b, now=NOW + 50) == ["REL2"]


def test_delete_removes_a_held_message_whoever_holds_it(pg_db: Database) -> None:
    a = PgQueueStore(pg_db, node="a:1")
    b = PgQueueStore(pg_db, node="b:1")
    stored = queue(a, "DEL1")
    assert claimed_ids(a) == ["DEL1"]
    b.delete("DEL1")  # `queue delete` on another node
    with pytest.raises(UnknownQueueIdError) as caught:
        a.update(stored)
    assert not isinstance(caught.value, LeaseLostError)
    assert a.renew({"DEL1"}, now=NOW) == set()


def test_claims_from_threads_never_share_a_message(pg_db: Database) -> None:
    count = 200
    writer = PgQueueStore(pg_db, node="w:1")
    for index in range(count):
        queue(writer, f"M{index:04d}")
    stores = [PgQueueStore(pg_db, node=f"n{index}:1") for index in range(4)]
    taken: dict[str, list[str]] = {store.node: [] for store in stores}
    start = threading.Barrier(len(stores))

    def drain(store: PgQueueStore) -> None:
        start.wait()
        while ids := claimed_ids(store, limit=7):
            taken[store.node].extend(ids)

    threads = [threading.Thread(target=drain, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    everything = [qid for ids in taken.values() for qid in ids]
    assert sorted(everything) == [f"M{index:04d}" for index in range(count)]  # each once
    assert len(set(everything)) == count


def test_a_damaged_row_is_set_aside_not_claimed(pg_db: Database) -> None:
    a = PgQueueStore(pg_db, node="a:1")
    queue(a, "GOOD1")
    queue(a, "BAD1")
    with pg_db.transaction() as cur:
        cur.execute(
            "UPDATE queue_messages SET envelope = '{\"version\": 99}' WHERE queue_id = 'BAD1'"
        )
    claim = a.claim(10, now=NOW)
    assert [m.queue_id for m, _c in claim.messages] == ["GOOD1"]
    assert claim.damaged == (("BAD1", "envelope version 99 is not 1"),)
    assert a.ids() == {"GOOD1"}
    assert [m.queue_id for m in a.list()] == ["GOOD1"]
    with pytest.raises(UnknownQueueIdError):
        a.load("BAD1")
    with pg_db.transaction() as cur:
        cur.execute("SELECT damaged, lease_holder FROM queue_messages WHERE queue_id = 'BAD1'")
        assert cur.fetchone() == ("envelope version 99 is not 1", None)


def test_flush_makes_every_unheld_message_due_now_and_wakes_the_runners(
    pg_db: Database,
) -> None:
    clock = [NOW]
    a = PgQueueStore(pg_db, node="a:1", clock=lambda: clock[0])
    later = QueuedRecipient(address="x@remote.test", next_attempt=NOW + 900, attempts=2)
    queue(a, "HELD2")
    assert claimed_ids(a) == ["HELD2"]
    queue(a, "WAIT1", recipients=(later,))
    listener = pg_db.connect(autocommit=True)
    try:
        listener.execute(f"LISTEN {CHANNEL}")
        a.request_flush()
        assert a.take_flush_request() is False
        payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    finally:
        listener.close()
    assert payloads == ["queue"]
    assert claimed_ids(PgQueueStore(pg_db, node="b:1")) == ["WAIT1"]  # HELD2 stays a's


def test_commit_notifies_only_when_it_commits(pg_db: Database) -> None:
    a = PgQueueStore(pg_db, node="a:1")
    listener = pg_db.connect(autocommit=True)
    try:
        listener.execute(f"LISTEN {CHANNEL}")
        queue(a, "N1")
        assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == ["queue"]
        with pytest.raises(FileExistsError):
            queue(a, "N1")
        listener.execute("SELECT 1")  # a round trip: any notification has arrived
        assert [n.payload for n in listener.notifies(timeout=0.2)] == []
    finally:
        listener.close()


def test_a_database_that_fails_is_an_os_error(pg_db: Database) -> None:
    broken = PgQueueStore(Database("postgresql://127.0.0.1:1/nothing"), node="a:1")
    with pytest.raises(QueueUnavailableError) as caught:
        broken.ids()
    assert isinstance(caught.value, OSError)
    writer = broken.begin("X1")
    writer.write(CONTENT)
    with pytest.raises(OSError):
        writer.commit(envelope("X1"))


def test_new_ids_of_two_nodes_differ(pg_db: Database) -> None:
    a = PgQueueStore(pg_db, node="host-a:7", clock=lambda: NOW)
    b = PgQueueStore(pg_db, node="host-b:7", clock=lambda: NOW)
    assert a.new_id() != b.new_id()
    assert len(a.new_id()) == len(b.new_id())


def test_a_big_message_arrives_through_a_file(
    pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_queue, "SPOOL_MEMORY", 64)
    a = PgQueueStore(pg_db, node="a:1")
    writer = a.begin("BIG1")
    parts = [b"Subject: big\r\n\r\n", b"x" * 100 + b"\r\n", b"y" * 100 + b"\r\n", b"end\r\n"]
    for part in parts:
        writer.write(part)
        writer.flush()
        assert writer.pending == 0
    writer.write(b"tail\r\n")  # still buffered at the commit
    assert writer._spool._file is not None
    assert writer._spool._file._rolled  # type: ignore[attr-defined]  # a file by now
    stored = writer.commit(envelope("BIG1"))
    content = b"".join(parts) + b"tail\r\n"
    assert stored.size == len(content)
    assert a.read("BIG1") == (stored, content)
    assert writer._spool._file is None  # closed


def test_a_stalled_node_that_learnt_of_its_lost_lease_still_does_not_write_over(
    pg_db: Database,
) -> None:
    # The runner's renewer finds the claim lost before the stalled attempt ends: the
    # store must still know the message was claimed here, and fence its outcome.
    a = PgQueueStore(pg_db, node="a:1", lease=60)
    b = PgQueueStore(pg_db, node="b:1", lease=60)
    stored = queue(a, "STALL2")
    assert claimed_ids(a) == ["STALL2"]
    assert claimed_ids(b, now=NOW + 60) == ["STALL2"]
    assert a.renew({"STALL2"}, now=NOW + 61) == set()
    deferred = attrs.evolve(stored, recipients=[attrs.evolve(stored.recipients[0], attempts=1)])
    b.update(deferred)
    with pytest.raises(LeaseLostError):
        a.update(attrs.evolve(stored, warned=True))
    assert a.load("STALL2") == deferred


def test_a_stalled_node_does_not_delete_the_message_another_took_over(pg_db: Database) -> None:
    a = PgQueueStore(pg_db, node="a:1", lease=60)
    b = PgQueueStore(pg_db, node="b:1", lease=60)
    queue(a, "STALL3")
    assert claimed_ids(a) == ["STALL3"]
    assert claimed_ids(b, now=NOW + 60) == ["STALL3"]
    with pytest.raises(LeaseLostError, match="b:1"):
        a.delete("STALL3")
    assert a.ids() == {"STALL3"}
    b.delete("STALL3")  # the holder's own outcome
    assert a.ids() == set()


def test_a_claim_whose_setting_aside_fails_still_hands_over_the_good_messages(
    pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The good rows are leased to this node by then: raising would leave them to wait
    # out the lease unattempted.
    a = PgQueueStore(pg_db, node="a:1", lease=60)
    queue(a, "GOOD2")
    queue(a, "BAD2")
    with pg_db.transaction() as cur:
        cur.execute("UPDATE queue_messages SET envelope = '[]' WHERE queue_id = 'BAD2'")
    real_run = a._run

    def run(sql: str, params: Any = (), **options: Any) -> Any:
        if "damaged = u.why" in sql:
            raise QueueUnavailableError("database: the connection was lost")
        return real_run(sql, params, **options)

    monkeypatch.setattr(a, "_run", run)
    claim = a.claim(10, now=NOW)
    assert [m.queue_id for m, _c in claim.messages] == ["GOOD2"]
    assert claim.damaged == ()
    monkeypatch.undo()
    # Set aside by a later claim, once the lease ends.
    assert a.claim(10, now=NOW + 60).damaged == (("BAD2", "envelope is not a JSON object"),)


def test_a_claim_takes_no_more_content_than_its_limit_but_always_one_message(
    pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_queue, "CLAIM_OCTETS", 2 * len(CONTENT))
    a = PgQueueStore(pg_db, node="a:1")
    for index in range(5):
        queue(a, f"SIZE{index}", arrival=NOW - 10 + index)
    assert claimed_ids(a) == ["SIZE0", "SIZE1"]
    assert claimed_ids(a) == ["SIZE2", "SIZE3"]  # the rest was left due
    monkeypatch.setattr(_queue, "CLAIM_OCTETS", 1)
    assert claimed_ids(a) == ["SIZE4"]
