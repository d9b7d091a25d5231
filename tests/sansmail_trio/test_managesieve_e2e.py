"""The managesieve service end to end, over loopback sockets to a real server (`serve`
in the test's loop, as the other *_server tests run it), with clients nobody here wrote:
Debian's sieve-connect through STARTTLS with a trustme certificate, and the PyPI
`managesieve` library; then byte-level checks of what they cannot show (a syntax
error's position, quota refusals, logins refused before TLS, lockout, SCRAM, the
connection cap). After each change the scripts are looked for on disk, in Pigeonhole's
layout (``sieve/<domain>/<local>/NAME.sieve``, the active one linked from
``.dovecot.sieve``)."""

from __future__ import annotations

import base64
import contextlib
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trustme
from trio_helpers import (
    BOTH_BACKENDS,
    FAST_HASHER,
    RunningServer,
    StartServer,
    logged,
    wait_until_started,
)

from sansmail import sasl
from sansmail.mail.address import MailboxId, parse_address
from sansmail.mail.auth import AuthSettings
from sansmail.sessions import managesieved
from sansmail.storage.sieve import SieveStore
from sansmail.storage.users import UserStore
from sansmail_trio._managesieve_server import MAX_CONNECTIONS_PER_IP

# The tests of an in-process server (start_server) run on both storage backends.
pytestmark = BOTH_BACKENDS

ALICE = "alice@example.test"
ALICE_BOX = MailboxId(domain="example.test", local="alice")
BOB_BOX = MailboxId(domain="example.test", local="bob")
LISTEN = {"managesieve": "127.0.0.1:0"}
SCRIPT = b'require ["fileinto"];\nif header :contains "Subject" "x" {\n  fileinto "X";\n}\n'
SIEVE_CONNECT = shutil.which("sieve-connect")
needs_sieve_connect = pytest.mark.skipif(
    SIEVE_CONNECT is None, reason="sieve-connect not installed"
)


async def sieve_server(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path], **kw: Any
) -> RunningServer:
    kw.setdefault("users", (ALICE, "bob@example.test"))
    return await start_server(tls=tls_files, listen=LISTEN, **kw)  # type: ignore[no-any-return]


def script_dir(server: RunningServer, box: MailboxId = ALICE_BOX) -> pathlib.Path:
    return pathlib.Path(SieveStore(server.data_dir).directory(box))


@contextlib.contextmanager
def sieve_scripts(server: RunningServer) -> Iterator[Any]:
    """The server's Sieve scripts store: the directories, or the database's table."""
    if server.dsn is None:
        yield SieveStore(server.data_dir)
        return
    from sansmail.storage.pg import Database  # noqa: PLC0415
    from sansmail.storage.pg._sieve import PgSieveStore  # noqa: PLC0415

    db = Database(server.dsn)
    try:
        yield PgSieveStore(db)
    finally:
        db.close()


