"""SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677), without channel binding.

Theory of operation
-------------------
SCRAM proves, in four messages, that the client knows the password and the server knows
the user's keys, without either side sending anything a listener could replay:

    C: n,[a=authzid],n=user,r=cnonce                           client-first
    S: r=cnonce+snonce,s=base64(salt),i=iterations             server-first
    C: c=base64(gs2-header),r=cnonce+snonce,p=base64(proof)    client-final
    S: v=base64(server-signature)                              server-final

with (RFC 5802 §3), H the hash and HMAC keyed by its first argument:

    SaltedPassword  = PBKDF2(SASLprep(password), salt, iterations)      ("Hi")
    ClientKey       = HMAC(SaltedPassword, "Client Key");  StoredKey = H(ClientKey)
    ServerKey       = HMAC(SaltedPassword, "Server Key")
    AuthMessage     = client-first-bare "," server-first "," client-final-without-proof
    ClientProof     = ClientKey XOR HMAC(StoredKey, AuthMessage)
    ServerSignature = HMAC(ServerKey, AuthMessage)

The server stores only (salt, iterations, StoredKey, ServerKey): `ScramCredentials`. It
recovers ClientKey from the proof, checks H(ClientKey) == StoredKey in constant time, and
answers with ServerSignature, which the client must check (a client that does not is
talking to anyone). The server nonce is caller-given and must be fresh and unpredictable:
it is what makes a recorded client-final useless against a later exchange.

Unknown users (RFC 5802 §5.1). After client-first the application is asked for the user's
credentials; `provide(None)` makes the server answer with a salt derived from the user name
and a server secret (`fake_salt_key`) and the usual iteration count, so the reply looks like
a real one and is the same every time the name is tried; the exchange then fails at the
proof like a wrong password would.

Channel binding. We never offer the -PLUS variants, so a gs2 header asking for binding
(``p=``) is refused, and ``y`` ("I could bind, but you don't offer it") is accepted: it is
true, so it signals no downgrade (RFC 5802 §6). The ``m=`` attribute, reserved for
mandatory extensions, fails the exchange wherever it appears (RFC 5802 §5.1).

User names are passed through as sent (after ``=2C``/``=3D`` unescaping, RFC 5802 §5.1) and
not SASLprep'd: here they are mail addresses that the user store normalises itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any, ClassVar, Final

import attrs

from sansmail.sasl._b64 import decode_base64_text, encode_base64
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
from sansmail.sasl._saslprep import saslprep

__all__ = [
    "SCRAM_MIN_ITERATIONS",
    "ScramCredentials",
    "ScramSHA1Client",
    "ScramSHA1Server",
    "ScramSHA256Client",
    "ScramSHA256Server",
    "derive_scram_credentials",
]

#: The least iteration count accepted for stored credentials and, by default, from a
#: server (RFC 5802 §5.1 and RFC 7677 §4: "at least 4096").
SCRAM_MIN_ITERATIONS: Final = 4096
#: A client's default ceiling: a hostile server could otherwise make it spin for hours.
_CLIENT_MAX_ITERATIONS: Final = 1_000_000
#: Length of the salts invented for unknown users; stores should use the same length so
#: real and invented salts look alike.
_FAKE_SALT_OCTETS: Final = 16

_DIGEST_SIZES: Final = {"sha1": 20, "sha256": 32}

# RFC 5802 §7 grammar.
_PRINTABLE: Final = re.compile(r"[\x21-\x2b\x2d-\x7e]+")  # printable ASCII except ","
_SASLNAME: Final = re.compile(r"(?:[^=,]|=2C|=3D)+")
_POSIT_NUMBER: Final = re.compile(r"[1-9][0-9]{0,9}")


def _hmac(hash_name: str, key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hash_name).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _salted_password(hash_name: str, password: str, salt: bytes, iterations: int) -> bytes:
    # RFC 5802 §2.2: Normalize() is SASLprep with the password as a "stored string".
    prepared = saslprep(password)
    if not prepared:
        raise SASLError("the password is empty after SASLprep")
    # Hi() is PBKDF2 with HMAC-H and a single block of output (RFC 5802 §2.2).
    return hashlib.pbkdf2_hmac(hash_name, prepared.encode(), salt, iterations)


def _escape(name: str) -> str:
    # RFC 5802 §5.1: "=" and "," in a saslname are sent as "=3D" and "=2C".
    return name.replace("=", "=3D").replace(",", "=2C")


def _unescape(text: str, what: str) -> str:
    if _SASLNAME.fullmatch(text) is None:
        # Also catches "=" followed by anything else, which MUST fail (RFC 5802 §5.1).
        raise Malformed(f"malformed {what}")
    return re.sub("=(2C|3D)", lambda m: "," if m.group(1) == "2C" else "=", text)


def _attributes(text: str, what: str) -> list[tuple[str, str]]:
    """Split ``a=value,b=value`` (RFC 5802 §7 attr-val, value = 1*value-char)."""
    pairs = []
    for part in text.split(","):
        if len(part) < 3 or part[1] != "=" or not ("a" <= part[0].lower() <= "z"):
            raise Malformed(f"malformed attribute in {what}")
        if part[0] == "m":
            raise Malformed(f"{what} demands an unsupported mandatory extension (m=)")
        pairs.append((part[0], part[2:]))
    return pairs


def _expect(pairs: list[tuple[str, str]], names: str, what: str) -> list[str]:
    """The values of the leading attributes, which must be `names` in that order; any
    later attributes are extensions, ignored."""
    if [key for key, _ in pairs[: len(names)]] != list(names):
        raise Malformed(f"{what} must start with {', '.join(n + '=' for n in names)}")
    return [value for _, value in pairs[: len(names)]]


def _check_nonce(nonce: str) -> None:
    if not isinstance(nonce, str) or _PRINTABLE.fullmatch(nonce) is None:
        raise SASLError("a SCRAM nonce is printable ASCII without ','")


def _key_sizes(_inst: Any, attribute: attrs.Attribute[Any], value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) not in _DIGEST_SIZES.values():
        raise SASLError(f"{attribute.name} must be a SHA-1 or SHA-256 digest")


def _check_salt(value: bytes) -> None:
    if not isinstance(value, bytes) or not value:
        raise SASLError("salt must be non-empty bytes")


def _check_iterations(value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < SCRAM_MIN_ITERATIONS:
        raise SASLError(f"iterations must be an integer >= {SCRAM_MIN_ITERATIONS}")


@attrs.frozen(kw_only=True)
class ScramCredentials:
    """What the server keeps for SCRAM (RFC 5802 §3): never the password. `stored_key` and
    `server_key` are digests of the mechanism's hash (20 bytes for SHA-1, 32 for SHA-256).
    Build them with `derive_scram_credentials`."""

    salt: bytes = attrs.field(validator=lambda _i, _a, v: _check_salt(v))
    iterations: int = attrs.field(validator=lambda _i, _a, v: _check_iterations(v))
    stored_key: bytes = attrs.field(validator=_key_sizes, repr=False)
    server_key: bytes = attrs.field(validator=_key_sizes, repr=False)

    def __attrs_post_init__(self) -> None:
        if len(self.stored_key) != len(self.server_key):
            raise SASLError("stored_key and server_key come from different hashes")


def derive_scram_credentials(
    password: str, salt: bytes, iterations: int, hash_name: str
) -> ScramCredentials:
    """The SCRAM credentials for `password`. `hash_name` is ``"sha1"`` (SCRAM-SHA-1) or
    ``"sha256"`` (SCRAM-SHA-256); `salt` should be 16 fresh random bytes per user and hash;
    `iterations` at least `SCRAM_MIN_ITERATIONS`. CPU-bound (PBKDF2): run it off the event
    loop. Raises `SASLError` for a password SASLprep refuses (RFC 4013 §2.3: control
    characters, unassigned code points ...)."""
    if hash_name not in _DIGEST_SIZES:
        raise SASLError(f"hash_name must be one of {sorted(_DIGEST_SIZES)}")
    check_identity(password, "password")
    _check_salt(salt)
    _check_iterations(iterations)
    salted = _salted_password(hash_name, password, salt, iterations)
    client_key = _hmac(hash_name, salted, b"Client Key")
    return ScramCredentials(
        salt=salt,
        iterations=iterations,
        stored_key=hashlib.new(hash_name, client_key).digest(),
        server_key=_hmac(hash_name, salted, b"Server Key"),
    )


class _ScramServer(ServerMechanism):
    """Server side of SCRAM. Steps: [`Challenge(b"")`,] `NeedCredentials`, after
    `provide(ScramCredentials | None)` `Challenge(server-first)`, then `Success` with the
    server-final message as `data`, or `Failure`.

    `nonce` is this attempt's server nonce (printable ASCII without ``,``; at least 16
    random bytes' worth, e.g. ``secrets.token_urlsafe(18)``). `fake_salt_key` is a
    server-wide secret of at least 16 bytes, stable across restarts, from which salts for
    unknown users are derived; `fake_iterations` should match what the store uses.
    """

    _hash: ClassVar[str]
    accepts_initial_response: ClassVar[bool] = True
    plaintext: ClassVar[bool] = False

    def __init__(
        self,
        *,
        nonce: str,
        fake_salt_key: bytes,
        fake_iterations: int = SCRAM_MIN_ITERATIONS,
    ) -> None:
        super().__init__()
        _check_nonce(nonce)
        if not isinstance(fake_salt_key, bytes) or len(fake_salt_key) < 16:
            raise SASLError("fake_salt_key must be at least 16 bytes")
        _check_iterations(fake_iterations)
        self._server_nonce = nonce
        self._fake_salt_key = fake_salt_key
        self._fake_iterations = fake_iterations
        self._digest_size = _DIGEST_SIZES[self._hash]
        # Filled in by client-first, then by provide().
        self._gs2_header = ""
        self._client_first_bare = ""
        self._nonce = ""
        self._authcid = ""
        self._authzid = ""
        self._server_first: str | None = None
        # The keys the proof is checked against: the user's, or invented ones (_known
        # False) so that an unknown user costs the same work and fails the same way.
        self._keys: ScramCredentials | None = None
        self._known = False

    def _receive(self, response: bytes | None, *, first: bool) -> Step:
        if response is None:
            return Challenge(data=b"")  # RFC 4422 §5: ask for client-first
        if self._server_first is None:
            return self._on_client_first(response)
        return self._on_client_final(response)

    def _on_client_first(self, response: bytes) -> Step:
        text = decode_field(response, "client-first message")
        # gs2-header = gs2-cbind-flag "," [authzid] ","  (RFC 5802 §7)
        flag, comma1, rest = text.partition(",")
        authz, comma2, bare = rest.partition(",")
        if not (comma1 and comma2):
            raise Malformed("client-first message has no gs2 header")
        if flag.startswith("p="):
            raise Malformed("channel binding requested, but no -PLUS mechanism is offered")
        if flag not in ("n", "y"):
            raise Malformed("bad gs2-cbind-flag")
        authzid = ""
        if authz:
            if not authz.startswith("a="):
                raise Malformed("bad authzid in gs2 header")
            authzid = _unescape(authz[2:], "authzid")
        username, client_nonce = _expect(
            _attributes(bare, "client-first message"), "nr", "client-first message"
        )
        authcid = _unescape(username, "user name")
        if _PRINTABLE.fullmatch(client_nonce) is None:
            raise Malformed("bad client nonce")
        self._gs2_header = f"{flag},{authz},"
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        self._authcid, self._authzid = authcid, authzid
        return NeedCredentials(authcid=authcid, authzid=authzid)

    def _provide(self, credentials: object | None) -> Step:
        if credentials is None:
            keys = self._fake_credentials()
        elif not isinstance(credentials, ScramCredentials):
            raise SASLError(f"{self.name} needs ScramCredentials or None")
        elif len(credentials.stored_key) != self._digest_size:
            raise SASLError(f"these ScramCredentials are not for {self.name}")
        else:
            keys = credentials
        self._keys, self._known = keys, credentials is not None
        self._server_first = (
            f"r={self._nonce},s={encode_base64(keys.salt).decode('ascii')},i={keys.iterations}"
        )
        return Challenge(data=self._server_first.encode("ascii"))

    def _fake_credentials(self) -> ScramCredentials:
        # The same user name always gets the same salt, which only the holder of
        # fake_salt_key can compute: a repeated probe sees nothing change (unlike a random
        # salt), and the salt cannot be recognised as invented.
        label = b"\0".join(
            [b"sansmail-scram-fake-salt", self._hash.encode(), self._authcid.encode()]
        )
        salt = _hmac("sha256", self._fake_salt_key, label)[:_FAKE_SALT_OCTETS]
        key = bytes(self._digest_size)
        return ScramCredentials(
            salt=salt, iterations=self._fake_iterations, stored_key=key, server_key=key
        )

    def _on_client_final(self, response: bytes) -> Step:
        text = decode_field(response, "client-final message")
        # client-final = c=... "," r=... ["," extensions] "," p=...   (RFC 5802 §7)
        without_proof, comma, proof_text = text.rpartition(",p=")
        if not comma:
            raise Malformed("client-final message has no proof")
        pairs = _attributes(without_proof, "client-final message")
        channel_binding, nonce = _expect(pairs, "cr", "client-final message")
        try:
            binding = decode_base64_text(channel_binding)
            proof = decode_base64_text(proof_text)
        except RemoteSASLError:
            raise Malformed("client-final message has bad base64") from None
        # Without channel binding, c= carries the gs2 header back unchanged (§7 cbind-input),
        # which detects a gs2 header altered in transit.
        if binding != self._gs2_header.encode():
            raise Malformed("channel binding data does not match the gs2 header")
        # A client-final recorded from another exchange carries that exchange's nonce.
        if nonce != self._nonce:
            raise Malformed("nonce does not match this exchange")
        if len(proof) != self._digest_size:
            raise Malformed("client proof has the wrong length")
        keys = self._keys
        assert keys is not None
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        client_key = _xor(proof, _hmac(self._hash, keys.stored_key, auth_message))
        stored_key = hashlib.new(self._hash, client_key).digest()
        if hmac.compare_digest(stored_key, keys.stored_key) and self._known:
            signature = _hmac(self._hash, keys.server_key, auth_message)
            return Success(
                authzid=self._authzid,
                authcid=self._authcid,
                data=b"v=" + encode_base64(signature),
            )
        return Failure(reason=AUTHENTICATION_FAILED)


class _ScramClient(ClientMechanism):
    """Client side of SCRAM: client-first (the initial response), client-final in answer
    to server-first, then an empty answer to server-final once its signature checks out.
    If the server-final message arrives with the success reply instead, pass it to
    `verify_server_final`.

    `nonce` is this attempt's client nonce (printable ASCII without ``,``; fresh and
    unpredictable). A server asking for fewer than `min_iterations` or more than
    `max_iterations` is refused: fewer makes a captured exchange cheap to brute-force, more
    could stall the client. Answering server-first runs PBKDF2 (CPU-bound).
    """

    _hash: ClassVar[str]
    client_first: ClassVar[bool] = True
    _turns: ClassVar[int] = 3

    def __init__(
        self,
        *,
        authcid: str,
        password: str,
        authzid: str = "",
        nonce: str,
        min_iterations: int = SCRAM_MIN_ITERATIONS,
        max_iterations: int = _CLIENT_MAX_ITERATIONS,
    ) -> None:
        super().__init__()
        check_identity(authcid, "authcid")
        check_identity(authzid, "authzid", allow_empty=True)
        check_identity(password, "password")
        _check_nonce(nonce)
        if not 1 <= min_iterations <= max_iterations:
            raise SASLError("need 1 <= min_iterations <= max_iterations")
        prepared = saslprep(password)  # fail now rather than mid-exchange
        if not prepared:
            raise SASLError("the password is empty after SASLprep")
        self._password = password
        self._client_nonce = nonce
        self._bounds = (min_iterations, max_iterations)
        # We cannot bind to the channel, so "n" (RFC 5802 §6), never "y" or "p=".
        self._gs2_header = "n," + (f"a={_escape(authzid)}" if authzid else "") + ","
        self._client_first_bare = f"n={_escape(authcid)},r={nonce}"
        self._server_signature = b""

    def _message(self, turn: int, challenge: bytes | None) -> bytes:
        try:
            if turn == 0:
                return (self._gs2_header + self._client_first_bare).encode()
            assert challenge is not None
            if turn == 1:
                return self._client_final(challenge)
            self._check_server_final(challenge)
            return b""
        except Malformed as exc:
            raise RemoteSASLError(str(exc)) from None

    def _client_final(self, challenge: bytes) -> bytes:
        server_first = decode_field(challenge, "server-first message")
        pairs = _attributes(server_first, "server-first message")
        nonce, salt_text, count = _expect(pairs, "rsi", "server-first message")
        # The server must extend our nonce with its own (RFC 5802 §5.1 r=).
        if (
            not nonce.startswith(self._client_nonce)
            or len(nonce) == len(self._client_nonce)
            or _PRINTABLE.fullmatch(nonce) is None
        ):
            raise Malformed("the server nonce does not extend the client nonce")
        salt = decode_base64_text(salt_text)
        if not salt:
            raise Malformed("empty salt")
        if _POSIT_NUMBER.fullmatch(count) is None:
            raise Malformed("bad iteration count")
        iterations = int(count)
        low, high = self._bounds
        if not low <= iterations <= high:
            raise RemoteSASLError(f"iteration count {iterations} outside {low}..{high}")
        salted = _salted_password(self._hash, self._password, salt, iterations)
        client_key = _hmac(self._hash, salted, b"Client Key")
        stored_key = hashlib.new(self._hash, client_key).digest()
        binding = encode_base64(self._gs2_header.encode()).decode("ascii")
        without_proof = f"c={binding},r={nonce}"
        auth_message = f"{self._client_first_bare},{server_first},{without_proof}".encode()
        proof = _xor(client_key, _hmac(self._hash, stored_key, auth_message))
        server_key = _hmac(self._hash, salted, b"Server Key")
        self._server_signature = _hmac(self._hash, server_key, auth_message)
        return f"{without_proof},p={encode_base64(proof).decode('ascii')}".encode()

    def _check_server_final(self, challenge: bytes) -> None:
        server_final = decode_field(challenge, "server-final message")
        key, value = _attributes(server_final, "server-final message")[0]
        if key == "e":
            # RFC 5802 §7 server-error: a short token; keep it printable for logs.
            token = "".join(ch for ch in value[:64] if ch.isprintable())
            raise RemoteSASLError(f"the server reported an error: {token}")
        if key != "v":
            raise Malformed("server-final message must start with v= or e=")
        if not hmac.compare_digest(decode_base64_text(value), self._server_signature):
            raise RemoteSASLError("wrong server signature: the server does not know our keys")


class ScramSHA1Server(_ScramServer):
    __doc__ = _ScramServer.__doc__
    name: ClassVar[str] = "SCRAM-SHA-1"
    _hash: ClassVar[str] = "sha1"


class ScramSHA256Server(_ScramServer):
    __doc__ = _ScramServer.__doc__
    name: ClassVar[str] = "SCRAM-SHA-256"
    _hash: ClassVar[str] = "sha256"


class ScramSHA1Client(_ScramClient):
    __doc__ = _ScramClient.__doc__
    name: ClassVar[str] = "SCRAM-SHA-1"
    _hash: ClassVar[str] = "sha1"


class ScramSHA256Client(_ScramClient):
    __doc__ = _ScramClient.__doc__
    name: ClassVar[str] = "SCRAM-SHA-256"
    _hash: ClassVar[str] = "sha256"
