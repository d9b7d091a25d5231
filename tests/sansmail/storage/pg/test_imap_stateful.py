"""Random sequences of operations on `PgImapStore` from two nodes (two stores, each on a
`Database` of its own) and from other writers of the rows (delivery, POP3's DELE through
`_mailrows`), checked against a simple model as the Maildir store's stateful test does:
UIDs strictly increase and are never reused, each UID always names the same message, a
client applying the reported changes holds the same list as the view, and after a sync
the view's flags are the rows'."""

from __future__ import annotations

import datetime

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from sansmail.mail.address import MailboxId
from sansmail.storage.maildir._imapbase import ExpungeIssuedError, FlagMode, FolderView, SyncChanges
from sansmail.storage.pg import _mailrows
from sansmail.storage.pg._db import Database
from sansmail.storage.pg._imapstore import PgImapStore

ALICE = MailboxId(domain="example.test", local="alice")
MAILBOX = _mailrows.mailbox_key(ALICE)
FLAGS = st.sets(
    st.sampled_from(["\\Seen", "\\Flagged", "\\Deleted", "\\Answered", "Work", "$Junk"])
)
_TABLES = (
    "mail_search, mail_expunged, mail_messages, mail_contents, mail_subscriptions,"
    " mail_folders, mail_usage, mail_imap_accounts"
)


def message(n: int) -> bytes:
    return b"Subject: message %d\r\nX-Id: %d\r\n\r\nbody\r\n" % (n, n)


def x_id(content: bytes) -> int:
    for line in content.split(b"\r\n"):
        if line.startswith(b"X-Id: "):
            return int(line[6:])
    raise AssertionError("no X-Id")


class PgStoreMachine(RuleBasedStateMachine):
    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dbs = [Database(dsn), Database(dsn)]
        with self.dbs[0].transaction() as cur:
            cur.execute(f"TRUNCATE {_TABLES}")
        node_a, node_b = (PgImapStore(db, hostname=f"n{i}") for i, db in enumerate(self.dbs))
        self.accounts = [node_a.account(ALICE), node_b.account(ALICE), node_b.account(ALICE)]
        self.views: dict[str, FolderView] = {
            "a": self.accounts[0].select("INBOX"),
            "b": self.accounts[1].select("INBOX", readonly=True),
            "c": self.accounts[2].select("INBOX"),
        }
        self.client = {name: [m.uid for m in v.messages] for name, v in self.views.items()}
        self.told = {name: {m.uid: m.flags for m in v.messages} for name, v in self.views.items()}
        self.ids = 0
        self.uid_ids: dict[int, int] = {}
        self.uidnext = 1

    def teardown(self) -> None:
        for db in self.dbs:
            db.close()

    def _new_id(self) -> int:
        self.ids += 1
        return self.ids

    def _rows(self) -> dict[int, tuple[frozenset[str], int]]:
        """UID -> (flags, X-Id) of INBOX's rows as they are."""
        with self.dbs[1].transaction() as cur:
            cur.execute(
                "SELECT m.uid, m.flags, c.content FROM mail_messages m"
                " JOIN mail_folders f ON f.id = m.folder_id"
                " JOIN mail_contents c ON c.digest = m.digest"
                " WHERE f.mailbox = %s AND f.name = 'INBOX'",
                (MAILBOX,),
            )
            return {
                int(uid): (frozenset(flags), x_id(bytes(content)))
                for uid, flags, content in cur.fetchall()
            }

    # -- other writers ----------------------------------------------------------------

    @rule()
    def deliver(self) -> None:
        content = message(self._new_id())
        with self.dbs[1].transaction() as cur:
            digest = _mailrows.store_content(cur, content)
            folder = _mailrows.make_folder(cur, MAILBOX, "INBOX")
            _mailrows.add_message(
                cur,
                folder,
                MAILBOX,
                digest,
                len(content),
                internaldate=datetime.datetime.now(datetime.UTC),
            )

    @rule(data=st.data())
    def delete_like_pop3(self, data: st.DataObject) -> None:
        rows = self._rows()
        if not rows:
            return
        uid = data.draw(st.sampled_from(sorted(rows)))
        with self.dbs[0].transaction() as cur:
            folder = _mailrows.find_folder(cur, MAILBOX, "INBOX")
            assert folder is not None
            assert _mailrows.remove_messages(cur, folder, MAILBOX, [uid]) == [uid]

    # -- this store -------------------------------------------------------------------

    @rule(flags=FLAGS, name=st.sampled_from("ac"))
    def append(self, flags: set[str], name: str) -> None:
        n = self._new_id()
        result = self.views[name].append(message(n), flags)
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

    @rule(data=st.data(), move=st.booleans(), name=st.sampled_from("ac"))
    def copy_or_move(self, data: st.DataObject, move: bool, name: str) -> None:
        view = self.views[name]
        uids = data.draw(st.sets(st.sampled_from([m.uid for m in view.messages] or [1])))
        try:
            result = view.move(uids, "Archive") if move else view.copy(uids, "Archive")
        except ExpungeIssuedError:
            return
        assert [src for src, _ in result.uids] == sorted(set(uids) & set(self.client[name]))
        dest = [dst for _, dst in result.uids]
        assert dest == sorted(dest)

    @rule(name=st.sampled_from(["a", "b", "c"]))
    def sync(self, name: str) -> None:
        view = self.views[name]
        self._apply(name, view.sync())
        self._check_against_rows(view)

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
        assert {uid: told[uid] for uid in held} == {m.uid: m.flags for m in view.messages}

    def _check_against_rows(self, view: FolderView) -> None:
        rows = self._rows()
        assert [m.uid for m in view.messages] == sorted(rows)
        contents = dict(view.contents([m.uid for m in view.messages]))
        for m in view.messages:
            flags, n = rows[m.uid]
            assert m.flags == flags
            content = contents[m.uid]
            assert content is not None
            assert x_id(content) == n
            assert self.uid_ids.setdefault(m.uid, n) == n  # a UID always names one message

    @invariant()
    def uids_increase_and_uidnext_never_goes_back(self) -> None:
        for view in self.views.values():
            uids = [m.uid for m in view.messages]
            assert uids == sorted(set(uids))
            assert all(uid < view.uidnext for uid in uids)
        next_now = self.accounts[0].status("INBOX", ["UIDNEXT"])["UIDNEXT"]
        assert next_now >= self.uidnext
        assert all(uid < next_now for uid in self.uid_ids)
        self.uidnext = next_now


def test_random_operations_from_two_nodes(pg_dsn: str) -> None:
    run_state_machine_as_test(
        lambda: PgStoreMachine(pg_dsn),
        settings=settings(
            max_examples=30,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
