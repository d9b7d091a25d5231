"""The imap and imaps services end to end with Python's imaplib: mail delivered by real
SMTP is read, flagged, searched, copied, moved, expunged and appended over STARTTLS and
over implicit TLS, in IMAP4rev1 and IMAP4rev2 sessions; the same message has the same
size over IMAP and POP3; two sessions on one mailbox see each other's expunges.

Every imaplib call blocks, so each test runs its client in a worker thread while the
server runs in the test's Trio loop."""

from __future__ import annotations

import imaplib
import pathlib
import poplib
import re
import smtplib
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import trio
from trio_helpers import BOTH_BACKENDS, RunningServer, StartServer

from sansmail.mail.auth import AuthSettings

pytestmark = BOTH_BACKENDS

IMAP_LISTEN = {
    "smtp": "127.0.0.1:0",
    "imap": "127.0.0.1:0",
    "imaps": "127.0.0.1:0",
    "pop3": "127.0.0.1:0",
}
ALICE = "alice@example.test"
MESSAGE_1 = (
    b"From: Bob Example <bob@example.org>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: first\r\n"
    b"Date: Mon, 5 Jan 2026 10:00:00 +0000\r\n"
    b"Message-ID: <one@example.org>\r\n"
    b"\r\n"
    b"Hello Alice, this is the first message.\r\n"
)
MESSAGE_2 = (
    b"From: carol@example.org\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: second\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="xx"\r\n'
    b"\r\n"
    b"--xx\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"part one\r\n"
    b"--xx\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAw==\r\n"
    b"--xx--\r\n"
)

_T = TypeVar("_T")


async def imap_server(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path], **kw: Any
) -> RunningServer:
    kw.setdefault("users", (ALICE, "bob@example.test"))
    return await start_server(tls=tls_files, listen=IMAP_LISTEN, **kw)  # type: ignore[no-any-return]


async def deliver(server: RunningServer, *messages: bytes, to: str = ALICE) -> None:
    def send() -> None:
        with smtplib.SMTP("127.0.0.1", server.port_of("smtp"), timeout=10) as client:
            for message in messages:
                client.sendmail("sender@example.org", [to], message)

    await trio.to_thread.run_sync(send)
    # Delivery is local and synchronous: the message is in new/ when 250 comes back.


async def in_thread(function: Callable[[], _T]) -> _T:
    return await trio.to_thread.run_sync(function)


def connect_starttls(server: RunningServer, context: ssl.SSLContext) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.port_of("imap"), timeout=10)
    assert "STARTTLS" in client.capabilities
    client.starttls(context)
    return client


def connect_imaps(server: RunningServer, context: ssl.SSLContext) -> imaplib.IMAP4:
    return imaplib.IMAP4_SSL("127.0.0.1", server.port_of("imaps"), ssl_context=context, timeout=10)


def ok(result: tuple[str, list[Any]]) -> list[Any]:
    typ, data = result
    assert typ == "OK", data
    return data


def untagged(client: imaplib.IMAP4, name: str) -> list[Any]:
    return client.untagged_responses.pop(name, [])


def code_numbers(text: bytes, code: str) -> list[str]:
    match = re.search(rb"\[" + code.encode() + rb" ([^\]]*)\]", text)
    assert match is not None, text
    return match.group(1).decode().split()


