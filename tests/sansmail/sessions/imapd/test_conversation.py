"""`ImapConversation` without sockets or an event loop: a synchronous adapter (`Driver`)
feeds it the client's octets, as any event loop's adapter would, and the tests compare
the octets it answers and the log lines it hands over. Covered: the greeting and
CAPABILITY before and after TLS and login, LOGINDISABLED, LOGIN and AUTHENTICATE (PLAIN
with and without SASL-IR, SCRAM with its final challenge, cancel, undecodable answers,
throttling), which mailbox a login opens, and the BYEs and log lines that end a
conversation."""

from __future__ import annotations

import base64
import logging
import pathlib
import shutil
from typing import Any

import attrs
import pytest
from argon2 import PasswordHasher

from sansmail import NEED_DATA, PAUSED, RemoteProtocolError, sasl
from sansmail.config import Config
from sansmail.imap import (
    Append,
    Authenticate,
    AuthResponse,
    Capability,
    Compress,
    Continuation,
    Idle,
    IdleDone,
    Login,
    Noop,
    Response,
    Select,
    StartTLS,
)
from sansmail.mail.address import parse_address
from sansmail.mail.auth import AuthService, AuthSettings
from sansmail.sessions.common import Refusal
from sansmail.sessions.imapd import AUTOLOGOUT, ImapConversation, ImapService
from sansmail.sessions.login import BLOCKING, FINISHED, Step
from sansmail.storage.maildir import MaildirImapStore
from sansmail.storage.users import UserStore

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ALICE = "alice@example.test"
TLS = "TLSv1.3 TLS_AES_256_GCM_SHA384"
TLS_LOG = "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"
REMOTE = "192.0.2.7"
SESSION_CAPS = (
    b"IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ENABLE ID IDLE NAMESPACE UNSELECT UIDPLUS MOVE"
    b" SPECIAL-USE LIST-EXTENDED LIST-STATUS CHILDREN ESEARCH SEARCHRES SORT SORT=DISPLAY"
    b" THREAD=ORDEREDSUBJECT THREAD=REFERENCES BINARY STATUS=SIZE"
    b" QUOTA QUOTA=RES-STORAGE UTF8=ACCEPT MULTIAPPEND CONDSTORE QRESYNC COMPRESS=DEFLATE"
    b" APPENDLIMIT=26214400"
)
MECHANISMS = b"AUTH=PLAIN AUTH=LOGIN AUTH=SCRAM-SHA-256"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class Driver:
    """A synchronous adapter: the steps of the conversation's theory of operation, with
    the clock a number, the nonce fixed, blocking calls made inline and the TLS
    handshake pretended. `feed(octets)` returns what the server sends back."""

    def __init__(
        self,
        service: ImapService,
        *,
        client_ip: str = REMOTE,
        tls: str | None = None,
        refuse: Refusal | None = None,
    ) -> None:
        self.logs: list[tuple[int, str]] = []
        self.session = ImapConversation(
            service,
            client_ip=client_ip,
            client_port=4321,
            log=lambda level, text: self.logs.append((level, text)),
            tls=tls,
        )
        self.now = 1000.0
        #: The delays the adapter would have waited: before attempts, then after failures.
        self.waited: list[float] = []
        self._out = bytearray()
        self._exchange: Any = None
        self._attempt: Login | Authenticate | None = None
        self._last: object = None
        self.after_compress: bytes | None = None
        first = self.session.greeting() if refuse is None else self.session.refuse(refuse)
        self.greeting = self.session.counted.send(first)

    @property
    def log_lines(self) -> list[str]:
        return [text for _level, text in self.logs]

    def feed(self, data: bytes) -> bytes:
        self.session.counted.receive_data(data)
        self._pump()
        out = bytes(self._out)
        self._out.clear()
        return out

    def lines(self, line: bytes) -> list[bytes]:
        """Send one line (CRLF added); the lines of the answer."""
        return self.feed(line + b"\r\n").split(b"\r\n")[:-1]

    def _send(self, response: Response) -> None:
        self._out += self.session.counted.send(response)

    def _pump(self) -> None:
        session = self.session
        while not session.ended:
            event = session.counted.next_event()
            if event is NEED_DATA:
                return
            assert event is not PAUSED
            if self._exchange is not None:
                self._last = event
                data = event.data if isinstance(event, AuthResponse) else None
                self._step(self._exchange.answer(data))
            elif isinstance(event, StartTLS):
                reply = session.starttls(event)
                self._send(reply)
                if reply.status == "OK":
                    session.counted.start_tls()
                    session.tls_started(TLS, TLS_LOG)
            elif isinstance(event, Compress):
                reply = session.compress(event)
                self._send(reply)
                if reply.status == "OK":
                    # What a real adapter would inflate and feed back (test_compress).
                    self.after_compress = session.compression_started()
            elif isinstance(event, Login | Authenticate):
                self._login(event)
            else:
                for response in session.handle(event):
                    self._send(response)

    def _login(self, event: Login | Authenticate) -> None:
        session = self.session
        refusal = session.login_refusal(event)
        if refusal is not None:
            self._send(refusal)
            return
        login = session.login()
        verdict = login.gate(self.now)
        if not verdict.allowed:
            self._send(session.throttled(event))
            return
        self.waited.append(verdict.delay)
        self._attempt = event
        self._last = None
        self._exchange = session.exchange(event, login, nonce="servernonce42", now=self.now)
        self._step(self._exchange.start())

    def _step(self, step: Step) -> None:
        while step is BLOCKING:
            step = self._exchange.work()
        if step is not FINISHED:
            assert isinstance(step, sasl.Challenge)
            self._send(Continuation(data=step.data))
            return
        result = self._exchange.finish(self.now)
        self._exchange = None
        if result.user is None and not result.interrupted:
            self.waited.append(result.delay)
        assert self._attempt is not None
        for response in self.session.login_result(self._attempt, result, self._last):
            self._send(response)


