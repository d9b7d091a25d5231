"""The SMTP server conversation as data: phases, session stages and the tables that move them.

Theory of operation
-------------------
SMTP is a lockstep protocol (RFC 5321 §4.3): the client sends a command, the server
answers it, and only then is the next command read (RFC 2920 PIPELINING lets the client
*send* ahead, but the server still reads and answers one command at a time). So one
`Phase` describes both ends at once: whose turn it is and what kind of bytes come next.
`Connection.our_state` and `their_state` both show it, except that the side that broke
the protocol shows `ERROR`.

Two kinds of state are kept apart:

* `Phase` is about framing: are we waiting for a command line, for message content, for
  the application's reply, for a TLS handshake? It decides which reader parses the
  incoming bytes.
* `Stage` is about RFC 5321 §4.1.4's ordering rules: has the client greeted us, is a
  mail transaction open, does it have recipients, did it start with BDAT? It decides
  whether a well-formed command is acceptable now.

Both move only through the tables below, named as in the POP3 and IMAP cores: `RECEIVE`
(what next_event() may hand out in a phase, and the phase after it), `SEND` (which reply
may answer what, and the phase after it), `STAGE_AFTER` (how a reply moves the stage) and
`ALLOWED` (which commands each stage serves), with `REFUSALS`, the reply to every command
a stage does not serve. A pair missing from `RECEIVE` is a bug in the core; a pair
missing from `SEND` is an application error (`LocalProtocolError`); every (stage,
command) pair is in `ALLOWED` or in `REFUSALS`, never both; a triple missing from
`STAGE_AFTER` leaves the stage as it is. Tests enumerate all of them.

A reply moves the conversation according to what it answers and its class, the same way
h11 chooses body framing from the request method: 354 to DATA starts content, 220 to
STARTTLS starts the TLS switch, 2xx to MAIL opens a transaction, 334 to AUTH makes the
next client line a SASL response rather than a command (RFC 4954 §4), and so on. A 421
may be sent at any time and closes the session (RFC 5321 §3.8); the connection handles
that one rule in code. Being authenticated is not a stage: it outlives RSET and EHLO
(RFC 4954 §4), so the session keeps it beside the stage, set by the 235 reply.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from sansmail.smtp import _codes
from sansmail.smtp._config import Config
from sansmail.smtp._events import (
    Auth,
    AuthCancel,
    AuthResponse,
    Bdat,
    ConnectionClosed,
    Data,
    EndOfChunk,
    EndOfMessage,
    Event,
    Hello,
    Help,
    InvalidAuthResponse,
    InvalidCommand,
    InvalidMessage,
    Mail,
    MessageData,
    Noop,
    Quit,
    Rcpt,
    Reply,
    Reset,
    StartTLS,
    Verify,
)

__all__ = [
    "ALLOWED",
    "COMMANDS",
    "RECEIVE",
    "REFUSALS",
    "SEND",
    "STAGE_AFTER",
    "Phase",
    "Session",
    "Stage",
]


class Phase(enum.Enum):
    """Whose turn it is, and what the next bytes from the client are."""

    GREETING = "greeting"  # the server owes its greeting; early client bytes wait
    COMMAND = "command"  # the next client bytes are a command line
    REPLY = "reply"  # the server owes the reply to the event just handed out
    DATA = "data"  # message content after 354, up to CRLF "." CRLF
    BDAT = "bdat"  # the octets of a BDAT chunk (RFC 3030)
    AUTH = "auth"  # 334 sent: the next line is a SASL response or "*" (RFC 4954 §4)
    TLS_PENDING = "tls-pending"  # 220 sent to STARTTLS; waiting for start_tls()
    CLOSED = "closed"  # 221 or 421 sent, or the client closed
    ERROR = "error"  # this side broke the protocol (only ever shown, never stored)


class Stage(enum.Enum):
    """Where the session stands in RFC 5321 §4.1.4's command ordering."""

    NEED_HELLO = "need-hello"  # no EHLO/HELO accepted yet (also after STARTTLS)
    READY = "ready"  # greeted, no mail transaction open
    MAIL = "mail"  # MAIL accepted, no recipient yet
    RCPT = "rcpt"  # at least one RCPT accepted
    BDAT = "bdat"  # at least one BDAT chunk accepted: only BDAT may follow
    REFUSED = "refused"  # the greeting was 5xx: only QUIT is served (RFC 5321 §3.1)


#: Every command the client may send, as the event it becomes.
COMMANDS: tuple[type[Event], ...] = (
    Hello,
    StartTLS,
    Auth,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Reset,
    Noop,
    Verify,
    Help,
    Quit,
)

# --- RECEIVE: what next_event() may hand out in each phase, and the phase after it ----

