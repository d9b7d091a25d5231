"""RFC 5804's examples (§2), written out byte for byte, played whole, byte by byte and in
odd chunks."""

from __future__ import annotations

import pytest
from managesieve_helpers import CAPABILITIES_BYTES, Step, chunks, events_of, greeted, play

from sansmail import SERVER
from sansmail.managesieve import (
    Authenticate,
    Bye,
    Capabilities,
    Capability,
    Challenge,
    CheckScript,
    Connection,
    DeleteScript,
    GetScript,
    HaveSpace,
    ListScripts,
    Logout,
    No,
    Noop,
    Ok,
    Phase,
    PutScript,
    RenameScript,
    SaslCancel,
    SaslResponse,
    Script,
    ScriptList,
    SetActive,
    Stage,
    StartTls,
    Unauthenticate,
)

PLAIN = b"\0test\0password"
PLAIN_B64 = b"AHRlc3QAcGFzc3dvcmQ="

LOGIN: list[Step] = [
    (
        b'AUTHENTICATE "PLAIN" "' + PLAIN_B64 + b'"\r\n',
        Authenticate(mechanism="PLAIN", initial_response=PLAIN),
        Ok(),
        b"OK\r\n",
    )
]

# RFC 5804 §2.6's first script, with its octets counted here (the RFC's "{31+}" does
# not match its own text).
BAD_SCRIPT = b"#comment\r\nInvalidSieveCommand\r\n\r\n"
GOOD_SCRIPT = (
    b'require ["fileinto"];\r\n\r\nif envelope :contains "to" "tmartin+sent" {\r\n'
    b'  fileinto "INBOX.sent";\r\n}'
)
# §2.9: 54 octets.
WONDERFUL = b'#this is my wonderful script\r\nreject "I reject all";\r\n'

