"""SMTP AUTH, submission and the relay policy, end to end: smtplib and aiosmtplib over
STARTTLS and implicit TLS with trustme certificates, a SCRAM client of our own over a raw
socket, and tests that try to get in."""

from __future__ import annotations

import asyncio
import base64
import pathlib
import smtplib
import ssl

import aiosmtplib
import pytest
import trio
from trio_helpers import BOTH_BACKENDS, RawClient, RunningServer, StartServer

from sansmail import sasl
from sansmail.mail.auth import AuthSettings

pytestmark = BOTH_BACKENDS

MESSAGE = b"Subject: submitted\r\n\r\nhello\r\n"
SUBMISSION = {"smtp": "127.0.0.1:0", "submission": "127.0.0.1:0", "submissions": "127.0.0.1:0"}
OUTSIDE = ["192.0.2.0/24"]  # mynetworks that do not contain the test client


async def _submission_server(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path], **kw: object
) -> RunningServer:
    kw.setdefault("mynetworks", OUTSIDE)
    return await start_server(  # type: ignore[no-any-return]
        users=("alice@example.test", "bob@example.test"), tls=tls_files, listen=SUBMISSION, **kw
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_smtplib_login_over_starttls_on_submission(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
    mechanism: str,
) -> None:
    server = await _submission_server(start_server, tls_files)

    def session() -> tuple[bool, str]:
        with smtplib.SMTP("127.0.0.1", server.port_of("submission"), timeout=10) as client:
            client.ehlo()
            # Loopback may authenticate in plaintext by default, but the client upgrades.
            client.starttls(context=client_tls)
            client.ehlo()
            offered = client.esmtp_features.get("auth", "")
            client.user, client.password = "alice@example.test", "secret"
            code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
            assert code == 235
            client.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)
            return True, offered

    ok, offered = await trio.to_thread.run_sync(session)
    assert ok
    assert {"PLAIN", "LOGIN", "SCRAM-SHA-256"} <= set(offered.split())
    [stored] = server.new_messages("bob@example.test")
    assert b"with ESMTPSA" in stored.partition(b"\n\n")[0]


