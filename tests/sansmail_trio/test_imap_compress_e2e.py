"""COMPRESS=DEFLATE (RFC 4978) end to end, against serve() on 127.0.0.1.

- ``mbsync`` (isync 1.4 and later) sends COMPRESS DEFLATE by itself once the server
  lists it after login (its NEWS: "Support for compressed data transfer has been
  added"); a pull of a small mailbox over imaps goes through it. The other installed
  clients: ``offlineimap3`` with ``usecompression = yes`` (imaplib2's
  enable_compression); curl has no COMPRESS, and Debian's neomutt 20220429 is built
  without zlib (no ``imap_deflate``).
- imaplib with a small zlib wrapper (`DeflatingIMAP`, the way imaplib2 does it) for a
  whole session over STARTTLS and over implicit TLS, byte counts included;
- a raw TLS socket for what no polite client sends: a command pipelined behind
  COMPRESS, a corrupt deflate stream, and a deflate bomb (a line of many MiB in a few
  dozen KiB), which must end in a protocol error and a close without the server ever
  holding the inflated line.
"""

from __future__ import annotations

import contextlib
import imaplib
import pathlib
import re
import shutil
import socket
import ssl
import subprocess
import tracemalloc
import zlib
from typing import Any

import pytest
import trio
import trustme
from test_imap_e2e import ALICE, connect_imaps, deliver, imap_server, in_thread, ok
from trio_helpers import BOTH_BACKENDS, RunningServer, logged

from sansmail.mail.address import MailboxId

# The tests of an in-process server run on both storage backends.
pytestmark = BOTH_BACKENDS

MBSYNC = shutil.which("mbsync")
OFFLINEIMAP = shutil.which("offlineimap")
# imaplib knows no COMPRESS; it may send it in any state (the server is what refuses).
imaplib.Commands.setdefault("COMPRESS", ("NONAUTH", "AUTH", "SELECTED"))


def message(number: int) -> bytes:
    body = "".join(
        f"line {i} of message {number}, which says much what the others say\r\n" for i in range(40)
    )
    return (
        f"From: Sender {number % 7} <s{number % 7}@example.org>\r\n"
        f"To: {ALICE}\r\n"
        f"Subject: message {number}\r\n"
        f"Message-ID: <m{number}@example.org>\r\n"
        "\r\n"
        f"{body}"
    ).encode()


def fill_inbox(server: RunningServer, count: int) -> list[bytes]:
    """`count` messages written into the INBOX's Maildir, as a delivery agent would; on
    PostgreSQL appended through the IMAP store itself (no client round trips)."""
    if server.dsn is not None:
        return _append_pg(server.dsn, [message(number) for number in range(count)])
    root = server.maildir(ALICE)
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    written = []
    for number in range(count):
        data = message(number)
        (root / "cur" / f"1767600000.M{number}P1Q{number}.fill:2,S").write_bytes(data)
        written.append(data)
    return written


def _append_pg(dsn: str, messages: list[bytes]) -> list[bytes]:
    """`messages` appended, \\Seen, to ALICE's INBOX in the database `dsn`."""
    from sansmail.storage.pg import Database  # noqa: PLC0415
    from sansmail.storage.pg._imapstore import PgImapStore  # noqa: PLC0415

    local, _, domain = ALICE.partition("@")
    db = Database(dsn)
    try:
        account = PgImapStore(db, hostname="mx.example.test").account(
            MailboxId(domain=domain, local=local)
        )
        try:
            for data in messages:
                account.append("INBOX", data, ["\\Seen"])
        finally:
            account.close()
    finally:
        db.close()
    return messages


