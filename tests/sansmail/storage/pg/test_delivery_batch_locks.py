"""PgMailStore.commit_many: two batches with folders in common, their deliveries in
opposite orders, both commit. Each batch's first delivery is held at a barrier until the
other batch has reached it too (or two seconds passed): if a batch locked its folders
delivery by delivery, each would then hold the folder the other wants next, and
PostgreSQL would fail one whole batch as a deadlock (found by bench/pg_bench.py
--mailboxes 2, one node: 451s and one-second stalls). Locked all at once in ascending
id, the second batch waits for the first, which goes through the barrier alone."""

from __future__ import annotations

import contextlib
import threading

import pytest

from sansmail.mail.address import MailboxId
from sansmail.storage.pg import Database
from sansmail.storage.pg._delivery import PgDelivery, PgMailStore

ALICE = MailboxId(domain="example.test", local="alice")
BOB = MailboxId(domain="example.test", local="bob")


def test_batches_in_opposite_orders_do_not_deadlock(
    pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PgMailStore(pg_db, hostname="mx.example.test")
    for box in (ALICE, BOB):  # the folders exist: the batches only lock them
        warm = store.begin([box], prefix=b"")
        warm.write(b"warm up\r\n")
        warm.commit()
    barrier = threading.Barrier(2, timeout=2)
    first_of_batch: set[int] = set()
    deliver = PgMailStore._deliver

    def held(self: PgMailStore, cur, delivery: PgDelivery, *args, **kwargs):
        names = deliver(self, cur, delivery, *args, **kwargs)
        batch = threading.get_ident()
        if batch not in first_of_batch:
            first_of_batch.add(batch)
            # Broken after 2 s: the other batch waits for this one's locks; go on alone.
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()
        return names

    monkeypatch.setattr(PgMailStore, "_deliver", held)
    results: dict[str, list[list[str] | OSError]] = {}

    def batch(name: str, boxes: list[MailboxId]) -> None:
        deliveries = []
        for box in boxes:
            delivery = store.begin([box], prefix=b"")
            delivery.write(f"{name} to {box.local}\r\n".encode())
            deliveries.append(delivery)
        results[name] = store.commit_many(deliveries)

    threads = [
        threading.Thread(target=batch, args=("one", [ALICE, BOB])),
        threading.Thread(target=batch, args=("two", [BOB, ALICE])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert set(results) == {"one", "two"}
    for outcome in results.values():
        assert all(isinstance(result, list) for result in outcome), outcome
    uids = sorted(int(r[0].split(".")[1]) for out in results.values() for r in out)  # type: ignore[index]
    assert uids == [2, 2, 3, 3]  # each folder: its warm-up, then one from each batch


def test_a_row_refused_in_the_batch_fails_its_delivery_alone(pg_db: Database) -> None:
    store = PgMailStore(pg_db, hostname="mx.example.test")
    for box in (ALICE, BOB):
        warm = store.begin([box], prefix=b"")
        warm.write(b"warm up\r\n")
        warm.commit()
    with pg_db.transaction() as cur:
        cur.execute("SELECT id FROM mail_folders WHERE mailbox = 'bob@example.test'")
        (bob_folder,) = cur.fetchone()
        cur.execute(
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN"
            f" IF NEW.folder_id = {int(bob_folder)} THEN RAISE EXCEPTION 'refused by the test';"
            " END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        cur.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON mail_messages"
            " FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    deliveries = []
    for box in (ALICE, BOB, ALICE):
        delivery = store.begin([box], prefix=b"")
        delivery.write(f"to {box.local}\r\n".encode())
        deliveries.append(delivery)
    first, refused, third = store.commit_many(deliveries)
    assert isinstance(refused, OSError)
    assert "refused by the test" in str(refused)
    assert isinstance(first, list)
    assert isinstance(third, list)
    assert [first[0].split(".")[1], third[0].split(".")[1]] == ["2", "3"]
    deliveries[1].abort()
