"""`Pop3Session` without sockets: client bytes go into the real POP3 core, the session
answers each event as an adapter would (its blocking calls run inline), and the tests
compare the octets a client would read, the log lines and the Maildir on disk. The tests
that look at the maildrop only through the session run on both backends (the `server`
fixture's param: "maildir", "postgresql")."""

from __future__ import annotations

import base64
import logging
import os
import pathlib
from collections.abc import Iterator

import pytest

from sansmail import NEED_DATA, PAUSED, RemoteProtocolError, pop3, sasl
from sansmail.config import parse_config
from sansmail.mail.address import MailboxId, parse_address
from sansmail.mail.auth import AuthService, AuthSettings
from sansmail.sessions import pop3d
from sansmail.sessions.common import Refusal
from sansmail.sessions.login import BLOCKING, FINISHED
from sansmail.sessions.pop3d import Pop3Service, Pop3Session, Transfer
from sansmail.storage.maildir import MaildirImapStore, MaildirMaildrops, MaildirStore, MailStore
from sansmail.storage.maildir._imapmaildir import split_name
from sansmail.storage.maildir._mailbox import _listed_snapshot
from sansmail.storage.pg import Database
from sansmail.storage.pg._delivery import PgMailStore
from sansmail.storage.pg._maildrop import PgMaildrops, unique_id
from sansmail.storage.pg._mailrows import remove_messages
from sansmail.storage.users import UserStore

ALICE = MailboxId(domain="example.test", local="alice")
ADDRESS = "alice@example.test"
MESSAGES = [
    b"Subject: first\n\nHello Alice.\n.a line that starts with a dot\n",
    b"Subject: second\nX-Two: 2\n\nline 1\nline 2\nline 3\n",
    b"Subject: third\n\nbye\n",
]
TLS = "TLSv1.3 TLS_AES_256_GCM_SHA384"
BACKENDS = ("maildir", "postgresql")
_LETTERS = {"S": "\\Seen", "F": "\\Flagged", "R": "\\Answered"}


def wire(stored: bytes) -> bytes:
    return stored.replace(b"\n", b"\r\n")


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class Server:
    """A `Pop3Service` over a temporary data dir, with alice (password "secret"); the
    mailboxes in Maildirs, or in the database `db`."""

    def __init__(
        self,
        tmp_path: pathlib.Path,
        extra: str = "",
        *,
        db: Database | None = None,
        **settings: object,
    ) -> None:
        text = (
            'hostname = "mx.example.test"\n'
            'domains = ["example.test"]\n'
            f'data_dir = "{tmp_path / "data"}"\n' + extra
        )
        self.config = parse_config(text, source=None, default_hostname="unused.example")
        self.db = db
        self.store: MailStore
        if db is None:
            self.store = MaildirStore(self.config.data_dir, hostname="mx.example.test")
            maildrops = MaildirMaildrops(self.store)
            self.root = self.store.maildir(ALICE)
        else:
            self.store = PgMailStore(db, hostname="mx.example.test")
            maildrops = PgMaildrops(db)
        users = UserStore(tmp_path / "users.json")
        users.add(parse_address(ADDRESS), "secret")
        fast = AuthSettings(failure_delay=0.01, max_failure_delay=0.02, **settings)  # type: ignore[arg-type]
        self.service = Pop3Service(
            config=self.config,
            maildrops=maildrops,
            users=users,
            auth=AuthService(users, secret=b"k" * 32, settings=fast),
        )

    def deliver(self, *messages: bytes) -> list[str]:
        names = []
        for message in messages:
            delivery = self.store.begin([ALICE], prefix=b"")
            delivery.write(message)
            names += delivery.commit()
        return names

    def files(self) -> dict[str, list[str]]:
        return {sub: sorted(os.listdir(self.root / sub)) for sub in ("new", "cur")}

    def uidl(self, name: str) -> str:
        """The UIDL of the message `deliver` named `name`."""
        if self.db is None:
            return name
        uidvalidity, uid = name.split(".")
        return unique_id(int(uidvalidity), int(uid))

    def remove(self, name: str) -> None:
        """Another client (IMAP, another tool) removes the message named `name`."""
        if self.db is None:
            (self.root / "new" / name).unlink()
            return
        with self.db.transaction() as cur:
            cur.execute("SELECT id FROM mail_folders WHERE name = 'INBOX'")
            ((folder_id,),) = cur.fetchall()
            remove_messages(cur, folder_id, "alice@example.test", [int(name.split(".")[1])])

    def flags(self) -> list[tuple[str, frozenset[str]]]:
        """(UIDL, flags) of each message in the INBOX, in arrival order."""
        if self.db is None:
            out = []
            for info in _listed_snapshot(str(self.root)):
                letters = split_name(info.name)[1] or ""
                out.append((info.uid, frozenset(_LETTERS[c] for c in letters if c in _LETTERS)))
            return out
        with self.db.transaction() as cur:
            cur.execute(
                "SELECT f.uidvalidity, m.uid, m.flags FROM mail_messages m"
                " JOIN mail_folders f ON f.id = m.folder_id ORDER BY m.uid"
            )
            return [(unique_id(v, u), frozenset(flags)) for v, u, flags in cur.fetchall()]


