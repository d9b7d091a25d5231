"""Run every configured listener until told to stop.

Theory of operation:

* `serve()` opens all listeners first (so a port already in use fails before anything
  else happens), reports their addresses through `task_status`, then accepts in one task
  per listener. Each accepted connection gets its own task and its own nursery.
* Connection caps are checked at accept, per service family (`_counts.Family`): SMTP
  (smtp, submission, submissions) against ``[smtp] max_connections(_per_ip)``, POP3 and
  IMAP against their ``[limits]`` keys, ManageSieve against its fixed caps
  (`_managesieve_server.MAX_CONNECTIONS`), each counted over every server process. A
  connection over a cap is still answered, with its protocol's refusal as the greeting
  (SMTP's `421`, with no enhanced code since none may come before EHLO; POP3's
  ``-ERR [SYS/TEMP]``; IMAP's ``* BYE [UNAVAILABLE]``; ManageSieve's
  ``BYE (TRYLATER)``), then closed (RFC 5321 §3.1
  allows a 421 greeting; a silent close would look like a network fault).
* Shutdown (first SIGINT/SIGTERM, or the `shutdown` event in tests) happens in three
  steps: stop accepting; interrupt every session that is waiting for a command outside a
  mail transaction (it gets `421 4.3.2`); give sessions with a transaction in flight up to
  `shutdown_grace` to finish, then cancel them (they too get a 421, and no message whose
  250 was not sent is kept). A second signal skips the wait.
* `sansmail-trio user add/passwd/del`, `newaliases` and `reload` are in force by the time
  they exit (CONTRACT.md): they bump a counter in ``<data_dir>/generations``, which the
  user store and the aliases follow at every lookup (`sansmail.storage.generations`).
  Once a second a housekeeping task re-reads, in a worker thread, what changed without
  a lookup noticing yet and what was edited by hand, and reloads the TLS certificate
  when `reload` asked for it.
* Every process answers `sansmail-trio who`, `kick` and `status` on a control socket
  of its own under ``<data_dir>/run/`` (`_control.py`), from the registry of its live
  sessions (`_Connections.sessions`, `_session.LiveSession`) that shutdown uses too.
* The queue runner (`_queue.py`) delivers what every process queues. Under
  `sansmail-trio serve` it has a process of its own (`serve_queue`, started by
  `_run.py`), which the SMTP sessions announce each queued message to through `wake`;
  `serve()` without `wake` runs it in its own loop (embedded use, tests).
"""

from __future__ import annotations

import errno
import functools
import secrets
import socket
import time
from collections.abc import Callable, Mapping

import attrs
import trio

from sansmail import __version__
from sansmail.config import BUILT_SERVICES, Config, not_in_force
from sansmail.mail.auth import AuthService, AuthSettings
from sansmail.mail.authcache import AuthCache, AuthCacheSettings
from sansmail.sessions.common import Refusal
from sansmail.sessions.imapd import ImapService
from sansmail.sessions.lda import wants_sieve
from sansmail.sessions.managesieved import ManageSieveService
from sansmail.sessions.pop3d import Pop3Service
from sansmail.sessions.smtpd import SmtpService, intake_checks, store_all
from sansmail.storage.aliasfile import Aliases
from sansmail.storage.generations import Counter, Generations
from sansmail.storage.keys import load_or_create_srs_key
from sansmail.storage.repair import repair_at_start
from sansmail.storage.users import Users
from sansmail_trio._autoconfig import autoconfig_routes
from sansmail_trio._backend import Stores, open_stores
from sansmail_trio._commit import Committer
from sansmail_trio._control import QUEUE_SOCKET, ProcessInfo, serve_control, server_socket_name
from sansmail_trio._counts import Family, SharedCounts, family_of
from sansmail_trio._dns import Resolver
from sansmail_trio._http import MAX_CONNECTIONS as HTTP_MAX_CONNECTIONS
from sansmail_trio._http import MAX_CONNECTIONS_PER_IP as HTTP_MAX_CONNECTIONS_PER_IP
from sansmail_trio._http import HTTPService
from sansmail_trio._imap_server import IMAPService
from sansmail_trio._log import get_logger, line_logger
from sansmail_trio._managesieve_server import (
    MAX_CONNECTIONS as MANAGESIEVE_MAX_CONNECTIONS,
)
from sansmail_trio._managesieve_server import (
    MAX_CONNECTIONS_PER_IP as MANAGESIEVE_MAX_CONNECTIONS_PER_IP,
)
from sansmail_trio._managesieve_server import ManageSieveServer
from sansmail_trio._metrics import PROBE, Metrics, Probe
from sansmail_trio._pop3_server import POP3Service
from sansmail_trio._queue import QueueRunner, read_wakeups
from sansmail_trio._session import LiveSession
from sansmail_trio._smtp_server import SMTPService
from sansmail_trio._tls import (
    TLS_HANDSHAKE_TIMEOUT,
    TLSContextHolder,
    TLSHandshakeError,
    received_tls,
    tls_handshake,
    watch_sighup,
)
from sansmail_trio._wire import PlainStream

