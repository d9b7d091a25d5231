"""The queue manager on a full or failing disk (faults injected in-process, see
`io_faults`): an envelope update, a bounce or a removal that cannot be written makes
the attempt fail (the runner logs it and tries the message again after the minimal
backoff), and nothing is lost or half-written: the message stays queued whole, with
its last envelope, no notification file is left half-made, and once the disk has room
the next attempt records, bounces and removes as it should."""

from __future__ import annotations

import errno
import pathlib

import pytest
from io_faults import Faults
from test_qmgr import LATER, NOW, REFUSED, SENT, Server, remote

from sansmail.storage.queue import QueueStore


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    return Faults(monkeypatch)


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Server:
    return Server(tmp_path)


def _queue_files(queue: QueueStore) -> list[str]:
    return sorted(p.name for p in queue.root.iterdir() if p.name != "lock")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_an_update_that_cannot_be_written_keeps_the_last_envelope(
    server: Server, faults: Faults, code: int
) -> None:
    qid = server.enqueue("x@far.test")
    attempt = server.open(qid)
    remote(attempt, {"x@far.test": LATER})
    faults.fail(code, where=lambda path: "/queue/" in path)
    with pytest.raises(OSError) as caught:
        attempt.finish(now=NOW, jitter=0.0)
    assert caught.value.errno == code
    faults.heal()
    message, content = server.queue.read(qid)  # whole: content checksum and envelope
    assert content.endswith(b"hello\r\n")
    assert message.recipients[0].attempts == 0  # as before the attempt
    attempt = server.open(qid)
    remote(attempt, {"x@far.test": LATER})
    attempt.finish(now=NOW + 300, jitter=0.0)
    assert server.queued()[qid].recipients[0].attempts == 1


def test_a_bounce_that_cannot_be_written_keeps_the_message(server: Server, faults: Faults) -> None:
    qid = server.enqueue("x@far.test", "y@far.test")
    attempt = server.open(qid)
    remote(attempt, {"x@far.test": SENT, "y@far.test": REFUSED})
    before = _queue_files(server.queue)
    faults.fail(errno.ENOSPC, where=lambda path: "/queue/" in path)
    with pytest.raises(OSError):
        attempt.finish(now=NOW, jitter=0.0)
    assert faults.hits
    faults.heal()
    # No half-made notification, and the message is still there to bounce.
    assert _queue_files(server.queue) == before
    assert server.queue.read(qid)[0].recipients[1].state == "pending"
    attempt = server.open(qid)
    remote(attempt, {"x@far.test": SENT, "y@far.test": REFUSED})
    finished = attempt.finish(now=NOW + 300, jitter=0.0)
    assert len(finished.queued) == 2  # the bounce and the postmaster's copy
    assert qid not in server.queued()
    for notice in finished.queued:
        server.queue.read(notice)  # whole


def test_finish_all_hands_back_each_failure_and_finishes_the_rest(
    server: Server, faults: Faults
) -> None:
    good = server.enqueue("x@far.test")
    bad = server.enqueue("y@far.test")
    attempts = [server.open(good), server.open(bad)]
    remote(attempts[0], {"x@far.test": SENT})
    remote(attempts[1], {"y@far.test": LATER})
    # The good one leaves the queue (an unlink needs no room); the bad one's update
    # needs room in its own file.
    faults.fail(errno.ENOSPC, where=lambda path: path.endswith(f"{bad}.q"))
    outcomes = server.manager.finish_all(attempts, now=NOW, jitters=[0.0, 0.0])
    faults.heal()
    assert not isinstance(outcomes[0], Exception)
    assert isinstance(outcomes[1], OSError)
    assert set(server.queued()) == {bad}
    assert server.queue.read(bad)[0].recipients[0].attempts == 0
