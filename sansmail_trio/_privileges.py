"""Least privilege: a server started as root gives up root once its ports are bound.

``mail_owner = "sansmail"`` (CONTRACT.md) names the user to run as. `drop_privileges()`
is called by the parent of every server process after it has bound the listeners and
made the self-signed certificate and the SRS key, before it forks: no process of the
server accepts a connection, reads a message or parses a byte from the network as root.

Theory of operation:

* **Who runs.** Started as root with ``mail_owner``: the user, its primary group and its
  supplementary groups (``initgroups``, as login does: a Debian ``ssl-cert`` membership
  is how the user reads ``/etc/ssl/private``) replace root's, in that order (groups
  first: once the uid is not 0 it can no longer change them). The drop is verified: the
  real, effective and saved ids are all the user's, and ``setuid(0)`` must fail. Started
  as root without ``mail_owner``: a warning says so, and the server runs as root, as it
  always did. Started as anyone else: ``mail_owner`` may name that user (nothing to do);
  naming another is refused in one line, since only root could switch.
* **What it owns.** Root made some of data_dir before the drop (the self-signed pair,
  ``srs.key``), and an earlier start without ``mail_owner``, or a CLI command run as root,
  may have made more. Everything under data_dir that is not the user's becomes the
  user's (`claim`), walked with directory descriptors (`os.fwalk`) and changed with
  ``lchown`` relative to them, so a symbolic link anywhere under data_dir, even one
  swapped in during the walk, is changed itself and never followed. A regular file with
  more than one link is left alone and named in a warning: a hard link made by whoever
  held the user's rights (protected_hardlinks off) could otherwise hand them a file
  outside data_dir, such as /etc/shadow, at the next start.
* **What it must still read.** The processes re-read some files after the drop: the
  certificate and key on SIGHUP, the aliases, the relayhost password file, the CA file.
  Each is opened once as the user right after the drop, so a key readable only by root
  fails the start with its name, not the first reload or delivery hours later.

Modes: `serve`, and a command run as root for mail_owner, run with umask 077
(`sansmail_trio._cli`), so what the stores create without an explicit mode (SQLite's
index and journal files) is 0600 and directories 0700, like the files the stores create
with one.
"""

from __future__ import annotations

import grp
import importlib.util
import logging
import os
import pathlib
import pwd
import stat
from collections.abc import Collection

import attrs

from sansmail.config import Config

__all__ = [
    "Account",
    "PrivilegeError",
    "become",
    "claim",
    "drop_privileges",
    "resolve",
    "resolve_uid",
]

_log = logging.getLogger("sansmail.master")


class PrivilegeError(Exception):
    """The server cannot become ``mail_owner``; str() is the one line to log."""


@attrs.frozen
class Account:
    """A user to run as: its name, uid and primary gid."""

    name: str
    uid: int
    gid: int

    @property
    def group(self) -> str:
        """The primary group's name (its number when the group database lacks it)."""
        try:
            return grp.getgrgid(self.gid).gr_name
        except KeyError:
            return str(self.gid)


