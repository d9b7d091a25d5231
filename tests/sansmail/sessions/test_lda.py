"""sansmail.sessions.lda: delivery through the user's Sieve script over a real Maildir
IMAP store, queue and script store in tmp_path: every action, what lands in which folder
with which flags, and what is queued. The tests run on both backends (the `server`
fixture's param), those that look at Maildir files on Maildir alone."""

from __future__ import annotations

import email
import email.policy
import pathlib

import pytest
from lda_helpers import (
    ALICE,
    BACKENDS,
    KEY,
    MESSAGE,
    NOW,
    Server,
    lines,
    make_server,
    message,
    warnings,
)

from sansmail.mail import delivery, dkim, srs
from sansmail.mail.address import parse_address
from sansmail.mail.sieve import Script, parse_bytes
from sansmail.sessions.lda import LdaResult
from sansmail.storage.maildir import MaildirAccount


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Server:
    return make_server(request, tmp_path, request.param)


maildir_only = pytest.mark.parametrize("server", ["maildir"], indirect=True)


def test_no_script_keeps_in_inbox(server: Server) -> None:
    assert not server.lda.wants(ALICE)
    result = server.deliver()
    assert result.outcome == delivery.STORED
    assert server.folder() == [(MESSAGE, frozenset())]
    assert lines(result) == ["Q1: to=<alice@example.test>: sieve: stored mail into mailbox 'INBOX'"]


def test_wants_an_active_script(server: Server) -> None:
    server.script("keep;", active=False)
    assert not server.lda.wants(ALICE)
    server.scripts.activate(ALICE, "main")
    assert server.lda.wants(ALICE)


def test_fileinto_with_flags_and_keywords(server: Server) -> None:
    server.imap.account(ALICE).create("Lists")
    server.script(
        'require ["fileinto", "imap4flags"];\n'
        'if header :contains "subject" "hello" {\n'
        '  fileinto :flags ["\\\\seen", "$Label1 Work"] "Lists";\n'
        "}\n"
    )
    result = server.deliver()
    assert result.outcome == delivery.STORED
    assert server.folder() == []
    assert server.folder("Lists") == [(MESSAGE, frozenset({"\\Seen", "$Label1", "Work"}))]
    assert lines(result) == ["Q1: to=<alice@example.test>: sieve: stored mail into mailbox 'Lists'"]


def test_missing_folder_falls_back_to_inbox_with_flags(server: Server) -> None:
    server.script('require ["fileinto", "imap4flags"]; fileinto :flags "\\\\Flagged" "Nope";')
    result = server.deliver()
    assert result.outcome == delivery.STORED
    assert server.folder() == [(MESSAGE, frozenset({"\\Flagged"}))]
    assert "Nope" not in server.folders()
    assert any("failed to store into mailbox 'Nope'" in w for w in warnings(result))


def test_fileinto_create_makes_and_subscribes(server: Server) -> None:
    server.script('require ["fileinto", "mailbox"]; fileinto :create "Lists/Python";')
    result = server.deliver()
    assert result.outcome == delivery.STORED
    assert server.folders()["Lists/Python"] is True
    assert server.folder("Lists/Python") == [(MESSAGE, frozenset())]
    assert server.folder() == []
    assert lines(result)[-2:] == [
        "Q1: to=<alice@example.test>: sieve: created mailbox 'Lists/Python'",
        "Q1: to=<alice@example.test>: sieve: stored mail into mailbox 'Lists/Python'",
    ]


def test_utf8_folder_name_is_the_accounts_unicode_name(server: Server) -> None:
    server.script('require ["fileinto", "mailbox"]; fileinto :create "Réunions";')
    server.deliver()
    assert "Réunions" in server.folders()
    assert server.folder("Réunions") == [(MESSAGE, frozenset())]
    if server.db is None:
        # On disk as the IMAP server names it (modified UTF-7 in the Maildir++ name).
        assert (server.root / "mail/example.test/alice/.R&AOk-unions").is_dir()


