"""Two sessions on one mailbox, where one acts on a view the other has just made stale:
the cases the multi-session tests against a server (tests/sansmail_trio/
test_imap_interleaved*.py) found, each pinned down here through the session alone."""

from __future__ import annotations

from imap_backends import Where
from test_session_sync import two


def test_store_silent_tells_of_flags_another_session_set(where: Where) -> None:
    one, other = two(where, 2)
    one.run(b"a1 STORE 1 +FLAGS.SILENT (\\Flagged)")
    # `other` has not heard of \Flagged: after its .SILENT it would believe (\Seen) alone,
    # so the server says what is stored; a NOOP afterwards has nothing left to say.
    assert other.run(b"b1 STORE 1:2 +FLAGS.SILENT (\\Seen)") == (
        b"* 1 FETCH (FLAGS (\\Flagged \\Seen))\r\nb1 OK STORE completed\r\n"
    )
    assert other.run(b"b2 NOOP") == b"b2 OK NOOP completed\r\n"
    # Where the belief is right, .SILENT stays silent.
    assert one.run(b"a2 NOOP") == (
        b"* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent) UID 1)\r\n"
        b"* 2 FETCH (FLAGS (\\Seen \\Recent) UID 2)\r\n"
        b"a2 OK NOOP completed\r\n"
    )
    assert one.run(b"a3 UID STORE 1:2 -FLAGS.SILENT (\\seen)") == b"a3 OK UID STORE completed\r\n"
    one.close()
    other.close()


def test_a_body_fetch_sets_seen_that_another_session_took_away(where: Where) -> None:
    one, other = two(where, 1)
    one.run(b"a1 STORE 1 +FLAGS.SILENT (\\Seen)")
    assert other.run(b"b1 NOOP").startswith(b"* 1 FETCH (FLAGS (\\Seen")
    one.run(b"a2 STORE 1 -FLAGS.SILENT (\\Seen)")
    # `other` still believes \Seen; its user reads the message, which must end up read.
    answer = other.run(b"b2 FETCH 1 (BODY[])")
    assert b"FLAGS (\\Seen" in answer, answer
    assert one.run(b"a3 NOOP").startswith(b"* 1 FETCH (FLAGS (\\Seen")
    # Where the store has \Seen already, a body fetch writes nothing and adds no FLAGS.
    assert b"FLAGS" not in other.run(b"b3 FETCH 1 (BODY[])")
    one.close()
    other.close()
