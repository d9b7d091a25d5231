"""``log_format = "json"``: the mail log as one JSON object per line (`_log.py`)."""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from trio_helpers import FAST_HASHER, wait_until_started

from sansmail.mail.address import parse_address
from sansmail.storage.queue import QueueStore
from sansmail.storage.users import UserStore
from sansmail_trio._log import configure_logging, get_logger, line_logger

KEYS = ["time", "host", "program", "pid", "level", "message"]


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    root = logging.getLogger("sansmail")
    top = logging.getLogger()
    saved = (root.handlers[:], root.level, root.propagate, top.handlers[:])
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    configure_logging(logging.INFO, "json")
    yield out
    root.handlers[:], root.level, root.propagate, top.handlers[:] = saved
    logging.captureWarnings(False)


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text[:-1].split("\n")]


def test_a_session_line_has_the_keys_in_order(stderr: io.StringIO) -> None:
    line_logger(get_logger("smtp"))(logging.INFO, "connect from [192.0.2.1]:4000")
    get_logger("queue").warning("%s", "connect from [192.0.2.1]:4000")
    first, second = _lines(stderr)
    assert list(first) == KEYS
    assert first["host"] == socket.gethostname()
    assert (first["program"], first["level"]) == ("sansmail/smtp", "info")
    assert (second["program"], second["level"]) == ("sansmail/queue", "warning")
    assert first["pid"] == second["pid"] == os.getpid()
    assert first["message"] == second["message"] == "connect from [192.0.2.1]:4000"
    stamp = str(first["time"])
    assert stamp.endswith("Z")
    assert len(stamp.split(".")[1]) == 7  # microseconds and Z
    parsed = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert parsed.utcoffset() == datetime.timedelta(0)
    now = datetime.datetime.now(datetime.UTC)
    assert abs((now - parsed).total_seconds()) < 3600


def test_the_queue_id_is_taken_from_the_start_of_the_line(
    stderr: io.StringIO, tmp_path: pathlib.Path
) -> None:
    queue_id = QueueStore(tmp_path / "queue").new_id()
    log = line_logger(get_logger("queue"))
    log(logging.INFO, f"{queue_id}: from=<a@example.org>, to=<b@example.test>, status=sent")
    log(logging.INFO, "TLS: using the self-signed certificate")
    log(logging.INFO, "SIGHUP: reloading")
    log(logging.INFO, "DEADBEEF: eight hex digits, shorter than any queue id")
    log(logging.INFO, f"a line about {queue_id}: not at the start")
    first, *others = _lines(stderr)
    assert list(first) == [*KEYS[:5], "queue_id", "message"]
    assert first["queue_id"] == queue_id
    assert str(first["message"]).startswith(f"{queue_id}: from=<a@example.org>")
    assert all("queue_id" not in line for line in others)


def test_a_traceback_stays_on_the_line(stderr: io.StringIO) -> None:
    try:
        raise ValueError("broken\nin two")
    except ValueError:
        get_logger("master").exception("server process %d failed", 1)
    (line,) = _lines(stderr)
    assert list(line) == [*KEYS, "exception"]
    assert line["level"] == "error"
    assert line["message"] == "server process 1 failed"
    assert "ValueError: broken\nin two" in str(line["exception"])


def test_records_from_outside_sansmail_are_json_too(stderr: io.StringIO) -> None:
    logging.getLogger("some.library").warning("careful: %s", "ü")
    logging.getLogger("some.library").info("not shown")
    (line,) = _lines(stderr)
    assert (line["program"], line["message"]) == ("some/library", "careful: ü")


