"""`MaildirStore`: local delivery into Maildirs, durably, with as few syscalls as we can.

Theory of operation
-------------------
Layout (CONTRACT.md, "Where mail lives"): ``<data_dir>/mail/<domain>/<local>/`` holds
``tmp/``, ``new/`` and ``cur/``. Directories are created on first delivery with mode 0700,
messages with mode 0600. A domain or local part is used as the directory name as given,
except that "%", "/" and a leading "." are percent-escaped, so no address can climb out of
its domain directory or name ``.``/``..``.

A message is stored with LF line ends, as Postfix local(8) and Dovecot write Maildirs. The
content arrives in wire form (CRLF) and is converted in bulk with ``bytes.replace`` as it
is written; a CR at the very end of one chunk is held back until the next chunk shows
whether it starts a CRLF pair.

The one rule is "no 250 before the message is durably stored". `commit` therefore runs:

1. write what is still buffered to ``tmp/<unique>`` (one file, opened with O_EXCL), fsync
   it, close it (`prepare`);
2. for every mailbox after the first, hard-link that file into its ``new/`` (same inode;
   when linking fails, e.g. EXDEV, a copy with its own fsync, renamed into ``new/``);
3. rename the tmp file into the first mailbox's ``new/``;
4. fsync every ``new/`` touched; only then return (steps 2 to 4 are `publish_many`).

Folders (`begin(..., folder="Junk")`: quarantined mail). The message goes into the
folder's ``new/`` in each mailbox instead of INBOX's. The folder is a Maildir++ folder of
the user's Maildir as the IMAP store names it (`_imapnames.folder_dir`: ``.Junk/`` with
``tmp/ new/ cur/`` and an empty ``maildirfolder``), created on first use as Dovecot's LDA
does with ``lda_mailbox_autocreate`` and ``lda_mailbox_autosubscribe``: under the IMAP
store's account lock (so it cannot cross a CREATE, DELETE or RENAME), each directory and
the marker durable before use, and the new folder added to the ``subscriptions`` file, so
mail clients that show only subscribed folders show it. A folder that exists (the IMAP
store makes Junk for every account) is only made sure of, once per process. The tmp file
is written in INBOX's ``tmp/``, on the same file system: a folder deleted over IMAP
while a message is on its way takes no half-written file with it, and a name made after
the folder vanished finds it gone (ENOENT) and makes the folder again, once.

The file is complete and on disk before any name for it appears in a ``new/``, so a crash
at any point leaves either no message or a whole one (possibly in only some mailboxes:
the client got no 250 and will send it again). Linking from the tmp path (step 2) before
the rename (step 3) means a reader moving the file out of ``new/`` cannot break the links.
If any step fails, the names already made are removed before the error propagates.

Group commit (`commit_many`). Messages that end at about the same time are committed
together, in one worker thread: each file is written and fsync'd (step 1), then every
name is made, and each ``new/`` directory is fsync'd once for the whole batch. Every
message is still durable, file and name, before `commit_many` returns it; what is shared
is only the directory sync, which makes every name in it durable at once. A failure
stays with its own delivery, except that a failed directory sync fails every delivery
that made a name in that directory (their names are removed again). (Starting the
files' writeback before the first fsync, with ``posix_fadvise``, was measured: no
faster here, and one more system call per message.)

Names follow the Maildir convention (cr.yp.to/proto/maildir.html) as Dovecot writes them:
``<secs>.M<usecs>P<pid>Q<counter>.<host>,S=<size>,W=<size with CRLF>``. ``S=`` lets a
reader skip a stat, ``W=`` gives IMAP's RFC822.SIZE without reading the file. The tmp file
carries the same name without the sizes, which are known only at the end.

Thread safety without locks (this package imports no threading): the store is shared by
the worker threads of whatever event loop drives it; one `Delivery` is driven by one
thread at a time. The unique-name counter is an `itertools.count` (one atomic step under
the GIL), the directory caches are a dict and a set whose single operations are atomic,
and creating directories is idempotent: two threads creating the same mailbox at once
both make sure of every directory and fsync every parent before using it, at worst
twice.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import pathlib
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

import attrs

from sansmail.mail.address import MailboxId
from sansmail.storage.durable import fsync_dir as _fsync_dir
from sansmail.storage.durable import unlink_quietly as _unlink_quietly
from sansmail.storage.durable import write_all as _write_all
from sansmail.storage.maildir._base import Delivery, MailStore
from sansmail.storage.maildir._imapbase import InvalidFolderNameError
from sansmail.storage.maildir._imapnames import (
    INBOX,
    folder_dir,
    normalize,
    read_subscriptions,
    write_subscriptions,
)
from sansmail.storage.maildir._quota import count_delivery as _count_delivery
from sansmail.storage.maildir._quota import peek as _quota_peek
from sansmail.storage.maildir._quota import usage as _quota_usage

__all__ = ["MaildirStore"]

_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
_O_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
# link(2) refuses across file systems (EXDEV), past a link limit (EMLINK), or on file
# systems without hard links (EPERM, ENOTSUP): those fall back to a copy.
_COPY_ON: Final = frozenset({errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP})
_CREATE_ATTEMPTS: Final = 5
# The IMAP store's account lock and subscriptions file (`_imapaccount`, which imports this
# module, so the names are repeated here; a test checks that they agree).
ACCOUNT_LOCK_NAME: Final = "sansmail-imap.lock"
SUBSCRIPTIONS_NAME: Final = "subscriptions"
MAILDIRFOLDER_NAME: Final = "maildirfolder"


def _escape_component(text: str) -> str:
    # "/" would nest directories, "." and ".." climb, a leading "." collides with the
    # Maildir++ folder convention; "%" is escaped so the mapping stays one-to-one.
    out = text.replace("%", "%25").replace("/", "%2F")
    if out.startswith("."):
        out = "%2E" + out[1:]
    return out


def _escape_hostname(hostname: str) -> str:
    # The Maildir spec replaces "/" and ":" with octal escapes; "," also goes because it
    # starts the ",S=" fields, and anything unprintable because it is a file name.
    out = []
    for ch in hostname:
        if ch in "/:,\\" or not ch.isprintable() or ch.isspace():
            out.append("".join(f"\\{b:03o}" for b in ch.encode()))
        else:
            out.append(ch)
    return "".join(out) or "localhost"


@attrs.frozen
class _Box:
    """A mailbox (or one of its folders) whose directories are known to exist: `tmp` is
    where its files are written (always INBOX's), `new` where they are named."""

    tmp: str
    new: str


class MaildirStore(MailStore):
    """Delivers into ``<data_dir>/mail/<domain>/<local>/``; see the module docstring.

    `clock` returns nanoseconds since the epoch (for file names only); `hostname` goes
    into the file names, as Maildir readers expect. `quota` gives each mailbox's storage
    limit in octets (0: none; `_quota.QuotaLimits`): each copy delivered is counted in
    the Maildir's quota file (`_quota`), measured first where a limit applies.
    """

    def __init__(
        self,
        data_dir: pathlib.Path,
        *,
        hostname: str,
        clock: Callable[[], int] = time.time_ns,
        quota: Callable[[MailboxId], int] | None = None,
    ) -> None:
        if not hostname:
            raise ValueError("a hostname is needed for Maildir file names")
        self.quota = quota
        self.data_dir = pathlib.Path(data_dir)
        self._mail_dir = os.path.join(os.fspath(self.data_dir), "mail")
        self._host = _escape_hostname(hostname)
        self._clock = clock
        self._counter = itertools.count(1)
        self._boxes: dict[MailboxId, _Box] = {}  # INBOX
        self._folders: dict[tuple[MailboxId, str], _Box] = {}
        self._durable_dirs: set[str] = set()

    def maildir(self, mailbox: MailboxId) -> pathlib.Path:
        """The directory that holds `mailbox` (it may not exist yet)."""
        return pathlib.Path(self._root(mailbox))

    def storage(self, mailbox: MailboxId) -> tuple[int, int] | None:
        limit = self.quota(mailbox) if self.quota is not None else 0
        if not limit:
            return None
        found, _measured = _quota_usage(self._root(mailbox), limit)
        return found.octets, limit

    def folder_exists(self, mailbox: MailboxId, folder: str) -> bool:
        path = folder_dir(self._root(mailbox), folder)
        try:
            return stat.S_ISDIR(os.stat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False  # any other error (EIO) is the caller's

    def full(self, mailbox: MailboxId) -> bool:
        limit = self.quota(mailbox) if self.quota is not None else 0
        if not limit:
            return False
        try:
            found = _quota_peek(self._root(mailbox), limit)
        except OSError:
            return False
        return found is not None and found.octets >= limit

    def begin(
        self, mailboxes: Sequence[MailboxId], *, prefix: bytes, folder: str | None = None
    ) -> Delivery:
        if not mailboxes:
            raise ValueError("a delivery needs at least one mailbox")
        if folder is not None:
            try:
                folder = normalize(folder)
            except InvalidFolderNameError as exc:
                raise ValueError(str(exc)) from None
            if folder == INBOX:
                folder = None
        return _MaildirDelivery(
            self, list(dict.fromkeys(mailboxes)), len(mailboxes), prefix, folder
        )

    def commit_many(self, deliveries: Sequence[Delivery]) -> list[list[str] | OSError]:
        """Blocking: group commit (see the module docstring)."""
        mine = [self._own(delivery) for delivery in deliveries]
        errors: dict[int, OSError] = {}
        for index, delivery in enumerate(mine):
            try:
                delivery.prepare()
            except OSError as exc:
                errors[index] = exc
        ready = [index for index in range(len(mine)) if index not in errors]
        published = dict(zip(ready, self.publish_many([mine[i] for i in ready]), strict=True))
        return [
            errors[index] if index in errors else published[index] for index in range(len(mine))
        ]

    def publish_many(self, deliveries: Sequence[Delivery]) -> list[list[str] | OSError]:
        """Blocking: steps 2 to 4 of the module docstring for deliveries whose file is
        already durable (`_MaildirDelivery.prepare`): make their names, then fsync each
        ``new/`` they touched once. Per delivery, its names or its error; a delivery
        that failed has no name left anywhere (the caller must still `abort` it)."""
        mine = [self._own(delivery) for delivery in deliveries]
        results: list[list[str] | OSError | None] = [None] * len(mine)
        made: list[list[str]] = [[] for _ in mine]
        # new/ directory -> the deliveries with a name in it, in the order first touched.
        touched: dict[str, list[int]] = {}
        try:
            for index, delivery in enumerate(mine):
                try:
                    boxes = delivery._link(made[index])
                except OSError as exc:
                    results[index] = exc
                    continue
                for box in boxes:
                    touched.setdefault(box.new, []).append(index)
            for directory, users in touched.items():
                try:
                    _fsync_dir(directory)
                except OSError as exc:
                    # The log line of a failed delivery should name the directory.
                    error = OSError(exc.errno, f"fsync of {directory}: {exc.strerror}")
                    for index in users:
                        results[index] = results[index] or error
        except BaseException:
            for paths in made:
                for path in paths:
                    _unlink_quietly(path)
            raise
        out: list[list[str] | OSError] = []
        for index, delivery in enumerate(mine):
            result = results[index]
            if result is None:
                delivery._done = True
                out.append([delivery._name] * delivery._count)
                self._count_quota(delivery)
            else:
                for path in made[index]:
                    _unlink_quietly(path)
                out.append(result)
        return out

    # -- used by deliveries (worker threads) ------------------------------------------

    def _count_quota(self, delivery: _MaildirDelivery) -> None:
        # After the names are durable (the usage is a cache, the mail is not). Where a
        # limit applies, a missing or long file is measured here, in the worker thread,
        # so that the RCPT check (`_quota.peek`, which never walks) finds it.
        for mailbox in delivery._mailboxes:
            limit = self.quota(mailbox) if self.quota is not None else 0
            with contextlib.suppress(OSError):
                _count_delivery(self._root(mailbox), delivery._wire, limit)

    def _root(self, mailbox: MailboxId) -> str:
        return os.path.join(
            self._mail_dir, _escape_component(mailbox.domain), _escape_component(mailbox.local)
        )

    def _unique(self) -> str:
        now = self._clock()
        secs, nanos = divmod(now, 1_000_000_000)
        counter = next(self._counter)
        return f"{secs}.M{nanos // 1000}P{os.getpid()}Q{counter}.{self._host}"

    def _box(self, mailbox: MailboxId, folder: str | None = None) -> _Box:
        if folder is None:
            box = self._boxes.get(mailbox)
            return box if box is not None else self._create(mailbox)
        box = self._folders.get((mailbox, folder))
        return box if box is not None else self._create_folder(mailbox, folder)

    def _forget(self, mailbox: MailboxId, folder: str | None = None) -> None:
        # Someone removed the Maildir (or the folder) under us: believe nothing about
        # its directories.
        if folder is None:
            self._boxes.pop(mailbox, None)
            for key in [key for key in self._folders if key[0] == mailbox]:
                self._folders.pop(key, None)
        else:
            self._folders.pop((mailbox, folder), None)
        self._durable_dirs.clear()

    def _create(self, mailbox: MailboxId) -> _Box:
        # A directory is used only after its entry in the parent is on disk. A thread that
        # finds a directory another thread just made cannot know that thread's fsync has
        # finished, so it fsyncs the parent itself (once per process: an earlier process
        # may have died between mkdir and fsync).
        root = self._root(mailbox)
        domain_dir = os.path.dirname(root)
        for path in (self._mail_dir, domain_dir, root):
            if path not in self._durable_dirs:
                _mkdir(path)
                _fsync_dir(os.path.dirname(path))
                self._durable_dirs.add(path)
        for sub in ("tmp", "new", "cur"):
            _mkdir(os.path.join(root, sub))
        _fsync_dir(root)
        box = _Box(tmp=os.path.join(root, "tmp"), new=os.path.join(root, "new"))
        self._boxes[mailbox] = box
        return box

    def _create_folder(self, mailbox: MailboxId, folder: str) -> _Box:
        # See "Folders" in the module docstring. The lock is taken only to make the
        # folder; one that exists is made sure of without it (all steps idempotent).
        inbox = self._box(mailbox)
        root = os.path.dirname(inbox.tmp)
        path = folder_dir(root, folder)
        if os.path.isdir(path):
            _fill_folder(path)
            _fsync_dir(root)
        else:
            with _account_lock(root):
                try:
                    os.mkdir(path, _DIR_MODE)
                    made = True
                except FileExistsError:
                    made = False
                _fill_folder(path)
                _fsync_dir(root)
                if made:
                    _subscribe(root, folder)
        box = _Box(tmp=inbox.tmp, new=os.path.join(path, "new"))
        self._folders[(mailbox, folder)] = box
        return box

    def _own(self, delivery: Delivery) -> _MaildirDelivery:
        if not isinstance(delivery, _MaildirDelivery) or delivery._store is not self:
            raise TypeError("a delivery can only be committed by the store that began it")
        return delivery


def _fill_folder(path: str) -> None:
    """Make sure folder directory `path` has ``tmp/ new/ cur/`` and ``maildirfolder``,
    all durable (the caller syncs the folder's own entry in the Maildir)."""
    for sub in ("tmp", "new", "cur"):
        _mkdir(os.path.join(path, sub))
    marker = os.path.join(path, MAILDIRFOLDER_NAME)
    os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, _FILE_MODE))
    _fsync_dir(path)


