"""A multi-process SMTP load generator that also times every message.

Theory of operation
-------------------
It behaves like Postfix's ``smtp-source -m N -s C -l SIZE`` (one TCP connection per
message, no pipelining, one recipient) so that its figures can stand in for it, and it
adds what smtp-source cannot tell: the latency of each message, measured from the moment
the last byte of the final ``CRLF.CRLF`` was handed to the kernel to the moment the
``250`` reply was read (the server's cost of making the message durable).

Python is slow next to the C of smtp-source, so the generator keeps its per-message work
small and spreads it over processes:

* ``processes`` workers (one per core by default) are forked; the C connections are
  split between them. Each worker runs a ``selectors`` loop over raw non-blocking
  sockets: no smtplib, no asyncio, no threads. Per message it does one connect, seven
  ``send``/``recv`` pairs and a few attribute updates on a ``__slots__`` object.
* Messages are claimed one at a time from a counter in shared memory, so that a worker
  whose connections are served faster takes more messages, and every connection stays
  busy until fewer than C messages are left, as with smtp-source.
* All workers wait on one event before they start, so the wall time of a run is measured
  from that event to the last worker's end; the workers read ``time.perf_counter``
  (CLOCK_MONOTONIC on Linux, shared by every process), so their stamps are comparable.
* Each worker reports the CPU time it used between the start event and its end
  (``getrusage``), which tells whether the generator was the bottleneck.

Every reply code is checked. A message counts as accepted only on ``250`` after the
final dot, and any unexpected reply, reset, early close or timeout is a failure; the
caller treats a run with any failure as failed. Each worker stops after
``max_failures`` so that a dead server does not produce thousands of identical errors,
and a run ends at ``deadline`` seconds whatever happens.

The message is built the way smtp-source builds it (From, To, Date and Message-Id
headers, then SIZE bytes of 80-byte lines of a digit and X's), so that a server sees
the same bytes from both generators; only the greeting differs: this generator says
EHLO, as real clients do, where smtp-source says HELO.
"""

from __future__ import annotations

import email.utils
import errno
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import os
import resource
import selectors
import signal
import socket
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "LoadResult",
    "LoadSpec",
    "Reply",
    "ReplyError",
    "ReplyParser",
    "build_payload",
    "message_headers",
    "percentile",
    "run_load",
    "split_slots",
]

# RFC 5321 section 4.5.3.1.5 allows 512 octets per reply line; a multi-line EHLO reply
# is a few dozen lines. Anything far beyond that is a broken peer, not a reply.
MAX_REPLY_BYTES = 65536


class ReplyError(Exception):
    """The server sent bytes that are not an SMTP reply (RFC 5321 section 4.2)."""


class Reply(NamedTuple):
    code: int
    lines: tuple[bytes, ...]  # the text after "NNN-" / "NNN ", one entry per line


class ReplyParser:
    """Splits a byte stream from a server into replies (RFC 5321 section 4.2.1).

    A reply is one or more CRLF-terminated lines ``NNN-text`` closed by ``NNN text`` or
    ``NNN``; every line of one reply carries the same code. A bare LF is refused, as the
    server side of sansmail refuses it (RFC 5321 section 4.1.1.4). The buffer is bounded
    and each byte is examined once: ``_scan`` remembers where the last search stopped.
    """

    def __init__(self, max_bytes: int = MAX_REPLY_BYTES) -> None:
        self._buf = bytearray()
        self._scan = 0  # bytes before this offset hold no unexamined LF
        self._lines: list[bytes] = []
        self._code = -1
        self._max = max_bytes

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_reply(self) -> Reply | None:
        """Return the next complete reply, or None until more bytes arrive."""
        buf = self._buf
        while True:
            lf = buf.find(b"\n", self._scan)
            if lf < 0:
                self._scan = len(buf)
                if len(buf) > self._max:
                    raise ReplyError(f"reply line longer than {self._max} bytes")
                return None
            if lf == 0 or buf[lf - 1] != 0x0D:
                raise ReplyError("bare LF in reply")
            line = bytes(buf[: lf - 1])
            del buf[: lf + 1]
            self._scan = 0
            code, last, text = _split_reply_line(line)
            if self._code >= 0 and code != self._code:
                raise ReplyError(f"code changed within a multi-line reply: {line!r}")
            self._code = code
            self._lines.append(text)
            if sum(len(x) for x in self._lines) > self._max:
                raise ReplyError(f"reply longer than {self._max} bytes")
            if last:
                reply = Reply(code, tuple(self._lines))
                self._lines = []
                self._code = -1
                return reply


