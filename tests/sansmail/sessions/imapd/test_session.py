"""`ImapSession` byte for byte: parsed commands in, the octets a client reads out, over a
real `MaildirImapStore` in tmp_path (see session_helpers)."""

from __future__ import annotations

import pathlib

import pytest
from session_helpers import APPEND_LIMIT, Client, Where

import sansmail.sessions.imapd as imapd
from sansmail import __version__
from sansmail.imap import Idle, Noop, Select
from sansmail.sessions.imapd import ENABLE_EXTENSIONS, ImapSession, capabilities

HELLO = b"Subject: hello\r\nFrom: bob@example.org\r\n\r\nHello there.\r\n"


def append(
    client: Client, tag: bytes, message: bytes, folder: bytes = b"INBOX", flags: bytes = b""
) -> bytes:
    head = tag + b" APPEND " + folder + (b" (" + flags + b")" if flags else b"")
    return client.run(head + b" {%d}" % len(message), message)


@pytest.fixture
def client(where: Where) -> Client:
    c = Client(where)
    yield c
    c.close()


def test_exports() -> None:
    assert imapd.__all__ == [
        "AUTOLOGOUT",
        "ENABLE_EXTENSIONS",
        "IDLE_KEEPALIVE",
        "INTERNAL_ERROR",
        "FetchContext",
        "FetchResult",
        "ImapConversation",
        "ImapService",
        "ImapSession",
        "SearchContext",
        "capabilities",
        "fetch",
        "search",
    ]
    assert ENABLE_EXTENSIONS == ("IMAP4rev2", "UTF8=ACCEPT", "CONDSTORE", "QRESYNC")


def test_capabilities_by_state() -> None:
    before = capabilities(
        append_limit=10,
        authenticated=False,
        starttls=True,
        login_allowed=False,
        mechanisms=["PLAIN"],
    )
    assert before[:2] == ["IMAP4rev1", "IMAP4rev2"]
    assert "STARTTLS" in before
    assert "LOGINDISABLED" in before
    assert "AUTH=PLAIN" not in before
    assert "APPENDLIMIT=10" in before
    assert "IDLE" in before
    allowed = capabilities(append_limit=10, authenticated=False, mechanisms=["PLAIN", "LOGIN"])
    assert allowed[-2:] == ["AUTH=PLAIN", "AUTH=LOGIN"]
    assert "STARTTLS" not in allowed
    after = capabilities(append_limit=10, authenticated=True, starttls=True, mechanisms=["PLAIN"])
    assert not any(c.startswith("AUTH=") or c in ("STARTTLS", "LOGINDISABLED") for c in after)


def test_select_empty_inbox_rev1(client: Client) -> None:
    answer = client.run(b"a1 SELECT INBOX")
    validity = client.session.view.uidvalidity  # type: ignore[union-attr]
    assert answer == (
        b"* 0 EXISTS\r\n"
        b"* 0 RECENT\r\n"
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
        b"Flags permitted\r\n"
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n"
        b"* OK [UIDNEXT 1] Predicted next UID\r\n"
        b"a1 OK [READ-WRITE] SELECT completed\r\n" % validity
    )


def test_select_rev2_has_no_recent_nor_unseen_and_a_list_line(where: Where) -> None:
    client = Client(where, rev2=True)
    append(client, b"a0", HELLO)
    answer = client.run(b"a1 EXAMINE inbox")
    validity = client.session.view.uidvalidity  # type: ignore[union-attr]
    assert answer == (
        b"* 1 EXISTS\r\n"
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
        b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n"
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n"
        b"* OK [UIDNEXT 2] Predicted next UID\r\n"
        b'* LIST () "/" "INBOX"\r\n'
        b"a1 OK [READ-ONLY] EXAMINE completed\r\n" % validity
    )
    client.close()


