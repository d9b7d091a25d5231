"""Stateful fuzzing of the POP3 server core: commands of both states, the AUTH exchange,
STLS, raw bytes and EOF, in any order and cut, answered validly, alternatively or
wrongly, yield only documented events and errors, CRLF lines and a bounded buffer."""

from __future__ import annotations

from fuzz_drivers import driver_class
from fuzz_machines import machine

FRAGMENTS = [
    b"CAPA\r\n",
    b"USER alice\r\n",
    b"PASS secret\r\n",
    b"PASS \r\n",
    b"APOP alice 0123456789abcdef0123456789abcdef\r\n",
    b"STAT\r\n",
    b"LIST\r\n",
    b"LIST 1\r\n",
    b"LIST 0\r\n",
    b"LIST 99999999999999999999999\r\n",
    b"RETR 2\r\n",
    b"TOP 1 0\r\n",
    b"TOP 1 -1\r\n",
    b"DELE 1\r\n",
    b"UIDL\r\n",
    b"UIDL 2\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"STLS\r\n",
    b"AUTH\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"AUTH LOGIN\r\n",
    b"AGFsaWNlAHNlY3JldA==\r\n",
    b"*\r\n",
    b"=\r\n",
    b"QUIT\r\n",
    b"\r\n",
    b"\r",
    b"\n",
    b"x" * 300 + b"\r\n",
]

SCRIPT = [
    b"CAPA\r\n",
    b"USER alice\r\n",
    b"PASS secret\r\n",
    b"STAT\r\n",
    b"LIST\r\n",
    b"UIDL 1\r\n",
    b"RETR 1\r\n",
    b"TOP 2 1\r\n",
    b"DELE 1\r\n",
    b"RSET\r\n",
    b"QUIT\r\n",
]

TestPOP3Server = machine(driver_class("pop3_server"), FRAGMENTS, SCRIPT).TestCase
