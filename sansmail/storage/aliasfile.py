"""`AliasSource`: the aliases file as the server and ``newaliases`` read it, with the
include files it names, kept fresh without a restart.

Theory of operation
-------------------
`sansmail.mail.aliases` is pure: it parses text and expands recipients through an injected
include reader. This module supplies the text and the reader, and watches the files.

Loading reads the aliases file (size-bounded, UTF-8) into `table` with
`aliases.parse_aliases`, then walks every ``:include:`` it names, and those the include
files name in turn, each once: that reads every include file ahead of delivery, records
its problems (unreadable, not UTF-8, syntax, an include loop) with the ``file:line`` that
names it, and caches its text for `read_include`, which `aliases.expand` calls at every
delivery without touching the disk again. `problems` holds every problem of the last
load, one line each; ``newaliases`` prints them, the server logs them.

In force when ``newaliases`` returns. ``newaliases`` loads the file and its include files
as the server would (reporting every problem), then bumps the aliases counter of
`sansmail.storage.generations` (``<data_dir>/generations``). A source made with
``generations=`` (the server's) compares that counter, a word of shared memory, with the
one it saw before its last load, whenever `table`, `read_include` or `problems` is
asked for; when it moved, it loads everything again first, on the thread that asked.
For an RCPT that is the event loop's, once per ``newaliases`` per process: parsing costs
about 40 µs a line (most of it `parse_address`), so a 300-line file holds the loop about
12 ms and a 3,000-line one about 0.1 s. So the next RCPT after ``newaliases`` exits sees
the new aliases, in every server process, and no lookup costs a system call otherwise.
``newaliases`` puts the file in force as it stands even when it reports problems: the
entries without problems are used, as the server would use them anyway (below).

Edits without ``newaliases``. As in Postfix, an edited include file needs no
``newaliases`` (Postfix reads them at delivery time), and sansmail also takes a hand-edited
aliases file without one: `reload_if_changed`, which the server calls about once a
second from a worker thread, follows the counter too and compares one ``stat`` per file
with what was read: device, inode, size, mtime and ctime. An editor that writes a new
file and renames it changes the inode; one that rewrites in place changes mtime and
size; a ``chmod`` that makes a file readable again changes ctime. Any change to the
aliases file or to any include file read so far reloads everything, so the cache never
serves a stale include. Such edits are in force within about a second; run
``newaliases`` (or ``sansmail-trio reload``) after one to have it in force at once.

A file that vanishes or turns unreadable does not take aliases away from a running
server: the last good table stays in force and the problem is recorded, once per
change, so the server logs it once. A file with syntax problems is not "unreadable":
`parse_aliases` keeps its valid entries, and they are used.

Files are opened with ``O_NONBLOCK`` and must be regular files: an include naming a FIFO
or a device would otherwise hang or flood the reader. Each is read up to `max_size`
octets; a larger one is a problem, not a truncated table.

Like `sansmail.storage.maildir` and `sansmail.storage.users`, this does blocking file
I/O: the adapter calls `reload_if_changed` from a worker thread. A reload builds a new table
and cache and swaps them in, tagged with the counter it was read under, so `table` and
`read_include` may be used from another thread meanwhile; two loads racing may leave the
older in place, but then its counter is the older too, and the next lookup loads again.
"""

from __future__ import annotations

import os
import pathlib
import stat
from collections.abc import Callable, Iterator
from typing import Final, Protocol

import attrs

from sansmail.mail.aliases import (
    MAX_DEPTH,
    AliasTable,
    IncludeTarget,
    Target,
    parse_aliases,
    parse_include,
)
from sansmail.storage.generations import Counter, Generations

__all__ = ["DEFAULT_MAX_SIZE", "AliasSource", "Aliases", "IncludeWalk"]

#: The largest aliases or include file read, in octets. Big sites' /etc/aliases run to
#: a few thousand lines; 16 MiB is far beyond that and still safe to hold in memory.
DEFAULT_MAX_SIZE: Final = 16 * 1024 * 1024

_INCLUDE: Final = ":include:"
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY

