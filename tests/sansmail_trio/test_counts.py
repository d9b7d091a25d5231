"""The connection table the server processes share for the connection caps."""

from __future__ import annotations

import os

from sansmail_trio._counts import Family, SharedCounts


def test_counts_are_per_process_rows_summed() -> None:
    table = SharedCounts.create(3)
    first, second = table.for_process(0), table.for_process(2)
    first.opened(Family.SMTP, "192.0.2.1")
    first.opened(Family.SMTP, "192.0.2.1")
    second.opened(Family.SMTP, "192.0.2.1")
    second.opened(Family.SMTP, "192.0.2.7")
    assert first.total(Family.SMTP) == second.total(Family.SMTP) == 4
    assert first.from_ip(Family.SMTP, "192.0.2.1") >= 3
    second.closed(Family.SMTP, "192.0.2.1")
    first.closed(Family.SMTP, "192.0.2.1")
    assert first.total(Family.SMTP) == 2
    assert table.for_process(1).from_ip(Family.SMTP, "192.0.2.1") >= 1


def test_a_forked_child_sees_and_updates_the_same_table() -> None:
    table = SharedCounts.create(2)
    table.for_process(0).opened(Family.SMTP, "198.51.100.5")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        child = table.for_process(1)
        seen = child.from_ip(Family.SMTP, "198.51.100.5")
        child.opened(Family.SMTP, "198.51.100.5")
        os.write(write, bytes([seen]))
        os._exit(0)
    os.close(write)
    seen = os.read(read, 1)[0]
    os.close(read)
    os.waitpid(pid, 0)
    assert seen == 1  # the child saw the parent's connection
    assert table.from_ip(Family.SMTP, "198.51.100.5") == 2  # and the parent sees the child's
