"""RFC 5321 Appendix D, replayed through the server core byte for byte.

The client's lines are fed as the wire bytes; the server's lines are sent as `Reply`
events and must serialise to exactly the transcript's bytes."""

from __future__ import annotations

import re

import pytest
from smtp_helpers import content_of, drain

from sansmail import SERVER
from sansmail.mail.address import Address
from sansmail.smtp import (
    Connection,
    Data,
    EndOfMessage,
    Event,
    Hello,
    Mail,
    MessageData,
    Phase,
    Quit,
    Rcpt,
    Reply,
    Reset,
    Verify,
)

D1 = """
      S: 220 foo.com Simple Mail Transfer Service Ready
      C: EHLO bar.com
      S: 250-foo.com greets bar.com
      S: 250-8BITMIME
      S: 250-SIZE
      S: 250-DSN
      S: 250 HELP
      C: MAIL FROM:<Smith@bar.com>
      S: 250 OK
      C: RCPT TO:<Jones@foo.com>
      S: 250 OK
      C: RCPT TO:<Green@foo.com>
      S: 550 No such user here
      C: RCPT TO:<Brown@foo.com>
      S: 250 OK
      C: DATA
      S: 354 Start mail input; end with <CRLF>.<CRLF>
      C: Blah blah blah...
      C: ...etc. etc. etc.
      C: .
      S: 250 OK
      C: QUIT
      S: 221 foo.com Service closing transmission channel
"""

D2 = """
      S: 220 foo.com Simple Mail Transfer Service Ready
      C: EHLO bar.com
      S: 250-foo.com greets bar.com
      S: 250-8BITMIME
      S: 250-SIZE
      S: 250-DSN
      S: 250 HELP
      C: MAIL FROM:<Smith@bar.com>
      S: 250 OK
      C: RCPT TO:<Jones@foo.com>
      S: 250 OK
      C: RCPT TO:<Green@foo.com>
      S: 550 No such user here
      C: RSET
      S: 250 OK
      C: QUIT
      S: 221 foo.com Service closing transmission channel
"""

D3_STEP1 = """
      S: 220 foo.com Simple Mail Transfer Service Ready
      C: EHLO bar.com
      S: 250-foo.com greets bar.com
      S: 250-8BITMIME
      S: 250-SIZE
      S: 250-DSN
      S: 250 HELP
      C: MAIL FROM:<JQP@bar.com>
      S: 250 OK
      C: RCPT TO:<Jones@XYZ.COM>
      S: 250 OK
      C: DATA
      S: 354 Start mail input; end with <CRLF>.<CRLF>
      C: Date: Thu, 21 May 1998 05:33:29 -0700
      C: From: John Q. Public <JQP@bar.com>
      C: Subject: The Next Meeting of the Board
      C: To: Jones@xyz.com
      C:
      C: Bill:
      C: The next meeting of the board of directors will be
      C: on Tuesday.
      C: John.
      C: .
      S: 250 OK
      C: QUIT
      S: 221 foo.com Service closing transmission channel
"""

D3_STEP2 = """
           S: 220 xyz.com Simple Mail Transfer Service Ready
           C: EHLO foo.com
           S: 250 xyz.com is on the air
           C: MAIL FROM:<JQP@bar.com>
           S: 250 OK
           C: RCPT TO:<Jones@XYZ.COM>
           S: 250 OK
           C: DATA
           S: 354 Start mail input; end with <CRLF>.<CRLF>
           C: Received: from bar.com by foo.com ; Thu, 21 May 1998
           C:     05:33:29 -0700
           C: Date: Thu, 21 May 1998 05:33:22 -0700
           C: From: John Q. Public <JQP@bar.com>
           C: Subject:  The Next Meeting of the Board
           C: To: Jones@xyz.com
           C:
           C: Bill:
           C: The next meeting of the board of directors will be
           C: on Tuesday.
           C:                         John.
           C: .
           S: 250 OK
           C: QUIT
           S: 221 foo.com Service closing transmission channel
"""

