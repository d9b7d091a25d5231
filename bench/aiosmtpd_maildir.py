"""The peer sansmail is measured against: aiosmtpd delivering into a Maildir.

Usage: ``python3 bench/aiosmtpd_maildir.py --port P --maildir DIR [--hostname NAME]``

It reproduces the "aiosmtpd-maildir" server of shared/research/perf-baseline.md, which is
what a Python programmer would write when asked for "an SMTP server that stores mail":

* the recipient must be in ``--domain`` (550 otherwise), like a final destination would;
* ``handle_DATA`` prepends ``Return-Path`` and ``Received`` (RFC 5321 section 4.4),
  converts CRLF to LF (Maildir files are Unix text), writes ``tmp/<unique>``, fsyncs it,
  renames it into ``new/`` and fsyncs ``new/`` so that the message survives a crash
  before the 250 goes out (the same promise sansmail makes);
* the file I/O runs in ``asyncio.to_thread`` so that one fsync does not stall every other
  connection (the baseline measured this variant as the faster one under concurrency).

It runs as its own process so that the harness can read its CPU time from /proc without
counting the harness or the load generator. SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import itertools
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class MaildirHandler:
    """aiosmtpd handler: accept mail for one domain, deliver it durably into a Maildir."""

    def __init__(self, maildir: Path, hostname: str, domain: str) -> None:
        self._hostname = hostname
        self._domain = domain.lower()
        self._tmp = maildir / "tmp"
        self._new = maildir / "new"
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        # One descriptor for the lifetime of the server: fsync(2) on it makes the
        # rename durable, and reopening the directory per message would only add cost.
        self._new_fd = os.open(self._new, os.O_RDONLY | os.O_DIRECTORY)
        self._counter = itertools.count()
        self._pid = os.getpid()

    def close(self) -> None:
        os.close(self._new_fd)

    async def handle_RCPT(  # noqa: N802 (aiosmtpd finds hooks by this name)
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        _, _, domain = address.rpartition("@")
        if domain.lower() != self._domain:
            return "550 5.1.1 Recipient address rejected: not a local domain"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(  # noqa: N802 (aiosmtpd finds hooks by this name)
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content or b""
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        queue_id = f"{self._pid:x}{next(self._counter):08x}"
        for rcpt in envelope.rcpt_tos:
            trace = (
                f"Return-Path: <{envelope.mail_from}>\n"
                f"Received: from {session.host_name} ([{peer}])\n"
                f"\tby {self._hostname} with ESMTP id {queue_id}\n"
                f"\tfor <{rcpt}>; {email.utils.formatdate(localtime=True)}\n"
            ).encode()
            body = content.replace(b"\r\n", b"\n")
            await asyncio.to_thread(self._deliver, queue_id, trace, body)
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def _deliver(self, queue_id: str, trace: bytes, body: bytes) -> None:
        # Maildir: unique name in tmp/, fsync, rename into new/, fsync the directory.
        name = f"{queue_id}.{self._hostname}"
        tmp_path = self._tmp / name
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, trace)
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp_path, self._new / name)
        os.fsync(self._new_fd)


async def serve(host: str, port: int, handler: MaildirHandler, hostname: str) -> None:
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        # hostname is given so that aiosmtpd does not call socket.getfqdn() (a DNS query).
        return SMTP(handler, hostname=hostname, ident="aiosmtpd-maildir bench")

    server = await loop.create_server(factory, host, port, family=socket.AF_INET)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"aiosmtpd-maildir listening on {host}:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", type=Path, required=True)
    parser.add_argument("--hostname", default="bench.example.test")
    parser.add_argument("--domain", default="example.test")
    args: Any = parser.parse_args(argv)
    if not args.host.startswith("127.") and args.host != "::1":
        parser.error("only loopback addresses are allowed")
    handler = MaildirHandler(args.maildir, args.hostname, args.domain)
    try:
        asyncio.run(serve(args.host, args.port, handler, args.hostname))
    finally:
        handler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
