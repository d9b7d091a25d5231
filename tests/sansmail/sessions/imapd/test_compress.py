"""COMPRESS=DEFLATE (RFC 4978) through `ImapConversation`, with the synchronous `Driver`
standing in for the adapter: the capability, the answers in each state, and the octets
pipelined behind COMPRESS handed to the adapter rather than read as commands. The
deflate stream itself is the adapter's (tests/sansmail_trio/test_imap_compress_e2e.py)."""

from __future__ import annotations

import logging
import pathlib

import pytest
from test_conversation import ALICE, TLS, Driver, logged_in, make_service

from sansmail.sessions.imapd import ImapService


@pytest.fixture
def service(tmp_path: pathlib.Path) -> ImapService:
    return make_service(tmp_path)


def test_capability_lists_compress_deflate(service: ImapService) -> None:
    driver = Driver(service, tls=TLS)
    assert b" COMPRESS=DEFLATE " in driver.greeting
    answer = logged_in(driver.session.service).lines(b"c1 CAPABILITY")
    assert b" COMPRESS=DEFLATE " in answer[0]


def test_compress_in_the_authenticated_and_selected_states(service: ImapService) -> None:
    for select in (False, True):
        driver = logged_in(service)
        if select:
            assert driver.lines(b"s SELECT INBOX")[-1].startswith(b"s OK [READ-WRITE]")
        assert driver.lines(b"z COMPRESS DEFLATE") == [b"z OK DEFLATE active"]
        assert driver.session.conn.compressing
        assert driver.after_compress == b""
        assert (logging.DEBUG, "[192.0.2.7]:4321: COMPRESS: DEFLATE") in driver.logs
        # The rest of the conversation is the same (the adapter un-compresses it).
        assert driver.lines(b"n NOOP")[-1] == b"n OK NOOP completed"


def test_compress_over_a_plaintext_link(tmp_path: pathlib.Path) -> None:
    # RFC 4978 §3: COMPRESS may be used with or without TLS.
    service = make_service(tmp_path, plaintext_auth="always")
    driver = Driver(service)
    assert driver.lines(f"a LOGIN {ALICE} secret".encode())[-1].endswith(b"Logged in")
    assert driver.lines(b"z COMPRESS DEFLATE") == [b"z OK DEFLATE active"]


def test_not_before_login(service: ImapService) -> None:
    driver = Driver(service, tls=TLS)
    assert driver.lines(b"z COMPRESS DEFLATE") == [
        b"z BAD COMPRESS is not valid in the NOT_AUTHENTICATED state"
    ]
    assert not driver.session.conn.compressing


def test_a_second_compress_and_other_mechanisms_are_no(service: ImapService) -> None:
    driver = logged_in(service)
    assert driver.lines(b"y COMPRESS LZ4") == [b"y NO COMPRESS mechanism not supported"]
    assert not driver.session.conn.compressing
    assert driver.lines(b"z COMPRESS DEFLATE") == [b"z OK DEFLATE active"]
    assert driver.lines(b"w COMPRESS DEFLATE") == [
        b"w NO [COMPRESSIONACTIVE] COMPRESS already active"
    ]


def test_what_follows_compress_goes_to_the_adapter(service: ImapService) -> None:
    # A client that pipelines after COMPRESS (RFC 4978 §3 says it must wait) sends
    # deflate data: it is handed back for inflating, not answered as a command.
    driver = logged_in(service)
    assert driver.feed(b"z COMPRESS DEFLATE\r\nn NOOP\r\n") == b"z OK DEFLATE active\r\n"
    assert driver.after_compress == b"n NOOP\r\n"


def test_the_logout_line_counts_uncompressed_octets(service: ImapService) -> None:
    driver = logged_in(service)
    driver.lines(b"z COMPRESS DEFLATE")
    driver.lines(b"l LOGOUT")
    driver.session.closed()
    line = driver.log_lines[-1]
    assert line.startswith(f"logout: user=<{ALICE}>")
    received = len(f"a0 LOGIN {ALICE} secret\r\n") + len(b"z COMPRESS DEFLATE\r\nl LOGOUT\r\n")
    assert f" in={received}," in line
