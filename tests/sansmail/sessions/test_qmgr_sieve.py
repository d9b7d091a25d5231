"""sansmail.sessions.qmgr with a `LocalDelivery`: which local copies go through the
mailboxes' Sieve scripts, what they are handed (the content with its Return-Path, the
envelope), and what comes back (verdicts, log lines, the messages they queued). The
delivery here is a recording stand-in; tests/sansmail/sessions/test_lda*.py test the
real one, tests/sansmail_trio/test_sieve_e2e.py the whole path."""

from __future__ import annotations

import pathlib

import attrs
import pytest

from sansmail.mail import delivery
from sansmail.mail.address import MailboxId, parse_address
from sansmail.mail.attempt import Outcome
from sansmail.mail.delivery import LogLine
from sansmail.mail.envelope import QueuedRecipient
from sansmail.sessions.qmgr import _original_recipient
from sansmail.storage.pg._queue import PgQueueStore
from tests.sansmail.sessions.test_qmgr import CONTENT, NOW, Server, texts

ALICE = MailboxId(domain="example.test", local="alice")
CAROL = MailboxId(domain="example.test", local="carol")
REJECTED = Outcome(
    status="bounced",
    reason="550 5.7.1 rejected by the recipient's Sieve filter: go away",
    dsn="5.7.1",
)


@attrs.frozen
class Result:
    outcome: Outcome
    log: tuple[LogLine, ...] = ()
    queued: tuple[str, ...] = ()


@attrs.define
class Recording:
    """A LocalDelivery that records its calls; `scripts` are the mailboxes that want
    Sieve, `results` what each mailbox's delivery comes to."""

    scripts: set[MailboxId] = attrs.Factory(set)
    results: dict[MailboxId, Result] = attrs.Factory(dict)
    calls: list[dict[str, object]] = attrs.Factory(list)
    fail: OSError | None = None

    def wants(self, mailbox: MailboxId) -> bool:
        return mailbox in self.scripts

    def deliver(self, mailbox: MailboxId, content: bytes, **envelope: object) -> Result:
        self.calls.append({"mailbox": mailbox, "content": content, **envelope})
        if self.fail is not None:
            raise self.fail
        return self.results.get(mailbox, Result(delivery.STORED))


