"""LOGIN (draft-murchison-sasl-login): prompts, the initial-response variant, a pair."""

from __future__ import annotations

import pytest
from sasl_helpers import make_client, make_server, run_exchange

from sansmail.sasl import (
    Challenge,
    Failure,
    LoginClient,
    LoginServer,
    RemoteSASLError,
    Success,
    VerifyPassword,
)


def test_server_prompts_for_user_then_password() -> None:
    server = LoginServer()
    assert server.receive(None) == Challenge(data=b"Username:")
    assert server.receive(b"tim") == Challenge(data=b"Password:")
    step = server.receive(b"tanstaaftanstaaf")
    assert step == VerifyPassword(authzid="", authcid="tim", password="tanstaaftanstaaf")
    assert server.accept() == Success(authzid="", authcid="tim")


def test_initial_response_is_the_user_name() -> None:
    # "AUTH LOGIN dGlt" ([MS-XLOGIN]): straight to the password prompt.
    server = LoginServer()
    assert server.receive(b"tim") == Challenge(data=b"Password:")
    assert isinstance(server.receive(b"pw"), VerifyPassword)


@pytest.mark.parametrize(
    "messages",
    [
        [b""],  # empty initial response (SMTP "AUTH LOGIN =")
        [None, b""],  # empty user name
        [None, b"tim", b""],  # empty password
        [None, b"t\0m"],
        [None, b"tim", b"\xff\xfe"],
    ],
)
def test_malformed_answers_fail(messages: list[bytes | None]) -> None:
    server = LoginServer()
    step = None
    for message in messages:
        step = server.receive(message)
    assert isinstance(step, Failure)
    assert server.done


def test_client_ignores_prompt_text_and_stops_after_two_answers() -> None:
    client = LoginClient(authcid="tim", password="pw")
    assert client.initial_response() is None
    assert client.respond(b"User Name") == b"tim"
    assert client.respond(b"") == b"pw"
    with pytest.raises(RemoteSASLError):
        client.respond(b"Password:")


def test_client_refuses_success_before_sending_the_password() -> None:
    client = LoginClient(authcid="tim", password="pw")
    client.respond(b"Username:")
    with pytest.raises(RemoteSASLError):
        client.verify_server_final(None)


def test_pair_right_and_wrong_password() -> None:
    step, transcript = run_exchange(make_client("LOGIN"), make_server("LOGIN"))
    assert step == Success(authzid="", authcid="user")
    assert transcript[:5] == [
        ("C", None),
        ("S", b"Username:"),
        ("C", b"user"),
        ("S", b"Password:"),
        ("C", b"pencil"),
    ]
    step, _ = run_exchange(make_client("LOGIN", password="crayon"), make_server("LOGIN"))
    assert isinstance(step, Failure)
