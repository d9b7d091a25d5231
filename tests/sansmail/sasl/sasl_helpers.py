"""Shared helpers for the SASL tests: a tiny user store and a wired client/server pair.

`run_exchange` plays the part of a mail protocol: it carries the client's messages to the
server mechanism and back, answers `VerifyPassword` and `NeedCredentials` from the store
like an application would, and on success makes the client verify the server."""

from __future__ import annotations

import functools

from sansmail.sasl import (
    Challenge,
    ClientMechanism,
    CramMD5Credentials,
    Failure,
    NeedCredentials,
    ScramCredentials,
    ServerMechanism,
    Step,
    Success,
    VerifyPassword,
    client_mechanism,
    derive_cram_md5_credentials,
    derive_scram_credentials,
    server_mechanism,
)

PASSWORDS = {"user": "pencil", "tim": "tanstaaftanstaaf", "Kurt": "xipj3plmq"}
SALT = bytes(range(16))
FAKE_SALT_KEY = b"test fake salt key, 32 bytes!!!"


@functools.cache
def stored_credentials(
    mechanism: str, password: str
) -> ScramCredentials | CramMD5Credentials | None:
    """What a user store would keep for `password`, per mechanism (cached: PBKDF2)."""
    if mechanism == "CRAM-MD5":
        return derive_cram_md5_credentials(password)
    if mechanism.startswith("SCRAM-"):
        hash_name = "sha1" if mechanism == "SCRAM-SHA-1" else "sha256"
        return derive_scram_credentials(password, SALT, 4096, hash_name)
    return None


def make_server(name: str, nonce: str = "serverNONCE-0123456789") -> ServerMechanism:
    return server_mechanism(
        name,
        nonce=nonce,
        timestamp=697170952,
        hostname="mail.example.test",
        fake_salt_key=FAKE_SALT_KEY,
    )


def make_client(
    name: str, authcid: str = "user", password: str = "pencil", authzid: str = ""
) -> ClientMechanism:
    return client_mechanism(name, authcid, password, authzid, nonce="clientNONCE_abcdef")


def settle(server: ServerMechanism, step: Step, passwords: dict[str, str] | None = None) -> Step:
    """Answer the application's part of `step` (password check, credential lookup) the
    way a real application would, from `passwords`."""
    store = PASSWORDS if passwords is None else passwords
    if isinstance(step, VerifyPassword):
        ok = store.get(step.authcid) == step.password
        return server.accept() if ok else server.reject()
    if isinstance(step, NeedCredentials):
        password = store.get(step.authcid)
        if password is None:
            return server.provide(None)
        return server.provide(stored_credentials(server.name, password))
    return step


def run_exchange(
    client: ClientMechanism,
    server: ServerMechanism,
    passwords: dict[str, str] | None = None,
) -> tuple[Step, list[tuple[str, bytes | None]]]:
    """Wire `client` to `server`; return the final step and the transcript
    (("C", message) / ("S", challenge) pairs)."""
    transcript: list[tuple[str, bytes | None]] = []
    first = client.initial_response()
    transcript.append(("C", first))
    step = settle(server, server.receive(first), passwords)
    while isinstance(step, Challenge):
        transcript.append(("S", step.data))
        answer = client.respond(step.data)
        transcript.append(("C", answer))
        step = settle(server, server.receive(answer), passwords)
    assert isinstance(step, Success | Failure)
    assert server.done
    if isinstance(step, Success):
        transcript.append(("S", step.data))
        client.verify_server_final(step.data)
        assert client.complete
    return step, transcript