class Client:
    """One connection: `send(b"CMD\\r\\n...")` runs every command the bytes hold, as the
    Trio adapter would, and returns the octets the server wrote."""

    def __init__(
        self,
        server: Server,
        *,
        client_ip: str = "127.0.0.1",
        tls: str | None = None,
        read_ahead: int = 0,
    ) -> None:
        self.logs: list[tuple[int, str]] = []
        self.session = Pop3Session(
            server.service,
            client_ip=client_ip,
            client_port=40000,
            log=lambda level, text: self.logs.append((level, text)),
            tls=tls,
            read_ahead=read_ahead,
        )
        #: The RETR/TOP answers that came from `ready`, and those `retrieve` read.
        self.ready = 0
        self.retrieved = 0
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
        assert self.line(b"USER " + ADDRESS.encode()) == b"+OK"
        return self.line(b"PASS " + password.encode())

    def close(self) -> None:
        """The connection is gone, as the adapter ends it."""
        self.session.closed()
        if self.session.cleanup_due:
            self.session.cleanup()

    def log_lines(self) -> list[str]:
        return [text for _level, text in self.logs]

    def _answer(self, event: object) -> bytes:
        session, send = self.session, self.conn.send
        if isinstance(event, pop3.Retr | pop3.Top):
            answer: Transfer | pop3.Err | None = session.ready(event)
            if answer is None:
                self.retrieved += 1
                answer = session.retrieve(event)
            else:
                self.ready += 1
            if isinstance(answer, pop3.Err):
                return send(answer)
            out = send(answer.reply)
            chunk = answer.first
            while chunk:
                out += send(pop3.MultilineData(data=chunk))
                chunk = b"" if answer.done else answer.read()
            answer.close()
            return out + send(session.transferred(answer))
        if isinstance(event, pop3.Pass | pop3.Auth):
            return self._login(event)
        if isinstance(event, pop3.Stls):
            reply = session.stls()
            out = send(reply)
            if isinstance(reply, pop3.Ok):
                self.conn.start_tls()
                session.tls_started(
                    TLS, "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"
                )
            return out
        if isinstance(event, pop3.Quit):
            return send(session.quit())
        assert isinstance(event, pop3.Event)
        return b"".join(send(answer) for answer in session.handle(event))

    def _login(self, event: pop3.Pass | pop3.Auth) -> bytes:
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
def server_extra() -> str:
    """More configuration for `server` (a test parametrizes it)."""
    return ""


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: pathlib.Path, server_extra: str) -> Server:
    """The Maildir server, or with ``parametrize("server", BACKENDS, indirect=True)``
    each backend in turn."""
    backend = getattr(request, "param", "maildir")
    db = request.getfixturevalue("pg_db") if backend == "postgresql" else None
    return Server(tmp_path, server_extra, db=db)


both_backends = pytest.mark.parametrize("server", BACKENDS, indirect=True)


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


def connect(server: Server, clients: list[Client], **kw: object) -> Client:
    client = Client(server, **kw)  # type: ignore[arg-type]
    clients.append(client)
    return client


def capa(client: Client) -> list[bytes]:
    answer = client.send(b"CAPA\r\n")
    assert answer.startswith(b"+OK Capability list follows\r\n")
    return answer.split(b"\r\n")[1:-2]


# --- the greeting and CAPA ------------------------------------------------------------------


def test_greeting_and_capa_before_login(server: Server, clients: list[Client]) -> None:
    client = connect(server, clients)
    assert client.greeting == b"+OK mx.example.test POP3 server ready\r\n"
    assert capa(client) == [
        b"TOP",
        b"UIDL",
        b"RESP-CODES",
        b"PIPELINING",
        b"USER",
        b"SASL PLAIN LOGIN SCRAM-SHA-256",
        b"AUTH-RESP-CODE",
        b"STLS",
        b"IMPLEMENTATION sansmail",
    ]
    assert client.log_lines() == ["connect from [127.0.0.1]:40000"]


