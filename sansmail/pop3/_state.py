"""The POP3 server conversation as data: phases, RFC 1939 states and the tables that move them.

Theory of operation
-------------------
POP3 is lockstep (RFC 1939 §3): the client sends a command, the server answers it, and
only then is the next command read; RFC 2449 §6.6 PIPELINING lets the client *send*
ahead, but the server still reads and answers one command at a time. So one `Phase`
describes both ends: whose turn it is and what the next bytes from the client are.

Two kinds of state are kept apart:

* `Phase` is about framing: a command line, a line of an AUTH exchange, the
  application's response (one line or a multi-line answer), a TLS handshake.
* `Stage` is RFC 1939's session state: AUTHORIZATION, TRANSACTION, UPDATE. It decides
  which well-formed commands are acceptable (`ALLOWED`).

Both move only through the tables below, named as in the SMTP and IMAP cores: `RECEIVE`
(what next_event() may hand out in a phase, and the phase after it), `SEND` (which
response may answer what, and the phase after it), `STAGE_AFTER` (how a response moves
the stage) and `ALLOWED` (which commands each stage serves). A pair missing from
`RECEIVE` is a bug in the core, one missing from `SEND` an application error
(`LocalProtocolError`), one missing from `ALLOWED` a command refused with -ERR, one
missing from `STAGE_AFTER` leaves the stage as it is. Tests enumerate all four.

Which answers are multi-line is decided by the command, the way h11 picks body framing
from the request method: `MULTILINE` names them; LIST and UIDL are multi-line only
without a message number, so the connection asks `is_multiline`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from sansmail.pop3._events import (
    Auth,
    AuthCancel,
    AuthResponse,
    Capa,
    Challenge,
    ConnectionClosed,
    Dele,
    Err,
    Event,
    InvalidCommand,
    List,
    Noop,
    Ok,
    Pass,
    Quit,
    Retr,
    Rset,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
)

__all__ = [
    "ALLOWED",
    "COMMANDS",
    "RECEIVE",
    "SEND",
    "STAGE_AFTER",
    "Phase",
    "Stage",
    "is_multiline",
]


class Phase(enum.Enum):
    """Whose turn it is, and what the next bytes from the client are."""

    GREETING = "greeting"  # the server owes its greeting; early client bytes wait
    COMMAND = "command"  # the next client bytes are a command line
    REPLY = "reply"  # the server owes the response to the event just handed out
    MULTILINE = "multiline"  # +OK sent to a multi-line command; data and "." to follow
    AUTH = "auth"  # "+ " challenge sent: the next line is base64 or "*" (RFC 5034 §4)
    TLS_PENDING = "tls-pending"  # +OK sent to STLS; waiting for start_tls()
    CLOSED = "closed"  # QUIT answered, a closing -ERR sent, or the client closed
    ERROR = "error"  # this side broke the protocol (only ever shown, never stored)


class Stage(enum.Enum):
    """RFC 1939 §3's session states."""

    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"  # QUIT received in TRANSACTION (RFC 1939 §6)


#: Every command the client may send, as the event it becomes.
COMMANDS: tuple[type[Event], ...] = (
    User,
    Pass,
    Auth,
    Capa,
    Stls,
    Stat,
    List,
    Retr,
    Top,
    Dele,
    Noop,
    Rset,
    Uidl,
    Quit,
)

# --- ALLOWED: which commands each stage accepts ------------------------------------------
#
# RFC 1939 §4: AUTHORIZATION takes USER, PASS, APOP, QUIT; §5 and §7: TRANSACTION takes
# STAT, LIST, RETR, DELE, NOOP, RSET, QUIT, TOP, UIDL. RFC 2449 §5: CAPA in both.
# RFC 2595 §4 and RFC 5034 §4: STLS and AUTH in AUTHORIZATION only. UPDATE reads nothing.
# APOP is not implemented: it arrives as an unknown command.

_AUTHORIZATION = (User, Pass, Auth, Capa, Stls, Quit)
_TRANSACTION = (Stat, List, Retr, Top, Dele, Noop, Rset, Uidl, Capa, Quit)

ALLOWED: frozenset[tuple[Stage, type[Event]]] = frozenset(
    {(Stage.AUTHORIZATION, kind) for kind in _AUTHORIZATION}
    | {(Stage.TRANSACTION, kind) for kind in _TRANSACTION}
)

# --- RECEIVE: what next_event() may hand out in each phase, and the phase after it ------

RECEIVE: Mapping[tuple[Phase, type[Event]], Phase] = MappingProxyType(
    {
        **{(Phase.COMMAND, kind): Phase.REPLY for kind in (*COMMANDS, InvalidCommand)},
        (Phase.COMMAND, ConnectionClosed): Phase.CLOSED,
        (Phase.AUTH, AuthResponse): Phase.REPLY,
        (Phase.AUTH, AuthCancel): Phase.REPLY,
        (Phase.AUTH, InvalidCommand): Phase.REPLY,
        (Phase.AUTH, ConnectionClosed): Phase.CLOSED,
        (Phase.CLOSED, ConnectionClosed): Phase.CLOSED,
    }
)

# --- SEND: (what is answered, response type) -> phase after it -----------------------------
#
# `None` stands for the greeting (RFC 1939 §4: "+OK"; a "-ERR" greeting closes). Multi-line
# commands go to MULTILINE on +OK (the connection decides, see `is_multiline`); STLS's +OK
# starts the TLS switch (RFC 2595 §4); QUIT's answer, whatever it is, ends the session
# (RFC 1939 §6: "-ERR some deleted messages not removed" is still the last word).
# A challenge continues an AUTH exchange; "*" must be answered -ERR (RFC 5034 §4).

_ORDINARY = (User, Pass, Capa, Stat, List, Retr, Top, Dele, Noop, Rset, Uidl)

SEND: Mapping[tuple[type[Event] | None, type[Event]], Phase] = MappingProxyType(
    {
        (None, Ok): Phase.COMMAND,
        (None, Err): Phase.CLOSED,
        **{(kind, Ok): Phase.COMMAND for kind in _ORDINARY},
        **{(kind, Err): Phase.COMMAND for kind in _ORDINARY},
        (Stls, Ok): Phase.TLS_PENDING,
        (Stls, Err): Phase.COMMAND,
        (Quit, Ok): Phase.CLOSED,
        (Quit, Err): Phase.CLOSED,
        **{(kind, Ok): Phase.COMMAND for kind in (Auth, AuthResponse)},
        **{(kind, Err): Phase.COMMAND for kind in (Auth, AuthResponse)},
        **{(kind, Challenge): Phase.AUTH for kind in (Auth, AuthResponse)},
        (AuthCancel, Err): Phase.COMMAND,
        (InvalidCommand, Err): Phase.COMMAND,
    }
)

# --- STAGE_AFTER: how a response moves the stage (missing: no change) ----------------------
#
# RFC 1939 §4: +OK to PASS enters TRANSACTION; RFC 5034 §4: so does +OK ending AUTH.
# Entering UPDATE happens on *receiving* QUIT in TRANSACTION (RFC 1939 §6), in the
# connection.

STAGE_AFTER: Mapping[tuple[Stage, type[Event], type[Event]], Stage] = MappingProxyType(
    {(Stage.AUTHORIZATION, kind, Ok): Stage.TRANSACTION for kind in (Pass, Auth, AuthResponse)}
)


def is_multiline(command: Event) -> bool:
    """Whether a +OK to `command` is followed by a multi-line body (RFC 1939 §3)."""
    if isinstance(command, List | Uidl):
        return command.msg is None
    return type(command) in (Retr, Top, Capa)
