"""The queue runner's Sieve delivery as `QueueRunner` builds it: the mailboxes' scripts
run, and the users' storage limits hold there too, also in a runner process of its own
(whose mail store, as `_serve.run_queue` makes it, counts no limit).

On both storage backends: the runner gets the stores a queue-runner process opens
(`_backend.open_stores`), and a test that counts a folder's messages counts its files,
or on PostgreSQL its rows."""

from __future__ import annotations

import logging
import pathlib
import time
from typing import Any

import pytest
from trio_helpers import BOTH_BACKENDS, add_users, pg_query

from sansmail.config import load_config
from sansmail.mail.address import MailboxId, parse_address
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.storage.maildir import MaildirStore, MailStore
from sansmail_trio._backend import Stores, open_stores
from sansmail_trio._dns import Resolver
from sansmail_trio._queue import QueueRunner

pytestmark = BOTH_BACKENDS

ALICE = MailboxId(domain="example.test", local="alice")
CONTENT = b"Subject: hi\r\n\r\n" + b"x" * 2000 + b"\r\n"


async def _runner(
    tmp_path: pathlib.Path, server_backend: str, request: pytest.FixtureRequest
) -> tuple[QueueRunner, Stores]:
    storage = ""
    if server_backend == "postgresql":
        dsn = request.getfixturevalue("pg_dsn")
        storage = f'[storage]\nbackend = "postgresql"\ndsn = "{dsn}"\n'
    (tmp_path / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        '[dns]\nnameservers = ["127.0.0.1:9"]\n' + storage
    )
    config = load_config(tmp_path / "sansmail.toml", default_hostname="unused.test")
    config.data_dir.mkdir()
    add_users(config, config.storage.dsn if storage else None, ("alice@example.test",))
    stores = await open_stores(config, role="queue")
    request.addfinalizer(stores.close)
    scripts = stores.scripts()
    scripts.put(
        ALICE, "rules", b'require ["fileinto", "mailbox"];\r\nfileinto :create "Later";\r\n'
    )
    scripts.activate(ALICE, "rules")
    # The runner's own mail store counts no limit: the limits that hold are the Sieve
    # delivery's (on Maildir the one `QueueRunner` makes, on PostgreSQL the backend's).
    store: MailStore
    if stores.postgresql:
        # Imported here: psycopg is there only with the postgresql extra.
        from sansmail.storage.pg._delivery import PgMailStore  # noqa: PLC0415

        store = PgMailStore(stores.db, hostname="mx.example.test")
    else:
        store = MaildirStore(config.data_dir, hostname="mx.example.test")
    runner = QueueRunner(
        config=config,
        queue=stores.queue,
        store=store,
        users=stores.users,
        aliases=stores.aliases,
        resolver=Resolver(),
        log=logging.getLogger("sansmail.test.queue"),
        local_delivery=stores.local_delivery(),
    )
    return runner, stores


def _deliver(runner: QueueRunner, queue_id: str) -> str:
    queue: Any = runner.queue
    writer = queue.begin(queue_id)
    writer.write(CONTENT)
    recipient = QueuedRecipient(address="alice@example.test", mailbox=ALICE)
    writer.commit(
        QueuedMessage(
            queue_id=queue_id,
            sender="bob@far.test",
            arrival=time.time(),
            size=0,
            recipients=[recipient],
        )
    )
    attempt = runner.manager.open(queue_id)
    assert attempt is not None
    (destination,) = attempt.destinations
    result = attempt.deliver_local(destination, now=time.time())
    return result.outcomes["alice@example.test"].reason


def _in_later(stores: Stores) -> int:
    """How many messages alice's folder Later holds: its files, or its rows."""
    if stores.postgresql:
        rows = pg_query(
            stores.config.storage.dsn,
            "SELECT count(*) FROM mail_messages m JOIN mail_folders f ON f.id = m.folder_id"
            " WHERE f.mailbox = %s AND f.name = 'Later'",
            (parse_address("alice@example.test").key,),
        )
        return int(rows[0][0])
    later = stores.config.data_dir / "mail" / "example.test" / "alice" / ".Later"
    return len(list((later / "cur").iterdir()) + list((later / "new").iterdir()))


async def test_the_runner_delivers_through_the_scripts_within_the_users_limit(
    tmp_path: pathlib.Path, server_backend: str, request: pytest.FixtureRequest
) -> None:
    runner, stores = await _runner(tmp_path, server_backend, request)
    assert _deliver(runner, "Q1").startswith("delivered")
    assert _in_later(stores) == 1
    # Alice's own limit is now below what she holds: the next copy is refused as the
    # intake's RCPT check would refuse it, though the runner's mail store knows no limit.
    stores.users.set_quota("alice@example.test", 1000)
    assert _deliver(runner, "Q2") == "552 5.2.2 <alice@example.test>: mailbox is full"
    assert _in_later(stores) == 1