def test_one_copy_per_folder_flags_merged(server: Server) -> None:
    server.script(
        'require ["fileinto", "imap4flags"];\n'
        'fileinto :flags "\\\\Seen" "INBOX"; keep :flags "\\\\Flagged"; fileinto "inbox";\n'
    )
    result = server.deliver()
    assert result.outcome == delivery.STORED
    assert server.folder() == [(MESSAGE, frozenset({"\\Seen", "\\Flagged"}))]


def test_keep_with_imap4flags_internal_variable(server: Server) -> None:
    server.script('require "imap4flags"; addflag ["\\\\Answered", "Junk-ish"];')
    server.deliver()
    assert server.folder() == [(MESSAGE, frozenset({"\\Answered", "Junk-ish"}))]


def test_bad_flags_are_dropped_with_a_warning(server: Server) -> None:
    server.script('require "imap4flags"; keep :flags ["\\\\Bogus", "\\\\Recent", "ok"];')
    result = server.deliver()
    assert server.folder() == [(MESSAGE, frozenset({"ok"}))]
    assert warnings(result) == ["Q1: to=<alice@example.test>: sieve: flags ignored: \\Bogus"]


def test_discard_stores_nothing(server: Server) -> None:
    server.script("discard;")
    result = server.deliver()
    assert result.outcome == delivery.STORED
    assert server.folder() == []
    assert lines(result) == ["Q1: to=<alice@example.test>: sieve: discarded"]


def test_reject_is_a_permanent_failure(server: Server) -> None:
    server.script('require "reject"; reject "I do not\r\nwant this";')
    result = server.deliver()
    assert result.outcome.status == "bounced"
    assert result.outcome.dsn == "5.7.1"
    assert result.outcome.reason == "rejected by the recipient's Sieve filter: I do not want this"
    assert server.folder() == []
    assert result.queued == ()
    assert lines(result) == ["Q1: to=<alice@example.test>: sieve: rejected: I do not want this"]


def test_ereject_too(server: Server) -> None:
    server.script('require "ereject"; ereject "no";')
    result = server.deliver()
    assert (result.outcome.status, result.outcome.dsn) == ("bounced", "5.7.1")


def test_editheader_changes_what_later_actions_store(server: Server) -> None:
    server.script(
        'require ["editheader", "fileinto", "mailbox", "copy"];\n'
        'fileinto :copy :create "Before";\n'
        'addheader "X-Seen-By" "sieve";\n'
        'addheader :last "X-Tail" "Ünïcode value";\n'
        'deleteheader "subject";\n'
    )
    result = server.deliver()
    assert result.outcome == delivery.STORED
    [(before, _)] = server.folder("Before")
    assert before == MESSAGE
    [(after, _)] = server.folder()
    # Below the Return-Path, which stays the first field of a delivered message.
    assert after.startswith(b"Return-Path: <bob@far.test>\r\nX-Seen-By: sieve\r\n")
    assert b"Subject:" not in after
    parsed = email.message_from_bytes(after, policy=email.policy.default)
    assert parsed["X-Tail"] == "Ünïcode value"
    assert b"X-Tail: =?utf-8?" in after  # RFC 2047, the header stays ASCII
    assert after.endswith(b"\r\n\r\nBody text.\r\n")


def test_runtime_error_keeps_and_warns_once_with_position(server: Server) -> None:
    server.script('require ["fileinto", "include"];\nfileinto "Junk";\n  include "missing";\n')
    result = server.deliver()
    assert result.outcome == delivery.STORED
    assert server.folder() == [(MESSAGE, frozenset())]
    assert server.folder("Junk") == []  # the actions before the error are dropped
    [warning] = warnings(result)
    assert warning.startswith("Q1: to=<alice@example.test>: sieve: script 'main' line 3, column 3:")
    assert "runtime error" in warning
    assert "implicit keep" in warning


