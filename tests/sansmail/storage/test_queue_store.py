"""The outbound queue store: round trips, the durability order, crash leftovers."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sansmail.storage.queue
from sansmail.mail.envelope import (
    CorruptEnvelopeError,
    QueuedMessage,
    QueuedRecipient,
    decode_envelope,
    encode_envelope,
)
from sansmail.storage.queue import QueueStore, UnknownQueueIdError, _store, format_mailq

CONTENT = b"Subject: hi\r\n\r\nline one\r\nline two\r\n"


def envelope(queue_id: str = "ABC123", **changes: Any) -> QueuedMessage:
    fields: dict[str, Any] = {
        "queue_id": queue_id,
        "sender": "alice@example.test",
        "arrival": 1_700_000_000.25,
        "size": 0,
        "recipients": (
            QueuedRecipient(address="bob@remote.test", notify=("failure", "DELAY")),
            QueuedRecipient(address="carol@remote.test", orcpt="rfc822;carol@remote.test"),
        ),
        "ret": "hdrs",
        "envid": "QQ314159",
        "smtputf8": False,
        "body_8bit": True,
    }
    fields.update(changes)
    return QueuedMessage(**fields)


def queue(
    store: QueueStore, queue_id: str = "ABC123", content: bytes = CONTENT, **changes: Any
) -> QueuedMessage:
    writer = store.begin(queue_id)
    writer.write(content)
    return writer.commit(envelope(queue_id, **changes))


@pytest.fixture
def store(tmp_path: pathlib.Path) -> QueueStore:
    return QueueStore(tmp_path / "queue")


def files(store: QueueStore) -> list[str]:
    return sorted(os.listdir(store.root))


def test_public_names() -> None:
    assert sorted(sansmail.storage.queue.__all__) == [
        "AttemptResult",
        "CorruptEnvelopeError",
        "Outcome",
        "QueueStore",
        "QueueWriter",
        "QueuedMessage",
        "QueuedRecipient",
        "RecipientState",
        "UnknownQueueIdError",
        "check_queue_id",
        "dsn_status",
        "format_mailq",
        "record_attempt",
    ]


# -- round trip ----------------------------------------------------------------------


def test_round_trip(store: QueueStore) -> None:
    writer = store.begin("ABC123")
    writer.write(CONTENT[:10])
    assert writer.pending == 10
    writer.flush()
    assert writer.pending == 0
    writer.write(CONTENT[10:])
    writer.write(b"")
    assert writer.size == len(CONTENT)
    stored = writer.commit(envelope(size=999))
    assert stored.size == len(CONTENT)  # the store counts, the caller's guess is ignored
    assert store.load("ABC123") == stored
    assert stored.recipients[0].notify == ("FAILURE", "DELAY")
    assert stored.ret == "HDRS"
    assert store.read_message("ABC123") == CONTENT
    assert store.list() == [stored]
    assert files(store) == ["ABC123.env", "ABC123.msg"]
    assert os.stat(store.root / "ABC123.msg").st_mode & 0o777 == 0o600


def test_empty_content_round_trips(store: QueueStore) -> None:
    writer = store.begin("E1")
    stored = writer.commit(envelope("E1"))
    assert stored.size == 0
    assert store.read_message("E1") == b""


def test_writer_refuses_use_after_commit_and_abort(store: QueueStore) -> None:
    writer = store.begin("A1")
    writer.commit(envelope("A1"))
    with pytest.raises(RuntimeError):
        writer.write(b"x")
    with pytest.raises(RuntimeError):
        writer.commit(envelope("A1"))
    writer.abort()  # harmless
    assert store.load("A1").queue_id == "A1"


def test_abort_leaves_nothing(store: QueueStore) -> None:
    writer = store.begin("A2")
    writer.write(CONTENT)
    writer.flush()
    assert len(files(store)) == 1  # the tmp content
    writer.abort()
    writer.abort()
    assert files(store) == []
    with pytest.raises(RuntimeError):
        writer.flush()


def test_commit_checks_the_queue_id(store: QueueStore) -> None:
    writer = store.begin("A3")
    with pytest.raises(ValueError):
        writer.commit(envelope("A4"))


def test_begin_refuses_an_id_in_use(store: QueueStore) -> None:
    queue(store, "DUP1")
    with pytest.raises(FileExistsError):
        store.begin("DUP1")


def test_new_id_is_valid_unique_and_ordered(tmp_path: pathlib.Path) -> None:
    now = [1_700_000_000.0]
    store = QueueStore(tmp_path, clock=lambda: now[0])
    first = store.new_id()
    now[0] += 1
    ids = [first] + [store.new_id() for _ in range(50)]
    assert len(set(ids)) == len(ids)
    for queue_id in ids:
        sansmail.storage.queue.check_queue_id(queue_id)
    assert first < ids[1]


# -- durability ------------------------------------------------------------------------


class Recorder:
    """Wraps os.open/fsync/rename/replace to log what reached the disk, by file name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: pathlib.Path) -> None:
        self.calls: list[tuple[str, str]] = []
        self.root = str(root)
        real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

        def fsync(fd: int) -> None:
            self.calls.append(("fsync", self._name(os.readlink(f"/proc/self/fd/{fd}"))))
            real_fsync(fd)

        def rename(src: str, dst: str) -> None:
            self.calls.append(("rename", f"{self._kind(src)}->{self._name(dst)}"))
            real_rename(src, dst)

        def replace(src: str, dst: str) -> None:
            self.calls.append(("replace", f"{self._kind(src)}->{self._name(dst)}"))
            real_replace(src, dst)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(os, "replace", replace)

    def _name(self, path: str) -> str:
        path = os.fspath(path)
        if path == self.root:
            return "DIR"
        return os.path.basename(path)

    def _kind(self, path: str) -> str:
        name = os.path.basename(os.fspath(path))
        assert name.endswith(".tmp")
        return "tmp" + name.split(".")[1]  # "tmpmsg" / "tmpenv"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name fds")
