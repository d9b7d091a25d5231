"""The aliases file (/etc/aliases format): its grammar, and the expansion of a recipient
through it. Pure: include files come in through an injected reader.

Theory of operation
-------------------
Grammar (Postfix aliases(5), itself compatible with Sendmail 8):

- ``name: value, value, ...``. The name is a local part without a domain, folded to lower
  case; a name holding whitespace, ``#``, ``:`` or ``@`` is written in double quotes
  (``"a b": bob``). An alias applies to its name at *every* domain in ``domains``, as
  Postfix's alias_maps apply to every domain in mydestination.
- A line that starts with whitespace continues the entry above. Empty and whitespace-only
  lines are ignored, and so is a line whose first non-blank character is ``#`` (a comment
  can sit between continuation lines). A ``#`` later in a line is not a comment.
- Values are separated by commas; a line end separates them too, so the comma at the end
  of a continued line is optional. Empty values (``a,,b``, a trailing comma) are skipped.
  Two values on one line without a comma between them are a problem, not a guess.
- A value is ``user@domain`` (forwarded: through the aliases again when the domain is ours,
  through the queue when it is not), a bare ``local`` name (the same local part at the
  domain being expanded: an alias of this table or a user), ``\\local`` (that user,
  never an alias: the Sendmail idiom ``alice: \\alice, alice@elsewhere``), or
  ``:include:/path``, whose file holds more values in the same syntax, one or more per
  line, with ``#`` comment lines.
- ``|command`` and ``/file`` values are refused. Sendmail and Postfix run the command or
  append to the file on behalf of whoever sends the mail; that is the mail server's
  oldest privilege-escalation route, and sansmail runs no programs and writes no files but
  its own Maildirs. Deliver to a user's mailbox and let that user's filter act instead.
- ``:include:`` paths must be absolute. Postfix refuses a relative path too, at delivery
  time (local/include.c, "uses a relative path", 5.3.5 "mail system configuration
  error"); we refuse it when the file is parsed, so ``newaliases`` reports it.

Problems are collected, never raised: `parse_aliases` returns the table with every
problem as `AliasProblem` (file, line, message; ``str()`` is ``file:line: message``), and
keeps what is valid so a server can run on it. `AliasTable.raise_for_problems` turns them
into one `AliasError` for callers that want all or nothing (``newaliases``). A duplicated
name is a problem naming both lines; the first definition is used (Postfix's postalias
keeps the first too).

Expansion (`expand`, after Postfix local(8)):

1. A recipient in our domains is looked up by its full local part; failing that, with a
   recipient delimiter, by the part before it (``sales+eu`` -> ``sales``; aliases(5)
   "ADDRESS EXTENSION"). The extension is *not* carried to the alias's targets: Postfix's
   default propagate_unmatched_extensions leaves out aliases.
2. Without an alias the recipient is a user, tried the same two ways (``alice+tag`` ->
   ``alice``). The mailbox is the base user's; the detail is dropped, as `sansmail.mail.policy`
   drops it (no per-detail folders yet). postmaster and abuse with no user fall back to
   the postmaster mailbox of the first domain (CONTRACT.md, "Where mail lives").
3. Each alias and each include file is expanded at most once per recipient, so a list
   reached twice (a diamond) costs nothing and duplicates vanish; mailboxes and remote
   addresses are also de-duplicated (case-insensitive local part, as `Address.key`).
4. A name met again while it is still being expanded is a loop. As Sendmail and Postfix
   do for an alias that lists itself (Postfix local/alias.c), the name is then delivered
   to the user of that name when there is one (for postmaster and abuse, their fallback
   mailbox); otherwise the loop is a problem. An include file that includes itself,
   directly or not, is a problem.
5. Nesting deeper than `MAX_DEPTH` (100, Postfix's limit in local/alias.c, answered with
   5.4.6 "alias database loop") is a problem.

Problems found while expanding (a missing user, a loop, an unreadable include file, an
include file's own syntax errors as ``path:line``) are returned in `Expansion.problems`:
the rest of the expansion is still delivered, and the caller bounces or logs them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping

import attrs

from sansmail.mail.address import Address, AddressError, MailboxId, parse_address
from sansmail.mail.policy import ROLE_ACCOUNTS, postmaster_mailbox

__all__ = [
    "MAX_DEPTH",
    "AddressTarget",
    "AliasEntry",
    "AliasError",
    "AliasProblem",
    "AliasTable",
    "Expansion",
    "IncludeTarget",
    "LocalTarget",
    "Target",
    "expand",
    "parse_aliases",
    "parse_include",
    "role_account_problems",
]

#: How deep aliases and include files may nest (Postfix local/alias.c gives up past 100).
MAX_DEPTH = 100

_INCLUDE = ":include:"
_REFUSED_COMMAND = (
    "'|command' targets are not supported: sansmail never runs programs for incoming mail, "
    "since anyone who can send mail would control their input; deliver to a user's "
    "mailbox instead"
)
_REFUSED_FILE = (
    "'/file' targets are not supported: sansmail never writes files other than its own "
    "mailboxes for incoming mail, since anyone who can send mail would control what is "
    "written; deliver to a user's mailbox instead"
)


@attrs.frozen(kw_only=True)
class AliasProblem:
    """One problem in an aliases or include file; ``str()`` is ``file:line: message``."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class AliasError(ValueError):
    """An aliases file with problems; `problems` lists them all, one per line of str()."""

    def __init__(self, problems: Collection[AliasProblem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = tuple(problems)


@attrs.frozen(kw_only=True)
class LocalTarget:
    """A bare local name: an alias or a user at the domain being expanded. `direct` (written
    ``\\name``) skips the alias lookup."""

    name: str
    direct: bool = False


@attrs.frozen(kw_only=True)
class AddressTarget:
    """A full address: ours (expanded again) or elsewhere (forwarded through the queue)."""

    address: Address


@attrs.frozen(kw_only=True)
class IncludeTarget:
    """``:include:/path``; `file` and `line` say where it was written, for problems."""

    path: str
    file: str
    line: int


Target = LocalTarget | AddressTarget | IncludeTarget


@attrs.frozen(kw_only=True)
class AliasEntry:
    """One alias: its lower-case `name`, its valid `targets`, where it was defined."""

    name: str
    targets: tuple[Target, ...]
    file: str
    line: int


@attrs.frozen(kw_only=True)
class AliasTable:
    """A parsed aliases file: `entries` by lower-case name, and every `problems` found."""

    source: str
    entries: Mapping[str, AliasEntry] = attrs.field(factory=dict)
    problems: tuple[AliasProblem, ...] = ()

    def get(self, name: str) -> AliasEntry | None:
        return self.entries.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def raise_for_problems(self) -> None:
        """Raise `AliasError` listing every problem, if there is any."""
        if self.problems:
            raise AliasError(self.problems)


# -- parsing -----------------------------------------------------------------------------


def _lines(text: str) -> Iterator[tuple[int, str]]:
    # Only "\n" ends a line (with an optional "\r" before it): str.splitlines() would also
    # split at form feeds and U+2028, and line numbers would disagree with editors.
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")


def _is_blank_or_comment(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _unquoted(text: str) -> Iterator[tuple[int, str]]:
    """(index, character) of each character outside double quotes, quotes excluded."""
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted:
            yield i, ch


def _split_values(text: str) -> Iterator[str]:
    """The comma-separated items of one line; commas inside double quotes do not count."""
    start = 0
    for i, ch in _unquoted(text):
        if ch == ",":
            yield text[start:i].strip()
            start = i + 1
    yield text[start:].strip()


def _parse_value(item: str, file: str, line: int) -> Target | AliasProblem:
    """One value of an alias or include file, or the problem with it."""

    def problem(message: str) -> AliasProblem:
        return AliasProblem(file=file, line=line, message=message)

    if item[: len(_INCLUDE)].lower() == _INCLUDE:
        path = item[len(_INCLUDE) :].strip()
        if len(path) >= 2 and path[0] == path[-1] == '"':
            path = path[1:-1]
        if not path:
            return problem(":include: without a file name")
        if not path.startswith("/"):
            # Postfix local/include.c refuses relative paths too.
            return problem(f":include: path {path!r} must be absolute")
        return IncludeTarget(path=path, file=file, line=line)
    bare = item.removeprefix('"')
    if bare.startswith("|"):
        return problem(_REFUSED_COMMAND)
    if bare.startswith("/"):
        return problem(_REFUSED_FILE)
    direct = item.startswith("\\")
    if direct:
        item = item[1:]
    elif item.startswith("<") and item.endswith(">"):
        item = item[1:-1].strip()
    if not item:
        return problem("empty address")
    outside = "".join(ch for _, ch in _unquoted(item))
    if any(ch.isspace() for ch in outside):
        return problem(
            f"{item!r}: space outside quotes; separate addresses with commas, "
            "or quote a local part that holds spaces"
        )
    try:
        if "@" in outside:
            if direct:
                return problem(f"{item!r}: '\\' goes before a local name, not an address")
            return AddressTarget(address=parse_address(item))
        # The same checks as a local part of a real address, so every name can be sent.
        address = parse_address(item + "@localhost")
    except AddressError as exc:
        return problem(f"{item!r}: {exc}")
    return LocalTarget(name=address.local_part, direct=direct)


def _parse_values(
    text: str, file: str, line: int, targets: list[Target], problems: list[AliasProblem]
) -> None:
    for item in _split_values(text):
        if item:
            parsed = _parse_value(item, file, line)
            if isinstance(parsed, AliasProblem):
                problems.append(parsed)
            else:
                targets.append(parsed)


def _parse_name(text: str, file: str, line: int) -> tuple[str, str] | AliasProblem:
    """(lower-case name, the rest after ':'), or the problem with the start of an entry."""

    def problem(message: str) -> AliasProblem:
        return AliasProblem(file=file, line=line, message=message)

    if text.startswith('"'):
        chars: list[str] = []
        pos = 1
        while pos < len(text) and text[pos] != '"':
            if text[pos] == "\\" and pos + 1 < len(text):
                pos += 1
            chars.append(text[pos])
            pos += 1
        if pos >= len(text):
            return problem("quoted alias name has no closing '\"'")
        name = "".join(chars)
        rest = text[pos + 1 :].lstrip()
        if not rest.startswith(":"):
            return problem("expected ':' after the quoted alias name")
        rest = rest[1:]
    else:
        colon = text.find(":")
        if colon < 0:
            return problem("expected 'name: value, ...' (no ':' on this line)")
        name = text[:colon].rstrip()
        rest = text[colon + 1 :]
        if any(ch.isspace() for ch in name):
            return problem(f"alias name {name!r} holds a space; put the name in double quotes")
        if "@" in name:
            return problem(
                f"alias name {name!r} has a domain; an alias is a local name and applies "
                "to every domain in 'domains'"
            )
    if not name:
        return problem("empty alias name")
    try:
        Address(local_part=name, domain="localhost")
    except AddressError as exc:
        return problem(f"alias name {name!r}: {exc}")
    return name.lower(), rest


@attrs.define
class _Pending:
    """The entry being read, until the next entry starts."""

    name: str
    line: int
    targets: list[Target] = attrs.field(factory=list)
    refused: bool = False  # a value had a problem, which already said why it is empty


def parse_aliases(text: str, *, source: str) -> AliasTable:
    """Parse an aliases file; `source` names it in problems. Never raises for any text:
    problems are collected in `AliasTable.problems` and the valid entries kept."""
    entries: dict[str, AliasEntry] = {}
    first_seen: dict[str, int] = {}
    problems: list[AliasProblem] = []
    # None after a bad first line: its continuation lines are skipped, as its problem is
    # already reported. `in_entry` tells those apart from lines continuing nothing.
    current: _Pending | None = None
    in_entry = False

    def add_values(values: str, line: int) -> None:
        assert current is not None
        before = len(problems)
        _parse_values(values, source, line, current.targets, problems)
        current.refused = current.refused or len(problems) > before

    def finish() -> None:
        if current is None:
            return
        if current.targets:
            entries[current.name] = AliasEntry(
                name=current.name, targets=tuple(current.targets), file=source, line=current.line
            )
        elif not current.refused:
            problems.append(
                AliasProblem(
                    file=source, line=current.line, message=f"alias {current.name!r} has no value"
                )
            )

    for number, line in _lines(text):
        if _is_blank_or_comment(line):
            continue
        if line[0].isspace():
            if current is not None:
                add_values(line, number)
            elif not in_entry:
                message = "line starts with a space but continues no alias"
                problems.append(AliasProblem(file=source, line=number, message=message))
            continue
        finish()
        current = None
        in_entry = True
        parsed = _parse_name(line, source, number)
        if isinstance(parsed, AliasProblem):
            problems.append(parsed)
            continue
        name, rest = parsed
        if name in first_seen:
            message = (
                f"alias {name!r} is defined twice, at lines {first_seen[name]} and {number}; "
                "the first one is used"
            )
            problems.append(AliasProblem(file=source, line=number, message=message))
            continue
        first_seen[name] = number
        current = _Pending(name=name, line=number)
        add_values(rest, number)
    finish()
    # An empty entry is found only when the next one starts: keep problems in line order.
    problems.sort(key=lambda p: p.line)
    return AliasTable(source=source, entries=entries, problems=tuple(problems))


def parse_include(text: str, *, source: str) -> tuple[tuple[Target, ...], tuple[AliasProblem, ...]]:
    """Parse an ``:include:`` file: values as on the right of an alias, comma- or
    line-separated, with ``#`` comment lines. Returns (targets, problems); never raises."""
    targets: list[Target] = []
    problems: list[AliasProblem] = []
    for number, line in _lines(text):
        if not _is_blank_or_comment(line):
            _parse_values(line, source, number, targets, problems)
    return tuple(targets), tuple(problems)


# -- expansion ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Expansion:
    """Where mail for one recipient goes: `local` mailboxes, `remote` addresses for the
    queue, and the `problems` that kept some of it from going anywhere (to bounce or log).
    Each list is free of duplicates and in the order the aliases name them."""

    local: tuple[MailboxId, ...] = ()
    remote: tuple[Address, ...] = ()
    problems: tuple[str, ...] = ()


ReadInclude = Callable[[str], str]


def _detail_base(local: str, delimiters: str) -> str | None:
    """``alice`` for ``alice+tag``: the part before the first delimiter character found
    (each character of the setting is one, as in Postfix 2.11+), or None."""
    cuts = [i for i in (local.find(d) for d in delimiters) if i > 0]
    return local[: min(cuts)] if cuts else None


class _Expander:
    """One expansion's state: what was found, and what was already expanded."""

    def __init__(
        self,
        table: AliasTable,
        *,
        domains: Collection[str],
        user_exists: Callable[[str], bool],
        recipient_delimiter: str,
        read_include: ReadInclude | None,
        for_delivery: bool,
    ) -> None:
        self.table = table
        self.domains = domains
        self.user_exists = user_exists
        self.delimiter = recipient_delimiter
        self.read_include = read_include
        self.for_delivery = for_delivery
        # dicts as ordered sets: first mention wins, order kept.
        self.local: dict[MailboxId, None] = {}
        self.remote: dict[str, Address] = {}
        self.problems: list[str] = []
        self.expanded: set[str] = set()
        # Only `role_account_problems` runs without a reader and trusts the files.
        self.unread_include = False

    def result(self) -> Expansion:
        return Expansion(
            local=tuple(self.local),
            remote=tuple(self.remote.values()),
            problems=tuple(dict.fromkeys(self.problems)),
        )

    def address(self, address: Address, chain: tuple[str, ...]) -> None:
        if address.domain in self.domains:
            self.recipient(address.local_part.lower(), address.domain, chain)
        else:
            self.remote.setdefault(address.key, address)

    def recipient(self, local: str, domain: str, chain: tuple[str, ...]) -> None:
        """`local` (lower case) at our `domain`: an alias if there is one, else a user."""
        base = _detail_base(local, self.delimiter)
        for name in (local, base):
            if name is None or name not in self.table:
                continue
            node = f"{name}@{domain}"
            if node in chain:
                # Sendmail's and Postfix's rule for an alias that names itself.
                self.user(name, domain, loop=(*chain[chain.index(node) :], node))
            elif node not in self.expanded:
                entry = self.table.entries[name]
                self.targets(entry.targets, domain, (*chain, node))
            return
        self.user(local, domain)

    def user(self, local: str, domain: str, loop: tuple[str, ...] = ()) -> None:
        base = _detail_base(local, self.delimiter)
        if self.user_exists(f"{local}@{domain}"):
            self.local.setdefault(MailboxId(domain=domain, local=local))
        elif base is not None and self.user_exists(f"{base}@{domain}"):
            self.local.setdefault(MailboxId(domain=domain, local=base))
        elif self.for_delivery and (local in ROLE_ACCOUNTS or base in ROLE_ACCOUNTS):
            self.local.setdefault(postmaster_mailbox(self.domains))
        elif loop:
            self.problems.append(f"alias loop {' -> '.join(loop)}, and no user {local}@{domain}")
        else:
            self.problems.append(f"{local}@{domain}: no such user or alias")

    def targets(self, targets: tuple[Target, ...], domain: str, chain: tuple[str, ...]) -> None:
        self.expanded.add(chain[-1])
        if len(chain) > MAX_DEPTH:
            self.problems.append(f"aliases nested deeper than {MAX_DEPTH} at {chain[-1]}")
            return
        for target in targets:
            if isinstance(target, LocalTarget):
                if target.direct:
                    self.user(target.name.lower(), domain)
                else:
                    self.recipient(target.name.lower(), domain, chain)
            elif isinstance(target, AddressTarget):
                self.address(target.address, chain)
            else:
                self.include(target, domain, chain)

    def include(self, target: IncludeTarget, domain: str, chain: tuple[str, ...]) -> None:
        node = f"{_INCLUDE}{target.path}"
        where = f"{target.file}:{target.line}"
        if node in chain:
            loop = " -> ".join((*chain[chain.index(node) :], node))
            self.problems.append(f"{where}: include loop {loop}")
            return
        if node in self.expanded:
            return
        if self.read_include is None:
            if self.for_delivery:
                self.problems.append(f"{where}: cannot read {node}: no include reader given")
            else:
                self.unread_include = True
            return
        try:
            text = self.read_include(target.path)
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.problems.append(f"{where}: cannot read {node}: {reason}")
            self.expanded.add(node)
            return
        targets, problems = parse_include(text, source=target.path)
        self.problems.extend(map(str, problems))
        self.targets(targets, domain, (*chain, node))


def _split_key(address_key: str, domains: Collection[str]) -> tuple[str, str]:
    local, _, domain = address_key.rpartition("@")
    if not domain and domains:
        domain = next(iter(domains))  # the bare <Postmaster> of RFC 5321 §4.1.1.3
    return local.lower(), domain


def expand(
    table: AliasTable,
    address_key: str,
    *,
    domains: Collection[str],
    user_exists: Callable[[str], bool],
    recipient_delimiter: str = "",
    read_include: ReadInclude | None = None,
) -> Expansion:
    """Expand one recipient through `table` (see the module docstring).

    `address_key` is an `Address.key` (``local@domain``, local part in lower case; an
    empty domain is the bare ``Postmaster``, given the first domain). `domains` are our
    canonical domains, the first one holding the postmaster mailbox. `user_exists` takes
    an `Address.key`. `read_include(path)` returns an include file's text and may raise
    OSError or ValueError (reported as problems); without it, includes are problems.
    A recipient outside `domains` comes back as itself, in `remote`."""
    expander = _Expander(
        table,
        domains=domains,
        user_exists=user_exists,
        recipient_delimiter=recipient_delimiter,
        read_include=read_include,
        for_delivery=True,
    )
    local, domain = _split_key(address_key, domains)
    if domain in domains:
        expander.recipient(local, domain, ())
    else:
        try:
            expander.address(Address(local_part=local, domain=domain), ())
        except AddressError as exc:
            expander.problems.append(f"{address_key}: {exc}")
    return expander.result()


def role_account_problems(
    table: AliasTable,
    *,
    domains: Collection[str],
    user_exists: Callable[[str], bool],
    recipient_delimiter: str = "",
    read_include: ReadInclude | None = None,
) -> list[str]:
    """Warnings for ``check-config``: postmaster (RFC 5321 §4.5.1, RFC 2142 §5) and abuse
    (RFC 2142 §4) at each domain must reach a user or an outside address through the
    aliases or by their own user. Mail to one that does not still goes to the postmaster
    mailbox of the first domain, so this is a warning, not an error. Without
    `read_include`, an include file is trusted to resolve."""
    warnings: list[str] = []
    for domain in domains:
        for role in sorted(ROLE_ACCOUNTS, reverse=True):  # postmaster first
            expander = _Expander(
                table,
                domains=domains,
                user_exists=user_exists,
                recipient_delimiter=recipient_delimiter,
                read_include=read_include,
                for_delivery=False,
            )
            expander.recipient(role, domain, ())
            resolved = expander.local or expander.remote or expander.unread_include
            if expander.problems or not resolved:
                reasons = "; ".join(dict.fromkeys(expander.problems)) or "it expands to nothing"
                fallback = postmaster_mailbox(domains)
                warnings.append(
                    f"{role}@{domain} reaches no user ({reasons}); its mail goes to the "
                    f"postmaster mailbox {fallback.local}@{fallback.domain}"
                )
    return warnings
