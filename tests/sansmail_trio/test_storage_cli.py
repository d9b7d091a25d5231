"""``sansmail-trio storage migrate|import|export`` against a real PostgreSQL (the
``pg_cluster`` fixtures): what each prints, and the one line it gives for a
configuration that names no usable database."""

from __future__ import annotations

import datetime
import imaplib
import os
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest
from argon2 import PasswordHasher
from pgcluster import Cluster
from two_nodes import Node

from sansmail.mail.address import MailboxId, parse_address
from sansmail.storage.maildir import FlagMode, MailAccount, MaildirImapStore
from sansmail.storage.pg import SCHEMA_VERSION, Database, schema_version
from sansmail.storage.pg._imapstore import PgImapStore
from sansmail.storage.users import UserStore
from sansmail_trio._cli import main

PROG = "sansmail-trio"
_FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def _config(tmp_path: pathlib.Path, storage: str) -> pathlib.Path:
    path = tmp_path / "sansmail.toml"
    path.write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        f"[listen]\n[storage]\n{storage}\n"
    )
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def test_migrate_a_new_database_then_again(
    pg_cluster: Cluster, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pg_cluster.database() as dsn:
        conf = str(_config(tmp_path, f'backend = "postgresql"\ndsn = "{dsn}"'))
        assert _run(capsys, "storage", "migrate", "--config", conf) == (
            0,
            f"schema version 0 -> {SCHEMA_VERSION}\n",
            "",
        )
        assert _run(capsys, "storage", "migrate", "--config", conf) == (
            0,
            f"already at version {SCHEMA_VERSION}\n",
            "",
        )
        db = Database(dsn)
        try:
            assert schema_version(db) == SCHEMA_VERSION
        finally:
            db.close()


def test_migrate_refuses_the_maildir_backend(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _config(tmp_path, 'backend = "maildir"')
    status, out, err = _run(capsys, "storage", "migrate", "--config", str(conf))
    assert (status, out) == (1, "")
    assert err.splitlines() == [
        f'{PROG}: storage migrate: [storage] backend is "maildir" in {conf}: these commands'
        ' work on a PostgreSQL database; set backend = "postgresql" and dsn = "postgresql://..."'
    ]


def test_migrate_an_unreachable_database_is_one_line(
    pg_cluster: Cluster, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A port nobody listens on (the cluster's own, plus one, is free in practice; a
    # listener there would still refuse this database name).
    dsn = "postgresql://sansmail@127.0.0.1:1/nowhere?connect_timeout=2"
    conf = _config(tmp_path, f'backend = "postgresql"\ndsn = "{dsn}"')
    status, out, err = _run(capsys, "storage", "migrate", "--config", str(conf))
    assert (status, out) == (1, "")
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{PROG}: storage migrate: cannot connect to the database: ")


def test_migrate_without_psycopg_says_what_to_install(
    pg_dsn: str,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(sys.modules):
        if name == "psycopg" or name.startswith(("psycopg.", "sansmail.storage.pg")):
            monkeypatch.delitem(sys.modules, name)
    # None in sys.modules makes the import fail, as when the package is not installed.
    monkeypatch.setitem(sys.modules, "psycopg", None)  # type: ignore[arg-type]
    conf = _config(tmp_path, f'backend = "postgresql"\ndsn = "{pg_dsn}"')
    status, out, err = _run(capsys, "storage", "migrate", "--config", str(conf))
    assert (status, out) == (1, "")
    assert err.splitlines() == [
        f"{PROG}: storage migrate: PostgreSQL support is not installed:"
        " install sansmail[postgresql] (psycopg)"
    ]


# --- import and export, end to end -----------------------------------------------------


def _mailbox_view(account: MailAccount) -> dict[str, Any]:
    """Folder -> (UIDVALIDITY, UIDNEXT, [(UID, flags, INTERNALDATE, content)]), and the
    subscriptions: what an IMAP client caches by."""
    try:
        out: dict[str, Any] = {}
        for info in account.list_folders():
            if not info.exists:
                out[info.name] = info.subscribed
                continue
            view = account.select(info.name, readonly=True)
            contents = dict(view.contents(list(view.uids)))
            out[info.name] = (
                info.subscribed,
                view.uidvalidity,
                view.uidnext,
                [(m.uid, m.flags, m.internaldate, contents[m.uid]) for m in view.messages],
            )
            view.close()
        return out
    finally:
        account.close()


def _source(data: pathlib.Path) -> MailboxId:
    mailbox = MailboxId(domain="example.test", local="alice")
    account = MaildirImapStore(data, hostname="mx.example.test").account(mailbox)
    account.create("Lists/Python")
    for n in range(6):
        when = datetime.datetime(2024, 5, 1 + n, 9, 30, tzinfo=datetime.timezone(
            datetime.timedelta(hours=n - 2)))  # fmt: skip
        flags = ["\\Seen", "NonJunk"] if n % 2 else ["\\Flagged"]
        account.append("INBOX" if n < 4 else "Lists/Python", b"Subject: %d\r\n\r\nhi\r\n" % n,
                       flags, when)  # fmt: skip
    view = account.select("INBOX")
    view.store_flags([2], ["\\Deleted"], FlagMode.ADD)
    view.expunge()
    view.close()
    account.close()
    return mailbox


def _cli(cwd: pathlib.Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # The checkout under test, whatever the installed package's path says.
    root = str(pathlib.Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "sansmail_trio", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_import_then_export_from_the_command_line(pg_dsn: str, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "old"
    mailbox = _source(source)
    before = _mailbox_view(MaildirImapStore(source, hostname="mx.example.test").account(mailbox))
    conf = str(_config(tmp_path, f'backend = "postgresql"\ndsn = "{pg_dsn}"'))

    done = _cli(tmp_path, "storage", "import", "--from", "maildir", str(source), "--config", conf)
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert "alice@example.test INBOX: 3 messages, UIDVALIDITY " in lines[0]
    assert "alice@example.test Lists/Python: 2 messages, UIDVALIDITY " in done.stdout
    assert lines[-1].startswith(
        "imported 0 users, 0 Sieve scripts, 1 mailbox, 7 folders, 5 messages ("
    )
    assert lines[-1].endswith(f" octets) from {source}")
    db = Database(pg_dsn)
    try:
        assert _mailbox_view(PgImapStore(db, hostname="mx.example.test").account(mailbox)) == before
    finally:
        db.close()

    # Again: INBOX holds messages now, so nothing is written.
    again = _cli(tmp_path, "storage", "import", "--from", "maildir", str(source), "--config", conf)
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr.splitlines() == [
        f"{PROG}: storage import: 2 folders to import already hold messages in the database"
        " (alice@example.test INBOX, alice@example.test Lists/Python): nothing imported"
    ]

    target = tmp_path / "new"
    done = _cli(tmp_path, "storage", "export", "--to", "maildir", str(target), "--config", conf)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[-1].startswith(
        "exported 0 users, 0 Sieve scripts, 1 mailbox, 7 folders, 5 messages ("
    )
    assert (
        _mailbox_view(MaildirImapStore(target, hostname="mx.example.test").account(mailbox))
        == before
    )

    again = _cli(tmp_path, "storage", "export", "--to", "maildir", str(target), "--config", conf)
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr.splitlines() == [
        f"{PROG}: storage export: {target}/mail/example.test/alice exists and is not empty:"
        " nothing exported"
    ]


def test_only_maildir_is_a_kind(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = str(_config(tmp_path, 'backend = "postgresql"\ndsn = "postgresql://x@127.0.0.1/y"'))
    status, out, err = _run(capsys, "storage", "import", "--from", "mbox", "x", "--config", conf)
    assert (status, out) == (1, "")
    assert err.splitlines() == [
        f"{PROG}: storage import: --from mbox: the only kind is maildir: --from maildir DIR"
    ]


def test_import_of_a_directory_without_mail(
    pg_dsn: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = str(_config(tmp_path, f'backend = "postgresql"\ndsn = "{pg_dsn}"'))
    empty = tmp_path / "empty"
    empty.mkdir()
    status, out, err = _run(
        capsys, "storage", "import", "--from", "maildir", str(empty), "--config", conf
    )
    assert (status, out) == (1, "")
    assert err.splitlines() == [
        f"{PROG}: storage import: {empty}: neither mail/ nor users.json: not a sansmail data"
        " directory"
    ]


def test_a_node_serves_the_imported_mailbox_to_imaplib(pg_dsn: str, tmp_path: pathlib.Path) -> None:
    """The import as a client sees it: a `serve` on the database answers imaplib's SELECT
    and UID FETCH with the Maildir's UIDVALIDITY, UIDs, flags, INTERNALDATEs (zones
    too) and contents, and the password of users.json logs in."""
    source = tmp_path / "old"
    mailbox = _source(source)
    UserStore(source / "users.json", hasher=_FAST).add(
        parse_address("alice@example.test"), "sesame"
    )
    before = _mailbox_view(MaildirImapStore(source, hostname="mx.example.test").account(mailbox))
    conf = str(_config(tmp_path, f'backend = "postgresql"\ndsn = "{pg_dsn}"'))
    done = _cli(tmp_path, "storage", "import", "--from", "maildir", str(source), "--config", conf)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("alice@example.test INBOX: 3 messages")
    node = Node("a", tmp_path / "node", "127.0.0.1", pg_dsn, sink_port=9)
    node.start()
    try:
        client = imaplib.IMAP4(node.host, node.port("imap"), timeout=60)
        try:
            client.login("alice@example.test", "sesame")
            for name in ("INBOX", "Lists/Python"):
                _subscribed, uidvalidity, uidnext, messages = before[name]
                status, _ = client.select(f'"{name}"', readonly=True)
                assert status == "OK"
                assert client.response("UIDVALIDITY")[1] == [str(uidvalidity).encode()]
                assert client.response("UIDNEXT")[1] == [str(uidnext).encode()]
                # The zone too: datetimes in different zones compare equal.
                assert _fetch(client) == [
                    (uid, flags, when, when.utcoffset(), content)
                    for uid, flags, when, content in messages
                ]
        finally:
            client.logout()
    finally:
        node.terminate()
        node.stop()


def _fetch(client: imaplib.IMAP4) -> list[tuple[Any, ...]]:
    """UID, FLAGS, INTERNALDATE and its zone, and content of every message, by UID."""
    status, data = client.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
    assert status == "OK"
    found = []
    for item in data:
        if not isinstance(item, tuple):
            continue  # the closing ")" of a response with a literal
        head, content = item
        uid = re.search(rb"UID (\d+)", head)
        flags = re.search(rb"FLAGS \(([^)]*)\)", head)
        when = re.search(rb'INTERNALDATE "([^"]+)"', head)
        assert uid, head
        assert flags, head
        assert when, head
        date = datetime.datetime.strptime(when[1].decode().strip(), "%d-%b-%Y %H:%M:%S %z")
        found.append(
            (
                int(uid[1]),
                frozenset(flags[1].decode().split()),
                date,
                date.utcoffset(),
                content,
            )
        )
    return sorted(found)


def test_import_into_a_database_never_migrated_says_to_migrate(
    pg_cluster: Cluster, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "old"
    _source(source)
    with pg_cluster.database() as dsn:
        conf = str(_config(tmp_path, f'backend = "postgresql"\ndsn = "{dsn}"'))
        status, out, err = _run(
            capsys, "storage", "import", "--from", "maildir", str(source), "--config", conf
        )
    assert (status, out) == (1, "")
    assert err.splitlines() == [
        f"{PROG}: storage import: the database holds schema version 0, this sansmail needs"
        f" {SCHEMA_VERSION}: run `sansmail-trio storage migrate`"
    ]


@pytest.mark.parametrize("command", ["migrate", "export", "import"])
def test_a_dsn_libpq_cannot_parse_is_one_line_without_the_password(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    # The configuration takes it (a URI), libpq does not (a bad %-escape): before, a
    # psycopg traceback ending in 'invalid percent-encoded token: "s3cr%zzet"'.
    dsn = "postgresql://sansmail:s3cr%zzet@127.0.0.1:1/db"
    conf = _config(tmp_path, f'backend = "postgresql"\ndsn = "{dsn}"')
    where = {"migrate": [], "export": ["--to", "maildir"], "import": ["--from", "maildir"]}
    extra = [*where[command], str(tmp_path / "data")] if where[command] else []
    status, out, err = _run(capsys, "storage", command, *extra, "--config", str(conf))
    assert (status, out) == (1, "")
    assert len(err.splitlines()) == 1
    assert "s3cr" not in err
    assert "dsn is not a valid" in err
