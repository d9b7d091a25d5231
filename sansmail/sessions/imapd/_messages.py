"""The selected-state message commands: FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE and
UID EXPUNGE (RFC 9051 §6.4), over the session's `FolderView`.

Each function takes the view and the parsed command and returns the responses, the
tagged one last. None calls `FolderView.sync`: the session adds the news where RFC 9051
§7.5.1 allows it. Message sets are resolved against the view's list as last reported
(`select_messages`): sequence numbers past the end are a BAD (`BadSetError`), UIDs that
name no message are skipped (§6.4.9). FETCH and SEARCH are evaluated by `_fetch` and
`_search`; here they are bound to the store (`ViewIndex` is SEARCH's view of what the
store keeps). SORT and THREAD (RFC 5256) select with SEARCH and order with
`sansmail.imap._thread`, from the header fields the index keeps: no file is read for a
message whose fields are kept.

SEARCHRES (RFC 5182). SEARCH RETURN (SAVE) keeps its result, as UIDs, with the view
that made it; "$" in a later command is that result (what was expunged since is no
longer in it), and the empty set before any SAVE. A new view (SELECT, EXAMINE) starts
without one, and UNSELECT or CLOSE drop the view and its result with it.

FETCH in batches. What a client lists a folder with (FLAGS, INTERNALDATE, RFC822.SIZE,
ENVELOPE, BODYSTRUCTURE, BODY, UID) and downloads it with (BODY.PEEK[]) is answered
column by column instead of message by message: one read of the kept structures for
the whole set (`FolderView.structures`), the missing ones derived and kept in one write
per `_KEEP_EVERY` messages, content read in one pass (`FolderView.contents`), and every
value made `Encoded` once, so the responses are `FetchBatch` rows the writer joins. It
answers exactly what `fetch` would: the same values, in the order asked. A UTF-8
session differs only for a structure holding a literal (an 8-bit header, which it may
get quoted): that message alone goes the per-message way.
"""

from __future__ import annotations

import bisect
import datetime
import sqlite3
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

from sansmail.imap import (
    Atom,
    BodySection,
    Copy,
    Encoded,
    Expunge,
    Fetch,
    FetchAttribute,
    FetchBatch,
    FetchItem,
    FetchResponse,
    Move,
    Response,
    ResponseCode,
    Search,
    SearchKey,
    Section,
    SequenceSet,
    Sort,
    Store,
    Tagged,
    Thread,
    UidExpunge,
    Untagged,
    UntaggedStatus,
    Value,
    encode_datetime,
    encode_value,
)
from sansmail.imap._condstore import (
    Qresync,
    fetch_options,
    modified,
    modseq_item,
    store_unchangedsince,
    vanished,
)
from sansmail.imap._thread import (
    SortItem,
    format_threads,
    thread_ordered_subject,
    thread_references,
)
from sansmail.imap._thread import sort as sort_items
from sansmail.sessions.imapd._fetch import (
    BATCH_ATTRIBUTES,
    FetchContext,
    derive_structures,
    fetch,
    message_flags,
    string_value,
    structures_from_cache,
)
from sansmail.sessions.imapd._folders import is_storage_failure, no, ok
from sansmail.sessions.imapd._search import (
    SearchContext,
    SearchIndex,
    modseq_keys,
    search,
    search_data,
)
from sansmail.storage.maildir import (
    FlagMode,
    FolderView,
    ImapMessage,
    ImapStoreError,
    NoSuchFolderError,
    SearchData,
    StoreResult,
    Structures,
)

__all__ = [
    "BadSetError",
    "ViewIndex",
    "copy",
    "expunge",
    "fetch_messages",
    "flag_list",
    "resync",
    "search_messages",
    "select_messages",
    "sort_messages",
    "store",
    "thread_messages",
]

_FLAG_MODES = {"replace": FlagMode.REPLACE, "add": FlagMode.ADD, "remove": FlagMode.REMOVE}
_MODSEQ: Final = FetchAttribute(name="MODSEQ")
_FLAGS: Final = FetchAttribute(name="FLAGS")

