"""Greylisting at RCPT (``[antispam] greylisting``): the `Check` that asks the shared
greylist (`sansmail.storage.greylist`) about each recipient of an untrusted client and
refuses a new triplet with ``450 4.7.1``.

The store blocks (SQLite, shared by every server process), so the check does its work as
an `Errand` before RCPT, which the adapter runs in a worker thread: the errand consults
the store, which decides and records in one step (`sansmail.mail.greylist` has the
rules), writes the `Decision` into the session's findings under the triplet, and logs it
as postgrey does (``<queue id>: greylist: action=greylist, reason=new, client_name=...,
client_address=..., sender=..., recipient=...``). `check` at RCPT then only reads that
finding: the 450, or on the first pass after greylisting an ``X-Greylist`` field (one
per message), or nothing.

Trusted clients (authenticated, or in mynetworks) are never greylisted and cost no
errand. A store that fails (locked too long, damaged, unwritable) lets the mail through
with a warning in the log, as postgrey does when it is down: greylisting is a delay,
never a reason to lose mail. A missing finding (no errand was run for this recipient)
also passes.
"""

from __future__ import annotations

import functools
import logging
import pathlib
from collections.abc import Sequence
from typing import Final

import attrs

from sansmail import smtp
from sansmail.config import Config
from sansmail.mail.greylist import (
    MAX_AGE,
    RETRY_WINDOW,
    Action,
    Decision,
    GreylistSettings,
    Triplet,
    greylist_reply,
    log_text,
    triplet,
    x_greylist,
)
from sansmail.mail.logtext import LogSink
from sansmail.sessions.smtpd._checks import Errand, Inquiry, SessionView, Stage, Verdict
from sansmail.storage.greylist import (
    FILE_NAME,
    GreylistStore,
    GreylistStoreError,
    SqliteGreylistStore,
)

__all__ = ["FINDINGS_KEY", "SOURCE", "GreylistCheck", "greylist_check"]

#: The check's name in verdicts, errands and the log.
SOURCE: Final = "greylist"
#: Where the errands leave their decisions in `SessionView.findings`: a dict from
#: `Triplet` to `Decision`, or to None when the store failed.
FINDINGS_KEY: Final = "greylist"
_FINDINGS_MAX: Final = 256


def _no_log(_level: int, _text: str) -> None:
    pass


@attrs.frozen(kw_only=True)
class GreylistCheck:
    """The greylisting `Check` (and `Inquiring`); see the module docstring. Shared by
    every session of a listener: it keeps no session state."""

    store: GreylistStore
    settings: GreylistSettings = attrs.field(factory=GreylistSettings)
    #: Our host name, for the X-Greylist field.
    hostname: str
    log: LogSink = _no_log

    def inquiries(
        self, stage: Stage, session: SessionView, command: smtp.Event | None
    ) -> Sequence[Inquiry]:
        tx = session.transaction
        if (
            stage is not Stage.RCPT
            or not isinstance(command, smtp.Rcpt)
            or tx is None
            or session.trusted
        ):
            return ()
        sender = tx.reverse_path
        recipient = command.forward_path
        key = triplet(
            session.client_ip, sender, recipient, normalize=self.settings.normalize_sender
        )
        findings: dict[Triplet, Decision | None] = session.findings.setdefault(FINDINGS_KEY, {})
        if len(findings) >= _FINDINGS_MAX:
            # Decisions no check took (their RCPT was refused before it): forgotten, so a
            # session of many refused recipients holds no more than this.
            findings.clear()
        # Read here, in the session's thread; the errand only uses these copies.
        queue_id = tx.queue_id
        describe = functools.partial(
            log_text,
            client_ip=session.client_ip,
            client_name=session.client_name,
            sender=sender,
            recipient=recipient,
        )

        def run() -> None:
            try:
                decision = self.store.consult(key, self.settings)
            except GreylistStoreError as exc:
                findings[key] = None
                text = describe(None, failure=str(exc))
                self.log(logging.WARNING, f"{queue_id}: greylist: {text}")
                return
            findings[key] = decision
            self.log(logging.INFO, f"{queue_id}: greylist: {describe(decision)}")
            if decision.whitelisted:
                self.log(
                    logging.INFO,
                    f"{queue_id}: greylist: whitelisted: client network {key.client}",
                )

        return (Errand(source=SOURCE, run=run),)

    def wants_message(self, session: SessionView) -> bool:
        return False

    def check(self, stage: Stage, session: SessionView) -> Verdict | None:
        tx = session.transaction
        if stage is not Stage.RCPT or tx is None or not tx.rcpt or session.trusted:
            return None
        recipient = tx.rcpt[-1]
        key = triplet(
            session.client_ip,
            tx.reverse_path,
            recipient,
            normalize=self.settings.normalize_sender,
        )
        findings = session.findings.get(FINDINGS_KEY)
        # Taken out, so that a later transaction of the session asks the store again.
        decision = findings.pop(key, None) if findings else None
        if decision is None:
            return None  # no errand ran, or the store failed: let it through
        if decision.action is Action.GREYLIST:
            return Verdict(source=SOURCE, reply=greylist_reply(decision, recipient))
        field = x_greylist(decision, self.hostname)
        if field is None or any(name == field[0] for name, _ in tx.added_fields):
            return None
        # (mypy cannot type attrs' converter=tuple on Verdict.header_fields.)
        return Verdict(source=SOURCE, header_fields=(field,))

    def close(self) -> None:
        """Blocking: close the store's open files."""
        self.store.close()


def greylist_check(
    config: Config,
    data_dir: pathlib.Path,
    *,
    log: LogSink = _no_log,
    store: GreylistStore | None = None,
) -> GreylistCheck | None:
    """The greylisting check `config` asks for (``[antispam] greylisting``), or None when
    it is off. Its records are in ``<data_dir>/greylist.sqlite`` unless a `store` is
    given; nothing is opened until the first RCPT. `log` is the mail log's sink."""
    antispam = config.antispam
    if not antispam.greylisting:
        return None
    delay = antispam.greylist_delay
    # postgrey's windows, stretched for a delay so long that they would not hold it.
    window = max(RETRY_WINDOW, 2 * delay)
    settings = GreylistSettings(delay=delay, retry_window=window, max_age=max(MAX_AGE, window))
    return GreylistCheck(
        store=store if store is not None else SqliteGreylistStore(data_dir / FILE_NAME),
        settings=settings,
        hostname=config.hostname,
        log=log,
    )