SCRIPTS: list[Step] = [
    # §2.5 HAVESPACE
    (
        b'HAVESPACE "myscript" 999999\r\n',
        HaveSpace(name="myscript", size=999999),
        No(code="QUOTA/MAXSIZE", text="Quota exceeded"),
        b'NO (QUOTA/MAXSIZE) "Quota exceeded"\r\n',
    ),
    (b'HAVESPACE "foobar" 435\r\n', HaveSpace(name="foobar", size=435), Ok(), b"OK\r\n"),
    # §2.6 PUTSCRIPT, a literal the parser refuses, then a good one (case-insensitive names)
    (
        b'Putscript "foo" {%d+}\r\n' % len(BAD_SCRIPT) + BAD_SCRIPT + b"\r\n",
        PutScript(name="foo", content=BAD_SCRIPT),
        No(text="line 2: Syntax error"),
        b'NO "line 2: Syntax error"\r\n',
    ),
    (
        b'Putscript "mysievescript" {%d+}\r\n' % len(GOOD_SCRIPT) + GOOD_SCRIPT + b"\r\n",
        PutScript(name="mysievescript", content=GOOD_SCRIPT),
        Ok(),
        b"OK\r\n",
    ),
    (
        b'PUTSCRIPT "warn" "redirect \\"a@example.net\\";"\r\n',
        PutScript(name="warn", content=b'redirect "a@example.net";'),
        Ok(code="WARNINGS", text="line 8: server redirect action limit is 2"),
        b'OK (WARNINGS) "line 8: server redirect action limit is 2"\r\n',
    ),
    # §2.7 LISTSCRIPTS
    (
        b"Listscripts\r\n",
        ListScripts(),
        ScriptList(
            names=("summer_script", "vacation_script", 'clever"script', "main_script"),
            active="main_script",
        ),
        b'"summer_script"\r\n"vacation_script"\r\n"clever\\"script"\r\n'
        b'"main_script" ACTIVE\r\nOK\r\n',
    ),
    # §2.8 SETACTIVE
    (b'Setactive "vacationscript"\r\n', SetActive(name="vacationscript"), Ok(), b"OK\r\n"),
    (b'Setactive ""\r\n', SetActive(name=""), Ok(), b"OK\r\n"),
    (
        b'Setactive "baz"\r\n',
        SetActive(name="baz"),
        No(code="NONEXISTENT", text="There is no script by that name"),
        b'NO (NONEXISTENT) "There is no script by that name"\r\n',
    ),
    # §2.9 GETSCRIPT
    (
        b'Getscript "myscript"\r\n',
        GetScript(name="myscript"),
        Script(content=WONDERFUL),
        b"{54}\r\n" + WONDERFUL + b"\r\nOK\r\n",
    ),
    # §2.10 DELETESCRIPT
    (b'Deletescript "foo"\r\n', DeleteScript(name="foo"), Ok(), b"OK\r\n"),
    (
        b'Deletescript "baz"\r\n',
        DeleteScript(name="baz"),
        No(code="ACTIVE", text="You may not delete an active script"),
        b'NO (ACTIVE) "You may not delete an active script"\r\n',
    ),
    # §2.11.1 RENAMESCRIPT
    (
        b'Renamescript "foo" "bar"\r\n',
        RenameScript(old_name="foo", new_name="bar"),
        No(code="ALREADYEXISTS", text="A script named bar already exists"),
        b'NO (ALREADYEXISTS) "A script named bar already exists"\r\n',
    ),
    (
        b"RENAMESCRIPT {3+}\r\nfoo {3+}\r\nbaz\r\n",
        RenameScript(old_name="foo", new_name="baz"),
        Ok(),
        b"OK\r\n",
    ),
    # §2.12 CHECKSCRIPT, an error report over several lines goes out as a literal
    (
        b"CheckScript {%d+}\r\n" % len(BAD_SCRIPT) + BAD_SCRIPT + b"\r\n",
        CheckScript(content=BAD_SCRIPT),
        No(text="line 2: Syntax error\r\nline 3: more"),
        b"NO {34}\r\nline 2: Syntax error\r\nline 3: more\r\n",
    ),
    # §2.13 NOOP with a tag
    (
        b'NOOP "STARTTLS-SYNC-42"\r\n',
        Noop(tag="STARTTLS-SYNC-42"),
        Ok(code="TAG", code_argument="STARTTLS-SYNC-42", text="Done"),
        b'OK (TAG "STARTTLS-SYNC-42") "Done"\r\n',
    ),
    (b"noop\r\n", Noop(), Ok(text="Done"), b'OK "Done"\r\n'),
    # §2.4 CAPABILITY once authenticated
    (
        b"CAPABILITY\r\n",
        Capability(),
        Capabilities(
            implementation="sansmail",
            sasl=(),
            sieve=("fileinto",),
            max_redirects=4,
            notify=("mailto",),
            owner="test",
        ),
        b'"IMPLEMENTATION" "sansmail"\r\n"SASL" ""\r\n"SIEVE" "fileinto"\r\n'
        b'"MAXREDIRECTS" "4"\r\n"NOTIFY" "mailto"\r\n"OWNER" "test"\r\n"VERSION" "1.0"\r\n'
        b"OK\r\n",
    ),
    # §2.14.1 UNAUTHENTICATE, then §2.3 LOGOUT
    (b"UNAUTHENTICATE\r\n", Unauthenticate(), Ok(), b"OK\r\n"),
    (b"Logout\r\n", Logout(), Ok(), b"OK\r\n"),
]

SIZES = [[], [1], [2, 3, 5, 7], [64]]


@pytest.mark.parametrize("sizes", SIZES)
def test_script_management(sizes: list[int]) -> None:
    conn = greeted()
    play(conn, LOGIN, sizes=sizes)
    assert conn.stage is Stage.AUTHENTICATED
    play(conn, SCRIPTS[:-2], sizes=sizes)
    play(conn, SCRIPTS[-2:-1], sizes=sizes)
    assert conn.stage is Stage.NON_AUTHENTICATED
    play(conn, SCRIPTS[-1:], sizes=sizes)
    assert conn.our_state is Phase.CLOSED


@pytest.mark.parametrize("sizes", SIZES)
def test_all_pipelined_at_once(sizes: list[int]) -> None:
    # Everything sent ahead is read one command at a time, each after its answer.
    conn = greeted()
    steps = LOGIN + SCRIPTS
    wire = b"".join(step[0] for step in steps)
    got = []
    for piece in chunks(wire, sizes or [len(wire)]):
        conn.receive_data(piece)
    for _client, expected, answer, server in steps:
        got = events_of(conn)
        assert got == [expected]
        assert answer is not None
        assert conn.send(answer) == server  # type: ignore[arg-type]
    assert conn.our_state is Phase.CLOSED


