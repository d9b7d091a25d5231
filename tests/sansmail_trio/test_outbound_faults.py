"""Outbound delivery against next hops that misbehave: the queue runner, its SMTP client
and its resolver, end to end over loopback, against an SMTP server written here that
drops the connection mid-DATA or after the final ".", answers nothing, botches the TLS
handshake, or a DNS server that fails or drops the MX query.

Each test checks what an operator and the sender rely on: the message stays queued,
deferred with a reason in Postfix's words (``queue list`` and the log line), its next
attempt in the queue file is the retry schedule's (minimal_backoff doubling to
maximal_backoff, read from the file: the runner's clock here is a variable the test
moves, so no test waits for a retry), and the server counts what it received by
Message-ID: once, except in RFC 1047's window (the connection lost after the final
"." and before its reply), where the remote may have the message and the retry may
deliver it again, as with Postfix.

Real sockets and the real resolver path; waits are bounded only so a failing test ends.
"""

from __future__ import annotations

import collections
import logging
import pathlib
import random
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
import trio
import trustme
from dns_server import DNSServer

from sansmail.config import Config, load_config
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.mail.outbound import ClientTimeouts
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.maildir import MaildirStore
from sansmail.storage.queue import QueueStore, format_mailq
from sansmail.storage.users import UserStore
from sansmail_trio._dns import Resolver
from sansmail_trio._queue import QueueRunner

T0 = 1_800_000_000.0  # the runner's clock at the first attempt
MINIMAL, MAXIMAL = 300, 1000  # seconds: retries 300, 600, then 1000 (1200 clamped)
#: A message bigger than both ends' socket buffers can hold at once (the client's send
#: buffer grows to tcp_wmem's maximum, 4 MiB by default; the server's receive buffer is
#: kept small): a server that stops reading it mid-way breaks the client's write.
BIG = 8 * 1024 * 1024
#: Generous for everything but the step a test makes slow: a loaded machine must not
#: turn a slow step into a timeout.
RELAXED = ClientTimeouts(
    connect=30, greeting=30, command=30, starttls=30, mail=30, rcpt=30, data_init=30
)
SHORT = 0.3  # the timeout of the step a test makes slow
DRIBBLE = SHORT / 4  # between the octets of a dribbled reply: each read comes in time
BOUND = 60.0  # bounds a failing test's waits only

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


class Clock:
    """The runner's wall clock: stands still until the test moves it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class MiddleJitter(random.Random):
    """Jitter 0.5 spreads a retry by a factor of exactly 1: the schedule is exact."""

    def random(self) -> float:
        return 0.5


# -- the misbehaving SMTP server --------------------------------------------------------------


class _Lines:
    """CRLF lines off a stream; None at EOF."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def line(self) -> bytes | None:
        while (end := self.buffer.find(b"\r\n")) < 0:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buffer += data
        line = bytes(self.buffer[: end + 2])
        del self.buffer[: end + 2]
        return line


async def _until_eof(stream: trio.abc.Stream) -> None:
    """Answer nothing until the client gives up and closes."""
    while await stream.receive_some(65536):
        pass


_CONNECTION_MODES = ("silent", "dribble", "tls", "tls-garbage", "tls-abort", "tls-silent")


