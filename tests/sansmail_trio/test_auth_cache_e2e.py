"""The auth cache against a real server and real clients (imaplib, poplib, smtplib) on
127.0.0.1: a repeated login pays no argon2 whatever the protocol, a wrong password is
still refused, ``sansmail-trio user passwd`` and ``user del`` end a cached password at the
very next login (in each of two server processes too), and SCRAM and CRAM-MD5 log in as
before without argon2.

The in-process server counts argon2 checks by wrapping `PasswordHasher.verify`, which the
server's user store calls from its worker threads."""

from __future__ import annotations

import base64
import collections
import imaplib
import pathlib
import poplib
import shutil
import smtplib
import subprocess
import threading
from collections.abc import Callable

import pytest
import trio
import trio.testing
from argon2 import PasswordHasher
from test_live_changes import MAX_ROUNDS, BothProcesses, Serve, cli, expect, login, server
from trio_helpers import BOTH_BACKENDS, RunningServer, StartServer

from sansmail import sasl
from sansmail.config import parse_config
from sansmail.mail.address import parse_address
from sansmail.mail.auth import AuthService, AuthSettings
from sansmail.mail.authcache import AuthCache, AuthCacheSettings
from sansmail.sessions.login import Exchange, Login, Result
from sansmail.storage.generations import Counter, Generations, bump
from sansmail.storage.users import UserStore
from sansmail_trio._login import drive
from sansmail_trio._serve import _auth_cache

__all__ = ["server"]  # the fixture, from test_live_changes

# The tests of an in-process server (start_server) run on both storage backends.
pytestmark = BOTH_BACKENDS

ALICE = "alice@example.test"
LISTEN = {
    "smtp": "127.0.0.1:0",
    "imap": "127.0.0.1:0",
    "pop3": "127.0.0.1:0",
}
MECHANISMS = ["PLAIN", "LOGIN", "SCRAM-SHA-256", "CRAM-MD5"]


@pytest.fixture
def argon2_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every argon2 verification made in this process, counted (one item each)."""
    checks: list[int] = []
    lock = threading.Lock()
    verify = PasswordHasher.verify

    def counting(self: PasswordHasher, hash: str | bytes, password: str | bytes) -> bool:
        with lock:
            checks.append(1)
        return verify(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", counting)
    return checks


async def _start(start_server: StartServer) -> RunningServer:
    return await start_server(listen=LISTEN, auth_mechanisms=MECHANISMS)  # type: ignore[no-any-return]


def imap_login(server: RunningServer, user: str, password: str) -> bool:
    client = imaplib.IMAP4("127.0.0.1", server.port_of("imap"), timeout=10)
    try:
        client.login(user, password)
    except imaplib.IMAP4.error:
        return False
    finally:
        client.logout()
    return True


def pop3_login(server: RunningServer, user: str, password: str) -> bool:
    client = poplib.POP3("127.0.0.1", server.port_of("pop3"), timeout=10)
    try:
        client.user(user)
        client.pass_(password)
    except poplib.error_proto:
        return False
    finally:
        client.quit()
    return True


def smtp_plain(server: RunningServer, user: str, password: str) -> bool:
    with smtplib.SMTP("127.0.0.1", server.port_of("smtp"), timeout=10) as client:
        client.ehlo("client.example.org")
        code, _ = client.docmd("AUTH", "PLAIN " + _b64(f"\0{user}\0{password}".encode()))
    return code == 235


def imap_authenticate(server: RunningServer, mechanism: str, user: str, password: str) -> bool:
    """IMAP AUTHENTICATE with sansmail's own client mechanism (imaplib has no SCRAM)."""
    mech = sasl.client_mechanism(mechanism, user, password, nonce="clientnonce0123")
    client = imaplib.IMAP4("127.0.0.1", server.port_of("imap"), timeout=10)

    def respond(challenge: bytes) -> bytes:
        # imaplib sends no initial response: a client-first mechanism answers the
        # server's empty challenge instead (RFC 4422 §5); the last challenge (SCRAM's
        # server-final) is checked, then answered empty.
        return b"" if mech.complete else mech.respond(challenge)

    try:
        client.authenticate(mechanism, respond)
    except imaplib.IMAP4.error:
        return False
    finally:
        client.logout()
    return True


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def call(function: Callable[..., bool], *args: object) -> bool:
    return await trio.to_thread.run_sync(function, *args)


def _script() -> str:
    script = shutil.which("sansmail-trio")
    assert script is not None, "the sansmail-trio console script is not installed"
    return script