def test_select_rev1_reports_recent_and_first_unseen(client: Client) -> None:
    append(client, b"a0", HELLO, flags=b"\\Seen")
    append(client, b"a1", HELLO)
    lines = client.lines(b"a2 SELECT INBOX")
    assert lines[:2] == [b"* 2 EXISTS", b"* 2 RECENT"]
    assert b"* OK [UNSEEN 2] Message 2 is first unseen" in lines
    # Another session does not see them as \Recent any more (RFC 3501 §2.3.2).
    other = Client(pathlib.Path(), store=client.store)
    assert other.lines(b"b1 EXAMINE INBOX")[1] == b"* 0 RECENT"
    other.close()


def test_select_missing_folder_and_closed_code(client: Client) -> None:
    client.run(b"a1 SELECT INBOX")
    assert client.run(b"a2 SELECT Nope") == (
        b"* OK [CLOSED] Previous mailbox closed\r\na2 NO [NONEXISTENT] no folder 'Nope'\r\n"
    )
    assert client.session.selected is None


def test_append_appenduid_and_exists_in_the_selected_folder(client: Client) -> None:
    client.run(b"a1 SELECT INBOX")
    validity = client.session.view.uidvalidity  # type: ignore[union-attr]
    answer = append(client, b"a2", HELLO, flags=b"\\Flagged $Work")
    assert answer == (
        b"+ go ahead\r\n"
        b"* 1 EXISTS\r\n"
        b"* 1 RECENT\r\n"
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)\r\n"
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work \\*)] "
        b"Flags permitted\r\n"
        b"a2 OK [APPENDUID %d 1] APPEND completed\r\n" % validity
    )
    assert client.run(b"a3 FETCH 1 (UID FLAGS)") == (
        b"* 1 FETCH (UID 1 FLAGS (\\Flagged $Work \\Recent))\r\na3 OK FETCH completed\r\n"
    )


def test_append_to_a_missing_folder_is_trycreate(client: Client) -> None:
    assert append(client, b"a1", HELLO, folder=b"Nope") == (
        b"+ go ahead\r\na1 NO [TRYCREATE] no folder 'Nope'\r\n"
    )
    assert (
        client.run(b"a2 APPEND INBOX {0}", b"")
        == b"+ go ahead\r\na2 NO Cannot append an empty message\r\n"
    )


def test_fetch_sets_seen_unless_peek(client: Client) -> None:
    append(client, b"a0", HELLO)
    client.run(b"a1 SELECT INBOX")
    assert client.run(b"a2 FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])") == (
        b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: hello\r\n\r\n)\r\n"
        b"a2 OK FETCH completed\r\n"
    )
    assert client.run(b"a3 UID FETCH 1 (BODY[TEXT])") == (
        b"* 1 FETCH (UID 1 BODY[TEXT] {14}\r\nHello there.\r\n FLAGS (\\Seen \\Recent))\r\n"
        b"a3 OK UID FETCH completed\r\n"
    )
    assert client.run(b"a4 FETCH 1 FLAGS") == (
        b"* 1 FETCH (FLAGS (\\Seen \\Recent))\r\na4 OK FETCH completed\r\n"
    )


def test_uid_fetch_answers_carry_the_uid_and_unknown_uids_are_skipped(client: Client) -> None:
    append(client, b"a0", HELLO)
    append(client, b"a1", HELLO)
    client.run(b"a2 SELECT INBOX")
    assert client.run(b"a3 UID FETCH 2:9 RFC822.SIZE") == (
        b"* 2 FETCH (UID 2 RFC822.SIZE %d)\r\na3 OK UID FETCH completed\r\n" % len(HELLO)
    )
    assert client.run(b"a4 UID FETCH 7:9 FLAGS") == b"a4 OK UID FETCH completed\r\n"
    assert client.run(b"a5 FETCH 3 FLAGS") == b"a5 BAD Invalid message sequence number\r\n"


