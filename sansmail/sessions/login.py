"""What logging in means, the same for SMTP AUTH, POP3 USER/PASS and AUTH, and IMAP LOGIN
and AUTHENTICATE: who may try, which credentials a mechanism gets, whether the login may
act as the identity it names, how long a failure waits, and the lines the log gets.

Theory of operation
-------------------
One `Login` per connection, over the shared `AuthService` (throttle and failure delays)
and the user store (credentials, `sansmail.storage.users.Users`). Each protocol frames an
exchange its own way (SMTP's 334 lines, POP3's and IMAP's ``+`` continuations);
everything else is here, as a sans-I/O `Exchange` an adapter drives::

    verdict = login.gate(now)                   # throttled? then a temporary failure
    wait verdict.delay
    exchange = login.sasl(mechanism, initial_response, nonce=..., timestamp=...)
    #     or = login.password(name, password)   # USER/PASS, IMAP LOGIN
    step = exchange.start()
    loop:
        BLOCKING   -> step = exchange.work()        in a worker thread (argon2, PBKDF2)
                      or, while another exchange with the same `pending_check` runs
                      its work: wait until it has finished, then step = exchange.retry()
        Challenge  -> step = exchange.answer(data)  data: the client's decoded answer,
                                                    or None (cancelled, undecodable, gone)
        FINISHED   -> result = exchange.finish(now); wait result.delay; answer

Only `work` blocks, and it touches nothing shared but the user store (whose reads are
safe from any thread); the auth service's bookkeeping (`gate`, `finish`) runs on the
caller's thread, so an adapter with one event loop needs no lock. Nonces and time come in
as arguments: nothing here reads a clock or draws a random number.

The auth cache (`sansmail.mail.authcache`, carried by the auth service). A password
(PLAIN, LOGIN, POP3 USER/PASS, IMAP LOGIN) is looked up there before `BLOCKING` is
asked for, on the caller's thread, with the time `gate` was given: a remembered verdict
ends the exchange there (a success at once, a failure through the same `finish` as a
fresh one), with no worker thread and no argon2. The lookup names the user's record now
in force (`UserStore.get`, which follows other processes' changes first), so a verdict
reached before a ``user passwd`` or ``user del`` no longer counts. A miss goes to `work`
as before, which reads the record before it checks; `finish` stores the verdict with
it. SCRAM and CRAM-MD5 never reach the cache: their server side holds no password and
runs no argon2 (stored keys and an HMAC; `work` only fetches the keys).

One check for many logins. A mail client starting up opens several connections at once
and logs in on each with the same password; each would miss the cache and pay argon2,
all at the same time. So a miss names its check (`pending_check`, the cache's
fingerprint): an adapter that sees a check of that name already running waits for it to
finish, then calls `retry`, which finds its verdict in the cache (or, if it was not
stored, asks for `BLOCKING` again). An adapter that ignores `pending_check` just runs
`work` every time, as without the cache.

A failure is logged here in the fixed fail2ban form (`sansmail.mail.auth`); a throttled
client gets its own line. Success is the protocol's to log, with what it knows.

One user's sessions per client address (Dovecot's mail_max_userip_connections,
``[limits] max_userip_connections``). A good password for an IMAP or POP3 login is
refused all the same when that user already has that many sessions of the protocol from
that address (IMAP counted apart from POP3), in any server process: `finish` asks the
adapter's count (`UserSessions`, set as `Login.userip`) and answers with `Result.refusal`,
Dovecot's words, which the protocol frames (IMAP NO [LIMIT], POP3 -ERR [IN-USE]). The
count is the adapter's: it adds the session once the login opened the mailbox and takes
it away when the connection ends. Two logins deciding at the same moment may both pass,
one over the limit, as with Dovecot's anvil: the limit is against a client that opens
sessions without end, not an exact quota. SMTP AUTH has no such limit.
"""

from __future__ import annotations

import enum
import logging
from typing import Final, Protocol

import attrs

from sansmail import sasl
from sansmail.config import Config
from sansmail.mail.auth import (
    AuthService,
    Verdict,
    authzid_allowed,
    failure_log_line,
    login_key,
    throttle_log_line,
)
from sansmail.mail.logtext import LogSink, show_ip
from sansmail.storage.users import Users

__all__ = [
    "BLOCKING",
    "FINISHED",
    "Exchange",
    "Listener",
    "Login",
    "Result",
    "Step",
    "UserSessions",
    "userip_refusal",
]


class _Marker(enum.Enum):
    BLOCKING = "BLOCKING"
    FINISHED = "FINISHED"