@attrs.define
class FakeMX:
    """An SMTP server on 127.0.0.1 that does, on its n-th connection, what `plans[n]`
    says (the last plan repeats). A plan is a tuple of words: an optional first word
    for the connection ("silent": no greeting; "dribble": the greeting an octet at a
    time, `DRIBBLE` seconds apart; "tls": STARTTLS offered and done with
    `tls_context`; "tls-garbage": STARTTLS answered 220, then bytes that are not TLS;
    "tls-abort": 220, then the connection closed; "tls-silent": 220, then nothing),
    then one word per transaction, the
    last repeating: "ok", "quiet-ehlo", "quiet-mail", "quiet-rcpt", "quiet-data" (no
    answer to that command), "drop-mid-data" (the connection reset after some of the
    content), "drop-after-dot" (closed after the final "." without a reply),
    "quiet-dot" (no reply to the final "."), "drop-early" (closed after the first line
    of content), "mail-421", "rcpt-451".

    `received` counts by Message-ID every message whose final "." arrived, answered or
    not (the remote has it); `accepted` those it said 250 to."""

    plans: list[tuple[str, ...]]
    tls_context: ssl.SSLContext | None = None
    #: Picks each transaction's word at its MAIL, in place of the plans' words.
    choose: Callable[[], str] | None = None
    port: int = 0
    connections: int = 0
    received: collections.Counter[str] = attrs.Factory(collections.Counter)
    accepted: collections.Counter[str] = attrs.Factory(collections.Counter)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket()
        # Inherited by every accepted socket: the window stays small (see BIG).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        await sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, [trio.SocketListener(sock)])

    async def _handle(self, stream: trio.SocketStream) -> None:
        plan = self.plans[min(self.connections, len(self.plans) - 1)]
        self.connections += 1
        try:
            await self._converse(stream, plan)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _converse(self, raw: trio.SocketStream, plan: tuple[str, ...]) -> None:
        stream: trio.abc.Stream = raw
        mode = plan[0] if plan[0] in _CONNECTION_MODES else None
        steps = plan[1:] if mode else plan
        if mode == "silent":
            await _until_eof(stream)
            return
        greeting = b"220 fake.test ESMTP\r\n"
        if mode == "dribble":
            for octet in greeting:
                await stream.send_all(bytes([octet]))
                await trio.sleep(DRIBBLE)
        else:
            await stream.send_all(greeting)
        lines = _Lines(stream)
        offer_tls = mode is not None and mode.startswith("tls")
        done = 0  # transactions answered
        chosen: str | None = None
        while (line := await lines.line()) is not None:
            verb = line[:4].upper()
            if verb == b"MAIL" and self.choose is not None:
                chosen = self.choose()
            step = chosen or steps[min(done, len(steps) - 1)]
            if verb in (b"EHLO", b"HELO"):
                if step == "quiet-ehlo":
                    await _until_eof(stream)
                    return
                tls = b"250-STARTTLS\r\n" if offer_tls else b""
                await stream.send_all(b"250-fake.test\r\n" + tls + b"250 SIZE 100000000\r\n")
            elif verb == b"STAR":
                await stream.send_all(b"220 2.0.0 go ahead\r\n")
                if mode == "tls-garbage":
                    await stream.send_all(b"this is not a TLS record\r\n" * 4)
                    return
                if mode == "tls-abort":
                    return
                if mode == "tls-silent":
                    await _until_eof(stream)
                    return
                assert self.tls_context is not None
                tls_stream = trio.SSLStream(raw, self.tls_context, server_side=True)
                try:
                    await tls_stream.do_handshake()
                except trio.BrokenResourceError:
                    return  # the client refused our certificate
                stream, lines, offer_tls = tls_stream, _Lines(tls_stream), False
            elif verb in (b"MAIL", b"RCPT", b"DATA") and step == f"quiet-{verb.decode().lower()}":
                await _until_eof(stream)
                return
            elif verb == b"DATA":
                await stream.send_all(b"354 go ahead\r\n")
                if not await self._content(stream, lines, step):
                    return
                done += 1
            elif verb == b"QUIT":
                await stream.send_all(b"221 2.0.0 bye\r\n")
                return
            elif verb == b"MAIL" and step == "mail-421":
                await stream.send_all(b"421 4.3.2 going away\r\n")
                return
            elif verb == b"RCPT" and step == "rcpt-451":
                await stream.send_all(b"451 4.3.0 try again later\r\n")
            else:  # MAIL, RCPT, RSET
                await stream.send_all(b"250 2.0.0 ok\r\n")

    async def _content(self, stream: trio.abc.Stream, lines: _Lines, step: str) -> bool:
        """Read a message's content and answer as `step` says; False: connection over."""
        content = bytearray()
        while (line := await lines.line()) is not None:
            if line == b".\r\n":
                break
            content += line
            if step == "drop-early" or (step == "drop-mid-data" and len(content) > 100_000):
                # Close with unread data: the kernel resets the connection.
                await trio.aclose_forcefully(stream)
                return False
        else:
            return False
        found = _MESSAGE_ID.search(bytes(content))
        message_id = found.group(1).decode() if found else "(none)"
        self.received[message_id] += 1
        if step == "drop-after-dot":
            return False
        if step == "quiet-dot":
            await _until_eof(stream)
            return False
        await stream.send_all(b"250 2.0.0 queued\r\n")
        self.accepted[message_id] += 1
        return True


