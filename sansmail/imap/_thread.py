"""SORT and THREAD orders (RFC 5256, and DISPLAYFROM/DISPLAYTO of RFC 5957): pure functions
over what messages say.

Theory of operation
-------------------
The session hands each message as a `SortItem`: its sequence number (or UID: the
number the answer names), internal date, size, and the decoded values of the header
fields the orders compare (From, To, Cc, Subject, Date, Message-ID, References,
In-Reply-To), as the search index keeps them. Nothing here reads a file or a clock.

- `base_subject` is RFC 5256 §2.1: "Re:", "Fwd:", "[list]" leaders, "(fwd)" trailers
  and "[Fwd: ...]" wrappers removed, whitespace collapsed; it is compared case-folded.
- `sent_date` is §2.2: the Date: field in UTC, or the internal date when it cannot be read.
- `sort` orders by the keys given (REVERSE applies to the key after it); ties go by
  sequence number, as §3 requires for every key.
- `thread_ordered_subject` and `thread_references` are the two algorithms of §3, and
  `format_threads` writes the result in the grammar of §4 ("(3 6 (4 23)(44 7 96))").

A thread is a `ThreadNode`: a message number, or None for a dummy that only groups its
children (REFERENCES puts one where a message is missing or two threads share a subject).
"""

from __future__ import annotations

import datetime
import email.utils
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

__all__ = [
    "SORT_KEYS",
    "SortItem",
    "ThreadNode",
    "base_subject",
    "format_threads",
    "sent_date",
    "sent_seconds",
    "sort",
    "thread_ordered_subject",
    "thread_references",
]

#: Sort keys of RFC 5256 §3 and RFC 5957 (REVERSE modifies the key after it).
SORT_KEYS: Final = frozenset(
    {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
)


@attrs.frozen
class SortItem:
    """One message as SORT and THREAD see it."""

    number: int  # what the answer names: the sequence number, or the UID for UID forms
    seq: int  # the sequence number, which breaks ties (RFC 5256 §3)
    arrival: datetime.datetime
    size: int
    #: Lower-case field name -> the first such field's decoded value.
    fields: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class ThreadNode:
    number: int | None  # None: a dummy holding its children together
    children: tuple[ThreadNode, ...] = ()


# -- base subject (RFC 5256 §2.1) -----------------------------------------------------------

_WSP = re.compile(r"[ \t\r\n]+")
_BLOB = r"\[[^\[\]]*\][ \t]*"
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])$", re.IGNORECASE)
_REFWD = re.compile(rf"(?:{_BLOB})*(?:re|fwd?)[ \t]*(?:{_BLOB})?:", re.IGNORECASE)
_LEADING_BLOB = re.compile(_BLOB)


def _extract(subject: str) -> tuple[str, bool]:
    """(base subject, whether it was a reply or a forward)."""
    text = _WSP.sub(" ", subject)  # (1): the value comes decoded
    reply = False
    while True:
        # (2): subj-trailer, repeatedly.
        while (found := _TRAILER.search(text)) is not None:
            reply |= found.group().lower() == "(fwd)"
            text = text[: found.start()]
        while True:
            before = text
            # (3): subj-leader = (*subj-blob subj-refwd) / WSP, repeatedly.
            while True:
                if text[:1] in (" ", "\t"):
                    text = text[1:]
                elif (found := _REFWD.match(text)) is not None:
                    text = text[found.end() :]
                    reply = True
                else:
                    break
            # (4): a leading subj-blob goes if something is left after it.
            found = _LEADING_BLOB.match(text)
            if found is not None and text[found.end() :]:
                text = text[found.end() :]
            if text == before:  # (5)
                break
        # (6): "[fwd:" ... "]" is taken off, and again from (2).
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1]
            reply = True
            continue
        return text, reply


def base_subject(subject: str) -> str:
    """The base subject of RFC 5256 §2.1, case-folded (the orders compare it so)."""
    return _extract(subject)[0].casefold()


_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_EPOCH_DAY: Final = _EPOCH.toordinal()


def _date_seconds(value: str) -> float | None:
    """Seconds since the epoch (UTC) of a Date: value, or None when it cannot be read."""
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    year, month, day, hour, minute, second = parsed[:6]
    offset = parsed[9] or 0  # no zone: taken as UTC, whatever the server's zone is
    if not (0 <= hour < 24 and 0 <= minute < 60 and 0 <= second <= 60):
        return None
    try:
        days = datetime.date(year, month, day).toordinal() - _EPOCH_DAY
    except ValueError:
        return None
    return days * 86400 + hour * 3600 + minute * 60 + second - offset


def sent_seconds(item: SortItem) -> float:
    """RFC 5256 §2.2 as seconds since the epoch: the Date: field, or the internal date when
    it is missing or cannot be read."""
    value = item.fields.get("date")
    seconds = None if value is None else _date_seconds(value)
    return item.arrival.timestamp() if seconds is None else seconds


def sent_date(item: SortItem) -> datetime.datetime:
    """RFC 5256 §2.2: the Date: field in UTC, or the internal date when it is missing or bad."""
    return _EPOCH + datetime.timedelta(seconds=sent_seconds(item))


