"""sansmail's milter client core against the milters people run: rspamd (its proxy in
milter mode) and SpamAssassin through spamass-milter, real programs on 127.0.0.1 (see
realfilters.py), driven by a few lines of blocking socket code. Each conversation goes
the whole way, negotiation to QUIT, and the verdicts and modifications are the programs'
own: rspamd refuses its reject marker and tags its header marker, spamass-milter refuses
GTUBE with -r and tags it with X-Spam-Flag: YES without."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence

import pytest
from realfilters import (
    GTUBE,
    RSPAMD_GTUBE_REPLY,
    RSPAMD_HEADER,
    RSPAMD_REJECT,
    RSPAMD_REJECT_REPLY,
    SPAMASS_REJECT_REPLY,
    Filter,
)

from sansmail import NEED_DATA, PAUSED
from sansmail.milter import (
    Accept,
    Action,
    AddHeader,
    Body,
    ChangeHeader,
    Command,
    Connect,
    Connection,
    Continue,
    Data,
    EndOfHeaders,
    EndOfMessage,
    Event,
    Family,
    Header,
    Helo,
    Macros,
    MacroStage,
    Mail,
    Modification,
    Negotiate,
    Negotiated,
    Outcome,
    Phase,
    Quit,
    Rcpt,
    ReplaceBody,
    ReplyCode,
    body_chunks,
    fold,
)

HEADERS = (
    ("Received", "from client.example (client.example [192.0.2.7])\n\tby mx.example.test"),
    ("From", "Alice <alice@example.org>"),
    ("To", "bob@example.test"),
    ("Subject", "a test"),
    ("Date", "Mon, 07 Dec 2026 05:00:00 +0000"),
    ("Message-ID", "<realfilters.1@example.org>"),
)


STAGE_OF: dict[MacroStage, type[Command]] = {
    MacroStage.ENVFROM: Mail,
    MacroStage.ENVRCPT: Rcpt,
    MacroStage.DATA: Data,
    MacroStage.EOH: EndOfHeaders,
    MacroStage.EOM: EndOfMessage,
}


class Milter:
    """One connection to a real milter, driven by the core: the core says what to write
    and when a reply is owed; this reads until it is in."""

    def __init__(self, running: Filter) -> None:
        self.sock = socket.create_connection((running.host, running.port), timeout=60)
        self.conn = Connection()
        #: What the milter sent at the last end of message, as it came.
        self.last_end: list[Event] = []

    def exchange(self, command: Command) -> list[Event]:
        self.sock.sendall(self.conn.send(command))
        events: list[Event] = []
        while self.conn.awaiting is not None:
            event = self.conn.next_event()
            if event is NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
            elif event is not PAUSED:
                assert isinstance(event, Event)
                events.append(event)
        return events

    def negotiate(self) -> Negotiated:
        [negotiated] = self.exchange(Negotiate())
        assert isinstance(negotiated, Negotiated)
        return negotiated

    def connect(self) -> None:
        """The SMTP client's connection and HELO, each of which must go on."""
        connect = Connect(
            hostname="client.example", family=Family.INET, port=40000, address="192.0.2.7"
        )
        for command in (connect, Helo(name="client.example")):
            assert self.exchange(command) in ([], [Continue()])

    def message(
        self,
        body: bytes,
        headers: Sequence[tuple[str, str]] = HEADERS,
        sender: str = "alice",
        macros: Sequence[Macros] = (),
    ) -> Outcome:
        """One message, MAIL to end of message: every step before the end must go on.
        `macros` go each just before the command of its stage."""
        steps: list[Command] = [
            Mail(sender=f"<{sender}@example.org>"),
            Rcpt(recipient="<bob@example.test>"),
            Data(),
        ]
        steps += [Header(name=name, value=value) for name, value in headers]
        steps.append(EndOfHeaders())
        steps += [Body(data=chunk) for chunk in body_chunks(body)]
        before = {STAGE_OF[macro.stage]: macro for macro in macros}
        for command in steps:
            if (macro := before.pop(type(command), None)) is not None:
                assert self.exchange(macro) == []  # never answered
            assert self.exchange(command) in ([], [Continue()]), command
        if (macro := before.pop(EndOfMessage, None)) is not None:
            self.exchange(macro)
        assert not before, "macros for a stage this driver does not reach"
        self.last_end = self.exchange(EndOfMessage())
        return fold(self.last_end)

    def quit(self) -> None:
        self.sock.sendall(self.conn.send(Quit()))
        assert self.conn.phase is Phase.CLOSED
        self.sock.close()


@pytest.fixture
def rspamd(rspamd_milter: Filter) -> Iterator[Milter]:
    with rspamd_milter.explained():
        milter = Milter(rspamd_milter)
        yield milter
        milter.quit()


