"""`sansmail-trio serve` with `[milter] milters` naming real milters (realfilters.py), as
a process: mail sent with smtplib is refused at the end of DATA with the milter's own
reply, or stored in the Maildir with the fields the milter added or changed and the body
it gave, as Postfix's smtpd_milters would have it.

rspamd refuses its reject marker and GTUBE and tags its header marker; SpamAssassin
through spamass-milter refuses GTUBE with -r and tags it without; the two in a row each
add their fields, and a refusal by the second is the answer."""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
import re
import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator, Sequence

import attrs
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
from trio_helpers import FAST_HASHER, wait_until_started

from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore

ROOT = pathlib.Path(__file__).resolve().parents[2]
RECIPIENT = "alice@example.test"
_serial = itertools.count(1)


@attrs.define
class Server:
    """`sansmail-trio serve` as a process, with the milters it was given."""

    directory: pathlib.Path
    process: subprocess.Popen[bytes]
    port: int
    milters: Sequence[Filter]

    @property
    def log(self) -> str:
        return (self.directory / "serve.log").read_text(errors="replace")

    def new_messages(self) -> list[bytes]:
        new = self.directory / "data" / "mail" / "example.test" / "alice" / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    def stored(self, token: str) -> bytes:
        """The stored message whose Subject carries `token`."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for message in self.new_messages():
                if f"Subject: {token}".encode() in message:
                    return message
            time.sleep(0.05)
        raise AssertionError(f"no message {token} in the Maildir")

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """Add the server's and the milters' logs to any failure inside."""
        try:
            yield
        except BaseException as exc:
            exc.add_note(f"--- sansmail-trio serve ---\n{self.log[-6000:]}")
            for milter in self.milters:
                exc.add_note(milter.log_text())
            raise


def start_server(directory: pathlib.Path, milters: Sequence[Filter]) -> Server:
    names = ", ".join(f'"{milter.address}"' for milter in milters)
    # The sender checks are off: they would ask DNS, and these tests are about milters.
    # mynetworks leaves 127.0.0.1 out so that the tests' client is an ordinary one.
    (directory / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\n'
        'domains = ["example.test"]\n'
        'data_dir = "data"\n'
        'mynetworks = ["192.0.2.0/24"]\n'
        "[listen]\n"
        'smtp = "127.0.0.1:0"\n'
        "[dns]\n"
        'nameservers = ["127.0.0.1:9"]\n'
        "[antispam]\n"
        'spf = "off"\n'
        'dkim = "off"\n'
        'dmarc = "off"\n'
        "[milter]\n"
        f"milters = [{names}]\n"
        'default_action = "tempfail"\n'
    )
    UserStore(directory / "data" / "users.json", hasher=FAST_HASHER).add(
        parse_address(RECIPIENT), "pw"
    )
    script = shutil.which("sansmail-trio")
    assert script is not None
    log = directory / "serve.log"
    # This checkout first, whatever the installed package points at.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    with log.open("wb") as sink:
        process = subprocess.Popen([script, "serve"], cwd=directory, stderr=sink, env=env)
    port = wait_until_started(process, log)["smtp"]
    return Server(directory=directory, process=process, port=port, milters=milters)


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(10)


@pytest.fixture(scope="module")
def rspamd_server(
    tmp_path_factory: pytest.TempPathFactory, rspamd_milter: Filter
) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("serve"), [rspamd_milter])
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def spamass_reject_server(
    tmp_path_factory: pytest.TempPathFactory, spamass_milter_reject: Filter
) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("serve"), [spamass_milter_reject])
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def spamass_tag_server(
    tmp_path_factory: pytest.TempPathFactory, spamass_milter_tag: Filter
) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("serve"), [spamass_milter_tag])
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def spamass_report_server(
    tmp_path_factory: pytest.TempPathFactory, spamass_milter_report: Filter
) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("serve"), [spamass_milter_report])
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def both_server(
    tmp_path_factory: pytest.TempPathFactory, spamass_milter_tag: Filter, rspamd_milter: Filter
) -> Iterator[Server]:
    """spamass-milter (tagging only), then rspamd: Postfix's order, the list's."""
    server = start_server(tmp_path_factory.mktemp("serve"), [spamass_milter_tag, rspamd_milter])
    yield server
    stop_server(server)


def message(body: str, extra: str = "") -> tuple[str, bytes]:
    """A unique Subject token and a message carrying it (`extra`: more header lines)."""
    token = f"real-milters-{next(_serial)}"
    text = (
        "From: Carol <carol@example.org>\r\n"
        f"To: {RECIPIENT}\r\n"
        f"Subject: {token}\r\n"
        "Date: Mon, 07 Dec 2026 05:00:00 +0000\r\n"
        f"Message-ID: <{token}@example.org>\r\n"
        f"{extra}"
        "\r\n"
        f"{body}\r\n"
    )
    return token, text.encode()


def send(server: Server, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=120) as client:
        client.sendmail("carol@example.org", [RECIPIENT], data)


def refused(server: Server, data: bytes) -> tuple[int, bytes]:
    """Send `data`, which must be refused at the end of DATA: the reply."""
    with pytest.raises(smtplib.SMTPDataError) as refusal:
        send(server, data)
    return refusal.value.smtp_code, refusal.value.smtp_error


def fields_of(stored: bytes) -> dict[str, str]:
    """The header fields of a stored message (Maildir: LF line ends), unfolded, by
    lower-case name (the first of each name)."""
    head = stored.split(b"\n\n", 1)[0].decode()
    fields: dict[str, str] = {}
    for raw in re.split(r"\n(?![ \t])", head):
        name, _, value = raw.partition(":")
        fields.setdefault(name.lower(), re.sub(r"\n[ \t]+", " ", value).strip())
    return fields


def assert_stored_form(stored: bytes) -> None:
    """Maildir's form: every line ends in a bare LF, no CR anywhere (a milter's
    LF-folded value and the CRLF of the wire both came out as LF), and every header
    line is a field or a fold of one."""
    assert b"\r" not in stored, stored
    head = stored.split(b"\n\n", 1)[0]
    for line in head.split(b"\n"):
        assert re.match(rb"[!-9;-~]+:|[ \t]", line), line


def lf(text: str) -> bytes:
    return text.replace("\r\n", "\n").encode()


# --- rspamd --------------------------------------------------------------------------


def test_rspamd_refuses_its_marker_at_end_of_data(rspamd_server: Server) -> None:
    token, data = message(f"Hello,\r\n{RSPAMD_REJECT}")
    with rspamd_server.explained():
        code, reply = refused(rspamd_server, data)
        assert (code, reply) == (554, RSPAMD_REJECT_REPLY.encode())
        assert not any(token.encode() in m for m in rspamd_server.new_messages())


def test_rspamd_refuses_gtube(rspamd_server: Server) -> None:
    _, data = message(GTUBE)
    with rspamd_server.explained():
        assert refused(rspamd_server, data) == (554, RSPAMD_GTUBE_REPLY.encode())


def test_rspamd_tags_its_header_marker(rspamd_server: Server) -> None:
    token, data = message(f"Hello,\r\n{RSPAMD_HEADER}")
    with rspamd_server.explained():
        send(rspamd_server, data)
        stored = rspamd_server.stored(token)
        fields = fields_of(stored)
        assert fields["x-sansmail-test"] == "yes"
        assert fields["x-spam"] == "Yes"
        assert fields["x-spam-status"].startswith("Yes, score=8.00")
        assert "SANSMAIL_HEADER_TEST(8.00)" in fields["x-spamd-result"]
        assert_stored_form(stored)
        assert stored.endswith(f"\n\nHello,\n{RSPAMD_HEADER}\n".encode())


def test_rspamd_passes_a_plain_message(rspamd_server: Server) -> None:
    token, data = message("See you at lunch.")
    with rspamd_server.explained():
        send(rspamd_server, data)
        stored = rspamd_server.stored(token)
        fields = fields_of(stored)
        assert fields["x-spam-status"].startswith("No, score=")
        assert "x-sansmail-test" not in fields
        assert_stored_form(stored)


# --- SpamAssassin through spamass-milter ------------------------------------------------


def test_spamass_milter_refuses_gtube_with_r(spamass_reject_server: Server) -> None:
    token, data = message(GTUBE)
    with spamass_reject_server.explained():
        assert refused(spamass_reject_server, data) == (550, SPAMASS_REJECT_REPLY.encode())
        assert not any(token.encode() in m for m in spamass_reject_server.new_messages())


def test_spamass_milter_passes_a_plain_message(spamass_reject_server: Server) -> None:
    token, data = message("Hi Alice,\r\n\r\nsee you at lunch tomorrow?\r\n\r\nCarol")
    with spamass_reject_server.explained():
        send(spamass_reject_server, data)
        stored = spamass_reject_server.stored(token)
        fields = fields_of(stored)
        assert fields["x-spam-status"].startswith("No, score=")
        assert "x-spam-flag" not in fields
        assert_stored_form(stored)


def test_spamass_milter_tags_gtube_without_r(spamass_tag_server: Server) -> None:
    token, data = message(GTUBE)
    with spamass_tag_server.explained():
        send(spamass_tag_server, data)
        stored = spamass_tag_server.stored(token)
        fields = fields_of(stored)
        assert fields["x-spam-flag"] == "YES"
        assert fields["x-spam-status"].startswith("Yes, score=")
        assert "GTUBE" in fields["x-spam-status"]
        assert_stored_form(stored)
        # spamass-milter sent the body back (report_safe 0: unchanged).
        assert stored.endswith(f"\n\n{GTUBE}\n".encode())


def test_spamass_milter_replaces_the_body_of_a_spam(spamass_report_server: Server) -> None:
    """report_safe 1: the stored message is SpamAssassin's report, the original attached,
    under the Content-Type spamass-milter changed."""
    filler = "All work and no play makes Jack a dull boy. 0123456789 abcdefghij\r\n"
    original = f"{GTUBE}\r\n" + filler * (150_000 // len(filler))
    token, data = message(original, extra="Content-Type: text/plain; charset=us-ascii\r\n")
    with spamass_report_server.explained():
        send(spamass_report_server, data)
        stored = spamass_report_server.stored(token)
        fields = fields_of(stored)
        assert fields["x-spam-flag"] == "YES"
        assert fields["content-type"].startswith("multipart/mixed; boundary=")
        head = stored.split(b"\n\n", 1)[0]
        assert head.lower().count(b"\ncontent-type:") == 1  # changed, not added
        assert b"\n\nThis is a multi-part message in MIME format.\n" in stored
        assert lf(original) in stored
        assert_stored_form(stored)


# --- both, in a row ------------------------------------------------------------------


def test_spamass_milter_tags_gtube_and_rspamd_refuses_it(both_server: Server) -> None:
    """spamass-milter (tagging) lets GTUBE on with its fields; rspamd then refuses it:
    the refusal is the answer, and nothing is stored."""
    token, data = message(GTUBE)
    with both_server.explained():
        assert refused(both_server, data) == (554, RSPAMD_GTUBE_REPLY.encode())
        assert not any(token.encode() in m for m in both_server.new_messages())


def test_both_milters_add_their_fields(both_server: Server) -> None:
    """rspamd tags its header marker; SpamAssassin finds nothing but adds its fields."""
    token, data = message(f"Hello,\r\n{RSPAMD_HEADER}")
    with both_server.explained():
        send(both_server, data)
        stored = both_server.stored(token)
        fields = fields_of(stored)
        assert fields["x-sansmail-test"] == "yes"  # rspamd's
        assert "x-spam-checker-version" in fields  # SpamAssassin's
        assert_stored_form(stored)
        # Each adds its own X-Spam-Status, in the order of the list.
        statuses = re.findall(rb"\nX-Spam-Status: (\S+)", stored.split(b"\n\n", 1)[0])
        assert statuses == [b"No,", b"Yes,"]
