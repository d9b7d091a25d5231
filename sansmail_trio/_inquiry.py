"""`Inquirer`: carries out the inquiries of an SMTP session's checks before each stage
(`sansmail.sessions.smtpd.Inquiring`): DNS lookups, milter conversations, blocking
errands. It decides nothing about mail; it moves bytes and owns time and threads.

Theory of operation
-------------------
One `Inquirer` per SMTP session. `run(inquiries)` carries out one stage's inquiries at
once, one task each, and returns when all are done:

- `Lookup`: `_dns.run_check` drives the DNS check through the resolver, its questions
  asked concurrently under one deadline (past it they get TIMEOUT answers, and the check
  returns its own temporary failure); `deliver(result)`, or `deliver(None)` when no
  resolver is configured or the check still runs `LOOKUP_GRACE` past its deadline (a
  check that never stops asking). A heavy check (DKIM's body hash) runs its steps in a
  worker thread, where a step once begun is let finish.
- `Errand`: `run` in a worker thread.
- `Conversation`: over a stream kept per `address` for the session's life (("host",
  port): TCP; a path: a Unix socket), opened on first use within the conversation's
  `connect_timeout` (or the Inquirer's). The loop writes `data_to_send()`, and while the
  conversation is not `done` reads once and feeds `receive_data`; each write-and-read
  round is bounded by the conversation's `timeout`, so a milter's PROGRESS (a reply that
  is not the last) keeps it going, as Postfix's per-read timeouts do. A failed connect,
  a timeout, a reset or EOF is reported with `failed(reason)` (logged as a warning, like
  Postfix's "milter ...: can't read" lines), and the stream is closed and forgotten. Two
  conversations with one address never overlap: a lock per address keeps their bytes
  apart.

`aclose()` ends the session's conversations: to each stream it writes the last
conversation's `close_data()` when it has one (a milter's ABORT and QUIT), then closes,
all within a short shielded grace so that it runs during cancellation too.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, runtime_checkable

import attrs
import trio

from sansmail.sessions.smtpd._checks import Conversation, Errand, Inquiry, Lookup
from sansmail_trio._dns import Resolver, run_check

__all__ = ["CLOSE_GRACE", "Closing", "Inquirer"]

#: How long `aclose` may spend saying goodbye to each peer.
CLOSE_GRACE: Final = 2.0
#: Most bytes read from a peer at once (a milter packet is at most 64 KiB + a little).
RECEIVE_SIZE: Final = 65536
#: Past the Lookup's own deadline (its questions then get TIMEOUT answers), the time its
#: remaining computation has before the Inquirer gives up on it and delivers None.
LOOKUP_GRACE: Final = 5.0


@runtime_checkable
class Closing(Protocol):
    """A conversation that has something to say before its stream is closed."""

    def close_data(self) -> bytes: ...


class _PeerError(Exception):
    pass


@attrs.define
class _Link:
    lock: trio.Lock = attrs.Factory(trio.Lock)
    stream: trio.abc.Stream | None = None
    last: Conversation | None = None


class Inquirer:
    """The inquiries of one SMTP session (see the module docstring).

    Args:
        resolver: for Lookups; None when no DNS check is configured (a Lookup then gets
            None at once).
        dns_timeout: the deadline of one Lookup's DNS questions, all rounds together.
        connect_timeout: to open a conversation's stream, unless the conversation has
            its own `connect_timeout`.
        log: where failures go, ``(level, text)``; None: not logged.
    """

    def __init__(
        self,
        resolver: Resolver | None,
        *,
        dns_timeout: float = 20.0,
        connect_timeout: float = 30.0,
        log: Callable[[int, str], None] | None = None,
    ) -> None:
        self._resolver = resolver
        self._dns_timeout = dns_timeout
        self._connect_timeout = connect_timeout
        self._log = log
        self._links: dict[object, _Link] = {}

    async def run(self, inquiries: Sequence[Inquiry]) -> None:
        """Carry out one stage's inquiries, concurrently; return when all are done."""
        if not inquiries:
            return
        if len(inquiries) == 1:
            await self._one(inquiries[0])
            return
        async with trio.open_nursery() as nursery:
            for inquiry in inquiries:
                nursery.start_soon(self._one, inquiry)

    async def aclose(self) -> None:
        """Say goodbye on every stream kept (`Closing.close_data`), then close them."""
        links, self._links = self._links, {}
        for link in links.values():
            stream, last = link.stream, link.last
            if stream is None:
                continue
            with trio.move_on_after(CLOSE_GRACE, shield=True) as scope:
                data = last.close_data() if isinstance(last, Closing) else b""
                try:
                    if data:
                        await stream.send_all(data)
                    await stream.aclose()
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            if scope.cancelled_caught:
                await trio.aclose_forcefully(stream)

    # -- each kind ------------------------------------------------------------------------

    async def _one(self, inquiry: Inquiry) -> None:
        if isinstance(inquiry, Lookup):
            await self._lookup(inquiry)
        elif isinstance(inquiry, Errand):
            await trio.to_thread.run_sync(inquiry.run)
        else:
            await self._converse(inquiry)

    async def _lookup(self, lookup: Lookup) -> None:
        resolver = self._resolver
        if resolver is None:
            lookup.deliver(None)
            return
        result: Any = None
        with trio.move_on_after(self._dns_timeout + LOOKUP_GRACE):
            result = await run_check(
                lookup.check, resolver, timeout=self._dns_timeout, heavy=lookup.heavy
            )
        lookup.deliver(result)

    async def _converse(self, conversation: Conversation) -> None:
        address = conversation.address
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = _Link()
        async with link.lock:
            try:
                if link.stream is None:
                    link.stream = await self._connect(conversation)
                link.last = conversation
                await _exchange(link.stream, conversation)
            except _PeerError as error:
                reason = str(error)
                if self._log is not None:
                    self._log(logging.WARNING, f"{conversation.source}: {reason}")
                conversation.failed(reason)
                if self._links.get(address) is link:
                    del self._links[address]
                if link.stream is not None:
                    await trio.aclose_forcefully(link.stream)
                    link.stream = None

    async def _connect(self, conversation: Conversation) -> trio.abc.Stream:
        address = conversation.address
        timeout = getattr(conversation, "connect_timeout", self._connect_timeout)
        stream: trio.abc.Stream | None = None
        try:
            with trio.move_on_after(timeout):
                if isinstance(address, tuple):
                    host, port = address
                    stream = await trio.open_tcp_stream(host, port)
                elif isinstance(address, str | pathlib.Path):
                    stream = await trio.open_unix_socket(os.fspath(address))
                else:
                    raise TypeError(f"not an address: {address!r}")
        except OSError as exc:
            raise _PeerError(f"cannot connect: {_why(exc)}") from None
        if stream is None:
            raise _PeerError(f"cannot connect: timed out after {timeout:g}s")
        return stream


async def _exchange(stream: trio.abc.Stream, conversation: Conversation) -> None:
    """Write and read until the conversation is done (see the module docstring)."""
    while not conversation.done:
        data = conversation.data_to_send()
        owed = not conversation.done  # else nothing more will come
        try:
            with trio.fail_after(conversation.timeout):
                if data:
                    await stream.send_all(data)
                if not owed:
                    return
                received = bytes(await stream.receive_some(RECEIVE_SIZE))
        except trio.TooSlowError:
            raise _PeerError(f"no answer within {conversation.timeout:g}s") from None
        except (OSError, trio.BrokenResourceError) as exc:
            raise _PeerError(f"connection lost: {_why(exc)}") from None
        conversation.receive_data(received)
        if not received and not conversation.done:
            raise _PeerError("the peer closed the connection")


def _why(exc: BaseException) -> str:
    """The system's words for a failure: trio wraps them (BrokenResourceError around
    the OSError; open_tcp_stream's "all attempts failed" around a group of them)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
        if isinstance(cause, BaseExceptionGroup):
            cause = cause.exceptions[0]
        else:
            cause = cause.__cause__
    return str(exc) or type(exc).__name__
