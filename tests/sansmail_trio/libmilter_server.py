"""A milter nobody here wrote, for the adapter's tests: python-libmilter (a pure-Python
libmilter, a test-only dependency) serving on 127.0.0.1 or a Unix socket, one thread per
connection, with a behaviour chosen by what it is sent:

- a recipient containing "spamtrap" is rejected at RCPT;
- at end of message, the Subject decides: "reject" -> REJECT, "tempfail" -> TEMPFAIL,
  "replycode" -> 554 5.7.1 with its own text, "discard" -> DISCARD, "body" -> the body
  replaced, "reroute" -> alice@example.test deleted, bob@example.test added and the
  sender changed to bounces@example.test, anything else -> an "X-Milter: seen by
  libmilter" field added;
- every callback is recorded in `LibMilter.calls` as (connection number, name, data).

Named libmilter_server, not milter_helpers: the core's tests have a module of that name,
and both folders' modules share one namespace in a pytest process.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

lm: Any = pytest.importorskip("libmilter")

__all__ = ["LibMilter", "libmilter_fixture"]

OPTIONS = (
    lm.SMFIF_ADDHDRS
    | lm.SMFIF_CHGHDRS
    | lm.SMFIF_CHGBODY
    | lm.SMFIF_QUARANTINE
    | lm.SMFIF_ADDRCPT
    | lm.SMFIF_DELRCPT
    | lm.SMFIF_CHGFROM
)


class ScriptMilter(lm.ThreadMixin, lm.MilterProtocol):  # type: ignore[misc]
    """One connection's milter (python-libmilter's protocol in a thread)."""

    server: LibMilter
    number = 0

    def __init__(self, opts: int = OPTIONS, protos: int = 0) -> None:
        lm.MilterProtocol.__init__(self, opts, protos)
        lm.ThreadMixin.__init__(self)
        self.subject = b""

    def record(self, name: str, data: object = None) -> None:
        self.server.calls.append((self.number, name, data))

    def connect(self, hostname: bytes, family: bytes, ip: bytes, port: int, md: Any) -> bytes:
        self.record("connect", (hostname, family, ip, port, dict(md)))
        return bytes(lm.CONTINUE)

    def helo(self, heloname: bytes) -> bytes:
        self.record("helo", heloname)
        return bytes(lm.CONTINUE)

    def mailFrom(self, frAddr: bytes, md: Any) -> bytes:  # noqa: N803
        self.record("mail", frAddr)
        return bytes(lm.CONTINUE)

    def rcpt(self, recip: bytes, md: Any) -> bytes:
        self.record("rcpt", recip)
        return bytes(lm.REJECT if b"spamtrap" in recip else lm.CONTINUE)

    def header(self, key: bytes, val: bytes, md: Any) -> bytes:
        self.record("header", (key, val))
        if key.lower() == b"subject":
            self.subject = val.lower()
        return bytes(lm.CONTINUE)

    def eoh(self, md: Any) -> bytes:
        return bytes(lm.CONTINUE)

    def data(self, md: Any) -> bytes:
        return bytes(lm.CONTINUE)

    def body(self, chunk: bytes, md: Any) -> bytes:
        self.record("body", chunk)
        return bytes(lm.CONTINUE)

    def eob(self, md: Any) -> bytes:
        self.record("eob", self.subject)
        subject = self.subject
        if b"tempfail" in subject:
            return bytes(lm.TEMPFAIL)
        if b"replycode" in subject:
            reply = lm.SMFIR_REPLYCODE + b"554 5.7.1 refused by the test milter\0"
            return bytes(lm.pack_uint32(len(reply))) + reply
        if b"reject" in subject:
            return bytes(lm.REJECT)
        if b"discard" in subject:
            return bytes(lm.DISCARD)
        if b"reroute" in subject:
            self.delRcpt(b"<alice@example.test>")
            self.addRcpt(b"<bob@example.test>")
            self.chgFrom(b"<bounces@example.test>")
        elif b"body" in subject:
            self.replBody(b"replaced by the milter\r\n")
        else:
            self.addHeader(b"X-Milter", b"seen by libmilter")
        return bytes(lm.CONTINUE)

    def abort(self) -> None:
        self.record("abort")

    def close(self) -> None:
        self.record("close")


class LibMilter:
    """The milter server; a context manager. `address` is what `[milter] milters`
    takes: ("127.0.0.1", port), or the socket's Path when `unix_path` is given."""

    def __init__(self, unix_path: pathlib.Path | None = None) -> None:
        if unix_path is None:
            self.listener = socket.create_server(("127.0.0.1", 0))
            host, port = self.listener.getsockname()[:2]
            self.address: tuple[str, int] | pathlib.Path = (host, port)
        else:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(str(unix_path))
            self.listener.listen()
            self.address = unix_path
        self.calls: list[tuple[int, str, object]] = []
        self.connections = 0
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def spec(self) -> str:
        """The address as a config file spells it."""
        if isinstance(self.address, tuple):
            return f"inet:{self.address[0]}:{self.address[1]}"
        return f"unix:{self.address}"

    def names(self, connection: int | None = None) -> list[str]:
        return [name for n, name, _ in self.calls if connection is None or n == connection]

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # closed
            sock.settimeout(30)
            self.connections += 1
            milter = ScriptMilter()
            milter.server = self
            milter.number = self.connections
            milter.transport = sock
            milter.daemon = True
            self._sockets.append(sock)
            self._threads.append(milter)
            milter.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._accepting.join(10)
        for sock in self._sockets:
            # python-libmilter drops its socket without closing it.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(10)

    def __enter__(self) -> LibMilter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(name="libmilter")
def libmilter_fixture() -> Iterator[LibMilter]:
    with LibMilter() as server:
        yield server
