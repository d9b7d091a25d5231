"""The storage quota's usage file (`_quota`): what each writer appends, when it is
measured again, and that it agrees with a walk of the Maildir after every kind of change:
deliveries (also from two processes at once), APPEND, COPY, MOVE, EXPUNGE, DELETE of a
folder, files another tool adds or removes, POP3 deletions."""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imapstore_helpers import ALICE, HOST, deliver, message, root

from sansmail.mail.address import MailboxId
from sansmail.storage.maildir import (
    FlagMode,
    MaildirStore,
    Maildrop,
    OverQuotaError,
    QuotaLimits,
)
from sansmail.storage.maildir._imapaccount import MaildirImapStore
from sansmail.storage.maildir._imapmaildir import crlf_size as index_crlf_size
from sansmail.storage.maildir._quota import (
    DROP_SIZE,
    QUOTA_NAME,
    RECALC_SIZE,
    STALE_NS,
    Usage,
    account_root,
    crlf_size,
    peek,
    recalculate,
    record,
)

LIMIT = 1_000_000


def quota_file(data_dir: pathlib.Path) -> pathlib.Path:
    return root(data_dir) / QUOTA_NAME


def counted(data_dir: pathlib.Path, limit: int = LIMIT) -> Usage | None:
    return peek(str(root(data_dir)), limit)


def measured(data_dir: pathlib.Path, limit: int = LIMIT) -> Usage:
    # A walk that leaves the file alone: what recalculate would write.
    path = quota_file(data_dir)
    saved = path.read_bytes() if path.exists() else None
    found = recalculate(str(root(data_dir)), limit)
    if saved is None:
        path.unlink()
    else:
        path.write_bytes(saved)
    return found


def imap_store(data_dir: pathlib.Path, limit: int = LIMIT) -> MaildirImapStore:
    return MaildirImapStore(data_dir, hostname=HOST, quota=QuotaLimits(limit))


def limited_delivery(data_dir: pathlib.Path, content: bytes, limit: int = LIMIT) -> None:
    delivery = MaildirStore(data_dir, hostname=HOST, quota=QuotaLimits(limit)).begin(
        [ALICE], prefix=b"Return-Path: <s@example.org>\r\n"
    )
    delivery.write(content)
    delivery.commit()


def test_account_root() -> None:
    assert account_root("/d/mail/example.test/alice") == "/d/mail/example.test/alice"
    assert account_root("/d/mail/example.test/alice/") == "/d/mail/example.test/alice"
    assert account_root("/d/mail/example.test/alice/.Sent") == "/d/mail/example.test/alice"
    assert account_root("/d/mail/example.test/alice/.a.b") == "/d/mail/example.test/alice"


@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"xyz"]), max_size=40))
@settings(max_examples=200)
def test_outside_files_are_measured_as_the_index_measures_them(parts: list[bytes]) -> None:
    with tempfile.NamedTemporaryFile() as f:
        f.write(b"".join(parts))
        f.flush()
        assert crlf_size(f.name) == index_crlf_size(f.name)