def scripts_of(server: RunningServer, box: MailboxId = ALICE_BOX) -> dict[str, tuple[bytes, bool]]:
    """`box`'s scripts as the store has them: name -> (text, active)."""
    with sieve_scripts(server) as store:
        return {name: (store.get(box, name), active) for name, active in store.list(box)}


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class SieveClient:
    """A deliberately dumb blocking ManageSieve client for byte-exact tests (run it in a
    thread): it reads whole responses (lines, and the literals in them) up to the
    closing OK, NO or BYE."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; unread: {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        if line.endswith(b"}") and b"{" in line:  # a literal: its octets, then the rest
            size = int(line[line.rindex(b"{") + 1 : -1])
            while len(self.buf) < size:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed inside a literal")
                self.buf += chunk
            data, self.buf = self.buf[:size], self.buf[size:]
            return line + b"\r\n" + data + self._line()
        return line

    def response(self) -> list[bytes]:
        """Every line up to and including the status line."""
        lines = []
        while True:
            line = self._line()
            lines.append(line)
            if line.split(b" ", 1)[0] in (b"OK", b"NO", b"BYE"):
                return lines

    def command(self, data: bytes) -> list[bytes]:
        self.sock.sendall(data + b"\r\n")
        return self.response()

    def status(self, data: bytes) -> bytes:
        return self.command(data)[-1]

    def login(self, user: str = ALICE, password: str = "secret") -> bytes:
        plain = b64(f"\0{user}\0{password}".encode())
        return self.status(b'AUTHENTICATE "PLAIN" "' + plain + b'"')

    def start_tls(self, context: ssl.SSLContext) -> list[bytes]:
        assert self.status(b"STARTTLS").startswith(b"OK")
        assert not self.buf
        self.sock = context.wrap_socket(self.sock, server_hostname="127.0.0.1")
        return self.response()  # the capabilities again (RFC 5804 §2.2)

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


# --- sieve-connect ------------------------------------------------------------------------------


@needs_sieve_connect
async def test_sieve_connect_over_starttls(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    tls_ca: trustme.CA,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="sansmail")
    server = await sieve_server(start_server, tls_files, plaintext_auth="never")
    ca = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca))
    local = tmp_path / "rules.sieve"
    local.write_bytes(SCRIPT)
    fetched = tmp_path / "fetched.sieve"
    broken = tmp_path / "broken.sieve"
    broken.write_bytes(b'require "fileinto";\nfileinto "X"\nkeep;\n')
    assert SIEVE_CONNECT is not None
    command = [
        SIEVE_CONNECT,
        *("-u", ALICE, "--authmech", "PLAIN", "--passwordfd", "0"),
        *("-s", "127.0.0.1", "-p", str(server.port_of("managesieve"))),
        *("--tlscafile", str(ca)),
    ]

    def run(*action: str) -> tuple[int, str]:
        done = subprocess.run(
            [*command, *action],
            input="secret\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return done.returncode, done.stdout + done.stderr

    async def step(*action: str) -> tuple[int, str]:
        return await trio.to_thread.run_sync(lambda: run(*action))

    code, out = await step("--upload", "--localsieve", str(local), "--remotesieve", "rules")
    assert code == 0, out
    assert scripts_of(server) == {"rules": (SCRIPT, False)}
    code, out = await step("--activate", "--remotesieve", "rules")
    assert code == 0, out
    assert scripts_of(server) == {"rules": (SCRIPT, True)}
    if server.backend == "maildir":  # Dovecot's layout
        assert os.readlink(script_dir(server) / ".dovecot.sieve") == "rules.sieve"
    code, out = await step("--list")
    assert (code, out) == (0, '"rules" ACTIVE\n')
    code, out = await step("--download", "--remotesieve", "rules", "--localsieve", str(fetched))
    assert code == 0, out
    assert fetched.read_bytes() == SCRIPT
    # A script with a syntax error: refused with its line and column, not stored.
    code, out = await step("--upload", "--localsieve", str(broken), "--remotesieve", "broken")
    assert code != 0
    assert "line 3: column 1: " in out, out
    assert "broken" not in scripts_of(server)
    code, out = await step("--delete", "--remotesieve", "rules")
    assert code != 0
    assert "NO (ACTIVE) \"script 'rules' is active" in out, out
    assert (await step("--deactivate"))[0] == 0
    assert scripts_of(server) == {"rules": (SCRIPT, False)}
    assert (await step("--delete", "--remotesieve", "rules"))[0] == 0
    assert scripts_of(server) == {}
    assert (await step("--list")) == (0, "")
    lines = await logged(
        caplog,
        "sansmail.managesieve",
        lambda lines: sum("Disconnected: Logged out" in line for line in lines) >= 9,
    )
    assert (
        f"managesieve-login: Login: user=<{ALICE}>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1, TLS"
    ) in lines
    assert f'managesieve({ALICE}): putscript "rules" ({len(SCRIPT)} octets)' in lines
    assert f'managesieve({ALICE}): deletescript "rules"' in lines


# --- the managesieve library ----------------------------------------------------------------


async def test_the_managesieve_library(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    tls_ca: trustme.CA,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    managesieve = pytest.importorskip("managesieve")
    server = await sieve_server(start_server, tls_files)
    ca = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca))
    # The library verifies with ssl.create_default_context(), which reads this.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    script = SCRIPT.decode().replace("\n", "\r\n")
    port = server.port_of("managesieve")

    def session() -> dict[str, Any]:
        client = managesieve.MANAGESIEVE("127.0.0.1", port, use_tls=True)
        got: dict[str, Any] = {"mechs": client.loginmechs, "sieve": client.capabilities}
        got["auth"] = client.authenticate("PLAIN", ALICE, "secret")
        got["space"] = client.havespace("my rules", 100)
        got["space_big"] = client.havespace("my rules", 2 << 20)
        got["put"] = client.putscript("my rules", script)
        got["bad"] = client.putscript("bad", "frobnicate;\r\n")
        got["active"] = client.setactive("my rules")
        got["list"] = client.listscripts()
        got["get"] = client.getscript("my rules")
        got["get_none"] = client.getscript("none")[0]
        got["delete_active"] = client.deletescript("my rules")
        got["deactivate"] = client.setactive("")
        got["delete"] = client.deletescript("my rules")
        got["put2"] = client.putscript("kept", "keep;")
        got["active2"] = client.setactive("kept")
        got["list2"] = client.listscripts()
        got["logout"] = client.logout()
        # The library closes the plain socket under its TLS one, not the TLS one.
        client.sock.sslobj.close()
        return got

    got = await trio.to_thread.run_sync(session)
    assert got["mechs"] == ["PLAIN", "LOGIN", "SCRAM-SHA-256"]
    assert {"fileinto", "vacation"} <= set(got["sieve"])
    assert got["auth"] == got["space"] == got["put"] == got["active"] == "OK"
    assert got["space_big"] == "NO"
    assert got["bad"] == "NO"
    assert got["list"] == ("OK", [("my rules", True)])
    assert got["get"] == ("OK", script)
    assert got["get_none"] == "NO"
    assert got["delete_active"] == "NO"
    assert got["deactivate"] == "OK"
    assert got["delete"] == got["put2"] == got["active2"] == "OK"
    assert got["list2"] == ("OK", [("kept", True)])
    assert got["logout"] == "OK"
    assert scripts_of(server) == {"kept": (b"keep;", True)}


# --- what the clients above cannot show, byte for byte --------------------------------------


async def test_syntax_error_position_and_quota(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await sieve_server(start_server, tls_files)
    # A user at the storage quota: filled straight into the store (no parse).
    with sieve_scripts(server) as store:
        for n in range(9):
            store.put(ALICE_BOX, f"big{n}", b"#" * (1 << 20))
        store.put(ALICE_BOX, "rest", b"#" * ((1 << 20) - 10))

    def session() -> list[bytes]:
        bob = SieveClient(server.port_of("managesieve"))
        bob.response()
        assert bob.login("bob@example.test") == b'OK "Logged in."'
        bad = b"if true {\r\n  keep\r\n}\r\n"
        answers = [bob.status(b'PUTSCRIPT "bad" {%d+}\r\n' % len(bad) + bad)]
        bob.close()
        client = SieveClient(server.port_of("managesieve"))
        client.response()
        assert client.login() == b'OK "Logged in."'
        answers.append(client.status(b'HAVESPACE "new" 10'))
        answers.append(client.status(b'HAVESPACE "new" 11'))
        answers.append(client.status(b'PUTSCRIPT "new" "keep;      stop;"'))
        answers.append(client.status(b'HAVESPACE "new" 2000000'))
        huge = b"#" * (2 << 20)
        answers.append(client.status(b'PUTSCRIPT "huge" {%d+}\r\n' % len(huge) + huge))
        answers.append(client.status(b"LOGOUT"))
        client.close()
        return answers

    answers = await trio.to_thread.run_sync(session)
    assert answers == [
        b"NO \"line 3: column 1: expected ';' or a block after the keep command, but found '}'\"",
        b"OK",
        b'NO (QUOTA/MAXSTORAGE) "a user\'s scripts may have at most 10485760 octets in all"',
        b'NO (QUOTA/MAXSTORAGE) "a user\'s scripts may have at most 10485760 octets in all"',
        b'NO (QUOTA/MAXSIZE) "a script may have at most 1048576 octets"',
        answers[5],
        b'OK "Logout completed."',
    ]
    assert answers[5].startswith(b"NO (QUOTA/MAXSIZE)")
    assert scripts_of(server, BOB_BOX) == {}
    assert "new" not in scripts_of(server)


async def test_too_many_scripts(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await sieve_server(start_server, tls_files)

    def session() -> list[bytes]:
        client = SieveClient(server.port_of("managesieve"))
        client.response()
        client.login()
        answers = [client.status(b'PUTSCRIPT "s%d" "keep;"' % n) for n in range(101)]
        answers.append(client.status(b'HAVESPACE "s100" 1'))
        answers.append(client.status(b'PUTSCRIPT "s99" "discard;"'))  # a replacement fits
        client.close()
        return answers

    answers = await trio.to_thread.run_sync(session)
    assert answers[:100] == [b"OK"] * 100
    assert answers[100:] == [
        b'NO (QUOTA/MAXSCRIPTS) "a user may have at most 100 scripts"',
        b'NO (QUOTA/MAXSCRIPTS) "a user may have at most 100 scripts"',
        b"OK",
    ]
    assert len(scripts_of(server)) == 100


async def test_plain_refused_before_starttls(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
) -> None:
    server = await sieve_server(start_server, tls_files, plaintext_auth="never")

    def session() -> tuple[list[bytes], bytes, list[bytes], bytes, bytes]:
        client = SieveClient(server.port_of("managesieve"))
        greeting = client.response()
        refused = client.login()
        again = client.start_tls(client_tls)
        ok = client.login()
        listing = client.status(b"LISTSCRIPTS")
        client.close()
        return greeting, refused, again, ok, listing

    greeting, refused, again, ok, listing = await trio.to_thread.run_sync(session)
    assert b'"SASL" ""' in greeting
    assert b'"STARTTLS"' in greeting
    assert refused == (
        b'NO (ENCRYPT-NEEDED) "Plaintext authentication disallowed on non-secure'
        b' connections: use STARTTLS."'
    )
    assert b'"SASL" "PLAIN LOGIN SCRAM-SHA-256"' in again
    assert b'"STARTTLS"' not in again
    assert again[-1] == b"OK"
    assert ok == b'OK "Logged in."'
    assert listing == b"OK"


async def test_auth_failure_then_lockout(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="sansmail")
    # Loopback is not exempt here, so the lockout applies to the test's client.
    settings = AuthSettings(failure_delay=0.01, max_failure_delay=0.02, max_failures=3)
    server = await sieve_server(start_server, tls_files, auth_settings=settings)

    def session() -> list[bytes]:
        client = SieveClient(server.port_of("managesieve"))
        client.response()
        answers = [client.login(password=f"wrong{n}") for n in range(3)]
        answers.append(client.login())
        client.close()
        return answers

    answers = await trio.to_thread.run_sync(session)
    assert answers == [b'NO "Authentication failed."'] * 3 + [
        b'NO (TRYLATER) "Too many authentication failures, try again later."'
    ]
    lines = [r.getMessage() for r in caplog.records]
    failed = f"auth failed: service=managesieve, method=PLAIN, user=<{ALICE}>, rip=127.0.0.1"
    assert lines.count(failed) == 3
    assert any(line.startswith("auth throttled: service=managesieve") for line in lines)


async def test_scram_sha_256_with_the_final_challenge(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await sieve_server(start_server, tls_files)

    def session() -> list[bytes]:
        mech = sasl.client_mechanism(
            "SCRAM-SHA-256", authcid=ALICE, password="secret", nonce="clientnonce0123456789"
        )
        client = SieveClient(server.port_of("managesieve"))
        client.response()
        first = mech.initial_response()
        assert first is not None
        client.sock.sendall(b'AUTHENTICATE "SCRAM-SHA-256" "' + b64(first) + b'"\r\n')
        server_first = client._line()
        final = mech.respond(base64.b64decode(server_first.strip(b'"')))
        client.sock.sendall(b'"' + b64(final) + b'"\r\n')
        # The server-final message comes as one more challenge (RFC 4422 §3.6; RFC
        # 5804 §2.1's DIGEST-MD5 example does the same), answered with "".
        server_final = client._line()
        mech.verify_server_final(base64.b64decode(server_final.strip(b'"')))
        answers = [client.status(b'""'), client.status(b"LISTSCRIPTS")]
        client.close()
        return answers

    assert await trio.to_thread.run_sync(session) == [b'OK "Logged in."', b"OK"]


async def test_connections_over_the_cap_from_one_address(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await sieve_server(start_server, tls_files)
    port = server.port_of("managesieve")

    def session() -> tuple[list[bytes], bool]:
        clients = [SieveClient(port) for _ in range(MAX_CONNECTIONS_PER_IP)]
        for client in clients:
            assert client.response()[-1] == b"OK"
        over = SieveClient(port)
        answer = over.response()
        closed = over.closed()
        for client in [*clients, over]:
            client.close()
        return answer, closed

    answer, closed = await trio.to_thread.run_sync(session)
    assert answer == [
        b'BYE (TRYLATER) "mx.example.test Error: too many connections from 127.0.0.1"'
    ]
    assert closed


async def test_pipelined_commands_and_idle_timeout(
    start_server: StartServer,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="sansmail")
    monkeypatch.setattr(managesieved, "IDLE_TIMEOUT", 0.3)
    server = await sieve_server(start_server, tls_files)

    def session() -> tuple[list[list[bytes]], list[bytes], bool]:
        client = SieveClient(server.port_of("managesieve"))
        client.response()
        client.login()
        # Sent ahead in one write: answered in order, each once the one before is.
        client.sock.sendall(
            b'PUTSCRIPT "a" {5+}\r\nkeep;\r\nSETACTIVE "a"\r\nLISTSCRIPTS\r\nGETSCRIPT "a"\r\n'
        )
        answers = [client.response() for _ in range(4)]
        last = client.response()  # nothing sent: the server speaks last
        closed = client.closed()
        client.close()
        return answers, last, closed

    answers, last, closed = await trio.to_thread.run_sync(session)
    assert answers == [[b"OK"], [b"OK"], [b'"a" ACTIVE', b"OK"], [b"{5}\r\nkeep;", b"OK"]]
    assert last == [b'BYE "Disconnected for inactivity."']
    assert closed
    await logged(
        caplog,
        "sansmail.managesieve",
        lambda lines: f"managesieve({ALICE}): Disconnected: Disconnected for inactivity" in lines,
    )


async def test_shutdown_says_bye(
    start_server: StartServer, tls_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    server = await sieve_server(start_server, tls_files)
    client = await trio.to_thread.run_sync(SieveClient, server.port_of("managesieve"))
    await trio.to_thread.run_sync(client.response)
    await server.stop()
    assert await trio.to_thread.run_sync(client.response) == [
        b'BYE (TRYLATER) "Server shutting down."'
    ]
    client.close()


@needs_sieve_connect
def test_sansmail_trio_serve_with_two_processes(
    tmp_path: pathlib.Path, tls_files: tuple[pathlib.Path, pathlib.Path], tls_ca: trustme.CA
) -> None:
    # The real command: `sansmail-trio serve`, whose parent binds the listener and forks.
    cert, key = tls_files
    (tmp_path / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        'processes = 2\n[listen]\nmanagesieve = "127.0.0.1:0"\n'
        f'[tls]\ncert = "{cert}"\nkey = "{key}"\n[smtp]\nplaintext_auth = "never"\n'
    )
    UserStore(tmp_path / "data" / "users.json", hasher=FAST_HASHER).add(
        parse_address(ALICE), "secret"
    )
    ca = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca))
    (tmp_path / "rules.sieve").write_bytes(SCRIPT)
    script = shutil.which("sansmail-trio")
    assert script is not None
    assert SIEVE_CONNECT is not None
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen([script, "serve"], cwd=tmp_path, stderr=stderr)
    try:
        port = wait_until_started(proc, log, processes=2)["managesieve"]
        command = [
            SIEVE_CONNECT,
            *("-u", ALICE, "--authmech", "PLAIN", "--passwordfd", "0", "--tlscafile", str(ca)),
            *("-s", "127.0.0.1", "-p", str(port)),
        ]
        for action in (
            ["--upload", "--localsieve", str(tmp_path / "rules.sieve"), "--remotesieve", "r"],
            ["--activate", "--remotesieve", "r"],
        ):
            done = subprocess.run(
                [*command, *action],
                input="secret\n",
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
        listed = subprocess.run(
            [*command, "--list"],
            input="secret\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert listed.stdout == '"r" ACTIVE\n', listed.stdout + listed.stderr
    finally:
        proc.terminate()
        proc.wait(30)
    directory = tmp_path / "data" / "sieve" / "example.test" / "alice"
    assert (directory / "r.sieve").read_bytes() == SCRIPT
    assert os.readlink(directory / ".dovecot.sieve") == "r.sieve"
    text = log.read_text()
    assert "managesieve on 127.0.0.1:" in text
    assert f"managesieve-login: Login: user=<{ALICE}>, method=PLAIN, rip=127.0.0.1" in text
