"""What every lockstep server core (SMTP, POP3) shares.

Both parse one client command, then wait for the application's answer; both keep the
client's bytes in a bounded `LineBuffer`, mark EOF with ``receive_data(b"")``, fall into
a sticky ERROR state when a side breaks the protocol, and switch to TLS the same
fail-closed way: the switch is legal only right after our positive answer to the
STARTTLS/STLS command, and any plaintext already buffered at that moment can only be an
injection (it would otherwise be read as if it had arrived over TLS), so it ends the
session instead of being parsed.

The protocol cores keep their own phases and tables; this class holds only the
bookkeeping that would otherwise be written twice.
"""

from __future__ import annotations

import enum
from typing import Generic, TypeVar

from sansmail._errors import LocalProtocolError, RemoteProtocolError
from sansmail._linebuffer import LineBuffer
from sansmail._roles import CLIENT, SERVER, Role

__all__ = ["LockstepServer"]

P = TypeVar("P", bound=enum.Enum)


class LockstepServer(Generic[P]):
    """Base of a server-role protocol core whose phases are the enum `P`."""

    def __init__(
        self,
        our_role: Role,
        *,
        phase: P,
        error_phase: P,
        tls_pending_phase: P,
        no_client_role: str,
    ) -> None:
        if our_role is CLIENT:
            raise NotImplementedError(no_client_role)
        if our_role is not SERVER:
            raise TypeError(f"our_role must be CLIENT or SERVER, not {our_role!r}")
        self.our_role = our_role
        self._phase = phase
        self._error_phase = error_phase
        self._tls_pending_phase = tls_pending_phase
        self._buffer = LineBuffer()
        self._eof = False
        self._our_error = False
        self._their_error = False

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

    def send_failed(self) -> None:
        """The bytes of the last `send()` never left: our side is broken for good."""
        self._our_error = True

    def _check_usable(self) -> None:
        """At the top of `next_event`: a broken side stays broken."""
        if self._their_error:
            raise RemoteProtocolError("the client already broke the protocol")
        if self._our_error:
            raise LocalProtocolError("the connection failed on our side")

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