def test_capa_without_certificate_and_under_implicit_tls(
    server: Server, clients: list[Client]
) -> None:
    implicit = connect(server, clients, tls=TLS)
    assert b"STLS" not in capa(implicit)
    server.service.tls_available = False
    plain = connect(server, clients)
    assert b"STLS" not in capa(plain)
    assert plain.line(b"STLS") == b"-ERR TLS not available"
    # Under TLS the core refuses STLS itself, as after an upgrade.
    assert implicit.line(b"STLS") == b"-ERR already using TLS"


def test_logins_refused_before_tls_then_allowed(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path, '[smtp]\nplaintext_auth = "never"\n')
    server.deliver(MESSAGES[0])
    client = Client(server)
    listed = capa(client)
    # RFC 2449 §6.2, §6.3: what is not listed must not be used.
    assert b"USER" not in listed
    assert not any(line.startswith(b"SASL") for line in listed)
    refused = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections: use STLS"
    assert client.line(b"USER " + ADDRESS.encode()) == refused
    assert client.line(b"PASS secret") == b"-ERR USER first"
    plain = b64(b"\0" + ADDRESS.encode() + b"\0secret")
    assert client.line(b"AUTH PLAIN " + plain) == refused
    assert client.line(b"STLS") == b"+OK Begin TLS negotiation"
    after = capa(client)
    assert b"USER" in after
    assert b"STLS" not in after
    size = len(wire(MESSAGES[0]))
    assert client.line(b"AUTH PLAIN " + plain) == b"+OK Logged in, 1 messages (%d octets)" % size
    assert (
        f"login: user=<{ADDRESS}>, method=PLAIN, rip=127.0.0.1, tls=TLSv1.3" in client.log_lines()
    )
    assert capa(client) == [
        b"TOP",
        b"UIDL",
        b"RESP-CODES",
        b"PIPELINING",
        b"IMPLEMENTATION sansmail",
    ]
    client.close()


def test_plaintext_login_outside_loopback_is_refused(server: Server, clients: list[Client]) -> None:
    client = connect(server, clients, client_ip="192.0.2.7")
    assert b"USER" not in capa(client)
    assert client.line(b"USER " + ADDRESS.encode()).startswith(b"-ERR [AUTH] ")


# --- logging in ---------------------------------------------------------------------------


def test_user_pass_login_and_wrong_password(server: Server, clients: list[Client]) -> None:
    server.deliver(*MESSAGES[:2])
    client = connect(server, clients)
    assert client.login("wrong") == b"-ERR [AUTH] Authentication failed"
    assert client.line(b"STAT") == b"-ERR command not valid in this state"
    size = sum(len(wire(m)) for m in MESSAGES[:2])
    assert client.login() == b"+OK Logged in, 2 messages (%d octets)" % size
    assert client.log_lines()[1:] == [
        f"auth failed: service=pop3, method=USER, user=<{ADDRESS}>, rip=127.0.0.1",
        "[127.0.0.1]:40000: -ERR STAT not valid in the AUTHORIZATION state: STAT",
        f"login: user=<{ADDRESS}>, method=USER, rip=127.0.0.1, tls=no",
    ]


def test_throttled_client_gets_sys_temp_without_a_check(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path, max_failures=2)
    client = Client(server, client_ip="192.0.2.7", tls=TLS)
    answers = [client.login(f"guess{n}") for n in range(2)]
    answers.append(client.login())  # even the right password
    answers.append(client.line(b"AUTH PLAIN " + b64(b"\0" + ADDRESS.encode() + b"\0secret")))
    assert answers[:2] == [b"-ERR [AUTH] Authentication failed"] * 2
    assert answers[2:] == [b"-ERR [SYS/TEMP] Too many authentication failures, try again later"] * 2
    lines = client.log_lines()
    assert sum(line.startswith("auth failed: service=pop3, method=USER") for line in lines) == 2
    assert sum(line.startswith("auth throttled: service=pop3, ") for line in lines) == 2
    client.close()


