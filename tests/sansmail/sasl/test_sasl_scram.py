"""SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677): RFC transcripts byte for byte, both
roles, unknown users, replay, channel-binding flags and the message grammar."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sasl_helpers import FAKE_SALT_KEY, make_client, make_server, run_exchange, stored_credentials

from sansmail.sasl import (
    SCRAM_MIN_ITERATIONS,
    Challenge,
    ClientMechanism,
    Failure,
    NeedCredentials,
    RemoteSASLError,
    SASLError,
    ScramCredentials,
    ScramSHA1Client,
    ScramSHA1Server,
    ScramSHA256Client,
    ScramSHA256Server,
    ServerMechanism,
    Success,
    decode_base64_strict,
    derive_scram_credentials,
    encode_base64,
)

# (mechanism classes, hash, client nonce, server nonce, salt, transcript) from RFC 5802 §5
# (SCRAM-SHA-1) and RFC 7677 §3 (SCRAM-SHA-256); user "user", password "pencil".
RFC_VECTORS = {
    "SCRAM-SHA-1": (
        ScramSHA1Client,
        ScramSHA1Server,
        "sha1",
        "fyko+d2lbbFgONRv9qkxdawL",
        "3rfcNHYJY1ZVvWVs7j",
        b"QSXCR+Q6sek8bf92",
        [
            b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        ],
    ),
    "SCRAM-SHA-256": (
        ScramSHA256Client,
        ScramSHA256Server,
        "sha256",
        "rOprNGfwEbeRWgbNEkqO",
        "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        b"W22ZaJ0SNY7soEsUEjb6gQ==",
        [
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        ],
    ),
}
SCRAMS = sorted(RFC_VECTORS)


def rfc_credentials(name: str) -> ScramCredentials:
    _, _, hash_name, _, _, salt, _ = RFC_VECTORS[name]
    return derive_scram_credentials("pencil", decode_base64_strict(salt), 4096, hash_name)


def rfc_server(name: str, server_nonce: str | None = None) -> ServerMechanism:
    server_class = RFC_VECTORS[name][1]
    nonce = server_nonce or RFC_VECTORS[name][4]
    return server_class(nonce=nonce, fake_salt_key=FAKE_SALT_KEY)


@pytest.mark.parametrize("name", SCRAMS)
def test_rfc_transcript_client(name: str) -> None:
    client_class, _, _, client_nonce, _, _, transcript = RFC_VECTORS[name]
    client = client_class(authcid="user", password="pencil", nonce=client_nonce)
    assert client.initial_response() == transcript[0]
    assert client.respond(transcript[1]) == transcript[2]
    assert not client.complete  # the server has not proved itself yet
    assert client.respond(transcript[3]) == b""
    assert client.complete
    client.verify_server_final(None)


@pytest.mark.parametrize("name", SCRAMS)
def test_rfc_transcript_client_with_final_as_success_data(name: str) -> None:
    client_class, _, _, client_nonce, _, _, transcript = RFC_VECTORS[name]
    client = client_class(authcid="user", password="pencil", nonce=client_nonce)
    client.initial_response()
    client.respond(transcript[1])
    client.verify_server_final(transcript[3])
    assert client.complete


@pytest.mark.parametrize("name", SCRAMS)
def test_rfc_transcript_server(name: str) -> None:
    transcript = RFC_VECTORS[name][6]
    server = rfc_server(name)
    assert server.receive(transcript[0]) == NeedCredentials(authcid="user", authzid="")
    assert server.provide(rfc_credentials(name)) == Challenge(data=transcript[1])
    assert server.receive(transcript[2]) == Success(authzid="", authcid="user", data=transcript[3])


@pytest.mark.parametrize("name", SCRAMS)
def test_pair_right_and_wrong_password(name: str) -> None:
    step, transcript = run_exchange(make_client(name), make_server(name))
    assert isinstance(step, Success)
    assert step.authcid == "user"
    assert step.data is not None
    assert step.data.startswith(b"v=")
    assert len(transcript) == 4  # C first, S first, C final, S final (as success data)
    step, _ = run_exchange(make_client(name, password="crayon"), make_server(name))
    assert step == Failure(reason="authentication failed")


@pytest.mark.parametrize("name", SCRAMS)
def test_pair_without_initial_response(name: str) -> None:
    client, server = make_client(name), make_server(name)
    assert server.receive(None) == Challenge(data=b"")
    step = server.receive(client.respond(b""))
    assert isinstance(step, NeedCredentials)
    step = server.provide(stored_credentials(name, "pencil"))
    assert isinstance(step, Challenge)
    step = server.receive(client.respond(step.data))
    assert isinstance(step, Success)
    assert step.data is not None
    assert client.respond(step.data) == b""  # sent as a final challenge (RFC 4954 §4)
    client.verify_server_final(None)


@pytest.mark.parametrize("name", SCRAMS)
def test_authzid_and_escaped_names(name: str) -> None:
    passwords = {"a,b=c": "pencil"}
    client = make_client(name, authcid="a,b=c", authzid="x=y,z")
    first = client.initial_response()
    assert first == b"n,a=x=3Dy=2Cz,n=a=2Cb=3Dc,r=clientNONCE_abcdef"
    client = make_client(name, authcid="a,b=c", authzid="x=y,z")
    step, _ = run_exchange(client, make_server(name), passwords)
    assert isinstance(step, Success)
    assert (step.authzid, step.authcid) == ("x=y,z", "a,b=c")


@pytest.mark.parametrize("name", SCRAMS)
def test_saslprep_makes_equivalent_passwords_agree(name: str) -> None:
    # RFC 4013 §3 examples 1 and 5: "I<SOFT HYPHEN>X" and ROMAN NUMERAL NINE prepare to "IX".
    passwords = {"user": "I\u00adX"}
    step, _ = run_exchange(make_client(name, password="\u2168"), make_server(name), passwords)
    assert isinstance(step, Success)


@pytest.mark.parametrize("name", SCRAMS)
def test_replayed_client_final_fails(name: str) -> None:
    transcript = RFC_VECTORS[name][6]
    # A second server instance, another nonce: the recorded client-final is worthless.
    server = rfc_server(name, server_nonce="aFreshServerNonce0123")
    assert isinstance(server.receive(transcript[0]), NeedCredentials)
    assert isinstance(server.provide(rfc_credentials(name)), Challenge)
    step = server.receive(transcript[2])
    assert isinstance(step, Failure)
    assert "nonce" in step.reason


@pytest.mark.parametrize("name", SCRAMS)
def test_unknown_user_looks_like_a_known_one_until_the_end(name: str) -> None:
    def server_first(user: str, key: bytes = FAKE_SALT_KEY) -> bytes:
        server = RFC_VECTORS[name][1](nonce="srv", fake_salt_key=key)
        server.receive(f"n,,n={user},r=cli".encode())
        step = server.provide(None)
        assert isinstance(step, Challenge)
        return step.data

    first = server_first("ghost")
    nonce, salt, iterations = first.split(b",")
    assert nonce == b"r=clisrv"
    assert len(decode_base64_strict(salt[2:])) == 16  # like the store's salts
    assert iterations == b"i=4096"
    # Stable per name (a random salt would change between probes and betray the fake) ...
    assert server_first("ghost") == first
    # ... different per name, and not computable without the server's secret.
    assert server_first("phantom") != first
    assert server_first("ghost", key=b"another secret key 123") != first

    client = make_client(name, authcid="ghost")
    step, _ = run_exchange(client, make_server(name))
    assert step == Failure(reason="authentication failed")


@pytest.mark.parametrize("name", SCRAMS)
def test_unknown_user_fails_even_if_the_invented_keys_matched(name: str) -> None:
    # The invented keys are never supposed to verify, but the verdict must not rest on
    # that: make them the real keys of "pencil" and the unknown user must still fail.
    server = make_server(name)
    server._fake_credentials = lambda: stored_credentials(name, "pencil")  # type: ignore[attr-defined]
    client = make_client(name)
    assert isinstance(server.receive(client.initial_response()), NeedCredentials)
    step = server.provide(None)
    assert isinstance(step, Challenge)
    step = server.receive(client.respond(step.data))
    assert step == Failure(reason="authentication failed")


@pytest.mark.parametrize("name", SCRAMS)
@pytest.mark.parametrize("flag", ["n", "y"])
def test_gs2_flags_without_binding(name: str, flag: str) -> None:
    # "y": the client could bind but thinks we cannot, which is true (RFC 5802 §6).
    client, server = make_client(name), make_server(name)
    client._gs2_header = f"{flag},,"  # type: ignore[attr-defined]  # ours always says "n"
    first = client.initial_response()
    assert first is not None
    assert first.startswith(flag.encode() + b",,")
    assert isinstance(server.receive(first), NeedCredentials)
    step = server.provide(stored_credentials(name, "pencil"))
    assert isinstance(step, Challenge)
    final = client.respond(step.data)
    assert final.startswith(b"c=" + encode_base64(flag.encode() + b",,") + b",")
    step = server.receive(final)
    assert isinstance(step, Success)
    client.verify_server_final(step.data)


@pytest.mark.parametrize("name", SCRAMS)
def test_channel_binding_header_mismatch_fails(name: str) -> None:
    server = make_server(name)
    server.receive(b"y,,n=user,r=cli")
    server.provide(stored_credentials(name, "pencil"))
    step = server.receive(b"c=biws,r=cliserverNONCE-0123456789,p=" + encode_base64(bytes(32)))
    assert isinstance(step, Failure)
    assert "gs2" in step.reason


@pytest.mark.parametrize("name", SCRAMS)
@pytest.mark.parametrize(
    "client_first",
    [
        b"",
        b"n",
        b"n,",
        b"n,,",
        b"p=tls-unique,,n=user,r=cli",  # binding requested: we offer no -PLUS
        b"x,,n=user,r=cli",  # unknown flag
        b"n,,m=ext,n=user,r=cli",  # mandatory extension (RFC 5802 §5.1)
        b"n,,n=user,r=cli,m=ext",
        b"n,b=admin,n=user,r=cli",  # authzid not a=
        b"n,a=,n=user,r=cli",  # empty authzid after a=
        b"n,,r=cli,n=user",  # wrong order
        b"n,,n=user",  # no nonce
        b"n,,n=,r=cli",  # empty user name
        b"n,,n=us=er,r=cli",  # "=" not followed by 2C / 3D
        b"n,,n=us=2cer,r=cli",  # escapes are upper case
        b"n,,n=user,r=",  # empty nonce
        b"n,,n=user,r=c\x7fi",  # nonce not printable
        b"n,,n=user,r=cli,",  # empty extension
        b"n,,n=user,r=cli,x",  # extension without "="
        b"n,,n=user,r=cli,1=x",  # attribute not ALPHA
        b"n,,n=u\xffser,r=cli",  # not UTF-8
        b"n,,n=u\0ser,r=cli",  # NUL
    ],
)
def test_malformed_client_first_fails(name: str, client_first: bytes) -> None:
    server = make_server(name)
    step = server.receive(client_first)
    assert isinstance(step, Failure)
    assert server.done


def test_client_first_extensions_are_ignored() -> None:
    server = make_server("SCRAM-SHA-256")
    step = server.receive(b"n,,n=user,r=cli,x=foo,y=bar=baz")
    assert step == NeedCredentials(authcid="user", authzid="")


def valid_client_final(name: str) -> tuple[ServerMechanism, bytes]:
    transcript = RFC_VECTORS[name][6]
    server = rfc_server(name)
    server.receive(transcript[0])
    server.provide(rfc_credentials(name))
    return server, transcript[2]


@pytest.mark.parametrize("name", SCRAMS)
@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.rpartition(b",p=")[0],  # no proof
        lambda m: m + b",x=1",  # something after the proof
        lambda m: m.replace(b"c=biws,", b""),  # no channel binding
        lambda m: m.replace(b"c=biws", b"c=biws="),  # bad base64
        lambda m: m.replace(b"c=biws", b"c=eSws"),  # gs2 header "y,," but we got "n,,"
        lambda m: m.replace(b"c=biws", b"c=bixx"),  # not the gs2 header
        lambda m: m.replace(b",r=", b",r=x"),  # nonce changed
        lambda m: m.rpartition(b",p=")[0] + b",p=AAAA",  # proof of the wrong length
        lambda m: m.replace(b",p=", b",m=1,p="),  # mandatory extension
        lambda m: m.replace(b"c=", b"C="),
        lambda m: m + b"\xff",
    ],
)
def test_malformed_client_final_fails(name: str, mutate) -> None:  # type: ignore[no-untyped-def]
    server, final = valid_client_final(name)
    step = server.receive(mutate(final))
    assert isinstance(step, Failure)
    assert server.done


@pytest.mark.parametrize("name", SCRAMS)
def test_client_final_extensions_are_ignored(name: str) -> None:
    # Extensions sit before the proof and are covered by it, so only a client that
    # includes them in its AuthMessage succeeds; a server that ignores them still must
    # parse them. Adding one to a valid message breaks the proof: Failure, not an error.
    server, final = valid_client_final(name)
    step = server.receive(final.replace(b",p=", b",x=ext,p="))
    assert step == Failure(reason="authentication failed")


@settings(deadline=None, max_examples=150)
@given(name=st.sampled_from(SCRAMS), data=st.data())
def test_no_single_byte_change_to_client_final_succeeds(name: str, data: st.DataObject) -> None:
    server, final = valid_client_final(name)
    at = data.draw(st.integers(min_value=0, max_value=len(final) - 1))
    byte = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != final[at]))
    step = server.receive(final[:at] + bytes([byte]) + final[at + 1 :])
    assert isinstance(step, Failure)


# -- client side -------------------------------------------------------------------


def rfc_client(name: str, **kwargs: int) -> ClientMechanism:
    client_class, _, _, client_nonce, _, _, _ = RFC_VECTORS[name]
    client = client_class(authcid="user", password="pencil", nonce=client_nonce, **kwargs)  # type: ignore[arg-type]
    client.initial_response()
    return client


@pytest.mark.parametrize("name", SCRAMS)
def test_client_refuses_a_wrong_server_signature(name: str) -> None:
    transcript = RFC_VECTORS[name][6]
    client = rfc_client(name)
    client.respond(transcript[1])
    signature = bytearray(decode_base64_strict(transcript[3][2:]))
    signature[0] ^= 1
    with pytest.raises(RemoteSASLError, match="signature"):
        client.respond(b"v=" + encode_base64(bytes(signature)))
    assert not client.complete


@pytest.mark.parametrize("name", SCRAMS)
def test_client_refuses_success_without_server_signature(name: str) -> None:
    client = rfc_client(name)
    client.respond(RFC_VECTORS[name][6][1])
    with pytest.raises(RemoteSASLError):
        client.verify_server_final(None)


@pytest.mark.parametrize("name", SCRAMS)
def test_client_reports_server_error(name: str) -> None:
    client = rfc_client(name)
    client.respond(RFC_VECTORS[name][6][1])
    with pytest.raises(RemoteSASLError, match="invalid-proof"):
        client.respond(b"e=invalid-proof")


@pytest.mark.parametrize("name", SCRAMS)
@pytest.mark.parametrize(
    "server_first",
    [
        b"",
        b"r=fyko,s=QSXCR+Q6sek8bf92,i=4096",  # nonce not ours
        b"r={cnonce},s=QSXCR+Q6sek8bf92,i=4096",  # server added nothing
        b"r={cnonce}x,s=QSXCR+Q6sek8bf92",  # no iteration count
        b"r={cnonce}x,s=,i=4096",  # empty salt
        b"r={cnonce}x,s=QSXCR+Q6sek8bf9,i=4096",  # bad base64
        b"r={cnonce}x,s=QSXCR+Q6sek8bf92,i=0",
        b"r={cnonce}x,s=QSXCR+Q6sek8bf92,i=04096",
        b"r={cnonce}x,s=QSXCR+Q6sek8bf92,i=4095",  # below the floor
        b"r={cnonce}x,s=QSXCR+Q6sek8bf92,i=99999999999",
        b"m=x,r={cnonce}x,s=QSXCR+Q6sek8bf92,i=4096",
        b"s=QSXCR+Q6sek8bf92,r={cnonce}x,i=4096",
        b"r={cnonce}\x7f,s=QSXCR+Q6sek8bf92,i=4096",
    ],
)
def test_client_refuses_bad_server_first(name: str, server_first: bytes) -> None:
    client = rfc_client(name)
    cnonce = RFC_VECTORS[name][3].encode()
    with pytest.raises(RemoteSASLError):
        client.respond(server_first.replace(b"{cnonce}", cnonce))


@pytest.mark.parametrize("name", SCRAMS)
def test_client_iteration_ceiling(name: str) -> None:
    client = rfc_client(name, max_iterations=5000)
    cnonce = RFC_VECTORS[name][3]
    with pytest.raises(RemoteSASLError, match="iteration"):
        client.respond(f"r={cnonce}x,s=QSXCR+Q6sek8bf92,i=5001".encode())


@pytest.mark.parametrize("name", SCRAMS)
def test_client_ignores_server_first_extensions(name: str) -> None:
    client = rfc_client(name)
    transcript = RFC_VECTORS[name][6]
    # The extension is part of AuthMessage, so the proof differs but the message parses.
    final = client.respond(transcript[1] + b",x=ext")
    assert final.startswith(transcript[2].rpartition(b",p=")[0])


def test_client_refuses_unusable_arguments() -> None:
    for kwargs in (
        {"nonce": ""},
        {"nonce": "a,b"},
        {"nonce": "caf\u00e9"},
        {"password": "\u0007bell"},  # SASLprep: prohibited
        {"password": "\u00ad"},  # empty after SASLprep
        {"authcid": ""},
        {"min_iterations": 0},
        {"min_iterations": 10, "max_iterations": 5},
    ):
        arguments = {"authcid": "user", "password": "pencil", "nonce": "n"} | kwargs
        with pytest.raises(SASLError):
            ScramSHA256Client(**arguments)


# -- credentials -------------------------------------------------------------------


def test_rfc_stored_keys() -> None:
    # The stored keys are what the RFC's exchange proves against.
    creds = rfc_credentials("SCRAM-SHA-256")
    assert len(creds.stored_key) == len(creds.server_key) == 32
    assert creds.iterations == 4096
    assert repr(creds.stored_key) not in repr(creds)
    assert repr(creds.server_key) not in repr(creds)


@pytest.mark.parametrize(
    "arguments",
    [
        ("pencil", b"salt", SCRAM_MIN_ITERATIONS - 1, "sha256"),  # RFC 7677 §4 floor
        ("pencil", b"", 4096, "sha256"),
        ("pencil", b"salt", 4096, "md5"),
        ("pencil", b"salt", 4096, "SHA-256"),
        ("", b"salt", 4096, "sha256"),
        ("\u0007", b"salt", 4096, "sha256"),  # SASLprep refuses it
    ],
)
def test_derive_refuses(arguments: tuple[str, bytes, int, str]) -> None:
    with pytest.raises(SASLError):
        derive_scram_credentials(*arguments)


def test_credentials_validate() -> None:
    good = rfc_credentials("SCRAM-SHA-1")
    with pytest.raises(SASLError):
        ScramCredentials(
            salt=b"s", iterations=1000, stored_key=good.stored_key, server_key=good.server_key
        )
    with pytest.raises(SASLError):
        ScramCredentials(salt=b"s", iterations=4096, stored_key=bytes(20), server_key=bytes(32))
    with pytest.raises(SASLError):
        ScramCredentials(salt=b"s", iterations=4096, stored_key=bytes(16), server_key=bytes(16))


def test_credentials_for_another_hash_are_misuse() -> None:
    server = make_server("SCRAM-SHA-256")
    server.receive(b"n,,n=user,r=cli")
    with pytest.raises(SASLError):
        server.provide(rfc_credentials("SCRAM-SHA-1"))
    with pytest.raises(SASLError):
        server.provide("pencil")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"nonce": "", "fake_salt_key": FAKE_SALT_KEY},
        {"nonce": "a,b", "fake_salt_key": FAKE_SALT_KEY},
        {"nonce": "n", "fake_salt_key": b"short"},
        {"nonce": "n", "fake_salt_key": FAKE_SALT_KEY, "fake_iterations": 100},
    ],
)
def test_server_refuses_unusable_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(SASLError):
        ScramSHA256Server(**kwargs)  # type: ignore[arg-type]
