"""FETCH in batches (`_messages.fetch_messages` for what clients list and download folders
with): the same octets as the per-message path, item lists drawn by hypothesis over the
MIME corpus in IMAP4rev1 and UTF-8 sessions; the structures derived once, kept one write
per batch, and read back without opening a file; messages expunged meanwhile."""

from __future__ import annotations

import pathlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from session_helpers import Client, Where

from sansmail.imap import (
    BinarySection,
    BodySection,
    Fetch,
    FetchAttribute,
    Section,
    SequenceSet,
)
from sansmail.sessions.imapd import _messages
from sansmail.storage.maildir import FolderView, MaildirFolderView
from sansmail.storage.pg._imapview import PgFolderView

CORPUS = pathlib.Path(__file__).parents[2] / "mime" / "corpus"
MESSAGES = [
    (CORPUS / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    for name in sorted(p.name for p in CORPUS.glob("*.eml"))
]
BATCHED = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY"]


def append_all(client: Client, messages: list[bytes] = MESSAGES) -> None:
    for n, raw in enumerate(messages):
        flags = (b"(\\Seen $Work) " if n % 3 == 0 else b"") + b'"12-Jun-2025 11:15:00 +0200" '
        answer = client.run(b"a APPEND INBOX " + flags + b"{%d}" % len(raw), raw)
        assert b"a OK [APPENDUID" in answer


def per_message(monkeypatch: pytest.MonkeyPatch, client: Client, line: bytes) -> bytes:
    """The answer of the per-message path to the same command."""
    with monkeypatch.context() as patched:
        patched.setattr(_messages, "_batch_names", lambda command: None)
        return client.run(line)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    data = tmp_path_factory.mktemp("batch")
    client = Client(data)
    append_all(client)
    client.close()
    return data


@settings(
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    items=st.lists(st.sampled_from([*BATCHED, "BODY.PEEK[]"]), min_size=1, max_size=5),
    uid=st.booleans(),
    rev2=st.booleans(),
    cold=st.booleans(),
    span=st.sampled_from([b"1:*", b"2,4:6", b"*", b"3"]),
)
def test_the_batch_answers_what_fetch_answers(
    monkeypatch: pytest.MonkeyPatch,
    folder: pathlib.Path,
    items: list[str],
    uid: bool,
    rev2: bool,
    cold: bool,
    span: bytes,
) -> None:
    if cold:
        # Forget every kept structure: the batch derives and keeps them again.
        other = Client(folder)
        with other.session.account.index_for("INBOX").write() as conn:  # type: ignore[attr-defined]
            conn.execute("DELETE FROM structures")
        other.close()
    client = Client(folder, rev2=rev2)
    try:
        client.run(b"s EXAMINE INBOX")
        command = (b"f UID FETCH " if uid else b"f FETCH ") + span
        command += b" (" + " ".join(items).encode() + b")"
        batch = client.run(command)
        assert batch.endswith(b" OK " + (b"UID " if uid else b"") + b"FETCH completed\r\n")
        assert batch == per_message(monkeypatch, client, command)
    finally:
        client.close()


def test_eight_bit_headers_are_quoted_utf8_in_a_utf8_session(
    monkeypatch: pytest.MonkeyPatch, where: Where
) -> None:
    eight_bit = [raw for raw in MESSAGES if not raw.isascii()]
    client = Client(where, rev2=True)
    append_all(client, [MESSAGES[0], *eight_bit, MESSAGES[0]])
    client.run(b"s SELECT INBOX")
    line = b"f FETCH 1:* (UID ENVELOPE FLAGS)"
    real = _messages._with_utf8_rows
    kinds: list[str] = []

    def recorded(*args: object) -> list[object]:
        out = real(*args)  # type: ignore[arg-type]
        kinds.extend(type(response).__name__ for response in out)
        return out  # type: ignore[return-value]

    monkeypatch.setattr(_messages, "_with_utf8_rows", recorded)
    answer = client.run(line)
    # Batches around the messages with 8-bit headers, which go one by one.
    assert kinds[0] == kinds[-1] == "FetchBatch"
    assert kinds.count("FetchResponse") == len(eight_bit)
    assert answer == per_message(monkeypatch, client, line)
    # What a UTF-8 session may get: the 8-bit header quoted, not a literal.
    assert re.search(rb'"[^"\r\n]*[\x80-\xff]', answer)
    rev1 = Client(where)
    rev1.run(b"s SELECT INBOX")
    assert not re.search(rb'"[^"\r\n]*[\x80-\xff]', rev1.run(line))
    rev1.close()
    client.close()


class Counting:
    """Counts the view's reads of content and writes of structures."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.writes: list[int] = []
        self.contents: list[int] = []
        for kind in (MaildirFolderView, PgFolderView):
            self._patch(monkeypatch, kind)

    def _patch(self, monkeypatch: pytest.MonkeyPatch, kind: type[FolderView]) -> None:
        real_set = kind.set_structures
        real_contents = kind.contents

        def set_structures(view: FolderView, values: dict[int, object]) -> None:
            self.writes.append(len(values))
            real_set(view, values)  # type: ignore[arg-type]

        def contents(view: FolderView, uids: object) -> object:
            wanted = list(uids)  # type: ignore[call-overload]
            self.contents += wanted
            return real_contents(view, wanted)

        monkeypatch.setattr(kind, "set_structures", set_structures)
        monkeypatch.setattr(kind, "contents", contents)


def test_structures_are_derived_once_and_kept_one_write_per_batch(
    monkeypatch: pytest.MonkeyPatch, where: Where
) -> None:
    monkeypatch.setattr(_messages, "_KEEP_EVERY", 4)
    client = Client(where)
    append_all(client, MESSAGES[:10])
    client.run(b"s SELECT INBOX")
    count = Counting(monkeypatch)
    first = client.run(b"f FETCH 1:* (ENVELOPE BODY)")
    assert count.writes == [4, 4, 2]
    assert count.contents == list(range(1, 11))
    assert client.run(b"f FETCH 1:* (ENVELOPE BODY)") == first
    assert client.run(b"f FETCH 1:* BODYSTRUCTURE").count(b"BODYSTRUCTURE") == 10
    assert count.writes == [4, 4, 2]
    assert count.contents == list(range(1, 11))
    client.close()


def test_a_blob_the_per_message_path_kept_spares_the_file(
    monkeypatch: pytest.MonkeyPatch, where: Where
) -> None:
    client = Client(where)
    append_all(client, MESSAGES[:3])
    client.run(b"s SELECT INBOX")
    # A FETCH the batch does not answer keeps the trees' blob (and no wire forms) ...
    client.run(b"f FETCH 1:* (ENVELOPE BODY[HEADER])")
    count = Counting(monkeypatch)
    answer = client.run(b"f FETCH 1:* (BODYSTRUCTURE ENVELOPE)")
    # ... from which the batch makes the wire forms without reading a message.
    assert count.contents == []
    assert count.writes == [3]
    assert answer == per_message(monkeypatch, client, b"f FETCH 1:* (BODYSTRUCTURE ENVELOPE)")
    client.close()


def test_messages_expunged_meanwhile_keep_their_metadata_and_get_nil(
    monkeypatch: pytest.MonkeyPatch, where: Where
) -> None:
    client = Client(where)
    append_all(client, MESSAGES[:3])
    client.run(b"s SELECT INBOX")
    client.run(b"f FETCH 1 ENVELOPE")  # the first one's structures are kept
    other = Client(where)
    other.run(b"s SELECT INBOX")
    other.run(b"t STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    other.run(b"x EXPUNGE")
    other.close()
    line = b"f FETCH 1:3 (UID ENVELOPE BODY.PEEK[])"
    answer = client.run(line)
    lines = answer.split(b"\r\n")
    assert lines[0] == b"* 1 FETCH (UID 1 ENVELOPE NIL BODY[] NIL)"
    assert lines[1] == b"* 2 FETCH (UID 2 ENVELOPE NIL BODY[] NIL)"
    assert lines[2].startswith(b"* 3 FETCH (UID 3 ENVELOPE (")
    assert answer == per_message(monkeypatch, client, line)
    client.close()


def test_what_the_batch_leaves_to_the_per_message_path() -> None:
    def names(*items: object, uid: bool = False) -> tuple[str, ...] | None:
        command = Fetch(
            tag="a",
            sequence_set=SequenceSet.parse("1"),
            items=items,  # type: ignore[arg-type]
            uid=uid,
        )
        return _messages._batch_names(command)

    flags = FetchAttribute(name="FLAGS")
    assert names(flags, flags, FetchAttribute(name="UID")) == ("FLAGS", "UID")
    assert names(flags, uid=True) == ("UID", "FLAGS")
    assert names(BodySection(section=Section(), peek=True)) == ("BODY[]",)
    assert names(flags, FetchAttribute(name="MODSEQ")) == ("FLAGS", "MODSEQ")
    for other in (
        FetchAttribute(name="RFC822"),
        BodySection(section=Section(), peek=False),  # sets \Seen
        BodySection(section=Section(), peek=True, partial=(0, 10)),
        BodySection(section=Section(text="HEADER"), peek=True),
        BinarySection(peek=True),
    ):
        assert names(flags, other) is None