#: `Exchange.work` must run next, in a worker thread.
BLOCKING: Final = _Marker.BLOCKING
#: The exchange is over: `Exchange.finish` gives the result.
FINISHED: Final = _Marker.FINISHED

Step = sasl.Challenge | _Marker


@attrs.frozen
class Result:
    """How a login ended: `user` (the user-store key) on success; `interrupted` when the
    client cancelled or left mid-exchange (nothing recorded, the protocol answers);
    otherwise a failure already recorded and logged, to be answered after `delay`."""

    mechanism: str
    user: str | None = None
    authcid: str = ""
    interrupted: bool = False
    delay: float = 0.0
    #: The password's verdict came from the auth cache (no argon2 this time).
    cached: bool = False
    #: A server-first mechanism (CRAM-MD5) got an initial response: each protocol
    #: refuses that with its own error (RFC 4954 §4, RFC 5034 §4, RFC 4959 §3).
    unexpected_initial_response: bool = False
    #: The password was right but the login is refused: too many sessions of this user
    #: from this address (`userip_refusal`'s words, which the protocol frames).
    refusal: str | None = None


#: The protocol each listener's sessions are counted under for max_userip_connections.
_USERIP_PROTOCOLS = {"imap": "imap", "imaps": "imap", "pop3": "pop3", "pop3s": "pop3"}


def userip_refusal(limit: int) -> str:
    """Dovecot's words for a login over mail_max_userip_connections."""
    return (
        f"Maximum number of connections from user+IP exceeded (mail_max_userip_connections={limit})"
    )


class UserSessions(Protocol):
    """How many sessions a user has over a protocol ("imap", "pop3") from a client
    address, in every server process: the adapter's count."""

    def sessions(self, protocol: str, user: str, ip: str) -> int: ...


class Listener(Protocol):
    """What a listener's shared service object tells a login: its name ("smtp", "pop3",
    "imaps" ...), the auth service and users, and the configuration (for the hostname)."""

    service: str
    auth: AuthService
    config: Config

    # Read-only, so that a service holding either store (`UserStore`, `PgUserStore`)
    # is a Listener.
    @property
    def users(self) -> Users: ...


class Login:
    """Logging in on one connection of `service` ("smtp", "pop3", "imap" ...)."""

    @classmethod
    def on(cls, listener: Listener, *, client_ip: str, log: LogSink) -> Login:
        """The login rules for a client of `listener`."""
        return cls(
            service=listener.service,
            auth=listener.auth,
            users=listener.users,
            hostname=listener.config.hostname,
            client_ip=client_ip,
            log=log,
            max_userip=listener.config.limits.max_userip_connections,
        )

    def __init__(
        self,
        *,
        service: str,
        auth: AuthService,
        users: Users,
        hostname: str,
        client_ip: str,
        log: LogSink,
        max_userip: int = 0,
    ) -> None:
        self.service = service
        self.auth = auth
        self.users = users
        self.hostname = hostname
        self.client_ip = client_ip
        self.log = log
        #: When `gate` last let this client in: the time the auth cache judges ages by
        #: (None before any gate: the cache is not consulted).
        self.admitted_at: float | None = None
        #: The most sessions of one user from one address (0: no limit), and the
        #: adapter's count of them (None: not counted, no limit).
        self.max_userip = max_userip
        self.userip: UserSessions | None = None

    def over_userip(self, user: str) -> bool:
        """Whether `user` already has `max_userip` sessions of this protocol from this
        client (see the module docstring); logged when so."""
        protocol = _USERIP_PROTOCOLS.get(self.service)
        if protocol is None or self.userip is None or not self.max_userip:
            return False
        if self.userip.sessions(protocol, user, self.client_ip) < self.max_userip:
            return False
        self.log(
            logging.INFO,
            f"login refused: user=<{user}>, rip={show_ip(self.client_ip)}, "
            f"{userip_refusal(self.max_userip)}",
        )
        return True

    def gate(self, now: float) -> Verdict:
        """May this client try now? When not, the refusal is logged; the caller answers
        with its temporary failure. When allowed, wait `delay` first."""
        verdict = self.auth.begin(self.client_ip, now)
        self.admitted_at = now if verdict.allowed else None
        if not verdict.allowed:
            self.log(
                logging.INFO,
                throttle_log_line(
                    service=self.service,
                    client_ip=self.client_ip,
                    retry_after=verdict.retry_after,
                ),
            )
        return verdict

    def sasl(
        self, mechanism: str, initial_response: bytes | None, *, nonce: str, timestamp: int
    ) -> Exchange:
        """A SASL exchange (RFC 4422) with one of `sansmail.sasl`'s mechanisms, which the
        protocol has already checked is offered. `nonce` is fresh randomness (SCRAM,
        CRAM-MD5), `timestamp` the wall clock in seconds (CRAM-MD5's challenge)."""
        mech = sasl.server_mechanism(
            mechanism,
            nonce=nonce,
            timestamp=timestamp,
            hostname=self.hostname,
            fake_salt_key=self.users.scram_secret(),
            fake_iterations=self.users.scram_iterations,
        )
        return Exchange(self, mech, initial_response)

    def password(self, name: str, password: str, *, method: str = "LOGIN") -> Exchange:
        """A name and password sent in one command (POP3 USER/PASS, IMAP LOGIN); `method`
        names it in the log lines (POP3 says "USER")."""
        return Exchange(self, None, None, name=name, password=password, method=method)


