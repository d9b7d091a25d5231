"""``sansmail-trio queue list|flush|delete`` on the PostgreSQL backend: the queue every
node shares, read and changed from any node's command line."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import pytest

from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.storage.pg import Database
from sansmail.storage.pg._queue import PgQueueStore
from sansmail_trio._cli import main

PROG = "sansmail-trio"
NOW = 1_700_000_000.0


def config(tmp_path: pathlib.Path, dsn: str) -> str:
    path = tmp_path / "sansmail.toml"
    path.write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        f'[storage]\nbackend = "postgresql"\ndsn = "{dsn}"\n'
    )
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def enqueue(db: Database, queue_id: str, **recipient: Any) -> None:
    store = PgQueueStore(db, node="node-a:1")
    writer = store.begin(queue_id)
    writer.write(b"Subject: hi\r\n\r\nhello\r\n")
    writer.commit(
        QueuedMessage(
            queue_id=queue_id,
            sender="alice@example.test",
            arrival=NOW,
            size=0,
            recipients=(QueuedRecipient(address="bob@far.test", **recipient),),
        )
    )


def test_list_flush_delete(
    tmp_path: pathlib.Path, pg_dsn: str, pg_db: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = config(tmp_path, pg_dsn)
    assert run(capsys, "queue", "list", "--config", conf) == (0, "Mail queue is empty\n", "")
    later = time.time() + 3600
    enqueue(pg_db, "A1", attempts=1, next_attempt=later, last_reason="451 4.3.0 later")
    enqueue(pg_db, "B2")
    status, out, _err = run(capsys, "queue", "list", "--config", conf)
    assert status == 0
    assert out.splitlines()[1].startswith("A1 ")
    assert "(451 4.3.0 later; retry in 59m)" in out
    assert out.endswith("-- 1 Kbytes in 2 Requests.\n")
    status, out, _err = run(capsys, "queue", "list", "--json", "--config", conf)
    assert [json.loads(line)["queue_id"] for line in out.splitlines()] == ["A1", "B2"]
    # Flush: what waits for its retry is due now, on every node.
    status, out, _err = run(capsys, "queue", "flush", "--config", conf)
    assert (status, out.startswith("flush requested")) == (0, True)
    claimed = PgQueueStore(pg_db, node="node-b:1").claim(10, now=time.time())
    assert sorted(m.queue_id for m, _c in claimed.messages) == ["A1", "B2"]
    # Delete, even what a node holds (it learns at its outcome that it is gone).
    status, out, err = run(capsys, "queue", "delete", "A1", "NOPE", "--config", conf)
    assert (status, out) == (1, "deleted A1\n")
    assert err.startswith(f"{PROG}: ")
    assert "NOPE" in err
    assert run(capsys, "queue", "delete", "ALL", "--config", conf) == (0, "deleted B2\n", "")
    assert PgQueueStore(pg_db, node="x:1").ids() == set()


def test_a_database_out_of_reach_is_one_line(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = config(tmp_path, "postgresql://nobody@127.0.0.1:1/none")
    status, out, err = run(capsys, "queue", "list", "--config", conf)
    assert (status, out) == (1, "")
    assert len(err.splitlines()) == 1
    assert err.startswith(f"{PROG}: ")
