"""The tables of users, aliases, Sieve scripts and the greylist (schema version 1; see
`_schema`).

- ``users``: one row per account, keyed like ``users.json`` (`Address.key`), holding
  the same JSON record the file holds per user (``address``, ``password_hash``, the
  SCRAM keys, ``cram-md5``, ``quota`` and any field a later release adds), so the two
  stores share their decoding and an export is a copy.
- ``sansmail_secrets``: server-wide secrets by name; ``scram`` is the key SCRAM invents
  unknown users' salts from, the same on every node (a salt that changed with the node
  answering would tell that the name is unknown).
- ``aliases_files``: the aliases file and the include files it names, as text, put
  there by ``newaliases`` (every node reads the same aliases; no node reads a file of
  its own). ``position`` 0 is the aliases file itself.
- ``account_changes``: one row per store (``users``, ``aliases``): a serial its
  writers bump, so that a lookup can tell it missed a change whose notice has not
  arrived yet (`_changes`).
- ``sieve_scripts``: one row per script of a mailbox; at most one of a mailbox's rows
  is active (a partial unique index says so).
- ``sieve_duplicates``: what vacation and the duplicate test remember per mailbox, until
  ``expires`` (seconds since the epoch).
- ``greylist_triplets`` and ``greylist_clients``: the greylist's records, the same
  columns as the SQLite store's, shared by every node.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ACCOUNT_TABLES"]

ACCOUNT_TABLES: Final[tuple[str, ...]] = (
    """CREATE TABLE users (
        key text PRIMARY KEY,
        record jsonb NOT NULL)""",
    """CREATE TABLE sansmail_secrets (
        name text PRIMARY KEY,
        value bytea NOT NULL)""",
    """CREATE TABLE aliases_files (
        path text PRIMARY KEY,
        position integer NOT NULL UNIQUE,
        text text NOT NULL)""",
    """CREATE TABLE account_changes (
        what text PRIMARY KEY,
        serial bigint NOT NULL)""",
    """CREATE TABLE sieve_scripts (
        mailbox text NOT NULL,
        name text NOT NULL,
        script bytea NOT NULL,
        active boolean NOT NULL DEFAULT false,
        PRIMARY KEY (mailbox, name))""",
    "CREATE UNIQUE INDEX sieve_scripts_active ON sieve_scripts (mailbox) WHERE active",
    """CREATE TABLE sieve_duplicates (
        mailbox text NOT NULL,
        key text NOT NULL,
        expires double precision NOT NULL,
        PRIMARY KEY (mailbox, key))""",
    "CREATE INDEX sieve_duplicates_expires ON sieve_duplicates (expires)",
    """CREATE TABLE greylist_triplets (
        client text NOT NULL,
        sender text NOT NULL,
        recipient text NOT NULL,
        first double precision NOT NULL,
        last double precision NOT NULL,
        expires double precision NOT NULL,
        PRIMARY KEY (client, sender, recipient))""",
    "CREATE INDEX greylist_triplets_expires ON greylist_triplets (expires)",
    """CREATE TABLE greylist_clients (
        client text PRIMARY KEY,
        count integer NOT NULL,
        last double precision NOT NULL,
        expires double precision NOT NULL)""",
    "CREATE INDEX greylist_clients_expires ON greylist_clients (expires)",
)
