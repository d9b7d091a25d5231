"""The mail log: one line per connection event and per message disposition, on stderr.

Modelled on Postfix's mail log so the habits (grep a queue id, fail2ban on the client
address) carry over. One message, as logged (timestamps and pid shortened)::

    ...T18:40:00.123+00:00 sansmail/smtp[812]<Hx0Qe3mK1vT9>: connect from [127.0.0.1]:50210
    ... sansmail/smtp[812]<Hx0Qe3mK1vT9>: 5F1C2A9B3E: from=<a@ex.org>, to=<b@ex.test>,
        client=[127.0.0.1]:50210, relay=local, size=1234,
        status=sent (250 2.0.0 Ok: queued as 5F1C2A9B3E)
    ... sansmail/smtp[812]<Hx0Qe3mK1vT9>: disconnect from [127.0.0.1]:50210 ehlo=1
        mail=1 rcpt=1 data=1 quit=1 commands=5

(each entry is one line in the log; they are wrapped here.)
`status` is one of sent, deferred, bounced, rejected (CONTRACT.md).

Every line of one connection carries its session id, a short random name given at
accept (`_session.new_session_id`), between the pid and the colon, where Dovecot puts
its own (``imap(alice)<812><Hx0Qe3mK1vT9>:``); `sansmail-trio who --json` shows it, so
one session's lines are one grep away. After the colon the line keeps Postfix's shape:
a line about one message still starts with its queue id, and the end of a line is left
alone, so fail2ban's ``... rip=<HOST>$`` keeps matching. Lines of no connection (the
queue runner's, the master's) have none.

With ``log_format = "json"`` each line is one JSON object instead (JSON Lines), for log
shippers; the keys, always in this order:

``time``
    RFC 3339, UTC, microseconds: ``"2026-12-07T17:05:03.568123Z"``.
``host``
    the machine's host name (as syslog would put it), not the configured ``hostname``.
``program``
    the text line's tag: ``"sansmail/smtp"``, ``"sansmail/queue"``, ``"sansmail/master"``.
``pid``
    an integer.
``level``
    ``"debug"``, ``"info"``, ``"warning"``, ``"error"`` or ``"critical"``.
``session``
    only on a line of one connection: its session id (the text format's ``<...>``).
``queue_id``
    only on a line about one message: the queue id the text line starts with.
``message``
    the text the text format shows after ``program[pid]: ``, queue id included.
``exception``
    only when the line reports a failure with its traceback (the text format writes it
    on the following lines).

Non-ASCII text is kept as UTF-8; a line is never broken in two (newlines, and the
separators some readers split on, U+0085, U+2028 and U+2029, are escaped).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from json.encoder import (  # the C encoders json.dumps uses
    encode_basestring,
    encode_basestring_ascii,
)
from typing import Final

from sansmail.config import LogFormat

__all__ = ["configure_logging", "get_logger", "line_logger"]


class _LineFormatter(logging.Formatter):
    """A formatter that can also write a line from its parts alone (`line_logger`)."""

    def line(
        self, logger: str, created: float, level: int, message: str, session: str | None = None
    ) -> str:
        raise NotImplementedError


def _session_of(record: logging.LogRecord) -> str | None:
    """The session id a record carries (``extra={"session": ...}``), if any."""
    session = record.__dict__.get("session")
    return None if session is None else str(session)


class _Formatter(_LineFormatter):
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
        line = self.line(
            record.name, record.created, record.levelno, record.getMessage(), _session_of(record)
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    def line(
        self, logger: str, created: float, level: int, message: str, session: str | None = None
    ) -> str:
        # ISO 8601 with the local offset: sortable, and unambiguous across DST changes.
        name = logger.replace(".", "/")
        if session is None:
            return f"{self._stamp(created)} {name}[{self._pid}]: {message}"
        return f"{self._stamp(created)} {name}[{self._pid}]<{session}>: {message}"


# The shape `QueueStore.new_id` gives ids (upper-case hex: microseconds, pid, counter; 22
# digits today), at the start of a line as "ID: ". Nine digits at least, the shortest
# id it can make, so that a prefix such as "TLS: " or "SIGHUP: " is never taken for one.
_QUEUE_ID: Final = re.compile(r"([0-9A-F]{9,64}): ")

_LEVELS: Final = {
    logging.DEBUG: '"debug"',
    logging.INFO: '"info"',
    logging.WARNING: '"warning"',
    logging.ERROR: '"error"',
    logging.CRITICAL: '"critical"',
}

# json's string encoders (the C ones json.dumps calls, without its argument checks)
# escape the C0 controls, \n and \r among them, but not these, which str.splitlines and
# some log readers take for line ends.
_SEPARATORS: Final = ("\x85", "\u2028", "\u2029")


def _json_string(text: str) -> str:
    """`text` as a JSON string: UTF-8 kept, never a line end inside."""
    if text.isascii():
        return encode_basestring_ascii(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (bytes decoded with surrogateescape) is no UTF-8: escaped as
        # \udcXX, which json.loads reads back as the same string.
        return encode_basestring_ascii(text)
    quoted = encode_basestring(text)
    # str.translate would do it in one call, but per character in Python: ten times the
    # cost of the whole line in a profile of non-ASCII lines.
    for separator in _SEPARATORS:
        if separator in quoted:
            quoted = quoted.replace(separator, f"\\u{ord(separator):04x}")
    return quoted


class _JsonFormatter(_LineFormatter):
    def __init__(self) -> None:
        super().__init__()
        self._pid = os.getpid()
        self._host = _json_string(socket.gethostname())
        self._second = -1
        self._stamp_prefix = ""
        self._programs: dict[str, str] = {}

    def _stamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._stamp_prefix}.{int((created - second) * 1_000_000):06d}Z"

    def _program(self, logger: str) -> str:
        program = self._programs.get(logger)
        if program is None:
            program = _json_string(logger.replace(".", "/"))
            if len(self._programs) < 1000:  # logger names are few; the cache stays small
                self._programs[logger] = program
        return program

    def format(self, record: logging.LogRecord) -> str:
        line = self.line(
            record.name, record.created, record.levelno, record.getMessage(), _session_of(record)
        )
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line = f'{line[:-1]},"exception":{_json_string(trace)}}}'
        return line

    def line(
        self, logger: str, created: float, level: int, message: str, session: str | None = None
    ) -> str:
        name = _LEVELS.get(level) or _json_string(logging.getLevelName(level).lower())
        found = _QUEUE_ID.match(message)
        queue = f'"queue_id":"{found[1]}",' if found else ""
        if session is not None:
            # Ours (`_session.new_session_id`) need no escaping: a call saved per line.
            shown = f'"{session}"' if session.isalnum() else _json_string(session)
            queue = f'"session":{shown},{queue}'
        return (
            f'{{"time":"{self._stamp(created)}","host":{self._host},'
            f'"program":{self._program(logger)},"pid":{self._pid},'
            f'"level":{name},{queue}"message":{_json_string(message)}}}'
        )


def configure_logging(level: int = logging.INFO, log_format: LogFormat = "text") -> None:
    """Send sansmail's log to stderr, one line per record, as text or as JSON."""
    # The formatter never shows them; collecting them costs a getpid() and more per line.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Nor the caller's file and line, which logging finds by walking the stack for every
    # record (the logging HOWTO's "Optimization" section documents this switch).
    logging._srcfile = None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _Formatter())
    root = logging.getLogger("sansmail")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Warnings from libraries (their loggers, or the warnings module) would otherwise
    # reach stderr as bare text, lines a JSON reader cannot parse.
    top = logging.getLogger()
    top.handlers[:] = [h for h in top.handlers if not isinstance(h, _StrayHandler)]
    if log_format == "json":
        stray = _StrayHandler(sys.stderr)
        stray.setLevel(logging.WARNING)
        stray.setFormatter(_JsonFormatter())
        top.addHandler(stray)
    logging.captureWarnings(log_format == "json")


