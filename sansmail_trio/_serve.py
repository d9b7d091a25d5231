"""Run every configured listener until told to stop.

Theory of operation:

* `serve()` opens all listeners first (so a port already in use fails before anything
  else happens), reports their addresses through `task_status`, then accepts in one task
  per listener. Each accepted connection gets its own task and its own nursery.
* Connection caps (`max_connections`, `max_connections_per_ip`) are checked at accept: a
  connection over a cap is still answered, with `421 4.7.0` as its greeting, then closed
  (RFC 5321 §3.1 allows a 421 greeting; a silent close would look like a network fault).
* Shutdown (first SIGINT/SIGTERM, or the `shutdown` event in tests) happens in three
  steps: stop accepting; interrupt every session that is waiting for a command outside a
  mail transaction (it gets `421 4.3.2`); give sessions with a transaction in flight up to
  `shutdown_grace` to finish, then cancel them (they too get a 421, and no message whose
  250 was not sent is kept). A second signal skips the wait.
* The user store is re-read within a second of a change, so `sansmail-trio user add` takes
  effect without a restart (CONTRACT.md).
"""

from __future__ import annotations

import errno
import logging
import signal
from collections import Counter
from collections.abc import Mapping

import attrs
import trio

from sansmail import __version__
from sansmail.config import BUILT_SERVICES, Config
from sansmail.smtp import Reply
from sansmail.store import MaildirStore
from sansmail.users import UserStore
from sansmail_trio._log import configure_logging, get_logger
from sansmail_trio._smtp_server import SMTPService, Stoppable

__all__ = ["run", "serve"]

log = get_logger("master")

#: How often the user store is checked for changes made by the CLI.
USERS_RELOAD_INTERVAL = 1.0


