"""Shared pieces of the IMAP store tests: a store in a temporary data_dir, deliveries
through the SMTP side's `MaildirStore`, and looks at the Maildir as other tools see it."""

from __future__ import annotations

import os
import pathlib

from sansmail.mail.address import MailboxId
from sansmail.storage.maildir import MaildirStore
from sansmail.storage.maildir._imapaccount import MaildirAccount, MaildirImapStore

HOST = "mx.example.test"
ALICE = MailboxId(domain="example.test", local="alice")


def store(data_dir: pathlib.Path) -> MaildirImapStore:
    return MaildirImapStore(data_dir, hostname=HOST)


def account(data_dir: pathlib.Path) -> MaildirAccount:
    return store(data_dir).account(ALICE)


def root(data_dir: pathlib.Path) -> pathlib.Path:
    return data_dir / "mail" / ALICE.domain / ALICE.local


def message(n: int, body: bytes = b"body\r\n") -> bytes:
    """A small message in wire (CRLF) form that says which one it is."""
    return b"Subject: message %d\r\nX-Id: %d\r\n\r\n" % (n, n) + body


def deliver(data_dir: pathlib.Path, content: bytes) -> str:
    """Deliver like the SMTP server does; returns the file name in new/."""
    delivery = MaildirStore(data_dir, hostname=HOST).begin([ALICE], prefix=b"")
    delivery.write(content)
    (name,) = delivery.commit()
    return name


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