@maildir_only
def test_stored_script_that_no_longer_parses_keeps(server: Server) -> None:
    server.script("keep;")
    path = pathlib.Path(server.scripts.directory(ALICE)) / "main.sieve"
    path.write_bytes(b'require "fileinto";\nfileinto "x"\nkeep;\n')
    result = server.deliver()
    assert result.outcome == delivery.STORED
    assert server.folder() == [(MESSAGE, frozenset())]
    [warning] = warnings(result)
    assert "script 'main' line 3, column 1:" in warning
    assert "does not parse" in warning


@maildir_only
def test_script_not_utf8_keeps(server: Server) -> None:
    server.script("keep;")
    path = pathlib.Path(server.scripts.directory(ALICE)) / "main.sieve"
    path.write_bytes(b"# \xff\ndiscard;\n")
    result = server.deliver()
    assert server.folder() == [(MESSAGE, frozenset())]
    assert "line 1, column 3: the script is not valid UTF-8" in warnings(result)[0]


def test_redirect_is_queued_with_srs_sender(server: Server) -> None:
    server.script('redirect "carol@elsewhere.test";')
    result = server.deliver(original="info@example.test")
    assert result.outcome == delivery.STORED
    assert server.folder() == []  # redirect cancels the implicit keep
    [(envelope, content)] = server.queued(result)
    expected = srs.forward(
        parse_address("bob@far.test"), domain="example.test", key=KEY, day=srs.today(NOW)
    )
    assert envelope.sender == str(expected)
    [rcpt] = envelope.recipients
    assert rcpt.address == "carol@elsewhere.test"
    assert rcpt.orcpt == "rfc822;info@example.test"
    # Its own Received on top, no Return-Path, the rest as it came.
    assert content.startswith(b"Received: by mx.example.test (sansmail, from sieve)\r\n")
    assert b"Return-Path" not in content
    assert content.endswith(MESSAGE.split(b"\r\n", 1)[1])
    # Signed for a forwarded copy: the envelope says it is one.
    assert delivery.forwarded(envelope, domains=("example.test",))
    assert lines(result) == [
        f"Q1: to=<alice@example.test>: sieve: redirected to <carol@elsewhere.test>"
        f" (queued as {envelope.queue_id})"
    ]


def test_redirect_copy_keeps_and_null_sender_stays_null(server: Server) -> None:
    server.script('require "copy"; redirect :copy "carol@elsewhere.test";')
    result = server.deliver(sender="")
    [(envelope, _)] = server.queued(result)
    assert envelope.sender == ""
    assert server.folder() == [(MESSAGE, frozenset())]


def test_redirect_from_our_own_user_keeps_the_sender(server: Server) -> None:
    server.script('redirect "carol@elsewhere.test";')
    result = server.deliver(sender="dave@example.test")
    [(envelope, _)] = server.queued(result)
    assert envelope.sender == "dave@example.test"


def test_redirect_once_per_message_and_address(server: Server) -> None:
    server.script('redirect "carol@elsewhere.test";')
    first = server.deliver()
    again = server.deliver(queue_id="Q2")  # the same Message-ID again
    assert len(first.queued) == 1
    assert again.queued == ()
    assert lines(again) == [
        "Q2: to=<alice@example.test>: sieve: discarded duplicate forward to <carol@elsewhere.test>"
    ]
    other = server.deliver(message("Message-ID: <m2@far.test>"), queue_id="Q3")
    assert len(other.queued) == 1


def test_redirect_loop_is_refused_and_kept(server: Server) -> None:
    server.script('redirect "carol@elsewhere.test";')
    hops = b"".join(
        b"Received: from a by b; Tue, 14 Nov 2023 22:13:20 +0000\r\n" for _ in range(50)
    )
    looping = b"Return-Path: <bob@far.test>\r\n" + hops + b"Subject: x\r\n\r\nx\r\n"
    result = server.deliver(looping)
    assert result.queued == ()
    assert server.folder() == [(looping, frozenset())]
    assert "mail forwarding loop" in warnings(result)[0]


