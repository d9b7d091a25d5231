"""SMTP envelope policy: which RCPT TO addresses this server takes and where they go, and
which MAIL FROM an authenticated user may use.

Pure decisions, no I/O: the caller passes what it knows (the restriction list, whether the
session authenticated, the client's address, our domains and networks, a user lookup) and
gets back the reply to send and, for a local recipient, the mailbox.

Theory of operation
-------------------
`evaluate_recipient` is Postfix's ``smtpd_recipient_restrictions`` for the rules sansmail
knows, evaluated in order; the first rule that decides wins:

* ``permit_sasl_authenticated``: permit when the session has authenticated (RFC 4954).
* ``permit_mynetworks``: permit when the client address is in `mynetworks`.
* ``reject_unauth_destination``: reject a recipient outside our domains, `554 5.7.1`
  (RFC 5321 §3.6.2 lets a server refuse to relay; RFC 3463 X.7.1 "delivery not
  authorized").
* ``reject_unlisted_recipient``: reject a recipient in our domains who is not a user,
  `550 5.1.1` (RFC 5321 §4.2.2; RFC 3463 X.1.1 "bad destination mailbox address").
* ``permit`` / ``reject``: decide unconditionally (``reject`` answers `554 5.7.1`).

What happens after a permit, or when no rule decides, depends on where the recipient lives:

* A recipient in our domains is always checked against the user store, whatever the
  list said: Postfix's ``smtpd_reject_unlisted_recipient = yes`` default, so that neither a
  trusted network nor a logged-in user can fill the queue with mail for nobody. With a
  recipient delimiter, ``alice+tag@dom`` goes to ``alice`` when no user ``alice+tag``
  exists (Postfix's recipient_delimiter: each character of the setting is a delimiter,
  the first one found splits). ``postmaster`` (RFC 5321 §4.5.1: MUST be accepted, also as
  the bare ``<Postmaster>``) and ``abuse`` (RFC 2142) at our domains are accepted before
  the list is even read: to the user of that name when one exists, otherwise to the
  postmaster mailbox of the first domain (CONTRACT.md, "Where mail lives").
* A recipient elsewhere is accepted only when ``permit_sasl_authenticated`` or
  ``permit_mynetworks`` decided, and is then marked ``remote=True`` for the queue. Here we
  part from Postfix on purpose: where Postfix would relay after a bare ``permit`` or an
  exhausted list, we refuse (`554 5.7.1`). The config checker already refuses such lists;
  this keeps a list that slips past it from ever making an open relay.

Open-relay tricks need no special code because nothing here reinterprets an address:
``user%remote@ours``, ``remote!user@ours`` and ``"user@remote"@ours`` are local parts of
our domain and so local recipients, refused as unknown users (`Address` keeps "%" and "!"
as plain characters and the quotes' content as the local part). A source route
``<@ours:user@remote>`` has already been dropped by the address parser (RFC 5321
§4.1.1.3), so the recipient *is* remote. Address literals (``user@[127.0.0.1]``) are ours
only when listed in `domains`, and domains compare in their canonical form, so case and
IDN spellings cannot smuggle a foreign domain in.

`check_sender_login` is Postfix's ``reject_sender_login_mismatch`` for a server whose
users own exactly their own address: an authenticated user may send as that address or
one of its detail variants (``alice+lists@dom``), and as the null sender.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Callable, Collection, Iterable

import attrs

from sansmail.mail.address import Address, MailboxId
from sansmail.mail.logtext import ClientAddress
from sansmail.smtp import Reply

__all__ = [
    "RESTRICTIONS",
    "ROLE_ACCOUNTS",
    "RecipientDecision",
    "check_sender_login",
    "decide_recipient",
    "evaluate_recipient",
    "in_networks",
    "postmaster_mailbox",
]

#: Local parts every domain must accept even when no user has them (RFC 5321 §4.5.1,
#: RFC 2142 §2/§4).
ROLE_ACCOUNTS = frozenset({"postmaster", "abuse"})

#: The rules `evaluate_recipient` knows (the same names as the config file's
#: ``recipient_restrictions``).
RESTRICTIONS = (
    "permit_sasl_authenticated",
    "permit_mynetworks",
    "reject_unauth_destination",
    "reject_unlisted_recipient",
    "permit",
    "reject",
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class RecipientDecision:
    """`reply` to send for the RCPT. When accepted, `mailbox` is where a local recipient's
    mail goes, or `remote` is True (and `mailbox` None) for a recipient to be relayed."""

    reply: Reply
    mailbox: MailboxId | None
    remote: bool = attrs.field(default=False, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.remote and (self.mailbox is not None or not self.reply.is_positive):
            raise ValueError("a remote recipient is accepted and has no local mailbox")

    @property
    def accepted(self) -> bool:
        return self.mailbox is not None or self.remote


class _Permit(enum.Enum):
    # A permit by who the client is, which may relay; and an unconditional one, which
    # may not (see the module docstring).
    TRUSTED = enum.auto()
    PLAIN = enum.auto()


def postmaster_mailbox(domains: Collection[str]) -> MailboxId:
    """The mailbox that takes postmaster/abuse mail nobody else claims."""
    return MailboxId(domain=next(iter(domains)), local="postmaster")


def evaluate_recipient(
    rcpt: Address,
    *,
    restrictions: Iterable[str],
    sasl_authenticated: bool,
    client_ip: ClientAddress,
    mynetworks: Collection[IPNetwork],
    domains: Collection[str],
    user_exists: Callable[[str], bool],
    recipient_delimiter: str = "",
) -> RecipientDecision:
    """Decide one RCPT TO by `restrictions`, in order (see the module docstring).

    `client_ip` is the client's address (an IPv4-mapped IPv6 address counts as its IPv4
    address; None or an unparseable string is in no network). `user_exists` takes an
    `Address.key` (``local@domain``, lower case). `domains` are canonical
    (`sansmail.mail.address.canonical_domain`), the first one taking the bare ``<Postmaster>``
    and unclaimed role-account mail. Raises ValueError for an unknown restriction.
    """
    rules = tuple(restrictions)
    unknown = [rule for rule in rules if rule not in RESTRICTIONS]
    if unknown:
        raise ValueError(f"unknown restriction {unknown[0]!r}; known: {', '.join(RESTRICTIONS)}")
    # The bare <Postmaster> (RFC 5321 §4.1.1.3) belongs to our first domain.
    local = rcpt.domain in domains or (rcpt.domain == "" and bool(domains))
    mailbox = _local_mailbox(rcpt, domains, user_exists, recipient_delimiter) if local else None
    if mailbox is not None and _is_role_account(rcpt):
        return _ok(mailbox)

    outcome: RecipientDecision | _Permit | None = None
    for rule in rules:
        outcome = _apply(
            rule,
            rcpt,
            local=local,
            known=mailbox is not None,
            sasl_authenticated=sasl_authenticated,
            client_ip=client_ip,
            mynetworks=mynetworks,
        )
        if outcome is not None:
            break

    if isinstance(outcome, RecipientDecision):
        return outcome
    if local:
        return _ok(mailbox) if mailbox is not None else _unknown_user(rcpt)
    if outcome is _Permit.TRUSTED:
        # RFC 3463 X.1.5: destination address valid; the queue takes it from here.
        return RecipientDecision(
            reply=Reply(code=250, lines="Ok", enhanced="2.1.5"), mailbox=None, remote=True
        )
    return _relay_denied(rcpt)


def decide_recipient(
    rcpt: Address,
    *,
    domains: Collection[str],
    user_exists: Callable[[str], bool],
    recipient_delimiter: str = "",
) -> RecipientDecision:
    """Decide one RCPT TO for a server that only receives for its own domains: the same
    as `evaluate_recipient` with ``reject_unauth_destination`` alone and nobody trusted.
    `user_exists` takes an `Address.key` (``local@domain``, lower case)."""
    return evaluate_recipient(
        rcpt,
        restrictions=("reject_unauth_destination",),
        sasl_authenticated=False,
        client_ip=None,
        mynetworks=(),
        domains=domains,
        user_exists=user_exists,
        recipient_delimiter=recipient_delimiter,
    )


def check_sender_login(
    reverse_path: Address | None,
    authenticated_user_key: str | None,
    *,
    domains: Collection[str],
    recipient_delimiter: str = "+",
) -> Reply | None:
    """Postfix's ``reject_sender_login_mismatch``: None when the MAIL FROM is allowed,
    else the `553 5.7.1` reply (Postfix's code; RFC 5321 §4.2.2 553 "mailbox name not
    allowed", RFC 3463 X.7.1 "delivery not authorized").

    Unauthenticated sessions (`authenticated_user_key` None) are not this rule's business.
    An authenticated user may use their own address in any case (`Address.key`), its
    detail variants (``alice+tag@dom`` with `recipient_delimiter` "+"), and the null
    sender: Postfix applies the rule only to a non-empty sender (smtpd_check.c), and
    clients legitimately send read receipts (RFC 8098 §2.1) and auto-replies
    (RFC 3834 §3.3) from ``<>``. A sender outside `domains` is never a user's own.
    """
    if authenticated_user_key is None or reverse_path is None:
        return None
    if reverse_path.domain in domains:
        local = reverse_path.local_part.lower()
        if f"{local}@{reverse_path.domain}" == authenticated_user_key:
            return None
        base = _detail_base(local, recipient_delimiter)
        if base is not None and f"{base}@{reverse_path.domain}" == authenticated_user_key:
            return None
    return Reply(
        code=553,
        lines=f"<{reverse_path}>: sender address rejected: not owned by user "
        f"{authenticated_user_key}",
        enhanced="5.7.1",
    )


# -- the rules ---------------------------------------------------------------------------


def _apply(
    rule: str,
    rcpt: Address,
    *,
    local: bool,
    known: bool,
    sasl_authenticated: bool,
    client_ip: ClientAddress,
    mynetworks: Collection[IPNetwork],
) -> RecipientDecision | _Permit | None:
    """One rule: a rejection, a permit, or None when the rule does not decide."""
    if rule == "permit_sasl_authenticated":
        return _Permit.TRUSTED if sasl_authenticated else None
    if rule == "permit_mynetworks":
        return _Permit.TRUSTED if _in_networks(client_ip, mynetworks) else None
    if rule == "reject_unauth_destination":
        return None if local else _relay_denied(rcpt)
    if rule == "reject_unlisted_recipient":
        # Postfix: a no-op for domains it has no recipient list for, i.e. remote ones.
        return _unknown_user(rcpt) if local and not known else None
    if rule == "permit":
        return _Permit.PLAIN
    assert rule == "reject", rule
    return RecipientDecision(
        reply=Reply(code=554, lines=f"<{rcpt}>: access denied", enhanced="5.7.1"),
        mailbox=None,
    )


def _local_mailbox(
    rcpt: Address,
    domains: Collection[str],
    user_exists: Callable[[str], bool],
    delimiter: str,
) -> MailboxId | None:
    """Where mail for a recipient in our domains goes; None for an unknown user."""
    local = rcpt.local_part.lower()
    domain = rcpt.domain or next(iter(domains))
    if user_exists(f"{local}@{domain}"):
        return MailboxId(domain=domain, local=local)
    base = _detail_base(local, delimiter)
    if base is not None and user_exists(f"{base}@{domain}"):
        return MailboxId(domain=domain, local=base)
    if _is_role_account(rcpt):
        return postmaster_mailbox(domains)
    return None


def _is_role_account(rcpt: Address) -> bool:
    return rcpt.local_part.lower() in ROLE_ACCOUNTS or rcpt.is_postmaster


def _detail_base(local: str, delimiters: str) -> str | None:
    """``alice`` for ``alice+tag``: the local part before the first delimiter character,
    or None when there is none or nothing precedes it."""
    cut = min((i for i in (local.find(d) for d in delimiters) if i >= 0), default=-1)
    return local[:cut] if cut > 0 else None


def in_networks(client_ip: str, networks: Collection[IPNetwork]) -> bool:
    """`client_ip` (IPv4-mapped IPv6 read as IPv4) is in one of `networks`."""
    return _in_networks(client_ip, networks)


def _in_networks(client_ip: ClientAddress, networks: Collection[IPNetwork]) -> bool:
    if client_ip is None or not networks:
        return False
    address = _client_address(client_ip)
    if address is None:
        return False
    return any(address.version == net.version and address in net for net in networks)


@functools.lru_cache(maxsize=1024)  # the same few clients come back: parsing costs 3 µs
def _client_address(client_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; mynetworks lists them
    # as IPv4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _ok(mailbox: MailboxId) -> RecipientDecision:
    # RFC 3463 X.1.5: destination address valid.
    return RecipientDecision(reply=Reply(code=250, lines="Ok", enhanced="2.1.5"), mailbox=mailbox)


def _unknown_user(rcpt: Address) -> RecipientDecision:
    # RFC 5321 §4.2.2/§3.3: 550 mailbox unavailable; RFC 3463 X.1.1 bad destination
    # mailbox address.
    return RecipientDecision(
        reply=Reply(code=550, lines=f"<{rcpt}>: no such user here", enhanced="5.1.1"),
        mailbox=None,
    )


def _relay_denied(rcpt: Address) -> RecipientDecision:
    return RecipientDecision(
        reply=Reply(code=554, lines=f"<{rcpt}>: relay access denied", enhanced="5.7.1"),
        mailbox=None,
    )
