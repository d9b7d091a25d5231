"""Where sender-authentication verdicts and milter replies enter a transaction: the
stages, what a check says (`Verdict`), what a check is (`Check`), and the work it needs
done before a stage (`Inquiry`: DNS questions, a milter conversation).

A check never waits. What it must find out first (SPF's TXT records, a DKIM key, a
milter's answer) it hands to the adapter as inquiries before the stage; the adapter
carries them out (concurrently, under its timeouts) and only then asks the stage. An
inquiry stores what it learnt in the session's `findings` (a per-session dictionary the
check reads at `check` time), so a check object is shared by every session of a listener
and keeps no session state of its own."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from sansmail import smtp
from sansmail.mail.dnsquery import DnsCheck
from sansmail.mail.headeredit import HeaderEdit
from sansmail.sessions.smtpd._transaction import Transaction
from sansmail.smtp import Reply

__all__ = [
    "CLIENT_NAME",
    "Check",
    "Conversation",
    "Errand",
    "HeaderEdit",
    "Inquiring",
    "Inquiry",
    "Lookup",
    "SessionView",
    "Stage",
    "Verdict",
]


#: The findings key of the client's forward-confirmed reverse DNS name (a str), which
#: the Received field then shows (`SessionView.client_name`).
CLIENT_NAME = "client_name"


class Stage(enum.Enum):
    """Where checks are asked, in the order a transaction reaches them (the milter
    protocol's connect, helo, envfrom, envrcpt, eoh and eom)."""

    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    END_OF_HEADERS = "end-of-headers"
    END_OF_DATA = "end-of-data"


def _header_fields(_inst: object, _attr: object, value: tuple[tuple[str, str], ...]) -> None:
    for name, text in value:
        if not name or not all("!" <= c <= "~" and c != ":" for c in name):
            raise ValueError(f"not a header field name: {name!r}")
        if "\r" in text or "\n" in text:
            raise ValueError(
                f"header field {name} may not hold CR or LF (fold it with no line ends)"
            )


def _field_tuple(value: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(value)


def _edit_tuple(value: Iterable[HeaderEdit]) -> tuple[HeaderEdit, ...]:
    return tuple(value)


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class Verdict:
    """What one check said at one stage. `reply` (a 4xx or 5xx) refuses; `header_fields`
    are written above the Received line of the stored message ("Authentication-Results",
    "Received-SPF" ...); `source` names the check in the log.

    `header_edits` change the message's own header section (`sansmail.mail.headeredit`),
    at END_OF_HEADERS or END_OF_DATA. Only at END_OF_DATA, and only for a message the
    session held (`Inquiring.wants_message`): header fields, `body` replaces the body,
    `quarantine` (a reason) files the local copies in the recipients' Junk folder,
    `discard` accepts the message and stores nothing (the milter's DISCARD), and the
    envelope changes add and remove recipients and replace the sender."""

    source: str
    reply: Reply | None = attrs.field(default=None)
    header_fields: tuple[tuple[str, str], ...] = attrs.field(
        default=(), converter=_field_tuple, validator=_header_fields
    )
    header_edits: tuple[HeaderEdit, ...] = attrs.field(default=(), converter=_edit_tuple)
    body: bytes | None = None
    quarantine: str | None = None
    discard: bool = False
    #: Envelope changes (the milter's ADDRCPT, DELRCPT and CHGFROM), addresses as the
    #: milter wrote them, with or without angle brackets; `new_sender` "" is the null
    #: sender, None leaves it.
    add_recipients: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    delete_recipients: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    new_sender: str | None = None
    #: What the check found, as (method, result) pairs for the metrics
    #: (`SmtpObserver.verdict`): ("spf", "pass"), ("dkim", "fail") ...; changes nothing.
    results: tuple[tuple[str, str], ...] = ()

    @reply.validator
    def _refusal(self, _attr: object, value: Reply | None) -> None:
        if value is not None and value.code < 400:
            raise ValueError("a verdict's reply refuses: 4xx or 5xx")


class Check(Protocol):
    """A sender-authentication check or filter, asked at every `Stage`.

    `check` must not block (a check that needs DNS or a milter gets its answers before
    the stage: see `Inquiring`). It sees the session read-only but for `findings`: the
    client (`client_ip`, `helo`, `user`, `tls`, `trusted`) and the transaction
    (`transaction.reverse_path`, `transaction.rcpt`, from END_OF_HEADERS on
    `transaction.headers`, and at END_OF_DATA `transaction.message` when held)."""

    def check(self, stage: Stage, session: SessionView) -> Verdict | None: ...


@attrs.frozen
class Lookup:
    """DNS questions a check needs answered before a stage: the adapter drives `check`
    (`sansmail.mail.dnsquery`: a generator of query batches) to its end and calls
    `deliver` with the result, or with None when it ran out of time; a check treats None
    as a temporary DNS failure. `heavy`: the generator computes over the whole message
    (DKIM's body hash) between batches, so the adapter runs its steps off the event loop."""

    source: str
    check: DnsCheck[Any]
    deliver: Callable[[Any], None]
    heavy: bool = False


class Conversation(Protocol):
    """A sans-I/O exchange with an outside filter (a milter) for one stage. The adapter
    connects to `address` if not yet connected, sends `data_to_send()` and feeds what
    comes back to `receive_data` until `done`; a connection failure or timeout of
    `timeout` seconds is reported with `failed(reason)`, after which it is done too. The
    conversation stores its outcome in the session's findings."""

    source: str
    address: object
    timeout: float

    @property
    def done(self) -> bool: ...
    def data_to_send(self) -> bytes: ...
    def receive_data(self, data: bytes) -> None: ...
    def failed(self, reason: str) -> None: ...


@attrs.frozen
class Errand:
    """Blocking work a check needs done before a stage (a read and write of shared state
    such as the greylist): the adapter runs `run` in a worker thread. It stores what it
    found in the session's findings, and raises nothing but bugs (a failure is a
    finding too)."""

    source: str
    run: Callable[[], None]


Inquiry = Lookup | Conversation | Errand


@runtime_checkable
class Inquiring(Protocol):
    """A check that needs work done before its stages, or the whole message."""

    def inquiries(
        self, stage: Stage, session: SessionView, command: smtp.Event | None
    ) -> Sequence[Inquiry]:
        """What to find out before `stage` is asked, called just before it with the
        command that reaches it (`smtp.Helo`/`Ehlo`, `smtp.Mail`, `smtp.Rcpt`; None at
        CONNECT and END_OF_DATA). Never called for END_OF_HEADERS, which comes inside
        `content`: work that needs the header section waits for END_OF_DATA."""
        ...

    def wants_message(self, session: SessionView) -> bool:
        """Hold this transaction's whole message in memory until END_OF_DATA (DKIM,
        milters): the stored copies then start only after the END_OF_DATA verdicts."""
        ...


class SessionView(Protocol):
    """What a check sees of a session (read-only)."""

    @property
    def client_ip(self) -> str: ...
    @property
    def helo(self) -> str: ...
    @property
    def user(self) -> str | None: ...
    @property
    def tls(self) -> str | None: ...
    @property
    def transaction(self) -> Transaction | None: ...
    @property
    def trusted(self) -> bool:
        """The client authenticated or is in mynetworks: the sender checks leave it be."""
        ...

    @property
    def client_name(self) -> str | None:
        """The verified (forward-confirmed) reverse DNS name, once known."""
        ...

    @property
    def findings(self) -> dict[str, Any]:
        """Per-session results of inquiries, by whatever key the check chose."""
        ...

    @property
    def now(self) -> float:
        """The wall clock the adapter gave with the stage's inquiries (seconds since the
        epoch; SPF's %{t} macro): the session reads no clock of its own."""
        ...
