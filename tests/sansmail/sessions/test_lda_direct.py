"""sansmail.sessions.lda: the copies that take the direct path (no flags or keywords,
INBOX or a folder that exists or :create makes) through the Maildir store, as mail for
users without scripts does, and how the IMAP side sees them beside copies appended
through the account. On both backends (the `server` fixture's param), but for what only
Maildir files show."""

from __future__ import annotations

import os
import pathlib

import pytest
from lda_helpers import ALICE, BACKENDS, MESSAGE, Server, lines, make_server, message, warnings

from sansmail.mail import delivery
from sansmail.storage.maildir import MaildirStore
from sansmail.storage.queue import QueueStore

FLAG_SOME = (
    'require ["imap4flags", "fileinto"];\n'
    'if header :contains "subject" "flag" { addflag "\\\\Flagged"; }\n'
    "keep;\n"
)


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Server:
    return make_server(request, tmp_path, request.param)


maildir_only = pytest.mark.parametrize("server", ["maildir"], indirect=True)


def _no_account(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("the account was opened")


def test_keep_and_fileinto_an_existing_folder_never_open_the_account(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.imap.account(ALICE).create("Lists")
    server.script(
        'require "fileinto";\n'
        'if header :contains "subject" "list" { fileinto "Lists"; stop; }\n'
        "keep;\n"
    )
    listed = message("Subject: a list message")
    with monkeypatch.context() as patched:
        patched.setattr(server.imap, "account", _no_account)
        kept = server.deliver()
        filed = server.deliver(listed, queue_id="Q2")
    assert (kept.outcome, filed.outcome) == (delivery.STORED, delivery.STORED)
    assert lines(filed) == ["Q2: to=<alice@example.test>: sieve: stored mail into mailbox 'Lists'"]
    if isinstance(server.store, MaildirStore):
        # Written into new/ by the store, as the direct path writes: no index row yet.
        root = server.store.maildir(ALICE)
        assert len(list((root / "new").iterdir())) == 1
        assert len(list((root / ".Lists" / "new").iterdir())) == 1
    assert server.folder() == [(MESSAGE, frozenset())]
    assert server.folder("Lists") == [(listed, frozenset())]


def test_an_open_view_sees_the_copies_in_arrival_order_with_their_flags(server: Server) -> None:
    # Copies without flags wait in new/ for a sync to number them; one with a flag is
    # appended with its UID at once, after a sync of what waited, so UIDs follow arrival.
    account = server.imap.account(ALICE)
    view = account.select("INBOX")
    try:
        server.script(FLAG_SOME)
        first = message("Subject: one", "Message-ID: <1@far.test>")
        second = message("Subject: flag two", "Message-ID: <2@far.test>")
        third = message("Subject: three", "Message-ID: <3@far.test>")
        for number, content in enumerate((first, second, third), 1):
            assert server.deliver(content, queue_id=f"Q{number}").outcome == delivery.STORED
        changes = view.sync()
        assert changes.exists == 3
        got = [(view.read(m.uid), m.flags) for m in sorted(changes.added, key=lambda m: m.uid)]
        assert got == [
            (first, frozenset()),
            (second, frozenset({"\\Flagged"})),
            (third, frozenset()),
        ]
    finally:
        view.close()
        account.close()


def test_fileinto_a_missing_folder_goes_to_inbox_without_making_it(server: Server) -> None:
    server.script('require "fileinto"; fileinto "Nope";')
    result = server.deliver()
    assert result.outcome == delivery.STORED
    assert server.folder() == [(MESSAGE, frozenset())]
    assert "Nope" not in server.folders()
    if isinstance(server.store, MaildirStore):
        assert not (server.store.maildir(ALICE) / ".Nope").exists()
    assert warnings(result) == [
        "Q1: to=<alice@example.test>: sieve: failed to store into mailbox 'Nope':"
        " no folder 'Nope'; stored into INBOX instead"
    ]


def test_a_user_who_never_logged_in_has_the_special_use_folders(server: Server) -> None:
    # The account's first open makes Junk and the others; the direct path opens it
    # when a folder is not there, so Junk is found, not replaced by INBOX.
    server.script('require "fileinto"; fileinto "Junk";')
    result = server.deliver()
    assert warnings(result) == []
    assert server.folder("Junk") == [(MESSAGE, frozenset())]
    assert server.folder() == []


def test_fileinto_an_invalid_folder_name_goes_to_inbox(server: Server) -> None:
    server.script('require "fileinto"; fileinto "a//b";')
    result = server.deliver()
    assert result.outcome == delivery.STORED
    assert server.folder() == [(MESSAGE, frozenset())]
    assert "stored into INBOX instead" in warnings(result)[0]


@maildir_only
def test_redirects_are_queued_before_the_copy_is_made_durable(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The order of the module docstring, which the direct path keeps: a crash between
    # the two repeats the delivery (the forward remembered), never loses the copy.
    order: list[str] = []
    commit_many = MaildirStore.commit_many
    queue_begin = QueueStore.begin

    def storing(store: MaildirStore, deliveries: list[object]) -> object:
        order.append("maildir")
        return commit_many(store, deliveries)  # type: ignore[arg-type]

    def queueing(queue: QueueStore, queue_id: str) -> object:
        order.append("queue")
        return queue_begin(queue, queue_id)

    monkeypatch.setattr(MaildirStore, "commit_many", storing)
    monkeypatch.setattr(QueueStore, "begin", queueing)
    server.script('require "copy"; redirect :copy "carol@elsewhere.test";')
    result = server.deliver()
    assert result.outcome == delivery.STORED
    assert order == ["queue", "maildir"]
    assert server.folder() == [(MESSAGE, frozenset())]


@maildir_only
def test_the_copy_and_its_name_are_on_disk_before_the_outcome(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[pathlib.Path] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(pathlib.Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    server.script("keep;")
    server.deliver(queue_id="Q0")  # the Maildir made and made sure of
    monkeypatch.setattr(os, "fsync", fsync)
    assert server.deliver().outcome == delivery.STORED
    root = server.store.maildir(ALICE)
    # The file, in tmp/ under its first name, then the new/ its final name is in.
    tmp_file, directory = synced
    assert (tmp_file.parent, directory) == (root / "tmp", root / "new")
    assert [p for p in directory.iterdir() if p.name.startswith(tmp_file.name + ",S=")]
