"""The SMTP session's check points for work done before a stage (`Inquiring`): which
inquiries it gathers and when, the whole message held until END_OF_DATA for checks that
want it, and what END_OF_DATA verdicts do to the stored copies (fields above Received,
header edits, a new body, discard); forged Authentication-Results dropped on every path.
Driven by test_smtpd's synchronous adapter over a real Maildir and queue."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail import smtp
from sansmail.mail.headeredit import HeaderEdit, apply_edits, split_fields
from sansmail.sessions.smtpd import SessionView, Stage, Verdict
from sansmail.sessions.smtpd._checks import Errand, Inquiry
from tests.sansmail.sessions.test_smtpd import STRANGER, TRUSTED, Server

FORGED = b"Authentication-Results: MX.example.test; spf=pass smtp.mailfrom=bank.example\r\n"
MESSAGE = (
    b"From: a@example.org\r\n" + FORGED + b"Authentication-Results: other.example; dkim=fail\r\n"
    b"Subject: hello\r\n\r\nbody line\r\n"
)


@attrs.define
class Holder:
    """An Inquiring check that holds the message and says `verdict` at END_OF_DATA."""

    verdict: Verdict | None = None
    hold: bool = True
    asked: list[tuple[Stage, str, bool]] = attrs.Factory(list)
    saw_message: list[bytes] = attrs.Factory(list)

    def inquiries(
        self, stage: Stage, session: SessionView, command: smtp.Event | None
    ) -> Sequence[Inquiry]:
        def run() -> None:
            session.findings.setdefault("ran", []).append(stage)

        self.asked.append((stage, type(command).__name__, session.trusted))
        return [Errand("holder", run)]

    def wants_message(self, session: SessionView) -> bool:
        return self.hold

    def check(self, stage: Stage, session: SessionView) -> Verdict | None:
        tx = session.transaction
        if stage is Stage.END_OF_DATA and tx is not None and tx.message is not None:
            self.saw_message.append(bytes(tx.message))
            return self.verdict
        return None


def test_inquiries_are_gathered_per_stage_with_the_command(tmp_path: pathlib.Path) -> None:
    check = Holder()
    client = Server(tmp_path, checks=[check]).session(STRANGER)
    client.transaction("a@example.org", "alice@example.test")
    assert check.asked == [
        (Stage.CONNECT, "NoneType", False),
        (Stage.HELO, "Hello", False),
        (Stage.MAIL, "Mail", False),
        (Stage.RCPT, "Rcpt", False),
        (Stage.END_OF_DATA, "NoneType", False),
    ]
    # The errands ran before each stage, in the adapter's order.
    assert client.session.findings["ran"] == [s for s, _c, _t in check.asked]
    (tmp_path / "t").mkdir()
    assert Server(tmp_path / "t", checks=[check]).session(TRUSTED).session.trusted
    assert not client.session.trusted


def test_a_held_message_gets_fields_edits_and_a_new_body(tmp_path: pathlib.Path) -> None:
    verdict = Verdict(
        source="filter",
        header_fields=[("Authentication-Results", "mx.example.test; dkim=pass")],
        header_edits=[
            HeaderEdit("change", "Subject", "[SPAM] hello"),
            HeaderEdit("add", "X-Spam-Flag", "YES"),
        ],
        body=b"replaced\r\n",
    )
    check = Holder(verdict)
    server = Server(tmp_path, checks=[check])
    client = server.session(STRANGER)
    answer = client.transaction("a@example.org", "alice@example.test", content=MESSAGE)
    assert answer.startswith(b"250 2.0.0 Ok")
    # The check saw the message as the client sent it, forged field included.
    assert check.saw_message == [MESSAGE]
    [stored] = server.messages("alice")
    head, _, body = stored.partition(b"\n\n")
    lines = head.split(b"\n")
    assert lines[0] == b"Return-Path: <a@example.org>"
    assert lines[1] == b"Authentication-Results: mx.example.test; dkim=pass"
    assert lines[2].startswith(b"Received: from client.example")
    assert b"spf=pass smtp.mailfrom=bank.example" not in head  # the forged one is gone
    assert b"Authentication-Results: other.example; dkim=fail" in head  # not ours: kept
    assert b"Subject: [SPAM] hello" in head
    assert head.endswith(b"X-Spam-Flag: YES")
    assert body == b"replaced\n"


def test_a_held_message_is_refused_at_its_end_with_nothing_kept(tmp_path: pathlib.Path) -> None:
    refusal = smtp.Reply(code=554, lines="5.7.1 spam", enhanced="5.7.1")
    server = Server(tmp_path, checks=[Holder(Verdict(source="filter", reply=refusal))])
    client = server.session(STRANGER)
    answer = client.transaction("a@example.org", "alice@example.test", "x@far.test")
    assert answer.startswith(b"554 5.7.1")
    assert server.messages("alice") == []
    assert server.queued() == []
    assert not any(p.is_file() for p in (tmp_path / "mail").rglob("tmp/*"))


def test_a_discarded_message_is_accepted_and_not_stored(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path, checks=[Holder(Verdict(source="filter", discard=True))])
    client = server.session(STRANGER)
    assert client.transaction("a@example.org", "alice@example.test", "x@far.test").startswith(
        b"250 2.0.0 Ok: queued as"
    )
    assert server.messages("alice") == []
    assert server.queued() == []
    assert any("status=discarded" in line for line in server.lines())


def test_a_large_held_message_arrives_whole(tmp_path: pathlib.Path) -> None:
    check = Holder(Verdict(source="filter", header_fields=[("X-Checked", "yes")]))
    server = Server(tmp_path, checks=[check])
    client = server.session(STRANGER)
    body = b"".join(b"line %07d\r\n" % i for i in range(200_000))  # 2.4 MB: past the spill
    content = b"Subject: big\r\n\r\n" + body
    assert client.transaction("a@example.org", "alice@example.test", content=content).startswith(
        b"250"
    )
    assert check.saw_message == [content]
    [stored] = server.messages("alice")
    assert stored.endswith(body.replace(b"\r\n", b"\n"))
    assert b"\nX-Checked: yes\nReceived:" in stored


def test_forged_results_are_dropped_when_nothing_holds_the_message(
    tmp_path: pathlib.Path,
) -> None:
    server = Server(tmp_path, checks=[Holder(hold=False)])
    client = server.session(TRUSTED)
    assert client.transaction("a@example.org", "alice@example.test", content=MESSAGE).startswith(
        b"250"
    )
    [stored] = server.messages("alice")
    assert b"bank.example" not in stored
    assert b"Authentication-Results: other.example; dkim=fail\n" in stored


def test_fields_at_the_end_need_the_message_held(tmp_path: pathlib.Path) -> None:
    verdict = Verdict(source="late", header_fields=[("X-Late", "yes")])

    @attrs.define
    class Late:
        def check(self, stage: Stage, session: SessionView) -> Verdict | None:
            return verdict if stage is Stage.END_OF_DATA else None

    server = Server(tmp_path, checks=[Late()])
    client = server.session()
    with pytest.raises(ValueError, match="without the message held"):
        client.transaction("a@example.org", "alice@example.test")


# -- the header edits themselves -----------------------------------------------------


def test_edits_follow_the_milter_rules() -> None:
    message = b"From: a\r\nSubject: x\r\n y\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody\r\n"
    edited = apply_edits(
        message,
        [
            HeaderEdit("change", "X-A", "", 2),  # the second X-A, any case: deleted
            HeaderEdit("change", "subject", "new\n\tfolded", 1),
            HeaderEdit("insert", "X-First", "1", 0),
            HeaderEdit("change", "X-None", "", 1),  # nothing to delete
            HeaderEdit("change", "X-Added", "v", 1),  # nothing to change: added
        ],
    )
    assert edited == (
        b"X-First: 1\r\nFrom: a\r\nsubject: new\r\n\tfolded\r\nX-A: 1\r\nX-Added: v\r\n\r\nbody\r\n"
    )


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\r\nb"])
def test_an_edit_cannot_start_a_field_of_its_own(value: str) -> None:
    with pytest.raises(ValueError, match="not a fold"):
        apply_edits(b"A: 1\r\n\r\n", [HeaderEdit("add", "X", value)])


_field_name = st.text(alphabet="ABCXYZabc-", min_size=1, max_size=6)
_field = st.tuples(_field_name, st.text(alphabet="abc 12", max_size=10))
_edit = st.builds(
    HeaderEdit,
    st.sampled_from(["add", "insert", "change"]),
    _field_name,
    st.text(alphabet="abc 12", max_size=8),
    st.integers(min_value=0, max_value=5),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_field, max_size=8), st.lists(_edit, max_size=6), st.binary(max_size=40))
def test_edits_never_touch_the_body_and_keep_a_header_section(
    fields: list[tuple[str, str]], edits: list[HeaderEdit], body: bytes
) -> None:
    header = b"".join(f"{n}: {v}\r\n".encode() for n, v in fields)
    message = header + b"\r\n" + body
    edited = apply_edits(message, edits)
    assert edited.endswith(b"\r\n" + body)
    section = edited[: len(edited) - len(body)]
    parsed, rest = split_fields(section)
    assert rest == b"\r\n"
    added = sum(e.action != "change" for e in edits)
    assert len(parsed) <= len(fields) + len(edits)
    assert len(parsed) >= len(fields) + added - sum(e.action == "change" for e in edits)


def test_a_refused_recipient_asks_nothing(tmp_path: pathlib.Path) -> None:
    check = Holder()
    client = Server(tmp_path, checks=[check]).session(STRANGER)
    client.say("EHLO client.example")
    client.say("MAIL FROM:<a@example.org>")
    assert client.say("RCPT TO:<nobody@example.test>").startswith(b"550 5.1.1")
    assert client.say("RCPT TO:<victim@far.test>").startswith(b"554 5.7.1")
    assert client.say("RCPT TO:<alice@example.test>").startswith(b"250")
    # Only the accepted recipient was inquired about (greylisting, milters).
    assert [stage for stage, _c, _t in check.asked].count(Stage.RCPT) == 1


def test_envelope_changes_remake_the_copies(tmp_path: pathlib.Path) -> None:
    verdict = Verdict(
        source="milter",
        add_recipients=["<bob@far.test>", "<nobody@example.test>", "not an address"],
        delete_recipients=["<ALICE@example.test>"],
        new_sender="<bounces@example.org>",
    )
    server = Server(tmp_path, checks=[Holder(verdict)])
    client = server.session(STRANGER)
    answer = client.transaction("a@example.org", "alice@example.test", "info@example.test")
    assert answer.startswith(b"250 2.0.0")
    # alice's own copy is gone; info@ still reaches her (alias) and outside@far.test.
    [stored] = server.messages("alice")
    assert stored.startswith(b"Return-Path: <bounces@example.org>\n")
    envelopes = {m.sender: [r.address for r in m.recipients] for m in server.queue.list()}
    # The relayed copy keeps the new sender; the forwarded one gets it SRS-rewritten.
    assert envelopes.pop("bounces@example.org") == ["bob@far.test"]
    [(srs, forwarded)] = envelopes.items()
    assert srs.startswith("SRS0=")
    assert srs.endswith("=example.org=bounces@example.test")
    assert forwarded == ["outside@far.test"]
    lines = "\n".join(server.lines())
    assert "recipient <alice@example.test> deleted" in lines
    assert "recipient <bob@far.test> added" in lines
    assert "recipient <nobody@example.test> not added: 550" in lines
    assert "not added: not an address" in lines
    assert "sender changed from <a@example.org> to <bounces@example.org>" in lines


def test_deleting_every_recipient_discards(tmp_path: pathlib.Path) -> None:
    verdict = Verdict(source="milter", delete_recipients=["alice@example.test"])
    server = Server(tmp_path, checks=[Holder(verdict)])
    answer = server.session(STRANGER).transaction("a@example.org", "alice@example.test")
    assert answer.startswith(b"250")
    assert server.messages("alice") == []
    assert any("status=discarded" in line for line in server.lines())


def test_envelope_changes_need_the_message_held(tmp_path: pathlib.Path) -> None:
    @attrs.define
    class Early:
        def check(self, stage: Stage, session: SessionView) -> Verdict | None:
            if stage is Stage.RCPT:
                return Verdict(source="early", add_recipients=["x@far.test"])
            return None

    client = Server(tmp_path, checks=[Early()]).session()
    with pytest.raises(ValueError, match="envelope changes need the message held"):
        client.transaction("a@example.org", "alice@example.test")
