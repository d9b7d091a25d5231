"""Several IMAP sessions on one INBOX against a running server, and a model of what each
must have been told: the harness of test_imap_interleaved*.py (issue 13 item 7).

`Session` is a deliberately small blocking IMAP client that keeps every untagged
response in the order it came (imaplib files them in a dict by name, which loses the
order EXPUNGE numbers depend on). Each session keeps its `View`, the list of messages as
the server's responses told it: ``* n EXISTS`` grows it, ``* n EXPUNGE`` removes the
n-th, ``* n FETCH (... FLAGS ...)`` changes the n-th's flags, and nothing else does, as
RFC 9051 §7.5.1 wants of a client. New messages get their UIDs from a FETCH of the new
sequence numbers only, so a flag change made by another session reaches the view only
if the server sent it.

`World` holds the sessions and the `model` of the INBOX: UID -> flags as the operations
made them (the test's own account of STORE, EXPUNGE, MOVE, COPY, APPEND, deliveries and
POP3 DELE, worked out without asking the server), and `check` compares every session's
view with it, and the model with the folder's index on disk. A step's operation runs in
one session (or over SMTP, or POP3); each operation asserts what its own responses say
(no EXPUNGE inside FETCH, STORE or SEARCH, RFC 9051 §7.5.1; the FETCH replies of STORE
giving the model's flags; COPYUID/APPENDUID) before the model moves on.

The server must show a change at the next NOOP of any session, whichever process made
it: a NOOP is not polled. An idling session learns through inotify, so `idle_until`
waits for the news with a bound (`WAIT`), which is the one wait here.
"""

from __future__ import annotations

import os
import poplib
import re
import smtplib
import socket
import sqlite3
import ssl
import time
from collections.abc import Iterable, Sequence

import attrs

from sansmail.storage.maildir._imapindex import INDEX_NAME
from sansmail.storage.maildir._imapmaildir import flags_of

ALICE = "alice@example.test"
#: How long an idler may take to hear of a change (what is measured is milliseconds).
WAIT = 10.0
#: The flags the operations use; \\Recent is the server's and left out of comparisons.
FLAGS = ("\\Seen", "\\Flagged", "\\Deleted", "\\Answered", "$Label1")

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")
_NUMBERED = re.compile(rb"\* (\d+) (EXISTS|EXPUNGE|RECENT|FETCH)\b ?(.*)$", re.DOTALL)
_FETCH_UID = re.compile(rb"\bUID (\d+)")
_FETCH_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_FETCH_MODSEQ = re.compile(rb"\bMODSEQ \((\d+)\)")
_HIGHEST = re.compile(rb"\[HIGHESTMODSEQ (\d+)\]")
_CODE = re.compile(rb"\[([A-Z]+) ([^\]]*)\]")


def message(number: int) -> bytes:
    return (
        f"From: bob@example.org\r\nTo: {ALICE}\r\nSubject: message {number}\r\n"
        f"Message-ID: <{number}@example.org>\r\n\r\nBody of {number}.\r\n"
    ).encode()


def _flags(raw: bytes) -> frozenset[str]:
    return frozenset(f for f in raw.decode().split() if f != "\\Recent")


class ProtocolViolationError(AssertionError):
    """The server said something a client could not make sense of."""