# -- SORT ---------------------------------------------------------------------------------


def _first_address(value: str | None) -> tuple[str, str]:
    """(display name, addr-spec) of the first address of a field, or ("", "")."""
    if not value:
        return "", ""
    addresses = email.utils.getaddresses([value])
    return addresses[0] if addresses else ("", "")


def _sort_value(key: str, item: SortItem) -> Any:
    # One key yields one type for every item (numbers or strings), so the values compare.
    if key == "ARRIVAL":
        return item.arrival.timestamp()
    if key == "DATE":
        return sent_seconds(item)
    if key == "SIZE":
        return item.size
    if key == "SUBJECT":
        return base_subject(item.fields.get("subject", ""))
    if key in ("FROM", "TO", "CC"):
        # The addr-mailbox: the local part of the first address (§3).
        spec = _first_address(item.fields.get(key.lower()))[1]
        return spec.rpartition("@")[0].casefold() if "@" in spec else spec.casefold()
    if key in ("DISPLAYFROM", "DISPLAYTO"):
        # RFC 5957 §3: the display name, or the addr-spec when there is none.
        name, spec = _first_address(item.fields.get(key.removeprefix("DISPLAY").lower()))
        return (name or spec).casefold()
    raise ValueError(f"not a sort key: {key}")


def sort(items: Iterable[SortItem], keys: Sequence[tuple[str, bool]]) -> list[int]:
    """The numbers of `items` in the order of `keys`, each (key, reversed)."""
    ordered = sorted(items, key=lambda item: item.seq)
    # Stable sorts from the last key to the first: ties keep the order of the later keys,
    # and last of all the sequence order.
    for key, reverse in reversed(keys):
        values = {item.seq: _sort_value(key, item) for item in ordered}
        ordered.sort(key=lambda item: values[item.seq], reverse=reverse)
    return [item.number for item in ordered]


# -- THREAD=ORDEREDSUBJECT (RFC 5256 §3) ------------------------------------------------------


def _by_date(items: Iterable[SortItem]) -> list[tuple[tuple[float, int], SortItem]]:
    """(sent date, sequence number), item: in that order (each date parsed once)."""
    return sorted(((sent_seconds(item), item.seq), item) for item in items)


def thread_ordered_subject(items: Iterable[SortItem]) -> list[ThreadNode]:
    """Messages sorted by base subject, then sent date; each run of one subject is a
    thread: its first message the parent, the others its children (siblings in date
    order); threads ordered by the sent date of their first message."""
    groups: dict[str, list[SortItem]] = {}
    for _, item in _by_date(items):
        groups.setdefault(base_subject(item.fields.get("subject", "")), []).append(item)
    # Each group is in date order, and the groups in the order of their first message.
    return [
        ThreadNode(group[0].number, tuple(ThreadNode(i.number) for i in group[1:]))
        for group in groups.values()
    ]


# -- THREAD=REFERENCES (RFC 5256 §3) ----------------------------------------------------------

_MSGID = re.compile(r"<[^<>\s]+>")


class _Container:
    __slots__ = ("children", "item", "key", "parent")

    def __init__(self) -> None:
        self.item: SortItem | None = None
        #: (sent date, sequence number) that step 6 sorts by, once worked out.
        self.key: tuple[float, int] | None = None
        self.parent: _Container | None = None
        self.children: list[_Container] = []

    def reaches(self, other: _Container) -> bool:
        """`other` is this container or one of its ancestors."""
        node: _Container | None = self
        while node is not None:
            if node is other:
                return True
            node = node.parent
        return False

    def adopt(self, child: _Container) -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
        child.parent = self
        self.children.append(child)


def _references(item: SortItem) -> list[str]:
    ids = _MSGID.findall(item.fields.get("references", ""))
    if not ids:
        # No usable References: the first message-id of In-Reply-To.
        ids = _MSGID.findall(item.fields.get("in-reply-to", ""))[:1]
    return ids


def thread_references(items: Iterable[SortItem]) -> list[ThreadNode]:
    """The REFERENCES algorithm of RFC 5256 §3 (after JWZ), steps 1 to 6."""
    table: dict[str, _Container] = {}
    ordered = sorted(items, key=lambda item: item.seq)
    unique = 0
    subjects: dict[int, tuple[str, bool]] = {}
    for item in ordered:
        subjects[item.seq] = _extract(item.fields.get("subject", ""))
        ids = _MSGID.findall(item.fields.get("message-id", ""))
        own = ids[0] if ids else None
        if own is None or (own in table and table[own].item is not None):
            # No Message-ID, or a duplicate: a unique one (§3 step 1).
            unique += 1
            own = f"\0{unique}"
        container = table.setdefault(own, _Container())
        container.item = item
        # (1A): link the references to one another, first as the parent of the second...
        refs = [table.setdefault(ref, _Container()) for ref in _references(item)]
        for parent, child in itertools.pairwise(refs):
            if child.parent is None and not parent.reaches(child) and parent is not child:
                parent.adopt(child)
        # (1B): the last reference is the message's parent, replacing what it had.
        if container.parent is not None:
            container.parent.children.remove(container)
            container.parent = None
        if refs and not refs[-1].reaches(container):
            refs[-1].adopt(container)
    # (2) the root set, in the order the containers were made (deterministic).
    roots = [c for c in table.values() if c.parent is None]
    # (4) prune dummies.
    roots = _prune(roots)
    # (5) gather root threads of one base subject.
    roots = _gather(roots, subjects)
    # (6) sort siblings by sent date.
    return _threads(_sorted(roots))


