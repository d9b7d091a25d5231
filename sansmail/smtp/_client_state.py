"""The SMTP conversation as the client sees it: the server's tables, plus what only a client
needs (which commands may be pipelined, and a few replies a client must tolerate).

The server's tables in `_state.py` already say what each reply means: `SEND` maps (what
is answered, code or class) to the phase that follows, `STAGE_AFTER` says how the reply
moves RFC 5321 §4.1.4's command order, and `ALLOWED` says which command each stage
serves (`REFUSALS`, what the server answers to the others). The client core reads them
the other way round: a reply the server table would not let a server send is a
`RemoteProtocolError`; a command out of `ALLOWED` is a `LocalProtocolError` before it
reaches the wire. `CLIENT_SEND` and `CLIENT_STAGE_AFTER` are `SEND` and `STAGE_AFTER`
widened by the replies a client must tolerate.

Two things the server tables cannot say:

* RFC 2920 §3.1: which commands may be followed by another before their reply comes
  (`PIPELINABLE`). Everything else is "last in a group".
* What the client hands out as "answered". BDAT is one command to the client but two
  different things to the server's tables (a chunk, or the last chunk, which ends the
  message), so `reply_kind` maps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from sansmail.smtp._events import (
    AuthCancel,
    Bdat,
    EndOfChunk,
    EndOfMessage,
    Event,
    Mail,
    Quit,
    Rcpt,
    Reset,
)
from sansmail.smtp._state import SEND, STAGE_AFTER, Phase, Stage

__all__ = ["CLIENT_SEND", "CLIENT_STAGE_AFTER", "PIPELINABLE", "reply_kind"]

#: RFC 2920 §3.1: RSET, MAIL and RCPT "can all appear anywhere in a pipelined command
#: group"; the end of message content may start one ("the actual transfer of message
#: content is explicitly allowed to be the first command in a group"), so the command
#: after it need not wait; RFC 3030 §4.2 lets BDAT chunks be pipelined. EHLO, DATA,
#: VRFY, NOOP, QUIT, HELP and the commands of other extensions (STARTTLS, AUTH) may only
#: come last: the client must see their reply before it sends anything else.
PIPELINABLE: frozenset[type[Event]] = frozenset({Mail, Rcpt, Reset, Bdat, EndOfMessage})

CLIENT_SEND: Mapping[tuple[type[Event] | None, int], Phase] = MappingProxyType(
    {
        **SEND,
        # RFC 5321 §3.1 names 220 and 554 for the greeting, and §3.8 421; other 4xx
        # greetings ("450 too busy") exist, and a client gains nothing by calling them
        # malformed: it is refused service either way.
        (None, 4): Phase.COMMAND,
        # RFC 4954 §4 wants 501 for "*", but servers say 535 too: the exchange is over.
        **{(AuthCancel, cls): Phase.COMMAND for cls in (4, 5)},
        # RFC 5321 §4.1.1.10 wants 221, but whatever the server answers, the client is
        # leaving.
        **{(Quit, cls): Phase.CLOSED for cls in (2, 4, 5)},
    }
)

CLIENT_STAGE_AFTER: Mapping[tuple[Stage, type[Event] | None, int], Stage] = MappingProxyType(
    {
        **STAGE_AFTER,
        # A refusing greeting leaves only QUIT, whatever its class (see above).
        (Stage.NEED_HELLO, None, 4): Stage.REFUSED,
    }
)


def reply_kind(answered: Event | None) -> type[Event] | None:
    """The key the reply tables use for what a reply answers (None: the greeting)."""
    if answered is None:
        return None
    if type(answered) is Bdat:
        return EndOfMessage if answered.last else EndOfChunk
    return type(answered)