# Derived structures are kept this many messages at a time: one write per batch, and an
# interrupted first FETCH of a big folder keeps most of its work.
_KEEP_EVERY: Final = 500
_NIL: Final = Encoded(b"NIL")
_WHOLE: Final = BodySection(section=Section(), peek=True)
_STRUCTURE_FIELDS: Final = {"ENVELOPE": 0, "BODYSTRUCTURE": 1, "BODY": 2}
#: The header fields each SORT key and THREAD algorithm compares (RFC 5256 §2, §3):
#: only those are read from the index.
_FIELDS_OF: Final = {
    "ARRIVAL": (),
    "SIZE": (),
    "DATE": ("date",),
    "SUBJECT": ("subject",),
    "FROM": ("from",),
    "DISPLAYFROM": ("from",),
    "TO": ("to",),
    "DISPLAYTO": ("to",),
    "CC": ("cc",),
    "ORDEREDSUBJECT": ("subject", "date"),
    "REFERENCES": ("subject", "date", "message-id", "references", "in-reply-to"),
}
#: The result of the last SEARCH RETURN (SAVE) on a view, as UIDs (RFC 5182). Kept
#: beside the view rather than in it: a view that goes (UNSELECT, CLOSE, SELECT) takes
#: its result along, as RFC 5182 §2.1 wants.
_SAVED: weakref.WeakKeyDictionary[FolderView, frozenset[int]] = weakref.WeakKeyDictionary()


class BadSetError(Exception):
    """A message sequence number past the end of the mailbox: the command gets BAD (RFC
    9051 §6.4.5)."""


def select_messages(
    view: FolderView, sequence_set: SequenceSet, *, uid: bool
) -> list[tuple[int, ImapMessage]]:
    """(sequence number, message) of the messages a set names, ascending."""
    messages = view.messages
    if sequence_set.saved:
        saved = _SAVED.get(view, frozenset())
        return [(n, m) for n, m in enumerate(messages, start=1) if m.uid in saved]
    if not uid:
        spans = sequence_set.resolve(len(messages))
        if spans and spans[-1][-1] > len(messages):
            raise BadSetError
        return [(n, messages[n - 1]) for span in spans for n in span]
    # The list is in ascending UID order: each span is one slice of it.
    uids = view.uids
    largest = uids[-1] if uids else 0
    out: list[tuple[int, ImapMessage]] = []
    for span in sequence_set.resolve(largest):
        first = bisect.bisect_left(uids, span.start)
        last = bisect.bisect_left(uids, span.stop, first)
        out += [(n + 1, messages[n]) for n in range(first, last)]
    return out


def flag_list(uid: int, flags: frozenset[str], recent: frozenset[int], rev2: bool) -> Value:
    """FLAGS data for one message, with \\Recent for a rev1 session that has it."""
    listed = message_flags(flags)
    if not rev2 and uid in recent:
        listed.append(Atom("\\Recent"))  # RFC 3501 §2.3.2: IMAP4rev1 only
    return listed


def fetch_messages(
    view: FolderView,
    command: Fetch,
    *,
    rev2: bool,
    utf8: bool = False,
    condstore: bool = False,
    told: int = 0,
) -> list[Response]:
    """[UID] FETCH (RFC 9051 §6.4.5, §6.4.9). `utf8`: the session writes strings in
    their UTF-8 form (IMAP4rev2 or UTF8=ACCEPT). `condstore`: the client enabled
    CONDSTORE (RFC 7162), so FLAGS come with their MODSEQ. `told`: the highest MODSEQ
    the session's FETCHes have told the client in this folder.

    With MODSEQ (asked for, implied by CHANGEDSINCE, or going with FLAGS under
    CONDSTORE) the flags and mod-sequence are read from the store together, so the
    pair is one the store held: a message whose flags changed since the view's last
    report gets its new FLAGS with it (a FETCH may carry them unasked, RFC 9051 §7.5.2),
    never old flags beside a new mod-sequence, after which a CHANGEDSINCE would skip
    the change. CHANGEDSINCE (§3.1.4.1) keeps the messages changed after it, and
    VANISHED (§3.2.6) first reports the UIDs of the set expunged after it."""
    options = fetch_options(command.modifiers, uid=command.uid)
    if options.changedsince is None:
        selected = select_messages(view, command.sequence_set, uid=command.uid)
    asked = list(command.items)
    with_modseq = (
        _MODSEQ in asked or options.changedsince is not None or (condstore and _FLAGS in asked)
    )
    out: list[Response] = []
    modseqs: dict[int, int] = {}
    if with_modseq:
        if _MODSEQ not in asked:
            asked.append(_MODSEQ)
        if options.vanished and options.changedsince is not None:
            gone = _vanished(view, command.sequence_set, options.changedsince)
            if gone:
                out.append(vanished(gone, earlier=True))
        if options.changedsince is None:
            states = view.flag_states([m.uid for _n, m in selected])
        else:
            selected, states = _changed(
                view, command.sequence_set, options.changedsince, command.uid
            )
        selected, modseqs = _with_states(view, selected, states, asked, told=told)
    if len(asked) != len(command.items):
        command = attrs.evolve(command, items=tuple(asked))
    names = _batch_names(command)
    done = ok(command.tag, f"{'UID ' if command.uid else ''}FETCH completed")
    if names is not None:
        out += _fetch_batch(view, selected, names, rev2=rev2, utf8=utf8, modseqs=modseqs)
        out.append(done)
        return out
    recent = view.recent
    for number, message in selected:
        uid = message.uid
        ctx = FetchContext(
            message=message,
            load=lambda uid=uid: view.read(uid),  # type: ignore[misc]
            get_cache=lambda uid=uid: view.get_cache(uid),  # type: ignore[misc]
            set_cache=lambda blob, uid=uid: _cache(view.set_cache, uid, blob),  # type: ignore[misc]
            rev2=rev2,
            modseq=modseqs.get(uid) if with_modseq else None,
        )
        result = fetch(asked, ctx)
        if result.error is not None:
            # E.g. BINARY of an unknown transfer encoding: NO [UNKNOWN-CTE] (RFC 3516 §4.3).
            code = ResponseCode(name=result.error)
            return [*out, Tagged(tag=command.tag, status="NO", code=code, text="Cannot fetch")]
        items = dict(result.items)
        flags = message.flags
        if result.set_seen and not view.readonly and not result.gone and _unseen(view, message):
            # RFC 9051 §6.4.5: a non-PEEK body fetch sets \Seen, and the new flags are
            # reported with it (and, under CONDSTORE, their mod-sequence).
            stored = _set_seen(view, uid)
            if stored is not None:
                flags = stored.flags.get(uid, flags | {"\\Seen"})
                items["FLAGS"] = None
                if condstore and uid in stored.modseqs:
                    items["MODSEQ"] = [stored.modseqs[uid]]
        if "FLAGS" in items:
            items["FLAGS"] = flag_list(uid, flags, recent, rev2)
        if command.uid and "UID" not in items:
            items = {"UID": uid, **items}  # RFC 9051 §6.4.9: UID FETCH answers carry the UID
        out.append(FetchResponse(number=number, items=tuple(items.items())))
    out.append(done)
    return out