def test_store_forms(client: Client) -> None:
    append(client, b"a0", HELLO)
    client.run(b"a1 EXAMINE INBOX")
    assert client.run(b"a2 STORE 1 +FLAGS (\\Seen)") == (
        b"a2 NO [READ-ONLY] the folder is open read-only\r\n"
    )
    client.run(b"a3 SELECT INBOX")
    # \\Recent cannot be stored (RFC 3501 §2.3.2) but this session still sees it.
    assert client.run(b"a4 STORE 1 +FLAGS (\\Deleted \\Recent)") == (
        b"* 1 FETCH (FLAGS (\\Deleted \\Recent))\r\na4 OK STORE completed\r\n"
    )
    assert client.run(b"a5 UID STORE 1 FLAGS (\\Answered)") == (
        b"* 1 FETCH (FLAGS (\\Answered \\Recent) UID 1)\r\na5 OK UID STORE completed\r\n"
    )
    assert client.run(b"a6 STORE 1 -FLAGS.SILENT (\\Answered)") == b"a6 OK STORE completed\r\n"
    assert (
        client.run(b"a7 FETCH 1 FLAGS")
        == b"* 1 FETCH (FLAGS (\\Recent))\r\na7 OK FETCH completed\r\n"
    )


def test_search_rev1_and_esearch(where: Where) -> None:
    client = Client(where)
    for n in range(3):
        append(client, b"a%d" % n, HELLO, flags=b"\\Seen" if n == 1 else b"")
    client.run(b"s0 SELECT INBOX")
    assert client.run(b"s1 SEARCH UNSEEN") == b"* SEARCH 1 3\r\ns1 OK SEARCH completed\r\n"
    assert client.run(b"s2 UID SEARCH SEEN") == b"* SEARCH 2\r\ns2 OK UID SEARCH completed\r\n"
    assert client.run(b"s3 SEARCH RETURN (MIN MAX COUNT) UNSEEN") == (
        b'* ESEARCH (TAG "s3") MIN 1 MAX 3 COUNT 2\r\ns3 OK SEARCH completed\r\n'
    )
    assert client.run(b"s4 SEARCH RETURN () DRAFT") == (
        b'* ESEARCH (TAG "s4")\r\ns4 OK SEARCH completed\r\n'
    )
    client.run(b"s4a UNSELECT")
    assert (
        client.run(b"s5 ENABLE IMAP4rev2") == b"* ENABLED IMAP4rev2\r\ns5 OK ENABLE completed\r\n"
    )
    client.run(b"s5a SELECT INBOX")
    assert client.run(b"s6 UID SEARCH ALL") == (
        b'* ESEARCH (TAG "s6") UID ALL 1:3\r\ns6 OK UID SEARCH completed\r\n'
    )
    client.close()


def test_copy_and_move_report_copyuid(client: Client) -> None:
    for n in range(3):
        append(client, b"a%d" % n, HELLO)
    client.run(b"b0 SELECT INBOX")
    archive = client.session.account.status("Archive", ["UIDVALIDITY"])["UIDVALIDITY"]
    assert client.run(b"b1 COPY 2:3 Archive") == (
        b"b1 OK [COPYUID %d 2:3 1:2] COPY completed\r\n" % archive
    )
    trash = client.session.account.status("Trash", ["UIDVALIDITY"])["UIDVALIDITY"]
    assert client.run(b"b2 MOVE 1,3 Trash") == (
        b"* OK [COPYUID %d 1,3 1:2] Moved UIDs\r\n"
        b"* 3 EXPUNGE\r\n"
        b"* 1 EXPUNGE\r\n"
        b"* 1 RECENT\r\n"
        b"b2 OK MOVE completed\r\n" % trash
    )
    assert client.run(b"b3 UID MOVE 9 Trash") == b"b3 OK UID MOVE completed, no messages\r\n"
    assert client.run(b"b4 COPY 1 Nope") == b"b4 NO [TRYCREATE] no folder 'Nope'\r\n"