def _split_reply_line(line: bytes) -> tuple[int, bool, bytes]:
    """``b"250-x"`` -> (250, False, b"x"); ``b"250 x"`` / ``b"250"`` -> (250, True, ...)."""
    if len(line) < 3 or not line[:3].isdigit() or line[0] not in b"2345":
        raise ReplyError(f"not a reply line: {line[:80]!r}")
    if b"\r" in line:
        raise ReplyError(f"bare CR in reply line: {line[:80]!r}")
    code = int(line[:3])
    if len(line) == 3:
        return code, True, b""
    sep = line[3]
    if sep == 0x2D:  # "-": more lines follow
        return code, False, line[4:]
    if sep == 0x20:
        return code, True, line[4:]
    raise ReplyError(f"not a reply line: {line[:80]!r}")


def build_payload(size: int) -> bytes:
    """SIZE bytes of body like ``smtp-source -l SIZE``: 80-byte lines, CRLF-terminated.

    Each full line is a digit (the line number modulo 10), 77 X's and CRLF; a shorter last
    line holds only X's. No line starts with ".", so no dot-stuffing is needed
    (RFC 5321 section 4.5.2). A last line of one byte cannot end in CRLF, so that byte
    goes to the line before it; a size of 1 becomes 2 (a lone CRLF).
    """
    if size < 0:
        raise ValueError("size must be >= 0")
    full, rest = divmod(size, 80)
    lines = [b"%d" % ((i + 1) % 10) + b"X" * 77 + b"\r\n" for i in range(full)]
    if rest == 1 and lines:
        lines[-1] = lines[-1][:-2] + b"X\r\n"
    elif rest:
        lines.append(b"X" * (rest - 2) + b"\r\n" if rest >= 2 else b"\r\n")
    return b"".join(lines)


def message_headers(sender: str, recipient: str, helo: str, seq: str) -> bytes:
    """The header block smtp-source sends, ending with the empty line."""
    return (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\n"
        f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
        f"Message-Id: <{seq}@{helo}>\r\n\r\n"
    ).encode()


@dataclass(frozen=True, kw_only=True)
class LoadSpec:
    """What to send, and where: the generator's whole configuration."""

    host: str = "127.0.0.1"
    port: int
    messages: int
    concurrency: int
    size: int
    sender: str = "loadgen@loadgen.example.test"
    recipient: str = "bench@example.test"
    helo: str = "loadgen.example.test"
    processes: int = 0  # 0: one per core, never more than the concurrency
    reply_timeout: float = 30.0  # per reply; RFC 5321 section 4.5.3.2 allows minutes
    deadline: float = 300.0  # for the whole run
    max_failures: int = 20  # per worker

    def __post_init__(self) -> None:
        if not (self.host.startswith("127.") or self.host == "::1"):
            raise ValueError("the load generator only targets loopback addresses")
        if self.messages < 1 or self.concurrency < 1 or self.size < 0:
            raise ValueError("messages and concurrency must be >= 1, size >= 0")

    def worker_count(self) -> int:
        wanted = self.processes or os.cpu_count() or 1
        return max(1, min(wanted, self.concurrency, self.messages))


@dataclass
class LoadResult:
    """What a run did. ``latencies`` are seconds, sorted."""

    messages: int
    accepted: int = 0
    failed: int = 0
    failure_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu_user: float = 0.0
    cpu_sys: float = 0.0
    processes: int = 0
    unsent: int = 0

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.accepted == self.messages


# Connection states: the reply each one waits for (RFC 5321 section 4.3.2).
_CONNECTING, _GREETING, _EHLO, _MAIL, _RCPT, _DATA, _DOT, _QUIT = range(8)
_EXPECT = {_GREETING: 220, _EHLO: 250, _MAIL: 250, _RCPT: 250, _DATA: 354, _DOT: 250, _QUIT: 221}
_NAMES = ("connect", "greeting", "EHLO", "MAIL", "RCPT", "DATA", "end of data", "QUIT")


class _Conn:
    __slots__ = ("deadline", "out", "parser", "sent_at", "sock", "state", "writing")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.state = _CONNECTING
        self.parser = ReplyParser()
        self.out: memoryview | None = None
        self.writing = True  # registered for EVENT_WRITE (connect in progress)
        self.sent_at = 0.0
        self.deadline = deadline


