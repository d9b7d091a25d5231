"""A small mail network on loopback for outbound delivery tests.

* `Sink`: aiosmtpd (a server nobody here wrote) on 127.0.0.x, whose answers a test
  scripts per recipient and per attempt, recording what it received.
* `start_sansmail`: a sansmail server in the test's Trio loop from a TOML text, so a
  test can run two of them (ours and the "remote" one).

Every remote host of a test listens on the same port at a different 127.0.0.x address,
because an MX record has no port: `[delivery] smtp_port` points our server at it.
"""

from __future__ import annotations

import email
import pathlib
import socket
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio
from aiosmtpd.controller import Controller

from sansmail.address import parse_address
from sansmail.config import Config, load_config
from sansmail.queue import QueuedMessage, QueueStore
from sansmail.users import UserStore
from sansmail_trio import serve


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@attrs.define
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.sink.rcpt_options.append(options)
        answer = self.sink.rcpt_answer(address)
        if answer.startswith("250"):
            envelope.rcpt_tos.append(address)
        return answer

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        answer = self.sink.data_answer()
        if answer.startswith("250"):
            self.sink.received.append(
                Received(
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    content=envelope.original_content,
                )
            )
        return answer


class Sink:
    """aiosmtpd on `host`:`port`. `rcpt` maps a recipient to the list of answers it gets
    at successive attempts (the last one repeats); `data` likewise for the end of DATA."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        rcpt: dict[str, list[str]] | None = None,
        data: list[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.rcpt = rcpt or {}
        self.data = data or ["250 2.0.0 OK"]
        self.received: list[Received] = []
        self.rcpt_options: list[list[str]] = []
        self._rcpt_seen: dict[str, int] = {}
        self._data_seen = 0
        self.controller = Controller(_Handler(self), hostname=host, port=port)

    def rcpt_answer(self, address: str) -> str:
        answers = self.rcpt.get(address.lower(), ["250 2.1.5 OK"])
        n = self._rcpt_seen.get(address.lower(), 0)
        self._rcpt_seen[address.lower()] = n + 1
        return answers[min(n, len(answers) - 1)]

    def data_answer(self) -> str:
        n = self._data_seen
        self._data_seen += 1
        return self.data[min(n, len(self.data) - 1)]

    def __enter__(self) -> Sink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@attrs.define
class Server:
    config: Config
    bound: dict[str, list[tuple[str, int]]]
    shutdown: trio.Event
    done: trio.Event

    def port(self, service: str = "smtp") -> int:
        return self.bound[service][0][1]

    @property
    def data_dir(self) -> pathlib.Path:
        return self.config.data_dir

    def messages(self, address: str) -> list[bytes]:
        local, _, domain = address.rpartition("@")
        new = self.data_dir / "mail" / domain / local.lower() / "new"
        if not new.exists():
            return []
        return [p.read_bytes() for p in sorted(new.iterdir())]

    def queued(self) -> list[QueuedMessage]:
        return QueueStore(self.data_dir / "queue").list()

    async def stop(self) -> None:
        self.shutdown.set()
        await self.done.wait()


async def start_sansmail(
    nursery: trio.Nursery, folder: pathlib.Path, toml: str, users: tuple[str, ...] = ()
) -> Server:
    """Start a server from `toml` in `folder`, with `users` (password "secret") made
    before it starts."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sansmail.toml"
    path.write_text(toml)
    config = load_config(path, default_hostname="unused.test")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = UserStore(config.data_dir / "users.json")
    for address in users:
        store.add(parse_address(address), "secret")
    shutdown, done = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve(config, shutdown=shutdown, task_status=task_status)
        finally:
            done.set()

    bound = await nursery.start(run)
    return Server(config=config, bound=dict(bound), shutdown=shutdown, done=done)


async def wait_for(
    condition: Callable[[], Any], *, timeout: float = 15.0, what: str = "condition"
) -> Any:
    """Poll `condition` (run in a thread: it reads files) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await trio.to_thread.run_sync(condition)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await trio.sleep(0.05)


def parse(message: bytes) -> email.message.Message:
    return email.message_from_bytes(message)