# -- our side: a queue and its runner -------------------------------------------------------


@attrs.define
class Ours:
    config: Config
    queue: QueueStore
    runner: QueueRunner
    clock: Clock
    log: pytest.LogCaptureFixture

    def enqueue(self, name: str, *, to: str = "bob@peer.test", size: int = 0) -> str:
        """Queue a message with Message-ID <`name`@example.test>, arrived now, and
        announce it to the runner (as an SMTP session does), due at once."""
        qid = self.queue.new_id()
        body = b"x" * 998 + b"\r\n"
        content = (
            f"From: alice@example.test\r\nTo: {to}\r\n"
            f"Message-ID: <{name}@example.test>\r\nSubject: {name}\r\n\r\n".encode()
            + body * max(1, size // len(body))
        )
        writer = self.queue.begin(qid)
        writer.write(content)
        writer.commit(
            QueuedMessage(
                queue_id=qid,
                sender="alice@example.test",
                arrival=self.clock.now,
                size=len(content),
                recipients=[QueuedRecipient(address=to)],
            )
        )
        self.runner.wake(qid)
        return qid

    def recipient(self, qid: str) -> QueuedRecipient | None:
        """The recipient of `qid` as the queue file has it; None when it left the queue."""
        found = [m for m in self.queue.list() if m.queue_id == qid]
        return found[0].recipients[0] if found else None

    async def attempt(self, qid: str, *, previous: int) -> QueuedRecipient | None:
        """Let the runner make the attempt after `previous` ones on `qid` (due now or
        earlier: its schedule decides), and return its recipient after it."""
        self.runner.wake()  # no id: the schedule is asked, not bypassed

        def settled() -> tuple[bool, QueuedRecipient | None]:
            recipient = self.recipient(qid)
            return recipient is None or recipient.attempts > previous, recipient

        with trio.fail_after(BOUND):
            while True:
                done, recipient = await trio.to_thread.run_sync(settled)
                if done:
                    return recipient
                await trio.sleep(0.02)

    def deferred_lines(self, qid: str) -> list[str]:
        return [
            r.getMessage()
            for r in self.log.records
            if r.getMessage().startswith(f"{qid}: ") and "status=deferred" in r.getMessage()
        ]


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    with DNSServer() as server:
        server.add("mx.test", "MX", "10 mx1.mx.test.")
        server.add("mx1.mx.test", "A", "127.0.0.1")
        yield server


OursFactory = Callable[..., Any]


@pytest.fixture
def start_ours(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    dns: DNSServer,
    caplog: pytest.LogCaptureFixture,
) -> OursFactory:
    async def start(
        mx: FakeMX,
        *,
        delivery: str = "",
        timeouts: ClientTimeouts = RELAXED,
        dns_timeout: float = 2.0,
    ) -> Ours:
        caplog.set_level(logging.INFO, logger="sansmail.test.outbound")
        (tmp_path / "sansmail.toml").write_text(
            f"""\
hostname = "mx.example.test"
domains = ["example.test"]
data_dir = "data"
[dns]
nameservers = ["{dns.host_port}"]
[delivery]
transport = {{ "peer.test" = "[127.0.0.1]:{mx.port}" }}
smtp_port = {mx.port}
minimal_backoff = "{MINIMAL}s"
maximal_backoff = "{MAXIMAL}s"
delay_warning = "0s"
{delivery}
"""
        )
        config = load_config(tmp_path / "sansmail.toml", default_hostname="unused.test")
        config.data_dir.mkdir(parents=True, exist_ok=True)
        queue = QueueStore(config.data_dir / "queue")
        clock = Clock()
        runner = QueueRunner(
            config=config,
            queue=queue,
            store=MaildirStore(config.data_dir, hostname=config.hostname),
            users=UserStore(config.data_dir / "users.json"),
            aliases=AliasSource(None),
            resolver=Resolver(config.dns.nameservers, timeout=dns_timeout),
            log=logging.getLogger("sansmail.test.outbound"),
            clock=clock,
            rng=MiddleJitter(),
            timeouts=timeouts,
        )
        await nursery.start(runner.run)
        return Ours(config=config, queue=queue, runner=runner, clock=clock, log=caplog)

    return start


async def start_mx(nursery: trio.Nursery, *plans: tuple[str, ...], **kwargs: Any) -> FakeMX:
    mx = FakeMX(list(plans), **kwargs)
    await nursery.start(mx.serve)
    return mx


def mailq(ours: Ours) -> str:
    return format_mailq(ours.queue.list(), now=ours.clock.now)


# -- dropped connections ---------------------------------------------------------------------


async def test_a_drop_mid_data_defers_and_the_retries_follow_the_schedule(
    nursery: trio.Nursery, start_ours: OursFactory
) -> None:
    # Three connections reset mid-content, then a good one.
    mx = await start_mx(
        nursery, ("drop-mid-data",), ("drop-mid-data",), ("drop-mid-data",), ("ok",)
    )
    ours = await start_ours(mx)
    relay = f"127.0.0.1[127.0.0.1]:{mx.port}"
    qid = ours.enqueue("mid", size=BIG)
    spacing = [MINIMAL, 2 * MINIMAL, MAXIMAL]  # 300, 600, then 1200 clamped to 1000
    for attempt, wait in enumerate(spacing, start=1):
        recipient = await ours.attempt(qid, previous=attempt - 1)
        assert recipient is not None
        assert recipient.state == "pending"
        assert recipient.attempts == attempt
        # The queue file has the schedule's time, to the second: the runner's clock
        # stood still during the attempt and the jitter is the middle one.
        assert recipient.next_attempt == ours.clock.now + wait
        assert recipient.last_reason.startswith(
            f"{relay}: lost connection while sending message body"
        )
        assert "may be sent more than once" not in recipient.last_reason
        assert mx.received["<mid@example.test>"] == 0  # no "." ever reached it
        ours.clock.now = recipient.next_attempt
    listing = mailq(ours)
    assert f"({relay}: lost connection while sending message body" in listing
    (line, *_) = ours.deferred_lines(qid)
    assert "dsn=4.4.1" in line
    assert f"status=deferred ({relay}: lost connection while sending message body" in line
    # The fourth attempt delivers it, once.
    assert await ours.attempt(qid, previous=3) is None
    assert mx.received == {"<mid@example.test>": 1}
    assert mx.accepted == {"<mid@example.test>": 1}
    assert mx.connections == 4


async def test_a_drop_after_the_final_dot_is_the_one_window_for_a_duplicate(
    nursery: trio.Nursery, start_ours: OursFactory
) -> None:
    mx = await start_mx(nursery, ("drop-after-dot",), ("ok",))
    ours = await start_ours(mx)
    relay = f"127.0.0.1[127.0.0.1]:{mx.port}"
    qid = ours.enqueue("dot")
    recipient = await ours.attempt(qid, previous=0)
    assert recipient is not None
    assert recipient.next_attempt == T0 + MINIMAL
    window = "lost connection while sending end of data -- message may be sent more than once"
    assert recipient.last_reason == f"{relay}: {window}"
    assert f"({relay}: {window}; retry in 5m)" in mailq(ours)
    assert f"status=deferred ({relay}: {window})" in ours.deferred_lines(qid)[0]
    # The remote has it (a real one may deliver it), and the retry sends it again:
    # RFC 1047's duplicate, the documented window, and the only one.
    assert mx.received == {"<dot@example.test>": 1}
    ours.clock.now = recipient.next_attempt
    assert await ours.attempt(qid, previous=1) is None
    assert mx.received == {"<dot@example.test>": 2}
    assert mx.accepted == {"<dot@example.test>": 1}


async def test_a_cached_connection_lost_after_the_dot_is_not_retried_at_once(
    nursery: trio.Nursery, start_ours: OursFactory
) -> None:
    # One connection for both messages (the runner's connection cache): the first
    # transaction goes through, the second loses the connection after its ".". A dead
    # cached connection is otherwise replaced at once, which here would resend the
    # message the server may already have within the same second.
    mx = await start_mx(nursery, ("ok", "drop-after-dot"), ("ok",))
    ours = await start_ours(mx)
    # Queued without a checkpoint between them: the runner opens both in one batch.
    first, second = ours.enqueue("one"), ours.enqueue("two")
    after = [await ours.attempt(qid, previous=0) for qid in (first, second)]
    assert mx.connections == 1
    assert sorted(mx.received.values()) == [1, 1]
    (recipient,) = [r for r in after if r is not None]  # the other one was delivered
    assert recipient.attempts == 1
    assert "may be sent more than once" in recipient.last_reason
    assert recipient.next_attempt == T0 + MINIMAL


async def test_a_refused_connection_defers_with_the_system_reason(
    start_ours: OursFactory,
) -> None:
    with socket.socket() as reserved:  # bound, not listening: the port refuses
        reserved.bind(("127.0.0.1", 0))
        mx = FakeMX([("ok",)], port=reserved.getsockname()[1])
        ours = await start_ours(mx)
        qid = ours.enqueue("refused")
        recipient = await ours.attempt(qid, previous=0)
    assert recipient is not None
    relay = f"127.0.0.1[127.0.0.1]:{mx.port}"
    assert recipient.last_reason == f"{relay}: connect failed: Connection refused"
    assert recipient.next_attempt == T0 + MINIMAL


async def test_random_faults_never_duplicate_outside_the_window(
    nursery: trio.Nursery, start_ours: OursFactory
) -> None:
    # Many messages to one next hop, so most transactions run on cached connections,
    # against a server that fails a random half of them, in every way above that
    # costs no timeout. Every message is accepted exactly once in the end; every copy
    # the server got beyond that came from a window our log owns up to.
    faults = ["drop-after-dot", "drop-early", "drop-mid-data", "mail-421", "rcpt-451"]
    rng = random.Random(14)

    def choose() -> str:
        return rng.choice(faults) if rng.random() < 0.5 else "ok"

    mx = await start_mx(nursery, ("ok",), choose=choose)
    ours = await start_ours(mx)
    ids = {f"r{n}": ours.enqueue(f"r{n}") for n in range(30)}
    with trio.fail_after(BOUND):
        while True:
            left = await trio.to_thread.run_sync(ours.queue.list)
            if not left:
                break
            due = min(m.recipients[0].next_attempt for m in left)
            if due > ours.clock.now:
                # Every one still queued waits for its retry: on to the soonest.
                ours.clock.now = due
                ours.runner.wake()
            await trio.sleep(0.02)
    assert mx.accepted == {f"<{name}@example.test>": 1 for name in ids}
    window = "may be sent more than once"
    for name, qid in ids.items():
        extra = mx.received[f"<{name}@example.test>"] - 1
        owned = [line for line in ours.deferred_lines(qid) if window in line]
        assert extra <= len(owned), name
    assert sum(mx.received.values()) > len(ids)  # the window was hit at all


# -- slow answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "timeouts", "during"),
    [
        (("silent",), {"greeting": SHORT}, "receiving the initial server greeting"),
        # Every octet within the timeout, the whole reply not: one deadline per reply.
        (("dribble", "ok"), {"greeting": SHORT}, "receiving the initial server greeting"),
        (("quiet-ehlo",), {"command": SHORT}, "performing the EHLO handshake"),
        (("quiet-mail",), {"mail": SHORT}, "sending MAIL FROM"),
        (("quiet-rcpt",), {"rcpt": SHORT}, "sending RCPT TO"),
        (("quiet-data",), {"data_init": SHORT}, "sending DATA command"),
        (
            ("quiet-dot",),
            {"data_done": SHORT},
            "sending end of data -- message may be sent more than once",
        ),
    ],
)
async def test_a_server_that_stops_answering_is_given_up_on_after_the_step_timeout(
    nursery: trio.Nursery,
    start_ours: OursFactory,
    step: tuple[str, ...],
    timeouts: dict[str, float],
    during: str,
) -> None:
    mx = await start_mx(nursery, step, ("ok",))
    ours = await start_ours(mx, timeouts=attrs.evolve(RELAXED, **timeouts))
    relay = f"127.0.0.1[127.0.0.1]:{mx.port}"
    qid = ours.enqueue("slow")
    recipient = await ours.attempt(qid, previous=0)
    assert recipient is not None
    assert recipient.last_reason == f"{relay}: conversation timed out while {during}"
    assert recipient.next_attempt == T0 + MINIMAL
    assert f"({relay}: conversation timed out while {during}; retry in 5m)" in mailq(ours)
    assert (
        f"status=deferred ({relay}: conversation timed out while {during})"
        in (ours.deferred_lines(qid)[0])
    )
    ours.clock.now = recipient.next_attempt
    assert await ours.attempt(qid, previous=1) is None
    # Only a silence after the "." leaves the remote with a copy before the retry's.
    expected = 2 if "end of data" in during else 1
    assert mx.received == {"<slow@example.test>": expected}
    assert mx.accepted == {"<slow@example.test>": 1}


