"""MULTIAPPEND (RFC 3502) end to end with imapclient's `multiappend`: three messages in
one APPEND, with their own flags and dates, one APPENDUID with the UID set."""

from __future__ import annotations

import datetime
import pathlib
import ssl
from typing import Any

import imapclient
import trio
from test_imap_e2e import ALICE, MESSAGE_1, MESSAGE_2, imap_server
from trio_helpers import BOTH_BACKENDS, StartServer

pytestmark = BOTH_BACKENDS

THIRD = b"Subject: third\r\n\r\nthe third\r\n"


async def test_multiappend_with_imapclient(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await imap_server(start_server, tls_files)
    when = datetime.datetime(2026, 1, 5, 10, 0, tzinfo=datetime.UTC)

    def run() -> tuple[Any, dict[int, dict[bytes, Any]]]:
        client = imapclient.IMAPClient(
            "127.0.0.1", port=server.port_of("imap"), ssl=False, timeout=10
        )
        client.starttls(ssl_context=client_tls)
        client.login(ALICE, "secret")
        assert b"MULTIAPPEND" in client.capabilities()
        answer = client.multiappend(
            "Archive",
            [
                MESSAGE_1,
                {"msg": MESSAGE_2, "flags": [b"\\Seen", b"$Work"], "date": when},
                THIRD,
            ],
        )
        client.select_folder("Archive", readonly=True)
        uids = client.search("ALL")  # UIDs: imapclient's default
        fetched = client.fetch(uids, ["FLAGS", "INTERNALDATE", "BODY.PEEK[]"])
        client.logout()
        return answer, fetched

    answer, fetched = await trio.to_thread.run_sync(run)
    assert answer[0] == "OK"
    assert answer[1][0].startswith(b"[APPENDUID ")
    assert answer[1][0].split()[2] == b"1:3]"
    assert [fetched[n][b"BODY[]"] for n in (1, 2, 3)] == [MESSAGE_1, MESSAGE_2, THIRD]
    assert set(fetched[2][b"FLAGS"]) == {b"\\Seen", b"$Work"}
    assert fetched[2][b"INTERNALDATE"].replace(tzinfo=None) == datetime.datetime(2026, 1, 5, 10)
    assert b"\\Seen" not in fetched[1][b"FLAGS"]
    await server.stop()
