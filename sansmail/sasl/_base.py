"""The shape every SASL mechanism shares: steps, errors, and the two base classes.

Theory of operation
-------------------
A SASL exchange (RFC 4422 §3) is a short conversation of opaque messages between a client
mechanism and a server mechanism; the mail protocols only carry them (base64, ``334 ``,
``+ ``, ``*`` to cancel). So a mechanism here is a tiny state machine over raw bytes, one
object per authentication attempt, that never blocks and never looks outside: nonces,
timestamps, secrets and the user's credentials all come in as arguments.

Server side. `ServerMechanism.receive(response)` takes the client's next message (None for
"no initial response was given") and returns the next `Step`:

- `Challenge(data)`: send it and feed the client's answer back into `receive`;
- `VerifyPassword(...)`: the mechanism carried a clear-text password (PLAIN, LOGIN); the
  application checks it with its user store and calls `accept()` or `reject()`;
- `NeedCredentials(...)`: the mechanism needs the user's stored secrets (CRAM-MD5, SCRAM);
  the application looks them up and calls `provide(credentials)`, or `provide(None)` for
  an unknown user;
- `Success(...)` / `Failure(reason)`: the exchange is over.

Which call is legal next is decided by the step just returned, through the `_AWAITS` table
below: after a `Challenge` only `receive`, after `VerifyPassword` only `accept`/`reject`,
after `NeedCredentials` only `provide`, after `Success`/`Failure` nothing. A call out of
turn is a bug in the application and raises `SASLError`; nothing the *client* sends can
raise: a message that breaks the mechanism's grammar ends the exchange with `Failure`.
(Mechanisms signal that internally by raising `Malformed`, which the base class turns into
`Failure`; it never escapes.)

Client side. `ClientMechanism.initial_response()` gives the first message of a
client-first mechanism (None for a server-first one), `respond(challenge)` answers each
challenge, and `verify_server_final(data)` must be called when the server reports success:
it checks that the exchange really finished and, for SCRAM, that the server proved it knows
the user's keys. Bad data from the server raises `RemoteSASLError`; the protocol then
cancels the exchange (``*``).

Limits. Every message is capped at `MAX_MESSAGE_OCTETS`; RFC 4616 §2 asks servers to accept
at least 255 octets for each PLAIN field, and the cap leaves room for all three at that size
many times over, while the protocols' own line limits (RFC 4954 §4: 12288 octets of base64)
keep anything larger from arriving anyway.
"""

from __future__ import annotations

import abc
import enum
from typing import Any, ClassVar, Final

import attrs

__all__ = [
    "MAX_MESSAGE_OCTETS",
    "Challenge",
    "ClientMechanism",
    "Failure",
    "Malformed",
    "NeedCredentials",
    "RemoteSASLError",
    "SASLError",
    "ServerMechanism",
    "Step",
    "Success",
    "VerifyPassword",
]

MAX_MESSAGE_OCTETS: Final = 4096

# What a server mechanism answers when the credentials are wrong or the user is unknown:
# one wording for both, so the reason cannot tell an attacker which it was.
AUTHENTICATION_FAILED: Final = "authentication failed"


class SASLError(Exception):
    """The SASL API was misused (a bug in the calling application): a call out of turn,
    a missing nonce, unusable credentials. Also the base class of `RemoteSASLError`."""


class RemoteSASLError(SASLError):
    """The peer sent something the mechanism cannot accept: data that is not strict
    base64, or (client side) a malformed challenge or a server that failed to prove
    itself. Cancel the exchange."""


class Malformed(Exception):  # noqa: N818  (a signal inside the package, not an error API)
    """Raised inside a server mechanism when the client broke the grammar; the base
    class turns it into `Failure(reason=str(exc))`. Never escapes the package."""