def full_session(client: imaplib.IMAP4, *, rev2: bool) -> dict[str, Any]:
    """Everything a mail client does in a first session; returns what was seen."""
    seen: dict[str, Any] = {}
    ok(client.login(ALICE, "secret"))
    caps = ok(client.capability())[0].split()
    assert b"IMAP4rev2" in caps
    assert b"AUTH=PLAIN" not in caps
    assert b"IDLE" in caps
    assert b"MOVE" in caps
    if rev2:
        ok(client._simple_command("ENABLE", "IMAP4rev2"))
        assert untagged(client, "ENABLED") == [b"IMAP4rev2"]
    listing = ok(client.list())
    names = [line.rsplit(b" ", 1)[-1].strip(b'"') for line in listing]
    assert names[0] == b"INBOX"
    assert {b"Sent", b"Trash", b"Archive"} <= set(names)
    assert any(b"\\Trash" in line for line in listing)

    assert ok(client.select("INBOX")) == [b"2"]
    seen["recent"] = untagged(client, "RECENT")
    seen["list_on_select"] = untagged(client, "LIST")
    assert untagged(client, "UIDVALIDITY")

    data = ok(client.fetch("1:2", "(UID RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY.PEEK[])"))
    first_head, first_body = data[0]
    second_head, second_body = data[2]
    # Delivery added Return-Path and Received above the message.
    assert first_body.endswith(MESSAGE_1)
    assert second_body.endswith(MESSAGE_2)
    assert first_body.startswith(b"Return-Path: <sender@example.org>\r\n")
    assert b'"first"' in first_head
    assert b'(("Bob Example" NIL "bob" "example.org"))' in first_head
    assert f"RFC822.SIZE {len(first_body)}".encode() in first_head
    assert b'"mixed"' in second_head
    assert b'"base64" 8' in second_head
    seen["size"] = len(first_body)

    # Nothing read yet (PEEK): both unseen. Reading BODY[TEXT] sets \Seen on 1.
    seen["unseen_before"] = ok(client.search(None, "UNSEEN")), untagged(client, "ESEARCH")
    text = ok(client.fetch("1", "(BODY[TEXT])"))
    assert text[0][1] == b"Hello Alice, this is the first message.\r\n"
    assert b"\\Seen" in text[0][0] or b"\\Seen" in b"".join(
        x if isinstance(x, bytes) else x[0] for x in text
    )
    flags = ok(client.store("2", "+FLAGS", "(\\Flagged $Important)"))
    assert b"\\Flagged" in flags[0]
    assert b"$Important" in flags[0]
    if rev2:
        ok(client._simple_command("SEARCH", "RETURN", "(COUNT ALL)", "UNSEEN"))
        seen["unseen"] = untagged(client, "ESEARCH")
        ok(client._simple_command("UID", "SEARCH", "SINCE", "1-Jan-2020"))
        seen["since"] = untagged(client, "ESEARCH")
    else:
        seen["unseen"] = ok(client.search(None, "UNSEEN"))
        seen["since"] = ok(client.uid("SEARCH", "SINCE", "1-Jan-2020"))

    # COPY and UID MOVE report where the messages went (UIDPLUS, RFC 4315).
    copied = ok(client.copy("1", "Archive"))
    assert code_numbers(copied[-1], "COPYUID")[1:] == ["1", "1"]
    uids = ok(client.fetch("2", "(UID)"))
    uid2 = re.search(rb"UID (\d+)", uids[0]).group(1).decode()  # type: ignore[union-attr]
    ok(client.uid("MOVE", uid2, "Trash"))
    assert any(line.startswith(b"[COPYUID ") for line in untagged(client, "OK"))
    assert untagged(client, "EXPUNGE") == [b"2"]
    # \Deleted then EXPUNGE empties the INBOX.
    ok(client.store("1", "+FLAGS.SILENT", "(\\Deleted)"))
    seen["expunged"] = ok(client.expunge())
    # APPEND with flags and date: APPENDUID gives the new UID, then it can be fetched.
    appended = ok(
        client.append(
            "Sent", "(\\Seen)", imaplib.Time2Internaldate(1767225600), b"Subject: sent\r\n\r\nx\r\n"
        )
    )
    _validity, uid = code_numbers(appended[-1], "APPENDUID")
    ok(client.select("Sent", readonly=True))
    fetched = ok(client.uid("FETCH", uid, "(FLAGS INTERNALDATE BODY.PEEK[])"))
    assert fetched[0][1] == b"Subject: sent\r\n\r\nx\r\n"
    assert b"\\Seen" in fetched[0][0]
    assert b'" 1-Jan-2026 00:00:00 +0000"' in fetched[0][0]
    assert ok(client.status("Trash", "(MESSAGES UNSEEN)"))[0].endswith(b"(MESSAGES 1 UNSEEN 1)")
    assert ok(client.status("Archive", "(MESSAGES)"))[0].endswith(b"(MESSAGES 1)")
    client.logout()
    return seen


async def test_rev1_session_over_starttls(start_server, tls_files, client_tls):
    server = await imap_server(start_server, tls_files)
    await deliver(server, MESSAGE_1, MESSAGE_2)

    def session() -> dict[str, Any]:
        return full_session(connect_starttls(server, client_tls), rev2=False)

    seen = await in_thread(session)
    assert seen["recent"] == [b"2"]
    assert seen["unseen_before"] == ([b"1 2"], [])
    assert seen["list_on_select"] == []
    assert seen["unseen"] == [b"2"]
    assert seen["since"] == [b"1 2"]
    assert seen["expunged"] == [b"1"]


