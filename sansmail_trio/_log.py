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
from collections.abc import Callable

__all__ = ["configure_logging", "get_logger", "line_logger"]


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
        line = self.line(record.name, record.created, record.getMessage())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    def line(self, logger: str, created: float, message: str) -> str:
        # ISO 8601 with the local offset: sortable, and unambiguous across DST changes.
        name = logger.replace(".", "/")
        return f"{self._stamp(created)} {name}[{self._pid}]: {message}"


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


def line_logger(logger: logging.Logger) -> Callable[[int, str], None]:
    """``logger.log(level, message)`` for the sessions' log lines (a message without
    arguments). While the log is the one `configure_logging` made (its handler alone,
    no filters), the line is written the way that handler would write it, without a
    LogRecord and the handler chain: three lines per message went through them, about a
    twentieth of a small message's CPU in the profile."""
    root = logging.getLogger("sansmail")
    name = logger.name

    def log(level: int, message: str) -> None:
        handlers = root.handlers
        handler = handlers[0] if len(handlers) == 1 else None
        formatter = handler.formatter if handler is not None else None
        if (
            not isinstance(handler, logging.StreamHandler)
            or not isinstance(formatter, _Formatter)
            or not logger.isEnabledFor(level)
            or level < handler.level
            or not logger.propagate
            or root.propagate  # someone listens above (pytest's caplog)
            or logger.handlers
            or logger.filters
            or root.filters
            or handler.filters
        ):
            logger.log(level, "%s", message)
            return
        text = formatter.line(name, time.time(), message) + "\n"
        with handler.lock:  # type: ignore[union-attr]  # made by Handler.__init__
            try:
                handler.stream.write(text)
                handler.flush()
            except (OSError, ValueError):  # what Handler.emit does: report, never raise
                handler.handleError(logging.makeLogRecord({"msg": message}))

    return log


def get_logger(service: str) -> logging.Logger:
    """The logger for one service, named like Postfix's daemons: ``sansmail/smtp``."""
    return logging.getLogger(f"sansmail.{service}")