class DeflatingIMAP(imaplib.IMAP4):
    """imaplib's IMAP4 (or, as a mixin before it, IMAP4_SSL) with COMPRESS=DEFLATE:
    after `compress()` every octet goes through zlib, both ways. Counts the octets on the
    wire and in the conversation once compression is on."""

    _deflate: Any = None

    def compress(self) -> None:
        typ, data = self._simple_command("COMPRESS", "DEFLATE")
        assert typ == "OK", data
        assert data == [b"DEFLATE active"]
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._inflate = zlib.decompressobj(-15)
        self._plain = bytearray()
        self.wire_in = self.wire_out = self.plain_in = self.plain_out = 0

    def send(self, data: bytes) -> None:
        if self._deflate is None:
            super().send(data)
            return
        out = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.plain_out += len(data)
        self.wire_out += len(out)
        self.sock.sendall(out)

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise self.abort("socket closed")
        self.wire_in += len(chunk)
        plain = self._inflate.decompress(chunk)
        self.plain_in += len(plain)
        self._plain += plain

    def read(self, size: int) -> bytes:
        if self._deflate is None:
            return super().read(size)
        while len(self._plain) < size:
            self._more()
        data = bytes(self._plain[:size])
        del self._plain[:size]
        return data

    def readline(self) -> bytes:
        if self._deflate is None:
            return super().readline()
        while (end := self._plain.find(b"\n")) < 0:
            self._more()
        line = bytes(self._plain[: end + 1])
        del self._plain[: end + 1]
        return line


class DeflatingIMAPSSL(DeflatingIMAP, imaplib.IMAP4_SSL):
    pass


def session(client: DeflatingIMAP, expected: list[bytes]) -> dict[str, int]:
    """Log in, compress, and do what a client does; returns the byte counts."""
    ok(client.login(ALICE, "secret"))
    assert "COMPRESS=DEFLATE" in ok(client.capability())[0].decode().split()
    client.compress()
    # A second COMPRESS is refused, and the session goes on (compressed).
    typ, data = client._simple_command("COMPRESS", "DEFLATE")
    assert (typ, data) == ("NO", [b"[COMPRESSIONACTIVE] COMPRESS already active"])
    assert ok(client.select("INBOX")) == [str(len(expected)).encode()]
    fetched = ok(client.fetch("1:*", "(BODY.PEEK[])"))
    bodies = [item[1] for item in fetched if isinstance(item, tuple)]
    assert bodies == expected
    ok(client.append("INBOX", None, None, message(999)))
    assert ok(client.search(None, "SUBJECT", '"message 999"')) == [str(len(expected) + 1).encode()]
    client.logout()
    return {
        "wire_in": client.wire_in,
        "plain_in": client.plain_in,
        "wire_out": client.wire_out,
        "plain_out": client.plain_out,
    }


async def test_a_compressed_session_over_starttls(start_server, tls_files, client_tls):
    server = await imap_server(start_server, tls_files)
    expected = fill_inbox(server, 50)

    def run() -> dict[str, int]:
        client = DeflatingIMAP("127.0.0.1", server.port_of("imap"), timeout=10)
        client.starttls(client_tls)
        return session(client, expected)

    counts = await in_thread(run)
    # 50 messages alike: the answers shrink several times over.
    assert counts["plain_in"] > sum(map(len, expected))
    assert counts["wire_in"] * 4 < counts["plain_in"], counts


async def test_a_compressed_session_over_implicit_tls(start_server, tls_files, client_tls):
    server = await imap_server(start_server, tls_files)
    expected = fill_inbox(server, 50)

    def run() -> dict[str, int]:
        client = DeflatingIMAPSSL(
            "127.0.0.1", server.port_of("imaps"), ssl_context=client_tls, timeout=10
        )
        return session(client, expected)

    counts = await in_thread(run)
    assert counts["wire_in"] * 4 < counts["plain_in"], counts


async def test_compress_is_refused_before_login_and_for_other_mechanisms(
    start_server, tls_files, client_tls
):
    server = await imap_server(start_server, tls_files)

    def run() -> tuple[str, tuple[str, list[Any]]]:
        client = connect_imaps(server, client_tls)
        try:
            client._simple_command("COMPRESS", "DEFLATE")
        except imaplib.IMAP4.error as exc:
            before_login = str(exc)
        else:
            before_login = "accepted"
        ok(client.login(ALICE, "secret"))
        answer = client._simple_command("COMPRESS", "X-ZSTD")
        ok(client.noop())  # still uncompressed
        client.logout()
        return before_login, answer

    before_login, answer = await in_thread(run)
    assert "COMPRESS is not valid in the NOT_AUTHENTICATED state" in before_login
    assert answer == ("NO", [b"COMPRESS mechanism not supported"])


