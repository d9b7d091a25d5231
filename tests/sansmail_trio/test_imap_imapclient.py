"""The imap and imaps services driven by imapclient, a client nobody here wrote, as mail
programs use it: STARTTLS and implicit TLS, rev1 and rev2 sessions, folder listing with
special-use, FETCH of ENVELOPE and BODYSTRUCTURE parsed by imapclient's own parser,
flags, SEARCH, COPY, MOVE, EXPUNGE and APPEND with UIDPLUS."""

from __future__ import annotations

import datetime
import pathlib
import ssl

import imapclient
import trio
from test_imap_e2e import ALICE, MESSAGE_1, MESSAGE_2, deliver, imap_server
from trio_helpers import BOTH_BACKENDS, StartServer

pytestmark = BOTH_BACKENDS


def _search(client: imapclient.IMAPClient, criteria: list[object], *, rev2: bool) -> list[int]:
    if not rev2:
        return list(client.search(criteria))
    # A rev2 server answers SEARCH with ESEARCH (RFC 9051 §7.3.4), which imapclient does
    # not parse: ask FETCH for the flags instead and filter here, for the keys used below.
    uidnext = client.folder_status("INBOX", ["UIDNEXT"])[b"UIDNEXT"]
    flags = client.fetch(list(range(1, uidnext)), ["FLAGS"])  # UID FETCH: gaps are fine
    if criteria == ["UNSEEN"]:
        return sorted(n for n, d in flags.items() if imapclient.SEEN not in d[b"FLAGS"])
    if criteria == ["FLAGGED"]:
        return sorted(n for n, d in flags.items() if imapclient.FLAGGED in d[b"FLAGS"])
    return sorted(flags)


def _session(client: imapclient.IMAPClient, *, rev2: bool) -> dict[str, object]:
    seen: dict[str, object] = {}
    client.login(ALICE, "secret")
    if rev2:
        seen["enabled"] = client.enable("IMAP4rev2")
    seen["capabilities"] = client.capabilities()
    folders = client.list_folders()
    seen["folders"] = {name: flags for flags, _delim, name in folders}
    selected = client.select_folder("INBOX")
    seen["exists"] = selected[b"EXISTS"]
    messages = _search(client, ["ALL"], rev2=rev2)
    fetched = client.fetch(messages, ["ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE", "FLAGS"])
    seen["envelope"] = fetched[messages[0]][b"ENVELOPE"]
    seen["bodystructure"] = fetched[messages[1]][b"BODYSTRUCTURE"]
    seen["peek"] = client.fetch(messages[:1], ["BODY.PEEK[]"])[messages[0]][b"BODY[]"]
    seen["unseen_before"] = _search(client, ["UNSEEN"], rev2=rev2)
    client.add_flags(messages[:1], [imapclient.SEEN, imapclient.FLAGGED])
    seen["unseen_after"] = _search(client, ["UNSEEN"], rev2=rev2)
    seen["flagged"] = _search(client, ["FLAGGED"], rev2=rev2)
    if not rev2:
        seen["since"] = client.search(["SINCE", datetime.date(2020, 1, 1)])
    client.copy(messages[:1], "Archive")
    client.move(messages[1:2], "Trash")
    seen["after_move"] = _search(client, ["ALL"], rev2=rev2)
    client.delete_messages(_search(client, ["ALL"], rev2=rev2))
    seen["expunged"] = client.expunge()
    appended = client.append(
        "Drafts", b"Subject: draft\r\n\r\nnot yet\r\n", flags=[imapclient.DRAFT]
    )
    seen["appenduid"] = appended
    seen["status"] = client.folder_status("Archive", ["MESSAGES", "UIDNEXT", "UNSEEN"])
    seen["trash"] = client.folder_status("Trash", ["MESSAGES"])
    client.logout()
    return seen


def _check(seen: dict[str, object], *, rev2: bool) -> None:
    caps = seen["capabilities"]
    assert isinstance(caps, tuple)
    assert b"IMAP4REV2" in caps or b"IMAP4rev2" in caps
    assert b"UIDPLUS" in caps
    if rev2:
        assert seen["enabled"] == (b"IMAP4rev2",) or b"IMAP4rev2" in seen["enabled"]  # type: ignore[operator]
    folders = seen["folders"]
    assert isinstance(folders, dict)
    assert {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"} <= set(folders)
    assert b"\\Sent" in folders["Sent"]
    assert seen["exists"] == 2
    envelope = seen["envelope"]
    assert envelope.subject == b"first"  # type: ignore[attr-defined]
    sender = envelope.from_[0]  # type: ignore[attr-defined]
    assert (sender.name, sender.mailbox, sender.host) == (b"Bob Example", b"bob", b"example.org")
    assert envelope.message_id == b"<one@example.org>"  # type: ignore[attr-defined]
    structure = seen["bodystructure"]
    assert structure.is_multipart  # type: ignore[attr-defined]
    parts, subtype = structure[0], structure[1]  # type: ignore[index]
    assert subtype == b"mixed"
    assert parts[0][:2] == (b"text", b"plain")
    assert parts[1][:2] == (b"application", b"octet-stream")
    peek = seen["peek"]
    assert isinstance(peek, bytes)
    assert peek.endswith(MESSAGE_1)
    assert seen["unseen_before"] == [1, 2]
    assert seen["unseen_after"] == [2]
    assert seen["flagged"] == [1]
    if not rev2:
        assert seen["since"] == [1, 2]
    assert seen["after_move"] == [1]
    appended = seen["appenduid"]
    assert isinstance(appended, bytes)
    assert b"APPENDUID" in appended
    assert seen["status"][b"MESSAGES"] == 1  # type: ignore[index]
    assert seen["trash"][b"MESSAGES"] == 1  # type: ignore[index]


async def test_imapclient_over_starttls_rev1(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await imap_server(start_server, tls_files)
    await deliver(server, MESSAGE_1, MESSAGE_2)

    def run() -> dict[str, object]:
        client = imapclient.IMAPClient(
            "127.0.0.1", port=server.port_of("imap"), ssl=False, timeout=10
        )
        client.starttls(ssl_context=client_tls)
        return _session(client, rev2=False)

    _check(await trio.to_thread.run_sync(run), rev2=False)


async def test_imapclient_over_imaps_rev2(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await imap_server(start_server, tls_files)
    await deliver(server, MESSAGE_1, MESSAGE_2)

    def run() -> dict[str, object]:
        client = imapclient.IMAPClient(
            "127.0.0.1", port=server.port_of("imaps"), ssl=True, ssl_context=client_tls, timeout=10
        )
        return _session(client, rev2=True)

    _check(await trio.to_thread.run_sync(run), rev2=True)
