"""Least privilege (sansmail_trio/_privileges.py): started as root, `serve` binds ports
below 1024, then every process runs as mail_owner; what it and the CLI write in data_dir
belongs to that user, files 0600 and folders 0700. These tests need root (they create a
throwaway system user); elsewhere they skip."""

from __future__ import annotations

import contextlib
import fcntl
import imaplib
import logging
import os
import pathlib
import pwd
import secrets
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest
from trio_helpers import FAST_HASHER, wait_until_started

from sansmail.config import Config, load_config
from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore
from sansmail_trio._privileges import Account, PrivilegeError, claim, drop_privileges, resolve

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="needs root and useradd: the privilege drop is root's",
)

MESSAGE = b"Subject: owned\r\n\r\nbody\r\n"
#: Public by nature, so readable by all: the self-signed certificate.
PUBLIC = {"selfsigned-cert.pem"}


@pytest.fixture(scope="module")
def system_user() -> Iterator[Account]:
    """A system user and its group, made for these tests and removed after them."""
    name = f"smt{secrets.token_hex(4)}"
    for _ in range(50):  # useradd fails while another worker holds /etc/passwd's lock
        made = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell",
             "/usr/sbin/nologin", name],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if made.returncode == 0:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"useradd {name}: {made.stderr}")
    try:
        yield resolve(name)
    finally:
        for _ in range(50):
            if subprocess.run(["userdel", name], capture_output=True, check=False).returncode in (
                0,
                6,  # no such user
            ):
                break
            time.sleep(0.1)


@pytest.fixture(scope="module")
def traversable() -> Iterator[None]:
    """Lets other users pass through the folders above the Python installation and the
    checkout for these tests (pyenv puts them under a 0700 /root), then puts every mode
    back. Root only, as these tests are; nothing is made readable, only passable.

    Held under an exclusive lock for the module's life: another xdist worker's module
    using this fixture would otherwise put /root back to 0700 under this one's servers,
    which then fail to import (seen as "No module named 'dkim.util'")."""
    lock = open(_TRAVERSABLE_LOCK, "a")  # noqa: SIM115 (held until the fixture ends)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield from _traversable()
    finally:
        lock.close()


_TRAVERSABLE_LOCK = "/tmp/sansmail-tests-traversable.lock"


def _traversable() -> Iterator[None]:
    changed: list[tuple[pathlib.Path, int]] = []
    places = {pathlib.Path(sys.executable).resolve(), pathlib.Path(__file__).resolve()}
    places |= {pathlib.Path(p).resolve() for p in sys.path if p}
    for place in places:
        for folder in reversed(place.parents):
            mode = folder.stat().st_mode
            if folder.is_dir() and not mode & stat.S_IXOTH and folder not in dict(changed):
                changed.append((folder, stat.S_IMODE(mode)))
                folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
    try:
        yield
    finally:
        for folder, mode in changed:
            folder.chmod(mode)


@pytest.fixture(scope="module")
def owner(system_user: Account, traversable: None) -> Account:
    """`system_user`, when it can run the server: the Python installation must be
    readable by an unprivileged user (`traversable` opens the way through a 0700 /root)."""
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import publicsuffixlist, sansmail_trio._serve; "
             "publicsuffixlist.PublicSuffixList()"],
            user=system_user.uid,
            group=system_user.gid,
            extra_groups=[],
            cwd="/",
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        failure = probe.stderr.strip().splitlines()[-1] if probe.returncode else ""
    except OSError as exc:
        failure = str(exc)
    if failure:
        pytest.skip(f"an unprivileged user cannot run {sys.executable} and its packages: {failure}")
    return system_user


@pytest.fixture
def base() -> Iterator[pathlib.Path]:
    """A folder the throwaway user can enter (pytest's tmp_path is below a 0700 one)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="sansmail-priv-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _free_privileged_ports(count: int) -> list[int]:
    """Ports below 1024 free on 127.0.0.1 now (900-1000, a range no daemon here uses)."""
    found: list[int] = []
    for port in range(900, 1000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    pytest.skip("no free ports in 900-1000")


def _config(base: pathlib.Path, owner: str | None, listen: dict[str, str], extra: str = "") -> None:
    lines = [
        'hostname = "mx.example.test"',
        'domains = ["example.test"]',
        'data_dir = "data"',
        "processes = 2",
    ]
    if owner is not None:
        lines.append(f'mail_owner = "{owner}"')
    lines.append(extra)
    lines.append("[listen]")
    lines += [f'{service} = "{address}"' for service, address in listen.items()]
    lines += ["[dns]", 'nameservers = ["127.0.0.1:9"]']
    (base / "sansmail.toml").write_text("\n".join(lines) + "\n")


def _serve(base: pathlib.Path, **popen: object) -> tuple[subprocess.Popen[bytes], pathlib.Path]:
    script = shutil.which("sansmail-trio")
    assert script is not None
    log = base / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([script, "serve"], cwd=base, stderr=out, **popen)  # type: ignore[call-overload]
    return proc, log


def _ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid and Groups of a process as /proc shows them (real, effective, saved, fs)
    and its effective capabilities as a number."""
    found: dict[str, list[int]] = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            found[key] = [int(v) for v in value.split()]
        elif key == "CapEff":
            found[key] = [int(value, 16)]
    return found


