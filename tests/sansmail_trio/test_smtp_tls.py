"""STARTTLS on the smtp listener (RFC 3207), with trustme certificates and real clients."""

from __future__ import annotations

import pathlib
import smtplib
import socket
import ssl

import trio
from trio_helpers import RawClient, StartServer

MESSAGE = b"Subject: over TLS\r\n\r\nsecret\r\n"


async def test_smtplib_starttls_then_delivers_with_esmtps(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await start_server(tls=tls_files)

    def session() -> tuple[bool, bool, int]:
        # The test certificate names 127.0.0.1 too, so full verification applies.
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo()
            offered_before = client.has_extn("starttls")
            client.starttls(context=client_tls)
            client.ehlo()
            offered_after = client.has_extn("starttls")
            client.sendmail("a@example.org", ["alice@example.test"], MESSAGE)
            code, _ = client.docmd("STARTTLS")
            return offered_before, offered_after, code

    offered_before, offered_after, again = await trio.to_thread.run_sync(session)
    assert offered_before
    assert not offered_after  # RFC 3207 §4.2: not offered again under TLS
    assert again in (502, 503)
    [stored] = server.new_messages("alice@example.test")
    head = stored.partition(b"\n\n")[0]
    assert b"with ESMTPS" in head
    assert b"(using TLSv1." in head


async def test_plaintext_pipelined_after_starttls_is_never_executed(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await start_server(users=("alice@example.test", "bob@example.test"), tls=tls_files)

    def attack() -> list[bytes]:
        c = RawClient(server.port)
        c.reply()
        c.send(b"EHLO attacker\r\n")
        c.reply()
        # The injected commands travel in the same packet as STARTTLS, in plaintext.
        c.send(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@example.test>\r\n")
        ready = c.reply()
        tls = client_tls.wrap_socket(c.sock, server_hostname="127.0.0.1")
        lines = [ready[-1]]
        try:
            tls.settimeout(10)
            while data := tls.recv(4096):
                lines.append(data)
        except (ssl.SSLError, OSError):
            pass
        finally:
            tls.close()
        return lines

    lines = await trio.to_thread.run_sync(attack)
    assert lines[0].startswith(b"220 ")
    after = b"".join(lines[1:])
    assert b"250" not in after  # neither MAIL nor RCPT was answered
    assert server.new_messages("bob@example.test") == []


async def test_self_signed_certificate_on_first_start(start_server: StartServer) -> None:
    server = await start_server()
    tls_dir = server.data_dir / "tls"
    cert = tls_dir / "selfsigned-cert.pem"
    assert cert.exists()
    assert (tls_dir / "selfsigned-key.pem").stat().st_mode & 0o777 == 0o600

    def session() -> int:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False  # the test cares about the certificate, not the name
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.starttls(context=context)
            client.sendmail("a@example.org", ["alice@example.test"], MESSAGE)
            return client.noop()[0]

    assert await trio.to_thread.run_sync(session) == 250
    assert len(server.new_messages("alice@example.test")) == 1


async def test_tls_handshake_failure_closes_quietly(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await start_server(tls=tls_files)

    def session() -> bool:
        c = RawClient(server.port)
        c.reply()
        c.send(b"EHLO c\r\n")
        c.reply()
        c.send(b"STARTTLS\r\n")
        assert c.reply()[-1].startswith(b"220")
        c.send(b"this is not a TLS ClientHello\r\n" * 4)
        try:
            c.sock.settimeout(10)
            while c.sock.recv(4096):
                pass
        except OSError:
            pass
        return True

    assert await trio.to_thread.run_sync(session)

    def next_client() -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as probe:
            return probe.recv(100)

    # The server is still fine for the next client.
    assert (await trio.to_thread.run_sync(next_client)).startswith(b"220")
