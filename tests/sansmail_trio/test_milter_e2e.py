"""Milters end to end: an SMTP client talks to the SMTP adapter (`SMTPService`, the
session, the Inquirer) whose listener runs `milter_checks`, and the milter is one
nobody here wrote (python-libmilter, libmilter_server.py) on 127.0.0.1. What the client
is told and what lands in the Maildir are the milter's decisions: a refusal at end of
message, a temporary one, a rejected recipient, a header added to the stored copy, and a
milter that is down under both default actions. Last, the same through a whole `serve()`
configured by a file's ``[milter]`` section, with smtplib as the client."""

from __future__ import annotations

import logging
import pathlib
import smtplib
from typing import Any

import pytest
import trio
import trio.testing
from argon2 import PasswordHasher
from libmilter_server import LibMilter, libmilter_fixture  # noqa: F401  (fixture)
from trio_helpers import FAST_HASHER, RunningServer, quick_auth, write_config

from sansmail.config import Config, HostPort, MilterConfig, load_config
from sansmail.mail.address import parse_address
from sansmail.mail.auth import AuthService, AuthSettings
from sansmail.sessions.smtpd import SmtpService
from sansmail.sessions.smtpd._milters import milter_checks
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.maildir import MaildirStore
from sansmail.storage.queue import QueueStore
from sansmail.storage.users import UserStore
from sansmail_trio import serve
from sansmail_trio._smtp_server import SMTPService

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def make_service(
    root: pathlib.Path, milter: HostPort, *, default_action: str = "tempfail"
) -> SMTPService:
    config = Config(
        source=None,
        hostname="mx.example.test",
        domains=("example.test",),
        data_dir=root,
        milter=MilterConfig(milters=(milter,), default_action=default_action),
    )
    users = UserStore(root / "users.json", hasher=FAST)
    for user in ("alice", "bob", "spamtrap"):
        users.add(parse_address(f"{user}@example.test"), "secret")
    shared = SmtpService(
        config=config,
        store=MaildirStore(root, hostname="mx.example.test"),
        users=users,
        queue=QueueStore(root / "queue"),
        aliases=AliasSource(None),
        auth=AuthService(users, secret=b"s" * 32, settings=AuthSettings(exempt=())),
        srs_key=b"k" * 32,
        service="smtp",
        tls_available=False,
        checks=milter_checks(config),
    )
    return SMTPService(shared=shared, log=logging.getLogger("test.milter"))


