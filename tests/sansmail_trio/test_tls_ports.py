"""TLS hygiene on every TLS port of a real `sansmail-trio serve`: STARTTLS on smtp and
submission, STLS on pop3, STARTTLS on imap, and the implicit-TLS submissions, pop3s and
imaps. TLS 1.0 and 1.1 and every weak cipher the client's OpenSSL can still offer fail
the handshake; a modern client succeeds on the same path (the control). A SIGHUP
reloads the certificate: sessions already in TLS go on working, new ones get the new
certificate. test_tls.py tests the policy itself on a bare context; this is the server."""

from __future__ import annotations

import contextlib
import imaplib
import os
import pathlib
import poplib
import shutil
import signal
import smtplib
import ssl
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from trio_helpers import FAST_HASHER, wait_until_started

from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore
from sansmail_trio._tls import ensure_self_signed

HOST = "127.0.0.1"
TLS_SERVICES = ("smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps")
PASSWORD = "tls-pw"
#: One user per POP3 service: a maildrop takes one POP3 session at a time.
USERS = {"pop3": "alice@example.test", "pop3s": "bob@example.test"}

#: TLS 1.2 suites a careless server might still accept: no forward secrecy (plain RSA
#: key exchange), CBC with SHA-1 or SHA-2 MACs, finite-field DHE, anonymous, NULL
#: encryption, Camellia; and those this OpenSSL may no longer even offer (RC4, 3DES,
#: EXPORT), tried when it does.
WEAK_CIPHERS = (
    "AES128-SHA",
    "AES256-GCM-SHA384",
    "CAMELLIA128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-RSA-AES256-SHA384",
    "DHE-RSA-AES128-GCM-SHA256",
    "ADH-AES128-GCM-SHA256",
    "AECDH-AES128-SHA",
    "NULL-SHA",
    "NULL-SHA256",
    "ECDHE-RSA-NULL-SHA",
    "RC4-SHA",
    "DES-CBC3-SHA",
    "ECDHE-RSA-DES-CBC3-SHA",
    "EXP-RC4-MD5",
)


def _client(**settings: Any) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the certificate is compared, not trusted
    ciphers = settings.pop("ciphers", None)
    if ciphers is not None:
        # OpenSSL 3 offers none of these above security level 0.
        context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    for name, value in settings.items():
        setattr(context, name, value)
    return context


def _legacy(version: ssl.TLSVersion) -> ssl.SSLContext:
    return _client(ciphers="ALL", minimum_version=version, maximum_version=version)


def _weak(cipher: str) -> ssl.SSLContext:
    # TLS 1.2 at most: TLS 1.3's suites are all AEAD and not chosen by set_ciphers.
    return _client(ciphers=cipher, maximum_version=ssl.TLSVersion.TLSv1_2)


Session = smtplib.SMTP | poplib.POP3 | imaplib.IMAP4


def _open(service: str, port: int, context: ssl.SSLContext) -> Session:
    """A session on `service` in TLS (STARTTLS/STLS first on the plaintext ports)."""
    if service == "submissions":
        return smtplib.SMTP_SSL(HOST, port, context=context, timeout=10)
    if service == "pop3s":
        return poplib.POP3_SSL(HOST, port, context=context, timeout=10)
    if service == "imaps":
        return imaplib.IMAP4_SSL(HOST, port, ssl_context=context, timeout=10)
    session: Session
    if service in ("smtp", "submission"):
        session = smtplib.SMTP(HOST, port, timeout=10)
        upgrade = lambda: session.starttls(context=context)  # noqa: E731
    elif service == "pop3":
        session = poplib.POP3(HOST, port, timeout=10)
        upgrade = lambda: session.stls(context=context)  # noqa: E731
    else:
        session = imaplib.IMAP4(HOST, port, timeout=10)
        upgrade = lambda: session.starttls(ssl_context=context)  # noqa: E731
    try:
        if isinstance(session, smtplib.SMTP):
            session.ehlo("client.example")
        upgrade()
    except BaseException:
        _close(session)
        raise
    return session


def _close(session: Session) -> None:
    with contextlib.suppress(OSError, AttributeError):
        if isinstance(session, imaplib.IMAP4):
            session.shutdown()
        else:
            session.close()


def _tls(session: Session) -> ssl.SSLSocket:
    sock = session.sock
    assert isinstance(sock, ssl.SSLSocket)
    return sock


def _refused(service: str, port: int, context: ssl.SSLContext) -> str:
    """Why the handshake failed (the test fails if it succeeded)."""
    try:
        session = _open(service, port, context)
    except (ssl.SSLError, OSError, smtplib.SMTPException, poplib.error_proto) as exc:
        return f"{type(exc).__name__}: {exc}"
    tls = _tls(session)
    _close(session)
    pytest.fail(f"{service}: handshake succeeded: {tls.version()} {tls.cipher()}")


