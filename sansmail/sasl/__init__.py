"""SASL mechanisms (RFC 4422) as tiny sans-I/O state machines over raw bytes.
No I/O, no clock, no randomness: nonces, timestamps and stored credentials are arguments.

SMTP AUTH (RFC 4954), POP3 AUTH (RFC 5034) and IMAP AUTHENTICATE (RFC 9051) share these;
each protocol does its own framing (``334 ``, ``+ ``, ``*`` to cancel) and base64, for
which `decode_base64_strict` and `encode_base64` are provided.

Server side, one object per attempt::

    mech = server_mechanism("SCRAM-SHA-256", nonce=..., fake_salt_key=...)
    step = mech.receive(initial_response)          # None if the client gave none
    while True:
        match step:
            case Challenge(data=data):             # send it, read the answer
                step = mech.receive(answer)
            case VerifyPassword():                 # PLAIN, LOGIN: check the password
                step = mech.accept() if ok else mech.reject()
            case NeedCredentials(authcid=user):    # CRAM-MD5, SCRAM: look up the keys
                step = mech.provide(keys_or_none)
            case Success() | Failure():
                break

Client side: ``client_mechanism(name, authcid, password, authzid, nonce=...)``, then
`initial_response()`, `respond(challenge)` for each challenge, and
`verify_server_final(data)` when the server reports success.

Mechanisms: PLAIN (RFC 4616), LOGIN (draft-murchison-sasl-login), CRAM-MD5 (RFC 2195),
SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677; no channel binding). Nonces, timestamps
and secrets are arguments: nothing here reads a clock or draws random numbers.
"""

from sansmail.sasl._b64 import decode_base64_strict, encode_base64
from sansmail.sasl._base import (
    MAX_MESSAGE_OCTETS,
    Challenge,
    ClientMechanism,
    Failure,
    NeedCredentials,
    RemoteSASLError,
    SASLError,
    ServerMechanism,
    Step,
    Success,
    VerifyPassword,
)
from sansmail.sasl._cram_md5 import (
    CramMD5Client,
    CramMD5Credentials,
    CramMD5Server,
    derive_cram_md5_credentials,
)
from sansmail.sasl._login import LoginClient, LoginServer
from sansmail.sasl._plain import PlainClient, PlainServer
from sansmail.sasl._registry import (
    CLIENT_MECHANISMS,
    MECHANISM_NAMES,
    SERVER_MECHANISMS,
    client_mechanism,
    server_mechanism,
    server_mechanisms,
)
from sansmail.sasl._saslprep import saslprep
from sansmail.sasl._scram import (
    SCRAM_MIN_ITERATIONS,
    ScramCredentials,
    ScramSHA1Client,
    ScramSHA1Server,
    ScramSHA256Client,
    ScramSHA256Server,
    derive_scram_credentials,
)

__all__ = [
    "CLIENT_MECHANISMS",
    "MAX_MESSAGE_OCTETS",
    "MECHANISM_NAMES",
    "SCRAM_MIN_ITERATIONS",
    "SERVER_MECHANISMS",
    "Challenge",
    "ClientMechanism",
    "CramMD5Client",
    "CramMD5Credentials",
    "CramMD5Server",
    "Failure",
    "LoginClient",
    "LoginServer",
    "NeedCredentials",
    "PlainClient",
    "PlainServer",
    "RemoteSASLError",
    "SASLError",
    "ScramCredentials",
    "ScramSHA1Client",
    "ScramSHA1Server",
    "ScramSHA256Client",
    "ScramSHA256Server",
    "ServerMechanism",
    "Step",
    "Success",
    "VerifyPassword",
    "client_mechanism",
    "decode_base64_strict",
    "derive_cram_md5_credentials",
    "derive_scram_credentials",
    "encode_base64",
    "saslprep",
    "server_mechanism",
    "server_mechanisms",
]
