"""The greylisting check at RCPT: errands that consult the store, the verdicts, the log."""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import attrs
import pytest

from sansmail import smtp
from sansmail.config import AntispamConfig, Config
from sansmail.mail.address import Address
from sansmail.mail.greylist import Decision, GreylistSettings, Triplet
from sansmail.sessions.smtpd import intake_checks
from sansmail.sessions.smtpd._checks import Check, Errand, Inquiring, Stage
from sansmail.sessions.smtpd._greylist import (
    FINDINGS_KEY,
    GreylistCheck,
    greylist_check,
)
from sansmail.sessions.smtpd._transaction import Transaction
from sansmail.storage.greylist import (
    FILE_NAME,
    GreylistStore,
    GreylistStoreError,
    SqliteGreylistStore,
)
from sansmail.storage.pg import Database
from sansmail.storage.pg._greylist import PgGreylistStore

T0 = 1_800_000_000.0
SENDER = Address(local_part="alice", domain="example.org")
RCPT = Address(local_part="Bob", domain="example.net")
OTHER = Address(local_part="carol", domain="example.net")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@attrs.define
class View:
    """A session as a check sees it (`SessionView`)."""

    client_ip: str = "192.0.2.25"
    helo: str = "mail.example.org"
    user: str | None = None
    tls: str | None = None
    transaction: Transaction | None = None
    trusted: bool = False
    client_name: str | None = "mail.example.org"
    findings: dict[str, Any] = attrs.Factory(dict)


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def __call__(self, level: int, text: str) -> None:
        self.lines.append((level, text))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log() -> Log:
    return Log()


@pytest.fixture(params=["maildir", "postgresql"])
def check(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, clock: Clock, log: Log
) -> GreylistCheck:
    """The check on either backend's store: SQLite in data_dir, or the database every
    node shares."""
    store: GreylistStore
    if request.param == "maildir":
        store = SqliteGreylistStore(tmp_path / FILE_NAME, clock=clock)
    else:
        store = PgGreylistStore(request.getfixturevalue("pg_db"), clock=clock)
    return GreylistCheck(store=store, hostname="mx.example.net", log=log)


def rcpt(view: View, check: GreylistCheck, address: Address = RCPT):
    """What the session and the adapter do for one RCPT: inquiries, errands, check."""
    if view.transaction is None:
        view.transaction = Transaction(queue_id="4F2A1B", reverse_path=SENDER)
    tx = view.transaction
    for inquiry in check.inquiries(Stage.RCPT, view, smtp.Rcpt(forward_path=address)):
        assert isinstance(inquiry, Errand)
        assert inquiry.source == "greylist"
        inquiry.run()
    tx.rcpt.append(address)
    verdict = check.check(Stage.RCPT, view)
    if verdict is not None and verdict.reply is not None:
        tx.rcpt.pop()
    elif verdict is not None:
        tx.added_fields.extend(verdict.header_fields)
    return verdict


def test_is_an_inquiring_check(check: GreylistCheck) -> None:
    assert isinstance(check, Inquiring)
    _: Check = check
    assert check.wants_message(View()) is False


def test_first_rcpt_is_greylisted_and_logged(check: GreylistCheck, log: Log) -> None:
    view = View()
    verdict = rcpt(view, check)
    assert verdict is not None
    assert verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (450, "4.7.1")
    assert "<Bob@example.net>: Recipient address rejected: Greylisted" in verdict.reply.text
    assert log.lines == [
        (
            logging.INFO,
            "4F2A1B: greylist: action=greylist, reason=new, client_name=mail.example.org,"
            " client_address=192.0.2.25, sender=alice@example.org, recipient=Bob@example.net",
        )
    ]
    # The decision was taken out of the findings once used.
    assert view.findings[FINDINGS_KEY] == {}


def test_retry_after_the_delay_passes_with_one_x_greylist(
    check: GreylistCheck, clock: Clock, log: Log
) -> None:
    assert rcpt(View(), check).reply is not None
    assert rcpt(View(), check, OTHER).reply is not None
    clock.now += 299
    early = rcpt(View(client_ip="192.0.2.200"), check)  # same /24
    assert early.reply is not None
    assert "try again in 1 second" in early.reply.text
    clock.now += 1
    # The retry: both recipients pass in one transaction, one X-Greylist field for both.
    view = View(client_ip="192.0.2.99")
    first = rcpt(view, check)
    assert first is not None
    assert first.reply is None
    assert [name for name, _ in first.header_fields] == ["X-Greylist"]
    assert first.header_fields[0][1].startswith(
        "delayed 300 seconds by sansmail at mx.example.net;"
    )
    assert rcpt(view, check, OTHER) is None
    assert view.transaction.rcpt == [RCPT, OTHER]
    assert "action=pass, reason=triplet found, delay=300," in log.lines[-1][1]
    # Remembered: no field, no refusal.
    clock.now += 86400
    assert rcpt(View(), check) is None


def test_trusted_clients_are_never_greylisted(check: GreylistCheck, log: Log) -> None:
    view = View(trusted=True)
    view.transaction = Transaction(queue_id="4F2A1B", reverse_path=SENDER)
    assert check.inquiries(Stage.RCPT, view, smtp.Rcpt(forward_path=RCPT)) == ()
    view.transaction.rcpt.append(RCPT)
    assert check.check(Stage.RCPT, view) is None
    assert log.lines == []


