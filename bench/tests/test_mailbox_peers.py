"""The side-by-side mailbox bench's own logic: order, ratios within a rep, the table."""

from __future__ import annotations

import mailbox_bench as mb
import mailbox_peers_bench as mpb
import pytest
from bench_report import Spread


def rep(server, rep_no, walls, *, protocol="IMAP", error="", cpu=0.5, hits=None):
    phases = [
        mb.Phase(name, wall, 0.0, cpu, (hits or {}).get(name, 0)) for name, wall in walls.items()
    ]
    return mpb.RepRecord(server, protocol, rep_no, phases, error)


def test_rotation_changes_who_goes_first_each_rep():
    assert [mpb.rotation("ab", r) for r in range(3)] == [["a", "b"], ["b", "a"], ["a", "b"]]
    assert mpb.rotation([1, 2, 3], 4) == [2, 3, 1]
    assert mpb.rotation([], 3) == []


def test_ratios_are_taken_within_each_rep():
    records = [
        rep("sansmail", 0, {"select": 0.5}),
        rep("dovecot", 0, {"select": 0.1}),  # cold: 0.2
        rep("sansmail", 1, {"select": 0.1}),
        rep("dovecot", 1, {"select": 0.2}),  # 2.0
        rep("sansmail", 2, {"select": 0.4}),
        rep("dovecot", 2, {"select": 0.2}),  # 0.5
        rep("sansmail", 3, {"select": 0.1}),
        rep("dovecot", 3, {"select": 0.1}),  # 1.0
        rep("sansmail", 4, {"select": 0.001}),  # its partner failed: no ratio
        rep("dovecot", 4, {}, error="CheckError: wrong"),
        rep("dovecot", 5, {"select": 9.0}),  # no partner at all
    ]
    (row,) = mpb.phase_ratios(records, "IMAP", ["select"])
    assert row.phase == "select"
    assert row.first == pytest.approx(0.2)
    assert row.warm == Spread(1.0, 0.5, 2.0)


def test_ratios_keep_protocols_apart_and_skip_empty_phases():
    records = [
        rep("sansmail", 1, {"login": 0.2}, protocol="POP3"),
        rep("dovecot", 1, {"login": 0.1}, protocol="POP3"),
        rep("sansmail", 1, {"login": 0.1, "logout": 0.0}),
        rep("dovecot", 1, {"login": 0.4, "logout": 0.1}),
    ]
    imap = {r.phase: r for r in mpb.phase_ratios(records, "IMAP", ["login", "logout", "nope"])}
    assert imap["login"].warm == Spread(4.0, 4.0, 4.0)
    assert imap["logout"].warm is None  # a 0 s wall gives no ratio
    assert imap["nope"].warm is None
    assert imap["login"].first is None
    (pop3,) = mpb.phase_ratios(records, "POP3", ["login"])
    assert pop3.warm == Spread(0.5, 0.5, 0.5)


def test_table_shows_both_servers_the_ratio_and_the_first_rep():
    hits = {"search ALL": 7}
    records = [
        rep("sansmail", 0, {"select": 0.5, "search ALL": 0.02}, hits=hits),
        rep("dovecot", 0, {"select": 0.25, "search ALL": 0.01}, hits=hits, cpu=0.25),
        rep("sansmail", 1, {"select": 0.1, "search ALL": 0.01}, hits=hits),
        rep("dovecot", 1, {"select": 0.2, "search ALL": 0.01}, hits=hits, cpu=0.25),
    ]
    lines = mpb.format_peer_table(records, "IMAP", ["select", "search ALL"]).splitlines()
    assert lines[0].startswith("| phase | sansmail s | dovecot s | speed sansmail/dovecot |")
    assert lines[2] == (
        "| select | 0.100 | 0.200 | 2.00 [2.00-2.00] | 0.500 | 0.250 | 0.50 | 0.50 / 0.25 |  |"
    )
    assert lines[3].endswith("| 1.00 [1.00-1.00] | 0.020 | 0.010 | 0.50 | 0.50 / 0.25 | 7 |")


def test_table_without_the_peer_shows_dashes():
    records = [rep("sansmail", 1, {"select": 0.1})]
    (row,) = mpb.format_peer_table(records, "IMAP", ["select"]).splitlines()[2:]
    assert row == "| select | 0.100 | - | - | - | - | - | 0.50 / - |  |"


def test_options():
    args = mpb.parse_args([])
    assert (args.messages, args.reps, args.processes) == (10000, 3, 1)
    quick = mpb.parse_args(["--quick"])
    assert (quick.messages, quick.reps) == (1000, 1)
    assert mpb.parse_args(["--quick", "--messages", "50"]).messages == 50
    for bad in (["--reps", "0"], ["--messages", "-1"], ["--deadline", "0"]):
        with pytest.raises(SystemExit):
            mpb.parse_args(bad)
