"""MTA-STS (RFC 8461) for outbound delivery, without the I/O: the policy, the TXT record,
which MX hosts a policy allows, and what the policy cache does on each delivery.

A domain that publishes MTA-STS says, in a ``_mta-sts.<domain>`` TXT record (§3.1), that
a policy is served at ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` (§3.2), and
the record's ``id`` changes whenever the policy does. The policy lists the MX host
patterns its mail may go to and a mode: ``enforce`` (deliver only over TLS with a
certificate valid for a listed MX, else wait), ``testing`` (deliver as ever, report what
enforce would have refused) or ``none`` (no policy; it replaces an earlier one).

Theory of operation
-------------------
The adapter (``sansmail_trio._mtasts``) asks the TXT record, reads its cache, and asks
`plan` what to do: use a policy (or none), or fetch one. After a fetch, `after_fetch`
says what to keep. The rules (§3.3, §5.1):

- A cached policy is good until ``max_age`` seconds after it was fetched.
- A TXT id other than the one the cached policy came with means a new policy: fetch.
  The same id and a policy still good: use it, no HTTPS request.
- No TXT record, several, or an invalid one (§3.1: then "the recipient domain does not
  have an available MTA-STS policy"), or a lookup that failed: the cached policy while
  it is good (the record going away does not cancel a policy: an attacker could remove
  it), else none.
- A failed fetch (no answer, no 200, a bad certificate, an invalid policy) keeps the
  cached policy while it is good, else none: delivery goes on as without MTA-STS.

Parsing never raises: any text is a `Policy` or an `Invalid` that says why, and any TXT
answer a `Record` or None, so what a remote server serves can never be a traceback.
Lines end in CRLF or LF (§3.2); unknown fields are ignored; of a field other than ``mx``
given twice the first counts (§3.2); a policy in ``enforce`` or ``testing`` mode needs at
least one ``mx``. Empty lines are skipped, though the grammar has none: policies ending
with one are common and mean nothing else. Field names and mode values are ABNF quoted
strings, hence case-insensitive (RFC 5234 §2.3); the TXT record's ``v=STSv1`` and ``id=``
are case-sensitive (%s in §3.1).

MX matching (§4.1): a pattern is a host name, or ``*.`` and a name, whose wildcard
stands for exactly one label (``*.example.com`` matches ``mx.example.com``, not
``example.com`` nor ``a.b.example.com``). Names compare without case or final dot.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Final, Literal

import attrs

__all__ = [
    "MAX_AGE_LIMIT",
    "POLICY_SIZE_LIMIT",
    "Cached",
    "Fetch",
    "Invalid",
    "Mode",
    "Policy",
    "Record",
    "Use",
    "after_fetch",
    "cache_from_json",
    "cache_to_json",
    "mx_matches",
    "parse_policy",
    "parse_record",
    "plan",
    "policy_host",
    "policy_url",
]

Mode = Literal["enforce", "testing", "none"]
_MODES: Final[dict[str, Mode]] = {"enforce": "enforce", "testing": "testing", "none": "none"}

#: §3.2: max_age is at most 31557600 seconds (about a year).
MAX_AGE_LIMIT: Final = 31_557_600
#: §3.3: "senders MAY impose a limit on the maximum size of the policy ... 64 KB".
POLICY_SIZE_LIMIT: Final = 64 * 1024

_WSP: Final = " \t"
# §3.2: sts-policy-ext-name; the known field names match it too.
_FIELD_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
# §3.2 sts-policy-ext-value: visible characters (UTF-8 allowed), inner spaces.
_EXT_VALUE: Final = re.compile(r"[^\x00-\x20\x7f](?:[^\x00-\x1f\x7f]*[^\x00-\x20\x7f])?")
_MAX_AGE: Final = re.compile(r"[0-9]{1,10}")
# RFC 5321 §4.1.2 Domain: labels of letters, digits and inner hyphens (A-labels only).
_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# §3.1: sts-id, and sts-ext-name "=" sts-ext-value.
_RECORD_ID: Final = re.compile(r"[A-Za-z0-9]{1,32}")
_RECORD_EXT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}=[\x21-\x3a\x3c\x3e-\x7e]+")
_RECORD_SEP: Final = re.compile(r"[ \t]*;[ \t]*")
_RECORD_START: Final = re.compile(r"v=STSv1[ \t]*;")


@attrs.frozen(kw_only=True)
class Policy:
    """A valid policy (§3.2): `mx` patterns lower case without final dot, `max_age` in
    seconds."""

    mode: Mode
    mx: tuple[str, ...] = ()
    max_age: int = 0

    def allows(self, host: str) -> bool:
        """Whether the MX host `host` matches one of the patterns (§4.1)."""
        return mx_matches(host, self.mx)

    def text(self) -> str:
        """The policy file (§3.2) that `parse_policy` reads back as this policy, CRLF
        line ends: what a domain of ours serves (`dnsrecords.mta_sts_policy`)."""
        lines = ["version: STSv1", f"mode: {self.mode}"]
        lines.extend(f"mx: {pattern}" for pattern in self.mx)
        lines.append(f"max_age: {self.max_age}")
        return "".join(f"{line}\r\n" for line in lines)


@attrs.frozen
class Invalid:
    """Not a policy; `why` says what was wrong, for the log."""

    why: str


@attrs.frozen
class Record:
    """The ``_mta-sts`` TXT record (§3.1): its policy id."""

    id: str


def policy_host(domain: str) -> str:
    """The host serving `domain`'s policy (§3.3)."""
    return f"mta-sts.{_name(domain)}"