def test_expunge_close_and_uid_expunge(client: Client) -> None:
    for n in range(4):
        append(client, b"a%d" % n, HELLO, flags=b"\\Deleted")
    client.run(b"b0 SELECT INBOX")
    assert client.run(b"b1 UID EXPUNGE 2:3") == (
        b"* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n* 2 RECENT\r\nb1 OK EXPUNGE completed\r\n"
    )
    assert client.run(b"b2 EXAMINE INBOX").split(b"\r\n")[1] == b"* 2 EXISTS"
    assert client.run(b"b3 EXPUNGE") == b"b3 NO [READ-ONLY] the folder is open read-only\r\n"
    assert client.run(b"b4 CLOSE") == b"b4 OK CLOSE completed\r\n"  # read-only: no expunge
    client.run(b"b5 SELECT INBOX")
    assert client.run(b"b6 CLOSE") == b"b6 OK CLOSE completed\r\n"
    assert client.session.account.status("INBOX", ["MESSAGES"]) == {"MESSAGES": 0}
    assert client.session.expunged == 4


def test_list_forms_rev1(client: Client) -> None:
    client.run(b'a1 CREATE "Work/Project/"')
    client.run(b"a2 UNSUBSCRIBE Junk")
    assert client.run(b'a3 LIST "" %') == (
        b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
        b'* LIST (\\HasNoChildren \\Archive) "/" "Archive"\r\n'
        b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"\r\n'
        b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"\r\n'
        b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n'
        b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"\r\n'
        b'* LIST (\\Noselect \\HasChildren) "/" "Work"\r\n'
        b"a3 OK LIST completed\r\n"
    )
    assert client.run(b"a4 LIST Work/ *") == (
        b'* LIST (\\HasNoChildren) "/" "Work/Project"\r\na4 OK LIST completed\r\n'
    )
    assert client.run(b'a5 LIST "" ""') == b'* LIST (\\Noselect) "/" ""\r\na5 OK LIST completed\r\n'
    assert client.run(b'a6 LIST "" inbox') == (
        b'* LIST (\\HasNoChildren) "/" "INBOX"\r\na6 OK LIST completed\r\n'
    )
    assert client.run(b'a7 LSUB "" *') == (
        b'* LSUB () "/" "INBOX"\r\n'
        b'* LSUB () "/" "Archive"\r\n'
        b'* LSUB () "/" "Drafts"\r\n'
        b'* LSUB () "/" "Sent"\r\n'
        b'* LSUB () "/" "Trash"\r\n'
        b"a7 OK LSUB completed\r\n"
    )


def test_list_extended_and_list_status(client: Client) -> None:
    append(client, b"a0", HELLO, folder=b"Sent")
    assert client.run(b'a1 LIST (SPECIAL-USE) "" * RETURN (STATUS (MESSAGES UNSEEN))') == (
        b'* LIST (\\HasNoChildren \\Subscribed \\Archive) "/" "Archive"\r\n'
        b'* STATUS "Archive" (MESSAGES 0 UNSEEN 0)\r\n'
        b'* LIST (\\HasNoChildren \\Subscribed \\Drafts) "/" "Drafts"\r\n'
        b'* STATUS "Drafts" (MESSAGES 0 UNSEEN 0)\r\n'
        b'* LIST (\\HasNoChildren \\Subscribed \\Junk) "/" "Junk"\r\n'
        b'* STATUS "Junk" (MESSAGES 0 UNSEEN 0)\r\n'
        b'* LIST (\\HasNoChildren \\Subscribed \\Sent) "/" "Sent"\r\n'
        b'* STATUS "Sent" (MESSAGES 1 UNSEEN 1)\r\n'
        b'* LIST (\\HasNoChildren \\Subscribed \\Trash) "/" "Trash"\r\n'
        b'* STATUS "Trash" (MESSAGES 0 UNSEEN 0)\r\n'
        b"a1 OK LIST completed\r\n"
    )
    client.run(b"a2 CREATE A/B")
    client.run(b"a3 SUBSCRIBE A/B")
    assert client.run(b'a4 LIST (SUBSCRIBED RECURSIVEMATCH) "" A') == (
        b'* LIST (\\Noselect \\HasChildren) "/" "A" ("CHILDINFO" ("SUBSCRIBED"))\r\n'
        b"a4 OK LIST completed\r\n"
    )
    client.run(b"a5 DELETE A/B")
    assert client.run(b'a6 LIST (SUBSCRIBED) "" A/*') == (
        b'* LIST (\\Noselect \\HasNoChildren \\Subscribed) "/" "A/B"\r\na6 OK LIST completed\r\n'
    )


