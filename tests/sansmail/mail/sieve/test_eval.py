"""The Sieve evaluator against the RFCs' examples: each script, a message and an envelope,
and the actions expected (RFC 5228 §9 and the examples of each extension's RFC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail.mail.sieve import (
    AddHeader,
    DeleteHeader,
    Discard,
    FileInto,
    Keep,
    Limits,
    Redirect,
    Reject,
    Result,
    Script,
    SieveContext,
    SieveEnvelope,
    SieveMessage,
    Vacation,
    evaluate,
    parse,
)

NOW = datetime(2026, 12, 7, 14, 0, 0, tzinfo=UTC)

# RFC 5228 §9's message, lightly extended.
MESSAGE = (
    b"Date: Tue, 1 Apr 1997 09:06:31 -0800 (PST)\r\n"
    b"From: coyote@desert.example.org\r\n"
    b"To: roadrunner@acme.example.com\r\n"
    b"Subject: I have a present for you\r\n"
    b"Message-ID: <1234@desert.example.org>\r\n"
    b"X-Caffeine: C8H10N4O2\r\n"
    b"\r\n"
    b"Look, I'm sorry about the whole anvil thing, and I really\r\n"
    b"didn't mean to try and drop it on you.  I've got a present for you.\r\n"
)
LIMITS = Limits()
CONTEXT = SieveContext()
ENVELOPE = SieveEnvelope("coyote@desert.example.org", "roadrunner@acme.example.com")


def run(
    text: str,
    message: bytes = MESSAGE,
    envelope: SieveEnvelope = ENVELOPE,
    *,
    limits: Limits = LIMITS,
    context: SieveContext = CONTEXT,
) -> Result:
    script = parse(text)
    return evaluate(
        script, SieveMessage(message), envelope, now=NOW, limits=limits, context=context
    )


def actions(
    text: str, message: bytes = MESSAGE, *, context: SieveContext = CONTEXT
) -> tuple[object, ...]:
    result = run(text, message, context=context)
    assert result.errors == ()
    return result.actions


def with_header(*lines: str, body: str = "hello\r\n") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


# -- RFC 5228 base -----------------------------------------------------------------


def test_empty_script_is_implicit_keep() -> None:
    assert actions("") == (Keep(),)


def test_rfc5228_section_9_example() -> None:
    script = """
    require "fileinto";
    if header :is "from" "boss@example.com" { keep; }
    elsif header :contains ["subject"] ["$$$"] { discard; }
    elsif anyof (header :contains ["from"] ["coyote"],
                 address :domain :is "from" "evil.example.net") {
        fileinto "Junk";
    }
    elsif size :over 1M { fileinto "Big"; }
    """
    assert actions(script) == (FileInto("Junk"),)


def test_discard_cancels_implicit_keep_and_stop_ends() -> None:
    assert actions("discard; stop; keep;") == (Discard(),)


def test_keep_then_discard_keeps() -> None:
    assert actions("keep; discard;") == (Keep(), Discard())


def test_elsif_chain_takes_first_true() -> None:
    script = "if false { discard; } elsif true { keep; } elsif true { discard; } else { discard; }"
    assert actions(script) == (Keep(),)


def test_header_is_case_insensitive_by_default_and_octet_is_not() -> None:
    assert actions('if header :is "Subject" "i HAVE a present for you" { discard; }') == (
        Discard(),
    )
    script = 'if header :comparator "i;octet" :is "subject" "i HAVE a present for you" { discard; }'
    assert actions(script) == (Keep(),)


def test_matches_wildcards_and_escapes() -> None:
    assert actions('if header :matches "subject" "I have ? present*" { discard; }') == (Discard(),)
    assert actions('if header :matches "subject" "*present" { discard; }') == (Keep(),)
    msg = with_header("Subject: a*b")
    assert actions('if header :matches "subject" "a\\\\*b" { discard; }', msg) == (Discard(),)
    msg = with_header("Subject: axxb")
    assert actions('if header :matches "subject" "a\\\\*b" { discard; }', msg) == (Keep(),)


def test_exists_and_size() -> None:
    assert actions('if exists ["From", "Date"] { discard; }') == (Discard(),)
    assert actions('if exists ["From", "X-None"] { discard; }') == (Keep(),)
    assert actions("if size :under 1K { discard; }") == (Discard(),)
    assert actions("if size :over 1K { discard; }") == (Keep(),)


def test_address_parts() -> None:
    msg = with_header('From: "Wile E." <Coyote@Desert.Example.org>', "To: a@b, c@d")
    assert actions('if address :localpart "from" "coyote" { discard; }', msg) == (Discard(),)
    assert actions('if address :domain :is "to" "d" { discard; }', msg) == (Discard(),)
    assert actions('if address :all :is "from" "Wile E." { discard; }', msg) == (Keep(),)


def test_header_is_rfc2047_decoded() -> None:
    msg = with_header("Subject: =?utf-8?q?caf=C3=A9?= ok")
    assert actions('if header :is "subject" "café ok" { discard; }', msg) == (Discard(),)


def test_envelope_null_sender() -> None:
    env = SieveEnvelope("", "me@example.org")
    script = 'require "envelope"; if envelope :all :is "from" "" { discard; }'
    assert run(script, envelope=env).actions == (Discard(),)
    script = 'require "envelope"; if envelope :domain :is "to" "example.org" { discard; }'
    assert run(script, envelope=env).actions == (Discard(),)


def test_redirect_and_limits() -> None:
    assert actions('redirect "a@example.com";') == (Redirect("a@example.com"),)
    # the same address twice is one redirect (RFC 5228 §2.10.3)
    assert actions('redirect "a@example.com"; redirect "A@example.com";') == (
        Redirect("a@example.com"),
    )
    many = "".join(f'redirect "u{i}@example.com";' for i in range(5))
    result = run(many)
    assert result.actions == (Keep(),)
    assert "redirects" in result.errors[0].message
    result = run('redirect "not an address";')
    assert result.actions == (Keep(),)
    assert result.errors


def test_duplicate_fileinto_is_done_once() -> None:
    script = 'require "fileinto"; fileinto "A"; fileinto "A"; fileinto "B";'
    assert actions(script) == (FileInto("A"), FileInto("B"))


def test_runtime_error_falls_back_to_keep_with_position() -> None:
    # An address known only at run time is no address: the discard before is dropped.
    script = 'require "variables";\ndiscard;\nset "a" "no at sign";\n  redirect "${a}";'
    result = run(script)
    assert result.actions == (Keep(),)
    assert (result.errors[0].line, result.errors[0].column) == (4, 3)


def test_step_limit_bounds_cpu() -> None:
    script = "if anyof (" + ", ".join(['header :contains "x" "y"'] * 200) + ") { discard; }"
    result = run(script, limits=Limits(max_steps=50))
    assert result.actions == (Keep(),)
    assert "steps" in result.errors[0].message


def test_matches_does_not_backtrack() -> None:
    msg = with_header("Subject: " + "a" * 3000)
    pattern = "*a" * 40 + "b"
    result = run(f'if header :matches "subject" "{pattern}" {{ discard; }}', msg)
    assert result.actions == (Keep(),)
    assert result.errors == ()


# -- fileinto, copy, mailbox, reject --------------------------------------------------


def test_copy_keeps_implicit_keep() -> None:
    script = 'require ["fileinto", "copy"]; fileinto :copy "Archive"; redirect :copy "x@y.org";'
    assert actions(script) == (
        FileInto("Archive", copy=True),
        Redirect("x@y.org", copy=True),
        Keep(),
    )


def test_fileinto_create_and_mailboxexists() -> None:
    script = """require ["fileinto", "mailbox"];
    if mailboxexists "Lists" { fileinto "Lists"; } else { fileinto :create "New"; }"""
    assert actions(script) == (FileInto("New", create=True),)
    ctx = SieveContext(mailbox_exists=lambda name: name == "Lists")
    assert actions(script, context=ctx) == (FileInto("Lists"),)


def test_reject_and_ereject() -> None:
    assert actions('require "reject"; reject "go away";') == (Reject("go away"),)
    assert actions('require "ereject"; ereject "no";') == (Reject("no", ereject=True),)


def test_reject_conflicts_with_fileinto() -> None:
    result = run('require ["reject", "fileinto"];\nfileinto "A";\n reject "no";')
    assert result.actions == (Keep(),)
    assert "conflicts" in result.errors[0].message
    assert (result.errors[0].line, result.errors[0].column) == (3, 2)


# -- imap4flags (RFC 5232) --------------------------------------------------------------


def test_imap4flags_internal_variable_and_implicit_keep() -> None:
    script = r"""require ["imap4flags", "fileinto"];
    setflag "\\Seen";
    addflag ["\\Flagged", "\\seen Work"];
    removeflag "work";
    fileinto "A";
    fileinto :flags "Only" "B";
    if hasflag :is "\\flagged" { keep; }
    """
    assert actions(script) == (
        FileInto("A", ("\\Seen", "\\Flagged")),
        FileInto("B", ("Only",)),
        Keep(("\\Seen", "\\Flagged")),
    )


def test_imap4flags_rfc5232_example() -> None:
    script = r"""require ["imap4flags", "fileinto"];
    if header :contains "from" "coyote" {
        setflag "\\Deleted";
        fileinto "Trash";
    }"""
    assert actions(script) == (FileInto("Trash", ("\\Deleted",)),)


def test_hasflag_count_with_variables() -> None:
    script = r"""require ["imap4flags", "variables", "relational", "comparator-i;ascii-numeric"];
    set "f" "";
    addflag "f" ["a b", "c"];
    if hasflag :count "ge" :comparator "i;ascii-numeric" "f" "3" { discard; }"""
    assert actions(script) == (Discard(),)


# -- variables (RFC 5229) ---------------------------------------------------------------


def test_variables_modifiers() -> None:
    script = """require ["variables", "fileinto"];
    set "a" "juMBlEd";
    set :lower :upperfirst "b" "${a}";
    set :length "n" "${b}";
    set :quotewildcard "q" "a*b?";
    fileinto "${b}-${n}-${q}";"""
    assert actions(script) == (FileInto("Jumbled-7-a\\*b\\?"),)


def test_match_variables_rfc5229_example() -> None:
    script = """require ["variables", "fileinto"];
    if header :matches "List-ID" "*<*@*" {
        fileinto "INBOX.lists.${2}"; stop;
    }"""
    msg = with_header("List-ID: Sieve list <sieve.example.org@lists.example.org>")
    assert actions(script, msg) == (FileInto("INBOX.lists.sieve.example.org"),)


def test_match_variables_are_the_shortest_match() -> None:
    script = """require ["variables", "fileinto"];
    if header :matches "subject" "*e*" { fileinto "${1}|${2}|${0}"; }"""
    msg = with_header("Subject: one three")
    assert actions(script, msg) == (FileInto("on| three|one three"),)


def test_match_variable_question_marks_in_order() -> None:
    script = """require ["variables", "fileinto"];
    if header :matches "subject" "?x*y?" { fileinto "${1}${2}${3}"; }"""
    assert actions(script, with_header("Subject: axMIDyb")) == (FileInto("aMIDb"),)


def test_string_test_and_unknown_variable_is_empty() -> None:
    script = """require ["variables"];
    if string :is "${nothing}" "" { discard; }"""
    assert actions(script) == (Discard(),)


# -- relational (RFC 5231) --------------------------------------------------------------


def test_relational_examples() -> None:
    msg = with_header("To: a@b, c@d", "Cc: e@f", "X-Priority: 3")
    script = """require ["relational", "comparator-i;ascii-numeric"];
    if address :count "ge" :comparator "i;ascii-numeric" ["to", "cc"] ["3"] { discard; }"""
    assert actions(script, msg) == (Discard(),)
    script = """require ["relational", "comparator-i;ascii-numeric"];
    if header :value "lt" :comparator "i;ascii-numeric" "x-priority" "2" { discard; }"""
    assert actions(script, msg) == (Keep(),)
    script = """require ["relational"];
    if header :value "gt" "x-priority" "2" { discard; }"""
    assert actions(script, msg) == (Discard(),)


# -- subaddress (RFC 5233) --------------------------------------------------------------


def test_subaddress_envelope_detail_uses_original_recipient() -> None:
    env = SieveEnvelope("a@b.org", "ken@example.com", original_to="ken+sieve@example.com")
    script = """require ["envelope", "subaddress", "fileinto"];
    if envelope :detail "to" "sieve" { fileinto "sieve"; }"""
    assert run(script, envelope=env).actions == (FileInto("sieve"),)
    script = """require ["envelope", "subaddress", "fileinto"];
    if envelope :user "to" "ken" { fileinto "ken"; }"""
    assert run(script, envelope=env).actions == (FileInto("ken"),)


def test_detail_without_separator_never_matches() -> None:
    script = """require ["subaddress"];
    if address :detail :matches "from" "*" { discard; }"""
    assert actions(script) == (Keep(),)


def test_detail_separator_is_configurable() -> None:
    msg = with_header("From: joe-lists@example.com")
    script = 'require "subaddress"; if address :detail "from" "lists" { discard; }'
    assert actions(script, msg, context=SieveContext(detail_separator="-")) == (Discard(),)


# -- vacation (RFC 5230) ----------------------------------------------------------------


def test_vacation_defaults() -> None:
    (vacation, keep) = actions('require "vacation"; vacation "I am away";')
    assert keep == Keep()
    assert isinstance(vacation, Vacation)
    assert vacation.subject == "Auto: I have a present for you"
    assert vacation.seconds == 7 * 86400
    assert vacation.reason == "I am away"
    assert vacation.handle


def test_vacation_parameters_and_handle() -> None:
    script = """require "vacation";
    vacation :days 23 :addresses ["tjs@example.edu", "ts4z@landru.example.edu"]
      :subject "Gone" :from "tjs@example.edu" :handle "h1" :mime "body";"""
    (vacation, _) = actions(script)
    assert vacation == Vacation(
        "body",
        "Gone",
        "tjs@example.edu",
        ("tjs@example.edu", "ts4z@landru.example.edu"),
        23 * 86400,
        "h1",
        mime=True,
    )
    # without :handle, different reasons are different handles (RFC 5230 §4.2)
    (a, _) = actions('require "vacation"; vacation "one";')
    (b, _) = actions('require "vacation"; vacation "two";')
    assert isinstance(a, Vacation)
    assert isinstance(b, Vacation)
    assert a.handle != b.handle


def test_vacation_days_are_bounded() -> None:
    (vacation, _) = actions('require "vacation"; vacation :days 1000 "x";')
    assert isinstance(vacation, Vacation)
    assert vacation.seconds == Limits().vacation_max_seconds


# -- body (RFC 5173) --------------------------------------------------------------------


MULTIPART = (
    b"From: a@b\r\nSubject: m\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n'
    b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\nMeet at the caf=C3=A9\r\n"
    b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"c2VjcmV0IHBsYW5z\r\n--XX--\r\n"
)


def test_body_text_decodes_parts() -> None:
    script = 'require "body"; if body :contains "café" { discard; }'
    assert actions(script, MULTIPART) == (Discard(),)
    script = 'require "body"; if body :contains "secret" { discard; }'
    assert actions(script, MULTIPART) == (Keep(),)
    script = 'require "body"; if body :content "application" :contains "secret" { discard; }'
    assert actions(script, MULTIPART) == (Discard(),)
    script = 'require "body"; if body :raw :contains "c2VjcmV0" { discard; }'
    assert actions(script, MULTIPART) == (Discard(),)


# -- date and index (RFC 5260) ----------------------------------------------------------


def test_date_parts_and_zone() -> None:
    script = """require ["date", "relational", "fileinto"];
    if date :zone "+0000" "date" "hour" "17" { fileinto "utc17"; }
    if date :originalzone "date" "zone" "-0800" { fileinto "orig"; }
    if date :value "ge" :originalzone "date" "date" "1997-04-01" { fileinto "after"; }
    if date :originalzone "date" "weekday" "2" { fileinto "tuesday"; }"""
    assert actions(script) == (
        FileInto("utc17"),
        FileInto("orig"),
        FileInto("after"),
        FileInto("tuesday"),
    )


def test_currentdate_uses_now() -> None:
    script = """require ["date", "relational"];
    if allof (currentdate :value "ge" "date" "2026-12-01",
              currentdate :zone "+0100" "hour" "15",
              currentdate "julian" "61381") { discard; }"""
    assert actions(script) == (Discard(),)


def test_index_and_last() -> None:
    msg = with_header("Received: from a", "Received: from b", "Received: from c")
    script = 'require "index"; if header :index 2 :is "received" "from b" { discard; }'
    assert actions(script, msg) == (Discard(),)
    script = 'require "index"; if header :index 1 :last :is "received" "from c" { discard; }'
    assert actions(script, msg) == (Discard(),)


# -- duplicate (RFC 7352) ---------------------------------------------------------------


def test_duplicate_asks_the_store_and_reports_ids() -> None:
    script = 'require "duplicate"; if duplicate { discard; }'
    result = run(script)
    assert result.actions == (Keep(),)
    assert len(result.seen) == 1
    ((key, seconds),) = result.seen
    assert seconds == Limits().duplicate_default_seconds
    result = run(script, context=SieveContext(seen=lambda k: k == key))
    assert result.actions == (Discard(),)
    assert result.seen == ()


# -- editheader (RFC 5293) --------------------------------------------------------------


def test_editheader_edits_are_seen_by_later_tests() -> None:
    script = """require ["editheader"];
    addheader "X-Hello" "World";
    if header :is "x-hello" "World" { addheader :last "X-Seen" "yes"; }
    deleteheader "x-caffeine";
    if not exists "x-caffeine" { discard; }"""
    assert actions(script) == (
        AddHeader("X-Hello", "World"),
        AddHeader("X-Seen", "yes", last=True),
        DeleteHeader("x-caffeine", 1),
        Discard(),
    )


def test_editheader_never_deletes_received_or_auto_submitted() -> None:
    msg = with_header("Received: from a", "Auto-Submitted: auto-replied", "Subject: s")
    script = """require "editheader";
    deleteheader "Received"; deleteheader "auto-submitted"; addheader "Received" "x";"""
    assert actions(script, msg) == (AddHeader("Received", "x"), Keep())


def test_deleteheader_by_value_and_index() -> None:
    msg = with_header("X-A: one", "X-A: two", "X-A: three")
    script = 'require "editheader"; deleteheader :matches "x-a" "t*";'
    assert actions(script, msg) == (DeleteHeader("x-a", 3), DeleteHeader("x-a", 2), Keep())
    script = 'require ["editheader", "index"]; deleteheader :index 1 :last "x-a";'
    assert actions(script, msg) == (DeleteHeader("x-a", 3), Keep())


# -- include (RFC 6609) -----------------------------------------------------------------


def test_include_once_optional_and_globals() -> None:
    scripts = {
        "spam": parse(
            'require ["fileinto", "variables", "include"]; global "box"; fileinto "${box}";'
        ),
        "loop": parse('require "include"; include "loop";'),
    }
    ctx = SieveContext(include=lambda name, is_global: scripts.get(name))
    script = """require ["include", "variables"];
    global "box"; set "box" "Junk";
    include "spam"; include :once "spam"; include :once "spam";
    include :optional "missing";"""
    assert actions(script, context=ctx) == (FileInto("Junk"),)
    result = run('require "include"; include "loop";', context=ctx)
    assert result.actions == (Keep(),)
    assert "loop" in result.errors[0].message
    result = run('require "include"; include "missing";', context=ctx)
    assert result.actions == (Keep(),)
    assert result.errors


def test_return_ends_only_the_included_script() -> None:
    scripts = {"r": parse('require "include"; return; discard;')}
    ctx = SieveContext(include=lambda name, is_global: scripts.get(name))
    assert actions('require "include"; include "r"; keep;', context=ctx) == (Keep(),)


# -- encoded-character (RFC 5228 §2.4.2.4) ----------------------------------------------


def test_encoded_character() -> None:
    script = """require ["encoded-character", "fileinto"];
    fileinto "${hex:41 42}${unicode:263a}";"""
    assert actions(script) == (FileInto("AB☺"),)
    script = 'require "fileinto"; fileinto "${hex:41}";'  # not required: left as written
    assert actions(script) == (FileInto("${hex:41}"),)


# -- safety -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        b"Date: Fri, 31 Dec 9999 23:59:59 -1200\r\n\r\n",
        b"Date: Mon, 1 Jan 0001 00:00:00 +1400\r\n\r\n",
        b"",
        b"\r\n",
        b"Subject: \xff\xfe\r\n\r\n",
        b"From: <<<@@@>>>\r\n\r\n",
        b"garbage no header",
    ],
)
def test_broken_messages_never_raise(message: bytes) -> None:
    script: Script = parse(
        """require ["body", "date", "variables", "subaddress"];
        if anyof (address :detail "from" "x", header :matches "subject" "*",
                  body :contains "x", date "date" "year" "2000",
                  date :zone "+1400" "date" "year" "2000",
                  date :zone "-1200" "date" "year" "2000") { discard; }"""
    )
    result = evaluate(script, SieveMessage(message), ENVELOPE, now=NOW)
    assert result.errors == ()


def test_now_without_zone_is_utc() -> None:
    script = parse('require "date"; if currentdate "zone" "+0000" { discard; }')
    naive = datetime(2026, 1, 1)
    result = evaluate(script, SieveMessage(MESSAGE), ENVELOPE, now=naive)
    assert result.actions == (Discard(),)
    zoned = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=-5)))
    result = evaluate(script, SieveMessage(MESSAGE), ENVELOPE, now=zoned)
    assert result.actions == (Keep(),)


def test_question_mark_segments_on_a_long_value() -> None:
    # a segment with "?" between stars is searched for, not tried at every position
    msg = with_header("Subject: " + "ab" * 20000 + "xqz" + "ab" * 10)
    script = """require ["variables", "fileinto"];
    if header :matches "subject" "*x?z*" { fileinto "${2}"; }"""
    assert actions(script, msg) == (FileInto("q"),)
    assert actions('if header :matches "subject" "*x?y*" { discard; }', msg) == (Keep(),)


@given(st.binary(max_size=2000))
@settings(max_examples=200, deadline=None)
def test_any_message_gives_actions_never_an_exception(raw: bytes) -> None:
    result = evaluate(BROAD, SieveMessage(raw), ENVELOPE, now=NOW)
    assert result.actions
    assert result.errors == ()


BROAD = parse(
    """require ["body", "date", "variables", "subaddress", "relational", "index",
               "editheader", "imap4flags", "fileinto", "duplicate", "envelope"];
    if anyof (address :detail :matches "from" "*", header :matches "subject" "*?*",
              body :text :contains "x", body :raw :matches "*a?*",
              date :value "ge" "date" "year" "2000", header :index 1 :last :count "gt" "to" "0",
              envelope :user "to" "x", duplicate, exists "x-y") {
        addflag "${1}"; deleteheader "subject"; addheader "X-Seen" "${0}";
    }
    if header :matches "x-seen" "*" { fileinto "seen"; }"""
)


_FIELD_VALUES = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            "Tue, 1 Apr 1997 09:06:31 -0800",
            "Fri, 31 Dec 9999 23:59:59 -1200",
            "1 Jan 0001 00:00:00 +9959",
            "=?utf-8?b?w6k=?= <a+b@c>",
            "multipart/mixed; boundary=x",
            "group: a@b, <c@d>;, e",
            "<1@x>",
        ]
    ),
)
_MESSAGES = st.builds(
    lambda fields, body: (
        "".join(f"{name}: {value}\r\n" for name, value in fields) + "\r\n" + body
    ).encode("utf-8", "surrogatepass"),
    st.lists(
        st.tuples(
            st.sampled_from(
                ["Date", "From", "To", "Subject", "Received", "Content-Type", "Message-ID"]
            ),
            _FIELD_VALUES,
        ),
        max_size=8,
    ),
    st.text(max_size=200),
)


@given(_MESSAGES)
@settings(max_examples=300, deadline=None)
def test_any_header_gives_actions_never_an_exception(raw: bytes) -> None:
    result = evaluate(BROAD, SieveMessage(raw), ENVELOPE, now=NOW)
    assert result.actions
    assert result.errors == ()
