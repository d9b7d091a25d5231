"""DKIM (RFC 6376, RFC 8463) and ARC (RFC 8617): verify, sign, seal, and what to sign on
the way out. Pure: the DNS answers come in through the `sansmail.mail.dnsquery` generator
protocol, the keys as bytes.

Theory of operation
-------------------
The cryptography and canonicalization are dkimpy's (PyPI ``dkimpy``, module ``dkim``),
the implementation the milter world uses (dkimpy-milter) and the one issue 12 names.
dkimpy looks keys up through a "DNS function" it is given; here that function only
serves answers already in hand, so nothing here waits:

- `verify(message)` reads the DKIM-Signature fields (at most `max_signatures` of them:
  each costs a body canonicalization and a public-key operation), yields ONE batch of TXT
  questions for every ``<s>._domainkey.<d>`` they name, then verifies each signature with
  dkimpy against those answers. The results are RFC 8601 §2.7.1's:

  ==========  ===============================================================
  pass        the signature verifies
  fail        it does not (body hash, signature), or has expired (RFC 6376
              §6.1.1 PERMFAIL "signature expired")
  neutral     its tag list does not parse (§3.2)
  policy      it verifies, with a key too small to count (RFC 8301 §3.2)
  temperror   the key lookup failed transiently (SERVFAIL, timeout)
  permerror   no key record (NXDOMAIN or no TXT), a key record that does not
              parse or whose h= excludes the signature's hash (§6.1.2), a required
              tag missing or invalid, an unreadable header
  ==========  ===============================================================

  An empty tuple means no signature (``dkim=none``).
- `arc_verify(message)` does the same for the ARC sets (RFC 8617 §5.2): one batch for
  the keys of every ARC-Seal and ARC-Message-Signature, then dkimpy's chain validation:
  ``pass``, ``fail`` (a transient DNS failure too: the arc method has no temperror) or
  ``none``.
- `sign(message, ...)` returns the DKIM-Signature field to prepend: relaxed/relaxed, the
  header fields `SIGNED_FIELDS` present in the message, From signed once more than it
  occurs ("oversigned", so that no From can be added without breaking the signature);
  rsa-sha256 or ed25519-sha256 after the key.
- `arc_seal(message, ...)` returns the ARC set to prepend (ARC-Seal,
  ARC-Message-Signature, ARC-Authentication-Results). The AAR copies the message's
  Authentication-Results fields whose authserv-id is ours (written at intake); the
  chain's cv= comes from the ``arc=`` result in them. ARC knows only rsa-sha256 (RFC 8617
  §4.1.3 via RFC 6376), so sealing needs an RSA key.
- `outbound_fields(...)` decides what a message leaving for another host gets: a
  DKIM-Signature when we hold a key for its From domain, and, for a forwarded copy, an
  ARC set (see its docstring).
- `generate`, `txt_record` and `dns_record` make keys and the record to publish.

Speed. The RSA signature itself, RSASSA-PKCS1-v1_5 with the private key, is computed by
dkimpy in pure Python (``pow`` on 1024-bit halves): 7.5 ms per signature, 94% of what
signing a 10 KiB message costs in a profile of the queue runner, which then relayed at a
sixth of its unsigned rate. The same operation through OpenSSL (``cryptography``) takes
0.4 ms, and gives the same octets: PKCS #1 v1.5 signatures are deterministic. So
dkimpy's module-level ``RSASSA_PKCS1_v1_5_sign``, the one function its signer calls for
that step, is replaced here by `_rsa_sign`, which does it through OpenSSL and hands
anything it does not expect back to dkimpy's own; everything else (canonicalization,
the hashes, the tags, folding) stays dkimpy's.

The libraries keep two things of their own that the rest of sansmail passes as
arguments: dkimpy reads the clock (t= when signing, x= when verifying) and `generate`
draws the key from the operating system's randomness through ``cryptography``.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import logging
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Final, Literal, TypeAlias

import attrs
import dkim as dkimpy  # type: ignore[import-untyped]
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.util import InvalidTagValueList, parse_tag_value  # type: ignore[import-untyped]

from sansmail.mail.dnsquery import DnsAnswer, DnsCheck, DnsQuery, ask

__all__ = [
    "MAX_ARC_SETS",
    "MAX_SIGNATURES",
    "SIGNED_FIELDS",
    "ArcResult",
    "DkimError",
    "DkimResult",
    "KeyAlgorithm",
    "arc_seal",
    "arc_verify",
    "dns_record",
    "from_domain",
    "generate",
    "key_algorithm",
    "outbound_fields",
    "sign",
    "txt_record",
    "verify",
]

#: Signatures checked per message; the rest are ignored (each costs a public-key
#: operation and a pass over the body).
MAX_SIGNATURES: Final = 5
#: ARC sets validated per message; a longer chain is judged "fail". RFC 8617 §4.2.1
#: allows 50, real chains are a handful of hops.
MAX_ARC_SETS: Final = 10
#: The header fields `sign` covers when they are present (RFC 6376 §5.4.1).
SIGNED_FIELDS: Final = (
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
)
_SIGNED: Final = frozenset(name.lower().encode() for name in SIGNED_FIELDS)
_REASON_MAX: Final = 100

DkimVerdict: TypeAlias = Literal["pass", "fail", "neutral", "policy", "temperror", "permerror"]
ArcVerdict: TypeAlias = Literal["pass", "fail", "none"]
KeyAlgorithm: TypeAlias = Literal["rsa", "ed25519"]

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_KEY_NAME: Final = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\Z")


def _quiet_logger() -> logging.Logger:
    # dkimpy logs every failed check at ERROR: a forged signature is the sender's
    # problem, and its result is in the Authentication-Results field already.
    logger = logging.getLogger("sansmail.dkimpy")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


_LOG: Final = _quiet_logger()


class DkimError(ValueError):
    """A message or key that cannot be signed with; str() says why in one line."""


@attrs.frozen(kw_only=True)
class DkimResult:
    """The verdict on one DKIM-Signature (RFC 8601 §2.7.1). `b` is the first 8 characters
    of b=, which tell two signatures of one domain apart (RFC 6008)."""

    result: DkimVerdict
    domain: str
    selector: str
    identity: str | None = None
    b: str = ""
    algorithm: str = ""
    reason: str | None = None


@attrs.frozen(kw_only=True)
class ArcResult:
    """The verdict on a message's ARC chain (RFC 8617 §5.2): `instance` is the newest
    set's i= (0: no chain), `domain` its sealer's d=."""

    result: ArcVerdict
    reason: str | None = None
    instance: int = 0
    domain: str | None = None


# -- dkimpy's RSA signature through OpenSSL (see "Speed" above) --------------------------------

_DKIMPY_RSA_SIGN: Final = dkimpy.RSASSA_PKCS1_v1_5_sign
_PREHASHED: Final = {
    "sha256": utils.Prehashed(hashes.SHA256()),
    "sha1": utils.Prehashed(hashes.SHA1()),  # noqa: S303 (rsa-sha1 signatures: dkimpy's)
}


@functools.lru_cache(maxsize=64)
def _openssl_key(numbers: tuple[int, int, int, int, int, int, int, int]) -> rsa.RSAPrivateKey:
    n, e, d, p, q, dmp1, dmq1, iqmp = numbers
    public = rsa.RSAPublicNumbers(e, n)
    return rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, public).private_key()


def _rsa_sign(digest: Any, private_key: dict[str, int]) -> bytes:
    """dkimpy's ``RSASSA_PKCS1_v1_5_sign(hash, private_key)`` through OpenSSL: `digest`
    is dkimpy's hash object, `private_key` the key as dkimpy parsed it."""
    prehashed = _PREHASHED.get(getattr(digest, "name", "").lower())
    try:
        numbers = tuple(
            private_key[name]
            for name in (
                "modulus",
                "publicExponent",
                "privateExponent",
                "prime1",
                "prime2",
                "exponent1",
                "exponent2",
                "coefficient",
            )
        )
        if prehashed is None:
            raise KeyError(digest)
        key = _openssl_key(numbers)
        return key.sign(digest.digest(), padding.PKCS1v15(), prehashed)
    except (KeyError, TypeError, ValueError):
        # Not a key or hash of the kind dkimpy signs with: its own code says why.
        signature: bytes = _DKIMPY_RSA_SIGN(digest, private_key)
        return signature