async def test_smtplib_login_over_implicit_tls(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await _submission_server(start_server, tls_files)

    def session() -> None:
        with smtplib.SMTP_SSL(
            "127.0.0.1", server.port_of("submissions"), timeout=10, context=client_tls
        ) as client:
            client.login("alice@example.test", "secret")
            client.sendmail("alice+out@example.test", ["bob@example.test"], MESSAGE)

    await trio.to_thread.run_sync(session)
    assert len(server.new_messages("bob@example.test")) == 1


async def test_cram_md5_where_enabled(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await _submission_server(
        start_server, tls_files, auth_mechanisms=["CRAM-MD5", "PLAIN"]
    )

    def session() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", server.port_of("submission"), timeout=10) as client:
            client.starttls(context=client_tls)
            client.ehlo()
            assert "CRAM-MD5" in client.esmtp_features["auth"].split()
            client.user, client.password = "alice@example.test", "secret"
            return client.auth("CRAM-MD5", client.auth_cram_md5)

    code, _ = await trio.to_thread.run_sync(session)
    assert code == 235


async def test_aiosmtplib_login_and_send(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await _submission_server(start_server, tls_files)

    async def client() -> None:
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=server.port_of("submission"),
            tls_context=client_tls,
            start_tls=True,
            timeout=10,
        )
        async with smtp:
            await smtp.login("alice@example.test", "secret")
            await smtp.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)

    await trio.to_thread.run_sync(asyncio.run, client())
    assert len(server.new_messages("bob@example.test")) == 1


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


async def test_scram_sha_256_with_our_client_over_tls(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await _submission_server(start_server, tls_files)

    def session(password: str) -> bytes:
        c = RawClient(server.port_of("submissions"))
        c.sock = client_tls.wrap_socket(c.sock, server_hostname="127.0.0.1")
        c.reply()
        c.send(b"EHLO client\r\n")
        c.reply()
        mech = sasl.client_mechanism(
            "SCRAM-SHA-256", "alice@example.test", password, nonce="rOprNGfwEbeRWgbNEkqO"
        )
        first = mech.initial_response()
        assert first is not None
        c.send(b"AUTH SCRAM-SHA-256 " + _b64(first) + b"\r\n")
        line = c.reply()[-1]
        while line.startswith(b"334 "):
            challenge = base64.b64decode(line[4:])
            if mech.complete:
                c.send(b"\r\n")
            else:
                try:
                    c.send(_b64(mech.respond(challenge)) + b"\r\n")
                except sasl.RemoteSASLError:
                    c.send(b"*\r\n")
            line = c.reply()[-1]
        c.close()
        return line

    assert (await trio.to_thread.run_sync(session, "secret")).startswith(b"235 2.7.0")
    assert (await trio.to_thread.run_sync(session, "wrong")).startswith(b"535 5.7.8")


async def test_submission_needs_auth_and_own_sender(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await _submission_server(start_server, tls_files)

    def session() -> tuple[tuple[int, bytes], tuple[int, bytes], tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", server.port_of("submission"), timeout=10) as client:
            client.starttls(context=client_tls)
            client.ehlo()
            anonymous = client.mail("alice@example.test")
            client.login("alice@example.test", "secret")
            forged = client.mail("bob@example.test")
            client.rset()
            remote = (client.mail("alice@example.test"), client.rcpt("x@remote.example"))[1]
            return anonymous, forged, remote

    anonymous, forged, remote = await trio.to_thread.run_sync(session)
    assert (anonymous[0], anonymous[1][:5]) == (530, b"5.7.0")
    assert (forged[0], forged[1][:5]) == (553, b"5.7.1")
    # Authenticated users may relay: the recipient is taken for the queue.
    assert (remote[0], remote[1][:5]) == (250, b"2.1.5")


async def test_sender_login_mismatch_can_be_allowed(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await _submission_server(start_server, tls_files, reject_sender_login_mismatch=False)

    def session() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", server.port_of("submission"), timeout=10) as client:
            client.starttls(context=client_tls)
            client.login("alice@example.test", "secret")
            return client.mail("sales@example.test")

    assert (await trio.to_thread.run_sync(session))[0] == 250


async def test_auth_before_tls_where_forbidden(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await _submission_server(start_server, tls_files, plaintext_auth="never")

    def session() -> tuple[list[bytes], bytes]:
        c = RawClient(server.port_of("submission"))
        c.reply()
        c.send(b"EHLO c\r\n")
        ehlo = c.reply()
        c.send(b"AUTH PLAIN " + _b64(b"\0alice@example.test\0secret") + b"\r\n")
        return ehlo, c.reply()[-1]

    ehlo, answer = await trio.to_thread.run_sync(session)
    assert not any(b"AUTH" in line for line in ehlo)
    assert answer.startswith(b"538 5.7.11")


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"AUTH PLAIN " + _b64(b"\0alice@example.test\0nope"), b"535"),
        (b"AUTH PLAIN " + _b64(b"\0nobody@example.test\0secret"), b"535"),
        (b"AUTH PLAIN " + _b64(b"bob@example.test\0alice@example.test\0secret"), b"535"),
        (b"AUTH PLAIN not*base64", b"501"),
        (b"AUTH KERBEROS_V5", b"504"),
        (b"AUTH ANONYMOUS", b"504"),
    ],
)
async def test_auth_failures(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    line: bytes,
    code: bytes,
) -> None:
    fast = AuthSettings(failure_delay=0.01, max_failure_delay=0.02)
    server = await _submission_server(start_server, tls_files, auth_settings=fast)

    def session() -> bytes:
        c = RawClient(server.port_of("submission"))
        c.reply()
        c.send(b"EHLO c\r\n")  # loopback: plaintext AUTH allowed by default
        c.reply()
        c.send(line + b"\r\n")
        return c.reply()[-1]

    assert (await trio.to_thread.run_sync(session))[:3] == code


async def test_bad_base64_in_the_middle_of_an_exchange(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await _submission_server(start_server, tls_files)

    def session() -> list[bytes]:
        c = RawClient(server.port_of("submission"))
        c.reply()
        c.send(b"EHLO c\r\n")
        c.reply()
        c.send(b"AUTH LOGIN\r\n")
        first = c.reply()[-1]
        c.send(b"!!not base64!!\r\n")
        second = c.reply()[-1]
        c.send(b"NOOP\r\n")  # the session goes on
        return [first, second, c.reply()[-1]]

    first, second, noop = await trio.to_thread.run_sync(session)
    assert first.startswith(b"334 ")
    assert second.startswith(b"501 5.5.2")
    assert noop.startswith(b"250")


async def test_brute_force_is_throttled(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fast = AuthSettings(failure_delay=0.01, max_failure_delay=0.02, max_failures=3)
    server = await _submission_server(start_server, tls_files, auth_settings=fast)
    caplog.set_level("INFO", logger="sansmail")

    def guesses() -> list[bytes]:
        c = RawClient(server.port_of("submission"))
        c.reply()
        c.send(b"EHLO c\r\n")
        c.reply()
        answers = []
        for n in range(5):
            c.send(b"AUTH PLAIN " + _b64(b"\0alice@example.test\0guess%d" % n) + b"\r\n")
            answers.append(c.reply()[-1][:3])
        # Even the right password is refused while the client is locked out.
        c.send(b"AUTH PLAIN " + _b64(b"\0alice@example.test\0secret") + b"\r\n")
        answers.append(c.reply()[-1][:3])
        return answers

    answers = await trio.to_thread.run_sync(guesses)
    assert answers[:3] == [b"535", b"535", b"535"]
    assert answers[3:] == [b"454", b"454", b"454"]
    failures = [r.getMessage() for r in caplog.records if "auth failed:" in r.getMessage()]
    assert len(failures) == 3
    assert failures[0].endswith("rip=127.0.0.1")


# --- the open-relay battery: a stranger (outside mynetworks, not authenticated) -------

RELAY_TRICKS = [
    "victim@remote.example",
    "victim%remote.example@example.test",
    "remote.example!victim@example.test",
    "@example.test:victim@remote.example",
    '"victim@remote.example"@example.test',
    "victim@remote.example.",
    "victim@[192.0.2.7]",
    "victim@[127.0.0.1]",
    "VICTIM@REMOTE.EXAMPLE",
    "victim@EXAMPLE.TEST.remote.example",
]


async def test_open_relay_battery_from_outside(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await _submission_server(start_server, tls_files)

    def attempts() -> dict[str, bytes]:
        results = {}
        for rcpt in RELAY_TRICKS:
            c = RawClient(server.port_of("smtp"))
            c.reply()
            c.send(b"EHLO stranger\r\n")
            c.reply()
            c.send(b"MAIL FROM:<spammer@example.org>\r\n")
            assert c.code() == 250
            c.send(f"RCPT TO:<{rcpt}>\r\n".encode())
            results[rcpt] = c.reply()[-1]
            c.close()
        return results

    results = await trio.to_thread.run_sync(attempts)
    for rcpt, line in results.items():
        assert line[:1] == b"5", f"{rcpt!r} got {line!r}"
    assert results["victim@remote.example"].startswith(b"554 5.7.1")
    assert results["victim%remote.example@example.test"].startswith(b"550 5.1.1")


async def test_trusted_network_may_relay(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await _submission_server(start_server, tls_files, mynetworks=["127.0.0.0/8"])

    def session() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", server.port_of("smtp"), timeout=10) as client:
            client.ehlo()
            client.mail("app@example.test")
            return client.rcpt("someone@remote.example")

    code, text = await trio.to_thread.run_sync(session)
    assert (code, text[:5]) == (250, b"2.1.5")