def _text(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or "\0" in value:
        raise SASLError(f"{attribute.name} must be a str without NUL")


def _nonempty_text(inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    _text(inst, attribute, value)
    if not value:
        raise SASLError(f"{attribute.name} must not be empty")


def _bytes(_inst: Any, attribute: attrs.Attribute[Any], value: bytes) -> None:
    if not isinstance(value, bytes):
        raise SASLError(f"{attribute.name} must be bytes")


def _optional_bytes(inst: Any, attribute: attrs.Attribute[Any], value: bytes | None) -> None:
    if value is not None:
        _bytes(inst, attribute, value)


class Step:
    """Base class of what `ServerMechanism` returns. Do not subclass outside the package."""

    __slots__ = ()


@attrs.frozen(kw_only=True)
class Challenge(Step):
    """Send `data` to the client (the protocol base64-encodes it; it may be empty) and
    pass the client's answer to `receive`."""

    data: bytes = attrs.field(validator=_bytes)


@attrs.frozen(kw_only=True)
class VerifyPassword(Step):
    """The client presented a clear-text password (PLAIN, LOGIN). Check it, then call
    `accept()` or `reject()`.

    `password` is exactly what the client sent, decoded from UTF-8 and not prepared
    (no SASLprep), so it compares equal to what the user typed when the password was set.
    `authzid` is the identity the client asks to act as: empty or equal to `authcid` is an
    ordinary login; anything else is a proxy-authorization request, and the application
    must decide whether `authcid` may act as `authzid` (reject it if it does not do
    proxying).
    """

    authzid: str = attrs.field(validator=_text)
    authcid: str = attrs.field(validator=_nonempty_text)
    password: str = attrs.field(validator=_nonempty_text, repr=False)


@attrs.frozen(kw_only=True)
class NeedCredentials(Step):
    """The mechanism needs the stored secrets of `authcid` (CRAM-MD5, SCRAM). Call
    `provide(credentials)`, or `provide(None)` if there is no such user: the exchange then
    goes on so that an unknown user cannot be told from a wrong password (RFC 5802 §5.1),
    and ends in `Failure`. `authzid` as in `VerifyPassword`."""

    authcid: str = attrs.field(validator=_nonempty_text)
    authzid: str = attrs.field(validator=_text)


@attrs.frozen(kw_only=True)
class Success(Step):
    """The client proved it is `authcid`. `authzid` is what it asked to act as (see
    `VerifyPassword`; Success does not mean the application allowed proxying).

    `data` is SASL "additional data with success" (RFC 4422 §3.6): SCRAM's server-final
    message ``v=...``, which lets the client check the server. It must reach the client:
    where the protocol can carry data with its success reply, send it there; otherwise send
    it as one more challenge, expect an empty response, then report success (RFC 4954 §4).
    """

    authzid: str = attrs.field(validator=_text)
    authcid: str = attrs.field(validator=_nonempty_text)
    data: bytes | None = attrs.field(default=None, validator=_optional_bytes)


@attrs.frozen(kw_only=True)
class Failure(Step):
    """The exchange failed. `reason` is for logs; it never says whether the user exists,
    and the protocol sends its usual generic failure reply rather than this text."""

    reason: str = attrs.field(validator=_nonempty_text)


class _Awaits(enum.Enum):
    RESPONSE = "response"  # receive()
    VERDICT = "verdict"  # accept() / reject()
    CREDENTIALS = "credentials"  # provide()
    NOTHING = "nothing"  # the exchange is over


# The step a mechanism returned decides which call may come next.
_AWAITS: Final[dict[type[Step], _Awaits]] = {
    Challenge: _Awaits.RESPONSE,
    VerifyPassword: _Awaits.VERDICT,
    NeedCredentials: _Awaits.CREDENTIALS,
    Success: _Awaits.NOTHING,
    Failure: _Awaits.NOTHING,
}


class ServerMechanism(abc.ABC):
    """The server side of one authentication attempt. See the module docstring."""

    #: The registered SASL name (RFC 4422 §3.1), upper case.
    name: ClassVar[str]
    #: Whether the client may send an initial response (PLAIN, SCRAM, and LOGIN's user
    #: name; not CRAM-MD5, where the server speaks first). RFC 4954 §4 wants a 501 reply
    #: to an initial response given to a mechanism that cannot take one; the mechanism
    #: itself answers such a response with `Failure`.
    accepts_initial_response: ClassVar[bool]
    #: True if the password crosses the wire in the clear (PLAIN, LOGIN): offer these only
    #: under TLS (RFC 4616 §6, RFC 4954 §4) or where the configuration allows otherwise.
    plaintext: ClassVar[bool]

    def __init__(self) -> None:
        self._awaits = _Awaits.RESPONSE
        self._started = False
        self._verdict: VerifyPassword | None = None

    @property
    def done(self) -> bool:
        """True once the mechanism returned `Success` or `Failure`."""
        return self._awaits is _Awaits.NOTHING

    def receive(self, response: bytes | None) -> Step:
        """Feed the client's next message; None (first call only) means the client gave
        no initial response."""
        self._check(_Awaits.RESPONSE, "receive")
        if response is None and self._started:
            raise SASLError("receive(None) is only for a missing initial response")
        if response is not None and not isinstance(response, bytes):
            raise SASLError("receive() takes bytes or None")
        first, self._started = not self._started, True
        if response is not None and len(response) > MAX_MESSAGE_OCTETS:
            return self._advance(Failure(reason="client message too long"))
        try:
            step = self._receive(response, first=first)
        except Malformed as exc:
            step = Failure(reason=str(exc))
        return self._advance(step)

    def provide(self, credentials: object | None) -> Step:
        """Answer `NeedCredentials` with the user's stored secrets (the type each
        mechanism documents), or None for an unknown user."""
        self._check(_Awaits.CREDENTIALS, "provide")
        return self._advance(self._provide(credentials))

    def accept(self) -> Success:
        """Answer `VerifyPassword`: the password is right."""
        self._check(_Awaits.VERDICT, "accept")
        assert self._verdict is not None
        step = Success(authzid=self._verdict.authzid, authcid=self._verdict.authcid)
        self._verdict = None
        self._awaits = _Awaits.NOTHING
        return step

    def reject(self) -> Failure:
        """Answer `VerifyPassword`: the password is wrong or the user unknown."""
        self._check(_Awaits.VERDICT, "reject")
        self._verdict = None
        self._awaits = _Awaits.NOTHING
        return Failure(reason=AUTHENTICATION_FAILED)

    # -- for subclasses -------------------------------------------------------------

    @abc.abstractmethod
    def _receive(self, response: bytes | None, *, first: bool) -> Step:
        """Handle one client message; raise `Malformed` when it breaks the grammar."""

    def _provide(self, credentials: object | None) -> Step:
        raise SASLError(f"{self.name} never asks for credentials")  # pragma: no cover

    # -- internals ------------------------------------------------------------------

    def _check(self, wanted: _Awaits, call: str) -> None:
        if self._awaits is not wanted:
            raise SASLError(
                f"{self.name}: {call}() called while the mechanism awaits {self._awaits.value}"
            )

    def _advance(self, step: Step) -> Step:
        self._awaits = _AWAITS[type(step)]
        if isinstance(step, VerifyPassword):
            self._verdict = step
        return step


class ClientMechanism(abc.ABC):
    """The client side of one authentication attempt. See the module docstring."""

    name: ClassVar[str]
    #: True if the client sends the first message (PLAIN, SCRAM); then
    #: `initial_response()` returns it.
    client_first: ClassVar[bool]
    #: How many messages the client sends; SCRAM counts its empty answer to the
    #: server-final message, which is where the server's signature is checked.
    _turns: ClassVar[int]

    def __init__(self) -> None:
        self._turn = 0

    @property
    def complete(self) -> bool:
        """True when the client has said all it has to say and (SCRAM) has verified the
        server's signature."""
        return self._turn == self._turns

    def initial_response(self) -> bytes | None:
        """The first message, for protocols that let the client send it with the command
        (SMTP AUTH, POP3 AUTH, IMAP SASL-IR); None for server-first mechanisms. Call it at
        most once; if the protocol cannot carry it, do not call it and `respond` to the
        server's empty challenge instead (RFC 4422 §5)."""
        if not self.client_first:
            return None
        if self._turn:
            raise SASLError("the initial response was already produced")
        return self._next(None)

    def respond(self, challenge: bytes) -> bytes:
        """Answer a server challenge. Raises `RemoteSASLError` if the challenge is
        malformed, unexpected, or (SCRAM) carries a wrong server signature."""
        if not isinstance(challenge, bytes):
            raise SASLError("respond() takes bytes")
        if len(challenge) > MAX_MESSAGE_OCTETS:
            raise RemoteSASLError("server challenge too long")
        if self._turn == 0 and self.client_first:
            # RFC 4422 §5: a client-first mechanism started without an initial response
            # is opened by the server with an empty challenge.
            if challenge:
                raise RemoteSASLError(f"{self.name} expects an empty first challenge")
            return self._next(None)
        return self._next(challenge)

    def verify_server_final(self, data: bytes | None) -> None:
        """Call when the server reports success, with the additional data that came with
        it (None if none). Raises `RemoteSASLError` unless the exchange really completed:
        a server that claims success early, or (SCRAM) never proves it knows the user's
        keys, must not be believed."""
        if data:
            self.respond(data)
        if not self.complete:
            raise RemoteSASLError(
                f"{self.name}: the server reported success before the exchange completed"
            )

    def _next(self, challenge: bytes | None) -> bytes:
        if self._turn >= self._turns:
            raise RemoteSASLError(f"{self.name}: unexpected challenge after the last message")
        message = self._message(self._turn, challenge)
        self._turn += 1
        return message

    @abc.abstractmethod
    def _message(self, turn: int, challenge: bytes | None) -> bytes:
        """The client's message number `turn`; `challenge` is None for the opening
        message of a client-first mechanism."""