@attrs.define
class View:
    """One session's messages as the server told it: sequence number n is ``uids[n-1]``
    (None until a FETCH gave its UID), with `flags` by UID."""

    uids: list[int | None] = attrs.Factory(list)
    flags: dict[int, frozenset[str]] = attrs.Factory(dict)
    #: CONDSTORE: the last MODSEQ told per UID and HIGHESTMODSEQ, neither of which may
    #: go back (RFC 7162 §3.1.1, §3.1.2).
    modseqs: dict[int, int] = attrs.Factory(dict)
    highest: int = 0

    def apply(self, line: bytes, *, expunge_allowed: bool) -> None:
        if line.startswith(b"* VANISHED"):
            self._vanished(line, expunge_allowed=expunge_allowed)
            return
        highest = _HIGHEST.search(line)
        if highest is not None and line.startswith(b"* OK"):
            if int(highest[1]) < self.highest:
                raise ProtocolViolationError(f"HIGHESTMODSEQ below {self.highest}: {line!r}")
            self.highest = int(highest[1])
        match = _NUMBERED.match(line)
        if match is None:
            return
        number, kind, rest = int(match[1]), match[2], match[3]
        if kind == b"EXISTS":
            if number < len(self.uids):
                raise ProtocolViolationError(f"EXISTS {number} below {len(self.uids)}: {line!r}")
            self.uids += [None] * (number - len(self.uids))
        elif kind == b"EXPUNGE":
            if not expunge_allowed:
                raise ProtocolViolationError(f"EXPUNGE inside FETCH/STORE/SEARCH: {line!r}")
            if not 1 <= number <= len(self.uids):
                raise ProtocolViolationError(f"EXPUNGE {number} of {len(self.uids)}")
            uid = self.uids.pop(number - 1)
            if uid is not None:
                self.flags.pop(uid, None)
        elif kind == b"FETCH":
            if not 1 <= number <= len(self.uids):
                raise ProtocolViolationError(f"FETCH {number} of {len(self.uids)}: {line!r}")
            uid_match = _FETCH_UID.search(rest)
            uid = self.uids[number - 1]
            if uid_match is not None:
                told = int(uid_match[1])
                if uid is not None and uid != told:
                    raise ProtocolViolationError(f"message {number} is UID {uid}, not: {line!r}")
                self.uids[number - 1] = uid = told
            modseq = _FETCH_MODSEQ.search(rest)
            if modseq is not None and uid is not None:
                if int(modseq[1]) < self.modseqs.get(uid, 0):
                    raise ProtocolViolationError(
                        f"MODSEQ of UID {uid} below {self.modseqs[uid]}: {line!r}"
                    )
                self.modseqs[uid] = int(modseq[1])
            flags = _FETCH_FLAGS.search(rest)
            if flags is not None:
                if uid is None:
                    raise ProtocolViolationError(f"FLAGS for a message of unknown UID: {line!r}")
                self.flags[uid] = _flags(flags[1])

    def _vanished(self, line: bytes, *, expunge_allowed: bool) -> None:
        """``* VANISHED uid-set`` (QRESYNC, RFC 7162 §3.2.10): EXPUNGE by UID, under the
        same rule; (EARLIER) answers only what this harness never asks."""
        words = line.split()
        if words[2:3] == [b"(EARLIER)"] or len(words) != 3:
            raise ProtocolViolationError(f"unasked for: {line!r}")
        if not expunge_allowed:
            raise ProtocolViolationError(f"VANISHED inside FETCH/STORE/SEARCH: {line!r}")
        for uid in _expand(words[2]):
            if uid not in self.uids:
                raise ProtocolViolationError(f"VANISHED of UID {uid} never told: {line!r}")
            self.uids.remove(uid)
            self.flags.pop(uid, None)

    def known(self) -> list[tuple[int, frozenset[str]]]:
        return [(uid, self.flags.get(uid, frozenset())) for uid in self.uids if uid is not None]


