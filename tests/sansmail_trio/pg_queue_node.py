"""A node's queue runner alone, on a PostgreSQL queue, until killed: the other node of
`test_pg_queue_runner`'s SIGKILL test.

    python pg_queue_node.py DSN CONFIG NODE LEASE
"""

from __future__ import annotations

import logging
import pathlib
import sys

import trio

from sansmail.config import load_config
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.maildir import MaildirStore
from sansmail.storage.pg import Database
from sansmail.storage.pg._queue import PgQueueStore
from sansmail.storage.users import UserStore
from sansmail_trio._dns import Resolver
from sansmail_trio._queue import QueueRunner


async def main(dsn: str, config_path: str, node: str, lease: float) -> None:
    config = load_config(pathlib.Path(config_path), default_hostname="unused.test")
    runner = QueueRunner(
        config=config,
        queue=PgQueueStore(Database(dsn), node=node, lease=lease),
        store=MaildirStore(config.data_dir, hostname=config.hostname),
        users=UserStore(config.data_dir / "users.json"),
        aliases=AliasSource(None),
        resolver=Resolver.from_config(config.dns),
        log=logging.getLogger("sansmail.node"),
    )
    await runner.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
