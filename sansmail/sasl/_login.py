"""LOGIN (draft-murchison-sasl-login): user name and password, one challenge each.

Not a standard, but what Outlook and many older clients offer. The server prompts
``Username:`` then ``Password:`` (the strings every deployed server sends; clients ignore
them). A client may send its user name as the initial response (as Microsoft's
[MS-XLOGIN] shows: ``AUTH LOGIN <base64 user>``); the server then goes straight to the
password prompt. LOGIN has no authorization identity, and its password crosses the wire
in the clear: offer it only under TLS.
"""

from __future__ import annotations

from typing import ClassVar, Final

from sansmail.sasl._base import Challenge, ClientMechanism, ServerMechanism, Step, VerifyPassword
from sansmail.sasl._fields import check_identity, decode_field

__all__ = ["LoginClient", "LoginServer"]

USERNAME_PROMPT: Final = b"Username:"
PASSWORD_PROMPT: Final = b"Password:"


class LoginServer(ServerMechanism):
    """Server side of LOGIN. Steps: [`Challenge(b"Username:")`,] `Challenge(b"Password:")`,
    `VerifyPassword` (with an empty authzid), then `accept()` or `reject()`."""

    name: ClassVar[str] = "LOGIN"
    accepts_initial_response: ClassVar[bool] = True
    plaintext: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self._username: str | None = None

    def _receive(self, response: bytes | None, *, first: bool) -> Step:
        if response is None:
            return Challenge(data=USERNAME_PROMPT)
        if self._username is None:
            # The answer to "Username:", or the initial response standing in for it.
            self._username = decode_field(response, "user name")
            return Challenge(data=PASSWORD_PROMPT)
        password = decode_field(response, "password")
        return VerifyPassword(authzid="", authcid=self._username, password=password)


class LoginClient(ClientMechanism):
    """Client side of LOGIN: answers the first challenge with the user name and the
    second with the password, whatever their text (the draft says to ignore it)."""

    name: ClassVar[str] = "LOGIN"
    client_first: ClassVar[bool] = False
    _turns: ClassVar[int] = 2

    def __init__(self, *, authcid: str, password: str) -> None:
        super().__init__()
        check_identity(authcid, "authcid")
        check_identity(password, "password")
        self._answers = (authcid.encode(), password.encode())

    def _message(self, turn: int, challenge: bytes | None) -> bytes:
        return self._answers[turn]