@attrs.define(eq=False)
class Session:
    """A blocking IMAP client keeping its untagged responses in order (see the module
    docstring). `process`: which server process holds the connection, where known."""

    name: str
    sock: socket.socket
    view: View = attrs.Factory(View)
    process: int | None = None
    #: Opens the INBOX with EXAMINE: STORE, EXPUNGE and MOVE are refused, CLOSE
    #: expunges nothing, FETCH BODY[] sets no \\Seen (RFC 9051 §6.3.3).
    readonly: bool = False
    _buffer: bytes = b""
    _tags: int = 0
    idle_tag: str | None = None
    #: Every untagged response since the session began, for failure messages.
    transcript: list[bytes] = attrs.Factory(list)

    @classmethod
    def connect(
        cls, name: str, port: int, context: ssl.SSLContext | None = None, *, enable: str = ""
    ) -> Session:
        """Connected and logged in; `enable`: what to ENABLE ("IMAP4rev2 QRESYNC"), and
        EXAMINE among them for a `readonly` session."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
        session = cls(name, sock)
        greeting = session.read_response()
        assert greeting.startswith(b"* OK"), greeting
        session.log_in(enable=enable)
        return session

    def log_in(self, *, enable: str = "") -> None:
        self.command(f"LOGIN {ALICE} secret")
        words = enable.split()
        self.readonly = "EXAMINE" in words
        if extensions := [word for word in words if word != "EXAMINE"]:
            self.command(f"ENABLE {' '.join(extensions)}")

    def select(self) -> None:
        self.command("EXAMINE INBOX" if self.readonly else "SELECT INBOX")

    # -- the wire -------------------------------------------------------------------

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"{self.name}: the server closed the connection")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line + b"\r\n"

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"{self.name}: the server closed the connection")
            self._buffer += data
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def read_response(self) -> bytes:
        """One response, literals inline, without its final CRLF."""
        line = self._line()
        while (literal := _LITERAL.search(line)) is not None:
            line += self._exactly(int(literal[1])) + self._line()
        return line[:-2]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(
        self, text: str, *, literal: bytes | None = None, expunge_allowed: bool = True
    ) -> tuple[bytes, list[bytes]]:
        """Send a command, apply its untagged responses to the view; (tagged line,
        untagged lines). A tagged NO or BAD raises unless the caller checks it: see
        `try_command`."""
        tagged, untagged = self.try_command(text, literal=literal, expunge_allowed=expunge_allowed)
        if not tagged.split(b" ", 2)[1:2] == [b"OK"]:
            raise AssertionError(f"{self.name}: {text!r} -> {tagged!r}")
        return tagged, untagged

    def try_command(
        self, text: str, *, literal: bytes | None = None, expunge_allowed: bool = True
    ) -> tuple[bytes, list[bytes]]:
        self._tags += 1
        tag = f"{self.name}{self._tags}"
        if literal is None:
            self.send(f"{tag} {text}\r\n".encode())
        else:
            self.send(f"{tag} {text} {{{len(literal)}}}\r\n".encode())
            ready = self.read_response()
            assert ready.startswith(b"+"), ready
            self.send(literal + b"\r\n")
        untagged: list[bytes] = []
        while True:
            response = self.read_response()
            if response.startswith(tag.encode() + b" "):
                return response, untagged
            untagged.append(response)
            self.transcript.append(response)
            self.view.apply(response, expunge_allowed=expunge_allowed)

    # -- IDLE -----------------------------------------------------------------------

    def idle(self) -> None:
        self._tags += 1
        self.idle_tag = f"{self.name}{self._tags}"
        self.send(f"{self.idle_tag} IDLE\r\n".encode())
        ready = self.read_response()
        assert ready.startswith(b"+"), ready

    def idle_read(self, deadline: float) -> bool:
        """Apply one response that comes before `deadline` (False: none came)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            response = self.read_response()
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(WAIT)
        self.transcript.append(response)
        self.view.apply(response, expunge_allowed=True)
        return True

    def done(self) -> None:
        tag, self.idle_tag = self.idle_tag, None
        assert tag is not None
        self.send(b"DONE\r\n")
        while True:
            response = self.read_response()
            if response.startswith(tag.encode() + b" "):
                assert response.startswith(tag.encode() + b" OK"), response
                return
            self.transcript.append(response)
            self.view.apply(response, expunge_allowed=True)

    def close(self) -> None:
        try:
            if self.idle_tag is not None:
                self.done()
            self.try_command("LOGOUT")
        except (OSError, ConnectionError, AssertionError):
            pass
        self.sock.close()


