"""Greylisting on the PostgreSQL backend, through a running server: the triplet is kept
in the table every node shares (a sender's retry may reach another node), not in a
greylist.sqlite of the node's own."""

from __future__ import annotations

import smtplib

import psycopg
import pytest
import trio
from trio_helpers import BOTH_BACKENDS, StartServer

pytestmark = BOTH_BACKENDS

MESSAGE = b"Subject: greylisted\r\n\r\nbody\r\n"


def _send(host: str, port: int) -> tuple[int, bytes]:
    with smtplib.SMTP(host, port, timeout=20) as client:
        client.ehlo("client.far.test")
        client.mail("sender@far.test")
        code, text = client.rcpt("alice@example.test")
        if code == 250:
            client.data(MESSAGE)
        return code, text


async def test_a_retry_after_the_delay_is_taken(start_server: StartServer) -> None:
    # mynetworks empty: 127.0.0.1 is a stranger, whom greylisting concerns.
    server = await start_server(mynetworks=[], antispam={"greylisting": True, "greylist_delay": 1})
    code, text = await trio.to_thread.run_sync(_send, server.host, server.port)
    assert code == 450, text
    await trio.sleep(1.1)
    code, text = await trio.to_thread.run_sync(_send, server.host, server.port)
    assert code == 250, text
    local_file = server.config.data_dir / "greylist.sqlite"
    if server.dsn is None:
        assert local_file.exists()
        return
    assert not local_file.exists()
    with psycopg.connect(server.dsn) as conn:
        rows = conn.execute("SELECT sender, recipient FROM greylist_triplets").fetchall()
    assert rows == [("sender@far.test", "alice@example.test")]


@pytest.mark.server_backends("postgresql")
async def test_the_triplet_is_shared_by_every_node(start_server: StartServer) -> None:
    # What another node would have recorded: a first attempt long enough ago.
    server = await start_server(mynetworks=[], antispam={"greylisting": True, "greylist_delay": 60})
    assert server.dsn is not None
    code, _text = await trio.to_thread.run_sync(_send, server.host, server.port)
    assert code == 450
    with psycopg.connect(server.dsn) as conn:
        conn.execute("UPDATE greylist_triplets SET first = first - 120, last = last - 120")
    code, text = await trio.to_thread.run_sync(_send, server.host, server.port)
    assert code == 250, text
