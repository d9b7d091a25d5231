"""The SMTP intake's routing of local recipients whose mailbox runs Sieve scripts: their
copy is queued (one more queue copy, committed before the 250 with the others), each
recipient marked with its mailbox, instead of stored in INBOX; everyone else keeps the
direct path; quarantined mail goes to Junk without the scripts. Driven by test_smtpd's
synchronous adapter over a real Maildir and queue."""

from __future__ import annotations

import pathlib

import attrs
import pytest

from sansmail.config._model import SieveConfig
from sansmail.mail.address import MailboxId, parse_address
from sansmail.mail.envelope import QueuedMessage
from sansmail.sessions.smtpd import Verdict, store_all
from sansmail.storage.sieve import SieveStore
from tests.sansmail.sessions.test_smtpd import MESSAGE, STRANGER, TRUSTED, Server
from tests.sansmail.sessions.test_smtpd_held import Holder

ALICE = MailboxId(domain="example.test", local="alice")
CAROL = MailboxId(domain="example.test", local="carol")


def _server(tmp_path: pathlib.Path, *scripted: MailboxId, **kwargs: object) -> Server:
    server = Server(tmp_path, **kwargs)  # type: ignore[arg-type]
    server.shared.users.add(parse_address("carol@example.test"), "secret")
    asked: list[MailboxId] = []
    server.asked = asked  # type: ignore[attr-defined]

    def wants(mailbox: MailboxId) -> bool:
        asked.append(mailbox)
        return mailbox in scripted

    server.shared.sieve_wants = wants
    return server


def _queued(server: Server) -> list[tuple[QueuedMessage, bytes]]:
    return [server.queue.read(qid) for qid in server.queued()]


def test_a_user_with_a_script_gets_the_message_through_the_queue(tmp_path: pathlib.Path) -> None:
    server = _server(tmp_path, ALICE)
    client = server.session()
    answer = client.transaction("a@example.org", "alice@example.test")
    assert answer.startswith(b"250 2.0.0 Ok: queued as ")
    assert server.messages("alice") == []
    [(message, content)] = _queued(server)
    # The intake's queue id, announced to the runner as a relayed copy's is.
    assert answer.split()[-1].decode() == message.queue_id
    assert client.queued == [message.queue_id]
    assert message.sender == "a@example.org"
    [recipient] = message.recipients
    assert recipient.address == "alice@example.test"
    assert recipient.mailbox == ALICE
    assert recipient.orcpt is None
    # No Return-Path yet (the final delivery adds it); Received names the recipient as
    # the direct path's does.
    assert content.startswith(b"Received: from client.example")
    assert b"for <alice@example.test>" in content.split(b"\r\n\r\n")[0]
    assert content.endswith(b"\r\n\r\nbody line\r\n.dotted\r\n")
    lines = server.lines()
    assert any(f"{message.queue_id}: from=<a@example.org>" in x and "nrcpt=1" in x for x in lines)
    assert not any("relay=local" in line for line in lines)


def test_users_without_a_script_keep_the_direct_path(tmp_path: pathlib.Path) -> None:
    server = _server(tmp_path, ALICE)
    client = server.session()
    answer = client.transaction("a@example.org", "alice@example.test", "carol@example.test")
    assert answer.startswith(b"250 ")
    [stored] = server.messages("carol")
    assert stored.startswith(b"Return-Path: <a@example.org>\nReceived: ")
    assert b"for <" not in stored.split(b"\n\n")[0]  # two local recipients: none named
    assert server.messages("alice") == []
    [(message, _content)] = _queued(server)
    assert [r.mailbox for r in message.recipients] == [ALICE]
    assert server.asked == [ALICE, CAROL]  # type: ignore[attr-defined]
    assert any("to=<carol@example.test>" in x and "relay=local" in x for x in server.lines())


def test_nobody_with_a_script_queues_nothing(tmp_path: pathlib.Path) -> None:
    server = _server(tmp_path)
    client = server.session()
    assert client.transaction("a@example.org", "alice@example.test").startswith(b"250 ")
    assert len(server.messages("alice")) == 1
    assert server.queued() == []
    assert client.queued == []


