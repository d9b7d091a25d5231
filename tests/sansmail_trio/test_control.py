"""The control socket in one process (`_control.py`): requests and their answers, the
limits, a stale socket file, a data_dir too deep for a socket's path, and the command
side's reading of the directory."""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import socket
from typing import Any

import pytest
import trio
import trio.testing

from sansmail_trio._control import (
    CONTROL_TIMEOUT,
    REQUEST_MAX,
    ControlError,
    ProcessInfo,
    ask,
    control_sockets,
    serve_control,
)
from sansmail_trio._session import LiveSession, SessionTime


class _Seen:
    def __init__(self, user: str | None) -> None:
        self.client = "[192.0.2.1]:4000"
        self.user = user


def _live(session_id: str, user: str | None, lines: list[str]) -> LiveSession:
    return LiveSession(
        session_id,
        service="imap",
        client=("192.0.2.1", 4000),
        seen=_Seen(user),
        time=SessionTime(),
        log=lambda _level, text: lines.append(text),
    )


def _info(sessions: set[LiveSession]) -> ProcessInfo:
    return ProcessInfo(
        role="server",
        number=1,
        started=1_800_000_000.0,
        listeners={"imap": [("127.0.0.1", 2143)], "imaps": [("::1", 2993)]},
        sessions=sessions,
        queue_size=lambda: 3,
    )


async def _ask(path: pathlib.Path, request: Any) -> dict[str, Any] | None:
    return await trio.to_thread.run_sync(ask, path, request)


async def _raw(path: pathlib.Path, data: bytes) -> bytes:
    def exchange() -> bytes:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(CONTROL_TIMEOUT * 2)
            sock.connect(str(path))
            sock.sendall(data)
            return sock.makefile("rb").readline()

    return await trio.to_thread.run_sync(exchange)


async def test_status_who_and_kick(tmp_path: pathlib.Path) -> None:
    lines: list[str] = []
    sessions = {
        _live("aaaaaaaaaaaa", "alice@example.test", lines),
        _live("bbbbbbbbbbbb", "bob@example.test", lines),
        _live("cccccccccccc", None, lines),
    }
    async with trio.open_nursery() as nursery:
        path = await nursery.start(serve_control, tmp_path, "control-1.sock", _info(sessions))
        assert path == tmp_path / "run" / "control-1.sock"
        assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
        status = await _ask(path, {"command": "status"})
        assert status is not None
        assert status["pid"] == os.getpid()
        assert status["master"] is None  # not started by a master process
        assert (status["role"], status["process"], status["sessions"]) == ("server", 1, 3)
        assert status["listeners"] == {"imap": ["127.0.0.1:2143"], "imaps": ["[::1]:2993"]}
        assert status["queue"] == 3
        who = await _ask(path, {"command": "who"})
        assert who is not None
        assert sorted((r["session"], r["user"]) for r in who["sessions"]) == [
            ("aaaaaaaaaaaa", "alice@example.test"),
            ("bbbbbbbbbbbb", "bob@example.test"),
            ("cccccccccccc", None),
        ]
        kicked = await _ask(path, {"command": "kick", "user": "ALICE@example.test"})
        assert kicked is not None
        assert [row["session"] for row in kicked["kicked"]] == ["aaaaaaaaaaaa"]
        assert lines == ["[192.0.2.1]:4000: user=<alice@example.test>: kicked by the administrator"]
        stopping = {live.id for live in sessions if live._time.stopping}
        assert stopping == {"aaaaaaaaaaaa"}
        nursery.cancel_scope.cancel()
    assert not path.exists()  # removed at the end


async def test_kick_matches_the_user_key_as_it_is_lower_cased_only(
    tmp_path: pathlib.Path,
) -> None:
    # Keys lower-case the local part (Address.key) and no more: straße and strasse are
    # two users, whom casefold() would take for one.
    lines: list[str] = []
    sessions = {_live("aaaaaaaaaaaa", "straße@example.test", lines)}
    async with trio.open_nursery() as nursery:
        path = await nursery.start(serve_control, tmp_path, "control-1.sock", _info(sessions))
        assert await _ask(path, {"command": "kick", "user": "strasse@example.test"}) == {
            "kicked": []
        }
        kicked = await _ask(path, {"command": "kick", "user": "STRAßE@example.test"})
        assert kicked is not None
        assert [row["session"] for row in kicked["kicked"]] == ["aaaaaaaaaaaa"]
        nursery.cancel_scope.cancel()


