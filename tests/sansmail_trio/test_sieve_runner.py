"""The queue runner's Sieve delivery as `QueueRunner` builds it: the mailboxes' scripts
run, and the users' storage limits hold there too, also in a runner process of its own
(whose mail store, as `_serve.run_queue` makes it, counts no limit)."""

from __future__ import annotations

import logging
import pathlib
import time

from trio_helpers import FAST_HASHER

from sansmail.config import load_config
from sansmail.mail.address import MailboxId, parse_address
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.maildir import MaildirStore
from sansmail.storage.queue import QueueStore
from sansmail.storage.sieve import SieveStore
from sansmail.storage.users import UserStore
from sansmail_trio._dns import Resolver
from sansmail_trio._queue import QueueRunner

ALICE = MailboxId(domain="example.test", local="alice")
CONTENT = b"Subject: hi\r\n\r\n" + b"x" * 2000 + b"\r\n"


def _runner(tmp_path: pathlib.Path) -> tuple[QueueRunner, UserStore]:
    (tmp_path / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        '[dns]\nnameservers = ["127.0.0.1:9"]\n'
    )
    config = load_config(tmp_path / "sansmail.toml", default_hostname="unused.test")
    users = UserStore(config.data_dir / "users.json", hasher=FAST_HASHER)
    users.add(parse_address("alice@example.test"), "secret")
    scripts = SieveStore(config.data_dir)
    scripts.put(
        ALICE, "rules", b'require ["fileinto", "mailbox"];\r\nfileinto :create "Later";\r\n'
    )
    scripts.activate(ALICE, "rules")
    runner = QueueRunner(
        config=config,
        queue=QueueStore(config.data_dir / "queue"),
        store=MaildirStore(config.data_dir, hostname="mx.example.test"),  # no limits
        users=users,
        aliases=AliasSource(None),
        resolver=Resolver(),
        log=logging.getLogger("sansmail.test.queue"),
    )
    return runner, users


def _deliver(runner: QueueRunner, queue_id: str) -> str:
    queue = runner.queue
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


def test_the_runner_delivers_through_the_scripts_within_the_users_limit(
    tmp_path: pathlib.Path,
) -> None:
    runner, users = _runner(tmp_path)
    assert _deliver(runner, "Q1").startswith("delivered")
    later = runner.config.data_dir / "mail" / "example.test" / "alice" / ".Later"
    assert len(list((later / "cur").iterdir()) + list((later / "new").iterdir())) == 1
    # Alice's own limit is now below what she holds: the next copy is refused as the
    # intake's RCPT check would refuse it, though the runner's mail store knows no limit.
    users.set_quota("alice@example.test", 1000)
    assert _deliver(runner, "Q2") == "552 5.2.2 <alice@example.test>: mailbox is full"
    assert len(list((later / "cur").iterdir()) + list((later / "new").iterdir())) == 1
