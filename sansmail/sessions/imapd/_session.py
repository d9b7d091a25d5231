"""`ImapSession`: what one logged-in IMAP connection does with its commands.

Theory of operation
-------------------
The protocol core (`sansmail.imap.Connection`) parses commands and enforces the session
states; the store (`sansmail.storage.maildir.ImapStore`) keeps folders, UIDs and flags. This
object sits between them for the commands of the authenticated and selected states: it
takes a parsed command and returns the responses to send, untagged ones first and the
tagged completion last. It blocks (every store call does file and database I/O) and
reads no clock, so an event-loop adapter calls `handle` from a worker thread, one call
at a time; nothing here knows about sockets, TLS or time-outs. Authentication,
STARTTLS, literals and CAPABILITY are `ImapConversation`'s, which makes this object at
login and hands it the rest.

Sequence numbers (RFC 9051 §7.5.1). The selected folder's `FolderView` keeps the list
of messages as this session last reported it, and only `FolderView.sync` changes it.
`sync` is called, and its EXPUNGE/EXISTS/RECENT/FLAGS news sent, at the end of every
command except FETCH, STORE and SEARCH without UID, during which an EXPUNGE response is
forbidden (the client could not tell which message a number meant). So an EXPUNGE made
by another session reaches this one at its next NOOP, CHECK, UID command or the like,
or while it idles (`updates`, which the conversation calls for IDLE: RFC 2177 lets any
untagged response flow then).

Errors. A store error is a tagged NO with the store's RFC 5530 code (NONEXISTENT,
ALREADYEXISTS, CANNOT, READ-ONLY ...); a missing destination of APPEND, COPY or MOVE is
NO [TRYCREATE] instead (RFC 9051 §6.3.12). A folder deleted or rebuilt under a selected
view (`FolderGoneError`, or a new UIDVALIDITY seen by `sync`) makes every UID
meaningless: the answer is ``* BYE`` and `ended` becomes True; the adapter closes.

CONDSTORE and QRESYNC (RFC 7162). The store stamps a mod-sequence on every change
(`_imapindex`); the view reports HIGHESTMODSEQ as of its last sync. CONDSTORE comes on
with the first command that uses it (§3.1: ENABLE, SELECT/EXAMINE (CONDSTORE), FETCH
MODSEQ or CHANGEDSINCE, SEARCH MODSEQ, STORE UNCHANGEDSINCE): SELECT then answers
[HIGHESTMODSEQ] (one turned on with a mailbox selected gets it in an untagged OK) and
every FETCH of flags changes carries MODSEQ. ENABLE QRESYNC turns on both; then
``* VANISHED uid-set`` replaces ``* n EXPUNGE`` wherever expunges are reported (they all
come through `_report`: EXPUNGE, UID EXPUNGE, MOVE, other sessions' changes, IDLE),
and SELECT (QRESYNC ...) answers with what changed since the client's mod-sequence.

IMAP4rev1 and IMAP4rev2 differ here in: \\Recent and ``* n RECENT``, ``OK [UNSEEN n]``
on SELECT (rev1 only); the LIST reply on SELECT and ``* ESEARCH`` for every SEARCH
(rev2 only, RFC 9051 §6.3.2, §6.4.4); \\NonExistent versus \\Noselect in LIST.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from sansmail import __version__
from sansmail.imap import (
    Append,
    Atom,
    Capability,
    Check,
    Close,
    Command,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchAttribute,
    FetchBatch,
    FetchResponse,
    GetQuota,
    GetQuotaRoot,
    Id,
    List,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    Rename,
    Response,
    ResponseCode,
    Search,
    Select,
    SequenceSet,
    SetQuota,
    Sort,
    Status,
    Store,
    Subscribe,
    Tagged,
    Thread,
    UidExpunge,
    Unselect,
    Unsubscribe,
    Untagged,
    UntaggedStatus,
)
from sansmail.imap._condstore import (
    fetch_options,
    highestmodseq,
    modseq_item,
    nomodseq,
    select_options,
    store_unchangedsince,
    vanished,
)
from sansmail.imap._lexer import ParseError
from sansmail.mail.address import MailboxId
from sansmail.sessions.imapd import _folders, _messages, _quota
from sansmail.sessions.imapd._messages import BadSetError, flag_list
from sansmail.sessions.imapd._search import modseq_keys
from sansmail.storage.maildir import (
    SEPARATOR,
    FlagMode,
    FolderGoneError,
    FolderView,
    ImapStore,
    ImapStoreError,
    MailAccount,
    NoSuchFolderError,
    SyncChanges,
)
from sansmail.storage.maildir._imapbase import StoreUnavailableError

__all__ = ["ENABLE_EXTENSIONS", "ImapSession"]

#: What ENABLE can switch on (RFC 5161; RFC 9051 §6.3.1; RFC 6855 §3; RFC 7162 §3.1, §3.2.3).
ENABLE_EXTENSIONS = ("IMAP4rev2", "UTF8=ACCEPT", "CONDSTORE", "QRESYNC")

_SYSTEM_ORDER = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
# The commands during which EXPUNGE may not be sent unless in their UID form (§7.5.1).
_NO_EXPUNGE = (Fetch, Store, Search, Sort, Thread)
# The RFC 4466 parameters this server knows: any other is a BAD (RFC 4466 §2.1-2.4).
_SELECT_PARAMETERS = frozenset({"CONDSTORE", "QRESYNC"})
_FETCH_MODIFIERS = frozenset({"CHANGEDSINCE", "VANISHED"})
_STORE_MODIFIERS = frozenset({"UNCHANGEDSINCE"})


class ImapSession:
    """One authenticated user's IMAP session over an `ImapStore`.

    Args:
        store: where the user's folders are (`MaildirImapStore(data_dir, hostname=...)`).
        mailbox: the user who logged in.
        append_limit: the largest message APPEND accepts (APPENDLIMIT, RFC 7889), also
            what STATUS APPENDLIMIT answers.
        capabilities: the CAPABILITY list to answer with after login (the
            conversation's, which knows TLS and authentication).

    Construction opens the account (blocking). `handle` returns the responses to one
    command; `close` releases the selected folder and the account.
    """

    def __init__(
        self,
        store: ImapStore,
        mailbox: MailboxId,
        *,
        append_limit: int,
        capabilities: Sequence[str] = (),
    ) -> None:
        self.account: MailAccount = store.account(mailbox)
        self.append_limit = append_limit
        self.capabilities = tuple(capabilities)
        self.view: FolderView | None = None
        # The session writes strings in UTF-8 (what the command being handled was told).
        self._utf8 = False
        #: A BYE was returned (logout, or the selected folder vanished): close now.
        self.ended = False
        #: Messages this session expunged (EXPUNGE, UID EXPUNGE, CLOSE, MOVE), for the log.
        self.expunged = 0
        #: CONDSTORE is on (RFC 7162 §3.1): MODSEQ in FETCH, HIGHESTMODSEQ on SELECT.
        self.condstore = False
        #: QRESYNC was ENABLEd (RFC 7162 §3.2.3): VANISHED instead of EXPUNGE.
        self.qresync = False
        # The highest MODSEQ a FETCH told the client in the selected folder, and the view
        # it was told of: a message expunged elsewhere that a FETCH may not yet report as
        # gone is given no lower one (a mod-sequence never goes down, RFC 7162 §3.1.3).
        self._told: tuple[FolderView | None, int] = (None, 0)
        # Each handler takes the command (of its key's type) and the session's rev2 flag.
        self._handlers: dict[type[Command], Callable[[Any, bool], list[Response]]] = {
            Capability: self._capability,
            Noop: self._noop,
            Check: self._noop,
            Logout: self._logout,
            Enable: self._enable,
            Id: self._id,
            Namespace: self._namespace,
            Create: lambda c, _r: _folders.create(self.account, c),
            Delete: lambda c, _r: _folders.delete(self.account, c),
            Rename: lambda c, _r: _folders.rename(self.account, c),
            Subscribe: lambda c, _r: _folders.subscribe(self.account, c),
            Unsubscribe: lambda c, _r: _folders.unsubscribe(self.account, c),
            List: lambda c, rev2: _folders.list_mailboxes(self.account, c, rev2=rev2),
            Lsub: lambda c, _r: _folders.lsub(self.account, c),
            Status: lambda c, _r: _folders.status(self.account, c, append_limit=append_limit),
            Append: self._append,
            Select: self._select,
            Close: self._close,
            Unselect: self._unselect,
            Expunge: self._expunge,
            UidExpunge: self._expunge,
            Fetch: lambda c, rev2: _messages.fetch_messages(
                self._view(),
                c,
                rev2=rev2,
                utf8=self._utf8,
                condstore=self.condstore,
                told=self._told_in(self._view()),
            ),
            Store: lambda c, rev2: _messages.store(
                self._view(), c, rev2=rev2, condstore=self.condstore
            ),
            Search: lambda c, rev2: _messages.search_messages(self._view(), c, rev2=rev2),
            Sort: lambda c, rev2: _messages.sort_messages(self._view(), c, rev2=rev2),
            Thread: lambda c, rev2: _messages.thread_messages(self._view(), c, rev2=rev2),
            Copy: self._copy,
            Move: self._copy,
            GetQuotaRoot: lambda c, _r: _quota.getquotaroot(self.account, c),
            GetQuota: lambda c, _r: _quota.getquota(self.account, c),
            SetQuota: lambda c, _r: _quota.setquota(c),
        }
        self.account.release()

    @property
    def selected(self) -> str | None:
        """The selected folder's name, or None."""
        return None if self.view is None else self.view.name

    # -- the front door ------------------------------------------------------------------

    def handle(self, command: Command, *, rev2: bool, utf8: bool = False) -> list[Response]:
        """The responses to `command`, the tagged one last (or a BYE when the session
        must end). `rev2`: the client ENABLEd IMAP4rev2; `utf8`: mailbox names travel
        as UTF-8 (the writer's business: names here are always Unicode)."""
        self._utf8 = utf8
        handler = self._handlers.get(type(command))
        if handler is None:
            return [_tagged(command.tag, "BAD", f"{type(command).__name__.upper()} not supported")]
        refusal = self._refusal(command)
        if refusal is not None:
            return [_tagged(command.tag, "BAD", refusal)]
        enabling = not self.condstore and _enables_condstore(command)
        if enabling:
            self.condstore = True
        try:
            responses = handler(command, rev2)
            sent = _modseq_sent(responses) if self.condstore and self.view is not None else 0
            if self.view is not None and sent > self._told_in(self.view):
                self._told = (self.view, sent)
            if enabling and self.view is not None and not isinstance(command, Select):
                # RFC 7162 §3.1: the first CONDSTORE command in a selected mailbox
                # tells the client where the mod-sequences stand.
                responses[-1:-1] = [self._highestmodseq(self.view)]
            if self.view is not None and not self.ended and not _no_updates_after(command):
                responses[-1:-1] = self._updates(rev2)
            elif self.condstore and self.view is not None and not isinstance(command, Select):
                # Expunges wait for a later command, and their mod-sequences may be
                # below a MODSEQ just sent: RFC 7162 §3.2 wants the client told a
                # HIGHESTMODSEQ below them, lest it resync from past them.
                if sent > self.view.highestmodseq:
                    responses[-1:-1] = [self._highestmodseq(self.view)]
        except FolderGoneError:
            return self._gone()
        except StoreUnavailableError as exc:
            # The database is out of reach (a failover): NO [UNAVAILABLE], and the
            # session stays; the next command tries again.
            return [_folders.no(command.tag, exc)]
        except BadSetError:
            return [_tagged(command.tag, "BAD", "Invalid message sequence number")]
        finally:
            # Idle until the next command: the account's connections go back to the pool.
            self.account.release()
        if self.ended and self.view is not None:
            self._release()
        return responses

    def _told_in(self, view: FolderView) -> int:
        """The highest MODSEQ a FETCH told the client in `view` (0: none)."""
        told_view, told = self._told
        return told if told_view is view else 0

    def updates(self, *, rev2: bool, changed_before: int | None = None) -> list[Response]:
        """What changed in the selected folder since the last report (for IDLE, or an
        adapter that wants to push news between commands); a BYE when it is gone.
        `changed_before`: the wall clock (nanoseconds) when the adapter learnt of the
        changes, so that another session's look at the folder since serves this one."""
        if self.view is None:
            return []
        try:
            return self._updates(rev2, changed_before)
        except FolderGoneError:
            return self._gone()
        except StoreUnavailableError:
            return []  # the news waits for the database to come back
        finally:
            self.account.release()

    @property
    def watch_paths(self) -> tuple[str, ...]:
        """What an idling adapter watches for changes of the selected folder (see
        `FolderView.watch_paths`); empty when none is selected."""
        return () if self.view is None else self.view.watch_paths

    @property
    def watch_keys(self) -> tuple[str, ...]:
        """What an idling adapter listens for (see `FolderView.watch_keys`: the store's
        notification payloads); empty when none is selected or the store has none."""
        return () if self.view is None else self.view.watch_keys

    def close(self) -> None:
        """Release the selected folder and the account (idempotent)."""
        self._release()
        self.account.close()

    # -- plumbing ------------------------------------------------------------------------

    def _release(self) -> None:
        if self.view is not None:
            view, self.view = self.view, None
            view.close()

    def _gone(self) -> list[Response]:
        self.ended = True
        self._release()
        return [
            UntaggedStatus(
                status="BYE",
                text="The selected mailbox was deleted, renamed or rebuilt, closing",
            )
        ]

    def _updates(self, rev2: bool, changed_before: int | None = None) -> list[Response]:
        assert self.view is not None
        changes = self.view.sync(listed_since=changed_before)
        if changes.uidvalidity_changed:
            raise FolderGoneError("UIDVALIDITY changed")
        return self._report(changes, rev2)

    def _report(self, changes: SyncChanges, rev2: bool) -> list[Response]:
        # In the order SyncChanges prescribes: each EXPUNGE number is valid when sent.
        view = self.view
        assert view is not None
        out: list[Response]
        if self.qresync:
            # RFC 7162 §3.2.10: one VANISHED for them all, UIDs rather than numbers.
            out = [vanished(changes.expunged_uids)] if changes.expunged_uids else []
        else:
            out = [Untagged.expunge(n) for n in changes.expunged]
        if changes.added:
            out.append(Untagged.exists(changes.exists))
        if changes.recent is not None and not rev2:
            out.append(Untagged.recent(changes.recent))
        if changes.keywords is not None:
            out += self._flag_lists(view)
        recent = view.recent
        for number, uid, flags in changes.flags:
            items: tuple[tuple[str, Any], ...] = (
                ("FLAGS", flag_list(uid, flags, recent, rev2)),
                ("UID", uid),
            )
            if self.condstore and uid in changes.modseqs:
                items += (modseq_item(changes.modseqs[uid]),)
            out.append(FetchResponse(number=number, items=items))
        return out

    def _highestmodseq(self, view: FolderView) -> UntaggedStatus:
        if view.highestmodseq:
            code = highestmodseq(view.highestmodseq)
            return UntaggedStatus(status="OK", code=code, text="Highest")
        return UntaggedStatus(status="OK", code=nomodseq(), text="No mod-sequences here")

    def _refusal(self, command: Command) -> str | None:
        """Why `command` is a BAD for its RFC 4466/7162 parameters, or None."""
        try:
            if isinstance(command, Select):
                names = {name for name, _value in command.parameters}
                if names - _SELECT_PARAMETERS:
                    return "unknown SELECT parameter"
                options = select_options(command.parameters)
                if options.qresync is not None and not self.qresync:
                    return "QRESYNC must be ENABLEd first (RFC 7162 §3.2.5)"
            elif isinstance(command, Fetch):
                if {name for name, _value in command.modifiers} - _FETCH_MODIFIERS:
                    return "unknown FETCH modifier"
                if fetch_options(command.modifiers, uid=command.uid).vanished and not self.qresync:
                    return "VANISHED needs QRESYNC ENABLEd (RFC 7162 §3.2.6)"
            elif isinstance(command, Store):
                if {name for name, _value in command.modifiers} - _STORE_MODIFIERS:
                    return "unknown STORE modifier"
                store_unchangedsince(command.modifiers)
        except ParseError as exc:
            return str(exc)
        return None

    def _flag_lists(self, view: FolderView) -> list[Response]:
        defined = [*_SYSTEM_ORDER, *view.keywords]
        if view.readonly:
            # RFC 9051 §6.3.3: nothing can be changed permanently in an EXAMINEd folder.
            permanent: list[str] = []
        else:
            permanent = [*defined, *(["\\*"] if view.can_create_keywords else [])]
        return [
            Untagged.flags(defined),
            UntaggedStatus(
                status="OK",
                code=ResponseCode.permanentflags(permanent),
                text="Flags permitted" if permanent else "Read-only mailbox",
            ),
        ]

    def _view(self) -> FolderView:
        view = self.view
        assert view is not None, "the core allows this command only in the selected state"
        return view

    # -- any state -------------------------------------------------------------------------

    def _capability(self, command: Command, rev2: bool) -> list[Response]:
        return [
            Untagged.capability(self.capabilities),
            _tagged(command.tag, "OK", "CAPABILITY completed"),
        ]

    def _noop(self, command: Command, rev2: bool) -> list[Response]:
        # NOOP and CHECK (RFC 9051 §6.1.2, RFC 3501 §6.4.1): the updates are the point;
        # `handle` adds them.
        return [_tagged(command.tag, "OK", f"{type(command).__name__.upper()} completed")]

    def _logout(self, command: Command, rev2: bool) -> list[Response]:
        # RFC 9051 §6.1.3: BYE first, then the tagged OK.
        self.ended = True
        return [
            UntaggedStatus(status="BYE", text="Logging out"),
            _tagged(command.tag, "OK", "LOGOUT completed"),
        ]

    def _enable(self, command: Enable, rev2: bool) -> list[Response]:
        # RFC 5161 §3.1: unknown names are ignored; the ENABLED list holds what this
        # command switched on.
        known = {name.upper(): name for name in ENABLE_EXTENSIONS}
        enabled = [known[name] for name in dict.fromkeys(command.capabilities) if name in known]
        if rev2:
            enabled = [name for name in enabled if name != "IMAP4rev2"]
        # Each is named once: a repeated ENABLE lists nothing it already switched on.
        enabled = [
            name
            for name in enabled
            if not (name == "CONDSTORE" and self.condstore)
            and not (name == "QRESYNC" and self.qresync)
        ]
        if "QRESYNC" in enabled:
            self.qresync = self.condstore = True  # RFC 7162 §3.2.3: QRESYNC implies CONDSTORE
        if "CONDSTORE" in enabled:
            self.condstore = True
        return [Untagged.enabled(enabled), _tagged(command.tag, "OK", "ENABLE completed")]

    def _id(self, command: Command, rev2: bool) -> list[Response]:
        # RFC 2971 §3.2: what we are, whatever the client said it is.
        return [
            Untagged.id([("name", "sansmail"), ("version", __version__)]),
            _tagged(command.tag, "OK", "ID completed"),
        ]

    def _namespace(self, command: Command, rev2: bool) -> list[Response]:
        # RFC 2342 §5: one personal namespace, no others.
        return [
            Untagged.namespace(personal=[("", SEPARATOR)]),
            _tagged(command.tag, "OK", "NAMESPACE completed"),
        ]

    # -- SELECT, CLOSE, UNSELECT ---------------------------------------------------------

    def _select(self, command: Select, rev2: bool) -> list[Response]:
        out: list[Response] = []
        if self.view is not None:
            # RFC 9051 §6.3.2: the old folder is closed (without expunge) first.
            self._release()
            out.append(
                UntaggedStatus(
                    status="OK", code=ResponseCode(name="CLOSED"), text="Previous mailbox closed"
                )
            )
        try:
            view = self.account.select(command.mailbox, readonly=command.readonly)
        except ImapStoreError as exc:
            # The core deselects on NO; so do we (done above).
            return [*out, _folders.no(command.tag, exc)]
        self.view = view
        messages = view.messages
        out.append(Untagged.exists(len(messages)))
        if not rev2:
            out.append(Untagged.recent(len(view.recent)))
        out += self._flag_lists(view)
        if not rev2:
            unseen = next((n for n, m in enumerate(messages, 1) if "\\Seen" not in m.flags), None)
            if unseen is not None:
                out.append(_status_code("UNSEEN", unseen, f"Message {unseen} is first unseen"))
        out.append(_status_code("UIDVALIDITY", view.uidvalidity, "UIDs valid"))
        out.append(_status_code("UIDNEXT", view.uidnext, "Predicted next UID"))
        if self.condstore:
            out.append(self._highestmodseq(view))
        if rev2:
            # RFC 9051 §6.3.2: the LIST reply gives the name's canonical form.
            out.append(Untagged.mailbox_list(attributes=[], delimiter=SEPARATOR, mailbox=view.name))
        qresync = select_options(command.parameters).qresync
        if qresync is not None and qresync.uidvalidity == view.uidvalidity and view.highestmodseq:
            out += _messages.resync(view, qresync, rev2=rev2)
        mode = "READ-ONLY" if view.readonly else "READ-WRITE"
        verb = "EXAMINE" if command.readonly else "SELECT"
        out.append(
            Tagged(
                tag=command.tag, status="OK", code=ResponseCode(name=mode), text=f"{verb} completed"
            )
        )
        return out

    def _close(self, command: Command, rev2: bool) -> list[Response]:
        # RFC 9051 §6.4.1: expunge silently (not in a read-only folder), then leave.
        view = self._view()
        try:
            if not view.readonly:
                self.expunged += len(view.expunge())
        except FolderGoneError:
            pass  # leaving anyway
        self._release()
        return [_tagged(command.tag, "OK", "CLOSE completed")]

    def _unselect(self, command: Command, rev2: bool) -> list[Response]:
        self._release()
        return [_tagged(command.tag, "OK", "UNSELECT completed")]

    # -- messages -------------------------------------------------------------------------

    def _append(self, command: Append, rev2: bool) -> list[Response]:
        """APPEND, and MULTIAPPEND (RFC 3502): every message or none. The storage quota
        is checked for all of them first; a message the store refuses after others went
        in takes those out again (flagged \\Deleted and expunged by UID)."""
        messages = [(command.flags, command.date, command.message)]
        messages += [(m.flags, m.date, m.message) for m in command.more]
        if not all(message for _flags, _date, message in messages):
            return [_tagged(command.tag, "NO", "Cannot append an empty message")]
        uids: list[int] = []
        try:
            if command.more:
                self.account.check_quota(sum(len(message) for _f, _d, message in messages))
            for flags, date, message in messages:
                kept = [f for f in flags if f != "\\Recent"]
                result = self.account.append(command.mailbox, message, kept, date)
                uids.append(result.uid)
        except NoSuchFolderError as exc:
            # RFC 9051 §6.3.12: the client may CREATE and try again. (Gone part way
            # through a MULTIAPPEND: with the folder went what was appended.)
            return [_folders.no(command.tag, exc, code="TRYCREATE")]
        except ImapStoreError as exc:
            self._take_back(command.mailbox, uids)
            return [_folders.no(command.tag, exc)]
        except BaseException:
            self._take_back(command.mailbox, uids)
            raise
        if len(uids) == 1:
            code = ResponseCode.appenduid(result.uidvalidity, uids[0])
        else:  # RFC 4315 §3: a uid-set for MULTIAPPEND
            code = ResponseCode(
                name="APPENDUID", data=(result.uidvalidity, Atom(str(SequenceSet.of(*uids))))
            )
        return [Tagged(tag=command.tag, status="OK", code=code, text="APPEND completed")]

    def _take_back(self, name: str, uids: list[int]) -> None:
        """Remove the messages of a MULTIAPPEND that failed part way (RFC 3502 §6.3.11:
        none of them may stay)."""
        if not uids:
            return
        # Nothing more can be done if this fails too: the NO goes out all the same.
        with contextlib.suppress(ImapStoreError):
            view = self.account.select(name)
            try:
                view.store_flags(uids, ["\\Deleted"], FlagMode.ADD)
                view.expunge(uids)
            finally:
                view.close()

    def _expunge(self, command: Expunge | UidExpunge, rev2: bool) -> list[Response]:
        responses, removed = _messages.expunge(self._view(), command)
        self.expunged += removed
        return responses

    def _copy(self, command: Copy | Move, rev2: bool) -> list[Response]:
        if isinstance(command, Copy):
            refusal = _quota.copy_refusal(self.account, self._view(), command)
            if refusal is not None:
                return [refusal]
        responses, moved = _messages.copy(self._view(), command)
        self.expunged += moved
        return responses


def _modseq_sent(responses: list[Response]) -> int:
    """The highest MODSEQ among FETCH `responses` (0: none)."""
    top = 0
    for response in responses:
        if isinstance(response, FetchResponse):
            for name, value in response.items:
                if name == "MODSEQ" and isinstance(value, list) and isinstance(value[0], int):
                    top = max(top, value[0])
        elif isinstance(response, FetchBatch) and "MODSEQ" in response.names:
            at = response.names.index("MODSEQ") + 1
            # The batch writes "(n)" already encoded.
            top = max([top, *(int(bytes(row[at])[1:-1]) for row in response.rows)])
    return top


def _enables_condstore(command: Command) -> bool:
    """Whether `command` is a CONDSTORE enabling command (RFC 7162 §3.1); ENABLE is
    `_enable`'s."""
    if isinstance(command, Select):
        return bool(command.parameters)  # CONDSTORE or QRESYNC, the only ones let in
    if isinstance(command, Fetch):
        return bool(command.modifiers) or FetchAttribute(name="MODSEQ") in command.items
    if isinstance(command, Store):
        return bool(command.modifiers)
    if isinstance(command, Search | Sort | Thread):
        key = command.criteria if isinstance(command, Search) else command.search
        return modseq_keys(key)
    return False


def _no_updates_after(command: Command) -> bool:
    # SELECT has just reported everything; FETCH, STORE and SEARCH may not carry EXPUNGE.
    if isinstance(command, Select):
        return True
    return isinstance(command, _NO_EXPUNGE) and not getattr(command, "uid", False)


def _tagged(tag: str, status: str, text: str) -> Tagged:
    return Tagged(tag=tag, status=status, text=text)  # type: ignore[arg-type]


def _status_code(name: str, number: int, text: str) -> UntaggedStatus:
    return UntaggedStatus(status="OK", code=ResponseCode(name=name, data=(number,)), text=text)