class Peer:
    """The client end of a memory stream, reading replies line by line."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def reply(self) -> bytes:
        """The last line of one (possibly multi-line) reply."""
        while True:
            while b"\r\n" not in self.buffer:
                with trio.fail_after(30):
                    data = await self.stream.receive_some(65536)
                if not data:
                    return b""
                self.buffer += data
            line, _, self.buffer = self.buffer.partition(b"\r\n")
            if line[3:4] != b"-":
                return line

    async def say(self, text: str) -> bytes:
        await self.stream.send_all(text.encode() + b"\r\n")
        return await self.reply()

    async def send_message(self, subject: str, *recipients: str) -> list[bytes]:
        """MAIL, RCPT for each recipient, DATA: every reply, the last after the dot."""
        replies = [await self.say("MAIL FROM:<sender@far.test>")]
        replies += [await self.say(f"RCPT TO:<{r}>") for r in recipients]
        replies.append(await self.say("DATA"))
        if not replies[-1].startswith(b"354"):
            return replies
        message = f"From: sender@far.test\r\nSubject: {subject}\r\n\r\nhello\r\n.".encode()
        await self.stream.send_all(message + b"\r\n")
        replies.append(await self.reply())
        return replies


async def session(nursery: trio.Nursery, service: SMTPService) -> Peer:
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(lambda: service.handle(server, ("192.0.2.7", 40000)))
    return Peer(client)


def stored(root: pathlib.Path, user: str) -> list[bytes]:
    new = root / "mail" / "example.test" / user / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


async def closed_port() -> HostPort:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        host, port = sock.getsockname()[:2]
    return host, port


async def test_the_milter_adds_a_header_to_the_stored_copy(
    tmp_path: pathlib.Path, libmilter: LibMilter, nursery: trio.Nursery
) -> None:
    assert isinstance(libmilter.address, tuple)
    peer = await session(nursery, make_service(tmp_path, libmilter.address))
    assert (await peer.reply()).startswith(b"220 ")
    assert (await peer.say("EHLO client.example")).startswith(b"250 ")
    replies = await peer.send_message("hello", "alice@example.test")
    assert replies[-1].startswith(b"250 2.0.0 Ok: queued as ")
    [message] = stored(tmp_path, "alice")
    head = message.split(b"\n\n", 1)[0]  # Maildir files have LF line ends
    assert head.endswith(b"\nSubject: hello\nX-Milter: seen by libmilter")
    assert (await peer.say("QUIT")).startswith(b"221 ")
    with trio.fail_after(10):
        while "close" not in libmilter.names():
            await trio.sleep(0.01)
    # The milter saw the whole session on one connection, and its end.
    assert libmilter.names() == [
        "connect",
        "helo",
        "mail",
        "rcpt",
        "header",
        "header",
        "body",
        "eob",
        "close",
    ]


@pytest.mark.parametrize(
    ("subject", "reply"),
    [
        ("please reject", b"550 5.7.1 Command rejected"),
        ("tempfail me", b"451 4.7.1 Service unavailable - try again later"),
        ("replycode", b"554 5.7.1 refused by the test milter"),
    ],
)
async def test_the_milter_refuses_at_end_of_message(
    tmp_path: pathlib.Path,
    libmilter: LibMilter,
    nursery: trio.Nursery,
    subject: str,
    reply: bytes,
) -> None:
    assert isinstance(libmilter.address, tuple)
    peer = await session(nursery, make_service(tmp_path, libmilter.address))
    await peer.reply()
    await peer.say("EHLO client.example")
    replies = await peer.send_message(subject, "alice@example.test")
    assert replies[-1] == reply
    assert stored(tmp_path, "alice") == []
    # The session goes on: the next message is the milter's to judge again.
    replies = await peer.send_message("hello again", "alice@example.test")
    assert replies[-1].startswith(b"250 ")
    assert len(stored(tmp_path, "alice")) == 1
    assert (await peer.say("QUIT")).startswith(b"221 ")


async def test_the_milter_rejects_one_recipient(
    tmp_path: pathlib.Path, libmilter: LibMilter, nursery: trio.Nursery
) -> None:
    assert isinstance(libmilter.address, tuple)
    peer = await session(nursery, make_service(tmp_path, libmilter.address))
    await peer.reply()
    await peer.say("EHLO client.example")
    replies = await peer.send_message("hello", "spamtrap@example.test", "bob@example.test")
    assert replies[1] == b"550 5.7.1 Command rejected"
    assert replies[2].startswith(b"250 ")
    assert replies[-1].startswith(b"250 ")
    assert len(stored(tmp_path, "bob")) == 1


async def test_the_milter_changes_the_envelope(
    tmp_path: pathlib.Path, libmilter: LibMilter, nursery: trio.Nursery
) -> None:
    assert isinstance(libmilter.address, tuple)
    peer = await session(nursery, make_service(tmp_path, libmilter.address))
    await peer.reply()
    await peer.say("EHLO client.example")
    replies = await peer.send_message("reroute", "alice@example.test")
    assert replies[-1].startswith(b"250 ")
    assert stored(tmp_path, "alice") == []
    [message] = stored(tmp_path, "bob")
    assert message.startswith(b"Return-Path: <bounces@example.test>\n")


async def test_a_milter_that_is_down_tempfails_by_default(
    tmp_path: pathlib.Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    address = await closed_port()
    peer = await session(nursery, make_service(tmp_path, address))
    # Refused at the greeting, as a greeting may refuse (Postfix would answer 451 to
    # each command instead; no enhanced code on a greeting, RFC 2034 §3), and the
    # session ends.
    assert await peer.reply() == b"421 Service unavailable - try again later"
    assert await peer.reply() == b""
    assert any("cannot connect" in r.getMessage() for r in caplog.records)


async def test_a_milter_that_is_down_is_skipped_with_accept(
    tmp_path: pathlib.Path, nursery: trio.Nursery
) -> None:
    address = await closed_port()
    peer = await session(nursery, make_service(tmp_path, address, default_action="accept"))
    assert (await peer.reply()).startswith(b"220 ")
    await peer.say("EHLO client.example")
    replies = await peer.send_message("hello", "alice@example.test")
    assert replies[-1].startswith(b"250 ")
    [message] = stored(tmp_path, "alice")
    assert b"X-Milter" not in message


# --- through serve() ---------------------------------------------------------------------


async def serve_with_milter(
    tmp_path: pathlib.Path, nursery: trio.Nursery, spec: str, default_action: str
) -> RunningServer:
    """`serve()` from a config file whose [milter] section names `spec`."""
    path = write_config(tmp_path, mynetworks=["192.0.2.0/24"])
    milter = f'[milter]\nmilters = ["{spec}"]\ndefault_action = "{default_action}"\n'
    path.write_text(path.read_text() + milter)
    config = load_config(path, default_hostname="unused.test")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    UserStore(config.data_dir / "users.json", hasher=FAST_HASHER).add(
        parse_address("alice@example.test"), "secret"
    )
    shutdown, done = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve(
                config, shutdown=shutdown, task_status=task_status, auth_settings=quick_auth(config)
            )
        finally:
            done.set()

    bound = await nursery.start(run)
    host, port = bound["smtp"][0]
    return RunningServer(
        config=config, host=host, port=port, shutdown=shutdown, done=done, bound=bound
    )


def send(port: int, subject: str) -> Any:
    message = f"From: sender@far.test\r\nSubject: {subject}\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example")
        try:
            return client.sendmail("sender@far.test", ["alice@example.test"], message)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error


async def test_serve_runs_the_configured_milter(
    tmp_path: pathlib.Path, libmilter: LibMilter, nursery: trio.Nursery
) -> None:
    server = await serve_with_milter(tmp_path, nursery, libmilter.spec, "tempfail")
    assert await trio.to_thread.run_sync(send, server.port, "hello") == {}
    [message] = server.new_messages("alice@example.test")
    assert b"\nX-Milter: seen by libmilter\n" in message.split(b"\n\n", 1)[0] + b"\n"
    refused = await trio.to_thread.run_sync(send, server.port, "please reject")
    assert refused == (550, b"5.7.1 Command rejected")
    assert len(server.new_messages("alice@example.test")) == 1
    await server.stop()


async def test_serve_with_a_milter_down(tmp_path: pathlib.Path, nursery: trio.Nursery) -> None:
    host, port = await closed_port()
    server = await serve_with_milter(tmp_path, nursery, f"inet:{host}:{port}", "accept")
    assert await trio.to_thread.run_sync(send, server.port, "hello") == {}
    [message] = server.new_messages("alice@example.test")
    assert b"X-Milter" not in message
    await server.stop()
