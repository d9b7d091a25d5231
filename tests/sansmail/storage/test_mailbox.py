"""Maildrop: the POP3 side of a Maildir INBOX (snapshot, UIDL, sizes, reading, TOP,
deleting, the lock), against real files written by MaildirStore and by hand; at the end
what every maildrop does, on both backends."""

from __future__ import annotations

import hashlib
import itertools
import os
import pathlib
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_helpers import Backend, backend_fixture  # noqa: F401 (the fixture)

from sansmail.mail.address import MailboxId
from sansmail.storage.maildir import (
    Expunged,
    MaildirStore,
    Maildrop,
    MaildropInUseError,
    MessageGoneError,
    MessageInfo,
    MessageReader,
    _mailbox,
)
from sansmail.storage.maildir._mailbox import LOCK_NAME, crlf_chunks, unique_id

ALICE = MailboxId(domain="example.test", local="alice")


def deliver(store: MaildirStore, content: bytes) -> str:
    delivery = store.begin([ALICE], prefix=b"")
    delivery.write(content)
    (name,) = delivery.commit()
    return name


def clock(start: int = 1_700_000_000) -> object:
    # One second apart, so arrival order is the delivery order.
    state = {"now": start * 1_000_000_000}

    def now() -> int:
        state["now"] += 1_000_000_000
        return state["now"]

    return now


@pytest.fixture
def store(tmp_path: pathlib.Path) -> MaildirStore:
    return MaildirStore(tmp_path, hostname="mx.example.test", clock=clock())  # type: ignore[arg-type]


@pytest.fixture
def root(store: MaildirStore) -> pathlib.Path:
    return store.maildir(ALICE)


def read_all(reader: MessageReader) -> bytes:
    out = []
    while chunk := reader.read():
        out.append(chunk)
    return b"".join(out)


def wire(stored: bytes) -> bytes:
    """The reference conversion: every line end (LF, CRLF, lone CR) becomes CRLF."""
    return stored.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


# --- the snapshot -------------------------------------------------------------------------


def test_empty_maildir_is_created(root: pathlib.Path) -> None:
    with Maildrop.open(root) as drop:
        assert drop.messages == ()
    for sub in ("tmp", "new", "cur"):
        assert (root / sub).is_dir()
    assert (root / LOCK_NAME).is_file()


def test_snapshot_in_arrival_order_with_uidl_and_exact_sizes(
    store: MaildirStore, root: pathlib.Path
) -> None:
    contents = [b"Subject: %d\r\n\r\nbody %d\r\n.dot\r\n" % (n, n) for n in range(3)]
    names = [deliver(store, c) for c in contents]
    # An IMAP client read the second one: flag rename into cur/.
    os.rename(root / "new" / names[1], root / "cur" / (names[1] + ":2,S"))
    with Maildrop.open(root) as drop:
        messages = drop.messages
    assert [m.base for m in messages] == names
    assert [m.uid for m in messages] == names  # the base name, it fits RFC 1939 §7
    assert [m.size for m in messages] == [len(c) for c in contents]  # CRLF counted
    assert [m.folder for m in messages] == ["new", "cur", "new"]
    assert messages[1].name == names[1] + ":2,S"


def test_order_by_time_stamp_then_name_not_by_listing(root: pathlib.Path) -> None:
    (root / "new").mkdir(parents=True)
    (root / "cur").mkdir()
    # Microseconds are not zero-padded in Maildir names: M99 is before M100000.
    for name in ["1700000002.M5P1.h", "1700000001.M100000P1.h", "1700000001.M99P1.h"]:
        (root / "new" / name).write_bytes(b"x\n")
    (root / "cur" / "1700000000.M7P1.h:2,S").write_bytes(b"x\n")
    with Maildrop.open(root) as drop:
        assert [m.base for m in drop.messages] == [
            "1700000000.M7P1.h",
            "1700000001.M99P1.h",
            "1700000001.M100000P1.h",
            "1700000002.M5P1.h",
        ]


