"""What every lockstep server core (SMTP, POP3, IMAP) shares.

All three parse one client command, then wait for the application's answer (IMAP lets
untagged responses through meanwhile, but reads the next command only after the tagged
one; `sansmail.imap._state` says why that is allowed). All three keep the client's bytes
in a bounded `LineBuffer`, mark EOF with ``receive_data(b"")``, fall into a sticky ERROR
state when a side breaks the protocol, count the commands they refuse, and switch to TLS
the same fail-closed way: the switch is legal only right after our positive answer to
the STARTTLS/STLS command, and any plaintext already buffered at that moment can only be
an injection (it would otherwise be read as if it had arrived over TLS), so it ends the
session instead of being parsed.

So the verbs live here once: `receive_data`, `next_event` (which marks the client side
broken when a `RemoteProtocolError` escapes), `send` (which marks our side broken when a
`LocalProtocolError` escapes, and refuses anything after that or after the close) and
`send_failed`. A core supplies `_next_event` and `_send`, and calls `_count_invalid`
for every refusal that counts: past `max_invalid_commands` of them the session ends with
the core's own last word as the hint (an SMTP 421, RFC 5321 §3.8; a POP3 -ERR; an
IMAP BYE). The protocol cores keep their own phases and tables.
"""

from __future__ import annotations

import abc
import enum
from typing import Generic, TypeVar

from sansmail._errors import LocalProtocolError, RemoteProtocolError
from sansmail._linebuffer import LineBuffer
from sansmail._roles import CLIENT, SERVER, Role, Signal

__all__ = ["LockstepServer"]

P = TypeVar("P", bound=enum.Enum)  # the core's Phase
E = TypeVar("E")  # what next_event() hands out
S = TypeVar("S")  # what send() accepts


class LockstepServer(abc.ABC, Generic[P, E, S]):
    """Base of a server-role protocol core whose phases are the enum `P`, whose events
    are `E` and whose responses are `S`."""

    def __init__(
        self,
        our_role: Role,
        *,
        phase: P,
        error_phase: P,
        closed_phase: P,
        tls_pending_phase: P,
        no_client_role: str,
        max_invalid_commands: int,
        too_many_invalid: object,
    ) -> None:
        if our_role is CLIENT:
            raise NotImplementedError(no_client_role)
        if our_role is not SERVER:
            raise TypeError(f"our_role must be CLIENT or SERVER, not {our_role!r}")
        self.our_role = our_role
        self._phase = phase
        self._error_phase = error_phase
        self._closed_phase = closed_phase
        self._tls_pending_phase = tls_pending_phase
        self._buffer = LineBuffer()
        self._eof = False
        self._our_error = False
        self._their_error = False
        self._max_invalid_commands = max_invalid_commands
        self._too_many_invalid = too_many_invalid  # the reply_hint that ends the session
        self._invalid_commands = 0

    @property
    def their_role(self) -> Role:
        return CLIENT

    @property
    def our_state(self) -> P:
        return self._error_phase if self._our_error else self._phase

    @property
    def their_state(self) -> P:
        return self._error_phase if self._their_error else self._phase

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """The bytes received and not parsed, and whether EOF was seen."""
        return bytes(self._buffer), self._eof

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the client; b"" means it closed its side."""
        if data:
            if self._eof:
                raise LocalProtocolError("received data after EOF")
            self._buffer.append(data)
        else:
            self._eof = True

    def next_event(self) -> E | Signal:
        """The next event, or NEED_DATA (feed more bytes), or PAUSED (answer the pending
        command, or finish the TLS switch, first).

        Raises RemoteProtocolError (and the client side is then in ERROR for good) when
        the client broke the protocol in a way that ends the session; its `reply_hint`
        is the last thing to `send()` before closing."""
        if self._their_error:
            raise RemoteProtocolError("the client already broke the protocol")
        if self._our_error:
            raise LocalProtocolError("the connection failed on our side")
        try:
            return self._next_event()
        except RemoteProtocolError:
            self._their_error = True
            raise

    def send(self, event: S) -> bytes:
        """Check that `event` may be sent now and return its bytes.

        Raises LocalProtocolError (and our side is then in ERROR for good) when the
        session does not allow it now."""
        try:
            if self._our_error:
                raise LocalProtocolError("can't send after an error on our side")
            if self._phase is self._closed_phase:
                raise LocalProtocolError("the session is closed")
            return self._send(event)
        except LocalProtocolError:
            self._our_error = True
            raise

    def send_failed(self) -> None:
        """The bytes of the last `send()` never left: our side is broken for good."""
        self._our_error = True

    @abc.abstractmethod
    def _next_event(self) -> E | Signal:
        """`next_event` once both sides are known to be usable."""

    @abc.abstractmethod
    def _send(self, event: S) -> bytes:
        """`send` once our side is known to be usable and the session open."""

    def _count_invalid(self) -> None:
        """One more refused command; past the limit it ends the session."""
        self._invalid_commands += 1
        if self._invalid_commands > self._max_invalid_commands:
            # `from None`: this ends the session, whatever refusal tipped the count.
            raise RemoteProtocolError(
                f"more than {self._max_invalid_commands} invalid commands",
                self._too_many_invalid,
            ) from None

    def _check_tls_switch(self, command: str, plaintext_hint: object) -> None:
        """The checks at the top of `start_tls()` (see the module docstring)."""
        if self._phase is not self._tls_pending_phase or self._their_error or self._our_error:
            self._our_error = True
            raise LocalProtocolError(f"start_tls() outside the {command} switch")
        if self._buffer:
            self._their_error = True
            raise RemoteProtocolError(
                f"{len(self._buffer)} octets of plaintext sent after {command}", plaintext_hint
            )