def test_auth_exchanges(server: Server, clients: list[Client]) -> None:
    client = connect(server, clients)
    plain = b64(b"\0" + ADDRESS.encode() + b"\0secret")
    assert client.line(b"AUTH CRAM-MD5") == b"-ERR Unrecognized authentication type"
    assert client.send(b"AUTH PLAIN\r\n*\r\n") == b"+ \r\n-ERR Authentication cancelled\r\n"
    assert client.send(b"AUTH LOGIN\r\n!!\r\n") == (
        b"+ " + b64(b"Username:") + b"\r\n-ERR invalid base64\r\n"
    )
    assert client.send(
        b"AUTH LOGIN " + b64(b"alice@example.test") + b"\r\n" + b64(b"bad") + b"\r\n"
    ) == (b"+ " + b64(b"Password:") + b"\r\n-ERR [AUTH] Authentication failed\r\n")
    assert client.send(b"AUTH PLAIN\r\n" + plain + b"\r\n") == (
        b"+ \r\n+OK Logged in, 0 messages (0 octets)\r\n"
    )
    assert client.line(b"AUTH PLAIN") == b"-ERR command not valid in this state"
    assert f"login: user=<{ADDRESS}>, method=PLAIN, rip=127.0.0.1, tls=no" in client.log_lines()


def test_client_gone_mid_exchange_ends_the_session(server: Server) -> None:
    # Step by step, as the adapter would: the client leaves instead of answering.
    client = Client(server)
    client.conn.receive_data(b"AUTH LOGIN\r\n")
    event = client.conn.next_event()
    assert isinstance(event, pop3.Auth)
    assert client.session.login_refusal(event) is None
    exchange = client.session.exchange(event, client.session.login(), nonce="n", now=0.0)
    step = exchange.start()
    assert isinstance(step, sasl.Challenge)
    client.conn.send(pop3.Challenge(data=step.data))
    client.conn.receive_data(b"")
    gone = client.conn.next_event()
    assert isinstance(gone, pop3.ConnectionClosed)
    assert exchange.answer(None) is FINISHED
    assert client.session.login_result(event, exchange.finish(0.0), gone) is None
    assert client.session.ended
    client.close()
    assert client.log_lines()[-1] == "disconnect: rip=127.0.0.1, no login, reason=connection closed"


@both_backends
def test_maildrop_in_use(server: Server, clients: list[Client]) -> None:
    server.deliver(MESSAGES[0])
    first = connect(server, clients)
    assert first.login().startswith(b"+OK")
    second = connect(server, clients)
    assert second.login() == b"-ERR [IN-USE] Maildrop already locked by another POP3 session"
    assert second.line(b"STAT") == b"-ERR command not valid in this state"  # AUTHORIZATION
    assert "login refused: user=<alice@example.test>, rip=127.0.0.1, maildrop in use" in (
        second.log_lines()
    )
    first.close()  # the lock goes with the session
    assert second.login().startswith(b"+OK Logged in, 1 messages")


# --- TRANSACTION ----------------------------------------------------------------------------


@both_backends
def test_numbering_list_uidl_stat_dele_rset(server: Server, clients: list[Client]) -> None:
    names = server.deliver(*MESSAGES)
    sizes = [len(wire(m)) for m in MESSAGES]
    client = connect(server, clients)
    client.login()
    assert client.line(b"STAT") == b"+OK 3 %d" % sum(sizes)
    assert client.send(b"LIST\r\n") == (
        b"+OK 3 messages (%d octets)\r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n" % (sum(sizes), *sizes)
    )
    assert client.send(b"UIDL\r\n") == (
        b"+OK\r\n"
        + b"".join(
            b"%d %s\r\n" % (n, server.uidl(name).encode()) for n, name in enumerate(names, 1)
        )
        + b".\r\n"
    )
    assert client.line(b"DELE 2") == b"+OK Message 2 deleted"
    for command in (b"DELE 2", b"RETR 2", b"LIST 2", b"UIDL 2", b"TOP 2 0"):
        assert client.line(command) == b"-ERR Message 2 already deleted"
    assert client.line(b"LIST 4") == b"-ERR No such message, only 3 messages in maildrop"
    assert client.line(b"LIST 3") == b"+OK 3 %d" % sizes[2]
    assert client.line(b"UIDL 3") == b"+OK 3 " + server.uidl(names[2]).encode()
    assert client.line(b"STAT") == b"+OK 2 %d" % (sizes[0] + sizes[2])
    assert client.send(b"LIST\r\n") == (
        b"+OK 2 messages (%d octets)\r\n1 %d\r\n3 %d\r\n.\r\n"
        % (sizes[0] + sizes[2], sizes[0], sizes[2])
    )
    assert client.line(b"RSET") == b"+OK Maildrop has 3 messages (%d octets)" % sum(sizes)
    assert client.line(b"NOOP") == b"+OK"
    assert client.line(b"QUIT") == b"+OK Logging out, 0 messages deleted"
    assert len(server.flags()) == 3