def test_names_without_time_stamp_sort_by_mtime(root: pathlib.Path) -> None:
    (root / "new").mkdir(parents=True)
    for name, mtime in [("zzz-early", 1_600_000_000), ("aaa-late", 1_800_000_000)]:
        path = root / "new" / name
        path.write_bytes(b"x\n")
        os.utime(path, (mtime, mtime))
    (root / "new" / "1700000000.M1P1.h").write_bytes(b"x\n")
    with Maildrop.open(root) as drop:
        assert [m.base for m in drop.messages] == ["zzz-early", "1700000000.M1P1.h", "aaa-late"]


def test_dot_files_directories_and_duplicates_are_skipped(root: pathlib.Path) -> None:
    (root / "new").mkdir(parents=True)
    (root / "cur").mkdir()
    (root / "new" / ".hidden").write_bytes(b"x\n")
    (root / "new" / "subdir").mkdir()
    (root / "new" / "1.M1P1.h").write_bytes(b"one\n")
    # The same message seen in both folders (moved while we listed): kept once.
    (root / "cur" / "1.M1P1.h:2,S").write_bytes(b"one\n")
    with Maildrop.open(root) as drop:
        assert [(m.base, m.folder) for m in drop.messages] == [("1.M1P1.h", "new")]


def test_size_from_w_field_is_trusted(root: pathlib.Path) -> None:
    (root / "new").mkdir(parents=True)
    (root / "new" / "1.M1P1.h,S=5,W=77").write_bytes(b"abcd\n")
    (root / "new" / "2.M1P1.h,S=5,W=77,X=1").write_bytes(b"abcd\n")
    with Maildrop.open(root) as drop:
        assert [m.size for m in drop.messages] == [77, 77]


@pytest.mark.parametrize(
    ("stored", "size"),
    [
        (b"a\nb\n", 6),  # LF: one more octet per line
        (b"a\r\nb\r\n", 6),  # already CRLF: unchanged
        (b"a\rb", 4),  # a lone CR is a line end
        (b"no newline", 10),
        (b"", 0),
    ],
)
def test_size_computed_without_w_field(root: pathlib.Path, stored: bytes, size: int) -> None:
    (root / "cur").mkdir(parents=True)
    (root / "cur" / "1.M1P1.foreign:2,").write_bytes(stored)
    with Maildrop.open(root) as drop:
        (message,) = drop.messages
        assert message.size == size
        assert len(read_all(drop.reader(message))) == size


def test_new_mail_after_the_snapshot_waits_for_the_next_session(
    store: MaildirStore, root: pathlib.Path
) -> None:
    deliver(store, b"one\r\n")
    with Maildrop.open(root) as drop:
        deliver(store, b"two\r\n")
        assert len(drop.messages) == 1
    with Maildrop.open(root) as drop:
        assert len(drop.messages) == 2


# --- UIDL ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base",
    [
        "1700000000.M1P1Q1." + "h" * 60,  # a long host name: over 70 characters
        "name with spaces",
        "caf\u00e9",
        "bad\udcffbyte",  # an undecodable file name, as os.listdir gives it
    ],
)
def test_uidl_of_names_that_do_not_fit_is_a_stable_hash(base: str) -> None:
    uid = unique_id(base)
    assert uid == "H" + hashlib.sha256(os.fsencode(base)).hexdigest()[:40]
    assert 1 <= len(uid) <= 70
    assert all("!" <= c <= "~" for c in uid)


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1))
@settings(deadline=None, max_examples=200)
def test_uidl_keeps_names_that_fit(base: str) -> None:
    assert unique_id(base) == (base if len(base) <= 70 else unique_id(base))
    assert len(unique_id(base)) <= 70


def test_uidl_survives_flag_renames_and_reopening(store: MaildirStore, root: pathlib.Path) -> None:
    name = deliver(store, b"hello\r\n")
    with Maildrop.open(root) as drop:
        before = drop.messages[0].uid
    os.rename(root / "new" / name, root / "cur" / (name + ":2,S"))
    os.rename(root / "cur" / (name + ":2,S"), root / "cur" / (name + ":2,RS"))
    with Maildrop.open(root) as drop:
        assert drop.messages[0].uid == before == name


# --- reading ------------------------------------------------------------------------------


