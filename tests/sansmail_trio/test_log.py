"""The mail log's shortcut for session lines (`line_logger`)."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from sansmail_trio._log import configure_logging, get_logger, line_logger


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
