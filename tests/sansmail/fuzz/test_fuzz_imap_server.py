"""Stateful fuzzing of the IMAP server core: commands of every state, literals of every
kind, AUTHENTICATE, IDLE, ENABLE, STARTTLS, COMPRESS, raw bytes and EOF, in any order and
cut, answered validly, alternatively or wrongly, yield only documented events and
errors, CRLF-terminated output and a bounded buffer."""

from __future__ import annotations

from fuzz_drivers import driver_class
from fuzz_machines import machine

FRAGMENTS = [
    b"a CAPABILITY\r\n",
    b"a LOGIN alice secret\r\n",
    b"a LOGIN {5}\r\n",
    b"alice",
    b" {6+}\r\nsecret\r\n",
    b"a AUTHENTICATE PLAIN\r\n",
    b"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"AGFsaWNlAHNlY3JldA==\r\n",
    b"*\r\n",
    b"a SELECT INBOX\r\n",
    b'a EXAMINE "a&AOk-b" (CONDSTORE)\r\n',
    b'a LIST "" *\r\n',
    b"a STATUS INBOX (MESSAGES UIDNEXT UNSEEN)\r\n",
    b"a APPEND INBOX (\\Seen) {11}\r\n",
    b"a APPEND INBOX {3+}\r\nabc\r\n",
    b"hello world\r\n",
    b"a FETCH 1:* (FLAGS UID BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.10>)\r\n",
    b"a UID FETCH 1:3 (BODYSTRUCTURE ENVELOPE BINARY[1])\r\n",
    b"a STORE 1 +FLAGS.SILENT (\\Deleted)\r\n",
    b"a SEARCH OR UNSEEN SUBJECT {1}\r\n",
    b"a UID SEARCH RETURN (MIN MAX) CHARSET UTF-8 BODY x\r\n",
    b"a SORT (DATE) UTF-8 ALL\r\n",
    b"a THREAD REFERENCES UTF-8 ALL\r\n",
    b"a UID MOVE 1 Trash\r\n",
    b"a UID EXPUNGE 1:2\r\n",
    b"a EXPUNGE\r\n",
    b"a IDLE\r\n",
    b"DONE\r\n",
    b"a ENABLE IMAP4rev2 UTF8=ACCEPT\r\n",
    b"a STARTTLS\r\n",
    b"a COMPRESS DEFLATE\r\n",
    b"a NOOP\r\n",
    b"a CLOSE\r\n",
    b"a LOGOUT\r\n",
    b"a\r\n",
    b"* BAD\r\n",
    b"a FETCH 1 BODY[{99999999999}\r\n",
    b"\r\n",
    b"\r",
    b"\n",
]

SCRIPT = [
    b"a1 CAPABILITY\r\n",
    b"a2 LOGIN alice secret\r\n",
    b"a3 ENABLE UTF8=ACCEPT\r\n",
    b"a4 SELECT INBOX\r\n",
    b"a5 FETCH 1:* (FLAGS BODY.PEEK[])\r\n",
    b"a6 APPEND INBOX {5}\r\n",
    b"hello\r\n",
    b"a7 IDLE\r\n",
    b"DONE\r\n",
    b"a8 UID STORE 1 +FLAGS (\\Seen)\r\n",
    b"a9 UNSELECT\r\n",
    b"b1 LOGOUT\r\n",
]

TestIMAPServer = machine(driver_class("imap_server"), FRAGMENTS, SCRIPT).TestCase
