"""The evaluator against Pigeonhole (Dovecot's Sieve, Debian's dovecot-sieve): the same
scripts and messages through its ``sieve-test`` tool, and the same actions must come out.

Skipped where ``sieve-test`` is not installed. Only what both show is compared: the
folders stored into with their flags, redirects, discard, reject, and whether the run
failed. Vacation (whose sending rules are the caller's), currentdate (the clock) and
header edits (sieve-test does not print them; their effect on later tests is compared)
stay in test_eval.py.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from sansmail.mail.sieve import (
    Discard,
    FileInto,
    Keep,
    Redirect,
    Reject,
    SieveEnvelope,
    SieveMessage,
    evaluate,
    parse,
)

SIEVE_TEST = shutil.which("sieve-test")
pytestmark = pytest.mark.skipif(SIEVE_TEST is None, reason="Pigeonhole's sieve-test is absent")

PLAIN = (
    b"Date: Tue, 1 Apr 1997 09:06:31 -0800 (PST)\r\n"
    b'From: "Wile E." <coyote+acme@desert.example.org>\r\n'
    b'To: roadrunner@acme.example.com, "X Y" <c@d.example>\r\n'
    b"Cc: e@f.example\r\n"
    b"Subject: I have a =?utf-8?q?pr=C3=A9sent?= for you\r\n"
    b"Message-ID: <1234@desert.example.org>\r\n"
    b"List-ID: Sieve list <sieve.example.org@lists.example.org>\r\n"
    b"X-A: one\r\nX-A: two\r\nX-A: three\r\n"
    b"X-Priority: 3\r\n"
    b"\r\n"
    b"Look, I'm sorry about the whole anvil thing.\r\n"
)
MULTIPART = (
    b"From: a@b.example\r\nSubject: m\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n'
    b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\nMeet at the caf=C3=A9\r\n"
    b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"c2VjcmV0IHBsYW5z\r\n--XX--\r\n"
)
GROUPS = (
    b"From: a@b.example\r\n"
    b"To: undisclosed-recipients:;, Team: x@y.example, z@w.example;\r\n"
    b"Subject: 3 apples * ? \\ x\r\nX-N: 010\r\nX-N: abc\r\nX-E:\r\n\r\nbody\r\n"
)

CASES: list[tuple[str, bytes]] = [
    ("", PLAIN),
    ('require "fileinto"; if header :contains "from" "coyote" { fileinto "Junk"; }', PLAIN),
    ("keep; discard;", PLAIN),
    ("discard; stop; keep;", PLAIN),
    ('if header :matches "subject" "I have ? pr*" { discard; }', PLAIN),
    ('if header :is "subject" "i have a présent for YOU" { discard; }', PLAIN),
    (
        'if header :comparator "i;octet" :is "subject" "i have a présent for YOU" { discard; }',
        PLAIN,
    ),
    ('if exists ["From", "X-Nothing"] { discard; }', PLAIN),
    ("if size :over 100 { discard; }", PLAIN),
    ('if address :domain :is "to" "d.example" { discard; }', PLAIN),
    ('if address :all :is "from" "Wile E." { discard; }', PLAIN),
    ('redirect "a@example.com"; redirect "a@example.com";', PLAIN),
    ('require ["fileinto", "copy"]; fileinto :copy "A"; redirect :copy "x@y.example";', PLAIN),
    ('require ["fileinto"]; fileinto "A"; fileinto "A"; fileinto "B";', PLAIN),
    ('require ["reject"]; reject "go away";', PLAIN),
    ('require ["reject", "fileinto"]; fileinto "A"; reject "no";', PLAIN),
    (
        r"""require ["imap4flags", "fileinto"];
        setflag "\\Seen"; addflag ["\\Flagged", "\\seen Work"]; removeflag "work";
        fileinto "A"; fileinto :flags "Only" "B";
        if hasflag :is "\\flagged" { keep; }""",
        PLAIN,
    ),
    (r'require "imap4flags"; addflag "\\Answered";', PLAIN),
    (
        """require ["variables", "fileinto"];
        if header :matches "List-ID" "*<*@*" { fileinto "INBOX.lists.${2}"; stop; }""",
        PLAIN,
    ),
    (
        """require ["variables", "fileinto"];
        if header :matches "subject" "*e*" { fileinto "${1}|${2}|${0}"; }
        if header :matches "subject" "?*v?*" { fileinto "${1}|${2}|${3}|${4}"; }""",
        PLAIN,
    ),
    (
        """require ["variables", "fileinto"];
        set "a" "juMBlEd"; set :lower :upperfirst "b" "${a}"; set :length "n" "${b}";
        set :quotewildcard "q" "a*b?"; fileinto "${b}-${n}-${q}";""",
        PLAIN,
    ),
    (
        """require ["relational", "comparator-i;ascii-numeric", "fileinto"];
        if address :count "ge" :comparator "i;ascii-numeric" ["to", "cc"] ["3"] {
            fileinto "three"; }
        if header :value "lt" :comparator "i;ascii-numeric" "x-priority" "2" { fileinto "lt"; }
        if header :value "gt" "x-priority" "2" { fileinto "gt"; }""",
        PLAIN,
    ),
    (
        """require ["subaddress", "envelope", "fileinto"];
        if address :detail "from" "acme" { fileinto "detail"; }
        if address :user "from" "coyote" { fileinto "user"; }
        if envelope :detail "to" "sieve" { fileinto "env-detail"; }
        if envelope :domain "from" "sender.example" { fileinto "env-from"; }
        if address :detail :matches "to" "*" { fileinto "never"; }""",
        PLAIN,
    ),
    (
        """require ["body", "fileinto"];
        if body :contains "café" { fileinto "b1"; }
        if body :contains "secret" { fileinto "b2"; }
        if body :content "application" :contains "secret" { fileinto "b3"; }
        if body :raw :contains "c2VjcmV0" { fileinto "b4"; }""",
        MULTIPART,
    ),
    (
        """require ["date", "relational", "variables", "fileinto"];
        if date :zone "+0000" "date" "hour" "17" { fileinto "utc17"; }
        if date :originalzone "date" "zone" "-0800" { fileinto "orig"; }
        if date :value "ge" :originalzone "date" "date" "1997-04-01" { fileinto "after"; }
        if date :originalzone :matches "date" "iso8601" "*" { fileinto "iso-${0}"; }
        if date :zone "+0130" :matches "date" "julian" "*" { fileinto "jul-${0}"; }
        if date :zone "+0000" :matches "date" "std11" "*" { fileinto "std-${0}"; }
        if date :originalzone :matches "date" "weekday" "*" { fileinto "w-${0}"; }""",
        PLAIN,
    ),
    (
        """require ["index", "fileinto"];
        if header :index 2 :is "x-a" "two" { fileinto "second"; }
        if header :index 1 :last :is "x-a" "three" { fileinto "last"; }
        if header :index 9 :is "x-a" "three" { fileinto "none"; }
        if address :index 1 :is "to" "c@d.example" { fileinto "first-to-field"; }
        if address :index 2 :is "to" "c@d.example" { fileinto "no-second-field"; }""",
        PLAIN,
    ),
    (
        """require ["editheader", "relational", "fileinto"];
        addheader "X-Hello" "World";
        if header :is "x-hello" "World" { fileinto "added"; }
        deleteheader :matches "x-a" "t*";
        if header :count "eq" "x-a" "1" { fileinto "one-left"; }
        deleteheader "received"; addheader "Received" "x";
        if not exists "received" { fileinto "protected"; }""",
        PLAIN,
    ),
    (
        """require ["encoded-character", "fileinto"];
        fileinto "${hex:41 42}${unicode:263a}";""",
        PLAIN,
    ),
    (
        """require ["relational", "comparator-i;ascii-numeric", "fileinto"];
        if header :count "eq" ["x-n", "subject"] "3" { fileinto "c3"; }
        if header :value "eq" :comparator "i;ascii-numeric" "x-n" "10" { fileinto "n10"; }
        if header :value "gt" :comparator "i;ascii-numeric" "x-n" "99999" { fileinto "inf"; }
        if address :count "eq" "to" "2" { fileinto "two"; }""",
        GROUPS,
    ),
    (
        """require "fileinto";
        if address :all :is "to" "x@y.example" { fileinto "group-member"; }
        if header :matches "subject" "* \\\\* \\\\? \\\\\\\\ x" { fileinto "escapes"; }
        if header :is "x-e" "" { fileinto "empty"; }
        if header :contains "subject" "" { fileinto "empty-key"; }
        if header :contains "x-none" "" { fileinto "no-header"; }""",
        GROUPS,
    ),
    (
        """require ["variables", "imap4flags", "fileinto", "relational"];
        set "a" "${b}x"; set "b" "y"; fileinto "${a}${b}${unknown}";
        if string :matches " ${a} " "*x*" { fileinto "m-${1}-${2}."; }
        if string :count "eq" ["a", "", "b"] "2" { fileinto "count2"; }
        set "v" "x"; addflag "v" "A B"; removeflag "v" "x";
        if hasflag :is "v" "b" { fileinto "has-b"; }
        fileinto "${v}";""",
        GROUPS,
    ),
    ('require "imap4flags"; setflag "\\\\Seen \\\\Seen"; keep; addflag "X";', GROUPS),
    ('require ["fileinto", "copy"]; fileinto :copy "INBOX"; keep; keep;', GROUPS),
    ('require "reject"; redirect "a@b.example"; reject "x";', GROUPS),
    ('require "reject"; discard; reject "x";', GROUPS),
    (
        """require ["body", "fileinto"];
        if body :content "text/plain" :contains "Meet" { fileinto "text-plain"; }
        if body :content "multipart" :contains "Meet" { fileinto "multipart"; }
        if body :content "" :contains "secret" { fileinto "any"; }""",
        MULTIPART,
    ),
]

ENVELOPE = SieveEnvelope(
    "someone@sender.example", "ken@example.com", original_to="ken+sieve@example.com"
)


@pytest.fixture(scope="module")
def workdir() -> Iterator[pathlib.Path]:
    # sieve-test drops to mail_uid when run as root; that user must read the files.
    path = pathlib.Path(tempfile.mkdtemp(prefix="sieve-diff-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def pigeonhole(workdir: pathlib.Path, script: str, message: bytes) -> list[tuple[str, ...]]:
    (workdir / "t.sieve").write_text(script, encoding="utf-8")
    (workdir / "m.eml").write_bytes(message)
    for name in ("t.sieve", "m.eml"):
        (workdir / name).chmod(0o644)
    command = [str(SIEVE_TEST), "-x", "+editheader", "-f", ENVELOPE.from_, "-r", ENVELOPE.to]
    command += ["-a", str(ENVELOPE.original_to), "-o", f"mail_location=mbox:{workdir}/mail"]
    if os.geteuid() == 0:
        command += ["-o", "mail_uid=nobody", "-o", "mail_gid=nogroup"]
    command += [str(workdir / "t.sieve"), str(workdir / "m.eml")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    output = done.stdout + done.stderr
    if "Fatal" in output and "failed to compile" not in output:
        pytest.skip(f"sieve-test cannot run here: {output.strip()[:200]}")
    if ": error:" in output or done.returncode != 0:
        return [("error",)]
    return _read_pigeonhole(output)


def _read_pigeonhole(output: str) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for line in output.splitlines():
        text = line.strip()
        if text.startswith("* store message in folder: "):
            found.append(("store", text.split(": ", 1)[1], ""))
        elif text.startswith("+ add IMAP flags: ") and found and found[-1][0] == "store":
            flags = " ".join(sorted(text.split(": ", 1)[1].lower().split()))
            found[-1] = (*found[-1][:2], flags)
        elif text.startswith("* redirect message to: "):
            found.append(("redirect", text.split(": ", 1)[1].strip("<>")))
        elif text == "* discard":
            found.append(("discard",))
        elif text.startswith("* reject message with reason: "):
            found.append(("reject", text.split(": ", 1)[1]))
    return sorted(found)


def ours(script: str, message: bytes) -> list[tuple[str, ...]]:
    now = datetime(2026, 12, 7, 14, 0, tzinfo=UTC)
    result = evaluate(parse(script), SieveMessage(message), ENVELOPE, now=now)
    if result.errors:
        return [("error",)]
    found: list[tuple[str, ...]] = []
    for action in result.actions:
        if isinstance(action, Keep | FileInto):
            folder = action.mailbox if isinstance(action, FileInto) else "INBOX"
            found.append(("store", folder, " ".join(sorted(f.lower() for f in action.flags))))
        elif isinstance(action, Redirect):
            found.append(("redirect", action.address))
        elif isinstance(action, Discard):
            found.append(("discard",))
        elif isinstance(action, Reject):
            found.append(("reject", action.reason))
    return sorted(found)


@pytest.mark.parametrize(("script", "message"), CASES)
def test_same_actions_as_pigeonhole(workdir: pathlib.Path, script: str, message: bytes) -> None:
    assert ours(script, message) == pigeonhole(workdir, script, message)
