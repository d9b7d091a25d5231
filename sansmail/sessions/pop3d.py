"""`Pop3Session`: what one POP3 connection does with its commands (Dovecot's pop3): who
may log in and how, the maildrop's snapshot and its message numbers, the DELE marks, the
answers to STAT, LIST, UIDL, RETR and TOP, the QUIT commit, and the mail log's lines.

Theory of operation
-------------------
The protocol core (`sansmail.pop3.Connection`, owned by the session as `conn`) parses
commands and enforces RFC 1939's states; the maildrop (a `Pop3Maildrop` from the service's
`MaildropSource`: a Maildir's `Maildrop`, or PostgreSQL's `PgMaildrop`) takes the lock and
the snapshot, reads, deletes and marks; this object decides what each
command means and answers it. An adapter moves bytes between the client and `conn`, and
for each event calls the session (a sketch; `sansmail_trio._pop3_server` is the real
one; the life cycle and logging in are the same for every session, see
`sansmail.sessions.common`)::

    Stls           -> send session.stls(); after a +OK: handshake, then
                      session.tls_started(...) or session.tls_failed(reason)
    Pass, Auth     -> the common login steps (`LoginSteps`); login_result blocks
    Retr, Top      -> answer = session.ready(event), or if that is None
                      answer = session.retrieve(event)                 [blocking]
                      an Err: send it. A `Transfer`: send answer.reply, then each chunk
                      as MultilineData: answer.first, then answer.read() [blocking]
                      until answer.done; answer.close(); send session.transferred(answer)
    Quit           -> send session.quit()                              [blocking]
    anything else  -> send each of session.handle(event)
    at the very end: session.closed(), then session.cleanup()          [blocking]

Methods marked blocking do file I/O (opening the maildrop: the lock and the snapshot;
reading a message; the QUIT commit) and belong in a worker thread, one at a time; the
others only compute. The session reads no clock and owns no timer: the adapter waits
`timeout` for each command (RFC 1939 §3's autologout) and answers its expiry with
`timeout_reply()`, shutdown with `shutdown_reply()`, both serialised by `last_words`. Log
lines go to the `log` sink given at construction (level, text), from whichever thread
runs the method. Resources that must not outlive the session (the maildrop's lock, an
open message file) are held by the session itself, never only by a caller's variable,
so `cleanup` releases them however the connection ended.

Logging in (RFC 1939 §7 USER/PASS, RFC 5034 AUTH) is offered only under TLS unless
``[smtp] plaintext_auth`` allows it for this client: the server-wide switch SMTP AUTH
obeys. Before that, CAPA lists neither USER nor SASL (RFC 2449 §6.2, §6.3: a client must
not use what is not listed) and the commands get ``-ERR [AUTH]`` (RFC 3206; RFC 2595
§2.3 wants clear-text logins refusable until TLS is on). The login name is the full
address (user@domain), as for SMTP AUTH. A wrong password is ``-ERR [AUTH]`` after the
auth service's delay; a throttled client gets ``-ERR [SYS/TEMP]`` without a check. After
a good password the maildrop is opened (lock, then snapshot) and only then is +OK sent
(RFC 1939 §4: "maildrop locked and ready"); a maildrop locked by another POP3 session,
in this process or another, is ``-ERR [IN-USE]`` (RFC 2449 §8.1.2), and the session stays
in AUTHORIZATION.

Messages are numbered from 1 in the snapshot's order, for the whole session (RFC 1939
§5); mail that arrives meanwhile waits for the next session. DELE only marks and RSET
unmarks; a marked message may not be referred to (§5). RETR and TOP read the file in
chunks of at most `READ_AHEAD` octets; the file is opened and its first chunk read in
the same call, so a typical message costs the adapter one thread hop.

QUIT in TRANSACTION enters UPDATE (RFC 1939 §6): the marked messages are removed and the
ones RETR sent in full are marked \\Seen (as Dovecot does by default; TOP marks nothing,
RSET forgets the marks too, ``[pop3] no_flag_updates = true`` turns it off), in one
commit made durable before the +OK. A connection that ends any other way changes nothing.

Reading ahead. A client downloading a maildrop asks RETR 1, RETR 2, ... one after the
other, and a worker thread per message costs more than reading a small one. So when an
adapter that asks `ready` first gives the session a `read_ahead` budget, a RETR read
from disk also reads the messages that follow (whole ones only, up to that many octets
and `_READ_AHEAD_COUNT` messages), and `ready` answers their RETRs from memory, without
blocking. Message files never change, so what was read ahead is what RETR would read;
one removed meanwhile by another client is sent as it was read, as a RETR already under
way would be.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs

from sansmail import SERVER, LocalProtocolError, pop3, sasl
from sansmail.config import Config
from sansmail.mail.address import MailboxId
from sansmail.mail.auth import AuthService, password_allowed
from sansmail.mail.logtext import LogSink, command_for_log, show_ip
from sansmail.sessions.common import Refusal, refusal_text
from sansmail.sessions.login import Exchange, Login, Result
from sansmail.storage.maildir import (
    MaildropInUseError,
    MaildropSource,
    MessageGoneError,
    MessageInfo,
    MessageReader,
    Pop3Maildrop,
)
from sansmail.storage.users import Users

__all__ = [
    "AUTH_THROTTLED",
    "IDLE_TIMEOUT",
    "READ_AHEAD",
    "READ_AHEAD_BATCH",
    "Answer",
    "Pop3Service",
    "Pop3Session",
    "Transfer",
]

#: RFC 1939 §3: "the autologout timer MUST be of at least 10 minutes duration".
IDLE_TIMEOUT = 600.0
#: Octets of a message read per blocking call (bounds the memory a RETR holds).
READ_AHEAD = 128 * 1024
#: The `read_ahead` budget an adapter that asks `ready` is expected to give: the octets of
#: following messages a RETR reads with its own (see "Reading ahead").
READ_AHEAD_BATCH = 256 * 1024
_READ_AHEAD_COUNT = 64

_IMPLEMENTATION = "sansmail"
# Fixed answers are built once (a validated event per command is not free).
_OK = pop3.Ok()
_BYE = pop3.Ok(text="Bye")
_BEGIN_TLS = pop3.Ok(text="Begin TLS negotiation")
_END = pop3.EndOfMultiline()
_PLAINTEXT_REFUSED = pop3.Err(
    code="AUTH", text="Plaintext authentication disallowed on non-secure connections: use STLS"
)
_AUTH_FAILED = pop3.Err(code="AUTH", text="Authentication failed")
#: The answer when `Login.gate` refuses (RFC 3206 §4: SYS/TEMP).
AUTH_THROTTLED = pop3.Err(code="SYS/TEMP", text="Too many authentication failures, try again later")
_AUTH_CANCELLED = pop3.Err(text="Authentication cancelled")
_NO_INITIAL_RESPONSE = pop3.Err(text="This mechanism takes no initial response")
_UNKNOWN_MECHANISM = pop3.Err(text="Unrecognized authentication type")
_IN_USE = pop3.Err(code="IN-USE", text="Maildrop already locked by another POP3 session")
_MAILDROP_ERROR = pop3.Err(code="SYS/TEMP", text="Cannot open the maildrop, try again later")
_NOT_REMOVED = pop3.Err(code="SYS/TEMP", text="Some deleted messages not removed")
_INTERNAL_ERROR = pop3.Err(code="SYS/TEMP", text="Internal error, closing connection")
_SHUTTING_DOWN = pop3.Err(code="SYS/TEMP", text="Server shutting down")
_AUTOLOGOUT = pop3.Err(text="Autologout: idle for too long")
_NO_TLS = pop3.Err(text="TLS not available")

#: What `handle` answers with, in order.
Answer = Sequence[pop3.Ok | pop3.Err | pop3.MultilineData | pop3.EndOfMultiline]


@attrs.define
class Pop3Service:
    """Everything the sessions of one `pop3` or `pop3s` listener share."""

    config: Config
    #: Where each session's maildrop is opened (`MaildirMaildrops`, `PgMaildrops`).
    maildrops: MaildropSource
    users: Users
    #: Password checks, failure delays and throttling, shared with SMTP and IMAP.
    auth: AuthService
    service: str = "pop3"
    #: A certificate exists, so STLS may be offered on a plaintext link.
    tls_available: bool = True

    @property
    def implicit_tls(self) -> bool:
        """The listener speaks TLS from the first byte (RFC 8314 §3.3: port 995)."""
        return self.service == "pop3s"

    @property
    def mechanisms(self) -> tuple[str, ...]:
        return sasl.server_mechanisms(self.config.smtp.auth_mechanisms)

    def login_allowed(self, *, tls_active: bool, client_ip: str) -> bool:
        """USER/PASS and AUTH only over TLS, unless `plaintext_auth` allows them for this
        client (RFC 2595 §2.3)."""
        return password_allowed(
            tls_active=tls_active,
            client_ip=client_ip,
            plaintext_auth=self.config.smtp.plaintext_auth,
        )


@attrs.define
class _Counters:
    """What the disconnect line reports (Dovecot's logout line is the model)."""

    top: int = 0
    top_bytes: int = 0
    retr: int = 0
    retr_bytes: int = 0
    deleted: int = 0


class Transfer:
    """One RETR or TOP answer being read: `reply` (the +OK) goes first, then `first` and
    each `read()` until `done`, as the multi-line body (the core byte-stuffs it)."""

    def __init__(
        self,
        reader: MessageReader | None,
        first: bytes,
        *,
        number: int,
        retr: bool,
        reply: pop3.Ok,
    ) -> None:
        # None: `first` is the whole answer (a message read ahead).
        self._reader = reader
        self.first = first
        self.number = number
        #: RETR (the whole message), not TOP.
        self.retr = retr
        self.reply = reply
        #: Octets read so far: what was sent once the answer is complete.
        self.octets = len(first)

    @property
    def done(self) -> bool:
        """Everything has been read (and the file is closed)."""
        return self._reader is None or self._reader.done

    def read(self) -> bytes:
        """Blocking: the next chunk (at most about `READ_AHEAD` octets); b"" at the end."""
        if self._reader is None:
            return b""
        chunk = self._reader.read_up_to(READ_AHEAD)
        self.octets += len(chunk)
        return chunk

    def close(self) -> None:
        """Close the file. Idempotent; no blocking worth a thread (one close(2))."""
        if self._reader is not None:
            self._reader.close()


class Pop3Session:
    """One POP3 conversation (see the module docstring).

    Args:
        service: what the listener's sessions share.
        client_ip, client_port: the peer.
        log: where log lines go, ``(level, text)``.
        tls: "<version> <cipher>" when the link is already encrypted (pop3s).
        read_ahead: octets of the following messages a RETR may read for `ready` (0:
            none; see "Reading ahead", and `READ_AHEAD_BATCH`).
    """

    def __init__(
        self,
        service: Pop3Service,
        *,
        client_ip: str,
        client_port: int,
        log: LogSink,
        tls: str | None = None,
        read_ahead: int = 0,
    ) -> None:
        self.service = service
        self.config = service.config
        self.log = log
        self.client_ip = client_ip
        self.client = f"[{client_ip}]:{client_port}"
        self.conn = pop3.Connection(SERVER, tls_active=tls is not None)
        #: "TLSv1.3 TLS_AES_256_GCM_SHA384" once the session is encrypted.
        self.tls = tls
        #: The user-store key of the logged-in user.
        self.user: str | None = None
        self.maildrop: Pop3Maildrop | None = None
        #: Message numbers marked by DELE.
        self.deleted: set[int] = set()
        #: Message numbers RETR sent in full: marked \Seen at QUIT.
        self.retrieved: set[int] = set()
        #: The session is over: the adapter closes after sending what it has.
        self.ended = False
        self._counters = _Counters()
        self._reason = "disconnected"
        self._transfer: Transfer | None = None
        self._read_ahead = read_ahead
        #: Message number -> its whole content, read ahead for `ready`.
        self._ahead: dict[int, bytes] = {}

    # -- what the adapter asks ------------------------------------------------------------

    @property
    def timeout(self) -> float:
        """How long to wait for the next command (RFC 1939 §3)."""
        return IDLE_TIMEOUT

    def greeting(self) -> pop3.Ok:
        self.log(logging.INFO, f"connect from {self.client}")
        return pop3.Ok(text=f"{self.config.hostname} POP3 server ready")

    def refuse(self, refusal: Refusal) -> pop3.Err:
        """Greet with a refusal instead (connection limits, shutdown), and end."""
        text = refusal_text(refusal, hostname=self.config.hostname, client_ip=self.client_ip)
        self.log(logging.INFO, f"connect from {self.client}")
        self.log(logging.INFO, f"{self.client}: refused: {text}")
        self._reason = "refused"
        self.ended = True
        return pop3.Err(code="SYS/TEMP", text=text)

    def timeout_reply(self) -> pop3.Err:
        """The client was idle for `timeout` seconds, or stopped reading an answer."""
        self._reason = "timeout"
        self.log(logging.INFO, f"{self.client}: timeout")
        return _AUTOLOGOUT

    def shutdown_reply(self) -> pop3.Err:
        self._reason = "shutdown"
        return _SHUTTING_DOWN

    def protocol_error(self, exc: Exception) -> None:
        """The core gave up on the client (`RemoteProtocolError`); its hint is the last
        word."""
        self._reason = "protocol error"
        self.log(logging.INFO, f"{self.client}: protocol error: {exc}")

    def internal_error(self) -> pop3.Err:
        """A bug or a disk error ended the session (the adapter logs the traceback)."""
        self._reason = "internal error"
        return _INTERNAL_ERROR

    def last_words(self, hint: object) -> bytes:
        """An unprompted closing -ERR, where the core allows one: never inside a
        multi-line answer, where the client would read it as message content."""
        if not isinstance(hint, pop3.Err):
            return b""
        try:
            return self.conn.send(hint)
        except LocalProtocolError:
            return b""

    def closed(self) -> None:
        """The connection is gone: the disconnect line. What it held is released by
        `cleanup`."""
        self._log_disconnect()

    @property
    def cleanup_due(self) -> bool:
        return self._transfer is not None or self.maildrop is not None

    def cleanup(self) -> None:
        """Blocking: release the maildrop's lock and any open message."""
        transfer, self._transfer = self._transfer, None
        maildrop, self.maildrop = self.maildrop, None
        self._ahead.clear()
        if transfer is not None:
            transfer.close()
        if maildrop is not None:
            maildrop.close()

    # -- commands that need no I/O ---------------------------------------------------------

    def handle(self, event: pop3.Event) -> Answer:
        """Answer one event that needs no I/O: all but Stls, Pass, Auth, Retr, Top and
        Quit. A ConnectionClosed answers nothing and ends the session."""
        if isinstance(event, pop3.Capa):
            return self._capa()
        if isinstance(event, pop3.User):
            # RFC 1939 §7. The answer never says whether the user exists.
            return (_OK if self._login_allowed() else _PLAINTEXT_REFUSED,)
        if isinstance(event, pop3.Stat):
            count, size = self._totals()
            return (pop3.Ok(text=f"{count} {size}"),)
        if isinstance(event, pop3.List):
            return self._list(event.msg)
        if isinstance(event, pop3.Uidl):
            return self._uidl(event.msg)
        if isinstance(event, pop3.Dele):
            message = self._message(event.msg)
            if isinstance(message, pop3.Err):
                return (message,)
            self.deleted.add(event.msg)
            return (pop3.Ok(text=f"Message {event.msg} deleted"),)
        if isinstance(event, pop3.Noop):
            return (_OK,)
        if isinstance(event, pop3.Rset):
            # RFC 1939 §5: unmark what DELE marked; the \Seen marks go too, so that RSET
            # leaves nothing for QUIT to change (as Dovecot does).
            self.deleted.clear()
            self.retrieved.clear()
            count, size = self._totals()
            return (pop3.Ok(text=f"Maildrop has {count} messages ({size} octets)"),)
        if isinstance(event, pop3.InvalidCommand):
            line = command_for_log(event.line)
            self.log(logging.INFO, f"{self.client}: -ERR {event.reason}: {line}")
            return (event.reply_hint,)
        if isinstance(event, pop3.ConnectionClosed):
            self._reason = "connection closed"
            self.ended = True
            return ()
        raise TypeError(f"{type(event).__name__} is not handled by handle()")

    def _capa(self) -> Answer:
        # RFC 2449 §5; what is offered depends on the state and on TLS (RFC 2595 §4).
        if self.conn.stage is pop3.Stage.AUTHORIZATION:
            login = self._login_allowed()
            listing = pop3.capability_listing(
                user=login,
                sasl=self.service.mechanisms if login else (),
                stls=self.service.tls_available and self.tls is None,
                implementation=_IMPLEMENTATION,
            )
        else:
            listing = pop3.capability_listing(user=False, implementation=_IMPLEMENTATION)
        return _multiline("Capability list follows", listing)

    def _list(self, number: int | None) -> Answer:
        if number is None:
            live = self._live()
            listing = b"".join(b"%d %d\r\n" % (n, m.size) for n, m in live)
            size = sum(m.size for _n, m in live)
            return _multiline(f"{len(live)} messages ({size} octets)", listing)
        message = self._message(number)
        if isinstance(message, pop3.Err):
            return (message,)
        return (pop3.Ok(text=f"{number} {message.size}"),)

    def _uidl(self, number: int | None) -> Answer:
        if number is None:
            listing = "".join(f"{n} {m.uid}\r\n" for n, m in self._live())
            return _multiline("", listing.encode("ascii"))
        message = self._message(number)
        if isinstance(message, pop3.Err):
            return (message,)
        return (pop3.Ok(text=f"{number} {message.uid}"),)

    # -- STLS ----------------------------------------------------------------------------

    def stls(self) -> pop3.Ok | pop3.Err:
        """RFC 2595 §4: the +OK before the handshake, or why not. STLS under TLS never
        gets here: the core refuses it."""
        assert self.tls is None, "the core refuses STLS under TLS"
        return _BEGIN_TLS if self.service.tls_available else _NO_TLS

    def tls_started(self, description: str, log_description: str) -> None:
        """The handshake succeeded; `description` as in `tls`, `log_description` for the
        log. The session stays in AUTHORIZATION, with no new greeting (RFC 2595 §4)."""
        self.tls = description
        self.log(logging.INFO, f"{self.client}: STLS: {log_description}")

    def tls_failed(self, reason: str) -> None:
        self.log(logging.INFO, f"{self.client}: STLS handshake failed: {reason}")
        self._reason = "TLS handshake failed"
        self.ended = True

    # -- logging in ------------------------------------------------------------------------

    def login_refusal(self, event: pop3.Pass | pop3.Auth) -> pop3.Err | None:
        """The refusal of a login command before any attempt is counted, or None."""
        if isinstance(event, pop3.Auth):
            if not self._login_allowed():
                return _PLAINTEXT_REFUSED
            if event.mechanism not in self.service.mechanisms:
                return _UNKNOWN_MECHANISM
        # PASS comes only after a USER we answered +OK, which we do only when logins are
        # allowed (and STLS in between makes the core forget the USER).
        return None

    def login(self) -> Login:
        """The shared login rules for this client (throttle, delays, fail2ban lines)."""
        return Login.on(self.service, client_ip=self.client_ip, log=self.log)

    def throttled(self, event: pop3.Pass | pop3.Auth) -> pop3.Err:
        """`Login.gate` refused the client: no password was checked."""
        return AUTH_THROTTLED

    def challenge(self, data: bytes) -> pop3.Challenge:
        return pop3.Challenge(data=data)

    def answer(self, event: object) -> bytes | None:
        return event.data if isinstance(event, pop3.AuthResponse) else None

    def exchange(
        self, event: pop3.Pass | pop3.Auth, login: Login, *, nonce: str, now: float
    ) -> Exchange:
        """The login attempt of a command `login` allowed, once `login.gate` has let it
        through. `nonce` is fresh randomness, `now` the wall clock (CRAM-MD5)."""
        if isinstance(event, pop3.Pass):
            name = self.conn.user  # the USER just answered +OK (the core checked)
            assert name is not None
            return login.password(name, event.password, method="USER")
        return login.sasl(event.mechanism, event.initial_response, nonce=nonce, timestamp=int(now))

    def login_result(
        self, event: pop3.Pass | pop3.Auth, result: Result, last: object
    ) -> pop3.Ok | pop3.Err | None:
        """Blocking after a good login (it opens the maildrop): the answer to a login
        that ended with `result`; `last` is the last event the core gave during it.
        None: the client went away mid-exchange (the session ends)."""
        if result.unexpected_initial_response:
            # RFC 5034 §4: an initial response to a server-first mechanism is refused.
            return _NO_INITIAL_RESPONSE
        if result.user is not None:
            return self._open(result.user, result.mechanism)
        if result.refusal is not None:  # max_userip_connections, as Dovecot answers it
            return pop3.Err(code="IN-USE", text=result.refusal)
        if result.interrupted:
            # "*" (RFC 5034 §4), an undecodable line, or a non-empty answer to the final
            # challenge: the exchange fails and the session goes on; EOF ends it.
            if isinstance(last, pop3.InvalidCommand):
                return last.reply_hint
            if isinstance(last, pop3.AuthCancel | pop3.AuthResponse):
                return _AUTH_CANCELLED
            self._reason = "connection closed"
            self.ended = True
            return None
        return _AUTH_FAILED

    def _open(self, key: str, method: str) -> pop3.Ok | pop3.Err:
        """Lock the maildrop and take the snapshot, then +OK (RFC 1939 §4)."""
        local, _, domain = key.rpartition("@")
        try:
            self.maildrop = self.service.maildrops.open_maildrop(
                MailboxId(domain=domain, local=local)
            )
        except MaildropInUseError:
            self.log(
                logging.INFO,
                f"login refused: user=<{key}>, rip={show_ip(self.client_ip)}, maildrop in use",
            )
            return _IN_USE
        except OSError as exc:
            self.log(logging.ERROR, f"{self.client}: cannot open the maildrop of <{key}>: {exc}")
            return _MAILDROP_ERROR
        self.user = key
        count, size = self._totals()
        tls = self.tls.split()[0] if self.tls else "no"
        self.log(
            logging.INFO,
            f"login: user=<{key}>, method={method}, rip={show_ip(self.client_ip)}, tls={tls}",
        )
        return pop3.Ok(text=f"Logged in, {count} messages ({size} octets)")

    def _login_allowed(self) -> bool:
        return self.service.login_allowed(tls_active=self.tls is not None, client_ip=self.client_ip)

    # -- RETR and TOP ----------------------------------------------------------------------

    def ready(self, event: pop3.Retr | pop3.Top) -> Transfer | None:
        """Not blocking: the answer to a RETR of a message read ahead, or None (then
        `retrieve`, which blocks)."""
        if not isinstance(event, pop3.Retr):
            return None
        data = self._ahead.pop(event.msg, None)
        message = self._message(event.msg)
        if data is None or isinstance(message, pop3.Err):
            return None
        self._transfer = Transfer(
            None, data, number=event.msg, retr=True, reply=pop3.Ok(text=f"{message.size} octets")
        )
        return self._transfer

    def _read_following(self, number: int) -> None:
        """Read ahead the messages after `number` (see "Reading ahead")."""
        maildrop = self.maildrop
        assert maildrop is not None
        # What is behind is not asked for again in a download in order: not kept.
        self._ahead = {n: data for n, data in self._ahead.items() if n > number}
        budget = self._read_ahead - sum(map(len, self._ahead.values()))
        messages = maildrop.messages
        for n in range(number + 1, min(len(messages), number + _READ_AHEAD_COUNT) + 1):
            message = messages[n - 1]
            if n in self.deleted or n in self._ahead:
                continue
            if message.size > min(budget, READ_AHEAD):
                break
            try:
                with maildrop.reader(message) as reader:
                    data = reader.read_up_to(READ_AHEAD)
                    if not reader.done:
                        break  # bigger than its size said: RETR reads it in chunks
            except (MessageGoneError, OSError):
                break  # RETR will say what is wrong with it
            self._ahead[n] = data
            budget -= len(data)

    def retrieve(self, event: pop3.Retr | pop3.Top) -> Transfer | pop3.Err:
        """Blocking: open the message RETR or TOP names and read its first chunk (one
        call, so a small message needs nothing more), or the -ERR for it; a RETR also
        reads ahead (see "Reading ahead")."""
        number = event.msg
        lines = event.lines if isinstance(event, pop3.Top) else None
        message = self._message(number)
        if isinstance(message, pop3.Err):
            return message
        maildrop = self.maildrop
        assert maildrop is not None
        try:
            reader = maildrop.reader(message, lines=lines)
            try:
                first = reader.read_up_to(READ_AHEAD)
            except BaseException:
                reader.close()
                raise
        except MessageGoneError:
            self.log(
                logging.INFO,
                f"{self.client}: message {number} ({message.base}) removed by another client",
            )
            return pop3.Err(text=f"Message {number} was removed by another client")
        except OSError as exc:
            self.log(logging.ERROR, f"{self.client}: cannot read {message.base}: {exc}")
            return pop3.Err(code="SYS/TEMP", text="Cannot read the message")
        text = f"{message.size} octets" if lines is None else "Top of message follows"
        self._transfer = Transfer(
            reader, first, number=number, retr=lines is None, reply=pop3.Ok(text=text)
        )
        if lines is None and self._read_ahead:
            self._read_following(number)
        return self._transfer

    def transferred(self, transfer: Transfer) -> pop3.EndOfMultiline:
        """Every chunk of `transfer` was sent: the end of the answer. Counted for the
        disconnect line; a RETR is marked for \\Seen at QUIT."""
        transfer.close()
        self._transfer = None
        c = self._counters
        if transfer.retr:
            c.retr += 1
            c.retr_bytes += transfer.octets
            self.retrieved.add(transfer.number)
        else:
            c.top += 1
            c.top_bytes += transfer.octets
        return _END

    # -- QUIT ------------------------------------------------------------------------------

    def quit(self) -> pop3.Ok | pop3.Err:
        """Blocking in the UPDATE state (QUIT after login): remove the marked messages and
        mark the retrieved ones \\Seen, durably, then answer (RFC 1939 §6). The session
        ends either way."""
        self._reason = "logged out"
        self.ended = True
        if self.conn.stage is not pop3.Stage.UPDATE:
            return _BYE
        maildrop = self.maildrop
        assert maildrop is not None
        messages = maildrop.messages
        marked = [messages[number - 1] for number in sorted(self.deleted)]
        seen = []
        if not self.config.pop3.no_flag_updates:
            seen = [messages[number - 1] for number in sorted(self.retrieved - self.deleted)]
        try:
            result = maildrop.expunge(marked, seen=seen)
        except OSError as exc:
            # The removals could not be made durable (a directory fsync, a disk error):
            # RFC 1939 §6's "some deleted messages not removed", a temporary error
            # (RFC 3206 SYS/TEMP); the client keeps its state and tries again.
            self.log(logging.ERROR, f"{self.client}: user=<{self.user}>: QUIT: {exc}")
            return _NOT_REMOVED
        self._counters.deleted = result.removed + result.gone
        if result.unmarked:
            self.log(
                logging.ERROR,
                f"{self.client}: user=<{self.user}>: could not mark"
                f" {', '.join(result.unmarked)} seen",
            )
        if result.failed:
            self.log(
                logging.ERROR,
                f"{self.client}: user=<{self.user}>: could not remove {', '.join(result.failed)}",
            )
            return _NOT_REMOVED
        return pop3.Ok(text=f"Logging out, {len(marked)} messages deleted")

    # -- the snapshot ----------------------------------------------------------------------

    def _messages(self) -> tuple[MessageInfo, ...]:
        assert self.maildrop is not None, "the core allows this only after login"
        return self.maildrop.messages

    def _live(self) -> list[tuple[int, MessageInfo]]:
        deleted = self.deleted
        return [(n, m) for n, m in enumerate(self._messages(), 1) if n not in deleted]

    def _totals(self) -> tuple[int, int]:
        live = self._live()
        return len(live), sum(message.size for _number, message in live)

    def _message(self, number: int) -> MessageInfo | pop3.Err:
        """Message `number` of the snapshot, or the -ERR for it (RFC 1939 §5: a message
        marked as deleted may not be referred to)."""
        messages = self._messages()
        if number > len(messages):
            return pop3.Err(text=f"No such message, only {len(messages)} messages in maildrop")
        if number in self.deleted:
            return pop3.Err(text=f"Message {number} already deleted")
        return messages[number - 1]

    def _log_disconnect(self) -> None:
        ip = show_ip(self.client_ip)
        if self.user is None:
            self.log(logging.INFO, f"disconnect: rip={ip}, no login, reason={self._reason}")
            return
        c = self._counters
        messages = self.maildrop.messages if self.maildrop is not None else ()
        self.log(
            logging.INFO,
            f"disconnect: user=<{self.user}>, rip={ip}, top={c.top}/{c.top_bytes},"
            f" retr={c.retr}/{c.retr_bytes}, del={c.deleted}/{len(messages)},"
            f" size={sum(m.size for m in messages)}, reason={self._reason}",
        )


def _multiline(text: str, body: bytes) -> Answer:
    if not body:
        return (pop3.Ok(text=text), _END)
    return (pop3.Ok(text=text), pop3.MultilineData(data=body), _END)
