"""CONDSTORE and QRESYNC (RFC 7162) through the session, byte for byte: HIGHESTMODSEQ on
SELECT, MODSEQ in FETCH, CHANGEDSINCE, STORE UNCHANGEDSINCE with [MODIFIED], SEARCH and
ESEARCH MODSEQ, STATUS HIGHESTMODSEQ; under QRESYNC, VANISHED for every expunge (this
session's, another's, POP3's) and SELECT (QRESYNC ...) reporting exactly what changed
while the client was away; mod-sequences kept across a restart of the store."""

from __future__ import annotations

import contextlib
import pathlib
import re
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imap_backends import Where, deliver_to
from session_helpers import ALICE, Client, make_store

from sansmail.storage.maildir import Maildrop, _imapindex

HELLO = b"Subject: hello\r\n\r\nHello.\r\n"


def filled(tmp_path: pathlib.Path, messages: int, *, qresync: bool = False) -> Client:
    """A session on an INBOX of `messages` APPENDed messages, UIDs 1..n, modseqs 2..n+1
    (a new index starts at 1 and each APPEND is a transaction)."""
    client = Client(tmp_path)
    for n in range(messages):
        client.run(b"x%d APPEND INBOX {%d}" % (n, len(HELLO)), HELLO)
    if qresync:
        assert (
            client.run(b"e1 ENABLE QRESYNC") == b"* ENABLED QRESYNC\r\ne1 OK ENABLE completed\r\n"
        )
    return client


def uidvalidity(client: Client) -> int:
    found = re.search(rb"UIDVALIDITY (\d+)", client.run(b"v STATUS INBOX (UIDVALIDITY)"))
    assert found is not None
    return int(found.group(1))


def highest(client: Client) -> int:
    found = re.search(rb"HIGHESTMODSEQ (\d+)", client.run(b"h STATUS INBOX (HIGHESTMODSEQ)"))
    assert found is not None
    return int(found.group(1))


