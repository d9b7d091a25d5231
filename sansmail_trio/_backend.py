"""The stores of one process, for the configured ``[storage] backend``.

``maildir`` (the default): everything in files under ``data_dir``: Maildirs with their
SQLite index, the queue directory, ``users.json``, the aliases file, Sieve scripts; the
``<data_dir>/generations`` counter makes a CLI change in force at once, and one queue
runner per machine delivers.

``postgresql``: the same interfaces on one database that every node shares
(`sansmail.storage.pg`). Every node runs a queue runner, which takes due messages under a
lease; changes made on other nodes arrive by LISTEN/NOTIFY (`_pgnotify`). The TLS
certificate, the DKIM and SRS keys, the control sockets and the metrics files stay in
each node's ``data_dir``.

Opened in each process after the fork: a database connection is never shared by two
processes.
"""

from __future__ import annotations

import functools
import os
import pathlib
import secrets
import socket
from collections.abc import Callable
from typing import Any

import attrs
import trio

from sansmail.config import Config
from sansmail.mail.address import MailboxId
from sansmail.sessions.lda import LocalDelivery
from sansmail.storage.aliasfile import Aliases, AliasSource
from sansmail.storage.generations import Generations
from sansmail.storage.greylist import GreylistStore
from sansmail.storage.maildir import (
    ImapStore,
    MaildirImapStore,
    MaildirMaildrops,
    MaildirStore,
    MaildropSource,
    MailStore,
    QuotaLimits,
)
from sansmail.storage.queue import Queue, QueueStore
from sansmail.storage.sieve import SieveStore
from sansmail.storage.users import Users, UserStore

__all__ = ["Stores", "node_name", "open_stores"]


@attrs.define(eq=False)
class Stores:
    """What the sessions, the queue runner and the housekeeping of one process use."""

    config: Config
    mail: MailStore
    maildrops: MaildropSource
    users: Users
    queue: Queue
    aliases: Aliases
    #: Each user's storage limit: their own, else ``[quota] storage``.
    quota: Callable[[MailboxId], int]
    #: This machine's change counters (users, aliases and the TLS reload on Maildir;
    #: only the TLS reload on PostgreSQL).
    generations: Generations
    #: Makes the IMAP store (one per process: the IMAP sessions, Sieve's fileinto).
    make_imap: Callable[[Callable[[MailboxId], int] | None], ImapStore]
    #: Makes the users' Sieve scripts store (ManageSieve, delivery's filters).
    make_scripts: Callable[[], Any]
    #: Makes the queue runner's local delivery; None: the runner makes its own, on the
    #: Maildirs (`QueueRunner`).
    make_local_delivery: Callable[[], LocalDelivery | None] = lambda: None
    #: The greylist's records; None: ``<data_dir>/greylist.sqlite`` (`intake_checks`).
    greylist: GreylistStore | None = None
    #: The database (`sansmail.storage.pg.Database`, PostgreSQL backend), else None.
    db: Any = None
    #: Blocking: catches the users and aliases up with changes committed on any node
    #: (`SmtpService.catch_up`); None on Maildir, whose stores follow their files.
    catch_up: Callable[[], None] | None = None

    @property
    def postgresql(self) -> bool:
        return self.db is not None

    def imap(self, *, quota: Callable[[MailboxId], int] | None = None) -> ImapStore:
        return self.make_imap(quota)

    def scripts(self) -> Any:
        return self.make_scripts()

    def local_delivery(self) -> LocalDelivery | None:
        return self.make_local_delivery()

    def close(self) -> None:
        """Let go of the database's idle connections (nothing to do for files)."""
        if self.db is not None:
            self.db.close()


def node_name(config: Config) -> str:
    """This process's name among the nodes of one database: the queue's lease holder
    (and the tag in its queue ids). Unique per process start: nodes of one cluster
    share `hostname` (the mail name), and containers repeat machine names and pids, so
    a random part is added; two holders of one name would defeat the lease's fencing."""
    return f"{config.hostname}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


async def open_stores(config: Config, *, role: str = "server") -> Stores:
    """The stores of this process, their first reads done in worker threads. `role`
    names the process to the database (``application_name``, seen in
    ``pg_stat_activity``)."""
    # Before the users and aliases are first read: a change announced from now on is
    # seen, and one made before is in the files read next (storage/generations.py).
    generations = await trio.to_thread.run_sync(Generations.open, config.data_dir)
    if config.storage.backend == "postgresql":
        # Imported here: psycopg is there only with the postgresql extra.
        from sansmail_trio import _backend_pg  # noqa: PLC0415

        return await _backend_pg.open_stores(config, generations, role=role, stores=Stores)
    users = UserStore(
        config.data_dir / "users.json",
        cram_md5="CRAM-MD5" in config.smtp.auth_mechanisms,
        generations=generations,
    )
    await trio.to_thread.run_sync(users.reload_if_changed)
    quota = QuotaLimits(config.quota.storage, users.own_quota)
    store = MaildirStore(config.data_dir, hostname=config.hostname, quota=quota)
    aliases = await trio.to_thread.run_sync(
        functools.partial(AliasSource, config.aliases, generations=generations)
    )
    return Stores(
        config=config,
        mail=store,
        maildrops=MaildirMaildrops(store),
        users=users,
        queue=QueueStore(config.data_dir / "queue"),
        aliases=aliases,
        quota=quota,
        generations=generations,
        make_imap=functools.partial(_maildir_imap, config.data_dir, hostname=config.hostname),
        make_scripts=functools.partial(SieveStore, config.data_dir),
    )


def _maildir_imap(
    data_dir: pathlib.Path, quota: Callable[[MailboxId], int] | None, *, hostname: str
) -> ImapStore:
    return MaildirImapStore(data_dir, hostname=hostname, quota=quota)
