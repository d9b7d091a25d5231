"""TLS for the Trio adapter: the server `SSLContext`, the self-signed default certificate,
reloading on SIGHUP, the implicit-TLS handshake, and the words the log and the Received
header use for a session.

Theory of operation:

* **One policy, one function.** `server_context()` is the only place an `SSLContext` for
  serving is built, so STARTTLS (RFC 3207) on smtp/submission and the implicit-TLS ports
  (RFC 8314 §3.3) cannot drift apart. TLS 1.2 is the floor (RFC 8996 retired 1.0 and 1.1;
  RFC 8314 §4.1 asks for 1.2 or later). TLS 1.2 suites follow Mozilla's "intermediate"
  profile restricted to ECDHE with AEAD ciphers; TLS 1.3 keeps OpenSSL's own list, which
  is already only AEAD. No compression (CRIME), no renegotiation (RFC 5746 attacks and a
  cheap CPU drain), session tickets left on (resumption saves a handshake per message on
  a busy relay). The ssl module gives bad files one opaque reason ("PEM lib"), so when
  OpenSSL refuses a certificate or key, `cryptography` is asked *why*, and the
  `TLSConfigError` names the file and what is wrong with it. OpenSSL stays the judge:
  cryptography only explains a refusal, it never refuses on its own.

* **A certificate from the first start.** With no ``[tls]`` table, `ensure_self_signed()`
  writes ``<data_dir>/tls/selfsigned-{cert,key}.pem`` once and reuses them. It writes a
  fresh pair when the old one is missing, damaged, mismatched, about to expire, or no
  longer names the configured hostname. Each file is written to a temporary name in the
  same folder, fsynced and renamed into place (rename is atomic in POSIX), key first:
  a crash can leave an old certificate beside a new key, never half a key, and the
  mismatch is detected and repaired on the next call. The key file is mode 0600 from
  the moment it exists (`mkstemp` creates it so).

* **Reload without a restart.** `TLSContextHolder` owns the current context. The
  listeners read `holder.context` once per connection, so `reload()` (on SIGHUP, from
  `watch_sighup`) changes the certificate new connections see while open connections
  keep the context their `SSLStream` was built with. A reload that fails (a half-copied
  renewal, a key that does not match) is logged and the old context stays: a typo must
  not take mail down.

* **A handshake has a deadline.** On the implicit-TLS ports the handshake is the first
  thing a client must do; a client that connects and stays silent would otherwise hold
  a connection slot forever. `tls_handshake()` runs it under `trio.fail_after` and turns
  every way it can fail into one `TLSHandshakeError` that the caller logs.

The self-signed key is RSA 2048 rather than ECDSA P-256: this is the certificate of
small installations whose clients are often the oldest in the field (printers and
scanners that mail, embedded MTAs), and RSA is the one key type every TLS 1.2 stack
accepts. Generating it costs a fraction of a second, once. Its validity is just under
825 days, the longest Apple's TLS stacks accept for any server certificate, including
ones the user has chosen to trust; the same stacks want the name in the
subjectAltName and the serverAuth extended key usage, so both are there.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import pathlib
import signal
import ssl
import tempfile
from collections.abc import Callable
from typing import Any, Final

import trio
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sansmail.config import Config
from sansmail.storage.durable import fsync_dir
from sansmail_trio._metrics import PROBE
from sansmail_trio._wire import Wire

__all__ = [
    "TLS_HANDSHAKE_TIMEOUT",
    "TLSConfigError",
    "TLSContextHolder",
    "TLSHandshakeError",
    "describe",
    "ensure_self_signed",
    "received_tls",
    "server_context",
    "start_tls",
    "tls_files_problem",
    "tls_handshake",
    "watch_sighup",
]

_log = logging.getLogger("sansmail.master")

#: Mozilla's "intermediate" TLS 1.2 suites, ECDHE only: the DHE ones need DH parameters
#: that the ssl module does not set up, and every TLS 1.2 client in use speaks ECDHE.
TLS12_CIPHERS: Final = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)

SELF_SIGNED_CERT: Final = "selfsigned-cert.pem"
SELF_SIGNED_KEY: Final = "selfsigned-key.pem"
#: Just under Apple's 825-day ceiling (see the module docstring).
SELF_SIGNED_VALIDITY: Final = datetime.timedelta(days=824)
#: A self-signed certificate this close to its end is replaced at the next start or
#: SIGHUP, so a server that is restarted now and then never serves an expired one.
SELF_SIGNED_RENEW_BEFORE: Final = datetime.timedelta(days=30)
#: Clocks of clients are often a little behind; a certificate made "now" would look
#: not-yet-valid to them for a while.
_BACKDATE: Final = datetime.timedelta(hours=1)
_TEMP_PREFIX: Final = ".selfsigned-"
_LOOPBACK_NAMES: Final = ("localhost",)
_LOOPBACK_IPS: Final = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


class TLSConfigError(Exception):
    """A certificate or key that cannot be served; str() is ``<file>: <what is wrong>``."""

    def __init__(self, path: pathlib.Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class TLSHandshakeError(Exception):
    """A client's TLS handshake failed or took too long; str() says how, for the log."""


