"""End to end over 127.0.0.1: real clients (smtplib, aiosmtplib, raw sockets) against a
real `serve()`; mail checked in the Maildir on disk or in the database's rows (each test
runs on both storage backends unless it looks at Maildir files)."""

from __future__ import annotations

import asyncio
import os
import smtplib
import threading
from email.message import EmailMessage

import aiosmtplib
import pytest
import trio
from trio_helpers import BOTH_BACKENDS, RawClient, StartServer, maildir_only

from sansmail import smtp
from sansmail.sessions.smtpd import SmtpSession

pytestmark = BOTH_BACKENDS

MESSAGE = b"From: a@example.org\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nHello Alice.\r\n"


def _sendmail(port: int, sender: str, rcpts: list[str], msg: bytes, **kw: object) -> object:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail(sender, rcpts, msg, **kw)  # type: ignore[arg-type]


async def test_smtplib_delivers_into_maildir_with_trace_headers(start_server: StartServer) -> None:
    server = await start_server()
    refused = await trio.to_thread.run_sync(
        _sendmail, server.port, "a@example.org", ["alice@example.test"], MESSAGE
    )
    assert refused == {}
    [stored] = server.new_messages("alice@example.test")
    head, _, body = stored.partition(b"\n\n")
    lines = head.split(b"\n")
    assert lines[0] == b"Return-Path: <a@example.org>"
    assert lines[1].startswith(b"Received: from ")
    received = b" ".join(
        line.strip()
        for line in lines[1:]
        if line[:1] in (b" ", b"\t") or line.startswith(b"Received:")
    )
    for part in (b"by mx.example.test", b"with ESMTP", b"for <alice@example.test>", b"[127.0.0.1]"):
        assert part in received
    assert b"\r" not in stored  # Maildir files use LF line ends
    assert body == b"Hello Alice.\n"
    assert b"\nSubject: hi" in head
    if server.backend != "maildir":
        return
    maildir = server.maildir("alice@example.test")
    assert sorted(p.name for p in maildir.iterdir()) == ["cur", "new", "tmp"]
    assert list((maildir / "tmp").iterdir()) == []
    assert oct(os.stat(maildir / "new").st_mode & 0o777) == "0o700"


async def test_unknown_user_and_relay_are_refused(start_server: StartServer) -> None:
    # The test client (127.0.0.1) is outside mynetworks: an ordinary stranger.
    server = await start_server(mynetworks=["192.0.2.0/24"])

    def attempt(rcpt: str) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo("client.example.org")
            client.mail("a@example.org")
            return client.rcpt(rcpt)

    assert await trio.to_thread.run_sync(attempt, "nobody@example.test") == (
        550,
        b"5.1.1 <nobody@example.test>: no such user here",
    )
    code, text = await trio.to_thread.run_sync(attempt, "victim@elsewhere.example")
    assert (code, text[:5]) == (554, b"5.7.1")
    code, _ = await trio.to_thread.run_sync(attempt, "Alice@EXAMPLE.TEST")
    assert code == 250


async def test_postmaster_and_plus_address(start_server: StartServer) -> None:
    server = await start_server()
    await trio.to_thread.run_sync(
        _sendmail,
        server.port,
        "",
        ["postmaster@other.example", "alice+lists@example.test"],
        MESSAGE,
    )
    # postmaster has no user: it lands in the postmaster Maildir of the first domain.
    assert len(server.new_messages("postmaster@example.test")) == 1
    [stored] = server.new_messages("alice@example.test")
    assert stored.startswith(b"Return-Path: <>\n")
    # Two recipients: the Received header must not name either (no Bcc leak).
    assert b"for <" not in stored.partition(b"\n\n")[0]
    if server.backend == "postgresql":
        # Stored once, both rows pointing at it.
        assert server.query("SELECT count(*) FROM mail_contents") == [(1,)]
        assert server.query("SELECT count(DISTINCT digest) FROM mail_messages") == [(1,)]
        return
    post = server.maildir("postmaster@example.test") / "new"
    alice = server.maildir("alice@example.test") / "new"
    # Stored once, hard-linked into both mailboxes.
    [p1] = post.iterdir()
    [p2] = alice.iterdir()
    assert os.stat(p1).st_ino == os.stat(p2).st_ino