def make_service(
    tmp_path: pathlib.Path,
    *,
    tls_available: bool = True,
    service: str = "imap",
    settings: AuthSettings | None = None,
    **smtp: Any,
) -> ImapService:
    config = Config(
        source=None, hostname="mx.example.test", domains=("example.test",), data_dir=tmp_path
    )
    config = attrs.evolve(config, smtp=attrs.evolve(config.smtp, **smtp))
    users = UserStore(
        tmp_path / "users.json",
        hasher=FAST,
        cram_md5="CRAM-MD5" in config.smtp.auth_mechanisms,
    )
    users.add(parse_address(ALICE), "secret")
    return ImapService(
        config=config,
        store=MaildirImapStore(tmp_path, hostname="mx.example.test"),
        users=users,
        auth=AuthService(users, secret=b"k" * 32, settings=settings),
        service=service,
        tls_available=tls_available,
    )


@pytest.fixture
def service(tmp_path: pathlib.Path) -> ImapService:
    return make_service(tmp_path)


def logged_in(service: ImapService) -> Driver:
    driver = Driver(service, tls=TLS)
    assert driver.lines(b"a0 LOGIN alice@example.test secret")[0].endswith(b"Logged in")
    return driver


# -- the greeting and CAPABILITY --------------------------------------------------------


def test_capabilities_before_and_after_starttls_and_login(tmp_path: pathlib.Path) -> None:
    driver = Driver(make_service(tmp_path, plaintext_auth="never"))
    assert driver.greeting == (
        b"* OK [CAPABILITY " + SESSION_CAPS + b" STARTTLS LOGINDISABLED]"
        b" mx.example.test IMAP server ready\r\n"
    )
    assert driver.lines(b"a1 CAPABILITY") == [
        b"* CAPABILITY " + SESSION_CAPS + b" STARTTLS LOGINDISABLED",
        b"a1 OK CAPABILITY completed",
    ]
    assert driver.lines(b"a2 STARTTLS") == [b"a2 OK Begin TLS negotiation now"]
    assert driver.lines(b"a3 CAPABILITY") == [
        b"* CAPABILITY " + SESSION_CAPS + b" " + MECHANISMS,
        b"a3 OK CAPABILITY completed",
    ]
    assert driver.lines(b"a4 LOGIN alice@example.test secret") == [
        b"a4 OK [CAPABILITY " + SESSION_CAPS + b"] Logged in"
    ]
    assert driver.lines(b"a5 CAPABILITY") == [
        b"* CAPABILITY " + SESSION_CAPS,
        b"a5 OK CAPABILITY completed",
    ]
    assert driver.log_lines[:2] == [
        f"connect from [{REMOTE}]:4321",
        f"[{REMOTE}]:4321: STARTTLS: {TLS_LOG}",
    ]
    assert driver.log_lines[2] == (
        f"login: user=<{ALICE}>, method=LOGIN, rip={REMOTE}, tls=TLSv1.3"
    )


