"""The core against a client nobody here wrote: the PyPI `managesieve` library, over a
loopback socket, with a toy script store answering in a thread (no adapter: the loop
below only moves bytes). Skipped when the library is not installed."""

from __future__ import annotations

import socket
import threading

import pytest

from sansmail import NEED_DATA, PAUSED, SERVER
from sansmail.managesieve import (
    Authenticate,
    Capabilities,
    Connection,
    ConnectionClosed,
    DeleteScript,
    Event,
    GetScript,
    HaveSpace,
    InvalidCommand,
    ListScripts,
    Logout,
    No,
    Ok,
    PutScript,
    Script,
    ScriptList,
    SetActive,
)

managesieve = pytest.importorskip("managesieve")

CAPABILITIES = Capabilities(implementation="sansmail", sasl=("PLAIN",), sieve=("fileinto",))
SCRIPT = 'require ["fileinto"];\r\nif header :contains "Subject" "x" {\r\n  fileinto "X";\r\n}\r\n'


def _answer(event: Event, scripts: dict[str, bytes], active: list[str]) -> Event:
    if isinstance(event, InvalidCommand):
        return event.reply_hint
    if isinstance(event, Authenticate):
        ok = event.mechanism == "PLAIN" and event.initial_response == b"\0user\0pass"
        return Ok() if ok else No(text="authentication failed")
    if isinstance(event, PutScript):
        scripts[event.name] = event.content
    elif isinstance(event, HaveSpace):
        return Ok() if event.size < 1000 else No(code="QUOTA/MAXSIZE", text="too big")
    elif isinstance(event, SetActive):
        active[:] = [event.name] if event.name else []
    elif isinstance(event, ListScripts):
        return ScriptList(names=tuple(scripts), active=active[0] if active else None)
    elif isinstance(event, GetScript):
        if event.name not in scripts:
            return No(code="NONEXISTENT", text="no such script")
        return Script(content=scripts[event.name])
    elif isinstance(event, DeleteScript):
        if event.name in active:
            return No(code="ACTIVE", text="the active script")
        scripts.pop(event.name, None)
    return Ok()


def _serve(sock: socket.socket, events: list[Event]) -> None:
    conn = Connection(SERVER)
    scripts: dict[str, bytes] = {}
    active: list[str] = []
    with sock:
        sock.sendall(conn.send(CAPABILITIES))
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                conn.receive_data(sock.recv(65536))
                continue
            if event is PAUSED or isinstance(event, ConnectionClosed):
                return
            assert isinstance(event, Event)
            events.append(event)
            sock.sendall(conn.send(_answer(event, scripts, active)))  # type: ignore[arg-type]
            if isinstance(event, Logout):
                return


def test_the_managesieve_library_manages_scripts() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    events: list[Event] = []
    with listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]
        thread = threading.Thread(target=lambda: _serve(listener.accept()[0], events))
        thread.start()
        client = managesieve.MANAGESIEVE("127.0.0.1", port)
        assert client.loginmechs == ["PLAIN"]
        assert client.authenticate("PLAIN", "user", "pass") == "OK"
        assert client.havespace("my script", 10) == "OK"
        assert client.havespace("my script", 10**6) == "NO"
        assert client.putscript("my script", SCRIPT) == "OK"
        assert client.setactive("my script") == "OK"
        assert client.listscripts() == ("OK", [("my script", True)])
        assert client.getscript("my script") == ("OK", SCRIPT)
        assert client.getscript("none")[0] == "NO"
        assert client.deletescript("my script") == "NO"
        assert client.logout() == "OK"
        thread.join(10)
    # The library sends its AUTHENTICATE initial response as a {n+} literal.
    assert events[0] == Authenticate(mechanism="PLAIN", initial_response=b"\0user\0pass")
    assert PutScript(name="my script", content=SCRIPT.encode()) in events
    assert not any(isinstance(event, InvalidCommand) for event in events)
