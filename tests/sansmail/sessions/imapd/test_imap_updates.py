"""Live updates between sessions, driven through the sans-I/O session: what other
sessions, SMTP deliveries, POP3 deletions and outside tools do to a selected folder
reaches a session at NOOP, at a UID command, or through `updates()` (what an IDLE
adapter calls when the folder's directories change), never as an EXPUNGE inside a FETCH,
STORE or SEARCH by number; and the sequence numbers a session sends always agree with
what it told its client before."""

from __future__ import annotations

import os
import pathlib
import time

import pytest
from imap_backends import Where, deliver_to
from session_helpers import ALICE, Client

from sansmail import SERVER, LocalProtocolError
from sansmail.imap import Connection, Fetch, Tagged, Untagged, UntaggedStatus
from sansmail.storage.maildir import MaildirImapStore, Maildrop
from sansmail.storage.maildir._imapindex import FolderIndex

HELLO = b"Subject: hello\r\n\r\nHello.\r\n"


def two(where: Where, messages: int, *, rev2: bool = False) -> tuple[Client, Client]:
    one = Client(where, rev2=rev2)
    for n in range(messages):
        one.run(b"x%d APPEND INBOX {%d}" % (n, len(HELLO)), HELLO)
    other = Client(where, store=one.store, rev2=rev2)
    one.run(b"s1 SELECT INBOX")
    other.run(b"s2 SELECT INBOX")
    return one, other


def pushed(client: Client, changed_before: int | None = None) -> bytes:
    """What an idling client reads: the session's news, written by its core (which
    refuses an EXPUNGE where the client could not place it)."""
    responses = client.session.updates(rev2=client.conn.imap4rev2, changed_before=changed_before)
    return b"".join(client.conn.send(r) for r in responses)