@pytest.fixture(params=["maildir", "postgresql"])
def server(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> Server:
    queue = None
    if request.param == "postgresql":
        queue = PgQueueStore(request.getfixturevalue("pg_db"), node="test:1")
    server = Server(tmp_path, queue)
    server.manager.users.add(parse_address("carol@example.test"), "secret")
    return server


def _with(server: Server, lda: Recording) -> Recording:
    server.manager.local_delivery = lda  # type: ignore[assignment]
    return lda


def _marked(address: str, mailbox: MailboxId, orcpt: str | None = None) -> QueuedRecipient:
    return QueuedRecipient(address=address, orcpt=orcpt, mailbox=mailbox)


def test_a_marked_recipient_goes_through_its_scripts_as_the_intake_expanded_it(
    server: Server,
) -> None:
    lda = _with(server, Recording(scripts={ALICE}))
    qid = server.enqueue(
        _marked("alice@example.test", ALICE, orcpt="rfc822;info+2Bx@example.test"),
        sender="bob@far.test",
    )
    attempt = server.open(qid)
    (destination,) = attempt.destinations
    assert destination.local
    result = attempt.deliver_local(destination, now=NOW)
    assert result.outcomes == {"alice@example.test": delivery.STORED}
    (call,) = lda.calls
    assert call == {
        "mailbox": ALICE,
        "content": b"Return-Path: <bob@far.test>\r\n" + CONTENT,
        "queue_id": qid,
        "sender": "bob@far.test",
        "recipient": "alice@example.test",
        "original_recipient": "info+x@example.test",
        "now": NOW,
    }
    # The delivery stored it (the stand-in did not): nothing went to INBOX here.
    assert server.mailbox("alice") == []


def test_a_marked_recipient_is_not_expanded_again(server: Server) -> None:
    # "info" is an alias of alice and an outside address; the intake expanded it to
    # carol's mailbox (say the aliases changed since): carol gets it, once, no one else.
    lda = _with(server, Recording())
    qid = server.enqueue(_marked("info@example.test", CAROL))
    attempt = server.open(qid)
    (destination,) = attempt.destinations
    attempt.deliver_local(destination, now=NOW)
    assert [c["mailbox"] for c in lda.calls] == [CAROL]
    assert set(server.queued()) == {qid}


def test_without_a_local_delivery_a_marked_recipient_is_stored_in_its_mailbox(
    server: Server,
) -> None:
    qid = server.enqueue(_marked("info@example.test", CAROL))
    attempt = server.open(qid)
    (destination,) = attempt.destinations
    result = attempt.deliver_local(destination, now=NOW)
    assert result.outcomes == {"info@example.test": delivery.STORED}
    assert server.mailbox("alice") == []
    (stored,) = server.mailbox("carol")
    assert stored.startswith(b"Return-Path: <bob@far.test>\n")


def test_a_reject_is_the_recipients_permanent_failure_and_the_sender_gets_a_dsn(
    server: Server,
) -> None:
    lda = _with(server, Recording(results={ALICE: Result(REJECTED)}))
    qid = server.enqueue(_marked("alice@example.test", ALICE), sender="bob@far.test")
    attempt = server.open(qid)
    (destination,) = attempt.destinations
    result = attempt.deliver_local(destination, now=NOW)
    attempt.record(destination, result, delay=0.0, now=NOW)
    assert (
        "status=bounced (550 5.7.1 rejected by the recipient's Sieve filter: go away)"
        in (texts(attempt.take_log())[0])
    )
    finished = attempt.finish(now=NOW, jitter=0.0)
    assert finished.next_due is None  # the message is done with
    notices = [server.queue.read(qid) for qid in finished.queued]
    [(bounce, content)] = [n for n in notices if n[0].recipients[0].address == "bob@far.test"]
    assert bounce.sender == ""
    assert b"rejected by the recipient's Sieve filter: go away" in content
    assert len(lda.calls) == 1


def test_the_scripts_log_lines_come_before_the_verdict_and_their_messages_are_due(
    server: Server,
) -> None:
    log = (LogLine("Q1: to=<alice@example.test>: sieve: redirect to <x@far.test>"),)
    _with(server, Recording(results={ALICE: Result(delivery.STORED, log, ("REDIR1",))}))
    qid = server.enqueue(_marked("alice@example.test", ALICE))
    attempt = server.open(qid)
    (destination,) = attempt.destinations
    result = attempt.deliver_local(destination, now=NOW)
    assert attempt.take_queued() == []  # not before the destination is recorded
    attempt.record(destination, result, delay=0.0, now=NOW)
    lines = texts(attempt.take_log())
    assert lines[0] == log[0].text
    assert "to=<alice@example.test>, relay=local" in lines[1]
    assert attempt.take_queued() == ["REDIR1"]
    assert attempt.take_queued() == []


def test_a_delivery_that_cannot_write_defers(server: Server) -> None:
    _with(server, Recording(fail=OSError(28, "No space left on device")))
    qid = server.enqueue(_marked("alice@example.test", ALICE))
    attempt = server.open(qid)
    (destination,) = attempt.destinations
    outcome = attempt.deliver_local(destination, now=NOW).outcomes["alice@example.test"]
    assert outcome == delivery.store_failed("[Errno 28] No space left on device")


def test_a_notice_to_a_user_with_a_script_goes_through_it_the_others_to_inbox(
    server: Server,
) -> None:
    # A bounce to our senders: expanded here; carol has a script, alice none. "info"
    # leads to alice (and outside, which a notice does not follow).
    lda = _with(server, Recording(scripts={CAROL}))
    qid = server.enqueue("carol@example.test", "info@example.test", sender="")
    attempt = server.open(qid)
    (destination,) = attempt.destinations
    result = attempt.deliver_local(destination, now=NOW)
    assert result.outcomes == {
        "carol@example.test": delivery.STORED,
        "info@example.test": delivery.STORED,
    }
    (call,) = lda.calls
    assert call["mailbox"] == CAROL
    assert call["recipient"] == "carol@example.test"
    assert call["original_recipient"] is None
    assert call["content"] == b"Return-Path: <>\r\n" + CONTENT
    (stored,) = server.mailbox("alice")
    assert stored.startswith(b"Return-Path: <>\n")
    assert server.mailbox("carol") == []


def test_an_alias_to_mailboxes_with_and_without_scripts_gets_the_worst_verdict(
    server: Server,
) -> None:
    (server.config.data_dir / "aliases").write_text("team: alice, carol\n")
    server.manager.aliases.reload_if_changed()
    failed = delivery.store_failed("disk")
    _with(server, Recording(scripts={CAROL}, results={CAROL: Result(failed)}))
    qid = server.enqueue("team@example.test", sender="")
    attempt = server.open(qid)
    (destination,) = attempt.destinations
    assert attempt.deliver_local(destination, now=NOW).outcomes == {"team@example.test": failed}
    assert len(server.mailbox("alice")) == 1


@pytest.mark.parametrize(
    ("orcpt", "address"),
    [
        (None, None),
        ("rfc822;info@example.test", "info@example.test"),
        ("RFC822; a+2Bb+3Dc@example.test", "a+b=c@example.test"),
        ("utf-8;info@example.test", None),
        ("rfc822;", None),
    ],
)
def test_original_recipient_from_orcpt(orcpt: str | None, address: str | None) -> None:
    assert _original_recipient(orcpt) == address