def test_commit_order(store: QueueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.begin("PRE1").abort()  # makes the directory, so only the commit is recorded
    recorder = Recorder(monkeypatch, store.root)
    writer = store.begin("ORD1")
    writer.write(CONTENT)
    writer.commit(envelope("ORD1"))
    # content durable, envelope durable, content named, envelope named (the commit
    # point), the names durable: all before commit returned.
    assert recorder.calls == [
        ("fsync", recorder.calls[0][1]),
        ("fsync", recorder.calls[1][1]),
        ("rename", "tmpmsg->ORD1.msg"),
        ("rename", "tmpenv->ORD1.env"),
        ("fsync", "DIR"),
    ]
    assert ".msg." in recorder.calls[0][1]
    assert ".env." in recorder.calls[1][1]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name fds")
def test_update_order(store: QueueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    stored = queue(store, "ORD2")
    recorder = Recorder(monkeypatch, store.root)
    store.update(attrs.evolve(stored, warned=True))
    assert [call[0] for call in recorder.calls] == ["fsync", "replace", "fsync"]
    assert ".env." in recorder.calls[0][1]
    assert recorder.calls[1:] == [("replace", "tmpenv->ORD2.env"), ("fsync", "DIR")]


def test_first_begin_makes_the_directory_durably(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = QueueStore(tmp_path / "data" / "queue")
    store.begin("MK1").abort()
    assert (tmp_path / "data" / "queue").is_dir()
    assert len(synced) == 1  # the parent, so the queue directory's name is on disk


def test_failed_commit_leaves_nothing(store: QueueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real_rename = os.rename

    def rename(src: str, dst: str) -> None:
        if str(dst).endswith(".env"):
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    writer = store.begin("FAIL1")
    writer.write(CONTENT)
    with pytest.raises(OSError):
        writer.commit(envelope("FAIL1"))
    assert files(store) == []
    assert store.list() == []


def crash_instead_of(monkeypatch: pytest.MonkeyPatch, name: str) -> type[BaseException]:
    """Make os.<name> die like kill -9: nothing after it runs, nothing is cleaned up."""

    class Killed(BaseException):
        pass

    def die(*args: object) -> None:
        raise Killed

    monkeypatch.setattr(os, name, die)
    monkeypatch.setattr(_store, "_unlink_quietly", lambda path: None)
    return Killed


def test_update_crash_before_rename_keeps_the_old_envelope(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = queue(store, "UPD1")
    new = attrs.evolve(
        old, recipients=(attrs.evolve(old.recipients[0], state="sent"), old.recipients[1])
    )
    killed = crash_instead_of(monkeypatch, "replace")
    with pytest.raises(killed):
        store.update(new)
    monkeypatch.undo()
    after = QueueStore(store.root)  # a restart
    assert after.load("UPD1") == old
    assert after.list() == [old]
    leftovers = [name for name in files(after) if name.endswith(".tmp")]
    assert len(leftovers) == 1
    assert after.recover() == leftovers
    assert files(after) == ["UPD1.env", "UPD1.msg"]
    after.update(new)
    assert after.load("UPD1") == new


def test_commit_crash_between_renames_leaves_an_orphan(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_rename = os.rename

    class Killed(BaseException):
        pass

    def rename(src: str, dst: str) -> None:
        if str(dst).endswith(".env"):
            raise Killed
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(_store, "_unlink_quietly", lambda path: None)
    monkeypatch.setattr(_store.QueueWriter, "abort", lambda self: None)
    writer = store.begin("CR1")
    writer.write(CONTENT)
    with pytest.raises(Killed):
        writer.commit(envelope("CR1"))
    monkeypatch.undo()
    after = QueueStore(store.root)
    assert after.list() == []
    with pytest.raises(UnknownQueueIdError):
        after.load("CR1")
    removed = after.recover()
    assert "CR1.msg" in removed
    assert files(after) == []


def test_update_of_a_deleted_message_does_not_resurrect_it(store: QueueStore) -> None:
    stored = queue(store, "GONE1")
    store.delete("GONE1")
    with pytest.raises(UnknownQueueIdError):
        store.update(stored)
    assert files(store) == []


def test_update_racing_a_delete_takes_the_envelope_back(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = queue(store, "RACE1")
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        # The delete runs after update's existence check, before its rename.
        os.unlink(store.root / "RACE1.env")
        os.unlink(store.root / "RACE1.msg")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(UnknownQueueIdError):
        store.update(attrs.evolve(stored, warned=True))
    monkeypatch.undo()
    assert files(store) == []


# -- list, recover, delete -------------------------------------------------------------


def test_list_is_oldest_first(store: QueueStore) -> None:
    late = queue(store, "B2", arrival=200.0)
    early = queue(store, "Z9", arrival=100.0)
    tie = queue(store, "A1", arrival=200.0)
    assert store.list() == [early, tie, late]


def test_list_of_a_missing_directory_is_empty(tmp_path: pathlib.Path) -> None:
    assert QueueStore(tmp_path / "nothing").list() == []
    assert QueueStore(tmp_path / "nothing").recover() == []


def test_list_skips_half_written_entries(store: QueueStore) -> None:
    whole = queue(store, "OK1")
    open_writer = store.begin("HALF1")
    open_writer.write(CONTENT)
    open_writer.flush()  # a tmp content file, no envelope
    (store.root / "ORPHAN1.msg").write_bytes(CONTENT)  # content, envelope never written
    (store.root / "ENV1.env.1-1.tmp").write_bytes(b"{")  # an envelope never renamed
    (store.root / "NODATA1.env").write_bytes(encode_envelope(envelope("NODATA1")))
    (store.root / "BAD1.env").write_bytes(b"not json")
    (store.root / "BAD1.msg").write_bytes(CONTENT)
    assert store.list() == [whole]


def test_recover_cleans_and_sets_aside(store: QueueStore) -> None:
    whole = queue(store, "OK1")
    writer = store.begin("HALF1")
    writer.write(CONTENT)
    writer.flush()
    (store.root / "ORPHAN1.msg").write_bytes(CONTENT)
    (store.root / "ENV1.env.1-1.tmp").write_bytes(b"{")
    (store.root / "NODATA1.env").write_bytes(encode_envelope(envelope("NODATA1")))
    (store.root / "BAD1.env").write_bytes(b"not json")
    (store.root / "BAD1.msg").write_bytes(CONTENT)
    (store.root / "README").write_bytes(b"someone else's file")
    (store.root / "lower.msg").write_bytes(b"not a queue id: not ours")
    removed = store.recover()
    assert removed == sorted(removed)
    assert set(removed) == {
        "BAD1.env",
        "BAD1.msg",
        "ENV1.env.1-1.tmp",
        "NODATA1.env",
        "ORPHAN1.msg",
        next(name for name in removed if name.startswith("HALF1.msg.")),
    }
    assert files(store) == ["OK1.env", "OK1.msg", "README", "corrupt", "lower.msg"]
    assert sorted(os.listdir(store.root / "corrupt")) == ["BAD1.env", "BAD1.msg", "NODATA1.env"]
    assert store.list() == [whole]
    assert store.recover() == []


def test_delete_removes_the_envelope_first(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue(store, "DEL1")
    keep = queue(store, "KEEP1")
    order: list[str] = []
    real_unlink = os.unlink

    def unlink(path: str) -> None:
        order.append(os.path.basename(path))
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", unlink)
    store.delete("DEL1")
    assert order == ["DEL1.env", "DEL1.msg"]
    assert store.list() == [keep]
    with pytest.raises(UnknownQueueIdError):
        store.delete("DEL1")
    with pytest.raises(UnknownQueueIdError):
        store.load("DEL1")
    with pytest.raises(UnknownQueueIdError):
        store.read_message("DEL1")


def test_load_refuses_an_envelope_under_another_name(store: QueueStore) -> None:
    queue(store, "REAL1")
    os.rename(store.root / "REAL1.env", store.root / "FAKE1.env")
    os.rename(store.root / "REAL1.msg", store.root / "FAKE1.msg")
    with pytest.raises(CorruptEnvelopeError):
        store.load("FAKE1")


@pytest.mark.parametrize(
    "bad", ["", "abc123", "../ETC", "A/B", "A.B", "A B", "A" * 65, "ÄBC", "A\x00", "-A"]
)
def test_bad_queue_ids_are_refused(store: QueueStore, bad: str) -> None:
    for call in (store.begin, store.load, store.read_message, store.delete):
        with pytest.raises(ValueError):
            call(bad)
    with pytest.raises(ValueError):
        envelope(bad)
    assert not store.root.exists() or files(store) == []


# -- envelope validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"recipients": ()},
        {"ret": "ALL"},
        {"arrival": float("nan")},
        {"size": -1},
    ],
)
def test_envelope_validation(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        envelope(**changes)


@pytest.mark.parametrize(
    "field",
    [
        {"attempts": -1},
        {"state": "lost"},
        {"next_attempt": float("inf")},
        {"notify": ("NEVER", "DELAY")},
        {"notify": ("SOMETIMES",)},
        {"notify": ("DELAY", "delay")},
    ],
)
def test_recipient_validation(field: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        QueuedRecipient(address="a@b", **field)


def test_decode_refuses_what_it_did_not_write() -> None:
    good = json.loads(encode_envelope(envelope()))
    damages: tuple[dict[str, Any], ...] = (
        {"version": 2},
        {"version": True},
        {"size": "12"},
        {"size": True},
        {"smtputf8": 1},
        {"recipients": [{}]},
        {"recipients": ["x"]},
        {"recipients": []},
        {"arrival": None},
    )
    for damage in damages:
        doc = {**good, **damage}
        with pytest.raises(CorruptEnvelopeError):
            decode_envelope(json.dumps(doc).encode())
    doc = dict(good)
    del doc["sender"]
    with pytest.raises(CorruptEnvelopeError):
        decode_envelope(json.dumps(doc).encode())
    for junk in (b"", b"[]", b"\xff", b'{"version": NaN}', b'"x"'):
        with pytest.raises(CorruptEnvelopeError):
            decode_envelope(junk)


# -- hypothesis ----------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
optional_text = st.none() | st.text(max_size=20)
recipients = st.builds(
    QueuedRecipient,
    address=st.text(max_size=30),
    orcpt=optional_text,
    notify=st.just(("NEVER",))
    | st.lists(st.sampled_from(["SUCCESS", "FAILURE", "DELAY"]), unique=True).map(tuple),
    state=st.sampled_from(["pending", "sent", "bounced"]),
    attempts=st.integers(min_value=0, max_value=10**6),
    next_attempt=finite,
    last_reason=st.text(max_size=60),
)
messages = st.builds(
    QueuedMessage,
    queue_id=st.just("HYPO1"),
    sender=st.text(max_size=30),
    arrival=finite,
    size=st.integers(min_value=0, max_value=2**40),
    recipients=st.lists(recipients, min_size=1, max_size=4).map(tuple),
    ret=st.sampled_from([None, "FULL", "HDRS"]),
    envid=optional_text,
    smtputf8=st.booleans(),
    body_8bit=st.booleans(),
    warned=st.booleans(),
)


@settings(
    deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(messages)
def test_update_load_round_trip(store: QueueStore, message: QueuedMessage) -> None:
    if not (store.root / "HYPO1.env").exists():
        queue(store, "HYPO1")
    store.update(message)
    assert store.load("HYPO1") == message
    assert store.list() == [message]
    assert files(store) == ["HYPO1.env", "HYPO1.msg"]


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=200) | messages.map(encode_envelope).map(lambda b: b[: len(b) // 2]))
def test_decode_garbage_raises_only_corrupt_envelope(data: bytes) -> None:
    with pytest.raises(CorruptEnvelopeError):
        decode_envelope(data)


# -- mailq ----------------------------------------------------------------------------------


def test_mailq_empty() -> None:
    assert format_mailq([], now=0.0) == "Mail queue is empty\n"


def test_mailq_one_message() -> None:
    message = envelope(
        "5F1C2A9B3E",
        size=1234,
        arrival=1_700_000_000.0,  # Tue Nov 14 22:13:20 2023 UTC
        recipients=(
            QueuedRecipient(
                address="bob@remote.test",
                attempts=2,
                next_attempt=1_700_000_600.0,
                last_reason="connect to mx.remote.test[192.0.2.1]:25:\r\n Connection refused",
            ),
            QueuedRecipient(address="done@remote.test", state="sent"),
            QueuedRecipient(address="new@remote.test"),
        ),
    )
    assert format_mailq([message], now=1_700_000_300.0) == (
        "-Queue ID-  --Size-- ---Arrival Time (UTC)--- -Sender/Recipient-------\n"
        "5F1C2A9B3E      1234 Tue Nov 14 22:13:20 2023 alice@example.test\n"
        "                                              (connect to mx.remote.test[192.0.2.1]:25:"
        " Connection refused; retry in 5m)\n"
        "                                              bob@remote.test\n"
        "                                              new@remote.test\n"
        "\n"
        "-- 2 Kbytes in 1 Request.\n"
    )


def test_mailq_several_messages() -> None:
    first = envelope("AAA1", size=100, arrival=1_000.0, sender="")
    second = envelope(
        "BBB2",
        size=2000,
        arrival=2_000.0,
        recipients=(QueuedRecipient(address="x@y.test", attempts=1, next_attempt=10.0),),
    )
    text = format_mailq([first, second], now=50.0)
    lines = text.splitlines()
    blocks = [line.split()[0] for line in lines[1:] if line and not line.startswith(" ")]
    assert blocks == ["AAA1", "BBB2", "--"]
    assert lines[1].split()[-1] == "MAILER-DAEMON"  # the null reverse-path
    assert "(retry due)" in text
    assert text.count("bob@remote.test") == 1
    assert text.endswith("-- 3 Kbytes in 2 Requests.\n")


def test_ids_lists_every_envelope_with_one_listing(tmp_path: pathlib.Path) -> None:
    store = QueueStore(tmp_path / "queue")
    assert store.ids() == set()
    writer = store.begin(store.new_id())
    writer.write(b"Subject: x\r\n\r\nhi\r\n")
    message = writer.commit(
        QueuedMessage(
            queue_id=writer.queue_id,
            sender="a@example.org",
            arrival=1.0,
            size=0,
            recipients=[QueuedRecipient(address="b@example.net")],
        )
    )
    assert store.ids() == {message.queue_id}
    store.delete(message.queue_id)
    assert store.ids() == set()
