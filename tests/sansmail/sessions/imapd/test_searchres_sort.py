"""SEARCHRES (RFC 5182), SORT (RFC 5256, RFC 5957) and THREAD through the session, byte for
byte: "$" in every command that takes a set, its reset on SELECT and UNSELECT, and the
orders over a small mailbox whose fields the index keeps."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from session_helpers import Client, Where

MESSAGES = [
    b"Subject: Re: plans\r\nFrom: Zed <z@x.org>\r\nTo: b@x.org\r\nMessage-ID: <b@x>\r\n"
    b"References: <a@x>\r\nDate: Thu, 2 Jan 2025 10:00:00 +0000\r\n\r\nsee you\r\n",
    b"Subject: =?utf-8?q?Plans?=\r\nFrom: =?utf-8?q?Amy_=C3=85?= <a@x.org>\r\n"
    b"Message-ID: <a@x>\r\nDate: Wed, 1 Jan 2025 10:00:00 +0000\r\n\r\nhello there\r\n",
    b"Subject: [list] other\r\nFrom: b@x.org\r\nCc: Cy <c@x.org>\r\n"
    b"Date: Fri, 3 Jan 2025 10:00:00 +0000\r\n\r\nlonger body text here\r\n",
    b"Subject: Fwd: other\r\nFrom: Bob <a@y.org>\r\nMessage-ID: <d@x>\r\nIn-Reply-To: <zz@x>\r\n"
    b"Date: Fri, 3 Jan 2025 09:00:00 +0000\r\n\r\nx\r\n",
]


@pytest.fixture
def client(where: Where) -> Iterator[Client]:
    c = Client(where)
    for n, message in enumerate(MESSAGES):
        # Arrival in the opposite order of the sequence numbers.
        head = b'a%d APPEND INBOX "%02d-Jan-2025 10:00:00 +0000"' % (n, 20 - n)
        assert b"OK [APPENDUID" in c.run(head + b" {%d}" % len(message), message)
    assert b"OK [READ-WRITE]" in c.run(b"s SELECT INBOX")
    yield c
    c.close()


def test_dollar_is_empty_before_a_save(client: Client) -> None:
    assert client.run(b"f FETCH $ FLAGS") == b"f OK FETCH completed\r\n"
    assert client.run(b"s SEARCH $") == b"* SEARCH\r\ns OK SEARCH completed\r\n"
    assert client.run(b"c COPY $ INBOX").startswith(b"c OK ")


def test_save_alone_answers_nothing_and_dollar_names_the_result(client: Client) -> None:
    assert client.run(b"s SEARCH RETURN (SAVE) FROM x.org") == b"s OK SEARCH completed\r\n"
    assert client.run(b"f FETCH $ (UID)") == (
        b"* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 2)\r\n* 3 FETCH (UID 3)\r\nf OK FETCH completed\r\n"
    )
    assert client.run(b"u UID SEARCH $ NOT 1") == b"* SEARCH 2 3\r\nu OK UID SEARCH completed\r\n"
    assert client.run(b"t UID STORE $ +FLAGS.SILENT (\\Deleted)") == (
        b"t OK UID STORE completed\r\n"
    )
    assert client.run(b"d SEARCH DELETED") == b"* SEARCH 1 2 3\r\nd OK SEARCH completed\r\n"


def test_save_with_min_max_keeps_those_and_expunged_ones_leave(client: Client) -> None:
    answer = client.run(b"s UID SEARCH RETURN (SAVE MIN MAX) ALL")
    assert answer == b'* ESEARCH (TAG "s") UID MIN 1 MAX 4\r\ns OK UID SEARCH completed\r\n'
    assert client.run(b"f SEARCH $") == b"* SEARCH 1 4\r\nf OK SEARCH completed\r\n"
    client.run(b"t STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert client.run(b"e EXPUNGE").startswith(b"* 1 EXPUNGE\r\n")
    assert client.run(b"g SEARCH $") == b"* SEARCH 3\r\ng OK SEARCH completed\r\n"
    count = client.run(b"c SEARCH RETURN (SAVE COUNT) OR $ 1")
    assert count == b'* ESEARCH (TAG "c") COUNT 2\r\nc OK SEARCH completed\r\n'


def test_select_and_unselect_forget_the_result(client: Client) -> None:
    client.run(b"s SEARCH RETURN (SAVE) ALL")
    client.run(b"x SELECT INBOX")
    assert client.run(b"f SEARCH $") == b"* SEARCH\r\nf OK SEARCH completed\r\n"
    client.run(b"s SEARCH RETURN (SAVE) ALL")
    client.run(b"u UNSELECT")
    client.run(b"x SELECT INBOX")
    assert client.run(b"f SEARCH $") == b"* SEARCH\r\nf OK SEARCH completed\r\n"


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        (b"SORT (SUBJECT) UTF-8 ALL", b"* SORT 3 4 1 2"),  # other, other, plans, plans
        (b"SORT (SUBJECT REVERSE DATE) UTF-8 ALL", b"* SORT 3 4 1 2"),
        (b"SORT (DATE) UTF-8 ALL", b"* SORT 2 1 4 3"),
        (b"SORT (ARRIVAL) UTF-8 ALL", b"* SORT 4 3 2 1"),
        (b"SORT (REVERSE ARRIVAL) UTF-8 ALL", b"* SORT 1 2 3 4"),
        (b"SORT (SIZE) UTF-8 ALL", b"* SORT 3 4 2 1"),  # 119, 125, 140, 141 octets
        (b"SORT (REVERSE SIZE) UTF-8 ALL", b"* SORT 1 2 4 3"),
        (b"SORT (FROM) UTF-8 ALL", b"* SORT 2 4 3 1"),  # a, a, b, z: local parts
        (b"SORT (DISPLAYFROM) UTF-8 ALL", b"* SORT 2 3 4 1"),  # amy å, b@x.org, bob, zed
        (b"SORT (TO CC) UTF-8 ALL", b"* SORT 2 4 3 1"),
        (b"SORT (SUBJECT) UTF-8 FROM x.org", b"* SORT 3 1 2"),
        (b"UID SORT (DATE) US-ASCII NOT 1", b"* SORT 2 4 3"),
        (b"SORT (DATE) UTF-8 SUBJECT nothing", b"* SORT"),
        # 4 answers a message that is not there: the dummy goes, and 4, a "Fwd:" of
        # 3's subject, joins 3 (RFC 5256 §3 REFERENCES steps 4 and 5).
        (b"THREAD REFERENCES UTF-8 ALL", b"* THREAD (2 1)(3 4)"),
        (b"THREAD ORDEREDSUBJECT UTF-8 ALL", b"* THREAD (2 1)(4 3)"),
        (b"UID THREAD REFERENCES UTF-8 2:4", b"* THREAD (2)(3 4)"),
        (b"THREAD REFERENCES UTF-8 SUBJECT nothing", b"* THREAD"),
    ],
)
def test_sort_and_thread(client: Client, command: bytes, answer: bytes) -> None:
    name = command.split(b" (")[0].split(b" UTF")[0].split(b" US")[0]
    name = b" ".join(w for w in name.split(b" ") if w in (b"UID", b"SORT", b"THREAD"))
    assert client.run(b"t " + command) == answer + b"\r\nt OK " + name + b" completed\r\n"


def test_sort_and_thread_take_dollar(client: Client) -> None:
    client.run(b"s SEARCH RETURN (SAVE) SUBJECT other")
    assert client.run(b"t SORT (DATE) UTF-8 $") == b"* SORT 4 3\r\nt OK SORT completed\r\n"