class Exchange:
    """One login attempt, step by step (see the module docstring)."""

    def __init__(
        self,
        login: Login,
        mech: sasl.ServerMechanism | None,
        initial_response: bytes | None,
        *,
        name: str = "",
        password: str = "",
        method: str = "LOGIN",
    ) -> None:
        self._login = login
        self._mech = mech
        self._initial = initial_response
        self.mechanism = mech.name if mech is not None else method
        self.authcid = name
        self._password = password
        # What `work` has to do next: a password to verify, or credentials to provide.
        self._pending: sasl.VerifyPassword | sasl.NeedCredentials | None = None
        self._attempt: bytes | None = None
        # A fresh check's verdict, for the cache: (fingerprint, record before it, ok).
        self._checked: tuple[bytes, object, bool] | None = None
        self._cached = False
        #: The fingerprint of the password check `BLOCKING` is waiting for, when an
        #: auth cache is there (see the module docstring); None for any other work.
        self.pending_check: bytes | None = None
        self._user: str | None = None
        self._interrupted = False
        self._unexpected_initial_response = False
        self._awaiting_final_ack = False
        self._done = False

    def start(self) -> Step:
        """The first step; no I/O."""
        mech = self._mech
        if mech is None:
            return self._recall_password()
        if self._initial is not None and not mech.accepts_initial_response:
            self._unexpected_initial_response = True
            self._interrupted = True
            return self._finished()
        return self._advance(mech.receive(self._initial))

    def answer(self, data: bytes | None) -> Step:
        """The client's answer to the last challenge (None: cancelled, undecodable or
        gone: the exchange ends without a verdict); no I/O."""
        if self._awaiting_final_ack:
            # None of the three protocols carries data with its success reply: the
            # server's last SASL message is one more challenge, answered empty (RFC 4954
            # §4, RFC 5034 §4, RFC 9051 §6.2.2).
            if data is None or data:
                self._user = None
                self._interrupted = True
            return self._finished()
        if data is None:
            self._interrupted = True
            return self._finished()
        assert self._mech is not None
        return self._advance(self._mech.receive(data))

    def retry(self) -> Step:
        """Instead of `work`, after `BLOCKING` named a `pending_check`: look the auth
        cache up again, now that another exchange has run the same check. `BLOCKING`
        again if the verdict is not there (that check failed to finish, or failures are
        not remembered); no I/O."""
        assert self.pending_check is not None, "retry() without a pending check"
        if self._mech is None:
            return self._recall_password()
        pending, self._pending = self._pending, None
        assert isinstance(pending, sasl.VerifyPassword)
        return self._advance(pending)

    def work(self) -> Step:
        """Blocking: verify a password (argon2) or derive credentials (SCRAM's fake keys
        for unknown users). Run it in a worker thread when `BLOCKING` asked for it."""
        pending, self._pending = self._pending, None
        self.pending_check = None
        if self._mech is None:
            password, self._password = self._password, ""
            self._user = self._check(self.authcid, password, "")
            return self._finished()
        if isinstance(pending, sasl.VerifyPassword):
            self.authcid = pending.authcid
            ok = self._check(pending.authcid, pending.password, pending.authzid) is not None
            return self._advance(self._mech.accept() if ok else self._mech.reject())
        assert isinstance(pending, sasl.NeedCredentials), "work() without BLOCKING"
        self.authcid = pending.authcid
        key = login_key(pending.authcid)
        users = self._login.users
        credentials: sasl.ScramCredentials | sasl.CramMD5Credentials | None
        if self._mech.name == "CRAM-MD5":
            credentials = users.get_cram_md5(key)
        else:
            hash_name = "sha1" if self._mech.name == "SCRAM-SHA-1" else "sha256"
            credentials = users.get_scram(key, hash_name)
        return self._advance(self._mech.provide(credentials))

    def _check(self, authcid: str, password: str, authzid: str) -> str | None:
        # Blocking (argon2); the user's key when the password is right and the login may
        # act as `authzid`.
        key = login_key(authcid)
        login = self._login
        auth = login.auth
        self._attempt = auth.attempt_id(key, password)
        # The record is read before the check: a change landing during it leaves an
        # entry that the next lookup finds stale, never one that outlives the change.
        record = login.users.get(key) if auth.cache is not None else None
        ok = auth.verify_password(key, password)
        if auth.cache is not None:
            self._checked = (auth.cache.fingerprint(key, password), record, ok)
        return _allowed(authcid, ok, authzid)

    def _recall_password(self) -> Step:
        # A name and password in one command: the verdict from the cache, or BLOCKING.
        ok = self._recall(self.authcid, self._password)
        if ok is None:
            return BLOCKING
        self._password = ""
        self._user = _allowed(self.authcid, ok, "")
        return self._finished()

    def _recall(self, authcid: str, password: str) -> bool | None:
        # On the caller's thread: the cached verdict of this password, or None (check it).
        self.pending_check = None
        login = self._login
        cache, now = login.auth.cache, login.admitted_at
        if cache is None or now is None:
            return None
        key = login_key(authcid)
        fingerprint = cache.fingerprint(key, password)
        ok = cache.lookup(fingerprint, record=login.users.get(key), now=now)
        if ok is None:
            self.pending_check = fingerprint
            return None
        # What a fresh check would have given `finish`: a repeated wrong password is
        # recognised by the throttle as before.
        self._attempt = login.auth.attempt_id(key, password)
        self._cached = True
        return ok

    def finish(self, now: float) -> Result:
        """The verdict, recorded with the auth service (a failure is logged too). Call
        once, after `FINISHED`; no I/O."""
        assert self._done, "finish() before FINISHED"
        login = self._login
        if self._checked is not None and login.auth.cache is not None:
            fingerprint, record, ok = self._checked
            login.auth.cache.store(fingerprint, ok, record=record, now=now)
            self._checked = None
        if self._interrupted:
            return Result(
                self.mechanism,
                authcid=self.authcid,
                interrupted=True,
                unexpected_initial_response=self._unexpected_initial_response,
            )
        if self._user is not None:
            login.auth.record(login.client_ip, True, now)
            if login.over_userip(self._user):
                return Result(
                    self.mechanism,
                    authcid=self.authcid,
                    cached=self._cached,
                    refusal=userip_refusal(login.max_userip),
                )
            return Result(
                self.mechanism, user=self._user, authcid=self.authcid, cached=self._cached
            )
        delay = login.auth.record(login.client_ip, False, now, attempt=self._attempt)
        login.log(
            logging.INFO,
            failure_log_line(
                service=login.service,
                method=self.mechanism,
                user=self.authcid,
                client_ip=login.client_ip,
            ),
        )
        return Result(self.mechanism, authcid=self.authcid, delay=delay, cached=self._cached)

    def _advance(self, step: sasl.Step) -> Step:
        if isinstance(step, sasl.Challenge):
            return step
        if isinstance(step, sasl.VerifyPassword):
            # Only `receive` yields this, so we are on the caller's thread (start, answer).
            self.authcid = step.authcid
            ok = self._recall(step.authcid, step.password)
            if ok is not None:
                assert self._mech is not None
                allowed = _allowed(step.authcid, ok, step.authzid) is not None
                return self._advance(self._mech.accept() if allowed else self._mech.reject())
        if isinstance(step, sasl.VerifyPassword | sasl.NeedCredentials):
            self.authcid = step.authcid
            self._pending = step
            return BLOCKING
        if isinstance(step, sasl.Success):
            key = login_key(step.authcid)
            if key and not (step.authzid and not authzid_allowed(step.authzid, key)):
                self._user = key
                if step.data:
                    self._awaiting_final_ack = True
                    return sasl.Challenge(data=step.data)
        return self._finished()

    def _finished(self) -> Step:
        self._done = True
        return FINISHED


def _allowed(authcid: str, ok: bool, authzid: str) -> str | None:
    """The user's key when the password was right (`ok`) and the login may act as
    `authzid`."""
    key = login_key(authcid)
    return key if ok and authzid_allowed(authzid, key) else None