def _descendants(roots: Iterable[_Container]) -> list[_Container]:
    """`roots` and everything under them, each before its children. Iterative: a chain of
    replies is as deep as the mailbox is long, deeper than Python's recursion goes."""
    order: list[_Container] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    return order


def _prune(roots: list[_Container]) -> list[_Container]:
    # Children before their parents, so a dummy's children are pruned when it is.
    for node in reversed(_descendants(roots)):
        node.children = _pruned(node.children, at_root=False)
        for child in node.children:
            child.parent = node
    out = _pruned(roots, at_root=True)
    for node in out:
        node.parent = None
    return out


def _pruned(siblings: list[_Container], *, at_root: bool) -> list[_Container]:
    out: list[_Container] = []
    for node in siblings:
        if node.item is not None:
            out.append(node)
        elif not node.children:
            continue  # (4A) a dummy without children goes
        elif not at_root or len(node.children) == 1:
            # (4B) its children take its place (at the root only when there is one).
            out += node.children
        else:
            out.append(node)
    return out


def _subject_of(node: _Container, subjects: Mapping[int, tuple[str, bool]]) -> tuple[str, bool]:
    # A dummy has the subject of its first child (step 5B).
    item = node.item if node.item is not None else node.children[0].item
    if item is None:
        return "", False
    base, reply = subjects[item.seq]
    return base.casefold(), reply


def _gather(roots: list[_Container], subjects: Mapping[int, tuple[str, bool]]) -> list[_Container]:
    table: dict[str, _Container] = {}
    for node in roots:  # (5B)
        base, reply = _subject_of(node, subjects)
        if not base:
            continue
        old = table.get(base)
        if old is None or (
            old.item is not None
            and (node.item is None or (subjects[old.item.seq][1] and not reply))
        ):
            table[base] = node
    places = list(roots)
    deleted: set[int] = set()
    for node in roots:  # (5C)
        if node.parent is not None:
            continue  # merged into another thread already
        base, reply = _subject_of(node, subjects)
        old = table.get(base) if base else None
        if old is None or old is node:
            continue
        if old.item is None and node.item is None:
            for child in list(node.children):
                old.adopt(child)
            deleted.add(id(node))
        elif old.item is None or (reply and not subjects[old.item.seq][1]):
            old.adopt(node)
        else:
            dummy = _Container()
            places[places.index(old)] = dummy
            dummy.adopt(old)
            dummy.adopt(node)
            table[base] = dummy
    return [c for c in places if c.parent is None and id(c) not in deleted]


def _date_of(node: _Container) -> tuple[float, int]:
    # A dummy sorts as its first child (step 6). Kept: the tree no longer changes here.
    if node.key is None:
        if node.item is not None:
            node.key = (sent_seconds(node.item), node.item.seq)
        else:
            node.key = min(_date_of(child) for child in node.children)
    return node.key


def _sorted(nodes: list[_Container]) -> list[_Container]:
    return sorted(nodes, key=_date_of)


def _threads(roots: list[_Container]) -> list[ThreadNode]:
    """The trees under `roots`, siblings in date order (step 6), made leaves first."""
    made: dict[int, ThreadNode] = {}
    for node in reversed(_descendants(roots)):
        children = tuple(made.pop(id(c)) for c in _sorted(node.children))
        made[id(node)] = ThreadNode(node.item.number if node.item is not None else None, children)
    return [made[id(root)] for root in roots]


# -- the answer (RFC 5256 §4) ---------------------------------------------------------------


def format_threads(threads: Iterable[ThreadNode]) -> str:
    """thread-data without "THREAD": each thread as a parenthesised thread-list."""
    out: list[str] = []
    for thread in threads:
        out.append("(")
        _members(thread, out)
        out.append(")")
    return "".join(out)


def _members(thread: ThreadNode, out: list[str]) -> None:
    """thread-members / thread-nested of `thread` onto `out`: a message followed by its
    only child is written flat ("3 6"), several children each in parentheses."""
    stack: list[ThreadNode | str] = [thread]
    while stack:
        top = stack.pop()
        if isinstance(top, str):
            out.append(top)
            continue
        children = top.children
        if top.number is None and len(children) == 1:
            stack.append(children[0])
            continue
        if top.number is not None:
            out.append(str(top.number))
            if not children:
                continue
            out.append(" ")
            if len(children) == 1:
                stack.append(children[0])
                continue
        for child in reversed(children):
            stack += [")", child, "("]