def test_text_again_removes_the_json_handlers(
    stderr: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", stderr)  # pytest's capture put its own back
    configure_logging(logging.INFO, "text")
    logging.getLogger("some.library").error("not ours")
    get_logger("smtp").info("%s", "plain")
    assert stderr.getvalue().endswith(f" sansmail/smtp[{os.getpid()}]: plain\n")
    assert "not ours" not in stderr.getvalue()


_QUEUE_ID = re.compile(r"[0-9A-F]{9,64}")
_MESSAGES = st.one_of(
    st.text(),
    st.builds("{}: {}".format, st.from_regex(_QUEUE_ID, fullmatch=True), st.text()),
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_MESSAGES)
@example("\udce9t\udcc3: bytes decoded with surrogateescape")  # st.text() makes no surrogates
@example("6620E3E4D3B0604019001: to=<b@example.test>, status=sent (delivered to maildir)")
@example('¡"')  # escaped quote beside a kept character
def test_any_message_round_trips_on_one_utf8_line(stderr: io.StringIO, message: str) -> None:
    stderr.seek(0)
    stderr.truncate()
    line_logger(get_logger("smtp"))(logging.INFO, message)
    get_logger("imap").info("%s", message)
    text = stderr.getvalue()
    assert text.count("\n") == 2
    assert text.endswith("\n")
    found = re.match(r"([0-9A-F]{9,64}): ", message)
    for line in text[:-1].split("\n"):
        assert len(line.splitlines()) == 1  # no \r, U+2028 or other line end inside
        line.encode("utf-8")  # written to a UTF-8 stream without an error
        decoded = json.loads(line)
        assert decoded["message"] == message
        assert decoded.get("queue_id") == (found[1] if found else None)
    if not any("\ud800" <= c <= "\udfff" for c in message):
        # Non-ASCII kept as UTF-8, not \u-escaped (U+2028 and the like are not printable).
        assert all(c in text for c in message if not c.isascii() and c.isprintable())


MESSAGE = "Subject: grüße\r\n\r\nbody\r\n".encode()


def test_serve_writes_every_line_as_json(tmp_path: pathlib.Path) -> None:
    (tmp_path / "sansmail.toml").write_text(
        'log_format = "json"\nhostname = "mx.example.test"\ndomains = ["example.test"]\n'
        'data_dir = "data"\nprocesses = 1\n[listen]\nsmtp = "127.0.0.1:0"\n'
    )
    UserStore(tmp_path / "data" / "users.json", hasher=FAST_HASHER).add(
        parse_address("alice@example.test"), "pw"
    )
    script = shutil.which("sansmail-trio")
    assert script is not None
    path = tmp_path / "serve.log"
    with path.open("wb") as log:
        proc = subprocess.Popen([script, "serve"], cwd=tmp_path, stderr=log)
    try:
        port = wait_until_started(proc, path)["smtp"]
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@example.org", ["alice@example.test", "nobody@example.test"], MESSAGE)
        # Shutting down waits for the queue runner, whose lines come after the intake's.
        _wait_for(path, "status=sent")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    text = path.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == text.count("\n") > 5
    assert all(list(line)[:5] == KEYS[:5] for line in lines)
    assert {line["program"] for line in lines} >= {"sansmail/smtp", "sansmail/master"}
    sent = [line for line in lines if "status=sent" in str(line["message"])]
    rejected = [line for line in lines if "status=rejected" in str(line["message"])]
    assert sent
    assert rejected
    for line in sent + rejected:
        assert str(line["message"]).startswith(f"{line['queue_id']}: ")
    assert all("not in force" not in str(line["message"]) for line in lines)
    assert len(list((tmp_path / "data/mail/example.test/alice/new").iterdir())) == 1


def _wait_for(path: pathlib.Path, text: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and text not in path.read_text():
        time.sleep(0.05)
    assert text in path.read_text(), path.read_text()


def test_a_session_line_has_its_id_before_the_queue_id(
    stderr: io.StringIO, tmp_path: pathlib.Path
) -> None:
    queue_id = QueueStore(tmp_path / "queue").new_id()
    log = line_logger(get_logger("smtp"), "Hx0Qe3mK1vT9")
    log(logging.INFO, "connect from [192.0.2.1]:4000")
    log(logging.INFO, f"{queue_id}: from=<a@example.org>, to=<b@example.test>, status=sent")
    get_logger("smtp").info("%s", "odd", extra={"session": 'a "quoted" id'})
    first, second, third = _lines(stderr)
    assert list(first) == [*KEYS[:5], "session", "message"]
    assert list(second) == [*KEYS[:5], "session", "queue_id", "message"]
    assert first["session"] == second["session"] == "Hx0Qe3mK1vT9"
    assert second["queue_id"] == queue_id
    assert third["session"] == 'a "quoted" id'
