"""The IMAP server conversation as data: phases, RFC 9051 states and the tables that move them.

Theory of operation
-------------------
Two kinds of state are kept apart, as in the POP3 core:

* `Phase` is about framing and turns: the greeting is owed, a command is being read,
  the application owes the answer to a command, a synchronizing literal waits for the
  application's decision, a line of an AUTHENTICATE exchange or the DONE of IDLE is
  expected, a TLS handshake is under way, the adapter is putting compression in place.
* `Stage` is RFC 9051 §3's session state: NOT_AUTHENTICATED, AUTHENTICATED, SELECTED,
  LOGOUT. It decides which well-formed commands are acceptable (`ALLOWED`). (Called
  `Stage`, as in the SMTP and POP3 cores, so that it is never confused with what
  `our_state` and `their_state` show, which is the `Phase`.)

IMAP lets a client pipeline commands, but this core works in lockstep like the SMTP
and POP3 ones: one command is handed out and the next is read only once the application
has sent the first one's tagged response. Untagged responses may be sent at any time
meanwhile (EXISTS before the tagged OK of a NOOP, say). So at most one tag is ever in
flight, and a client reusing a tag cannot confuse anything; RFC 9051 §2.2.1 lets a
server process commands one at a time this way.

The tables, named as in the SMTP and POP3 cores: `RECEIVE` (what `next_event()` may hand
out in a phase, and the phase after it), `SEND` (which tagged response or continuation
request may answer what, and the phase after it), `STAGE_AFTER` (how a tagged response
moves the stage) and `ALLOWED` (which commands each stage serves). A pair missing from
`RECEIVE` is a bug in the core, one missing from `SEND` an application error, one
missing from `ALLOWED` a command refused with BAD, one missing from `STAGE_AFTER` leaves
the stage as it is. Tests enumerate all of them. `EXPUNGE_FORBIDDEN` names the commands
during which the writer refuses an untagged EXPUNGE (RFC 9051 §7.5.1).
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
    Compress,
    ConnectionClosed,
    Copy,
    Create,
    Delete,
    Enable,
    Event,
    Expunge,
    Fetch,
    GetQuota,
    GetQuotaRoot,
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
    SetQuota,
    Sort,
    StartTLS,
    Status,
    Store,
    Subscribe,
    Thread,
    UidExpunge,
    Unselect,
    Unsubscribe,
)

__all__ = [
    "ALLOWED",
    "COMMANDS",
    "EXPUNGE_FORBIDDEN",
    "RECEIVE",
    "SEND",
    "STAGE_AFTER",
    "Phase",
    "Stage",
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
    COMPRESS_PENDING = "compress-pending"  # OK sent to COMPRESS; start_compression() owed
    CLOSED = "closed"  # BYE sent, LOGOUT answered, or the client closed
    ERROR = "error"  # this side broke the protocol (only ever shown, never stored)


class Stage(enum.Enum):
    """RFC 9051 §3's session states."""

    NOT_AUTHENTICATED = "not-authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


#: Every command the client may send, as the event it becomes.
COMMANDS: tuple[type[Command], ...] = (
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
    Sort,
    Thread,
    GetQuota,
    GetQuotaRoot,
    SetQuota,
    Compress,
)

# --- ALLOWED: which commands each stage accepts (RFC 9051 §6) -------------------------------
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
    GetQuota,  # RFC 9208 §4.1: authenticated and selected states
    GetQuotaRoot,
    SetQuota,
    Compress,  # RFC 4978 §5: command-auth, so authenticated and selected states
)
_SELECTED = (
    *(Check, Close, Unselect, Expunge, UidExpunge, Search, Fetch, Store, Copy, Move),
    *(Sort, Thread),  # RFC 5256
)

ALLOWED: frozenset[tuple[Stage, type[Command]]] = frozenset(
    {(Stage.NOT_AUTHENTICATED, kind) for kind in (*_ANY, *_NOT_AUTHENTICATED)}
    | {(Stage.AUTHENTICATED, kind) for kind in (*_ANY, *_AUTHENTICATED, Enable)}
    | {(Stage.SELECTED, kind) for kind in (*_ANY, *_AUTHENTICATED, *_SELECTED)}
)

