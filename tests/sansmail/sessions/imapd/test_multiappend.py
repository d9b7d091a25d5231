"""MULTIAPPEND (RFC 3502) through the session: several messages in one APPEND, one
APPENDUID with their UID set (RFC 4315 §3), and all or none of them kept: the quota is
checked for all first, and messages appended before one the store refuses are taken out
again."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest
from session_helpers import Client, Where

from sansmail.storage.maildir import ImapStoreError, QuotaLimits
from sansmail.storage.maildir._imapaccount import MaildirAccount, MaildirImapStore

ONE = b"Subject: one\r\n\r\n1\r\n"
TWO = b"Subject: two\r\n\r\n2\r\n"
THREE = b"Subject: three\r\n\r\n3\r\n"


def multiappend(client: Client, tag: bytes, folder: bytes = b"INBOX") -> bytes:
    return client.run(
        tag + b" APPEND " + folder + b" {%d}" % len(ONE),
        ONE + b' (\\Seen) "05-Jan-2026 10:00:00 +0100" {%d}' % len(TWO),
        TWO + b" {%d}" % len(THREE),
        THREE,
    )


def uids_and_subjects(client: Client) -> list[bytes]:
    answer = client.run(b"f1 EXAMINE INBOX") + client.run(
        b"f2 FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"
    )
    return [line for line in answer.split(b"\r\n") if line.startswith((b"* ", b"Subject"))]


def test_multiappend_keeps_every_message_and_reports_their_uids(where: Where) -> None:
    client = Client(where)
    answer = multiappend(client, b"a1")
    assert answer.count(b"+ go ahead") == 3
    assert re.fullmatch(
        rb"(\+ go ahead\r\n){3}a1 OK \[APPENDUID \d+ 1:3\] APPEND completed\r\n", answer
    )
    fetched = b"\n".join(uids_and_subjects(client))
    assert fetched.count(b"FETCH (UID") == 3
    assert b"Subject: one" in fetched
    assert b"Subject: three" in fetched
    assert b"* 2 FETCH (UID 2 FLAGS (\\Seen)" in fetched
    client.close()


def test_a_refusal_part_way_takes_the_others_out(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Client(tmp_path)
    real = MaildirAccount.append
    calls = []

    def third_fails(self: MaildirAccount, *args: Any, **kwargs: Any) -> Any:
        calls.append(args[1])
        if len(calls) == 3:
            raise ImapStoreError("the disk said no")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MaildirAccount, "append", third_fails)
    answer = multiappend(client, b"a1")
    assert answer.endswith(b"a1 NO the disk said no\r\n"), answer
    assert calls == [ONE, TWO, THREE]
    monkeypatch.setattr(MaildirAccount, "append", real)
    assert client.run(b"a2 STATUS INBOX (MESSAGES UIDNEXT)") == (
        b'* STATUS "INBOX" (MESSAGES 0 UIDNEXT 3)\r\na2 OK STATUS completed\r\n'
    )
    client.close()


def test_the_quota_is_checked_for_all_of_them(tmp_path: pathlib.Path) -> None:
    room = len(ONE) + len(TWO)
    store = MaildirImapStore(tmp_path, hostname="mx.example.test", quota=QuotaLimits(room))
    client = Client(tmp_path, store=store)
    answer = multiappend(client, b"a1")
    assert answer.endswith(b"a1 NO [OVERQUOTA] the mailbox would be over its storage quota\r\n")
    assert client.run(b"a2 STATUS INBOX (MESSAGES)") == (
        b'* STATUS "INBOX" (MESSAGES 0)\r\na2 OK STATUS completed\r\n'
    )
    client.close()
