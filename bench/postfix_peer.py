"""Postfix as a peer of the SMTP bench: a loopback-only instance of its own, run by the bench.

The instance is what ``shared/anchors/setup_postfix.sh`` makes of Debian's Postfix, but
nothing of the system's is used or changed: its own ``main.cf`` and ``master.cf`` in a
temporary folder (``-c DIR``), its own queue and data directories and its own Maildir.
``/etc/postfix/main.cf`` is neither read nor needed: Postfix checks
``alternate_config_directories`` only for set-gid commands run by other users, and the
bench runs ``postfix check`` and ``master`` as root.

* **Listening**: smtpd on ``127.0.0.1:PORT`` only (``inet_interfaces = 127.0.0.1``,
  IPv4 only), no TLS, no reverse lookup of the client.
* **Delivery**: mail for ``example.test`` goes through local(8), via an alias
  (``bench -> /.../Maildir/``), into a Maildir: local writes ``tmp/``, fsyncs the file,
  links it into ``new/``. An alias rather than a Unix user so that no account is added
  to the system; local(8) then delivers as ``default_privs`` (nobody), which owns the
  Maildir. The queue file is fsynced by cleanup(8) before the 250, as always.
* **Nothing leaves the machine**: ``default_transport`` and ``relay_transport`` are
  ``error:``, ``master.cf`` has no smtp or lmtp client service at all, DNS is off.
* **Stock elsewhere**: the same process limits and qmgr concurrency as a fresh Debian
  install (the baseline's), except the per-client connection cap, raised so that 50
  connections from 127.0.0.1 are not throttled.
* **Run**: ``postfix -c DIR check`` creates the queue directories with their owners;
  then the bench starts ``master -c DIR -s`` itself, in the foreground, so that it is the
  bench's child: its process tree is the server's CPU, it dies with the bench
  (PR_SET_PDEATHSIG), and SIGTERM makes it take its children down with it. The log
  goes to a file in the folder through postlogd (no syslog needed).

Postfix writes its own errors only to syslog, or to stderr when that is a terminal: the
commands run here are given a pseudo-terminal so that a failure says why.
"""

from __future__ import annotations

import os
import pty
import pwd
import select
import shutil
import stat
import subprocess
import time
from pathlib import Path

import bench_procs as procs

__all__ = [
    "LDA_CONF",
    "MASTER_CF",
    "PostfixLdaServer",
    "PostfixServer",
    "dovecot_lda_conf",
    "main_cf",
    "master_cf",
    "queue_count",
    "run_with_tty",
]

DOMAIN = "example.test"
ALIAS = "bench"  # the local part of bench_procs.RECIPIENT
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

MAIN_CF = """\
# Written by bench/postfix_peer.py: a loopback-only benchmark instance.
compatibility_level = 3.6
myhostname = bench.{domain}
mydomain = {domain}
myorigin = {domain}
mydestination = {domain}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
# Outbound delivery is impossible: no client service in master.cf, and these say why.
default_transport = error:outbound delivery disabled (benchmark)
relay_transport = error:outbound delivery disabled (benchmark)
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_relay_restrictions = permit_mynetworks reject_unauth_destination
# One client, 50 connections: the default cap (50) would throttle the bench itself.
smtpd_client_connection_count_limit = 1000
queue_directory = {root}/spool
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
alias_maps = texthash:{etc}/aliases
alias_database =
local_recipient_maps = $alias_maps
mailbox_size_limit = 0
message_size_limit = 52428800
biff = no
"""

# Debian's master.cf without the client, TLS and pipe services, and without chroot (which
# would need /etc files copied into the spool and changes nothing measured). The first
# line is the only listener.
MASTER_CF = """\
# Written by bench/postfix_peer.py. service type private unpriv chroot wakeup maxproc command
127.0.0.1:{port} inet n - n - - smtpd
pickup     unix n - n 60    1 pickup
cleanup    unix n - n -     0 cleanup
qmgr       unix n - n 300   1 qmgr
rewrite    unix - - n -     - trivial-rewrite
bounce     unix - - n -     0 bounce
defer      unix - - n -     0 bounce
trace      unix - - n -     0 bounce
verify     unix - - n -     1 verify
flush      unix n - n 1000? 0 flush
proxymap   unix - - n -     - proxymap
proxywrite unix - - n -     1 proxymap
showq      unix n - n -     - showq
error      unix - - n -     - error
retry      unix - - n -     - error
discard    unix - - n -     - discard
local      unix - n n -     - local
anvil      unix - - n -     1 anvil
scache     unix - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


def main_cf(root: Path) -> str:
    """The instance's main.cf: everything under ``root``, mail for example.test."""
    return MAIN_CF.format(domain=DOMAIN, root=root, etc=root / "etc")


def master_cf(port: int) -> str:
    """The instance's master.cf, with smtpd on 127.0.0.1:``port`` only."""
    if not 0 < port < 65536:
        raise ValueError(f"not a port: {port}")
    return MASTER_CF.format(port=port)


