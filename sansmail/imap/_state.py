"""The IMAP server conversation as data: phases, RFC 9051 states and the tables that move them.

Theory of operation
-------------------
Two kinds of state are kept apart, as in the POP3 core:

* `Phase` is about framing and turns: the greeting is owed, a command is being read,
  the application owes the answer to a command, a synchronizing literal waits for the
  application's decision, a line of an AUTHENTICATE exchange or the DONE of IDLE is
  expected, a TLS handshake is under way.
* `State` is RFC 9051 §3's session state: NOT_AUTHENTICATED, AUTHENTICATED, SELECTED,
  LOGOUT. It decides which well-formed commands are acceptable (`ALLOWED`).

IMAP lets a client pipeline commands, but this core works in lockstep like the SMTP
and POP3 ones: one command is handed out and the next is read only once the application
has sent the first one's tagged response. Untagged responses may be sent at any time
meanwhile (EXISTS before the tagged OK of a NOOP, say). So at most one tag is ever in
flight, and a client reusing a tag cannot confuse anything; RFC 9051 §2.2.1 lets a
server process commands one at a time this way.

The tables: `RECEIVE` (what `next_event()` may hand out in a phase, and the phase after
it), `CONTINUE` (what a continuation request may answer, and the phase after it),
`AFTER_TAGGED` (phases a tagged response leads to other than reading the next command),
`STATE_AFTER` (how a tagged response moves the session state) and `ALLOWED`. A pair
missing from `RECEIVE` is a bug in the core, one missing from `CONTINUE` an application
error, one missing from `ALLOWED` a command refused with BAD, one missing from
`STATE_AFTER` leaves the state as it is. Tests enumerate all of them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from sansmail.imap._events import (
    Append,
    AuthCancel,
    Authenticate,
    AuthResponse,
    Capability,
    Check,
    Close,
    Command,
    ConnectionClosed,
    Copy,
    Create,
    Delete,
    Enable,
    Event,
    Expunge,
    Fetch,
    Id,
    Idle,
    IdleDone,
    InvalidCommand,
    List,
    LiteralRequested,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    Rename,
    Search,
    Select,
    StartTLS,
    Status,
    Store,
    Subscribe,
    UidExpunge,
    Unselect,
    Unsubscribe,
)

__all__ = [
    "AFTER_TAGGED",
    "ALLOWED",
    "COMMAND_TYPES",
    "CONTINUE",
    "RECEIVE",
    "STATE_AFTER",
    "Phase",
    "State",
]


class Phase(enum.Enum):
    """Whose turn it is, and what the next octets from the client are."""

    GREETING = "greeting"  # the server owes its greeting; early client bytes wait
    COMMAND = "command"  # the next client octets are (the rest of) a command
    LITERAL = "literal"  # LiteralRequested handed out: continuation or tagged NO/BAD owed
    REPLY = "reply"  # the server owes the tagged (or untagged BAD) end of a command
    AUTH = "auth"  # AUTHENTICATE challenge sent: the next line is base64 or "*"
    IDLE = "idle"  # "+ idling" sent: the next line must be DONE
    TLS_PENDING = "tls-pending"  # OK sent to STARTTLS; waiting for start_tls()
    CLOSED = "closed"  # BYE sent, LOGOUT answered, or the client closed
    ERROR = "error"  # this side broke the protocol (only ever shown, never stored)


class State(enum.Enum):
    """RFC 9051 §3's session states."""

    NOT_AUTHENTICATED = "not-authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


#: Every command event type.
COMMAND_TYPES: tuple[type[Command], ...] = (
    Capability,
    Noop,
    Logout,
    StartTLS,
    Authenticate,
    Login,
    Enable,
    Id,
    Namespace,
    Select,
    Create,
    Delete,
    Rename,
    Subscribe,
    Unsubscribe,
    List,
    Lsub,
    Status,
    Append,
    Idle,
    Check,
    Close,
    Unselect,
    Expunge,
    UidExpunge,
    Search,
    Fetch,
    Store,
    Copy,
    Move,
)

# --- ALLOWED: which commands each state accepts (RFC 9051 §6) -------------------------------
#
# §6.1 any state: CAPABILITY, NOOP, LOGOUT; RFC 2971 §3.1: ID in any state.
# §6.2 not authenticated: STARTTLS, AUTHENTICATE, LOGIN.
# §6.3 authenticated (and selected): SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE,
#      UNSUBSCRIBE, LIST, NAMESPACE, STATUS, APPEND, IDLE; LSUB is rev1 (RFC 3501 §6.3.9).
#      ENABLE only in authenticated, before a mailbox is selected (RFC 5161 §3.1).
# §6.4 selected: CLOSE, UNSELECT, EXPUNGE, SEARCH, FETCH, STORE, COPY, MOVE, UID forms;
#      CHECK is rev1 (RFC 3501 §6.4.1).