def test_authenticate_with_challenges_and_literals() -> None:
    # §2.1: the challenges are strings; the client answers with strings, quoted or literal.
    conn = greeted()
    play(
        conn,
        [
            (
                b'Authenticate "DIGEST-MD5"\r\n',
                Authenticate(mechanism="DIGEST-MD5"),
                Challenge(data=b'realm="example",nonce="x"'),
                b'"cmVhbG09ImV4YW1wbGUiLG5vbmNlPSJ4Ig=="\r\n',
            ),
            (
                b"{8+}\r\nYWJjZGVm\r\n",
                SaslResponse(data=b"abcdef"),
                Challenge(),
                b'""\r\n',
            ),
            (
                b'""\r\n',
                SaslResponse(data=b""),
                Ok(code="SASL", code_argument="cnNwYXV0aD0x"),
                b'OK (SASL "cnNwYXV0aD0x")\r\n',
            ),
        ],
    )
    assert conn.stage is Stage.AUTHENTICATED


def test_authenticate_initial_response_as_literal() -> None:
    conn = greeted()
    play(
        conn,
        [
            (
                b'AUTHENTICATE "plain" {%d+}\r\n' % len(PLAIN_B64) + PLAIN_B64 + b"\r\n",
                Authenticate(mechanism="PLAIN", initial_response=PLAIN),
                No(text="Authentication failed"),
                b'NO "Authentication failed"\r\n',
            )
        ],
    )
    assert conn.stage is Stage.NON_AUTHENTICATED


def test_authenticate_cancelled() -> None:
    conn = greeted()
    play(
        conn,
        [
            (b'AUTHENTICATE "PLAIN"\r\n', Authenticate(mechanism="PLAIN"), Challenge(), b'""\r\n'),
            (b'"*"\r\n', SaslCancel(), No(text="cancelled"), b'NO "cancelled"\r\n'),
        ],
    )
    assert conn.stage is Stage.NON_AUTHENTICATED
    assert conn.our_state is Phase.COMMAND


def test_starttls_then_the_capabilities_again() -> None:
    # §2.2: after the handshake the server sends its capability listing again, without
    # STARTTLS and perhaps with more SASL mechanisms.
    conn = greeted()
    play(conn, [(b"StartTls\r\n", StartTls(), Ok(), b"OK\r\n")])
    assert conn.our_state is Phase.TLS_PENDING
    conn.start_tls()
    assert conn.our_state is Phase.GREETING
    assert conn.capabilities is None
    after = Capabilities(
        implementation="Example1 ManageSieved v001",
        sasl=("PLAIN", "DIGEST-MD5", "GSSAPI"),
        sieve=("fileinto", "vacation"),
        language="fr",
    )
    assert conn.send(after) == (
        b'"IMPLEMENTATION" "Example1 ManageSieved v001"\r\n'
        b'"SASL" "PLAIN DIGEST-MD5 GSSAPI"\r\n"SIEVE" "fileinto vacation"\r\n'
        b'"LANGUAGE" "fr"\r\n"VERSION" "1.0"\r\nOK\r\n'
    )
    assert conn.capabilities == after
    assert conn.tls_active
    play(conn, LOGIN)


def test_greeting_bye_closes() -> None:
    conn = Connection(SERVER)
    assert conn.send(Bye(code="TRYLATER", text="busy")) == b'BYE (TRYLATER) "busy"\r\n'
    assert conn.our_state is Phase.CLOSED


def test_referral() -> None:
    conn = greeted()
    play(
        conn,
        [
            (
                b'AUTHENTICATE "PLAIN" "' + PLAIN_B64 + b'"\r\n',
                Authenticate(mechanism="PLAIN", initial_response=PLAIN),
                Bye(code="REFERRAL", code_argument="sieve://other.example.com"),
                b"BYE (REFERRAL sieve://other.example.com)\r\n",
            )
        ],
    )
    assert conn.our_state is Phase.CLOSED


def test_greeting_bytes() -> None:
    assert CAPABILITIES_BYTES.endswith(b"OK\r\n")
