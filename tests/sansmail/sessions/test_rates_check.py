"""The rates check at MAIL and RCPT: what it counts, whom it spares, its refusals, and a
table that fails."""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import attrs

from sansmail.config import Config, parse_config
from sansmail.mail.anvil import Event, MemoryWindows, RateLimits
from sansmail.sessions.smtpd import intake_checks
from sansmail.sessions.smtpd._checks import Inquiring, Stage
from sansmail.sessions.smtpd._rates import RateCheck, rate_check
from sansmail.sessions.smtpd._transaction import Transaction
from sansmail.storage.anvil import FILE_NAME, AnvilTable

T0 = 1_800_000_000.0


@attrs.define
class View:
    """A session as a check sees it (`SessionView`)."""

    client_ip: str = "192.0.2.25"
    helo: str = "mail.example.org"
    user: str | None = None
    tls: str | None = None
    transaction: Transaction | None = None
    trusted: bool = False
    client_name: str | None = None
    findings: dict[str, Any] = attrs.Factory(dict)
    now: float = T0


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def __call__(self, level: int, text: str) -> None:
        self.lines.append((level, text))


def make(table: Any = None, **limits: Any) -> RateCheck:
    limits.setdefault("exempt", ["127.0.0.0/8"])
    return RateCheck(limits=RateLimits(**limits), table=table or MemoryWindows(), log=Log())


def replies(check: RateCheck, view: View, stage: Stage, n: int) -> list[str | None]:
    out = []
    for _ in range(n):
        verdict = check.check(stage, view)
        out.append(None if verdict is None or verdict.reply is None else verdict.reply.text)
    return out


def test_the_fourth_message_of_a_minute_is_refused_as_postfix_words_it() -> None:
    check = make(client_message=3)
    view = View()
    assert (
        replies(check, view, Stage.MAIL, 5)
        == [None, None, None] + ["Error: too much mail from 192.0.2.25"] * 2
    )
    verdict = check.check(Stage.MAIL, view)
    assert verdict is not None
    assert verdict.reply is not None
    assert (verdict.source, verdict.reply.code, verdict.reply.enhanced) == ("anvil", 450, "4.7.1")
    view.now = T0 + 60  # a new window
    assert replies(check, view, Stage.MAIL, 1) == [None]


def test_recipients_are_counted_at_rcpt_only() -> None:
    check = make(client_recipient=2)
    view = View()
    for stage in (Stage.CONNECT, Stage.HELO, Stage.MAIL, Stage.END_OF_HEADERS):
        assert replies(check, view, stage, 5) == [None] * 5
    too_many = "Error: too many recipients from 192.0.2.25"
    assert replies(check, view, Stage.RCPT, 3) == [None, None, too_many]


def test_mynetworks_is_exempt_from_every_rate() -> None:
    table = MemoryWindows()
    check = make(table, client_message=1, client_recipient=1, user_message=1, user_recipient=1)
    view = View(client_ip="127.0.0.1", user="alice@example.test")
    assert replies(check, view, Stage.MAIL, 3) == [None] * 3
    assert replies(check, view, Stage.RCPT, 3) == [None] * 3
    assert len(table) == 0


def test_a_user_is_counted_whatever_address_it_comes_from() -> None:
    check = make(user_message=2, user_recipient=3)
    views = [View(client_ip=ip, user="alice@example.test") for ip in ("192.0.2.1", "192.0.2.2")]
    assert replies(check, views[0], Stage.MAIL, 1) == [None]
    assert replies(check, views[1], Stage.MAIL, 2) == [
        None,
        "Error: too much mail from alice@example.test",
    ]
    # Another user, and the same client unauthenticated, are not alice.
    assert replies(check, View(client_ip="192.0.2.2", user="bob@example.test"), Stage.MAIL, 1) == [
        None
    ]
    assert replies(check, View(client_ip="192.0.2.2"), Stage.MAIL, 3) == [None] * 3
    assert replies(check, views[1], Stage.RCPT, 4) == [None] * 3 + [
        "Error: too many recipients from alice@example.test"
    ]


def test_the_client_limit_is_reported_before_the_user_limit() -> None:
    check = make(client_message=1, user_message=1)
    view = View(user="alice@example.test")
    assert replies(check, view, Stage.MAIL, 2) == [None, "Error: too much mail from 192.0.2.25"]


def test_ipv6_clients_share_their_slash_84() -> None:
    check = make(client_message=1)
    assert replies(check, View(client_ip="2001:db8::1"), Stage.MAIL, 1) == [None]
    assert replies(check, View(client_ip="2001:db8::ffff:1"), Stage.MAIL, 1) == [
        "Error: too much mail from 2001:db8::ffff:1"
    ]
    assert replies(check, View(client_ip="2001:db8:0:0:1::1"), Stage.MAIL, 1) == [None]


def test_a_failing_table_lets_mail_through_and_says_so_once_a_minute(
    tmp_path: pathlib.Path,
) -> None:
    check = make(AnvilTable(tmp_path / "gone" / FILE_NAME), client_message=1)
    view = View()
    assert replies(check, view, Stage.MAIL, 3) == [None] * 3
    view.now = T0 + 59
    assert replies(check, view, Stage.MAIL, 1) == [None]
    view.now = T0 + 60
    assert replies(check, view, Stage.MAIL, 1) == [None]
    log = check.log
    assert isinstance(log, Log)
    assert [level for level, _ in log.lines] == [logging.WARNING] * 2
    assert log.lines[0][1].startswith("anvil: rates not counted: ")
    assert "gone" in log.lines[0][1]


def _config(text: str, data_dir: pathlib.Path) -> Config:
    return parse_config(
        f'hostname = "mx.example.test"\ndata_dir = "{data_dir}"\n' + text,
        source=None,
        default_hostname="mx.example.test",
    )


def test_rate_check_is_built_from_the_limits_table(tmp_path: pathlib.Path) -> None:
    off = (
        "[limits]\nclient_message_rate = 0\nclient_recipient_rate = 0\n"
        "user_message_rate = 0\nuser_recipient_rate = 0\n"
    )
    assert rate_check(_config(off, tmp_path), tmp_path) is None
    one = _config("mynetworks = []\n[limits]\nclient_message_rate = 1\n", tmp_path)
    check = rate_check(one, tmp_path)
    assert check is not None
    assert not isinstance(check, Inquiring)  # no worker thread, no errand
    assert not (tmp_path / FILE_NAME).exists()  # opened at the first count
    assert replies(check, View(), Stage.MAIL, 2) == [None, "Error: too much mail from 192.0.2.25"]
    assert (tmp_path / FILE_NAME).exists()
    assert isinstance(check.table, AnvilTable)
    assert check.table.count("c:192.0.2.25", Event.MESSAGE, T0).messages == 3


def test_the_rates_come_first_among_the_intake_checks(tmp_path: pathlib.Path) -> None:
    config = _config(
        '[antispam]\nspf = "off"\ndkim = "off"\ndmarc = "off"\ngreylisting = true\n', tmp_path
    )
    checks = intake_checks(config, log=Log())
    assert isinstance(checks[0], RateCheck)
    assert len(checks) == 2


def test_a_session_given_no_time_counts_nothing_and_says_so_once() -> None:
    table = MemoryWindows()
    check = make(table, client_message=1)
    view = View(now=0.0)
    assert replies(check, view, Stage.MAIL, 3) == [None] * 3
    assert len(table) == 0
    log = check.log
    assert isinstance(log, Log)
    assert log.lines == [(logging.WARNING, "anvil: rates not counted: the adapter gave no time")]
