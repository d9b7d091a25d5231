"""Recipient policy: which RCPT TO addresses this server takes, and where they go.

Pure decisions, no I/O: the caller passes what it knows (our domains, a user lookup) and
gets back the reply to send and the mailbox the recipient maps to. This is the place later
issues grow into Postfix's `smtpd_recipient_restrictions` (permit_mynetworks,
permit_sasl_authenticated, reject_unauth_destination ...); today it knows the rules of a
server that only receives for its own domains:

* A recipient in `domains` must be a known user (`550 5.1.1` otherwise). With a
  `recipient_delimiter` ("+"), ``alice+tag@dom`` is delivered to ``alice`` when no user
  ``alice+tag`` exists (Postfix's recipient_delimiter, Dovecot's detail).
* ``postmaster`` (RFC 5321 §4.5.1: MUST be accepted, also as the bare ``<Postmaster>``) and
  ``abuse`` (RFC 2142) at any of our domains are always taken: to the user of that name
  when one exists, otherwise to the postmaster mailbox of the first domain (CONTRACT.md,
  "Where mail lives"; the aliases file will be able to send them elsewhere).
* Anything else is a relay attempt: `554 5.7.1` (RFC 5321 §3.6.2 lets a server refuse to
  relay; 5.7.1 is RFC 3463's "delivery not authorized").
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import attrs

from sansmail.address import Address
from sansmail.smtp import Reply
from sansmail.store import MailboxId

__all__ = ["ROLE_ACCOUNTS", "RecipientDecision", "decide_recipient", "postmaster_mailbox"]

#: Local parts every domain must accept even when no user has them (RFC 5321 §4.5.1,
#: RFC 2142 §2/§4).
ROLE_ACCOUNTS = frozenset({"postmaster", "abuse"})


@attrs.frozen
class RecipientDecision:
    """`reply` to send for the RCPT; `mailbox` is where the message goes when accepted."""

    reply: Reply
    mailbox: MailboxId | None

    @property
    def accepted(self) -> bool:
        return self.mailbox is not None


def postmaster_mailbox(domains: Collection[str]) -> MailboxId:
    """The mailbox that takes postmaster/abuse mail nobody else claims."""
    return MailboxId(domain=next(iter(domains)), local="postmaster")


def decide_recipient(
    rcpt: Address,
    *,
    domains: Collection[str],
    user_exists: Callable[[str], bool],
    recipient_delimiter: str = "",
) -> RecipientDecision:
    """Decide one RCPT TO. `user_exists` takes an `Address.key` (``local@domain``, lower
    case) and says whether that user is in the user store."""
    local = rcpt.local_part.lower()
    if rcpt.domain == "" or rcpt.domain in domains:
        domain = rcpt.domain or next(iter(domains))
        key = f"{local}@{domain}"
        if user_exists(key):
            return _ok(MailboxId(domain=domain, local=local))
        if recipient_delimiter:
            base, sep, _detail = local.partition(recipient_delimiter)
            if sep and base and user_exists(f"{base}@{domain}"):
                return _ok(MailboxId(domain=domain, local=base))
        if local in ROLE_ACCOUNTS or rcpt.is_postmaster:
            return _ok(postmaster_mailbox(domains))
        return RecipientDecision(
            # RFC 5321 §4.2.2/§3.3: 550 mailbox unavailable; RFC 3463 X.1.1 bad
            # destination mailbox address.
            reply=Reply(code=550, lines=f"<{rcpt}>: no such user here", enhanced="5.1.1"),
            mailbox=None,
        )
    return RecipientDecision(
        reply=Reply(code=554, lines=f"<{rcpt}>: relay access denied", enhanced="5.7.1"),
        mailbox=None,
    )


def _ok(mailbox: MailboxId) -> RecipientDecision:
    # RFC 3463 X.1.5: destination address valid.
    return RecipientDecision(reply=Reply(code=250, lines="Ok", enhanced="2.1.5"), mailbox=mailbox)
