"""Stateful fuzzing of the SASL mechanisms, each of PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-1
and SCRAM-SHA-256, server and client side: any messages in any order give only the
documented steps (Challenge, VerifyPassword, NeedCredentials, Success, Failure) on the
server and answers or RemoteSASLError on the client."""

from __future__ import annotations

import pytest
from fuzz_drivers import driver_class
from fuzz_machines import machine

from sansmail.sasl import MECHANISM_NAMES

FRAGMENTS = [
    b"\0user\0secret",
    b"admin\0user\0secret",
    b"\0\0",
    b"user",
    b"secret",
    b"user 0123456789abcdef0123456789abcdef",
    b"n,,n=user,r=clientnonce",
    b"y,a=admin,n=us=2Cer,r=x",
    b"p=tls-unique,,n=user,r=x",
    b"c=biws,r=clientnonceservernonce_123,p=AAAA",
    b"r=clientnonceservernonce_123,s=c2FsdA==,i=4096",
    b"v=AAAA",
    b"e=other-error",
    b"",
    b"\xff\xfe",
]


@pytest.mark.parametrize("name", MECHANISM_NAMES)
def test_mechanism(name: str) -> None:
    # An exchange is a few turns: short runs, and a new exchange once one ends.
    case = machine(lambda d: driver_class("sasl")(d, name), FRAGMENTS, steps=12).TestCase
    case("runTest").runTest()
