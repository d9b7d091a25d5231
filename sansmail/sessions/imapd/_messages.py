"""The selected-state message commands: FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE and
UID EXPUNGE (RFC 9051 §6.4), over the session's `FolderView`.

Each function takes the view and the parsed command and returns the responses, the
tagged one last. None calls `FolderView.sync`: the session adds the news where RFC 9051
§7.5.1 allows it. Message sets are resolved against the view's list as last reported
(`select_messages`): sequence numbers past the end are a BAD (`BadSetError`), UIDs that
name no message are skipped (§6.4.9). FETCH and SEARCH are evaluated by `_fetch` and
`_search`; here they are bound to the store.
"""

from __future__ import annotations

from sansmail.imap import (
    Atom,
    Copy,
    Expunge,
    Fetch,
    FetchResponse,
    Move,
    Response,
    ResponseCode,
    Search,
    SequenceSet,
    Store,
    Tagged,
    UidExpunge,
    Untagged,
    UntaggedStatus,
    Value,
)
from sansmail.sessions.imapd._fetch import FetchContext, fetch, message_flags
from sansmail.sessions.imapd._folders import no, ok
from sansmail.sessions.imapd._search import SearchContext, search
from sansmail.storage.maildir import (
    FlagMode,
    FolderView,
    ImapMessage,
    ImapStoreError,
    NoSuchFolderError,
)

__all__ = [
    "BadSetError",
    "copy",
    "expunge",
    "fetch_messages",
    "flag_list",
    "search_messages",
    "select_messages",
    "store",
]

_FLAG_MODES = {"replace": FlagMode.REPLACE, "add": FlagMode.ADD, "remove": FlagMode.REMOVE}


class BadSetError(Exception):
    """A message sequence number past the end of the mailbox, or "$" (RFC 5182 SEARCHRES,
    not offered): the command gets BAD (RFC 9051 §6.4.5)."""


def select_messages(
    view: FolderView, sequence_set: SequenceSet, *, uid: bool
) -> list[tuple[int, ImapMessage]]:
    """(sequence number, message) of the messages a set names, ascending."""
    messages = view.messages
    if sequence_set.saved:
        raise BadSetError
    if not uid:
        spans = sequence_set.resolve(len(messages))
        if spans and spans[-1][-1] > len(messages):
            raise BadSetError
        return [(n, messages[n - 1]) for span in spans for n in span]
    largest = messages[-1].uid if messages else 0
    uid_spans = sequence_set.resolve(largest)
    return [(n, m) for n, m in enumerate(messages, 1) if any(m.uid in span for span in uid_spans)]


def flag_list(uid: int, flags: frozenset[str], recent: frozenset[int], rev2: bool) -> Value:
    """FLAGS data for one message, with \\Recent for a rev1 session that has it."""
    listed = message_flags(flags)
    if not rev2 and uid in recent:
        listed.append(Atom("\\Recent"))  # RFC 3501 §2.3.2: IMAP4rev1 only
    return listed


def fetch_messages(view: FolderView, command: Fetch, *, rev2: bool) -> list[Response]:
    """[UID] FETCH (RFC 9051 §6.4.5, §6.4.9)."""
    recent = view.recent
    out: list[Response] = []
    for number, message in select_messages(view, command.sequence_set, uid=command.uid):
        uid = message.uid
        ctx = FetchContext(
            message=message,
            load=lambda uid=uid: view.read(uid),  # type: ignore[misc]
            get_cache=lambda uid=uid: view.get_cache(uid),  # type: ignore[misc]
            set_cache=lambda blob, uid=uid: view.set_cache(uid, blob),  # type: ignore[misc]
            rev2=rev2,
        )
        result = fetch(command.items, ctx)
        if result.error is not None:
            # E.g. BINARY of an unknown transfer encoding: NO [UNKNOWN-CTE] (RFC 3516 §4.3).
            code = ResponseCode(name=result.error)
            return [*out, Tagged(tag=command.tag, status="NO", code=code, text="Cannot fetch")]
        items = dict(result.items)
        flags = message.flags
        if result.set_seen and not view.readonly and not result.gone:
            # RFC 9051 §6.4.5: a non-PEEK body fetch sets \Seen, and the new flags are
            # reported with it.
            changed = view.store_flags([uid], ["\\Seen"], FlagMode.ADD)
            flags = changed.get(uid, flags | {"\\Seen"})
            items["FLAGS"] = None
        if "FLAGS" in items:
            items["FLAGS"] = flag_list(uid, flags, recent, rev2)
        if command.uid and "UID" not in items:
            items = {"UID": uid, **items}  # RFC 9051 §6.4.9: UID FETCH answers carry the UID
        out.append(FetchResponse(number=number, items=tuple(items.items())))
    out.append(ok(command.tag, f"{'UID ' if command.uid else ''}FETCH completed"))
    return out


def store(view: FolderView, command: Store, *, rev2: bool) -> list[Response]:
    """[UID] STORE (RFC 9051 §6.4.6): the new flags as FETCH responses unless .SILENT."""
    targets = select_messages(view, command.sequence_set, uid=command.uid)
    flags = [f for f in command.flags if f != "\\Recent"]  # never stored (RFC 3501 §2.3.2)
    try:
        changed = view.store_flags([m.uid for _n, m in targets], flags, _FLAG_MODES[command.mode])
    except ImapStoreError as exc:
        return [no(command.tag, exc)]
    out: list[Response] = []
    if not command.silent:
        recent = view.recent
        for number, message in targets:
            if message.uid not in changed:
                continue  # expunged meanwhile; its EXPUNGE comes with a later sync
            items: list[tuple[str, Value]] = [
                ("FLAGS", flag_list(message.uid, changed[message.uid], recent, rev2))
            ]
            if command.uid:
                items.append(("UID", message.uid))
            out.append(FetchResponse(number=number, items=tuple(items)))
    out.append(ok(command.tag, f"{'UID ' if command.uid else ''}STORE completed"))
    return out


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


def search_messages(view: FolderView, command: Search, *, rev2: bool) -> list[Response]:
    """[UID] SEARCH (RFC 9051 §6.4.4): ``* SEARCH`` for a rev1 client that gave no
    RETURN, ``* ESEARCH`` otherwise (RFC 4731; no RETURN options means ALL)."""
    messages = view.messages
    ctx = SearchContext(
        messages=messages, load=view.read, recent=frozenset() if rev2 else view.recent
    )
    try:
        numbers = search(command.criteria, ctx)
    except ValueError:
        raise BadSetError from None
    found = [messages[n - 1].uid for n in numbers] if command.uid else numbers
    done = ok(command.tag, f"{'UID ' if command.uid else ''}SEARCH completed")
    if command.return_options is None and not rev2:
        return [Untagged.search(found), done]
    options = command.return_options or ("ALL",)
    results: list[tuple[str, int | SequenceSet]] = []
    if "MIN" in options and found:
        results.append(("MIN", min(found)))
    if "MAX" in options and found:
        results.append(("MAX", max(found)))
    if "COUNT" in options:
        results.append(("COUNT", len(found)))
    if "ALL" in options and found:  # RFC 4731 §3.1: ALL is left out when nothing matched
        results.append(("ALL", SequenceSet.of(*found)))
    return [Untagged.esearch(tag=command.tag, uid=command.uid, results=results), done]
