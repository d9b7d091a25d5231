"""Outbound SMTP connections for the queue runner: TCP, STARTTLS, and a connection cache.

Theory of operation
-------------------
`SMTPClient.deliver` runs one transaction for the queue runner: it takes the
`sansmail.mail.delivery.Connect` step that says where (address, port, TLS level, whose
certificate name to check, whether to AUTH), drives a
`sansmail.mail.outbound.OutboundSession` over the connection (moving its bytes, doing the
TLS handshake it asks for, keeping RFC 5321 §4.5.3.2's timeouts), and reports how it
ended as a `sansmail.mail.delivery.Conversation`, built by that module's functions: what
an ending means is decided there, not here.

Connections are reused: after a transaction the connection waits up to
`CACHE_TIME_LIMIT` for the next message to the same address, port and TLS level
(Postfix's connection cache), so a backlog for one destination costs one TCP and TLS
handshake per connection, not per message. The queue runner hands each delivery agent
a batch of messages for one domain, which it delivers one transaction after the other:
each takes the connection the one before put back, at once. A cached connection that
turns out dead is replaced by a fresh one at once, without counting as a failed attempt.
`run` closes idle connections (with a QUIT, as a courtesy) and, when cancelled, all of
them.

Time is this file's: each step of a conversation gets the timeout its action carries
(`sansmail.mail.outbound.ClientTimeouts`, given to `SMTPClient`; the TCP connect's too),
and when one fires, or the connection breaks, the session is told (`timed_out`,
`connection_lost`) and says what it was doing, so the deferral reads "conversation
timed out while receiving the initial server greeting" or "lost connection while
sending end of data -- message may be sent more than once" (RFC 1047's window).
A failed TLS handshake reads "Cannot start TLS: handshake failure (OpenSSL's reason)"
or "... server certificate not verified (...)".

MTA-STS (RFC 8461) is decided by the walk (`sansmail.mail.delivery`): under a policy in
enforce mode its `Connect` steps are at level ``verify``. In testing mode (`Connect.
mta_sts`) the client delivers as it would without a policy and logs what enforce would
have refused: an MX host the policy does not list, no TLS, or a certificate not valid
for the MX name. For the last, a connection whose level checks no certificate is first
made checking it; when that handshake fails, the warning is logged and the delivery
made again at once as the level says. The log lines go to the queue's log and read
``MTA-STS policy of example.com (testing): mx.example.com[192.0.2.1]:25 would be
refused in enforce mode: ...``.

A connection is the server's `PlainStream` (`_wire`): the connected socket in
non-blocking mode, written and read with the system call first and a wait only when the
kernel says EAGAIN. Trio's `SocketStream` wraps each call in context managers and yields
to the scheduler after every call that succeeded at once: for a relay, where each
message is two writes and two reads, that was a tenth of the runner's CPU. TLS runs on
top of it as on any `trio.abc.Stream`.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
import re
import secrets
import ssl

import attrs
import trio

from sansmail import RemoteProtocolError
from sansmail.config import DeliveryConfig
from sansmail.mail import outbound
from sansmail.mail.delivery import (
    Connect,
    Conversation,
    connect_failed,
    connection_closed,
    delivered,
    handshake_failed,
    session_failed,
)
from sansmail.mail.logtext import printable
from sansmail_trio._tls import describe
from sansmail_trio._wire import PlainStream

__all__ = [
    "CACHE_SIZE",
    "CACHE_TIME_LIMIT",
    "SMTPClient",
    "client_tls_context",
]

#: How long a connection whose transaction is done waits for the next message to the
#: same host before QUIT (Postfix: smtp_connection_cache_time_limit = 2s), and how many
#: such connections are kept at most.
CACHE_TIME_LIMIT = 2.0
CACHE_SIZE = 100
#: A read or write may time out up to this much after its timeout (RFC 5321 §4.5.3.2's
#: are minimums, of minutes), never before: consecutive operations with one timeout
#: then share one deadline, and each move of a deadline costs Trio a heap operation.
#: At most a tenth of the timeout, so a short one (a test's) stays short.
DEADLINE_SLACK = 1.0
#: Octets asked of one read: replies are small, and the few that are not (EHLO) come
#: whole within this.
RECEIVE_SIZE = 65536
_log = logging.getLogger("sansmail.queue")
_ERRNO_TEXT = re.compile(r"\[Errno \d+\] (.+)")


def client_tls_context(*, verify: bool, cafile: os.PathLike[str] | str | None) -> ssl.SSLContext:
    """The context for outbound STARTTLS. Opportunistic TLS (``may``, ``encrypt``)
    checks no certificate: an MX host name comes from unauthenticated DNS, so a check
    proves nothing there, and refusing would push the mail to plain text (RFC 7435).
    ``verify`` checks the chain and the MX host name, as Postfix's ``verify`` level."""
    # What ssl.create_default_context makes, without its one extra: it honours
    # SSLKEYLOGFILE, writing every session's secrets to that file.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # hostname checked, chain required
    if cafile:
        context.load_verify_locations(cafile=os.fspath(cafile))
    else:
        context.load_default_certs()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


