"""Stateful fuzzing of the SMTP server core: any interleaving of commands, content, AUTH
lines, STARTTLS, raw bytes and EOF, answered validly, alternatively or wrongly, yields
only documented events and errors, CRLF lines of at most 512 octets, and a bounded
buffer (see fuzz_drivers)."""

from __future__ import annotations

from fuzz_drivers import driver_class
from fuzz_machines import machine

FRAGMENTS = [
    b"EHLO c.example\r\n",
    b"HELO c\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME RET=HDRS ENVID=x\r\n",
    "MAIL FROM:<ü@b.example> SMTPUTF8\r\n".encode(),
    b"MAIL FROM:<a@b.example> AUTH=<>\r\n",
    b"RCPT TO:<c@d.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;c@d.example\r\n",
    b"RCPT TO:<Postmaster>\r\n",
    b"DATA\r\n",
    b"BDAT 5\r\nhello",
    b"BDAT 3 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT 99999999999999999999\r\n",
    b"RSET\r\n",
    b"NOOP x\r\n",
    b"VRFY a\r\n",
    b"HELP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH PLAIN AHVzZXIAcGVuY2ls\r\n",
    b"AUTH LOGIN dXNlcg==\r\n",
    b"AUTH CRAM-MD5\r\n",
    b"dXNlcg==\r\n",
    b"*\r\n",
    b"=\r\n",
    b"QUIT\r\n",
    b"GET / HTTP/1.1\r\n",
    b"Subject: x\r\n\r\nbody\r\n",
    b".\r\n",
    b"..\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r.\r\n",
    b"\r",
    b"\n",
    b"x" * 600 + b"\r\n",
]

SCRIPT = [
    b"EHLO c.example\r\n",
    b"MAIL FROM:<a@b.example> BODY=8BITMIME\r\n",
    b"RCPT TO:<c@d.example>\r\n",
    b"RCPT TO:<e@d.example>\r\n",
    b"DATA\r\n",
    b"Subject: x\r\n\r\n..dot\r\n",
    b".\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"RCPT TO:<c@d.example>\r\n",
    b"BDAT 4\r\nabcd",
    b"BDAT 2 LAST\r\nef",
    b"AUTH PLAIN AHVzZXIAcGVuY2ls\r\n",
    b"\r\n",
    b"STARTTLS\r\n",
    b"QUIT\r\n",
]

TestSMTPServer = machine(driver_class("smtp_server"), FRAGMENTS, SCRIPT).TestCase
