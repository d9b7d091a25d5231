"""Message and recipient rates (``[limits]`` client_message_rate, client_recipient_rate,
user_message_rate, user_recipient_rate): the `Check` that counts each MAIL and each
RCPT of a client outside mynetworks, and of its authenticated user, and refuses over a
limit with Postfix's ``450 4.7.1 Error: too much mail from 192.0.2.1`` (the rules are in
`sansmail.mail.anvil`).

The windows are shared by every server process (`sansmail.storage.anvil`). The time is
`SessionView.now`, the wall clock the adapter gives with each stage's inquiries (all
processes must count on the same clock); a session given none counts nothing. A count is a
few microseconds of file I/O on a table that is never locked for long, so the check does
it in `check` itself, on the session's thread, rather than in an `Errand` (a Trio
worker-thread trip per MAIL and RCPT measured 190 µs, against 8 µs for the check); the
table never waits long for its lock (see its docstring). When the table fails, the
command goes through and the failure is logged, at most once a minute: the limits are a
brake, not a reason to refuse mail.

The check is asked after the address checks, so a recipient already refused (unknown
user, relay denied) is not counted; Postfix counts every RCPT command, accepted or not.
Put it first among the checks, as Postfix asks anvil before its restrictions: a message
or recipient that a later check refuses still counts. The session logs the refusal
(``<queue id>: [192.0.2.1]:1234: mail refused by anvil: 450 4.7.1 Error: too much mail
from 192.0.2.1``), one line per refused command.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Final, Protocol

import attrs

from sansmail.config import Config
from sansmail.mail.anvil import (
    Event,
    RateLimits,
    Window,
    client_key,
    over,
    refusal,
    user_key,
)
from sansmail.mail.logtext import LogSink
from sansmail.sessions.smtpd._checks import SessionView, Stage, Verdict
from sansmail.storage.anvil import FILE_NAME, AnvilError, AnvilTable

__all__ = ["SOURCE", "RateCheck", "RateTable", "rate_check"]

#: The check's name in verdicts and the log.
SOURCE: Final = "anvil"
#: Seconds between two log lines about a failing table.
_FAILURE_LOG_INTERVAL: Final = 60.0
#: The findings key under which a session remembers that its client is exempt.
_EXEMPT: Final = "anvil.exempt"


class RateTable(Protocol):
    """Where the windows are kept: `sansmail.storage.anvil.AnvilTable` (every process),
    or `sansmail.mail.anvil.MemoryWindows` (this process only)."""

    def count(self, key: str, event: Event, now: float) -> Window: ...


def _no_log(_level: int, _text: str) -> None:
    pass


@attrs.define(kw_only=True)
class RateCheck:
    """The rates `Check`. Shared by every session of a listener; its only state is when
    it last logged a failing table."""

    limits: RateLimits
    table: RateTable
    log: LogSink = _no_log
    _failure_logged: float = attrs.field(default=float("-inf"), alias="_failure_logged")
    _unclocked_logged: bool = attrs.field(default=False, alias="_unclocked_logged")

    def check(self, stage: Stage, session: SessionView) -> Verdict | None:
        if stage is Stage.MAIL:
            event = Event.MESSAGE
        elif stage is Stage.RCPT:
            event = Event.RECIPIENT
        else:
            return None
        findings = session.findings
        exempt = findings.get(_EXEMPT)
        if exempt is None:
            exempt = findings[_EXEMPT] = self.limits.is_exempt(session.client_ip)
        if exempt:
            return None
        limits = self.limits
        now = session.now
        if now <= 0:
            # No clock came with the stage (an adapter that skips `inquiries`): every
            # event would fall in one endless window, so nothing is counted.
            if not self._unclocked_logged:
                self._unclocked_logged = True
                self.log(logging.WARNING, "anvil: rates not counted: the adapter gave no time")
            return None
        user = session.user
        try:
            client = (
                self.table.count(client_key(session.client_ip, limits.ipv6_prefix), event, now)
                if limits.client_limit(event)
                else None
            )
            users = (
                self.table.count(user_key(user), event, now)
                if user is not None and limits.user_limit(event)
                else None
            )
        except AnvilError as exc:
            if now - self._failure_logged >= _FAILURE_LOG_INTERVAL or now < self._failure_logged:
                self._failure_logged = now
                self.log(logging.WARNING, f"anvil: rates not counted: {exc}")
            return None
        passed = over(limits, event, client, users, user_name=user)
        if passed is None:
            return None
        return Verdict(source=SOURCE, reply=refusal(passed, session.client_ip))


def rate_check(
    config: Config,
    data_dir: pathlib.Path,
    *,
    log: LogSink = _no_log,
    table: RateTable | None = None,
) -> RateCheck | None:
    """The rates check `config` asks for, or None when every rate is 0. Its windows are
    in ``<data_dir>/anvil.table`` unless a `table` is given; nothing is opened until a
    client outside mynetworks sends MAIL. `log` is the mail log's sink."""
    limits = RateLimits.from_config(config)
    if not limits.enabled:
        return None
    return RateCheck(
        limits=limits,
        table=table if table is not None else AnvilTable(data_dir / FILE_NAME, unit=limits.unit),
        log=log,
    )
