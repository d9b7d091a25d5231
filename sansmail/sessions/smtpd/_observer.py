"""What an SMTP session tells an observer about its decisions, for the server's metrics
(`sansmail_trio._metrics`): messages stored, refusals and the reason for each, and the
verdicts of the anti-spam checks. The session only reports; an observer that counts
lives in the adapter, so nothing here imports a metrics library.

Reasons and results are from small closed sets (`REASONS`; the checks' own result
words), never addresses or user names: a metric label per client or sender would grow
without bound.
"""

from __future__ import annotations

from typing import Final, Protocol

__all__ = ["NO_OBSERVER", "REASONS", "SmtpObserver", "reason_of"]

#: Why a command or a message was refused: the label values the observer may see.
REASONS: Final = frozenset(
    {
        "relay_denied",
        "unknown_user",
        "mailbox_full",
        "auth_required",
        "sender_mismatch",
        "spf",
        "reverse_dns",
        "dnsbl",
        "dmarc",
        "greylist",
        "milter",
        "rate",
        "size",
        "storage",
        "other",
    }
)

# A check's `Verdict.source` -> the reason a refusal by it is counted under.
_SOURCES: Final = {
    "spf": "spf",
    "reverse_dns": "reverse_dns",
    "dnsbl": "dnsbl",
    # The sender checks refuse at the end of the message only for a DMARC policy.
    "antispam": "dmarc",
    "greylist": "greylist",
    "anvil": "rate",
}


def reason_of(source: str) -> str:
    """The reason a refusal by the check named `source` is counted under."""
    if source.startswith("milter"):  # "milter NAME", "milter NAME (timeout)"
        return "milter"
    return _SOURCES.get(source, "other")


class SmtpObserver(Protocol):
    """Told by the sessions of one listener (it knows which) what they decided. Called
    in the thread that runs the session's method; must not block."""

    def stored(self, *, local: int, arrival: float) -> None:
        """A message was made durable and its 250 is on its way: `local` recipients got
        their copy in their mailbox at once (the rest were queued); `arrival` is the
        wall clock the message ended at."""

    def rejected(self, *, stage: str, reason: str, code: int) -> None:
        """A refusal (`code` 4xx or 5xx) at `stage` ("connect", "helo", "mail", "rcpt",
        "end-of-headers", "end-of-data", "data"), for one of `REASONS` ("storage": our
        disk failed, the client is asked to try again)."""

    def verdict(self, check: str, result: str) -> None:
        """An anti-spam check's result: ("spf", "pass"), ("dmarc", "fail"),
        ("greylist", "greylisted") ..."""


class _NoObserver:
    def stored(self, *, local: int, arrival: float) -> None:
        return None

    def rejected(self, *, stage: str, reason: str, code: int) -> None:
        return None

    def verdict(self, check: str, result: str) -> None:
        return None


#: The observer of sessions nobody watches.
NO_OBSERVER: Final[SmtpObserver] = _NoObserver()