@attrs.define
class _Connections:
    """Connection accounting and the idle-session registry used at shutdown."""

    max_total: int
    max_per_ip: int
    total: int = 0
    per_ip: Counter[str] = attrs.Factory(Counter)
    sessions: set[Stoppable] = attrs.Factory(set)
    shutting_down: bool = False
    all_gone: trio.Event = attrs.Factory(trio.Event)

    def admit(self, ip: str, hostname: str) -> Reply | None:
        """None to admit, or the 421 to refuse with."""
        if self.shutting_down:
            return Reply(code=421, lines=f"{hostname} Service shutting down", enhanced="4.3.2")
        if self.total >= self.max_total:
            return Reply(
                code=421, lines=f"{hostname} Error: too many connections", enhanced="4.7.0"
            )
        if self.per_ip[ip] >= self.max_per_ip:
            return Reply(
                code=421,
                lines=f"{hostname} Error: too many connections from {ip}",
                enhanced="4.7.0",
            )
        return None

    def opened(self, ip: str) -> None:
        self.total += 1
        self.per_ip[ip] += 1
        self.all_gone = trio.Event() if self.all_gone.is_set() else self.all_gone

    def closed(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if not self.per_ip[ip]:
            del self.per_ip[ip]
        if self.total == 0:
            self.all_gone.set()

    # The SessionRegistry protocol: sessions announce themselves for shutdown.
    def add(self, session: Stoppable) -> None:
        self.sessions.add(session)

    def discard(self, session: Stoppable) -> None:
        self.sessions.discard(session)

    def stop_sessions(self) -> None:
        """Ask every session to stop: idle ones at once, busy ones after their
        transaction."""
        self.shutting_down = True
        for session in list(self.sessions):
            session.request_stop()


async def serve(
    config: Config,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[Mapping[str, list[tuple[str, int]]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set (never, if None), then shut down gracefully.

    `task_status.started()` receives ``{service: [(host, port), ...]}`` with the ports
    actually bound (useful with port 0 in tests).
    """
    shutdown = trio.Event() if shutdown is None else shutdown
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = MaildirStore(config.data_dir, hostname=config.hostname)
    users = UserStore(config.data_dir / "users.json")
    await trio.to_thread.run_sync(users.reload_if_changed)
    smtp_log = get_logger("smtp")
    services = {"smtp": SMTPService(config=config, store=store, users=users, log=smtp_log)}

    listeners: list[tuple[str, trio.SocketListener]] = []
    bound: dict[str, list[tuple[str, int]]] = {}
    try:
        for name, addresses in config.listen.items():
            if name not in BUILT_SERVICES:
                shown = ", ".join(f"{h}:{p}" for h, p in addresses)
                log.warning(
                    "%s listener on %s: not built yet in this version, skipped", name, shown
                )
                continue
            for host, port in addresses:
                for listener in await trio.open_tcp_listeners(port, host=host):
                    listeners.append((name, listener))
                    sockname = listener.socket.getsockname()
                    bound.setdefault(name, []).append((sockname[0], sockname[1]))
    except OSError:
        for _name, listener in listeners:
            await listener.aclose()
        raise

    connections = _Connections(
        max_total=config.smtp.max_connections, max_per_ip=config.smtp.max_connections_per_ip
    )
    shown = "; ".join(f"{n} on " + ", ".join(f"{h}:{p}" for h, p in a) for n, a in bound.items())
    log.info(
        "sansmail %s started: %s; domains=%s; data_dir=%s",
        __version__,
        shown or "no listeners",
        ",".join(config.domains),
        config.data_dir,
    )

    async with trio.open_nursery() as connection_nursery:
        async with trio.open_nursery() as accept_nursery:
            accept_nursery.start_soon(_reload_users, users)
            for name, listener in listeners:
                accept_nursery.start_soon(
                    _accept_loop, listener, services[name], connections, connection_nursery
                )
            task_status.started(bound)
            await shutdown.wait()
            log.info("shutting down: no longer accepting connections")
            accept_nursery.cancel_scope.cancel()
        connections.stop_sessions()
        if connections.total:
            grace = config.smtp.shutdown_grace
            log.info("waiting up to %ss for %d session(s) to finish", grace, connections.total)
            with trio.move_on_after(grace):
                await connections.all_gone.wait()
            connection_nursery.cancel_scope.cancel()
    log.info("stopped")


async def _accept_loop(
    listener: trio.SocketListener,
    service: SMTPService,
    connections: _Connections,
    nursery: trio.Nursery,
) -> None:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # Out of file descriptors: wait for some to be released rather than spin
                # (the same answer trio.serve_listeners gives).
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                    log.error("accept failed (%s); sleeping", exc)
                    await trio.sleep(0.1)
                    continue
                raise
            nursery.start_soon(_handle_connection, stream, service, connections)


async def _handle_connection(
    stream: trio.SocketStream, service: SMTPService, connections: _Connections
) -> None:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        await trio.aclose_forcefully(stream)
        return
    ip, port = str(peer[0]), int(peer[1])
    refuse = connections.admit(ip, service.config.hostname)
    connections.opened(ip)
    try:
        # One nursery per connection: the session's own tasks (none for SMTP today; IMAP
        # IDLE will need one) live and die with it.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run_session, service, stream, (ip, port), refuse, connections)
    finally:
        connections.closed(ip)


async def _run_session(
    service: SMTPService,
    stream: trio.SocketStream,
    peer: tuple[str, int],
    refuse: Reply | None,
    connections: _Connections,
) -> None:
    await service.handle(stream, peer, refuse=refuse, registry=connections)


async def _reload_users(users: UserStore) -> None:
    while True:
        await trio.sleep(USERS_RELOAD_INTERVAL)
        try:
            if await trio.to_thread.run_sync(users.reload_if_changed):
                log.info("user store reloaded")
        except Exception:  # a half-written or broken file must not stop the server
            log.exception("cannot reload the user store; keeping the previous one")


async def _main(config: Config) -> None:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, shutdown, nursery.cancel_scope)
        await serve(config, shutdown=shutdown)
        nursery.cancel_scope.cancel()


async def _watch_signals(shutdown: trio.Event, scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not shutdown.is_set():
                log.info("%s received: shutting down gracefully (send again to stop now)", name)
                shutdown.set()
            else:
                log.info("%s received again: stopping now", name)
                scope.cancel()


def run(config: Config) -> int:
    """Blocking entry point for `sansmail-trio serve`; returns the exit status."""
    configure_logging(logging.INFO)
    try:
        trio.run(_main, config)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
