"""A pipelining client (mbsync sends one UID FETCH per message, hundreds at a time)
against serve() on 127.0.0.1, over TLS, with and without COMPRESS=DEFLATE:

- every answer comes, in the order of the commands, whatever mix of commands that
  work on the store (answered in runs in a worker thread) and commands the loop
  answers (CAPABILITY, an invalid line) the client sent;
- the commands already there cost no autologout timer each (`IdleWatch.arm`): the
  session arms it only when it must wait for the client;
- they cost no worker-thread trip each either: a run answers up to `RUN_COMMANDS`.
"""

from __future__ import annotations

import re
import ssl
from typing import Any

import pytest
from test_imap_compress_e2e import RawTLS, fill_inbox
from test_imap_e2e import imap_server, in_thread
from trio_helpers import BOTH_BACKENDS, RunningServer

from sansmail_trio import _imap_server
from sansmail_trio._idle import IdleWatch

pytestmark = BOTH_BACKENDS

_LITERAL = re.compile(rb"\{(\d+)\}$")


class Pipeliner(RawTLS):
    """`RawTLS` that reads whole responses, literals included."""

    def exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside a literal")
            self.buf += self.inflate.decompress(chunk) if self.inflate is not None else chunk
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def response(self) -> tuple[bytes, list[bytes]]:
        """One response: its text (literals left out) and its literals."""
        text, literals = b"", []
        while True:
            line = self.line()
            text += line
            found = _LITERAL.search(line)
            if found is None:
                return text, literals
            literals.append(self.exact(int(found.group(1))))

    def answers(self, tags: list[bytes]) -> list[tuple[bytes, list[bytes]]]:
        """Every response until the tagged one of each of `tags`, in turn."""
        got = []
        for tag in tags:
            while True:
                got.append(self.response())
                if got[-1][0].startswith(tag + b" "):
                    break
        return got


def pipeline(count: int) -> tuple[bytes, list[bytes]]:
    """`count` UID FETCH BODY.PEEK[] as mbsync sends them, with a CAPABILITY and an
    invalid line (both answered by the loop, not the thread) among them."""
    commands, tags = [], []
    for uid in range(1, count + 1):
        commands.append(b"f%d UID FETCH %d (BODY.PEEK[])\r\n" % (uid, uid))
        tags.append(b"f%d" % uid)
        if uid % 25 == 0:
            commands.append(b"c%d CAPABILITY\r\n" % uid)
            tags.append(b"c%d" % uid)
            commands.append(b"x%d FROB\r\n" % uid)
            tags.append(b"x%d" % uid)
    return b"".join(commands), tags


def check(answers: list[tuple[bytes, list[bytes]]], tags: list[bytes], bodies: list[bytes]) -> None:
    tagged = [text.split(b" ")[0] for text, _ in answers if not text.startswith(b"* ")]
    assert tagged == tags
    fetched = [lits[0] for text, lits in answers if text.startswith(b"* ") and b"FETCH" in text]
    assert fetched == bodies
    for text, _ in answers:
        if text.startswith((b"f", b"c")):
            assert b" OK " in text, text
        elif text.startswith(b"x"):
            assert b" BAD " in text, text


def run_pipeline(
    server: RunningServer, context: ssl.SSLContext, count: int, *, compress: bool, arms: list[Any]
) -> tuple[list[tuple[bytes, list[bytes]]], list[bytes], int]:
    client = Pipeliner(server, context)
    try:
        if compress:
            client.login_and_compress()
        else:
            assert client.line().startswith(b"* OK")
            client.send(b"a LOGIN alice@example.test secret\r\n")
            assert client.until_tagged(b"a")[-1].startswith(b"a OK")
        client.send(b"s SELECT INBOX\r\n")
        assert client.until_tagged(b"s")[-1].startswith(b"s OK")
        data, tags = pipeline(count)
        arms.clear()
        client.send(data)  # in one piece: all of it is there when the server reads
        answers = client.answers(tags)
        armed = len(arms)
        client.send(b"l LOGOUT\r\n")
        client.until_tagged(b"l")
        return answers, tags, armed
    finally:
        client.close()