#: What a cached connection can be reused for: address, port, TLS level, with AUTH, and
#: the name its certificate was verified for (one address may be the MX of several
#: names, and DNS may lie: each name's certificate check is its own).
_CacheKey = tuple[str, int, str, bool, str | None]


@attrs.define
class _Cached:
    session: outbound.OutboundSession
    stream: trio.abc.Stream
    tls: str | None
    since: float


class SMTPClient:
    """One transaction per `deliver`, on a cached connection when one is idle. `run`
    must be running (it reads the relayhost password and expires the cache)."""

    def __init__(
        self,
        *,
        hostname: str,
        delivery: DeliveryConfig,
        timeouts: outbound.ClientTimeouts | None = None,
    ) -> None:
        self.hostname = hostname
        #: How long each step may take (RFC 5321 §4.5.3.2's minimums by default).
        self.timeouts = timeouts or outbound.ClientTimeouts()
        self._tls = client_tls_context(verify=False, cafile=None)
        self._ca_file = delivery.tls_ca_file
        self._tls_verify = (
            client_tls_context(verify=True, cafile=self._ca_file)
            if delivery.tls == "verify" or delivery.mta_sts
            else None
        )
        self._username = delivery.relayhost_username
        self._password_file: pathlib.Path | None = delivery.relayhost_password_file
        self._credentials: tuple[str, str] | None = None
        self._cache: dict[_CacheKey, list[_Cached]] = {}
        # Set when `run` has closed the cache: the runner lets conversations end after
        # that (its stop's grace), and a connection cached then would never be closed.
        self._stopped = False

    async def deliver(self, message: outbound.OutboundMessage, step: Connect) -> Conversation:
        """Deliver `message` as `step` says, in one transaction, and say how it ended."""
        check = step.mta_sts
        if check is None or check.mode != "testing":
            return await self._deliver(message, step)
        if not check.listed:
            _would_refuse(step, "the policy does not list the MX host")
        elif step.verify_name is None and step.tls != "none":
            # What enforce would check: a certificate valid for the MX name.
            ended = await self._deliver(message, attrs.evolve(step, verify_name=step.host))
            if ended.tls_failure != "handshake":
                if ended.outcomes is not None and ended.tls is None:
                    _would_refuse(step, "TLS is not offered")
                return ended
            _would_refuse(step, ended.reason)
        ended = await self._deliver(message, step)
        if check.listed and ended.outcomes is not None and ended.tls is None:
            _would_refuse(step, "TLS is not offered" if step.tls != "none" else "TLS not used")
        return ended

    async def _deliver(self, message: outbound.OutboundMessage, step: Connect) -> Conversation:
        ended = await self._talk(message, step)
        # Cached connections found dead are replaced at once; the cache is finite, and a
        # fresh connection never asks for another.
        for _ in range(CACHE_SIZE):
            if ended.again != "fresh":
                break
            ended = await self._talk(message, step)
        return ended

    async def _talk(self, message: outbound.OutboundMessage, step: Connect) -> Conversation:
        """One SMTP transaction with `step.ip`, on a cached connection when there is one."""
        credentials = self._credentials if step.authenticate else None
        key: _CacheKey = (
            step.ip,
            step.port,
            step.tls,
            credentials is not None,
            step.verify_name,
        )
        cached = self._take_cached(key)
        if cached is not None:
            session, stream, tls_text = cached.session, cached.stream, cached.tls
        else:
            try:
                with trio.fail_after(self.timeouts.connect):
                    stream = PlainStream.take(await trio.open_tcp_stream(step.ip, step.port))
            except (OSError, trio.TooSlowError) as exc:
                return connect_failed(_oserror(exc))
            session = outbound.OutboundSession(
                helo_name=self.hostname,
                tls=step.tls,
                credentials=credentials,
                nonce=secrets.token_urlsafe(18),
                timeouts=self.timeouts,
            )
            tls_text = None
        reused = cached is not None
        sent_message = False
        keep = False
        try:
            # One cancel scope for the conversation, its deadline moved before each
            # write and each reply awaited: RFC 5321 §4.5.3.2's timeouts, per operation,
            # without a new scope for each of them. A reply's deadline is kept over all
            # the reads it takes: one timeout per reply, not per read (Postfix's
            # smtp_per_record_deadline), so a server that dribbles a byte a minute
            # cannot hold the connection for hours.
            awaiting: int | None = None  # session.replies when the deadline was set
            with trio.CancelScope() as limit:
                while True:
                    action = session.next_action()
                    if isinstance(action, outbound.Send):
                        awaiting = None
                        _move_deadline(limit, session.timeout)
                        await stream.send_all(action.data)
                    elif isinstance(action, outbound.NeedData):
                        if awaiting != session.replies:
                            awaiting = session.replies
                            _move_deadline(limit, session.timeout)
                        data = await stream.receive_some(RECEIVE_SIZE)
                        session.receive_data(data)
                    elif isinstance(action, outbound.StartTLS):
                        limit.deadline = math.inf  # the handshake has its own
                        context = self._tls
                        if step.verify_name:
                            # Made at start for the settings that ask for it; made here
                            # for any other step that does, so a check asked for is never
                            # silently skipped.
                            if self._tls_verify is None:
                                self._tls_verify = client_tls_context(
                                    verify=True, cafile=self._ca_file
                                )
                            context = self._tls_verify
                        tls_stream = trio.SSLStream(
                            stream, context, server_hostname=step.verify_name
                        )
                        try:
                            with trio.fail_after(session.timeout):
                                await tls_stream.do_handshake()
                        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                            return handshake_failed(
                                _tls_failure(exc),
                                level=step.tls,
                                authenticate=credentials is not None,
                            )
                        stream = tls_stream
                        tls_text = describe(tls_stream)
                        session.tls_started()
                    elif isinstance(action, outbound.Ready):
                        if sent_message:
                            session.quit()
                        else:
                            sent_message = True
                            session.start_message(message)
                    elif isinstance(action, outbound.MessageDone):
                        keep = self._put_cached(key, _Cached(session, stream, tls_text, 0.0))
                        if not keep:
                            limit.deadline = math.inf  # QUIT has its own
                            session.quit()
                            await self._finish(session, stream)
                        return delivered(action, host=step.host, tls=tls_text)
                    elif isinstance(action, outbound.SessionFailed):
                        return session_failed(action, host=step.host, reused=reused)
                    elif isinstance(action, outbound.Closed):
                        return connection_closed(reused=reused)
            # Only the deadline ends the loop without a return.
            session.timed_out()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            session.connection_lost(_oserror(exc))
        finally:
            if not keep:
                await trio.aclose_forcefully(stream)
        return self._ended(session, step, reused=reused)

    @staticmethod
    def _ended(session: outbound.OutboundSession, step: Connect, *, reused: bool) -> Conversation:
        """How a session the connection of which is gone (lost, or given up on) ended:
        its `SessionFailed`, which says what it was doing (an RFC 1047 window among
        them: "while sending end of data -- message may be sent more than once")."""
        while True:
            action = session.next_action()
            if isinstance(action, outbound.SessionFailed):
                return session_failed(action, host=step.host, reused=reused)
            if isinstance(action, outbound.Closed):
                return connection_closed(reused=reused)

    def _take_cached(self, key: _CacheKey) -> _Cached | None:
        pool = self._cache.get(key)
        if not pool:
            return None
        cached = pool.pop()
        if not pool:
            del self._cache[key]
        return cached

    def _put_cached(self, key: _CacheKey, cached: _Cached) -> bool:
        if self._stopped or sum(len(pool) for pool in self._cache.values()) >= CACHE_SIZE:
            return False
        cached.since = trio.current_time()
        self._cache.setdefault(key, []).append(cached)
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the relayhost's password, then close connections idle for longer than
        `CACHE_TIME_LIMIT`, until cancelled; then close every cached connection."""
        if self._password_file is not None:
            text = await trio.to_thread.run_sync(self._password_file.read_text)
            self._credentials = (self._username, text.strip())
        async with trio.open_nursery() as nursery:
            task_status.started()
            await self._expire_cache(nursery)

    async def _expire_cache(self, nursery: trio.Nursery) -> None:
        try:
            while True:
                await trio.sleep(CACHE_TIME_LIMIT / 4)
                limit = trio.current_time() - CACHE_TIME_LIMIT
                for key in list(self._cache):
                    pool = self._cache[key]
                    old = [c for c in pool if c.since <= limit]
                    if not old:
                        continue
                    pool[:] = [c for c in pool if c.since > limit]
                    if not pool:
                        del self._cache[key]
                    for cached in old:
                        nursery.start_soon(self._close_cached, cached)
        finally:
            self._stopped = True
            # Emptied before the first close yields: a conversation the stop lets end
            # may start meanwhile, and must neither take one of these nor change the
            # table under this loop.
            closing = [cached for pool in self._cache.values() for cached in pool]
            self._cache.clear()
            with trio.CancelScope(shield=True):
                for cached in closing:
                    await trio.aclose_forcefully(cached.stream)

    async def _close_cached(self, cached: _Cached) -> None:
        try:
            cached.session.quit()
            await self._finish(cached.session, cached.stream)
        finally:
            await trio.aclose_forcefully(cached.stream)

    async def _finish(self, session: outbound.OutboundSession, stream: trio.abc.Stream) -> None:
        # QUIT and its reply are a courtesy; the verdict is already in.
        with trio.move_on_after(min(10.0, self.timeouts.command)):
            try:
                while True:
                    action = session.next_action()
                    if isinstance(action, outbound.Send):
                        await stream.send_all(action.data)
                    elif isinstance(action, outbound.NeedData):
                        data = await stream.receive_some(65536)
                        session.receive_data(data)
                        if not data:
                            return
                    else:
                        return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            except RemoteProtocolError:
                return


def _would_refuse(step: Connect, why: str) -> None:
    check = step.mta_sts
    assert check is not None
    _log.warning(
        "MTA-STS policy of %s (testing): %s would be refused in enforce mode: %s",
        check.domain,
        step.relay,
        printable(why),
    )


def _move_deadline(scope: trio.CancelScope, timeout: float) -> None:
    """Give the next operation `timeout` seconds from now, or a little more (at most
    `DEADLINE_SLACK`, and a tenth of `timeout`)."""
    deadline = trio.current_time() + timeout
    slack = min(DEADLINE_SLACK, timeout / 10)
    current = scope.deadline
    if current < deadline or current > deadline + slack:
        scope.deadline = deadline + slack


def _oserror(exc: BaseException) -> str:
    """The system's word for what broke ("Connection reset by peer"), for the log."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    # trio.open_tcp_stream's OSError says only "all attempts to connect to ... failed",
    # the system's reason being in the group of its cause.
    cause = exc.__cause__
    group = list(cause.exceptions) if isinstance(cause, BaseExceptionGroup) else []
    for error in (exc, cause, *group, exc.__context__):
        if isinstance(error, OSError) and error.errno:
            return os.strerror(error.errno)
        if isinstance(error, OSError) and error.strerror:
            return error.strerror
    text = str(exc)
    # The stream's own wording around an OSError: "socket connection broken: [Errno
    # 104] Connection reset by peer".
    found = _ERRNO_TEXT.search(text)
    return found.group(1) if found else text or type(exc).__name__


def _tls_failure(exc: BaseException) -> str:
    # Postfix's words ("Cannot start TLS: handshake failure"), and OpenSSL's reason.
    if isinstance(exc, trio.TooSlowError):
        return "Cannot start TLS: handshake timed out"
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
        return f"Cannot start TLS: server certificate not verified ({cause.verify_message})"
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return f"Cannot start TLS: handshake failure ({cause.reason})"
    if isinstance(cause, OSError) and cause.strerror:
        return f"Cannot start TLS: handshake failure ({cause.strerror})"
    return "Cannot start TLS: handshake failure"