def added(outcome: Outcome) -> dict[str, str]:
    """The fields a milter added or changed (ChangeHeader at index 1 of a field the
    message lacks adds it), by name."""
    fields: dict[str, str] = {}
    for change in outcome.modifications:
        assert isinstance(change, AddHeader | ChangeHeader), change
        fields[change.name] = change.value
    return fields


def only_headers(modifications: Sequence[Modification]) -> bool:
    return all(isinstance(m, AddHeader | ChangeHeader) for m in modifications)


# --- rspamd --------------------------------------------------------------------------


def test_rspamd_negotiates_no_replies_before_end_of_message(rspamd: Milter) -> None:
    negotiated = rspamd.negotiate()
    assert negotiated.version == 6
    assert (negotiated.unoffered_actions, negotiated.unoffered_protocol) == (0, 0)
    # rspamd answers nothing before end of message (SMFIP_NR_* for every step), so the
    # core must not wait for a reply it will never get.
    for step in ("NR_CONN", "NR_HELO", "NR_MAIL", "NR_RCPT", "NR_DATA", "NR_HDR", "NR_EOH"):
        assert step in repr(negotiated.protocol)
    rspamd.connect()
    outcome = rspamd.message(b"Just a note.\r\n")
    assert outcome.verdict == Accept()
    fields = added(outcome)
    assert fields["X-Spam-Status"].startswith("No, score=")
    assert "X-Sansmail-Test" not in fields
    assert "X-Spam" not in fields


def test_rspamd_answers_a_smaller_offer(rspamd: Milter) -> None:
    """Offered only header and body changes (what sansmail's MilterCheck offers), rspamd
    still asks for every action; the core keeps what was offered, reports the rest, and
    the conversation goes on."""
    offer = Action.ADDHDRS | Action.CHGHDRS | Action.CHGBODY | Action.QUARANTINE
    [negotiated] = rspamd.exchange(Negotiate(actions=offer | Action.SETSYMLIST))
    assert isinstance(negotiated, Negotiated)
    assert negotiated.actions == offer | Action.SETSYMLIST
    assert Action.ADDRCPT in negotiated.unoffered_actions
    rspamd.connect()
    outcome = rspamd.message(f"{RSPAMD_HEADER}\r\n".encode())
    assert added(outcome)["X-Sansmail-Test"] == "yes"


def test_rspamd_rejects_its_marker(rspamd: Milter) -> None:
    rspamd.negotiate()
    rspamd.connect()
    outcome = rspamd.message(f"Hello,\r\n{RSPAMD_REJECT}\r\n".encode())
    assert outcome.verdict == ReplyCode(code=554, lines=(RSPAMD_REJECT_REPLY,))
    assert not outcome.delivers


def test_rspamd_tags_its_header_marker(rspamd: Milter) -> None:
    rspamd.negotiate()
    rspamd.connect()
    outcome = rspamd.message(f"Hello,\r\n{RSPAMD_HEADER}\r\n".encode())
    assert outcome.delivers
    assert outcome.verdict == Accept()
    fields = added(outcome)
    assert fields["X-Sansmail-Test"] == "yes"
    assert fields["X-Spam"] == "Yes"  # action "add header": rspamd's spam_header
    assert fields["X-Spam-Status"].startswith("Yes, score=8.00")
    # rspamd folds a long value with a bare LF and a tab, as libmilter milters do: the
    # MTA makes that CRLF when it writes the field.
    assert "SANSMAIL_HEADER_TEST(8.00)" in fields["X-Spamd-Result"]
    assert "\n\t" in fields["X-Spamd-Result"]
    assert "\r" not in fields["X-Spamd-Result"]


def test_rspamd_refuses_gtube(rspamd: Milter) -> None:
    """rspamd knows GTUBE by itself."""
    rspamd.negotiate()
    rspamd.connect()
    outcome = rspamd.message(f"{GTUBE}\r\n".encode())
    assert outcome.verdict == ReplyCode(code=554, lines=(RSPAMD_GTUBE_REPLY,))


def test_rspamd_takes_the_queue_id_from_a_macro(rspamd: Milter) -> None:
    """Macros reach it: the queue id sent as "i" with MAIL comes back in the field its
    x-rspamd-queue-id routine adds."""
    rspamd.negotiate()
    rspamd.connect()
    outcome = rspamd.message(
        f"{RSPAMD_HEADER}\r\n".encode(),
        macros=[
            Macros(stage=MacroStage.ENVFROM, values=(("i", "4QUEUEID7"),)),
            Macros(stage=MacroStage.ENVRCPT, values=(("{rcpt_addr}", "bob@example.test"),)),
        ],
    )
    assert outcome.verdict == Accept()
    assert added(outcome)["X-Rspamd-Queue-Id"] == "4QUEUEID7"