__all__ = ["bind_listeners", "serve", "serve_queue"]

log = get_logger("master")

#: What a listener hands its connections to.
Service = SMTPService | POP3Service | IMAPService | ManageSieveServer | HTTPService

#: How often the user store, the aliases and the reload counter are checked for changes
#: that no lookup has noticed yet, and for files edited by hand.
USERS_RELOAD_INTERVAL = 1.0
#: Pending connections the kernel queues per listener (capped by net.core.somaxconn).
LISTEN_BACKLOG = 4096
#: Connections accepted in a row before the accepting task lets their sessions run.
ACCEPT_BATCH = 64
#: accept(2) errors that only say the connection waiting is already gone (accept(2),
#: "Error handling": Linux passes the new socket's pending network errors on).
_ACCEPT_GONE = frozenset(
    {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT}
    | {errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH}
)


@attrs.define
class _Connections:
    """Connection accounting and the registry of live sessions, which shutdown stops
    and `who` and `kick` see (`_control.py`). The caps (`caps`: family -> (total, per
    address)) are checked against the counts of every server process (`SharedCounts`);
    `total` is this process's own, which is what shutdown waits for."""

    caps: Mapping[Family, tuple[int, int]]
    counts: SharedCounts
    total: int = 0
    sessions: set[LiveSession] = attrs.Factory(set)
    shutting_down: bool = False
    all_gone: trio.Event = attrs.Factory(trio.Event)

    def admit(self, family: Family, ip: str) -> Refusal | None:
        """None to admit, or why to refuse (the session words it)."""
        if self.shutting_down:
            return Refusal.SHUTTING_DOWN
        max_total, max_per_ip = self.caps[family]
        if self.counts.total(family) >= max_total:
            return Refusal.TOO_MANY_CONNECTIONS
        if self.counts.from_ip(family, ip) >= max_per_ip:
            return Refusal.TOO_MANY_FROM_CLIENT
        return None

    def opened(self, family: Family, ip: str) -> None:
        self.total += 1
        self.counts.opened(family, ip)
        self.all_gone = trio.Event() if self.all_gone.is_set() else self.all_gone

    def closed(self, family: Family, ip: str) -> None:
        self.total -= 1
        self.counts.closed(family, ip)
        if self.total == 0:
            self.all_gone.set()

    # The SessionRegistry protocol: sessions announce themselves for shutdown and who.
    def add(self, session: LiveSession) -> None:
        self.sessions.add(session)

    def discard(self, session: LiveSession) -> None:
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
    sockets: Mapping[str, list[socket.socket]] | None = None,
    process: int = 0,
    auth_settings: AuthSettings | None = None,
    counts: SharedCounts | None = None,
    wake: Callable[[str], None] | None = None,
    task_status: trio.TaskStatus[Mapping[str, list[tuple[str, int]]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set (never, if None), then shut down gracefully.

    `sockets`: listening sockets already bound (by the parent of several server
    processes, see `_processes.py`), per service; without them `serve` binds its own.
    `process` numbers this process among them (0 logs what all of them would).
    `auth_settings` overrides the failure delays and throttle (tests use short ones).
    `counts` is the connection table shared with the other processes (made by the
    parent before it forked); without it, this process counts alone.
    `wake` announces each queued message to the queue runner of another process;
    without it, this process runs the queue runner.

    `task_status.started()` receives ``{service: [(host, port), ...]}`` with the ports
    actually bound (useful with port 0 in tests).
    """
    shutdown = trio.Event() if shutdown is None else shutdown
    started = time.time()
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    stores = await open_stores(config)
    # Closed however serve ends (a port in use, a cancelled serve in a test): a database
    # connection left open is a ResourceWarning and a backend held until the GC runs.
    try:
        await _serve_stores(
            config,
            stores,
            shutdown=shutdown,
            started=started,
            sockets=sockets,
            process=process,
            auth_settings=auth_settings,
            counts=counts,
            wake=wake,
            task_status=task_status,
        )
    finally:
        stores.close()


async def _serve_stores(
    config: Config,
    stores: Stores,
    *,
    shutdown: trio.Event,
    started: float,
    sockets: Mapping[str, list[socket.socket]] | None,
    process: int,
    auth_settings: AuthSettings | None,
    counts: SharedCounts | None,
    wake: Callable[[str], None] | None,
    task_status: trio.TaskStatus[Mapping[str, list[tuple[str, int]]]],
) -> None:
    """`serve` on the stores it opened."""
    store, users, queue, aliases = stores.mail, stores.users, stores.queue, stores.aliases
    generations = stores.generations
    # One auth service for every protocol, as Dovecot's auth serves Postfix. Trusted
    # networks are never locked out (they still get the failure delay).
    auth = AuthService(
        users,
        secret=secrets.token_bytes(32),
        settings=auth_settings or AuthSettings.from_config(config),
        cache=_auth_cache(config, generations),
    )
    # Each user's storage limit: their own, else [quota] storage.
    quota = stores.quota
    # Made or read once here, off the loop: SCRAM needs it for unknown users' fake salts.
    await trio.to_thread.run_sync(users.scram_secret)
    # Every SMTP listener offers TLS: a configured certificate, or one generated into
    # data_dir on first start (CONTRACT.md).
    tls = await trio.to_thread.run_sync(TLSContextHolder.from_config, config)
    for problem in aliases.problems:
        if process == 0:
            log.warning("aliases: %s", problem)
    srs_key = await trio.to_thread.run_sync(load_or_create_srs_key, config.data_dir / "srs.key")
    # Several processes share the listeners and, through this table, the caps.
    shared_counts = counts if counts is not None else SharedCounts.create(1)
    metrics = Metrics(shared_counts, queue)
    runner: QueueRunner | None = None
    if wake is None:
        runner = QueueRunner(
            config=config,
            queue=queue,
            store=store,
            users=users,
            aliases=aliases,
            resolver=Resolver.from_config(config.dns),
            log=get_logger("queue"),
            metrics=metrics,
            local_delivery=stores.local_delivery(),
        )
    smtp_log = get_logger("smtp")
    # One group committer for the SMTP sessions of this process (_commit.py).
    committer = Committer(store_all, took=metrics.commit_took)
    checks = await trio.to_thread.run_sync(
        functools.partial(
            intake_checks, config, log=line_logger(smtp_log), greylist_store=stores.greylist
        )
    )
    check_resolver = Resolver.from_config(config.dns) if checks else None
    services: dict[str, Service] = {}
    # Whether a recipient's mail goes through Sieve (the queue runner) or straight in.
    sieve_wants = functools.partial(wants_sieve, config, stores.scripts())
    for name in ("smtp", "submission", "submissions"):
        shared = SmtpService(
            config=config,
            store=store,
            users=users,
            queue=queue,
            aliases=aliases,
            auth=auth,
            srs_key=srs_key,
            service=name,
            tls_available=tls is not None,
            checks=checks,
            mailbox_full=store.full,
            sieve_wants=sieve_wants,
            lookups_block=stores.postgresql,
            catch_up=stores.catch_up,
            observer=metrics.smtp(name),
        )
        smtp_service = SMTPService(
            shared=shared, log=smtp_log, tls=tls, committer=committer, resolver=check_resolver
        )
        if wake is not None:
            smtp_service.wake = wake
        elif runner is not None:
            smtp_service.wake = runner.wake
        services[name] = smtp_service
    pop3_log = get_logger("pop3")
    for name in ("pop3", "pop3s"):
        pop3_shared = Pop3Service(
            config=config,
            maildrops=stores.maildrops,
            users=users,
            auth=auth,
            service=name,
            tls_available=tls is not None,
        )
        services[name] = POP3Service(
            shared=pop3_shared, log=pop3_log, tls=tls, counts=shared_counts
        )
    imap_log = get_logger("imap")
    imap_store = stores.imap(quota=quota)
    for name in ("imap", "imaps"):
        imap_shared = ImapService(
            config=config,
            store=imap_store,
            users=users,
            auth=auth,
            service=name,
            tls_available=tls is not None,
        )
        services[name] = IMAPService(
            shared=imap_shared, log=imap_log, tls=tls, counts=shared_counts
        )
    managesieve_shared = ManageSieveService(
        config=config,
        scripts=stores.scripts(),
        users=users,
        auth=auth,
        tls_available=tls is not None,
    )
    services["managesieve"] = ManageSieveServer(
        shared=managesieve_shared, log=get_logger("managesieve"), tls=tls
    )
    # Prometheus's text format, summed over every process (_metrics.py); plain HTTP: a
    # scraper on the same host or network, as node_exporter's.
    services["metrics"] = HTTPService(
        {"/metrics": metrics.handle_scrape}, log=get_logger("metrics"), log_answers=False
    )
    # Client autoconfiguration and the MTA-STS policy (_autoconfig.py), over http and
    # https on the same port (the client's first octet tells): MTA-STS is fetched only
    # over https, with a certificate valid for mta-sts.<domain>.
    services["http"] = HTTPService(autoconfig_routes(config), log=get_logger("http"), tls=tls)

    if process == 0:
        # The lines check-config prints: unbuilt listeners are skipped, keys accepted.
        for line in not_in_force(config):
            log.warning("%s", line)
    if sockets is None:
        sockets = bind_listeners(config)
    listeners = [(name, sock) for name, socks in sockets.items() for sock in socks]
    bound: dict[str, list[tuple[str, int]]] = {}
    for name, listener in listeners:
        sockname = listener.getsockname()
        bound.setdefault(name, []).append((sockname[0], sockname[1]))

    limits = config.limits
    connections = _Connections(
        caps={
            Family.SMTP: (config.smtp.max_connections, config.smtp.max_connections_per_ip),
            Family.POP3: (limits.pop3_max_connections, limits.pop3_max_connections_per_ip),
            Family.IMAP: (limits.imap_max_connections, limits.imap_max_connections_per_ip),
            Family.MANAGESIEVE: (MANAGESIEVE_MAX_CONNECTIONS, MANAGESIEVE_MAX_CONNECTIONS_PER_IP),
            Family.METRICS: (HTTP_MAX_CONNECTIONS, HTTP_MAX_CONNECTIONS_PER_IP),
            Family.HTTP: (HTTP_MAX_CONNECTIONS, HTTP_MAX_CONNECTIONS_PER_IP),
        },
        counts=shared_counts,
    )
    async with trio.open_nursery() as runner_nursery, trio.open_nursery() as connection_nursery:
        # Outlives the connections: a session's commit in flight always completes.
        await runner_nursery.start(committer.run)
        runner_nursery.start_soon(metrics.run)  # counts to the files a scrape reads
        # Outlives the listeners too: `status` and `who` answer during the shutdown grace.
        control = ProcessInfo(
            role="server",
            number=process + 1,
            started=started,
            listeners=bound,
            sessions=connections.sessions,
            queue_size=(lambda: len(queue.ids())) if runner is not None else None,
            supervised=wake is not None,
        )
        await runner_nursery.start(
            serve_control, config.data_dir, server_socket_name(process + 1), control
        )
        if process == 0 and not stores.postgresql:
            # What a crash left in the Maildirs' tmp/ (storage/repair.py).
            repair = functools.partial(repair_at_start, config.data_dir, hostname=config.hostname)
            runner_nursery.start_soon(trio.to_thread.run_sync, repair)
        if runner is not None:
            await runner_nursery.start(runner.run)
        async with trio.open_nursery() as accept_nursery:
            if stores.db is not None:
                # Other nodes' changes (and the CLI's): LISTEN/NOTIFY, which IMAP IDLE
                # follows too; the queue runner, if here, looks at the queue at once.
                await runner_nursery.start(_follow_database, stores, runner)
            else:
                accept_nursery.start_soon(_reload_users, users, generations)
                accept_nursery.start_soon(_reload_aliases, aliases)
            accept_nursery.start_soon(_reload_tls_on_request, tls, generations)
            await accept_nursery.start(watch_sighup, tls)
            for name, listener in listeners:
                accept_nursery.start_soon(
                    functools.partial(
                        _accept_loop,
                        listener,
                        services[name],
                        family_of(name),
                        connections,
                        connection_nursery,
                        probe=metrics.probe(name),
                    )
                )
            # Logged once everything is listening, SIGHUP included: "started" means ready.
            _log_started(config, bound, process, config.processes)
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
        # Deliveries in flight keep their envelopes as they were: tried again at start.
        runner_nursery.cancel_scope.cancel()
    metrics.flush()  # what the last sessions and deliveries counted
    log.info("stopped")


def _auth_cache(config: Config, generations: Generations) -> AuthCache | None:
    settings = AuthCacheSettings(
        size=config.auth.cache_size,
        ttl=config.auth.cache_ttl,
        negative_ttl=config.auth.cache_negative_ttl,
    )
    if not settings.enabled:
        return None
    # Per process, with its own secret. `sansmail-trio reload` is the only writer of the
    # TLS counter: following it empties the cache at the next login after a reload, as
    # SIGHUP does Dovecot's. User changes need no flush (the cache checks each entry
    # against the user's record in force).
    return AuthCache(
        secret=secrets.token_bytes(32),
        settings=settings,
        reloads=lambda: generations[Counter.TLS],
    )


def bind_listeners(config: Config) -> dict[str, list[socket.socket]]:
    """Bind and listen on every configured address of the services that are built.

    Plain blocking-module sockets, so that a parent process can bind them before it forks
    its server processes (who then share them). Raises OSError (address in use,
    permission denied) with the address in the message; nothing stays open then.
    """
    bound: dict[str, list[socket.socket]] = {}
    try:
        for name, addresses in config.listen.items():
            if name not in BUILT_SERVICES:
                continue
            for host, port in addresses:
                for sock in _bind(host, port):
                    bound.setdefault(name, []).append(sock)
    except OSError:
        for socks in bound.values():
            for sock in socks:
                sock.close()
        raise
    return bound


def _bind(host: str, port: int) -> list[socket.socket]:
    # What trio.open_tcp_listeners does, with stdlib sockets: every address the name
    # resolves to, SO_REUSEADDR (restart without waiting for TIME_WAIT), IPv6 only on
    # IPv6 sockets so "[::]" and "0.0.0.0" can both be listed.
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
    )
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(
            (i[0], i[1], i[2], "", i[4]) for i in infos
        ):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}"
                ) from None
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def _log_started(
    config: Config, bound: Mapping[str, list[tuple[str, int]]], process: int, share: int
) -> None:
    shown = "; ".join(f"{n} on " + ", ".join(f"{h}:{p}" for h, p in a) for n, a in bound.items())
    log.info(
        "sansmail %s started%s: %s; domains=%s; data_dir=%s",
        __version__,
        f" (process {process + 1} of {share})" if share > 1 else "",
        shown or "no listeners",
        ",".join(config.domains),
        config.data_dir,
    )


async def _accept_loop(
    listener: socket.socket,
    service: Service,
    family: Family,
    connections: _Connections,
    nursery: trio.Nursery,
    *,
    probe: Probe | None = None,
) -> None:
    # The stdlib socket itself rather than trio.SocketListener: each connection costs an
    # accept(2) and no scheduler round after it, the peer's address comes with it (no
    # getpeername), and the connections waiting are taken in one go, up to ACCEPT_BATCH,
    # before the loop yields to their sessions.
    listener.setblocking(False)
    # The listener's metrics: every connection's task starts with a copy of this context.
    PROBE.set(probe)
    with listener:
        taken = 0
        while True:
            try:
                sock, peer = listener.accept()
            except BlockingIOError:
                taken = 0
                await trio.lowlevel.wait_readable(listener)
                continue
            except OSError as exc:
                # Out of file descriptors: wait for some to be released rather than spin
                # (the same answer trio.serve_listeners gives).
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                    log.error("accept failed (%s); sleeping", exc)
                    await trio.sleep(0.1)
                    continue
                if exc.errno in _ACCEPT_GONE:
                    continue
                raise
            nursery.start_soon(_handle_connection, sock, peer, service, family, connections)
            taken += 1
            if taken >= ACCEPT_BATCH:
                taken = 0
                await trio.lowlevel.checkpoint()


async def _handle_connection(
    sock: socket.socket,
    peer: tuple[str, int],
    service: Service,
    family: Family,
    connections: _Connections,
) -> None:
    try:
        sock.setblocking(False)
        # As trio.SocketStream does: replies leave at once, not after the client's ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        sock.close()
        return
    ip, port = str(peer[0]), int(peer[1])
    refuse = connections.admit(family, ip)
    connections.opened(family, ip)
    probe = PROBE.get()
    if probe is not None:
        probe.accepted(None if refuse is None else refuse.name.lower())
    try:
        stream: trio.abc.Stream = PlainStream(sock)
        tls_text = None
        if service.implicit_tls and service.tls is not None:
            # RFC 8314 §3.3: the handshake comes first, even for a connection we are
            # about to refuse (the 421 must be readable).
            try:
                tls = await tls_handshake(stream, service.tls.context, TLS_HANDSHAKE_TIMEOUT)
            except TLSHandshakeError as exc:
                service.log.info("[%s]:%d: %s", ip, port, exc)
                return
            stream, tls_text = tls, received_tls(tls)
        if isinstance(service, SMTPService):
            # An SMTP session has no tasks of its own: it runs in this one (a nursery and
            # a task more per connection were 18 µs of a small message's CPU).
            await service.handle(
                stream, (ip, port), refuse=refuse, registry=connections, tls=tls_text
            )
            return
        # One nursery per connection: the session's own tasks (IMAP IDLE will need one)
        # live and die with it.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    service.handle,
                    stream,
                    (ip, port),
                    refuse=refuse,
                    registry=connections,
                    tls=tls_text,
                )
            )
    finally:
        connections.closed(family, ip)
        # Every path above closes the connection; this catches a bug or a cancellation
        # before the session got it (closing twice is harmless).
        sock.close()


async def _reload_users(users: Users, generations: Generations) -> None:
    def housekeeping() -> bool:
        # A generations file deleted or restored under us would go unheard.
        if generations.reopen_if_replaced():
            log.warning("%s was replaced: following the new one", generations.path)
        return users.reload_if_changed()

    while True:
        await trio.sleep(USERS_RELOAD_INTERVAL)
        try:
            if await trio.to_thread.run_sync(housekeeping):
                log.info("user store reloaded")
        except Exception:  # a half-written or broken file must not stop the server
            log.exception("cannot reload the user store; keeping the previous one")


async def _follow_database(
    stores: Stores,
    runner: QueueRunner | None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The PostgreSQL backend's counterpart of `_reload_users` and `_reload_aliases`:
    the users and aliases are re-read when a node (or the CLI) says they changed, and
    this process's queue runner looks at the queue when any node queued a message."""

    def reloaded(key: str) -> None:
        if key == "aliases":
            for problem in stores.aliases.problems:
                log.warning("aliases: %s", problem)

    # Imported here: psycopg is there only with the postgresql extra.
    from sansmail_trio._pgnotify import run_listener  # noqa: PLC0415

    async with trio.open_nursery() as nursery:
        listener = await nursery.start(
            functools.partial(
                run_listener,
                stores.db,
                reload={"users": stores.users, "aliases": stores.aliases},  # type: ignore[dict-item]
                reloaded=reloaded,
            )
        )
        if runner is not None:
            listener.on("queue", lambda _payload: runner.wake())
        task_status.started()


async def _reload_tls_on_request(tls: TLSContextHolder, generations: Generations) -> None:
    # `sansmail-trio reload` cannot signal us (there is no pid file); it bumps a counter.
    seen = generations[Counter.TLS]
    while True:
        await trio.sleep(USERS_RELOAD_INTERVAL)
        if generations[Counter.TLS] != seen:
            seen = generations[Counter.TLS]
            log.info("reload requested: reloading the TLS certificate")
            await trio.to_thread.run_sync(tls.reload)


async def _reload_aliases(aliases: Aliases) -> None:
    reported: tuple[str, ...] = tuple(str(p) for p in aliases.problems)
    while True:
        await trio.sleep(USERS_RELOAD_INTERVAL)
        try:
            changed = await trio.to_thread.run_sync(aliases.reload_if_changed)
        except Exception:
            log.exception("cannot reload the aliases file; keeping the previous one")
            continue
        problems = tuple(str(p) for p in aliases.problems)
        if changed:
            log.info("aliases reloaded")
        if problems != reported:
            for problem in problems:
                log.warning("aliases: %s", problem)
            reported = problems


async def serve_queue(
    config: Config,
    *,
    wakeups: int,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The queue runner alone, in a process of its own (`_run.py`), until `shutdown` is
    set: what it needs of `serve` (the mailboxes and aliases for the notifications it
    delivers here, and their reloads), and the queue ids the SMTP processes announce on
    the pipe whose read end is `wakeups`."""
    started = time.time()
    stores = await open_stores(config, role="queue")
    store, users, queue, aliases = stores.mail, stores.users, stores.queue, stores.aliases
    metrics = Metrics()
    runner = QueueRunner(
        config=config,
        queue=queue,
        store=store,
        users=users,
        aliases=aliases,
        resolver=Resolver.from_config(config.dns),
        log=get_logger("queue"),
        metrics=metrics,
        local_delivery=stores.local_delivery(),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(metrics.run)  # counts to the files a scrape reads
        if stores.db is not None:
            await nursery.start(_follow_database, stores, runner)
        else:
            nursery.start_soon(_reload_users, users, stores.generations)
            nursery.start_soon(_reload_aliases, aliases)
        # Read from the start: what is announced while the runner waits for its lock
        # or recovers is kept in its schedule.
        nursery.start_soon(read_wakeups, wakeups, runner.wake)
        control = ProcessInfo(
            role="queue",
            number=None,
            started=started,
            listeners={},
            queue_size=lambda: len(queue.ids()),
            supervised=True,
        )
        await nursery.start(serve_control, config.data_dir, QUEUE_SOCKET, control)
        await nursery.start(runner.run)
        task_status.started()
        await shutdown.wait()
        # Deliveries in flight keep their envelopes as they were: tried again at start.
        nursery.cancel_scope.cancel()
    metrics.flush()  # what the runner noted while it stopped
    stores.close()
