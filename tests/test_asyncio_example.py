"""The asyncio example serves SMTP and POP3 through the same sessions as the Trio server:
the same cases, run against both, with smtplib and poplib, must give the same answers and
leave the same files."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import pathlib
import poplib
import smtplib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio
from argon2 import PasswordHasher

from sansmail.config import Config, load_config
from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore
from sansmail_trio import serve

EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "asyncio_server.py"
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
MESSAGE = b"From: a@example.org\r\nSubject: hello\r\n\r\nbody line\r\n.dotted\r\n"  # smtplib stuffs


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("asyncio_server", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_imports_nothing_from_the_trio_adapter() -> None:
    source = EXAMPLE.read_text()
    assert "sansmail_trio" not in source.replace("`sansmail_trio", "")
    assert "import trio" not in source


class Running:
    def __init__(self, config: Config, ports: dict[str, int]) -> None:
        self.config = config
        self.smtp = ports["smtp"]
        self.pop3 = ports["pop3"]

    def maildir(self, local: str) -> pathlib.Path:
        return self.config.data_dir / "mail" / "example.test" / local

    def files(self, local: str, sub: str = "new") -> list[pathlib.Path]:
        folder = self.maildir(local) / sub
        return sorted(folder.iterdir()) if folder.exists() else []

    def queued(self) -> list[pathlib.Path]:
        return sorted((self.config.data_dir / "queue").glob("*.env"))


def _run_in_thread(
    target: Callable[[dict[str, Any]], None],
) -> tuple[threading.Thread, dict[str, Any]]:
    control: dict[str, Any] = {"ready": threading.Event()}
    thread = threading.Thread(target=target, args=(control,), daemon=True)
    thread.start()
    assert control["ready"].wait(20), "server did not start"
    return thread, control


@contextlib.contextmanager
def asyncio_server(config: Config) -> Iterator[dict[str, int]]:
    example = load_example()

    def run(control: dict[str, Any]) -> None:
        async def main() -> None:
            control["loop"] = asyncio.get_running_loop()
            started = asyncio.Event()
            task = asyncio.create_task(example.serve(config, started=started))
            control["task"] = task
            await started.wait()
            control["ready"].set()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run(main())

    thread, control = _run_in_thread(run)
    try:
        yield {name: port for name, [(_host, port)] in config.listen.items()}
    finally:
        control["loop"].call_soon_threadsafe(control["task"].cancel)
        thread.join(10)


@contextlib.asynccontextmanager
async def trio_server(config: Config) -> AsyncIterator[dict[str, int]]:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            lambda task_status: serve(config, shutdown=shutdown, task_status=task_status)
        )
        try:
            yield {name: addresses[0][1] for name, addresses in bound.items()}
        finally:
            shutdown.set()


@contextlib.asynccontextmanager
async def asyncio_server_async(config: Config) -> AsyncIterator[dict[str, int]]:
    with asyncio_server(config) as ports:
        yield ports


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(params=["trio", "asyncio"])
async def server(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Running]:
    (tmp_path / "aliases").write_text("info: alice\n")
    # Loopback is not a trusted network here, so the relay policy is tested too.
    (tmp_path / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\n'
        'domains = ["example.test"]\n'
        'data_dir = "data"\n'
        'aliases = "aliases"\n'
        'mynetworks = ["192.0.2.0/24"]\n'
        "[listen]\n"
        f'smtp = "127.0.0.1:{_free_port()}"\n'
        f'pop3 = "127.0.0.1:{_free_port()}"\n'
        "[dns]\n"
        'nameservers = ["127.0.0.1:9"]\n'
        # The example runs no sender checks (it would need an inquirer of its own);
        # the Trio server must answer the same, and its DNS here goes nowhere.
        "[antispam]\n"
        'spf = "off"\ndkim = "off"\ndmarc = "off"\n'
    )
    config = load_config(tmp_path / "sansmail.toml", default_hostname="unused.test")
    config.data_dir.mkdir(parents=True)
    UserStore(config.data_dir / "users.json", hasher=FAST).add(
        parse_address("alice@example.test"), "secret"
    )
    start = trio_server if request.param == "trio" else asyncio_server_async
    async with start(config) as ports:
        yield Running(config, ports)


def in_thread(test: Callable[[Running], None]) -> Callable[[Running], Awaitable[None]]:
    """The clients are blocking (smtplib, poplib): run the case off the event loop."""

    @functools.wraps(test)
    async def run(server: Running) -> None:
        await trio.to_thread.run_sync(test, server)

    return run


@in_thread
def test_local_delivery_is_on_disk_and_read_back_over_pop3(server: Running) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp, timeout=10) as client:
        assert client.sendmail("a@example.org", ["alice@example.test"], MESSAGE) == {}
    [stored] = server.files("alice")
    content = stored.read_bytes()
    assert content.startswith(b"Return-Path: <a@example.org>\nReceived: from ")
    assert content.endswith(b"\n\nbody line\n.dotted\n")

    pop = poplib.POP3("127.0.0.1", server.pop3, timeout=10)
    pop.user("alice@example.test")
    pop.pass_("secret")
    assert pop.stat()[0] == 1
    size = int(pop.list()[1][0].split()[1])
    _, lines, octets = pop.retr(1)
    assert lines[-2:] == [b"body line", b".dotted"]
    assert octets == size == len(content.replace(b"\n", b"\r\n"))
    pop.dele(1)
    pop.quit()
    assert server.files("alice") == []
    assert server.files("alice", "cur") == []


@in_thread
def test_retrieved_mail_is_marked_seen_at_quit(server: Running) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp, timeout=10) as client:
        client.sendmail("a@example.org", ["alice@example.test"], MESSAGE)
    pop = poplib.POP3("127.0.0.1", server.pop3, timeout=10)
    pop.user("alice@example.test")
    pop.pass_("secret")
    pop.retr(1)
    pop.quit()
    [seen] = server.files("alice", "cur")
    assert seen.name.endswith(":2,S")


@in_thread
def test_unknown_user_relay_and_aliases(server: Running) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp, timeout=10) as client:
        client.ehlo("client.example")
        client.mail("a@example.org")
        assert client.rcpt("nobody@example.test")[0] == 550
        code, text = client.rcpt("someone@far.test")
        assert (code, text[:5]) == (554, b"5.7.1")
        assert client.rcpt("info@example.test")[0] == 250
        assert client.data(MESSAGE)[0] == 250
    assert len(server.files("alice")) == 1
    assert server.queued() == []


@in_thread
def test_pop3_refuses_commands_out_of_state_and_bad_passwords(server: Running) -> None:
    pop = poplib.POP3("127.0.0.1", server.pop3, timeout=10)
    with pytest.raises(poplib.error_proto, match="-ERR"):
        pop.stat()
    pop.user("alice@example.test")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
        pop.pass_("wrong")
    pop.quit()


@in_thread
def test_smtp_protocol_errors_get_replies(server: Running) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp, timeout=10) as client:
        assert client.docmd("RCPT TO:<alice@example.test>")[0] == 503
        assert client.docmd("FROB")[0] == 500
        assert client.noop()[0] == 250