async def user_command(server: RunningServer, *argv: str, stdin: str = "") -> None:
    """The real ``sansmail-trio user ...``, against the running server's config."""
    config = server.config.source
    assert isinstance(config, pathlib.Path)
    done = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [_script(), "user", *argv, "--config", str(config)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    )
    assert done.returncode == 0, done.stderr


# --- one process, argon2 counted -----------------------------------------------------------


async def test_a_repeated_login_pays_no_argon2_in_any_protocol(
    start_server: StartServer, argon2_checks: list[int]
) -> None:
    server = await _start(start_server)
    assert await call(imap_login, server, ALICE, "secret")
    assert len(argon2_checks) == 1
    assert await call(imap_login, server, ALICE, "secret")
    assert await call(pop3_login, server, ALICE, "secret")
    assert await call(smtp_plain, server, ALICE, "secret")
    assert await call(imap_login, server, "ALICE@example.test", "secret")
    assert len(argon2_checks) == 1
    # Wrong passwords are refused, fresh or remembered; the remembered one costs nothing.
    assert not await call(imap_login, server, ALICE, "wrong")
    assert not await call(pop3_login, server, ALICE, "wrong")
    assert len(argon2_checks) == 2
    assert await call(imap_login, server, ALICE, "secret")
    assert len(argon2_checks) == 2


