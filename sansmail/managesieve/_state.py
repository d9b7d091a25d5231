"""The ManageSieve server conversation as data: phases, RFC 5804 states and their tables.

Theory of operation
-------------------
ManageSieve is lockstep (RFC 5804 §1.2): the client sends a command, the server answers
it; a client may send ahead, but the server reads the next command only once it has
answered the last. So one `Phase` describes both ends: whose turn it is and what the
next bytes from the client are.

Two kinds of state are kept apart:

* `Phase` is about framing: a command (lines and the literals between them), a string of
  an AUTHENTICATE exchange, the application's answer, a TLS handshake.
* `Stage` is the session state of RFC 5804 §1.2 and §2: non-authenticated or
  authenticated (the logout state is `Phase.CLOSED`). It decides which well-formed
  commands are acceptable (`ALLOWED`).

Both move only through the tables below, named as in the other cores: `RECEIVE` (what
next_event() may hand out in a phase, and the phase after it), `SEND` (which response
may answer what, and the phase after it), `STAGE_AFTER` (how a response moves the
stage) and `ALLOWED` (which commands each stage serves). A pair missing from `RECEIVE`
is a bug in the core, one missing from `SEND` an application error
(`LocalProtocolError`), one missing from `ALLOWED` a command answered NO, one missing
from `STAGE_AFTER` leaves the stage as it is. Tests enumerate all four.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from sansmail.managesieve._events import (
    Authenticate,
    Bye,
    Capabilities,
    Capability,
    Challenge,
    CheckScript,
    ConnectionClosed,
    DeleteScript,
    Event,
    GetScript,
    HaveSpace,
    InvalidCommand,
    ListScripts,
    Logout,
    No,
    Noop,
    Ok,
    PutScript,
    RenameScript,
    SaslCancel,
    SaslResponse,
    Script,
    ScriptList,
    SetActive,
    StartTls,
    Unauthenticate,
)

__all__ = ["ALLOWED", "COMMANDS", "RECEIVE", "SEND", "STAGE_AFTER", "Phase", "Stage"]


class Phase(enum.Enum):
    """Whose turn it is, and what the next bytes from the client are."""

    GREETING = "greeting"  # the server owes its capability listing; client bytes wait
    COMMAND = "command"  # the next client bytes are a command
    REPLY = "reply"  # the server owes the answer to the event just handed out
    SASL = "sasl"  # a challenge was sent: the next client bytes are a string (§2.1)
    TLS_PENDING = "tls-pending"  # OK sent to STARTTLS; waiting for start_tls()
    CLOSED = "closed"  # LOGOUT answered, a BYE sent, or the client closed
    ERROR = "error"  # this side broke the protocol (only ever shown, never stored)


class Stage(enum.Enum):
    """RFC 5804's session states, less logout (which is `Phase.CLOSED`)."""

    NON_AUTHENTICATED = "non-authenticated"
    AUTHENTICATED = "authenticated"


#: Every command the client may send, as the event it becomes.
COMMANDS: tuple[type[Event], ...] = (
    Authenticate,
    StartTls,
    Logout,
    Capability,
    HaveSpace,
    PutScript,
    CheckScript,
    ListScripts,
    SetActive,
    GetScript,
    DeleteScript,
    RenameScript,
    Noop,
    Unauthenticate,
)

# --- ALLOWED: which commands each stage accepts ------------------------------------------
#
# RFC 5804 §2: before authentication only AUTHENTICATE (§2.1), STARTTLS (§2.2), LOGOUT
# (§2.3), CAPABILITY (§2.4) and NOOP (§2.13); STARTTLS and AUTHENTICATE are not valid
# once authenticated (§2.1: "only valid in the non-authenticated state"). The script
# commands and UNAUTHENTICATE (§2.14.1) need an authenticated session.

_ANYWHERE = (Logout, Capability, Noop)
_NON_AUTHENTICATED = (*_ANYWHERE, Authenticate, StartTls)
_AUTHENTICATED = (
    *_ANYWHERE,
    HaveSpace,
    PutScript,
    CheckScript,
    ListScripts,
    SetActive,
    GetScript,
    DeleteScript,
    RenameScript,
    Unauthenticate,
)