async def test_bare_postmaster_recipient(start_server: StartServer) -> None:
    server = await start_server()

    def session() -> list[int]:
        c = RawClient(server.port)
        codes = [c.code()]
        c.send(b"HELO client\r\nMAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n")
        codes += [c.code(), c.code(), c.code(), c.code()]
        c.send(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        codes += [c.code(), c.code()]
        c.close()
        return codes

    assert await trio.to_thread.run_sync(session) == [220, 250, 250, 250, 354, 250, 221]
    assert len(server.new_messages("postmaster@example.test")) == 1


async def test_aiosmtplib_pipelining_8bitmime_smtputf8(start_server: StartServer) -> None:
    server = await start_server(users=("alice@example.test", "bob@example.test"))
    msg = EmailMessage()
    msg["From"] = "Jörg <jörg@example.org>"
    msg["To"] = "alice@example.test"
    msg["Subject"] = "Grüße"
    msg.set_content("Schöne Grüße, 8 bit.\n", cte="8bit")

    async def client() -> tuple[dict[str, object], str]:
        # Plaintext on purpose: this test is about the extensions, TLS has its own tests.
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, timeout=10, start_tls=False)
        async with smtp:
            await smtp.ehlo()
            assert smtp.supports_extension("pipelining")
            assert smtp.supports_extension("smtputf8")
            assert smtp.supports_extension("8bitmime")
            return await smtp.send_message(
                msg,
                sender="jörg@example.org",
                recipients=["alice@example.test", "bob@example.test"],
            )

    errors, reply = await trio.to_thread.run_sync(asyncio.run, client())
    assert errors == {}
    assert "queued as" in reply
    [stored] = server.new_messages("alice@example.test")
    assert stored.startswith("Return-Path: <jörg@example.org>\n".encode())
    assert b"with UTF8SMTP" in stored
    assert "Schöne Grüße".encode() in stored
    assert len(server.new_messages("bob@example.test")) == 1


async def test_smtputf8_return_path_is_kept_as_given(start_server: StartServer) -> None:
    # RFC 6531 §3.7: a UTF-8 domain stays as the client wrote it, as Postfix keeps it.
    server = await start_server()
    refused = await trio.to_thread.run_sync(
        lambda: _sendmail(
            server.port,
            "jörg@bücher.example",
            ["alice@example.test"],
            MESSAGE,
            mail_options=["SMTPUTF8"],
        )
    )
    assert refused == {}
    [stored] = server.new_messages("alice@example.test")
    assert stored.startswith("Return-Path: <jörg@bücher.example>\n".encode())


async def test_rset_in_the_middle_then_send(start_server: StartServer) -> None:
    server = await start_server(users=("alice@example.test", "bob@example.test"))

    def session() -> None:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo()
            assert client.mail("a@example.org")[0] == 250
            assert client.rcpt("bob@example.test")[0] == 250
            assert client.rset()[0] == 250
            # After RSET, RCPT without MAIL is a bad sequence.
            assert client.rcpt("bob@example.test")[0] == 503
            client.sendmail("b@example.org", ["alice@example.test"], MESSAGE)

    await trio.to_thread.run_sync(session)
    assert server.new_messages("bob@example.test") == []
    [stored] = server.new_messages("alice@example.test")
    assert stored.startswith(b"Return-Path: <b@example.org>\n")


async def test_size_declared_and_actual(start_server: StartServer) -> None:
    server = await start_server(max_message_size=10_000)

    def declared() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo()
            assert client.has_extn("size")
            assert client.esmtp_features["size"] == "10000"
            return client.mail("a@example.org", ["SIZE=20000"])

    code, text = await trio.to_thread.run_sync(declared)
    assert (code, text[:5]) == (552, b"5.3.4")

    def actual() -> list[int]:
        c = RawClient(server.port)
        codes = [c.code()]
        c.send(b"EHLO c\r\n")
        codes.append(c.code())
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        codes += [c.code(), c.code(), c.code()]
        # 20 kB of content: the server reads it all, then refuses with 552.
        c.send(b"Subject: big\r\n\r\n" + (b"x" * 98 + b"\r\n") * 200 + b".\r\n")
        codes.append(c.code())
        c.send(b"NOOP\r\n")  # the session goes on
        codes.append(c.code())
        c.close()
        return codes

    assert await trio.to_thread.run_sync(actual) == [220, 250, 250, 250, 354, 552, 250]
    assert server.new_messages("alice@example.test") == []
    if server.backend == "maildir":
        tmp = server.maildir("alice@example.test") / "tmp"
        assert not tmp.exists() or list(tmp.iterdir()) == []


async def test_bdat_chunks(start_server: StartServer) -> None:
    server = await start_server()
    part1 = b"Subject: chunked\r\n\r\nfirst "
    part2 = b"second\r\n.leading dot is not stuffing in BDAT\r\n"

    def session() -> list[bytes]:
        c = RawClient(server.port)
        c.reply()
        c.send(b"EHLO c\r\n")
        ehlo = c.reply()
        assert b"250-CHUNKING" in ehlo or b"250 CHUNKING" in ehlo
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\n")
        c.reply()
        c.reply()
        c.send(b"BDAT %d\r\n" % len(part1) + part1)
        first = c.reply()[-1]
        c.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
        last = c.reply()[-1]
        c.send(b"QUIT\r\n")
        c.reply()
        c.close()
        return [first, last]

    first, last = await trio.to_thread.run_sync(session)
    assert first == b"250 2.0.0 %d octets received" % len(part1)
    assert last.startswith(b"250 2.0.0 Ok: queued as ")
    [stored] = server.new_messages("alice@example.test")
    assert stored.endswith(b"\n\nfirst second\n.leading dot is not stuffing in BDAT\n")


