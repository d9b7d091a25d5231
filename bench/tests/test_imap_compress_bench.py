"""imap_compress_bench.py's own parts: the client's framing of an answer, plain and
inflated, and the table's ratios."""

from __future__ import annotations

import socket
import threading
import zlib

import imap_compress_bench as icb
import pytest


def test_the_client_reads_up_to_its_tagged_line_plain_and_compressed() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    literal = b"F1X OK inside a literal\r\n" * 3

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"* OK ready\r\n")
            assert conn.recv(100).startswith(b"a LOGIN ")
            conn.sendall(b"a OK in\r\n")
            assert conn.recv(100) == b"z COMPRESS DEFLATE\r\n"
            conn.sendall(b"z OK DEFLATE active\r\n")
            deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
            inflate = zlib.decompressobj(-15)
            assert inflate.decompress(conn.recv(100)) == b"s SELECT INBOX\r\n"
            answer = b"* 1 EXISTS\r\ns OK done\r\n"
            conn.sendall(deflate.compress(answer) + deflate.flush(zlib.Z_SYNC_FLUSH))
            inflate.decompress(conn.recv(100))
            body = b"* 1 FETCH (BODY[] {%d}\r\n" % len(literal) + literal + b")\r\n"
            for piece in (body[:10], body[10:], b"F1X OK fetched\r\n"):
                conn.sendall(deflate.compress(piece) + deflate.flush(zlib.Z_SYNC_FLUSH))

    thread = threading.Thread(target=serve)
    thread.start()
    client = icb.Client(port)
    client.login_select(compress=True)
    client.send(b"F1X UID FETCH 1:* (BODY.PEEK[])")
    data = client.answer(b"F1X")
    client.sock.close()
    thread.join()
    listener.close()
    assert data.endswith(literal + b")\r\nF1X OK fetched\r\n")
    assert client.wire_in < len(data) + 100


def test_the_table_gives_wire_and_cpu_ratios() -> None:
    runs = [
        icb.Run("sansmail", "plain", 3000, 3000, 0.05, 0.02, 0.02),
        icb.Run("sansmail", "deflate", 600, 3000, 0.15, 0.10, 0.03),
        icb.Run("dovecot", "plain", 3000, 3000, 0.03, 0.01, 0.02),
        icb.Run("dovecot", "deflate", 500, 3000, 0.12, 0.08, 0.03),
    ]
    text = icb.table(runs)
    assert "sansmail: wire plain/deflate 5.00x, server CPU deflate/plain 5.00x" in text
    assert "dovecot: wire plain/deflate 6.00x, server CPU deflate/plain 8.00x" in text
    assert "sansmail/dovecot, deflate: wire 1.20x, server CPU 1.25x" in text
    assert text.index("| sansmail |") < text.index("| dovecot |")


@pytest.mark.parametrize("leaf", icb.WAITING)
def test_waiting_leaves_are_frame_prefixes(leaf: str) -> None:
    assert leaf.endswith(" ")
