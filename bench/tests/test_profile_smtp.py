"""profile_smtp.py's reading of py-spy's raw output: each sample goes to the innermost
frame that has a category, line numbers do not split a function."""

from __future__ import annotations

from profile_smtp import by_function, categorize, parse_raw, report

RAW = [
    "main (sansmail_trio/_cli.py:10);_loop (sansmail_trio/_smtp_server.py:97);"
    "read_command (sansmail/smtp/_readers.py:470);read_path (sansmail/mail/address.py:416) 5",
    "main (sansmail_trio/_cli.py:10);_loop (sansmail_trio/_smtp_server.py:99);"
    "Wire.flush (sansmail_trio/_wire.py:112);_send_all (sansmail_trio/_wire.py:160);"
    "wrapper (trio/_socket.py:476) 3",
    "main (sansmail_trio/_cli.py:10);unrolled_run (trio/_core/_run.py:2866) 2",
    "<module> (x.py:1) 1",
    "",
    "garbage",
]


def test_samples_go_to_the_innermost_category() -> None:
    samples = parse_raw(RAW)
    assert [count for _frames, count in samples] == [5, 3, 2, 1]
    assert categorize(samples) == {
        "SMTP core: parsing, state": 5,
        "sockets (send, recv, accept, close)": 3,
        "Trio scheduler, cancel scopes": 2,
        "other": 1,
    }


def test_functions_count_once_per_sample_whatever_the_line() -> None:
    inclusive, own = by_function(parse_raw(RAW))
    assert inclusive["_loop (sansmail_trio/_smtp_server.py)"] == 8
    assert inclusive["main (sansmail_trio/_cli.py)"] == 10
    assert own["wrapper (trio/_socket.py)"] == 3
    text = report(parse_raw(RAW), top=2)
    assert "| SMTP core: parsing, state | 45.5% |" in text
    assert "90.9%  main (sansmail_trio/_cli.py)" in text
