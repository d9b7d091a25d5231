"""The auth cache in the login exchange (`sansmail.sessions.login`), driven the way an
adapter drives it, with a real user store, a real generations file and a second store
writing as ``sansmail-trio user`` does: a repeated password skips argon2 *and* the
worker thread (no `BLOCKING`), every change to the user's record or a reload ends that,
the throttle sees exactly what it saw without a cache, and SCRAM and CRAM-MD5 run as
before, without argon2 and without the cache."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Sequence

import pytest
from argon2 import PasswordHasher

from sansmail import sasl
from sansmail.mail.address import parse_address
from sansmail.mail.auth import AuthService, AuthSettings
from sansmail.mail.authcache import AuthCache, AuthCacheSettings
from sansmail.sessions.login import BLOCKING, FINISHED, Exchange, Login, Result
from sansmail.storage.generations import Counter, Generations, bump
from sansmail.storage.users import UserStore

ALICE = "alice@example.test"
BOB = "bob@example.test"
CLIENT = "192.0.2.7"  # not exempt: the throttle counts


class CountingHasher(PasswordHasher):
    """Cheap argon2 that counts the checks it makes."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.checks = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.checks += 1
        return super().verify(hash, password)


class Server:
    """What a server process holds: its store (following the generations), its auth
    service and cache; plus `cli`, a second store that writes as the CLI does."""

    def __init__(
        self,
        root: pathlib.Path,
        *,
        cache: bool = True,
        settings: AuthSettings | None = None,
        ttl: float = 3600,
    ) -> None:
        self.root = root
        self.cli = UserStore(root / "users.json", hasher=PasswordHasher(1, 8, 1), cram_md5=True)
        if not (root / "users.json").exists():
            self.cli.add(parse_address(ALICE), "secret")
            self.cli.add(parse_address(BOB), "bobs-secret")
        self.generations = Generations.open(root)
        self.hasher = CountingHasher()
        self.users = UserStore(
            root / "users.json",
            hasher=self.hasher,
            cram_md5=True,
            generations=self.generations,
        )
        self.cache = (
            AuthCache(
                secret=b"c" * 32,
                settings=AuthCacheSettings(ttl=ttl),
                reloads=lambda: self.generations[Counter.TLS],
            )
            if cache
            else None
        )
        self.auth = AuthService(
            self.users,
            secret=b"a" * 32,
            settings=settings or AuthSettings(exempt=()),
            cache=self.cache,
        )
        self.log: list[str] = []

    def login(self) -> Login:
        return Login(
            service="imap",
            auth=self.auth,
            users=self.users,
            hostname="mx.example.test",
            client_ip=CLIENT,
            log=lambda _level, text: self.log.append(text),
        )


Steps = list[str]


def drive(
    server: Server,
    start: Callable[[Login], Exchange],
    *,
    now: float = 0.0,
    respond: Callable[[bytes], bytes] | None = None,
) -> tuple[Steps, Result]:
    """One attempt as `sansmail_trio._login` makes it: gate, then the steps (BLOCKING
    meaning a worker-thread hop), then finish. Returns the steps taken and the result."""
    login = server.login()
    assert login.gate(now).allowed
    exchange = start(login)
    steps: Steps = []
    step = exchange.start()
    while step is not FINISHED:
        if step is BLOCKING:
            steps.append("BLOCKING")
            step = exchange.work()
        else:
            assert isinstance(step, sasl.Challenge)
            assert respond is not None
            steps.append("challenge")
            step = exchange.answer(respond(step.data))
    return steps, exchange.finish(now)


def password(name: str, secret: str) -> Callable[[Login], Exchange]:
    return lambda login: login.password(name, secret)


def plain(name: str, secret: str, authzid: str = "") -> Callable[[Login], Exchange]:
    client = sasl.client_mechanism("PLAIN", name, secret, authzid)
    initial = client.initial_response()
    return lambda login: login.sasl("PLAIN", initial, nonce="n" * 24, timestamp=1)


def with_client(
    mechanism: str, name: str, secret: str
) -> tuple[Callable[[Login], Exchange], Callable[[bytes], bytes]]:
    """A SASL exchange whose challenges a real client mechanism answers."""
    client = sasl.client_mechanism(mechanism, name, secret, nonce="clientnonce")
    initial = client.initial_response()

    def respond(challenge: bytes) -> bytes:
        if client.complete:
            return b""
        return client.respond(challenge)

    def start(login: Login) -> Exchange:
        return login.sasl(mechanism, initial, nonce="servernonce", timestamp=1_700_000_000)

    return start, respond