# --- RECEIVE: what next_event() hands out in each phase, and the phase after it ------------

RECEIVE: Mapping[tuple[Phase, type[Event]], Phase] = MappingProxyType(
    {
        **{(Phase.COMMAND, kind): Phase.REPLY for kind in (*COMMANDS, InvalidCommand)},
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

# --- SEND: (what is answered, "OK" / "NO" / "BAD" / "+") -> phase after it -----------------
#
# A tagged response is keyed by its status, a continuation request by "+". Every command
# may end OK, NO or BAD (RFC 9051 §7.1), after which the next command is read, except:
# §6.2.1: after the OK to STARTTLS the TLS negotiation starts at once;
# §6.1.3: the OK to LOGOUT (after the BYE) ends the session;
# RFC 4978 §3: after the OK to COMPRESS the next octets each way are compressed.
# A continuation carries an AUTHENTICATE challenge (§6.2.2) or accepts IDLE (§6.3.13).
# A synchronizing literal (`LiteralRequested`) is let come by a continuation (§4.3, §7.6)
# or refused by a tagged NO or BAD, after which the client sends none of the command.
# A command the core refused (`InvalidCommand`) stays refused: NO or BAD, as in the SMTP
# and POP3 cores.

_TAGGED = ("OK", "NO", "BAD")
_REFUSED = ("NO", "BAD")

SEND: Mapping[tuple[type[Event], str], Phase] = MappingProxyType(
    {
        **{(kind, status): Phase.COMMAND for kind in COMMANDS for status in _TAGGED},
        (StartTLS, "OK"): Phase.TLS_PENDING,
        (Compress, "OK"): Phase.COMPRESS_PENDING,
        (Logout, "OK"): Phase.CLOSED,
        (Authenticate, "+"): Phase.AUTH,
        (Idle, "+"): Phase.IDLE,
        (LiteralRequested, "+"): Phase.COMMAND,
        **{(LiteralRequested, status): Phase.COMMAND for status in _REFUSED},
        **{(InvalidCommand, status): Phase.COMMAND for status in _REFUSED},
    }
)

# --- STAGE_AFTER: (stage, command, status) -> stage ------------------------------------------
#
# §6.2.2, §6.2.3: OK to AUTHENTICATE or LOGIN authenticates.
# §6.3.2: OK to SELECT/EXAMINE selects; a failed (NO) SELECT while selected leaves the
#   session authenticated, with no mailbox selected. A BAD refused the command unread.
# §6.4.1, §6.4.2: OK to CLOSE or UNSELECT returns to authenticated.
# §6.1.3: OK to LOGOUT is the end.

STAGE_AFTER: Mapping[tuple[Stage, type[Command], str], Stage] = MappingProxyType(
    {
        (Stage.NOT_AUTHENTICATED, Login, "OK"): Stage.AUTHENTICATED,
        (Stage.NOT_AUTHENTICATED, Authenticate, "OK"): Stage.AUTHENTICATED,
        (Stage.AUTHENTICATED, Select, "OK"): Stage.SELECTED,
        (Stage.SELECTED, Select, "OK"): Stage.SELECTED,
        (Stage.SELECTED, Select, "NO"): Stage.AUTHENTICATED,
        (Stage.SELECTED, Close, "OK"): Stage.AUTHENTICATED,
        (Stage.SELECTED, Unselect, "OK"): Stage.AUTHENTICATED,
        **{(stage, Logout, "OK"): Stage.LOGOUT for stage in Stage if stage is not Stage.LOGOUT},
    }
)

# --- EXPUNGE_FORBIDDEN: no untagged EXPUNGE while one of these is answered ---------------
#
# RFC 9051 §7.5.1: an EXPUNGE response must not be sent while responding to FETCH, STORE
# or SEARCH, whose responses name messages by sequence number: the client could not tell
# whether a number meant the message before or after the expunge. UID FETCH, UID STORE
# and UID SEARCH are different commands that may carry it (the events' `uid` flag), and
# so may every other command.

EXPUNGE_FORBIDDEN: frozenset[type[Command]] = frozenset({Fetch, Store, Search, Sort, Thread})
