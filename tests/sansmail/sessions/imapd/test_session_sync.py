"""Two sessions on one mailbox: what one does reaches the other only where RFC 9051
§7.5.1 allows; a folder deleted under a selected session ends it with BYE. And the
LIST pattern matcher against a reference implementation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from session_helpers import Client, Where

from sansmail.sessions.imapd._folders import match_pattern

HELLO = b"Subject: hello\r\n\r\nHello.\r\n"


def two(where: Where, messages: int) -> tuple[Client, Client]:
    one = Client(where)
    for n in range(messages):
        one.run(b"x%d APPEND INBOX {%d}" % (n, len(HELLO)), HELLO)
    other = Client(where, store=one.store)
    one.run(b"s1 SELECT INBOX")
    other.run(b"s2 SELECT INBOX")
    return one, other


def test_expunge_reaches_the_other_session_at_noop_not_at_fetch(where: Where) -> None:
    one, other = two(where, 3)
    one.run(b"a1 STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert one.run(b"a2 EXPUNGE") == (b"* 2 EXPUNGE\r\n* 2 RECENT\r\na2 OK EXPUNGE completed\r\n")
    # FETCH, STORE and SEARCH may not announce it; message 3 is still number 3 there.
    assert other.run(b"b1 FETCH 3 (UID)") == b"* 3 FETCH (UID 3)\r\nb1 OK FETCH completed\r\n"
    assert other.run(b"b2 SEARCH ALL") == b"* SEARCH 1 2 3\r\nb2 OK SEARCH completed\r\n"
    # Reading the expunged message's content gives NIL (RFC 2180 §4.1.3).
    assert other.run(b"b3 FETCH 2 (UID BODY.PEEK[TEXT])") == (
        b"* 2 FETCH (UID 2 BODY[TEXT] NIL)\r\nb3 OK FETCH completed\r\n"
    )
    assert other.run(b"b4 NOOP") == b"* 2 EXPUNGE\r\nb4 OK NOOP completed\r\n"
    assert other.run(b"b5 FETCH 2 (UID)") == b"* 2 FETCH (UID 3)\r\nb5 OK FETCH completed\r\n"
    one.close()
    other.close()


def test_flag_changes_and_new_mail_reach_the_other_session(where: Where) -> None:
    one, other = two(where, 2)
    one.run(b"a1 STORE 1 +FLAGS (\\Flagged)")
    one.run(b"a2 APPEND INBOX {%d}" % len(HELLO), HELLO)
    assert other.run(b"b1 CHECK") == (
        b"* 3 EXISTS\r\n* 1 FETCH (FLAGS (\\Flagged) UID 1)\r\nb1 OK CHECK completed\r\n"
    )
    # A UID command may carry the news, expunges included (RFC 9051 §7.5.1).
    one.run(b"a3 UID EXPUNGE 1")  # not \Deleted: nothing happens
    one.run(b"a4 UID STORE 3 +FLAGS (\\Deleted)")
    one.run(b"a5 UID EXPUNGE 3")
    assert other.run(b"b2 UID FETCH 1 (FLAGS)") == (
        b"* 1 FETCH (UID 1 FLAGS (\\Flagged))\r\n* 3 EXPUNGE\r\nb2 OK UID FETCH completed\r\n"
    )
    one.close()
    other.close()


def test_a_deleted_selected_folder_ends_the_session(where: Where) -> None:
    one = Client(where)
    one.run(b"a1 CREATE Work")
    one.run(b"a2 APPEND Work {%d}" % len(HELLO), HELLO)
    other = Client(where, store=one.store)
    other.run(b"b1 SELECT Work")
    assert one.run(b"a3 DELETE Work") == b"a3 OK DELETE completed\r\n"
    assert other.run(b"b2 NOOP") == (
        b"* BYE The selected mailbox was deleted, renamed or rebuilt, closing\r\n"
    )
    assert other.session.ended
    assert other.session.selected is None
    one.close()
    other.close()


def test_close_expunges_silently_and_move_expunges_loudly(where: Where) -> None:
    one, other = two(where, 2)
    assert one.run(b"a1 MOVE 1 Archive").split(b"\r\n")[1:3] == [b"* 1 EXPUNGE", b"* 1 RECENT"]
    one.run(b"a2 STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert one.run(b"a3 CLOSE") == b"a3 OK CLOSE completed\r\n"
    assert other.run(b"b1 NOOP") == b"* 2 EXPUNGE\r\n* 1 EXPUNGE\r\nb1 OK NOOP completed\r\n"
    one.close()
    other.close()


# --- the LIST pattern matcher -----------------------------------------------------------


def _reference(pattern: str, name: str) -> bool:
    """RFC 9051 §6.3.9 wildcards, by plain recursion."""
    if not pattern:
        return not name
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        return any(_reference(rest, name[i:]) for i in range(len(name) + 1))
    if head == "%":
        for i in range(len(name) + 1):
            if _reference(rest, name[i:]):
                return True
            if i < len(name) and name[i] == "/":
                return False
        return False
    return bool(name) and name[0] == head and _reference(rest, name[1:])


_NAMES = st.text(alphabet="ab/.*%", max_size=8)


@settings(deadline=None, max_examples=300)
@given(pattern=_NAMES, name=st.text(alphabet="ab/.", max_size=8))
def test_pattern_matcher_agrees_with_the_reference(pattern: str, name: str) -> None:
    assert match_pattern("", pattern)(name) == _reference(pattern, name)


def test_reference_and_inbox_rules() -> None:
    assert match_pattern("Work", "/x")("/x")  # a pattern with the delimiter first stands alone
    assert match_pattern("Work/", "%")("Work/Project")
    assert not match_pattern("Work/", "%")("Work/Project/Old")
    assert match_pattern("", "inbox/%")("INBOX/Old")
    assert match_pattern("", "iNbOx")("INBOX")
    assert not match_pattern("", "inboxes")("INBOXES")
