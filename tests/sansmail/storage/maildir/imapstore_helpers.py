"""Shared pieces of the IMAP store tests: a store in a temporary data_dir, deliveries
through the SMTP side's `MaildirStore`, and looks at the Maildir as other tools see it.

The tests that do not look at files run on both backends: they take the `where` fixture
(`imap_backends`) instead of ``tmp_path``, and `store`, `account` and `deliver` do the
same on either."""

from __future__ import annotations

import os
import pathlib
from typing import Any

from imap_backends import Where, deliver_to, make_imap_store

from sansmail.mail.address import MailboxId
from sansmail.storage.maildir._imapaccount import MaildirAccount
from sansmail.storage.maildir._imapbase import ImapStore, MailAccount

__all__ = ["ALICE", "HOST", "Where", "account", "deliver", "store"]

HOST = "mx.example.test"
ALICE = MailboxId(domain="example.test", local="alice")


def store(data_dir: Where, **kwargs: Any) -> ImapStore:
    return make_imap_store(data_dir, hostname=HOST, **kwargs)


def account(data_dir: Where) -> MaildirAccount:
    # Typed as the Maildir account, which the Maildir-only tests use; the PostgreSQL one
    # has the same Protocol.
    made: MailAccount = store(data_dir).account(ALICE)
    return made  # type: ignore[return-value]


def root(data_dir: pathlib.Path) -> pathlib.Path:
    return data_dir / "mail" / ALICE.domain / ALICE.local


def message(n: int, body: bytes = b"body\r\n") -> bytes:
    """A small message in wire (CRLF) form that says which one it is."""
    return b"Subject: message %d\r\nX-Id: %d\r\n\r\n" % (n, n) + body


def deliver(data_dir: Where, content: bytes) -> str:
    """Deliver like the SMTP server does; returns the file name in new/ (Maildir)."""
    return deliver_to(data_dir, ALICE, content, hostname=HOST)


def files(folder: pathlib.Path) -> dict[str, str]:
    """base -> "new/<name>" or "cur/<name>" of every message file in `folder`."""
    out = {}
    for sub in ("new", "cur"):
        for name in os.listdir(folder / sub):
            if not name.startswith("."):
                out[name.partition(":")[0]] = f"{sub}/{name}"
    return out


def letters(folder: pathlib.Path) -> dict[str, str]:
    """base -> the flag letters after ":2," ("" when there are none)."""
    return {base: rel.partition(":2,")[2] for base, rel in files(folder).items()}


def x_id(content: bytes) -> int:
    """The X-Id header of a test message."""
    for line in content.split(b"\r\n"):
        if line.startswith(b"X-Id: "):
            return int(line[6:])
    raise AssertionError("no X-Id")
