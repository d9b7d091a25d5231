"""Broken state is repaired, never fatal: the pass over ``data_dir`` made at start, and
where each other repair lives.

Theory of operation
-------------------
A crash, a full disk or a hand at the keyboard can leave any file of ``data_dir`` half
written or wrong. The server must start anyway, lose no mail and no flag, and say in the
log, at warning level on the ``sansmail.repair`` logger (``sansmail/repair`` in the mail
log), one line per thing it repaired. Most repairs happen where the broken thing is
first used, so a start costs nothing per mailbox (10,000 mailboxes must not mean 10,000
SQLite files opened before the first connection is accepted):

- an IMAP index deleted, truncated or damaged: rebuilt from the Maildir when the folder
  is next opened, with a new UIDVALIDITY since the UIDs were only in it
  (`sansmail.storage.maildir._imapindex`, "What a lost index costs");
- a queue file half-written by a crash: removed (it was never acknowledged: the 250
  comes after its fsync) or, if it looks committed but does not read, set aside in
  ``queue/corrupt/``, when the queue runner starts (`QueueStore.recover`); one whose
  content fails its checksum later is set aside before it is ever sent;
- ``users.json`` that does not parse: the last good copy, ``users.json.bak``, is served
  (or, without one, logins fail and local recipients get 451) and the broken file is
  left for the admin (`sansmail.storage.users`);
- the greylist database damaged: moved aside and started afresh (it only delays
  senders once more, `sansmail.storage.greylist`);
- the ``generations`` file of the wrong size or magic: rewritten at zero
  (`sansmail.storage.generations`).

What is left is stray files in the Maildirs' ``tmp/``, which only this pass finds
(`clean_maildir_tmp`). Readers never look in ``tmp/``, so a stray file there is harmless
but for the space it takes. A file goes when either

- it is older than 36 hours, by its mtime and ctime (the Maildir convention,
  cr.yp.to/proto/maildir.html; ctime as well because a copy sets its tmp file's mtime to
  the source's, Dovecot checks both too); or
- its name says this host's sansmail wrote it (``<secs>.M<usecs>P<pid>Q|A<n>.<host>``),
  the process that wrote it is gone, and it predates the pass: a delivery or APPEND cut
  short by a crash. The message's name in ``new/`` or ``cur/`` is made before the 250 or
  the OK, from this very file, so such a file was never acknowledged (a hard link left
  behind after its rename is harmless to remove too).

A file of a live process (another server process, an APPEND in flight) is never
touched, whatever its age below 36 hours. The pass runs in a worker thread beside the
serving server, so it delays nothing; it costs a directory listing per ``tmp/`` and a
``stat`` per file found there (almost always none).
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import re
import time
from collections.abc import Callable
from typing import Final

import attrs

from sansmail.storage.maildir._maildir import _escape_hostname

__all__ = ["TMP_MAX_AGE", "TmpCleanup", "clean_maildir_tmp", "repair_at_start"]

#: Files in a Maildir's ``tmp/`` older than this (seconds) are removed.
TMP_MAX_AGE: Final = 36 * 3600

_log = logging.getLogger("sansmail.repair")
# A file name sansmail gives: delivery (Q) and APPEND or COPY (A); group 1 the writer's
# pid, group 2 its host.
_OURS: Final = re.compile(r"\d+\.M\d+P(\d+)[QA]\d+\.([^,:]+)")


@attrs.frozen
class TmpCleanup:
    """What `clean_maildir_tmp` found: ``tmp/`` directories listed, files removed that
    a crashed process left, files removed for their age, and files it could not
    remove."""

    directories: int = 0
    crashed: int = 0
    old: int = 0
    failed: int = 0

    @property
    def removed(self) -> int:
        return self.crashed + self.old


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def clean_maildir_tmp(
    data_dir: pathlib.Path | str,
    *,
    hostname: str,
    now: float | None = None,
    alive: Callable[[int], bool] = _pid_alive,
) -> TmpCleanup:
    """Remove the stray files of every ``tmp/`` under ``<data_dir>/mail`` (INBOX's and
    each folder's; see the module docstring). `now` is the time the pass started
    (seconds); `alive` says whether a process id is running."""
    now = time.time() if now is None else now
    host = _escape_hostname(hostname)
    me = os.getpid()
    counts = [0, 0, 0, 0]  # directories, crashed, old, failed

    def clean(tmp: str) -> None:
        try:
            entries = list(os.scandir(tmp))
        except OSError:
            return  # gone, or not a directory: nothing stray to find
        counts[0] += 1
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue  # a deleted folder on its way out (`MaildirAccount.delete`)
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            newest = max(st.st_mtime, st.st_ctime)
            if newest < now - TMP_MAX_AGE:
                kind = 2
            else:
                ours = _OURS.match(entry.name)
                if ours is None or ours[2] != host or newest >= now:
                    continue
                pid = int(ours[1])
                if pid == me or alive(pid):
                    continue
                kind = 1
            try:
                os.unlink(entry.path)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    counts[3] += 1
                continue
            counts[kind] += 1

    mail = os.path.join(os.fspath(data_dir), "mail")
    for domain in _subdirectories(mail):
        for account in _subdirectories(domain):
            clean(os.path.join(account, "tmp"))
            for folder in _subdirectories(account, prefix="."):
                clean(os.path.join(folder, "tmp"))
    return TmpCleanup(*counts)


def _subdirectories(path: str, *, prefix: str = "") -> list[str]:
    try:
        with os.scandir(path) as entries:
            return [
                entry.path
                for entry in entries
                if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return []


def repair_at_start(data_dir: pathlib.Path | str, *, hostname: str) -> TmpCleanup:
    """BLOCKING. The start pass (see the module docstring): clean the Maildirs' ``tmp/``
    and log what was removed, one line. Never raises for what it finds."""
    try:
        found = clean_maildir_tmp(data_dir, hostname=hostname)
    except OSError as exc:
        _log.warning("cannot clean the Maildirs' tmp/: %s", exc)
        return TmpCleanup()
    if found.removed or found.failed:
        _log.warning(
            "removed %d stray file(s) from the Maildirs' tmp/ (%d left by a crash,"
            " never acknowledged; %d older than 36 hours)%s",
            found.removed,
            found.crashed,
            found.old,
            f"; {found.failed} could not be removed" if found.failed else "",
        )
    return found
