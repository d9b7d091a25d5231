"""What an SMTP session tells its observer (`sansmail.sessions.smtpd.SmtpObserver`, the
server's metrics): messages stored, each refusal with its stage and reason, and the
checks' verdicts, driven through the same synchronous adapter as test_smtpd.py."""

from __future__ import annotations

import pathlib
from typing import Any

from test_smtpd import MESSAGE, NOW, Server

from sansmail.sessions.smtpd import REASONS, SessionView, Stage, Verdict
from sansmail.smtp import Reply


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def stored(self, *, local: int, arrival: float) -> None:
        self.calls.append(("stored", local, arrival))

    def rejected(self, *, stage: str, reason: str, code: int) -> None:
        assert reason in REASONS
        self.calls.append(("rejected", stage, reason, code))

    def verdict(self, check: str, result: str) -> None:
        self.calls.append(("verdict", check, result))


def observed(server: Server) -> Recorder:
    recorder = Recorder()
    server.shared.observer = recorder
    return recorder


def test_refused_recipients_and_a_stored_message(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    recorder = observed(server)
    client = server.session()
    client.say("EHLO client.example")
    client.say("MAIL FROM:<a@example.org>")
    client.say("RCPT TO:<nobody@example.test>")
    client.say("RCPT TO:<x@far.test>")
    client.say("RCPT TO:<alice@example.test>")
    client.say("DATA")
    assert client.say(MESSAGE.decode() + ".").startswith(b"250")
    assert recorder.calls == [
        ("rejected", "rcpt", "unknown_user", 550),
        ("rejected", "rcpt", "relay_denied", 554),
        ("stored", 1, NOW),
    ]


def test_a_message_only_queued_delivers_nothing_locally_yet(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path)
    recorder = observed(server)
    client = server.session("127.0.0.1")  # trusted: may relay
    client.say("EHLO client.example")
    client.say("MAIL FROM:<a@example.org>")
    client.say("RCPT TO:<x@far.test>")
    client.say("DATA")
    assert client.say(MESSAGE.decode() + ".").startswith(b"250")
    assert recorder.calls == [("stored", 0, NOW)]


def test_submission_without_login_is_counted_as_auth_required(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path, service="submission")
    recorder = observed(server)
    client = server.session()
    client.say("EHLO client.example")
    assert client.say("MAIL FROM:<a@example.org>").startswith(b"530")
    assert recorder.calls == [("rejected", "mail", "auth_required", 530)]


class Checks:
    """SPF's refusal at MAIL, a greylisting of the first RCPT, results at the end of the
    message."""

    def __init__(self) -> None:
        self.greylisted = False

    def check(self, stage: Stage, session: SessionView) -> Verdict | None:
        tx = session.transaction
        if stage is Stage.MAIL and tx is not None and str(tx.reverse_path) == "spf@example.org":
            return Verdict(source="spf", reply=Reply(code=550, lines="SPF", enhanced="5.7.23"))
        if stage is Stage.RCPT and not self.greylisted:
            self.greylisted = True
            return Verdict(source="greylist", reply=Reply(code=450, lines="later"))
        if stage is Stage.END_OF_HEADERS:
            fields = [("Authentication-Results", "mx.example.test; spf=pass")]
            return Verdict(
                source="antispam", header_fields=fields, results=(("spf", "pass"), ("dkim", "none"))
            )
        return None


def test_check_refusals_and_results(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path, checks=[Checks()])
    recorder = observed(server)
    client = server.session()
    client.say("EHLO client.example")
    assert client.say("MAIL FROM:<spf@example.org>").startswith(b"550")
    client.say("MAIL FROM:<a@example.org>")
    assert client.say("RCPT TO:<alice@example.test>").startswith(b"450")
    client.say("RCPT TO:<alice@example.test>")
    client.say("DATA")
    assert client.say(MESSAGE.decode() + ".").startswith(b"250")
    assert recorder.calls == [
        ("rejected", "mail", "spf", 550),
        ("rejected", "rcpt", "greylist", 450),
        ("verdict", "greylist", "greylisted"),
        ("verdict", "spf", "pass"),
        ("verdict", "dkim", "none"),
        ("stored", 1, NOW),
    ]