@pytest.fixture
def arms(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Each autologout timer armed (the server runs in this process)."""
    armed: list[Any] = []
    arm = IdleWatch.arm

    def counting(self: IdleWatch, owner: Any, deadline: float) -> None:
        armed.append(owner)
        arm(self, owner, deadline)

    monkeypatch.setattr(IdleWatch, "arm", counting)
    return armed


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The worker-thread trips of the sessions' commands."""
    trips: list[int] = []
    answer_run = _imap_server._answer_run

    def counting(*args: Any) -> object:
        trips.append(1)
        return answer_run(*args)

    monkeypatch.setattr(_imap_server, "_answer_run", counting)
    return trips


@pytest.mark.parametrize("compress", [False, True], ids=["tls", "tls+deflate"])
async def test_pipelined_commands_are_answered_in_order_without_a_timer_each(
    start_server, tls_files, client_tls, arms, runs, compress
):
    server = await imap_server(start_server, tls_files)
    count = 150
    bodies = fill_inbox(server, count)

    answers, tags, armed = await in_thread(
        lambda: run_pipeline(server, client_tls, count, compress=compress, arms=arms)
    )
    check(answers, tags, bodies)
    # Every command was there when the session asked: the timer is armed when the
    # session waits for more (the octets in a few reads), not once per command.
    assert armed <= 6, armed
    # The 150 FETCHes went to the worker thread in runs, cut by the CAPABILITY and
    # FROB lines (6 of them), by RUN_COMMANDS and by the answers' octets.
    assert len(runs) <= 20, len(runs)


async def test_a_run_stops_at_logout(start_server, tls_files, client_tls):
    # Nothing after LOGOUT is answered, even though it was pipelined into the same run.
    server = await imap_server(start_server, tls_files)
    fill_inbox(server, 3)

    def run() -> bytes:
        client = Pipeliner(server, client_tls)
        try:
            assert client.line().startswith(b"* OK")
            client.send(b"a LOGIN alice@example.test secret\r\n")
            assert client.until_tagged(b"a")[-1].startswith(b"a OK")
            client.send(
                b"s SELECT INBOX\r\nf UID FETCH 1:* (FLAGS)\r\nl LOGOUT\r\n"
                b"n NOOP\r\nm UID FETCH 1 (FLAGS)\r\n"
            )
            return client.rest() if client.inflate is not None else _rest(client)
        finally:
            client.close()

    text = await in_thread(run)
    assert b"f OK" in text
    assert text.rstrip().endswith(b"l OK LOGOUT completed"), text
    assert b"n OK" not in text
    assert b"m OK" not in text


def _rest(client: Pipeliner) -> bytes:
    data = bytearray(client.buf)
    while True:
        try:
            chunk = client.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


@pytest.mark.parametrize("compress", [False, True], ids=["tls", "tls+deflate"])
async def test_answers_corked_before_a_protocol_error_still_go_out(
    start_server, tls_files, client_tls, compress
):
    # The FETCHes are answered in a run and their answers wait to be written when the
    # core finds the bare LF behind them: they leave before the BYE, nothing is lost.
    server = await imap_server(start_server, tls_files)
    fill_inbox(server, 3)

    def run() -> list[bytes]:
        client = Pipeliner(server, client_tls)
        try:
            if compress:
                client.login_and_compress()
            else:
                assert client.line().startswith(b"* OK")
                client.send(b"a LOGIN alice@example.test secret\r\n")
                assert client.until_tagged(b"a")[-1].startswith(b"a OK")
            client.send(b"s SELECT INBOX\r\n")
            assert client.until_tagged(b"s")[-1].startswith(b"s OK")
            client.send(
                b"f1 UID FETCH 1 (FLAGS)\r\nf2 UID FETCH 2 (FLAGS)\r\nf3 UID FETCH 3 (FLAGS)\r\n"
                b"bad\nline\r\n"
            )
            rest = client.rest() if client.inflate is not None else _rest(client)
            return [line for line in rest.split(b"\r\n") if line]
        finally:
            client.close()

    lines = await in_thread(run)
    tagged = [line.split(b" ")[0] for line in lines if not line.startswith(b"* ")]
    assert tagged == [b"f1", b"f2", b"f3"]
    assert lines[-1].startswith(b"* BYE"), lines