def resolve(name: str) -> Account:
    """The account of user `name`; `PrivilegeError` when there is none or it is root."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(
            f"mail_owner: no such user {name!r} (create it, e.g. useradd --system "
            f"--home-dir /var/lib/sansmail --shell /usr/sbin/nologin {name})"
        ) from None
    if entry.pw_uid == 0:
        raise PrivilegeError(f"mail_owner: {name!r} is root (uid 0); name an unprivileged user")
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def drop_privileges(config: Config) -> Account | None:
    """Become ``config.mail_owner`` if the process is root (see the module docstring);
    return the account switched to, or None when nothing changed. Raises
    `PrivilegeError` (one line) when the switch is impossible or did not hold."""
    owner = config.mail_owner
    if os.geteuid() != 0:
        if owner is not None and resolve_uid(owner) != os.geteuid():
            raise PrivilegeError(
                f"mail_owner = {owner!r}: only root can switch to another user, and this "
                f"runs as {_name_of(os.geteuid())}: start it as root or as {owner}"
            )
        return None
    if owner is None:
        _log.warning(
            "running as root: set mail_owner in %s to run as an unprivileged user once "
            "the ports are bound",
            config.source_name,
        )
        return None
    account = resolve(owner)
    changed, skipped = claim(config.data_dir, account)
    for path in skipped:
        _log.warning(
            "%s: not given to %s: a file with several hard links (one may be outside "
            "data_dir); check it and chown it yourself",
            path,
            account.name,
        )
    if changed:
        _log.info("data_dir: %d files and directories given to %s", changed, account.name)
    become(account)
    _check_access(config, account)
    _log.info(
        "running as user %s (uid %d), group %s (gid %d)",
        account.name,
        account.uid,
        account.group,
        account.gid,
    )
    return account


def resolve_uid(name: str) -> int:
    """The uid of user `name`; `PrivilegeError` when there is none."""
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise PrivilegeError(f"mail_owner: no such user {name!r}") from None


def claim(
    top: pathlib.Path, account: Account, *, skip: Collection[str] = ()
) -> tuple[int, list[pathlib.Path]]:
    """Give `top` and everything under it but the entries of `top` named in `skip` to
    `account` (user and primary group); return how many entries changed and the
    multiply-linked regular files left alone. Never follows a symbolic link below `top`
    (see the module docstring)."""
    if not top.exists():
        return 0, []
    # data_dir may be a link the administrator made (to /srv/mail, say): what it names
    # is walked. fwalk would yield nothing for a link at the top.
    top = pathlib.Path(os.path.realpath(top))
    changed = 0
    skipped: list[pathlib.Path] = []
    info = os.stat(top)
    if (info.st_uid, info.st_gid) != (account.uid, account.gid):
        os.chown(top, account.uid, account.gid)
        changed += 1
    for folder, dirs, files, dir_fd in os.fwalk(top):
        if folder == os.fspath(top):
            dirs[:] = [name for name in dirs if name not in skip]
        names = [*dirs, *files] if folder != os.fspath(top) else [*dirs, *set(files) - set(skip)]
        for name in names:
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:  # removed meanwhile (a lock, a tmp file)
                continue
            if (info.st_uid, info.st_gid) == (account.uid, account.gid):
                continue
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                skipped.append(pathlib.Path(folder, name))
                continue
            try:
                os.chown(name, account.uid, account.gid, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            changed += 1
    return changed, skipped


def become(account: Account) -> None:
    """Switch this process, for good, to `account` with its groups; verified. Raises
    `PrivilegeError`."""
    # Groups before the uid: afterwards the process may no longer change them.
    try:
        os.initgroups(account.name, account.gid)
        os.setresgid(account.gid, account.gid, account.gid)
        os.setresuid(account.uid, account.uid, account.uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to user {account.name}: {exc.strerror}") from None
    if os.getresuid() != (account.uid,) * 3 or os.getresgid() != (account.gid,) * 3:
        raise PrivilegeError(f"the switch to user {account.name} did not hold")
    if set(os.getgroups()) - set(os.getgrouplist(account.name, account.gid)):
        raise PrivilegeError(f"user {account.name} kept groups of root that are not its own")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError(f"still able to become root after switching to {account.name}")


def _check_access(config: Config, account: Account) -> None:
    """Fail now, naming the file, if the user cannot reach what it will need later."""
    # Modules are imported and data files read lazily, after the drop: code installed
    # where only root may look (pip --user as root, a Python under /root) would fail
    # a process at its first delivery instead.
    for module in ("sansmail", "trio", "os"):
        spec = importlib.util.find_spec(module)
        folder = pathlib.Path(spec.origin if spec and spec.origin else ".").parent
        if not os.access(folder, os.R_OK | os.X_OK):
            raise PrivilegeError(
                f"user {account.name} cannot read the Python code in {folder}: install "
                "sansmail and its Python where every user may read them"
            )
    if not os.access(config.data_dir, os.R_OK | os.W_OK | os.X_OK):
        raise PrivilegeError(
            f"data_dir {config.data_dir}: user {account.name} cannot enter or write it "
            "(is a directory above it closed to that user?)"
        )
    for what, path in (
        ("tls.cert", config.tls.cert),
        ("tls.key", config.tls.key),
        ("aliases", config.aliases),
        ("delivery.relayhost_password_file", config.delivery.relayhost_password_file),
        ("delivery.tls_ca_file", config.delivery.tls_ca_file),
    ):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise PrivilegeError(
                f"{what}: {path}: user {account.name} cannot read it ({exc.strerror}); "
                f"it is read again after the switch (reload, delivery): make it readable "
                f"by {account.name} or one of its groups"
            ) from None


def _name_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