def test_redirects_are_limited(server: Server) -> None:
    server.script("".join(f'redirect "u{i}@elsewhere.test";' for i in range(5)))
    result = server.deliver()
    assert result.queued == ()
    assert server.folder() == [(MESSAGE, frozenset())]
    assert "more than 4 redirects" in warnings(result)[0]


VACATION = 'require "vacation"; vacation :days 3 :subject "Away" "Back on Monday.";'


def test_vacation_once_per_period(server: Server) -> None:
    server.script(VACATION)
    first = server.deliver()
    assert first.outcome == delivery.STORED
    assert server.folder() == [(MESSAGE, frozenset())]
    [(envelope, reply)] = server.queued(first)
    assert envelope.sender == ""
    assert [r.address for r in envelope.recipients] == ["bob@far.test"]
    parsed = email.message_from_bytes(reply, policy=email.policy.default)
    assert parsed["From"] == "alice@example.test"
    assert parsed["Subject"] == "Away"
    assert parsed["In-Reply-To"] == "<m1@far.test>"
    assert parsed["Auto-Submitted"] == "auto-replied (vacation)"
    assert lines(first)[0] == (
        "Q1: to=<alice@example.test>: sieve: sent vacation response to <bob@far.test>"
        f" (queued as {envelope.queue_id})"
    )
    second = server.deliver(
        message("From: bob@far.test", "To: alice@example.test"), now=NOW + 86400
    )
    assert second.queued == ()
    assert "not sent: already answered within 3 days" in lines(second)[0]
    later = server.deliver(now=NOW + 3 * 86400 + 1)
    assert len(later.queued) == 1


@pytest.mark.parametrize(
    ("content", "sender", "why"),
    [
        (MESSAGE, "", "the null sender"),
        (
            message("From: l@far.test", "To: alice@example.test", "List-Id: <l.far.test>"),
            "l-bounces@far.test",
            "a program",
        ),
        (
            message("From: l@far.test", "To: alice@example.test", "Precedence: list"),
            "l@far.test",
            "Precedence",
        ),
        (message("From: bob@far.test", "To: someone@else.test"), "bob@far.test", "To, Cc"),
    ],
)
def test_vacation_never_to_lists_or_null_sender(
    server: Server, content: bytes, sender: str, why: str
) -> None:
    server.script(VACATION)
    result = server.deliver(content, sender=sender)
    assert result.queued == ()
    assert why in lines(result)[0]
    assert server.folder() == [(content, frozenset())]


def test_vacation_counts_the_original_recipient_as_the_users(server: Server) -> None:
    server.script(VACATION)
    content = message("From: bob@far.test", "To: info@example.test", "Message-ID: <a@b>")
    result = server.deliver(content, original="info@example.test")
    assert len(result.queued) == 1


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ('"Alice Away <alice+away@example.test>"', "Alice Away <alice+away@example.test>"),
        ('"ALICE@example.test"', "ALICE@example.test"),
        ('"The CEO <ceo@example.test>"', "alice@example.test"),
        ('"bob@far.test"', "alice@example.test"),
    ],
)
def test_vacation_from_is_only_the_users_own_address(
    server: Server, given: str, shown: str
) -> None:
    server.script(f'require "vacation"; vacation :from {given} "Away.";')
    result = server.deliver()
    [(_envelope, reply)] = server.queued(result)
    parsed = email.message_from_bytes(reply, policy=email.policy.default)
    assert parsed["From"] == shown
    assert (shown == "alice@example.test") == any(
        "is not the user's address" in line for line in warnings(result)
    )


