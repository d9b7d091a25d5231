"""relay_bench.py's Postfix setup: the smtpd line moves to the bench port whatever its
spacing, and a master.cf without one fails loudly."""

from __future__ import annotations

import pytest
from relay_bench import listen_on

_DEBIAN = (
    "# service type  private unpriv  chroot  wakeup  maxproc command + args\n"
    "smtp      inet  n       -       y       -       -       smtpd\n"
    "#smtp      inet  n       -       y       -       1       postscreen\n"
    "smtp      unix  -       -       y       -       -       smtp\n"
)


def test_debian_master_cf_moves_smtpd_only() -> None:
    edited = listen_on(_DEBIAN, 10025)
    assert "\n10025      inet  n       -       y       -       -       smtpd\n" in edited
    # The commented postscreen line and the smtp client (unix) are left alone.
    assert "#smtp      inet" in edited
    assert "\nsmtp      unix" in edited


@pytest.mark.parametrize("gap", [" ", "\t", "  \t ", "          "])
def test_any_spacing(gap: str) -> None:
    edited = listen_on(f"smtp{gap}inet n - y - - smtpd\n", 2525)
    assert edited == f"2525{gap}inet n - y - - smtpd\n"


@pytest.mark.parametrize(
    "master",
    [
        "",
        "#smtp      inet  n       -       y       -       -       smtpd\n",
        "smtp      unix  -       -       y       -       -       smtp\n",
        "smtps     inet  n       -       y       -       -       smtpd\n",
        "127.0.0.1:smtp inet n - y - - smtpd\n",
    ],
)
def test_no_smtpd_line_fails_loudly(master: str) -> None:
    with pytest.raises(RuntimeError, match="no 'smtp inet' service line"):
        listen_on(master, 2525)
