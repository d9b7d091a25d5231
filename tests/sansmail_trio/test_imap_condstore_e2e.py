"""CONDSTORE and QRESYNC (RFC 7162) end to end, against serve() on 127.0.0.1: a client
that was away resyncs with SELECT (QRESYNC ...) after flag changes, an expunge by
another session, a POP3 DELE and new deliveries, and learns exactly those; imapclient
reads HIGHESTMODSEQ and FETCH ... (CHANGEDSINCE) as it parses them; a conditional STORE
that lost the race gets [MODIFIED]; mod-sequences never go back across a restart."""

from __future__ import annotations

import imaplib
import pathlib
import poplib
import re
import ssl
from typing import Any

import imapclient
from test_imap_e2e import ALICE, connect_imaps, deliver, imap_server, in_thread, ok
from trio_helpers import BOTH_BACKENDS, RunningServer, StartServer

pytestmark = BOTH_BACKENDS


def _message(n: int) -> bytes:
    return b"Subject: m%d\r\nMessage-ID: <m%d@example.org>\r\n\r\nbody %d\r\n" % (n, n, n)


def _code(client: imaplib.IMAP4, name: str) -> int:
    """A response code imaplib kept among the untagged responses, as a number."""
    (value,) = client.untagged_responses.pop(name)
    return int(value)


def _select_state(server: RunningServer, context: ssl.SSLContext) -> tuple[int, int]:
    client = connect_imaps(server, context)
    ok(client.login(ALICE, "secret"))
    ok(client.enable("QRESYNC"))
    assert client.untagged_responses.pop("ENABLED") == [b"QRESYNC"]
    ok(client._simple_command("SELECT", "INBOX", "(CONDSTORE)"))
    state = _code(client, "UIDVALIDITY"), _code(client, "HIGHESTMODSEQ")
    client.logout()
    return state


def _pop3_delete(server: RunningServer, subject: bytes) -> None:
    pop = poplib.POP3("127.0.0.1", server.port_of("pop3"), timeout=10)
    pop.user(ALICE)
    pop.pass_("secret")
    count = len(pop.list()[1])
    (number,) = [n for n in range(1, count + 1) if b"Subject: " + subject in pop.top(n, 0)[1]]
    pop.dele(number)
    pop.quit()