D4 = """
      S: 220 foo.com Simple Mail Transfer Service Ready
      C: EHLO bar.com
      S: 250-foo.com greets bar.com
      S: 250-8BITMIME
      S: 250-SIZE
      S: 250-DSN
      S: 250-VRFY
      S: 250 HELP
      C: VRFY Crispin
      S: 250 Mark Crispin <Admin.MRC@foo.com>
      C: MAIL FROM:<EAK@bar.com>
      S: 250 OK
      C: RCPT TO:<Admin.MRC@foo.com>
      S: 250 OK
      C: DATA
      S: 354 Start mail input; end with <CRLF>.<CRLF>
      C: Blah blah blah...
      C: ...etc. etc. etc.
      C: .
      S: 250 OK
      C: QUIT
      S: 221 foo.com Service closing transmission channel
"""

_LINE = re.compile(r"^\s*([CS]):(?: (.*))?$")


def blocks(transcript: str) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for raw in transcript.strip("\n").splitlines():
        match = _LINE.match(raw)
        assert match, raw
        who, text = match.group(1), match.group(2) or ""
        if out and out[-1][0] == who:
            out[-1][1].append(text)
        else:
            out.append((who, [text]))
    return out


def replay(transcript: str, *, bytewise: bool = False) -> list[Event]:
    conn = Connection(SERVER)
    events: list[Event] = []
    for who, lines in blocks(transcript):
        wire = "".join(line + "\r\n" for line in lines).encode()
        if who == "S":
            # Each block of server lines is one reply; a multi-line one reads "250-...".
            reply = Reply(code=int(lines[0][:3]), lines=tuple(line[4:] for line in lines))
            assert conn.send(reply) == wire
        else:
            pieces = [wire[i : i + 1] for i in range(len(wire))] if bytewise else [wire]
            for piece in pieces:
                conn.receive_data(piece)
                events.extend(drain(conn))
    assert conn.our_state is Phase.CLOSED
    return events


def addr(local: str, domain: str) -> Address:
    return Address(local_part=local, domain=domain)


ETC = b"Blah blah blah...\r\n..etc. etc. etc.\r\n"  # "...etc" on the wire is dot-stuffed


@pytest.mark.parametrize("bytewise", [False, True])
def test_d1_typical_transaction(bytewise: bool) -> None:
    events = replay(D1, bytewise=bytewise)
    assert events == [
        Hello(domain="bar.com"),
        Mail(reverse_path=addr("Smith", "bar.com")),
        Rcpt(forward_path=addr("Jones", "foo.com")),
        Rcpt(forward_path=addr("Green", "foo.com")),
        Rcpt(forward_path=addr("Brown", "foo.com")),
        Data(),
        MessageData(data=ETC),
        EndOfMessage(),
        Quit(),
    ]


def test_d2_aborted_transaction() -> None:
    events = replay(D2)
    assert [type(e) for e in events] == [Hello, Mail, Rcpt, Rcpt, Reset, Quit]


def test_d3_relayed_mail() -> None:
    first = replay(D3_STEP1)
    assert first[2] == Rcpt(forward_path=addr("Jones", "xyz.com"))
    assert content_of(first) == (
        b"Date: Thu, 21 May 1998 05:33:29 -0700\r\n"
        b"From: John Q. Public <JQP@bar.com>\r\n"
        b"Subject: The Next Meeting of the Board\r\n"
        b"To: Jones@xyz.com\r\n"
        b"\r\n"
        b"Bill:\r\n"
        b"The next meeting of the board of directors will be\r\n"
        b"on Tuesday.\r\n"
        b"John.\r\n"
    )
    second = replay(D3_STEP2)
    assert second[0] == Hello(domain="foo.com")
    assert content_of(second).startswith(
        b"Received: from bar.com by foo.com ; Thu, 21 May 1998\r\n    05:33:29 -0700\r\n"
    )
    assert content_of(second).endswith(b"on Tuesday.\r\n                        John.\r\n")


def test_d4_verifying_and_sending() -> None:
    events = replay(D4)
    assert events[1] == Verify(argument="Crispin")
    assert [type(e) for e in events] == [
        Hello, Verify, Mail, Rcpt, Data, MessageData, EndOfMessage, Quit,
    ]  # fmt: skip
    assert content_of(events) == ETC
