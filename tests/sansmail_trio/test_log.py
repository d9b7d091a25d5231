"""The mail log's shortcut for session lines (`line_logger`), and the session id it
tags them with."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from sansmail.mail.auth import FAIL2BAN_FAILREGEX
from sansmail_trio._log import configure_logging, get_logger, line_logger
from sansmail_trio._session import new_session_id


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    root = logging.getLogger("sansmail")
    saved = (root.handlers[:], root.level, root.propagate)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    configure_logging()
    yield out
    root.handlers[:], root.level, root.propagate = saved


_LINE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}([+-]\d\d:\d\d)? sansmail/smtp\[\d+\]: "


def test_writes_the_line_the_handler_writes(stderr: io.StringIO) -> None:
    logger = get_logger("smtp")
    logger.info("%s", "connect from [192.0.2.1]:4000")
    line_logger(logger)(logging.INFO, "connect from [192.0.2.1]:4000")
    first, second = stderr.getvalue().splitlines()
    assert re.fullmatch(_LINE + r"connect from \[192\.0\.2\.1\]:4000", first)
    assert first.partition(" ")[2] == second.partition(" ")[2]


def test_honours_the_level(stderr: io.StringIO) -> None:
    logging.getLogger("sansmail").setLevel(logging.WARNING)
    log = line_logger(get_logger("smtp"))
    log(logging.INFO, "not shown")
    log(logging.WARNING, "shown")
    (line,) = stderr.getvalue().splitlines()
    assert line.endswith(": shown")


def test_goes_through_logging_when_someone_listens_above(
    stderr: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    logging.getLogger("sansmail").propagate = True
    caplog.set_level(logging.INFO, logger="sansmail.smtp")
    line_logger(get_logger("smtp"))(logging.INFO, "disconnect from x")
    assert [r.getMessage() for r in caplog.records] == ["disconnect from x"]
    assert stderr.getvalue().endswith(": disconnect from x\n")


def test_a_session_id_goes_between_the_pid_and_the_colon(stderr: io.StringIO) -> None:
    logger = get_logger("imap")
    line_logger(logger, "Hx0Qe3mK1vT9")(logging.INFO, "connect from [192.0.2.1]:4000")
    logger.info("%s", "connect from [192.0.2.1]:4000", extra={"session": "Hx0Qe3mK1vT9"})
    first, second = stderr.getvalue().splitlines()
    assert re.search(
        r" sansmail/imap\[\d+\]<Hx0Qe3mK1vT9>: connect from \[192\.0\.2\.1\]:4000$", first
    )
    assert first.partition(" ")[2] == second.partition(" ")[2]


def test_the_fail2ban_regex_still_matches_a_session_line(stderr: io.StringIO) -> None:
    # The README's filter, with fail2ban's <HOST> as an address group.
    failregex = re.compile(FAIL2BAN_FAILREGEX.replace("<HOST>", r"(?P<host>[0-9a-fA-F.:]+)"))
    log = line_logger(get_logger("pop3"), "Hx0Qe3mK1vT9")
    log(
        logging.INFO, "auth failed: service=pop3, method=USER, user=<a@example.test>, rip=192.0.2.7"
    )
    (line,) = stderr.getvalue().splitlines()
    found = failregex.search(line)
    assert found is not None
    assert found["host"] == "192.0.2.7"


def test_the_session_id_reaches_listeners_above(
    stderr: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    logging.getLogger("sansmail").propagate = True
    caplog.set_level(logging.INFO, logger="sansmail.smtp")
    line_logger(get_logger("smtp"), "Hx0Qe3mK1vT9")(logging.INFO, "disconnect from x")
    (record,) = caplog.records
    assert (record.getMessage(), record.__dict__["session"]) == (
        "disconnect from x",
        "Hx0Qe3mK1vT9",
    )
    assert stderr.getvalue().endswith("<Hx0Qe3mK1vT9>: disconnect from x\n")


def test_session_ids_are_one_word_and_differ() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[A-Za-z0-9]{12}", i) for i in ids)