def test_an_alias_target_is_queued_under_its_own_address_with_the_original(
    tmp_path: pathlib.Path,
) -> None:
    # info: alice, outside@far.test: the forwarded copy and alice's copy, two queue files.
    server = _server(tmp_path, ALICE)
    client = server.session()
    assert client.transaction("a@example.org", "Info@example.test").startswith(b"250 ")
    queued = {m.recipients[0].address: m for m, _c in _queued(server)}
    assert set(queued) == {"outside@far.test", "alice@example.test"}
    [mine] = queued["alice@example.test"].recipients
    assert mine.mailbox == ALICE
    assert mine.orcpt == "rfc822;Info@example.test"
    # The forwarded copy keeps its SRS sender; alice's keeps the client's.
    assert queued["outside@far.test"].sender.startswith("SRS0=")
    assert queued["alice@example.test"].sender == "a@example.org"
    assert sorted(client.queued) == sorted(m.queue_id for m in queued.values())


def test_a_detail_address_is_the_envelope_to_and_one_copy_a_mailbox(
    tmp_path: pathlib.Path,
) -> None:
    server = _server(tmp_path, ALICE)
    client = server.session()
    client.say("EHLO client.example")
    client.say("MAIL FROM:<a@example.org>")
    assert client.say("RCPT TO:<Alice+Lists@example.test> NOTIFY=FAILURE").startswith(b"250")
    assert client.say("RCPT TO:<alice@example.test>").startswith(b"250")
    assert client.say("RCPT TO:<info@example.test>").startswith(b"250")
    client.say("DATA")
    assert client.say(MESSAGE + b".\r\n").startswith(b"250 ")
    mine = [m for m, _c in _queued(server) if m.recipients[0].mailbox is not None]
    [message] = mine
    [recipient] = message.recipients
    assert recipient.address == "Alice+Lists@example.test"
    assert recipient.notify == ("FAILURE",)
    assert recipient.orcpt is None


def test_quarantined_mail_goes_to_junk_without_the_scripts(tmp_path: pathlib.Path) -> None:
    check = Holder(verdict=Verdict(source="dmarc", quarantine="p=quarantine"))
    server = _server(tmp_path, ALICE, checks=[check])
    client = server.session(STRANGER)
    assert client.transaction("a@example.org", "alice@example.test").startswith(b"250 ")
    assert server.queued() == []
    junk = tmp_path / "mail" / "example.test" / "alice" / ".Junk" / "new"
    [stored] = [p.read_bytes() for p in junk.iterdir()]
    assert stored.startswith(b"Return-Path: <a@example.org>\n")


def test_a_held_message_with_a_script_is_queued(tmp_path: pathlib.Path) -> None:
    # A milter held the whole message and let it through: the copies start at its end.
    check = Holder(verdict=None)
    server = _server(tmp_path, ALICE, checks=[check])
    client = server.session(TRUSTED)
    assert client.transaction("a@example.org", "alice@example.test").startswith(b"250 ")
    [(message, content)] = _queued(server)
    assert message.recipients[0].mailbox == ALICE
    assert content.endswith(b"body line\r\n.dotted\r\n")
    assert server.messages("alice") == []


def test_a_queue_copy_that_fails_takes_nothing_and_answers_451(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _server(tmp_path, ALICE)
    client = server.session()
    client.holding = True
    client.transaction("a@example.org", "alice@example.test", "carol@example.test")
    [job] = client.held
    writer = job.transaction.writers[0]

    def broken(*_a: object, **_k: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(writer, "commit", broken)
    store_all([job])
    reply = client.session.stored(job).reply
    assert reply.code == 451
    # Neither copy is left: carol's direct one was never committed.
    assert server.queued() == []
    assert server.messages("carol") == []


def test_the_real_question_asks_the_script_store_and_the_site_script(
    tmp_path: pathlib.Path,
) -> None:
    server = Server(tmp_path)
    scripts = SieveStore(tmp_path)
    scripts.put(ALICE, "main", b"keep;\r\n")
    client = server.session()
    assert client.transaction("a@example.org", "alice@example.test").startswith(b"250 ")
    assert len(server.messages("alice")) == 1  # a script, but not active
    scripts.activate(ALICE, "main")
    client = server.session()
    assert client.transaction("a@example.org", "alice@example.test").startswith(b"250 ")
    assert len(server.messages("alice")) == 1
    assert len(server.queued()) == 1


def test_a_site_script_routes_every_local_recipient(tmp_path: pathlib.Path) -> None:
    (tmp_path / "before.sieve").write_bytes(b"keep;\r\n")
    server = Server(tmp_path)
    server.shared.config = attrs.evolve(
        server.config, sieve=SieveConfig(before=tmp_path / "before.sieve")
    )
    client = server.session()
    assert client.transaction("a@example.org", "alice@example.test").startswith(b"250 ")
    assert server.messages("alice") == []
    [(message, _content)] = _queued(server)
    assert message.recipients[0].mailbox == ALICE
