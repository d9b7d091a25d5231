"""sansmail_trio._tls: real TLS handshakes over 127.0.0.1 with trustme certificates and
with the generated self-signed one; bad files, reloads, SIGHUP, handshake deadlines."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import pathlib
import signal
import ssl
import stat
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sansmail.config import Config
from sansmail.config._model import TLSConfig
from sansmail_trio._tls import (
    TLSConfigError,
    TLSContextHolder,
    TLSHandshakeError,
    describe,
    ensure_self_signed,
    received_tls,
    server_context,
    tls_handshake,
    watch_sighup,
)

HOST = "mx.example.test"


# --- helpers -----------------------------------------------------------------------------


@attrs.define
class Pair:
    """A cert/key pair on disk, issued by a trustme CA a client can trust."""

    ca: trustme.CA
    cert: pathlib.Path
    key: pathlib.Path

    def client(self, **versions: ssl.TLSVersion) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        for name, value in versions.items():
            setattr(context, name, value)
        return context


def issue(folder: pathlib.Path, name: str = "pair", host: str = HOST) -> Pair:
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    issued = ca.issue_cert(host)
    cert, key = folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    for blob in issued.cert_chain_pems:
        with cert.open("ab") as file:
            file.write(blob.bytes())
    issued.private_key_pem.write_to_path(str(key))
    return Pair(ca, cert, key)


@pytest.fixture
def pair(tmp_path: pathlib.Path) -> Pair:
    return issue(tmp_path / "certs")


@pytest.fixture
def log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> pytest.LogCaptureFixture:
    # configure_logging() (run by other tests through the CLI) stops "sansmail" records
    # from reaching the root logger, where caplog listens.
    monkeypatch.setattr(logging.getLogger("sansmail"), "propagate", True)
    caplog.set_level(logging.INFO, logger="sansmail.master")
    return caplog


@attrs.define
class Handshake:
    server: trio.SSLStream[Any] | None = None
    client: trio.SSLStream[Any] | None = None
    server_error: TLSHandshakeError | None = None
    client_error: BaseException | None = None


@contextlib.asynccontextmanager
async def handshake(
    server: ssl.SSLContext,
    client: ssl.SSLContext,
    *,
    hostname: str = HOST,
    timeout: float = 5,
) -> AsyncIterator[Handshake]:
    """One real connection over 127.0.0.1: `tls_handshake` on the server side, a plain
    `trio.SSLStream` on the client side; both outcomes recorded, everything closed after."""
    result = Handshake()
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    raws: list[trio.SocketStream] = []

    async def accept() -> None:
        raw = await listener.accept()
        raws.append(raw)
        try:
            result.server = await tls_handshake(raw, server, timeout)
        except TLSHandshakeError as exc:
            result.server_error = exc

    async def connect() -> None:
        raw = await trio.open_tcp_stream("127.0.0.1", port)
        raws.append(raw)
        tls = trio.SSLStream(raw, client, server_hostname=hostname)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            result.client_error = exc
            await trio.aclose_forcefully(raw)
        else:
            result.client = tls

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept)
                nursery.start_soon(connect)
        yield result
    finally:
        for raw in raws:
            await trio.aclose_forcefully(raw)
        await listener.aclose()


def peer_cert(result: Handshake) -> x509.Certificate:
    assert result.client is not None
    der = result.client.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


# --- server_context ----------------------------------------------------------------------


def test_server_context_policy(pair: Pair) -> None:
    context = server_context(pair.cert, pair.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_CIPHER_SERVER_PREFERENCE, ssl.OP_NO_RENEGOTIATION):
        assert context.options & option
    assert not context.options & ssl.OP_NO_TICKET
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert all(c.startswith("ECDHE-") and ("GCM" in c or "CHACHA20" in c) for c in tls12)


@pytest.mark.parametrize(
    ("version", "cipher_prefix"),
    [(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-"), (ssl.TLSVersion.TLSv1_3, "TLS_")],
)
async def test_accepts_tls_12_and_13_and_describes_them(
    pair: Pair, version: ssl.TLSVersion, cipher_prefix: str
) -> None:
    client = pair.client(minimum_version=version, maximum_version=version)
    async with handshake(server_context(pair.cert, pair.key), client) as result:
        assert result.server_error is None
        assert result.client_error is None
        assert result.server is not None
        name = {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        cipher, _, bits = result.server.cipher()
        assert cipher.startswith(cipher_prefix)
        assert describe(result.server) == f"{name} with cipher {cipher} ({bits}/{bits} bits)"
        assert received_tls(result.server) == f"{name} {cipher}"
        # the data path works both ways after tls_handshake
        assert result.client is not None
        await result.client.send_all(b"EHLO x\r\n")
        assert await result.server.receive_some(100) == b"EHLO x\r\n"


def test_describe_needs_a_session() -> None:
    stream = trio.SSLStream(
        trio.testing.memory_stream_pair()[0], ssl.create_default_context(), server_hostname="x"
    )
    with pytest.raises(trio.NeedHandshakeError):
        describe(stream)


def _legacy_client() -> ssl.SSLContext:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    # OpenSSL 3 refuses to even offer TLS 1.0/1.1 above security level 0.
    client.set_ciphers("DEFAULT:@SECLEVEL=0")
    client.minimum_version = ssl.TLSVersion.TLSv1
    client.maximum_version = ssl.TLSVersion.TLSv1_1
    return client


# Setting TLSv1 as a version bound is deprecated, which is the point of this test.
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_refuses_tls_1_1_clients(pair: Pair) -> None:
    # Control: a lax server completes a handshake with this client, so the refusal below
    # is our policy, not a client that cannot speak at all.
    lax = server_context(pair.cert, pair.key)
    lax.minimum_version = ssl.TLSVersion.TLSv1
    lax.set_ciphers("DEFAULT:@SECLEVEL=0")
    async with handshake(lax, _legacy_client()) as control:
        if control.server is None:
            pytest.skip(f"this OpenSSL cannot speak TLS 1.0/1.1 at all: {control.server_error}")
        assert control.server.version() in ("TLSv1", "TLSv1.1")

    async with handshake(server_context(pair.cert, pair.key), _legacy_client()) as result:
        assert result.server is None
        assert result.client is None
        assert isinstance(result.client_error, trio.BrokenResourceError)
        assert "UNSUPPORTED_PROTOCOL" in str(result.server_error)


def _other_key(folder: pathlib.Path) -> pathlib.Path:
    return issue(folder, "other").key


def _encrypted_key(folder: pathlib.Path) -> pathlib.Path:
    source = issue(folder, "enc").key
    key = serialization.load_pem_private_key(source.read_bytes(), password=None)
    source.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return source


@pytest.mark.parametrize(
    ("break_it", "culprit", "words"),
    [
        (lambda pair, tmp: (tmp / "missing.pem", pair.key), "cert", "cannot read"),
        (lambda pair, tmp: (pair.cert, tmp / "missing.pem"), "key", "cannot read"),
        (lambda pair, tmp: (pair.key, pair.key), "cert", "no PEM certificate"),
        (lambda pair, tmp: (pair.cert, pair.cert), "key", "no usable PEM private key"),
        (lambda pair, tmp: (pair.cert, _other_key(tmp)), "key", "does not belong"),
        (lambda pair, tmp: (pair.cert, _encrypted_key(tmp)), "key", "encrypted"),
    ],
    ids=["cert-missing", "key-missing", "key-as-cert", "cert-as-key", "mismatch", "encrypted"],
)
def test_bad_files_name_the_culprit(
    pair: Pair, tmp_path: pathlib.Path, break_it: Any, culprit: str, words: str
) -> None:
    cert, key = break_it(pair, tmp_path)
    with pytest.raises(TLSConfigError) as info:
        server_context(cert, key)
    path = cert if culprit == "cert" else key
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ")
    assert words in str(info.value)


def test_cert_and_key_in_one_file(pair: Pair, tmp_path: pathlib.Path) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(pair.key.read_bytes() + pair.cert.read_bytes())
    assert isinstance(server_context(both, both), ssl.SSLContext)


@st.composite
def damaged(draw: st.DrawFn, pem: bytes) -> bytes:
    data = bytearray(pem)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


_GOOD = trustme.CA().issue_cert(HOST)
_GOOD_CERT = _GOOD.cert_chain_pems[0].bytes()
_GOOD_KEY = _GOOD.private_key_pem.bytes()


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    cert=st.one_of(damaged(_GOOD_CERT), st.binary(max_size=300)),
    key=st.one_of(damaged(_GOOD_KEY), st.binary(max_size=300)),
)
def test_damaged_files_only_ever_give_tls_config_error(cert: bytes, key: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        cert_path, key_path = pathlib.Path(folder, "c.pem"), pathlib.Path(folder, "k.pem")
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
        try:
            server_context(cert_path, key_path)
        except TLSConfigError as exc:
            error = exc
        else:
            return
    assert error.path in (cert_path, key_path)
    assert str(error).startswith(f"{error.path}: ")


def test_expired_certificate_is_served_with_a_warning(
    tmp_path: pathlib.Path, log: pytest.LogCaptureFixture
) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert(HOST, not_after=datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC))
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    server_context(cert, key)
    assert any("expired on 2001-01-01" in r.getMessage() for r in log.records)


# --- ensure_self_signed ------------------------------------------------------------------


def test_self_signed_is_made_once_and_reused(
    tmp_path: pathlib.Path, log: pytest.LogCaptureFixture
) -> None:
    cert, key = ensure_self_signed(tmp_path / "data", HOST)
    assert cert == tmp_path / "data" / "tls" / "selfsigned-cert.pem"
    assert key == tmp_path / "data" / "tls" / "selfsigned-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in cert.parent.iterdir()) == [cert.name, key.name]
    created = [r.getMessage() for r in log.records if "generated a self-signed" in r.getMessage()]
    assert len(created) == 1
    assert "clients will warn" in created[0].lower()
    assert "[tls]" in created[0]

    before = cert.read_bytes(), key.read_bytes()
    log.clear()
    assert ensure_self_signed(tmp_path / "data", HOST) == (cert, key)
    assert (cert.read_bytes(), key.read_bytes()) == before
    assert not any("generated" in r.getMessage() for r in log.records)


def test_self_signed_certificate_content(tmp_path: pathlib.Path) -> None:
    now = datetime.datetime(2030, 6, 1, tzinfo=datetime.UTC)
    cert, _ = ensure_self_signed(tmp_path, HOST, now=now)
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [HOST, "localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= datetime.timedelta(days=825)
    assert leaf.public_key().key_size == 2048  # type: ignore[union-attr]


@pytest.mark.parametrize("name", [HOST, "localhost", "127.0.0.1", "::1"])
async def test_a_client_trusting_the_self_signed_certificate_connects(
    tmp_path: pathlib.Path, name: str
) -> None:
    cert, key = ensure_self_signed(tmp_path, HOST)
    client = ssl.create_default_context(cafile=str(cert))
    # Python 3.13's default; also what stricter verifiers demand of a certificate.
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    async with handshake(server_context(cert, key), client, hostname=name) as result:
        assert result.client_error is None
        assert result.client is not None


async def test_a_client_not_trusting_it_fails(tmp_path: pathlib.Path) -> None:
    cert, key = ensure_self_signed(tmp_path, HOST)
    async with handshake(server_context(cert, key), ssl.create_default_context()) as result:
        assert result.client is None
        assert result.client_error is not None
        assert "CERTIFICATE_VERIFY_FAILED" in str(result.client_error.__cause__)


def test_self_signed_renewed_before_it_expires(tmp_path: pathlib.Path) -> None:
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    cert, _ = ensure_self_signed(tmp_path, HOST, now=start)
    first = cert.read_bytes()
    assert ensure_self_signed(tmp_path, HOST, now=start + datetime.timedelta(days=700))
    assert cert.read_bytes() == first
    ensure_self_signed(tmp_path, HOST, now=start + datetime.timedelta(days=800))
    assert cert.read_bytes() != first


def test_self_signed_renewed_when_the_hostname_changes(tmp_path: pathlib.Path) -> None:
    cert, _ = ensure_self_signed(tmp_path, HOST)
    ensure_self_signed(tmp_path, "mail.other.test")
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mail.other.test" in names.get_values_for_type(x509.DNSName)
    assert HOST not in names.get_values_for_type(x509.DNSName)


def test_self_signed_repaired_after_a_crash_between_the_renames(tmp_path: pathlib.Path) -> None:
    # The key is renamed into place first; a crash then leaves a new key beside the old
    # certificate, plus perhaps a temporary file.
    cert, key = ensure_self_signed(tmp_path, HOST)
    key.write_bytes(issue(tmp_path / "x", host=HOST).key.read_bytes())
    (cert.parent / ".selfsigned-abc.tmp").write_bytes(b"half a ke")
    ensure_self_signed(tmp_path, HOST)
    assert isinstance(server_context(cert, key), ssl.SSLContext)
    assert sorted(p.name for p in cert.parent.iterdir()) == [cert.name, key.name]


def test_self_signed_replaces_a_damaged_file(tmp_path: pathlib.Path) -> None:
    cert, key = ensure_self_signed(tmp_path, HOST)
    cert.write_bytes(b"")
    ensure_self_signed(tmp_path, HOST)
    assert isinstance(server_context(cert, key), ssl.SSLContext)


def test_self_signed_unwritable_is_a_tls_config_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "tls").write_text("a file where the folder should be")
    with pytest.raises(TLSConfigError) as info:
        ensure_self_signed(tmp_path, HOST)
    assert info.value.path == tmp_path / "tls"
    assert "cannot write" in str(info.value)


def test_write_failure_leaves_no_temporary_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(TLSConfigError, match="No space left"):
        ensure_self_signed(tmp_path, HOST)
    assert list((tmp_path / "tls").iterdir()) == []


# --- TLSContextHolder --------------------------------------------------------------------


def _config(tmp_path: pathlib.Path, tls: TLSConfig) -> Config:
    return Config(source=None, hostname=HOST, data_dir=tmp_path / "data", tls=tls)


def test_holder_from_config_uses_the_tls_files(pair: Pair, tmp_path: pathlib.Path) -> None:
    holder = TLSContextHolder.from_config(
        _config(tmp_path, TLSConfig(cert=pair.cert, key=pair.key))
    )
    assert (holder.cert, holder.key) == (pair.cert, pair.key)
    assert not (tmp_path / "data" / "tls").exists()


def test_holder_from_config_without_tls_makes_a_self_signed_one(tmp_path: pathlib.Path) -> None:
    holder = TLSContextHolder.from_config(_config(tmp_path, TLSConfig()))
    assert holder.cert == tmp_path / "data" / "tls" / "selfsigned-cert.pem"
    assert holder.cert.exists()


def test_holder_from_config_with_broken_files_raises(pair: Pair, tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, TLSConfig(cert=pair.cert, key=pair.cert))
    with pytest.raises(TLSConfigError):
        TLSContextHolder.from_config(config)


async def test_reload_serves_the_new_certificate_to_new_connections(
    pair: Pair, tmp_path: pathlib.Path
) -> None:
    holder = TLSContextHolder.for_files(pair.cert, pair.key)
    async with handshake(holder.context, pair.client()) as before:
        assert before.client is not None
        old_cert = peer_cert(before)

        renewed = issue(tmp_path / "renewed")
        pair.cert.write_bytes(renewed.cert.read_bytes())
        pair.key.write_bytes(renewed.key.read_bytes())
        assert holder.reload() is True

        async with handshake(holder.context, renewed.client()) as after:
            assert after.client is not None
            assert peer_cert(after) != old_cert
            assert peer_cert(after) == x509.load_pem_x509_certificate(renewed.cert.read_bytes())
        # A client that trusts only the old CA is refused by the new certificate ...
        async with handshake(holder.context, pair.client()) as stale:
            assert stale.client is None
        # ... while the connection opened before the reload goes on with the old one.
        assert before.server is not None
        await before.client.send_all(b"NOOP\r\n")
        assert await before.server.receive_some(100) == b"NOOP\r\n"
        assert peer_cert(before) == old_cert


def test_reload_keeps_the_old_context_when_the_files_break(
    pair: Pair, log: pytest.LogCaptureFixture
) -> None:
    holder = TLSContextHolder.for_files(pair.cert, pair.key)
    old = holder.context
    pair.key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nhalf copied")
    assert holder.reload() is False
    assert holder.context is old
    [error] = [r for r in log.records if r.levelno == logging.ERROR]
    assert str(pair.key) in error.getMessage()
    assert "previous certificate" in error.getMessage()


def test_reload_renews_an_expiring_self_signed_certificate(tmp_path: pathlib.Path) -> None:
    clock = [datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)]
    holder = TLSContextHolder(lambda: ensure_self_signed(tmp_path, HOST, now=clock[0]))
    first = holder.cert.read_bytes()
    clock[0] += datetime.timedelta(days=810)
    assert holder.reload() is True
    assert holder.cert.read_bytes() != first


# --- tls_handshake deadlines -------------------------------------------------------------


async def _silent_or_plain_client(
    pair: Pair, sent: bytes, timeout: float
) -> tuple[TLSHandshakeError, float]:
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        if sent:
            await client.send_all(sent)
        raw = await listener.accept()
        start = trio.current_time()
        with pytest.raises(TLSHandshakeError) as info, trio.fail_after(10):
            await tls_handshake(raw, server_context(pair.cert, pair.key), timeout)
        elapsed = trio.current_time() - start
        # the server side closed the connection: the client sees EOF
        with trio.fail_after(5):
            while await client.receive_some(1000):
                pass
        return info.value, elapsed
    finally:
        await client.aclose()
        await listener.aclose()


async def test_a_silent_client_times_out(pair: Pair) -> None:
    error, elapsed = await _silent_or_plain_client(pair, b"", timeout=0.3)
    assert "no TLS handshake within 0.3s" in str(error)
    assert 0.3 <= elapsed < 5


async def test_a_plaintext_client_fails_at_once(pair: Pair) -> None:
    error, elapsed = await _silent_or_plain_client(pair, b"EHLO client.example\r\n", timeout=30)
    assert "TLS handshake failed" in str(error)
    assert elapsed < 5


# --- SIGHUP ------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
async def test_sighup_reloads(pair: Pair, tmp_path: pathlib.Path) -> None:
    holder = TLSContextHolder.for_files(pair.cert, pair.key)
    old = holder.context
    renewed = issue(tmp_path / "renewed")
    pair.cert.write_bytes(renewed.cert.read_bytes())
    pair.key.write_bytes(renewed.key.read_bytes())
    async with trio.open_nursery() as nursery:
        await nursery.start(watch_sighup, holder)
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(5):
            while holder.context is old:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    async with handshake(holder.context, renewed.client()) as result:
        assert result.client is not None
        assert peer_cert(result) == x509.load_pem_x509_certificate(renewed.cert.read_bytes())
