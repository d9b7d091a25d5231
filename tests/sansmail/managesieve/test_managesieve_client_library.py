"""The core against a client nobody here wrote: the PyPI `managesieve` library, over a
loopback socket, with a toy script store answering in a thread
(`managesieve_helpers.serve_one`; no adapter: its loop only moves bytes). Skipped
when the library is not installed."""

from __future__ import annotations

import socket
import threading

import pytest
from managesieve_helpers import serve_one

from sansmail.managesieve import Authenticate, Event, InvalidCommand, PutScript

managesieve = pytest.importorskip("managesieve")

SCRIPT = 'require ["fileinto"];\r\nif header :contains "Subject" "x" {\r\n  fileinto "X";\r\n}\r\n'


def test_the_managesieve_library_manages_scripts() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    events: list[Event] = []
    with listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]
        thread = threading.Thread(target=lambda: serve_one(listener.accept()[0], events))
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
