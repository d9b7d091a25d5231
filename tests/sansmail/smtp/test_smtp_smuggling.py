"""SMTP smuggling (CVE-2023-51764 and family): only CRLF "." CRLF ends DATA.

The end-of-data variants below come from the SEC Consult research and the probes in
aiosmtpd's test_smtpsmuggling.py and smtpsmug. An attacker hides a second transaction
behind a fake end; a server that agrees with a lenient outbound relay about where the
message ends would deliver the smuggled mail. Here each variant stays inside the
message: it is normalised (bare LF) or the message is refused (bare CR), and the
smuggled commands are never parsed."""

from __future__ import annotations

import pytest
from smtp_helpers import content_of, converse, min_chunk

from sansmail.smtp import Config, EndOfMessage, InvalidMessage, Mail, Rcpt

FAKE_ENDS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n.\n",
    b"\r.\r",
    b"\r.\n",
    b"\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\r\n .\r\n",
]
SMUGGLED = (
    b"MAIL FROM:<admin@victim.example>\r\n"
    b"RCPT TO:<target@victim.example>\r\n"
    b"DATA\r\n"
    b"From: admin@victim.example\r\n\r\nsmuggled\r\n"
)


def session(fake_end: bytes) -> list[bytes]:
    return [
        b"EHLO attacker.example\r\n",
        b"MAIL FROM:<a@attacker.example>\r\n",
        b"RCPT TO:<b@victim.example>\r\n",
        b"DATA\r\n",
        b"Subject: hi\r\n\r\nbody" + fake_end + SMUGGLED + b"\r\n.\r\nQUIT\r\n",
    ]


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=repr)
@pytest.mark.parametrize("bare_lf", ["normalize", "reject"])
@pytest.mark.parametrize("gather", [1, 8192])
def test_fake_end_of_data_never_ends_the_message(
    fake_end: bytes, bare_lf: str, gather: int
) -> None:
    with min_chunk(gather):
        events, wire = converse(session(fake_end), Config(bare_lf=bare_lf))  # type: ignore[arg-type]
    # One transaction only: the smuggled MAIL/RCPT were message content.
    assert sum(isinstance(e, Mail) for e in events) == 1
    assert sum(isinstance(e, Rcpt) for e in events) == 1
    ends = [e for e in events if isinstance(e, EndOfMessage | InvalidMessage)]
    assert len(ends) == 1
    [end] = ends
    if b"\r" in fake_end.replace(b"\r\n", b""):
        assert isinstance(end, InvalidMessage)
        assert "bare CR" in end.reason
    elif b"\n" in fake_end.replace(b"\r\n", b"") and bare_lf == "reject":
        assert isinstance(end, InvalidMessage)
        assert "bare LF" in end.reason
    else:
        assert end == EndOfMessage()
        content = content_of(events)
        assert b"MAIL FROM:<admin@victim.example>\r\n" in content
        assert content.count(b"\r") == content.count(b"\n")  # every line end is CRLF
    assert wire.endswith(b"221 2.0.0 bye\r\n")


def test_bare_lf_end_normalised_keeps_the_smuggled_text_as_content() -> None:
    events, _ = converse(session(b"\n.\n"))
    # "\n.\n" -> a line holding "." (un-stuffed to empty), line ends made CRLF.
    assert content_of(events).startswith(b"Subject: hi\r\n\r\nbody\r\n\r\nMAIL FROM:")