class _StrayHandler(logging.StreamHandler):  # type: ignore[type-arg]  # of TextIO
    """The JSON log's handler for records from outside sansmail."""


def line_logger(logger: logging.Logger, session: str | None = None) -> Callable[[int, str], None]:
    """``logger.log(level, message)`` for the sessions' log lines (a message without
    arguments), each tagged with `session`, the connection's session id (None: no
    connection's). While the log is the one `configure_logging` made (its handler alone,
    no filters), the line is written the way that handler would write it, without a
    LogRecord and the handler chain: three lines per message went through them, about a
    twentieth of a small message's CPU in the profile. Each connection makes its own;
    the closure is all that costs."""
    root = _ROOT
    name = logger.name
    extra = None if session is None else {"session": session}

    def log(level: int, message: str) -> None:
        handlers = root.handlers
        handler = handlers[0] if len(handlers) == 1 else None
        formatter = handler.formatter if handler is not None else None
        if (
            not isinstance(handler, logging.StreamHandler)
            or not isinstance(formatter, _LineFormatter)
            or not logger.isEnabledFor(level)
            or level < handler.level
            or not logger.propagate
            or root.propagate  # someone listens above (pytest's caplog)
            or logger.handlers
            or logger.filters
            or root.filters
            or handler.filters
        ):
            logger.log(level, "%s", message, extra=extra)
            return
        text = formatter.line(name, time.time(), level, message, session) + "\n"
        with handler.lock:  # type: ignore[union-attr]  # made by Handler.__init__
            try:
                handler.stream.write(text)
                handler.flush()
            except (OSError, ValueError):  # what Handler.emit does: report, never raise
                handler.handleError(logging.makeLogRecord({"msg": message}))

    return log


#: Where `configure_logging` puts the handler (logging never replaces a logger it made).
_ROOT: Final = logging.getLogger("sansmail")


def get_logger(service: str) -> logging.Logger:
    """The logger for one service, named like Postfix's daemons: ``sansmail/smtp``."""
    return logging.getLogger(f"sansmail.{service}")