def _set_seen(view: FolderView, uid: int) -> StoreResult | None:
    """Blocking: \\Seen added to message `uid` for a body fetch; None when a full or
    failing disk refused it. The content is served all the same (a FETCH is a read,
    and reads go on while the disk is full), without the FLAGS of a change that did not
    happen: the message stays unseen, and its next body fetch tries again."""
    try:
        return view.store([uid], ["\\Seen"], FlagMode.ADD)
    except (OSError, sqlite3.OperationalError) as exc:
        if not is_storage_failure(exc):
            raise
        return None


def _cache(write: Callable[..., None], *args: Any) -> bool:
    """Blocking: keep what is only a cache of the files (derived structures, search
    data); a full or failing disk skips it (False), and the FETCH, SEARCH or SORT that
    made it is answered anyway (it is made again next time)."""
    try:
        write(*args)
    except (OSError, sqlite3.OperationalError) as exc:
        if not is_storage_failure(exc):
            raise
        return False
    return True


def _unseen(view: FolderView, message: ImapMessage) -> bool:
    """Whether a body fetch must still set \\Seen. The view's flags are what this session
    was last told: another session may have taken \\Seen away since, and the user has
    just read the message, so a message the view holds read is looked up in the store
    (one indexed row) rather than left unread."""
    if "\\Seen" not in message.flags:
        return True
    state = view.flag_states([message.uid]).get(message.uid)
    return state is not None and "\\Seen" not in state[1]


def resync(view: FolderView, qresync: Qresync, *, rev2: bool) -> list[Response]:
    """What SELECT (QRESYNC ...) adds when the UIDVALIDITY is the client's (RFC 7162
    §3.2.5): ``* VANISHED (EARLIER)`` with the known UIDs expunged since its
    mod-sequence (all UIDs below UIDNEXT when it named none), then a FETCH of UID, FLAGS
    and MODSEQ for every message changed since, new ones included."""
    known = qresync.known_uids
    spans = known.resolve(0) if known is not None else (range(1, view.uidnext),)
    out: list[Response] = []
    gone = view.vanished_since(qresync.modseq, spans)
    if gone:
        out.append(vanished(gone, earlier=True))
    changed = view.changed_since(qresync.modseq)
    recent = view.recent
    uids = view.uids
    for uid in sorted(changed):
        modseq, flags = changed[uid]
        number = bisect.bisect_left(uids, uid) + 1
        items = (("UID", uid), ("FLAGS", flag_list(uid, flags, recent, rev2)), modseq_item(modseq))
        out.append(FetchResponse(number=number, items=items))
    return out


