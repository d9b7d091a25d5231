"""The Authentication-Results header field (RFC 8601): rendering ours, finding forged ones.

Theory of operation
-------------------
`authentication_results(authserv_id, results)` renders the field's value on one line:
``mx.example.org; spf=pass smtp.mailfrom=example.net; dkim=pass header.d=example.net
header.s=sel header.b=AbCdEf12; dmarc=pass (p=reject dis=none) header.from=example.net;
iprev=pass (mail.example.net) policy.iprev=192.0.2.1``, or ``mx.example.org; none``
when nothing was checked (§2.2). `field()` adds the name and folds it between results.
Each result is a `MethodResult`, built from the checks' results by `spf_method`,
`dkim_method`, `dmarc_method` and `iprev_method`.

Much of what goes into the field was chosen by the client or by the sender's DNS (a HELO
name, a sender, a TXT reason, a selector), so nothing is copied in raw: a property value
is written bare only when it is a domain name, a dot-atom address or an RFC 2045 token,
and otherwise as a quoted-string; comments have their parentheses and backslashes
escaped; every character outside printable ASCII becomes "?"; free text is cut to
`MAX_TEXT` characters. Methods, results and property names are keywords (§2.2, RFC 5321
Ldh-str) checked when a `MethodResult` is built. So the value is printable ASCII without
CR or LF whatever the inputs, and parses back to the results it was made of.

A message may arrive with Authentication-Results fields that claim to be ours, to make a
later reader (a filter, a mail client) trust a result we never found (§5). `claims` reads
the authserv-id at the start of a value, past CFWS, and compares it with ours without
regard to case; `claiming_fields` finds such fields in a raw header block, so that the
session drops them before it adds its own. Both accept any input without raising.
ARC-Authentication-Results (RFC 8617) fields are left alone: they belong to an ARC set
whose seal would break.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from sansmail.mail.dmarc import DmarcDecision, DmarcResult, DmarcVerdict
from sansmail.mail.iprev import IprevResult
from sansmail.mail.spf import SpfResult

__all__ = [
    "MAX_TEXT",
    "MethodResult",
    "authentication_results",
    "claiming_fields",
    "claims",
    "dkim_method",
    "dmarc_method",
    "field",
    "iprev_method",
    "remove_claiming_fields",
    "spf_method",
]

MAX_TEXT = 200  # characters of one free-text value, reason or comment
_KEYWORD = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")  # Ldh-str
_TOKEN = re.compile(r"[!#$%&'*+.0-9A-Z^_`a-z{|}~-]+\Z")  # RFC 2045 token
_DOMAIN = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\Z"
)
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDRESS = re.compile(rf"(?:{_ATOM}(?:\.{_ATOM})*)?@{_DOMAIN.pattern}")
_TSPECIALS = frozenset('()<>@,;:\\"/[]?=')


def _keyword(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not _KEYWORD.match(value):
        raise ValueError(f"{attribute.name} must be a keyword (RFC 8601 §2.2): {value!r}")


def _properties(
    _inst: Any, _attribute: attrs.Attribute[Any], value: tuple[tuple[str, str, str], ...]
) -> None:
    for ptype, prop, _pvalue in value:
        if not _KEYWORD.match(ptype) or not _KEYWORD.match(prop):
            raise ValueError(f"property names must be keywords: {ptype!r}.{prop!r}")


def _tuple(items: Iterable[tuple[str, str, str]]) -> tuple[tuple[str, str, str], ...]:
    return tuple(items)


@attrs.frozen(kw_only=True)
class MethodResult:
    """One resinfo (§2.2): ``method=result (comment) reason="..." ptype.property=value``."""

    method: str = attrs.field(validator=_keyword)
    result: str = attrs.field(validator=_keyword)
    comment: str | None = None
    reason: str | None = None
    properties: tuple[tuple[str, str, str], ...] = attrs.field(
        default=(), converter=_tuple, validator=_properties
    )

    def render(self) -> str:
        words = [f"{self.method}={self.result}"]
        if self.comment:
            words.append(_comment(self.comment))
        if self.reason:
            words.append(f"reason={_quoted(self.reason)}")
        words += [f"{ptype}.{prop}={_pvalue(value)}" for ptype, prop, value in self.properties]
        return " ".join(words)


def authentication_results(authserv_id: str, results: Sequence[MethodResult]) -> str:
    """The field's value for `results` (without the name), on one line."""
    return "; ".join(_parts(authserv_id, results))


def field(authserv_id: str, results: Sequence[MethodResult]) -> bytes:
    """The whole field, "Authentication-Results: ...", folded between results, CRLF."""
    value = ";\r\n\t".join(_parts(authserv_id, results))
    return ("Authentication-Results: " + value + "\r\n").encode()


def _parts(authserv_id: str, results: Sequence[MethodResult]) -> list[str]:
    return [_value(authserv_id), *([r.render() for r in results] or ["none"])]


# -- from the checks' results ---------------------------------------------------------


def spf_method(result: SpfResult) -> MethodResult:
    """spf=..., with smtp.mailfrom (or smtp.helo for the HELO identity) (§2.7.2)."""
    if result.identity == "helo":
        prop = ("smtp", "helo", result.helo)
    else:
        prop = ("smtp", "mailfrom", result.sender)
    return MethodResult(
        method="spf",
        result=result.verdict.value,
        comment=result.problem,
        properties=(prop,),
    )


