"""Running the server: `run()`, the entry point of `sansmail-trio serve`: `processes`
server processes that share the listening sockets, and one queue runner process.

One Python process runs one event loop on one core; Postfix and Dovecot use every core
by running several smtpd/imap processes, and so does sansmail when `processes` is above
one. Delivery from the queue has a process of its own whatever `processes` says, as
Postfix's qmgr and smtp do: the relaying then never takes CPU from the SMTP sessions'
loop, and a server with `processes = 1` uses a second core for it.

Theory of operation:

* The parent binds every listener first (a port in use fails here, before any fork),
  then forks the queue runner and the server processes while it still has no threads.
  Each server runs its own Trio loop with `serve(config, sockets=...)` on the inherited
  sockets; the kernel hands each new connection to one of the processes waiting in
  accept(). The runner (`serve_queue`) holds none of the sockets.
* A pipe carries the queue id of every message a server process queues to the runner
  (`_queue.pipe_waker`, `_queue.read_wakeups`): one line per id, written whole, never
  waited for (a full pipe drops the line; the runner lists the queue directory every
  few seconds and finds the message). The runner takes the queue's lock before it
  recovers and delivers, so after a crash the runner of the new start waits for the
  old one to be gone.
* The parent does nothing but supervise. SIGINT and SIGTERM reach it and are passed on
  to the children as SIGTERM: the first asks for a graceful shutdown, the second for an
  immediate one. SIGHUP is passed on as it is (each process reloads its certificate).
  Children ignore SIGINT, so Ctrl-C on a terminal (which signals the whole process
  group) counts once, through the parent.
* Every child holds the read end of a pipe whose write end only the parent holds. If the
  parent dies without a word (kill -9), the pipe reads end-of-file and the children shut
  down gracefully instead of running on unsupervised.
* A child that dies is not restarted: the parent stops the others and exits non-zero,
  so a service manager (systemd) sees the failure and restarts the whole server.
* The runner names itself ``sansmail-queue`` (``ps``, ``top``), as Postfix's processes
  carry their roles.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping

import trio

from sansmail.config import Config
from sansmail.storage.keys import SRSKeyError, load_or_create_srs_key
from sansmail_trio._counts import SharedCounts
from sansmail_trio._log import configure_logging, get_logger
from sansmail_trio._privileges import PrivilegeError, drop_privileges
from sansmail_trio._queue import pipe_waker
from sansmail_trio._serve import bind_listeners, serve, serve_queue
from sansmail_trio._tls import TLSConfigError, TLSContextHolder

__all__ = ["run"]

log = get_logger("master")


def run(config: Config) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit status."""
    configure_logging(logging.INFO)
    return _run_processes(config)


async def _watch_signals(
    shutdown: trio.Event, scope: trio.CancelScope, signums: tuple[signal.Signals, ...]
) -> None:
    with trio.open_signal_receiver(*signums) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not shutdown.is_set():
                log.info("%s received: shutting down gracefully (send again to stop now)", name)
                shutdown.set()
            else:
                log.info("%s received again: stopping now", name)
                scope.cancel()


def _run_processes(config: Config) -> int:
    """Bind, fork the queue runner and `config.processes` servers, supervise them;
    return the exit status."""
    try:
        sockets = bind_listeners(config)
        # Made once, here: N children generating the self-signed certificate (or the SRS
        # key) at the same moment would race each other.
        TLSContextHolder.from_config(config)
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        load_or_create_srs_key(config.data_dir / "srs.key")
        # Root's work ends here: nothing after this line runs as root (_privileges.py).
        drop_privileges(config)
    except (OSError, TLSConfigError, SRSKeyError, PrivilegeError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    alive_read, alive_write = os.pipe()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)  # a server never waits for the runner
    counts = SharedCounts.create(config.processes)
    children: dict[int, str] = {}
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, measured by the tests' outcome
        os.close(alive_write)
        os.close(wake_write)
        for socks in sockets.values():
            for sock in socks:
                sock.close()
        status = 1
        try:
            status = _runner(config, alive_read, wake_read)
        finally:
            sys.stderr.flush()
            os._exit(status)
    children[pid] = "the queue runner"
    os.close(wake_read)
    for index in range(config.processes):
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, measured by the tests' outcome
            os.close(alive_write)
            status = 1
            try:
                status = _child(config, sockets, alive_read, counts.for_process(index), wake_write)
            finally:
                sys.stderr.flush()
                os._exit(status)
        children[pid] = f"server process {index + 1}"
    os.close(alive_read)
    os.close(wake_write)
    for socks in sockets.values():
        for sock in socks:
            sock.close()
    servers = [str(pid) for pid, name in children.items() if name.startswith("server")]
    log.info(
        "started %d server processes: %s; the queue runner: %s",
        len(servers),
        " ".join(servers),
        next(iter(children)),
    )
    return _supervise(children, alive_write)