def _changed(
    view: FolderView, sequence_set: SequenceSet, since: int, uid: bool
) -> tuple[list[tuple[int, ImapMessage]], dict[int, tuple[int, frozenset[str]]]]:
    """What `select_messages` selects, of the messages changed after `since` only, and
    their states: found through the store's mod-sequences, so a resync of a big folder
    makes no message that did not change."""
    states = view.changed_since(since)
    uids = view.uids
    messages = view.messages
    if sequence_set.saved:
        saved = _SAVED.get(view, frozenset())
        wanted = sorted(u for u in states if u in saved)
    else:
        largest = (uids[-1] if uids else 0) if uid else len(uids)
        spans = sequence_set.resolve(largest)
        if not uid and spans and spans[-1][-1] > len(uids):
            raise BadSetError
        starts = [span.start for span in spans]

        def named(key: int) -> bool:
            at = bisect.bisect_right(starts, key) - 1
            return at >= 0 and key in spans[at]

        wanted = [u for u in sorted(states) if named(u if uid else bisect.bisect_left(uids, u) + 1)]
    out = []
    for u in wanted:
        pos = bisect.bisect_left(uids, u)
        out.append((pos + 1, messages[pos]))
    return out, states


def _with_states(
    view: FolderView,
    selected: list[tuple[int, ImapMessage]],
    states: dict[int, tuple[int, frozenset[str]]],
    asked: list[FetchItem],
    *,
    told: int = 0,
) -> tuple[list[tuple[int, ImapMessage]], dict[int, int]]:
    """The messages of `selected` with the flags of `states` (the store's now), and UID
    -> mod-sequence. A message whose flags are not the view's gets FLAGS in `asked` (so
    the pair goes out together). One expunged meanwhile keeps the view's flags, with
    the view's HIGHESTMODSEQ, or the highest MODSEQ a FETCH has `told` the client when
    that is higher: the session's own STORE (or body fetch's \\Seen) may have given the
    message a mod-sequence above the view's, and none may go down (RFC 7162 §3.1.3)."""
    out: list[tuple[int, ImapMessage]] = []
    modseqs: dict[int, int] = {}
    gone_modseq = max(view.highestmodseq, told)
    for number, message in selected:
        state = states.get(message.uid)
        if state is None:
            modseqs[message.uid] = gone_modseq
            out.append((number, message))
            continue
        modseq, flags = state
        modseqs[message.uid] = modseq
        if flags == message.flags:
            out.append((number, message))
            continue
        out.append((number, attrs.evolve(message, flags=flags)))
        if _FLAGS not in asked:
            asked.insert(0, _FLAGS)
    return out, modseqs


def _vanished(view: FolderView, uids: SequenceSet, since: int) -> list[int]:
    """UID FETCH ... (CHANGEDSINCE since VANISHED): the UIDs of the set expunged after
    `since` (RFC 7162 §3.2.6); "*" is the highest UID assigned."""
    if uids.saved:
        saved = _SAVED.get(view, frozenset())
        spans: tuple[range, ...] = tuple(range(uid, uid + 1) for uid in sorted(saved))
    else:
        spans = uids.resolve(max(view.uidnext - 1, 0))
    return view.vanished_since(since, spans)


def _batch_names(command: Fetch) -> tuple[str, ...] | None:
    """The response names of a FETCH the batch path answers, in the order `fetch`
    would give them (duplicates once, UID first when UID FETCH did not ask for it), or
    None when an item needs the per-message path."""
    names: list[str] = []
    for item in command.items:
        if isinstance(item, FetchAttribute) and item.name in BATCH_ATTRIBUTES:
            name = item.name
        elif item == _WHOLE:
            name = item.response_name
        else:
            return None
        if name not in names:
            names.append(name)
    if command.uid and "UID" not in names:
        names.insert(0, "UID")  # RFC 9051 §6.4.9
    return tuple(names)


def _fetch_batch(
    view: FolderView,
    selected: list[tuple[int, ImapMessage]],
    names: tuple[str, ...],
    *,
    rev2: bool,
    utf8: bool,
    modseqs: dict[int, int],
) -> list[Response]:
    if not selected:
        return []
    messages = [message for _n, message in selected]
    uids = [message.uid for message in messages]
    structural = [_STRUCTURE_FIELDS[name] for name in names if name in _STRUCTURE_FIELDS]
    kept = _kept_structures(view, uids, structural) if structural else {}
    contents = dict(view.contents(uids)) if _WHOLE.response_name in names else {}
    recent = view.recent
    columns: list[list[Any]] = [
        _column(
            name, messages, kept=kept, contents=contents, recent=recent, rev2=rev2, modseqs=modseqs
        )
        for name in names
    ]
    rows: list[tuple[Any, ...]] = list(
        zip([number for number, _m in selected], *columns, strict=True)
    )
    if utf8 and structural:
        return _with_utf8_rows(view, rows, names, messages)
    return [FetchBatch(names=names, rows=tuple(rows))]


