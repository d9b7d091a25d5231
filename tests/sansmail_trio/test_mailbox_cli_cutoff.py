"""``sansmail-trio mailbox expunge --before``: what the DATE argument turns into, and a
refusal (one line, exit 1) rather than a traceback for one no date can show."""

from __future__ import annotations

import datetime

import pytest

from sansmail_trio import _cli
from sansmail_trio._cli_mailbox import _cutoff

NOW = 1_765_090_800.5


def test_an_age_counts_back_from_now() -> None:
    assert _cutoff("30d", NOW) == int(NOW) - 30 * 86400
    assert _cutoff("2w", NOW) == int(NOW) - 14 * 86400
    assert _cutoff("0s", NOW) == int(NOW)


def test_a_date_is_midnight_utc() -> None:
    assert _cutoff("2024-01-01", NOW) == int(
        datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC).timestamp()
    )
    assert _cutoff("0001-01-01", NOW) < 0


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "0000-01-01", "30D", "1.5d", ""])
def test_what_is_no_date_is_refused(text: str) -> None:
    with pytest.raises(_cli.CommandError, match="--before"):
        _cutoff(text, NOW)


@pytest.mark.parametrize("text", ["999999999w", "99999999d"])
def test_an_age_before_year_one_is_refused_not_a_traceback(text: str) -> None:
    with pytest.raises(_cli.CommandError, match="before year 1"):
        _cutoff(text, NOW)