# --- hits: no argon2, no worker thread --------------------------------------------------


def test_a_repeated_imap_or_pop3_password_skips_argon2_and_the_thread(
    tmp_path: pathlib.Path,
) -> None:
    server = Server(tmp_path)
    steps, result = drive(server, password(ALICE, "secret"))
    assert (steps, result.user, result.cached) == (["BLOCKING"], ALICE, False)
    assert server.hasher.checks == 1
    for now in (1.0, 2.0):
        steps, result = drive(server, password("Alice@Example.TEST", "secret"), now=now)
        assert (steps, result.user, result.cached) == ([], ALICE, True)
    assert server.hasher.checks == 1


def test_plain_with_an_initial_response_is_answered_without_a_thread(
    tmp_path: pathlib.Path,
) -> None:
    server = Server(tmp_path)
    assert drive(server, plain(ALICE, "secret"))[0] == ["BLOCKING"]
    steps, result = drive(server, plain(ALICE, "secret"), now=1.0)
    assert (steps, result.user, result.cached) == ([], ALICE, True)
    # IMAP LOGIN, POP3 PASS and SASL share the entry: same user, same password.
    assert drive(server, password(ALICE, "secret"), now=2.0)[0] == []
    assert server.hasher.checks == 1


def test_the_login_mechanism_asks_its_questions_then_needs_no_thread(
    tmp_path: pathlib.Path,
) -> None:
    server = Server(tmp_path)
    start, respond = with_client("LOGIN", ALICE, "secret")
    steps, _result = drive(server, start, respond=respond)
    assert steps == ["challenge", "challenge", "BLOCKING"]
    start, respond = with_client("LOGIN", ALICE, "secret")
    steps, result = drive(server, start, respond=respond, now=1.0)
    assert (steps, result.user, result.cached) == (["challenge", "challenge"], ALICE, True)
    assert server.hasher.checks == 1


