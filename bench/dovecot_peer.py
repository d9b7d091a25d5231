"""Dovecot as a peer of the mailbox bench: a standalone loopback instance, run by the bench.

This is ``shared/anchors/setup_dovecot.sh`` in Python, with nothing of the system's used
or changed: its own ``dovecot.conf`` (``-c``), ``base_dir`` and ``state_dir`` in a
temporary folder, IMAP and POP3 on free ports of 127.0.0.1 (no imaps/pop3s listener, no
TLS, plain-text logins allowed), one user in a passwd-file with a ``{PLAIN}`` password,
``mail_location = maildir:~/Maildir``. Otherwise stock settings, as in the baseline:
no FTS plugin, default fsync policy, a process per IMAP/POP3 session.

The user's mail files belong to ``nobody``: Dovecot refuses to run mail processes as
root, and an unprivileged account that exists everywhere avoids adding one. The bench
starts ``dovecot -F`` itself, in the foreground, so that its process tree is the
server's CPU and it dies with the bench; stopping sweeps its process group.

It is a ``mailbox_bench.MailServer`` so that the mailbox bench's phases (``imap_rep``,
``pop3_rep``) drive it exactly as they drive sansmail.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import bench_procs as procs
import mailbox_bench as mb

__all__ = ["DovecotServer", "dovecot_conf", "passwd_line"]

#: Where Debian's packages put the master's service binaries (imap, pop3, ...).
_SERVICES = Path("/usr/lib/dovecot")

DOVECOT_CONF = """\
# Written by bench/dovecot_peer.py: a loopback-only benchmark instance.
instance_name = {instance}
base_dir = {root}/run
state_dir = {root}/state
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
log_path = {root}/dovecot.log
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""


def dovecot_conf(root: Path, imap_port: int, pop3_port: int) -> str:
    """The instance's dovecot.conf: everything under ``root``, listeners on 127.0.0.1."""
    for port in (imap_port, pop3_port):
        if not 0 < port < 65536:
            raise ValueError(f"not a port: {port}")
    if imap_port == pop3_port:
        raise ValueError("IMAP and POP3 need two ports")
    # The instance name tells `ps` output and the log which bench a process belongs to.
    instance = f"dovecot-bench-{root.name}"
    return DOVECOT_CONF.format(
        instance=instance, root=root, imap_port=imap_port, pop3_port=pop3_port
    )


def passwd_line(user: str, password: str, uid: int, gid: int, home: Path) -> str:
    """One passwd-file entry (user:{PLAIN}password:uid:gid::home::)."""
    for field in (user, password):
        if any(c in field for c in ":\n\r"):
            raise ValueError(f"{field!r}: a passwd-file field cannot hold ':' or a line end")
    return f"{user}:{{PLAIN}}{password}:{uid}:{gid}::{home}::\n"


class DovecotServer(mb.MailServer):
    """``dovecot -F -c <own conf>`` with the mailbox bench's user and password."""

    name = "dovecot"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, processes=1)
        self.log_path = workdir / "dovecot.log"

    @property
    def home(self) -> Path:
        return self.workdir / "home"

    @property
    def inbox(self) -> Path:
        return self.home / "Maildir"

    @property
    def config_path(self) -> Path:
        return self.workdir / "dovecot.conf"

    @staticmethod
    def unavailable() -> str | None:
        """Why Dovecot cannot run here, or None when it can."""
        if shutil.which("dovecot") is None and not Path("/usr/sbin/dovecot").exists():
            return "Dovecot is not installed (see bench/README.md, 'Installing the peers')"
        if os.geteuid() != 0:
            return "Dovecot's master must run as root here (it switches to the mail user)"
        # dovecot-core alone (pulled in by dovecot-sieve, say) has no IMAP or POP3
        # service, and the master would die at start naming the missing binary.
        for service, package in (("imap", "dovecot-imapd"), ("pop3", "dovecot-pop3d")):
            if not (_SERVICES / service).exists():
                return f"no {_SERVICES / service} (Debian's {package} is not installed)"
        for user in ("dovecot", "dovenull", "nobody"):
            try:
                pwd.getpwnam(user)
            except KeyError:
                return f"no {user!r} user (Debian's dovecot-core makes dovecot and dovenull)"
        return None

    def prepare(self) -> None:
        """Write the config and the user; the caller then fills ``inbox`` and calls own()."""
        for sub in ("run", "state"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self.imap_port = procs.free_port()
        self.pop3_port = procs.free_port()
        while self.pop3_port == self.imap_port:
            self.pop3_port = procs.free_port()
        nobody = pwd.getpwnam("nobody")
        users = self.workdir / "users"
        users.write_text(passwd_line(mb.USER, mb.PASSWORD, nobody.pw_uid, nobody.pw_gid, self.home))
        # The auth process runs as dovecot and reads the passwords; nobody else may.
        users.chmod(0o640)
        shutil.chown(users, group="dovecot")
        self.config_path.write_text(dovecot_conf(self.workdir, self.imap_port, self.pop3_port))
        done = subprocess.run(
            ["doveconf", "-c", str(self.config_path), "-n"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise procs.ServerError(f"doveconf refused the config:\n{done.stderr.strip()}")

    def own(self) -> None:
        """Give the mailbox to the mail user; check that it can reach it."""
        nobody = pwd.getpwnam("nobody")
        for dirpath, dirnames, filenames in os.walk(self.home):
            os.chown(dirpath, nobody.pw_uid, nobody.pw_gid)
            for name in dirnames + filenames:
                os.chown(os.path.join(dirpath, name), nobody.pw_uid, nobody.pw_gid)
        for parent in self.home.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                raise procs.ServerError(
                    f"{parent} is mode {stat.filemode(mode)}: Dovecot's mail processes run "
                    "as nobody and cannot reach the mailbox below it (chmod o+x, or --tmpdir)"
                )

    def start(self, timeout: float = 30.0) -> None:
        with open(self.workdir / "dovecot.out", "ab") as out:
            self.proc = subprocess.Popen(
                ["dovecot", "-F", "-c", str(self.config_path)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a group of its own, to sweep at the end
                preexec_fn=procs._die_with_parent,  # the harness is single-threaded
            )
        deadline = time.monotonic() + timeout
        for port, greeting in ((self.imap_port, b"* OK"), (self.pop3_port, b"+OK")):
            while True:
                if self.proc.poll() is not None:
                    raise procs.ServerError(f"dovecot exited at startup:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise procs.ServerError(f"dovecot did not greet within {timeout:.0f} s")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                        if s.recv(512).startswith(greeting):
                            break
                except OSError:
                    pass
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop_process_group(self.proc)
        self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        texts = []
        for path in (self.workdir / "dovecot.out", self.log_path):
            try:
                texts += path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
        return "\n".join(texts) or "(no log)"