def _column(
    name: str,
    messages: list[ImapMessage],
    *,
    kept: dict[int, Structures],
    contents: dict[int, bytes | None],
    recent: frozenset[int],
    rev2: bool,
    modseqs: dict[int, int],
) -> list[Any]:
    if name == "UID":
        return [m.uid for m in messages]
    if name == "MODSEQ":
        return [Encoded(b"(%d)" % modseqs[m.uid]) for m in messages]
    if name == "RFC822.SIZE":
        return [m.size for m in messages]
    if name == "INTERNALDATE":
        return [encode_datetime(m.internaldate) for m in messages]
    if name == "FLAGS":
        # A folder has few distinct flag sets: each is written once.
        seen: dict[tuple[frozenset[str], bool], Encoded] = {}
        column = []
        for m in messages:
            key = (m.flags, not rev2 and m.uid in recent)
            value = seen.get(key)
            if value is None:
                value = seen[key] = encode_value(flag_list(m.uid, m.flags, recent, rev2))
            column.append(value)
        return column
    if name in _STRUCTURE_FIELDS:
        field = _STRUCTURE_FIELDS[name]
        nothing = Structures()
        column = []
        for m in messages:
            fragment = kept.get(m.uid, nothing)[field]
            column.append(_NIL if fragment is None else Encoded(fragment))
        return column
    # BODY[]: what `fetch` answers for it, NIL for a message expunged meanwhile.
    return [
        _NIL if (raw := contents.get(m.uid)) is None else encode_value(string_value(raw))
        for m in messages
    ]


def _kept_structures(view: FolderView, uids: list[int], fields: list[int]) -> dict[int, Structures]:
    """The structures of the messages of `uids` that still exist, with every field of
    `fields` there: derived from a kept blob or from the content where missing (and
    kept for next time); a message expunged meanwhile has None there."""
    kept = view.structures(uids)
    missing = [uid for uid, s in kept.items() if any(s[f] is None for f in fields)]
    made: dict[int, Structures] = {}

    def keep() -> None:
        if made:
            _cache(view.set_structures, dict(made))
            kept.update(made)
            made.clear()

    unknown = []
    if missing:
        for uid, s in view.structures(missing, cache=True).items():
            derived = structures_from_cache(s.cache)
            if derived is None:
                unknown.append(uid)
            else:
                made[uid] = derived
        keep()
    for uid, raw in view.contents(unknown):
        if raw is not None:  # expunged meanwhile: NIL, as `fetch` answers
            made[uid] = derive_structures(raw)
        if len(made) >= _KEEP_EVERY:
            keep()
    keep()
    return kept


def _with_utf8_rows(
    view: FolderView,
    rows: list[tuple[Any, ...]],
    names: tuple[str, ...],
    messages: list[ImapMessage],
) -> list[Response]:
    """The batch for a UTF-8 session: a row whose structure holds a literal (an 8-bit
    string, which this session may get quoted) is written from the trees, as `fetch`
    does; the rows around it stay batches."""
    fields = [(i, n) for i, n in enumerate(names) if n in _STRUCTURE_FIELDS]
    out: list[Response] = []
    start = 0
    for at, row in enumerate(rows):
        if not any(b"\r\n" in row[i + 1] for i, _n in fields):
            continue
        message = messages[at]
        uid = message.uid
        result = fetch(
            [FetchAttribute(name=n) for _i, n in fields],
            FetchContext(
                message=message,
                load=lambda uid=uid: view.read(uid),  # type: ignore[misc]
                get_cache=lambda uid=uid: view.get_cache(uid),  # type: ignore[misc]
                set_cache=lambda blob, uid=uid: _cache(view.set_cache, uid, blob),  # type: ignore[misc]
            ),
        )
        if start < at:
            out.append(FetchBatch(names=names, rows=tuple(rows[start:at])))
        items: list[tuple[str, Value]] = list(zip(names, row[1:], strict=True))
        for (i, name), (_name, tree) in zip(fields, result.items, strict=True):
            items[i] = (name, tree)
        out.append(FetchResponse(number=row[0], items=tuple(items)))
        start = at + 1
    if start < len(rows):
        out.append(FetchBatch(names=names, rows=tuple(rows[start:])))
    return out