def policy_url(domain: str) -> str:
    return f"https://{policy_host(domain)}/.well-known/mta-sts.txt"


def _name(host: str) -> str:
    return host.rstrip(".").lower()


def _mx_pattern(value: str) -> str | None:
    text = value.lower()
    name = text[2:] if text.startswith("*.") else text
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 1 or not all(_LABEL.fullmatch(x) for x in labels):
        return None
    return text


def parse_policy(text: str | bytes) -> Policy | Invalid:
    """`text` (the body served, UTF-8) as a `Policy`, or `Invalid` with the reason."""
    if isinstance(text, bytes):
        if len(text) > POLICY_SIZE_LIMIT:
            return Invalid(f"larger than {POLICY_SIZE_LIMIT} octets")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return Invalid("not UTF-8")
    if len(text) > POLICY_SIZE_LIMIT:
        return Invalid(f"larger than {POLICY_SIZE_LIMIT} octets")
    fields: dict[str, str] = {}
    patterns: list[str] = []
    # §3.2: sts-policy-term is LF or CRLF; a CR anywhere else is no line end.
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            return Invalid(f"line {number}: not a field")
        value = value.strip(_WSP)
        if not _EXT_VALUE.fullmatch(value):
            return Invalid(f"line {number}: bad value for {name}")
        name = name.lower()
        if name == "mx":
            pattern = _mx_pattern(value)
            if pattern is None:
                return Invalid(f"line {number}: bad mx pattern {value!r}")
            patterns.append(pattern)
        elif name not in fields:
            fields[name] = value
    version = fields.get("version")
    if version is None or version.lower() != "stsv1":
        return Invalid("no version: STSv1")
    mode = _MODES.get(fields.get("mode", "").lower())
    if mode is None:
        return Invalid("mode is not enforce, testing or none")
    max_age_text = fields.get("max_age", "")
    if not _MAX_AGE.fullmatch(max_age_text):
        return Invalid("max_age is not a number of seconds")
    max_age = int(max_age_text)
    if max_age > MAX_AGE_LIMIT:
        return Invalid(f"max_age {max_age} is over {MAX_AGE_LIMIT}")
    if not patterns and mode != "none":
        return Invalid(f"no mx in {mode} mode")
    return Policy(mode=mode, mx=tuple(dict.fromkeys(patterns)), max_age=max_age)


