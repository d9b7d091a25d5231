"""sansmail.sessions.lda: the site script (``[sieve] before``) and the user's, run in
sequence as Pigeonhole runs sieve_before: the next script only while keep is in effect,
INBOX only from the last one's keep, each script's other actions standing, an error
ending the sequence with an implicit keep. On both backends (the site script is a file
on either; the user's scripts and the mail are in the database on PostgreSQL)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

import pytest
from lda_helpers import ALICE, BACKENDS, MESSAGE, Server, lines, make_server, warnings

from sansmail.mail import delivery

SPAM = MESSAGE.replace(b"Subject: Hello there", b"X-Spam: yes\r\nSubject: Hello there")
NewServer = Callable[..., Server]


@pytest.fixture(params=BACKENDS)
def new_server(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> NewServer:
    """Makes the test's `Server` (with its ``before`` script) on each backend in turn."""
    return lambda **kw: make_server(request, tmp_path, request.param, **kw)


JUNK_RULE = (
    'require ["fileinto", "copy", "mailbox"];\nif header :is "x-spam" "yes" { fileinto "Junk"; }\n'
)


def test_before_alone_runs_for_users_without_scripts(new_server: NewServer) -> None:
    server = new_server(before=JUNK_RULE)
    assert server.lda.wants(ALICE)
    server.deliver(SPAM)
    server.deliver(MESSAGE, queue_id="Q2")
    assert server.folder("Junk") == [(SPAM, frozenset())]
    assert server.folder() == [(MESSAGE, frozenset())]


def test_a_before_script_that_cancels_keep_ends_the_sequence(new_server: NewServer) -> None:
    server = new_server(before=JUNK_RULE)
    server.script('require ["fileinto", "mailbox"]; fileinto :create "Mine";')
    server.deliver(SPAM)
    assert server.folder("Junk") == [(SPAM, frozenset())]
    assert "Mine" not in server.folders()  # the user's script never ran


def test_discard_stop_in_before_ends_everything(new_server: NewServer) -> None:
    server = new_server(before="discard; stop;")
    server.script('require ["fileinto", "mailbox"]; fileinto :create "Mine";')
    result = server.deliver()
    assert result.outcome == delivery.STORED
    assert server.folder() == []
    assert "Mine" not in server.folders()
    assert lines(result) == ["Q1: to=<alice@example.test>: sieve: discarded"]


def test_keep_in_before_only_lets_the_next_script_run(new_server: NewServer) -> None:
    server = new_server(before='require "imap4flags"; keep :flags "\\\\Flagged";')
    server.script('require ["fileinto", "mailbox"]; fileinto :create "Mine";')
    server.deliver()
    assert server.folder() == []  # INBOX only from the last script's keep
    assert server.folder("Mine") == [(MESSAGE, frozenset())]


def test_before_actions_stand_whatever_the_user_does(new_server: NewServer) -> None:
    server = new_server(before='require ["fileinto", "copy"]; fileinto :copy "Archive";')
    server.script("discard;")
    server.deliver()
    assert server.folder("Archive") == [(MESSAGE, frozenset())]
    assert server.folder() == []


def test_before_edits_are_what_the_user_script_sees(new_server: NewServer) -> None:
    server = new_server(before='require "editheader"; addheader "X-Site" "checked";')
    server.script(
        'require ["fileinto", "mailbox"];\n'
        'if header :is "x-site" "checked" { fileinto :create "Checked"; }\n'
    )
    server.deliver()
    [(content, _)] = server.folder("Checked")
    assert b"\r\nX-Site: checked\r\n" in content


def test_an_error_in_before_keeps_and_skips_the_user(new_server: NewServer) -> None:
    server = new_server(before='require "include"; include "nothing";')
    server.script("discard;")
    result = server.deliver()
    assert server.folder() == [(MESSAGE, frozenset())]
    [warning] = warnings(result)
    assert "before.sieve' line 1, column 20: runtime error" in warning


def test_an_error_in_the_user_script_keeps_the_before_actions(new_server: NewServer) -> None:
    server = new_server(before='require ["fileinto", "copy"]; fileinto :copy "Archive";')
    server.script('require "include"; discard; include "nothing";')
    result = server.deliver()
    assert server.folder("Archive") == [(MESSAGE, frozenset())]
    assert server.folder() == [(MESSAGE, frozenset())]
    assert "script 'main' line 1, column 29: runtime error" in warnings(result)[0]


def test_reject_after_an_earlier_delivery_is_an_error(new_server: NewServer) -> None:
    server = new_server(before='require ["fileinto", "copy"]; fileinto :copy "Archive";')
    server.script('require "reject"; reject "no";')
    result = server.deliver()
    assert result.outcome == delivery.STORED
    assert server.folder() == [(MESSAGE, frozenset())]
    assert "reject after an earlier script delivered" in warnings(result)[0]


def test_reject_in_before_fails_the_recipient(new_server: NewServer) -> None:
    server = new_server(before='require "reject"; reject "site policy";')
    server.script("keep;")
    result = server.deliver()
    assert (result.outcome.status, result.outcome.dsn) == ("bounced", "5.7.1")
    assert server.folder() == []


def test_one_vacation_reply_across_scripts(new_server: NewServer) -> None:
    server = new_server(before='require "vacation"; vacation "Site says away.";')
    server.script('require "vacation"; vacation "User says away.";')
    result = server.deliver()
    [(_, reply)] = server.queued(result)
    assert b"Site says away." in reply
    assert server.folder() == [(MESSAGE, frozenset())]


def test_the_redirect_limit_counts_every_script(new_server: NewServer) -> None:
    before = 'require "copy";' + "".join(f'redirect :copy "s{i}@far.test";' for i in range(3))
    server = new_server(before=before)
    server.script('redirect "u1@far.test"; redirect "u2@far.test";')
    result = server.deliver()
    assert len(result.queued) == 3  # the site's three; the user's script failed
    assert "more than 1 redirects" in warnings(result)[0]
    assert server.folder() == [(MESSAGE, frozenset())]


def test_missing_before_file_is_skipped_with_a_warning(new_server: NewServer) -> None:
    server = new_server(before="keep;")
    assert server.config.sieve.before is not None
    server.config.sieve.before.unlink()
    server.script('require ["fileinto", "mailbox"]; fileinto :create "Mine";')
    result = server.deliver()
    assert server.folder("Mine") == [(MESSAGE, frozenset())]
    assert "before script" in warnings(result)[0]
    assert "not found" in warnings(result)[0]


def test_before_file_is_read_again_when_it_changes(new_server: NewServer) -> None:
    server = new_server(before="keep;")
    server.deliver()
    path = server.config.sieve.before
    assert path is not None
    path.write_text("discard;")
    os.utime(path, ns=(1, 1))  # a different mtime whatever the clock's resolution
    server.deliver(queue_id="Q2")
    assert len(server.folder()) == 1


def test_global_include_from_the_before_directory(new_server: NewServer) -> None:
    server = new_server(before="keep;")
    (server.root / "global" / "spam.sieve").write_text(JUNK_RULE)
    server.script('require "include"; include :global "spam";')
    server.deliver(SPAM)
    assert server.folder("Junk") == [(SPAM, frozenset())]
    assert server.folder() == []


def test_global_include_without_before_is_not_found(new_server: NewServer) -> None:
    server = new_server()
    server.script('require "include"; include :global "spam";')
    result = server.deliver()
    assert server.folder() == [(MESSAGE, frozenset())]
    assert "included script 'spam' does not exist" in warnings(result)[0]
