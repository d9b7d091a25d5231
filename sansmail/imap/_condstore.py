"""What CONDSTORE and QRESYNC (RFC 7162) add to the commands and responses.

The command grammar is RFC 4466's: SELECT/EXAMINE parameters, FETCH and STORE
modifiers, read generically into (name, value) pairs (`read_parameters`). This module
gives the RFC 7162 ones their meaning and checks them, so that the parser answers a
malformed one with BAD rather than the session meeting it:

    SELECT INBOX (CONDSTORE)                  SelectOptions(condstore=True)
    SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541))
                                              SelectOptions(qresync=Qresync(...))
    UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)
                                              FetchOptions(changedsince=12345, vanished=True)
    STORE 1:7 (UNCHANGEDSINCE 200) +FLAGS (\\Seen)   unchangedsince 200

Each reader has its inverse (`select_parameters`, `fetch_modifiers`, `store_modifiers`)
building the pairs an event carries, so parse(write(command)) round-trips. Parameter
names this module does not know are left alone here (another extension's, or a BAD from
the session); the ones it knows must be exactly as RFC 7162 §7 writes them.

The responses (`highestmodseq`, `nomodseq`, `modified`, `vanished`, `modseq_item`) are
plain `ResponseCode`s, `Untagged` and FETCH items: the writer needs nothing new.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import attrs

from sansmail.imap._lexer import ParseError
from sansmail.imap._responses import ResponseCode, Untagged
from sansmail.imap._sequence import MAX_NUMBER, SequenceSet
from sansmail.imap._values import Atom, Value

__all__ = [
    "MAX_MODSEQ",
    "FetchOptions",
    "Qresync",
    "SelectOptions",
    "fetch_modifiers",
    "fetch_options",
    "highestmodseq",
    "modified",
    "modseq_item",
    "nomodseq",
    "select_options",
    "select_parameters",
    "store_modifiers",
    "store_unchangedsince",
    "vanished",
]

#: RFC 7162 §7: a mod-sequence-value is a positive 63-bit integer.
MAX_MODSEQ: Final = 2**63 - 1

Parameters = tuple[tuple[str, Value], ...]


def _modseq(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if type(value) is not int or not 0 <= value <= MAX_MODSEQ:
        raise ValueError(f"{attribute.name} must be a mod-sequence (0..2**63-1): {value!r}")


def _positive_modseq(inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    _modseq(inst, attribute, value)
    if value == 0:
        raise ValueError(f"{attribute.name} must be a mod-sequence-value (not 0)")


def _uidvalidity(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if type(value) is not int or not 1 <= value <= MAX_NUMBER:
        raise ValueError(f"{attribute.name} must be an nz-number: {value!r}")


def _known_set(_inst: Any, attribute: attrs.Attribute[Any], value: SequenceSet | None) -> None:
    if value is not None:
        _check_known(value, attribute.name)


def _check_known(value: SequenceSet, what: str) -> None:
    # RFC 7162 §7: known-uids and both halves of seq-match-data are sets without "*".
    if not isinstance(value, SequenceSet) or value.saved:
        raise ValueError(f"{what} must be a sequence set")
    if any(bound is None for pair in value.ranges for bound in pair):
        raise ValueError(f'{what} may not hold "*"')


def _count(value: SequenceSet) -> int:
    return sum(len(span) for span in value.resolve(0))


def _seq_match(
    _inst: Any, attribute: attrs.Attribute[Any], value: tuple[SequenceSet, SequenceSet] | None
) -> None:
    if value is None:
        return
    if not (isinstance(value, tuple) and len(value) == 2):
        raise ValueError(f"{attribute.name} is a (sequence numbers, UIDs) pair")
    for part in value:
        _check_known(part, attribute.name)
    if _count(value[0]) != _count(value[1]):
        # RFC 7162 §3.2.5: the two sets name as many messages, pairwise.
        raise ValueError(f"{attribute.name}: as many sequence numbers as UIDs")


@attrs.frozen(kw_only=True)
class Qresync:
    """SELECT's QRESYNC parameter (RFC 7162 §3.2.5): what the client last knew."""

    uidvalidity: int = attrs.field(validator=_uidvalidity)
    modseq: int = attrs.field(validator=_positive_modseq)
    known_uids: SequenceSet | None = attrs.field(default=None, validator=_known_set)
    #: (known sequence numbers, their UIDs); only given with `known_uids`.
    seq_match: tuple[SequenceSet, SequenceSet] | None = attrs.field(
        default=None, validator=_seq_match
    )

    def __attrs_post_init__(self) -> None:
        if self.seq_match is not None and self.known_uids is None:
            raise ValueError("seq-match-data comes after known-uids")


