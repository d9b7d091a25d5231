"""The Inquirer: one stage's inquiries at once (DNS lookups against the tests' server on
127.0.0.1, errands in worker threads, conversations over loopback), the streams it keeps
per address, and what it does with a peer that is down, silent or hangs up."""

from __future__ import annotations

import ipaddress
import logging
import pathlib
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import trio
from dns_server import DNSServer, dns_server_fixture  # noqa: F401  (fixture)
from libmilter_server import LibMilter, libmilter_fixture  # noqa: F401  (fixture)

from sansmail.mail.dnsquery import DnsAnswer, DnsCheck, DnsQuery, DnsStatus, ask
from sansmail.mail.iprev import IprevVerdict, check_iprev
from sansmail.sessions.smtpd import Stage
from sansmail.sessions.smtpd._checks import Errand, Lookup
from sansmail.sessions.smtpd._milters import MilterCheck
from sansmail_trio import _inquiry
from sansmail_trio._dns import Resolver, run_check
from sansmail_trio._inquiry import Inquirer

MAIN = threading.get_ident()


@pytest.fixture
def resolver(dns_server: DNSServer) -> Resolver:
    return Resolver([dns_server.address], timeout=2.0)


def collect() -> tuple[list[Any], Callable[[Any], None]]:
    found: list[Any] = []
    return found, found.append


class LineConversation:
    """A toy conversation: sends "PING n" lines and waits for "PONG n" for each."""

    def __init__(
        self, address: object, pings: int = 2, *, timeout: float = 10.0, name: str = "toy"
    ) -> None:
        self.source = f"toy {name}"
        self.address = address
        self.timeout = timeout
        self.pings = pings
        self.sent = 0
        self.received = b""
        self.failure: str | None = None
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def data_to_send(self) -> bytes:
        if self.sent == self.pings:
            self._done = True
            return b""
        self.sent += 1
        return b"PING %d\n" % self.sent

    def receive_data(self, data: bytes) -> None:
        # Deliberately not done on EOF: the Inquirer must notice a peer that hung up.
        self.received += data

    def failed(self, reason: str) -> None:
        self.failure = reason
        self._done = True

    def close_data(self) -> bytes:
        return b"BYE\n"


class ToyServer:
    """Answers "PING n" with "PONG n" (or not at all, or by hanging up) and records
    the lines of each connection."""

    def __init__(self, mode: str = "answer") -> None:
        self.mode = mode
        self.connections: list[list[bytes]] = []
        self.address: tuple[str, int] = ("", 0)

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), self.handle, 0)
        host, port = listeners[0].socket.getsockname()[:2]
        self.address = (host, port)

    async def handle(self, stream: trio.SocketStream) -> None:
        lines: list[bytes] = []
        self.connections.append(lines)
        buffer = b""
        async with stream:
            while data := await stream.receive_some(1024):
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    lines.append(line)
                    if self.mode == "hangup":
                        return
                    if self.mode == "answer" and line.startswith(b"PING"):
                        await stream.send_all(line.replace(b"PING", b"PONG") + b"\n")


# --- lookups and errands -----------------------------------------------------------------


async def test_one_stage_runs_lookups_and_an_errand_at_once(dns_server, resolver):
    dns_server.add("7.0.0.127.in-addr.arpa", "PTR", "mx.sender.test.")
    dns_server.add("mx.sender.test", "A", "127.0.0.7")
    dns_server.add("mx.sender.test", "TXT", '"v=spf1 -all"')
    # Held until both are asked: only two lookups at once get their answers.
    dns_server.hold("both.test", ["A", "TXT"])
    dns_server.add("both.test", "A", "127.0.0.1")
    dns_server.add("both.test", "TXT", '"x"')
    iprev, deliver_iprev = collect()
    first, deliver_first = collect()
    second, deliver_second = collect()
    errands: list[int] = []
    inquiries = [
        Lookup("iprev", check_iprev(ipaddress.ip_address("127.0.0.7")), deliver_iprev),
        Lookup("a", ask(DnsQuery("both.test", "A")), deliver_first),
        Lookup("txt", ask(DnsQuery("both.test", "TXT")), deliver_second),
        Errand("errand", lambda: errands.append(threading.get_ident())),
    ]
    inquirer = Inquirer(resolver, dns_timeout=2.0)
    await inquirer.run(inquiries)
    assert iprev[0].verdict is IprevVerdict.PASS
    assert first == [(DnsAnswer(DnsStatus.OK, ["127.0.0.1"]),)]
    assert second == [(DnsAnswer(DnsStatus.OK, ["x"]),)]
    assert len(errands) == 1
    assert errands[0] != MAIN  # a worker thread
    await inquirer.aclose()