_ANY = (Capability, Noop, Logout, Id)
_NOT_AUTHENTICATED = (StartTLS, Authenticate, Login)
_AUTHENTICATED = (
    Select,
    Create,
    Delete,
    Rename,
    Subscribe,
    Unsubscribe,
    List,
    Lsub,
    Namespace,
    Status,
    Append,
    Idle,
)
_SELECTED = (Check, Close, Unselect, Expunge, UidExpunge, Search, Fetch, Store, Copy, Move)

ALLOWED: frozenset[tuple[State, type[Command]]] = frozenset(
    {(State.NOT_AUTHENTICATED, kind) for kind in (*_ANY, *_NOT_AUTHENTICATED)}
    | {(State.AUTHENTICATED, kind) for kind in (*_ANY, *_AUTHENTICATED, Enable)}
    | {(State.SELECTED, kind) for kind in (*_ANY, *_AUTHENTICATED, *_SELECTED)}
)

# --- RECEIVE: what next_event() hands out in each phase, and the phase after it ------------

RECEIVE: Mapping[tuple[Phase, type[Event]], Phase] = MappingProxyType(
    {
        **{(Phase.COMMAND, kind): Phase.REPLY for kind in (*COMMAND_TYPES, InvalidCommand)},
        (Phase.COMMAND, LiteralRequested): Phase.LITERAL,
        (Phase.COMMAND, ConnectionClosed): Phase.CLOSED,
        (Phase.AUTH, AuthResponse): Phase.REPLY,
        (Phase.AUTH, AuthCancel): Phase.REPLY,
        (Phase.AUTH, InvalidCommand): Phase.REPLY,
        (Phase.AUTH, ConnectionClosed): Phase.CLOSED,
        (Phase.IDLE, IdleDone): Phase.REPLY,
        (Phase.IDLE, InvalidCommand): Phase.REPLY,
        (Phase.IDLE, ConnectionClosed): Phase.CLOSED,
        (Phase.CLOSED, ConnectionClosed): Phase.CLOSED,
    }
)

# --- CONTINUE: (phase, command being answered) -> phase after a continuation request ------
#
# A continuation lets a synchronizing literal come (RFC 9051 §4.3, §7.6), carries an
# AUTHENTICATE challenge (§6.2.2), or accepts IDLE (§6.3.13). `None` stands for the
# literal decision, where no command has been handed out yet.

CONTINUE: Mapping[tuple[Phase, type[Command] | None], Phase] = MappingProxyType(
    {
        (Phase.LITERAL, None): Phase.COMMAND,
        (Phase.REPLY, Authenticate): Phase.AUTH,
        (Phase.REPLY, Idle): Phase.IDLE,
    }
)

# --- AFTER_TAGGED: (command, status) -> phase, where it is not COMMAND ------------------------
#
# RFC 9051 §6.2.1: after the OK to STARTTLS the TLS negotiation starts at once.
# §6.1.3: the OK to LOGOUT (after the BYE) ends the session.

AFTER_TAGGED: Mapping[tuple[type[Command], str], Phase] = MappingProxyType(
    {
        (StartTLS, "OK"): Phase.TLS_PENDING,
        (Logout, "OK"): Phase.CLOSED,
    }
)

# --- STATE_AFTER: (state, command, status) -> state ------------------------------------------
#
# §6.2.2, §6.2.3: OK to AUTHENTICATE or LOGIN authenticates.
# §6.3.2: OK to SELECT/EXAMINE selects; a failed (NO) SELECT while selected leaves the
#   session authenticated, with no mailbox selected. A BAD refused the command unread.
# §6.4.1, §6.4.2: OK to CLOSE or UNSELECT returns to authenticated.
# §6.1.3: OK to LOGOUT is the end.

STATE_AFTER: Mapping[tuple[State, type[Command], str], State] = MappingProxyType(
    {
        (State.NOT_AUTHENTICATED, Login, "OK"): State.AUTHENTICATED,
        (State.NOT_AUTHENTICATED, Authenticate, "OK"): State.AUTHENTICATED,
        (State.AUTHENTICATED, Select, "OK"): State.SELECTED,
        (State.SELECTED, Select, "OK"): State.SELECTED,
        (State.SELECTED, Select, "NO"): State.AUTHENTICATED,
        (State.SELECTED, Close, "OK"): State.AUTHENTICATED,
        (State.SELECTED, Unselect, "OK"): State.AUTHENTICATED,
        **{(state, Logout, "OK"): State.LOGOUT for state in State if state is not State.LOGOUT},
    }
)