@attrs.frozen(kw_only=True)
class SelectOptions:
    """The RFC 7162 parameters of a SELECT or EXAMINE."""

    condstore: bool = False
    qresync: Qresync | None = None


@attrs.frozen(kw_only=True)
class FetchOptions:
    """The RFC 7162 FETCH modifiers (§3.1.4.1, §3.2.6)."""

    changedsince: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_modseq)
    )
    vanished: bool = False

    def __attrs_post_init__(self) -> None:
        if self.vanished and self.changedsince is None:
            raise ValueError("VANISHED needs CHANGEDSINCE (RFC 7162 §3.2.6)")


# -- reading --------------------------------------------------------------------------


def _number(value: Value, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ParseError(f"{what} must be a number from {low} to {high}")
    return value


def _set(value: Value, what: str) -> SequenceSet:
    if type(value) is int or isinstance(value, Atom):
        try:
            found = SequenceSet.parse(str(value))
            _check_known(found, what)
        except ValueError:
            raise ParseError(f"{what} must be a sequence set without *") from None
        return found
    raise ParseError(f"{what} must be a sequence set")


def _unique(params: Parameters, names: Iterable[str]) -> dict[str, Value]:
    known = set(names)
    found: dict[str, Value] = {}
    for name, value in params:
        if name in known:
            if name in found:
                raise ParseError(f"{name} given twice")
            found[name] = value
    return found


def select_options(params: Parameters) -> SelectOptions:
    """The RFC 7162 meaning of SELECT/EXAMINE parameters; ParseError when malformed.

    select-param =/ "CONDSTORE" / "QRESYNC" SP "(" uidvalidity SP mod-sequence-value
    [SP known-uids] [SP seq-match-data] ")"; seq-match-data = "(" known-sequence-set
    SP known-uid-set ")".
    """
    found = _unique(params, ("CONDSTORE", "QRESYNC"))
    if "CONDSTORE" in found and found["CONDSTORE"] is not None:
        raise ParseError("CONDSTORE takes no value")
    qresync = None
    if "QRESYNC" in found:
        value = found["QRESYNC"]
        if not isinstance(value, list) or not 2 <= len(value) <= 4:
            raise ParseError("QRESYNC takes (uidvalidity modseq [known-uids [seq-match-data]])")
        uidvalidity = _number(value[0], "the UIDVALIDITY", 1, MAX_NUMBER)
        modseq = _number(value[1], "the mod-sequence", 1, MAX_MODSEQ)
        known = None
        match = None
        rest = value[2:]
        if rest and not isinstance(rest[0], list):
            known = _set(rest.pop(0), "known-uids")
        if rest:
            pair = rest.pop(0)
            if known is None or rest or not isinstance(pair, list) or len(pair) != 2:
                raise ParseError("seq-match-data is (sequence-set uid-set), after known-uids")
            match = (_set(pair[0], "the known sequence set"), _set(pair[1], "the known UID set"))
            if _count(match[0]) != _count(match[1]):
                raise ParseError("seq-match-data pairs as many sequence numbers as UIDs")
        qresync = Qresync(uidvalidity=uidvalidity, modseq=modseq, known_uids=known, seq_match=match)
    return SelectOptions(condstore="CONDSTORE" in found, qresync=qresync)


def fetch_options(modifiers: Parameters, *, uid: bool) -> FetchOptions:
    """The RFC 7162 FETCH modifiers; ParseError when malformed. fetch-modifier =/
    "CHANGEDSINCE" SP mod-sequence-valzer / "VANISHED", VANISHED only in UID FETCH and
    with CHANGEDSINCE (§3.2.6)."""
    found = _unique(modifiers, ("CHANGEDSINCE", "VANISHED"))
    changedsince = None
    if "CHANGEDSINCE" in found:
        changedsince = _number(found["CHANGEDSINCE"], "CHANGEDSINCE", 0, MAX_MODSEQ)
    vanished = "VANISHED" in found
    if vanished:
        if found["VANISHED"] is not None:
            raise ParseError("VANISHED takes no value")
        if not uid:
            raise ParseError("VANISHED is for UID FETCH only")
        if changedsince is None:
            raise ParseError("VANISHED needs CHANGEDSINCE")
    return FetchOptions(changedsince=changedsince, vanished=vanished)


def store_unchangedsince(modifiers: Parameters) -> int | None:
    """STORE's UNCHANGEDSINCE mod-sequence-valzer (RFC 7162 §3.1.3), or None;
    ParseError when malformed."""
    found = _unique(modifiers, ("UNCHANGEDSINCE",))
    if "UNCHANGEDSINCE" not in found:
        return None
    return _number(found["UNCHANGEDSINCE"], "UNCHANGEDSINCE", 0, MAX_MODSEQ)


# -- building -------------------------------------------------------------------------


def _set_value(value: SequenceSet) -> Value:
    # As the parser reads it back: a lone number is a number.
    text = str(value)
    return int(text) if text.isdigit() else Atom(text)


def select_parameters(options: SelectOptions) -> Parameters:
    """The parameters of a SELECT/EXAMINE event for `options`."""
    out: list[tuple[str, Value]] = []
    if options.condstore:
        out.append(("CONDSTORE", None))
    q = options.qresync
    if q is not None:
        value: list[Value] = [q.uidvalidity, q.modseq]
        if q.known_uids is not None:
            value.append(_set_value(q.known_uids))
        if q.seq_match is not None:
            value.append([_set_value(q.seq_match[0]), _set_value(q.seq_match[1])])
        out.append(("QRESYNC", value))
    return tuple(out)


def fetch_modifiers(options: FetchOptions) -> Parameters:
    """The modifiers of a FETCH event for `options`."""
    out: list[tuple[str, Value]] = []
    if options.changedsince is not None:
        out.append(("CHANGEDSINCE", options.changedsince))
    if options.vanished:
        out.append(("VANISHED", None))
    return tuple(out)


def store_modifiers(unchangedsince: int | None) -> Parameters:
    """The modifiers of a STORE event with UNCHANGEDSINCE `unchangedsince`."""
    return () if unchangedsince is None else (("UNCHANGEDSINCE", unchangedsince),)


# -- responses ------------------------------------------------------------------------


def highestmodseq(value: int) -> ResponseCode:
    """[HIGHESTMODSEQ n] (RFC 7162 §3.1.2.1)."""
    return ResponseCode(name="HIGHESTMODSEQ", data=(value,))


def nomodseq() -> ResponseCode:
    """[NOMODSEQ]: the mailbox keeps no mod-sequences (RFC 7162 §3.1.2.2)."""
    return ResponseCode(name="NOMODSEQ")


def modified(numbers: Iterable[int]) -> ResponseCode:
    """[MODIFIED set]: the messages a conditional STORE left alone (RFC 7162 §3.1.3)."""
    return ResponseCode(name="MODIFIED", data=(Atom(str(SequenceSet.of(*numbers))),))


def vanished(uids: Iterable[int], *, earlier: bool = False) -> Untagged:
    """``* VANISHED [(EARLIER)] uid-set`` (RFC 7162 §3.2.10); `uids` not empty."""
    text = Atom(str(SequenceSet.of(*uids)))
    return Untagged(keyword="VANISHED", data=([Atom("EARLIER")], text) if earlier else (text,))


def modseq_item(value: int) -> tuple[str, Value]:
    """The FETCH item ``MODSEQ (n)`` (RFC 7162 §3.1.4.1)."""
    return ("MODSEQ", [value])
