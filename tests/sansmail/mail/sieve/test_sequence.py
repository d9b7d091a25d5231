"""sansmail.mail.sieve.run_sequence: scripts in sequence into one plan, pure (the
delivery side, with real stores, is tests/sansmail/sessions/test_lda_sequence.py)."""

from __future__ import annotations

import datetime

from sansmail.mail.sieve import (
    IncludeNotParsedError,
    Plan,
    Position,
    Script,
    SieveContext,
    SieveEnvelope,
    SieveError,
    parse,
    run_sequence,
)

NOW = datetime.datetime(2025, 6, 3, 10, 0, tzinfo=datetime.UTC)
ENVELOPE = SieveEnvelope(from_="bob@far.test", to="alice@example.test")
MESSAGE = b"Return-Path: <bob@far.test>\r\nSubject: hi\r\n\r\nbody\r\n"


def run(*texts: str, context: SieveContext = SieveContext()) -> Plan:  # noqa: B008
    scripts = [(f"s{i}", parse(text)) for i, text in enumerate(texts)]
    return run_sequence(scripts, MESSAGE, ENVELOPE, now=NOW, context=context)


def test_no_script_is_a_keep() -> None:
    plan = run_sequence([], MESSAGE, ENVELOPE, now=NOW)
    assert list(plan.copies) == ["INBOX"]
    assert plan.copies["INBOX"].content == MESSAGE


def test_each_action_takes_the_message_as_edited_then() -> None:
    plan = run(
        'require ["editheader", "fileinto", "copy"];'
        'fileinto :copy "Before"; addheader "X-A" "1"; deleteheader "subject";'
    )
    assert plan.copies["Before"].content == MESSAGE
    assert plan.copies["INBOX"].content == b"Return-Path: <bob@far.test>\r\nX-A: 1\r\n\r\nbody\r\n"


def test_inbox_in_any_case_is_one_copy() -> None:
    plan = run('require "fileinto"; fileinto "inbox";', "keep;")
    assert list(plan.copies) == ["INBOX"]
    plan = run('require ["fileinto", "copy"]; fileinto :copy "inbox"; keep;')
    assert list(plan.copies) == ["INBOX"]


def test_a_script_that_does_not_parse_ends_the_sequence() -> None:
    broken = SieveError("boom", Position(2, 4))
    plan = run_sequence(
        [("site", parse('require ["fileinto", "copy"]; fileinto :copy "A";')), ("user", broken)],
        MESSAGE,
        ENVELOPE,
        now=NOW,
    )
    assert sorted(plan.copies) == ["A", "INBOX"]
    assert plan.warnings == [
        "script 'user' line 2, column 4: boom: the script does not parse; implicit keep"
    ]


def test_an_include_that_does_not_parse() -> None:
    def include(name: str, is_global: bool) -> Script | None:
        raise IncludeNotParsedError(name, SieveError("bad", Position(1, 2)))

    plan = run('require "include"; include "lib"; discard;', context=SieveContext(include=include))
    assert list(plan.copies) == ["INBOX"]
    assert not plan.discarded
    assert "included script 'lib' line 1, column 2: bad" in plan.warnings[0]


def test_vacation_and_redirects_merge_over_scripts() -> None:
    plan = run(
        'require ["vacation", "copy"]; vacation "one"; redirect :copy "x@far.test";',
        'require ["vacation"]; vacation "two"; redirect "X@far.test";',
    )
    assert plan.vacation is not None
    assert plan.vacation[0].reason == "one"
    assert list(plan.redirects) == ["x@far.test"]
    assert plan.copies == {}