async def test_qresync_after_changes_made_while_away(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await imap_server(start_server, tls_files)
    await deliver(server, *(_message(n) for n in range(1, 6)))
    validity, modseq = await in_thread(lambda: _select_state(server, client_tls))

    def others() -> None:
        # Another client flags UID 1 and expunges UID 2; POP3 deletes UID 3.
        other = imapclient.IMAPClient(
            "127.0.0.1", port=server.port_of("imaps"), ssl=True, ssl_context=client_tls
        )
        other.login(ALICE, "secret")
        other.select_folder("INBOX")
        other.add_flags([1], [imapclient.FLAGGED])
        other.delete_messages([2])
        other.expunge()
        other.logout()
        _pop3_delete(server, b"m3")

    await in_thread(others)
    await deliver(server, _message(6), _message(7))

    def resync() -> dict[str, Any]:
        client = connect_imaps(server, client_tls)
        ok(client.login(ALICE, "secret"))
        ok(client.enable("QRESYNC"))
        ok(client._simple_command("SELECT", "INBOX", f"(QRESYNC ({validity} {modseq} 1:5))"))
        client.state = "SELECTED"  # imaplib's select() has no parameters: tell it so
        seen: dict[str, Any] = {
            "exists": client.untagged_responses.pop("EXISTS"),
            "vanished": client.untagged_responses.pop("VANISHED", []),
            "fetch": client.untagged_responses.pop("FETCH", []),
            "highest": _code(client, "HIGHESTMODSEQ"),
        }
        # The same answer from UID FETCH ... (CHANGEDSINCE VANISHED).
        typ, data = client.uid("FETCH", "1:*", "(FLAGS)", f"(CHANGEDSINCE {modseq} VANISHED)")
        assert typ == "OK"
        seen["uid_fetch"] = data
        seen["uid_vanished"] = client.untagged_responses.pop("VANISHED", [])
        client.logout()
        return seen

    seen = await in_thread(resync)
    assert seen["exists"] == [b"5"]  # 1, 4, 5, 6, 7
    assert seen["vanished"] == [b"(EARLIER) 2:3"]
    fetched = [re.sub(rb"MODSEQ \(\d+\)", b"MODSEQ (n)", f) for f in seen["fetch"]]
    assert fetched == [
        b"1 (UID 1 FLAGS (\\Flagged) MODSEQ (n))",
        b"4 (UID 6 FLAGS (\\Recent) MODSEQ (n))",
        b"5 (UID 7 FLAGS (\\Recent) MODSEQ (n))",
    ]
    numbers = [int(n) for f in seen["fetch"] for n in re.findall(rb"MODSEQ \((\d+)\)", f)]
    assert all(modseq < n <= seen["highest"] for n in numbers)
    assert seen["uid_vanished"] == [b"(EARLIER) 2:3"]
    assert [re.sub(rb"MODSEQ \(\d+\)", b"", f) for f in seen["uid_fetch"]] == [
        b"1 (UID 1 FLAGS (\\Flagged) )",
        b"4 (UID 6 FLAGS (\\Recent) )",
        b"5 (UID 7 FLAGS (\\Recent) )",
    ]


async def test_imapclient_condstore_and_a_conditional_store_that_lost(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await imap_server(start_server, tls_files)
    await deliver(server, _message(1), _message(2), _message(3))

    def run() -> dict[str, Any]:
        def connect() -> imapclient.IMAPClient:
            c = imapclient.IMAPClient(
                "127.0.0.1", port=server.port_of("imaps"), ssl=True, ssl_context=client_tls
            )
            c.login(ALICE, "secret")
            return c

        one, two = connect(), connect()
        seen: dict[str, Any] = {"enabled": one.enable("CONDSTORE")}
        selected = one.select_folder("INBOX")
        two.select_folder("INBOX")
        start = selected[b"HIGHESTMODSEQ"]
        seen["start"] = start
        seen["all"] = one.fetch([1, 2, 3], ["FLAGS", "MODSEQ"])
        # The other session changes 2; the conditional STORE of 1:3 as of `start` leaves
        # 2 alone and says so.
        two.add_flags([2], [imapclient.SEEN])
        typ, data = one._imap._simple_command(
            "UID", "STORE", "1:3", f"(UNCHANGEDSINCE {start})", "+FLAGS.SILENT", "(\\Answered)"
        )
        seen["store"] = (typ, data)
        seen["changed"] = one.fetch([1, 2, 3], ["FLAGS"], modifiers=[f"CHANGEDSINCE {start}"])
        seen["examine"] = one.select_folder("INBOX", readonly=True)[b"HIGHESTMODSEQ"]
        seen["status"] = two.folder_status("INBOX", ["HIGHESTMODSEQ"])[b"HIGHESTMODSEQ"]
        one.logout()
        two.logout()
        return seen

    seen = await in_thread(run)
    assert list(seen["enabled"]) == [b"CONDSTORE"]
    start = seen["start"]
    assert sorted(seen["all"]) == [1, 2, 3]
    assert all(data[b"MODSEQ"][0] <= start for data in seen["all"].values())
    typ, data = seen["store"]
    assert typ == "OK"
    assert any(b"[MODIFIED 2]" in d for d in data if isinstance(d, bytes)), data
    changed = seen["changed"]
    assert sorted(changed) == [1, 2, 3]
    flags = {uid: set(data[b"FLAGS"]) - {imapclient.RECENT} for uid, data in changed.items()}
    assert flags == {1: {imapclient.ANSWERED}, 2: {imapclient.SEEN}, 3: {imapclient.ANSWERED}}
    assert changed[2][b"MODSEQ"][0] < changed[1][b"MODSEQ"][0] == changed[3][b"MODSEQ"][0]
    assert seen["examine"] == seen["status"] == changed[1][b"MODSEQ"][0]


async def test_modseq_never_goes_back_across_a_restart(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await imap_server(start_server, tls_files)
    await deliver(server, _message(1), _message(2))

    def change_and_read(flag: str) -> int:
        client = connect_imaps(server, client_tls)
        ok(client.login(ALICE, "secret"))
        ok(client._simple_command("SELECT", "INBOX", "(CONDSTORE)"))
        client.state = "SELECTED"
        _code(client, "HIGHESTMODSEQ")
        ok(client.store("1:*", "+FLAGS", f"({flag})"))
        typ, data = client.status("INBOX", "(HIGHESTMODSEQ)")
        assert typ == "OK"
        found = re.search(rb"HIGHESTMODSEQ (\d+)", data[0])
        assert found is not None
        client.logout()
        return int(found.group(1))

    before = await in_thread(lambda: change_and_read("\\Seen"))
    await server.stop()
    server = await imap_server(start_server, tls_files, users=())
    after = await in_thread(lambda: change_and_read("\\Flagged"))
    assert after > before