def test_rspamd_reads_a_body_of_many_chunks(rspamd: Milter) -> None:
    """The marker after 200 KiB of text: four SMFIC_BODY packets, which rspamd must
    join for its rule to see the marker."""
    rspamd.negotiate()
    rspamd.connect()
    line = b"All work and no play makes Jack a dull boy. 0123456789 abcdefghij\r\n"
    body = line * (200_000 // len(line)) + RSPAMD_REJECT.encode() + b"\r\n"
    assert len(list(body_chunks(body))) == 4
    outcome = rspamd.message(body)
    assert outcome.verdict == ReplyCode(code=554, lines=(RSPAMD_REJECT_REPLY,))


def test_rspamd_judges_each_message_of_a_connection(rspamd: Milter) -> None:
    """Three messages on one milter connection, each judged on its own: the core starts
    the next at MAIL after an end of message, refused or not."""
    rspamd.negotiate()
    rspamd.connect()
    first = rspamd.message(f"{RSPAMD_REJECT}\r\n".encode())
    second = rspamd.message(f"{RSPAMD_HEADER}\r\n".encode(), sender="carol")
    third = rspamd.message(b"Nothing to see.\r\n", sender="dave")
    assert first.verdict == ReplyCode(code=554, lines=(RSPAMD_REJECT_REPLY,))
    assert second.verdict == Accept()
    assert added(second)["X-Sansmail-Test"] == "yes"
    assert third.verdict == Accept()
    assert "X-Sansmail-Test" not in added(third)


# --- SpamAssassin through spamass-milter ------------------------------------------------


def spamass_conversation(running: Filter, body: bytes) -> tuple[Negotiated, Outcome]:
    with running.explained():
        milter = Milter(running)
        negotiated = milter.negotiate()
        milter.connect()
        outcome = milter.message(body)
        milter.quit()
        return negotiated, outcome


def test_spamass_milter_refuses_gtube_with_r(spamass_milter_reject: Filter) -> None:
    negotiated, outcome = spamass_conversation(spamass_milter_reject, f"{GTUBE}\r\n".encode())
    assert negotiated.version == 6
    assert outcome.verdict == ReplyCode(code=550, lines=(SPAMASS_REJECT_REPLY,))
    assert not outcome.delivers


def test_spamass_milter_lets_a_plain_message_by(spamass_milter_reject: Filter) -> None:
    _, outcome = spamass_conversation(
        spamass_milter_reject, b"Hi Bob,\r\n\r\nsee you at lunch tomorrow?\r\n\r\nAlice\r\n"
    )
    assert outcome.verdict == Continue()
    fields = added(outcome)
    assert fields["X-Spam-Status"].startswith("No, score=")
    assert "X-Spam-Flag" not in fields
    assert outcome.body is None


def test_spamass_milter_tags_gtube_without_r(spamass_milter_tag: Filter) -> None:
    _, outcome = spamass_conversation(spamass_milter_tag, f"{GTUBE}\r\n".encode())
    assert outcome.verdict == Continue()
    assert only_headers(outcome.modifications)
    fields = added(outcome)
    assert fields["X-Spam-Flag"] == "YES"
    assert fields["X-Spam-Status"].startswith("Yes, score=")
    assert "GTUBE" in fields["X-Spam-Status"]
    # spamass-milter replaces a spam's body by what spamd returned, which with
    # report_safe 0 is the same body.
    assert outcome.body == f"{GTUBE}\r\n".encode()


def test_spamass_milter_replaces_the_body_of_a_spam(spamass_milter_report: Filter) -> None:
    """With report_safe 1 a spam becomes SpamAssassin's report with the original
    attached: over 150 KiB of new body in several SMFIR_REPLBODY packets, and a new
    Content-Type (SMFIR_CHGHEADER on the field the message had)."""
    filler = b"All work and no play makes Jack a dull boy. 0123456789 abcdefghij\r\n"
    # GTUBE first: SpamAssassin's body rules read the first 50,000 octets of a part.
    body = f"{GTUBE}\r\n".encode() + filler * (150_000 // len(filler))
    headers = (*HEADERS, ("Content-Type", "text/plain; charset=us-ascii"))
    with spamass_milter_report.explained():
        milter = Milter(spamass_milter_report)
        milter.negotiate()
        milter.connect()
        outcome = milter.message(body, headers=headers)
        chunks = [e for e in milter.last_end if isinstance(e, ReplaceBody)]
        milter.quit()
    assert outcome.verdict == Continue()
    assert len(chunks) >= 3
    assert outcome.body is not None
    assert outcome.body.startswith(b"This is a multi-part message in MIME format.\r\n")
    assert len(outcome.body) > len(body)
    assert body in outcome.body  # the original, attached whole
    [content_type] = [
        m for m in outcome.modifications if isinstance(m, ChangeHeader) and m.name == "Content-Type"
    ]
    assert content_type.index == 1
    assert content_type.value.startswith("multipart/mixed; boundary=")
    assert added(outcome)["X-Spam-Flag"] == "YES"
