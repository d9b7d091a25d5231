"""Stateful fuzzing of the SMTP client core: whatever a server says (valid replies,
multi-line ones, refusals, replies nobody asked for, raw bytes, EOF), while the
application tries commands in any order, only Reply/ConnectionClosed events,
RemoteProtocolError, or (for a command sent out of turn) LocalProtocolError come out."""

from __future__ import annotations

from fuzz_drivers import driver_class
from fuzz_machines import machine

FRAGMENTS = [
    b"220 mx.example ESMTP\r\n",
    b"220-mx.example\r\n220 ready\r\n",
    b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n",
    b"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-AUTH PLAIN LOGIN\r\n250-STARTTLS\r\n",
    b"250 CHUNKING\r\n",
    b"250 2.1.0 ok\r\n",
    b"250 ok\r\n",
    b"354 go ahead\r\n",
    b"334 \r\n",
    b"334 bW9yZQ==\r\n",
    b"235 2.7.0 ok\r\n",
    b"220 2.0.0 go\r\n",
    b"221 2.0.0 bye\r\n",
    b"421 4.3.2 closing\r\n",
    b"450 4.2.0 later\r\n",
    b"550 5.1.1 no\r\n",
    b"554 no service\r\n",
    b"250-\r\n",
    b"2500 x\r\n",
    b"250\r\n",
    b"\r\n",
    b"\r",
    b"\n",
]

SCRIPT = [
    b"220 mx.example ESMTP\r\n",
    b"250-mx.example\r\n250-PIPELINING\r\n250-AUTH PLAIN\r\n250 CHUNKING\r\n",
    b"250 2.1.0 ok\r\n",
    b"250 2.1.5 ok\r\n",
    b"354 go\r\n",
    b"250 2.0.0 queued\r\n",
    b"221 2.0.0 bye\r\n",
]

TestSMTPClient = machine(driver_class("smtp_client"), FRAGMENTS, SCRIPT).TestCase