class _Worker:
    """One process's share of the connections: a selectors loop over raw sockets."""

    def __init__(self, spec: LoadSpec, slots: int, counter: Any, worker_id: int) -> None:
        self.spec = spec
        self.slots = slots
        self.counter = counter
        self.sel = selectors.DefaultSelector()
        self.payload = build_payload(spec.size) + b".\r\n"
        self.ehlo = f"EHLO {spec.helo}\r\n".encode()
        self.mail = f"MAIL FROM:<{spec.sender}>\r\n".encode()
        self.rcpt = f"RCPT TO:<{spec.recipient}>\r\n".encode()
        self.prefix = f"{os.getpid():x}.{worker_id}."
        self.seq = 0
        self.accepted = 0
        self.failed = 0
        self.samples: list[str] = []
        self.latencies = array("d")
        self.live = 0
        self.exhausted = False

    def claim(self) -> bool:
        """Take one message from the shared counter; False when all are taken."""
        if self.exhausted or self.failed >= self.spec.max_failures:
            return False
        with self.counter.get_lock():
            if self.counter.value <= 0:
                self.exhausted = True
                return False
            self.counter.value -= 1
        return True

    def fail(self, conn: _Conn, why: str) -> None:
        self.failed += 1
        if len(self.samples) < 10:
            self.samples.append(f"{_NAMES[conn.state]}: {why}")
        self.close(conn)

    def close(self, conn: _Conn) -> None:
        self.sel.unregister(conn.sock)
        conn.sock.close()
        self.live -= 1
        self.start_next()

    def start_next(self) -> None:
        if not self.claim():
            return
        sock = socket.socket(socket.AF_INET6 if ":" in self.spec.host else socket.AF_INET)
        sock.setblocking(False)
        # Commands are written whole, so Nagle could only delay the tail of a large DATA.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, time.perf_counter() + self.spec.reply_timeout)
        self.live += 1
        err = sock.connect_ex((self.spec.host, self.spec.port))
        self.sel.register(sock, selectors.EVENT_WRITE, conn)
        if err not in (0, errno.EINPROGRESS):
            self.fail(conn, os.strerror(err))

    def send(self, conn: _Conn, data: bytes) -> None:
        try:
            n = conn.sock.send(data)
        except BlockingIOError:
            n = 0
        if n < len(data):
            conn.out = memoryview(data)[n:]
            if not conn.writing:
                self.sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
                conn.writing = True
            return
        self.sent(conn)

    def sent(self, conn: _Conn) -> None:
        conn.out = None
        if conn.state == _DOT:
            conn.sent_at = time.perf_counter()
        if conn.writing:
            self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
            conn.writing = False

    def on_writable(self, conn: _Conn) -> None:
        if conn.state == _CONNECTING:
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.fail(conn, os.strerror(err))
                return
            conn.state = _GREETING
            self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
            conn.writing = False
            return
        assert conn.out is not None
        try:
            n = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        conn.out = conn.out[n:]
        if not conn.out:
            self.sent(conn)

    def on_readable(self, conn: _Conn, now: float) -> None:
        data = conn.sock.recv(65536)
        if not data:
            self.fail(conn, "connection closed by server")
            return
        conn.deadline = now + self.spec.reply_timeout
        conn.parser.feed(data)
        while (reply := conn.parser.next_reply()) is not None:
            if not self.on_reply(conn, reply, now):
                return

    def on_reply(self, conn: _Conn, reply: Reply, now: float) -> bool:
        """Act on one reply; False when the connection is finished (closed)."""
        state = conn.state
        if reply.code != _EXPECT.get(state):
            text = b" ".join(reply.lines)[:120].decode("ascii", "replace")
            self.fail(conn, f"{reply.code} {text}")
            return False
        if state == _GREETING:
            conn.state = _EHLO
            self.send(conn, self.ehlo)
        elif state == _EHLO:
            conn.state = _MAIL
            self.send(conn, self.mail)
        elif state == _MAIL:
            conn.state = _RCPT
            self.send(conn, self.rcpt)
        elif state == _RCPT:
            conn.state = _DATA
            self.send(conn, b"DATA\r\n")
        elif state == _DATA:
            conn.state = _DOT
            self.seq += 1
            headers = message_headers(
                self.spec.sender, self.spec.recipient, self.spec.helo, f"{self.prefix}{self.seq}"
            )
            self.send(conn, headers + self.payload)
        elif state == _DOT:
            # perf_counter again rather than the loop's `now`: the reply may have waited
            # behind other sockets' work, which is this process's delay, not the server's.
            self.latencies.append(time.perf_counter() - conn.sent_at)
            self.accepted += 1
            conn.state = _QUIT
            self.send(conn, b"QUIT\r\n")
        else:  # _QUIT: 221 read; the message was counted at its 250
            self.close(conn)
            return False
        return True

    def run(self, deadline: float) -> None:
        for _ in range(self.slots):
            self.start_next()
        next_sweep = time.perf_counter() + 1.0
        while self.live:
            events = self.sel.select(timeout=0.5)
            now = time.perf_counter()
            for key, mask in events:
                conn: _Conn = key.data
                if conn.sock.fileno() < 0:  # closed earlier in this batch
                    continue
                try:
                    if mask & selectors.EVENT_WRITE:
                        self.on_writable(conn)
                    elif mask & selectors.EVENT_READ:
                        self.on_readable(conn, now)
                except (OSError, ReplyError) as exc:
                    if conn.sock.fileno() >= 0:
                        self.fail(conn, str(exc) or type(exc).__name__)
            if now >= next_sweep:
                next_sweep = now + 1.0
                self.sweep(now, deadline)

    def sweep(self, now: float, deadline: float) -> None:
        past_deadline = now >= deadline
        if past_deadline:
            self.exhausted = True  # start nothing new
        for key in list(self.sel.get_map().values()):
            conn = key.data
            if past_deadline or now >= conn.deadline:
                self.fail(conn, "timeout" if not past_deadline else "run deadline reached")


