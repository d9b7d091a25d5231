"""A full or failing disk under an SMTP session (faults injected in-process, see
`io_faults`): the message is answered 452 4.3.1 (full) or 451 4.3.0 (I/O error), never
250, whether the write fails while the content streams in or at the commit, in the
Maildir or the queue; nothing of it is left anywhere; the session goes on, and the next
message, once the disk has room again, gets its 250."""

from __future__ import annotations

import errno
import os
import pathlib

import pytest
from io_faults import Faults
from test_smtpd import MESSAGE, TRUSTED, Server, codes

from sansmail.sessions.smtpd import SPILL_THRESHOLD

BIG = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (2 * SPILL_THRESHOLD // 1000)


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    return Faults(monkeypatch)


def _files(root: pathlib.Path) -> list[str]:
    """Every message file left under the Maildirs and the queue (tmp/ included)."""
    found = []
    for sub in ("mail", "queue"):
        for dirpath, _dirs, names in os.walk(root / sub):
            found += [os.path.join(dirpath, n) for n in names if n not in _BOOKKEEPING]
    return sorted(found)


# Files that are not messages: the quota cache, the queue runner's lock.
_BOOKKEEPING = {"maildirsize", "lock", "sansmail.quota"}


def _expect(answer: bytes, code: int) -> None:
    wanted = {errno.ENOSPC: b"452 4.3.1", errno.EDQUOT: b"452 4.3.1"}.get(code, b"451 4.3.0")
    assert answer.startswith(wanted), answer


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS])
@pytest.mark.parametrize("where", ["mail", "queue"])
@pytest.mark.parametrize("content", [MESSAGE, BIG], ids=["small", "spilled"])
def test_a_write_that_fails_is_a_temporary_error_and_leaves_nothing(
    tmp_path: pathlib.Path, faults: Faults, code: int, where: str, content: bytes
) -> None:
    server = Server(tmp_path)
    client = server.session(TRUSTED)
    # alice's copy goes to her Maildir, far.test's to the queue: either may fail.
    faults.fail(code, where=lambda path: f"/{where}/" in path)
    answer = client.transaction(
        "a@example.org", "alice@example.test", "x@far.test", content=content
    )
    assert faults.hits
    _expect(answer, code)
    assert _files(tmp_path) == []
    assert server.queued() == []
    assert any("status=deferred (cannot store" in line for line in server.lines())
    # The session goes on, and recovers once the disk does.
    faults.heal()
    assert codes(client.say("NOOP")) == [b"250"]
    answer = client.transaction(
        "a@example.org", "alice@example.test", "x@far.test", content=content
    )
    assert codes(answer)[-1] == b"250"
    assert len(server.messages("alice")) == 1
    assert len(server.queued()) == 1


def test_a_failed_spill_drops_the_rest_of_the_content(
    tmp_path: pathlib.Path, faults: Faults
) -> None:
    server = Server(tmp_path)
    client = server.session(TRUSTED)
    client.say("EHLO client.example")
    client.say("MAIL FROM:<a@example.org>")
    client.say("RCPT TO:<alice@example.test>")
    client.say("DATA")
    faults.fail(errno.ENOSPC)
    assert client.say(BIG) == b""  # the content goes on streaming in, unanswered
    hits = faults.hits
    assert hits == 1  # the first spill failed; nothing was written after it
    assert _files(tmp_path) == []
    assert client.say(BIG + b".\r\n").startswith(b"452 4.3.1")
    assert faults.hits == hits
    assert any("cannot write the message" in line for line in server.lines())


def test_bdat_gets_the_temporary_error_at_its_last_chunk(
    tmp_path: pathlib.Path, faults: Faults
) -> None:
    server = Server(tmp_path)
    client = server.session(TRUSTED)
    client.say("EHLO client.example")
    client.say("MAIL FROM:<a@example.org>")
    client.say("RCPT TO:<alice@example.test>")
    faults.fail(errno.ENOSPC)
    assert codes(client.say(f"BDAT {len(BIG)}".encode() + b"\r\n" + BIG)) == [b"250"]
    answer = client.say(b"BDAT 5 LAST\r\nend\r\n")
    assert answer.startswith(b"452 4.3.1")
    assert _files(tmp_path) == []


def test_a_failed_directory_sync_gives_no_250(tmp_path: pathlib.Path, faults: Faults) -> None:
    # fsync of new/ is the last step before the 250: its name is taken back.
    server = Server(tmp_path)
    client = server.session(TRUSTED)
    faults.fail(errno.EIO, where=lambda path: path.endswith("/new"))
    answer = client.transaction("a@example.org", "alice@example.test")
    assert faults.hits
    _expect(answer, errno.EIO)
    assert _files(tmp_path) == []