def _config(folder: pathlib.Path, tls: str = "") -> None:
    listen = "\n".join(f'{service} = "{HOST}:0"' for service in TLS_SERVICES)
    (folder / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        f'[listen]\n{listen}\n[dns]\nnameservers = ["127.0.0.1:9"]\n{tls}'
    )
    users = UserStore(folder / "data" / "users.json", hasher=FAST_HASHER)
    for user in USERS.values():
        users.add(parse_address(user), PASSWORD)


@contextlib.contextmanager
def _serving(folder: pathlib.Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, int]]]:
    script = shutil.which("sansmail-trio")
    assert script is not None
    log = folder / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([script, "serve"], cwd=folder, stderr=out)
    try:
        ports = wait_until_started(proc, log)
        assert set(ports) == set(TLS_SERVICES), ports
        yield proc, ports
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert "Traceback" not in log.read_text()


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    folder = tmp_path_factory.mktemp("tls-ports")
    _config(folder)
    with _serving(folder) as (_, found):
        yield found


@pytest.mark.parametrize("service", TLS_SERVICES)
def test_a_modern_client_gets_tls_12_and_13(ports: dict[str, int], service: str) -> None:
    # The control: the path the refusals below take does work.
    good = _client(maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
    session = _open(service, ports[service], good)
    assert (_tls(session).version(), _tls(session).cipher()[0]) == (  # type: ignore[index]
        "TLSv1.2",
        "ECDHE-RSA-AES128-GCM-SHA256",
    )
    _close(session)
    session = _open(service, ports[service], _client())
    assert _tls(session).version() == "TLSv1.3"
    _close(session)


# Setting TLSv1 as a version bound is deprecated, which is the point of this test.
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("service", TLS_SERVICES)
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_10_and_11_are_refused(
    ports: dict[str, int], service: str, version: ssl.TLSVersion
) -> None:
    why = _refused(service, ports[service], _legacy(version))
    # The client offered the old version (SECLEVEL=0), and the server refused it: a
    # client unable to offer it would fail with NO_PROTOCOLS_AVAILABLE instead.
    assert "NO_PROTOCOLS_AVAILABLE" not in why, why


@pytest.mark.parametrize("service", TLS_SERVICES)
def test_weak_ciphers_are_refused(ports: dict[str, int], service: str) -> None:
    offered = []
    for cipher in WEAK_CIPHERS:
        try:
            context = _weak(cipher)
        except ssl.SSLError:  # this OpenSSL cannot offer it (RC4, 3DES, EXPORT): neither
            continue  # can the server's, which is the same library
        offered.append(cipher)
        why = _refused(service, ports[service], context)
        assert "NO_CIPHERS_AVAILABLE" not in why, (cipher, why)
    assert len(offered) >= 8, offered


def _der(session: Session) -> bytes:
    der = _tls(session).getpeercert(binary_form=True)
    assert der is not None
    return der


def _still_works(service: str, session: Session) -> None:
    """A command after the reload, in the session opened before it."""
    if isinstance(session, smtplib.SMTP):
        assert session.ehlo("client.example")[0] == 250
        assert session.noop()[0] == 250
    elif isinstance(session, poplib.POP3):
        assert session.user(USERS[service]).startswith(b"+OK")
        assert session.pass_(PASSWORD).startswith(b"+OK")
        assert session.stat() == (0, 0)
    else:
        assert session.login(USERS["pop3"], PASSWORD)[0] == "OK"
        assert session.select("INBOX")[0] == "OK"
        assert session.noop()[0] == "OK"


def test_sighup_reloads_the_certificate_and_keeps_open_sessions(tmp_path: pathlib.Path) -> None:
    old_cert, old_key = ensure_self_signed(tmp_path / "old", "mx.example.test")
    new_cert, new_key = ensure_self_signed(tmp_path / "new", "mx.example.test")
    served = tmp_path / "served"
    served.mkdir()
    cert, key = served / "cert.pem", served / "key.pem"
    shutil.copy(old_cert, cert)
    shutil.copy(old_key, key)
    _config(tmp_path, f'[tls]\ncert = "{cert}"\nkey = "{key}"\n')
    log = tmp_path / "serve.log"
    with _serving(tmp_path) as (proc, ports):
        sessions = {service: _open(service, ports[service], _client()) for service in ports}
        try:
            old = {_der(session) for session in sessions.values()}
            assert len(old) == 1
            # A renewal, as certbot's deploy hook makes it: new files, then SIGHUP.
            for source, target in ((new_key, key), (new_cert, cert)):
                shutil.copy(source, served / "incoming")
                os.replace(served / "incoming", target)
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while "TLS: reloaded certificate" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            for service, session in sessions.items():
                _still_works(service, session)
                assert _der(session) in old  # its session's certificate, as it was
            for service, port in ports.items():
                fresh = _open(service, port, _client())
                try:
                    assert _der(fresh) not in old, service
                    assert _der(fresh) == ssl.PEM_cert_to_DER_cert(new_cert.read_text())
                finally:
                    _close(fresh)
        finally:
            for session in sessions.values():
                _close(session)