def test_a_cached_password_still_may_not_act_as_someone_else(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    drive(server, plain(ALICE, "secret"))
    steps, result = drive(server, plain(ALICE, "secret", authzid=BOB), now=1.0)
    assert (steps, result.user, result.cached) == ([], None, True)
    assert any("auth failed" in line for line in server.log)
    steps, result = drive(server, plain(ALICE, "secret", authzid=ALICE), now=2.0)
    assert (steps, result.user) == ([], ALICE)


def test_the_ttl_counts_from_the_check_to_the_gate(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path, ttl=10)
    drive(server, password(ALICE, "secret"), now=100.0)
    assert drive(server, password(ALICE, "secret"), now=109.0)[0] == []
    assert drive(server, password(ALICE, "secret"), now=110.0)[0] == ["BLOCKING"]
    assert drive(server, password(ALICE, "secret"), now=111.0)[0] == []


def test_without_a_gate_or_without_a_cache_every_password_is_checked(
    tmp_path: pathlib.Path,
) -> None:
    server = Server(tmp_path)
    drive(server, password(ALICE, "secret"))
    # An exchange whose client was never let in by the gate has no time to judge by.
    exchange = server.login().password(ALICE, "secret")
    assert exchange.start() is BLOCKING
    uncached = Server(tmp_path, cache=False)
    for now in (0.0, 1.0):
        assert drive(uncached, password(ALICE, "secret"), now=now)[0] == ["BLOCKING"]
    assert uncached.hasher.checks == 2


# --- failures ----------------------------------------------------------------------------


def test_a_failure_is_never_answered_as_a_success(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    steps, result = drive(server, password(ALICE, "wrong"))
    assert (steps, result.user) == (["BLOCKING"], None)
    steps, result = drive(server, password(ALICE, "wrong"), now=1.0)
    assert (steps, result.user, result.cached) == ([], None, True)  # the negative cache
    # The right password is not shadowed by the remembered wrong one.
    steps, result = drive(server, password(ALICE, "secret"), now=2.0)
    assert (steps, result.user, result.cached) == (["BLOCKING"], ALICE, False)
    # An unknown user stays unknown, cached or not.
    for now in (3.0, 4.0):
        assert drive(server, password("nobody@example.test", "secret"), now=now)[1].user is None


def _throttle_story(server: Server) -> list[tuple[bool, float, str | None, float]]:
    # Repeats of one wrong password, new wrong ones, a success, up to the lockout; what
    # the gate said and how each attempt ended.
    story = []
    attempts = ["w1", "w1", "w1", "w2", "secret", "w1", "w3", "w3", "w4", "w5", "secret"]
    for i, secret in enumerate(attempts):
        now = 10.0 * i
        login = server.login()
        verdict = login.gate(now)
        if not verdict.allowed:
            story.append((False, verdict.retry_after, None, 0.0))
            continue
        exchange = login.password(ALICE, secret)
        step = exchange.start()
        while step is BLOCKING:
            step = exchange.work()
        result = exchange.finish(now)
        story.append((True, verdict.delay, result.user, result.delay))
    return story


def test_the_throttle_counts_exactly_as_without_a_cache(tmp_path: pathlib.Path) -> None:
    settings = AuthSettings(max_failures=4, exempt=())
    without = Server(tmp_path / "a", cache=False, settings=settings)
    cached = Server(tmp_path / "b", cache=True, settings=settings)
    story = _throttle_story(without)
    assert _throttle_story(cached) == story
    # Repeats were not counted (the lockout came at the fourth *new* wrong password)
    # and it did happen: the last attempt, with the right password, was refused.
    assert story[-1][0] is False
    assert [entry[2] for entry in story].count(ALICE) == 1
    assert cached.hasher.checks < without.hasher.checks
    assert [line for line in cached.log] == [line for line in without.log]


# --- changes to the user store -----------------------------------------------------------


def test_user_passwd_ends_the_old_password_at_the_next_login(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    for now in (0.0, 1.0):
        drive(server, password(ALICE, "secret"), now=now)
        drive(server, password(BOB, "bobs-secret"), now=now)
    assert drive(server, password(ALICE, "secret"), now=2.0)[0] == []
    server.cli.set_password(ALICE, "new-secret")  # bumps the users counter
    steps, result = drive(server, password(ALICE, "secret"), now=3.0)
    assert (steps, result.user) == (["BLOCKING"], None)
    steps, result = drive(server, password(ALICE, "new-secret"), now=4.0)
    assert (steps, result.user) == (["BLOCKING"], ALICE)
    assert drive(server, password(ALICE, "new-secret"), now=5.0)[0] == []
    # Bob's record did not change: his entry stayed.
    assert drive(server, password(BOB, "bobs-secret"), now=6.0) == ([], _cached(BOB))


def _cached(user: str) -> Result:
    return Result("LOGIN", user=user, authcid=user, cached=True)


def test_user_del_makes_a_cached_password_fail_at_once(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    drive(server, password(ALICE, "secret"))
    assert drive(server, password(ALICE, "secret"), now=1.0)[0] == []
    server.cli.delete(ALICE)
    steps, result = drive(server, password(ALICE, "secret"), now=2.0)
    assert (steps, result.user) == (["BLOCKING"], None)


def test_user_add_ends_a_remembered_failure_for_that_name(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    carol = "carol@example.test"
    for now in (0.0, 1.0):
        assert drive(server, password(carol, "hers"), now=now)[1].user is None
    server.cli.add(parse_address(carol), "hers")
    steps, result = drive(server, password(carol, "hers"), now=2.0)
    assert (steps, result.user) == (["BLOCKING"], carol)


def test_reload_empties_the_cache(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    drive(server, password(ALICE, "secret"))
    drive(server, password(BOB, "bobs-secret"))
    assert server.cache is not None
    assert len(server.cache) == 2
    assert bump(tmp_path, Counter.USERS, Counter.ALIASES, Counter.TLS)  # sansmail-trio reload
    assert drive(server, password(ALICE, "secret"), now=1.0)[0] == ["BLOCKING"]
    assert len(server.cache) == 1


def test_an_edit_by_hand_that_reload_announces_ends_the_changed_entry(
    tmp_path: pathlib.Path,
) -> None:
    # Even without the flush (a store only following its counter): the record changed.
    server = Server(tmp_path)
    drive(server, password(ALICE, "secret"))
    other = UserStore(tmp_path / "other.json", hasher=PasswordHasher(1, 8, 1))
    other.add(parse_address(ALICE), "restored")
    document = json.loads((tmp_path / "users.json").read_text())
    document["users"][ALICE] = json.loads((tmp_path / "other.json").read_text())["users"][ALICE]
    (tmp_path / "users.json").write_text(json.dumps(document))
    assert bump(tmp_path, Counter.USERS)
    assert drive(server, password(ALICE, "secret"), now=1.0)[1].user is None
    assert drive(server, password(ALICE, "restored"), now=2.0)[1].user == ALICE


# --- SCRAM and CRAM-MD5: no password on the server, no argon2, no cache -----------------


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5"])
def test_scram_and_cram_md5_run_as_before_without_argon2_or_the_cache(
    tmp_path: pathlib.Path, mechanism: str
) -> None:
    def runs(server: Server) -> list[tuple[Steps, str | None, bool]]:
        seen = []
        for now, secret in ((0.0, "secret"), (1.0, "secret"), (2.0, "wrong"), (3.0, "wrong")):
            start, respond = with_client(mechanism, ALICE, secret)
            steps, result = drive(server, start, respond=respond, now=now)
            seen.append((steps, result.user, result.cached))
        return seen

    cached = Server(tmp_path / "a")
    without = Server(tmp_path / "b", cache=False)
    assert runs(cached) == runs(without)
    expected_ok: Sequence[str] = (
        ["challenge", "BLOCKING"]
        if mechanism == "CRAM-MD5"
        else ["BLOCKING", "challenge", "challenge"]
    )
    assert runs(cached)[0] == (list(expected_ok), ALICE, False)
    # The server side holds keys, not passwords: no argon2 at all, nothing cached.
    assert cached.hasher.checks == without.hasher.checks == 0
    assert cached.cache is not None
    assert len(cached.cache) == 0


def test_the_failure_log_line_is_the_same_for_a_cached_failure(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    drive(server, password(ALICE, "wrong"))
    drive(server, password(ALICE, "wrong"), now=1.0)
    assert (
        server.log == [f"auth failed: service=imap, method=LOGIN, user=<{ALICE}>, rip={CLIENT}"] * 2
    )


# --- one check for many logins ---------------------------------------------------------------


def test_logins_with_the_same_password_name_the_same_pending_check(
    tmp_path: pathlib.Path,
) -> None:
    server = Server(tmp_path)
    first, second = (server.login() for _ in range(2))
    for login in (first, second):
        assert login.gate(0.0).allowed
    a, b = first.password(ALICE, "secret"), second.password("alice@EXAMPLE.test", "secret")
    assert a.start() is BLOCKING
    assert b.start() is BLOCKING
    assert a.pending_check is not None
    assert a.pending_check == b.pending_check
    # The adapter lets `a` check and `b` wait; then `b` retries and needs no argon2.
    assert a.work() is FINISHED
    assert a.finish(1.0).user == ALICE
    assert a.pending_check is None
    assert b.retry() is FINISHED
    result = b.finish(1.0)
    assert (result.user, result.cached) == (ALICE, True)
    assert server.hasher.checks == 1
    # Another password, another check.
    c = server.login()
    c.gate(2.0)
    other = c.password(ALICE, "other")
    assert other.start() is BLOCKING
    assert other.pending_check not in (None, a.pending_check)


def test_a_sasl_plain_retry_goes_on_from_the_cached_verdict(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    logins = [server.login() for _ in range(2)]
    for login in logins:
        login.gate(0.0)
    exchanges = [plain(ALICE, "secret")(login) for login in logins]
    assert [e.start() for e in exchanges] == [BLOCKING, BLOCKING]
    assert exchanges[0].work() is FINISHED
    exchanges[0].finish(0.5)
    assert exchanges[1].retry() is FINISHED
    assert exchanges[1].finish(0.5).user == ALICE
    assert server.hasher.checks == 1


def test_a_retry_without_a_stored_verdict_asks_for_the_check_again(
    tmp_path: pathlib.Path,
) -> None:
    server = Server(tmp_path)
    assert server.cache is not None
    server.cache.settings = AuthCacheSettings(negative_ttl=0)  # failures not remembered
    logins = [server.login() for _ in range(2)]
    for login in logins:
        login.gate(0.0)
    a, b = (login.password(ALICE, "wrong") for login in logins)
    assert (a.start(), b.start()) == (BLOCKING, BLOCKING)
    a.work()
    assert a.finish(0.5).user is None
    assert b.retry() is BLOCKING
    assert b.pending_check is not None
    assert b.work() is FINISHED
    assert b.finish(0.6).user is None
    assert server.hasher.checks == 2


def test_only_a_cached_password_check_is_named(tmp_path: pathlib.Path) -> None:
    uncached = Server(tmp_path / "a", cache=False)
    login = uncached.login()
    login.gate(0.0)
    exchange = login.password(ALICE, "secret")
    assert exchange.start() is BLOCKING
    assert exchange.pending_check is None
    server = Server(tmp_path / "b")
    for mechanism in ("SCRAM-SHA-256", "CRAM-MD5"):
        start, respond = with_client(mechanism, ALICE, "secret")
        login = server.login()
        login.gate(0.0)
        exchange = start(login)
        step = exchange.start()
        while step is not FINISHED:
            assert exchange.pending_check is None
            step = exchange.work() if step is BLOCKING else exchange.answer(respond(step.data))