RECEIVE: Mapping[tuple[Phase, type[Event]], Phase] = MappingProxyType(
    {
        **{(Phase.COMMAND, kind): Phase.REPLY for kind in COMMANDS if kind is not Bdat},
        (Phase.COMMAND, InvalidCommand): Phase.REPLY,
        # BDAT's reply waits until its octets are read (RFC 3030 §2).
        (Phase.COMMAND, Bdat): Phase.BDAT,
        (Phase.COMMAND, ConnectionClosed): Phase.CLOSED,
        (Phase.DATA, MessageData): Phase.DATA,
        (Phase.DATA, EndOfMessage): Phase.REPLY,
        (Phase.DATA, InvalidMessage): Phase.REPLY,
        (Phase.DATA, ConnectionClosed): Phase.CLOSED,
        (Phase.BDAT, MessageData): Phase.BDAT,
        (Phase.BDAT, EndOfChunk): Phase.REPLY,
        (Phase.BDAT, EndOfMessage): Phase.REPLY,
        (Phase.BDAT, InvalidMessage): Phase.REPLY,
        (Phase.BDAT, ConnectionClosed): Phase.CLOSED,
        (Phase.AUTH, AuthResponse): Phase.REPLY,
        (Phase.AUTH, AuthCancel): Phase.REPLY,
        (Phase.AUTH, InvalidAuthResponse): Phase.REPLY,
        (Phase.AUTH, ConnectionClosed): Phase.CLOSED,
        (Phase.CLOSED, ConnectionClosed): Phase.CLOSED,
    }
)

# --- SEND: which replies the application may send to what, and the phase after it ------
#
# Keyed by (what is answered, exact code) or (what is answered, reply class); the
# connection tries the exact code first. `None` stands for the greeting. The lists follow
# RFC 5321 §4.3.2, widened to whole classes where the RFC's lists are examples.

_COMMAND_CLASSES = (2, 4, 5)
_NEGATIVE = (4, 5)

SEND: Mapping[tuple[type[Event] | None, int], Phase] = MappingProxyType(
    {
        # §4.3.2 "CONNECTION ESTABLISHMENT S: 220 E: 554"; RFC 7504 adds 521.
        (None, 220): Phase.COMMAND,
        (None, 5): Phase.COMMAND,
        **{
            (kind, cls): Phase.COMMAND
            for kind in (Hello, Mail, Rcpt, Reset, Noop, Verify, Help, EndOfChunk, EndOfMessage)
            for cls in _COMMAND_CLASSES
        },
        # §4.3.2 "DATA I: 354 -> data"; DATA itself never gets 2xx.
        (Data, 354): Phase.DATA,
        **{(Data, cls): Phase.COMMAND for cls in _NEGATIVE},
        # RFC 3207 §4: 220 Ready to start TLS, 501, 454.
        (StartTLS, 220): Phase.TLS_PENDING,
        **{(StartTLS, cls): Phase.COMMAND for cls in _NEGATIVE},
        # §4.3.2 "QUIT S: 221".
        (Quit, 221): Phase.CLOSED,
        # RFC 4954 §4: a 334 challenge continues the exchange, 235 ends it in success
        # (no other 2xx), any 4xx/5xx ends it in failure (454, 504, 534, 535, 538 ...).
        **{(kind, 334): Phase.AUTH for kind in (Auth, AuthResponse)},
        **{(kind, 235): Phase.COMMAND for kind in (Auth, AuthResponse)},
        **{(kind, cls): Phase.COMMAND for kind in (Auth, AuthResponse) for cls in _NEGATIVE},
        # RFC 4954 §4: the client's "*" "MUST" get 501.
        (AuthCancel, 501): Phase.COMMAND,
        # The core's own refusals are refusals: the application may soften 5xx to 4xx.
        **{
            (kind, cls): Phase.COMMAND
            for kind in (InvalidCommand, InvalidAuthResponse, InvalidMessage)
            for cls in _NEGATIVE
        },
    }
)

# --- ALLOWED and REFUSALS: RFC 5321 §4.1.4 ordering, per (stage, command) ----------------

_ANY_TIME = (Hello, StartTLS, Reset, Noop, Verify, Help, Quit)  # §4.1.4: RSET, NOOP ... any time
_TRANSACTION = (Mail, Rcpt, Data, Bdat)
_OPEN = (Stage.MAIL, Stage.RCPT, Stage.BDAT)
_GREETED = (Stage.READY, *_OPEN)

ALLOWED: frozenset[tuple[Stage, type[Event]]] = frozenset(
    {(stage, kind) for stage in (Stage.NEED_HELLO, *_GREETED) for kind in _ANY_TIME}
    # RFC 4954 §4: AUTH needs a greeting and no open transaction. (Whether it was
    # advertised, and whether the session is already authenticated, is checked by its
    # parser.)
    | {(Stage.READY, Mail), (Stage.READY, Auth)}
    | {(Stage.MAIL, Rcpt)}
    | {(Stage.RCPT, kind) for kind in (Rcpt, Data, Bdat)}
    # RFC 3030 §2: once a chunk is accepted, only BDAT may follow until the last one.
    | {(Stage.BDAT, Bdat)}
    # RFC 5321 §3.1: after a 5xx greeting only QUIT is served.
    | {(Stage.REFUSED, Quit)}
)