@given(
    stored=st.binary(max_size=400).map(lambda b: b.replace(b"\0", b"")),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
@settings(deadline=None, max_examples=300)
def test_crlf_chunks_matches_whole_conversion_at_any_chunking(
    stored: bytes, cuts: list[int]
) -> None:
    points = sorted({c for c in cuts if c <= len(stored)} | {0, len(stored)})
    chunks = [stored[a:b] for a, b in itertools.pairwise(points)]
    out = list(crlf_chunks(chunks))
    assert b"".join(out) == wire(stored)
    for chunk in out:
        # The core refuses a CR or LF outside a CRLF; no chunk ends inside one.
        assert not chunk.endswith(b"\r")
        assert chunk.count(b"\n") == chunk.count(b"\r\n") == chunk.count(b"\r")


def test_retr_streams_in_chunks_and_converts(store: MaildirStore, root: pathlib.Path) -> None:
    body = b"".join(b"line %05d\r\n" % n for n in range(5000))
    deliver(store, b"Subject: big\r\n\r\n" + body)
    with Maildrop.open(root) as drop:
        (message,) = drop.messages
        reader = drop.reader(message, read_size=1000)
        chunks = []
        while chunk := reader.read():
            chunks.append(chunk)
        assert reader.read() == b""  # stays at the end
    assert b"".join(chunks) == b"Subject: big\r\n\r\n" + body
    assert len(b"".join(chunks)) == message.size
    assert max(len(c) for c in chunks) <= 2000  # never the whole message at once
    assert len(chunks) > 50


def test_reading_changes_nothing(store: MaildirStore, root: pathlib.Path) -> None:
    name = deliver(store, b"Subject: x\r\n\r\nbody\r\n")
    path = root / "new" / name
    before = path.stat()
    with Maildrop.open(root) as drop:
        read_all(drop.reader(drop.messages[0]))
        read_all(drop.reader(drop.messages[0], lines=0))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert os.listdir(root / "new") == [name]
    assert os.listdir(root / "cur") == []


def test_reader_finds_a_message_renamed_after_the_snapshot(
    store: MaildirStore, root: pathlib.Path
) -> None:
    name = deliver(store, b"Subject: x\r\n\r\nbody\r\n")
    with Maildrop.open(root) as drop:
        os.rename(root / "new" / name, root / "cur" / (name + ":2,S"))
        assert read_all(drop.reader(drop.messages[0])) == b"Subject: x\r\n\r\nbody\r\n"
        (root / "cur" / (name + ":2,S")).unlink()
        with pytest.raises(MessageGoneError):
            drop.reader(drop.messages[0])


def top(stored: bytes, lines: int) -> bytes:
    """RFC 1939 §7 TOP, the slow way: header, blank line, `lines` body lines."""
    text = wire(stored)
    head, blank, body = text.partition(b"\r\n\r\n")
    if text.startswith(b"\r\n"):
        head, blank, body = b"", b"\r\n", text[2:]
    elif blank:
        head, blank = head + b"\r\n", b"\r\n"
    else:
        return text
    kept = body.split(b"\r\n")
    out = b"".join(line + b"\r\n" for line in kept[:-1][:lines])
    if len(kept[:-1]) < lines:
        out += kept[-1]  # a last line without its line end, when it is reached
    return head + blank + out


@pytest.mark.parametrize(
    ("stored", "lines", "expected"),
    [
        (b"A: 1\nB: 2\n\nl1\nl2\nl3\n", 0, b"A: 1\r\nB: 2\r\n\r\n"),
        (b"A: 1\nB: 2\n\nl1\nl2\nl3\n", 2, b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n"),
        (b"A: 1\n\nl1\n", 9, b"A: 1\r\n\r\nl1\r\n"),
        (b"A: 1\nno body at all\n", 3, b"A: 1\r\nno body at all\r\n"),
        (b"\nbody first\nmore\n", 1, b"\r\nbody first\r\n"),
        (b"A: 1\n\n\n\nx\n", 2, b"A: 1\r\n\r\n\r\n\r\n"),
    ],
)
def test_top_examples(root: pathlib.Path, stored: bytes, lines: int, expected: bytes) -> None:
    (root / "new").mkdir(parents=True)
    (root / "new" / "1.M1P1.h").write_bytes(stored)
    with Maildrop.open(root) as drop:
        assert read_all(drop.reader(drop.messages[0], lines=lines)) == expected
    assert top(stored, lines) == expected


@given(
    stored=st.lists(
        st.tuples(
            st.sampled_from([b"H: v", b"", b"body", b".", b"x" * 30]),
            st.sampled_from([b"\n", b"\r\n", b"\r", b""]),
        ),
        max_size=12,
    ).map(lambda parts: b"".join(line + end for line, end in parts)),
    lines=st.integers(min_value=0, max_value=8),
    read_size=st.integers(min_value=1, max_value=40),
)
@settings(deadline=None, max_examples=300)
def test_top_at_any_read_size(
    tmp_path_factory: pytest.TempPathFactory, stored: bytes, lines: int, read_size: int
) -> None:
    root = tmp_path_factory.mktemp("top")
    (root / "new").mkdir()
    (root / "new" / "1.M1P1.h").write_bytes(stored)
    with Maildrop.open(root) as drop:
        got = read_all(drop.reader(drop.messages[0], lines=lines, read_size=read_size))
    assert got == top(stored, lines)


def test_top_stops_reading_the_file(root: pathlib.Path) -> None:
    (root / "new").mkdir(parents=True)
    (root / "new" / "1.M1P1.h").write_bytes(b"A: 1\n\n" + b"x\n" * 100_000)
    with Maildrop.open(root) as drop:
        reader = drop.reader(drop.messages[0], lines=1, read_size=4096)
        assert reader.read() == b"A: 1\r\n\r\nx\r\n"
        assert reader.read() == b""


# --- deleting -----------------------------------------------------------------------------


def test_expunge_removes_marked_messages_only(store: MaildirStore, root: pathlib.Path) -> None:
    names = [deliver(store, b"m%d\r\n" % n) for n in range(3)]
    with Maildrop.open(root) as drop:
        result = drop.expunge([drop.messages[0], drop.messages[2]])
    assert result == Expunged(removed=2, gone=0, failed=())
    assert os.listdir(root / "new") == [names[1]]


def test_expunge_finds_renamed_and_tolerates_removed(
    store: MaildirStore, root: pathlib.Path
) -> None:
    names = [deliver(store, b"m%d\r\n" % n) for n in range(3)]
    with Maildrop.open(root) as drop:
        # Meanwhile an IMAP client flagged the first and expunged the second.
        os.rename(root / "new" / names[0], root / "cur" / (names[0] + ":2,FS"))
        (root / "new" / names[1]).unlink()
        result = drop.expunge(drop.messages)
    assert result == Expunged(removed=2, gone=1, failed=())
    assert os.listdir(root / "new") == []
    assert os.listdir(root / "cur") == []


def test_expunge_reports_files_it_cannot_remove(
    store: MaildirStore, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [deliver(store, b"m%d\r\n" % n) for n in range(2)]
    real_unlink = os.unlink

    def unlink(path: str) -> None:
        if os.path.basename(path) == names[0]:
            raise PermissionError(13, "Permission denied", path)
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", unlink)
    with Maildrop.open(root) as drop:
        result = drop.expunge(drop.messages)
    assert result == Expunged(removed=1, gone=0, failed=(names[0],))
    assert os.listdir(root / "new") == [names[0]]


def test_expunge_fsyncs_each_touched_directory(
    store: MaildirStore, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [deliver(store, b"m%d\r\n" % n) for n in range(2)]
    os.rename(root / "new" / names[1], root / "cur" / (names[1] + ":2,S"))
    synced: list[str] = []
    monkeypatch.setattr(_mailbox, "fsync_dir", synced.append)
    with Maildrop.open(root) as drop:
        drop.expunge(drop.messages)
        drop.expunge([])
    assert synced == [str(root / "cur"), str(root / "new")]


# --- marking \Seen at QUIT ----------------------------------------------------------------


def test_seen_renames_into_cur_with_the_s_letter(store: MaildirStore, root: pathlib.Path) -> None:
    names = [deliver(store, b"m%d\r\n" % n) for n in range(5)]
    os.rename(root / "new" / names[1], root / "cur" / (names[1] + ":2,RFa"))
    os.rename(root / "new" / names[2], root / "cur" / (names[2] + ":2,S"))
    os.rename(root / "new" / names[3], root / "cur" / names[3])  # cur/ without an info part
    os.rename(root / "new" / names[4], root / "cur" / (names[4] + ":1,experimental"))
    with Maildrop.open(root) as drop:
        before = [(m.uid, m.size) for m in drop.messages]
        result = drop.expunge([], seen=drop.messages)
    assert result == Expunged(seen=3)
    # The letters the IMAP index reads (_imapmaildir), in ASCII order, others kept; a
    # file already seen, or with an info part that is not ours, stays as it is.
    assert os.listdir(root / "new") == []
    assert sorted(os.listdir(root / "cur")) == sorted(
        [
            names[0] + ":2,S",
            names[1] + ":2,FRSa",
            names[2] + ":2,S",
            names[3] + ":2,S",
            names[4] + ":1,experimental",
        ]
    )
    with Maildrop.open(root) as drop:
        assert [(m.uid, m.size) for m in drop.messages] == before


def test_expunge_deletes_and_marks_in_one_commit(
    store: MaildirStore, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [deliver(store, b"m%d\r\n" % n) for n in range(3)]
    synced: list[str] = []
    monkeypatch.setattr(_mailbox, "fsync_dir", synced.append)
    with Maildrop.open(root) as drop:
        (root / "new" / names[2]).unlink()  # removed by another client meanwhile
        result = drop.expunge([drop.messages[0]], seen=drop.messages[1:])
        # Every directory that lost or gained a name, once, after all the changes.
        assert synced == [str(root / "cur"), str(root / "new")]
        synced.clear()
        drop.expunge([], seen=[drop.messages[1]])  # already seen: nothing to sync
        assert synced == []
    assert result == Expunged(removed=1, seen=1)
    assert os.listdir(root / "new") == []
    assert os.listdir(root / "cur") == [names[1] + ":2,S"]


def test_seen_finds_a_file_renamed_meanwhile(
    store: MaildirStore, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = deliver(store, b"m\r\n")
    real_rename = os.rename
    raced: list[str] = []

    def rename(src: str, dst: str) -> None:
        if not raced:
            # An IMAP session flags the file between our listing and our rename.
            raced.append(src)
            real_rename(src, root / "cur" / (name + ":2,F"))
        real_rename(src, dst)

    with Maildrop.open(root) as drop:
        monkeypatch.setattr(os, "rename", rename)
        result = drop.expunge([], seen=drop.messages)
    assert raced == [str(root / "new" / name)]
    assert result == Expunged(seen=1)
    assert os.listdir(root / "cur") == [name + ":2,FS"]


def test_seen_reports_files_it_cannot_rename(
    store: MaildirStore, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [deliver(store, b"m%d\r\n" % n) for n in range(2)]
    real_rename = os.rename

    def rename(src: str, dst: str) -> None:
        if os.path.basename(src) == names[0]:
            raise PermissionError(13, "Permission denied", src)
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with Maildrop.open(root) as drop:
        result = drop.expunge([], seen=drop.messages)
    assert result == Expunged(seen=1, unmarked=(names[0],))
    assert os.listdir(root / "new") == [names[0]]
    assert os.listdir(root / "cur") == [names[1] + ":2,S"]


# --- the lock -----------------------------------------------------------------------------


def test_one_session_at_a_time_in_one_process(store: MaildirStore, root: pathlib.Path) -> None:
    deliver(store, b"m\r\n")
    first = Maildrop.open(root)
    with pytest.raises(MaildropInUseError):
        Maildrop.open(root)
    first.close()
    first.close()  # idempotent
    assert first.closed
    with Maildrop.open(root) as second:
        assert len(second.messages) == 1


def test_deliveries_are_not_blocked_by_the_lock(store: MaildirStore, root: pathlib.Path) -> None:
    with Maildrop.open(root):
        deliver(store, b"m\r\n")
    assert len(os.listdir(root / "new")) == 1


HOLDER = """
import sys, time
from sansmail.storage.maildir import Maildrop
drop = Maildrop.open(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_holds_across_processes_and_dies_with_its_holder(root: pathlib.Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(MaildropInUseError):
            Maildrop.open(root)
        holder.kill()  # a crash: no clean-up runs
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            Maildrop.open(root).close()
            break
        except MaildropInUseError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_lock_file_descriptor_is_not_inherited(root: pathlib.Path) -> None:
    with Maildrop.open(root) as drop:
        assert drop._lock_fd >= 0
        assert not os.get_inheritable(drop._lock_fd)


def test_message_info_is_frozen() -> None:
    info = MessageInfo(base="b", uid="b", size=1, folder="new", name="b")
    with pytest.raises(AttributeError):
        info.size = 2  # type: ignore[misc]


# --- on both backends (`store_helpers.backend`: the maildrop through its source) ---------

TOP_CASES = [
    (b"A: 1\nB: 2\n\nl1\nl2\nl3\n", 0, b"A: 1\r\nB: 2\r\n\r\n"),
    (b"A: 1\nB: 2\n\nl1\nl2\nl3\n", 2, b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n"),
    (b"A: 1\n\nl1\n", 9, b"A: 1\r\n\r\nl1\r\n"),
    (b"A: 1\nno body at all\n", 3, b"A: 1\r\nno body at all\r\n"),
    (b"\nbody first\nmore\n", 1, b"\r\nbody first\r\n"),
    (b"A: 1\n\n\n\nx\n", 2, b"A: 1\r\n\r\n\r\n\r\n"),
]


def put(backend: Backend, content: bytes) -> None:
    delivery = backend.store.begin([ALICE], prefix=b"")
    delivery.write(content)
    delivery.commit()


def test_snapshot_reading_and_top_on_either_backend(backend: Backend) -> None:
    for stored, _lines, _expected in TOP_CASES:
        put(backend, stored)
    with backend.maildrops.open_maildrop(ALICE) as drop:
        messages = drop.messages
        assert [m.size for m in messages] == [len(wire(s)) for s, _l, _e in TOP_CASES]
        assert len({m.uid for m in messages}) == len(TOP_CASES)
        for message, (stored, lines, expected) in zip(messages, TOP_CASES, strict=True):
            assert read_all(drop.reader(message)) == wire(stored)
            assert read_all(drop.reader(message, lines=lines)) == expected


def test_a_big_message_is_read_in_chunks_on_either_backend(backend: Backend) -> None:
    body = b"".join(b"line %05d\r\n" % n for n in range(50_000))
    put(backend, b"Subject: big\r\n\r\n" + body)
    with backend.maildrops.open_maildrop(ALICE) as drop:
        (message,) = drop.messages
        reader = drop.reader(message)
        chunks = []
        while chunk := reader.read():
            chunks.append(chunk)
    assert b"".join(chunks) == b"Subject: big\r\n\r\n" + body
    assert message.size == len(b"".join(chunks))
    assert max(len(c) for c in chunks) <= 2 * _mailbox.READ_SIZE  # never all at once
    assert len(chunks) > 2


def test_uidl_is_stable_and_new_mail_waits_on_either_backend(backend: Backend) -> None:
    put(backend, b"one\r\n")
    with backend.maildrops.open_maildrop(ALICE) as drop:
        first = drop.messages
        put(backend, b"two\r\n")
        assert len(drop.messages) == 1
    with backend.maildrops.open_maildrop(ALICE) as drop:
        assert len(drop.messages) == 2
        assert drop.messages[0].uid == first[0].uid
        assert drop.messages[1].uid != first[0].uid


def test_expunge_and_seen_on_either_backend(backend: Backend) -> None:
    for n in range(4):
        put(backend, b"m%d\r\n" % n)
    with backend.maildrops.open_maildrop(ALICE) as drop:
        m = drop.messages
        result = drop.expunge([m[0], m[2]], seen=[m[1]])
    assert (result.removed, result.gone, result.failed, result.seen) == (2, 0, (), 1)
    assert backend.rows(ALICE) == [
        (b"m1\r\n", frozenset({"\\Seen"})),
        (b"m3\r\n", frozenset()),
    ]
    with backend.maildrops.open_maildrop(ALICE) as drop:
        assert [m.uid for m in drop.messages] == [m[1].uid, m[3].uid]


def test_one_session_at_a_time_on_either_backend(backend: Backend) -> None:
    put(backend, b"m\r\n")
    first = backend.maildrops.open_maildrop(ALICE)
    with pytest.raises(MaildropInUseError):
        backend.maildrops.open_maildrop(ALICE)
    put(backend, b"delivered meanwhile\r\n")  # deliveries are not blocked by the lock
    first.close()
    first.close()  # idempotent
    with backend.maildrops.open_maildrop(ALICE) as second:
        assert len(second.messages) == 2