@contextlib.contextmanager
def _account_lock(root: str) -> Iterator[None]:
    """The IMAP store's account lock (`_imapaccount.MaildirAccount._lock`)."""
    fd = os.open(
        os.path.join(root, ACCOUNT_LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _subscribe(root: str, folder: str) -> None:
    """Add `folder` to the Maildir's subscriptions (under the account lock)."""
    path = os.path.join(root, SUBSCRIPTIONS_NAME)
    names = read_subscriptions(path)
    if folder not in names:
        write_subscriptions(path, [*names, folder])


def _mkdir(path: str) -> None:
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError:
        pass
    except FileNotFoundError:
        # data_dir itself is missing: make it (and its parents) like mkdir -p.
        os.makedirs(path, _DIR_MODE, exist_ok=True)


class _MaildirDelivery:
    """One message on its way into one or more Maildirs (the `Delivery` protocol)."""

    def __init__(
        self,
        store: MaildirStore,
        mailboxes: list[MailboxId],
        count: int,
        prefix: bytes,
        folder: str | None = None,
    ) -> None:
        self._store = store
        self._mailboxes = mailboxes  # distinct, in order
        self._folder = folder  # normalised; None: INBOX
        self._count = count  # names to return, duplicates included
        head = prefix.replace(b"\r\n", b"\n")
        self._chunks: list[bytes] = [head] if head else []
        self._pending = len(head)
        self._head_size = len(head)
        self._head_lines = head.count(b"\n")
        self._size = 0  # content octets, LF form, a held-back CR included
        self._lines = 0  # LFs in the content: the CRLF size is _size + _lines
        self._held_cr = False
        self._fd = -1
        self._tmp_path: str | None = None
        self._base = ""
        self._name = ""  # the final name, once the file is durable (prepared)
        self._wire = 0  # its CRLF size (,W=), once prepared
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def pending(self) -> int:
        return self._pending

    def write(self, data: bytes) -> None:
        if self._done:
            raise RuntimeError("write after commit or abort")
        if not data:
            return
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
            self._size -= 1
        if data.endswith(b"\r"):
            data = data[:-1]
            self._held_cr = True
            self._size += 1
        chunk = data.replace(b"\r\n", b"\n")
        if chunk:
            self._chunks.append(chunk)
            self._pending += len(chunk)
            self._size += len(chunk)
            self._lines += chunk.count(b"\n")

    def flush(self) -> None:
        if self._done:
            raise RuntimeError("flush after commit or abort")
        if self._fd < 0:
            self._open()
        if self._chunks:
            data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            self._chunks = []
            self._pending = 0
            _write_all(self._fd, data)

    def commit(self) -> list[str]:
        if self._done:
            raise RuntimeError("commit after commit or abort")
        (result,) = self._store.commit_many([self])
        if isinstance(result, OSError):
            raise result
        return result

    def prepare(self) -> None:
        """Blocking: step 1 of the module docstring: the whole message in its tmp file,
        fsync'd and closed, with no name in any new/ yet (`MaildirStore.publish_many`
        makes those)."""
        if self._done or self._name:
            raise RuntimeError("commit after commit or abort")
        if self._held_cr:
            self._chunks.append(b"\r")
            self._pending += 1
            self._held_cr = False
        self.flush()
        os.fsync(self._fd)
        fd, self._fd = self._fd, -1
        os.close(fd)
        total = self._head_size + self._size
        self._wire = total + self._head_lines + self._lines
        self._name = f"{self._base},S={total},W={self._wire}"

    def _link(self, made: list[str]) -> list[_Box]:
        """Steps 2 and 3 for this (prepared) delivery: every name, each appended to
        `made` as it appears; returns the boxes whose new/ now needs a sync."""
        if not self._name or self._tmp_path is None:
            raise RuntimeError("publish before prepare, or after commit or abort")
        store = self._store
        name = self._name
        tmp_path = self._tmp_path
        folder = self._folder
        boxes = [store._box(mailbox, folder) for mailbox in self._mailboxes]
        for index in range(1, len(boxes)):
            target = os.path.join(boxes[index].new, name)
            try:
                os.link(tmp_path, target)
            except OSError as exc:
                boxes[index], target = self._name_again(index, exc, link=True)
            made.append(target)
        target = os.path.join(boxes[0].new, name)
        try:
            os.rename(tmp_path, target)
        except OSError as exc:
            boxes[0], target = self._name_again(0, exc, link=False)
        self._tmp_path = None
        made.append(target)
        return boxes

    def _name_again(self, index: int, exc: OSError, *, link: bool) -> tuple[_Box, str]:
        """The slow way to the name in the `index`-th mailbox after `exc`: a copy where
        a hard link is impossible, or a folder deleted (over IMAP) since we last saw it
        made again, once (our own file is in INBOX's tmp/, which no folder operation
        removes). Returns the box and the name made; raises when neither applies."""
        assert self._tmp_path is not None
        store = self._store
        mailbox = self._mailboxes[index]
        box = store._box(mailbox, self._folder)
        target = os.path.join(box.new, self._name)
        if link and exc.errno in _COPY_ON:
            _copy(self._tmp_path, os.path.join(box.tmp, self._name), target)
            return box, target
        if (
            not isinstance(exc, FileNotFoundError)
            or self._folder is None
            or not os.path.exists(self._tmp_path)
        ):
            raise exc
        store._forget(mailbox, self._folder)
        box = store._box(mailbox, self._folder)
        target = os.path.join(box.new, self._name)
        if link:
            _link_or_copy(self._tmp_path, box, target)
        else:
            os.rename(self._tmp_path, target)
        return box, target

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._chunks = []
        self._pending = 0
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp_path is not None:
            _unlink_quietly(self._tmp_path)
            self._tmp_path = None

    def _open(self) -> None:
        store = self._store
        mailbox = self._mailboxes[0]
        for attempt in range(_CREATE_ATTEMPTS):
            box = store._box(mailbox)
            base = store._unique()
            path = os.path.join(box.tmp, base)
            try:
                self._fd = os.open(path, _O_CREATE, _FILE_MODE)
            except FileExistsError:
                continue  # only a clock stepping back can do this; a new name will do
            except FileNotFoundError:
                if attempt:
                    raise
                store._forget(mailbox)
                continue
            self._base = base
            self._tmp_path = path
            return
        raise OSError(errno.EEXIST, f"cannot create a unique file in {box.tmp}")


def _link_or_copy(source: str, box: _Box, target: str) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in _COPY_ON:
            raise
        _copy(source, os.path.join(box.tmp, os.path.basename(target)), target)


def _copy(source: str, tmp: str, target: str) -> None:
    # The fallback when a hard link is impossible: a copy that is as durable as the
    # original before its name appears in new/.
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(tmp, _O_CREATE, _FILE_MODE)
        try:
            while os.sendfile(dst, src, None, 1 << 20):
                pass
            os.fsync(dst)
        except BaseException:
            os.close(dst)
            _unlink_quietly(tmp)
            raise
        os.close(dst)
    finally:
        os.close(src)
    os.rename(tmp, target)