def dkim_method(
    result: str,
    *,
    domain: str | None = None,
    selector: str | None = None,
    signature: str | None = None,
    reason: str | None = None,
) -> MethodResult:
    """dkim=..., with header.d, header.s and the first 8 characters of header.b, which
    tell two signatures of one domain apart (RFC 6008 §4)."""
    props = []
    if domain is not None:
        props.append(("header", "d", domain))
    if selector is not None:
        props.append(("header", "s", selector))
    if signature:
        props.append(("header", "b", re.sub(r"\s+", "", signature)[:8]))
    return MethodResult(method="dkim", result=result, reason=reason, properties=props)


def dmarc_method(result: DmarcResult, decision: DmarcDecision | None = None) -> MethodResult:
    """dmarc=... (p=... sp=... dis=...) header.from=... (RFC 7489 §11.2)."""
    comment = result.problem if result.verdict is not DmarcVerdict.PASS else None
    if result.record is not None:
        words = [f"p={result.record.p.value}"]
        if result.record.sp is not None:
            words.append(f"sp={result.record.sp.value}")
        if decision is not None:
            words.append(f"dis={decision.disposition.value}")
        comment = " ".join(words) + (f"; {comment}" if comment else "")
    return MethodResult(
        method="dmarc",
        result=result.verdict.value,
        comment=comment,
        properties=(("header", "from", result.from_domain),),
    )


def iprev_method(result: IprevResult) -> MethodResult:
    """iprev=... (verified name or problem) policy.iprev=<client address> (§2.7.3)."""
    return MethodResult(
        method="iprev",
        result=result.verdict.value,
        comment=result.name or result.problem,
        properties=(("policy", "iprev", str(result.ip)),),
    )


# -- quoting --------------------------------------------------------------------------


def _clean(text: str) -> str:
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text[:MAX_TEXT])


def _quoted(text: str) -> str:
    return '"' + re.sub(r'(["\\])', r"\\\1", _clean(text)) + '"'


def _value(text: str) -> str:
    text = _clean(text)
    return text if _TOKEN.match(text) else _quoted(text)


def _pvalue(text: str) -> str:
    text = _clean(text)
    if _DOMAIN.match(text) or _ADDRESS.match(text) or _TOKEN.match(text):
        return text
    return _quoted(text)


def _comment(text: str) -> str:
    return "(" + re.sub(r"([()\\])", r"\\\1", _clean(text)) + ")"


# -- fields that claim our authserv-id ------------------------------------------------


def claims(value: str | bytes, authserv_id: str) -> bool:
    """Whether an Authentication-Results `value` names `authserv_id` as its author."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    found = _read_id(text, _skip_cfws(text, 0))
    return found is not None and found.lower() == authserv_id.lower()


def claiming_fields(header_block: bytes, authserv_id: str) -> list[tuple[int, int]]:
    """The (start, end) offsets in `header_block` (the message's header section, or the
    whole message) of each Authentication-Results field, its continuation lines and line
    end included, that claims `authserv_id`. Reading stops at the first empty line."""
    spans = []
    for start, end, name, value in _fields(header_block):
        if name.strip(b" \t").lower() == b"authentication-results" and claims(value, authserv_id):
            spans.append((start, end))
    return spans


def remove_claiming_fields(header_block: bytes, authserv_id: str) -> bytes:
    """`header_block` without the fields `claiming_fields` finds."""
    out, pos = [], 0
    for start, end in claiming_fields(header_block, authserv_id):
        out.append(header_block[pos:start])
        pos = end
    out.append(header_block[pos:])
    return b"".join(out)


def _fields(block: bytes) -> Iterable[tuple[int, int, bytes, bytes]]:
    """(start, end, name, value) of each field: a line that does not start with
    whitespace starts one; the lines after it that do continue it (RFC 5322 §2.2.3)."""
    pos, current = 0, None
    while pos < len(block):
        eol = block.find(b"\n", pos)
        end = len(block) if eol < 0 else eol + 1
        line = block[pos:end]
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and current is not None:
            current = (current[0], end)
        else:
            if current is not None:
                yield _split(block, *current)
            current = (pos, end)
        pos = end
    if current is not None:
        yield _split(block, *current)


def _split(block: bytes, start: int, end: int) -> tuple[int, int, bytes, bytes]:
    name, _colon, value = block[start:end].partition(b":")
    return start, end, name, value


def _skip_cfws(text: str, pos: int) -> int:
    depth = 0
    while pos < len(text):
        ch = text[pos]
        if ch == "\\" and depth:
            pos += 2
            continue
        if ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif not depth and ch not in " \t\r\n":
            return pos
        pos += 1
    return pos


def _read_id(text: str, pos: int) -> str | None:
    if pos >= len(text):
        return None
    if text[pos] == '"':
        chars, pos = [], pos + 1
        while pos < len(text) and text[pos] != '"':
            if text[pos] == "\\":
                pos += 1
            chars.append(text[pos : pos + 1])
            pos += 1
        return "".join(chars)
    end = pos
    while end < len(text) and " " < text[end] < "\x7f" and text[end] not in _TSPECIALS:
        end += 1
    return text[pos:end] or None
