"""`LocalDelivery`: a message for one of our mailboxes, through the site's and the user's
Sieve scripts, into the folders they name (the part of Dovecot's LDA with Pigeonhole).

Theory of operation
-------------------
Who calls. The queue runner, for a local recipient whose mailbox has an active script or
when ``[sieve] before`` is set (`wants`); everyone else keeps the direct path into INBOX.
`deliver` is BLOCKING (scripts, mailboxes, the queue, the duplicate database): a worker
thread runs it.

The scripts: the site script (``[sieve] before``) first, then the user's active one,
with Pigeonhole's ``sieve_before`` semantics (`sieve.run_sequence` has them in full): the
next script runs only while keep is in effect, and only the last one's keep stores into
INBOX (``discard; stop;`` or a ``fileinto`` in the site script ends the sequence); each
script's other actions stand; its edits are what the next one sees; a runtime error, or a
stored script that no longer parses, drops that script's actions, ends the sequence and
keeps the message in INBOX, with one warning line giving the line and column.

Scripts are parsed once and kept: the site script and global includes by (path,
mtime, size), the user's by the hash of their text (which is read at each delivery
anyway, and unlike a name is never shared by two users' different scripts).

Carrying the actions out, in an order that loses nothing:

1. ``reject``/``ereject``: the recipient fails permanently with 5.7.1 "rejected by the
   recipient's Sieve filter: REASON" and the queue's DSN carries it back (RFC 5429 §2.1
   allows a DSN); nothing is stored. (The evaluator refuses a reject beside a delivery.)
2. A mailbox at or over its storage limit fails the recipient as the intake's RCPT check
   would (552 5.2.2 "mailbox is full"), before anything is sent on. A mailbox under its
   limit takes every copy whatever its size, as the direct path does (Dovecot's
   quota_grace: it ends at most one message over).
3. Redirects, then the vacation reply, each written to the queue durably, with their ids
   in `LdaResult.queued`. A redirect is the message as edited so far without its
   Return-Path, under a Received field of its own (so a loop between two users' scripts
   ends at `delivery.HOP_LIMIT`, refused as `delivery.forwarding_loop` refuses it), from
   the SRS form of the sender (`srs.forward_sender`, as the intake forwards for aliases;
   the null sender stays null). Each forward is remembered in the user's duplicate
   database (Pigeonhole's duplicate-forward check), so the same message forwarded to the
   same address again, by a retry of this delivery or by a second copy arriving, is not.
   The vacation reply (`sieve.vacation_reply` decides and writes it) goes from the null
   sender to the envelope sender once per (handle, sender) and ``:days``; the queue
   runner DKIM-signs it like any message whose From is ours.
4. The mailbox copies: INBOX for keep, each folder for fileinto. A copy without flags
   or keywords (the common one) goes the direct way, as mail for users without scripts
   does (`LocalDelivery.store`, a `MaildirStore` with the same storage limits): the
   file into the folder's ``new/``, file and directory fsync'd before the outcome,
   counted in the quota file, numbered by the IMAP index at its next sync: no index
   transaction per message (py-spy of the runner: the index's COMMIT was 56% of a
   delivery). Whether the folder exists is one stat where the store names it; only a
   miss opens the account (its first open makes the special-use folders). A copy with
   flags or keywords goes through the account the IMAP server uses
   (`ImapStore.account`), so they are in the index at once; a folder this process
   wrote into the direct way since is synced first, so that UIDs follow arrival. (A
   file named into ``cur/`` with its flag letters would be read right by a sync, but
   counted there as mail from outside, and the store writes only ``new/``.) An idler
   is told either way (IMAP IDLE watches ``new/`` and ``cur/``). Folder names are
   Unicode, as the account takes them (modified UTF-7 is IMAP4rev1's wire form only).
   A missing folder without ``:create`` gets the copy in INBOX instead, with a log
   line (Pigeonhole does the same); ``:create`` makes and subscribes it.
5. The RFC 7352 duplicate ids of the run, only once every copy is stored: a delivery
   retried after a failure must not find its own message "seen" and discard it.

The window: a crash (or a disk that fails) after a redirect or the vacation reply is
queued and before the copies are stored repeats the delivery at the next attempt. The
vacation reply and the forward are then not sent again (remembered), except when the crash
fell between queueing one and remembering it; so the worst is one forward or reply more,
never a message lost. A copy that fails half-way through the folders (a full disk) defers
the recipient (`delivery.store_failed`, as the direct path does), and the retry may store
the folders that did take the message a second time: a duplicate, not a loss.

Log lines are Dovecot's, under the queue id and recipient:
``QUEUEID: to=<u@d>: sieve: stored mail into mailbox 'Lists'``, ``sieve: redirected to
<x> (queued as ID)``, ``sieve: sent vacation response to <s>``, ``sieve: discarded``,
``sieve: rejected: REASON``, and a warning for each runtime error and failed action.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import os
import pathlib
import sqlite3
from typing import Final, Protocol, TypeVar, runtime_checkable

import attrs

from sansmail.config import Config
from sansmail.mail import delivery, srs, trace
from sansmail.mail.address import AddressError, MailboxId, parse_address
from sansmail.mail.attempt import Outcome
from sansmail.mail.delivery import LogLine
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.mail.headeredit import split_fields
from sansmail.mail.logtext import printable
from sansmail.mail.sieve import (
    Copy,
    IncludeNotParsedError,
    Limits,
    Plan,
    Position,
    Script,
    SieveContext,
    SieveEnvelope,
    SieveError,
    Vacation,
    folder_key,
    parse_bytes,
    run_sequence,
    vacation_reply,
)
from sansmail.smtp import encode_xtext
from sansmail.storage.keys import load_or_create_srs_key
from sansmail.storage.maildir import (
    SYSTEM_FLAGS,
    FolderExistsError,
    ImapStore,
    ImapStoreError,
    InvalidFolderNameError,
    MailAccount,
    MailStore,
    NoSuchFolderError,
    TooManyKeywordsError,
)
from sansmail.storage.queue import QueueStore
from sansmail.storage.sieve import (
    SCRIPT_SUFFIX,
    Duplicates,
    NoSuchScriptError,
    SieveScripts,
    SieveStoreError,
    valid_script_name,
)

__all__ = ["LdaResult", "LocalDelivery", "wants_sieve"]

INBOX: Final = "INBOX"
#: Parsed scripts kept per process; past this the oldest go.
_CACHE_SIZE: Final = 512
_SYSTEM: Final = {flag.lower(): flag for flag in SYSTEM_FLAGS}
_KEYWORD_BAD: Final = frozenset(' ()"{%*]\\')
_MAX_REASON: Final = 900  # a reject reason on one DSN line
_LIMITS: Final = Limits()  # the evaluator's, Pigeonhole's defaults
_K = TypeVar("_K")
_V = TypeVar("_V")


@runtime_checkable
class _Limited(Protocol):
    """An account whose storage limit a delivery may lift for itself (the Maildir and
    the PostgreSQL accounts: each delivery opens its own)."""

    quota_limit: int


@attrs.frozen
class LdaResult:
    """How one delivery went: the recipient's verdict (`delivery.STORED`, a deferral
    from `delivery.store_failed`, or a permanent failure: reject, mailbox full), the
    mail-log lines, and the ids of the messages it queued (redirects, vacation reply)
    for the runner to deliver."""

    outcome: Outcome
    log: tuple[LogLine, ...]
    queued: tuple[str, ...] = ()


class LocalDelivery:
    """Delivery through Sieve for the mailboxes of one server (see the module
    docstring). `store` is the direct path's mail store (Maildir or PostgreSQL, as
    `imap`), with the storage limits `imap` has (None: every copy goes through the IMAP
    account). `srs_key` (None: read or made in ``data_dir/srs.key`` at the first
    redirect) and `limits` may be given; the rest is the server's."""

    def __init__(
        self,
        *,
        config: Config,
        scripts: SieveScripts,
        imap: ImapStore,
        queue: QueueStore,
        store: MailStore | None = None,
        srs_key: bytes | None = None,
        limits: Limits = _LIMITS,
    ) -> None:
        self.config = config
        self.scripts = scripts
        self.imap = imap
        self.queue = queue
        self.store = store
        self.limits = limits
        self._srs_key = srs_key
        # Both caches are touched by several worker threads: each step is one dict
        # operation (atomic under the GIL), and a lost race only parses twice.
        self._by_text: dict[bytes, Script | SieveError] = {}
        self._by_file: dict[str, tuple[tuple[int, int, int], Script | SieveError]] = {}
        # The folders this process wrote a copy into the direct way since it last
        # appended one there (`_Delivery.append`); shared by threads as the caches are.
        self.unsynced: dict[tuple[MailboxId, str], None] = {}

    @property
    def srs_key(self) -> bytes:
        if self._srs_key is None:
            self._srs_key = load_or_create_srs_key(self.config.data_dir / "srs.key")
        return self._srs_key

    def wants(self, mailbox: MailboxId) -> bool:
        """BLOCKING (one stat). Whether mail for `mailbox` must go through `deliver`."""
        return wants_sieve(self.config, self.scripts, mailbox)

    def deliver(
        self,
        mailbox: MailboxId,
        content: bytes,
        *,
        queue_id: str,
        sender: str,
        recipient: str,
        original_recipient: str | None,
        now: float,
    ) -> LdaResult:
        """BLOCKING. Run the scripts over `content` (the message as stored: Return-Path
        and trace on top, CRLF) for `mailbox`, reached as `recipient` (its address as
        given; `original_recipient` the RCPT TO, if another), from `sender` ("" for the
        null sender), and carry their actions out."""
        run = _Delivery(
            self,
            mailbox,
            content,
            queue_id=queue_id,
            sender=sender,
            recipient=recipient,
            original_recipient=original_recipient,
            now=now,
        )
        try:
            return run.deliver()
        finally:
            run.close()

    # -- scripts ----------------------------------------------------------------------

    def parsed(self, raw: bytes) -> Script | SieveError:
        """The tree of script text `raw`, or why it does not parse (cached by content)."""
        key = hashlib.sha256(raw).digest()
        found = self._by_text.get(key)
        if found is None:
            found = _parse(raw)
            _remember(self._by_text, key, found)
        return found

    def parsed_file(self, path: pathlib.Path) -> Script | SieveError | None:
        """The tree of the script file `path` (None: there is none), cached by (path,
        mtime, size); OSError when it exists and cannot be read."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        name = os.fspath(path)
        cached = self._by_file.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        with open(path, "rb") as file:
            found = _parse(file.read())
        _remember(self._by_file, name, (stamp, found))
        return found


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> None:
    if len(cache) >= _CACHE_SIZE:
        # Dicts keep insertion order: the oldest entry goes first.
        cache.pop(next(iter(cache)), None)
    cache[key] = value


def _parse(raw: bytes) -> Script | SieveError:
    try:
        return parse_bytes(raw)
    except SieveError as exc:
        return exc


# -- one delivery ---------------------------------------------------------------------------


def wants_sieve(config: Config, scripts: SieveScripts, mailbox: MailboxId) -> bool:
    """BLOCKING (one stat): whether mail for `mailbox` goes through its scripts, an
    active one or ``[sieve] before``. The SMTP intake asks it with no delivery to make."""
    return config.sieve.before is not None or scripts.has_active(mailbox)


class _Delivery:
    """The state of one `LocalDelivery.deliver`: the account and the duplicate database
    are opened when first needed, and closed at the end."""

    def __init__(
        self,
        lda: LocalDelivery,
        mailbox: MailboxId,
        content: bytes,
        *,
        queue_id: str,
        sender: str,
        recipient: str,
        original_recipient: str | None,
        now: float,
    ) -> None:
        self.lda = lda
        self.mailbox = mailbox
        self.content = content
        self.queue_id = queue_id
        self.sender = sender
        self.recipient = recipient
        self.original_recipient = original_recipient
        self.now = now
        self.when = datetime.datetime.fromtimestamp(now).astimezone()
        self.log: list[LogLine] = []
        self.queued: list[str] = []
        self._prefix = f"{queue_id}: to=<{printable(recipient)}>: sieve: "
        self._account: MailAccount | None = None
        self._folders: set[str] | None = None
        #: Under its storage limit: this message's copies are all taken (`full`).
        self._grace = False
        #: The folders (`folder_key`) that have their copy.
        self.stored: set[str] = set()
        self._duplicates: Duplicates | None = None
        self._duplicates_failed = False

    # -- plumbing ---------------------------------------------------------------------

    def info(self, text: str) -> None:
        self.log.append(LogLine(self._prefix + text))

    def warn(self, text: str) -> None:
        self.log.append(LogLine(self._prefix + text, level="warning"))

    @property
    def account(self) -> MailAccount:
        if self._account is None:
            account = self._account = self.lda.imap.account(self.mailbox)
            if self._grace and isinstance(account, _Limited):
                account.quota_limit = 0  # this delivery only: the account is ours alone
        return self._account

    def duplicates(self) -> Duplicates | None:
        """The user's duplicate database; None (with one warning) when it cannot open."""
        if self._duplicates is None and not self._duplicates_failed:
            try:
                self._duplicates = self.lda.scripts.duplicates(self.mailbox)
            except (SieveStoreError, OSError) as exc:
                self._duplicates_failed = True
                self.warn(f"duplicate database unavailable: {printable(str(exc))}")
        return self._duplicates

    def close(self) -> None:
        if self._duplicates is not None:
            self._duplicates.close()
        if self._account is not None:
            # Released first: the index connections go to the process's pool, as an IMAP
            # session's do between commands. Closing the last connection of a WAL index
            # checkpoints it (py-spy: 12% of a delivery); the next delivery to this
            # mailbox takes the connection back instead of opening one.
            self._account.release()
            self._account.close()

    def result(self, outcome: Outcome) -> LdaResult:
        return LdaResult(outcome, tuple(self.log), tuple(self.queued))

    # -- the context a script sees ----------------------------------------------------

    def mailbox_exists(self, name: str) -> bool:
        if name.upper() == INBOX:
            return True
        if self.lda.store is not None:
            try:
                return self.folder_found(name)
            except InvalidFolderNameError:
                return False
        if self._folders is None:
            self._folders = {info.name for info in self.account.list_folders() if info.exists}
        return name in self._folders

    def seen(self, key: str) -> bool:
        store = self.duplicates()
        if store is None:
            return False
        try:
            return store.seen(key, now=self.now)
        except SieveStoreError as exc:
            self.warn(f"duplicate test: {printable(str(exc))}")
            return False

    def include(self, name: str, is_global: bool) -> Script | None:
        if valid_script_name(name) is not None:
            return None  # a name no store could hold
        lda = self.lda
        if is_global:
            before = lda.config.sieve.before
            if before is None:
                return None  # no global directory configured
            try:
                found = lda.parsed_file(before.parent / (name + SCRIPT_SUFFIX))
            except OSError:
                return None
        else:
            try:
                found = lda.parsed(lda.scripts.get(self.mailbox, name))
            except (NoSuchScriptError, OSError):
                return None
        if isinstance(found, SieveError):
            raise IncludeNotParsedError(name, found)
        return found

    # -- the run ----------------------------------------------------------------------

    def scripts(self) -> list[tuple[str, Script | SieveError]]:
        """The sequence to run: (label for the log, tree or why it does not parse)."""
        out: list[tuple[str, Script | SieveError]] = []
        lda = self.lda
        before = lda.config.sieve.before
        if before is not None:
            try:
                found = lda.parsed_file(before)
            except OSError as exc:
                found = None
                self.warn(f"before script {printable(str(before))}: {printable(str(exc))}")
            if found is None:
                self.warn(f"before script {printable(str(before))} not found: skipped")
            else:
                out.append((str(before), found))
        try:
            active = lda.scripts.active(self.mailbox)
        except (SieveStoreError, OSError) as exc:
            # Unreadable scripts are like broken ones: the message is kept, and said so.
            self.warn(f"cannot read the active script: {printable(str(exc))}")
            out.append(("(active script)", SieveError(str(exc), Position(1, 1))))
            return out
        if active is not None:
            name, text = active
            out.append((name, lda.parsed(text)))
        return out

    def plan(self) -> Plan:
        """The scripts' plan (`sieve.run_sequence`), its warnings logged."""
        context = SieveContext(
            detail_separator=self.lda.config.recipient_delimiter[:1],
            mailbox_exists=self.mailbox_exists,
            seen=self.seen,
            include=self.include,
        )
        plan = run_sequence(
            self.scripts(),
            self.content,
            SieveEnvelope(
                from_=self.sender, to=self.recipient, original_to=self.original_recipient
            ),
            now=self.when,
            limits=self.lda.limits,
            context=context,
        )
        for warning in plan.warnings:
            self.warn(printable(warning))
        return plan

    # -- carrying it out ----------------------------------------------------------------

    def deliver(self) -> LdaResult:
        try:
            return self.result(self.carry_out(self.plan()))
        except (OSError, sqlite3.Error, ImapStoreError) as exc:
            # The direct path's answer to a disk that fails: try again later. What was
            # queued before stays in `queued`, for the runner to send.
            self.warn(f"cannot store the message: {printable(str(exc))}")
            return self.result(delivery.store_failed(str(exc)))

    def carry_out(self, plan: Plan) -> Outcome:
        """Do what `plan` says, in the order of the module docstring; the outcome."""
        if plan.reject is not None:
            reason = " ".join(plan.reject.reason.split())[:_MAX_REASON] or "no reason given"
            self.info(f"rejected: {printable(reason)}")
            return Outcome(
                status="bounced",
                reason=f"rejected by the recipient's Sieve filter: {reason}",
                dsn="5.7.1",
            )
        if plan.copies and self.full():
            self.warn("the mailbox is full: nothing stored or sent on")
            return Outcome(
                status="bounced",
                reason=f"552 5.2.2 <{self.recipient}>: mailbox is full",
                dsn="5.2.2",
            )
        for address, content in plan.redirects.values():
            if not self.redirect(address, content):
                plan.store(INBOX, content)  # a failed forward keeps the message
        if plan.vacation is not None:
            self.vacation(*plan.vacation)
        for copy in self.ordered(plan):
            self.store(copy, plan)
        if plan.discarded and not plan.copies:
            self.info("discarded")
        self.record_seen(plan.seen)
        return delivery.STORED

    def full(self) -> bool:
        """Whether the mailbox is at or over its limit; one under it takes every copy
        of this message (the direct path's grace, see the module docstring). Measured
        when due, as the IMAP account measures it (`MailAccount.storage`)."""
        store = self.lda.store
        if store is None:
            storage = self.account.storage()
        else:
            # Without opening the account (its INBOX index) for a copy that needs none.
            storage = store.storage(self.mailbox)
        if storage is not None and storage[0] >= storage[1]:
            return True
        self._grace = True
        account: object = self._account
        if isinstance(account, _Limited):
            account.quota_limit = 0
        return False

    def folder_exists(self, folder: str) -> bool:
        """BLOCKING (one stat): whether `folder` (not INBOX) exists, found where the
        store names it; InvalidFolderNameError for a name no folder can have."""
        assert self.lda.store is not None
        return self.lda.store.folder_exists(self.mailbox, folder)  # an error defers it

    def folder_found(self, folder: str) -> bool:
        """`folder_exists`, asked again after opening the account when it says no: an
        account's first open makes the special-use folders (Junk, Archive...), which a
        user who never logged in does not have yet."""
        if self.folder_exists(folder):
            return True
        if self._account is not None:
            return False
        _ = self.account
        return self.folder_exists(folder)

    @staticmethod
    def ordered(plan: Plan) -> list[Copy]:
        # INBOX last, so that a folder that turns out missing can still fall back to it.
        return [c for k, c in plan.copies.items() if k != INBOX] + (
            [plan.copies[INBOX]] if INBOX in plan.copies else []
        )

    def store(self, copy: Copy, plan: Plan) -> None:
        flags = self.valid_flags(copy.flags)
        folder = copy.folder
        try:
            if self.lda.store is not None and not flags:
                self.write(folder, copy.content, create=copy.create)
            else:
                self.append_creating(folder, copy.content, flags, create=copy.create)
        except (NoSuchFolderError, InvalidFolderNameError) as exc:
            if folder_key(folder) == INBOX:
                raise OSError(f"INBOX: {exc}") from exc
            self.warn(
                f"failed to store into mailbox {_quoted(folder)}: {printable(str(exc))};"
                " stored into INBOX instead"
            )
            if INBOX not in self.stored:
                planned = INBOX in plan.copies  # then stored last, with these flags too
                plan.store(INBOX, copy.content, copy.flags)
                if not planned:
                    self.store(plan.copies[INBOX], plan)
            return
        self.stored.add(folder_key(folder))
        self.info(f"stored mail into mailbox {_quoted(folder)}")

    def write(self, folder: str, content: bytes, *, create: bool) -> None:
        """The direct path, as mail for users without scripts takes it: the file into
        the folder's ``new/`` through the Maildir store (file and directory fsync'd
        before it returns), counted in the quota file; the IMAP index gives it its UID
        at its next sync. ``:create`` makes and subscribes a missing folder as the
        store makes Junk."""
        assert self.lda.store is not None
        target = None if folder_key(folder) == INBOX else folder
        made = False
        if target is not None and not self.folder_found(target):
            if not create:
                raise NoSuchFolderError(f"no folder {folder!r}")
            made = True
        writing = self.lda.store.begin([self.mailbox], prefix=b"", folder=target)
        try:
            writing.write(content)
            writing.commit()
        except BaseException:
            writing.abort()
            raise
        unsynced = self.lda.unsynced
        if len(unsynced) >= _CACHE_SIZE:
            unsynced.clear()  # forgetting costs at most a UID out of arrival order
        unsynced[(self.mailbox, folder_key(folder))] = None
        if made:
            self.info(f"created mailbox {_quoted(folder)}")

    def append_creating(
        self, folder: str, content: bytes, flags: tuple[str, ...], *, create: bool
    ) -> None:
        """Through the IMAP account: the copy's UID, flags and keywords in the index at
        once. ``:create`` makes and subscribes a missing folder."""
        account = self.account
        try:
            self.append(account, folder, content, flags)
        except NoSuchFolderError:
            if not create or folder_key(folder) == INBOX:
                raise
            try:
                account.create(folder)
                account.subscribe(folder)
                self.info(f"created mailbox {_quoted(folder)}")
            except FolderExistsError:
                pass  # made meanwhile by someone else: as good
            self.append(account, folder, content, flags)

    def append(
        self, account: MailAccount, folder: str, content: bytes, flags: tuple[str, ...]
    ) -> None:
        key = (self.mailbox, folder_key(folder))
        if key in self.lda.unsynced:
            # Copies written the direct way wait in new/ for a sync to number them:
            # synced first, they keep UIDs in the order they arrived in. (Only then:
            # a sync before every append lists the folder each time: 3.8 -> 5.1 ms
            # per flagged delivery.)
            self.lda.unsynced.pop(key, None)
            account.status(folder, ("UIDNEXT",))
        try:
            account.append(folder, content, flags)
        except TooManyKeywordsError as exc:
            # A folder holds 26 keywords: the message matters more than its keywords.
            self.warn(f"{_quoted(folder)}: {printable(str(exc))}: stored without keywords")
            account.append(folder, content, tuple(f for f in flags if f.startswith("\\")))

    def valid_flags(self, flags: tuple[str, ...]) -> tuple[str, ...]:
        """System flags in their IMAP spelling and keywords that are IMAP atoms; the
        rest dropped with a warning (Pigeonhole ignores them too)."""
        out: list[str] = []
        bad: list[str] = []
        for flag in flags:
            if flag.startswith("\\"):
                system = _SYSTEM.get(flag.lower())
                if system is None:
                    if flag.lower() != "\\recent":
                        bad.append(flag)
                    continue
                out.append(system)
            elif flag.isprintable() and flag.isascii() and not _KEYWORD_BAD.intersection(flag):
                out.append(flag)
            else:
                bad.append(flag)
        if bad:
            self.warn(f"flags ignored: {printable(' '.join(bad))}")
        return tuple(out)

    def redirect(self, address: str, content: bytes) -> bool:
        """Queue the forward to `address`; False when it cannot go (the caller keeps
        the message). OSError from the queue passes up: the delivery is retried."""
        try:
            target = parse_address(address, smtputf8=True)
        except AddressError as exc:
            self.warn(f"redirect to <{printable(address)}> failed: {printable(str(exc))}")
            return False
        key = self.forward_key(str(target))
        store = self.duplicates()
        try:
            if store is not None and store.seen(key, now=self.now):
                self.info(f"discarded duplicate forward to <{printable(str(target))}>")
                return True
        except SieveStoreError as exc:
            self.warn(f"duplicate forward check: {printable(str(exc))}")
        queue = self.lda.queue
        queue_id = queue.new_id()
        config = self.lda.config
        received = trace.received_by(
            by=config.hostname,
            source="sieve",
            queue_id=queue_id,
            recipient=target,
            when=self.when,
        )
        message = received + _without_return_path(content)
        loop = delivery.forwarding_loop(message)
        if loop is not None:
            self.warn(f"redirect to <{printable(str(target))}> refused: {loop.reason}")
            return False
        sender = self.forward_sender()
        envelope = QueuedMessage(
            queue_id=queue_id,
            sender=sender,
            arrival=self.now,
            size=0,
            recipients=[
                QueuedRecipient(
                    address=str(target),
                    # RFC 3461 §4.2, as the intake does for an alias: the address mail
                    # was sent to, which also marks the copy as forwarded for signing.
                    orcpt="rfc822;"
                    + encode_xtext((self.original_recipient or self.recipient).encode()),
                )
            ],
            smtputf8=target.needs_smtputf8 or not sender.isascii(),
            body_8bit=not message.isascii(),
        )
        writer = queue.begin(queue_id)
        writer.write(message)
        writer.commit(envelope)
        self.queued.append(queue_id)
        if store is not None:
            try:
                store.record(key, config.delivery.max_queue_lifetime, now=self.now)
            except SieveStoreError as exc:
                self.warn(f"forward not remembered: {printable(str(exc))}")
        self.info(f"redirected to <{printable(str(target))}> (queued as {queue_id})")
        return True

    def forward_key(self, target: str) -> str:
        """The duplicate-forward key: this message (its Message-ID, or this queue
        file), to this user, forwarded to `target`."""
        message_id = _message_id(self.content) or f"queue:{self.queue_id}"
        text = f"redirect\x00{message_id}\x00{self.recipient.lower()}\x00{target.lower()}"
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()

    def forward_sender(self) -> str:
        if not self.sender:
            return ""
        try:
            original = parse_address(self.sender, smtputf8=True)
        except AddressError:
            return self.sender  # queued as it came: forwarded as it came
        config = self.lda.config
        rewritten = srs.forward_sender(
            original, domains=config.domains, key=self.lda.srs_key, day=srs.today(self.now)
        )
        return str(rewritten) if rewritten is not None else ""

    def vacation(self, action: Vacation, content: bytes) -> None:
        """Answer, if RFC 3834 and the once-per-period rule allow; a reply that cannot
        be queued is logged and dropped (the message itself matters more)."""
        sender = printable(self.sender or "")
        addresses = tuple(a for a in (self.original_recipient,) if a)
        if action.from_ is not None and not self.own_address(action.from_):
            # The reply leaves DKIM-signed as ours: a script may not make it speak for a
            # colleague or a stranger (Postfix's reject_sender_login_mismatch, for Sieve).
            self.warn(
                f"vacation :from {printable(action.from_)!r} is not the user's address;"
                " the reply is from the user"
            )
            action = attrs.evolve(action, from_=None)
        reply = vacation_reply(
            action,
            content,
            self.sender,
            self.recipient,
            now=self.when,
            message_id=email.utils.make_msgid(domain=self.lda.config.hostname),
            user_addresses=addresses,
        )
        if isinstance(reply, str):
            self.info(f"vacation response to <{sender}> not sent: {reply}")
            return
        store = self.duplicates()
        if store is None:
            # Unable to tell whether this sender was answered: silence beats a flood.
            self.warn(f"vacation response to <{sender}> not sent: no duplicate database")
            return
        try:
            if store.seen(reply.key, now=self.now):
                self.info(
                    f"vacation response to <{sender}> not sent: already answered within"
                    f" {reply.seconds // 86400} days"
                )
                return
            target = parse_address(reply.recipient, smtputf8=True)
        except (SieveStoreError, AddressError) as exc:
            self.warn(f"vacation response to <{sender}> not sent: {printable(str(exc))}")
            return
        queue = self.lda.queue
        queue_id = queue.new_id()
        envelope = QueuedMessage(
            queue_id=queue_id,
            sender="",  # RFC 3834 §3.3, RFC 5230 §5.1: replies go from the null sender
            arrival=self.now,
            size=0,
            recipients=[QueuedRecipient(address=str(target))],
            smtputf8=target.needs_smtputf8,
            body_8bit=not reply.message.isascii(),
        )
        try:
            writer = queue.begin(queue_id)
            writer.write(reply.message)
            writer.commit(envelope)
        except OSError as exc:
            self.warn(f"vacation response to <{sender}> not sent: {printable(str(exc))}")
            return
        self.queued.append(queue_id)
        try:
            store.record(reply.key, reply.seconds, now=self.now)
        except SieveStoreError as exc:
            self.warn(f"vacation response not remembered: {printable(str(exc))}")
        self.info(f"sent vacation response to <{sender}> (queued as {queue_id})")

    def own_address(self, text: str) -> bool:
        """Whether the address in `text` (``Name <a@b>`` or bare) is the recipient's, as
        given or as first addressed, a ``+detail`` aside."""
        _name, address = email.utils.parseaddr(text)
        local, _, domain = address.rpartition("@")
        if not local or not domain:
            return False
        delimiter = self.lda.config.recipient_delimiter[:1]

        def base(addr: str) -> str:
            user, _, host = addr.rpartition("@")
            if delimiter:
                user = user.partition(delimiter)[0]
            return f"{user}@{host}".lower()

        mine = {base(a) for a in (self.recipient, self.original_recipient) if a}
        return base(address) in mine

    def record_seen(self, seen: list[tuple[str, int]]) -> None:
        if not seen:
            return
        store = self.duplicates()
        if store is None:
            return
        try:
            for key, seconds in seen:
                store.record(key, seconds, now=self.now)
        except SieveStoreError as exc:
            self.warn(f"duplicate ids not remembered: {printable(str(exc))}")


def _quoted(folder: str) -> str:
    return "'" + printable(folder).replace("'", "\\'") + "'"


def _header(content: bytes) -> bytes:
    end = content.find(b"\r\n\r\n")
    return content if end < 0 else content[: end + 2]


def _without_return_path(content: bytes) -> bytes:
    """`content` without its Return-Path fields: a forward is not a final delivery
    (RFC 5321 §4.4), and the next one adds its own."""
    header = _header(content)
    if b"return-path:" not in header.lower():
        return content
    fields, _rest = split_fields(header)
    kept = [f for f in fields if f[:12].lower() != b"return-path:"]
    return b"".join(kept) + content[len(header) :]


def _message_id(content: bytes) -> str | None:
    for field in split_fields(_header(content))[0]:
        name, _, value = field.partition(b":")
        if name.strip().lower() == b"message-id":
            text = " ".join(value.decode("utf-8", "replace").split())
            return text or None
    return None
