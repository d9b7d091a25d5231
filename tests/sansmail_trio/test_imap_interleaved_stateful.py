"""Random interleavings of STORE [.SILENT], EXPUNGE, UID EXPUNGE, MOVE, COPY, APPEND, FETCH
(BODY[] setting \\Seen), SEARCH, CLOSE/UNSELECT and IDLE by two or three IMAP sessions
(IMAP4rev1, rev2, CONDSTORE, QRESYNC, read-only; one more may watch the Archive the
others COPY and MOVE into), SMTP deliveries, POP3 DELE and another tool renaming or
removing files, on one INBOX, against a real server on 127.0.0.1 (hypothesis' stateful
testing; the harness and its model are imap_interleave.py's): serve() in the test's
loop, and `sansmail-trio serve` with ``processes = 2`` with sessions A and B in
different processes. Sessions act on stale views, as real clients do; after each NOOP
the session's view must equal the model and the store, and an idler must hear what
changed (before it began to idle, and while it idles).

One server serves every example; each example's sessions start from whatever the INBOX
holds and empty it as they leave. Few, short examples, so the whole stays well under a
minute (SANSMAIL_INTERLEAVINGS=1000 for a longer hunt); the fixed scripts of
test_imap_interleaved.py cover the named cases.

Both tests run on both storage backends (on PostgreSQL the model looks at the database
where it looks at the Maildir index, imap_interleave_pg.py), with every rule but the
other tool's on PostgreSQL: it renames and removes Maildir files, and no other tool
writes a PostgreSQL mailbox."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)
from imap_interleave import ALICE, FLAGS, Session, World
from imap_interleave_pg import PgWorld, database, make_world
from test_imap_e2e import imap_server
from test_imap_interleaved import serving_two_processes, spread_sessions
from trio_helpers import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS

EXAMPLES = int(os.environ.get("SANSMAIL_INTERLEAVINGS", "100"))

#: What a session ENABLEs: rev1, rev2, CONDSTORE (MODSEQ in FETCH), QRESYNC (VANISHED);
#: and EXAMINE for a read-only one.
modes = st.sampled_from(
    ["", "IMAP4rev2", "CONDSTORE", "QRESYNC", "IMAP4rev2 QRESYNC", "EXAMINE", "EXAMINE QRESYNC"]
)
picks = st.lists(st.integers(0, 9), max_size=3)
sessions = st.integers(0, 2)
flag_sets = st.lists(st.sampled_from(FLAGS), min_size=1, max_size=2, unique=True)


class Interleaving(RuleBasedStateMachine):
    #: (number of sessions, what each ENABLEs, whether a session watches the Archive) ->
    #: the world of an example; set by the test, for its server.
    make: Callable[[int, tuple[str, ...], bool], World]

    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None

    @initialize(count=st.integers(2, 3), modes=st.tuples(modes, modes, modes), watch=st.booleans())
    def open(self, count: int, modes: tuple[str, ...], watch: bool) -> None:
        self.world = type(self).make(count, modes, watch)

    # -- helpers --------------------------------------------------------------------

    @property
    def w(self) -> World:
        assert self.world is not None
        return self.world

    def session(self, index: int) -> Session:
        return self.w.sessions[index % len(self.w.sessions)]

    def targets(self, session: Session, chosen: list[int], *, uid: bool) -> list[int]:
        """Sequence numbers (or UIDs) of the session's view; an index past the end names
        a number (or UID) beyond it, which the server must take in its stride."""
        known = session.view.uids
        out = []
        for pick in chosen:
            if pick >= len(known):
                continue
            out.append(known[pick] if uid else pick + 1)
        return [t for t in out if t is not None]

    # -- rules ----------------------------------------------------------------------

    @rule(count=st.integers(1, 2))
    def deliver(self, count: int) -> None:
        self.w.deliver(count)

    @rule(who=sessions, flags=st.lists(st.sampled_from(FLAGS), max_size=2, unique=True))
    def append(self, who: int, flags: list[str]) -> None:
        self.w.append(self.session(who), flags)

    @rule(
        who=sessions,
        chosen=picks,
        uid=st.booleans(),
        silent=st.booleans(),
        mode=st.sampled_from(["+", "-", ""]),
        flags=flag_sets,
    )
    def store(
        self, who: int, chosen: list[int], uid: bool, silent: bool, mode: str, flags: list[str]
    ) -> None:
        session = self.session(who)
        targets = self.targets(session, chosen, uid=uid)
        self.w.store(session, targets, mode, flags, uid=uid, silent=silent)

    @rule(who=sessions)
    def expunge(self, who: int) -> None:
        self.w.expunge(self.session(who))

    @rule(who=sessions, chosen=picks)
    def uid_expunge(self, who: int, chosen: list[int]) -> None:
        session = self.session(who)
        self.w.expunge(session, self.targets(session, chosen, uid=True))

    @rule(
        who=sessions,
        chosen=picks,
        uid=st.booleans(),
        dest=st.sampled_from(["INBOX", "Archive"]),
        move=st.booleans(),
    )
    def copy(self, who: int, chosen: list[int], uid: bool, dest: str, move: bool) -> None:
        if move and dest == "INBOX":
            dest = "Archive"  # a MOVE into the folder itself is refused (RFC 6851 §3.3)
        session = self.session(who)
        self.w.copy(session, self.targets(session, chosen, uid=uid), dest, uid=uid, move=move)

    @rule(chosen=picks)
    def pop3_dele(self, chosen: list[int]) -> None:
        uids = sorted(self.w.model)
        self.w.pop3_delete(sorted({uids[p] for p in chosen if p < len(uids)}))

    @precondition(lambda self: not isinstance(self.world, PgWorld))
    @rule(chosen=picks, unlink=st.booleans())
    def outside_tool(self, chosen: list[int], unlink: bool) -> None:
        uids = sorted(self.w.model)
        for uid in sorted({uids[p] for p in chosen if p < len(uids)}):
            if unlink:
                self.w.outside_unlink(uid)
            else:
                self.w.outside_flag(uid)

    @rule(who=sessions, close=st.booleans())
    def reselect(self, who: int, close: bool) -> None:
        self.w.reselect(self.session(who), close=close)

    @rule(who=sessions, uid=st.booleans())
    def fetch(self, who: int, uid: bool) -> None:
        self.w.fetch_all(self.session(who), uid=uid)

    @rule(who=sessions, chosen=picks, uid=st.booleans())
    def read(self, who: int, chosen: list[int], uid: bool) -> None:
        session = self.session(who)
        self.w.read(session, self.targets(session, chosen, uid=uid), uid=uid)

    @rule(who=sessions, uid=st.booleans(), sort=st.booleans())
    def search(self, who: int, uid: bool, sort: bool) -> None:
        self.w.search_all(self.session(who), uid=uid, sort=sort)

    @rule(who=sessions)
    def noop(self, who: int) -> None:
        session = self.session(who)
        session.command("NOOP")
        self.w.learn(session)
        self.w.check([session])

    @rule(who=sessions, then=st.sampled_from(["nothing", "deliver", "flag"]))
    def idle(self, who: int, then: str) -> None:
        """The session idles; it must hear of what changed before (at once) and of a
        delivery or another session's STORE made while it idles."""
        idler = self.session(who)
        idler.idle()
        others = [s for s in self.w.sessions if s is not idler]
        if then == "deliver":
            self.w.deliver(1)
        elif then == "flag" and others[0].view.uids:
            target = others[0].view.uids[0]
            assert target is not None
            self.w.store(others[0], [target], "+", ["\\Flagged"], uid=True)
        # What the others had not heard: a NOOP of each, so the model knows every UID.
        for other in others:
            other.command("NOOP")
            self.w.learn(other)
        self.w.idle_until([idler])
        self.w.check([idler])

    def teardown(self) -> None:
        if self.world is None:
            return
        try:
            self.w.noop_all()
            self.w.check_archive()
            # Empty the INBOX for the next example, from a session that may.
            writer = next((s for s in self.w.sessions if not s.readonly), None)
            if writer is None:
                writer = self.w.sessions[0]
                writer.readonly = False
                writer.select()
            if writer.view.uids:
                writer.command("STORE 1:* +FLAGS.SILENT (\\Deleted)")
                writer.command("EXPUNGE")
        finally:
            for session in self.w.sessions:
                session.close()
            if self.w.archive_watcher is not None:
                self.w.archive_watcher.close()


