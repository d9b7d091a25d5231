"""Dovecot's ``dovecot-uidlist``: the strict parser (hypothesis round trips from a model,
and everything else refused), and a folder Dovecot served indexed for the first time
with its UIDVALIDITY, UIDs, next UID and keywords, once."""

from __future__ import annotations

import contextlib
import os
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imapstore_helpers import account, deliver, message, root, x_id

from sansmail.storage.maildir._imapindex import ADOPTED_MARKER, INDEX_NAME
from sansmail.storage.maildir._uidlist import (
    UIDLIST_NAME,
    Uidlist,
    UidlistError,
    UidlistRecord,
    parse_uidlist,
)

# -- the parser -------------------------------------------------------------------------------

_names = st.from_regex(
    r"[0-9]{10}\.M[0-9]{1,6}P[0-9]{1,5}\.[a-z]{1,8}(,S=[0-9]{1,5})?", fullmatch=True
)
_flags = st.sampled_from(["", ":2,", ":2,S", ":2,FSab"])
_extensions = st.dictionaries(
    st.sampled_from("SWOPG"),
    st.from_regex(r"[0-9]{1,6}", fullmatch=True),
    max_size=3,
)


@st.composite
def uidlists(draw: st.DrawFn) -> tuple[bytes, Uidlist]:
    """A uidlist as Dovecot writes one, and what it says."""
    uidvalidity = draw(st.integers(1, 2**32 - 1))
    next_uid = draw(st.integers(1, 2**32 - 1))
    guid = draw(st.one_of(st.none(), st.from_regex(r"[0-9a-f]{32}", fullmatch=True)))
    other = draw(
        st.dictionaries(
            st.sampled_from("PXZ"), st.from_regex(r"[!-~]{0,8}", fullmatch=True), max_size=2
        )
    )
    fields = [f"V{uidvalidity}", f"N{next_uid}", *(f"{k}{v}" for k, v in other.items())]
    if guid is not None:
        fields.append(f"G{guid}")
    fields = draw(st.permutations(fields))  # the order of the fields is free
    lines = ["3 " + " ".join(fields)]
    bases = draw(st.lists(_names, unique=True, max_size=8))
    uids = sorted(
        draw(st.sets(st.integers(1, 2**32 - 2), min_size=len(bases), max_size=len(bases)))
    )
    records = {}
    for uid, base in zip(uids, bases, strict=True):
        extensions = draw(_extensions)
        filename = base + draw(_flags)
        lines.append(
            " ".join([str(uid), *(f"{k}{v}" for k, v in extensions.items()), ":" + filename])
        )
        records[base] = UidlistRecord(uid=uid, filename=filename, extensions=extensions)
    expected = Uidlist(
        uidvalidity=uidvalidity,
        next_uid=max(next_uid, uids[-1] + 1 if uids else 0),
        guid=guid,
        extensions=other,
        records=records,
    )
    return ("\n".join(lines) + "\n").encode(), expected


@settings(max_examples=300)
@given(uidlists())
def test_what_dovecot_writes_is_read_back(case: tuple[bytes, Uidlist]) -> None:
    data, expected = case
    assert parse_uidlist(data) == expected
    # An append cut short (no LF yet) is not read.
    assert parse_uidlist(data + b"99999 :half-writ") == expected


@settings(max_examples=300)
@given(uidlists(), st.data())
def test_a_damaged_uidlist_is_refused_never_half_read(
    case: tuple[bytes, Uidlist], data: st.DataObject
) -> None:
    text, _ = case
    position = data.draw(st.integers(0, len(text) - 1))
    damage = data.draw(st.sampled_from([b"", b"x", b" ", b"\r", b"/", b"\xff", b"0", b"\n"]))
    damaged = text[:position] + damage + text[position + 1 :]
    try:
        parsed = parse_uidlist(damaged)
    except UidlistError:
        return
    # Damage that still parses (a digit more or less, a field's value, an extension ...)
    # never yields a name with "/", a UID out of order or a next UID not past every UID.
    last = 0
    for base, record in parsed.records.items():
        assert "/" not in record.filename
        assert record.base == base
        assert record.uid > last
        last = record.uid
    assert parsed.next_uid > last


@given(st.binary(max_size=200))
def test_any_octets_parse_or_are_refused(data: bytes) -> None:
    with contextlib.suppress(UidlistError):
        parse_uidlist(data)


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"3 V1 N2",  # no LF: the header itself was cut short
        b"1 1275660208 25022\n",  # version 1 (Courier's): not read
        b"2 V1 N2\n",
        b"3V1 N2\n",
        b"3 N2\n",  # no UIDVALIDITY
        b"3 V1\n",  # no next UID
        b"3 V0 N2\n",
        b"3 V1 N0\n",
        b"3 V4294967296 N2\n",
        b"3 V-1 N2\n",
        b"3 V1 N2 V3\n",
        b"3 V1 N2 Gnothex\n",
        b"3 V1  N2\n",
        b"3 V1 N2\r\n",
        b"3 V1 N2\n1 name\n",  # no ":" before the name
        b"3 V1 N2\n0 :name\n",
        b"3 V1 N2\nx :name\n",
        b"3 V1 N2\n5 :a\n5 :b\n",  # UIDs must increase
        b"3 V1 N2\n6 :a\n5 :b\n",
        b"3 V1 N2\n4294967295 :a\n",
        b"3 V1 N2\n1 w12 :a\n",  # an extension key is an upper-case letter
        b"3 V1 N2\n1 Wx :a\n",  # W is a size
        b"3 V1 N2\n1 :dir/name\n",
        b"3 V1 N2\n1 :\n",
        b"3 V1 N2\n1  :a\n",
        b"3 V1 N2\n1 :\xc3(\n",
    ],
)
def test_what_is_refused(text: bytes) -> None:
    with pytest.raises(UidlistError):
        parse_uidlist(text)