def _worker_main(
    *,
    spec: LoadSpec,
    slots: int,
    counter: Any,
    worker_id: int,
    go: multiprocessing.synchronize.Event,
    pipe: multiprocessing.connection.Connection,
) -> None:
    # Ctrl-C reaches the whole process group; the parent decides what happens to workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = _Worker(spec, slots, counter, worker_id)
    pipe.send("ready")
    go.wait()
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_SELF)
    worker.run(start + spec.deadline)
    end = time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_SELF)
    pipe.send(
        {
            "accepted": worker.accepted,
            "failed": worker.failed,
            "samples": worker.samples,
            "latencies": worker.latencies,
            "end": end,
            "cpu_user": after.ru_utime - before.ru_utime,
            "cpu_sys": after.ru_stime - before.ru_stime,
        }
    )
    pipe.close()


def split_slots(concurrency: int, workers: int) -> list[int]:
    """Share C connections between W workers as evenly as possible."""
    base, extra = divmod(concurrency, workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


def run_load(spec: LoadSpec) -> LoadResult:
    """Send ``spec.messages`` messages and wait for the result (blocking, forks workers)."""
    # fork: the workers need no re-import and start in milliseconds; the harness that
    # calls this is single-threaded, which is what makes fork safe here.
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("q", spec.messages)
    go = ctx.Event()
    workers = spec.worker_count()
    procs: list[multiprocessing.process.BaseProcess] = []
    pipes: list[multiprocessing.connection.Connection] = []
    result = LoadResult(messages=spec.messages, processes=workers)
    try:
        for i, slots in enumerate(split_slots(spec.concurrency, workers)):
            parent_end, child_end = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_worker_main,
                kwargs={
                    "spec": spec,
                    "slots": slots,
                    "counter": counter,
                    "worker_id": i,
                    "go": go,
                    "pipe": child_end,
                },
                daemon=True,
            )
            proc.start()
            child_end.close()
            procs.append(proc)
            pipes.append(parent_end)
        for pipe in pipes:
            if not pipe.poll(30) or pipe.recv() != "ready":
                raise RuntimeError("a load generator worker did not start")
        start = time.perf_counter()
        go.set()
        ends: list[float] = []
        latencies: list[float] = []
        for pipe in pipes:
            # The run deadline bounds every worker; the margin covers its final sweep.
            if not pipe.poll(spec.deadline + 30):
                raise RuntimeError("a load generator worker did not finish")
            report = pipe.recv()
            result.accepted += report["accepted"]
            result.failed += report["failed"]
            result.failure_samples += report["samples"]
            result.cpu_user += report["cpu_user"]
            result.cpu_sys += report["cpu_sys"]
            latencies.extend(report["latencies"])
            ends.append(report["end"])
        result.wall = max(ends) - start
        result.latencies = sorted(latencies)
        # Messages no worker claimed (every worker gave up, or the deadline hit) never
        # got a 250: they are failures too.
        result.unsent = int(counter.value)
        result.failed += result.unsent
        return result
    except BaseException:
        for worker in procs:  # interrupted or broken: no reason to wait for them
            worker.kill()
        raise
    finally:
        for worker in procs:
            worker.join(5)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for pipe in pipes:
            pipe.close()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (0 <= q <= 100) of an ascending sequence."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be within [0, 100]")
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)