ALLOWED: frozenset[tuple[Stage, type[Event]]] = frozenset(
    {(Stage.NON_AUTHENTICATED, kind) for kind in _NON_AUTHENTICATED}
    | {(Stage.AUTHENTICATED, kind) for kind in _AUTHENTICATED}
)

# --- RECEIVE: what next_event() may hand out in each phase, and the phase after it ------

RECEIVE: Mapping[tuple[Phase, type[Event]], Phase] = MappingProxyType(
    {
        **{(Phase.COMMAND, kind): Phase.REPLY for kind in (*COMMANDS, InvalidCommand)},
        (Phase.COMMAND, ConnectionClosed): Phase.CLOSED,
        (Phase.SASL, SaslResponse): Phase.REPLY,
        (Phase.SASL, SaslCancel): Phase.REPLY,
        (Phase.SASL, InvalidCommand): Phase.REPLY,
        (Phase.SASL, ConnectionClosed): Phase.CLOSED,
        (Phase.CLOSED, ConnectionClosed): Phase.CLOSED,
    }
)

# --- SEND: (what is answered, response type) -> phase after it -----------------------------
#
# `None` stands for the greeting: the capability listing (RFC 5804 §1.7), or a BYE that
# refuses the session; start_tls() owes the listing again (§2.2). Every command may be
# answered OK or NO, and BYE ends the session whatever it answers (§1.2). CAPABILITY,
# LISTSCRIPTS and GETSCRIPT answer with their data and OK in one event; they may still
# fail with NO. STARTTLS's OK starts the TLS switch; LOGOUT's OK is the last word
# (errata 7825: response-logout = response-ok). A challenge continues an AUTHENTICATE
# exchange; "*" must be answered NO (§2.1).

_ORDINARY = (
    Noop,
    HaveSpace,
    PutScript,
    CheckScript,
    SetActive,
    DeleteScript,
    RenameScript,
    Unauthenticate,
    Authenticate,
    SaslResponse,
)
_WITH_DATA = {Capability: Capabilities, ListScripts: ScriptList, GetScript: Script}

SEND: Mapping[tuple[type[Event] | None, type[Event]], Phase] = MappingProxyType(
    {
        (None, Capabilities): Phase.COMMAND,
        (None, Bye): Phase.CLOSED,
        **{(kind, Ok): Phase.COMMAND for kind in _ORDINARY},
        **{(kind, No): Phase.COMMAND for kind in (*_ORDINARY, *_WITH_DATA, SaslCancel)},
        **{(kind, answer): Phase.COMMAND for kind, answer in _WITH_DATA.items()},
        **{(kind, Bye): Phase.CLOSED for kind in (*COMMANDS, SaslResponse, SaslCancel)},
        (InvalidCommand, No): Phase.COMMAND,
        (InvalidCommand, Bye): Phase.CLOSED,
        (StartTls, Ok): Phase.TLS_PENDING,
        (StartTls, No): Phase.COMMAND,
        (Logout, Ok): Phase.CLOSED,
        (Authenticate, Challenge): Phase.SASL,
        (SaslResponse, Challenge): Phase.SASL,
    }
)

# --- STAGE_AFTER: how a response moves the stage (missing: no change) ----------------------
#
# RFC 5804 §2.1: OK ending AUTHENTICATE enters the authenticated state; §2.14.1: OK to
# UNAUTHENTICATE leaves it.

STAGE_AFTER: Mapping[tuple[Stage, type[Event], type[Event]], Stage] = MappingProxyType(
    {
        (Stage.NON_AUTHENTICATED, Authenticate, Ok): Stage.AUTHENTICATED,
        (Stage.NON_AUTHENTICATED, SaslResponse, Ok): Stage.AUTHENTICATED,
        (Stage.AUTHENTICATED, Unauthenticate, Ok): Stage.NON_AUTHENTICATED,
    }
)
