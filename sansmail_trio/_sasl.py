"""One SASL authentication exchange, the same for SMTP AUTH, POP3 AUTH and IMAP
AUTHENTICATE: the mechanism from `sansmail.sasl`, the password checks and throttling of
the shared `AuthService`, the credentials from the user store.

Each protocol frames the exchange its own way (334 lines, ``+`` continuations), so it
passes a `challenge` coroutine: send these bytes as a challenge, return the client's
decoded answer, or None when the client cancelled, sent something undecodable or went
away (the protocol keeps that event and answers it itself). The caller has already asked
`AuthService.begin` whether this client may try and waited out its delay; on failure it
logs and waits the delay `AuthService.record` returned (`Outcome.delay`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable

import attrs
import trio

from sansmail import sasl
from sansmail.mail.auth import AuthService, authzid_allowed, login_key
from sansmail.storage.users import UserStore

__all__ = ["Outcome", "run_exchange"]


@attrs.frozen
class Outcome:
    """How the exchange ended: `user` (the login key) on success; `interrupted` when the
    client cancelled or left (nothing recorded, the protocol answers); otherwise a failure
    already recorded with the auth service, to be answered after `delay` seconds."""

    mechanism: str
    user: str | None = None
    authcid: str = ""
    interrupted: bool = False
    delay: float = 0.0
    #: A server-first mechanism (CRAM-MD5) got an initial response: each protocol
    #: refuses that with its own error (RFC 4954 §4, RFC 5034 §4, RFC 4959 §3).
    unexpected_initial_response: bool = False


async def run_exchange(
    *,
    mechanism: str,
    initial_response: bytes | None,
    auth: AuthService,
    users: UserStore,
    hostname: str,
    client_ip: str,
    challenge: Callable[[bytes], Awaitable[bytes | None]],
) -> Outcome:
    """Run `mechanism` to its end (see the module docstring)."""
    mech = sasl.server_mechanism(
        mechanism,
        nonce=secrets.token_urlsafe(18),
        timestamp=int(time.time()),
        hostname=hostname,
        fake_salt_key=users.scram_secret(),
        fake_iterations=users.scram_iterations,
    )
    if initial_response is not None and not mech.accepts_initial_response:
        return Outcome(mech.name, unexpected_initial_response=True)
    authcid = ""
    attempt: bytes | None = None
    step = mech.receive(initial_response)
    while True:
        if isinstance(step, sasl.Challenge):
            answer = await challenge(step.data)
            if answer is None:
                return Outcome(mech.name, authcid=authcid, interrupted=True)
            step = mech.receive(answer)
        elif isinstance(step, sasl.VerifyPassword):
            authcid = step.authcid
            key = login_key(step.authcid)
            attempt = auth.attempt_id(key, step.password)
            ok = await trio.to_thread.run_sync(auth.verify_password, key, step.password)
            ok = ok and authzid_allowed(step.authzid, key)
            step = mech.accept() if ok else mech.reject()
        elif isinstance(step, sasl.NeedCredentials):
            authcid = step.authcid
            key = login_key(step.authcid)
            credentials: sasl.ScramCredentials | sasl.CramMD5Credentials | None
            if mech.name == "CRAM-MD5":
                credentials = users.get_cram_md5(key)
            else:
                hash_name = "sha1" if mech.name == "SCRAM-SHA-1" else "sha256"
                credentials = users.get_scram(key, hash_name)
            # SCRAM's unknown-user path derives fake keys: keep it off the loop.
            step = await trio.to_thread.run_sync(mech.provide, credentials)
        else:
            break
    if isinstance(step, sasl.Success):
        key = login_key(step.authcid)
        if key and not (step.authzid and not authzid_allowed(step.authzid, key)):
            auth.record(client_ip, True, trio.current_time())
            if step.data:
                # None of the three protocols carries data with its success reply: the
                # server's last SASL message is one more challenge, answered empty
                # (RFC 4954 §4, RFC 5034 §4, RFC 9051 §6.2.2).
                answer = await challenge(step.data)
                if answer is None or answer:
                    return Outcome(mech.name, authcid=authcid, interrupted=True)
            return Outcome(mech.name, user=key, authcid=authcid)
    delay = auth.record(client_ip, False, trio.current_time(), attempt=attempt)
    return Outcome(mech.name, authcid=authcid, delay=delay)
