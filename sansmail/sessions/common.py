"""What the SMTP, POP3 and IMAP sessions have in common: the verbs an adapter calls on
each, and why a connection may be refused before its greeting.

Theory of operation
-------------------
Every session (`smtpd.SmtpSession`, `pop3d.Pop3Session`, `imapd.ImapConversation`) owns
its protocol core as ``conn`` and answers the events the core hands out. Beyond each
protocol's own commands they share one life cycle, so one adapter loop can carry any of
them (`sansmail_trio._session.converse`)::

    send greeting(), or refuse(refusal) (then `ended`)
    until `ended`: wait at most `timeout` for an event, and answer it (the protocol's own
    part of the loop); STARTTLS: handshake, then tls_started(...) or tls_failed(reason)
    on expiry: last_words(timeout_reply()); on shutdown: last_words(shutdown_reply())
    on RemoteProtocolError: protocol_error(exc), then last_words(exc.reply_hint)
    on a bug: last_words(internal_error())
    at the end: closed(), then cleanup() if cleanup_due            [cleanup blocks]

and one way to log in (`LoginSteps`, driven by `sansmail_trio._login.log_in`)::

    login_refusal(event): an answer when this attempt may not start at all, else None
    login(): the shared rules (`sansmail.sessions.login.Login`); if its gate refuses,
    send throttled(event); else wait the gate's delay and drive
    exchange(event, login, nonce=..., now=...), each challenge sent as challenge(data)
    and the client's next event read back with answer(event) (None: cancelled, gone);
    then send login_result(event, result, last_event)             [blocking]

Answers are the protocol's own events: one, a list of them, or None for nothing.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

from sansmail.sessions.login import Exchange, Login, Result

__all__ = ["LoginSteps", "Refusal", "ServerSession", "refusal_text"]


class Refusal(enum.Enum):
    """Why a listener turns a connection away before its greeting (the counting is the
    adapter's: it knows the connections of every process)."""

    SHUTTING_DOWN = "shutting down"
    TOO_MANY_CONNECTIONS = "too many connections"
    TOO_MANY_FROM_CLIENT = "too many connections from this client"


def refusal_text(refusal: Refusal, *, hostname: str, client_ip: str) -> str:
    """The words of a refusal, the same in SMTP's 421, POP3's -ERR and IMAP's BYE, in
    Postfix's phrasing (its anvil limits say "Error: too many connections from ...")."""
    if refusal is Refusal.SHUTTING_DOWN:
        return f"{hostname} Service shutting down"
    if refusal is Refusal.TOO_MANY_CONNECTIONS:
        return f"{hostname} Error: too many connections"
    return f"{hostname} Error: too many connections from {client_ip}"


class ServerSession(Protocol):
    """The life cycle every server session has (see the module docstring)."""

    conn: Any
    ended: bool

    @property
    def timeout(self) -> float: ...

    def greeting(self) -> Any: ...

    def refuse(self, refusal: Refusal) -> Any: ...

    def timeout_reply(self) -> Any: ...

    def shutdown_reply(self) -> Any: ...

    def internal_error(self) -> Any: ...

    def protocol_error(self, exc: Exception) -> None: ...

    def last_words(self, hint: object) -> bytes: ...

    def tls_started(self, description: str, log_description: str) -> None: ...

    def tls_failed(self, reason: str) -> None: ...

    @property
    def cleanup_due(self) -> bool: ...

    def cleanup(self) -> None: ...

    def closed(self) -> None: ...


class LoginSteps(Protocol):
    """How a session logs a client in (see the module docstring)."""

    @property
    def timeout(self) -> float: ...

    def login_refusal(self, event: Any) -> Any: ...

    def login(self) -> Login: ...

    def throttled(self, event: Any) -> Any: ...

    def exchange(self, event: Any, login: Login, *, nonce: str, now: float) -> Exchange: ...

    def challenge(self, data: bytes) -> Any: ...

    def answer(self, event: object) -> bytes | None: ...

    def login_result(self, event: Any, result: Result, last: object) -> Any: ...