async def test_an_internal_error_is_answered_not_taken_for_a_process_gone(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A close without a word is how `ask` knows a process on its way out (None), which
    # the commands skip: a bug would hide a live process from `status`.
    def broken() -> int:
        raise ValueError("a bug")

    info = _info(set())
    info.queue_size = broken
    caplog.set_level(logging.ERROR, logger="sansmail.master")
    async with trio.open_nursery() as nursery:
        path = await nursery.start(serve_control, tmp_path, "control-1.sock", info)
        with pytest.raises(ControlError, match="internal error"):
            await _ask(path, {"command": "status"})
        assert await _ask(path, {"command": "who"}) == {"sessions": []}
        nursery.cancel_scope.cancel()
    assert "control socket: internal error" in caplog.text


@pytest.mark.parametrize(
    ("request_line", "error"),
    [
        (b"[1, 2]\n", "a request is one JSON object"),
        (b"not json\n", "a request is one JSON object"),
        # Deeper than json's recursion limit: an answer, not an internal error.
        pytest.param(b"[" * 2000 + b"\n", "a request is one JSON object", id="nested"),
        (b'{"command": "reboot"}\n', "unknown command 'reboot'"),
        (b'{"command": "kick"}\n', "kick needs a user"),
        (b"x" * (REQUEST_MAX + 1) + b"\n", f"at most {REQUEST_MAX} octets"),
    ],
)
async def test_a_bad_request_gets_an_error(
    tmp_path: pathlib.Path, request_line: bytes, error: str
) -> None:
    async with trio.open_nursery() as nursery:
        path = await nursery.start(serve_control, tmp_path, "control-1.sock", _info(set()))
        answer = json.loads(await _raw(path, request_line))
        assert list(answer) == ["error"]
        assert error in answer["error"]
        with pytest.raises(ControlError, match="unknown command"):
            await _ask(path, {"command": "reboot"})
        nursery.cancel_scope.cancel()


async def test_a_silent_client_is_dropped_after_the_timeout(
    tmp_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        path = await nursery.start(serve_control, tmp_path, "control-1.sock", _info(set()))
        client = trio.socket.socket(socket.AF_UNIX)
        await client.connect(str(path))
        started = trio.current_time()
        assert await client.recv(100) == b""  # closed without a word
        assert trio.current_time() - started >= CONTROL_TIMEOUT
        client.close()
        nursery.cancel_scope.cancel()


async def test_running_out_of_file_descriptors_does_not_end_the_process(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # trio's accept() passes EMFILE on: out of serve_control it would take the server
    # process's nursery, and every session in it, down.
    failures = [OSError(errno.EMFILE, "Too many open files")]
    _fail_accept(monkeypatch, failures)
    async with trio.open_nursery() as nursery:
        path = await nursery.start(serve_control, tmp_path, "control-1.sock", _info(set()))
        assert await _ask(path, {"command": "who"}) == {"sessions": []}
        assert not failures
        nursery.cancel_scope.cancel()


async def test_another_accept_error_ends_the_control_socket_alone(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_accept(monkeypatch, [OSError(errno.EINVAL, "Invalid argument")])
    async with trio.open_nursery() as nursery:
        path = await nursery.start(serve_control, tmp_path, "control-1.sock", _info(set()))
    assert not path.exists()


def _fail_accept(monkeypatch: pytest.MonkeyPatch, failures: list[OSError]) -> None:
    """SocketListener.accept raises `failures` first, one per call."""
    accept = trio.SocketListener.accept

    async def failing(self: trio.SocketListener) -> trio.SocketStream:
        if failures:
            raise failures.pop()
        return await accept(self)

    monkeypatch.setattr(trio.SocketListener, "accept", failing)


async def test_a_stale_socket_file_is_replaced(tmp_path: pathlib.Path) -> None:
    (tmp_path / "run").mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "run" / "control-1.sock"))
    stale.close()
    assert await _ask(tmp_path / "run" / "control-1.sock", {"command": "who"}) is None
    async with trio.open_nursery() as nursery:
        path = await nursery.start(serve_control, tmp_path, "control-1.sock", _info(set()))
        assert await _ask(path, {"command": "who"}) == {"sessions": []}
        nursery.cancel_scope.cancel()


async def test_a_deep_data_dir_still_gets_its_socket(tmp_path: pathlib.Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(str(deep / "run" / "control-1.sock")) > 108
    async with trio.open_nursery() as nursery:
        path = await nursery.start(serve_control, deep, "control-1.sock", _info(set()))
        assert path == deep / "run" / "control-1.sock"
        assert control_sockets(deep) == [path]
        assert await _ask(path, {"command": "who"}) == {"sessions": []}
        nursery.cancel_scope.cancel()
    assert not path.exists()


async def test_a_run_directory_of_another_user_is_logged_not_fatal(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the directory away")
    (tmp_path / "run").mkdir(mode=0o700)
    os.chown(tmp_path / "run", 65534, 65534)
    caplog.set_level(logging.WARNING, logger="sansmail.master")
    async with trio.open_nursery() as nursery:
        assert await nursery.start(serve_control, tmp_path, "control-1.sock", _info(set())) is None
    (record,) = caplog.records
    assert "who, kick and status will not reach this process" in record.getMessage()


async def test_a_run_link_to_a_directory_of_another_user_is_refused(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The owner checked is the directory's the sockets go in, not the link's.
    if os.geteuid() != 0:
        pytest.skip("needs root to give the directory away")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chown(elsewhere, 65534, 65534)
    elsewhere.chmod(0o777)
    (tmp_path / "run").symlink_to(elsewhere)
    caplog.set_level(logging.WARNING, logger="sansmail.master")
    async with trio.open_nursery() as nursery:
        assert await nursery.start(serve_control, tmp_path, "control-1.sock", _info(set())) is None
    assert list(elsewhere.iterdir()) == []
    assert elsewhere.stat().st_mode & 0o777 == 0o777


def test_control_sockets_lists_servers_by_number_then_the_runner(tmp_path: pathlib.Path) -> None:
    assert control_sockets(tmp_path) == []  # no run directory: never started
    run = tmp_path / "run"
    run.mkdir()
    for name in ("control-queue.sock", "control-10.sock", "control-2.sock", "other", "metrics"):
        (run / name).touch()
    assert [p.name for p in control_sockets(tmp_path)] == [
        "control-2.sock",
        "control-10.sock",
        "control-queue.sock",
    ]


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)