@both_backends
def test_retr_and_top_exact_octets_and_stuffing(server: Server, clients: list[Client]) -> None:
    server.deliver(*MESSAGES[:2])
    client = connect(server, clients)
    client.login()
    first = wire(MESSAGES[0])
    assert client.send(b"RETR 1\r\n") == (
        b"+OK %d octets\r\n" % len(first) + first.replace(b"\r\n.a", b"\r\n..a") + b".\r\n"
    )
    assert client.send(b"TOP 2 1\r\n") == (
        b"+OK Top of message follows\r\nSubject: second\r\nX-Two: 2\r\n\r\nline 1\r\n.\r\n"
    )
    assert client.send(b"TOP 2 0\r\n") == (
        b"+OK Top of message follows\r\nSubject: second\r\nX-Two: 2\r\n\r\n.\r\n"
    )


BIG = b"Subject: big\n\n" + b"".join(
    b".%06d ........................................................\n" % n for n in range(8000)
)


@both_backends
def test_big_retr_is_read_in_chunks(server: Server, clients: list[Client]) -> None:
    server.deliver(BIG)
    client = connect(server, clients)
    client.login()
    client.conn.receive_data(b"RETR 1\r\n")
    event = client.conn.next_event()
    assert isinstance(event, pop3.Retr)
    answer = client.session.retrieve(event)
    assert isinstance(answer, Transfer)
    chunks = [answer.first]
    while not answer.done:
        chunks.append(answer.read())
    assert b"".join(chunks) == wire(BIG)
    # At most about READ_AHEAD octets in memory at a time (one file read past it).
    assert len(chunks) >= 3
    assert max(len(c) for c in chunks) < 2 * pop3d.READ_AHEAD + 2 * 1024
    assert answer.octets == len(b"".join(chunks))
    assert answer.reply == pop3.Ok(text=f"{answer.octets} octets")
    client.conn.send(answer.reply)
    for chunk in chunks:
        client.conn.send(pop3.MultilineData(data=chunk))
    client.conn.send(client.session.transferred(answer))
    client.line(b"QUIT")
    client.close()
    assert f"retr=1/{answer.octets}" in client.log_lines()[-1]


@both_backends
def test_retr_in_order_is_read_ahead(server: Server, clients: list[Client]) -> None:
    contents = [b"Subject: %d\n\n.dot %d\n" % (n, n) + b"x" * (n * 40) + b"\n" for n in range(12)]
    server.deliver(*contents)
    plain = connect(server, clients)
    ahead = connect(server, clients, read_ahead=700)
    answers = []
    for client in (plain, ahead):
        client.login()
        answers.append([client.send(b"RETR %d\r\n" % n) for n in range(1, 13)])
        client.send(b"RSET\r\n")
        client.close()  # releases the lock for the next client
    assert answers[0] == answers[1]
    assert (
        answers[1][3]
        == b"+OK %d octets\r\n" % len(wire(contents[3]))
        + wire(contents[3]).replace(b"\r\n.dot", b"\r\n..dot")
        + b".\r\n"
    )
    # Whole messages that fit in the budget (700 octets) come from memory, and no message
    # is read twice.
    assert (plain.retrieved, plain.ready) == (12, 0)
    assert ahead.retrieved + ahead.ready == 12
    assert ahead.ready >= 8
    assert ahead.log_lines()[-1] == plain.log_lines()[-1]


@both_backends
def test_read_ahead_leaves_deleted_messages_and_top_to_retrieve(
    server: Server, clients: list[Client]
) -> None:
    names = server.deliver(*MESSAGES)
    client = connect(server, clients, read_ahead=10_000)
    client.login()
    client.send(b"RETR 1\r\n")
    assert client.line(b"DELE 2") == b"+OK Message 2 deleted"
    assert client.line(b"RETR 2") == b"-ERR Message 2 already deleted"
    top = client.send(b"TOP 3 0\r\n")
    assert top == b"+OK Top of message follows\r\nSubject: third\r\n\r\n.\r\n"
    assert (client.ready, client.retrieved) == (0, 3)
    # Read ahead, then removed by another client: sent as it was read, as a RETR under
    # way would be (files never change, so it is the message the client asked for).
    server.remove(names[2])
    assert (
        client.send(b"RETR 3\r\n")
        == b"+OK %d octets\r\n" % len(wire(MESSAGES[2])) + wire(MESSAGES[2]) + b".\r\n"
    )
    assert client.ready == 1
    assert client.line(b"RETR 4") == b"-ERR No such message, only 3 messages in maildrop"