# --- the server context ------------------------------------------------------------------


def server_context(cert: pathlib.Path, key: pathlib.Path) -> ssl.SSLContext:
    """A server `SSLContext` serving the PEM chain `cert` with the private key `key`
    (both may be the same file). Raises `TLSConfigError` naming the file at fault."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8996, RFC 8314 §4.1
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    )
    context.set_ciphers(TLS12_CIPHERS)

    def no_passphrase() -> bytes:
        # Without a callback OpenSSL would prompt on the terminal and hang a daemon.
        raise TLSConfigError(key, "the private key is encrypted; sansmail needs it unencrypted")

    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except (ssl.SSLError, OSError) as exc:
        raise _explain(cert, key, exc) from exc
    _warn_if_outside_validity(cert)
    return context


def tls_files_problem(cert: pathlib.Path, key: pathlib.Path) -> str | None:
    """What is wrong with a certificate and key pair, or None when they would serve:
    the checker `sansmail.config.load_config` takes for ``[tls]``."""
    try:
        server_context(cert, key)
    except TLSConfigError as exc:
        return exc.reason
    return None


def _explain(cert: pathlib.Path, key: pathlib.Path, exc: Exception) -> TLSConfigError:
    """Why OpenSSL refused the pair, as precisely as cryptography can tell."""
    try:
        chain = x509.load_pem_x509_certificates(cert.read_bytes())
    except OSError as err:
        return TLSConfigError(cert, f"cannot read the certificate: {err.strerror or err}")
    except ValueError:
        return TLSConfigError(cert, "no PEM certificate in it (-----BEGIN CERTIFICATE-----)")
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except OSError as err:
        return TLSConfigError(key, f"cannot read the private key: {err.strerror or err}")
    except TypeError:
        return TLSConfigError(key, "the private key is encrypted; sansmail needs it unencrypted")
    except (ValueError, UnsupportedAlgorithm):
        return TLSConfigError(key, "no usable PEM private key in it (-----BEGIN PRIVATE KEY-----)")
    if _spki(private.public_key()) != _spki(chain[0].public_key()):
        return TLSConfigError(key, f"this key does not belong to the certificate in {cert}")
    reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else str(exc)
    return TLSConfigError(cert, f"OpenSSL refused this certificate with key {key}: {reason}")


def _spki(public_key: Any) -> bytes:
    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _warn_if_outside_validity(cert: pathlib.Path) -> None:
    # Served anyway: on port 25 an expired certificate still encrypts, and most MTAs do
    # not check (RFC 7435 opportunistic security); refusing to start would be worse.
    with contextlib.suppress(OSError, ValueError):
        leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
        now = datetime.datetime.now(datetime.UTC)
        if now > leaf.not_valid_after_utc:
            _log.warning(
                "TLS: %s expired on %s; clients that check will refuse it",
                cert,
                leaf.not_valid_after_utc.date(),
            )
        elif now < leaf.not_valid_before_utc:
            _log.warning("TLS: %s is not valid before %s", cert, leaf.not_valid_before_utc)


# --- the self-signed default -------------------------------------------------------------


def ensure_self_signed(
    data_dir: pathlib.Path, hostname: str, *, now: datetime.datetime | None = None
) -> tuple[pathlib.Path, pathlib.Path]:
    """The self-signed (cert, key) under ``<data_dir>/tls/``, written on the first call
    and whenever the existing pair is unusable (see the module docstring); logs a line
    when it writes one. `now` is for tests. Raises `TLSConfigError` when it cannot write."""
    now = now or datetime.datetime.now(datetime.UTC)
    folder = data_dir / "tls"
    cert, key = folder / SELF_SIGNED_CERT, folder / SELF_SIGNED_KEY
    problem = _why_renew(cert, key, hostname, now)
    if problem is None:
        _log.info(
            "TLS: using the self-signed certificate %s; clients will warn until [tls] cert "
            "and key point at a real one",
            cert,
        )
        return cert, key
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in folder.glob(_TEMP_PREFIX + "*"):  # from a crash mid-write
            stale.unlink()
        cert_pem, key_pem = _make_self_signed(hostname, now)
        _write_atomically(key, key_pem, mode=0o600)
        _write_atomically(cert, cert_pem, mode=0o644)
        fsync_dir(folder)
    except OSError as exc:
        raise TLSConfigError(
            folder, f"cannot write the self-signed certificate: {exc.strerror or exc}"
        ) from exc
    why = "" if problem == "first start" else f" (the old one: {problem})"
    _log.warning(
        "TLS: generated a self-signed certificate for %s in %s%s. Clients will warn that it "
        "is not trusted; to use a real certificate, set cert and key in the [tls] table of "
        "the config file",
        hostname,
        cert,
        why,
    )
    return cert, key


def _why_renew(
    cert: pathlib.Path, key: pathlib.Path, hostname: str, now: datetime.datetime
) -> str | None:
    """None when the pair on disk can be served again, else why it cannot."""
    if not cert.exists() and not key.exists():
        return "first start"
    try:
        leaf = x509.load_pem_x509_certificate(cert.read_bytes())
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return f"unreadable: {exc}"
    if _spki(private.public_key()) != _spki(leaf.public_key()):
        return "its key does not match it"
    if leaf.not_valid_after_utc - now < SELF_SIGNED_RENEW_BEFORE:
        return f"it expires on {leaf.not_valid_after_utc.date()}"
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "it has no subjectAltName"
    if _subject_alt_name(hostname)[0] not in names:
        return f"it does not name {hostname}"
    return None


def _subject_alt_name(hostname: str) -> list[x509.GeneralName]:
    """The hostname first, then the loopback names: the embedded default listens on
    127.0.0.1 while its hostname is the machine's FQDN, so a user who trusts this
    certificate can also connect by "localhost" or address. It vouches for nothing more
    than it did: whoever holds the key already runs this server."""
    try:
        own: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        own = x509.DNSName(hostname)
    names: list[x509.GeneralName] = [own]
    names += [x509.DNSName(name) for name in _LOOPBACK_NAMES]
    names += [x509.IPAddress(ip) for ip in _LOOPBACK_IPS]
    unique: list[x509.GeneralName] = []
    for name in names:
        if name not in unique:
            unique.append(name)
    return unique


def _make_self_signed(hostname: str, now: datetime.datetime) -> tuple[bytes, bytes]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sansmail self-signed")]
    if len(hostname) <= 64:  # the X.520 upper bound for a commonName
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, hostname))
    name = x509.Name(attributes)
    public = private.public_key()
    key_id = x509.SubjectKeyIdentifier.from_public_key(public)
    not_before = now - _BACKDATE
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + SELF_SIGNED_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_subject_alt_name(hostname)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(key_id, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(key_id),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    key_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _write_atomically(path: pathlib.Path, data: bytes, *, mode: int) -> None:
    # mkstemp creates the file 0600, so the key is never readable by others, even for
    # the instant between creation and chmod.
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


# --- the current context, reloadable -----------------------------------------------------


class TLSContextHolder:
    """The server context new connections should use; `reload()` rebuilds it.

    `files` names the certificate and key; it is called again on every reload, so the
    self-signed default is renewed by a SIGHUP when it nears its end.
    """

    def __init__(self, files: Callable[[], tuple[pathlib.Path, pathlib.Path]]) -> None:
        self._files = files
        self.cert, self.key = files()
        self._context = server_context(self.cert, self.key)

    @classmethod
    def for_files(cls, cert: pathlib.Path, key: pathlib.Path) -> TLSContextHolder:
        """A holder serving these two files (the ``[tls]`` table)."""
        return cls(lambda: (cert, key))

    @classmethod
    def from_config(cls, config: Config) -> TLSContextHolder:
        """The ``[tls]`` files when the config names them, else the self-signed pair in
        data_dir (made on first use). Raises `TLSConfigError`."""
        if config.tls.cert is not None and config.tls.key is not None:
            return cls.for_files(config.tls.cert, config.tls.key)
        data_dir, hostname = config.data_dir, config.hostname
        return cls(lambda: ensure_self_signed(data_dir, hostname))

    @property
    def context(self) -> ssl.SSLContext:
        """The context for a connection starting now; keep it for the connection's life."""
        return self._context

    def reload(self) -> bool:
        """Rebuild the context from the files; on failure log why and keep the old one.
        True when the new context is in place. Blocking file I/O: call it in a thread
        from async code."""
        try:
            cert, key = self._files()
            context = server_context(cert, key)
        except TLSConfigError as exc:
            _log.error("TLS: reload failed, still serving the previous certificate: %s", exc)
            return False
        # One assignment, so a connection starting meanwhile sees the old or the new
        # context, never a mixture.
        self.cert, self.key, self._context = cert, key, context
        _log.info("TLS: reloaded certificate %s and key %s", cert, key)
        return True


