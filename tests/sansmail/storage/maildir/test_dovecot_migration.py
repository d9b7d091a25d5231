"""Moving from Dovecot: a Maildir that Debian's Dovecot 2.3 itself filled (over IMAP, with
imaplib, through its ``imap`` process on a pipe: no network, no daemon), then opened by
sansmail, shows every folder with the UIDVALIDITY, UIDs, UIDNEXT and flags (keywords
included) that Dovecot's IMAP reported, so clients keep their caches."""

from __future__ import annotations

import grp
import imaplib
import os
import pathlib
import pwd
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from sansmail.storage.maildir import MaildirAccount
from sansmail.storage.maildir._imapmaildir import Namer

DOVECOT = pathlib.Path("/usr/sbin/dovecot")
IMAP = pathlib.Path("/usr/lib/dovecot/imap")

pytestmark = pytest.mark.skipif(
    not (DOVECOT.exists() and IMAP.exists()),
    reason="needs Debian's Dovecot (apt-get install dovecot-imapd): /usr/sbin/dovecot and"
    " /usr/lib/dovecot/imap are not installed here",
)


def message(n: int) -> bytes:
    return b"From: a@example.org\r\nSubject: message %d\r\nX-Id: %d\r\n\r\nbody %d\r\n" % (n, n, n)


class Dovecot:
    """Dovecot's imap process for one user whose Maildir is `home/Maildir`, run on a pipe
    (``imaplib.IMAP4_stream``), pre-authenticated as Dovecot runs it after a login."""

    def __init__(self, home: pathlib.Path) -> None:
        self.home = home
        self.maildir = home / "Maildir"
        if os.getuid() == 0:
            # Dovecot gives no mail access as root: its processes become nobody.
            user, group = "nobody", grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
        else:
            user = pwd.getpwuid(os.getuid()).pw_name
            group = grp.getgrgid(os.getgid()).gr_name
        run = home.parent / "dovecot-run"
        run.mkdir()
        self.config = home.parent / "dovecot.conf"
        self.config.write_text(
            f"base_dir = {run}\n"
            f"state_dir = {run}\n"
            f"log_path = {home.parent / 'dovecot.log'}\n"
            "protocols = imap\n"
            "ssl = no\n"
            f"mail_location = maildir:{self.maildir}\n"
            f"mail_uid = {user}\nmail_gid = {group}\n"
            "first_valid_uid = 1\nfirst_valid_gid = 1\n"
        )
        if os.getuid() == 0:
            entry = pwd.getpwnam(user)
            for path in (home, run):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def connect(self) -> imaplib.IMAP4_stream:
        command = (
            f"env -i USER=migrating HOME={shlex.quote(str(self.home))}"
            f" {IMAP} -c {shlex.quote(str(self.config))}"
        )
        return imaplib.IMAP4_stream(command)


def ok(answer: tuple[str, list[object]]) -> list[object]:
    typ, data = answer
    assert typ == "OK", data
    return data


def folder_state(client: imaplib.IMAP4, name: str) -> tuple[int, int, dict[int, set[str]]]:
    """(UIDVALIDITY, UIDNEXT, UID -> flags) as an IMAP client reads them."""
    ok(client.select(name))
    uidvalidity = int(client.untagged_responses["UIDVALIDITY"][0])
    uidnext = int(client.untagged_responses["UIDNEXT"][0])
    flags: dict[int, set[str]] = {}
    for line in ok(client.uid("FETCH", "1:*", "(UID FLAGS)")):
        if line is None:
            continue
        assert isinstance(line, bytes)
        uid = int(re.search(rb"UID (\d+)", line)[1])  # type: ignore[index]
        listed = re.search(rb"FLAGS \(([^)]*)\)", line)[1].decode().split()  # type: ignore[index]
        flags[uid] = {f for f in listed if f != "\\Recent"}
    ok(client.close())
    return uidvalidity, uidnext, flags


@pytest.fixture
def place() -> Iterator[pathlib.Path]:
    # Not under tmp_path: as root, pytest's directory is 0700 and Dovecot's processes
    # run as nobody, who must be able to reach the Maildir.
    top = pathlib.Path(tempfile.mkdtemp(prefix="sansmail-dovecot-"))
    top.chmod(0o711)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def test_a_maildir_dovecot_filled_keeps_its_uids_under_sansmail(place: pathlib.Path) -> None:
    home = place / "home"
    home.mkdir()
    dovecot = Dovecot(home)
    client = dovecot.connect()
    ok(client.create("Archive"))
    inbox_flags = ["(\\Seen)", "($Work)", "(\\Flagged \\Seen)", "()", "($Work $Later)", "()"]
    for n, flags in enumerate(inbox_flags, start=1):
        ok(client.append("INBOX", flags, None, message(n)))
    for n in (7, 8, 9):
        ok(client.append("Archive", "($Later)" if n == 8 else "()", None, message(n)))
    # Gaps: the second and the last message of INBOX go (EXPUNGE), so UIDs and UIDNEXT
    # are not simply 1..n+1.
    ok(client.select("INBOX"))
    ok(client.uid("STORE", "2,6", "+FLAGS.SILENT", "(\\Deleted)"))
    ok(client.expunge())
    ok(client.close())
    expected = {name: folder_state(client, name) for name in ("INBOX", "Archive")}
    client.logout()
    assert sorted(expected["INBOX"][2]) == [1, 3, 4, 5]
    assert expected["INBOX"][1] == 7
    assert (dovecot.maildir / "dovecot-uidlist").exists()

    # A clock far from Dovecot's: a UIDVALIDITY of sansmail's own would differ.
    clock = lambda: 3 * 10**18  # noqa: E731
    account = MaildirAccount(dovecot.maildir, namer=Namer("mx.example.test", clock), clock=clock)
    for name, (uidvalidity, uidnext, flags) in expected.items():
        view = account.select(name)
        assert view.uidvalidity == uidvalidity, name
        assert view.uidnext == uidnext, name
        assert {m.uid: set(m.flags) for m in view.messages} == flags, name
        for m in view.messages:
            content = view.read(m.uid) or b""
            assert b"X-Id: " in content
        # Nothing Dovecot listed is new to sansmail's clients, and a message stored now
        # gets the UID Dovecot's UIDNEXT promised.
        assert view.recent == frozenset()
        assert account.append(name, message(100)).uid == uidnext
        view.close()
    account.close()