def queue_count(spool: Path) -> int:
    """Messages still in the queue: files under the queues a message passes through."""
    total = 0
    for queue in QUEUES:
        for _dirpath, _dirs, files in os.walk(spool / queue):
            total += len(files)
    return total


def run_with_tty(cmd: list[str], timeout: float = 60.0) -> tuple[int, str]:
    """Run ``cmd`` with a pseudo-terminal as stdout and stderr; (exit status, output).

    Postfix commands log to syslog unless stderr is a terminal; there is no syslog here.
    """
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    finally:
        os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([leader], [], [], left)[0]:
                proc.kill()
                chunks.append(b"\n(timed out)")
                break
            try:
                data = os.read(leader, 4096)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(leader)
        proc.wait()
    return proc.returncode, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def _daemon_directory() -> Path:
    # Debian's location; `postconf -d` would say the same, but reads the system main.cf.
    return Path("/usr/lib/postfix/sbin")


class PostfixServer(procs.BenchServer):
    """A Postfix instance of its own: smtpd -> cleanup -> qmgr -> local -> Maildir."""

    name = "postfix"

    @property
    def etc(self) -> Path:
        return self.workdir / "etc"

    @property
    def maildir(self) -> Path:
        return self.workdir / "Maildir"

    @property
    def spool(self) -> Path:
        return self.workdir / "spool"

    @property
    def maillog(self) -> Path:
        return self.workdir / "maillog"

    @classmethod
    def unavailable(cls) -> str | None:
        if shutil.which("postfix") is None and not Path("/usr/sbin/postfix").exists():
            return "Postfix is not installed (see bench/README.md, 'Installing the peers')"
        if not (_daemon_directory() / "master").exists():
            return f"no Postfix master in {_daemon_directory()}"
        if os.geteuid() != 0:
            return "Postfix's master must run as root"
        for user in ("postfix", "nobody"):
            try:
                pwd.getpwnam(user)
            except KeyError:
                return f"no {user!r} user"
        return None

    def prepare(self) -> None:
        for sub in ("etc", "spool", "data"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        nobody = pwd.getpwnam("nobody")
        for sub in ("", "new", "cur", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
            os.chown(self.maildir / sub, nobody.pw_uid, nobody.pw_gid)
        shutil.chown(self.workdir / "data", "postfix")
        # The daemons that drop privileges read main.cf and the aliases as postfix, and
        # local delivers as nobody: the folders on the way must let them through.
        for directory in (self.workdir, self.etc):
            directory.chmod(0o755)
        _require_traversable(self.maildir)
        (self.etc / "main.cf").write_text(main_cf(self.workdir))
        (self.etc / "master.cf").write_text(master_cf(self.port))
        (self.etc / "aliases").write_text(f"{ALIAS} {self.alias_target()}\n")
        status, output = run_with_tty(["postfix", "-c", str(self.etc), "check"])
        if status != 0:
            raise procs.ServerError(f"postfix check failed ({status}):\n{output}")

    def alias_target(self) -> str:
        """Where local(8) sends the bench's recipient: the Maildir (a trailing slash)."""
        return f"{self.maildir}/"

    def command(self) -> list[str]:
        return [str(_daemon_directory() / "master"), "-c", str(self.etc), "-s"]

    def settle(self, timeout: float) -> str | None:
        """Wait until the queue is empty: delivery and its bookkeeping are part of the cost."""
        deadline = time.monotonic() + timeout
        while (left := queue_count(self.spool)) and time.monotonic() < deadline:
            time.sleep(0.01)
        if left == 0:
            return None
        deferred = sum(len(files) for _, _, files in os.walk(self.spool / "deferred"))
        return f"{left} message(s) still queued ({deferred} deferred); see {self.maillog}"

    def log_tail(self, lines: int = 30) -> str:
        own = super().log_tail(lines)
        try:
            tail = self.maillog.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return own
        return own + "\n" + "\n".join(f"    | {line}" for line in tail)


def _require_traversable(path: Path) -> None:
    """Fail early, and say where, if a folder above ``path`` keeps other users out."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise procs.ServerError(
                f"{parent} is mode {stat.filemode(mode)}: Postfix's delivery agent runs as "
                "nobody and cannot reach the Maildir below it (chmod o+x, or --tmpdir)"
            )


# --- Postfix handing mail to Dovecot's LDA, Sieve included: the Sieve bench's peer ---------

LDA = Path("/usr/lib/dovecot/dovecot-lda")
SIEVE_PLUGIN = Path("/usr/lib/dovecot/modules/lib90_sieve_plugin.so")

LDA_CONF = """\
# Written by bench/postfix_peer.py: Dovecot's LDA for the Postfix benchmark instance.
# No Dovecot daemon runs: local(8) starts the LDA for each message, which reads this file,
# runs the user's active Sieve script (Pigeonhole) and stores into the Maildir itself.
# There is no userdb lookup (no -d), so the paths are absolute instead of ~/.
instance_name = dovecot-lda-{name}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/lda.log
mail_home = {home}
mail_location = maildir:{home}/Maildir
protocol lda {{
  mail_plugins = $mail_plugins sieve
}}
plugin {{
  sieve = file:{home}/sieve;active={home}/.dovecot.sieve
}}
"""

# The mailbox_command a Postfix + Dovecot site sets (Dovecot's LDA documentation), as a
# script that the bench's alias pipes to: the instance has no Unix account to deliver to,
# which mailbox_command needs. local(8) exports SENDER and RECIPIENT to either.
DELIVER = """\
#!/bin/sh
# Written by bench/postfix_peer.py: mailbox_command = {lda} -f "$SENDER" -a "$RECIPIENT"
exec {lda} -c {conf} -f "$SENDER" -a "$RECIPIENT"
"""


def dovecot_lda_conf(root: Path, home: Path) -> str:
    """The LDA's dovecot.conf: its state under ``root``, the mailbox and scripts in ``home``."""
    return LDA_CONF.format(name=root.parent.name, root=root, home=home)


class PostfixLdaServer(PostfixServer):
    """Postfix whose local(8) pipes the bench's mail to Dovecot's LDA with Pigeonhole Sieve.

    smtpd -> cleanup -> qmgr -> local -> ``/bin/sh`` -> ``dovecot-lda`` -> Sieve -> Maildir,
    every process a descendant of Postfix's master, so that the process tree's CPU is the
    whole delivery. Scripts live as Pigeonhole keeps them: ``home/sieve/NAME.sieve`` and
    the active one the symlink ``home/.dovecot.sieve`` (its compiled form beside it).
    """

    name = "postfix-lda"

    @property
    def home(self) -> Path:
        return self.workdir / "home"

    @property
    def maildir(self) -> Path:
        return self.home / "Maildir"

    @property
    def dovecot_dir(self) -> Path:
        return self.workdir / "dovecot"

    @classmethod
    def unavailable(cls) -> str | None:
        why = super().unavailable()
        if why is not None:
            return why
        if not LDA.exists():
            return f"no Dovecot LDA at {LDA} (Debian's dovecot-core)"
        if not SIEVE_PLUGIN.exists():
            return f"no Pigeonhole Sieve plugin at {SIEVE_PLUGIN} (Debian's dovecot-sieve)"
        return None

    def alias_target(self) -> str:
        return f"|{self.etc / 'deliver'}"

    def prepare(self) -> None:
        nobody = pwd.getpwnam("nobody")
        # The LDA runs as nobody (local(8)'s default_privs for a root-owned alias file): it
        # writes the Maildir, the compiled script beside the active link, and its log.
        for sub in (self.home, self.home / "sieve", self.dovecot_dir):
            sub.mkdir(parents=True, exist_ok=True)
            os.chown(sub, nobody.pw_uid, nobody.pw_gid)
        log = self.dovecot_dir / "lda.log"
        log.touch()
        os.chown(log, nobody.pw_uid, nobody.pw_gid)
        self.etc.mkdir(parents=True, exist_ok=True)
        conf = self.etc / "dovecot-lda.conf"
        conf.write_text(dovecot_lda_conf(self.dovecot_dir, self.home))
        conf.chmod(0o644)
        deliver = self.etc / "deliver"
        deliver.write_text(DELIVER.format(lda=LDA, conf=conf))
        deliver.chmod(0o755)
        super().prepare()
        done = subprocess.run(
            ["doveconf", "-c", str(conf), "-n"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise procs.ServerError(f"doveconf refused the LDA config:\n{done.stderr.strip()}")

    def folder(self, name: str) -> Path:
        """A folder's Maildir (Maildir++: ``.NAME`` in the INBOX's); INBOX for ``"INBOX"``."""
        return self.maildir if name == "INBOX" else self.maildir / f".{name}"

    def create_folder(self, name: str) -> None:
        nobody = pwd.getpwnam("nobody")
        for sub in ("", "new", "cur", "tmp"):
            (self.folder(name) / sub).mkdir(parents=True, exist_ok=True)
            os.chown(self.folder(name) / sub, nobody.pw_uid, nobody.pw_gid)

    def put_script(self, name: str, text: bytes) -> None:
        path = self.home / "sieve" / f"{name}.sieve"
        path.write_bytes(text)
        nobody = pwd.getpwnam("nobody")
        os.chown(path, nobody.pw_uid, nobody.pw_gid)

    def activate(self, name: str | None) -> None:
        """Make ``name`` the active script (None: none), as ManageSieve's SETACTIVE does."""
        link = self.home / ".dovecot.sieve"
        if name is None:
            link.unlink(missing_ok=True)
            return
        script = self.home / "sieve" / f"{name}.sieve"
        # Pigeonhole recompiles when the script is newer than .dovecot.svbin: touch it, so
        # that a switch back to a script compiled before is never served the other's binary.
        os.utime(script)
        tmp = self.home / ".dovecot.sieve.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(f"sieve/{name}.sieve")
        os.rename(tmp, link)

    def log_tail(self, lines: int = 30) -> str:
        own = super().log_tail(lines)
        try:
            tail = (self.dovecot_dir / "lda.log").read_text(errors="replace").splitlines()
        except OSError:
            return own
        return own + "\n" + "\n".join(f"    | {line}" for line in tail[-lines:])
