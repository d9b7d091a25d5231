"""sansmail and Dovecot on 127.0.0.1 with the same generated mailbox, for the IMAP benches
that time one thing on both in one run (SORT/THREAD, QRESYNC, COMPRESS, mbsync).

    with side_by_side("imap-sort-", args.messages, args.tmpdir) as both:
        for name, server in both.servers: ...

The mailbox of ``mailbox_bench.generate_mailbox`` is written into sansmail's INBOX and
Dovecot's ``~/Maildir`` from one seed (the two must come out equal), both servers start,
and on leaving both are stopped and the scratch folder removed (kept when ``KEEP`` is
set in the environment). Where Dovecot cannot run, the benches go on with sansmail alone
and say why on stderr.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bench_procs as procs
import mailbox_bench as mb
from dovecot_peer import DovecotServer

#: Dovecot's COMPRESS=DEFLATE plugin (dovecot-core).
IMAP_ZLIB = Path("/usr/lib/dovecot/modules/lib30_imap_zlib_plugin.so")


class DovecotZlib(DovecotServer):
    """The mailbox bench's Dovecot, with COMPRESS=DEFLATE (imap_zlib) for IMAP, as
    sansmail offers it."""

    @staticmethod
    def unavailable() -> str | None:
        why = DovecotServer.unavailable()
        return why or (None if IMAP_ZLIB.exists() else f"no {IMAP_ZLIB} (dovecot-core's imap_zlib)")

    def prepare(self) -> None:
        super().prepare()
        with self.config_path.open("a") as conf:
            conf.write("protocol imap {\n  mail_plugins = $mail_plugins imap_zlib\n}\n")
        done = subprocess.run(
            ["doveconf", "-c", str(self.config_path), "-n"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise procs.ServerError(f"doveconf refused imap_zlib:\n{done.stderr.strip()}")


@dataclass
class SideBySide:
    top: Path
    exp: mb.Expected
    ours: mb.MailServer
    #: ("sansmail", ours), then ("dovecot", peer) when Dovecot runs here.
    servers: list[tuple[str, mb.MailServer]]


@contextlib.contextmanager
def side_by_side(
    prefix: str,
    messages: int,
    tmpdir: Path | None,
    *,
    peer_class: type[DovecotServer] = DovecotServer,
) -> Iterator[SideBySide]:
    """Both servers started on one mailbox of `messages` messages, stopped on leaving."""
    why = peer_class.unavailable()
    top = Path(tempfile.mkdtemp(prefix=prefix, dir=tmpdir))
    top.chmod(0o711)
    ours = mb.MailServer(top / "sansmail", 1)
    peer = None if why else peer_class(top / "dovecot")
    servers: list[tuple[str, mb.MailServer]] = [("sansmail", ours)]
    try:
        ours.prepare()
        exp = mb.generate_mailbox(ours.inbox, messages)
        ours.start()
        if peer is not None:
            peer.prepare()
            if mb.generate_mailbox(peer.inbox, messages) != exp:
                raise procs.ServerError("the two mailboxes differ")
            peer.own()
            peer.start()
            servers.append(("dovecot", peer))
        else:
            print(f"Dovecot cannot run here: {why}", file=sys.stderr)
        yield SideBySide(top=top, exp=exp, ours=ours, servers=servers)
    finally:
        for _name, server in servers:
            if server.proc is not None:
                procs.stop_process_group(server.proc)
                server.proc = None
        if os.environ.get("KEEP") is None:
            shutil.rmtree(top, ignore_errors=True)