async def test_smuggling_attempt_stays_inside_one_message(start_server: StartServer) -> None:
    server = await start_server(users=("alice@example.test", "bob@example.test"))
    smuggled = (
        b"Subject: outer\r\n\r\nouter body\r\n"
        b"\n.\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nfake\r\n"
        b"\r.\r\n"
        b".\r\n"
    )

    def session() -> list[int]:
        c = RawClient(server.port)
        codes = [c.code()]
        c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        codes += [c.code() for _ in range(4)]
        c.send(smuggled)
        codes.append(c.code())
        c.send(b"QUIT\r\n")
        codes.append(c.code())
        return codes

    codes = await trio.to_thread.run_sync(session)
    # The bare CR refuses the whole message; nothing after the bare LF became a command.
    assert codes[:5] == [220, 250, 250, 250, 354]
    assert codes[5] // 100 == 5
    assert codes[6] == 221
    assert server.new_messages("bob@example.test") == []
    assert server.new_messages("alice@example.test") == []


async def test_bare_lf_is_normalised_not_an_end(start_server: StartServer) -> None:
    server = await start_server(users=("alice@example.test", "bob@example.test"))

    def session() -> list[int]:
        c = RawClient(server.port)
        codes = [c.code()]
        c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        codes += [c.code() for _ in range(4)]
        c.send(b"Subject: lf\r\n\r\nline one\nline two\n.\nRCPT TO:<bob@example.test>\r\n.\r\n")
        codes.append(c.code())
        return codes

    assert await trio.to_thread.run_sync(session) == [220, 250, 250, 250, 354, 250]
    [stored] = server.new_messages("alice@example.test")
    # The bare LF ended a line (normalised to CRLF), so the lone "." on the next line was
    # dot-unstuffing, as in any other line; it did not end the message.
    assert stored.endswith(b"\n\nline one\nline two\n\nRCPT TO:<bob@example.test>\n")
    assert server.new_messages("bob@example.test") == []


