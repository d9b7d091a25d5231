"""`_backend`'s PostgreSQL half: the stores of `sansmail.storage.pg` on one `Database`.

A module of its own so that psycopg is imported only where ``backend = "postgresql"``
(it comes with the ``postgresql`` extra).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from sansmail.config import Config
from sansmail.mail.address import MailboxId
from sansmail.sessions.lda import LocalDelivery
from sansmail.storage.generations import Generations
from sansmail.storage.maildir import ImapStore, QuotaLimits
from sansmail.storage.pg import Database, require_current
from sansmail.storage.pg._aliases import ALIASES_KEY, PgAliasSource
from sansmail.storage.pg._changes import catch_up
from sansmail.storage.pg._delivery import PgMailStore
from sansmail.storage.pg._greylist import PgGreylistStore
from sansmail.storage.pg._imapstore import PgImapStore
from sansmail.storage.pg._maildrop import PgMaildrops
from sansmail.storage.pg._queue import PgQueueStore
from sansmail.storage.pg._sieve import PgSieveStore
from sansmail.storage.pg._users import USERS_KEY, PgUserStore

if TYPE_CHECKING:
    from sansmail_trio._backend import Stores

__all__ = ["open_stores"]


async def open_stores(
    config: Config, generations: Generations, *, role: str, stores: type[Stores]
) -> Stores:
    """`_backend.open_stores` for ``backend = "postgresql"``."""
    from sansmail_trio._backend import node_name  # noqa: PLC0415  (_backend imports us)

    db = Database(config.storage.dsn, application_name=f"sansmail {role} {config.hostname}")
    try:
        # A node whose code and the database's schema disagree must not write a row.
        await trio.to_thread.run_sync(require_current, db)
        users = PgUserStore(db, cram_md5="CRAM-MD5" in config.smtp.auth_mechanisms)
        await trio.to_thread.run_sync(users.reload_if_changed)
        aliases = await trio.to_thread.run_sync(PgAliasSource, db)
    except BaseException:
        db.close()
        raise
    quota = QuotaLimits(config.quota.storage, users.own_quota)
    queue = PgQueueStore(db, node=node_name(config), lease=config.storage.queue_lease)

    def make_imap(limits: Callable[[MailboxId], int] | None) -> ImapStore:
        return PgImapStore(db, hostname=config.hostname, quota=limits)

    def make_local_delivery() -> LocalDelivery:
        return LocalDelivery(
            config=config,
            scripts=PgSieveStore(db),
            imap=make_imap(quota),
            store=PgMailStore(db, hostname=config.hostname, quota=quota),
            queue=queue,  # type: ignore[arg-type]  # only new_id and begin are used
        )

    return stores(
        config=config,
        mail=PgMailStore(db, hostname=config.hostname, quota=quota),
        maildrops=PgMaildrops(db),
        users=users,
        queue=queue,
        aliases=aliases,
        quota=quota,
        generations=generations,
        make_imap=make_imap,
        make_scripts=functools.partial(PgSieveStore, db),
        make_local_delivery=make_local_delivery,
        # Every node counts a sender's retries in one table: the retry may reach another.
        greylist=PgGreylistStore(db),
        db=db,
        catch_up=functools.partial(catch_up, db, {USERS_KEY: users, ALIASES_KEY: aliases}),
    )
