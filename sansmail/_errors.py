"""Protocol errors, split by who is at fault.

`LocalProtocolError`: our application asked the connection to do something the protocol
forbids in the current state (send a reply nobody asked for, a second greeting ...). It is
a programming error in the caller.

`RemoteProtocolError`: the peer did something that ends the session: a line over the
hard cap, a bare CR or LF in a command, plaintext pipelined behind STARTTLS, bytes after
QUIT, too many invalid commands. Errors the peer can recover from (a syntax error, an
unknown verb, a bad sequence) are *not* exceptions: they arrive as events carrying the
reply to send, and the session goes on.

Both carry `reply_hint`: an event the caller should send before closing (for SMTP a
`Reply(421/500 ...)`), or None when nothing can usefully be said. After either error the
connection is in the sticky ERROR state; the only thing left to do is send the hint
(with `send_hint()` semantics described per protocol) and close.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class; raise one of the two subclasses."""

    def __init__(self, msg: str, reply_hint: object | None = None) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError")
        super().__init__(msg)
        self.reply_hint = reply_hint


class LocalProtocolError(ProtocolError):
    """Our side broke the protocol (a bug in the calling application)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol in a way that ends the session."""