@maildir_only("the Maildir store's fsync; on PostgreSQL the commit is the durability")
async def test_fsync_happens_before_the_250(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server()
    gate = threading.Event()
    fsynced: list[int] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        # Hold every fsync until the test lets go: the 250 must not overtake it.
        assert gate.wait(10)
        real_fsync(fd)
        fsynced.append(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    got_reply = threading.Event()

    def client() -> None:
        _sendmail(server.port, "a@example.org", ["alice@example.test"], MESSAGE)
        got_reply.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, client)
        await trio.sleep(0.5)
        assert not got_reply.is_set()
        assert server.new_messages("alice@example.test") == [] or not fsynced
        gate.set()
    assert got_reply.is_set()
    assert len(fsynced) >= 2  # the file, then the new/ directory
    assert len(server.new_messages("alice@example.test")) == 1


@maildir_only("breaks the Maildir store's fsync")
async def test_store_failure_answers_451_not_250(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server()

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(smtplib.SMTPDataError) as info:
        await trio.to_thread.run_sync(
            _sendmail, server.port, "a@example.org", ["alice@example.test"], MESSAGE
        )
    assert info.value.smtp_code == 451
    assert server.new_messages("alice@example.test") == []


async def test_connection_cap_per_ip(start_server: StartServer) -> None:
    server = await start_server(max_connections_per_ip=2)

    def session() -> list[bytes]:
        first, second = RawClient(server.port), RawClient(server.port)
        assert first.code() == 220
        assert second.code() == 220
        third = RawClient(server.port)
        line = third.reply()[-1]
        assert third.closed()
        for c in (first, second, third):
            c.close()
        return [line]

    [line] = await trio.to_thread.run_sync(session)
    # No enhanced code: the greeting comes before any EHLO negotiated them (RFC 2034 §3).
    assert line.startswith(b"421 ")
    assert b"too many connections from 127.0.0.1" in line


async def test_idle_timeout_gets_421(start_server: StartServer) -> None:
    server = await start_server(command_timeout=1)

    def session() -> tuple[int, bytes, bool]:
        c = RawClient(server.port)
        code = c.code()
        line = c.reply()[-1]  # nothing sent: the server times out
        return code, line, c.closed()

    code, line, closed = await trio.to_thread.run_sync(session)
    assert code == 220
    assert line == b"421 mx.example.test Error: timeout exceeded"
    assert closed


async def test_unknown_commands_budget(start_server: StartServer) -> None:
    server = await start_server(max_invalid_commands=3)

    def session() -> list[bytes]:
        c = RawClient(server.port)
        c.reply()
        lines = []
        for _ in range(4):
            c.send(b"WIBBLE\r\n")
            lines.append(c.reply()[-1])
        assert c.closed()
        return lines

    lines = await trio.to_thread.run_sync(session)
    assert [line[:3] for line in lines] == [b"500", b"500", b"500", b"421"]


async def test_bare_lf_in_command_ends_session_with_a_reply(start_server: StartServer) -> None:
    server = await start_server()

    def session() -> tuple[bytes, bool]:
        c = RawClient(server.port)
        c.reply()
        c.send(b"EHLO c\n")
        return c.reply()[-1], c.closed()

    line, closed = await trio.to_thread.run_sync(session)
    assert line[:1] == b"5" or line[:3] == b"421"
    assert closed


async def test_graceful_shutdown(start_server: StartServer) -> None:
    server = await start_server(shutdown_grace=5)
    results: dict[str, object] = {}
    in_data = threading.Event()
    finish = threading.Event()

    def idle_client() -> None:
        c = RawClient(server.port)
        c.reply()
        c.send(b"EHLO idle\r\n")
        c.reply()
        results["idle"] = c.reply()[-1]  # the 421 from shutdown

    def busy_client() -> None:
        c = RawClient(server.port)
        c.reply()
        c.send(
            b"EHLO busy\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
        )
        for _ in range(4):
            c.reply()
        c.send(b"Subject: in flight\r\n\r\npart one\r\n")
        in_data.set()
        assert finish.wait(10)
        c.send(b"part two\r\n.\r\n")
        results["busy"] = c.reply()[-1]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, idle_client)
        nursery.start_soon(trio.to_thread.run_sync, busy_client)
        await trio.to_thread.run_sync(in_data.wait)
        await trio.sleep(0.2)
        server.shutdown.set()
        await trio.sleep(0.5)
        # New connections are no longer accepted.
        with pytest.raises(OSError):
            await trio.to_thread.run_sync(RawClient, server.port)
        finish.set()
    await server.done.wait()
    assert bytes(results["idle"]).startswith(b"421 4.3.2 ")  # type: ignore[arg-type]
    assert bytes(results["busy"]).startswith(b"250 2.0.0 ")  # type: ignore[arg-type]
    [stored] = server.new_messages("alice@example.test")
    assert stored.endswith(b"part one\npart two\n")


async def test_mail_log_lines(start_server: StartServer, caplog: pytest.LogCaptureFixture) -> None:
    server = await start_server()
    caplog.set_level("INFO", logger="sansmail")
    await trio.to_thread.run_sync(
        _sendmail, server.port, "a@example.org", ["alice@example.test"], MESSAGE
    )
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await trio.to_thread.run_sync(
            _sendmail, server.port, "a@example.org", ["nobody@example.test"], MESSAGE
        )
    messages = [r.getMessage() for r in caplog.records if r.name == "sansmail.smtp"]
    sent = [m for m in messages if "status=sent" in m]
    assert len(sent) == 1
    assert "from=<a@example.org>, to=<alice@example.test>, client=[127.0.0.1]:" in sent[0]
    assert ", relay=local, size=" in sent[0]
    rejected = [m for m in messages if "status=rejected" in m]
    assert len(rejected) == 1
    assert "to=<nobody@example.test>" in rejected[0]
    assert "550 5.1.1" in rejected[0]
    assert any(m.startswith("connect from [127.0.0.1]:") for m in messages)
    assert any(m.startswith("disconnect from [127.0.0.1]:") for m in messages)


async def test_a_bug_costs_one_session_not_the_server(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server()

    handle = SmtpSession.handle

    def broken(self: SmtpSession, event: smtp.Event, now: float) -> smtp.Reply | None:
        if isinstance(event, smtp.Noop):
            raise RuntimeError("a bug in a handler")
        return handle(self, event, now)

    monkeypatch.setattr(SmtpSession, "handle", broken)

    def session() -> tuple[bytes, bool]:
        c = RawClient(server.port)
        c.reply()
        c.send(b"EHLO c\r\nNOOP\r\n")
        c.reply()
        return c.reply()[-1], c.closed()

    line, closed = await trio.to_thread.run_sync(session)
    assert line.startswith(b"421 4.3.0")
    assert closed
    # The server is still serving.
    await trio.to_thread.run_sync(
        _sendmail, server.port, "a@example.org", ["alice@example.test"], MESSAGE
    )
    assert len(server.new_messages("alice@example.test")) == 1