def stepping(threads: list[int]) -> DnsCheck[str]:
    """A check that notes the thread of each of its steps."""
    threads.append(threading.get_ident())
    answers = yield (DnsQuery("mx.sender.test", "A"),)
    threads.append(threading.get_ident())
    return answers[0].records[0]


@pytest.mark.parametrize("heavy", [False, True])
async def test_a_heavy_check_steps_in_a_worker_thread(dns_server, resolver, heavy):
    dns_server.add("mx.sender.test", "A", "127.0.0.7")
    threads: list[int] = []
    found, deliver = collect()
    await Inquirer(resolver).run([Lookup("heavy", stepping(threads), deliver, heavy=heavy)])
    assert found == ["127.0.0.7"]
    assert len(threads) == 2
    assert all((t != MAIN) is heavy for t in threads)


async def test_run_check_heavy_returns_what_the_check_returns(dns_server, resolver):
    dns_server.add("mx.sender.test", "A", "127.0.0.7")
    assert await run_check(stepping([]), resolver, heavy=True) == "127.0.0.7"


def endless() -> DnsCheck[str]:
    """A check that never stops asking (a bug): only the Inquirer's deadline ends it."""
    while True:
        yield (DnsQuery("mx.sender.test", "A"),)


async def test_a_lookup_that_never_ends_gets_none(dns_server, resolver, monkeypatch):
    dns_server.add("mx.sender.test", "A", "127.0.0.7")
    monkeypatch.setattr(_inquiry, "LOOKUP_GRACE", 0.0)
    found, deliver = collect()
    inquirer = Inquirer(resolver, dns_timeout=0.2)
    await inquirer.run([Lookup("endless", endless(), deliver)])
    assert found == [None]


async def test_without_a_resolver_a_lookup_gets_none():
    found, deliver = collect()
    await Inquirer(None).run([Lookup("dns", ask(DnsQuery("a.test", "A")), deliver)])
    assert found == [None]


async def test_nothing_to_do_is_done_at_once():
    await Inquirer(None).run([])


# --- conversations -------------------------------------------------------------------------


async def test_a_conversation_keeps_its_stream_for_the_session(nursery):
    server = ToyServer()
    await server.start(nursery)
    inquirer = Inquirer(None)
    first = LineConversation(server.address)
    await inquirer.run([first])
    assert (first.failure, first.received) == (None, b"PONG 1\nPONG 2\n")
    second = LineConversation(server.address, pings=1)
    await inquirer.run([second])
    assert second.received == b"PONG 1\n"
    await inquirer.aclose()
    with trio.fail_after(10):
        while server.connections[-1][-1:] != [b"BYE"]:
            await trio.sleep(0.01)
    # One connection, and the last conversation's close_data before closing it.
    assert server.connections == [[b"PING 1", b"PING 2", b"PING 1", b"BYE"]]


async def test_conversations_with_one_address_take_turns(nursery):
    server = ToyServer()
    await server.start(nursery)
    inquirer = Inquirer(None)
    one, two = LineConversation(server.address, 3), LineConversation(server.address, 3)
    await inquirer.run([one, two])
    assert one.received == two.received == b"PONG 1\nPONG 2\nPONG 3\n"
    assert len(server.connections) == 1
    await inquirer.aclose()


