"""The rate windows every server process shares (``<data_dir>/anvil.table``): the same
counts as the one-process table, a fixed size whatever the number of clients, and one
count at a time across real processes."""

from __future__ import annotations

import fcntl
import os
import pathlib
import stat
import subprocess
import sys
import textwrap

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from sansmail.mail.anvil import Event, MemoryWindows, Window
from sansmail.storage.anvil import FILE_NAME, SETS, WAYS, AnvilError, AnvilTable

T0 = 1_800_000_000.0
SLOT = 24
HEADER = 64


def test_counts_per_key_in_a_file_of_fixed_size(tmp_path: pathlib.Path) -> None:
    table = AnvilTable(tmp_path / FILE_NAME)
    assert table.count("c:192.0.2.1", Event.MESSAGE, T0) == Window(T0, 1, 0)
    assert table.count("c:192.0.2.1", Event.RECIPIENT, T0 + 1) == Window(T0, 1, 1)
    assert table.count("c:192.0.2.2", Event.MESSAGE, T0 + 2) == Window(T0 + 2, 1, 0)
    assert table.count("c:192.0.2.1", Event.MESSAGE, T0 + 61) == Window(T0 + 61, 1, 0)
    info = (tmp_path / FILE_NAME).stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_size == HEADER + SETS * WAYS * SLOT  # 1.5 MiB
    for n in range(5000):
        table.count(f"c:10.{n // 256}.{n % 256}.1", Event.MESSAGE, T0 + 3)
    assert (tmp_path / FILE_NAME).stat().st_size == info.st_size
    table.close()
    # Another opener (another process, or this one after a restart) sees the counts.
    again = AnvilTable(tmp_path / FILE_NAME)
    assert again.count("c:192.0.2.2", Event.RECIPIENT, T0 + 4) == Window(T0 + 2, 1, 1)
    again.close()


def test_a_full_set_forgets_the_window_that_opened_longest_ago(tmp_path: pathlib.Path) -> None:
    table = AnvilTable(tmp_path / FILE_NAME, sets=1, ways=2)
    table.count("a", Event.MESSAGE, T0)
    table.count("b", Event.MESSAGE, T0 + 1)
    table.count("b", Event.MESSAGE, T0 + 2)
    table.count("c", Event.MESSAGE, T0 + 3)  # takes a's slot
    assert table.count("b", Event.MESSAGE, T0 + 4) == Window(T0 + 1, 3, 0)
    assert table.count("a", Event.MESSAGE, T0 + 5) == Window(T0 + 5, 1, 0)  # forgotten
    # A window that has ended is taken before a live one, however recent.
    # Now c (T0+3) and a (T0+5) are kept; b was forgotten for a. At T0+64 c's window has
    # ended and a's has not: d takes c's slot though c's opened later than nothing else.
    table.count("d", Event.MESSAGE, T0 + 64)
    assert table.count("a", Event.MESSAGE, T0 + 64.5) == Window(T0 + 5, 2, 0)
    assert table.count("d", Event.MESSAGE, T0 + 64.5) == Window(T0 + 64, 2, 0)
    table.close()


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(b"not a table"),
        lambda path: path.write_bytes(path.read_bytes()[:1000]),
        lambda path: path.write_bytes(b"\xff" * 64 + path.read_bytes()[64:]),
    ],
    ids=["garbage", "truncated", "header"],
)
def test_a_damaged_file_is_made_anew(tmp_path: pathlib.Path, damage: object) -> None:
    path = tmp_path / FILE_NAME
    table = AnvilTable(path)
    table.count("k", Event.MESSAGE, T0)
    table.close()
    damage(path)  # type: ignore[operator]
    table = AnvilTable(path)
    assert table.count("k", Event.MESSAGE, T0 + 1) == Window(T0 + 1, 1, 0)
    assert path.stat().st_size == HEADER + SETS * WAYS * SLOT
    table.close()


def test_a_file_that_cannot_be_made_is_an_error(tmp_path: pathlib.Path) -> None:
    table = AnvilTable(tmp_path / "missing" / FILE_NAME)
    with pytest.raises(AnvilError, match="missing"):
        table.count("k", Event.MESSAGE, T0)


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["c:192.0.2.1", "c:2001:db8::/84", "u:alice@example.test", "u:b"]),
            st.sampled_from(list(Event)),
            st.floats(0, 300),
        ),
        max_size=40,
    )
)
def test_the_file_counts_as_the_one_process_table(
    tmp_path: pathlib.Path, events: list[tuple[str, Event, float]]
) -> None:
    path = tmp_path / FILE_NAME
    path.unlink(missing_ok=True)
    table = AnvilTable(path)
    model = MemoryWindows()
    for key, event, t in sorted(events, key=lambda e: e[2]):
        assert table.count(key, event, T0 + t) == model.count(key, event, T0 + t)
    table.close()


_COUNTER = textwrap.dedent(
    """
    import pathlib, sys
    from sansmail.mail.anvil import Event
    from sansmail.storage.anvil import AnvilError, AnvilTable
    table = AnvilTable(pathlib.Path(sys.argv[1]))

    def count(key, event):
        while True:  # a count refused for a busy lock wrote nothing: count it again
            try:
                return table.count(key, event, 1_800_000_000.0)
            except AnvilError:
                pass

    count("c:192.0.2.9", Event.MESSAGE)  # opened: ready
    print("ready", flush=True)
    sys.stdin.readline()  # all start together
    for _ in range(int(sys.argv[2])):
        count("c:192.0.2.1", Event.RECIPIENT)
        count("u:alice@example.test", Event.MESSAGE)
    """
)


def test_two_processes_count_every_event_once(tmp_path: pathlib.Path) -> None:
    """Two processes counting the same keys at once, a read-modify-write each time:
    without the record lock some increments would be lost."""
    path = tmp_path / FILE_NAME
    n = 5000
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _COUNTER, str(path), str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    table = AnvilTable(path)
    client = table.count("c:192.0.2.1", Event.MESSAGE, T0)
    user = table.count("u:alice@example.test", Event.RECIPIENT, T0)
    assert (client.recipients, client.messages) == (2 * n, 1)
    assert (user.messages, user.recipients) == (2 * n, 1)
    table.close()


def test_a_lock_held_too_long_is_an_error_not_a_wait(tmp_path: pathlib.Path) -> None:
    """Another process holding the file (a process stopped mid-count) makes `count`
    fail at once, so the caller lets the command through instead of hanging."""
    path = tmp_path / FILE_NAME
    AnvilTable(path).count("k", Event.MESSAGE, T0)
    holder = os.open(path, os.O_RDWR)
    fcntl.lockf(holder, fcntl.LOCK_EX)  # this process; the counter is another
    try:
        script = (
            "import pathlib, sys\n"
            "from sansmail.mail.anvil import Event\n"
            "from sansmail.storage.anvil import AnvilTable, AnvilError\n"
            "try:\n"
            f"    AnvilTable(pathlib.Path({str(path)!r})).count('k', Event.MESSAGE, {T0})\n"
            "except AnvilError as exc:\n"
            "    print('refused:', exc)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, timeout=60, check=True
        )
        assert b"refused:" in out.stdout
        assert b"still locked" in out.stdout
    finally:
        os.close(holder)
    assert AnvilTable(path).count("k", Event.MESSAGE, T0) == Window(T0, 2, 0)