def test_vacation_addresses_count_too(server: Server) -> None:
    server.script('require "vacation"; vacation :addresses "boss@example.test" "Away.";')
    content = message("From: bob@far.test", "To: boss@example.test")
    assert len(server.deliver(content).queued) == 1


def test_duplicate_is_recorded_after_a_successful_run(server: Server) -> None:
    server.script(
        'require ["duplicate", "fileinto", "mailbox"];\nif duplicate { fileinto :create "Dups"; }\n'
    )
    server.deliver()
    server.deliver(queue_id="Q2")
    assert len(server.folder()) == 1
    assert len(server.folder("Dups")) == 1


def test_include_personal_and_missing_global(server: Server) -> None:
    server.script(
        'require ["fileinto", "mailbox"]; fileinto :create "Inc";', name="lib", active=False
    )
    server.script(
        'require "include"; include :personal "lib";\ninclude :global :optional "nope";\n'
    )
    result = server.deliver()
    assert server.folder("Inc") == [(MESSAGE, frozenset())]
    assert warnings(result) == []
    server.script('require "include"; include :global "site";')
    result = server.deliver(queue_id="Q2")
    assert "included script 'site' does not exist" in warnings(result)[0]
    assert len(server.folder()) == 1


def test_include_of_a_broken_script_keeps(server: Server) -> None:
    server.script("discard", name="lib", active=False)
    server.script('require "include"; include "lib"; discard;')
    result = server.deliver()
    assert server.folder() == [(MESSAGE, frozenset())]
    assert "included script 'lib' line 1, column 8" in warnings(result)[0]


def test_mailboxexists_asks_the_account(server: Server) -> None:
    server.script(
        'require ["mailbox", "fileinto"];\n'
        'if mailboxexists "Archive" { fileinto "Archive"; }\n'
        'if mailboxexists "Nothing" { fileinto "Trash"; }\n'
    )
    server.deliver()
    assert len(server.folder("Archive")) == 1  # a special-use folder every account has
    assert server.folder("Trash") == []


# The direct path's store (a copy without flags), and the IMAP account alone.
DIRECT = pytest.mark.parametrize("direct", [True, False], ids=["direct", "account"])
FAIL_STORE = {
    "direct": "sansmail.storage.maildir._maildir.MaildirStore.commit_many",
    "account": "sansmail.storage.maildir._imapaccount.MaildirAccount.append",
}


@DIRECT
@pytest.mark.parametrize("backend", BACKENDS)
def test_full_mailbox_fails_the_recipient_before_anything_is_sent(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, direct: bool, backend: str
) -> None:
    server = make_server(request, tmp_path, backend, quota=lambda _m: 1000, direct=direct)
    server.script('require "copy"; redirect :copy "carol@elsewhere.test";')
    big = MESSAGE + b"x" * 900 + b"\r\n"
    first = server.deliver(big)  # under the limit before: taken whatever its size
    assert first.outcome == delivery.STORED
    second = server.deliver(big, queue_id="Q2")
    assert (second.outcome.status, second.outcome.dsn) == ("bounced", "5.2.2")
    assert second.queued == ()
    assert len(server.folder()) == 1