# -- TLS -------------------------------------------------------------------------------------


HANDSHAKE_FAILURES = ["tls-garbage", "tls-abort", "tls-silent"]
#: The handshake's own timeout short, for "tls-silent".
HANDSHAKE_TIMEOUTS = attrs.evolve(RELAXED, starttls=SHORT)


@pytest.mark.parametrize("mode", HANDSHAKE_FAILURES)
async def test_a_failed_handshake_at_may_goes_on_in_plaintext_at_once(
    nursery: trio.Nursery, start_ours: OursFactory, mode: str
) -> None:
    # Postfix's smtp_tls_security_level = may: the same address again, without TLS,
    # in the same attempt (smtp_connect.c, "try the same address again, with TLS
    # disabled"); with SASL credentials it would not.
    mx = await start_mx(nursery, (mode, "ok"), ("ok",))
    ours = await start_ours(mx, delivery='tls = "may"', timeouts=HANDSHAKE_TIMEOUTS)
    qid = ours.enqueue("fallback")
    assert await ours.attempt(qid, previous=0) is None
    assert mx.connections == 2
    assert mx.received == {"<fallback@example.test>": 1}
    sent = [r.getMessage() for r in ours.log.records if "status=sent" in r.getMessage()]
    assert len(sent) == 1
    assert "tls=none" in sent[0]


