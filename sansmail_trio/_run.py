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
* A child that dies on its own (a crash, the OOM killer, kill -9) is replaced: the
  parent keeps the listening sockets and both ends of the wake pipe open for that, forks
  a new one in its place (a server process keeps its number and zeroes its row of the
  shared connection counts, whose connections died with the old one) and logs one line
  per death and replacement. The kernel had closed the dead one's connections; mail it
  acknowledged is on disk, and a replaced runner takes the queue's lock and recovers
  what the dead one had in flight, as at a restart.
* Unless children keep dying: more than `MAX_DEATHS` within `DEATH_WINDOW` seconds is a
  crash loop (a broken disk, a bad configuration met at run time) that replacing cannot
  mend. The parent then stops the others and exits non-zero, so that a service manager
  (systemd) sees the failure, restarts the whole server, and gives up if that fails too.
* The runner names itself ``sansmail-queue`` (``ps``, ``top``), as Postfix's processes
  carry their roles.
* Metrics: every child counts into files of its own under ``<data_dir>/run/metrics``
  (prometheus-client's multiprocess mode, `_metrics.py`), which the parent empties
  before the first fork; a scrape in any server process sums them all, the files of
  children that died included.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator, Mapping

import trio

from sansmail.config import Config
from sansmail.storage.keys import SRSKeyError, load_or_create_srs_key
from sansmail_trio._counts import SharedCounts
from sansmail_trio._log import configure_logging, get_logger
from sansmail_trio._metrics import enable_multiprocess
from sansmail_trio._privileges import PrivilegeError, drop_privileges
from sansmail_trio._queue import pipe_waker
from sansmail_trio._serve import bind_listeners, serve, serve_queue
from sansmail_trio._tls import TLSConfigError, TLSContextHolder

__all__ = ["run"]

log = get_logger("master")


def run(config: Config) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit status."""
    configure_logging(logging.INFO, config.log_format)
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
        # Before any child counts: the metrics of every process, summed at a scrape, in
        # files of the server's user, emptied at every start (_metrics.py).
        enable_multiprocess(config.data_dir / "run" / "metrics")
    except (OSError, TLSConfigError, SRSKeyError, PrivilegeError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    master = _Master(config, sockets)
    try:
        with _signals_held():
            runner = master.start(_RUNNER)
            servers = [master.start(index) for index in range(config.processes)]
    except OSError as exc:  # fork: out of processes or memory
        log.error("cannot start: %s", exc)
        master.stop()
        return 1
    log.info(
        "started %d server processes: %s; the queue runner: %s",
        len(servers),
        " ".join(map(str, servers)),
        runner,
    )
    return master.supervise()


#: More deaths than this within `DEATH_WINDOW` seconds: stop, and leave the restart to
#: the service manager (a crash loop, not bad luck).
MAX_DEATHS = 5
DEATH_WINDOW = 60.0

#: The index of the queue runner among the children (servers are 0..processes-1).
_RUNNER = -1
_PASSED_ON = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """The signals the parent passes on wait until the block is done. Around a fork:
    until the child has set its own handlers, a signal would run the parent's and the
    child would signal its siblings. Around a replacement: the handler that passes a
    SIGTERM on must see the new child among the others, or it would serve on alone."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _PASSED_ON)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _release_signals() -> None:
    """In a child, once its handlers are set: what the parent held back arrives now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _PASSED_ON)


class _Master:
    """The parent: what it keeps open to fork a child again, and the children."""

    def __init__(self, config: Config, sockets: Mapping[str, list[socket.socket]]) -> None:
        self.config = config
        self.sockets = sockets
        self.alive_read, self.alive_write = os.pipe()
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_write, False)  # a server never waits for the runner
        self.counts = SharedCounts.create(config.processes)
        self.children: dict[int, int] = {}  # pid: index
        self.stopping = False

    def start(self, index: int) -> int:
        """Fork the child `index` (`_RUNNER` or a server's); its pid. Call with the
        signals held (`_signals_held`)."""
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, measured by the tests' outcome
            status = 1
            try:
                status = self._child(index)
            finally:
                sys.stderr.flush()
                os._exit(status)
        self.children[pid] = index
        return pid

    def _child(self, index: int) -> int:  # pragma: no cover - runs in the child
        os.close(self.alive_write)
        if index == _RUNNER:
            os.close(self.wake_write)
            for socks in self.sockets.values():
                for sock in socks:
                    sock.close()
            return _runner(self.config, self.alive_read, self.wake_read)
        os.close(self.wake_read)
        counts = self.counts.for_process(index)
        # A replacement: the connections of the process it replaces died with it.
        counts.clear()
        return _child(self.config, self.sockets, self.alive_read, counts, self.wake_write)

    def supervise(self) -> int:
        """Wait for the children, replacing those that die on their own, until a signal
        or a crash loop stops them all; the exit status."""
        signals_seen = 0

        def forward(signum: int, _frame: object) -> None:
            nonlocal signals_seen
            signals_seen += 1
            _kill_all(self.children, signal.SIGTERM)

        def reload(signum: int, _frame: object) -> None:
            # SIGHUP re-reads the TLS certificate: every process serves with its own copy.
            _kill_all(self.children, signal.SIGHUP)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
        deaths: collections.deque[float] = collections.deque()
        worst = 0
        try:
            while self.children:
                # EINTR is retried by Python (PEP 475) after `forward` ran.
                pid, wait_status = os.wait()
                with _signals_held():
                    index = self.children.pop(pid, None)
                    if index is None:
                        continue
                    code = os.waitstatus_to_exitcode(wait_status)
                    name = f"{_name(index)} (pid {pid})"
                    if signals_seen or self.stopping:
                        # SIGTERM is ours to send: what we asked for is no failure.
                        if code not in (0, -signal.SIGTERM):
                            log.error("%s ended with status %d", name, code)
                            worst = max(worst, 1 if code < 0 else code)
                        continue
                    now = time.monotonic()
                    deaths.append(now)
                    while deaths[0] < now - DEATH_WINDOW:
                        deaths.popleft()
                    if len(deaths) > MAX_DEATHS:
                        log.error(
                            "%s %s; %d deaths within %gs: stopping the server",
                            name,
                            _how(code),
                            len(deaths),
                            DEATH_WINDOW,
                        )
                        worst = 1
                        self.stop()
                        continue
                    try:
                        new = self.start(index)
                    except OSError as exc:
                        log.error("%s %s; cannot start another: %s", name, _how(code), exc)
                        worst = 1
                        self.stop()
                        continue
                    log.error("%s %s; started pid %d in its place", name, _how(code), new)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(self.alive_write)
        log.info("stopped")
        return worst

    def stop(self) -> None:
        """Stop every child gracefully; `supervise` waits for them."""
        self.stopping = True
        _kill_all(self.children, signal.SIGTERM)


def _name(index: int) -> str:
    return "the queue runner" if index == _RUNNER else f"server process {index + 1}"


def _how(code: int) -> str:
    """How a child ended, from its exit code (negative: the signal that killed it)."""
    return f"killed by signal {-code}" if code < 0 else f"exited with status {code}"


def _kill_all(children: Mapping[int, int], signum: int) -> None:
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
    _release_signals()
    configure_logging(logging.INFO, config.log_format)
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
    _release_signals()
    configure_logging(logging.INFO, config.log_format)
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
