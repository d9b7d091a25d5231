"""UTF8=ACCEPT (RFC 6855) end to end: after ENABLE UTF8=ACCEPT a client names folders in
UTF-8 and appends a message with UTF-8 header fields in APPEND's UTF8 data form
(``UTF8 (~{n}...)``, §4), which is stored as sent and read back by a session that did
not enable it.

The APPEND goes over a plain socket: imaplib (3.11) puts the "UTF8 (" wrapper inside
its literal, a known quirk, so it cannot send this form."""

from __future__ import annotations

import imaplib
import pathlib
import socket
import ssl
from typing import Any

import trio
from trio_helpers import BOTH_BACKENDS, RunningServer, StartServer

pytestmark = BOTH_BACKENDS

ALICE = "alice@example.test"
MESSAGE = "From: Jörg <jörg@example.org>\r\nSubject: Grüße\r\n\r\nHallo!\r\n".encode()


class Lines:
    """A line reader over a socket that may switch to TLS."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket) -> None:
        self.sock = sock
        self.buffer = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk, self.buffer
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def until(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            lines.append(self.line())
            if lines[-1].startswith(tag + b" "):
                return lines


def utf8_session(port: int, context: ssl.SSLContext) -> list[list[bytes]]:
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        reader = Lines(raw)
        reader.line()
        raw.sendall(b"s STARTTLS\r\n")
        assert reader.until(b"s")[-1].startswith(b"s OK")
        with context.wrap_socket(raw, server_hostname="mx.example.test") as tls:
            reader = Lines(tls)
            tls.sendall(b"a LOGIN alice@example.test secret\r\n")
            out.append(reader.until(b"a"))
            tls.sendall(b"b ENABLE UTF8=ACCEPT\r\n")
            out.append(reader.until(b"b"))
            tls.sendall('c CREATE "Grüße"\r\n'.encode())
            out.append(reader.until(b"c"))
            tls.sendall(
                'd APPEND "Grüße" (\\Seen) UTF8 (~{%d+}\r\n'.encode() % len(MESSAGE)
                + MESSAGE
                + b")\r\n"
            )
            out.append(reader.until(b"d"))
            tls.sendall(b'e LIST "" "Gr*"\r\n')
            out.append(reader.until(b"e"))
    return out


async def test_utf8_accept(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server: RunningServer = await start_server(
        tls=tls_files, listen={"smtp": "127.0.0.1:0", "imap": "127.0.0.1:0"}
    )
    port = server.port_of("imap")
    login, enable, create, append, listed = await trio.to_thread.run_sync(
        utf8_session, port, client_tls
    )
    assert b"UTF8=ACCEPT" in login[-1]
    assert enable == [b"* ENABLED UTF8=ACCEPT", b"b OK ENABLE completed"]
    assert create[-1].startswith(b"c OK")
    assert append[-1].startswith(b"d OK [APPENDUID ")
    assert listed[0] == '* LIST (\\HasNoChildren) "/" "Grüße"'.encode()

    def read_back() -> Any:
        client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
        client.starttls(client_tls)
        client.login(ALICE, "secret")
        # Not enabled here: the name travels in modified UTF-7 (RFC 3501 §5.1.3).
        typ, _ = client.select("Gr&APwA3w-e")
        assert typ == "OK"
        typ, data = client.fetch("1", "(FLAGS BODY.PEEK[])")
        client.logout()
        return typ, data

    typ, data = await trio.to_thread.run_sync(read_back)
    assert typ == "OK"
    assert data[0][1] == MESSAGE
    assert b"\\Seen" in data[0][0]
    await server.stop()
