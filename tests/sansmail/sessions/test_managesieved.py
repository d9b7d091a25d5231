"""`ManageSieveSession` without sockets: client bytes go into the real ManageSieve core,
the session answers each event as an adapter would (its blocking calls run inline), and
the tests compare the octets a client would read, the log lines and the script store's
files on disk (Pigeonhole's layout)."""

from __future__ import annotations

import base64
import logging
import os
import pathlib

import pytest
from argon2 import PasswordHasher
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail import NEED_DATA, PAUSED, managesieve, sasl
from sansmail.config import parse_config
from sansmail.mail.address import MailboxId, parse_address
from sansmail.mail.auth import AuthService, AuthSettings
from sansmail.mail.sieve import SUPPORTED
from sansmail.sessions.common import Refusal
from sansmail.sessions.login import BLOCKING, FINISHED
from sansmail.sessions.managesieved import (
    ManageSieveService,
    ManageSieveSession,
    script_problem,
)
from sansmail.storage.sieve import SieveQuota, SieveStore
from sansmail.storage.users import UserStore

ALICE = MailboxId(domain="example.test", local="alice")
ADDRESS = "alice@example.test"
TLS = "TLSv1.3 TLS_AES_256_GCM_SHA384"
SCRIPT = b'require ["fileinto"];\r\nif header :contains "Subject" "x" {\r\n  fileinto "X";\r\n}\r\n'
#: Cheap argon2 parameters (the cost itself is tested in tests/sansmail/storage).
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
SIEVE_LINE = b'"SIEVE" "' + " ".join(sorted(SUPPORTED)).encode() + b'"\r\n'


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def literal(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


class Server:
    """A `ManageSieveService` over a temporary data dir, with alice (password "secret")."""

    def __init__(
        self,
        tmp_path: pathlib.Path,
        extra: str = "",
        *,
        quota: SieveQuota | None = None,
        **settings: object,
    ) -> None:
        text = (
            'hostname = "mx.example.test"\n'
            'domains = ["example.test"]\n'
            f'data_dir = "{tmp_path / "data"}"\n' + extra
        )
        self.config = parse_config(text, source=None, default_hostname="unused.example")
        self.scripts = SieveStore(self.config.data_dir, quota=quota or SieveQuota())
        users = UserStore(tmp_path / "users.json", hasher=FAST_HASHER)
        users.add(parse_address(ADDRESS), "secret")
        fast = AuthSettings(failure_delay=0.01, max_failure_delay=0.02, **settings)  # type: ignore[arg-type]
        self.service = ManageSieveService(
            config=self.config,
            scripts=self.scripts,
            users=users,
            auth=AuthService(users, secret=b"k" * 32, settings=fast),
        )
        self.dir = pathlib.Path(self.scripts.directory(ALICE))


class Client:
    """One connection: `send(b"CMD\\r\\n...")` runs every command the bytes hold, as the
    Trio adapter would, and returns the octets the server wrote."""

    def __init__(self, server: Server, *, client_ip: str = "127.0.0.1") -> None:
        self.logs: list[tuple[int, str]] = []
        self.session = ManageSieveSession(
            server.service,
            client_ip=client_ip,
            client_port=40000,
            local_ip="127.0.0.1",
            log=lambda level, text: self.logs.append((level, text)),
        )
        self.conn = self.session.conn
        self.now = 1000.0
        self.greeting = self.conn.send(self.session.greeting())

    def send(self, data: bytes) -> bytes:
        self.conn.receive_data(data)
        out = bytearray()
        while not self.session.ended:
            event = self.conn.next_event()
            if event is NEED_DATA or event is PAUSED:
                break
            out += self._answer(event)
        return bytes(out)

    def line(self, data: bytes) -> bytes:
        """One command, one line of answer (no CRLF)."""
        answer = self.send(data + b"\r\n")
        assert answer.endswith(b"\r\n"), answer
        assert answer.count(b"\r\n") == 1, answer
        return answer[:-2]

    def login(self, password: str = "secret") -> bytes:
        return self.line(
            b'AUTHENTICATE "PLAIN" "' + b64(f"\0{ADDRESS}\0{password}".encode()) + b'"'
        )

    def log_lines(self) -> list[str]:
        return [text for _level, text in self.logs]

    def _answer(self, event: object) -> bytes:
        session, send = self.session, self.conn.send
        if isinstance(event, managesieve.Authenticate):
            return self._login(event)
        if isinstance(event, managesieve.StartTls):
            reply = session.starttls()
            out = send(reply)
            if isinstance(reply, managesieve.Ok):
                self.conn.start_tls()
                session.tls_started(TLS, "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384")
                out += send(session.capabilities())
            return out
        assert isinstance(event, managesieve.Event)
        if session.blocking(event):
            return send(session.run(event))  # type: ignore[arg-type]
        return b"".join(send(answer) for answer in session.handle(event))

    def _login(self, event: managesieve.Authenticate) -> bytes:
        session, send = self.session, self.conn.send
        refusal = session.login_refusal(event)
        if refusal is not None:
            return send(refusal)
        login = session.login()
        if not login.gate(self.now).allowed:
            return send(session.throttled(event))
        exchange = session.exchange(event, login, nonce="n0nce", now=1_700_000_000.0)
        out = bytearray()
        last: object = None
        step = exchange.start()
        while step is not FINISHED:
            if step is BLOCKING:
                step = exchange.work()
                continue
            assert isinstance(step, sasl.Challenge)
            out += send(session.challenge(step.data))
            last = self.conn.next_event()
            assert last is not NEED_DATA, "give the exchange's lines in the same send()"
            step = exchange.answer(session.answer(last))
        reply = session.login_result(event, exchange.finish(self.now), last)
        return bytes(out) + (send(reply) if reply is not None else b"")


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Server:
    return Server(tmp_path)


def logged_in(server: Server) -> Client:
    client = Client(server)
    assert client.login() == b'OK "Logged in."'
    return client


# --- the greeting, CAPABILITY, STARTTLS ------------------------------------------------------


def test_greeting_lists_the_capabilities(server: Server) -> None:
    client = Client(server)
    assert client.greeting == (
        b'"IMPLEMENTATION" "sansmail"\r\n"SASL" "PLAIN LOGIN SCRAM-SHA-256"\r\n'
        + SIEVE_LINE
        + b'"STARTTLS"\r\n"MAXREDIRECTS" "4"\r\n"VERSION" "1.0"\r\nOK\r\n'
    )
    assert client.send(b"CAPABILITY\r\n") == client.greeting
    assert client.log_lines() == ["connect from [127.0.0.1]:40000"]


def test_the_sieve_line_names_what_require_accepts(server: Server) -> None:
    for name in ("fileinto", "vacation", "imap4flags", "include", "comparator-i;ascii-numeric"):
        assert f" {name} ".encode() in SIEVE_LINE.replace(b'"', b" ")
    assert b"enotify" not in SIEVE_LINE
    assert b"NOTIFY" not in Client(server).greeting  # no enotify: no NOTIFY methods


def test_no_password_in_clear_from_outside_loopback(server: Server) -> None:
    client = Client(server, client_ip="192.0.2.7")
    assert b'"SASL" ""\r\n' in client.greeting
    assert client.login() == (
        b'NO (ENCRYPT-NEEDED) "Plaintext authentication disallowed on non-secure'
        b' connections: use STARTTLS."'
    )
    # Refused before any attempt: nothing counted, nothing logged as a failure.
    assert not any("auth failed" in line for line in client.log_lines())
    # STARTTLS, then the listing again (RFC 5804 §2.2): SASL offered, STARTTLS not.
    answer = client.send(b"STARTTLS\r\n")
    assert answer.startswith(b'OK "Begin TLS negotiation now."\r\n"IMPLEMENTATION" "sansmail"\r\n')
    assert b'"SASL" "PLAIN LOGIN SCRAM-SHA-256"\r\n' in answer
    assert b"STARTTLS" not in answer.split(b"\r\n", 1)[1]
    assert client.login() == b'OK "Logged in."'
    assert client.log_lines()[-1] == (
        "managesieve-login: Login: user=<alice@example.test>, method=PLAIN,"
        " rip=192.0.2.7, lip=127.0.0.1, TLS"
    )


def test_plaintext_auth_never_refuses_loopback_too(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path, '[smtp]\nplaintext_auth = "never"\n')
    client = Client(server)
    assert b'"SASL" ""\r\n' in client.greeting
    assert client.login().startswith(b"NO (ENCRYPT-NEEDED)")


def test_starttls_without_a_certificate(server: Server) -> None:
    server.service.tls_available = False
    client = Client(server)
    assert b"STARTTLS" not in client.greeting
    assert client.line(b"STARTTLS") == b'NO "TLS not available."'


# --- logging in -------------------------------------------------------------------------------


def test_login_and_its_log_line(server: Server) -> None:
    client = logged_in(server)
    assert client.log_lines()[-1] == (
        "managesieve-login: Login: user=<alice@example.test>, method=PLAIN,"
        " rip=127.0.0.1, lip=127.0.0.1"
    )
    # Once logged in: OWNER, and neither SASL mechanisms nor STARTTLS any more.
    listing = client.send(b"CAPABILITY\r\n")
    assert b'"OWNER" "alice@example.test"\r\n' in listing
    assert b'"SASL" ""\r\n' in listing
    assert b"STARTTLS" not in listing
    assert client.line(b"LOGOUT") == b'OK "Logout completed."'
    assert client.session.ended
    client.session.closed()
    assert client.log_lines()[-1] == "managesieve(alice@example.test): Disconnected: Logged out"


def test_login_through_a_challenge_and_cancel(server: Server) -> None:
    client = Client(server)
    # PLAIN without an initial response: an empty challenge, then the credentials.
    answer = client.send(
        b'AUTHENTICATE "PLAIN"\r\n"' + b64(f"\0{ADDRESS}\0secret".encode()) + b'"\r\n'
    )
    assert answer == b'""\r\nOK "Logged in."\r\n'
    other = Client(server)
    assert other.send(b'AUTHENTICATE "PLAIN"\r\n"*"\r\n') == (
        b'""\r\nNO "Authentication aborted by client."\r\n'
    )


def test_wrong_password_and_unknown_mechanism(server: Server) -> None:
    client = Client(server)
    assert client.login("wrong") == b'NO "Authentication failed."'
    assert (
        "auth failed: service=managesieve, method=PLAIN, user=<alice@example.test>, rip=127.0.0.1"
    ) in client.log_lines()
    assert client.line(b'AUTHENTICATE "GSSAPI"') == b'NO "Unsupported authentication mechanism."'
    assert client.line(b"LISTSCRIPTS").startswith(b"NO")  # still not logged in
    client.send(b"LOGOUT\r\n")
    client.session.closed()
    assert client.log_lines()[-1] == (
        "managesieve-login: Disconnected (auth failed, 1 attempts): rip=127.0.0.1,"
        " lip=127.0.0.1, reason=Logged out"
    )


def test_lockout_after_failures(tmp_path: pathlib.Path) -> None:
    # Not loopback: trusted networks are exempt from the throttle.
    server = Server(tmp_path, '[smtp]\nplaintext_auth = "always"\n', max_failures=3)
    client = Client(server, client_ip="192.0.2.7")
    for attempt in range(3):
        assert client.login(f"wrong{attempt}") == b'NO "Authentication failed."'
    # Locked out now: refused without a check, even with the right password.
    assert client.login() == (b'NO (TRYLATER) "Too many authentication failures, try again later."')
    assert any(
        line.startswith("auth throttled: service=managesieve") for line in client.log_lines()
    )
    assert Client(server, client_ip="192.0.2.7").login().startswith(b"NO (TRYLATER)")
    assert Client(server, client_ip="192.0.2.8").login() == b'OK "Logged in."'


# --- scripts ----------------------------------------------------------------------------------


def test_put_activate_list_get(server: Server) -> None:
    client = logged_in(server)
    assert client.line(b'PUTSCRIPT "my rules" ' + literal(SCRIPT)) == b"OK"
    # Stored as sent, in Pigeonhole's layout.
    assert (server.dir / "my rules.sieve").read_bytes() == SCRIPT
    assert not (server.dir / ".dovecot.sieve").exists()
    assert client.send(b"LISTSCRIPTS\r\n") == b'"my rules"\r\nOK\r\n'
    assert client.line(b'SETACTIVE "my rules"') == b"OK"
    assert os.readlink(server.dir / ".dovecot.sieve") == "my rules.sieve"
    assert server.scripts.active(ALICE) == ("my rules", SCRIPT)
    assert client.line(b'PUTSCRIPT "other" "keep;"') == b"OK"
    assert client.send(b"LISTSCRIPTS\r\n") == b'"my rules" ACTIVE\r\n"other"\r\nOK\r\n'
    assert client.send(b'GETSCRIPT "my rules"\r\n') == (
        b"{%d}\r\n" % len(SCRIPT) + SCRIPT + b"\r\nOK\r\n"
    )
    assert client.log_lines()[-3:] == [
        'managesieve(alice@example.test): putscript "my rules" (80 octets)',
        'managesieve(alice@example.test): setactive "my rules"',
        'managesieve(alice@example.test): putscript "other" (5 octets)',
    ]


def test_syntax_errors_with_line_and_column(server: Server) -> None:
    client = logged_in(server)
    bad = b'require "fileinto";\r\nif header :is "Subject" "x" {\r\n  fileinto "X"\r\n}\r\n'
    expected = script_problem(bad, max_size=1 << 20)
    assert expected is not None
    assert expected.startswith("line 4: column 1: ")
    answer = client.line(b'PUTSCRIPT "bad" ' + literal(bad))
    assert answer == b'NO "' + expected.encode() + b'"'
    assert not (server.dir / "bad.sieve").exists()
    assert client.line(b"CHECKSCRIPT " + literal(bad)) == answer
    assert client.line(b"CHECKSCRIPT " + literal(SCRIPT)) == b"OK"
    assert client.line(b'CHECKSCRIPT "frobnicate;"') == (
        b"NO \"line 1: column 1: unknown command 'frobnicate'\""
    )
    assert client.line(b'CHECKSCRIPT "require \\"enotify\\";"') == (
        b"NO \"line 1: column 9: require command: unknown Sieve capability 'enotify'\""
    )
    assert client.line(b"CHECKSCRIPT " + literal(b"keep;\r\n# caf\xe9\r\n")) == (
        b'NO "line 2: column 6: the script is not valid UTF-8"'
    )
    assert client.send(b"LISTSCRIPTS\r\n") == b"OK\r\n"


def test_quota_answers(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path, quota=SieveQuota(max_scripts=2, max_script_size=100, max_storage=150))
    client = logged_in(server)
    assert client.line(b'HAVESPACE "a" 100') == b"OK"
    assert client.line(b'HAVESPACE "a" 101') == (
        b'NO (QUOTA/MAXSIZE) "a script may have at most 100 octets"'
    )
    big = b"keep;" + b" " * 95
    assert client.line(b'PUTSCRIPT "a" ' + literal(big + b" ")).startswith(b"NO (QUOTA/MAXSIZE)")
    assert client.line(b'PUTSCRIPT "a" ' + literal(big)) == b"OK"
    assert client.line(b'PUTSCRIPT "b" ' + literal(big)) == (
        b'NO (QUOTA/MAXSTORAGE) "a user\'s scripts may have at most 150 octets in all"'
    )
    assert client.line(b'PUTSCRIPT "b" "keep;"') == b"OK"
    assert client.line(b'HAVESPACE "c" 1') == (
        b'NO (QUOTA/MAXSCRIPTS) "a user may have at most 2 scripts"'
    )
    assert client.line(b'PUTSCRIPT "c" "keep;"').startswith(b"NO (QUOTA/MAXSCRIPTS)")
    # Replacing a script does not count it twice.
    assert client.line(b'PUTSCRIPT "b" "discard;"') == b"OK"
    # Over the core's literal limit: refused while it is read, never buffered.
    answer = client.line(b'PUTSCRIPT "d" ' + literal(b"#" * 2000))
    assert answer.startswith(b"NO (QUOTA/MAXSIZE)")
    assert sorted(os.listdir(server.dir)) == [".sieve.lock", "a.sieve", "b.sieve"]


def test_delete_rename_deactivate(server: Server) -> None:
    client = logged_in(server)
    client.line(b'PUTSCRIPT "one" "keep;"')
    client.line(b'PUTSCRIPT "two" "discard;"')
    assert client.line(b'SETACTIVE "one"') == b"OK"
    assert client.line(b'DELETESCRIPT "one"') == (
        b"NO (ACTIVE) \"script 'one' is active: deactivate it first\""
    )
    assert client.line(b'DELETESCRIPT "none"') == b"NO (NONEXISTENT) \"no script named 'none'\""
    assert client.line(b'SETACTIVE "none"') == b"NO (NONEXISTENT) \"no script named 'none'\""
    assert client.line(b'GETSCRIPT "none"') == b"NO (NONEXISTENT) \"no script named 'none'\""
    assert client.line(b'RENAMESCRIPT "one" "two"') == (
        b"NO (ALREADYEXISTS) \"a script named 'two' exists\""
    )
    assert client.line(b'RENAMESCRIPT "none" "three"').startswith(b"NO (NONEXISTENT)")
    # The active script stays active under its new name.
    assert client.line(b'RENAMESCRIPT "one" "uno"') == b"OK"
    assert client.send(b"LISTSCRIPTS\r\n") == b'"two"\r\n"uno" ACTIVE\r\nOK\r\n'
    assert os.readlink(server.dir / ".dovecot.sieve") == "uno.sieve"
    assert client.line(b'SETACTIVE ""') == b"OK"
    assert not os.path.lexists(server.dir / ".dovecot.sieve")
    assert client.line(b'DELETESCRIPT "uno"') == b"OK"
    assert client.send(b"LISTSCRIPTS\r\n") == b'"two"\r\nOK\r\n'
    assert client.log_lines()[-3:] == [
        'managesieve(alice@example.test): renamescript "one" "uno"',
        "managesieve(alice@example.test): deactivated",
        'managesieve(alice@example.test): deletescript "uno"',
    ]


def test_names_the_store_refuses(server: Server) -> None:
    client = logged_in(server)
    assert client.line(b'PUTSCRIPT "a/b" "keep;"') == b'NO "a script name must not contain \\"/\\""'
    assert client.line(b'PUTSCRIPT ".hidden" "keep;"') == (
        b'NO "a script name must not start with \\".\\""'
    )
    assert client.line(b'HAVESPACE "a/b" 1').startswith(b"NO ")
    assert not server.dir.exists() or not any(server.dir.glob("*.sieve"))


def test_a_disk_error_is_trylater(server: Server) -> None:
    client = logged_in(server)
    client.line(b'PUTSCRIPT "one" "keep;"')
    (server.dir / "one.sieve").unlink()
    (server.dir / "one.sieve").mkdir()  # reading it now fails with EISDIR
    assert client.line(b'GETSCRIPT "one"') == (
        b'NO (TRYLATER) "Cannot access the scripts, try again later."'
    )
    level, text = client.logs[-1]
    assert level == logging.ERROR
    assert text.startswith("managesieve(alice@example.test): GETSCRIPT:")


def test_scripts_are_the_logged_in_users(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    server.service.users.add(parse_address("bob@example.test"), "bobpw")
    alice = logged_in(server)
    alice.line(b'PUTSCRIPT "mine" "keep;"')
    bob = Client(server)
    credentials = b64(b"\0Bob@Example.Test\0bobpw")
    assert bob.line(b'AUTHENTICATE "PLAIN" "' + credentials + b'"') == b'OK "Logged in."'
    assert bob.send(b"LISTSCRIPTS\r\n") == b"OK\r\n"
    bob.line(b'PUTSCRIPT "his" "discard;"')
    bob_dir = pathlib.Path(server.scripts.directory(MailboxId(domain="example.test", local="bob")))
    assert (bob_dir / "his.sieve").read_bytes() == b"discard;"
    assert alice.send(b"LISTSCRIPTS\r\n") == b'"mine"\r\nOK\r\n'


# --- the rest of the session -----------------------------------------------------------------


def test_noop_unauthenticate_and_invalid_commands(server: Server) -> None:
    client = logged_in(server)
    assert client.line(b'NOOP "STARTTLS-RESYNC-CAPA"') == b'OK (TAG "STARTTLS-RESYNC-CAPA") "Done"'
    assert client.line(b"NOOP") == b'OK "NOOP completed."'
    assert client.line(b"UNAUTHENTICATE") == b'OK "Unauthenticate completed."'
    assert client.line(b"LISTSCRIPTS").startswith(b"NO")
    assert b'"SASL" "PLAIN LOGIN SCRAM-SHA-256"' in client.send(b"CAPABILITY\r\n")
    assert client.line(b"FROBNICATE").startswith(b"NO")
    assert any("NO " in line and "FROBNICATE" in line for line in client.log_lines())


def test_refusal_timeout_and_shutdown(server: Server) -> None:
    client = Client(server)
    assert client.conn.send(client.session.timeout_reply()) == (
        b'BYE "Disconnected for inactivity."\r\n'
    )
    fresh = Client(server)
    assert fresh.session.last_words(fresh.session.shutdown_reply()) == (
        b'BYE (TRYLATER) "Server shutting down."\r\n'
    )
    refused = ManageSieveSession(
        server.service, client_ip="192.0.2.1", client_port=1, local_ip="127.0.0.1", log=print
    )
    bye = refused.refuse(Refusal.TOO_MANY_FROM_CLIENT)
    assert refused.conn.send(bye) == (
        b'BYE (TRYLATER) "mx.example.test Error: too many connections from 192.0.2.1"\r\n'
    )
    assert refused.ended


def test_connection_closed_ends_the_session(server: Server) -> None:
    client = logged_in(server)
    client.send(b"")
    assert client.session.ended
    client.session.closed()
    assert client.log_lines()[-1] == (
        "managesieve(alice@example.test): Disconnected: Connection closed"
    )


def test_unicode_names_on_disk_and_in_the_log(server: Server) -> None:
    client = logged_in(server)
    name = "Caf\u00e9 \u200erules".encode()
    assert client.line(b'PUTSCRIPT "' + name + b'" "keep;"') == b"OK"
    assert (server.dir / "Caf\u00e9 \u200erules.sieve").read_bytes() == b"keep;"
    assert client.send(b"LISTSCRIPTS\r\n") == b'"' + name + b'"\r\nOK\r\n'
    # A format character is shown escaped: a name cannot hide text in the log.
    assert client.log_lines()[-1] == (
        'managesieve(alice@example.test): putscript "Caf\u00e9 \\u200erules" (5 octets)'
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_any_script_is_judged_never_raises(content: bytes) -> None:
    problem = script_problem(content, max_size=1 << 20)
    assert problem is None or problem.startswith("line ")
