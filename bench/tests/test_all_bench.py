"""all_bench.py: the targets table read back from the benches' JSON files."""

import json
from pathlib import Path

import all_bench


def _smtp_run(server: str, rep: int, rate: float, e2e_s: float) -> dict[str, object]:
    return {
        "server": server,
        "rep": rep,
        "phase": "throughput",
        "ok": True,
        "size": 10 * 1024,
        "concurrency": 50,
        "messages": 1000,
        "msgs_per_s": rate,
        "e2e_s": e2e_s,
    }


def _write(folder: Path, name: str, data: object) -> None:
    (folder / f"{name}.json").write_text(json.dumps(data))


def test_rows_from_every_bench(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "smtp",
        {
            "runs": [
                _smtp_run("sansmail", 0, 600.0, 1000 / 600),
                _smtp_run("aiosmtpd", 0, 300.0, 1000 / 300),
                # Postfix accepts fast and delivers slowly: only its delivered rate counts.
                _smtp_run("postfix", 0, 900.0, 1000 / 500),
                _smtp_run("sansmail", 1, 500.0, 2.0),
                _smtp_run("aiosmtpd", 1, 400.0, 2.5),
                # A failed pass takes no part in the ratios.
                {**_smtp_run("postfix", 1, 1.0, 1000.0), "ok": False},
            ]
        },
    )
    _write(
        tmp_path,
        "relay",
        {"runs": {"sansmail": [{"relayed": 300.0}], "postfix": [{"relayed": 400.0}]}},
    )
    _write(
        tmp_path,
        "mailbox",
        {
            "ratios": {
                "IMAP": [
                    {"phase": "fetch_meta", "warm": {"median": 0.6, "low": 0.5, "high": 0.7}},
                    {"phase": "search BODY budget", "warm": {"median": 0.9, "low": 0.9,
                                                             "high": 1.1}},
                ],
                "POP3": [],
            }
        },
    )  # fmt: skip
    _write(
        tmp_path,
        "memory",
        {
            "runs": [
                {"target": "dovecot", "sessions": 1000, "held": {"pss_kib": 1}},
                {
                    "target": "sansmail-p1",
                    "sessions": 1000,
                    "before": {"pss_kib": 100 * 1024},
                    "held": {"pss_kib": 150 * 1024},
                    "after": {"3": {"pss_kib": 140 * 1024}, "60": {"pss_kib": 105 * 1024}},
                },
            ]
        },
    )
    by_work = {row.work: row for row in all_bench.rows(tmp_path)}
    rows = list(by_work.values())
    assert rows[0].measured == "1.62x [1.25-2.00]"
    assert rows[0].met is True
    assert rows[1].measured == "1.20x"
    assert rows[1].met is False
    assert rows[2].measured == "0.75x"
    assert rows[2].met is False
    fetch = next(r for r in rows if r.work.startswith("IMAP FETCH"))
    assert fetch.measured == "0.60x [0.50-0.70]"
    assert fetch.met is True
    body = next(r for r in rows if r.work.startswith("IMAP SEARCH BODY"))
    assert body.met is False
    assert next(r for r in rows if r.work.startswith("POP3")).met is None
    held, returned = rows[-2], rows[-1]
    assert held.measured == "150.0 MiB"
    assert held.met is True
    assert "60 s" in returned.work
    assert returned.measured == "1.05x"
    assert returned.met is True
    table = all_bench.format_rows(rows)
    assert "NOT met" in table
    assert "not measured" in table


def test_missing_results_leave_rows_empty(tmp_path: Path) -> None:
    rows = all_bench.rows(tmp_path)
    assert rows
    assert all(r.measured == "-" and r.met is None for r in rows)


def test_commands_write_into_the_run_folder(tmp_path: Path) -> None:
    args = all_bench.parse_args(["--quick", "--out", str(tmp_path)])
    cmds = all_bench.commands(args, tmp_path)
    assert list(cmds) == list(all_bench.BENCHES)
    for name, cmd in cmds.items():
        assert str(tmp_path / f"{name}.json") in cmd