def test_other_stages_ask_nothing(check: GreylistCheck) -> None:
    view = View()
    view.transaction = Transaction(queue_id="4F2A1B", reverse_path=SENDER)
    mail = smtp.Mail(reverse_path=SENDER)
    for stage in Stage:
        if stage is not Stage.RCPT:
            assert check.inquiries(stage, view, mail) == ()
            assert check.check(stage, view) is None
    assert check.inquiries(Stage.RCPT, View(), smtp.Rcpt(forward_path=RCPT)) == ()


def test_no_finding_lets_the_recipient_through(check: GreylistCheck) -> None:
    view = View()
    view.transaction = Transaction(queue_id="4F2A1B", reverse_path=SENDER, rcpt=[RCPT])
    assert check.check(Stage.RCPT, view) is None


@attrs.define
class BrokenStore:
    closed: bool = False

    def consult(self, triplet: Triplet, settings: GreylistSettings) -> Decision:
        raise GreylistStoreError("greylist.sqlite: database is locked")

    def close(self) -> None:
        self.closed = True


def test_a_failing_store_lets_mail_through_and_says_so(log: Log) -> None:
    store = BrokenStore()
    check = GreylistCheck(store=store, hostname="mx.example.net", log=log)
    view = View()
    assert rcpt(view, check) is None
    assert view.transaction.rcpt == [RCPT]
    assert log.lines == [
        (
            logging.WARNING,
            "4F2A1B: greylist: action=pass, reason=store failed (greylist.sqlite: database is"
            " locked), client_name=mail.example.org, client_address=192.0.2.25,"
            " sender=alice@example.org, recipient=Bob@example.net",
        )
    ]
    check.close()
    assert store.closed


def test_store_failure_on_disk_fails_open(tmp_path: pathlib.Path, log: Log) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = SqliteGreylistStore(blocker / FILE_NAME)
    check = GreylistCheck(store=store, hostname="mx.example.net", log=log)
    assert rcpt(View(), check) is None
    assert log.lines[0][0] == logging.WARNING
    assert "reason=store failed" in log.lines[0][1]


def test_auto_whitelisted_network_is_logged(check: GreylistCheck, clock: Clock, log: Log) -> None:
    for n in range(5):
        sender = Address(local_part=f"user{chr(97 + n)}", domain="example.org")
        view = View(transaction=Transaction(queue_id="4F2A1B", reverse_path=sender))
        assert rcpt(view, check).reply is not None
        clock.now += 300
        view = View(transaction=Transaction(queue_id="4F2A1B", reverse_path=sender))
        assert rcpt(view, check).reply is None
        clock.now += 3600
    assert log.lines[-1] == (
        logging.INFO,
        "4F2A1B: greylist: whitelisted: client network 192.0.2.0/24",
    )
    stranger = Address(local_part="zed", domain="example.com")
    view = View(transaction=Transaction(queue_id="4F2A1C", reverse_path=stranger))
    assert rcpt(view, check) is None
    assert "action=pass, reason=client AWL" in log.lines[-1][1]


def test_factory_follows_the_config(tmp_path: pathlib.Path) -> None:
    off = Config(source=None, hostname="mx.example.net", data_dir=tmp_path)
    assert greylist_check(off, tmp_path) is None
    on = attrs.evolve(off, antispam=AntispamConfig(greylisting=True, greylist_delay=60))
    check = greylist_check(on, tmp_path)
    assert check is not None
    assert check.settings.delay == 60
    assert check.hostname == "mx.example.net"
    assert isinstance(check.store, SqliteGreylistStore)
    assert check.store.path == str(tmp_path / "greylist.sqlite")
    assert not (tmp_path / "greylist.sqlite").exists()  # nothing opened yet
    long = attrs.evolve(off, antispam=AntispamConfig(greylisting=True, greylist_delay=3 * 86400))
    stretched = greylist_check(long, tmp_path)
    assert stretched is not None
    assert stretched.settings.retry_window > stretched.settings.delay


def test_findings_no_check_took_are_bounded(check: GreylistCheck) -> None:
    view = View(transaction=Transaction(queue_id="4F2A1B", reverse_path=SENDER))
    for n in range(1000):
        # RCPTs refused before the check is asked (unknown users): errands only.
        command = smtp.Rcpt(forward_path=Address(local_part=f"u{n}", domain="example.net"))
        for inquiry in check.inquiries(Stage.RCPT, view, command):
            inquiry.run()
    assert 0 < len(view.findings[FINDINGS_KEY]) <= 256


def test_the_intake_takes_the_backends_store(tmp_path: pathlib.Path, pg_db: Database) -> None:
    config = Config(
        source=None,
        hostname="mx.example.net",
        data_dir=tmp_path,
        antispam=AntispamConfig(greylisting=True, spf="off", dkim="off", dmarc="off"),
    )
    shared = PgGreylistStore(pg_db)
    checks = intake_checks(config, log=Log(), greylist_store=shared)
    found = [c for c in checks if isinstance(c, GreylistCheck)]
    assert len(found) == 1
    assert found[0].store is shared
    assert not (tmp_path / FILE_NAME).exists()