def _children(pid: int) -> list[int]:
    return [int(p) for p in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _walk(top: pathlib.Path) -> Iterator[tuple[pathlib.Path, os.stat_result]]:
    yield top, top.lstat()
    for folder, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            path = pathlib.Path(folder, name)
            yield path, path.lstat()


def _wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_serve_binds_privileged_ports_then_runs_as_mail_owner(
    owner: Account, base: pathlib.Path
) -> None:
    smtp_port, imap_port = _free_privileged_ports(2)
    _config(
        base,
        owner.name,
        {"smtp": f"127.0.0.1:{smtp_port}", "imap": f"127.0.0.1:{imap_port}", "pop3": "127.0.0.1:0"},
    )
    data = base / "data"
    # As an earlier `user add` run as root before mail_owner was set would leave it.
    data.mkdir(mode=0o700)
    UserStore(data / "users.json", hasher=FAST_HASHER).add(
        parse_address("alice@example.test"), "pw"
    )
    stray = data / "mail" / "example.test" / "old"
    stray.mkdir(parents=True)
    for folder in (stray, stray.parent, stray.parent.parent):
        folder.chmod(0o700)
    (stray / "root-made").write_bytes(b"x")
    (stray / "root-made").chmod(0o600)
    assert (data / "users.json").stat().st_uid == 0
    proc, log = _serve(base)
    try:
        ports = wait_until_started(proc, log, processes=2)
        assert (ports["smtp"], ports["imap"]) == (smtp_port, imap_port)
        processes = [proc.pid, *_children(proc.pid)]
        assert len(processes) == 4  # the parent, the queue runner, two servers
        groups = sorted(os.getgrouplist(owner.name, owner.gid))
        for pid in processes:
            ids = _ids(pid)
            assert ids["Uid"] == [owner.uid] * 4, (pid, ids)
            assert ids["Gid"] == [owner.gid] * 4, (pid, ids)
            assert sorted(ids["Groups"]) == groups, (pid, ids)
            assert ids["CapEff"] == [0], (pid, ids)
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.sendmail("a@example.org", ["alice@example.test"], MESSAGE)
        imap = imaplib.IMAP4("127.0.0.1", imap_port, timeout=10)
        try:
            imap.login("alice@example.test", "pw")
            assert imap.select("INBOX")[1] == [b"1"]
            imap.create("Archive")
            imap.logout()
        finally:
            with contextlib.suppress(OSError):
                imap.shutdown()
        # Relayed: the queue keeps it (no route anywhere here).
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.sendmail("alice@example.test", ["bob@remote.example"], MESSAGE)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    text = log.read_text()
    assert "running as user " + owner.name in text, text
    assert "running as root" not in text
    seen = {path.name for path, _ in _walk(data)}
    # What each part of the server wrote: Maildir, IMAP index, queue, keys, users.
    assert {"users.json", "srs.key", "selfsigned-key.pem", "queue", "new", ".Archive"} <= seen
    assert any(name.endswith((".sqlite", ".db")) or "index" in name for name in seen), seen
    assert len(list((data / "queue").rglob("*"))) >= 1
    for path, info in _walk(data):
        assert (info.st_uid, info.st_gid) == (owner.uid, owner.gid), path
        if stat.S_ISDIR(info.st_mode):
            assert stat.S_IMODE(info.st_mode) == 0o700, path
        elif path.name not in PUBLIC:
            assert stat.S_IMODE(info.st_mode) & 0o077 == 0, (path, oct(info.st_mode))


def test_not_root_and_another_mail_owner_is_refused_in_one_line(
    owner: Account, base: pathlib.Path
) -> None:
    _config(base, "nobody", {"smtp": "127.0.0.1:0"})
    (base / "data").mkdir()
    shutil.chown(base / "data", owner.uid, owner.gid)
    proc, log = _serve(base, user=owner.uid, group=owner.gid, extra_groups=[])
    assert proc.wait(30) == 1
    errors = [line for line in log.read_text().splitlines() if line.strip()]
    assert len(errors) == 1, errors
    assert errors[0] == (
        "sansmail-trio: serve: mail_owner = 'nobody': only root can switch to another "
        "user: start it as root or as nobody"
    )
    assert not (base / "data" / "tls").exists()  # refused before anything was made


def _drop_in_a_child(config: Config) -> str:
    """What `drop_privileges(config)` raises, run in a forked child (the drop is for
    good): "" when it succeeds."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        message = b""
        try:
            drop_privileges(config)
        except PrivilegeError as exc:
            message = str(exc).encode()
        finally:
            os.write(write, message)
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


def _owned_config(base: pathlib.Path, text: str) -> Config:
    (base / "sansmail.toml").write_text('domains = ["example.test"]\n' + text)
    return load_config(base / "sansmail.toml", default_hostname="mx.example.test")


def test_a_data_dir_the_owner_cannot_reach_fails_the_start(
    owner: Account, base: pathlib.Path
) -> None:
    closed = base / "closed"
    (closed / "data").mkdir(mode=0o700, parents=True)
    closed.chmod(0o700)
    config = _owned_config(base, f'mail_owner = "{owner.name}"\ndata_dir = "{closed}/data"\n')
    assert _drop_in_a_child(config) == (
        f"data_dir {closed}/data: user {owner.name} cannot enter or write it (is a "
        "directory above it closed to that user?)"
    )


def test_an_unreadable_key_fails_the_start_with_its_name(
    owner: Account, base: pathlib.Path
) -> None:
    cert, key = _self_signed_pair(base)
    key.chmod(0o600)  # root's alone: the reload after the drop could not read it
    (base / "data").mkdir()
    config = _owned_config(
        base,
        f'mail_owner = "{owner.name}"\ndata_dir = "data"\n[tls]\ncert = "{cert}"\nkey = "{key}"\n',
    )
    assert _drop_in_a_child(config).startswith(
        f"tls.key: {key}: user {owner.name} cannot read it (Permission denied)"
    )
    key.chmod(0o644)  # (a group the user is in would do too)
    assert _drop_in_a_child(config) == ""


def _self_signed_pair(base: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    from sansmail_trio._tls import ensure_self_signed  # noqa: PLC0415

    cert, key = ensure_self_signed(base / "pki", "mx.example.test")
    (base / "pki").chmod(0o755)
    (base / "pki" / "tls").chmod(0o755)
    return cert, key


def test_root_without_mail_owner_warns(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "sansmail.toml").write_text('domains = ["example.test"]\ndata_dir = "data"\n')
    config = load_config(tmp_path / "sansmail.toml", default_hostname="mx.example.test")
    with caplog.at_level(logging.WARNING, logger="sansmail"):
        assert drop_privileges(config) is None
    [record] = caplog.records
    assert record.getMessage().startswith("running as root: set mail_owner in ")
    assert os.geteuid() == 0


def test_an_unknown_mail_owner_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "sansmail.toml").write_text(
        'domains = ["example.test"]\ndata_dir = "data"\nmail_owner = "no-such-user-x"\n'
    )
    config = load_config(tmp_path / "sansmail.toml", default_hostname="mx.example.test")
    with pytest.raises(PrivilegeError, match="no such user 'no-such-user-x'"):
        drop_privileges(config)
    assert os.geteuid() == 0


def test_claim_never_follows_links(system_user: Account, tmp_path: pathlib.Path) -> None:
    owner = system_user
    top = tmp_path / "data"
    (top / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.write_bytes(b"root's")
    (top / "sub" / "link").symlink_to(outside)
    (top / "sub" / "file").write_bytes(b"x")
    os.link(outside, top / "hardlink")
    changed, skipped = claim(top, owner)
    assert changed == 4  # top, sub, link (itself), file
    assert skipped == [top / "hardlink"]
    assert outside.stat().st_uid == 0
    assert (top / "sub" / "link").lstat().st_uid == owner.uid
    assert (top / "sub" / "file").stat().st_uid == owner.uid
    assert claim(top, owner) == (0, [top / "hardlink"])  # nothing more to do
    # data_dir as a link the administrator made: what it names is walked.
    (top / "sub" / "file").unlink()
    (top / "sub" / "new").write_bytes(b"x")
    link = tmp_path / "data-link"
    link.symlink_to(top)
    assert claim(link, owner) == (1, [top / "hardlink"])
    assert (top / "sub" / "new").stat().st_uid == owner.uid


def test_cli_as_root_writes_what_mail_owner_can_use(owner: Account, base: pathlib.Path) -> None:
    _config(base, owner.name, {"smtp": "127.0.0.1:0"})
    data = base / "data"
    script = shutil.which("sansmail-trio")
    assert script is not None

    def run(*argv: str, stdin: str = "") -> None:
        done = subprocess.run(
            [script, *argv], cwd=base, input=stdin, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr

    # A users.json root made before mail_owner was set is given to the user first.
    data.mkdir(mode=0o700)
    UserStore(data / "users.json", hasher=FAST_HASHER).add(parse_address("old@example.test"), "pw")
    run("user", "add", "alice@example.test", "--password-stdin", stdin="pw\n")
    run("dkim", "keygen", "example.test", "--algorithm", "ed25519")
    run("queue", "flush")
    for path, info in _walk(data):
        assert (info.st_uid, info.st_gid) == (owner.uid, owner.gid), path
        if stat.S_ISDIR(info.st_mode):
            assert stat.S_IMODE(info.st_mode) == 0o700, path
        elif not path.name.endswith(".txt"):  # the DKIM record, for the DNS
            assert stat.S_IMODE(info.st_mode) & 0o077 == 0, (path, oct(info.st_mode))
    assert pwd.getpwuid((data / "dkim" / "example.test").stat().st_uid).pw_name == owner.name
