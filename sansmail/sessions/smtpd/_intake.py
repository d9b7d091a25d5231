"""The checks an SMTP listener runs, in Postfix's order: the rates of ``[limits]``
(anvil), the sender checks of
``[antispam]`` (smtpd's restrictions and policy services), then greylisting (a policy
service at RCPT), then the milters of ``[milter]`` (smtpd_milters, which see the message
last, with every earlier verdict already applied)."""

from __future__ import annotations

from sansmail.config import Config
from sansmail.mail.dmarc import organizational_domain
from sansmail.mail.logtext import LogSink
from sansmail.sessions.smtpd._checks import Check
from sansmail.sessions.smtpd._greylist import greylist_check
from sansmail.sessions.smtpd._milters import milter_checks
from sansmail.sessions.smtpd._rates import rate_check
from sansmail.sessions.smtpd._sender import sender_checks
from sansmail.storage.greylist import GreylistStore

__all__ = ["intake_checks"]


def intake_checks(
    config: Config, *, log: LogSink, greylist_store: GreylistStore | None = None
) -> list[Check]:
    """Blocking (it loads the Public Suffix List): the checks `config` asks for, in the
    order they are asked; `log` is the mail log's sink. `greylist_store` keeps the
    greylist's records (None: ``<data_dir>/greylist.sqlite``; the PostgreSQL backend
    gives its shared table, `PgGreylistStore`)."""
    checks: list[Check] = []
    rates = rate_check(config, config.data_dir, log=log)  # first, as Postfix asks anvil
    if rates is not None:
        checks.append(rates)
    sender = sender_checks(config)
    if sender is not None:
        if sender.dmarc.value != "off":
            organizational_domain("example.com")  # the list loads once, here, not mid-message
        checks.append(sender)
    greylist = greylist_check(config, config.data_dir, log=log, store=greylist_store)
    if greylist is not None:
        checks.append(greylist)
    checks.extend(milter_checks(config))
    return checks
