"""A driver for `ImapSession` tests: the real protocol core parses the client's lines
and writes the session's responses, so what the tests compare is the exact octets a
client would read."""

from __future__ import annotations

import itertools

from imap_backends import Where, make_imap_store

from sansmail import SERVER
from sansmail.imap import (
    Command,
    Connection,
    Continuation,
    LiteralRequested,
    Login,
    Tagged,
    UntaggedStatus,
)
from sansmail.mail.address import MailboxId
from sansmail.sessions.imapd import ImapSession, capabilities
from sansmail.storage.maildir import ImapStore

ALICE = MailboxId(domain="example.test", local="alice")
APPEND_LIMIT = 1_000_000
#: 2026-01-02 03:04:05 UTC, then one second more at every reading.
START_NS = 1_767_323_045 * 10**9


def fixed_clock() -> itertools.count[int]:
    return itertools.count(START_NS, 10**9)


def make_store(data_dir: Where) -> ImapStore:
    """The store of `data_dir`'s backend (a Maildir data_dir, or `imap_backends.PgWhere`)."""
    clock = fixed_clock()
    return make_imap_store(data_dir, hostname="mx.example.test", clock=lambda: next(clock))


class Client:
    """One logged-in session: `run(b"a1 NOOP")` returns the octets of the answer."""

    def __init__(
        self,
        data_dir: Where,
        *,
        store: ImapStore | None = None,
        rev2: bool = False,
        mailbox: MailboxId = ALICE,
    ) -> None:
        self.store = store or make_store(data_dir)
        self.session = ImapSession(
            self.store,
            mailbox,
            append_limit=APPEND_LIMIT,
            capabilities=capabilities(append_limit=APPEND_LIMIT, authenticated=True),
        )
        self.conn = Connection(SERVER)
        self.conn.send(UntaggedStatus(status="OK", text="ready"))
        self.conn.receive_data(b"a0 LOGIN alice secret\r\n")
        login = self.conn.next_event()
        assert isinstance(login, Login)
        self.conn.send(Tagged(tag="a0", status="OK", text="logged in"))
        if rev2:
            self.run(b"e0 ENABLE IMAP4rev2")

    def run(self, line: bytes, *literals: bytes) -> bytes:
        """Send one command and return the whole answer. `line` ends at the first
        literal's "{n}"; each of `literals` is a literal's octets followed by the rest of
        the command up to the next "{n}" (no CRLF: added here)."""
        self.conn.receive_data(line + b"\r\n")
        out = b""
        pending = list(literals)
        while True:
            event = self.conn.next_event()
            if isinstance(event, LiteralRequested):
                out += self.conn.send(Continuation(text="go ahead"))
                self.conn.receive_data(pending.pop(0) + b"\r\n")
                continue
            assert isinstance(event, Command), event
            responses = self.session.handle(event, rev2=self.conn.imap4rev2, utf8=self.conn.utf8)
            return out + b"".join(self.conn.send(r) for r in responses)

    def lines(self, line: bytes, *literals: bytes) -> list[bytes]:
        return self.run(line, *literals).split(b"\r\n")[:-1]

    def close(self) -> None:
        self.session.close()