def test_no_starttls_without_a_certificate(tmp_path: pathlib.Path) -> None:
    driver = Driver(make_service(tmp_path, tls_available=False, plaintext_auth="never"))
    assert b"STARTTLS" not in driver.greeting
    assert b"LOGINDISABLED" in driver.greeting
    assert driver.lines(b"a1 STARTTLS") == [b"a1 NO TLS not available"]
    assert not driver.session.ended


def test_implicit_tls_offers_login_and_no_starttls(tmp_path: pathlib.Path) -> None:
    driver = Driver(make_service(tmp_path, service="imaps", plaintext_auth="never"), tls=TLS)
    assert driver.greeting.endswith(b" " + MECHANISMS + b"] mx.example.test IMAP server ready\r\n")
    assert b"STARTTLS" not in driver.greeting
    # The core knows the link is encrypted: STARTTLS is refused without asking us.
    assert driver.lines(b"a1 STARTTLS")[0].startswith(b"a1 BAD")


def test_plaintext_passwords_follow_plaintext_auth(tmp_path: pathlib.Path) -> None:
    service = make_service(tmp_path)  # the default: "loopback"
    assert b"LOGINDISABLED" in Driver(service).greeting
    local = Driver(service, client_ip="127.0.0.1")
    assert b"LOGINDISABLED" not in local.greeting
    assert local.lines(b"a1 LOGIN alice@example.test secret")[0].endswith(b"Logged in")
    assert local.log_lines[-1] == f"login: user=<{ALICE}>, method=LOGIN, rip=127.0.0.1, tls=no"
    anywhere = Driver(make_service(tmp_path / "2", plaintext_auth="always"))
    assert anywhere.greeting.endswith(
        b" STARTTLS " + MECHANISMS + b"] mx.example.test IMAP server ready\r\n"
    )


def test_logindisabled_refuses_both_commands_without_a_check(service: ImapService) -> None:
    driver = Driver(service)
    refused = b" NO [PRIVACYREQUIRED] Plaintext authentication disallowed: use STARTTLS"
    assert driver.lines(b"a1 LOGIN alice@example.test secret") == [b"a1" + refused]
    plain = b64(b"\0alice@example.test\0secret")
    assert driver.lines(b"a2 AUTHENTICATE PLAIN " + plain) == [b"a2" + refused]
    assert driver.lines(b"a3 AUTHENTICATE PLAIN") == [b"a3" + refused]
    assert driver.waited == []
    assert driver.log_lines == [f"connect from [{REMOTE}]:4321"]
    assert driver.session.user is None


# -- LOGIN -------------------------------------------------------------------------------


def test_login_opens_the_users_mailbox(tmp_path: pathlib.Path, service: ImapService) -> None:
    driver = Driver(service, tls=TLS)
    assert not driver.session.blocks(Noop(tag="x"))
    # The name folds to the user-store key: the login opens that user's folders.
    assert driver.lines(b"a1 LOGIN ALICE@Example.Test secret") == [
        b"a1 OK [CAPABILITY " + SESSION_CAPS + b"] Logged in"
    ]
    assert driver.session.user == ALICE
    assert driver.session.blocks(Noop(tag="x"))
    assert driver.session.blocks(Select(tag="x", mailbox="INBOX"))
    assert not driver.session.blocks(Capability(tag="x"))
    assert not driver.session.blocks(Idle(tag="x"))
    assert driver.lines(b"a2 IDLE") == [b"+ idling"]
    assert driver.session.idling
    assert driver.session.watch_paths == ()  # nothing selected: nothing to watch
    assert driver.session.blocks(IdleDone())
    assert driver.lines(b"DONE") == [b"a2 OK IDLE terminated"]
    assert not driver.session.idling
    assert driver.lines(b"a3 SELECT INBOX")[-1] == b"a3 OK [READ-WRITE] SELECT completed"
    assert (tmp_path / "mail" / "example.test" / "alice").is_dir()


def test_wrong_password_fails_after_the_delay_and_is_logged(service: ImapService) -> None:
    driver = Driver(service, tls=TLS)
    assert driver.lines(b"a1 LOGIN alice@example.test wrong") == [
        b"a1 NO [AUTHENTICATIONFAILED] Authentication failed"
    ]
    assert driver.waited == [0.0, service.auth.settings.failure_delay]
    assert driver.log_lines[-1] == (
        f"auth failed: service=imap, method=LOGIN, user=<{ALICE}>, rip={REMOTE}"
    )
    assert driver.session.user is None
    assert not driver.session.ended
    # The next attempt waits its delay first (the auth service's answer to guessing).
    assert driver.lines(b"a2 LOGIN alice@example.test secret")[0].endswith(b"Logged in")
    assert driver.waited[2] > 0