def _record(text: str) -> Record | None:
    parts = _RECORD_SEP.split(text)
    if parts and parts[-1] == "":
        parts.pop()  # the optional final separator
    if len(parts) < 2 or parts[0] != "v=STSv1":
        return None
    found: str | None = None
    for part in parts[1:]:
        if part.startswith("id="):
            if not _RECORD_ID.fullmatch(part[3:]):
                return None
            found = found or part[3:]  # the first one counts, as for a policy's fields
        elif not _RECORD_EXT.fullmatch(part):
            return None
    return None if found is None else Record(found)


def parse_record(texts: Iterable[str]) -> Record | None:
    """The MTA-STS record among a name's TXT records (each one's strings joined), or
    None when there is none, more than one, or it is invalid (§3.1)."""
    candidates = [t for t in texts if _RECORD_START.match(t)]
    if len(candidates) != 1:
        return None
    return _record(candidates[0])


def mx_matches(host: str, patterns: Iterable[str]) -> bool:
    """Whether MX host `host` matches one of `patterns` (§4.1)."""
    name = _name(host)
    _, dot, parent = name.partition(".")
    for given in patterns:
        pattern = _name(given)
        if pattern.startswith("*."):
            if dot and parent and parent == pattern[2:]:
                return True
        elif name == pattern:
            return True
    return False


# -- the cache ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Cached:
    """A policy as the cache keeps it: fetched at `fetched` (Unix time) for the TXT id
    `id`."""

    policy: Policy
    id: str
    fetched: float

    @property
    def expires(self) -> float:
        return self.fetched + self.policy.max_age

    def good(self, now: float) -> bool:
        return now < self.expires


@attrs.frozen
class Use:
    """Deliver under `policy` (None: as without MTA-STS)."""

    policy: Policy | None


@attrs.frozen
class Fetch:
    """Fetch the policy over HTTPS, then ask `after_fetch`; `id` is the TXT record's."""

    id: str


def plan(cached: Cached | None, record: Record | None, *, now: float) -> Use | Fetch:
    """What to do for one delivery, from the cache and the TXT record just asked
    (None: none, invalid, or the lookup failed). See the module docstring."""
    live = cached if cached is not None and cached.good(now) else None
    if record is None:
        return Use(live.policy if live is not None else None)
    if live is not None and live.id == record.id:
        return Use(live.policy)
    return Fetch(record.id)


def after_fetch(
    cached: Cached | None, fetch: Fetch, fetched: Policy | Invalid | None, *, now: float
) -> tuple[Cached | None, Policy | None]:
    """What to keep and what to use after fetching for `fetch`: the new policy, or after
    a failure (`Invalid`, or None when nothing usable came) the cached one while good."""
    if isinstance(fetched, Policy):
        return Cached(policy=fetched, id=fetch.id, fetched=now), fetched
    if cached is not None and cached.good(now):
        return cached, cached.policy
    return None, None


def cache_to_json(domain: str, cached: Cached) -> str:
    """The cache file's text for `domain` (one JSON object)."""
    policy = cached.policy
    return json.dumps(
        {
            "domain": _name(domain),
            "id": cached.id,
            "fetched": cached.fetched,
            "mode": policy.mode,
            "mx": list(policy.mx),
            "max_age": policy.max_age,
        },
        sort_keys=True,
    )


def cache_from_json(text: str | bytes) -> Cached | None:
    """A cache file read back; None when it is not one we wrote (it is then refetched)."""
    try:
        data = json.loads(text)
        mode = _MODES[data["mode"]]
        mx = tuple(str(p) for p in data["mx"] if _mx_pattern(str(p)) is not None)
        max_age = data["max_age"]
        fetched = data["fetched"]
        ident = data["id"]
        if not (
            isinstance(max_age, int)
            and 0 <= max_age <= MAX_AGE_LIMIT
            and isinstance(fetched, int | float)
            and math.isfinite(fetched)
            and isinstance(ident, str)
            and _RECORD_ID.fullmatch(ident)
            and (mx or mode == "none")
        ):
            return None
        return Cached(policy=Policy(mode=mode, mx=mx, max_age=max_age), id=ident, fetched=fetched)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
