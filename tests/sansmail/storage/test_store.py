"""MaildirStore: layout, content, names, durability order, concurrency; and at the end
what every mail store does, on both backends (`store_helpers.backend`)."""

from __future__ import annotations

import errno
import itertools
import os
import pathlib
import re
import shutil
import stat
import tempfile
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_helpers import Backend, backend_fixture  # noqa: F401 (the fixture)

import sansmail.storage.maildir
from sansmail.mail.address import MailboxId
from sansmail.storage.maildir import MaildirStore, MailStore, _maildir
from sansmail.storage.maildir._imapmaildir import to_crlf

ALICE = MailboxId(domain="example.test", local="alice")
BOB = MailboxId(domain="example.test", local="bob")
CAROL = MailboxId(domain="other.test", local="carol")
PREFIX = b"Return-Path: <s@example.net>\r\nReceived: from x\r\n\tby y; date\r\n"
PREFIX_LF = PREFIX.replace(b"\r\n", b"\n")
NAME = re.compile(
    r"^(?P<secs>\d+)\.M(?P<usecs>\d+)P(?P<pid>\d+)Q(?P<q>\d+)\.(?P<host>[^,]+)"
    r",S=(?P<size>\d+),W=(?P<vsize>\d+)$"
)


def deliver(store: MailStore, boxes: list[MailboxId], *chunks: bytes) -> list[str]:
    delivery = store.begin(boxes, prefix=PREFIX)
    for chunk in chunks:
        delivery.write(chunk)
    return delivery.commit()


def test_public_surface() -> None:
    assert sorted(sansmail.storage.maildir.__all__) == sorted(
        [
            "Delivery",
            "MailStore",
            "MaildirStore",
            "BackendUnavailableError",
            *("Maildrop", "MaildropInUseError", "MessageGoneError", "MessageInfo"),
            *("MaildirMaildrops", "MaildropSource", "Pop3Maildrop"),
            *("MessageReader", "Expunged"),
            *sansmail.storage.maildir._imapbase.__all__,
            *("DEFAULT_SPECIAL_USE", "MaildirAccount", "MaildirFolderView", "MaildirImapStore"),
            *("FolderStatus", "Resynced"),
            *("decode_mutf7", "encode_mutf7", "folder_dir"),
            *("OverQuotaError", "QuotaLimits", "Usage", "peek_usage", "recalculate_usage"),
        ]
    )


def test_one_mailbox(tmp_path: pathlib.Path) -> None:
    store = MaildirStore(tmp_path, hostname="mx.example.test")
    names = deliver(store, [ALICE], b"Subject: hi\r\n\r\nline 1\r\nline 2\r\n")
    root = tmp_path / "mail" / "example.test" / "alice"
    assert store.maildir(ALICE) == root
    (name,) = names
    content = (root / "new" / name).read_bytes()
    assert content == PREFIX_LF + b"Subject: hi\n\nline 1\nline 2\n"
    assert os.listdir(root / "tmp") == []
    assert os.listdir(root / "cur") == []
    match = NAME.match(name)
    assert match is not None
    assert match["host"] == "mx.example.test"
    assert int(match["pid"]) == os.getpid()
    assert int(match["size"]) == len(content)
    assert int(match["vsize"]) == len(content) + content.count(b"\n")


def test_modes(tmp_path: pathlib.Path) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    (name,) = deliver(store, [ALICE], b"x\r\n")
    root = store.maildir(ALICE)
    for path in (root, root / "tmp", root / "new", root / "cur", root.parent, root.parent.parent):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE((root / "new" / name).stat().st_mode) == 0o600


def test_several_mailboxes_share_one_inode(tmp_path: pathlib.Path) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    names = deliver(store, [ALICE, BOB, CAROL, BOB], b"hello\r\n")
    assert len(names) == 4
    assert len(set(names)) == 1
    files = [store.maildir(box) / "new" / names[0] for box in (ALICE, BOB, CAROL)]
    inodes = {f.stat().st_ino for f in files}
    assert len(inodes) == 1
    assert files[0].stat().st_nlink == 3
    assert all(f.read_bytes() == PREFIX_LF + b"hello\n" for f in files)
    for box in (ALICE, BOB, CAROL):
        assert os.listdir(store.maildir(box) / "tmp") == []


