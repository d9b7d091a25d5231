"""Where one RCPT TO goes: the relay policy, the aliases and SRS in one decision.

Pure: the caller passes the alias table, the user lookup, the SRS key and today's day
number; nothing here reads a file or a clock.

Theory of operation
-------------------
`resolve_recipient` answers a RCPT TO in three steps.

1. An SRS address at one of our domains (``SRS0=...@ours``, what a forwarded message's
   bounce comes back to, `sansmail.mail.srs`) is reversed to the original sender. A good
   signature is the permission to relay: the address was made by us, for a bounce to
   travel back, so it is accepted whoever the client is. A bad or expired one is refused
   like an unknown user (550 5.1.1): the key is what keeps this from being an open relay.
2. `sansmail.mail.policy.evaluate_recipient` applies ``recipient_restrictions``, with aliases
   counted as existing local parts (Postfix: an alias is a valid recipient for
   ``reject_unlisted_recipient``).
3. An accepted local recipient is expanded through the aliases (`sansmail.mail.aliases.expand`,
   which also finds plain users and the postmaster fallback): `local` mailboxes take the
   message now, `forward` addresses are outside ones an alias names, which the queue
   sends on with an SRS sender. A recipient the restrictions let relay goes to `remote`,
   with the sender unchanged.

An alias that expands to nothing at all (every target an unknown user, a loop with no
way out) is refused with 550 5.1.1 rather than accepted into a void; partial problems are
returned in `problems` for the log while the rest is delivered, as Postfix's local(8)
does.

Storage quota. A local mailbox that is already at or over its limit (`mailbox_full`) is
left out; a recipient left with nowhere to go is refused with 552 5.2.2 "mailbox is full"
at RCPT, the answer Dovecot's quota-status policy service gives Postfix (RFC 3463 X.2.2:
mailbox full; RFC 5321 §4.5.3.1.10 lets a client treat a 552 to RCPT as a 452 and try
later). A mailbox under its limit takes the message whatever its size: SMTP has one
answer to DATA for all the recipients, so a message is never refused there for one of
them, and a mailbox ends at most one message over its limit (Dovecot's quota_grace).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

import attrs

from sansmail.mail import srs
from sansmail.mail.address import Address, MailboxId
from sansmail.mail.aliases import AliasTable, ReadInclude, expand
from sansmail.mail.logtext import ClientAddress
from sansmail.mail.policy import IPNetwork, evaluate_recipient
from sansmail.smtp import Reply

__all__ = ["Resolution", "resolve_recipient"]

_OK = Reply(code=250, lines="Ok", enhanced="2.1.5")


@attrs.frozen(kw_only=True)
class Resolution:
    """The reply for one RCPT TO and, when it is positive, where the message goes."""

    reply: Reply
    local: tuple[MailboxId, ...] = ()
    remote: tuple[Address, ...] = ()
    forward: tuple[Address, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.reply.is_positive


def _mailbox_full(rcpt: Address) -> Resolution:
    # RFC 5321 §4.2.2 552; RFC 3463 X.2.2 mailbox full.
    return Resolution(reply=Reply(code=552, lines=f"<{rcpt}>: mailbox is full", enhanced="5.2.2"))


def _no_such_user(rcpt: Address, why: str) -> Resolution:
    # RFC 5321 §4.2.2 550; RFC 3463 X.1.1 bad destination mailbox address.
    return Resolution(
        reply=Reply(code=550, lines=f"<{rcpt}>: no such user here ({why})", enhanced="5.1.1")
    )


def resolve_recipient(
    rcpt: Address,
    *,
    restrictions: Iterable[str],
    sasl_authenticated: bool,
    client_ip: ClientAddress,
    mynetworks: Collection[IPNetwork],
    domains: Collection[str],
    user_exists: Callable[[str], bool],
    aliases: AliasTable,
    read_include: ReadInclude | None = None,
    recipient_delimiter: str = "",
    srs_key: bytes | None = None,
    today: int = 0,
    mailbox_full: Callable[[MailboxId], bool] | None = None,
) -> Resolution:
    """Decide one RCPT TO (see the module docstring). `user_exists` takes an
    `Address.key`; `srs_key` None turns SRS reversal off; `today` is `srs.today(now)`;
    `mailbox_full` says whether a mailbox is at its storage limit (None: no quota)."""
    ours = rcpt.domain in domains
    if ours and srs_key is not None and srs.is_srs(rcpt.local_part):
        try:
            original = srs.reverse(rcpt, key=srs_key, today=today)
        except srs.SRSError as exc:
            return _no_such_user(rcpt, str(exc))
        if original.domain not in domains:
            return Resolution(reply=_OK, remote=(original,))
        rcpt = original  # a forwarded local sender: deliver the bounce here

    def known(key: str) -> bool:
        local = key.rpartition("@")[0]
        return user_exists(key) or aliases.get(local) is not None

    decision = evaluate_recipient(
        rcpt,
        restrictions=restrictions,
        sasl_authenticated=sasl_authenticated,
        client_ip=client_ip,
        mynetworks=mynetworks,
        domains=domains,
        user_exists=known,
        recipient_delimiter=recipient_delimiter,
    )
    if not decision.reply.is_positive:
        return Resolution(reply=decision.reply)
    if decision.remote:
        return Resolution(reply=decision.reply, remote=(rcpt,))
    expansion = expand(
        aliases,
        rcpt.key,
        domains=domains,
        user_exists=user_exists,
        recipient_delimiter=recipient_delimiter,
        read_include=read_include,
    )
    if not expansion.local and not expansion.remote:
        why = "; ".join(expansion.problems) or "the alias expands to nothing"
        return Resolution(reply=_no_such_user(rcpt, why).reply, problems=expansion.problems)
    local, problems = expansion.local, expansion.problems
    if mailbox_full is not None and local:
        full = [mailbox for mailbox in local if mailbox_full(mailbox)]
        if full:
            local = tuple(mailbox for mailbox in local if mailbox not in full)
            if not local and not expansion.remote:
                return attrs.evolve(_mailbox_full(rcpt), problems=problems)
            # Some of an alias's mailboxes: the others take it, as local(8) would.
            problems += tuple(f"{m.local}@{m.domain}: mailbox is full" for m in full)
    return Resolution(
        reply=decision.reply,
        local=local,
        forward=expansion.remote,
        problems=problems,
    )