class World:
    """The sessions, the model of the INBOX, and the operations of a step (see the
    module docstring). `inbox`: the INBOX's directory, whose index is read to check."""

    def __init__(
        self,
        sessions: Sequence[Session],
        *,
        inbox: str,
        smtp_port: int,
        pop3_port: int | None = None,
        archive_watcher: Session | None = None,
    ) -> None:
        self.sessions = list(sessions)
        self.inbox = inbox
        self.smtp_port = smtp_port
        self.pop3_port = pop3_port
        #: A session with the Archive selected, which must see what COPY and MOVE put
        #: there arrive (EXISTS), as the INBOX's sessions see theirs.
        self.archive_watcher = archive_watcher
        #: UID -> flags: what the INBOX must hold.
        self.model: dict[int, frozenset[str]] = {}
        #: Delivered messages no session has seen yet (their UIDs are the server's).
        self.pending = 0
        self.archive = 0
        self.delivered = 0
        #: The operations so far, for failure messages.
        self.log: list[str] = []
        for session in self.sessions:
            session.select()
            self.learn(session, initial=not self.model)
            if not self.model:
                self.model = dict(session.view.known())
        archive = self.sessions[0].command("STATUS Archive (MESSAGES)")[1][-1]
        found = re.search(rb"MESSAGES (\d+)", archive)
        assert found is not None, archive
        self.archive = int(found[1])
        if archive_watcher is not None:
            archive_watcher.command("SELECT Archive")
            assert len(archive_watcher.view.uids) == self.archive

    # -- learning -------------------------------------------------------------------

    def learn(self, session: Session, *, initial: bool = False) -> None:
        """Give the view's new messages their UIDs (a FETCH of the new numbers only) and
        take the delivered ones into the model."""
        view = session.view
        unknown = [n for n, uid in enumerate(view.uids, 1) if uid is None]
        if unknown:
            before = [uid for uid in view.uids if uid is not None]
            session.command(f"FETCH {unknown[0]}:* (UID FLAGS)", expunge_allowed=False)
            assert None not in view.uids, (session.name, view.uids)
            uids = [uid for uid in view.uids if uid is not None]
            assert uids == sorted(set(uids)), f"{session.name}: UIDs out of order {uids}"
            for uid in uids[len(before) :]:
                if uid in self.model or initial:
                    continue
                # Not made by an operation the model knows the UID of: a delivery.
                assert self.pending > 0, f"{session.name}: unexpected UID {uid}; {self.log}"
                assert view.flags.get(uid, frozenset()) == frozenset(), (uid, view.flags)
                self.pending -= 1
                self.model[uid] = frozenset()

    def expected(self) -> list[tuple[int, frozenset[str]]]:
        return sorted(self.model.items())

    # -- checks ---------------------------------------------------------------------

    def noop_all(self) -> None:
        """Every session's NOOP, then `check` (and the Archive's watcher)."""
        for session in self.sessions:
            session.command("NOOP")
            self.learn(session)
        self.check()
        if self.archive_watcher is not None:
            self.archive_watcher.command("NOOP")
            assert len(self.archive_watcher.view.uids) == self.archive, self.log

    def check(self, sessions: Iterable[Session] | None = None) -> None:
        assert self.pending == 0, f"a delivery no session saw; {self.log}"
        expected = self.expected()
        for session in self.sessions if sessions is None else sessions:
            known = session.view.known()
            assert known == expected, (
                f"{session.name} sees {known}, the model {expected}; after {self.log}; "
                f"{session.name} heard {session.transcript[-20:]}"
            )
        assert self.stored() == dict(expected), (self.stored(), expected, self.log)

    def check_archive(self) -> None:
        """The Archive holds what COPY and MOVE put there."""
        status = self.sessions[0].command("STATUS Archive (MESSAGES)")[1][-1]
        assert f"MESSAGES {self.archive})".encode() in status, (status, self.archive)

    def stored(self) -> dict[int, frozenset[str]]:
        """UID -> flags in the INBOX's index, after checking that each row's file is
        there (the index of a folder every session has just synced)."""
        conn = sqlite3.connect(
            f"file:{os.path.join(self.inbox, INDEX_NAME)}?mode=ro", uri=True, timeout=10
        )
        try:
            rows = conn.execute("SELECT uid, name, flags, keywords FROM messages").fetchall()
        finally:
            conn.close()
        files = {
            f"{sub}/{name}" for sub in ("new", "cur") for name in os.listdir(f"{self.inbox}/{sub}")
        }
        assert {row[1] for row in rows} == files, (rows, files)
        return {
            uid: frozenset(f for f in flags_of(bits, keywords.split()) if f != "\\Recent")
            for uid, _name, bits, keywords in rows
        }

    def idle_until(self, idlers: Iterable[Session]) -> None:
        """Wait (at most `WAIT` s) until each idler's view shows the model, then DONE."""
        expected = self.expected()
        uids = [uid for uid, _f in expected]
        for session in idlers:
            deadline = time.monotonic() + WAIT
            view = session.view
            # Until it is told, a new message's UID is None; the FETCH after DONE gives it.
            while not (
                len(view.uids) == len(uids) + self.pending
                and all(seen in (None, uid) for seen, uid in zip(view.uids, uids, strict=False))
                and all(view.flags.get(uid, flags) == flags for uid, flags in expected)
            ):
                if not session.idle_read(deadline):
                    raise AssertionError(
                        f"idling {session.name} did not hear within {WAIT} s: it sees "
                        f"{view.uids} {view.flags}, the model {expected} + {self.pending} "
                        f"delivered; after {self.log}"
                    )
            session.done()
        for session in idlers:
            self.learn(session)

    # -- operations -----------------------------------------------------------------

    def _uids(self, session: Session, numbers: Iterable[int]) -> list[int]:
        uids = session.view.uids
        return [u for n in numbers if 1 <= n <= len(uids) and (u := uids[n - 1]) is not None]

    def store(
        self,
        session: Session,
        targets: Sequence[int],
        mode: str,
        flags: Sequence[str],
        *,
        uid: bool,
        silent: bool = False,
    ) -> None:
        """[UID] STORE `targets` (UIDs or sequence numbers) ``{mode}FLAGS`` (mode: "+",
        "-" or "")."""
        self.log.append(f"{session.name} {'UID ' * uid}STORE {targets} {mode}{flags} {silent}")
        if not targets:
            return
        item = f"{mode}FLAGS{'.SILENT' * silent}"
        command = f"{'UID ' * uid}STORE {_set(targets)} {item} ({' '.join(flags)})"
        if session.readonly:
            self._refused(session, command, expunge_allowed=uid)
            return
        view = session.view
        uids = [u for u in targets if u in view.flags] if uid else self._uids(session, targets)
        new: dict[int, frozenset[str]] = {}
        for u in uids:
            if u in self.model:
                new[u] = self.model[u] = _change(self.model[u], mode, flags)
        if silent:
            # What the client believes from now on (RFC 9051 §6.4.6: no FETCH comes); the
            # server must correct it at a sync if another session's change made it wrong.
            for u in uids:
                view.flags[u] = _change(view.flags[u], mode, flags)
        positions = {u: n for n, u in enumerate(view.uids, 1)}
        _tagged, untagged = session.command(command, expunge_allowed=uid)
        fetched = {
            int(m[1]): _flags(f[1])
            for line in untagged
            if (m := re.match(rb"\* (\d+) FETCH", line)) and (f := _FETCH_FLAGS.search(line))
        }
        if not silent:
            # Each stored message that is still there answers with its new flags (those
            # of the model: other sessions' changes included). A message expunged by
            # another session meanwhile may be left out.
            for u, flags_now in new.items():
                number = positions[u]
                if uid:
                    # The updates after a UID STORE may renumber: find it by UID.
                    assert view.flags.get(u, flags_now) == flags_now, (u, view.flags, new)
                else:
                    assert fetched.get(number) == flags_now, (number, fetched, new, untagged)
        self.learn(session)

    def _refused(self, session: Session, command: str, *, expunge_allowed: bool = True) -> None:
        """A change asked of an EXAMINEd folder: NO, and nothing changed."""
        tagged, _untagged = session.try_command(command, expunge_allowed=expunge_allowed)
        assert tagged.split(b" ", 2)[1] == b"NO", (command, tagged)
        self.learn(session)

    def expunge(self, session: Session, uids: Sequence[int] | None = None) -> None:
        """EXPUNGE, or UID EXPUNGE `uids`: of the session's messages, those \\Deleted."""
        self.log.append(f"{session.name} {'UID ' * (uids is not None)}EXPUNGE {uids}")
        if uids is not None and not uids:
            return
        if session.readonly:
            self._refused(session, "EXPUNGE" if uids is None else f"UID EXPUNGE {_set(uids)}")
            return
        scope = set(session.view.flags) if uids is None else set(uids) & set(session.view.flags)
        gone = {u for u in scope if "\\Deleted" in self.model.get(u, ())}
        if uids is None:
            session.command("EXPUNGE")
        else:
            session.command(f"UID EXPUNGE {_set(uids)}")
        for u in gone:
            del self.model[u]
        self.learn(session)
        assert not gone & set(session.view.flags), (gone, session.view.uids)

    def copy(
        self, session: Session, targets: Sequence[int], dest: str, *, uid: bool, move: bool
    ) -> None:
        """[UID] COPY or MOVE `targets` into `dest` (INBOX or Archive)."""
        verb = "MOVE" if move else "COPY"
        self.log.append(f"{session.name} {'UID ' * uid}{verb} {targets} {dest}")
        if not targets:
            return
        if move and session.readonly:
            self._refused(session, f"{'UID ' * uid}MOVE {_set(targets)} {dest}")
            return
        view = session.view
        uids = sorted(
            {u for u in targets if u in view.flags} if uid else set(self._uids(session, targets))
        )
        tagged, untagged = session.try_command(f"{'UID ' * uid}{verb} {_set(targets)} {dest}")
        if any(u not in self.model for u in uids):
            # A message expunged by another session: all or nothing (RFC 9051 §6.4.7).
            if b" NO " in tagged:
                assert b"[EXPUNGEISSUED]" in tagged, tagged
                self.learn(session)
                return
        assert b" OK " in tagged, (tagged, untagged, self.log)
        if uids:
            code = next(
                (
                    c
                    for line in [*untagged, tagged]
                    for c in _CODE.findall(line)
                    if c[0] == b"COPYUID"
                ),
                None,
            )
            assert code is not None, (tagged, untagged)
            _validity, sources, dests = code[1].split()
            assert _expand(sources) == uids, (sources, uids)
            created = _expand(dests)
            assert len(created) == len(uids)
            if dest == "INBOX":
                for source, made in zip(uids, created, strict=True):
                    self.model[made] = self.model[source]
            else:
                self.archive += len(uids)
            if move:
                for u in uids:
                    del self.model[u]
        self.learn(session)

    def append(self, session: Session, flags: Sequence[str]) -> None:
        self.log.append(f"{session.name} APPEND {flags}")
        self.delivered += 1
        tagged, _untagged = session.command(
            f"APPEND INBOX ({' '.join(flags)})", literal=message(1000 + self.delivered)
        )
        code = dict(_CODE.findall(tagged))
        _validity, made = code[b"APPENDUID"].split()
        self.model[int(made)] = frozenset(flags)
        self.learn(session)

    def deliver(self, count: int = 1) -> None:
        self.log.append(f"deliver {count}")
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=WAIT) as smtp:
            for _ in range(count):
                self.delivered += 1
                smtp.sendmail("bob@example.org", [ALICE], message(self.delivered))
                self.pending += 1

    def uidls(self, uids: Sequence[int]) -> dict[str, int]:
        """UIDL -> UID of the messages of `uids` (here the file's base, from the index)."""
        conn = sqlite3.connect(f"file:{os.path.join(self.inbox, INDEX_NAME)}?mode=ro", uri=True)
        try:
            return {
                base: uid
                for uid in uids
                for (base,) in conn.execute("SELECT base FROM messages WHERE uid = ?", (uid,))
            }
        finally:
            conn.close()

    def pop3_delete(self, uids: Sequence[int]) -> None:
        """POP3 DELE of the messages of `uids`, found by their UIDL (`uidls`)."""
        self.log.append(f"POP3 DELE {uids}")
        assert self.pop3_port is not None
        bases = self.uidls(uids)
        pop = poplib.POP3("127.0.0.1", self.pop3_port, timeout=WAIT)
        try:
            pop.user(ALICE)
            pop.pass_("secret")
            _resp, listing, _octets = pop.uidl()
            for line in listing:
                number, unique = line.decode().split()
                if unique in bases:
                    pop.dele(int(number))
                    del self.model[bases[unique]]
        finally:
            pop.quit()

    def _file(self, uid: int) -> str:
        """Where the message's file is now (the index may not have seen the last rename
        another tool made)."""
        conn = sqlite3.connect(f"file:{os.path.join(self.inbox, INDEX_NAME)}?mode=ro", uri=True)
        try:
            (base,) = conn.execute("SELECT base FROM messages WHERE uid = ?", (uid,)).fetchone()
        finally:
            conn.close()
        for sub in ("cur", "new"):
            for name in os.listdir(os.path.join(self.inbox, sub)):
                if name.partition(":")[0] == base:
                    return f"{sub}/{name}"
        raise AssertionError(f"no file for UID {uid}")

    def outside_flag(self, uid: int) -> None:
        """Another tool (mutt) flags a message: it renames the file to carry F."""
        self.log.append(f"outside F {uid}")
        name = self._file(uid)
        base, _, letters = name.partition(":2,")
        os.rename(
            os.path.join(self.inbox, name),
            os.path.join(self.inbox, f"cur/{base[4:]}:2,{''.join(sorted({*letters, 'F'}))}"),
        )
        self.model[uid] = self.model[uid] | {"\\Flagged"}

    def outside_unlink(self, uid: int) -> None:
        """Another tool removes a message's file."""
        self.log.append(f"outside unlink {uid}")
        os.unlink(os.path.join(self.inbox, self._file(uid)))
        del self.model[uid]

    def reselect(self, session: Session, *, close: bool) -> None:
        """CLOSE (which expunges the session's \\Deleted silently) or UNSELECT, and
        SELECT again: the view starts afresh."""
        self.log.append(f"{session.name} {'CLOSE' if close else 'UNSELECT'} SELECT")
        if close and not session.readonly:
            for u in set(session.view.flags):
                if "\\Deleted" in self.model.get(u, ()):
                    del self.model[u]
        _tagged, untagged = session.command("CLOSE" if close else "UNSELECT")
        assert not [line for line in untagged if b"EXPUNGE" in line], untagged
        session.view = View()
        session.select()
        self.learn(session)

    def fetch_all(self, session: Session, *, uid: bool) -> None:
        """[UID] FETCH 1:* (UID FLAGS): every number answers with the UID the view has
        for it (a number never shifts inside FETCH)."""
        self.log.append(f"{session.name} {'UID ' * uid}FETCH")
        view = session.view
        if not view.uids:
            return
        before = list(view.uids)
        _tagged, untagged = session.command(
            f"{'UID ' * uid}FETCH 1:* (UID FLAGS)", expunge_allowed=uid
        )
        if not uid:
            assert view.uids == before
            numbers = [int(m[1]) for line in untagged if (m := re.match(rb"\* (\d+) FETCH", line))]
            assert numbers == list(range(1, len(before) + 1)), (numbers, before)
        self.learn(session)

    def read(self, session: Session, targets: Sequence[int], *, uid: bool) -> None:
        """[UID] FETCH `targets` (BODY[]): sets \\Seen (RFC 9051 §6.4.5), also where
        this session still believes it set and another took it away, and says so with
        FLAGS where it was not stored."""
        self.log.append(f"{session.name} {'UID ' * uid}FETCH {targets} BODY[]")
        if not targets:
            return
        view = session.view
        uids = {u for u in targets if u in view.flags} if uid else set(self._uids(session, targets))
        for u in uids:
            if u in self.model and not session.readonly:
                self.model[u] = self.model[u] | {"\\Seen"}
        _tagged, untagged = session.command(
            f"{'UID ' * uid}FETCH {_set(targets)} (UID BODY[])", expunge_allowed=uid
        )
        for u in uids:
            if u in self.model and not session.readonly:
                assert "\\Seen" in view.flags[u], (u, view.flags, untagged)
        self.learn(session)

    def search_all(self, session: Session, *, uid: bool, sort: bool = False) -> None:
        """[UID] SEARCH ALL, or SORT (ARRIVAL): by number, exactly the numbers the view
        has (none shifts inside SEARCH or SORT); by UID, UIDs the view had."""
        verb = "SORT (ARRIVAL) UTF-8" if sort else "SEARCH"
        self.log.append(f"{session.name} {'UID ' * uid}{verb}")
        before = list(session.view.uids)
        _tagged, untagged = session.command(f"{'UID ' * uid}{verb} ALL", expunge_allowed=uid)
        found: list[int] = []
        for line in untagged:
            if line.startswith((b"* SEARCH", b"* SORT")):
                found += [int(n) for n in line.split()[2:]]
            elif line.startswith(b"* ESEARCH") and (all_ := re.search(rb" ALL (\S+)", line)):
                found += _expand(all_[1])
        # (SORT (ARRIVAL) orders by INTERNALDATE, which a COPY keeps: not UID order.)
        if uid:
            assert set(found) <= set(before), (found, before)
        else:
            assert sorted(found) == list(range(1, len(before) + 1)), (found, before)
        self.learn(session)


def _change(flags: frozenset[str], mode: str, new: Sequence[str]) -> frozenset[str]:
    if mode == "+":
        return flags | frozenset(new)
    if mode == "-":
        return flags - frozenset(new)
    return frozenset(new)


def _set(numbers: Iterable[int]) -> str:
    return ",".join(str(n) for n in sorted(set(numbers)))


def _expand(text: bytes) -> list[int]:
    out: list[int] = []
    for part in text.decode().split(","):
        low, _, high = part.partition(":")
        out += range(int(low), int(high or low) + 1)
    return out