def test_link_failure_falls_back_to_a_durable_copy(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    deliver(store, [ALICE, BOB], b"warm up\r\n")
    calls: list[tuple[str, str]] = []
    fds: dict[int, str] = {}
    real_open, real_fsync, real_rename = os.open, os.fsync, os.rename

    def no_link(src: str, dst: str) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    def rec_open(path: str, flags: int, mode: int = 0o777) -> int:
        fd = real_open(path, flags, mode)
        fds[fd] = str(path)
        return fd

    def rec_fsync(fd: int) -> None:
        calls.append(("fsync", fds[fd]))
        real_fsync(fd)

    def rec_rename(src: str, dst: str) -> None:
        calls.append(("rename", str(src)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(os, "open", rec_open)
    monkeypatch.setattr(os, "fsync", rec_fsync)
    monkeypatch.setattr(os, "rename", rec_rename)
    (name, _) = deliver(store, [ALICE, BOB], b"copied\r\n")
    a, b = (store.maildir(box) / "new" / name for box in (ALICE, BOB))
    assert a.read_bytes() == b.read_bytes() == PREFIX_LF + b"copied\n"
    assert a.stat().st_ino != b.stat().st_ino
    assert stat.S_IMODE(b.stat().st_mode) == 0o600
    copy_tmp = str(store.maildir(BOB) / "tmp" / name)
    assert calls.index(("fsync", copy_tmp)) < calls.index(("rename", copy_tmp))
    assert calls.index(("rename", copy_tmp)) < calls.index(("fsync", str(b.parent)))
    assert os.listdir(store.maildir(BOB) / "tmp") == []


def test_durability_order(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    deliver(store, [ALICE, BOB], b"warm up: the directories exist\r\n")
    calls: list[tuple[str, str]] = []
    fds: dict[int, str] = {}
    real_open, real_fsync = os.open, os.fsync
    real_rename, real_link = os.rename, os.link

    def rec_open(path: str, flags: int, mode: int = 0o777) -> int:
        fd = real_open(path, flags, mode)
        fds[fd] = str(path)
        calls.append(("open", str(path)))
        return fd

    def rec_fsync(fd: int) -> None:
        calls.append(("fsync", fds[fd]))
        real_fsync(fd)

    def rec_rename(src: str, dst: str) -> None:
        calls.append(("rename", str(dst)))
        real_rename(src, dst)

    def rec_link(src: str, dst: str) -> None:
        calls.append(("link", str(dst)))
        real_link(src, dst)

    monkeypatch.setattr(os, "open", rec_open)
    monkeypatch.setattr(os, "fsync", rec_fsync)
    monkeypatch.setattr(os, "rename", rec_rename)
    monkeypatch.setattr(os, "link", rec_link)
    delivery = store.begin([ALICE, BOB], prefix=PREFIX)
    delivery.write(b"body\r\n")
    assert calls == []  # begin and write never touch the disk
    (name, _) = delivery.commit()
    calls.append(("returned", ""))
    new_a = str(store.maildir(ALICE) / "new")
    new_b = str(store.maildir(BOB) / "new")
    tmp = str(store.maildir(ALICE) / "tmp" / name.partition(",")[0])
    assert calls == [
        ("open", tmp),
        ("fsync", tmp),
        ("link", f"{new_b}/{name}"),
        ("rename", f"{new_a}/{name}"),
        ("open", new_a),
        ("fsync", new_a),
        ("open", new_b),
        ("fsync", new_b),
        ("returned", ""),
    ]


def test_first_delivery_makes_parent_directories_durable(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    synced: list[str] = []
    real_fsync_dir = _maildir._fsync_dir

    def rec(path: str) -> None:
        synced.append(path)
        real_fsync_dir(path)

    monkeypatch.setattr(_maildir, "_fsync_dir", rec)
    deliver(store, [ALICE], b"x\r\n")
    root = str(store.maildir(ALICE))
    domain = os.path.dirname(root)
    mail = os.path.dirname(domain)
    assert synced == [str(tmp_path), mail, domain, root, root + "/new"]
    synced.clear()
    deliver(store, [ALICE], b"y\r\n")
    assert synced == [root + "/new"]  # known directories are not made or synced again


@settings(deadline=None, max_examples=60)
@given(
    content=st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"\r\n") + b"\r\n"),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    flush_after=st.sets(st.integers(min_value=0, max_value=8)),
)
def test_crlf_to_lf_across_any_chunking(
    content: bytes, cuts: list[int], flush_after: set[int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = MaildirStore(pathlib.Path(tmp), hostname="h")
        delivery = store.begin([ALICE], prefix=PREFIX)
        bounds = [0, *sorted(c for c in cuts if c <= len(content)), len(content)]
        expected = content.replace(b"\r\n", b"\n")
        for i, (start, end) in enumerate(itertools.pairwise(bounds)):
            delivery.write(content[start:end])
            if i in flush_after:
                delivery.flush()
                assert delivery.pending == 0
        assert delivery.size == len(expected)
        (name,) = delivery.commit()
        stored = (store.maildir(ALICE) / "new" / name).read_bytes()
        assert stored == PREFIX_LF + expected
        match = NAME.match(name)
        assert match is not None
        assert int(match["size"]) == len(stored)


def test_pending_counts_unflushed_octets(tmp_path: pathlib.Path) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    delivery = store.begin([ALICE], prefix=b"")
    delivery.write(b"abc\r\n")
    assert (delivery.pending, delivery.size) == (4, 4)
    delivery.flush()
    assert (delivery.pending, delivery.size) == (0, 4)
    delivery.write(b"de\r")  # the CR waits to see whether an LF follows
    assert delivery.size == 7
    delivery.write(b"\nf\r\n")
    assert delivery.size == 9
    (name,) = delivery.commit()
    assert (store.maildir(ALICE) / "new" / name).read_bytes() == b"abc\nde\nf\n"


def test_abort_leaves_nothing(tmp_path: pathlib.Path) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    delivery = store.begin([ALICE, BOB], prefix=PREFIX)
    delivery.write(b"x" * 1000)
    delivery.flush()
    assert len(os.listdir(store.maildir(ALICE) / "tmp")) == 1
    delivery.abort()
    delivery.abort()  # twice is harmless
    for box in (ALICE, BOB):
        root = store.maildir(box)
        if root.exists():
            assert os.listdir(root / "tmp") == []
            assert os.listdir(root / "new") == []
    with pytest.raises(RuntimeError):
        delivery.write(b"more")


def test_abort_before_any_io_touches_nothing(tmp_path: pathlib.Path) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    delivery = store.begin([ALICE], prefix=PREFIX)
    delivery.write(b"x\r\n")
    delivery.abort()
    assert not (tmp_path / "mail").exists()


def test_abort_after_commit_keeps_the_message(tmp_path: pathlib.Path) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    delivery = store.begin([ALICE], prefix=PREFIX)
    delivery.write(b"x\r\n")
    (name,) = delivery.commit()
    delivery.abort()
    assert (store.maildir(ALICE) / "new" / name).exists()
    with pytest.raises(RuntimeError):
        delivery.commit()


def test_failed_commit_removes_what_it_made(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    deliver(store, [ALICE, BOB], b"warm up\r\n")
    before = {box: set(os.listdir(store.maildir(box) / "new")) for box in (ALICE, BOB)}
    bob_new = str(store.maildir(BOB) / "new")
    real = _maildir._fsync_dir

    def failing(path: str) -> None:
        if path == bob_new:
            raise OSError(errno.EIO, "I/O error")
        real(path)

    monkeypatch.setattr(_maildir, "_fsync_dir", failing)
    delivery = store.begin([ALICE, BOB], prefix=PREFIX)
    delivery.write(b"lost\r\n")
    with pytest.raises(OSError, match="fsync"):
        delivery.commit()
    delivery.abort()
    for box in (ALICE, BOB):
        assert set(os.listdir(store.maildir(box) / "new")) == before[box]
        assert os.listdir(store.maildir(box) / "tmp") == []


def test_maildir_removed_under_the_store_is_made_again(tmp_path: pathlib.Path) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    deliver(store, [ALICE], b"one\r\n")
    shutil.rmtree(store.maildir(ALICE))
    (name,) = deliver(store, [ALICE], b"two\r\n")
    assert (store.maildir(ALICE) / "new" / name).read_bytes().endswith(b"two\n")
    assert (store.maildir(ALICE) / "cur").is_dir()


def test_names_are_unique_even_with_a_stopped_clock(tmp_path: pathlib.Path) -> None:
    store = MaildirStore(tmp_path, hostname="h", clock=lambda: 1_700_000_000_123_456_789)
    names = [deliver(store, [ALICE], b"x\r\n")[0] for _ in range(5)]
    assert len(set(names)) == 5
    assert all(n.startswith("1700000000.M123456P") for n in names)
    assert [NAME.match(n)["q"] for n in names] == ["1", "2", "3", "4", "5"]  # type: ignore[index]


def test_hostname_is_escaped(tmp_path: pathlib.Path) -> None:
    store = MaildirStore(tmp_path, hostname="a/b:c,d e")
    (name,) = deliver(store, [ALICE], b"x\r\n")
    assert ".a\\057b\\072c\\054d\\040e," in name
    assert "/" not in name


@pytest.mark.parametrize(
    ("local", "dirname"),
    [
        ("..", "%2E."),
        (".", "%2E"),
        (".hidden", "%2Ehidden"),
        ("a/b", "a%2Fb"),
        ("../../etc", "%2E.%2F..%2Fetc"),
        ("100%", "100%25"),
        ("j.doe", "j.doe"),
    ],
)
def test_mailbox_names_cannot_escape(tmp_path: pathlib.Path, local: str, dirname: str) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    box = MailboxId(domain="example.test", local=local)
    assert store.maildir(box) == tmp_path / "mail" / "example.test" / dirname
    deliver(store, [box], b"x\r\n")
    assert sorted(os.listdir(tmp_path / "mail" / "example.test")) == [dirname]


def test_mailbox_id_is_validated() -> None:
    with pytest.raises(ValueError, match="empty"):
        MailboxId(domain="", local="a")
    with pytest.raises(ValueError, match="NUL"):
        MailboxId(domain="x", local="a\x00b")


def test_begin_needs_a_mailbox(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="mailbox"):
        MaildirStore(tmp_path, hostname="h").begin([], prefix=b"")


def test_concurrent_commits(tmp_path: pathlib.Path) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    results: dict[tuple[int, int], list[str]] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(15):
                boxes = [ALICE] if i % 3 else [ALICE, BOB]
                results[t, i] = deliver(store, boxes, f"thread {t} message {i}\r\n".encode())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    names = [names[0] for names in results.values()]
    assert len(set(names)) == len(names) == 120
    alice_new = store.maildir(ALICE) / "new"
    assert len(os.listdir(alice_new)) == 120
    assert len(os.listdir(store.maildir(BOB) / "new")) == 8 * 5
    for (t, i), (name, *_) in results.items():
        assert (alice_new / name).read_bytes() == PREFIX_LF + f"thread {t} message {i}\n".encode()
    assert os.listdir(store.maildir(ALICE) / "tmp") == []


# --- group commit (commit_many) ---------------------------------------------------------


class _Recorder:
    """os.open/fsync/link/rename of this test, recorded in order, with the path each
    fsync'd descriptor was opened on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fds: dict[int, str] = {}
        real_open, real_fsync = os.open, os.fsync
        real_rename, real_link = os.rename, os.link

        def rec_open(path: str, flags: int, mode: int = 0o777) -> int:
            fd = real_open(path, flags, mode)
            self.fds[fd] = str(path)
            return fd

        def rec_fsync(fd: int) -> None:
            self.calls.append(("fsync", self.fds[fd]))
            real_fsync(fd)

        def rec_rename(src: str, dst: str) -> None:
            self.calls.append(("name", str(dst)))
            real_rename(src, dst)

        def rec_link(src: str, dst: str) -> None:
            self.calls.append(("name", str(dst)))
            real_link(src, dst)

        monkeypatch.setattr(os, "open", rec_open)
        monkeypatch.setattr(os, "fsync", rec_fsync)
        monkeypatch.setattr(os, "rename", rec_rename)
        monkeypatch.setattr(os, "link", rec_link)


def test_commit_many_syncs_each_directory_once_after_every_name(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    deliver(store, [ALICE, BOB], b"warm up: the directories exist\r\n")
    recorder = _Recorder(monkeypatch)
    boxes = [[ALICE], [ALICE, BOB], [BOB], [ALICE]]
    deliveries = []
    for n, mailboxes in enumerate(boxes):
        delivery = store.begin(mailboxes, prefix=PREFIX)
        delivery.write(f"message {n}\r\n".encode())
        deliveries.append(delivery)
    results = store.commit_many(deliveries)
    new_a, new_b = (str(store.maildir(box) / "new") for box in (ALICE, BOB))
    synced_dirs = [
        path for kind, path in recorder.calls if kind == "fsync" and path.endswith("/new")
    ]
    assert synced_dirs == [new_a, new_b]  # once each, for the four messages
    assert recorder.calls[-2:] == [("fsync", new_a), ("fsync", new_b)]  # nothing after them
    for n, (mailboxes, result) in enumerate(zip(boxes, results, strict=True)):
        assert isinstance(result, list)
        assert len(result) == len(mailboxes)
        name = result[0]
        tmp = str(store.maildir(mailboxes[0]) / "tmp" / name.partition(",")[0])
        file_synced = recorder.calls.index(("fsync", tmp))
        for box in mailboxes:
            path = store.maildir(box) / "new" / name
            assert path.read_bytes() == PREFIX_LF + f"message {n}\n".encode()
            # The file is on disk before any name for it appears.
            assert file_synced < recorder.calls.index(("name", str(path)))
    for box in (ALICE, BOB):
        assert os.listdir(store.maildir(box) / "tmp") == []


def test_commit_many_keeps_a_failure_to_its_own_delivery(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    deliveries = []
    for n in range(3):
        delivery = store.begin([ALICE], prefix=PREFIX)
        delivery.write(f"message {n}\r\n".encode())
        delivery.flush()  # the tmp files exist: the second one's fsync will fail
        deliveries.append(delivery)
    doomed = max(os.listdir(store.maildir(ALICE) / "tmp"), key=_counter)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(doomed):
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    results = store.commit_many(deliveries)
    assert [type(r) for r in results] == [list, list, OSError]
    deliveries[2].abort()
    new = store.maildir(ALICE) / "new"
    assert sorted(p.read_bytes() for p in new.iterdir()) == [
        PREFIX_LF + b"message 0\n",
        PREFIX_LF + b"message 1\n",
    ]
    assert os.listdir(store.maildir(ALICE) / "tmp") == []


def test_commit_many_a_failed_directory_sync_fails_only_its_deliveries(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    deliver(store, [ALICE, BOB, CAROL], b"warm up\r\n")
    before = {box: set(os.listdir(store.maildir(box) / "new")) for box in (ALICE, BOB, CAROL)}
    bob_new = str(store.maildir(BOB) / "new")
    real = _maildir._fsync_dir

    def failing(path: str) -> None:
        if path == bob_new:
            raise OSError(errno.EIO, "I/O error")
        real(path)

    monkeypatch.setattr(_maildir, "_fsync_dir", failing)
    boxes = [[ALICE], [ALICE, BOB], [CAROL], [BOB]]
    deliveries = [store.begin(mailboxes, prefix=PREFIX) for mailboxes in boxes]
    for delivery in deliveries:
        delivery.write(b"body\r\n")
    results = store.commit_many(deliveries)
    assert [type(r) for r in results] == [list, OSError, list, OSError]
    assert "fsync of " + bob_new in str(results[1])
    for delivery, result in zip(deliveries, results, strict=True):
        if isinstance(result, OSError):
            delivery.abort()
    # The failed ones left no name anywhere, not even in ALICE's new/ (synced fine).
    assert len(set(os.listdir(store.maildir(ALICE) / "new")) - before[ALICE]) == 1
    assert set(os.listdir(store.maildir(BOB) / "new")) == before[BOB]
    assert len(set(os.listdir(store.maildir(CAROL) / "new")) - before[CAROL]) == 1
    for box in (ALICE, BOB, CAROL):
        assert os.listdir(store.maildir(box) / "tmp") == []


def test_commit_many_refuses_a_delivery_of_another_store(tmp_path: pathlib.Path) -> None:
    one = MaildirStore(tmp_path / "one", hostname="h")
    other = MaildirStore(tmp_path / "other", hostname="h")
    delivery = other.begin([ALICE], prefix=b"")
    with pytest.raises(TypeError, match="store that began it"):
        one.commit_many([delivery])
    assert one.commit_many([]) == []


def test_a_delivery_is_committed_once(tmp_path: pathlib.Path) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    delivery = store.begin([ALICE], prefix=b"")
    delivery.write(b"x\r\n")
    store.commit_many([delivery])
    with pytest.raises(RuntimeError):
        store.commit_many([delivery])
    prepared = store.begin([ALICE], prefix=b"")
    assert isinstance(prepared, _maildir._MaildirDelivery)
    with pytest.raises(RuntimeError, match="before prepare"):
        store.publish_many([prepared])


_BOXES = (ALICE, BOB, CAROL)


@settings(deadline=None, max_examples=40)
@given(
    batch=st.lists(
        st.tuples(
            st.lists(st.sampled_from(_BOXES), min_size=1, max_size=4),  # duplicates too
            st.booleans(),  # the file's fsync fails
        ),
        max_size=6,
    ),
    failing_dir=st.one_of(st.none(), st.sampled_from(_BOXES)),
)
def test_commit_many_outcomes(
    batch: list[tuple[list[MailboxId], bool]], failing_dir: MailboxId | None
) -> None:
    """Whatever the batch and its failures: a delivery is stored, whole and in each of
    its mailboxes, exactly when its file and every directory it touched synced; a failed
    one leaves nothing once aborted; no name is left that was not returned."""
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        store = MaildirStore(pathlib.Path(tmp), hostname="h")
        deliver(store, list(_BOXES), b"warm up\r\n")
        before = {box: set(os.listdir(store.maildir(box) / "new")) for box in _BOXES}
        doomed: set[str] = set()
        deliveries = []
        for n, (mailboxes, file_fails) in enumerate(batch):
            delivery = store.begin(mailboxes, prefix=PREFIX)
            delivery.write(f"message {n}\r\n".encode())
            if file_fails:
                delivery.flush()
                doomed.add(max(os.listdir(store.maildir(mailboxes[0]) / "tmp"), key=_counter))
            deliveries.append(delivery)
        real_fsync, real_dir = os.fsync, _maildir._fsync_dir
        bad_dir = None if failing_dir is None else str(store.maildir(failing_dir) / "new")

        def fsync(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}").rpartition("/")[2] in doomed:
                raise OSError(errno.EIO, "I/O error")
            real_fsync(fd)

        def fsync_dir(path: str) -> None:
            if path == bad_dir:
                raise OSError(errno.EIO, "I/O error")
            real_dir(path)

        patch.setattr(os, "fsync", fsync)
        patch.setattr(_maildir, "_fsync_dir", fsync_dir)
        results = store.commit_many(deliveries)
        patch.undo()
        stored: dict[MailboxId, set[str]] = {box: set() for box in _BOXES}
        for n, ((mailboxes, file_fails), result, delivery) in enumerate(
            zip(batch, results, deliveries, strict=True)
        ):
            if file_fails or failing_dir in mailboxes:
                assert isinstance(result, OSError)
                delivery.abort()
                continue
            assert isinstance(result, list)
            assert len(result) == len(mailboxes)
            for box, name in zip(mailboxes, result, strict=True):
                path = store.maildir(box) / "new" / name
                assert path.read_bytes() == PREFIX_LF + f"message {n}\n".encode()
                stored[box].add(name)
        for box in _BOXES:
            assert set(os.listdir(store.maildir(box) / "new")) - before[box] == stored[box]
            assert os.listdir(store.maildir(box) / "tmp") == []


def _counter(name: str) -> int:
    # The Q<n> counter of a Maildir name: the latest file made has the highest.
    return int(name.split("Q", 1)[1].split(".", 1)[0])


# --- on both backends (no look at Maildir files) ----------------------------------------


def test_each_mailbox_gets_the_message_once(backend: Backend) -> None:
    names = deliver(backend.store, [ALICE, BOB, ALICE], b"Subject: hi\r\n\r\nline 1\r\n")
    assert len(names) == 3
    assert len(set(names)) == (2 if backend.pg else 1)  # a name per mailbox, or one file
    for box in (ALICE, BOB):
        assert backend.messages(box) == [PREFIX + b"Subject: hi\r\n\r\nline 1\r\n"]
    assert backend.messages(CAROL) == []


@settings(
    deadline=None, max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    # Wire form has no bare CR (a Maildir would keep one only as part of a line end).
    content=st.binary(max_size=300).map(
        lambda b: b.replace(b"\r", b"").replace(b"\n", b"\r\n") + b"\r\n"
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    flush_after=st.sets(st.integers(min_value=0, max_value=8)),
)
def test_size_and_content_across_any_chunking(
    backend: Backend, content: bytes, cuts: list[int], flush_after: set[int]
) -> None:
    delivery = backend.store.begin([ALICE], prefix=PREFIX)
    bounds = [0, *sorted(c for c in cuts if c <= len(content)), len(content)]
    for i, (start, end) in enumerate(itertools.pairwise(bounds)):
        delivery.write(content[start:end])
        if i in flush_after:
            delivery.flush()
            assert delivery.pending == 0
    # Counted as stored in a Maildir (LF line ends): the same size limits on both.
    assert delivery.size == len(content.replace(b"\r\n", b"\n"))
    delivery.commit()
    stored = backend.messages(ALICE)[-1]
    assert stored == to_crlf(PREFIX + content)


def test_size_with_a_crlf_split_between_writes(backend: Backend) -> None:
    delivery = backend.store.begin([ALICE], prefix=b"")
    delivery.write(b"abc\r\n")
    assert delivery.size == 4
    delivery.flush()
    assert (delivery.pending, delivery.size) == (0, 4)
    delivery.write(b"de\r")
    delivery.write(b"\nf\r\n")
    assert delivery.size == 9
    delivery.commit()
    assert backend.messages(ALICE) == [b"abc\r\nde\r\nf\r\n"]


def test_abort_leaves_nothing_on_either_backend(backend: Backend) -> None:
    delivery = backend.store.begin([ALICE, BOB], prefix=PREFIX)
    delivery.write(b"x" * 1000)
    delivery.flush()
    delivery.abort()
    delivery.abort()  # twice is harmless
    assert backend.messages(ALICE) == backend.messages(BOB) == []
    with pytest.raises(RuntimeError):
        delivery.write(b"more")
    kept = backend.store.begin([ALICE], prefix=b"")
    kept.write(b"kept\r\n")
    kept.commit()
    kept.abort()  # after commit: a no-op
    assert backend.messages(ALICE) == [b"kept\r\n"]
    with pytest.raises(RuntimeError):
        kept.commit()


def test_begin_refuses_no_mailbox_and_bad_folder_names(backend: Backend) -> None:
    with pytest.raises(ValueError, match="mailbox"):
        backend.store.begin([], prefix=b"")
    with pytest.raises(ValueError):
        backend.store.begin([ALICE], prefix=b"", folder="a//b")


def test_folder_made_on_first_use(backend: Backend) -> None:
    assert not backend.store.folder_exists(ALICE, "Junk")
    delivery = backend.store.begin([ALICE, BOB], prefix=b"", folder="Junk")
    delivery.write(b"spam\r\n")
    delivery.commit()
    deliver(backend.store, [ALICE], b"ham\r\n")
    for box in (ALICE, BOB):
        assert backend.store.folder_exists(box, "Junk")
        assert backend.messages(box, "Junk") == [b"spam\r\n"]
    assert backend.messages(ALICE) == [PREFIX + b"ham\r\n"]
    assert not backend.store.folder_exists(ALICE, "Lists")


def test_storage_and_full_follow_the_quota(backend: Backend) -> None:
    store = backend.make(quota=lambda mailbox: 100 if mailbox == ALICE else 0)
    assert store.storage(BOB) is None
    assert not store.full(ALICE)
    deliver(store, [ALICE, BOB], b"x" * 30 + b"\r\n")
    size = len(PREFIX) + 32
    assert store.storage(ALICE) == (size, 100)
    assert not store.full(ALICE)
    deliver(store, [ALICE], b"y" * 30 + b"\r\n")
    assert store.storage(ALICE) == (2 * size, 100)
    assert store.full(ALICE)  # at or over: the next RCPT is refused
    assert not store.full(BOB)  # no limit


def test_concurrent_commits_on_either_backend(backend: Backend) -> None:
    results: dict[tuple[int, int], list[str]] = {}
    errors: list[BaseException] = []
    other = backend.make()  # a second process, or a second node

    def worker(t: int) -> None:
        store = backend.store if t % 2 else other
        try:
            for i in range(10):
                boxes = [ALICE] if i % 3 else [ALICE, BOB]
                results[t, i] = deliver(store, boxes, f"thread {t} message {i}\r\n".encode())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({names[0] for names in results.values()}) == 60
    expected = {PREFIX + f"thread {t} message {i}\r\n".encode() for t, i in results}
    alice = backend.messages(ALICE)
    assert len(alice) == 60
    assert set(alice) == expected
    assert len(backend.messages(BOB)) == 6 * 4


def test_commit_many_with_other_stores_deliveries_and_twice(backend: Backend) -> None:
    other = backend.make()
    foreign = other.begin([ALICE], prefix=b"")
    with pytest.raises(TypeError, match="store that began it"):
        backend.store.commit_many([foreign])
    assert backend.store.commit_many([]) == []
    delivery = backend.store.begin([ALICE], prefix=b"")
    delivery.write(b"x\r\n")
    (names,) = backend.store.commit_many([delivery])
    assert isinstance(names, list)
    with pytest.raises(RuntimeError):
        backend.store.commit_many([delivery])
    assert backend.messages(ALICE) == [b"x\r\n"]


def test_commit_many_stores_each_of_a_batch(backend: Backend) -> None:
    deliveries = []
    for n, boxes in enumerate([[ALICE], [ALICE, BOB], [CAROL, ALICE, CAROL]]):
        delivery = backend.store.begin(boxes, prefix=b"")
        delivery.write(b"message %d\r\n" % n)
        deliveries.append(delivery)
    results = backend.store.commit_many(deliveries)
    assert [len(r) for r in results if isinstance(r, list)] == [1, 2, 3]
    assert backend.messages(ALICE) == [b"message 0\r\n", b"message 1\r\n", b"message 2\r\n"]
    assert backend.messages(BOB) == [b"message 1\r\n"]
    assert backend.messages(CAROL) == [b"message 2\r\n"]
