"""COPY and MOVE (RFC 9051 §6.4.7, RFC 6851) from one folder's index to another's.

Theory of operation
-------------------
Files first, rows after, as everywhere in this store. Each source message gets a new
unique base name in the destination's ``cur/`` (with the destination's keyword letters):

- COPY hard-links the source file there (one inode, so the content is already durable
  and the mtime, INTERNALDATE, is the same); where a link is impossible (another file
  system, a link limit) it copies into ``tmp/``, fsyncs and renames;
- MOVE renames the source file there, so the message is in exactly one folder at every
  instant.

Then ``cur/`` is fsync'd (both folders' for MOVE) and the destination's rows are inserted
in one transaction, which gives the UIDs in source order (COPYUID, RFC 4315 §3); for
MOVE the source rows are deleted afterwards in a transaction of the source.

A crash after some links or renames leaves files that the next sync of each folder
indexes or expunges: nothing is lost and no UID is given twice. A failure that is
reported (a message expunged meanwhile, an I/O error) undoes the links and renames, so
the destination is as it was (RFC 9051 §6.4.7). The two folders' write locks are never
held together, so two MOVEs in opposite directions cannot deadlock.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from collections.abc import Sequence
from typing import Final

import attrs

from sansmail.storage.durable import fsync_dir, unlink_quietly
from sansmail.storage.maildir._imapbase import CopyResult, ExpungeIssuedError, ImapStoreError
from sansmail.storage.maildir._imapindex import FolderIndex, NewRow, is_corrupt, is_unwritable
from sansmail.storage.maildir._imapmaildir import Namer, info_letters, parse_info, split_name

__all__ = ["transfer"]

# link(2) fails across file systems, past a link limit, or where there are no hard links.
_COPY_ON: Final = frozenset({errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP})


@attrs.define
class _Source:
    """A message being copied or moved: its UID, where its file is, its row to be."""

    uid: int
    path: str
    row: NewRow


def transfer(
    source: FolderIndex, target: FolderIndex, uids: Sequence[int], *, namer: Namer, move: bool
) -> CopyResult:
    """Copy (or move) the messages `uids` (ascending) of `source` into `target`.
    Raises `ExpungeIssuedError`, changing nothing, if one of them is gone."""
    sources = _sources(source, uids)
    if not sources:
        return CopyResult(target.header().uidvalidity, [])
    needed = {k for s in sources for k in s.row.keywords}
    spelled: dict[str, str] = {}
    if needed:
        with target.write():
            spelled = target.allocate_keywords(needed)
    table = target.keywords()
    made: list[tuple[str, str]] = []  # (source path, target path) done so far
    try:
        for item in sources:
            keywords = tuple(sorted(spelled.get(k, k) for k in item.row.keywords))
            letters = info_letters(item.row.flags, keywords, table, None)
            base = _place(source, target, item, namer=namer, letters=letters, made=made, move=move)
            item.row = attrs.evolve(
                item.row, base=base, name=f"cur/{base}:2,{letters}", keywords=keywords
            )
        fsync_dir(os.path.join(target.folder, "cur"))
        if move:
            fsync_dir(os.path.join(source.folder, "cur"))
        with target.write() as conn:
            uidvalidity = target.header(conn).uidvalidity
            new_uids = target.insert(conn, [s.row for s in sources])
    except Exception as exc:
        # A crash would leave the files instead, and the next sync would index them.
        for src, dst in reversed(made):
            if move:
                os.rename(dst, src)
            else:
                unlink_quietly(dst)
        if is_corrupt(exc):
            target.rebuild(exc)
            raise ImapStoreError("the destination's index was damaged and is rebuilt") from exc
        raise
    if move:
        try:
            with source.write() as conn:
                present = [row[0] for row in source.rows(conn, uids, "uid")]
                source.delete(conn, present, source.header(conn).highestmodseq + 1)
        except sqlite3.OperationalError as exc:
            # The messages are in the target, durably, and their files left the source:
            # the MOVE is done. The source's rows that a full disk kept are rows without
            # a file, which its next sync expunges.
            if not is_unwritable(exc):
                raise
    return CopyResult(uidvalidity, [(s.uid, u) for s, u in zip(sources, new_uids, strict=True)])


def _sources(index: FolderIndex, uids: Sequence[int]) -> list[_Source]:
    with index.read() as conn:
        rows = index.rows(conn, uids, "uid, base, name, flags, keywords, internaldate, tz, size")
        # The copy is the same message: what FETCH derived from it holds there too.
        structures = index.structures(conn, uids)
    found = {row[0] for row in rows}
    gone = [uid for uid in uids if uid not in found]
    if gone:
        raise ExpungeIssuedError("some of the messages were expunged", gone)
    sources = []
    listing: dict[str, str] | None = None
    for uid, base, indexed, indexed_bits, keywords, internaldate, tz, size in rows:
        rel, bits, names = indexed, indexed_bits, tuple(keywords.split())
        if not os.path.exists(os.path.join(index.folder, rel)):
            # Renamed by another tool (mutt flagging it) since the index looked: the file
            # is the truth, and the copy must carry the flags its name has now.
            if listing is None:
                listing = index.scan()
            moved = listing.get(base)
            if moved is not None:
                rel = moved
                bits, names = parse_info(split_name(rel[4:])[1], index.keywords())
        row = NewRow(
            base=base,
            name=rel,
            flags=bits,
            keywords=names,
            internaldate=internaldate,
            tz=tz,
            size=size,
            structures=structures.get(uid),
        )
        sources.append(_Source(uid=uid, path=os.path.join(index.folder, rel), row=row))
    return sources


def _place(
    source: FolderIndex,
    target: FolderIndex,
    item: _Source,
    *,
    namer: Namer,
    letters: str,
    made: list[tuple[str, str]],
    move: bool,
) -> str:
    """Link or rename one file into the target's ``cur/``; returns its new base name."""
    for attempt in range(2):
        try:
            st = os.stat(item.path)
            base = f"{namer()},S={st.st_size},W={item.row.size}"
            dst = os.path.join(target.folder, "cur", f"{base}:2,{letters}")
            if move:
                os.rename(item.path, dst)
            else:
                _link_or_copy(item.path, dst, target.folder, st)
        except FileNotFoundError:
            # Renamed for its flags by someone else since the row was read?
            rel = source.scan().get(item.row.base)
            if attempt or rel is None:
                raise ExpungeIssuedError("a message was expunged", [item.uid]) from None
            item.path = os.path.join(source.folder, rel)
            continue
        made.append((item.path, dst))
        return base
    raise AssertionError("unreachable")


def _link_or_copy(src: str, dst: str, folder: str, st: os.stat_result) -> None:
    try:
        os.link(src, dst)
        return
    except OSError as exc:
        if exc.errno not in _COPY_ON:
            raise
    # No hard link possible: a copy as durable as the original before its name appears.
    tmp = os.path.join(folder, "tmp", os.path.basename(dst).partition(":")[0])
    try:
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            shutil.copyfileobj(fin, fout)
            fout.flush()
            os.fsync(fout.fileno())
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(tmp, dst)
    except BaseException:
        unlink_quietly(tmp)  # a full disk leaves no half copy behind
        raise
