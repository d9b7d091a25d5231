"""relay_bench.py's Postfix setup: the smtpd line moves to the bench port whatever its
spacing, and a master.cf without one fails loudly; CPU is split by process name."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from relay_bench import cpu_by_role, listen_on

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


def test_cpu_by_role_sums_the_tree_by_process_name() -> None:
    # A child that names itself (as sansmail-queue does), works 0.2 s of CPU, then waits.
    code = (
        "import time\n"
        "open('/proc/self/comm', 'w').write('relay-test-role')\n"
        "end = time.process_time() + 0.2\n"
        "while time.process_time() < end: pass\n"
        "print('done', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"done\n"
        roles = cpu_by_role(os.getpid())
    finally:
        child.kill()
        child.communicate()
    assert roles["relay-test-role"] >= 0.2
    with open("/proc/self/comm") as comm:
        assert comm.read().strip() in roles  # this process too, by its own name
