"""Where sender-authentication verdicts and milter replies enter a transaction: the
stages, what a check says (`Verdict`), and what a check is (`Check`)."""

from __future__ import annotations

import enum
from typing import Protocol

import attrs

from sansmail.sessions.smtpd._transaction import Transaction
from sansmail.smtp import Reply

__all__ = ["Check", "SessionView", "Stage", "Verdict"]


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


@attrs.frozen(kw_only=True)
class Verdict:
    """What one check said at one stage. `reply` (a 4xx or 5xx) refuses; `header_fields`
    are written above the Received line of the stored message ("Authentication-Results",
    "Received-SPF" ...); `source` names the check in the log."""

    source: str
    reply: Reply | None = attrs.field(default=None)
    header_fields: tuple[tuple[str, str], ...] = attrs.field(
        default=(), converter=tuple, validator=_header_fields
    )

    @reply.validator
    def _refusal(self, _attr: object, value: Reply | None) -> None:
        if value is not None and value.code < 400:
            raise ValueError("a verdict's reply refuses: 4xx or 5xx")


class Check(Protocol):
    """A sender-authentication check or filter, asked at every `Stage`.

    `check` must not block (a check that needs DNS or a milter gets its answers before
    the stage; see the module docstring). It sees the session read-only: the client
    (`client_ip`, `helo`, `user`, `tls`) and the transaction (`transaction.reverse_path`,
    `transaction.rcpt`, and at END_OF_HEADERS `transaction.headers`)."""

    def check(self, stage: Stage, session: SessionView) -> Verdict | None: ...


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
