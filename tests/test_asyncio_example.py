"""The asyncio example drives the same sansmail.smtp core: smtplib delivers through it."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import pathlib
import smtplib
import socket
import threading

EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "asyncio_smtp_server.py"


def load_example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("asyncio_smtp_server", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_imports_nothing_from_the_trio_adapter() -> None:
    source = EXAMPLE.read_text()
    assert "import sansmail_trio" not in source
    assert "from sansmail_trio" not in source


def test_smtplib_delivers_through_the_asyncio_example(tmp_path: pathlib.Path) -> None:
    example = load_example()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ready = threading.Event()
    control: dict[str, object] = {}

    def run_loop() -> None:
        async def main() -> None:
            control["loop"] = asyncio.get_running_loop()
            stop = control["stop"] = asyncio.Event()
            started = asyncio.Event()
            task = asyncio.create_task(
                example.serve(
                    "127.0.0.1", port, tmp_path, frozenset({"example.test"}), started=started
                )
            )
            await started.wait()
            ready.set()
            await stop.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run(main())

    thread = threading.Thread(target=run_loop)
    thread.start()
    assert ready.wait(10)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("tester")
            refused = client.sendmail(
                "a@example.org",
                ["bob@example.test"],
                b"Subject: via asyncio\r\n\r\n.dotted line\r\nbody\r\n",
            )
            assert refused == {}
            code, _ = client.rcpt("x@elsewhere.example")
            assert code == 503  # no MAIL yet: bad sequence, from the core
    finally:
        loop = control["loop"]
        assert isinstance(loop, asyncio.AbstractEventLoop)
        loop.call_soon_threadsafe(control["stop"].set)  # type: ignore[union-attr]
        thread.join(10)
    [stored] = list((tmp_path / "mail" / "example.test" / "bob" / "new").iterdir())
    content = stored.read_bytes()
    assert content.startswith(b"Return-Path: <a@example.org>\nReceived: from tester")
    assert content.endswith(b"\n\n.dotted line\nbody\n")