def inbox(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "mail" / ALICE.domain / ALICE.local


def deliver(where: Where, content: bytes = HELLO) -> str:
    """Deliver as the SMTP session and the queue runner do (into new/)."""
    return deliver_to(where, ALICE, content, hostname="mx.example.test")


def test_store_in_one_session_is_a_fetch_flags_in_the_other(where: Where) -> None:
    one, other = two(where, 2)
    one.run(b"a1 STORE 2 +FLAGS (\\Flagged)")
    assert other.run(b"b1 NOOP") == (
        b"* 2 FETCH (FLAGS (\\Flagged) UID 2)\r\nb1 OK NOOP completed\r\n"
    )
    # Told once: nothing more at the next NOOP, nor when idling.
    assert other.run(b"b2 NOOP") == b"b2 OK NOOP completed\r\n"
    assert pushed(other) == b""
    # The same news reaches an idler.
    one.run(b"a2 STORE 1 +FLAGS (\\Seen)")
    assert pushed(other) == b"* 1 FETCH (FLAGS (\\Seen) UID 1)\r\n"
    one.close()
    other.close()


def test_expunge_waits_for_noop_never_inside_a_fetch(where: Where) -> None:
    one, other = two(where, 4)
    one.run(b"a1 STORE 2:3 +FLAGS.SILENT (\\Deleted)")
    one.run(b"a2 EXPUNGE")
    # The other session's numbers do not move inside FETCH, STORE or SEARCH: message 4
    # is 4 there until it is told of the expunges.
    assert other.run(b"b1 FETCH 4 (UID)") == b"* 4 FETCH (UID 4)\r\nb1 OK FETCH completed\r\n"
    assert other.run(b"b2 STORE 4 +FLAGS (\\Answered)") == (
        b"* 4 FETCH (FLAGS (\\Answered))\r\nb2 OK STORE completed\r\n"
    )
    assert other.run(b"b3 SEARCH ALL") == b"* SEARCH 1 2 3 4\r\nb3 OK SEARCH completed\r\n"
    # NOOP: highest first, so each number is right when read.
    assert other.run(b"b4 NOOP") == (b"* 3 EXPUNGE\r\n* 2 EXPUNGE\r\nb4 OK NOOP completed\r\n")
    assert other.run(b"b5 FETCH 2 (UID FLAGS)") == (
        b"* 2 FETCH (UID 4 FLAGS (\\Answered))\r\nb5 OK FETCH completed\r\n"
    )
    one.close()
    other.close()


def test_an_idler_hears_expunges_and_flags_numbered_after_them(where: Where) -> None:
    one, other = two(where, 5)
    one.run(b"a1 STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    one.run(b"a2 EXPUNGE")
    one.run(b"a3 STORE 3 +FLAGS (\\Flagged)")  # UID 5, number 3 after the expunges
    assert pushed(other) == (
        b"* 3 EXPUNGE\r\n* 1 EXPUNGE\r\n* 3 FETCH (FLAGS (\\Flagged) UID 5)\r\n"
    )
    assert other.run(b"b1 FETCH 1:* (UID)") == (
        b"* 1 FETCH (UID 2)\r\n* 2 FETCH (UID 4)\r\n* 3 FETCH (UID 5)\r\nb1 OK FETCH completed\r\n"
    )
    one.close()
    other.close()


def test_a_delivery_is_an_exists(where: Where) -> None:
    one, other = two(where, 1)
    deliver(where)
    # rev1: the first read-write session to see it claims \Recent.
    assert pushed(other) == b"* 2 EXISTS\r\n* 1 RECENT\r\n"
    assert one.run(b"a1 NOOP") == b"* 2 EXISTS\r\na1 OK NOOP completed\r\n"
    deliver(where)
    deliver(where)
    assert other.run(b"b1 UID FETCH 1:* (UID)") == (
        # \Recent stays with the session that claimed it: 2, 3 and 4 are its own.
        b"* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 2)\r\n* 4 EXISTS\r\n* 3 RECENT\r\n"
        b"b1 OK UID FETCH completed\r\n"
    )
    one.close()
    other.close()


def test_a_delivery_is_an_exists_in_rev2_and_in_a_fetch(where: Where) -> None:
    # EXISTS may come with any response (RFC 9051 §7.5.1 forbids only EXPUNGE), but the
    # session reports news after commands other than FETCH, STORE and SEARCH: a client
    # learns of the new message at its next NOOP or IDLE.
    one, other = two(where, 1, rev2=True)
    deliver(where)
    assert other.run(b"b1 FETCH 1 (UID)") == b"* 1 FETCH (UID 1)\r\nb1 OK FETCH completed\r\n"
    assert pushed(other) == b"* 2 EXISTS\r\n"
    one.close()
    other.close()


def test_pop3_dele_is_an_expunge(tmp_path: pathlib.Path) -> None:
    one, other = two(tmp_path, 0)
    deliver(tmp_path)
    deliver(tmp_path)
    assert pushed(other) == b"* 2 EXISTS\r\n* 2 RECENT\r\n"
    with Maildrop.open(inbox(tmp_path)) as drop:
        drop.expunge([drop.messages[0]])
    assert pushed(other) == b"* 1 EXPUNGE\r\n* 1 RECENT\r\n"
    assert one.run(b"a1 NOOP") == b"* 1 EXISTS\r\na1 OK NOOP completed\r\n"
    one.close()
    other.close()


def test_outside_tools_are_noticed(tmp_path: pathlib.Path) -> None:
    # mutt marks a message read by renaming its file, and files one by writing into
    # new/; the view's freshness check sees both directories' mtimes move.
    one, other = two(tmp_path, 1)
    cur = inbox(tmp_path) / "cur"
    (name,) = os.listdir(cur)
    os.rename(cur / name, cur / (name.partition(":")[0] + ":2,FS"))
    (inbox(tmp_path) / "new" / "1767323999.M1P1.mutt").write_bytes(b"Subject: x\n\nx\n")
    assert pushed(other) == (
        b"* 2 EXISTS\r\n* 1 RECENT\r\n* 1 FETCH (FLAGS (\\Flagged \\Seen) UID 1)\r\n"
    )
    one.close()
    other.close()


def test_nothing_changed_is_nothing_said(where: Where) -> None:
    one, other = two(where, 3)
    assert pushed(other) == b""
    assert other.run(b"b1 NOOP") == b"b1 OK NOOP completed\r\n"
    one.close()
    other.close()


def test_watch_paths_are_the_selected_folders_directories(tmp_path: pathlib.Path) -> None:
    one = Client(tmp_path)
    assert one.session.watch_paths == ()
    one.run(b"s1 SELECT INBOX")
    root = inbox(tmp_path)
    assert one.session.watch_paths == (str(root / "new"), str(root / "cur"))
    one.run(b"s2 SELECT Trash")
    assert one.session.watch_paths == (str(root / ".Trash" / "new"), str(root / ".Trash" / "cur"))
    one.run(b"s3 UNSELECT")
    assert one.session.watch_paths == ()
    one.close()


def test_a_deleted_folder_ends_an_idler_with_bye(where: Where) -> None:
    one = Client(where)
    one.run(b"c1 CREATE Lists")
    other = Client(where, store=one.store)
    other.run(b"s1 SELECT Lists")
    one.run(b"d1 DELETE Lists")
    assert pushed(other).startswith(b"* BYE ")
    assert other.session.ended
    one.close()
    other.close()


def test_the_core_would_refuse_an_expunge_inside_a_fetch() -> None:
    # The guard behind the rule the session keeps: the writer itself refuses.
    conn = Connection(SERVER)
    conn.send(UntaggedStatus(status="OK", text="ready"))
    conn.receive_data(b"a0 LOGIN alice secret\r\n")
    conn.next_event()
    conn.send(Tagged(tag="a0", status="OK", text="in"))
    conn.receive_data(b"a1 SELECT INBOX\r\n")
    conn.next_event()
    conn.send(Tagged(tag="a1", status="OK", text="selected"))
    conn.receive_data(b"a2 FETCH 1 (UID)\r\n")
    assert isinstance(conn.next_event(), Fetch)
    try:
        conn.send(Untagged.expunge(1))
    except LocalProtocolError:
        pass
    else:
        raise AssertionError("EXPUNGE inside FETCH was written")


def test_idlers_woken_together_list_the_folder_once(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A delivery wakes every idler of the folder; the first one's look at the folder
    # (taken after the wake-up) serves the others, even inside the one-second margin in
    # which the directories' mtimes are not trusted.
    store = MaildirImapStore(tmp_path, hostname="mx.example.test")  # the wall clock
    one = Client(tmp_path, store=store)
    other = Client(tmp_path, store=store)
    one.run(b"s1 SELECT INBOX")
    other.run(b"s2 SELECT INBOX")
    listings: list[str] = []
    sync = FolderIndex._sync

    def counted(self: FolderIndex, *args: object) -> bool:
        listings.append(self.folder)
        return sync(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(FolderIndex, "_sync", counted)
    deliver(tmp_path)
    woken = time.time_ns()
    assert pushed(one, woken) == b"* 1 EXISTS\r\n* 1 RECENT\r\n"
    assert pushed(other, woken) == b"* 1 EXISTS\r\n"
    assert len(listings) == 1
    # A change after the last listing is looked for again.
    deliver(tmp_path)
    assert pushed(other, time.time_ns()) == b"* 2 EXISTS\r\n* 1 RECENT\r\n"
    assert len(listings) == 2
    # Without the time (a NOOP), inside the margin: listed again, found unchanged.
    assert one.run(b"a1 NOOP") == b"* 2 EXISTS\r\na1 OK NOOP completed\r\n"
    assert len(listings) == 3
    one.close()
    other.close()