def test_mailbox_management_errors(client: Client) -> None:
    assert client.run(b"a1 CREATE INBOX") == b"a1 NO [ALREADYEXISTS] INBOX always exists\r\n"
    assert client.run(b"a2 DELETE INBOX") == b"a2 NO [CANNOT] INBOX cannot be deleted\r\n"
    assert client.run(b"a3 DELETE Nope") == b"a3 NO [NONEXISTENT] no folder 'Nope'\r\n"
    assert client.run(b"a4 RENAME Nope Other") == b"a4 NO [NONEXISTENT] no folder 'Nope'\r\n"
    assert client.run(b"a5 SUBSCRIBE Nope") == b"a5 NO [NONEXISTENT] no folder Nope\r\n"
    assert client.run(b"a6 CREATE Sent (USE (\\Trash))") == (
        b"a6 NO [USEATTR] Special-use attributes follow the folder name here\r\n"
    )
    assert client.run(b"a7 RENAME Trash Bin") == b"a7 OK RENAME completed\r\n"
    assert client.run(b"a8 STATUS Bin (MESSAGES UIDNEXT APPENDLIMIT)") == (
        b'* STATUS "Bin" (MESSAGES 0 UIDNEXT 1 APPENDLIMIT %d)\r\na8 OK STATUS completed\r\n'
        % APPEND_LIMIT
    )


def test_id_namespace_enable_noop_logout(client: Client) -> None:
    assert client.run(b'a1 ID ("name" "test")') == (
        b'* ID ("name" "sansmail" "version" "%s")\r\na1 OK ID completed\r\n' % __version__.encode()
    )
    assert (
        client.run(b"a2 NAMESPACE")
        == b'* NAMESPACE (("" "/")) NIL NIL\r\na2 OK NAMESPACE completed\r\n'
    )
    assert client.run(b"a3 ENABLE X-UNKNOWN UTF8=ACCEPT") == (
        b"* ENABLED UTF8=ACCEPT\r\na3 OK ENABLE completed\r\n"
    )
    assert client.run(b"a4 NOOP") == b"a4 OK NOOP completed\r\n"
    assert client.run(b"a5 CAPABILITY").startswith(b"* CAPABILITY IMAP4rev1 IMAP4rev2 ")
    assert client.run(b"a6 LOGOUT") == b"* BYE Logging out\r\na6 OK LOGOUT completed\r\n"
    assert client.session.ended


def test_utf8_names_after_enable(where: Where) -> None:
    client = Client(where)
    assert client.run(b"a1 CREATE &ZeVnLIqe-") == b"a1 OK CREATE completed\r\n"
    assert client.run(b'a2 LIST "" &ZeVnLIqe-') == (
        b'* LIST (\\HasNoChildren) "/" "&ZeVnLIqe-"\r\na2 OK LIST completed\r\n'
    )
    client.run(b"a3 ENABLE IMAP4rev2")
    assert client.run('a4 LIST "" "日本語"'.encode()) == (
        '* LIST (\\HasNoChildren) "/" "日本語"\r\na4 OK LIST completed\r\n'.encode()
    )
    client.close()


def test_unknown_command_type_is_bad(where: Where) -> None:
    client = Client(where)
    assert [r.status for r in client.session.handle(Idle(tag="x"), rev2=False)] == ["BAD"]  # type: ignore[attr-defined]
    client.close()


def test_session_object_api(where: Where) -> None:
    client = Client(where)
    session: ImapSession = client.session
    assert session.selected is None
    assert session.updates(rev2=False) == []
    session.handle(Select(tag="a", mailbox="INBOX"), rev2=False)
    assert session.selected == "INBOX"
    assert session.handle(Noop(tag="b"), rev2=False)[-1].text == "NOOP completed"  # type: ignore[attr-defined]
    session.close()
    session.close()  # idempotent
    assert session.selected is None
