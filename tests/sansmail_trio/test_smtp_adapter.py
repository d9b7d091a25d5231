"""The SMTP adapter's own job, over Trio's memory streams with a virtual clock (no socket
adds anything here, and no test waits in real time): the timeouts, shutdown between and
during transactions, the auth failure delay, and the queue runner's wake-up."""

from __future__ import annotations

import base64
import logging
import pathlib

import pytest
import trio
import trio.testing
from argon2 import PasswordHasher

from sansmail.config import Config
from sansmail.mail.address import parse_address
from sansmail.mail.auth import AuthService, AuthSettings
from sansmail.sessions.smtpd import SmtpService
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.maildir import MaildirStore
from sansmail.storage.queue import QueueStore
from sansmail.storage.users import UserStore
from sansmail_trio._session import SessionRegistry, Stoppable
from sansmail_trio._smtp_server import SMTPService

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class Registry:
    """Shutdown's view of the sessions (`_serve._Connections` in production)."""

    def __init__(self) -> None:
        self.shutting_down = False
        self.sessions: set[Stoppable] = set()

    def add(self, session: Stoppable) -> None:
        self.sessions.add(session)

    def discard(self, session: Stoppable) -> None:
        self.sessions.discard(session)

    def stop_all(self) -> None:
        self.shutting_down = True
        for session in list(self.sessions):
            session.request_stop()


def make_service(root: pathlib.Path, *, service: str = "smtp") -> SMTPService:
    config = Config(
        source=None, hostname="mx.example.test", domains=("example.test",), data_dir=root
    )
    users = UserStore(root / "users.json", hasher=FAST)
    users.add(parse_address("alice@example.test"), "secret")
    shared = SmtpService(
        config=config,
        store=MaildirStore(root, hostname="mx.example.test"),
        users=users,
        queue=QueueStore(root / "queue"),
        aliases=AliasSource(None),
        # Loopback is not exempt here, so failures are delayed and counted.
        auth=AuthService(users, secret=b"s" * 32, settings=AuthSettings(exempt=())),
        srs_key=b"k" * 32,
        service=service,
        tls_available=False,
    )
    return SMTPService(shared=shared, log=logging.getLogger("test.smtp"))


class Peer:
    """The client end of a memory stream, reading replies line by line."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                return b""
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    async def reply(self) -> bytes:
        """The last line of one (possibly multi-line) reply."""
        while (line := await self.line())[3:4] == b"-":
            pass
        return line

    async def say(self, text: str) -> bytes:
        await self.stream.send_all(text.encode() + b"\r\n")
        return await self.reply()


async def serve_one(
    nursery: trio.Nursery, service: SMTPService, registry: SessionRegistry | None = None
) -> Peer:
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(lambda: service.handle(server, ("127.0.0.1", 40000), registry=registry))
    return Peer(client)


async def test_idle_client_gets_421_after_the_command_timeout(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    service = make_service(tmp_path)
    async with trio.open_nursery() as nursery:
        peer = await serve_one(nursery, service)
        assert (await peer.reply()).startswith(b"220 ")
        assert (await peer.say("EHLO client.example")).startswith(b"250 ")
        start = trio.current_time()
        assert (await peer.reply()).startswith(b"421 4.4.2 mx.example.test Error: timeout")
        assert trio.current_time() - start == pytest.approx(300)  # RFC 5321 §4.5.3.2.7
        assert await peer.line() == b""  # and closed


async def test_content_gets_the_longer_data_timeout(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    service = make_service(tmp_path)
    async with trio.open_nursery() as nursery:
        peer = await serve_one(nursery, service)
        await peer.reply()
        await peer.say("EHLO client.example")
        await peer.say("MAIL FROM:<a@example.org>")
        await peer.say("RCPT TO:<alice@example.test>")
        assert (await peer.say("DATA")).startswith(b"354")
        start = trio.current_time()
        assert (await peer.reply()).startswith(b"421 4.4.2")
        assert trio.current_time() - start == pytest.approx(600)  # §4.5.3.2.6
    assert not list((tmp_path / "mail").rglob("tmp/*"))  # nothing left behind


async def test_shutdown_cuts_an_idle_session_but_lets_a_transaction_finish(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    service = make_service(tmp_path)
    registry = Registry()
    async with trio.open_nursery() as nursery:
        idle = await serve_one(nursery, service, registry)
        busy = await serve_one(nursery, service, registry)
        for peer in (idle, busy):
            await peer.reply()
            await peer.say("EHLO client.example")
        await busy.say("MAIL FROM:<a@example.org>")
        registry.stop_all()
        assert (await idle.reply()).startswith(b"421 4.3.2 mx.example.test Service shutting down")
        # The transaction goes on to its end, then the session stops.
        assert (await busy.say("RCPT TO:<alice@example.test>")).startswith(b"250")
        await busy.say("DATA")
        assert (await busy.say("Subject: x\r\n\r\nhi\r\n.")).startswith(b"250 2.0.0 Ok")
        assert (await busy.reply()).startswith(b"421 4.3.2")
    assert len(list((tmp_path / "mail" / "example.test" / "alice" / "new").iterdir())) == 1


async def test_a_failed_login_is_answered_after_the_delay(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    service = make_service(tmp_path)
    wrong = base64.b64encode(b"\0alice@example.test\0wrong").decode()
    async with trio.open_nursery() as nursery:
        peer = await serve_one(nursery, service)
        await peer.reply()
        await peer.say("EHLO client.example")  # plaintext AUTH: loopback is allowed
        start = trio.current_time()
        assert (await peer.say(f"AUTH PLAIN {wrong}")).startswith(b"535 5.7.8")
        assert trio.current_time() - start == pytest.approx(2)  # Dovecot's first penalty
        start = trio.current_time()
        assert (await peer.say(f"AUTH PLAIN {wrong}")).startswith(b"535 5.7.8")
        # A repeat of the same wrong password waits out the penalty but is not counted.
        assert trio.current_time() - start >= 2
        await peer.say("QUIT")


async def test_queued_mail_wakes_the_runner(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    service = make_service(tmp_path)
    woken: list[str] = []
    service.wake = woken.append
    async with trio.open_nursery() as nursery:
        peer = await serve_one(nursery, service)
        await peer.reply()
        await peer.say("EHLO client.example")
        await peer.say("MAIL FROM:<a@example.org>")
        # 127.0.0.1 is in the default mynetworks: it may relay.
        assert (await peer.say("RCPT TO:<x@far.test>")).startswith(b"250")
        await peer.say("DATA")
        reply = await peer.say("Subject: x\r\n\r\nhi\r\n.")
        await peer.say("QUIT")
    assert reply.startswith(b"250 2.0.0 Ok: queued as ")
    assert woken == [reply.split()[-1].decode()]