@both_backends
def test_a_message_bigger_than_the_budget_is_not_read_ahead(
    server: Server, clients: list[Client]
) -> None:
    server.deliver(MESSAGES[0], b"Subject: big\n\n" + b"y" * 5000 + b"\n", MESSAGES[2])
    client = connect(server, clients, read_ahead=1000)
    client.login()
    for n in (1, 2, 3):
        assert client.send(b"RETR %d\r\n" % n).startswith(b"+OK")
    # The big one stops the read-ahead after RETR 1; the RETR 2 that reads it from disk
    # reads the third ahead.
    assert (client.ready, client.retrieved) == (1, 2)


@both_backends
def test_message_removed_by_another_client(server: Server, clients: list[Client]) -> None:
    names = server.deliver(*MESSAGES[:2])
    client = connect(server, clients)
    client.login()
    server.remove(names[1])
    assert client.line(b"RETR 2") == b"-ERR Message 2 was removed by another client"
    assert (
        f"[127.0.0.1]:40000: message 2 ({server.uidl(names[1])}) removed by another client"
        in client.log_lines()
    )
    assert client.line(b"DELE 2") == b"+OK Message 2 deleted"
    assert client.line(b"QUIT") == b"+OK Logging out, 1 messages deleted"


# --- QUIT: deletions and \Seen ---------------------------------------------------------------


def test_quit_expunges_and_marks_retrieved_seen(server: Server, clients: list[Client]) -> None:
    names = server.deliver(*MESSAGES)
    sizes = [len(wire(m)) for m in MESSAGES]
    view = MaildirImapStore(server.config.data_dir, hostname="mx.example.test")
    inbox = view.account(ALICE).select("INBOX", readonly=True)
    assert [m.flags for m in inbox.messages] == [frozenset()] * 3
    client = connect(server, clients)
    client.login()
    client.send(b"RETR 1\r\nTOP 2 0\r\nRETR 3\r\nDELE 3\r\n")
    # (sorted: a Maildir name's microseconds are not zero-padded, so names do not sort
    # in delivery order)
    assert server.files() == {"new": sorted(names), "cur": []}  # nothing changes before QUIT
    assert client.line(b"QUIT") == b"+OK Logging out, 1 messages deleted"
    # RETR marks \Seen; TOP does not; a deleted message is just gone.
    assert server.files() == {"new": [names[1]], "cur": [names[0] + ":2,S"]}
    client.close()
    head = b"Subject: second\r\nX-Two: 2\r\n\r\n"
    assert client.log_lines()[-1] == (
        f"disconnect: user=<{ADDRESS}>, rip=127.0.0.1, top=1/{len(head)},"
        f" retr=2/{sizes[0] + sizes[2]}, del=1/3, size={sum(sizes)}, reason=logged out"
    )
    # The IMAP index reads the flag back from the name; UIDL and sizes stay.
    inbox.sync()
    assert [m.flags for m in inbox.messages] == [frozenset({"\\Seen"}), frozenset()]
    inbox.close()
    again = connect(server, clients)
    again.login()
    assert again.send(b"UIDL\r\n") == b"+OK\r\n1 %s\r\n2 %s\r\n.\r\n" % (
        names[0].encode(),
        names[1].encode(),
    )
    assert again.line(b"LIST 1") == b"+OK 1 %d" % sizes[0]


def test_seen_keeps_other_flags_and_leaves_seen_files_alone(
    server: Server, clients: list[Client]
) -> None:
    names = server.deliver(*MESSAGES)
    root = server.root
    os.rename(root / "new" / names[0], root / "cur" / (names[0] + ":2,RF"))
    os.rename(root / "new" / names[1], root / "cur" / (names[1] + ":2,S"))
    client = connect(server, clients)
    client.login()
    client.send(b"RETR 1\r\nRETR 2\r\n")
    assert client.line(b"QUIT") == b"+OK Logging out, 0 messages deleted"
    assert server.files() == {
        "new": [names[2]],
        "cur": sorted([names[0] + ":2,FRS", names[1] + ":2,S"]),
    }


def test_seen_follows_a_file_renamed_during_the_session(
    server: Server, clients: list[Client]
) -> None:
    (name,) = server.deliver(MESSAGES[0])
    client = connect(server, clients)
    client.login()
    client.send(b"RETR 1\r\n")
    # An IMAP client flags it meanwhile: the file is the truth, its flags are kept.
    os.rename(server.root / "new" / name, server.root / "cur" / (name + ":2,F"))
    assert client.line(b"QUIT").startswith(b"+OK")
    assert server.files() == {"new": [], "cur": [name + ":2,FS"]}


