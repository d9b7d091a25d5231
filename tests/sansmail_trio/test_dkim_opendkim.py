"""Signatures made by someone else: OpenDKIM (Debian ``opendkim``, ``opendkim-tools``)
signs, our verifier judges.

- opendkim itself, the milter people put beside Postfix, runs in signing mode on
  127.0.0.1 with a key made by ``opendkim-genkey``; sansmail's milter core
  (`sansmail.milter.Connection`) sends it a message over a socket, and the
  DKIM-Signature field it asks to insert goes on top of the message. Our `verify` then
  passes it against the record opendkim-genkey wrote, served through the tests' DNS
  server and our resolver, and fails it once the body or a header is changed.
- ``opendkim-testmsg`` (libopendkim without the milter) signs a message on standard
  input: rsa-sha1, relaxed/simple, its library defaults.

Skipped, saying why, where OpenDKIM is not installed (CI installs it: .ci/run).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from dns_server import DNSServer

from sansmail import NEED_DATA, PAUSED
from sansmail.mail import dkim
from sansmail.mail.dnsquery import DnsAnswer, DnsStatus, drive
from sansmail.milter import (
    Accept,
    AddHeader,
    Body,
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
    InsertHeader,
    Mail,
    Negotiate,
    Quit,
    Rcpt,
    body_chunks,
    fold,
)
from sansmail_trio._dns import Resolver, run_check

HEADERS = (
    ("From", "Alice <alice@example.test>"),
    ("To", "bob@example.org"),
    ("Subject", "signed by OpenDKIM"),
    ("Date", "Mon, 07 Dec 2026 05:00:00 +0000"),
    ("Message-ID", "<opendkim.1@example.test>"),
)
BODY = b"Hello Bob,\r\n\r\nsigned by someone else.\r\n"
_INSTALL = "CI installs it in .ci/run: apt-get install opendkim opendkim-tools"


def program(name: str) -> str:
    path = os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        pytest.skip(f"{name} is not installed ({_INSTALL})")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def message(headers=HEADERS, body: bytes = BODY) -> bytes:
    return b"".join(f"{n}: {v}\r\n".encode() for n, v in headers) + b"\r\n" + body


@pytest.fixture(scope="module")
def odk_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, str]:
    """A key made by opendkim-genkey for selector "odk" of example.test: the private
    key's path and the TXT value from the zone file stub it wrote."""
    genkey = program("opendkim-genkey")
    folder = tmp_path_factory.mktemp("opendkim-key")
    subprocess.run(
        [genkey, "-b", "2048", "-d", "example.test", "-s", "odk", "-D", str(folder)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    stub = (folder / "odk.txt").read_text()
    return folder / "odk.private", "".join(re.findall(r'"([^"]*)"', stub))


@pytest.fixture(scope="module")
def opendkim(
    tmp_path_factory: pytest.TempPathFactory, odk_key: tuple[pathlib.Path, str]
) -> Iterator[tuple[str, int]]:
    binary = program("opendkim")
    folder = tmp_path_factory.mktemp("opendkim")
    port = free_port()
    config = folder / "opendkim.conf"
    config.write_text(
        f"""\
Mode s
Domain example.test
Selector odk
KeyFile {odk_key[0]}
Socket inet:{port}@127.0.0.1
Background no
Syslog no
Canonicalization relaxed/relaxed
SignatureAlgorithm rsa-sha256
InternalHosts 127.0.0.1
RequireSafeKeys no
PidFile {folder / "opendkim.pid"}
"""
    )
    log = folder / "opendkim.out"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-f", "-x", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"opendkim exited: {log.read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"opendkim did not listen: {log.read_text(errors='replace')}")
                time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(15)


class Milter:
    """One milter conversation over a blocking socket, driven by our milter core."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=30)
        self.conn = Connection()

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

    def sign(self, headers=HEADERS, body: bytes = BODY) -> str:
        """The value of the DKIM-Signature field opendkim asks to add, CRLF-folded."""
        self.exchange(Negotiate())
        steps: list[Command] = [
            # InternalHosts: a client at 127.0.0.1 is ours, so its mail is signed.
            Connect(hostname="localhost", family=Family.INET, port=40000, address="127.0.0.1"),
            Helo(name="localhost"),
            Mail(sender="<alice@example.test>"),
            Rcpt(recipient="<bob@example.org>"),
            Data(),
            *(Header(name=name, value=value) for name, value in headers),
            EndOfHeaders(),
            *(Body(data=chunk) for chunk in body_chunks(body)),
        ]
        for command in steps:
            assert self.exchange(command) in ([], [Continue()]), command
        outcome = fold(self.exchange(EndOfMessage()))
        self.sock.sendall(self.conn.send(Quit()))
        self.sock.close()
        assert outcome.verdict in (Accept(), Continue())
        [field] = [
            m
            for m in outcome.modifications
            if isinstance(m, AddHeader | InsertHeader) and m.name == "DKIM-Signature"
        ]
        # Milter header values fold with a bare LF; on the wire they are CRLF.
        return field.value.replace("\r\n", "\n").replace("\n", "\r\n")


def zone(txt: str):
    def resolve(query) -> DnsAnswer:
        if query.name == "odk._domainkey.example.test":
            return DnsAnswer.of(txt)
        return DnsAnswer(DnsStatus.NXDOMAIN)

    return resolve


def test_opendkim_milter_signature_verifies(opendkim, odk_key) -> None:
    value = Milter(opendkim).sign()
    signed = f"DKIM-Signature: {value}\r\n".encode() + message()
    assert b"a=rsa-sha256" in signed
    assert b"c=relaxed/relaxed" in signed
    (result,) = drive(dkim.verify(signed), zone(odk_key[1]))
    assert (result.result, result.domain, result.selector) == ("pass", "example.test", "odk")
    assert result.algorithm == "rsa-sha256"


async def test_opendkim_signature_through_the_resolver(opendkim, odk_key) -> None:
    value = Milter(opendkim).sign()
    signed = f"DKIM-Signature: {value}\r\n".encode() + message()
    with DNSServer() as dns:
        chunks = " ".join(f'"{odk_key[1][i : i + 255]}"' for i in range(0, len(odk_key[1]), 255))
        dns.add("odk._domainkey.example.test", "TXT", chunks)
        resolver = Resolver([dns.address], timeout=5)
        (result,) = await run_check(dkim.verify(signed), resolver)
        assert result.result == "pass"
        (altered,) = await run_check(dkim.verify(signed.replace(b"someone", b"somebody")), resolver)
        assert (altered.result, altered.reason) == ("fail", "body hash did not verify")


def test_opendkim_signature_fails_when_altered(opendkim, odk_key) -> None:
    value = Milter(opendkim).sign()
    signed = f"DKIM-Signature: {value}\r\n".encode() + message()
    body = signed.replace(b"someone else", b"someone new")
    header = signed.replace(b"Subject: signed by", b"Subject: forged by")
    (result,) = drive(dkim.verify(body), zone(odk_key[1]))
    assert (result.result, result.reason) == ("fail", "body hash did not verify")
    (result,) = drive(dkim.verify(header), zone(odk_key[1]))
    assert (result.result, result.reason) == ("fail", "signature did not verify")
    # Relaxed canonicalization: whitespace changes in the header do not matter.
    spaced = signed.replace(b"Subject: signed by", b"Subject:  signed   by")
    assert drive(dkim.verify(spaced), zone(odk_key[1]))[0].result == "pass"


def test_opendkim_testmsg_signature_verifies(odk_key, tmp_path: pathlib.Path) -> None:
    testmsg = program("opendkim-testmsg")
    done = subprocess.run(
        [testmsg, "-C", "-d", "example.test", "-k", str(odk_key[0]), "-s", "odk"],
        input=message(),
        capture_output=True,
        timeout=60,
        check=True,
    )
    signed = done.stdout
    assert signed.startswith(b"DKIM-Signature:")
    # libopendkim signs with rsa-sha1 by default, which the genkey record (h=sha256)
    # refuses (RFC 6376 §6.1.2); a record without h= lets dkimpy judge it, and it passes.
    assert "h=sha256;" in odk_key[1]
    (refused,) = drive(dkim.verify(signed), zone(odk_key[1]))
    assert (refused.result, refused.algorithm) == ("permerror", "rsa-sha1")
    assert "inappropriate hash" in refused.reason
    any_hash = odk_key[1].replace(" h=sha256;", "")
    (result,) = drive(dkim.verify(signed), zone(any_hash))
    assert result.result == "pass"
    changed = signed.replace(b"Bob,", b"Rob,")
    assert drive(dkim.verify(changed), zone(any_hash))[0].result == "fail"
