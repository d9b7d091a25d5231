"""Random sequences of operations, by this store and by other Maildir writers, checked
against a simple model: UIDs strictly increase and are never reused, each UID always
names the same message, a client applying the reported changes holds the same list as
the view, and flags match the file names. Three sessions (two read-write, one read-only)
in one process share the folder's list (`_imaplist`) while each keeps its own."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from imapstore_helpers import account, deliver, files, message, root, x_id

from sansmail.storage.maildir._imapbase import ExpungeIssuedError, FlagMode, FolderView, SyncChanges
from sansmail.storage.maildir._imapmaildir import flags_of, parse_info, split_name
from sansmail.storage.maildir._imapnames import read_keywords

FLAGS = st.sets(
    st.sampled_from(["\\Seen", "\\Flagged", "\\Deleted", "\\Answered", "Work", "$Junk"])
)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="imapstore-"))
        self.top = root(self.dir)
        self.accounts = [account(self.dir), account(self.dir), account(self.dir)]
        self.views: dict[str, FolderView] = {
            "a": self.accounts[0].select("INBOX"),
            "b": self.accounts[1].select("INBOX", readonly=True),
            "c": self.accounts[2].select("INBOX"),
        }
        # What each client holds: the UID list built only from the reported changes.
        self.client = {name: [m.uid for m in v.messages] for name, v in self.views.items()}
        # And the flags it was told: at SELECT, by STORE and by the syncs' FETCH news.
        self.told = {name: {m.uid: m.flags for m in v.messages} for name, v in self.views.items()}
        self.ids = 0
        self.uid_ids: dict[int, int] = {}  # every UID ever seen -> X-Id of its message
        self.uidnext = 1

    def teardown(self) -> None:
        for acc in self.accounts:
            acc.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _new_id(self) -> int:
        self.ids += 1
        return self.ids

    # -- other writers ----------------------------------------------------------------

    @rule()
    def deliver(self) -> None:
        deliver(self.dir, message(self._new_id()))

    @rule(data=st.data(), letters=st.sets(st.sampled_from("DFRST")))
    def rename_by_another_tool(self, data: st.DataObject, letters: set[str]) -> None:
        on_disk = files(self.top)
        if not on_disk:
            return
        base = data.draw(st.sampled_from(sorted(on_disk)))
        old = on_disk[base]
        kept = {ch for ch in old.partition(":2,")[2] if ch.islower()}
        target = f"cur/{base}:2," + "".join(sorted(letters | kept))
        os.rename(self.top / old, self.top / target)

    @rule(data=st.data())
    def delete_like_pop3(self, data: st.DataObject) -> None:
        on_disk = files(self.top)
        if on_disk:
            os.unlink(self.top / on_disk[data.draw(st.sampled_from(sorted(on_disk)))])

    # -- this store -------------------------------------------------------------------

    @rule(flags=FLAGS)
    def append(self, flags: set[str]) -> None:
        n = self._new_id()
        result = self.views["a"].append(message(n), flags)
        assert result.uid >= self.uidnext
        assert result.uid not in self.uid_ids
        self.uid_ids[result.uid] = n
        self.uidnext = result.uid + 1

    @rule(data=st.data(), flags=FLAGS, mode=st.sampled_from(FlagMode), name=st.sampled_from("ac"))
    def store(self, data: st.DataObject, flags: set[str], mode: FlagMode, name: str) -> None:
        view = self.views[name]
        uids = data.draw(st.sets(st.sampled_from([m.uid for m in view.messages] or [1])))
        result = view.store_flags(uids, flags, mode)
        self.told[name].update(result)
        assert set(result) <= uids
        for got in result.values():
            if mode is FlagMode.REPLACE:
                assert got == flags
            elif mode is FlagMode.ADD:
                assert got >= flags
            else:
                assert not got & flags

    @rule(name=st.sampled_from("ac"))
    def expunge(self, name: str) -> None:
        self.views[name].expunge()

    @rule(data=st.data(), move=st.booleans())
    def copy_or_move(self, data: st.DataObject, move: bool) -> None:
        view = self.views["a"]
        uids = data.draw(st.sets(st.sampled_from([m.uid for m in view.messages] or [1])))
        try:
            result = view.move(uids, "Archive") if move else view.copy(uids, "Archive")
        except ExpungeIssuedError:
            return
        assert [src for src, _ in result.uids] == sorted(set(uids) & set(self.client["a"]))
        dest = [dst for _, dst in result.uids]
        assert dest == sorted(dest)

    @precondition(lambda self: True)
    @rule(name=st.sampled_from(["a", "b", "c"]))
    def sync(self, name: str) -> None:
        view = self.views[name]
        changes = view.sync()
        self._apply(name, changes)
        self._check_against_disk(view)

    # -- checks -----------------------------------------------------------------------

    def _apply(self, name: str, changes: SyncChanges) -> None:
        held = self.client[name]
        for seq in changes.expunged:
            assert 1 <= seq <= len(held)
            del held[seq - 1]
        held.extend(m.uid for m in changes.added)
        assert changes.exists == len(held)
        view = self.views[name]
        assert held == [m.uid for m in view.messages]
        told = self.told[name]
        told.update((m.uid, m.flags) for m in changes.added)
        for seq, uid, flags in changes.flags:
            assert held[seq - 1] == uid
            assert view.messages[seq - 1].flags == flags
            told[uid] = flags
        # The client knows every message's flags as the view has them.
        assert {uid: told[uid] for uid in held} == {m.uid: m.flags for m in view.messages}

    def _check_against_disk(self, view: FolderView) -> None:
        on_disk = files(self.top)
        table = read_keywords(str(self.top / "dovecot-keywords"))
        assert len(view.messages) == len(on_disk)
        ids_on_disk = set()
        flags_by_id = {}
        for rel in on_disk.values():
            n = x_id((self.top / rel).read_bytes().replace(b"\n", b"\r\n"))
            ids_on_disk.add(n)
            bits, keywords = parse_info(split_name(rel[4:])[1], table)
            flags_by_id[n] = flags_of(bits, keywords)
        seen_ids = set()
        for m in view.messages:
            content = view.read(m.uid)
            assert content is not None
            n = x_id(content)
            seen_ids.add(n)
            assert self.uid_ids.setdefault(m.uid, n) == n  # a UID always names one message
            assert m.flags == flags_by_id[n]
        assert seen_ids == ids_on_disk

    @invariant()
    def uids_increase_and_uidnext_never_goes_back(self) -> None:
        for view in self.views.values():
            uids = [m.uid for m in view.messages]
            assert uids == sorted(set(uids))
            assert all(uid < view.uidnext for uid in uids)
        next_now = self.accounts[0].index_for("INBOX").header().uidnext
        assert next_now >= self.uidnext
        assert all(uid < next_now for uid in self.uid_ids)
        self.uidnext = next_now


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