def _supervise(children: dict[int, str], alive_write: int) -> int:
    signals_seen = 0

    def forward(signum: int, _frame: object) -> None:
        nonlocal signals_seen
        signals_seen += 1
        _kill_all(children, signal.SIGTERM)

    def reload(signum: int, _frame: object) -> None:
        # SIGHUP re-reads the TLS certificate: every process serves with its own copy.
        _kill_all(children, signal.SIGHUP)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
    worst = 0
    try:
        while children:
            # EINTR is retried by Python (PEP 475) after `forward` ran.
            pid, wait_status = os.wait()
            if pid not in children:
                continue
            name = children.pop(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if code != 0 or not signals_seen:
                log.error("%s (%d) ended with status %d", name, pid, code)
                worst = max(worst, 1 if code < 0 else code, 1)
                if not signals_seen:
                    # One server down: stop the rest, so the failure is seen.
                    forward(signal.SIGTERM, None)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(alive_write)
    log.info("stopped")
    return worst


def _kill_all(children: dict[int, str], signum: int) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _child(
    config: Config,
    sockets: Mapping[str, list[socket.socket]],
    alive_read: int,
    counts: SharedCounts,
    wake: int,
) -> int:
    index = counts.row
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Until the server's own SIGHUP watcher is up, a reload request must not kill us.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    configure_logging(logging.INFO)
    try:
        trio.run(_child_main, config, sockets, alive_read, counts, wake)
    except (OSError, TLSConfigError) as exc:
        log.error("server process %d failed: %s", index + 1, exc)
        return 1
    except Exception:  # the parent exits through os._exit: say what happened first
        log.exception("server process %d failed", index + 1)
        return 1
    return 0


async def _child_main(
    config: Config,
    sockets: Mapping[str, list[socket.socket]],
    alive_read: int,
    counts: SharedCounts,
    wake: int,
) -> None:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, shutdown, nursery.cancel_scope, (signal.SIGTERM,))
        nursery.start_soon(_watch_parent, alive_read, shutdown)
        await serve(
            config,
            shutdown=shutdown,
            sockets=sockets,
            process=counts.row,
            counts=counts,
            wake=pipe_waker(wake),
        )
        nursery.cancel_scope.cancel()


def _runner(config: Config, alive_read: int, wake_read: int) -> int:
    _name_process(b"sansmail-queue")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # It has no certificate to reload: SIGHUP, passed on to every child, changes nothing.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    configure_logging(logging.INFO)
    try:
        trio.run(_runner_main, config, alive_read, wake_read)
    except Exception:  # the parent exits through os._exit: say what happened first
        log.exception("the queue runner failed")
        return 1
    return 0


async def _runner_main(config: Config, alive_read: int, wake_read: int) -> None:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, shutdown, nursery.cancel_scope, (signal.SIGTERM,))
        nursery.start_soon(_watch_parent, alive_read, shutdown)
        await serve_queue(config, wakeups=wake_read, shutdown=shutdown)
        nursery.cancel_scope.cancel()


def _name_process(name: bytes) -> None:
    # What ps and top show (Linux; elsewhere the name stays that of the parent).
    with contextlib.suppress(OSError), open("/proc/self/comm", "wb") as comm:
        comm.write(name)


async def _watch_parent(alive_read: int, shutdown: trio.Event) -> None:
    await trio.lowlevel.wait_readable(alive_read)
    if not shutdown.is_set():
        log.error("the parent process is gone: shutting down")
        shutdown.set()
