"""`ManageSieveSession`: what one ManageSieve connection (RFC 5804) does with its commands
(Pigeonhole's managesieve): who may log in and how, the capability listing, and each
script command's answer from the user's script store, with the mail log's lines.

Theory of operation
-------------------
The protocol core (`sansmail.managesieve.Connection`, owned by the session as `conn`)
parses commands and enforces RFC 5804's states; the script store
(`sansmail.storage.sieve.SieveStore`) keeps the scripts, durably, in Pigeonhole's
layout; the Sieve parser (`sansmail.mail.sieve.parse`) judges them. This object decides
what each command means and answers it. An adapter moves bytes between the client and
`conn`, and for each event calls the session (a sketch; `sansmail_trio._managesieve_server`
is the real one; the life cycle and logging in are the same for every session, see
`sansmail.sessions.common`)::

    StartTls       -> send session.starttls(); after an OK: handshake, then
                      session.tls_started(...) or session.tls_failed(reason); after a
                      good handshake send session.capabilities() (RFC 5804 §2.2)
    Authenticate   -> the common login steps (`LoginSteps`)
    script commands-> when session.blocking(event): send session.run(event)  [blocking]
    anything else  -> send each of session.handle(event)
    at the very end: session.closed()

`run` does file I/O (the store) and parses scripts (a script may be a megabyte: up to a
second of CPU), so it belongs in a worker thread, one call at a time; the others only
compute. The session reads no clock and owns no timer: the adapter waits `timeout` for
each command and answers its expiry with `timeout_reply()`, shutdown with
`shutdown_reply()`, both serialised by `last_words` (an unprompted BYE, which RFC 5804
§1.2 allows at any time). Log lines go to the `log` sink given at construction.

Logging in (§2.1 AUTHENTICATE) goes through the mechanisms, auth service and lockout
SMTP, POP3 and IMAP use (`sansmail.sessions.login`). As for IMAP and POP3, it is offered
only under TLS unless ``[smtp] plaintext_auth`` allows it for this client: before that
the listing's SASL line is empty and AUTHENTICATE gets ``NO (ENCRYPT-NEEDED)`` (§1.3).
A throttled client gets ``NO (TRYLATER)`` without a check, a wrong password ``NO`` after
the auth service's delay. A SCRAM server-final message goes out as one more challenge,
answered with an empty string (RFC 4422 §3.6; RFC 5804 §2.1's DIGEST-MD5 example does
the same), as for the other protocols. The login name is the full address, and the
scripts are that mailbox's (`MailboxId` from the user's key, as IMAP derives it).

Scripts (§2.5-§2.12). PUTSCRIPT and CHECKSCRIPT parse the script as UTF-8 (RFC 5228
§2.4.2.4) and refuse one that does not parse with ``NO "line L: column C: message"``,
the first error; the octets PUTSCRIPT stores are the client's, unchanged. The quota
answers are the store's: ``NO (QUOTA/MAXSCRIPTS)``, ``(QUOTA/MAXSIZE)`` and
``(QUOTA/MAXSTORAGE)`` (Pigeonhole's third), both for HAVESPACE and PUTSCRIPT. The
store's name rules (no "/", no leading ".", at most 200 octets) come on top of §1.6's,
which the core checks. SETACTIVE "" deactivates; DELETESCRIPT of the active script is
``NO (ACTIVE)``; a missing script is ``NO (NONEXISTENT)``, RENAMESCRIPT onto an existing
one ``NO (ALREADYEXISTS)``. A disk error is ``NO (TRYLATER)`` and logged.

Log lines are Dovecot's shape: ``managesieve-login: Login: user=<...>, method=PLAIN,
rip=..., lip=..., TLS`` when a login succeeds; a change to a user's scripts (they decide
where mail goes) as ``managesieve(user): putscript "name" (N octets)``; at the end
``managesieve(user): Disconnected: Logged out`` or, without a login,
``managesieve-login: Disconnected (no auth attempts): rip=..., lip=..., reason=...``
(``auth failed, N attempts`` after failed logins). Each failed login is also the
shared fail2ban line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs

from sansmail import SERVER, LocalProtocolError, managesieve, sasl
from sansmail.config import Config
from sansmail.mail.address import MailboxId
from sansmail.mail.auth import AuthService, password_allowed
from sansmail.mail.logtext import LogSink, command_for_log, show_ip
from sansmail.mail.sieve import SUPPORTED, Limits, Position, SieveError
from sansmail.mail.sieve import parse_bytes as parse_script
from sansmail.sessions.common import Refusal, refusal_text
from sansmail.sessions.login import Exchange, Login, Result
from sansmail.storage.sieve import (
    ActiveScriptError,
    NoSuchScriptError,
    ScriptExistsError,
    SieveQuotaError,
    SieveScripts,
    SieveStoreError,
    SieveStoreUnavailableError,
)
from sansmail.storage.users import Users

__all__ = [
    "AUTH_THROTTLED",
    "IDLE_TIMEOUT",
    "ManageSieveService",
    "ManageSieveSession",
    "script_problem",
]

#: RFC 5804 has no autologout figure; Pigeonhole's managesieve keeps an idle client 30
#: minutes (as IMAP's RFC 9051 §5.4 does).
IDLE_TIMEOUT = 1800.0

_IMPLEMENTATION = "sansmail"
#: The SIEVE line: every extension `require` accepts (RFC 5804 §1.7), in a fixed order.
_SIEVE_EXTENSIONS = tuple(sorted(SUPPORTED))
#: MAXREDIRECTS (§1.7): the evaluator's limit on redirects per message.
_MAX_REDIRECTS = Limits().max_redirects

_LOGGED_IN = managesieve.Ok(text="Logged in.")
_LOGOUT = managesieve.Ok(text="Logout completed.")
_UNAUTHENTICATED = managesieve.Ok(text="Unauthenticate completed.")
_NOOP = managesieve.Ok(text="NOOP completed.")
_DONE = managesieve.Ok()
_BEGIN_TLS = managesieve.Ok(text="Begin TLS negotiation now.")
_NO_TLS = managesieve.No(text="TLS not available.")
_PLAINTEXT_REFUSED = managesieve.No(
    code="ENCRYPT-NEEDED",
    text="Plaintext authentication disallowed on non-secure connections: use STARTTLS.",
)
_UNKNOWN_MECHANISM = managesieve.No(text="Unsupported authentication mechanism.")
_NO_INITIAL_RESPONSE = managesieve.No(text="This mechanism takes no initial response.")
_AUTH_FAILED = managesieve.No(text="Authentication failed.")
_AUTH_CANCELLED = managesieve.No(text="Authentication aborted by client.")
#: The answer when `Login.gate` refuses (RFC 5804 §1.3: TRYLATER, a temporary failure).
AUTH_THROTTLED = managesieve.No(
    code="TRYLATER", text="Too many authentication failures, try again later."
)
_STORE_ERROR = managesieve.No(code="TRYLATER", text="Cannot access the scripts, try again later.")
_TIMEOUT = managesieve.Bye(text="Disconnected for inactivity.")
_SHUTTING_DOWN = managesieve.Bye(code="TRYLATER", text="Server shutting down.")
_INTERNAL_ERROR = managesieve.Bye(code="TRYLATER", text="Internal error, closing connection.")

#: What `handle` answers with, in order.
Answer = Sequence[managesieve.Ok | managesieve.No | managesieve.Bye | managesieve.Capabilities]

#: The commands `run` answers (blocking: the store, the parser).
_SCRIPT_COMMANDS = (
    managesieve.HaveSpace,
    managesieve.PutScript,
    managesieve.CheckScript,
    managesieve.ListScripts,
    managesieve.SetActive,
    managesieve.GetScript,
    managesieve.DeleteScript,
    managesieve.RenameScript,
)


@attrs.define
class ManageSieveService:
    """Everything the sessions of one `managesieve` listener share."""

    config: Config
    scripts: SieveScripts
    users: Users
    #: Password checks, failure delays and throttling, shared with SMTP, POP3 and IMAP.
    auth: AuthService
    service: str = "managesieve"
    #: A certificate exists, so STARTTLS may be offered.
    tls_available: bool = True

    @property
    def implicit_tls(self) -> bool:
        """RFC 5804 has no implicit-TLS port: TLS only through STARTTLS."""
        return False

    @property
    def mechanisms(self) -> tuple[str, ...]:
        return sasl.server_mechanisms(self.config.smtp.auth_mechanisms)

    def core_config(self) -> managesieve.Config:
        """The core's limits: a literal may be as large as the store takes one script
        (a larger PUTSCRIPT is answered NO (QUOTA/MAXSIZE) while it is dropped)."""
        return managesieve.Config(max_literal=max(1024, self.scripts.quota.max_script_size))

    def login_allowed(self, *, tls_active: bool, client_ip: str) -> bool:
        """AUTHENTICATE only over TLS, unless `plaintext_auth` allows it for this client
        (RFC 5804 §2.1 wants TLS before a password; RFC 8314 §5.2)."""
        return password_allowed(
            tls_active=tls_active,
            client_ip=client_ip,
            plaintext_auth=self.config.smtp.plaintext_auth,
        )


def script_problem(content: bytes, *, max_size: int) -> str | None:
    """Why `content` is not a Sieve script we run, as "line L: column C: message" (the
    first error, Pigeonhole's order), or None if it parses and validates."""
    try:
        parse_script(content, max_size=max_size)
    except SieveError as error:
        return _at(error.position, error.message)
    return None


def _at(position: Position, message: str) -> str:
    return f"line {position.line}: column {position.column}: {message}"


class ManageSieveSession:
    """One ManageSieve conversation (see the module docstring).

    Args:
        service: what the listener's sessions share.
        client_ip, client_port: the peer; local_ip: our address it connected to.
        log: where log lines go, ``(level, text)``.
        tls: "<version> <cipher>" when the link is already encrypted.
    """

    def __init__(
        self,
        service: ManageSieveService,
        *,
        client_ip: str,
        client_port: int,
        local_ip: str,
        log: LogSink,
        tls: str | None = None,
    ) -> None:
        self.service = service
        self.config = service.config
        self.log = log
        self.client_ip = client_ip
        self.local_ip = local_ip
        self.client = f"[{client_ip}]:{client_port}"
        self.conn = managesieve.Connection(
            SERVER, config=service.core_config(), tls_active=tls is not None
        )
        #: "TLSv1.3 TLS_AES_256_GCM_SHA384" once the session is encrypted.
        self.tls = tls
        #: The user-store key of the logged-in user, and the mailbox whose scripts these are.
        self.user: str | None = None
        self.mailbox: MailboxId | None = None
        #: The session is over: the adapter closes after sending what it has.
        self.ended = False
        self._reason = "Disconnected"
        self._auth_attempts = 0

    # -- what the adapter asks ------------------------------------------------------------

    @property
    def timeout(self) -> float:
        """How long to wait for the next command."""
        return IDLE_TIMEOUT

    def greeting(self) -> managesieve.Capabilities:
        self.log(logging.INFO, f"connect from {self.client}")
        return self.capabilities()

    def capabilities(self) -> managesieve.Capabilities:
        """The listing (RFC 5804 §1.7): the greeting, CAPABILITY's answer, and what
        follows a STARTTLS handshake (§2.2). SASL lists nothing while logging in is not
        allowed (no TLS yet); OWNER names the logged-in user."""
        service = self.service
        authenticated = self.user is not None
        login = not authenticated and self._login_allowed()
        return managesieve.Capabilities(
            implementation=_IMPLEMENTATION,
            sasl=service.mechanisms if login else (),
            sieve=_SIEVE_EXTENSIONS,
            starttls=service.tls_available and self.tls is None and not authenticated,
            max_redirects=_MAX_REDIRECTS,
            owner=self.user,
            version="1.0",
        )

    def refuse(self, refusal: Refusal) -> managesieve.Bye:
        """Greet with a refusal instead (connection limits, shutdown), and end."""
        text = refusal_text(refusal, hostname=self.config.hostname, client_ip=self.client_ip)
        self.log(logging.INFO, f"connect from {self.client}")
        self.log(logging.INFO, f"{self.client}: refused: {text}")
        self._reason = "refused"
        self.ended = True
        return managesieve.Bye(code="TRYLATER", text=text)

    def timeout_reply(self) -> managesieve.Bye:
        """The client was idle for `timeout` seconds."""
        self._reason = "Disconnected for inactivity"
        self.log(logging.INFO, f"{self.client}: timeout")
        return _TIMEOUT

    def shutdown_reply(self) -> managesieve.Bye:
        self._reason = "Server shutting down"
        return _SHUTTING_DOWN

    def protocol_error(self, exc: Exception) -> None:
        """The core gave up on the client (`RemoteProtocolError`); its hint is the last
        word."""
        self._reason = "Protocol error"
        self.log(logging.INFO, f"{self.client}: protocol error: {exc}")

    def internal_error(self) -> managesieve.Bye:
        """A bug or a disk error ended the session (the adapter logs the traceback)."""
        self._reason = "Internal error"
        return _INTERNAL_ERROR

    def last_words(self, hint: object) -> bytes:
        """An unprompted BYE, where the core allows one (RFC 5804 §1.2)."""
        if not isinstance(hint, managesieve.Bye):
            return b""
        try:
            return self.conn.send(hint)
        except LocalProtocolError:
            return b""

    def closed(self) -> None:
        """The connection is gone: the disconnect line."""
        ip, lip = show_ip(self.client_ip), show_ip(self.local_ip)
        if self.user is not None:
            self.log(logging.INFO, f"managesieve({self.user}): Disconnected: {self._reason}")
            return
        attempts = (
            f"auth failed, {self._auth_attempts} attempts"
            if self._auth_attempts
            else "no auth attempts"
        )
        self.log(
            logging.INFO,
            f"managesieve-login: Disconnected ({attempts}): rip={ip}, lip={lip}"
            f"{', TLS' if self.tls else ''}, reason={self._reason}",
        )

    @property
    def cleanup_due(self) -> bool:
        """Nothing is held between commands: the store opens and closes per call."""
        return False

    def cleanup(self) -> None:
        pass

    # -- commands that need no I/O ---------------------------------------------------------

    def blocking(self, event: managesieve.Event) -> bool:
        """Whether `event` is a script command, for `run` in a worker thread."""
        return isinstance(event, _SCRIPT_COMMANDS)

    def handle(self, event: managesieve.Event) -> Answer:
        """Answer one event that needs no I/O: all but StartTls, Authenticate and the
        script commands. A ConnectionClosed answers nothing and ends the session."""
        if isinstance(event, managesieve.Capability):
            return (self.capabilities(),)
        if isinstance(event, managesieve.Noop):
            if event.tag is not None:
                # RFC 5804 §2.13: the tag comes back; clients resynchronise with it.
                return (managesieve.Ok(code="TAG", code_argument=event.tag, text="Done"),)
            return (_NOOP,)
        if isinstance(event, managesieve.Logout):
            self._reason = "Logged out"
            self.ended = True
            return (_LOGOUT,)
        if isinstance(event, managesieve.Unauthenticate):
            # RFC 5804 §2.14.1: back to the non-authenticated state on this connection.
            self.log(logging.INFO, f"managesieve({self.user}): unauthenticated")
            self.user = None
            self.mailbox = None
            return (_UNAUTHENTICATED,)
        if isinstance(event, managesieve.InvalidCommand):
            line = command_for_log(event.line)
            self.log(logging.INFO, f"{self.client}: NO {event.reason}: {line}")
            return (event.reply_hint,)
        if isinstance(event, managesieve.ConnectionClosed):
            if self._reason == "Disconnected":
                self._reason = "Connection closed"
            self.ended = True
            return ()
        raise TypeError(f"{type(event).__name__} is not handled by handle()")

    # -- STARTTLS ------------------------------------------------------------------------

    def starttls(self) -> managesieve.Ok | managesieve.No:
        """RFC 5804 §2.2: the OK before the handshake, or why not. STARTTLS under TLS
        never gets here: the core refuses it."""
        return _BEGIN_TLS if self.service.tls_available and self.tls is None else _NO_TLS

    def tls_started(self, description: str, log_description: str) -> None:
        """The handshake succeeded; `description` as in `tls`, `log_description` for the
        log. The adapter sends `capabilities()` next (§2.2)."""
        self.tls = description
        self.log(logging.INFO, f"{self.client}: STARTTLS: {log_description}")

    def tls_failed(self, reason: str) -> None:
        self.log(logging.INFO, f"{self.client}: STARTTLS handshake failed: {reason}")
        self._reason = "TLS handshake failed"
        self.ended = True

    # -- logging in ------------------------------------------------------------------------

    def login_refusal(self, event: managesieve.Authenticate) -> managesieve.No | None:
        """The refusal of AUTHENTICATE before any attempt is counted, or None."""
        if not self._login_allowed():
            return _PLAINTEXT_REFUSED
        if event.mechanism not in self.service.mechanisms:
            return _UNKNOWN_MECHANISM
        return None

    def login(self) -> Login:
        """The shared login rules for this client (throttle, delays, fail2ban lines)."""
        self._auth_attempts += 1
        return Login.on(self.service, client_ip=self.client_ip, log=self.log)

    def throttled(self, event: managesieve.Authenticate) -> managesieve.No:
        """`Login.gate` refused the client: no password was checked."""
        return AUTH_THROTTLED

    def challenge(self, data: bytes) -> managesieve.Challenge:
        return managesieve.Challenge(data=data)

    def answer(self, event: object) -> bytes | None:
        return event.data if isinstance(event, managesieve.SaslResponse) else None

    def exchange(
        self, event: managesieve.Authenticate, login: Login, *, nonce: str, now: float
    ) -> Exchange:
        """The SASL exchange of an AUTHENTICATE `login` allowed, once `login.gate` has let
        it through. `nonce` is fresh randomness, `now` the wall clock (CRAM-MD5)."""
        return login.sasl(event.mechanism, event.initial_response, nonce=nonce, timestamp=int(now))

    def login_result(
        self, event: managesieve.Authenticate, result: Result, last: object
    ) -> managesieve.Ok | managesieve.No | None:
        """The answer to a login that ended with `result`; `last` is the last event the
        core gave during it. None: the client went away mid-exchange (the session ends).
        Not blocking: the store is opened per command."""
        if result.unexpected_initial_response:
            return _NO_INITIAL_RESPONSE
        if result.user is not None:
            return self._logged_in(result.user, result.mechanism)
        if result.refusal is not None:
            return managesieve.No(code="TRYLATER", text=result.refusal)
        if result.interrupted:
            # "*" (RFC 5804 §2.1: answered NO), a string that is not base64, or data
            # after the final challenge: the exchange fails and the session goes on.
            if isinstance(last, managesieve.InvalidCommand):
                return last.reply_hint
            if isinstance(last, managesieve.SaslCancel):
                return _AUTH_CANCELLED
            if isinstance(last, managesieve.SaslResponse):
                return _AUTH_FAILED
            self._reason = "Connection closed"
            self.ended = True
            return None
        return _AUTH_FAILED

    def _logged_in(self, key: str, method: str) -> managesieve.Ok:
        local, _, domain = key.rpartition("@")
        self.user = key
        self.mailbox = MailboxId(domain=domain, local=local)
        self._auth_attempts = 0
        self.log(
            logging.INFO,
            f"managesieve-login: Login: user=<{key}>, method={method},"
            f" rip={show_ip(self.client_ip)}, lip={show_ip(self.local_ip)}"
            f"{', TLS' if self.tls else ''}",
        )
        return _LOGGED_IN

    def _login_allowed(self) -> bool:
        return self.service.login_allowed(tls_active=self.tls is not None, client_ip=self.client_ip)

    # -- the script commands ------------------------------------------------------------

    def run(self, event: managesieve.Event) -> managesieve.Event:
        """Blocking (the store's file I/O, the parser's CPU): the answer to one script
        command (`blocking(event)`). The core allows them only once logged in."""
        mailbox = self.mailbox
        assert mailbox is not None, "the core allows script commands only after login"
        try:
            return self._run(mailbox, event)
        except SieveQuotaError as error:
            return managesieve.No(code=f"QUOTA/{error.kind.upper()}", text=str(error))
        except NoSuchScriptError as error:
            return managesieve.No(code="NONEXISTENT", text=str(error))
        except ScriptExistsError as error:
            return managesieve.No(code="ALREADYEXISTS", text=str(error))
        except ActiveScriptError as error:
            return managesieve.No(code="ACTIVE", text=str(error))
        except SieveStoreUnavailableError as error:
            # The database away: the client may try again, and the operator reads why.
            self.log(logging.ERROR, f"managesieve({self.user}): {_name_of(event)}: {error}")
            return _STORE_ERROR
        except SieveStoreError as error:  # InvalidScriptNameError: the store's name rules
            return managesieve.No(text=str(error))
        except OSError as error:
            # A full disk, a permission changed by hand: the client may try again, and
            # the operator reads why.
            self.log(logging.ERROR, f"managesieve({self.user}): {_name_of(event)}: {error}")
            return _STORE_ERROR

    def _run(self, mailbox: MailboxId, event: managesieve.Event) -> managesieve.Event:
        store = self.service.scripts
        if isinstance(event, managesieve.ListScripts):
            # A name put on disk by hand that RFC 5804 §1.6 forbids cannot be listed.
            listed = [
                (name, active)
                for name, active in store.list(mailbox)
                if managesieve.name_problem(name) is None
            ]
            active = next((name for name, on in listed if on), None)
            return managesieve.ScriptList(names=[name for name, _ in listed], active=active)
        if isinstance(event, managesieve.GetScript):
            return managesieve.Script(content=store.get(mailbox, event.name))
        if isinstance(event, managesieve.HaveSpace):
            store.have_space(mailbox, event.name, event.size)
            return _DONE
        if isinstance(event, managesieve.CheckScript):
            problem = script_problem(event.content, max_size=store.quota.max_script_size)
            return _DONE if problem is None else managesieve.No(text=problem)
        if isinstance(event, managesieve.PutScript):
            # The quota before the parse: a script that cannot be stored is not worth a
            # second of CPU, and the client learns the reason that matters.
            store.have_space(mailbox, event.name, len(event.content))
            problem = script_problem(event.content, max_size=store.quota.max_script_size)
            if problem is not None:
                return managesieve.No(text=problem)
            store.put(mailbox, event.name, event.content)
            self._changed(f'putscript "{event.name}" ({len(event.content)} octets)')
            return _DONE
        if isinstance(event, managesieve.SetActive):
            store.activate(mailbox, event.name or None)
            self._changed(f'setactive "{event.name}"' if event.name else "deactivated")
            return _DONE
        if isinstance(event, managesieve.DeleteScript):
            store.delete(mailbox, event.name)
            self._changed(f'deletescript "{event.name}"')
            return _DONE
        if isinstance(event, managesieve.RenameScript):
            store.rename(mailbox, event.old_name, event.new_name)
            self._changed(f'renamescript "{event.old_name}" "{event.new_name}"')
            return _DONE
        raise TypeError(f"{type(event).__name__} is not a script command")

    def _changed(self, what: str) -> None:
        # Names are the client's: shown through repr-like escaping by the log's rules.
        self.log(logging.INFO, f"managesieve({self.user}): {_printable(what)}")


def _name_of(event: managesieve.Event) -> str:
    return type(event).__name__.upper()


def _printable(text: str) -> str:
    # A script name may hold any printable Unicode; the log gets it with anything that
    # could forge a line or hide text escaped.
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
