"""A full or failing disk under a POP3 session (faults injected in-process, see
`io_faults`): a maildrop whose lock file cannot be made, and a QUIT whose removals
cannot be made, are ``-ERR [SYS/TEMP]`` (RFC 3206), never a dropped connection; no
message is lost or half-removed; RETR of existing mail is served while the disk is full
(marking it seen is only a rename, and one that fails is logged, not answered)."""

from __future__ import annotations

import errno
import pathlib

import pytest
from argon2 import PasswordHasher
from io_faults import Faults
from test_pop3d import MESSAGES, Client, Server, wire

from sansmail.storage import users

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture(autouse=True)
def _cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    # `Server` makes alice with argon2's default cost, most of a second per login.
    monkeypatch.setattr(users, "PasswordHasher", lambda: FAST)


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    return Faults(monkeypatch)


def test_a_lock_file_that_cannot_be_made_is_a_temporary_error(
    tmp_path: pathlib.Path, faults: Faults
) -> None:
    server = Server(tmp_path)  # alice has no Maildir yet: the lock file is new
    faults.fail(errno.ENOSPC)
    client = Client(server)
    assert client.login() == b"-ERR [SYS/TEMP] Cannot open the maildrop, try again later"
    assert faults.hits
    assert not client.session.ended
    faults.heal()
    assert client.login().startswith(b"+OK Logged in, 0 messages")


@pytest.mark.parametrize("code", [errno.EIO, errno.EROFS])
@pytest.mark.parametrize("call", ["unlink", "fsync"])
def test_a_quit_whose_removals_fail_is_a_temporary_error(
    tmp_path: pathlib.Path, faults: Faults, code: int, call: str
) -> None:
    server = Server(tmp_path)
    server.deliver(*MESSAGES)
    client = Client(server)
    assert client.login().startswith(b"+OK")
    assert client.line(b"DELE 1") == b"+OK Message 1 deleted"
    faults.fail(code, calls=frozenset({call}))
    answer = client.line(b"QUIT")
    assert answer == b"-ERR [SYS/TEMP] Some deleted messages not removed"
    assert faults.hits
    assert client.session.ended
    client.close()
    faults.heal()
    # Whatever did go is gone whole; the rest is there for the next session to delete.
    left = sorted(server.files()["new"] + server.files()["cur"])
    assert len(left) in (2, 3)
    again = Client(server)
    assert again.login().startswith(f"+OK Logged in, {len(left)} messages".encode())
    if len(left) == 3:
        assert again.line(b"DELE 1") == b"+OK Message 1 deleted"
    assert again.line(b"QUIT").startswith(b"+OK Logging out")
    assert len(server.files()["new"] + server.files()["cur"]) == 2


def test_retr_is_served_while_the_disk_is_full(tmp_path: pathlib.Path, faults: Faults) -> None:
    server = Server(tmp_path)
    server.deliver(*MESSAGES)
    client = Client(server)
    assert client.login().startswith(b"+OK Logged in, 3 messages")
    faults.fail(errno.ENOSPC)
    answer = client.send(b"RETR 2\r\n")
    assert answer.startswith(b"+OK")
    assert wire(MESSAGES[1]) in answer
    # Marking it seen (a rename) fails: logged, and QUIT still answers +OK.
    assert client.line(b"QUIT").startswith(b"+OK Logging out, 0 messages deleted")
    assert any("could not mark" in line for line in client.log_lines())
    client.close()
    faults.heal()
    assert len(server.files()["new"] + server.files()["cur"]) == 3