async def test_rev2_session_over_imaps(start_server, tls_files, client_tls):
    server = await imap_server(start_server, tls_files)
    await deliver(server, MESSAGE_1, MESSAGE_2)

    def session() -> dict[str, Any]:
        return full_session(connect_imaps(server, client_tls), rev2=True)

    seen = await in_thread(session)
    assert seen["recent"] == []  # RFC 9051: no \Recent
    assert seen["list_on_select"] == [b'() "/" "INBOX"']
    # Without RETURN, a rev2 SEARCH still answers ESEARCH (RFC 9051 §6.4.4).
    data, esearch = seen["unseen_before"]
    assert data == [None]
    assert re.fullmatch(rb'\(TAG "\w+"\) ALL 1:2', esearch[0]), esearch
    assert re.fullmatch(rb'\(TAG "\w+"\) COUNT 1 ALL 2', seen["unseen"][0]), seen["unseen"]
    assert re.fullmatch(rb'\(TAG "\w+"\) UID ALL 1:2', seen["since"][0]), seen["since"]
    assert seen["expunged"] == [b"1"]


async def test_same_message_same_size_over_imap_and_pop3(start_server, tls_files, client_tls):
    server = await imap_server(start_server, tls_files)
    body = b"Subject: lf on disk\r\n\r\n" + b"line\r\n" * 50
    await deliver(server, body)

    def sizes() -> tuple[int, int, bytes, bytes]:
        client = connect_imaps(server, client_tls)
        ok(client.login(ALICE, "secret"))
        ok(client.select("INBOX", readonly=True))
        data = ok(client.fetch("1", "(RFC822.SIZE BODY.PEEK[])"))
        imap_size = int(re.search(rb"RFC822.SIZE (\d+)", data[0][0]).group(1))  # type: ignore[union-attr]
        client.logout()
        pop = poplib.POP3("127.0.0.1", server.port_of("pop3"), timeout=10)
        pop.user(ALICE)
        pop.pass_("secret")
        pop_size = int(pop.list()[1][0].split()[1])
        pop_body = b"\r\n".join(pop.retr(1)[1]) + b"\r\n"
        pop.quit()
        return imap_size, pop_size, data[0][1], pop_body

    imap_size, pop_size, imap_body, pop_body = await in_thread(sizes)
    assert imap_size == pop_size == len(imap_body)
    assert imap_body == pop_body
    # EXAMINE left it in new/; on disk it has LF line ends, and the sizes are CRLF's.
    if server.backend == "maildir":
        stored = [
            p.read_bytes() for d in ("new", "cur") for p in (server.maildir(ALICE) / d).iterdir()
        ]
    else:
        stored = server.new_messages(ALICE)
    assert [m.replace(b"\n", b"\r\n") for m in stored] == [imap_body]


