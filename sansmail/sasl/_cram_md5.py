"""CRAM-MD5 (RFC 2195): the client proves it knows a shared secret by keyed hashing.

    S: <nonce.timestamp@hostname>                       (an RFC 822 msg-id, RFC 2195 §2)
    C: user SP hex(HMAC-MD5(secret, challenge))

The server speaks first, so an initial response is refused (RFC 4954 §4). The challenge is
built from a caller-given nonce and timestamp (the core reads no clock and draws no random
numbers); its uniqueness is what stops replay, so the nonce must be fresh and
unpredictable for every attempt.

What the server stores. HMAC-MD5 needs the secret only through the MD5 states after one
block of key XOR ipad and one of key XOR opad (RFC 2104 §4 notes this precomputation), so
`CramMD5Credentials` holds those two 16-byte states, as Dovecot's ``CRAM-MD5`` password
scheme does (`to_hex` / `from_hex` use Dovecot's layout). The states do not reveal the
password, but they are password-equivalent *for CRAM-MD5*: whoever steals them can log in
with this mechanism. That, and MD5, is why CRAM-MD5 is opt-in in sansmail.
"""

from __future__ import annotations

import hmac
import re
from typing import Any, ClassVar, Final

import attrs

from sansmail.sasl import _md5
from sansmail.sasl._base import (
    AUTHENTICATION_FAILED,
    Challenge,
    ClientMechanism,
    Failure,
    Malformed,
    NeedCredentials,
    RemoteSASLError,
    SASLError,
    ServerMechanism,
    Step,
    Success,
)
from sansmail.sasl._fields import check_identity, decode_field

__all__ = [
    "CramMD5Client",
    "CramMD5Credentials",
    "CramMD5Server",
    "derive_cram_md5_credentials",
]

_IPAD: Final = 0x36  # RFC 2104 §2
_OPAD: Final = 0x5C
# RFC 5322 §3.2.3 dot-atom-text: what the local part and the domain of a msg-id may be.
_DOT_ATOM: Final = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
)
_DIGEST: Final = re.compile(rb"[0-9a-fA-F]{32}")


