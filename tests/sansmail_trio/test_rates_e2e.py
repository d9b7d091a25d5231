"""Postfix's anvil rates and the auth lockout against a real server on loopback, with
smtplib, aiosmtplib, imaplib and poplib: a client or user over its rate gets
``450 4.7.1`` in Postfix's words, mynetworks is exempt, a user is counted over every
address it comes from, and a locked-out address is refused on SMTP, IMAP and POP3."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import poplib
import smtplib
from collections.abc import Awaitable, Callable
from typing import Any

import aiosmtplib
import attrs
import pytest
import trio
from trio_helpers import FAST_HASHER, RunningServer, logged, write_config

from sansmail.config import load_config
from sansmail.mail.address import parse_address
from sansmail.mail.auth import AuthSettings
from sansmail.storage.anvil import FILE_NAME
from sansmail.storage.users import UserStore
from sansmail_trio import serve

MESSAGE = b"Subject: rates\r\n\r\nhello\r\n"
OUTSIDE = ["192.0.2.0/24"]  # mynetworks that do not hold the test clients
LISTEN = {"smtp": "127.0.0.1:0", "submission": "127.0.0.1:0"}
RateServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
def rate_server(tmp_path: Any, nursery: trio.Nursery) -> RateServer:
    async def start(
        *,
        limits: dict[str, int],
        mynetworks: list[str] = OUTSIDE,
        listen: dict[str, str] = LISTEN,
        quick_lockout: bool = False,
    ) -> RunningServer:
        path = write_config(tmp_path, mynetworks=mynetworks, listen=listen, limits=limits)
        config = load_config(path, default_hostname="unused.test")
        config.data_dir.mkdir(parents=True, exist_ok=True)
        users = UserStore(config.data_dir / "users.json", hasher=FAST_HASHER)
        for address in ("alice@example.test", "bob@example.test"):
            users.add(parse_address(address), "secret")
        # The lockout's numbers from [limits], as serve() takes them; only the failure
        # delay is made short, so that the failures on the way take no seconds.
        auth = attrs.evolve(
            AuthSettings.from_config(config), failure_delay=0.01, max_failure_delay=0.02
        )
        assert quick_lockout or auth.max_failures == config.limits.auth_max_failures
        shutdown, done = trio.Event(), trio.Event()

        async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await serve(config, shutdown=shutdown, task_status=task_status, auth_settings=auth)
            finally:
                done.set()

        bound = await nursery.start(run)
        host, port = next(iter(bound.values()))[0]
        return RunningServer(
            config=config, host=host, port=port, shutdown=shutdown, done=done, bound=bound
        )

    return start


def send(
    port: int,
    count: int,
    *,
    source: str = "127.0.0.1",
    login: str | None = None,
    recipients: tuple[str, ...] = ("bob@example.test",),
) -> list[str]:
    """`count` messages over one connection; what each MAIL got (``250`` or the refusal)."""
    results = []
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as client:
        client.ehlo("client.example.org")
        if login is not None:
            client.login(login, "secret")
        for _ in range(count):
            sender = login or "someone@example.org"
            try:
                client.sendmail(sender, list(recipients), MESSAGE)
                results.append("250")
            except smtplib.SMTPSenderRefused as exc:
                results.append(f"{exc.smtp_code} {exc.smtp_error.decode()}")
                client.rset()
    return results


async def test_the_fourth_message_of_the_minute_is_refused_in_postfix_words(
    rate_server: RateServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="sansmail")
    server = await rate_server(limits={"client_message_rate": 3})
    port = server.port_of("smtp")
    # Over two connections: the count is the client's, not the connection's.
    assert await trio.to_thread.run_sync(send, port, 2) == ["250", "250"]
    got = await trio.to_thread.run_sync(send, port, 3)
    refusal = "450 4.7.1 Error: too much mail from 127.0.0.1"
    assert got == ["250", refusal, refusal]
    assert len(server.new_messages("bob@example.test")) == 3
    assert (server.data_dir / FILE_NAME).exists()
    lines = await logged(caplog, "sansmail.smtp", lambda ls: sum("anvil" in x for x in ls) >= 2)
    refused = [line for line in lines if "anvil" in line]
    assert len(refused) == 2  # one line per refused command
    assert refused[0].endswith(f"mail refused by anvil: {refusal}")


async def test_mynetworks_clients_are_exempt(rate_server: RateServer) -> None:
    server = await rate_server(
        limits={"client_message_rate": 1, "client_recipient_rate": 1}, mynetworks=["127.0.0.0/8"]
    )
    recipients = ("bob@example.test", "alice@example.test")
    got = await trio.to_thread.run_sync(
        lambda: send(server.port_of("smtp"), 4, recipients=recipients)
    )
    assert got == ["250"] * 4
    assert len(server.new_messages("bob@example.test")) == 4
    assert not (server.data_dir / FILE_NAME).exists()  # nothing was counted


async def test_recipients_over_the_rate_get_450_with_aiosmtplib(rate_server: RateServer) -> None:
    server = await rate_server(limits={"client_recipient_rate": 3})
    port = server.port_of("smtp")

    async def session() -> dict[str, tuple[int, str]]:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as client:
            await client.mail("someone@example.org")
            answers = {}
            for n in range(5):
                rcpt = "bob@example.test" if n % 2 else "alice@example.test"
                address = rcpt.replace("@", f"+{n}@")
                try:
                    response = await client.rcpt(address)
                    answers[address] = (response.code, response.message)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    answers[address] = (exc.code, exc.message)
            await client.rset()
            return answers

    answers = await trio.to_thread.run_sync(lambda: asyncio.run(session()))
    codes = [code for code, _ in answers.values()]
    assert codes == [250, 250, 250, 450, 450]
    assert list(answers.values())[3][1] == "4.7.1 Error: too many recipients from 127.0.0.1"


async def test_a_user_is_counted_over_every_address_it_comes_from(
    rate_server: RateServer,
) -> None:
    server = await rate_server(limits={"user_message_rate": 2, "client_message_rate": 0})
    port = server.port_of("submission")
    alice = "alice@example.test"
    first = await trio.to_thread.run_sync(lambda: send(port, 1, source="127.0.0.2", login=alice))
    second = await trio.to_thread.run_sync(lambda: send(port, 2, source="127.0.0.3", login=alice))
    assert first == ["250"]
    assert second == ["250", "450 4.7.1 Error: too much mail from alice@example.test"]
    # bob, from the same address, and unauthenticated mail from it, have their own counts.
    assert await trio.to_thread.run_sync(
        lambda: send(port, 2, source="127.0.0.3", login="bob@example.test")
    ) == ["250", "250"]
    assert (
        await trio.to_thread.run_sync(lambda: send(server.port_of("smtp"), 3, source="127.0.0.3"))
        == ["250"] * 3
    )


def _imap_login(port: int, password: str) -> str:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    try:
        client.login("alice@example.test", password)
    except imaplib.IMAP4.error as exc:
        return f"NO {exc}"
    finally:
        client.logout()
    return "OK"


def _pop3_login(port: int, password: str) -> str:
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        client.user("alice@example.test")
        client.pass_(password)
    except poplib.error_proto as exc:
        return exc.args[0].decode()
    finally:
        client.quit()
    return "+OK"


def _smtp_login(port: int, password: str) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.example.org")
        plain = base64.b64encode(f"\0alice@example.test\0{password}".encode()).decode()
        code, text = client.docmd("AUTH", "PLAIN " + plain)
    return f"{code} {text.decode()}"


async def test_the_auth_lockout_of_the_limits_table_holds_on_every_protocol(
    rate_server: RateServer,
) -> None:
    listen = {"submission": "127.0.0.1:0", "imap": "127.0.0.1:0", "pop3": "127.0.0.1:0"}
    server = await rate_server(
        limits={"auth_max_failures": 3, "auth_failure_window": 600, "auth_lockout": 600},
        listen=listen,
    )
    smtp_port, imap_port, pop3_port = (server.port_of(s) for s in ("submission", "imap", "pop3"))
    # Three failures, over three protocols: the address is locked out.
    assert (await trio.to_thread.run_sync(_smtp_login, smtp_port, "wrong")).startswith("535")
    assert (await trio.to_thread.run_sync(_imap_login, imap_port, "wrong2")).startswith("NO")
    assert (await trio.to_thread.run_sync(_pop3_login, pop3_port, "wrong3")).startswith("-ERR")
    # Now the right password is refused everywhere, without being checked.
    smtp_answer = await trio.to_thread.run_sync(_smtp_login, smtp_port, "secret")
    assert smtp_answer.startswith("454 4.7.0 Too many authentication failures")
    imap_answer = await trio.to_thread.run_sync(_imap_login, imap_port, "secret")
    assert "[UNAVAILABLE]" in imap_answer
    pop3_answer = await trio.to_thread.run_sync(_pop3_login, pop3_port, "secret")
    assert pop3_answer.startswith("-ERR [SYS/TEMP]")


async def test_below_the_configured_failures_the_right_password_still_works(
    rate_server: RateServer,
) -> None:
    server = await rate_server(
        limits={"auth_max_failures": 3}, listen={"imap": "127.0.0.1:0", "pop3": "127.0.0.1:0"}
    )
    imap_port, pop3_port = server.port_of("imap"), server.port_of("pop3")
    assert (await trio.to_thread.run_sync(_imap_login, imap_port, "wrong")).startswith("NO")
    assert (await trio.to_thread.run_sync(_pop3_login, pop3_port, "wrong2")).startswith("-ERR")
    assert await trio.to_thread.run_sync(_imap_login, imap_port, "secret") == "OK"