@both_backends
def test_quit_expunges_and_marks_seen_on_either_backend(
    server: Server, clients: list[Client]
) -> None:
    names = server.deliver(*MESSAGES)
    uidls = [server.uidl(name) for name in names]
    client = connect(server, clients)
    client.login()
    client.send(b"RETR 1\r\nTOP 2 0\r\nRETR 3\r\nDELE 3\r\n")
    assert server.flags() == [(u, frozenset()) for u in uidls]  # nothing before QUIT
    assert client.line(b"QUIT") == b"+OK Logging out, 1 messages deleted"
    # RETR marks \Seen; TOP does not; a deleted message is just gone.
    assert server.flags() == [(uidls[0], frozenset({"\\Seen"})), (uidls[1], frozenset())]
    client.close()
    again = connect(server, clients)
    assert again.login().startswith(b"+OK Logged in, 2 messages")
    assert again.send(b"UIDL\r\n") == b"+OK\r\n1 %s\r\n2 %s\r\n.\r\n" % (
        uidls[0].encode(),
        uidls[1].encode(),
    )


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_a_lost_database_connection_is_a_temporary_failure(
    server: Server, clients: list[Client]
) -> None:
    server.deliver(*MESSAGES)
    client = connect(server, clients)
    assert client.login().startswith(b"+OK Logged in, 3 messages")
    assert server.db is not None
    with server.db.connect(autocommit=True) as conn:  # a failover, or a killed backend
        conn.execute(
            "SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    assert client.line(b"RETR 2") == b"-ERR [SYS/TEMP] Cannot read the message"
    assert client.line(b"TOP 1 0") == b"-ERR [SYS/TEMP] Cannot read the message"
    assert client.line(b"DELE 3") == b"+OK Message 3 deleted"
    assert client.line(b"QUIT") == b"-ERR [SYS/TEMP] Some deleted messages not removed"
    assert client.session.ended
    client.close()
    errors = [text for level, text in client.logs if level == logging.ERROR]
    assert len(errors) == 3
    assert "database" in errors[0]
    # Nothing changed, and the lock went with the connection: the next session opens.
    again = connect(server, clients)
    assert again.login().startswith(b"+OK Logged in, 3 messages")
    assert [flags for _uidl, flags in server.flags()] == [frozenset()] * 3


def test_an_unreachable_database_refuses_the_login_for_now(tmp_path: pathlib.Path) -> None:
    down = Database("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    server = Server(tmp_path, db=down)
    client = Client(server)
    assert client.login() == b"-ERR [SYS/TEMP] Cannot open the maildrop, try again later"
    assert not client.session.ended  # still in AUTHORIZATION: the client may try again
    client.close()


@both_backends
def test_rset_forgets_the_seen_marks(server: Server, clients: list[Client]) -> None:
    names = server.deliver(*MESSAGES[:2])
    client = connect(server, clients)
    client.login()
    client.send(b"RETR 1\r\nRSET\r\nRETR 2\r\n")
    assert client.line(b"QUIT").startswith(b"+OK")
    assert server.flags() == [
        (server.uidl(names[0]), frozenset()),
        (server.uidl(names[1]), frozenset({"\\Seen"})),
    ]


@both_backends
@pytest.mark.parametrize("server_extra", ["[pop3]\nno_flag_updates = true\n"])
def test_no_flag_updates_marks_nothing(server: Server) -> None:
    names = server.deliver(*MESSAGES[:2])
    client = Client(server)
    client.login()
    client.send(b"RETR 1\r\nRETR 2\r\nDELE 2\r\n")
    assert client.line(b"QUIT") == b"+OK Logging out, 1 messages deleted"
    assert server.flags() == [(server.uidl(names[0]), frozenset())]
    client.close()


@both_backends
def test_dropped_connection_changes_nothing(server: Server) -> None:
    names = server.deliver(*MESSAGES[:2])
    client = Client(server)
    client.login()
    client.send(b"RETR 1\r\nDELE 2\r\n")
    assert client.send(b"") == b""
    assert client.session.ended
    client.close()
    assert server.flags() == [(server.uidl(name), frozenset()) for name in names]
    size = len(wire(MESSAGES[0])) + len(wire(MESSAGES[1]))
    assert client.log_lines()[-1].endswith(f", del=0/2, size={size}, reason=connection closed")


def test_quit_reports_files_it_cannot_remove(
    server: Server, clients: list[Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    names = server.deliver(*MESSAGES[:2])
    real_unlink, real_rename = os.unlink, os.rename

    def unlink(path: str) -> None:
        if os.path.basename(path) == names[0]:
            raise PermissionError(13, "Permission denied", path)
        real_unlink(path)

    def rename(src: str, dst: str) -> None:
        if os.path.basename(src) == names[1]:
            raise PermissionError(13, "Permission denied", src)
        real_rename(src, dst)

    client = connect(server, clients)
    client.login()
    client.send(b"DELE 1\r\nRETR 2\r\n")
    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "rename", rename)
    assert client.line(b"QUIT") == b"-ERR [SYS/TEMP] Some deleted messages not removed"
    errors = [text for level, text in client.logs if level == logging.ERROR]
    assert errors == [
        f"[127.0.0.1]:40000: user=<{ADDRESS}>: could not mark {names[1]} seen",
        f"[127.0.0.1]:40000: user=<{ADDRESS}>: could not remove {names[0]}",
    ]


def test_quit_before_login(server: Server) -> None:
    client = Client(server)
    assert client.line(b"QUIT") == b"+OK Bye"
    assert client.session.ended
    client.close()
    assert client.log_lines()[-1] == "disconnect: rip=127.0.0.1, no login, reason=logged out"


# --- endings --------------------------------------------------------------------------------


def test_refusal_timeout_shutdown_and_errors(server: Server) -> None:
    refused = Client.__new__(Client)
    refused.logs = []
    session = Pop3Session(
        server.service,
        client_ip="::ffff:192.0.2.1",
        client_port=1,
        log=lambda level, text: refused.logs.append((level, text)),
    )
    err = session.refuse(Refusal.TOO_MANY_CONNECTIONS)
    assert session.conn.send(err) == (
        b"-ERR [SYS/TEMP] mx.example.test Error: too many connections\r\n"
    )
    session.closed()
    assert not session.cleanup_due
    assert refused.log_lines() == [
        "connect from [::ffff:192.0.2.1]:1",
        "[::ffff:192.0.2.1]:1: refused: mx.example.test Error: too many connections",
        "disconnect: rip=192.0.2.1, no login, reason=refused",
    ]

    idle = Client(server)
    assert idle.session.timeout == pop3d.IDLE_TIMEOUT >= 600
    assert idle.session.last_words(idle.session.timeout_reply()) == (
        b"-ERR Autologout: idle for too long\r\n"
    )
    idle.close()
    assert idle.log_lines()[-2:] == [
        "[127.0.0.1]:40000: timeout",
        "disconnect: rip=127.0.0.1, no login, reason=timeout",
    ]

    stopping = Client(server)
    stopping.session.shutdown_reply()
    stopping.close()
    assert stopping.log_lines()[-1].endswith("reason=shutdown")

    broken = Client(server)
    with pytest.raises(RemoteProtocolError) as caught:
        broken.send(b"NOOP\n")
    broken.session.protocol_error(caught.value)
    assert broken.session.last_words(caught.value.reply_hint) == (
        b"-ERR bare CR or LF in a command line, closing\r\n"
    )
    assert broken.session.last_words(None) == b""
    broken.close()
    assert broken.log_lines()[-1].endswith("reason=protocol error")


def test_no_last_words_inside_a_multiline_answer(server: Server, clients: list[Client]) -> None:
    server.deliver(BIG)
    client = connect(server, clients)
    client.login()
    client.conn.receive_data(b"RETR 1\r\n")
    event = client.conn.next_event()
    assert isinstance(event, pop3.Retr)
    answer = client.session.retrieve(event)
    assert isinstance(answer, Transfer)
    client.conn.send(answer.reply)
    # A send timeout here: a -ERR would be read as message content.
    assert client.session.last_words(client.session.timeout_reply()) == b""
    assert client.session.last_words(client.session.internal_error()) == b""
    assert not answer.done
    client.close()  # closes the open message too
    with pytest.raises(OSError):
        answer.read()  # its file is closed
    assert client.log_lines()[-1].endswith("reason=internal error")


def test_invalid_commands_are_answered_and_logged(server: Server) -> None:
    client = Client(server)
    assert client.line(b"FROB \x01x") == b"-ERR unknown command"
    assert client.log_lines()[-1] == "[127.0.0.1]:40000: -ERR unknown command 'FROB': FROB \\x01x"
    client.close()


def test_handle_refuses_events_that_need_io(server: Server) -> None:
    client = Client(server)
    with pytest.raises(TypeError):
        client.session.handle(pop3.Quit())
    client.close()


def test_public_names() -> None:
    assert sorted(pop3d.__all__) == [
        "AUTH_THROTTLED",
        "Answer",
        "IDLE_TIMEOUT",
        "Pop3Service",
        "Pop3Session",
        "READ_AHEAD",
        "READ_AHEAD_BATCH",
        "Transfer",
    ]
