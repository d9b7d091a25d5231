"""PLAIN (RFC 4616): the identities and the password in one message.

    message = [authzid] UTF8NUL authcid UTF8NUL passwd      (RFC 4616 §2)

The client speaks first. The server hands the fields to the application as
`VerifyPassword`; the password is compared by the application against its own store, so
PLAIN keeps no secret here. The password crosses the wire in the clear: offer PLAIN only
under TLS (RFC 4616 §6).
"""

from __future__ import annotations

from typing import ClassVar

from sansmail.sasl._base import (
    Challenge,
    ClientMechanism,
    Malformed,
    ServerMechanism,
    Step,
    VerifyPassword,
)
from sansmail.sasl._fields import check_identity, decode_field

__all__ = ["PlainClient", "PlainServer"]


class PlainServer(ServerMechanism):
    """Server side of PLAIN. Steps: [`Challenge(b"")`,] `VerifyPassword`, then the
    application's `accept()` or `reject()`."""

    name: ClassVar[str] = "PLAIN"
    accepts_initial_response: ClassVar[bool] = True
    plaintext: ClassVar[bool] = True

    def _receive(self, response: bytes | None, *, first: bool) -> Step:
        if response is None:
            # RFC 4422 §5: no initial response, so ask for the message.
            return Challenge(data=b"")
        fields = response.split(b"\0")
        if len(fields) != 3:
            raise Malformed("PLAIN message needs exactly two NUL separators")
        authzid, authcid, password = fields
        # RFC 4616 §2: authzid is optional, authcid and passwd are 1*SAFE (non-NUL UTF-8).
        return VerifyPassword(
            authzid=decode_field(authzid, "authzid", allow_empty=True),
            authcid=decode_field(authcid, "authcid"),
            password=decode_field(password, "password"),
        )


class PlainClient(ClientMechanism):
    """Client side of PLAIN: one message, sent as the initial response or in answer to
    the server's empty challenge."""

    name: ClassVar[str] = "PLAIN"
    client_first: ClassVar[bool] = True
    _turns: ClassVar[int] = 1

    def __init__(self, *, authcid: str, password: str, authzid: str = "") -> None:
        super().__init__()
        check_identity(authcid, "authcid")
        check_identity(password, "password")
        check_identity(authzid, "authzid", allow_empty=True)
        self._message_bytes = f"{authzid}\0{authcid}\0{password}".encode()

    def _message(self, turn: int, challenge: bytes | None) -> bytes:
        return self._message_bytes