def store(
    view: FolderView, command: Store, *, rev2: bool, condstore: bool = False
) -> list[Response]:
    """[UID] STORE (RFC 9051 §6.4.6): the new flags as FETCH responses; with .SILENT
    only where they are not what the client will believe.

    Under CONDSTORE (RFC 7162 §3.1.3) each FETCH carries the message's MODSEQ, and a
    message the STORE changed gets one even with .SILENT (its MODSEQ alone), so the
    client's cache learns the new mod-sequence. UNCHANGEDSINCE leaves alone the
    messages changed after it, named in the tagged OK's [MODIFIED] (sequence numbers,
    or UIDs for UID STORE)."""
    unchangedsince = store_unchangedsince(command.modifiers)
    targets = select_messages(view, command.sequence_set, uid=command.uid)
    flags = [f for f in command.flags if f != "\\Recent"]  # never stored (RFC 3501 §2.3.2)
    try:
        result = view.store(
            [m.uid for _n, m in targets],
            flags,
            _FLAG_MODES[command.mode],
            unchangedsince=unchangedsince,
        )
    except ImapStoreError as exc:
        return [no(command.tag, exc)]
    changed = result.flags
    out: list[Response] = []
    recent = view.recent
    for number, message in targets:
        if message.uid not in changed:
            continue  # expunged meanwhile (its EXPUNGE comes with a later sync), or refused
        # .SILENT: the client takes the flags to be its own ones changed as it asked,
        # while the view now counts the stored ones as told: where another session
        # changed them meanwhile, say so now (an unsolicited FETCH is always allowed).
        stored = changed[message.uid]
        items: list[tuple[str, Value]] = []
        if not command.silent or _lower(stored) != _believed(message.flags, flags, command.mode):
            items.append(("FLAGS", flag_list(message.uid, stored, recent, rev2)))
        if condstore and (items or stored != message.flags):
            items.append(modseq_item(result.modseqs[message.uid]))
        if items:
            if command.uid:
                items.append(("UID", message.uid))
            out.append(FetchResponse(number=number, items=tuple(items)))
    verb = f"{'UID ' if command.uid else ''}STORE"
    if result.modified:
        refused = set(result.modified)
        numbers = [m.uid if command.uid else n for n, m in targets if m.uid in refused]
        text = f"Conditional {verb} failed for some messages"
        out.append(Tagged(tag=command.tag, status="OK", code=modified(numbers), text=text))
        return out
    out.append(ok(command.tag, f"{verb} completed"))
    return out


def _believed(told: frozenset[str], flags: list[str], mode: str) -> frozenset[str]:
    """What a client that was told `told` believes after a STORE .SILENT of `flags`
    (flags compare without regard to case, RFC 9051 §2.3.2)."""
    told, given = _lower(told), _lower(flags)
    if mode == "add":
        return told | given
    if mode == "remove":
        return told - given
    return given


def _lower(flags: Iterable[str]) -> frozenset[str]:
    return frozenset(f.lower() for f in flags)


def copy(view: FolderView, command: Copy | Move) -> tuple[list[Response], int]:
    """[UID] COPY and [UID] MOVE (RFC 9051 §6.4.7, RFC 6851) with COPYUID (RFC 4315);
    also returns how many messages left the folder (MOVE)."""
    moving = isinstance(command, Move)
    verb = ("UID " if command.uid else "") + ("MOVE" if moving else "COPY")
    uids = [m.uid for _n, m in select_messages(view, command.sequence_set, uid=command.uid)]
    if not uids:
        # RFC 9051 §6.4.9: a UID set that names no message is not an error.
        return [ok(command.tag, f"{verb} completed, no messages")], 0
    try:
        result = view.move(uids, command.mailbox) if moving else view.copy(uids, command.mailbox)
    except NoSuchFolderError as exc:
        # RFC 9051 §6.4.7: the client may CREATE the folder and try again.
        return [no(command.tag, exc, code="TRYCREATE")], 0
    except ImapStoreError as exc:  # EXPUNGEISSUED among them (RFC 5530)
        return [no(command.tag, exc)], 0
    code = None
    if result.uids:
        code = ResponseCode.copyuid(
            result.uidvalidity,
            SequenceSet.of(*(source for source, _d in result.uids)),
            SequenceSet.of(*(dest for _s, dest in result.uids)),
        )
    if not moving:
        return [Tagged(tag=command.tag, status="OK", code=code, text=f"{verb} completed")], 0
    # RFC 6851 §4.3: COPYUID in an untagged OK, before the EXPUNGEs (which the session's
    # sync adds before the tagged OK).
    out: list[Response] = []
    if code is not None:
        out.append(UntaggedStatus(status="OK", code=code, text="Moved UIDs"))
    out.append(ok(command.tag, f"{verb} completed"))
    return out, len(result.uids)


