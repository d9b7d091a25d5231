"""The Received-SPF header field (RFC 7208 §9.1), rendered from an `SpfResult`.

Only the field's value: ``result (comment) key=value; key=value; ...``, on one line;
the caller adds the name and folds. Every value comes out as a dot-atom or a
quoted-string, and every character the client chose (sender, HELO) is kept out of the
syntax: control characters become "?", quotes and backslashes are escaped, so a HELO
cannot end the comment, add a key or start a new header line.
"""

from __future__ import annotations

import re

from ._types import SpfResult, Verdict

__all__ = ["received_spf"]

_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def received_spf(result: SpfResult) -> str:
    """The value of a Received-SPF field for `result` (without "Received-SPF:")."""
    who = _clean(result.sender if result.identity == "mailfrom" else result.helo)
    receiver = _clean(result.receiver)
    ip = result.ip
    comment = {
        Verdict.PASS: f"domain of {who} designates {ip} as permitted sender",
        Verdict.FAIL: f"domain of {who} does not designate {ip} as permitted sender",
        Verdict.SOFTFAIL: (
            f"domain of transitioning {who} does not designate {ip} as permitted sender"
        ),
        Verdict.NEUTRAL: f"{ip} is neither permitted nor denied by domain of {who}",
        Verdict.NONE: f"domain of {who} does not designate permitted sender hosts",
        Verdict.TEMPERROR: f"error in processing during lookup of domain of {who}",
        Verdict.PERMERROR: f"permanent error in processing domain of {who}",
    }[result.verdict]
    pairs = [
        ("client-ip", str(ip)),
        ("envelope-from", result.sender),
        ("helo", result.helo),
        ("receiver", result.receiver),
        ("identity", result.identity),
    ]
    if result.mechanism is not None:
        pairs.append(("mechanism", result.mechanism))
    if result.problem is not None and result.verdict in (Verdict.PERMERROR, Verdict.TEMPERROR):
        pairs.append(("problem", result.problem))
    text = "; ".join(f"{key}={_value(value)}" for key, value in pairs)
    return f"{result.verdict.value} ({_comment(f'{receiver}: {comment}')}) {text};"


def _clean(text: str) -> str:
    # Lone surrogates (undecodable bytes kept by "surrogateescape") cannot be written out.
    return "".join(
        "?" if ch < " " or ch == "\x7f" or "\ud800" <= ch <= "\udfff" else ch for ch in text
    )


def _comment(text: str) -> str:
    return re.sub(r"([()\\])", r"\\\1", text)


def _value(text: str) -> str:
    text = _clean(text)
    if _DOT_ATOM.fullmatch(text):
        return text
    return '"' + re.sub(r'(["\\])', r"\\\1", text) + '"'