# The reply to each transaction command a stage does not serve; None marks the ALLOWED
# cells (a test checks that the two agree).
_Row = tuple[Reply | None, Reply | None, Reply | None, Reply | None]
_TRANSACTION_REFUSALS: dict[Stage, _Row] = {
    #                MAIL                 RCPT                     DATA                     BDAT
    Stage.NEED_HELLO: (_codes.NEED_HELLO, _codes.NEED_HELLO, _codes.NEED_HELLO, _codes.NEED_HELLO),
    Stage.READY: (None, _codes.NEED_MAIL, _codes.NEED_MAIL, _codes.NEED_MAIL),
    Stage.MAIL: (_codes.NESTED_MAIL, None, _codes.NO_RECIPIENTS, _codes.NO_RECIPIENTS),
    Stage.RCPT: (_codes.NESTED_MAIL, None, None, None),
    Stage.BDAT: (_codes.NESTED_MAIL, _codes.RCPT_AFTER_BDAT, _codes.DATA_AFTER_BDAT, None),
}

REFUSALS: Mapping[tuple[Stage, type[Event]], Reply] = MappingProxyType(
    {
        **{
            (stage, kind): refusal
            for stage, refusals in _TRANSACTION_REFUSALS.items()
            for kind, refusal in zip(_TRANSACTION, refusals, strict=True)
            if refusal is not None
        },
        (Stage.NEED_HELLO, Auth): _codes.NEED_HELLO,
        **{(stage, Auth): _codes.AUTH_IN_TRANSACTION for stage in _OPEN},
        **{(Stage.REFUSED, kind): _codes.SERVICE_REFUSED for kind in COMMANDS if kind is not Quit},
    }
)

# --- STAGE_AFTER: how a reply moves the session (missing: no change) -------------------

STAGE_AFTER: Mapping[tuple[Stage, type[Event] | None, int], Stage] = MappingProxyType(
    {
        # RFC 5321 §3.1: a 5xx greeting leaves only QUIT.
        (Stage.NEED_HELLO, None, 5): Stage.REFUSED,
        # §4.1.4: an accepted EHLO/HELO resets the state "exactly as if a RSET".
        **{(stage, Hello, 2): Stage.READY for stage in (Stage.NEED_HELLO, *_GREETED)},
        # §4.1.1.5: RSET aborts the transaction (before EHLO there is none to abort).
        **{(stage, Reset, 2): Stage.READY for stage in _GREETED},
        (Stage.READY, Mail, 2): Stage.MAIL,
        (Stage.MAIL, Rcpt, 2): Stage.RCPT,
        # RFC 3030 §2: a 2xx chunk keeps the transaction in BDAT mode; a refused chunk
        # ends it (the client must not send more chunks).
        **{(stage, EndOfChunk, 2): Stage.BDAT for stage in (Stage.RCPT, Stage.BDAT)},
        **{
            (stage, EndOfChunk, cls): Stage.READY
            for stage in (Stage.RCPT, Stage.BDAT)
            for cls in _NEGATIVE
        },
        # Whatever the final reply to the content says, the transaction is over.
        **{
            (stage, kind, cls): Stage.READY
            for stage in (Stage.RCPT, Stage.BDAT)
            for kind in (EndOfMessage, InvalidMessage)
            for cls in _COMMAND_CLASSES
        },
    }
)


class Session:
    """What the server knows about the session, as the connection updates it from the
    replies it sends. The command readers consult it; only the connection changes it."""

    __slots__ = (
        "auth_mechanisms",
        "authenticated",
        "bdat_failed",
        "config",
        "esmtp",
        "extensions",
        "recipients",
        "size_limit",
        "smtputf8",
        "stage",
        "tls_active",
    )

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stage = Stage.NEED_HELLO
        self.tls_active = False
        #: What our last accepted EHLO reply advertised (empty after HELO).
        self.extensions: Mapping[str, str] = MappingProxyType({})
        self.esmtp = False
        #: The content limit in force: Config.max_message_size, or a smaller SIZE we
        #: advertised.
        self.size_limit = config.max_message_size
        #: The open transaction said MAIL ... SMTPUTF8 (RFC 6531 §3.4).
        self.smtputf8 = False
        #: Recipients accepted in the open transaction.
        self.recipients = 0
        #: The last BDAT chunk was refused; chunks still in the pipeline are thrown away.
        self.bdat_failed = False
        #: The SASL mechanisms our last EHLO reply's AUTH line offered, upper case.
        self.auth_mechanisms: frozenset[str] = frozenset()
        #: An AUTH exchange ended in 235. RFC 4954 §4 makes that last for the session:
        #: RSET and EHLO keep it; only the STARTTLS switch forgets it (RFC 3207 §4.2).
        self.authenticated = False