def inbox(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "mail" / ALICE.domain / ALICE.local


def base_of(tmp_path: pathlib.Path, uid: int) -> str:
    with contextlib.closing(sqlite3.connect(inbox(tmp_path) / _imapindex.INDEX_NAME)) as db:
        (base,) = db.execute("SELECT base FROM messages WHERE uid = ?", (uid,)).fetchone()
    return str(base)


def deliver(where: Where) -> None:
    deliver_to(where, ALICE, HELLO, hostname="mx.example.test")


def pushed(client: Client) -> bytes:
    """What an idling client reads (the session's news through its core)."""
    responses = client.session.updates(rev2=client.conn.imap4rev2)
    return b"".join(client.conn.send(r) for r in responses)


def test_select_condstore_fetch_store_search_status(where: Where) -> None:
    c = filled(where, 4)
    out = c.run(b"s1 SELECT INBOX (CONDSTORE)")
    assert b"* OK [UIDNEXT 5] Predicted next UID\r\n* OK [HIGHESTMODSEQ 5] Highest\r\n" in out
    assert c.run(b"f1 FETCH 1:* (FLAGS)") == (
        b"* 1 FETCH (FLAGS (\\Recent) MODSEQ (2))\r\n"
        b"* 2 FETCH (FLAGS (\\Recent) MODSEQ (3))\r\n"
        b"* 3 FETCH (FLAGS (\\Recent) MODSEQ (4))\r\n"
        b"* 4 FETCH (FLAGS (\\Recent) MODSEQ (5))\r\n"
        b"f1 OK FETCH completed\r\n"
    )
    assert c.run(b"f2 UID FETCH 1:* (UID) (CHANGEDSINCE 3)") == (
        b"* 3 FETCH (UID 3 MODSEQ (4))\r\n* 4 FETCH (UID 4 MODSEQ (5))\r\n"
        b"f2 OK UID FETCH completed\r\n"
    )
    # Above the HIGHESTMODSEQ this session has reported in full: it says so, as an
    # expunge below 6 could still be on its way (RFC 7162 §3.2).
    assert c.run(b"t1 STORE 2 +FLAGS (\\Seen)") == (
        b"* 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (6))\r\n"
        b"* OK [HIGHESTMODSEQ 5] Highest\r\nt1 OK STORE completed\r\n"
    )
    # RFC 7162 §3.1.3: 2 changed after 5, so it is left alone; .SILENT still tells the
    # new MODSEQ of what changed.
    assert c.run(b"t2 STORE 1,2 (UNCHANGEDSINCE 5) +FLAGS.SILENT (\\Flagged)") == (
        b"* 1 FETCH (MODSEQ (7))\r\n* OK [HIGHESTMODSEQ 5] Highest\r\n"
        b"t2 OK [MODIFIED 2] Conditional STORE failed for some messages\r\n"
    )
    assert c.run(b"t3 UID STORE 1:* (UNCHANGEDSINCE 0) +FLAGS.SILENT (\\Flagged)") == (
        b"t3 OK [MODIFIED 1:4] Conditional UID STORE failed for some messages\r\n"
    )
    # A STORE that changes nothing keeps the mod-sequence.
    assert c.run(b"t4 UID STORE 2 (UNCHANGEDSINCE 6) +FLAGS (\\Seen)") == (
        b"* 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (6) UID 2)\r\nt4 OK UID STORE completed\r\n"
    )
    assert c.run(b"q1 SEARCH MODSEQ 6") == b"* SEARCH 1 2 (MODSEQ 7)\r\nq1 OK SEARCH completed\r\n"
    assert c.run(b'q2 SEARCH MODSEQ "/flags/\\\\draft" all 8') == (
        b"* SEARCH\r\nq2 OK SEARCH completed\r\n"
    )
    assert c.run(b"q3 UID SEARCH RETURN (MIN COUNT) MODSEQ 2") == (
        b'* ESEARCH (TAG "q3") UID MIN 1 COUNT 4 MODSEQ 7\r\nq3 OK UID SEARCH completed\r\n'
    )
    assert c.run(b"q4 UID SEARCH RETURN (MAX) UNSEEN MODSEQ 2") == (
        b'* ESEARCH (TAG "q4") UID MAX 4 MODSEQ 5\r\nq4 OK UID SEARCH completed\r\n'
    )
    assert c.run(b"q5 STATUS INBOX (HIGHESTMODSEQ MESSAGES)") == (
        b'* STATUS "INBOX" (HIGHESTMODSEQ 7 MESSAGES 4)\r\nq5 OK STATUS completed\r\n'
    )
    assert b"(HIGHESTMODSEQ 7)" in c.run(b'l1 LIST "" "*" RETURN (STATUS (HIGHESTMODSEQ))')
    assert c.run(b"r1 UID SORT (ARRIVAL) UTF-8 MODSEQ 6") == (
        b"* SORT 1 2 (MODSEQ 7)\r\nr1 OK UID SORT completed\r\n"
    )
    assert c.run(b"r2 THREAD REFERENCES UTF-8 MODSEQ 7") == (
        b"* THREAD (1)\r\nr2 OK THREAD completed\r\n"
    )
    c.close()


def test_condstore_enabled_in_the_selected_state_says_where_modseqs_stand(
    where: Where,
) -> None:
    c = filled(where, 2)
    out = c.run(b"s1 SELECT INBOX")
    assert b"HIGHESTMODSEQ" not in out
    assert (
        c.run(b"f1 FETCH 1 (FLAGS)") == b"* 1 FETCH (FLAGS (\\Recent))\r\nf1 OK FETCH completed\r\n"
    )
    assert c.run(b"f2 FETCH 1 (MODSEQ)") == (
        b"* 1 FETCH (MODSEQ (2))\r\n* OK [HIGHESTMODSEQ 3] Highest\r\nf2 OK FETCH completed\r\n"
    )
    # From then on FLAGS come with MODSEQ, and SELECT answers HIGHESTMODSEQ.
    assert c.run(b"f3 FETCH 2 (FLAGS)") == (
        b"* 2 FETCH (FLAGS (\\Recent) MODSEQ (3))\r\nf3 OK FETCH completed\r\n"
    )
    assert b"[HIGHESTMODSEQ 3]" in c.run(b"s2 EXAMINE INBOX")
    c.close()


def test_other_sessions_changes_come_with_modseq_and_the_pair_stays_together(
    where: Where,
) -> None:
    one = filled(where, 2)
    other = Client(where, store=one.store)
    one.run(b"s1 SELECT INBOX")
    other.run(b"s2 SELECT INBOX (CONDSTORE)")
    one.run(b"a1 STORE 2 +FLAGS (\\Flagged)")
    # A FETCH of MODSEQ alone, before the view heard of the change, gives the flags
    # that go with that mod-sequence: never old flags beside the new number.
    assert other.run(b"b1 FETCH 2 (MODSEQ)") == (
        b"* 2 FETCH (FLAGS (\\Flagged) MODSEQ (4))\r\n"
        b"* OK [HIGHESTMODSEQ 3] Highest\r\nb1 OK FETCH completed\r\n"
    )
    one.run(b"a2 STORE 1 +FLAGS (\\Seen)")
    assert other.run(b"b2 NOOP") == (
        b"* 1 FETCH (FLAGS (\\Seen) UID 1 MODSEQ (5))\r\n"
        b"* 2 FETCH (FLAGS (\\Flagged) UID 2 MODSEQ (4))\r\n"
        b"b2 OK NOOP completed\r\n"
    )
    one.run(b"a3 STORE 1 -FLAGS (\\Seen)")
    assert pushed(other) == b"* 1 FETCH (FLAGS () UID 1 MODSEQ (6))\r\n"
    one.close()
    other.close()


def test_a_message_expunged_elsewhere_keeps_the_modseq_this_session_gave_it(
    where: Where,
) -> None:
    # The body fetch sets \Seen and reports its new MODSEQ; another session then
    # expunges the message, which this one may not report inside a FETCH. Its next FETCH
    # of the message must not give a MODSEQ below the one just reported (RFC 7162 §3.1.3:
    # a message's mod-sequence never goes down), as the PostgreSQL store once did (the
    # view's HIGHESTMODSEQ, from before its own change). Found by
    # test_imap_interleaved_stateful on PostgreSQL.
    one = filled(where, 1)
    other = Client(where, store=one.store)
    one.run(b"s1 SELECT INBOX (CONDSTORE)")
    out = one.run(b"f1 FETCH 1 (BODY[])")
    found = re.search(rb"MODSEQ \((\d+)\)", out)
    assert found is not None, out
    reported = int(found.group(1))
    other.run(b"s2 SELECT INBOX")
    other.run(b"a1 STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.run(b"a2 EXPUNGE")
    out = one.run(b"f2 FETCH 1 (FLAGS MODSEQ)")
    found = re.search(rb"\* 1 FETCH \(.*MODSEQ \((\d+)\)", out)
    assert found is not None, out
    assert int(found.group(1)) >= reported, out
    assert b"EXPUNGE" not in out
    one.close()
    other.close()


def test_qresync_reports_vanished_for_every_expunge(tmp_path: pathlib.Path) -> None:
    one = filled(tmp_path, 6, qresync=True)
    other = Client(tmp_path, store=one.store)
    other.run(b"e2 ENABLE QRESYNC")
    one.run(b"s1 SELECT INBOX")
    other.run(b"s2 SELECT INBOX")
    one.run(b"a1 STORE 2,3,5 +FLAGS.SILENT (\\Deleted)")
    # EXPUNGE: one VANISHED with the UIDs, never "n EXPUNGE".
    assert one.run(b"a2 EXPUNGE") == (
        b"* VANISHED 2:3,5\r\n* 3 RECENT\r\na2 OK EXPUNGE completed\r\n"
    )
    assert other.run(b"b1 NOOP") == b"* VANISHED 2:3,5\r\nb1 OK NOOP completed\r\n"
    one.run(b"a3 UID STORE 6 +FLAGS.SILENT (\\Deleted)")
    assert one.run(b"a4 UID EXPUNGE 6") == (
        b"* VANISHED 6\r\n* 2 RECENT\r\na4 OK EXPUNGE completed\r\n"
    )
    assert one.run(b"a5 CREATE Moved") == b"a5 OK CREATE completed\r\n"
    out = one.run(b"a6 UID MOVE 1 Moved")
    assert out.endswith(b"* VANISHED 1\r\n* 1 RECENT\r\na6 OK UID MOVE completed\r\n")
    # What an idler hears, and a POP3 DELE.
    assert pushed(other) == b"* VANISHED 1,6\r\n"
    with Maildrop.open(inbox(tmp_path)) as drop:
        drop.expunge([drop.messages[0]])
    assert pushed(other) == b"* VANISHED 4\r\n"
    one.close()
    other.close()


def test_qresync_select_reports_exactly_what_changed_while_away(tmp_path: pathlib.Path) -> None:
    client = filled(tmp_path, 6, qresync=True)
    client.run(b"s1 SELECT INBOX")
    client.run(b"a1 STORE 1:6 +FLAGS.SILENT (\\Seen)")
    modseq = highest(client)
    validity = uidvalidity(client)
    client.close()
    # While the client is away: another session flags 2 and expunges 3, POP3 deletes
    # 5, and two messages arrive.
    other = Client(tmp_path, store=make_store(tmp_path))
    other.run(b"s2 SELECT INBOX")
    other.run(b"b1 STORE 2 +FLAGS (\\Flagged)")
    other.run(b"b2 STORE 3 +FLAGS (\\Deleted)")
    other.run(b"b3 EXPUNGE")
    other.close()
    with Maildrop.open(inbox(tmp_path)) as drop:
        drop.expunge([m for m in drop.messages if m.base == base_of(tmp_path, 5)])
    deliver(tmp_path)
    deliver(tmp_path)
    back = Client(tmp_path, store=make_store(tmp_path))
    back.run(b"e1 ENABLE QRESYNC")
    out = back.run(b"s3 SELECT INBOX (QRESYNC (%d %d 1:6))" % (validity, modseq))
    lines = out.split(b"\r\n")
    assert b"* 6 EXISTS" in lines
    start = lines.index(next(line for line in lines if line.startswith(b"* OK [HIGHESTMODSEQ")))
    assert lines[start + 1 :] == [
        b"* VANISHED (EARLIER) 3,5",
        b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Seen) MODSEQ (%d))" % (modseq + 1),
        b"* 5 FETCH (UID 7 FLAGS (\\Recent) MODSEQ (%d))" % (modseq + 4),
        b"* 6 FETCH (UID 8 FLAGS (\\Recent) MODSEQ (%d))" % (modseq + 4),
        b"s3 OK [READ-WRITE] SELECT completed",
        b"",
    ]
    # The same, asked with UID FETCH after a plain SELECT.
    assert back.run(b"u1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % modseq) == (
        b"* VANISHED (EARLIER) 3,5\r\n"
        b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Seen) MODSEQ (%d))\r\n"
        b"* 5 FETCH (UID 7 FLAGS (\\Recent) MODSEQ (%d))\r\n"
        b"* 6 FETCH (UID 8 FLAGS (\\Recent) MODSEQ (%d))\r\n"
        b"u1 OK UID FETCH completed\r\n" % (modseq + 1, modseq + 4, modseq + 4)
    )
    # Another UIDVALIDITY: nothing but the plain SELECT answer.
    out = back.run(b"s4 SELECT INBOX (QRESYNC (%d %d))" % (validity + 1, modseq))
    assert b"VANISHED" not in out
    assert b"FETCH" not in out
    back.close()


