"""CRAM-MD5 (RFC 2195), with credentials stored as HMAC-MD5 states (Dovecot's layout)."""

from __future__ import annotations

import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sasl_helpers import make_client, make_server, run_exchange

from sansmail.sasl import (
    Challenge,
    CramMD5Client,
    CramMD5Credentials,
    CramMD5Server,
    Failure,
    NeedCredentials,
    RemoteSASLError,
    SASLError,
    Success,
    derive_cram_md5_credentials,
)
from sansmail.sasl._cram_md5 import _hmac_from_states

RFC_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
RFC_RESPONSE = b"tim b913a602c7eda7a495b4e6e7334d3890"


def rfc_server() -> CramMD5Server:
    return CramMD5Server(nonce="1896", timestamp=697170952, hostname="postoffice.reston.mci.net")


def test_rfc2195_server() -> None:
    server = rfc_server()
    assert server.receive(None) == Challenge(data=RFC_CHALLENGE)
    assert server.receive(RFC_RESPONSE) == NeedCredentials(authcid="tim", authzid="")
    step = server.provide(derive_cram_md5_credentials("tanstaaftanstaaf"))
    assert step == Success(authzid="", authcid="tim")


def test_rfc2195_client() -> None:
    client = CramMD5Client(authcid="tim", password="tanstaaftanstaaf")
    assert client.initial_response() is None
    assert client.respond(RFC_CHALLENGE) == RFC_RESPONSE
    client.verify_server_final(None)


def test_wrong_secret_and_unknown_user_fail_alike() -> None:
    server = rfc_server()
    server.receive(None)
    server.receive(RFC_RESPONSE)
    wrong = server.provide(derive_cram_md5_credentials("tanstaaf"))
    server = rfc_server()
    server.receive(None)
    server.receive(RFC_RESPONSE)
    unknown = server.provide(None)
    assert wrong == unknown == Failure(reason="authentication failed")


def test_upper_case_digest_is_the_same_digest() -> None:
    server = rfc_server()
    server.receive(None)
    server.receive(RFC_RESPONSE.upper().replace(b"TIM", b"tim"))
    assert isinstance(server.provide(derive_cram_md5_credentials("tanstaaftanstaaf")), Success)


def test_user_name_with_spaces() -> None:
    server = rfc_server()
    server.receive(None)
    step = server.receive(b"tim smith b913a602c7eda7a495b4e6e7334d3890")
    assert step == NeedCredentials(authcid="tim smith", authzid="")


def test_initial_response_is_refused() -> None:
    # RFC 4954 §4: CRAM-MD5 is server-first.
    assert not CramMD5Server.accepts_initial_response
    for initial in (b"", RFC_RESPONSE):
        assert isinstance(rfc_server().receive(initial), Failure)


@pytest.mark.parametrize(
    "response",
    [
        b"",
        b"tim",
        b"b913a602c7eda7a495b4e6e7334d3890",  # no user name
        b" b913a602c7eda7a495b4e6e7334d3890",  # empty user name
        b"tim b913a602c7eda7a495b4e6e7334d389",  # 31 digits
        b"tim b913a602c7eda7a495b4e6e7334d38900",  # 33 digits
        b"tim g913a602c7eda7a495b4e6e7334d3890",  # not hex
        b"tim b913a602c7eda7a495b4e6e7334d3890 ",
        b"t\xffm b913a602c7eda7a495b4e6e7334d3890",  # not UTF-8
        b"t\0m b913a602c7eda7a495b4e6e7334d3890",
    ],
)
def test_malformed_responses_fail(response: bytes) -> None:
    server = rfc_server()
    server.receive(None)
    assert isinstance(server.receive(response), Failure)
    assert server.done


def test_dovecot_layout() -> None:
    # `doveadm pw -s CRAM-MD5 -p password` prints this (outer state, then inner).
    dovecot = "9186d855e11eba527a7a52ca82b313e180d62234f0acc9051b527243d41e2740"
    creds = derive_cram_md5_credentials("password")
    assert creds.to_hex() == dovecot
    assert CramMD5Credentials.from_hex(dovecot) == creds


@pytest.mark.parametrize("bad", ["", "00" * 31, "zz" * 32, "00" * 33])
def test_from_hex_refuses_garbage(bad: str) -> None:
    with pytest.raises(SASLError):
        CramMD5Credentials.from_hex(bad)


def test_credentials_repr_hides_the_states() -> None:
    creds = derive_cram_md5_credentials("password")
    assert creds.inner.hex() not in repr(creds)
    assert creds.outer.hex() not in repr(creds)


@settings(deadline=None, max_examples=150)
@given(
    password=st.text(min_size=1, max_size=100).filter(lambda p: "\0" not in p),
    message=st.binary(max_size=200),
)
def test_stored_states_give_the_same_hmac(password: str, message: bytes) -> None:
    # Also covers passwords over 64 bytes, which HMAC first hashes (RFC 2104 §2).
    try:
        key = password.encode()
    except UnicodeEncodeError:
        return
    creds = derive_cram_md5_credentials(password)
    assert _hmac_from_states(creds, message) == hmac.new(key, message, "md5").digest()


@pytest.mark.parametrize(
    ("nonce", "hostname", "timestamp"),
    [
        ("", "h.test", 1),
        ("a b", "h.test", 1),
        ("a>", "h.test", 1),
        ("n", "h@test", 1),
        ("n", ".h.test", 1),
        ("n", "h.test", -1),
        ("n", "h.test", True),
    ],
)
def test_server_refuses_a_bad_challenge_recipe(nonce: str, hostname: str, timestamp: int) -> None:
    with pytest.raises(SASLError):
        CramMD5Server(nonce=nonce, timestamp=timestamp, hostname=hostname)


def test_provide_wants_cram_credentials() -> None:
    server = rfc_server()
    server.receive(None)
    server.receive(RFC_RESPONSE)
    with pytest.raises(SASLError):
        server.provide("tanstaaftanstaaf")


def test_client_refuses_an_empty_challenge() -> None:
    with pytest.raises(RemoteSASLError):
        CramMD5Client(authcid="tim", password="pw").respond(b"")


def test_pair_right_and_wrong_password() -> None:
    step, transcript = run_exchange(make_client("CRAM-MD5"), make_server("CRAM-MD5"))
    assert step == Success(authzid="", authcid="user")
    assert transcript[1] == ("S", b"<serverNONCE-0123456789.697170952@mail.example.test>")
    step, _ = run_exchange(make_client("CRAM-MD5", password="crayon"), make_server("CRAM-MD5"))
    assert isinstance(step, Failure)
    step, _ = run_exchange(make_client("CRAM-MD5", authcid="nobody"), make_server("CRAM-MD5"))
    assert isinstance(step, Failure)


def test_a_response_is_bound_to_its_challenge() -> None:
    # Replaying the RFC's response against a server with another nonce fails.
    server = CramMD5Server(nonce="1897", timestamp=697170952, hostname="postoffice.reston.mci.net")
    server.receive(None)
    server.receive(RFC_RESPONSE)
    assert isinstance(server.provide(derive_cram_md5_credentials("tanstaaftanstaaf")), Failure)