@pytest.mark.parametrize("mode", HANDSHAKE_FAILURES)
async def test_a_failed_handshake_at_encrypt_defers(
    nursery: trio.Nursery, start_ours: OursFactory, mode: str
) -> None:
    mx = await start_mx(nursery, (mode, "ok"))
    ours = await start_ours(mx, delivery='tls = "encrypt"', timeouts=HANDSHAKE_TIMEOUTS)
    relay = f"127.0.0.1[127.0.0.1]:{mx.port}"
    qid = ours.enqueue("mandatory")
    recipient = await ours.attempt(qid, previous=0)
    assert recipient is not None
    failure = "handshake timed out" if mode == "tls-silent" else "handshake failure"
    assert recipient.last_reason.startswith(f"{relay}: Cannot start TLS: {failure}")
    assert recipient.next_attempt == T0 + MINIMAL
    assert mx.connections == 1  # no plaintext retry
    assert not mx.received
    assert "status=deferred" in ours.deferred_lines(qid)[0]
    assert f"({relay}: Cannot start TLS: {failure}" in mailq(ours)


@pytest.fixture
def untrusted_cert(tmp_path: pathlib.Path) -> ssl.SSLContext:
    """The server's certificate, for 127.0.0.1, from a CA our side does not trust."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    return context


async def test_an_untrusted_certificate_defers_at_verify(
    nursery: trio.Nursery,
    start_ours: OursFactory,
    tmp_path: pathlib.Path,
    untrusted_cert: ssl.SSLContext,
) -> None:
    ours_ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ours_ca.cert_pem.write_to_path(str(ca_file))
    mx = await start_mx(nursery, ("tls", "ok"), tls_context=untrusted_cert)
    ours = await start_ours(mx, delivery=f'tls = "verify"\ntls_ca_file = "{ca_file}"')
    relay = f"127.0.0.1[127.0.0.1]:{mx.port}"
    qid = ours.enqueue("verified")
    recipient = await ours.attempt(qid, previous=0)
    assert recipient is not None
    assert recipient.last_reason.startswith(
        f"{relay}: Cannot start TLS: server certificate not verified ("
    )
    assert recipient.next_attempt == T0 + MINIMAL
    assert mx.connections == 1  # "verify" never falls back to plaintext
    assert not mx.received
    assert "status=deferred" in ours.deferred_lines(qid)[0]


@pytest.mark.parametrize("level", ["may", "encrypt"])
async def test_an_untrusted_certificate_is_used_at_may_and_encrypt(
    nursery: trio.Nursery, start_ours: OursFactory, untrusted_cert: ssl.SSLContext, level: str
) -> None:
    # RFC 7435: opportunistic TLS checks no certificate (an MX name from unsigned DNS
    # proves nothing); it still encrypts. Postfix's "encrypt" checks none either.
    mx = await start_mx(nursery, ("tls", "ok"), tls_context=untrusted_cert)
    ours = await start_ours(mx, delivery=f'tls = "{level}"')
    qid = ours.enqueue("opportunistic")
    assert await ours.attempt(qid, previous=0) is None
    assert mx.received == {"<opportunistic@example.test>": 1}
    sent = [r.getMessage() for r in ours.log.records if "status=sent" in r.getMessage()]
    assert "tls=TLSv1.3" in sent[0]


# -- DNS -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "why"), [("drop", "no answer within 0.5s"), ("servfail", "SERVFAIL")]
)
@pytest.mark.parametrize(
    ("name", "rdtype", "dsn"),
    # The MX lookup defers at once (RFC 3463 X.4.3, directory server failure); the
    # MX host's address lookup leaves the host for the next, and with none left, the
    # deferral keeps its reason (X.4.1, no answer from host).
    [("mx.test", "MX", "4.4.3"), ("mx1.mx.test", "A", "4.4.1")],
)
async def test_a_lookup_that_fails_defers_until_the_dns_answers(
    nursery: trio.Nursery,
    start_ours: OursFactory,
    dns: DNSServer,
    failure: str,
    why: str,
    name: str,
    rdtype: str,
    dsn: str,
) -> None:
    mx = await start_mx(nursery, ("ok",))
    ours = await start_ours(mx, dns_timeout=0.5)
    dns.fail(name, failure, rdtype=rdtype)  # type: ignore[arg-type]
    qid = ours.enqueue("lookup", to="carol@mx.test")
    recipient = await ours.attempt(qid, previous=0)
    assert recipient is not None
    reason = (
        f"Host or domain name not found. Name service error for name={name} type={rdtype}: "
        "Host not found, try again ("
    )
    assert recipient.last_reason.startswith(reason)
    assert why in recipient.last_reason
    assert recipient.next_attempt == T0 + MINIMAL
    assert f"({reason}" in mailq(ours)
    (line,) = ours.deferred_lines(qid)
    assert "relay=none" in line
    assert f"dsn={dsn}" in line
    assert f"status=deferred ({reason}" in line
    assert mx.connections == 0
    dns.heal(name)
    ours.clock.now = recipient.next_attempt
    assert await ours.attempt(qid, previous=1) is None
    assert mx.received == {"<lookup@example.test>": 1}