async def test_expunge_in_one_session_is_seen_at_the_others_noop(
    start_server, tls_files, client_tls
):
    server = await imap_server(start_server, tls_files)
    await deliver(server, MESSAGE_1, MESSAGE_2)

    def two_sessions() -> tuple[list[Any], list[Any], list[Any]]:
        one, two = connect_imaps(server, client_tls), connect_imaps(server, client_tls)
        for client in (one, two):
            ok(client.login(ALICE, "secret"))
            assert ok(client.select("INBOX")) == [b"2"]
            untagged(client, "EXISTS")  # imaplib leaves SELECT's EXISTS there
        ok(one.store("1", "+FLAGS", "(\\Deleted)"))
        assert ok(one.expunge()) == [b"1"]
        # Not before two asks: a FETCH must not be told (RFC 9051 §7.5.1)...
        ok(two.fetch("2", "(FLAGS)"))
        before = untagged(two, "EXPUNGE")
        ok(two.noop())
        after = untagged(two, "EXPUNGE")
        remaining = ok(two.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
        # A new delivery shows up as EXISTS at the next NOOP too.
        smtp = smtplib.SMTP("127.0.0.1", server.port_of("smtp"), timeout=10)
        smtp.sendmail("x@example.org", [ALICE], MESSAGE_1)
        smtp.quit()
        ok(one.noop())
        exists = untagged(one, "EXISTS")
        one.logout()
        two.logout()
        return [before, after], remaining, exists

    (before, after), remaining, exists = await in_thread(two_sessions)
    assert before == []
    assert after == [b"1"]
    assert remaining[0][1] == b"Subject: second\r\n\r\n"
    assert exists == [b"2"]


async def test_plaintext_login_refused_with_plaintext_auth_never(
    start_server, tls_files, client_tls
):
    server = await imap_server(start_server, tls_files, plaintext_auth="never")

    def attempt() -> tuple[tuple[str, ...], str, bool]:
        client = imaplib.IMAP4("127.0.0.1", server.port_of("imap"), timeout=10)
        before = client.capabilities
        try:
            client.login(ALICE, "secret")
        except imaplib.IMAP4.error as exc:
            refused = str(exc)
        else:
            refused = ""
        client.starttls(client_tls)
        after_ok = client.login(ALICE, "secret")[0] == "OK"
        client.logout()
        return before, refused, after_ok

    before, refused, after_ok = await in_thread(attempt)
    assert "LOGINDISABLED" in before
    assert "STARTTLS" in before
    assert not any(c.startswith("AUTH=") for c in before)
    assert "PRIVACYREQUIRED" in refused
    assert after_ok


async def test_authenticate_plain_with_sasl_ir(start_server, tls_files, client_tls):
    server = await imap_server(start_server, tls_files)

    def authenticate() -> str:
        client = connect_imaps(server, client_tls)
        assert "SASL-IR" in client.capabilities
        assert "AUTH=PLAIN" in client.capabilities
        typ, _ = client.authenticate("PLAIN", lambda _: f"\0{ALICE}\0secret".encode())
        client.logout()
        return typ

    assert await in_thread(authenticate) == "OK"


async def test_brute_force_is_throttled(start_server, tls_files, client_tls):
    settings = AuthSettings(failure_delay=0.01, max_failure_delay=0.01, max_failures=3)
    server = await imap_server(start_server, tls_files, auth_settings=settings)

    def guess() -> list[str]:
        answers = []
        client = connect_imaps(server, client_tls)
        for attempt in range(5):
            try:
                client.login(ALICE, f"wrong{attempt}")
                answers.append("OK")
            except imaplib.IMAP4.error as exc:
                answers.append(str(exc))
        # Even the right password is refused while the client is locked out.
        try:
            client.login(ALICE, "secret")
            answers.append("OK")
        except imaplib.IMAP4.error as exc:
            answers.append(str(exc))
        client.logout()
        return answers

    answers = await in_thread(guess)
    assert all("AUTHENTICATIONFAILED" in a for a in answers[:3]), answers
    assert all("UNAVAILABLE" in a for a in answers[3:]), answers


async def test_append_over_the_limit_is_toobig(start_server, tls_files, client_tls):
    server = await imap_server(start_server, tls_files, max_message_size=1000)

    def append() -> tuple[tuple[str, list[Any]], str]:
        client = connect_imaps(server, client_tls)
        assert "APPENDLIMIT=1000" in client.capabilities
        ok(client.login(ALICE, "secret"))
        big = client.append("INBOX", None, None, b"Subject: big\r\n\r\n" + b"x" * 2000)
        small = client.append("INBOX", None, None, b"Subject: small\r\n\r\nx\r\n")[0]
        client.logout()
        return big, small

    big, small = await in_thread(append)
    assert big == ("NO", [b"[TOOBIG] APPEND command too big"])
    assert small == "OK"


async def test_missing_folder_gets_trycreate(start_server, tls_files, client_tls):
    server = await imap_server(start_server, tls_files)
    await deliver(server, MESSAGE_1)

    def run() -> tuple[Any, Any, Any]:
        client = connect_imaps(server, client_tls)
        ok(client.login(ALICE, "secret"))
        ok(client.select("INBOX"))
        copied = client.copy("1", "Nowhere")
        appended = client._simple_command("APPEND", "Nowhere", "{3+}\r\nabc")
        selected = client._simple_command("SELECT", "Nowhere")
        client.logout()
        return copied, appended, selected

    copied, appended, selected = await in_thread(run)
    assert copied[0] == "NO"
    assert copied[1][0].startswith(b"[TRYCREATE]")
    assert appended == ("NO", [b"[TRYCREATE] no folder 'Nowhere'"])
    assert selected == ("NO", [b"[NONEXISTENT] no folder 'Nowhere'"])


async def test_shutdown_says_bye_to_an_idle_session(start_server, tls_files, client_tls):
    server = await imap_server(start_server, tls_files)

    def login() -> imaplib.IMAP4:
        client = connect_imaps(server, client_tls)
        ok(client.login(ALICE, "secret"))
        ok(client.select("INBOX"))
        return client

    client = await in_thread(login)
    await server.stop()

    def read_bye() -> bytes:
        line = client.readline()
        client.shutdown()
        return line

    assert (await in_thread(read_bye)).startswith(b"* BYE [UNAVAILABLE]")