def expunge(view: FolderView, command: Expunge | UidExpunge) -> tuple[list[Response], int]:
    """EXPUNGE and UID EXPUNGE (RFC 9051 §6.4.3, §6.4.9); the EXPUNGE responses come with
    the session's sync. Also returns how many messages were removed."""
    uids: list[int] | None = None
    if isinstance(command, UidExpunge):
        uids = [m.uid for _n, m in select_messages(view, command.sequence_set, uid=True)]
    try:
        removed = view.expunge(uids)
    except ImapStoreError as exc:
        return [no(command.tag, exc)], 0
    return [ok(command.tag, "EXPUNGE completed")], len(removed)


class ViewIndex(SearchIndex):
    """The `SearchIndex` of a view: the store's kept `SearchData`, first completed for
    the view's messages (each missing one read once, kept one write per `_KEEP_EVERY`),
    the header fields alone unless a text key asks for the texts.

    What a full disk kept from being stored is held here instead (`_unkept`), and the
    answers add it to the store's: a SEARCH or SORT while the disk is full answers as it
    would otherwise, only slower (texts are then read from the files)."""

    def __init__(self, view: FolderView) -> None:
        self._view = view
        self._complete: set[bool] = set()  # what was completed: fields (False), texts
        self._unkept: dict[int, SearchData] = {}

    def _fill(self, *, texts: bool) -> None:
        if texts in self._complete or True in self._complete:
            return
        view = self._view
        made: dict[int, SearchData] = {}
        for uid, raw in view.contents(view.search_missing(view.uids, texts=texts)):
            if raw is not None:  # expunged meanwhile: it matches no content key
                made[uid] = search_data(raw, texts=texts)
            if len(made) >= _KEEP_EVERY:
                self._keep(made)
                made = {}
        self._keep(made)
        self._complete.add(texts)

    def _keep(self, made: dict[int, SearchData]) -> None:
        if not _cache(self._view.keep_search_data, made):
            self._unkept.update(made)

    def header(self, name: bytes, needle: str) -> set[int]:
        self._fill(texts=False)
        lower = name.decode("latin-1")
        found = self._view.find_in_header(lower, needle)
        for uid, data in self._unkept.items():
            if any(n == lower and needle in value for n, value in data.fields):
                found.add(uid)
        return found

    def text(self, needle: str, *, bodies_only: bool) -> set[int] | None:
        self._fill(texts=True)
        if self._unkept:
            return None  # the files answer (the store's kept texts are not all there)
        return self._view.find_in_texts(needle, bodies_only=bodies_only)

    def fields(self, names: tuple[str, ...]) -> dict[int, dict[str, str]]:
        """UID -> {name: decoded, case-folded value of the first field so named}."""
        self._fill(texts=False)
        found = self._view.search_fields(names)
        for uid, data in self._unkept.items():
            values: dict[str, str] = {}
            for name, value in data.fields:
                if name in names:
                    values.setdefault(name, value)
            if values:
                found[uid] = values
        return found

    def sent(self) -> dict[int, datetime.date]:
        self._fill(texts=False)
        days = self._view.sent_days()
        days.update({uid: d.sent for uid, d in self._unkept.items() if d.sent is not None})
        return {uid: datetime.date.fromordinal(day) for uid, day in days.items()}


def _search(
    view: FolderView,
    criteria: SearchKey,
    *,
    rev2: bool,
    index: ViewIndex,
    modseqs: dict[int, int] | None = None,
) -> list[int]:
    """The sequence numbers of the view's messages that match `criteria`."""
    ctx = SearchContext(
        messages=view.messages,
        load=view.read,
        recent=frozenset() if rev2 else view.recent,
        saved=_SAVED.get(view, frozenset()),
        index=index,
        uids=view.uids,
        modseqs=modseqs,
    )
    return search(criteria, ctx)


def _modseqs(view: FolderView, criteria: SearchKey) -> dict[int, int] | None:
    """UID -> mod-sequence of the view's messages when `criteria` compares them."""
    if not modseq_keys(criteria):
        return None
    return {uid: modseq for uid, (modseq, _flags) in view.flag_states(view.uids).items()}