async def test_a_peer_that_is_down_fails_the_conversation():
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        address = sock.getsockname()[:2]  # nobody listens there once it is closed
    lines: list[tuple[int, str]] = []
    inquirer = Inquirer(None, log=lambda level, text: lines.append((level, text)))
    conversation = LineConversation(address)
    await inquirer.run([conversation])
    assert conversation.failure == "cannot connect: Connection refused"
    assert lines == [(logging.WARNING, f"toy toy: {conversation.failure}")]
    await inquirer.aclose()


async def test_a_silent_peer_times_out_and_the_next_conversation_reconnects(nursery):
    server = ToyServer("silent")
    await server.start(nursery)
    inquirer = Inquirer(None)
    conversation = LineConversation(server.address, timeout=0.2)
    await inquirer.run([conversation])
    assert conversation.failure == "no answer within 0.2s"
    server.mode = "answer"
    again = LineConversation(server.address, pings=1)
    await inquirer.run([again])
    assert again.received == b"PONG 1\n"
    assert len(server.connections) == 2
    await inquirer.aclose()


async def test_a_peer_that_hangs_up_fails_the_conversation(nursery):
    server = ToyServer("hangup")
    await server.start(nursery)
    inquirer = Inquirer(None)
    conversation = LineConversation(server.address)
    await inquirer.run([conversation])
    assert conversation.failure == "the peer closed the connection"
    await inquirer.aclose()


async def test_a_unix_socket_peer(tmp_path: pathlib.Path):
    path = tmp_path / "toy.sock"
    server = ToyServer()

    async with trio.open_nursery() as nursery:
        sock = trio.socket.socket(trio.socket.AF_UNIX)
        await sock.bind(str(path))
        sock.listen()
        listener = trio.SocketListener(sock)
        nursery.start_soon(trio.serve_listeners, server.handle, [listener])
        inquirer = Inquirer(None)
        conversation = LineConversation(path, pings=1)
        await inquirer.run([conversation])
        assert conversation.received == b"PONG 1\n"
        await inquirer.aclose()
        nursery.cancel_scope.cancel()


# --- milters -----------------------------------------------------------------------------


class View:
    """The least of a session a MilterCheck needs at CONNECT."""

    client_ip = "192.0.2.7"
    client_name = None
    helo = ""
    user = None
    tls = None
    transaction = None
    trusted = False

    def __init__(self) -> None:
        self.findings: dict[str, Any] = {}


async def test_a_milter_conversation_and_its_goodbye(libmilter: LibMilter) -> None:
    check = MilterCheck(address=libmilter.address)
    view = View()
    inquirer = Inquirer(None)
    await inquirer.run(check.inquiries(Stage.CONNECT, view, None))
    assert check.check(Stage.CONNECT, view) is None
    await inquirer.aclose()
    with trio.fail_after(10):
        while "close" not in libmilter.names():
            await trio.sleep(0.01)
    assert libmilter.names() == ["connect", "close"]


@pytest.mark.parametrize("default_action", ["tempfail", "accept"])
async def test_a_milter_that_is_down(default_action: str) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        address = sock.getsockname()[:2]
    check = MilterCheck(address=address, default_action=default_action)
    view = View()
    lines: list[tuple[int, str]] = []
    inquirer = Inquirer(None, log=lambda level, text: lines.append((level, text)))
    await inquirer.run(check.inquiries(Stage.CONNECT, view, None))
    verdict = check.check(Stage.CONNECT, view)
    if default_action == "accept":
        assert verdict is None
    else:
        assert (verdict.reply.code, verdict.reply.enhanced) == (421, "4.7.1")
        assert "cannot connect" in verdict.source
    [(level, text)] = lines
    assert level == logging.WARNING
    assert text == f"milter inet:127.0.0.1:{address[1]}: cannot connect: Connection refused"
    await inquirer.aclose()


async def test_a_milter_that_never_answers(nursery) -> None:
    server = ToyServer("silent")
    await server.start(nursery)
    check = MilterCheck(address=server.address, command_timeout=0.2)
    view = View()
    inquirer = Inquirer(None)
    await inquirer.run(check.inquiries(Stage.CONNECT, view, None))
    verdict = check.check(Stage.CONNECT, view)
    assert verdict.reply.code == 421
    assert verdict.source.endswith("(no answer within 0.2s)")
    await inquirer.aclose()
