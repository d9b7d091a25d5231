"""The public surface of sansmail.sasl: exports, the registry, the turn-taking rules, and
hypothesis thrown at every mechanism in both roles."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sasl_helpers import make_client, make_server, settle

import sansmail.sasl
from sansmail.sasl import (
    CLIENT_MECHANISMS,
    MECHANISM_NAMES,
    SERVER_MECHANISMS,
    Challenge,
    Failure,
    NeedCredentials,
    PlainServer,
    RemoteSASLError,
    SASLError,
    Step,
    Success,
    VerifyPassword,
    client_mechanism,
    server_mechanism,
    server_mechanisms,
)


def test_exports() -> None:
    assert sorted(sansmail.sasl.__all__) == sorted(
        [
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
    )
    for name in sansmail.sasl.__all__:
        assert getattr(sansmail.sasl, name) is not None


def test_registry() -> None:
    assert set(SERVER_MECHANISMS) == set(CLIENT_MECHANISMS) == set(MECHANISM_NAMES)
    assert "ANONYMOUS" not in MECHANISM_NAMES
    for name, cls in SERVER_MECHANISMS.items():
        assert cls.name == name
    assert {n for n, c in SERVER_MECHANISMS.items() if c.plaintext} == {"PLAIN", "LOGIN"}
    assert {n for n, c in SERVER_MECHANISMS.items() if not c.accepts_initial_response} == {
        "CRAM-MD5"
    }


def test_server_mechanisms_validates_configuration() -> None:
    assert server_mechanisms(["plain", "LOGIN", "Scram-Sha-256", "PLAIN"]) == (
        "PLAIN",
        "LOGIN",
        "SCRAM-SHA-256",
    )
    assert server_mechanisms([]) == ()
    with pytest.raises(SASLError, match="ANONYMOUS"):
        server_mechanisms(["PLAIN", "ANONYMOUS"])
    with pytest.raises(SASLError):
        server_mechanisms("PLAIN")


@pytest.mark.parametrize("name", MECHANISM_NAMES)
def test_factories_are_case_insensitive(name: str) -> None:
    assert make_server(name.lower()).name == name
    assert make_client(name.lower()).name == name


def test_factories_refuse_what_they_cannot_build() -> None:
    with pytest.raises(SASLError):
        server_mechanism("DIGEST-MD5")
    with pytest.raises(SASLError):
        client_mechanism("GSSAPI", "user", "pw")
    with pytest.raises(SASLError, match="nonce"):
        server_mechanism("SCRAM-SHA-256", fake_salt_key=b"k" * 16)
    with pytest.raises(SASLError, match="fake_salt_key"):
        server_mechanism("SCRAM-SHA-1", nonce="n")
    with pytest.raises(SASLError, match="timestamp"):
        server_mechanism("CRAM-MD5", nonce="n", hostname="h")
    with pytest.raises(SASLError, match="nonce"):
        client_mechanism("SCRAM-SHA-256", "user", "pw")
    for name in ("LOGIN", "CRAM-MD5"):
        with pytest.raises(SASLError, match="authorization"):
            client_mechanism(name, "user", "pw", "admin")
    # PLAIN and LOGIN need nothing, and ignore what they do not need.
    assert isinstance(server_mechanism("PLAIN"), PlainServer)
    assert isinstance(server_mechanism("plain", nonce="x"), PlainServer)


def test_turn_taking_is_enforced() -> None:
    server = PlainServer()
    with pytest.raises(SASLError):
        server.accept()  # nothing to accept yet
    with pytest.raises(SASLError):
        server.provide(None)
    assert server.receive(None) == Challenge(data=b"")
    with pytest.raises(SASLError):
        server.receive(None)  # None only stands for a missing initial response
    assert isinstance(server.receive(b"\0tim\0pw"), VerifyPassword)
    with pytest.raises(SASLError):
        server.receive(b"more")  # the application owes a verdict
    with pytest.raises(SASLError):
        server.provide(None)  # PLAIN never asks for credentials
    assert isinstance(server.accept(), Success)
    assert server.done
    for call in (server.accept, server.reject, lambda: server.receive(b"x")):
        with pytest.raises(SASLError):
            call()


def test_turn_taking_for_credentials() -> None:
    server = make_server("SCRAM-SHA-256")
    assert isinstance(server.receive(b"n,,n=user,r=cli"), NeedCredentials)
    with pytest.raises(SASLError):
        server.receive(b"c=biws")
    with pytest.raises(SASLError):
        server.accept()
    assert isinstance(server.provide(None), Challenge)
    with pytest.raises(SASLError):
        server.provide(None)


def test_receive_wants_bytes() -> None:
    with pytest.raises(SASLError):
        PlainServer().receive("\0tim\0pw")  # type: ignore[arg-type]


def test_client_turn_taking() -> None:
    client = make_client("PLAIN")
    client.initial_response()
    with pytest.raises(SASLError):
        client.initial_response()
    with pytest.raises(SASLError):
        client.respond("x")  # type: ignore[arg-type]
    assert make_client("CRAM-MD5").initial_response() is None


def test_steps_are_validated() -> None:
    with pytest.raises(SASLError):
        Success(authzid="", authcid="")
    with pytest.raises(SASLError):
        Challenge(data="text")  # type: ignore[arg-type]
    with pytest.raises(SASLError):
        Failure(reason="")
    with pytest.raises(SASLError):
        NeedCredentials(authcid="a\0b", authzid="")


def test_overlong_messages_fail_on_both_sides() -> None:
    big = b"x" * (sansmail.sasl.MAX_MESSAGE_OCTETS + 1)
    assert isinstance(PlainServer().receive(big), Failure)
    with pytest.raises(RemoteSASLError):
        make_client("CRAM-MD5").respond(big)


# -- hypothesis: whatever the peer sends, only the documented outcomes ---------------

messages = st.one_of(
    st.binary(max_size=120),
    # Grammar-shaped text reaches deeper into the parsers than random bytes.
    st.text(alphabet="nyparmcsiv=,2C3D biws\0\u00e9xX+/", max_size=60).map(str.encode),
)


@settings(deadline=None, max_examples=400)
@given(
    name=st.sampled_from(MECHANISM_NAMES),
    first=st.one_of(st.none(), messages),
    rest=st.lists(messages, max_size=4),
    user=st.sampled_from(["user", "ghost"]),
)
def test_servers_answer_garbage_with_steps_never_exceptions(
    name: str, first: bytes | None, rest: list[bytes], user: str
) -> None:
    server = make_server(name)
    step = settle(server, server.receive(first), {user: "pencil"})
    for message in rest:
        if server.done:
            break
        assert isinstance(step, Challenge)
        step = settle(server, server.receive(message), {user: "pencil"})
    assert isinstance(step, Step)
    if isinstance(step, Success):
        # Only PLAIN/LOGIN could, and only with the exact password.
        assert name in ("PLAIN", "LOGIN")


@settings(deadline=None, max_examples=400)
@given(
    name=st.sampled_from(MECHANISM_NAMES),
    challenges=st.lists(messages, min_size=1, max_size=4),
    success_data=st.one_of(st.none(), messages),
)
def test_clients_answer_garbage_with_bytes_or_remote_errors(
    name: str, challenges: list[bytes], success_data: bytes | None
) -> None:
    client = client_mechanism(name, "user", "pencil", nonce="cli")
    if name.startswith("SCRAM"):
        # Keep a lucky well-formed server-first from costing seconds of PBKDF2.
        client._bounds = (1, 5000)  # type: ignore[attr-defined]
    try:
        client.initial_response()
        for challenge in challenges:
            assert isinstance(client.respond(challenge), bytes)
        client.verify_server_final(success_data)
    except RemoteSASLError:
        return
    # A SCRAM client only finishes if the server proved it knows the keys, which
    # garbage cannot do.
    assert not name.startswith("SCRAM")