def search_messages(view: FolderView, command: Search, *, rev2: bool) -> list[Response]:
    """[UID] SEARCH (RFC 9051 §6.4.4): ``* SEARCH`` for a rev1 client that gave no
    RETURN, ``* ESEARCH`` otherwise (RFC 4731; no RETURN options means ALL). RETURN
    (SAVE) keeps the result for "$" (RFC 5182)."""
    messages = view.messages
    modseqs = _modseqs(view, command.criteria)
    numbers = _search(view, command.criteria, rev2=rev2, index=ViewIndex(view), modseqs=modseqs)
    found = [messages[n - 1].uid for n in numbers] if command.uid else numbers
    done = ok(command.tag, f"{'UID ' if command.uid else ''}SEARCH completed")

    def highest(chosen: list[int]) -> int | None:
        # RFC 7162 §3.1.5: with a MODSEQ key, the highest mod-sequence of the messages
        # returned (none when nothing matched).
        if modseqs is None or not chosen:
            return None
        uid_of = dict(zip(found, (messages[n - 1].uid for n in numbers), strict=True))
        return max(modseqs.get(uid_of[f], 0) for f in chosen)

    if command.return_options is None and not rev2:
        top = highest(found)
        if top is None:
            return [Untagged.search(found), done]
        return [Untagged(keyword="SEARCH", data=(*found, [Atom("MODSEQ"), top])), done]
    options = command.return_options or ("ALL",)
    if "SAVE" in options:
        uids = [messages[n - 1].uid for n in numbers]
        others = set(options) - {"SAVE"}
        if uids and others and others <= {"MIN", "MAX"}:
            # RFC 5182 §2.4: with MIN and/or MAX alone, only those are kept.
            uids = [min(uids)] * ("MIN" in others) + [max(uids)] * ("MAX" in others)
        _SAVED[view] = frozenset(uids)
        if not others:
            return [done]  # RFC 5182 §2.1: SAVE alone gives no ESEARCH
    results: list[tuple[str, int | SequenceSet]] = []
    if "MIN" in options and found:
        results.append(("MIN", min(found)))
    if "MAX" in options and found:
        results.append(("MAX", max(found)))
    if "COUNT" in options:
        results.append(("COUNT", len(found)))
    if "ALL" in options and found:  # RFC 4731 §3.1: ALL is left out when nothing matched
        results.append(("ALL", SequenceSet.of(*found)))
    if {"ALL", "COUNT"} & set(options):
        returned = found
    else:  # MIN and/or MAX alone: theirs (RFC 7162 §3.1.5)
        returned = [value for name, value in results if isinstance(value, int)]
    top = highest(returned)
    if top is not None:
        results.append(("MODSEQ", top))
    return [Untagged.esearch(tag=command.tag, uid=command.uid, results=results), done]


def _sort_items(
    view: FolderView, command: Sort | Thread, *, rev2: bool
) -> tuple[list[SortItem], int | None]:
    """The messages SORT or THREAD orders: those its search keys match, with the header
    fields the orders compare, from the index; and with a MODSEQ key, the highest
    mod-sequence among them (RFC 7162 §3.1.5)."""
    messages = view.messages
    index = ViewIndex(view)
    modseqs = _modseqs(view, command.search)
    numbers = _search(view, command.search, rev2=rev2, index=index, modseqs=modseqs)
    if isinstance(command, Sort):
        names = {name for key, _ in command.criteria for name in _FIELDS_OF[key]}
    else:
        names = set(_FIELDS_OF[command.algorithm])
    fields = index.fields(tuple(names)) if numbers and names else {}
    items = []
    for n in numbers:
        message = messages[n - 1]
        items.append(
            SortItem(
                number=message.uid if command.uid else n,
                seq=n,
                arrival=message.internaldate,
                size=message.size,
                fields=fields.get(message.uid, {}),
            )
        )
    if modseqs is None or not numbers:
        return items, None
    return items, max(modseqs.get(messages[n - 1].uid, 0) for n in numbers)


def sort_messages(view: FolderView, command: Sort, *, rev2: bool) -> list[Response]:
    """[UID] SORT (RFC 5256 §3, RFC 5957): ``* SORT`` with the numbers in order."""
    items, top = _sort_items(view, command, rev2=rev2)
    ordered: list[Value] = list(sort_items(items, command.criteria))
    if top is not None:
        ordered.append([Atom("MODSEQ"), top])  # sort-data's search-sort-mod-seq
    return [
        Untagged(keyword="SORT", data=tuple(ordered)),
        ok(command.tag, f"{'UID ' if command.uid else ''}SORT completed"),
    ]


def thread_messages(view: FolderView, command: Thread, *, rev2: bool) -> list[Response]:
    """[UID] THREAD (RFC 5256 §3): ``* THREAD`` with the threads in the grammar of §4."""
    items, _top = _sort_items(view, command, rev2=rev2)
    if command.algorithm == "REFERENCES":
        threads = thread_references(items)
    else:
        threads = thread_ordered_subject(items)
    text = format_threads(threads)
    return [
        Untagged(keyword="THREAD", data=(Encoded(text.encode("ascii")),) if text else ()),
        ok(command.tag, f"{'UID ' if command.uid else ''}THREAD completed"),
    ]