@maildir_only
@pytest.mark.parametrize("path", ["direct", "account"])
def test_disk_failure_defers(server: Server, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    server.script("keep;" if path == "direct" else 'require "imap4flags"; addflag "\\\\Seen";')

    def fail(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FAIL_STORE[path], fail)
    result = server.deliver()
    assert result.outcome.status == "deferred"
    assert result.outcome.reason == "cannot store the message: [Errno 28] No space left on device"
    maildir = server.store.maildir(ALICE)
    assert [f for sub in ("tmp", "new", "cur") for f in maildir.glob(f"{sub}/*")] == []


@DIRECT
def test_a_retry_after_a_failed_store_does_not_forward_again(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    server = Server(tmp_path, direct=direct)
    server.script('require "copy"; redirect :copy "carol@elsewhere.test";')

    def fail(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(FAIL_STORE["direct" if direct else "account"], fail)
        failed = server.deliver()
    assert failed.outcome.status == "deferred"
    assert len(failed.queued) == 1  # queued first, and handed to the runner all the same
    retried = server.deliver()
    assert retried.outcome == delivery.STORED
    assert retried.queued == ()
    assert server.folder() == [(MESSAGE, frozenset())]


def test_a_failing_account_during_the_run_defers(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = Server(tmp_path, direct=False)
    server.script('require "mailbox"; if mailboxexists "X" { discard; }')

    def fail(*_args: object, **_kwargs: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(MaildirAccount, "list_folders", fail)
    result = server.deliver()
    assert result.outcome.status == "deferred"
    assert "Input/output error" in warnings(result)[0]


@maildir_only
@pytest.mark.parametrize("test", ['mailboxexists "X"', 'true { fileinto "X"; } if false'])
def test_a_folder_that_cannot_be_looked_at_defers(server: Server, test: str) -> None:
    # The direct path's stat of the folder: an error other than "not there" (here a
    # symlink loop: ELOOP) is a disk failure, not a missing folder.
    server.script(f'require ["mailbox", "fileinto"]; if {test} {{ discard; }}')
    server.deliver(queue_id="Q0")  # makes the Maildir
    (server.store.maildir(ALICE) / ".X").symlink_to(".X")
    result = server.deliver()
    assert result.outcome.status == "deferred"
    assert "Too many levels of symbolic links" in warnings(result)[0]


def test_scripts_are_parsed_once(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []

    def counting(raw: bytes) -> Script:
        calls.append(raw)
        return parse_bytes(raw)

    monkeypatch.setattr("sansmail.sessions.lda.parse_bytes", counting)
    server.script("keep;")
    server.deliver()
    server.deliver(queue_id="Q2")
    assert len(calls) == 1
    server.script("discard;")
    server.deliver(queue_id="Q3")
    assert len(calls) == 2


def test_the_runner_signs_the_vacation_reply_and_seals_the_redirect(server: Server) -> None:
    # What `qmgr.Attempt._signed` does with a queued message on its way out.
    private, _record = dkim.generate("ed25519")
    domains = server.config.domains

    def fields(result: LdaResult) -> bytes:
        [(envelope, content)] = server.queued(result)
        return dkim.outbound_fields(
            content,
            forwarded=delivery.forwarded(envelope, domains=domains),
            own_sender=delivery.own_sender(envelope, domains=domains),
            domains=domains,
            hostname=server.config.hostname,
            selector="sansmail",
            key_for=lambda domain: private if domain == "example.test" else None,
        )

    server.script(VACATION)
    signed = fields(server.deliver())
    assert signed.startswith(b"DKIM-Signature:")
    assert b"d=example.test" in signed
    # A forward of an outside sender's mail is not signed as ours: sealed (ARC) only,
    # and this key cannot seal (RSA only), so nothing is added.
    server.script('redirect "carol@elsewhere.test";')
    assert fields(server.deliver(message("Message-ID: <r@far.test>"), queue_id="Q2")) == b""


@maildir_only
def test_an_open_imap_view_sees_the_copy_with_its_flags_at_its_next_sync(server: Server) -> None:
    # What an IDLE session does when inotify reports the new name in cur/ (watch_paths).
    account = server.imap.account(ALICE)
    view = account.select("INBOX")
    try:
        cur = pathlib.Path(view.watch_paths[1])
        before = set(cur.iterdir())
        server.script('require "imap4flags"; keep :flags "$Important";')
        server.deliver()
        assert len(set(cur.iterdir()) - before) == 1  # renamed into a watched directory
        changes = view.sync()
        assert changes.exists == 1
        [added] = changes.added
        assert added.flags == {"$Important"}
        assert view.read(added.uid) == MESSAGE
    finally:
        view.close()
        account.close()