def test_a_throttled_client_gets_unavailable_without_a_check(tmp_path: pathlib.Path) -> None:
    settings = AuthSettings(max_failures=2)
    driver = Driver(make_service(tmp_path, settings=settings), tls=TLS)
    for n in range(2):
        driver.now += 100
        assert driver.lines(b"a%d LOGIN alice@example.test wrong%d" % (n, n)) == [
            b"a%d NO [AUTHENTICATIONFAILED] Authentication failed" % n
        ]
    driver.now += 100
    throttled = b" NO [UNAVAILABLE] Too many authentication failures, try again later"
    # Even the right password, and AUTHENTICATE too.
    assert driver.lines(b"b1 LOGIN alice@example.test secret") == [b"b1" + throttled]
    assert driver.lines(b"b2 AUTHENTICATE PLAIN") == [b"b2" + throttled]
    assert driver.log_lines[-1].startswith("auth throttled: service=imap, retry_after=")
    assert driver.log_lines[-1].endswith(f"s, rip={REMOTE}")
    assert driver.session.user is None


def test_a_mailbox_that_cannot_be_opened_is_unavailable(service: ImapService) -> None:
    class Broken:
        def account(self, mailbox: object) -> None:
            raise PermissionError(13, "Permission denied")

    service.store = Broken()  # type: ignore[assignment]
    driver = Driver(service, tls=TLS)
    assert driver.lines(b"a1 LOGIN alice@example.test secret") == [
        b"a1 NO [UNAVAILABLE] Cannot open the mailbox, try again later"
    ]
    assert driver.session.user is None
    assert driver.session.mailbox is None
    assert driver.logs[-1] == (
        logging.ERROR,
        f"[{REMOTE}]:4321: cannot open the mailbox of <{ALICE}>: [Errno 13] Permission denied",
    )
    assert not driver.session.cleanup_due


# -- AUTHENTICATE ------------------------------------------------------------------------


def test_authenticate_plain_with_and_without_sasl_ir(tmp_path: pathlib.Path) -> None:
    plain = b64(b"\0alice@example.test\0secret")
    with_ir = Driver(make_service(tmp_path), tls=TLS)
    assert with_ir.lines(b"a1 AUTHENTICATE PLAIN " + plain)[0].startswith(b"a1 OK [CAPABILITY ")
    assert with_ir.log_lines[-1] == (
        f"login: user=<{ALICE}>, method=PLAIN, rip={REMOTE}, tls=TLSv1.3"
    )
    without = Driver(make_service(tmp_path / "2"), tls=TLS)
    assert without.lines(b"a1 AUTHENTICATE plain") == [b"+ "]
    assert without.lines(plain)[0].startswith(b"a1 OK [CAPABILITY ")
    assert without.session.user == ALICE


def test_authenticate_scram_answers_the_final_challenge_empty(service: ImapService) -> None:
    driver = Driver(service, tls=TLS)
    client = sasl.client_mechanism(
        "SCRAM-SHA-256", authcid=ALICE, password="secret", nonce="clientnonce0123456789"
    )
    first = client.initial_response()
    assert first is not None
    server_first = driver.lines(b"a1 AUTHENTICATE SCRAM-SHA-256 " + b64(first))
    assert len(server_first) == 1
    assert server_first[0].startswith(b"+ ")
    final = client.respond(base64.b64decode(server_first[0][2:]))
    server_final = driver.lines(b64(final))
    client.verify_server_final(base64.b64decode(server_final[0][2:]))
    assert driver.session.user is None  # not before the empty answer (RFC 9051 §6.2.2)
    assert driver.lines(b"")[0].startswith(b"a1 OK [CAPABILITY ")
    assert driver.session.user == ALICE
    assert driver.log_lines[-1].startswith(f"login: user=<{ALICE}>, method=SCRAM-SHA-256,")


