"""Mechanism names to classes, and the two factories the protocols call.

Names are compared case-insensitively and reported in their registered upper-case form
(RFC 4422 §3.1). There is deliberately no ANONYMOUS: a mail server has no use for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Final, TypeVar

from sansmail.sasl._base import ClientMechanism, SASLError, ServerMechanism
from sansmail.sasl._cram_md5 import CramMD5Client, CramMD5Server
from sansmail.sasl._login import LoginClient, LoginServer
from sansmail.sasl._plain import PlainClient, PlainServer
from sansmail.sasl._scram import (
    SCRAM_MIN_ITERATIONS,
    ScramSHA1Client,
    ScramSHA1Server,
    ScramSHA256Client,
    ScramSHA256Server,
)

__all__ = [
    "CLIENT_MECHANISMS",
    "MECHANISM_NAMES",
    "SERVER_MECHANISMS",
    "client_mechanism",
    "server_mechanism",
    "server_mechanisms",
]

_T = TypeVar("_T")

#: Every mechanism sansmail implements, strongest first (a sensible order to advertise).
MECHANISM_NAMES: Final = ("SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "PLAIN", "LOGIN")

SERVER_MECHANISMS: Final[Mapping[str, type[ServerMechanism]]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (ScramSHA256Server, ScramSHA1Server, CramMD5Server, PlainServer, LoginServer)
    }
)
CLIENT_MECHANISMS: Final[Mapping[str, type[ClientMechanism]]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (ScramSHA256Client, ScramSHA1Client, CramMD5Client, PlainClient, LoginClient)
    }
)


def _canonical(name: str) -> str:
    if not isinstance(name, str) or name.upper() not in SERVER_MECHANISMS:
        raise SASLError(f"unknown SASL mechanism {name!r}; known: {', '.join(MECHANISM_NAMES)}")
    return name.upper()


def server_mechanisms(enabled: Sequence[str]) -> tuple[str, ...]:
    """Validate a configured list of mechanism names (``[smtp] auth_mechanisms``): their
    canonical names, in the given order, duplicates dropped. Raises `SASLError` naming an
    unknown mechanism."""
    if isinstance(enabled, str):
        raise SASLError("expected a list of mechanism names, not one string")
    return tuple(dict.fromkeys(_canonical(name) for name in enabled))


def _need(value: _T | None, what: str, name: str) -> _T:
    if value is None:
        raise SASLError(f"{name} needs {what}")
    return value


def server_mechanism(
    name: str,
    *,
    nonce: str | None = None,
    timestamp: int | None = None,
    hostname: str | None = None,
    fake_salt_key: bytes | None = None,
    fake_iterations: int = SCRAM_MIN_ITERATIONS,
) -> ServerMechanism:
    """A fresh server mechanism for one attempt (`name` case-insensitive).

    A protocol can pass the same arguments whatever the mechanism; each takes what it
    needs: CRAM-MD5 `nonce`, `timestamp` (the caller's clock) and `hostname`; SCRAM
    `nonce`, `fake_salt_key` and `fake_iterations` (see `ScramSHA256Server`); PLAIN and
    LOGIN nothing. `nonce` must be fresh and unpredictable for each attempt, made of
    letters, digits, ``-`` and ``_`` (``secrets.token_urlsafe(18)`` fits every mechanism).
    Raises `SASLError` for an unknown name or a missing argument.
    """
    canonical = _canonical(name)
    builders: dict[str, Callable[[], ServerMechanism]] = {
        "PLAIN": PlainServer,
        "LOGIN": LoginServer,
        "CRAM-MD5": lambda: CramMD5Server(
            nonce=_need(nonce, "a nonce", canonical),
            timestamp=_need(timestamp, "a timestamp", canonical),
            hostname=_need(hostname, "a hostname", canonical),
        ),
        "SCRAM-SHA-1": lambda: ScramSHA1Server(
            nonce=_need(nonce, "a nonce", canonical),
            fake_salt_key=_need(fake_salt_key, "a fake_salt_key", canonical),
            fake_iterations=fake_iterations,
        ),
        "SCRAM-SHA-256": lambda: ScramSHA256Server(
            nonce=_need(nonce, "a nonce", canonical),
            fake_salt_key=_need(fake_salt_key, "a fake_salt_key", canonical),
            fake_iterations=fake_iterations,
        ),
    }
    return builders[canonical]()


def client_mechanism(
    name: str,
    authcid: str,
    password: str,
    authzid: str = "",
    *,
    nonce: str | None = None,
) -> ClientMechanism:
    """A fresh client mechanism for one attempt (`name` case-insensitive). SCRAM needs
    `nonce` (fresh, unpredictable, printable ASCII without ``,``). LOGIN and CRAM-MD5
    cannot carry an authorization identity, so a non-empty `authzid` is refused there.
    Raises `SASLError` for an unknown name, a missing nonce or unusable credentials."""
    canonical = _canonical(name)
    if authzid and canonical in ("LOGIN", "CRAM-MD5"):
        raise SASLError(f"{canonical} cannot carry an authorization identity")
    if canonical == "PLAIN":
        return PlainClient(authcid=authcid, password=password, authzid=authzid)
    if canonical == "LOGIN":
        return LoginClient(authcid=authcid, password=password)
    if canonical == "CRAM-MD5":
        return CramMD5Client(authcid=authcid, password=password)
    scram = ScramSHA1Client if canonical == "SCRAM-SHA-1" else ScramSHA256Client
    return scram(
        authcid=authcid,
        password=password,
        authzid=authzid,
        nonce=_need(nonce, "a nonce", canonical),
    )
