"""PLAIN (RFC 4616): the message grammar, both roles, and a wired pair."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sasl_helpers import make_client, make_server, run_exchange

from sansmail.sasl import (
    MAX_MESSAGE_OCTETS,
    Challenge,
    Failure,
    PlainClient,
    PlainServer,
    RemoteSASLError,
    SASLError,
    Success,
    VerifyPassword,
)


# RFC 4616 §4 examples.
def test_rfc4616_example_without_authzid() -> None:
    client = PlainClient(authcid="tim", password="tanstaaftanstaaf")
    message = client.initial_response()
    assert message == b"\0tim\0tanstaaftanstaaf"
    server = PlainServer()
    assert server.receive(message) == VerifyPassword(
        authzid="", authcid="tim", password="tanstaaftanstaaf"
    )
    assert server.accept() == Success(authzid="", authcid="tim")
    assert server.done


def test_rfc4616_example_with_authzid() -> None:
    client = PlainClient(authcid="Kurt", password="xipj3plmq", authzid="Ursel")
    message = client.initial_response()
    assert message == b"Ursel\0Kurt\0xipj3plmq"
    step = PlainServer().receive(message)
    # A proxy request: handed to the application, which decides.
    assert step == VerifyPassword(authzid="Ursel", authcid="Kurt", password="xipj3plmq")


def test_without_initial_response_the_server_asks() -> None:
    server = PlainServer()
    assert server.receive(None) == Challenge(data=b"")
    step = server.receive(b"\0tim\0secret")
    assert isinstance(step, VerifyPassword)
    assert server.reject() == Failure(reason="authentication failed")


def test_client_answers_the_empty_challenge_when_no_initial_response_was_sent() -> None:
    client = PlainClient(authcid="tim", password="pw")
    assert client.respond(b"") == b"\0tim\0pw"
    with pytest.raises(RemoteSASLError):
        client.respond(b"")  # nothing more to say
    client.verify_server_final(None)


def test_client_refuses_a_non_empty_first_challenge() -> None:
    with pytest.raises(RemoteSASLError):
        PlainClient(authcid="tim", password="pw").respond(b"hello")


def test_client_refuses_early_success() -> None:
    with pytest.raises(RemoteSASLError):
        PlainClient(authcid="tim", password="pw").verify_server_final(None)


def test_client_refuses_additional_data_with_success() -> None:
    client = PlainClient(authcid="tim", password="pw")
    client.initial_response()
    with pytest.raises(RemoteSASLError):
        client.verify_server_final(b"surprise")


def test_utf8_fields() -> None:
    step = PlainServer().receive("\0j\u00f6rg\0p\u00e4ss".encode())
    assert step == VerifyPassword(authzid="", authcid="j\u00f6rg", password="p\u00e4ss")


def test_fields_of_255_octets_are_accepted() -> None:
    # RFC 4616 §2: each field "MUST accept up to 255 octets".
    long = "x" * 255
    step = PlainServer().receive(f"{long}\0{long}\0{long}".encode())
    assert isinstance(step, VerifyPassword)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"tim",
        b"\0tim",  # one separator
        b"\0tim\0pw\0",  # three
        b"\0\0pw",  # empty authcid
        b"\0tim\0",  # empty password
        b"\0t\xffm\0pw",  # not UTF-8
        b"\xc3\0tim\0pw",  # truncated UTF-8 in authzid
        b"\0tim\0" + b"p" * MAX_MESSAGE_OCTETS,
    ],
)
def test_malformed_messages_fail(message: bytes) -> None:
    server = PlainServer()
    step = server.receive(message)
    assert isinstance(step, Failure)
    assert server.done


def test_password_is_not_in_repr() -> None:
    step = VerifyPassword(authzid="", authcid="tim", password="hunter2")
    assert "hunter2" not in repr(step)


@pytest.mark.parametrize(
    ("authcid", "password", "authzid"),
    [("", "pw", ""), ("tim", "", ""), ("t\0m", "pw", ""), ("tim", "p\0w", ""), ("tim", "pw", "\0")],
)
def test_client_refuses_unsendable_credentials(authcid: str, password: str, authzid: str) -> None:
    with pytest.raises(SASLError):
        PlainClient(authcid=authcid, password=password, authzid=authzid)


def test_pair_right_and_wrong_password() -> None:
    step, _ = run_exchange(make_client("PLAIN"), make_server("PLAIN"))
    assert step == Success(authzid="", authcid="user")
    step, _ = run_exchange(make_client("PLAIN", password="crayon"), make_server("PLAIN"))
    assert isinstance(step, Failure)
    step, _ = run_exchange(make_client("PLAIN", authcid="nobody"), make_server("PLAIN"))
    assert isinstance(step, Failure)


utf8_field = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"),
    min_size=1,
    max_size=40,
)


@settings(deadline=None, max_examples=200)
@given(authcid=utf8_field, password=utf8_field, authzid=st.one_of(st.just(""), utf8_field))
def test_what_the_client_sends_the_server_reads(authcid: str, password: str, authzid: str) -> None:
    client = PlainClient(authcid=authcid, password=password, authzid=authzid)
    step = PlainServer().receive(client.initial_response())
    assert step == VerifyPassword(authzid=authzid, authcid=authcid, password=password)
