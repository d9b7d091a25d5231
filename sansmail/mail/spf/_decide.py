"""What the ``[antispam] spf`` setting does with a result: RFC 7372's codes."""

from __future__ import annotations

from sansmail.mail.spf._types import SpfResult, Verdict
from sansmail.smtp import Reply

__all__ = ["decide_spf"]


def decide_spf(mode: str, result: SpfResult | None) -> Reply | None:
    """The refusal `mode` ("off", "tag" or "reject") asks for, if any: with "reject", a
    fail is ``550 5.7.23`` (RFC 7372 §3.2, "SPF validation failed", with the domain's
    exp= text when it gave one) and a temperror ``451 4.7.24`` (§3.3); a softfail,
    neutral, none or permerror is let through, as Postfix's policyd-spf does by default."""
    if mode != "reject" or result is None:
        return None
    if result.verdict is Verdict.FAIL:
        why = result.explanation or (
            f"SPF: {result.ip} is not allowed to send mail from {result.domain}"
        )
        return Reply(code=550, lines=(_printable(why),), enhanced="5.7.23")
    if result.verdict is Verdict.TEMPERROR:
        return Reply(
            code=451,
            lines=(f"SPF: temporary DNS failure checking {result.domain}; try again later",),
            enhanced="4.7.24",
        )
    return None


def _printable(text: str) -> str:
    # exp= text comes from the sender's DNS: nothing but printable ASCII goes in a reply.
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:200]