def test_data_after_scram_final_challenge_fails(service: ImapService) -> None:
    driver = Driver(service, tls=TLS)
    client = sasl.client_mechanism(
        "SCRAM-SHA-256", authcid=ALICE, password="secret", nonce="clientnonce0123456789"
    )
    first = client.initial_response()
    assert first is not None
    challenge = driver.lines(b"a1 AUTHENTICATE SCRAM-SHA-256 " + b64(first))[0]
    driver.lines(b64(client.respond(base64.b64decode(challenge[2:]))))
    assert driver.lines(b64(b"more")) == [b"a1 NO [AUTHENTICATIONFAILED] Authentication failed"]
    assert driver.session.user is None


def test_wrong_scram_password_is_a_logged_failure(service: ImapService) -> None:
    driver = Driver(service, tls=TLS)
    client = sasl.client_mechanism(
        "SCRAM-SHA-256", authcid=ALICE, password="wrong", nonce="clientnonce0123456789"
    )
    first = client.initial_response()
    assert first is not None
    challenge = driver.lines(b"a1 AUTHENTICATE SCRAM-SHA-256 " + b64(first))[0]
    answer = driver.lines(b64(client.respond(base64.b64decode(challenge[2:]))))
    assert answer == [b"a1 NO [AUTHENTICATIONFAILED] Authentication failed"]
    assert driver.log_lines[-1] == (
        f"auth failed: service=imap, method=SCRAM-SHA-256, user=<{ALICE}>, rip={REMOTE}"
    )


def test_cancel_and_undecodable_answers_end_the_exchange_not_the_session(
    service: ImapService,
) -> None:
    driver = Driver(service, tls=TLS)
    assert driver.lines(b"a1 AUTHENTICATE PLAIN") == [b"+ "]
    assert driver.lines(b"*") == [b"a1 BAD Authentication cancelled"]
    assert driver.lines(b"a2 AUTHENTICATE PLAIN") == [b"+ "]
    undecodable = driver.lines(b"!!not base64!!")
    assert len(undecodable) == 1
    assert undecodable[0].startswith(b"a2 BAD ")
    # Neither counted as a failure: nothing logged, no delay.
    assert not any(line.startswith("auth failed") for line in driver.log_lines)
    assert driver.waited == [0.0, 0.0]
    assert driver.lines(b"a3 LOGIN alice@example.test secret")[0].endswith(b"Logged in")


def test_mechanisms_not_offered_and_unwanted_initial_responses(tmp_path: pathlib.Path) -> None:
    driver = Driver(make_service(tmp_path), tls=TLS)
    assert driver.lines(b"a1 AUTHENTICATE CRAM-MD5") == [
        b"a1 NO Unsupported authentication mechanism"
    ]
    cram = make_service(tmp_path / "2", auth_mechanisms=("PLAIN", "CRAM-MD5"))
    driver = Driver(cram, tls=TLS)
    assert b"AUTH=CRAM-MD5" in driver.greeting
    # CRAM-MD5 speaks first: an initial response is refused (RFC 4959 §3).
    assert driver.lines(b"a2 AUTHENTICATE CRAM-MD5 " + b64(b"x")) == [
        b"a2 BAD This mechanism takes no initial response"
    ]
    assert driver.lines(b"a3 AUTHENTICATE CRAM-MD5")[0].startswith(b"+ ")


def test_the_client_leaving_mid_exchange_ends_the_conversation(service: ImapService) -> None:
    driver = Driver(service, tls=TLS)
    assert driver.lines(b"a1 AUTHENTICATE PLAIN") == [b"+ "]
    assert driver.feed(b"") == b""
    assert driver.session.ended
    assert driver.session.reason == "connection closed"
    driver.session.closed()
    assert driver.log_lines[-1] == f"disconnect: rip={REMOTE}, no login, reason=connection closed"


# -- before login, and the ends of a conversation -----------------------------------------


def test_commands_before_login(service: ImapService) -> None:
    driver = Driver(service)
    assert driver.lines(b"a1 NOOP") == [b"a1 OK NOOP completed"]
    ident = driver.lines(b'a2 ID ("name" "test")')
    assert ident[0].startswith(b'* ID ("name" "sansmail" "version" ')
    assert ident[1] == b"a2 OK ID completed"
    # A synchronizing literal gets its continuation (the core checked its size).
    assert driver.lines(b"a3 LOGIN {5}") == [b"+ Ready for literal data"]
    assert driver.lines(b"alice secret")[0].startswith(b"a3 NO [PRIVACYREQUIRED]")
    assert driver.lines(b"a4 LOGOUT") == [b"* BYE Logging out", b"a4 OK LOGOUT completed"]
    assert driver.session.ended
    assert not driver.session.cleanup_due
    driver.session.closed()
    assert driver.log_lines[-1] == f"disconnect: rip={REMOTE}, no login, reason=logged out"


