"""The mailboxes' tables (schema version 1; see `_schema`).

- ``mail_contents``: each message's octets once (CRLF form), keyed by their SHA-256,
  however many mailboxes hold it; PostgreSQL's TOAST compresses and moves the big ones
  out of line (``STORAGE EXTENDED``, the default for bytea, said here on purpose).
- ``mail_folders``: one row per folder of a mailbox (``mailbox`` is "local@domain",
  ``name`` "INBOX" or "a/b"), with the counters IMAP needs: UIDVALIDITY (from one
  sequence, so a folder made again never repeats one), UIDNEXT, HIGHESTMODSEQ, and the
  first UID no session has seen (\\Recent). UIDs and mod-sequences are taken by
  ``UPDATE ... RETURNING`` on this row, so they are allocated inside the transaction
  that stores the message and never reused.
- ``mail_messages``: one row per message in a folder, pointing at its content: flags
  and keywords, mod-sequence, INTERNALDATE (and the zone it was given in), and what
  FETCH and SEARCH keep of it (the Maildir index's structures and search tables).
- ``mail_expunged``: tombstones for VANISHED (RFC 7162).
- ``mail_subscriptions``: LSUB names, which need not exist.
- ``mail_usage``: octets and messages per mailbox, for the storage quota, kept by every
  writer in the transaction that changes them.
- ``mail_imap_accounts``: the mailboxes IMAP has opened once; the first opening makes
  the special-use folders (RFC 6154) and subscribes them, and only the first, so that
  folders the user deleted do not come back (delivery may have made INBOX before).
- ``mail_search``: what SEARCH compares of a message (the IMAP session's ``SearchData``),
  a cache that goes with its message: the top-level header fields as two parallel arrays
  (lower-case names, case-folded values), the day of its Date: field, and the texts as
  one string per kind, each entry after a separator (see `_imapsearch`).
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAIL_TABLES"]

MAIL_TABLES: Final[tuple[str, ...]] = (
    """CREATE TABLE mail_contents (
        digest bytea PRIMARY KEY,
        size bigint NOT NULL,
        content bytea NOT NULL)""",
    "ALTER TABLE mail_contents ALTER COLUMN content SET STORAGE EXTENDED",
    # UIDVALIDITY is a 32-bit number; starting at the migration's Unix time keeps the
    # values above any a client remembers from the Maildir it was imported from.
    "CREATE SEQUENCE mail_uidvalidity MAXVALUE 4294967295",
    "SELECT setval('mail_uidvalidity', extract(epoch FROM now())::bigint)",
    """CREATE TABLE mail_folders (
        id bigserial PRIMARY KEY,
        mailbox text NOT NULL,
        name text NOT NULL,
        uidvalidity bigint NOT NULL DEFAULT nextval('mail_uidvalidity'),
        uidnext bigint NOT NULL DEFAULT 1,
        highestmodseq bigint NOT NULL DEFAULT 1,
        recent_uid bigint NOT NULL DEFAULT 1,
        keywords text[] NOT NULL DEFAULT '{}',
        special_use text,
        UNIQUE (mailbox, name))""",
    """CREATE TABLE mail_messages (
        folder_id bigint NOT NULL REFERENCES mail_folders ON DELETE CASCADE,
        uid bigint NOT NULL,
        digest bytea NOT NULL REFERENCES mail_contents,
        size bigint NOT NULL,
        internaldate timestamptz NOT NULL,
        zone integer NOT NULL DEFAULT 0,
        flags text[] NOT NULL DEFAULT '{}',
        modseq bigint NOT NULL,
        envelope bytea,
        bodystructure bytea,
        body bytea,
        cache bytea,
        PRIMARY KEY (folder_id, uid))""",
    "CREATE INDEX mail_messages_digest ON mail_messages (digest)",
    "CREATE INDEX mail_messages_modseq ON mail_messages (folder_id, modseq)",
    """CREATE TABLE mail_expunged (
        folder_id bigint NOT NULL REFERENCES mail_folders ON DELETE CASCADE,
        uid bigint NOT NULL,
        modseq bigint NOT NULL,
        PRIMARY KEY (folder_id, uid))""",
    # Syncs and VANISHED read the tombstones above a mod-sequence: without this index
    # each read walked every tombstone the folder ever had (they are kept for good).
    "CREATE INDEX mail_expunged_modseq ON mail_expunged (folder_id, modseq)",
    """CREATE TABLE mail_subscriptions (
        mailbox text NOT NULL,
        name text NOT NULL,
        PRIMARY KEY (mailbox, name))""",
    """CREATE TABLE mail_usage (
        mailbox text PRIMARY KEY,
        octets bigint NOT NULL DEFAULT 0,
        messages bigint NOT NULL DEFAULT 0)""",
    """CREATE TABLE mail_imap_accounts (
        mailbox text PRIMARY KEY)""",
    """CREATE TABLE mail_search (
        folder_id bigint NOT NULL,
        uid bigint NOT NULL,
        sent integer,
        names text[] NOT NULL,
        vals text[] NOT NULL,
        headers text,
        bodies text,
        PRIMARY KEY (folder_id, uid),
        FOREIGN KEY (folder_id, uid) REFERENCES mail_messages ON DELETE CASCADE)""",
)