async def watch_sighup(
    holder: TLSContextHolder, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Reload `holder` on every SIGHUP, forever. Start it with ``nursery.start`` so the
    handler is installed before anyone can send the signal (the default action of
    SIGHUP ends the process)."""
    if not hasattr(signal, "SIGHUP"):  # Windows
        task_status.started()
        await trio.sleep_forever()
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        task_status.started()
        async for _ in signals:
            _log.info("SIGHUP: reloading the TLS certificate")
            await trio.to_thread.run_sync(holder.reload)


# --- handshakes and what they negotiated -------------------------------------------------

#: A client that asked for STARTTLS (or connected to an implicit-TLS port) has this long to
#: complete its handshake.
TLS_HANDSHAKE_TIMEOUT = 30.0


async def start_tls(
    wire: Wire, holder: TLSContextHolder, timeout: float = TLS_HANDSHAKE_TIMEOUT
) -> trio.SSLStream[Any]:
    """The STARTTLS/STLS upgrade of SMTP, POP3 and IMAP (RFC 3207, RFC 2595): handshake
    within `timeout`, then let the core switch. Any way the handshake fails is one
    `TLSHandshakeError`; plaintext the client pipelined behind the command makes the core
    raise `RemoteProtocolError` (an injection attempt), which the caller handles."""
    try:
        with trio.fail_after(timeout):
            await wire.start_tls(holder.context)
    except trio.TooSlowError:
        raise TLSHandshakeError("timeout") from None
    except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
        raise TLSHandshakeError(str(exc) or type(exc).__name__) from exc
    stream = wire.stream
    assert isinstance(stream, trio.SSLStream)
    _count(stream)
    return stream


async def tls_handshake(
    stream: trio.abc.Stream, context: ssl.SSLContext, timeout: float
) -> trio.SSLStream[trio.abc.Stream]:
    """Wrap `stream` as the TLS server side and complete the handshake within `timeout`
    seconds (implicit TLS, RFC 8314 §3.3). On any failure `stream` is closed and
    `TLSHandshakeError` says why."""
    tls = trio.SSLStream(stream, context, server_side=True)
    try:
        with trio.fail_after(timeout):
            await tls.do_handshake()
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise TLSHandshakeError(f"no TLS handshake within {timeout:g}s") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await trio.aclose_forcefully(stream)
        raise TLSHandshakeError(_handshake_failure(exc)) from exc
    _count(tls)
    return tls


def _count(stream: trio.SSLStream[Any]) -> None:
    # For the metrics: the listener is the connection's (`_metrics.PROBE`, set at accept).
    probe = PROBE.get()
    if probe is not None:
        probe.tls(stream.version())


def _handshake_failure(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError) and cause.reason:
        # e.g. UNSUPPORTED_PROTOCOL (a TLS 1.1 client), WRONG_VERSION_NUMBER (plaintext)
        return f"TLS handshake failed: {cause.reason}"
    return "connection closed during the TLS handshake"


def describe(stream: trio.SSLStream[Any]) -> str:
    """The session for the log, in Postfix's words: ``TLSv1.3 with cipher
    TLS_AES_256_GCM_SHA384 (256/256 bits)``."""
    version, cipher, bits, alg_bits = _negotiated(stream)
    return f"{version} with cipher {cipher} ({bits}/{alg_bits} bits)"


def received_tls(stream: trio.SSLStream[Any]) -> str:
    """The session as `sansmail.mail.trace.received(tls=...)` takes it: ``TLSv1.3
    TLS_AES_256_GCM_SHA384``."""
    version, cipher, _, _ = _negotiated(stream)
    return f"{version} {cipher}"


def _negotiated(stream: trio.SSLStream[Any]) -> tuple[str, str, int, int]:
    version: str | None = stream.version()
    cipher: tuple[str, str, int] | None = stream.cipher()
    if version is None or cipher is None:
        raise ValueError("no TLS session on this stream")
    name, _, bits = cipher
    # The ssl module reports only the secret bits; the algorithm's key size (the second
    # number Postfix logs) is in the context's cipher table.
    context: ssl.SSLContext = stream.context
    alg_bits = next((int(c["alg_bits"]) for c in context.get_ciphers() if c["name"] == name), bits)
    return version, name, bits, alg_bits