def test_pruned_tombstones_report_every_uid_not_there(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_imapindex, "_TOMBSTONES_MAX", 2)
    monkeypatch.setattr(_imapindex, "_TOMBSTONES_KEEP", 1)
    client = filled(tmp_path, 8, qresync=True)
    client.run(b"s1 SELECT INBOX")
    modseq = highest(client)
    for uid in (2, 4, 6):
        client.run(b"d UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid)
        client.run(b"x UID EXPUNGE %d" % uid)
    # The tombstones of 2 and 4 are gone: every known UID not there is reported (RFC
    # 7162 §3.2.5.2), within the client's known UIDs and below UIDNEXT.
    assert client.run(b"u1 UID FETCH 1:* (UID) (CHANGEDSINCE %d VANISHED)" % modseq) == (
        b"* VANISHED (EARLIER) 2,4,6\r\nu1 OK UID FETCH completed\r\n"
    )
    out = client.run(b"s2 EXAMINE INBOX (QRESYNC (%d %d 3:20))" % (uidvalidity(client), modseq))
    assert b"* VANISHED (EARLIER) 4,6\r\n" in out
    client.close()


BAD = [
    (b"SELECT INBOX (QRESYNC (1 2))", b"QRESYNC must be ENABLEd first"),
    (b"SELECT INBOX (FOO)", b"unknown SELECT parameter"),
    (b"UID FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)", b"VANISHED needs QRESYNC"),
    (b"FETCH 1 (FLAGS) (FOO 1)", b"unknown FETCH modifier"),
    (b"STORE 1 (FOO 1) +FLAGS (\\Seen)", b"unknown STORE modifier"),
]


@pytest.mark.parametrize(("command", "why"), BAD)
def test_refusals(where: Where, command: bytes, why: bytes) -> None:
    c = filled(where, 1)
    c.run(b"s1 SELECT INBOX")
    out = c.run(b"z " + command)
    assert out.startswith(b"z BAD " + why), out
    assert not c.session.condstore
    c.close()


def test_enable_names_each_once_and_qresync_implies_condstore(tmp_path: pathlib.Path) -> None:
    c = filled(tmp_path, 0)
    assert c.run(b"e1 ENABLE CONDSTORE QRESYNC") == (
        b"* ENABLED CONDSTORE QRESYNC\r\ne1 OK ENABLE completed\r\n"
    )
    assert c.run(b"e2 ENABLE QRESYNC") == b"* ENABLED\r\ne2 OK ENABLE completed\r\n"
    assert c.session.condstore
    assert c.session.qresync
    c.close()


def test_modseqs_survive_a_restart_and_never_go_back(where: Where) -> None:
    c = filled(where, 3)
    c.run(b"s1 SELECT INBOX (CONDSTORE)")
    c.run(b"a1 STORE 1 +FLAGS (\\Seen)")
    before = highest(c)
    c.close()
    again = Client(where, store=make_store(where))
    assert highest(again) == before
    again.run(b"s2 SELECT INBOX (CONDSTORE)")
    assert again.run(b"f1 FETCH 1 (MODSEQ)") == (
        b"* 1 FETCH (MODSEQ (%d))\r\nf1 OK FETCH completed\r\n" % before
    )
    again.run(b"a2 STORE 2 +FLAGS (\\Seen)")
    assert highest(again) == before + 1
    again.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.integers(1, 12), max_size=8),
    st.lists(st.integers(1, 12), max_size=3),
    st.lists(st.tuples(st.integers(1, 14), st.integers(1, 14)), min_size=1, max_size=3),
    st.booleans(),
    st.integers(1, 20),
)
def test_changedsince_is_the_full_answer_filtered(
    tmp_path_factory: pytest.TempPathFactory,
    flagged: list[int],
    expunged: list[int],
    ranges: list[tuple[int, int]],
    uid: bool,
    since: int,
) -> None:
    c = filled(tmp_path_factory.mktemp("changed"), 12)
    c.run(b"s1 SELECT INBOX (CONDSTORE)")
    for n in flagged:
        c.run(b"f UID STORE %d +FLAGS.SILENT ($X%d)" % (n, n))
    for n in expunged:
        c.run(b"d UID STORE %d +FLAGS.SILENT (\\Deleted)" % n)
        c.run(b"x UID EXPUNGE %d" % n)
    c.run(b"n NOOP")
    count = int(re.findall(rb"(\d+) EXISTS", c.run(b"s2 SELECT INBOX"))[-1])
    words = ",".join(f"{a}:{b}" for a, b in ranges).encode()
    prefix = b"UID " if uid else b""
    full = c.run(b"a " + prefix + b"FETCH " + words + b" (FLAGS MODSEQ)")
    changed = c.run(b"b " + prefix + b"FETCH " + words + b" (FLAGS) (CHANGEDSINCE %d)" % since)
    if not uid and max(max(r) for r in ranges) > count:
        assert full.startswith(b"a BAD")
        assert changed.startswith(b"b BAD")
        return
    kept = [
        line
        for line in full.split(b"\r\n")[:-2]
        if int(re.search(rb"MODSEQ \((\d+)\)", line).group(1)) > since  # type: ignore[union-attr]
    ]
    assert changed.split(b"\r\n")[:-2] == kept
    c.close()
