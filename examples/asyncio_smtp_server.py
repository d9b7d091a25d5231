"""A small SMTP receiver on asyncio, driving the same `sansmail.smtp` core as sansmail-trio.

It proves the layering: nothing here comes from `sansmail_trio`. It accepts mail for any
recipient at the domains given on the command line and stores it with sansmail's Maildir
store under DATA_DIR/mail/<domain>/<local>/, durably, before it answers 250.

    python3 examples/asyncio_smtp_server.py --port 8025 --data-dir /tmp/mail example.test

It is a demonstration: no TLS, no AUTH, no connection caps, no user database.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import pathlib
import secrets
import sys

from sansmail import NEED_DATA, SERVER, RemoteProtocolError, smtp
from sansmail.mail import trace
from sansmail.mail.address import MailboxId
from sansmail.storage.maildir import MaildirStore

COMMAND_TIMEOUT = 300.0  # RFC 5321 §4.5.3.2.7


class Session:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        store: MaildirStore,
        hostname: str,
        domains: frozenset[str],
    ) -> None:
        self.reader, self.writer = reader, writer
        self.store, self.hostname, self.domains = store, hostname, domains
        self.conn = smtp.Connection(SERVER, config=smtp.Config())
        self.peer = writer.get_extra_info("peername")[0]

    async def next_event(self) -> object:
        while (event := self.conn.next_event()) is NEED_DATA:
            await self.writer.drain()
            data = await asyncio.wait_for(self.reader.read(256 * 1024), COMMAND_TIMEOUT)
            self.conn.receive_data(data)
        return event

    def reply(self, code: int, text: str | tuple[str, ...], enhanced: str | None = None) -> None:
        self.writer.write(self.conn.send(smtp.Reply(code=code, lines=text, enhanced=enhanced)))

    async def run(self) -> None:
        try:
            self.reply(220, f"{self.hostname} ESMTP sansmail asyncio example")
            await self.loop()
        except RemoteProtocolError as exc:
            if isinstance(exc.reply_hint, smtp.Reply):
                hint = exc.reply_hint
                self.writer.write(f"{hint.code} {hint.text}\r\n".encode())
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self.writer.close()

    async def loop(self) -> None:
        helo, sender, recipients, delivery = "", None, [], None
        while True:
            event = await self.next_event()
            match event:
                case smtp.Hello(domain=domain, extended=extended):
                    helo, sender, recipients = domain, None, []
                    if extended:
                        self.reply(
                            250,
                            (
                                self.hostname,
                                "PIPELINING",
                                "8BITMIME",
                                "ENHANCEDSTATUSCODES",
                                "SMTPUTF8",
                                "CHUNKING",
                            ),
                        )
                    else:
                        self.reply(250, self.hostname)
                case smtp.Mail(reverse_path=path):
                    sender, recipients = path, []
                    self.reply(250, "Ok", "2.1.0")
                case smtp.Rcpt(forward_path=rcpt):
                    if rcpt.domain in self.domains:
                        recipients.append(rcpt)
                        self.reply(250, "Ok", "2.1.5")
                    else:
                        self.reply(554, "Relay access denied", "5.7.1")
                case smtp.Data() | smtp.Bdat():
                    if isinstance(event, smtp.Data):
                        self.reply(354, "End data with <CR><LF>.<CR><LF>")
                    if delivery is None:
                        qid = secrets.token_hex(5).upper()
                        prefix = trace.return_path(sender) + trace.received(
                            helo=helo,
                            client_ip=self.peer,
                            client_name=None,
                            by=self.hostname,
                            protocol="ESMTP",
                            queue_id=qid,
                            recipient=recipients[0] if len(recipients) == 1 else None,
                            when=datetime.datetime.now().astimezone(),
                        )
                        boxes = list(
                            dict.fromkeys(
                                MailboxId(domain=r.domain, local=r.local_part.lower())
                                for r in recipients
                            )
                        )
                        delivery = self.store.begin(boxes, prefix=prefix)
                case smtp.MessageData(data=data):
                    assert delivery is not None
                    delivery.write(data)
                case smtp.EndOfChunk():
                    self.reply(250, "Chunk received", "2.0.0")
                case smtp.EndOfMessage():
                    assert delivery is not None
                    # The store's commit is blocking (fsyncs): keep it off the loop.
                    await asyncio.to_thread(delivery.commit)
                    delivery, sender, recipients = None, None, []
                    self.reply(250, "Ok: queued", "2.0.0")
                case smtp.InvalidMessage(reply_hint=hint):
                    if delivery is not None:
                        await asyncio.to_thread(delivery.abort)
                    delivery, sender, recipients = None, None, []
                    self.writer.write(self.conn.send(hint))
                case smtp.InvalidCommand(reply_hint=hint):
                    self.writer.write(self.conn.send(hint))
                case smtp.Reset():
                    sender, recipients = None, []
                    self.reply(250, "Ok", "2.0.0")
                case smtp.Noop() | smtp.Verify() | smtp.Help():
                    code = 252 if isinstance(event, smtp.Verify) else 250
                    self.reply(code, "Ok", "2.0.0" if code == 250 else "2.5.2")
                case smtp.Quit():
                    self.reply(221, "Bye", "2.0.0")
                    await self.writer.drain()
                    return
                case smtp.StartTLS():
                    self.reply(454, "TLS not available", "4.7.0")
                case smtp.ConnectionClosed():
                    return


async def serve(
    host: str,
    port: int,
    data_dir: pathlib.Path,
    domains: frozenset[str],
    *,
    hostname: str = "localhost",
    started: asyncio.Event | None = None,
) -> None:
    store = MaildirStore(data_dir, hostname=hostname)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await Session(reader, writer, store, hostname, domains).run()

    server = await asyncio.start_server(handle, host, port)
    async with server:
        if started is not None:
            started.set()
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("domains", nargs="+", help="domains to accept mail for")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--data-dir", type=pathlib.Path, default=pathlib.Path("example-data"))
    args = parser.parse_args(argv)
    try:
        asyncio.run(
            serve(
                args.host,
                args.port,
                args.data_dir.resolve(),
                frozenset(d.lower() for d in args.domains),
            )
        )
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