# --- a raw client: what polite clients never send --------------------------------------


class RawTLS:
    """A blocking TLS client that speaks bytes; `compress()` switches both ways."""

    def __init__(self, server: RunningServer, context: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", server.port_of("imaps")), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.buf = bytearray()
        self.deflate: Any = None
        self.inflate: Any = None

    def send(self, data: bytes) -> None:
        if self.deflate is not None:
            data = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed with {bytes(self.buf)!r} unread")
            self.buf += self.inflate.decompress(chunk) if self.inflate is not None else chunk
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    def until_tagged(self, tag: bytes) -> list[bytes]:
        lines = [self.line()]
        while not lines[-1].startswith(tag + b" "):
            lines.append(self.line())
        return lines

    def login_and_compress(self, *, pipelined: bytes = b"") -> None:
        assert self.line().startswith(b"* OK")
        self.send(b"a LOGIN alice@example.test secret\r\n")
        assert self.until_tagged(b"a")[-1].startswith(b"a OK")
        self.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        behind = self.deflate.compress(pipelined) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(b"z COMPRESS DEFLATE\r\n" + (behind if pipelined else b""))
        assert self.line() == b"z OK DEFLATE active"
        self.inflate = zlib.decompressobj(-15)
        # What was read past the OK is compressed already.
        self.buf = bytearray(self.inflate.decompress(bytes(self.buf)))

    def rest(self) -> bytes:
        """Everything until the server closes, inflated."""
        data = bytearray(self.buf)
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            data += self.inflate.decompress(chunk)
        return bytes(data)

    def close(self) -> None:
        self.sock.close()


async def test_a_command_pipelined_behind_compress_is_inflated(start_server, tls_files, client_tls):
    server = await imap_server(start_server, tls_files)

    def run() -> list[bytes]:
        client = RawTLS(server, client_tls)
        try:
            client.login_and_compress(pipelined=b"n NOOP\r\nc CAPABILITY\r\n")
            answers = client.until_tagged(b"n") + client.until_tagged(b"c")
            client.send(b"l LOGOUT\r\n")
            answers += client.until_tagged(b"l")
            return answers
        finally:
            client.close()

    answers = await in_thread(run)
    assert answers[0] == b"n OK NOOP completed"
    assert answers[1].startswith(b"* CAPABILITY IMAP4rev1 ")
    assert answers[2:] == [
        b"c OK CAPABILITY completed",
        b"* BYE Logging out",
        b"l OK LOGOUT completed",
    ]


async def test_idle_news_arrives_compressed(start_server, tls_files, client_tls):
    # IDLE's pusher writes beside the task waiting for DONE: both through one deflate.
    server = await imap_server(start_server, tls_files)

    def start() -> RawTLS:
        client = RawTLS(server, client_tls)  # blocking: not on the server's loop
        client.login_and_compress()
        client.send(b"s SELECT INBOX\r\n")
        assert client.until_tagged(b"s")[-1].startswith(b"s OK")
        client.send(b"i IDLE\r\n")
        assert client.line() == b"+ idling"
        return client

    def news_then_done() -> list[bytes]:
        lines = [client.line()]
        while not lines[-1].endswith(b" RECENT"):
            lines.append(client.line())
        client.send(b"DONE\r\n")
        lines += client.until_tagged(b"i")
        client.send(b"n NOOP\r\n")
        lines += client.until_tagged(b"n")
        return lines

    client = await in_thread(start)
    try:
        await deliver(server, message(1))
        lines = await in_thread(news_then_done)
    finally:
        client.close()
    assert lines == [
        b"* 1 EXISTS",
        b"* 1 RECENT",
        b"i OK IDLE terminated",
        b"n OK NOOP completed",
    ]


async def test_a_corrupt_deflate_stream_ends_with_bye_and_a_log_line(
    start_server, tls_files, client_tls, caplog
):
    caplog.set_level("DEBUG", logger="sansmail")
    server = await imap_server(start_server, tls_files)

    def run() -> bytes:
        client = RawTLS(server, client_tls)
        try:
            client.login_and_compress()
            # 0xff: a final block of type 3, which does not exist (RFC 1951 §3.2.3).
            client.sock.sendall(b"\xff\xff\xff\xff")
            return client.rest()
        finally:
            client.close()

    assert await in_thread(run) == b"* BYE Corrupt compressed data, closing\r\n"
    lines = await logged(caplog, "sansmail.imap", lambda ls: any("logout:" in x for x in ls))
    assert any(line.endswith(": COMPRESS: DEFLATE") for line in lines), lines
    assert any("protocol error: corrupt compressed data: " in line for line in lines), lines
    assert any("reason=protocol error" in line for line in lines), lines
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


async def test_a_corrupt_stream_while_idling_is_a_protocol_error_not_a_bug(
    start_server, tls_files, client_tls, caplog
):
    # The wait for DONE runs beside IDLE's pusher in a nursery; an error raised out of it
    # would come out in an ExceptionGroup, which the session took for a bug (a traceback
    # and a BYE [SERVERBUG]).
    caplog.set_level("INFO", logger="sansmail")
    server = await imap_server(start_server, tls_files)

    def run() -> bytes:
        client = RawTLS(server, client_tls)
        try:
            client.login_and_compress()
            client.send(b"s SELECT INBOX\r\n")
            assert client.until_tagged(b"s")[-1].startswith(b"s OK")
            client.send(b"i IDLE\r\n")
            assert client.line() == b"+ idling"
            client.sock.sendall(b"\xff\xff\xff\xff")
            return client.rest()
        finally:
            client.close()

    assert await in_thread(run) == b"* BYE Corrupt compressed data, closing\r\n"
    lines = await logged(caplog, "sansmail.imap", lambda ls: any("logout:" in x for x in ls))
    assert any("reason=protocol error" in line for line in lines), lines
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


async def test_data_after_the_end_of_the_deflate_stream_is_refused(
    start_server, tls_files, client_tls, caplog
):
    server = await imap_server(start_server, tls_files)

    def run() -> bytes:
        client = RawTLS(server, client_tls)
        try:
            client.login_and_compress()
            # A stream the client ends (Z_FINISH), then plain octets behind it.
            client.sock.sendall(client.deflate.compress(b"n NOOP\r\n") + client.deflate.flush())
            client.sock.sendall(b"x NOOP\r\n")
            return client.rest()
        finally:
            client.close()

    answer = await in_thread(run)
    assert answer.endswith(b"* BYE Corrupt compressed data, closing\r\n"), answer
    assert b"x OK" not in answer


async def test_a_deflate_bomb_is_a_protocol_error_not_memory(
    start_server, tls_files, client_tls, caplog
):
    caplog.set_level("INFO", logger="sansmail")
    server = await imap_server(start_server, tls_files)
    size = 256 * 1024 * 1024
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = b"x" * (1024 * 1024)
    bomb = b"".join(deflate.compress(piece) for _ in range(size // len(piece)))
    bomb = deflate.compress(b"b NOOP ") + bomb + deflate.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < size // 500  # a few hundred KiB stand for 256 MiB

    def run() -> bytes:
        client = RawTLS(server, client_tls)
        try:
            client.login_and_compress()
            with contextlib.suppress(OSError):  # the server may close before reading it all
                client.sock.sendall(bomb)
            return client.rest()
        finally:
            client.close()

    tracemalloc.start()
    try:
        answer = await in_thread(run)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The server held at most its 64 KiB line limit and an inflated piece or two, never
    # the line (the client's side keeps only the compressed octets it sends).
    assert peak < 16 * 1024 * 1024, peak
    # The BYE may be lost to the reset of a close with the bomb's tail unread.
    assert answer == b"" or answer.startswith(b"* BYE "), answer
    lines = await logged(caplog, "sansmail.imap", lambda ls: any("logout:" in x for x in ls))
    assert any("protocol error" in line for line in lines), lines
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


# --- a real client that is not ours ------------------------------------------------------


@pytest.fixture
def tls_files(tls_ca: trustme.CA, tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A certificate for localhost with the name in its common name too: offlineimap3's
    imaplib2 insists on one (test_imap_sync_clients.py says more)."""
    cert = tls_ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


def compressed_sessions(caplog: pytest.LogCaptureFixture) -> int:
    """Sessions whose COMPRESS the server took (its DEBUG line)."""
    return sum(r.getMessage().endswith(": COMPRESS: DEFLATE") for r in caplog.records)


@pytest.mark.skipif(MBSYNC is None, reason="isync (mbsync) is not installed")
async def test_mbsync_pulls_a_mailbox_through_compress(
    start_server, tls_files, tls_ca: trustme.CA, tmp_path: pathlib.Path, caplog
):
    caplog.set_level("DEBUG", logger="sansmail")
    server = await imap_server(start_server, tls_files)
    expected = fill_inbox(server, 200)
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    local = tmp_path / "local"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        "IMAPAccount sansmail\n"
        "Host localhost\n"
        f"Port {server.port_of('imaps')}\n"
        f"User {ALICE}\n"
        "Pass secret\n"
        "SSLType IMAPS\n"
        f"CertificateFile {ca_file}\n"
        "\n"
        "IMAPStore far\nAccount sansmail\n\n"
        f"MaildirStore near\nPath {local}/\nInbox {local}/INBOX\n\n"
        "Channel pull\nFar :far:\nNear :near:\nPatterns INBOX\n"
        "Create Near\nSync Pull\nSyncState *\n"
    )
    assert MBSYNC is not None
    # -Dn: mbsync's IMAP trace, which shows the commands it sends.
    done = await trio.run_process(
        [MBSYNC, "-c", str(rc), "-Dn", "-a"],
        capture_stdout=True,
        stderr=subprocess.STDOUT,
        check=False,
    )
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, output[-3000:]
    assert "COMPRESS DEFLATE" in output, output[-3000:]
    assert "OK DEFLATE active" in output, output[-3000:]
    pulled = [p.read_bytes() for p in (local / "INBOX" / "cur").iterdir()]
    pulled += [p.read_bytes() for p in (local / "INBOX" / "new").iterdir()]
    # mbsync stores lines with LF ends, as Maildir tools do, and adds its X-TUID field.
    pulled = [re.sub(rb"(?m)^X-TUID: .*\n", b"", data) for data in pulled]
    assert sorted(pulled) == sorted(m.replace(b"\r\n", b"\n") for m in expected)
    assert compressed_sessions(caplog) >= 1


@pytest.mark.skipif(OFFLINEIMAP is None, reason="offlineimap3 is not installed")
async def test_offlineimap_pulls_a_mailbox_through_compress(
    start_server, tls_files, tls_ca: trustme.CA, tmp_path: pathlib.Path, caplog
):
    caplog.set_level("DEBUG", logger="sansmail")
    server = await imap_server(start_server, tls_files)
    expected = fill_inbox(server, 100)
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    local = tmp_path / "local"
    rc = tmp_path / "offlineimaprc"
    rc.write_text(
        "[general]\naccounts = main\n"
        f"metadata = {tmp_path / 'meta'}\nui = basic\n\n"
        "[Account main]\nlocalrepository = near\nremoterepository = far\n\n"
        f"[Repository near]\ntype = Maildir\nlocalfolders = {local}\nsep = /\n\n"
        "[Repository far]\ntype = IMAP\nremotehost = localhost\n"
        f"remoteport = {server.port_of('imaps')}\nremoteuser = {ALICE}\n"
        f"remotepass = secret\nssl = yes\nsslcacertfile = {ca_file}\n"
        "usecompression = yes\nfolderfilter = lambda name: name == 'INBOX'\n"
    )
    assert OFFLINEIMAP is not None
    done = await trio.run_process(
        [OFFLINEIMAP, "-c", str(rc), "-o"],
        capture_stdout=True,
        stderr=subprocess.STDOUT,
        check=False,
    )
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, output[-3000:]
    assert "ERROR" not in output, output[-3000:]
    pulled = [p.read_bytes() for sub in ("cur", "new") for p in (local / "INBOX" / sub).iterdir()]
    assert sorted(pulled) == sorted(m.replace(b"\r\n", b"\n") for m in expected)
    assert compressed_sessions(caplog) >= 1
