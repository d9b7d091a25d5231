"""The mail log: one line per connection event and per message disposition, on stderr.

Modelled on Postfix's mail log so the habits (grep a queue id, fail2ban on the client
address) carry over. One message, as logged (timestamps and pid shortened)::

    ...T18:40:00.123+00:00 sansmail/smtp[812]: connect from [127.0.0.1]:50210
    ... sansmail/smtp[812]: 5F1C2A9B3E: from=<a@ex.org>, to=<b@ex.test>,
        client=[127.0.0.1]:50210, relay=local, size=1234,
        status=sent (250 2.0.0 Ok: queued as 5F1C2A9B3E)
    ... sansmail/smtp[812]: disconnect from [127.0.0.1]:50210 ehlo=1 mail=1 rcpt=1
        data=1 quit=1 commands=5

(each entry is one line in the log; they are wrapped here.)
`status` is one of sent, deferred, bounced, rejected (CONTRACT.md).
"""

from __future__ import annotations

import logging
import os
import sys
import time

__all__ = ["configure_logging", "get_logger"]


class _Formatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._pid = os.getpid()
        self._second = -1
        self._prefix = ("", "")

    def _stamp(self, created: float) -> str:
        # The formatted second is cached: strftime and localtime twice per line were a
        # measurable part of the cost of a message.
        second = int(created)
        if second != self._second:
            local = time.localtime(second)
            zone = time.strftime("%z", local)
            zone = f"{zone[:3]}:{zone[3:]}" if zone else ""
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", local), zone
            self._second = second
        stamp, zone = self._prefix
        return f"{stamp}.{int((created - second) * 1000):03d}{zone}"

    def format(self, record: logging.LogRecord) -> str:
        # ISO 8601 with the local offset: sortable, and unambiguous across DST changes.
        name = record.name.replace(".", "/")
        line = f"{self._stamp(record.created)} {name}[{self._pid}]: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: int = logging.INFO) -> None:
    """Send sansmail's log to stderr, one line per record."""
    # The formatter never shows them; collecting them costs a getpid() and more per line.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Nor the caller's file and line, which logging finds by walking the stack for every
    # record (the logging HOWTO's "Optimization" section documents this switch).
    logging._srcfile = None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("sansmail")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def get_logger(service: str) -> logging.Logger:
    """The logger for one service, named like Postfix's daemons: ``sansmail/smtp``."""
    return logging.getLogger(f"sansmail.{service}")