dkimpy.RSASSA_PKCS1_v1_5_sign = _rsa_sign

_DKIMPY_RSA_VERIFY: Final = dkimpy.RSASSA_PKCS1_v1_5_verify


@functools.lru_cache(maxsize=256)
def _openssl_public(n: int, e: int) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(e, n).public_key()


def _rsa_verify(digest: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    """dkimpy's ``RSASSA_PKCS1_v1_5_verify`` through OpenSSL (dkimpy's is pure Python)."""
    prehashed = _PREHASHED.get(getattr(digest, "name", "").lower())
    try:
        if prehashed is None:
            raise KeyError(digest)
        key = _openssl_public(public_key["modulus"], public_key["publicExponent"])
    except (KeyError, TypeError, ValueError):
        return bool(_DKIMPY_RSA_VERIFY(digest, signature, public_key))
    try:
        key.verify(signature, digest.digest(), padding.PKCS1v15(), prehashed)
    except InvalidSignature:
        return False
    return True


dkimpy.RSASSA_PKCS1_v1_5_verify = _rsa_verify


# -- verifying ---------------------------------------------------------------------------


@attrs.frozen
class _Signature:
    index: int
    tags: dict[bytes, bytes] | None
    problem: str | None

    def text(self, tag: bytes) -> str:
        value = (self.tags or {}).get(tag, b"")
        return re.sub(r"\s+", "", value.decode("latin-1"))

    @property
    def key_name(self) -> str | None:
        name = f"{self.text(b's')}._domainkey.{self.text(b'd')}".lower()
        return name if _KEY_NAME.match(name) else None


def verify(
    message: bytes, *, max_signatures: int = MAX_SIGNATURES
) -> DnsCheck[tuple[DkimResult, ...]]:
    """The verdict on each of the first `max_signatures` DKIM-Signature fields of
    `message` (wire form, CRLF, as received), in their order; () when it has none."""
    try:
        checker = dkimpy.DKIM(message, logger=_LOG)
    except dkimpy.DKIMException:
        checker = None
    fields = _fields(message, checker, b"dkim-signature")
    if not fields:
        return ()
    signatures = [_parse(index, value) for index, value in enumerate(fields[:max_signatures])]
    names = list(dict.fromkeys(s.key_name for s in signatures if s.tags and s.key_name))
    answers = yield from ask(*(DnsQuery(name, "TXT") for name in names))
    keys = dict(zip(names, answers, strict=True))
    return tuple(_verify_one(checker, signature, keys) for signature in signatures)


def _fields(message: bytes, checker: dkimpy.DomainSigner | None, name: bytes) -> list[bytes]:
    if checker is not None:
        return [value for field, value in checker.headers if field.lower() == name]
    # dkimpy could not read the header: find the fields anyway, to report them.
    end = message.find(b"\r\n\r\n")
    header = message[: end if end >= 0 else len(message)]
    pattern = re.compile(rb"^" + re.escape(name) + rb"[ \t]*:(.*(?:\r\n[ \t].*)*)", re.I | re.M)
    return [m.group(1) for m in pattern.finditer(header)]


def _parse(index: int, value: bytes) -> _Signature:
    try:
        return _Signature(index, parse_tag_value(re.sub(rb"\r\n", b"", value)), None)
    except InvalidTagValueList as exc:
        return _Signature(index, None, f"tag list does not parse: {exc}")


def _verify_one(
    checker: dkimpy.DKIM | None, sig: _Signature, keys: dict[str, DnsAnswer]
) -> DkimResult:
    def result(verdict: DkimVerdict, reason: str | None = None) -> DkimResult:
        return DkimResult(
            result=verdict,
            domain=sig.text(b"d").lower(),
            selector=sig.text(b"s"),
            identity=sig.text(b"i") or None,
            b=sig.text(b"b")[:8],
            algorithm=sig.text(b"a").lower(),
            reason=_reason(reason) if reason else None,
        )

    if sig.tags is None:
        return result("neutral", sig.problem)
    name = sig.key_name
    if checker is None:
        return result("permerror", "the message header does not parse")
    try:
        dkimpy.validate_signature_fields(sig.tags)
    except dkimpy.ValidationError as exc:
        return result("fail" if "past" in str(exc) else "permerror", str(exc))
    if name is None:
        return result("permerror", "s= and d= do not make a DNS name")
    answer = keys[name]
    if answer.failed:
        return result("temperror", f"key lookup for {name}: {answer.status.value}")
    record = _key_record(answer)
    if record is None:
        return result("permerror", f"no key for signature at {name}")
    try:
        dkimpy.evaluate_pk(name, record)
    except dkimpy.DKIMException as exc:
        return result("permerror", f"bad key at {name}: {exc}")
    if not _hash_allowed(record, sig.text(b"a")):
        # RFC 6376 §6.1.2 (dkimpy does not look at the key's h= tag).
        return result("permerror", f"inappropriate hash algorithm for the key at {name}")
    try:
        valid = checker.verify(idx=sig.index, dnsfunc=lambda _name, timeout=5: record)
    except dkimpy.KeyFormatError as exc:
        return result("policy", str(exc))
    except dkimpy.ValidationError as exc:
        if "body hash" in str(exc):
            return result("fail", "body hash did not verify")
        return result("permerror", str(exc))
    except dkimpy.DKIMException as exc:
        return result("permerror", str(exc))
    if not valid:
        return result("fail", "signature did not verify")
    return result("pass")


def _key_record(answer: DnsAnswer) -> bytes | None:
    """The key record among the TXT records: the first that looks like one (RFC 6376
    §3.6.2.2 leaves the choice among several to the verifier)."""
    if answer.void:
        return None
    records = [r.encode("latin-1") for r in answer.records]
    for record in records:
        if re.match(rb"\s*(v\s*=\s*DKIM1|[a-z]\s*=)", record):
            return record
    return records[0]


def _hash_allowed(record: bytes, algorithm: str) -> bool:
    """Whether the key record's h= tag (RFC 6376 §3.6.1: the hash algorithms the key may
    be used with; absent, any) allows the hash of a= ("rsa-sha256": "sha256")."""
    try:
        tags = parse_tag_value(record)
    except InvalidTagValueList:
        return True  # evaluate_pk has read it; a tag list it accepts is dkimpy's call
    allowed = tags.get(b"h")
    if allowed is None:
        return True
    hashes_ = {h.strip().lower() for h in allowed.decode("latin-1").split(":")}
    return algorithm.lower().rpartition("-")[2] in hashes_


def _reason(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text[:_REASON_MAX]


# -- ARC verification -----------------------------------------------------------------------


_ARC_FIELD = re.compile(rb"^arc-", re.I | re.M)


def arc_verify(message: bytes, *, max_sets: int = MAX_ARC_SETS) -> DnsCheck[ArcResult]:
    """The validation of `message`'s ARC chain (RFC 8617 §5.2)."""
    end = message.find(b"\r\n\r\n")
    if not _ARC_FIELD.search(message[: end if end >= 0 else len(message)]):
        return ArcResult(result="none")  # no ARC field: dkimpy need not parse it all again
    try:
        checker = dkimpy.ARC(message, logger=_LOG)
    except dkimpy.DKIMException as exc:
        if not _fields(message, None, b"arc-seal"):
            return ArcResult(result="none")
        return ArcResult(result="fail", reason=_reason(str(exc)))
    instance, headers = checker.sorted_arc_headers()
    if instance == 0:
        return ArcResult(result="none")
    if instance > max_sets or len(headers) > 3 * max_sets:
        return ArcResult(result="fail", reason=f"more than {max_sets} ARC sets", instance=instance)
    newest_domain: str | None = None
    names: list[str] = []
    for i, (field, value) in headers:
        if field.lower() not in (b"arc-seal", b"arc-message-signature"):
            continue
        parsed = _parse(0, value)
        if field.lower() == b"arc-seal" and i == instance:
            newest_domain = parsed.text(b"d").lower() or None
        if parsed.key_name is not None:
            names.append(parsed.key_name)
    names = list(dict.fromkeys(names))
    answers = yield from ask(*(DnsQuery(name, "TXT") for name in names))
    keys = dict(zip(names, answers, strict=True))

    def result(verdict: ArcVerdict, reason: str | None) -> ArcResult:
        return ArcResult(
            result=verdict,
            reason=_reason(reason) if reason else None,
            instance=instance,
            domain=newest_domain,
        )

    failed = [name for name, answer in keys.items() if answer.failed]
    if failed:
        return result("fail", f"key lookup for {failed[0]}: {keys[failed[0]].status.value}")

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        answer = keys.get(name.decode("latin-1").rstrip(".").lower())
        return None if answer is None else _key_record(answer)

    try:
        cv, _sets, why = checker.verify(dnsfunc=dnsfunc)
    except dkimpy.DKIMException as exc:
        return result("fail", str(exc))
    if cv == dkimpy.CV_Pass:
        return result("pass", None)
    if cv == dkimpy.CV_None:
        return ArcResult(result="none")
    return result("fail", why)


# -- signing -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _signing_key(private_key: bytes) -> tuple[KeyAlgorithm, bytes]:
    """The key's algorithm, and the key as dkimpy takes it: RSA as PEM, Ed25519 as the
    base64 of its 32-octet seed (PyNaCl's form)."""
    try:
        key = serialization.load_pem_private_key(private_key, password=None)
    except (ValueError, TypeError) as exc:
        raise DkimError(f"not a PEM private key without a passphrase: {exc}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:
            raise DkimError(f"RSA key of {key.key_size} bits: at least 1024 (RFC 8301)")
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        return "rsa", pem
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return "ed25519", base64.b64encode(seed)
    raise DkimError(f"{type(key).__name__}: DKIM keys are RSA or Ed25519")


def key_algorithm(private_key: bytes) -> KeyAlgorithm:
    """The algorithm of a PEM private key, "rsa" or "ed25519"; `DkimError` for any
    other key."""
    return _signing_key(private_key)[0]


_SIGNATURE_ALGORITHM: Final = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}


def sign(message: bytes, *, domain: str, selector: str, private_key: bytes) -> bytes:
    """The DKIM-Signature field (folded, CRLF-terminated) to prepend to `message` (wire
    form), signed for `domain` with `private_key` (PEM, RSA or Ed25519) published under
    `selector`."""
    algorithm, key = _signing_key(private_key)
    try:
        signer = dkimpy.DKIM(
            message, logger=_LOG, signature_algorithm=_SIGNATURE_ALGORITHM[algorithm]
        )
        present = [name for name, _value in signer.headers if name.lower() in _SIGNED]
        if not any(name.lower() == b"from" for name in present):
            raise DkimError("the message has no From field")
        field: bytes = signer.sign(
            selector.encode("ascii"),
            domain.encode("ascii"),
            key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[*present, b"from"],
        )
    except (dkimpy.DKIMException, UnicodeEncodeError) as exc:
        raise DkimError(f"cannot sign: {exc}") from None
    return field


def arc_seal(
    message: bytes,
    *,
    domain: str,
    selector: str,
    private_key: bytes,
    authserv_id: str,
    timestamp: int | None = None,
) -> bytes:
    """The ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results, in that
    order, CRLF-terminated) to prepend to `message`, sealed for `domain` with an RSA
    `private_key`. The AAR copies the Authentication-Results fields of `authserv_id`;
    without one, it says "none" (nothing checked). b"" when dkimpy ends the chain
    instead: the message has ARC sets but our Authentication-Results has no ``arc=``
    result to take cv= from. `timestamp` (t=) defaults to dkimpy's clock."""
    algorithm, key = _signing_key(private_key)
    if algorithm != "rsa":
        raise DkimError("ARC seals with rsa-sha256 only (RFC 8617): an Ed25519 key cannot")
    try:
        sealed = message
        if not _has_own_results(message, authserv_id):
            # dkimpy copies the AAR from Authentication-Results fields only; this one
            # goes to dkimpy alone, never into the message.
            sealed = f"Authentication-Results: {authserv_id}; none\r\n".encode() + message
        sealer = dkimpy.ARC(sealed, logger=_LOG)
        present = [name for name, _value in sealer.headers if name.lower() in _SIGNED]
        fields: list[bytes] = sealer.sign(
            selector.encode("ascii"),
            domain.encode("ascii"),
            key,
            authserv_id.encode("ascii"),
            include_headers=[*present, b"from"],
            timestamp=timestamp,
        )
    except (dkimpy.DKIMException, UnicodeEncodeError) as exc:
        raise DkimError(f"cannot seal: {exc}") from None
    return b"".join(fields)


def _has_own_results(message: bytes, authserv_id: str) -> bool:
    end = message.find(b"\r\n\r\n")
    header = message[: end if end >= 0 else len(message)]
    pattern = rb"^Authentication-Results:[ \t]*" + re.escape(authserv_id.encode()) + rb"[ \t]*;"
    return re.search(pattern, header, re.M) is not None


# -- keys and the record to publish ---------------------------------------------------------


def generate(algorithm: KeyAlgorithm = "rsa") -> tuple[bytes, str]:
    """A new signing key: (private key as PEM, TXT record value). RSA keys have 2048 bits
    (RFC 8301 §3.2 asks for 1024 to 4096; 2048 is what the big receivers expect)."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        form = serialization.PrivateFormat.TraditionalOpenSSL  # opendkim's and dkimpy's
    elif algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        form = serialization.PrivateFormat.PKCS8
    else:
        raise ValueError(f"unknown key algorithm {algorithm!r}: rsa or ed25519")
    pem = key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())
    return pem, txt_record(pem)


def txt_record(key: bytes) -> str:
    """The TXT record value (RFC 6376 §3.6.1) for a PEM key, private or public:
    ``v=DKIM1; k=rsa; p=<SubjectPublicKeyInfo>`` or, for Ed25519 (RFC 8463 §4.2),
    ``v=DKIM1; k=ed25519; p=<the 32-octet key>``, base64."""
    public: object
    try:
        if b"PRIVATE KEY" in key:
            public = serialization.load_pem_private_key(key, password=None).public_key()
        else:
            public = serialization.load_pem_public_key(key)
    except (ValueError, TypeError) as exc:
        raise DkimError(f"not a PEM key: {exc}") from None
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")
    raise DkimError(f"{type(public).__name__}: DKIM keys are RSA or Ed25519")


def dns_record(domain: str, selector: str, txt: str) -> str:
    """The zone-file line that publishes `txt`: ``<selector>._domainkey.<domain>. IN TXT``
    and the value in quoted strings of at most 255 characters each (RFC 1035 §3.3: one
    character-string holds 255 octets; a 2048-bit key's record is longer)."""
    chunks = [txt[i : i + 255] for i in range(0, len(txt), 255)] or [""]
    strings = " ".join(f'"{chunk}"' for chunk in chunks)
    return f"{selector}._domainkey.{domain.rstrip('.')}. IN TXT {strings}"


# -- what a message leaving us gets ---------------------------------------------------------


def from_domain(message: bytes) -> str | None:
    """The domain of the message's From address, lower case; None when there is no From
    field, more than one, or addresses in more than one domain (no one domain to sign
    for)."""
    end = message.find(b"\r\n\r\n")
    header = message[: end + 2 if end >= 0 else len(message)]
    values = re.findall(rb"^From[ \t]*:(.*(?:\r\n[ \t].*)*)", header, re.I | re.M)
    if len(values) != 1:
        return None
    text = values[0].decode("utf-8", "replace").replace("\r\n", "")
    domains = {
        address.rpartition("@")[2].strip().lower().rstrip(".")
        for _name, address in email.utils.getaddresses([text])
        if "@" in address
    }
    if len(domains) != 1:
        return None
    domain = domains.pop()
    return domain if _KEY_NAME.match(domain) else None


def outbound_fields(
    message: bytes,
    *,
    forwarded: bool,
    own_sender: bool,
    domains: Collection[str],
    hostname: str,
    selector: str,
    key_for: Callable[[str], bytes | None],
) -> bytes:
    """The fields to prepend to `message` before it leaves for another host (b"" when
    none), as Exim signs at transport time, so bounces are covered too.

    - DKIM: when `key_for` (the key of a domain under `selector`, or None) has a key for
      the From domain. A `forwarded` copy (an alias sending a message on to another
      domain) is signed only when its From domain is ours (`domains` or `hostname`) and
      so was its envelope sender (`own_sender`): the mail of outside senders is theirs
      to sign, and our signature must not vouch for a From that arrived from outside.
    - ARC: a `forwarded` copy is sealed with the RSA key of the first of `domains`, then
      `hostname`, that has one, so that the next hop can trust our Authentication-Results
      (written at intake, with `hostname` as authserv-id) when our forwarding breaks the
      sender's SPF or DKIM. The seal covers our DKIM-Signature.

    `key_for` may block (it reads key files); the caller runs this off the event loop.
    Raises `DkimError` when a key or the message cannot be used."""
    ours = {d.lower() for d in domains} | {hostname.lower()}
    signer = from_domain(message)
    fields = b""
    if signer is not None and (not forwarded or (signer in ours and own_sender)):
        key = key_for(signer)
        if key is not None:
            fields = sign(message, domain=signer, selector=selector, private_key=key)
    if forwarded:
        sealer = _sealing_key(_unique([*domains, hostname]), key_for)
        if sealer is not None:
            seal_domain, seal_key = sealer
            fields = (
                arc_seal(
                    fields + message,
                    domain=seal_domain,
                    selector=selector,
                    private_key=seal_key,
                    authserv_id=hostname,
                )
                + fields
            )
    return fields


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(name.lower() for name in names))


def _sealing_key(
    domains: Sequence[str], key_for: Callable[[str], bytes | None]
) -> tuple[str, bytes] | None:
    for domain in domains:
        key = key_for(domain)
        if key is not None and key_algorithm(key) == "rsa":
            return domain, key
    return None