def test_the_file_format_and_reading_rules(tmp_path: pathlib.Path) -> None:
    path = tmp_path / QUOTA_NAME
    assert peek(str(tmp_path), 100) is None  # no file
    record(str(tmp_path), 10, 1)
    assert not path.exists()  # writers never make the file
    path.write_bytes(b"100S\n30 2\n-10 -1\n")
    assert peek(str(tmp_path), 100) == Usage(20, 1)
    assert record(str(tmp_path), 5, 1) == len(b"100S\n30 2\n-10 -1\n5 1\n")
    assert path.read_bytes() == b"100S\n30 2\n-10 -1\n5 1\n"
    assert peek(str(tmp_path), 200) is None  # measured for another limit: dropped
    assert not path.exists()
    path.write_bytes(b"100S\n")
    assert peek(str(tmp_path), 100) == Usage(0, 0)
    path.write_bytes(b"100S,50C\n30 2\n")  # Courier's message count limit is read too
    assert peek(str(tmp_path), 100) == Usage(30, 2)
    for broken in (
        *(b"", b"100S\n30 2", b"100S\nx y\n", b"S\n1 1\n", b"100S\n-5 -1\n"),
        *(b"100S\n1 2 3\n", b"100S\n1\n2\n", b"100S\n1 2\n\n"),
    ):
        path.write_bytes(broken)
        assert peek(str(tmp_path), 100) is None, broken
        assert not path.exists()
    path.write_bytes(b"100S\n" + b"1 1\n" * (RECALC_SIZE // 4))
    assert peek(str(tmp_path), 100) is None  # grown past Courier's 5120 octets


def test_reading_again_parses_only_what_was_appended(tmp_path: pathlib.Path) -> None:
    path = tmp_path / QUOTA_NAME
    path.write_bytes(b"100S\n30 2\n")
    assert peek(str(tmp_path), 100) == Usage(30, 2)
    record(str(tmp_path), 7, 1)
    assert peek(str(tmp_path), 100) == Usage(37, 3)
    # Replaced (a measure): summed from the start again, whatever was seen before.
    path.write_bytes(b"100S\n31 2\n")
    assert peek(str(tmp_path), 100) == Usage(31, 2)
    path.write_bytes(b"100S\n31 2\n-1 -1\n")
    assert peek(str(tmp_path), 100) == Usage(30, 1)
    path.write_bytes(b"100S\n31 2\nx\n")
    assert peek(str(tmp_path), 100) is None
    path.write_bytes(b"100S\n31 2\n")
    assert peek(str(tmp_path), 200) is None  # the limit is checked every time


def test_over_the_limit_is_believed_for_15_minutes(tmp_path: pathlib.Path) -> None:
    path = tmp_path / QUOTA_NAME
    path.write_bytes(b"100S\n150 3\n")
    mtime = path.stat().st_mtime_ns
    assert peek(str(tmp_path), 100, now=mtime + STALE_NS) == Usage(150, 3)
    assert peek(str(tmp_path), 100, now=mtime + STALE_NS + 1) is None
    assert not path.exists()  # dropped: the next delivery measures
    path.write_bytes(b"100S\n50 3\n")
    mtime = path.stat().st_mtime_ns
    assert peek(str(tmp_path), 100, now=mtime + 10 * STALE_NS) == Usage(50, 3)


def test_a_file_nobody_reads_does_not_grow_for_ever(tmp_path: pathlib.Path) -> None:
    path = tmp_path / QUOTA_NAME
    path.write_bytes(b"0S\n" + b"1 1\n" * (DROP_SIZE // 4))
    record(str(tmp_path), 1, 1)
    assert not path.exists()


def test_deliveries_are_counted_and_measured_when_due(tmp_path: pathlib.Path) -> None:
    for n in range(3):
        limited_delivery(tmp_path, message(n))
    first = counted(tmp_path)
    assert first is not None
    assert first == measured(tmp_path)
    assert first.messages == 3
    # The first delivery found no file and measured (its own copy included); the
    # others appended.
    assert quota_file(tmp_path).read_bytes().count(b"\n") == 4
    # A delivery without a limit still counts, as long as the file exists.
    deliver(tmp_path, message(9))
    assert counted(tmp_path) == measured(tmp_path)
    # Another limit: the RCPT check drops the file, the next delivery measures.
    assert counted(tmp_path, LIMIT + 1) is None
    limited_delivery(tmp_path, message(10), limit=LIMIT + 1)
    assert counted(tmp_path, LIMIT + 1) == measured(tmp_path, LIMIT + 1)
    assert quota_file(tmp_path).read_bytes().startswith(b"%dS\n" % (LIMIT + 1))
    # Past RECALC_SIZE octets of lines: measured again (one line left).
    for n in range(RECALC_SIZE // 10):
        limited_delivery(tmp_path, message(n), limit=LIMIT + 1)
    assert quota_file(tmp_path).stat().st_size < RECALC_SIZE
    assert counted(tmp_path, LIMIT + 1) == measured(tmp_path, LIMIT + 1)


def test_without_a_limit_nothing_is_kept(tmp_path: pathlib.Path) -> None:
    MaildirStore(tmp_path, hostname=HOST, quota=QuotaLimits(0))
    delivery = MaildirStore(tmp_path, hostname=HOST, quota=QuotaLimits(0)).begin(
        [ALICE], prefix=b""
    )
    delivery.write(message(1))
    delivery.commit()
    assert not quota_file(tmp_path).exists()
    account = imap_store(tmp_path, 0).account(ALICE)
    assert account.storage() is None
    account.append("INBOX", message(2))
    assert not quota_file(tmp_path).exists()


def test_quota_limits_prefer_the_users_own() -> None:
    own = {"alice@example.test": 50, "bob@example.test": 0}
    limits = QuotaLimits(100, own.get)
    assert limits(ALICE) == 50
    assert limits(MailboxId(domain="example.test", local="bob")) == 0
    assert limits(MailboxId(domain="example.test", local="carol")) == 100


def test_store_full(tmp_path: pathlib.Path) -> None:
    store = MaildirStore(tmp_path, hostname=HOST, quota=QuotaLimits(100))
    assert not store.full(ALICE)  # no mail, no file: not known to be full
    delivery = store.begin([ALICE], prefix=b"")
    delivery.write(b"x" * 99 + b"\r\n")
    delivery.commit()
    assert store.full(ALICE)  # 101 octets of 100
    assert not MaildirStore(tmp_path, hostname=HOST, quota=QuotaLimits(0)).full(ALICE)
    assert not MaildirStore(tmp_path, hostname=HOST, quota=QuotaLimits(102)).full(ALICE)


def test_imap_changes_keep_usage_right(tmp_path: pathlib.Path) -> None:
    limited_delivery(tmp_path, message(1))
    limited_delivery(tmp_path, message(2))
    account = imap_store(tmp_path).account(ALICE)

    def check() -> Usage:
        storage = account.storage()  # measures when the file was dropped
        found = counted(tmp_path)
        assert found is not None
        assert found == measured(tmp_path)
        assert storage == (found.octets, LIMIT)
        return found

    start = check()
    account.append("INBOX", message(3, b"x" * 500 + b"\r\n"))
    appended = check()
    assert appended.messages == start.messages + 1
    view = account.select("INBOX")
    view.sync()
    check()  # new/ -> cur/ changes nothing
    uids = list(view.uids)
    view.copy(uids, "Archive")
    assert check().messages == 2 * appended.messages
    view.move(uids[:1], "Trash")
    assert check().messages == 2 * appended.messages
    view.store_flags(uids[1:], ["\\Deleted"], FlagMode.ADD)
    view.expunge()
    after = check()
    assert after.messages == 2 * appended.messages - 2
    assert after.octets < 2 * appended.octets
    account.delete("Archive")
    assert check().messages == 1
    view.close()
    account.close()


def test_outside_changes_are_noticed_by_the_sync(tmp_path: pathlib.Path) -> None:
    limited_delivery(tmp_path, message(1))
    account = imap_store(tmp_path).account(ALICE)
    view = account.select("INBOX")
    view.sync()
    start = counted(tmp_path)
    # Another tool (mutt) writes a message into cur/ and deletes the delivered one.
    folder = root(tmp_path)
    (folder / "cur" / "1700000000.mutt.host:2,S").write_bytes(b"Subject: x\n\nhello\n")
    for name in os.listdir(folder / "cur"):
        if "mutt" not in name:
            os.unlink(folder / "cur" / name)
    view.sync()
    found = counted(tmp_path)
    assert found is not None
    assert start is not None
    assert found.messages == 1
    assert found == measured(tmp_path) == Usage(len(b"Subject: x\r\n\r\nhello\r\n"), 1)
    view.close()
    account.close()


def test_a_new_index_does_not_count_what_was_there(tmp_path: pathlib.Path) -> None:
    limited_delivery(tmp_path, message(1))
    limited_delivery(tmp_path, message(2))
    before = counted(tmp_path)
    account = imap_store(tmp_path).account(ALICE)
    account.select("INBOX").sync()
    # The first sync of a new index drops the file instead of adding every message.
    assert counted(tmp_path) in (None, before)
    assert account.storage() == (before.octets, LIMIT)  # type: ignore[union-attr]
    account.close()


def test_append_over_the_limit_is_refused(tmp_path: pathlib.Path) -> None:
    account = imap_store(tmp_path, 100).account(ALICE)
    with pytest.raises(OverQuotaError) as caught:
        account.append("INBOX", b"x" * 101)
    assert caught.value.code == "OVERQUOTA"
    account.append("INBOX", b"x" * 98 + b"\r\n")  # 100 octets: fits exactly
    with pytest.raises(OverQuotaError):
        account.append("INBOX", b"y\r\n")
    with pytest.raises(OverQuotaError):
        account.check_quota(1)
    account.check_quota(0)
    account.close()


def test_pop3_deletions_count_where_there_is_no_index(tmp_path: pathlib.Path) -> None:
    for n in range(3):
        limited_delivery(tmp_path, message(n))
    with Maildrop.open(root(tmp_path)) as drop:
        drop.expunge(drop.messages[:2])
    found = counted(tmp_path)
    assert found is not None
    assert found.messages == 1
    assert found == measured(tmp_path)


def test_pop3_deletions_with_an_index_are_counted_once(tmp_path: pathlib.Path) -> None:
    for n in range(3):
        limited_delivery(tmp_path, message(n))
    account = imap_store(tmp_path).account(ALICE)
    account.storage()
    with Maildrop.open(root(tmp_path)) as drop:
        drop.expunge(drop.messages[:2])
    account.select("INBOX").sync()  # the index notices the files gone
    found = counted(tmp_path)
    assert found is not None
    assert found.messages == 1
    assert found == measured(tmp_path)
    account.close()


def _deliver_many(data_dir: str, count: int) -> None:
    store = MaildirStore(pathlib.Path(data_dir), hostname=HOST, quota=QuotaLimits(LIMIT))
    for n in range(count):
        delivery = store.begin([ALICE], prefix=b"")
        delivery.write(message(n, b"y" * (n % 50) + b"\r\n"))
        delivery.commit()


def test_two_processes_delivering_keep_the_total_right(tmp_path: pathlib.Path) -> None:
    limited_delivery(tmp_path, message(0))  # the file exists: both only append
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_deliver_many, args=(str(tmp_path), 150)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    # 300 lines is past RECALC_SIZE: read the lines as they were appended.
    lines = quota_file(tmp_path).read_bytes().splitlines()
    total = [sum(int(line.split()[i]) for line in lines[1:]) for i in (0, 1)]
    assert len(lines) == 302
    assert Usage(*total) == measured(tmp_path)
    assert total[1] == 301