def test_the_documented_example() -> None:
    parsed = parse_uidlist(
        b"3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n"
        b"25006 :1276528487.M364837P9451.kurkku,S=1355,W=1394:2,\n"
        b"25017 W2481 :1276533073.M242911P3632.kurkku:2,F\n"
        b"25030 :1276533074.M1P1.kurkku\n"
        b"25031 :1276528487.M364837P9451.kurkku,S=1355,W=1394:2,S\n"  # it came back
    )
    assert parsed.uidvalidity == 1275660208
    assert parsed.next_uid == 25032  # past the last UID listed, the header lags
    assert parsed.guid == "3085f01b7f11094c501100008c4a11c1"
    assert {base: r.uid for base, r in parsed.records.items()} == {
        "1276533073.M242911P3632.kurkku": 25017,
        "1276533074.M1P1.kurkku": 25030,
        "1276528487.M364837P9451.kurkku,S=1355,W=1394": 25031,
    }
    assert parsed.records["1276533073.M242911P3632.kurkku"].vsize == 2481


# -- a folder Dovecot served --------------------------------------------------------------


def dovecot_folder(top: pathlib.Path, uids: dict[int, tuple[int, str]], header: str) -> None:
    """Files as Dovecot leaves them, and its uidlist: UID -> (X-Id, flag letters)."""
    for sub in ("cur", "new", "tmp"):
        (top / sub).mkdir(parents=True, exist_ok=True)
    lines = [header]
    for uid, (n, letters) in sorted(uids.items()):
        content = message(n).replace(b"\r\n", b"\n")
        # One name without W= (its size is in the record), one whose flags changed
        # since the list was written.
        base = f"1700000{n:03d}.M{n}P7.dovecot" + (f",S={len(content)}" if n % 2 else "")
        (top / "cur" / f"{base}:2,{letters}").write_bytes(content)
        extension = "" if n % 2 else f" W{len(message(n))}"
        lines.append(f"{uid}{extension} :{base}" + (":2," if n == 3 else ""))
    (top / UIDLIST_NAME).write_text("\n".join(lines) + "\n")


def test_a_folder_dovecot_served_keeps_its_uids_once(tmp_path: pathlib.Path) -> None:
    top = root(tmp_path)
    dovecot_folder(
        top,
        {4: (1, "S"), 7: (2, "a"), 9: (3, "FS"), 12: (4, "")},
        "3 V1500000000 N13 G" + "ab" * 16,
    )
    (top / "dovecot-keywords").write_text("0 $Work\n")
    # A message delivered after Dovecot stopped, not in its list: a UID after its N.
    (top / "new" / "1700000999.M9P8.late").write_bytes(message(5).replace(b"\r\n", b"\n"))
    acc = account(tmp_path)
    view = acc.select("INBOX")
    assert view.uidvalidity == 1500000000
    assert [(m.uid, x_id(view.read(m.uid) or b"")) for m in view.messages] == [
        (4, 1),
        (7, 2),
        (9, 3),
        (12, 4),
        (13, 5),
    ]
    assert [m.flags for m in view.messages[:4]] == [
        {"\\Seen"},
        {"$Work"},
        {"\\Flagged", "\\Seen"},
        frozenset(),
    ]
    assert [m.size for m in view.messages] == [len(message(n)) for n in (1, 2, 3, 4, 5)]
    assert view.recent == {13}  # what Dovecot listed is not new
    assert view.uidnext == 14
    assert view.append(message(6)).uid == 14
    assert (top / ADOPTED_MARKER).exists()
    # Later fresh UIDVALIDITYs (a new folder, a rebuild) are greater than the adopted one.
    assert acc.status("Archive", ["UIDVALIDITY"])["UIDVALIDITY"] > 1500000000
    acc.close()
    # The index deleted by hand: the uidlist is not taken again (it never saw UID 13).
    for suffix in ("", "-wal", "-shm"):
        (top / (INDEX_NAME + suffix)).unlink(missing_ok=True)
    again = account(tmp_path).select("INBOX")
    assert again.uidvalidity > 1500000000


def test_a_uidlist_that_cannot_be_vouched_for_is_ignored(tmp_path: pathlib.Path) -> None:
    top = root(tmp_path)
    dovecot_folder(top, {4: (1, "S"), 7: (2, "")}, "3 V1500000000")  # no N
    view = account(tmp_path).select("INBOX")
    assert view.uidvalidity != 1500000000
    assert [m.uid for m in view.messages] == [1, 2]
    assert not (top / ADOPTED_MARKER).exists()


def test_a_rebuilt_index_never_takes_the_uidlist(tmp_path: pathlib.Path) -> None:
    top = root(tmp_path)
    dovecot_folder(top, {4: (1, "S")}, "3 V1500000000 N5")
    os.unlink(top / UIDLIST_NAME)
    for n in (1, 2):
        deliver(tmp_path, message(10 + n))
    acc = account(tmp_path)
    acc.select("INBOX")
    acc.close()
    # Dovecot's list appears only now, and the index is found damaged.
    dovecot_folder(top, {4: (1, "S")}, "3 V1500000000 N5")
    with open(top / INDEX_NAME, "r+b") as db:
        db.write(b"this is not an index" * 10)
    view = account(tmp_path).select("INBOX")
    assert view.index_rebuilt
    assert view.uidvalidity != 1500000000
