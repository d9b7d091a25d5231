"""MilterCheck carried by the Inquirer to a milter nobody here wrote (python-libmilter,
libmilter_server.py) over loopback TCP and a Unix socket: one milter connection per SMTP
session, every stage's steps, the verdicts at RCPT and at end of message, and the ABORT
and QUIT of `Inquirer.aclose`."""

from __future__ import annotations

import pathlib
from typing import Any

import attrs
import pytest
import trio
from libmilter_server import LibMilter, libmilter_fixture  # noqa: F401  (fixture)

from sansmail import smtp
from sansmail.mail.address import parse_address
from sansmail.sessions.smtpd import Stage, Transaction
from sansmail.sessions.smtpd._milters import MilterCheck
from sansmail_trio._inquiry import Inquirer

MESSAGE = b"From: alice@example.org\r\nSubject: %s\r\n\r\nhello\r\n"


@attrs.define
class FakeSession:
    """What a check sees of a session (SessionView), set by hand."""

    client_ip: str = "192.0.2.7"
    client_port: int = 40000
    helo: str = ""
    user: str | None = None
    tls: str | None = None
    transaction: Transaction | None = None
    trusted: bool = False
    client_name: str | None = None
    findings: dict[str, Any] = attrs.Factory(dict)


class Session:
    """One SMTP session's stages, with the Inquirer carrying the conversations."""

    def __init__(self, check: MilterCheck) -> None:
        self.check = check
        self.view = FakeSession()
        self.inquirer = Inquirer(None)

    async def stage(self, stage: Stage, command: smtp.Event | None = None) -> Any:
        await self.inquirer.run(self.check.inquiries(stage, self.view, command))
        return self.check.check(stage, self.view)

    async def envelope(self, *recipients: str) -> list[Any]:
        assert await self.stage(Stage.CONNECT) is None
        assert await self.stage(Stage.HELO, smtp.Hello(domain="client.example")) is None
        sender = parse_address("alice@example.org")
        assert await self.stage(Stage.MAIL, smtp.Mail(reverse_path=sender)) is None
        self.view.transaction = tx = Transaction(queue_id="4TestQueueID", reverse_path=sender)
        verdicts = []
        for recipient in recipients:
            path = parse_address(recipient)
            verdict = await self.stage(Stage.RCPT, smtp.Rcpt(forward_path=path))
            if verdict is None:
                tx.rcpt.append(path)
            verdicts.append(verdict)
        return verdicts

    async def message(self, subject: bytes) -> Any:
        tx = self.view.transaction
        assert tx is not None
        assert self.check.wants_message(self.view)
        tx.message = bytearray(MESSAGE % subject)
        verdict = await self.stage(Stage.END_OF_DATA)
        self.view.transaction = None
        return verdict


def milter_check(address: Any) -> MilterCheck:
    return MilterCheck(address=address, hostname="mx.example.test")


async def test_a_session_through_libmilter_adds_a_header(libmilter: LibMilter) -> None:
    session = Session(milter_check(libmilter.address))
    assert await session.envelope("bob@example.test", "carol@example.test") == [None, None]
    verdict = await session.message(b"hello")
    assert verdict is not None
    assert verdict.reply is None
    assert [(e.action, e.name, e.value) for e in verdict.header_edits] == [
        ("add", "X-Milter", "seen by libmilter")
    ]
    await session.inquirer.aclose()
    with trio.fail_after(10):
        while "close" not in libmilter.names():
            await trio.sleep(0.01)
    assert libmilter.connections == 1  # one milter connection for the whole session
    assert libmilter.names() == [
        "connect",
        "helo",
        "mail",
        "rcpt",
        "rcpt",
        "header",
        "header",
        "body",
        "eob",
        "close",
    ]
    (_n, _name, (hostname, family, ip, port, macros)) = libmilter.calls[0]
    assert (hostname, family, ip, port) == (b"[192.0.2.7]", b"4", b"192.0.2.7", 40000)
    assert macros[b"j"] == b"mx.example.test"
    assert macros[b"client_addr"] == b"192.0.2.7"
    assert ("header", (b"Subject", b"hello")) in [c[1:] for c in libmilter.calls]
    assert ("body", b"hello\r\n") in [c[1:] for c in libmilter.calls]


async def test_libmilter_rejects_a_recipient(libmilter: LibMilter) -> None:
    session = Session(milter_check(libmilter.address))
    verdicts = await session.envelope("spamtrap@example.test", "bob@example.test")
    assert verdicts[0].reply.code == 550
    assert verdicts[0].reply.text == "Command rejected"
    assert verdicts[1] is None
    assert await session.message(b"fine") is not None  # the added header
    await session.inquirer.aclose()


@pytest.mark.parametrize(
    ("subject", "code", "enhanced", "text"),
    [
        (b"please reject", 550, "5.7.1", "Command rejected"),
        (b"tempfail me", 451, "4.7.1", "Service unavailable - try again later"),
        (b"replycode", 554, "5.7.1", "refused by the test milter"),
    ],
)
async def test_libmilter_refuses_at_end_of_message(
    libmilter: LibMilter, subject: bytes, code: int, enhanced: str, text: str
) -> None:
    session = Session(milter_check(libmilter.address))
    await session.envelope("bob@example.test")
    verdict = await session.message(subject)
    assert (verdict.reply.code, verdict.reply.enhanced, verdict.reply.text) == (
        code,
        enhanced,
        text,
    )
    # The next transaction goes to the same milter connection, from a clean state.
    sender = parse_address("alice@example.org")
    assert await session.stage(Stage.MAIL, smtp.Mail(reverse_path=sender)) is None
    await session.inquirer.aclose()
    with trio.fail_after(10):
        while "close" not in libmilter.names():
            await trio.sleep(0.01)
    assert libmilter.names()[-3:] == ["mail", "abort", "close"]
    assert libmilter.connections == 1


async def test_libmilter_discards_and_replaces_the_body(libmilter: LibMilter) -> None:
    session = Session(milter_check(libmilter.address))
    await session.envelope("bob@example.test")
    verdict = await session.message(b"discard this")
    assert verdict.discard
    sender = parse_address("alice@example.org")
    assert await session.stage(Stage.MAIL, smtp.Mail(reverse_path=sender)) is None
    session.view.transaction = tx = Transaction(queue_id="4Second", reverse_path=sender)
    bob = parse_address("bob@example.test")
    assert await session.stage(Stage.RCPT, smtp.Rcpt(forward_path=bob)) is None
    tx.rcpt.append(bob)
    verdict = await session.message(b"new body")
    assert verdict.body == b"replaced by the milter\r\n"
    await session.inquirer.aclose()


async def test_a_milter_on_a_unix_socket(tmp_path: pathlib.Path) -> None:
    with LibMilter(unix_path=tmp_path / "milter.sock") as server:
        session = Session(milter_check(server.address))
        await session.envelope("bob@example.test")
        verdict = await session.message(b"hello")
        assert verdict.header_edits[0].name == "X-Milter"
        await session.inquirer.aclose()
    assert server.names()[:2] == ["connect", "helo"]


async def test_each_smtp_session_has_its_own_milter_connection(libmilter: LibMilter) -> None:
    check = milter_check(libmilter.address)
    first, second = Session(check), Session(check)
    await first.envelope("bob@example.test")
    await second.envelope("carol@example.test")
    assert libmilter.connections == 2
    assert (await first.message(b"one")).header_edits
    assert (await second.message(b"two")).header_edits
    await first.inquirer.aclose()
    await second.inquirer.aclose()
