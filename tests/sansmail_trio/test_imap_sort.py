"""SORT, THREAD and SEARCHRES over the wire: imapclient's sort() and thread() and imaplib's
"$" against serve() on 127.0.0.1, on messages with encoded subjects and a reply chain."""

from __future__ import annotations

import datetime
import imaplib
import pathlib
import ssl

import imapclient
import trio
from test_imap_e2e import ALICE, imap_server
from trio_helpers import BOTH_BACKENDS, StartServer

pytestmark = BOTH_BACKENDS

# (Subject, From, Message-ID, References, Date)
MESSAGES = [
    ("Re: =?utf-8?q?r=C3=A9union?=", "Zed <z@x.org>", "<b@x>", "<a@x>", "2 Jan 2025 10:00 +0000"),
    ("=?utf-8?q?R=C3=A9union?=", "Amy <a@x.org>", "<a@x>", "", "1 Jan 2025 10:00 +0000"),
    ("[list] budget", "b@x.org", "<c@x>", "", "3 Jan 2025 10:00 +0000"),
    ("Re: Re: réunion", "Cy <c@y.org>", "<d@x>", "<a@x> <b@x>", "4 Jan 2025 10:00 +0000"),
    ("Budget (fwd)", "Bob <bob@x.org>", "<e@x>", "", "5 Jan 2025 10:00 +0000"),
]


def message(subject: str, sender: str, msgid: str, refs: str, date: str) -> bytes:
    lines = [f"Subject: {subject}", f"From: {sender}", f"Message-ID: {msgid}", f"Date: {date}"]
    if refs:
        lines.append(f"References: {refs}")
    head = "\r\n".join(lines)
    if not head.isascii():
        head += "\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8"
    return head.encode() + b"\r\n\r\nbody\r\n"


def session(port: int, context: ssl.SSLContext) -> dict[str, object]:
    seen: dict[str, object] = {}
    client = imapclient.IMAPClient("127.0.0.1", port=port, ssl=True, ssl_context=context)
    client.login(ALICE, "secret")
    seen["capabilities"] = client.capabilities()
    arrival = datetime.datetime(2025, 2, 1, tzinfo=datetime.UTC)
    for n, fields in enumerate(MESSAGES):
        # Arrival in the opposite order: ARRIVAL and DATE differ.
        client.append("INBOX", message(*fields), msg_time=arrival - datetime.timedelta(days=n))
    client.select_folder("INBOX")
    seen["subject"] = client.sort(["SUBJECT"])
    seen["reverse_date"] = client.sort(["REVERSE DATE"])
    seen["arrival"] = client.sort("ARRIVAL")
    seen["from"] = client.sort(["FROM", "DATE"])
    seen["displayfrom"] = client.sort(["DISPLAYFROM"])
    seen["subject_unanswered"] = client.sort(["SUBJECT"], ["NOT", "FROM", "zed"])
    seen["references"] = client.thread("REFERENCES")
    seen["orderedsubject"] = client.thread("ORDEREDSUBJECT")
    client.use_uid = False
    seen["seq_sort"] = client.sort(["SIZE", "SUBJECT"])
    client.logout()
    return seen


def searchres(port: int, context: ssl.SSLContext) -> dict[str, object]:
    seen: dict[str, object] = {}
    imap = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=10)
    imap.login(ALICE, "secret")
    imap.select("INBOX")
    seen["before"] = imap.fetch("$", "(UID)")
    seen["save"] = imap.search(None, "RETURN", "(SAVE)", "SUBJECT", "budget")
    seen["fetch"] = imap.fetch("$", "(UID)")
    seen["uid_search"] = imap.uid("SEARCH", "$")
    seen["store"] = imap.store("$", "+FLAGS", "(\\Flagged)")
    seen["flagged"] = imap.search(None, "FLAGGED")
    imap.logout()
    return seen


async def test_sort_thread_and_searchres_with_real_clients(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await imap_server(start_server, tls_files)
    port = server.port_of("imaps")
    seen = await trio.to_thread.run_sync(session, port, client_tls)
    caps = seen["capabilities"]
    assert isinstance(caps, tuple)
    for name in (b"SORT", b"SORT=DISPLAY", b"THREAD=REFERENCES", b"THREAD=ORDEREDSUBJECT"):
        assert name in caps
    assert b"SEARCHRES" in caps
    # UIDs 1..5 are the messages in order. Base subjects: réunion (1, 2, 4), budget (3, 5).
    assert seen["subject"] == [3, 5, 1, 2, 4]
    assert seen["reverse_date"] == [5, 4, 3, 1, 2]
    assert seen["arrival"] == [5, 4, 3, 2, 1]
    assert seen["from"] == [2, 3, 5, 4, 1]  # a, b, bob, c, z (local parts)
    assert seen["displayfrom"] == [2, 3, 5, 4, 1]  # amy, b@x.org, bob, cy, zed
    assert seen["subject_unanswered"] == [3, 5, 2, 4]
    # 2 <- 1 <- 4 by References; 5 "Budget (fwd)" joins 3 by subject.
    assert seen["references"] == ((2, 1, 4), (3, 5))
    assert seen["orderedsubject"] == ((2, (1,), (4,)), (3, 5))
    assert seen["seq_sort"] == sorted(
        seen["seq_sort"], key=lambda n: (len(message(*MESSAGES[n - 1])), n)
    )  # type: ignore[arg-type]

    seen = await trio.to_thread.run_sync(searchres, port, client_tls)
    assert seen["before"] == ("OK", [None])
    assert seen["save"][0] == "OK"  # type: ignore[index]
    assert seen["fetch"] == ("OK", [b"3 (UID 3)", b"5 (UID 5)"])
    assert seen["uid_search"] == ("OK", [b"3 5"])
    assert seen["flagged"] == ("OK", [b"3 5"])