def test_logout_line_counts_the_octets_of_the_conversation(service: ImapService) -> None:
    driver = Driver(service, tls=TLS)
    sent = [
        b"a1 LOGIN alice@example.test secret\r\n",
        b"a2 APPEND INBOX {9+}\r\nSubject: \r\n",
        b"a3 SELECT INBOX\r\n",
        b"a4 STORE 1 +FLAGS.SILENT (\\Deleted)\r\n",
        b"a5 CLOSE\r\n",
        b"a6 LOGOUT\r\n",
    ]
    answered = driver.greeting + b"".join(driver.feed(data) for data in sent)
    assert answered.endswith(b"* BYE Logging out\r\na6 OK LOGOUT completed\r\n")
    session = driver.session
    assert session.ended
    assert session.cleanup_due
    session.cleanup()
    assert not session.cleanup_due
    session.closed()
    assert driver.log_lines[-1] == (
        f"logout: user=<{ALICE}>, rip={REMOTE}, in={len(b''.join(sent))},"
        f" out={len(answered)}, expunged=1, reason=logged out"
    )


def test_a_vanished_selected_folder_ends_with_mailbox_gone(
    tmp_path: pathlib.Path, service: ImapService
) -> None:
    driver = logged_in(service)
    driver.lines(b"a1 CREATE Work")
    driver.lines(b"a2 SELECT Work")
    shutil.rmtree(tmp_path / "mail" / "example.test" / "alice" / ".Work")
    assert driver.lines(b"a3 NOOP")[0].startswith(b"* BYE ")
    assert driver.session.ended
    assert driver.session.reason == "mailbox gone"


def test_refusal_timeout_shutdown_and_errors(service: ImapService) -> None:
    refused = Driver(service, refuse=Refusal.TOO_MANY_CONNECTIONS)
    assert refused.greeting == (
        b"* BYE [UNAVAILABLE] mx.example.test Error: too many connections\r\n"
    )
    assert refused.session.ended
    refused.session.closed()
    assert refused.log_lines == [
        f"connect from [{REMOTE}]:4321",
        f"[{REMOTE}]:4321: refused: mx.example.test Error: too many connections",
        f"disconnect: rip={REMOTE}, no login, reason=refused",
    ]

    idle = logged_in(service)
    assert idle.session.timeout == AUTOLOGOUT == 1800.0  # RFC 9051 §5.4: 30 minutes at least
    bye = idle.session.last_words(idle.session.timeout_reply())
    assert bye == b"* BYE Autologout; idle for too long\r\n"
    assert idle.log_lines[-1] == f"[{REMOTE}]:4321: autologout"
    assert idle.session.reason == "timeout"

    stopping = Driver(service)
    bye = stopping.session.last_words(stopping.session.shutdown_reply())
    assert bye == b"* BYE [UNAVAILABLE] Server shutting down\r\n"
    assert stopping.session.reason == "shutdown"

    broken = Driver(service)
    bye = broken.session.last_words(broken.session.internal_error())
    assert bye == b"* BYE [SERVERBUG] Internal error, closing\r\n"
    assert broken.session.reason == "internal error"

    attacker = Driver(service)
    with pytest.raises(RemoteProtocolError) as caught:
        attacker.feed(b"a1 NOOP\n")  # a bare LF
    attacker.session.protocol_error(caught.value)
    assert attacker.session.reason == "protocol error"
    assert attacker.log_lines[-1].startswith(f"[{REMOTE}]:4321: protocol error: ")
    assert attacker.session.last_words(caught.value.reply_hint).startswith(b"* BYE ")
    # Nothing to say (a hint that is no BYE) is nothing sent.
    assert attacker.session.last_words(None) == b""


def test_starttls_pipelined_plaintext_is_refused(service: ImapService) -> None:
    driver = Driver(service)
    with pytest.raises(RemoteProtocolError):
        driver.feed(b"a1 STARTTLS\r\na2 LOGIN alice@example.test secret\r\n")
    assert driver.session.user is None


def test_unexpected_events_are_bugs_not_answers(service: ImapService) -> None:
    driver = Driver(service)
    with pytest.raises(Exception, match="unexpected event Append"):
        driver.session.handle(Append(tag="a1", mailbox="INBOX", message=b"x"))