# (device, inode, size, mtime_ns, ctime_ns); None: the file could not be found.
_Signature = tuple[int, int, int, int, int]


def _signature_of(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _stat(path: str) -> _Signature | None:
    try:
        return _signature_of(os.stat(path))
    except OSError:
        return None


def _reason(exc: OSError | ValueError) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _read_text(path: str, max_size: int) -> tuple[str, _Signature]:
    """The UTF-8 text of the regular file `path` and the signature of what was read.
    Raises OSError, or ValueError for a file too large, not regular, or not UTF-8."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > max_size:
            raise ValueError(f"larger than {max_size} octets")
        chunks = []
        size = 0
        # Read to EOF rather than trust st_size: the file may grow while we read.
        while chunk := os.read(fd, 1 << 16):
            size += len(chunk)
            if size > max_size:
                raise ValueError(f"larger than {max_size} octets")
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"not UTF-8 text (line {line})") from None
    return text, _signature_of(st)


@attrs.frozen
class _Loaded:
    """One consistent load: the aliases counter seen before it, the table, the include
    cache, what was read, the problems, and the aliases file's text (None when it could
    not be read)."""

    generation: int
    table: AliasTable
    includes: dict[str, str]
    signatures: dict[str, _Signature | None]
    problems: tuple[str, ...]
    text: str | None = None


class Aliases(Protocol):
    """What delivery and ``newaliases`` read of the aliases: `AliasSource` (the file)
    and `sansmail.storage.pg._aliases.PgAliasSource` (the database) are both. `table`,
    `problems`, `include_files` and `read_include` may be used on the event loop;
    `reload_if_changed` blocks."""

    @property
    def table(self) -> AliasTable: ...

    @property
    def problems(self) -> tuple[str, ...]: ...

    @property
    def include_files(self) -> tuple[str, ...]: ...

    def read_include(self, path: str) -> str: ...

    def reload_if_changed(self) -> bool: ...


def _include_targets(targets: tuple[Target, ...]) -> Iterator[IncludeTarget]:
    return (target for target in targets if isinstance(target, IncludeTarget))


class AliasSource:
    """The aliases file at `path` (None: no aliases, an empty table) and its include
    files; see the module docstring. Reads the file on construction. With `generations`
    (the server's), every lookup follows the changes ``newaliases`` announces."""

    def __init__(
        self,
        path: pathlib.Path | None,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        generations: Generations | None = None,
    ) -> None:
        self.path = None if path is None else pathlib.Path(path)
        self.max_size = max_size
        self._name = "" if path is None else os.fspath(path)
        self._generations = generations if path is not None else None
        # A load done by a lookup is reported by the next `reload_if_changed`.
        self._reloaded = False
        self._loaded = _Loaded(
            generation=self._generation(),
            table=AliasTable(source=self._name),
            includes={},
            signatures={},
            problems=(),
        )
        if self.path is not None:
            self._loaded = self._load(self._loaded, self._loaded.generation)

    # -- what the server and newaliases read ------------------------------------------

    @property
    def table(self) -> AliasTable:
        """The aliases in force: the last file that could be read."""
        return self._current().table

    @property
    def problems(self) -> tuple[str, ...]:
        """Every problem of the last load, one line each (``file:line: message`` when
        the problem has a line, ``file: message`` when the whole file does)."""
        return self._current().problems

    @property
    def include_files(self) -> tuple[str, ...]:
        """The include files read, in the order they were found."""
        return tuple(self._current().includes)

    @property
    def text(self) -> str | None:
        """The aliases file's text as last read (None: it could not be, or no file)."""
        return self._current().text

    def read_include(self, path: str) -> str:
        """The text of include file `path`, as `aliases.expand` wants it: from the cache
        when the last load read it, else read now (bounded, recorded for change
        detection). Raises OSError or ValueError, which `expand` reports."""
        loaded = self._current()
        text = loaded.includes.get(path)
        if text is not None:
            return text
        try:
            text, signature = _read_text(path, self.max_size)
        except (OSError, ValueError):
            # Watch it all the same: when it appears or is fixed, reload.
            loaded.signatures.setdefault(path, _stat(path))
            raise
        loaded.signatures[path] = signature
        loaded.includes[path] = text
        return text

    def reload_if_changed(self) -> bool:
        """Re-read everything if the aliases counter moved, or the aliases file or an
        include file read so far changed; True when everything was re-read, here or by a
        lookup, since the last call, and the caller should log `problems`."""
        if self.path is None:
            return False
        loaded = self._loaded
        if self._generation() != loaded.generation or not all(
            _stat(path) == sig for path, sig in list(loaded.signatures.items())
        ):
            self._reload()
        reloaded, self._reloaded = self._reloaded, False
        return reloaded

    def _current(self) -> _Loaded:
        loaded = self._loaded
        generations = self._generations
        if generations is not None and generations[Counter.ALIASES] != loaded.generation:
            loaded = self._reload()
        return loaded

    def _generation(self) -> int:
        return 0 if self._generations is None else self._generations[Counter.ALIASES]

    def _reload(self) -> _Loaded:
        # The counter is read before the files: a change announced meanwhile moves it
        # again, and the next lookup loads once more.
        loaded = self._load(self._loaded, self._generation())
        self._loaded = loaded
        self._reloaded = True
        return loaded

    # -- loading ------------------------------------------------------------------------

    def _load(self, previous: _Loaded, generation: int) -> _Loaded:
        name = self._name
        try:
            text, signature = _read_text(name, self.max_size)
        except (OSError, ValueError) as exc:
            # Keep the last good table and watch the file for its return. The include
            # cache starts afresh: `read_include` re-reads (and watches) what is used.
            problem = f"{name}: cannot read: {_reason(exc)}"
            if previous.table.entries:
                problem += "; the aliases read before stay in force"
            return _Loaded(
                generation=generation,
                table=previous.table,
                includes={},
                signatures={name: _stat(name)},
                problems=(problem,),
            )
        table = parse_aliases(text, source=name)
        walk = IncludeWalk(lambda path: _read_text(path, self.max_size))
        walk.table(table)
        problems = (*map(str, table.problems), *walk.problems)
        return _Loaded(
            generation=generation,
            table=table,
            includes=walk.includes,
            signatures={name: signature, **walk.signatures},
            problems=problems,
            text=text,
        )


class IncludeWalk:
    """Reads every include file reachable from a table, each once, depth first, with
    `read` (the text of a path and its signature, or OSError/ValueError): the files
    here, the rows of the database for `PgAliasSource`. Afterwards `includes` holds the
    texts read, in the order found, and `problems` every problem met."""

    def __init__(self, read: Callable[[str], tuple[str, _Signature | None]]) -> None:
        self._read = read
        self.includes: dict[str, str] = {}
        self.signatures: dict[str, _Signature | None] = {}
        self.problems: list[str] = []
        self.done: set[str] = set()

    def table(self, table: AliasTable) -> None:
        """Walk every include `table` names."""
        for entry in table.entries.values():
            self.targets(entry.targets, ())

    def targets(self, targets: tuple[Target, ...], chain: tuple[str, ...]) -> None:
        for target in _include_targets(targets):
            self.include(target, chain)

    def include(self, target: IncludeTarget, chain: tuple[str, ...]) -> None:
        path = target.path
        where = f"{target.file}:{target.line}"
        if path in chain:
            loop = " -> ".join(f"{_INCLUDE}{p}" for p in (*chain[chain.index(path) :], path))
            self.problems.append(f"{where}: include loop {loop}")
            return
        if path in self.done:
            return
        self.done.add(path)
        if len(chain) >= MAX_DEPTH:
            self.problems.append(f"{where}: include files nested deeper than {MAX_DEPTH}")
            return
        try:
            text, signature = self._read(path)
        except (OSError, ValueError) as exc:
            self.signatures[path] = _stat(path)
            self.problems.append(f"{where}: cannot read {_INCLUDE}{path}: {_reason(exc)}")
            return
        self.signatures[path] = signature
        self.includes[path] = text
        targets, problems = parse_include(text, source=path)
        self.problems.extend(map(str, problems))
        self.targets(targets, (*chain, path))