async def test_ten_parallel_repeat_logins_pay_no_argon2(
    start_server: StartServer, argon2_checks: list[int]
) -> None:
    server = await _start(start_server)
    assert await call(imap_login, server, ALICE, "secret")
    results: list[bool] = []

    async def one() -> None:
        results.append(await call(imap_login, server, ALICE, "secret"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
    assert results == [True] * 10
    assert len(argon2_checks) == 1


async def test_ten_parallel_first_logins_pay_argon2_once(
    start_server: StartServer, argon2_checks: list[int]
) -> None:
    # A mail client starting up: ten connections at once, none of them cached yet. One
    # checks the password; the other nine wait for its verdict (sansmail_trio._login).
    server = await _start(start_server)
    results: list[bool] = []

    async def one() -> None:
        results.append(await call(imap_login, server, ALICE, "secret"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
    assert results == [True] * 10
    assert len(argon2_checks) == 1
    # Ten wrong ones at once: one check too, and all ten refused.
    results.clear()

    async def wrong() -> None:
        results.append(await call(imap_login, server, ALICE, "wrong"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(wrong)
    assert results == [False] * 10
    assert len(argon2_checks) == 2


async def test_a_waiting_login_checks_for_itself_if_the_running_check_fails(
    tmp_path: pathlib.Path,
) -> None:
    entered, release = threading.Event(), threading.Event()

    class Held(PasswordHasher):
        """Cheap argon2 whose first check waits for `release`, then breaks."""

        checks = 0

        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            Held.checks += 1
            if Held.checks == 1:
                entered.set()
                release.wait(30)
                raise MemoryError("argon2 could not get its 64 MiB")
            return super().verify(hash, password)

    users = UserStore(tmp_path / "users.json", hasher=Held(1, 8, 1))
    users.add(parse_address(ALICE), "secret")
    auth = AuthService(
        users,
        secret=b"a" * 32,
        settings=AuthSettings(exempt=()),
        cache=AuthCache(secret=b"c" * 32),
    )

    def exchange() -> Exchange:
        login = Login(
            service="imap",
            auth=auth,
            users=users,
            hostname="mx.example.test",
            client_ip="192.0.2.1",
            log=lambda _level, _text: None,
        )
        assert login.gate(trio.current_time()).allowed
        return login.password(ALICE, "secret")

    async def no_challenge(_data: bytes) -> bytes | None:
        raise AssertionError("a password login has no challenge")

    results: list[Result] = []

    async def lead() -> None:
        with pytest.raises(MemoryError):
            await drive(exchange(), no_challenge)

    async def follow() -> None:
        results.append(await drive(exchange(), no_challenge))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lead)
        await trio.to_thread.run_sync(entered.wait)
        nursery.start_soon(follow)
        await trio.testing.wait_all_tasks_blocked()
        assert Held.checks == 1  # the follower waits for the leader's check
        release.set()  # which fails: no verdict is stored
    [result] = results
    assert (result.user, result.cached) == (ALICE, False)
    assert Held.checks == 2  # the follower checked for itself


async def test_user_passwd_and_del_end_a_cached_login_at_once(
    start_server: StartServer, argon2_checks: list[int]
) -> None:
    server = await _start(start_server)
    for _ in range(2):
        assert await call(imap_login, server, ALICE, "secret")
    assert len(argon2_checks) == 1  # the second login came from the cache
    await user_command(server, "passwd", ALICE, "--password-stdin", stdin="changed\n")
    # No sleep: the command has exited, the change is in force.
    assert not await call(imap_login, server, ALICE, "secret")
    assert not await call(pop3_login, server, ALICE, "secret")
    assert await call(imap_login, server, ALICE, "changed")
    assert await call(imap_login, server, ALICE, "changed")
    checks = len(argon2_checks)
    await user_command(server, "del", ALICE)
    assert not await call(imap_login, server, ALICE, "changed")
    assert not await call(smtp_plain, server, ALICE, "changed")
    assert len(argon2_checks) > checks  # checked again, against nobody


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "CRAM-MD5"])
async def test_scram_and_cram_md5_log_in_without_argon2(
    start_server: StartServer, argon2_checks: list[int], mechanism: str
) -> None:
    server = await _start(start_server)
    for _ in range(2):
        assert await call(imap_authenticate, server, mechanism, ALICE, "secret")
    assert not await call(imap_authenticate, server, mechanism, ALICE, "wrong")
    assert argon2_checks == []
    # And a password login beside them is cached as usual.
    assert await call(imap_login, server, ALICE, "secret")
    assert await call(imap_login, server, ALICE, "secret")
    assert len(argon2_checks) == 1


# --- what serve builds from [auth] ------------------------------------------------------------


def test_serve_builds_a_cache_that_follows_reload(tmp_path: pathlib.Path) -> None:
    generations = Generations.open(tmp_path)
    config = parse_config(
        f'data_dir = "{tmp_path}"\n[auth]\ncache_size = 7\ncache_ttl = "2m"\n',
        source=None,
        default_hostname="h.example",
    )
    cache = _auth_cache(config, generations)
    assert cache is not None
    assert cache.settings == AuthCacheSettings(size=7, ttl=120, negative_ttl=3600)
    fingerprint = cache.fingerprint("alice@example.test", "pw")
    cache.store(fingerprint, True, record=None, now=0.0)
    bump(tmp_path, Counter.USERS)  # a user change alone flushes nothing
    assert cache.lookup(fingerprint, record=None, now=1.0) is True
    bump(tmp_path, Counter.USERS, Counter.ALIASES, Counter.TLS)  # what reload bumps
    assert cache.lookup(fingerprint, record=None, now=1.0) is None


@pytest.mark.parametrize("table", ["cache_size = 0", "cache_ttl = 0\ncache_negative_ttl = 0"])
def test_serve_builds_no_cache_when_it_could_hold_nothing(
    tmp_path: pathlib.Path, table: str
) -> None:
    config = parse_config(f"[auth]\n{table}\n", source=None, default_hostname="h.example")
    assert _auth_cache(config, Generations.open(tmp_path)) is None


# --- two processes, the real console script --------------------------------------------------


def test_user_passwd_ends_a_cached_login_in_both_processes(server: Serve) -> None:
    address = "carol@example.test"
    added = cli(server, "user", "add", address, "--password-stdin", stdin="first\n")
    assert added.returncode == 0, added.stderr
    # Log in until each process has answered at least twice: from its second login on,
    # a process answers from its cache.
    answered: collections.Counter[int] = collections.Counter()
    for _ in range(40):
        answered[expect(login(server, address, "first"), True)] += 1
        if len(answered) == 2 and min(answered.values()) >= 2:
            break
    assert len(answered) == 2, answered
    assert min(answered.values()) >= 2, answered

    changed = cli(server, "user", "passwd", address, "--password-stdin", stdin="second\n")
    assert changed.returncode == 0, changed.stderr
    both = BothProcesses()
    everywhere(both, "old password", lambda: expect(login(server, address, "first"), False))
    everywhere(both, "new password", lambda: expect(login(server, address, "second"), True))
    everywhere(both, "new again", lambda: expect(login(server, address, "second"), True))

    deleted = cli(server, "user", "del", address)
    assert deleted.returncode == 0, deleted.stderr
    everywhere(both, "after del", lambda: expect(login(server, address, "second"), False))


def everywhere(both: BothProcesses, name: str, attempt: Callable[[], int]) -> None:
    """`attempt` on fresh connections until both processes have answered it (each
    attempt must hold whichever answers: the state it checks does not change)."""
    for _ in range(MAX_ROUNDS):
        both.check(name, attempt)
        if len(both.seen[name]) == 2:
            return
    pytest.fail(f"{name}: only {both.seen[name]} answered")