def run_machine(
    make: Callable[[int, tuple[str, ...], bool], World], examples: int = EXAMPLES
) -> None:
    Interleaving.make = staticmethod(make)  # type: ignore[assignment]
    run_state_machine_as_test(
        Interleaving,
        settings=settings(
            max_examples=examples,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


async def test_random_interleavings_agree_with_the_model(
    start_server, tls_files, client_tls
) -> None:
    server = await imap_server(start_server, tls_files)

    def run() -> None:
        with database(server.dsn) as db:

            def make(count: int, modes: tuple[str, ...], watch: bool) -> World:
                port = server.port_of("imaps")
                return make_world(
                    [
                        Session.connect("ABC"[i], port, client_tls, enable=modes[i])
                        for i in range(count)
                    ],
                    inbox=str(server.maildir(ALICE)),
                    db=db,
                    smtp_port=server.port_of("smtp"),
                    pop3_port=server.port_of("pop3"),
                    archive_watcher=Session.connect("W", port, client_tls) if watch else None,
                )

            run_machine(make)

    await trio.to_thread.run_sync(run)


def test_random_interleavings_in_two_processes(
    tmp_path: pathlib.Path, backend_dsn: str | None
) -> None:
    # Sessions A and B in different server processes; a third beside one of them.
    with serving_two_processes(tmp_path, backend_dsn) as running:

        def make(count: int, modes: tuple[str, ...], watch: bool) -> World:
            port = running.ports["imap"]
            return running.world(
                spread_sessions(port, running.pids, count, modes),
                archive_watcher=Session.connect("W", port) if watch else None,
            )

        # Half as many: the in-process test covers the same rules, these the processes.
        run_machine(make, EXAMPLES // 2)