def _state(_inst: Any, attribute: attrs.Attribute[Any], value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != 16:
        raise SASLError(f"{attribute.name} must be 16 bytes (an MD5 state)")


@attrs.frozen(kw_only=True)
class CramMD5Credentials:
    """What the server keeps for CRAM-MD5: the MD5 states after the HMAC inner (key XOR
    ipad) and outer (key XOR opad) key blocks, 16 bytes each. Build them with
    `derive_cram_md5_credentials`."""

    inner: bytes = attrs.field(validator=_state, repr=False)
    outer: bytes = attrs.field(validator=_state, repr=False)

    def to_hex(self) -> str:
        """64 hex digits in Dovecot's ``{CRAM-MD5}`` layout: outer state, then inner."""
        return (self.outer + self.inner).hex()

    @classmethod
    def from_hex(cls, text: str) -> CramMD5Credentials:
        """Inverse of `to_hex`; reads what Dovecot's ``doveadm pw -s CRAM-MD5`` prints
        (without the ``{CRAM-MD5}`` prefix). Raises `SASLError` if it is not 64 hex digits."""
        if len(text) != 64:
            raise SASLError("CRAM-MD5 credentials are 64 hex digits")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise SASLError("CRAM-MD5 credentials are 64 hex digits") from None
        return cls(outer=raw[:16], inner=raw[16:])


def derive_cram_md5_credentials(password: str) -> CramMD5Credentials:
    """The CRAM-MD5 credentials for `password` (its UTF-8 bytes are the shared secret)."""
    check_identity(password, "password")
    key = password.encode()
    if len(key) > _md5.BLOCK:
        # RFC 2104 §2 (and RFC 2195 §2): a longer key is replaced by its digest.
        key = _md5.resume(_md5.IV, key, 0)
    key = key.ljust(_md5.BLOCK, b"\0")
    return CramMD5Credentials(
        inner=_md5.state_to_bytes(_md5.compress(_md5.IV, bytes(b ^ _IPAD for b in key))),
        outer=_md5.state_to_bytes(_md5.compress(_md5.IV, bytes(b ^ _OPAD for b in key))),
    )


def _hmac_from_states(credentials: CramMD5Credentials, message: bytes) -> bytes:
    # HMAC = H(K^opad || H(K^ipad || message)); each H resumes after its one key block.
    inner = _md5.resume(_md5.state_from_bytes(credentials.inner), message, _md5.BLOCK)
    return _md5.resume(_md5.state_from_bytes(credentials.outer), inner, _md5.BLOCK)


class CramMD5Server(ServerMechanism):
    """Server side of CRAM-MD5. Steps: `Challenge(b"<nonce.timestamp@hostname>")`,
    `NeedCredentials`, then after `provide(CramMD5Credentials | None)`: `Success` or
    `Failure`.

    `nonce` and `hostname` must be dot-atoms (letters, digits, ``!#$%&'*+/=?^_`{|}~-`` and
    inner dots); `timestamp` is the caller's clock, an integer >= 0.
    """

    name: ClassVar[str] = "CRAM-MD5"
    accepts_initial_response: ClassVar[bool] = False
    plaintext: ClassVar[bool] = False

    def __init__(self, *, nonce: str, timestamp: int, hostname: str) -> None:
        super().__init__()
        if not isinstance(nonce, str) or _DOT_ATOM.fullmatch(nonce) is None:
            raise SASLError("CRAM-MD5 nonce must be a non-empty dot-atom")
        if not isinstance(hostname, str) or _DOT_ATOM.fullmatch(hostname) is None:
            raise SASLError("CRAM-MD5 hostname must be a dot-atom")
        if not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp < 0:
            raise SASLError("CRAM-MD5 timestamp must be an integer >= 0")
        self.challenge = f"<{nonce}.{timestamp}@{hostname}>".encode("ascii")
        self._username = ""
        self._digest = b""

    def _receive(self, response: bytes | None, *, first: bool) -> Step:
        if first:
            if response is not None:
                raise Malformed("CRAM-MD5 takes no initial response")
            return Challenge(data=self.challenge)
        assert response is not None
        # RFC 2195 §2: the user name, a space, and the digest as 32 hex digits (either
        # case: we compare the 16 octets). The name may contain spaces: split at the last.
        username, space, digest = response.rpartition(b" ")
        if not space or _DIGEST.fullmatch(digest) is None:
            raise Malformed("CRAM-MD5 response is not 'user SP 32-hex-digest'")
        self._username = decode_field(username, "user name")
        self._digest = bytes.fromhex(digest.decode("ascii"))
        return NeedCredentials(authcid=self._username, authzid="")

    def _provide(self, credentials: object | None) -> Step:
        if credentials is not None and not isinstance(credentials, CramMD5Credentials):
            raise SASLError("CRAM-MD5 needs CramMD5Credentials or None")
        # An unknown user costs the same work as a known one.
        known = credentials is not None
        keys = credentials if credentials is not None else _UNKNOWN_USER
        expected = _hmac_from_states(keys, self.challenge)
        if hmac.compare_digest(expected, self._digest) and known:
            return Success(authzid="", authcid=self._username)
        return Failure(reason=AUTHENTICATION_FAILED)


_UNKNOWN_USER: Final = CramMD5Credentials(inner=bytes(16), outer=bytes(16))


class CramMD5Client(ClientMechanism):
    """Client side of CRAM-MD5: one answer to the server's challenge."""

    name: ClassVar[str] = "CRAM-MD5"
    client_first: ClassVar[bool] = False
    _turns: ClassVar[int] = 1

    def __init__(self, *, authcid: str, password: str) -> None:
        super().__init__()
        check_identity(authcid, "authcid")
        check_identity(password, "password")
        self._authcid = authcid.encode()
        self._secret = password.encode()

    def _message(self, turn: int, challenge: bytes | None) -> bytes:
        if not challenge:
            raise RemoteSASLError("CRAM-MD5 needs a non-empty challenge")
        digest = hmac.new(self._secret, challenge, "md5").hexdigest()
        return self._authcid + b" " + digest.encode("ascii")
