"""Greylisting (RFC 6647) as postgrey does it: the triplet, the decision, the reply, the
X-Greylist field and the log line. Pure: the time is an argument, the state is records
the caller reads and writes (`sansmail.storage.greylist` keeps them for every process).

Theory of operation
-------------------
A spam cannon rarely retries a temporary refusal; a mail server always does (RFC 5321
§4.5.4.1). So the first time a (client network, sender, recipient) triplet is seen, RCPT
gets ``450 4.7.1``; a retry after `delay` seconds (300) and within `retry_window` (two
days) of the first attempt passes, and the triplet is remembered: it passes at once for
`max_age` (35 days) after it was last seen. The numbers are postgrey's defaults, and the
rules below are postgrey's ``smtpd_access_policy`` (version 1.33+), re-expressed:

* The triplet (`triplet`): the client's network, not its address, because big senders
  retry from another host of the same pool: IPv4 /24 (postgrey's ``--lookup-by-subnet``,
  its default), IPv6 /64 (one site's subnet, postgrey 1.37's ``--ipv6cidr``); an
  IPv4-mapped IPv6 client is its IPv4 address. The sender and the recipient lower-cased
  (the domain is already canonical). The sender is normalised as postgrey's
  ``do_sender_substitutions`` does, so that mailing lists, whose every message has a new
  bounce address, are not greylisted again for each message (`normalize_sender`; turn
  it off with `GreylistSettings.normalize_sender`):

  1. BATV ``prvs=tag=local`` (or ``prvs=local=tag``, as some write it) becomes
     ``local``: of the two fields, the one that is not a 10-character tag;
  2. (ours, not postgrey's) SRS: the hash and day fields of ``SRS0=HHHH=TT=d=l`` and of
     ``SRS1=GGGG=f==HHHH=TT=d=l`` become ``#``, so a forwarder's daily stamp does not
     make a new triplet every day;
  3. an extension is dropped: everything from the first ``+`` (VERP
     ``list+bob=example.org``);
  4. every number standing alone between non-word characters becomes ``#``
     (``bounce-12345-67@`` is ``bounce-#-#@``), ASCII word rules as in Perl.

  The recipient is not normalised (``bob+news`` and ``bob`` are two triplets), as in
  postgrey.

* The decision (`decide`), from the triplet's record (first attempt of the current
  round, last attempt seen) and the client network's auto-whitelist record:

  - a client network with `auto_whitelist` (5) counted passes passes at once, for any
    triplet ("client AWL"); its record is refreshed at most once an hour;
  - no record, or a record past its expiry: greylist ("new") and record
    (first = last = now);
  - a record not yet passed (last - first < delay) whose first attempt is less than
    `delay` ago: greylist again ("early-retry"), first kept, last = now;
  - otherwise pass ("triplet found"). The first pass of a round reports how long the
    mail was held up (`Decision.delayed`, for the X-Greylist field and the log) and
    counts one pass for the client network's auto-whitelist, at most one per hour
    (postgrey: one greylisting survived per hour, so that one busy triplet does not
    whitelist its client on its own).

  A record expires (`TripletRecord.expires`) `retry_window` after its first attempt
  while it has not passed (postgrey starts the round again, and its nightly clean-up
  drops it), and `max_age` after it was last seen once passed; a client's record
  `max_age` after it was last counted. An expired record counts as no record, so the
  decision does not depend on when the store gets round to deleting it. A remembered
  triplet's last-seen time is rewritten at most once an hour (`REFRESH`): one write per
  hour instead of one per RCPT, which moves its expiry by less than an hour in 35 days.

* The reply (`greylist_reply`): ``450 4.7.1 <rcpt>: Recipient address rejected:
  Greylisted, ...`` with the seconds left, the wording Postfix gives a postgrey refusal
  (so log greps and report tools that count "Greylisted" still do). 450 rather than
  postgrey's DEFER_IF_PERMIT: the session asks this check after the recipient was
  accepted, which is what DEFER_IF_PERMIT waits for.

* The log line (`log_text`), postgrey's: ``action=greylist, reason=new,
  client_name=..., client_address=..., sender=..., recipient=...``, the addresses as the
  client gave them.

Left out, for now: postgrey's client and recipient whitelist files (mynetworks and
authenticated clients are never greylisted: the session's `trusted`), its
``--lookup-by-host``, and its guess that a reverse name holding the address's last two
numbers is a dial-up pool to be keyed by the full address.
"""

from __future__ import annotations

import datetime
import email.utils
import enum
import ipaddress
import math
import re
from typing import Final

import attrs

from sansmail.mail.address import Address
from sansmail.mail.logtext import ClientAddress, client_address, printable, show_ip
from sansmail.smtp import Reply

__all__ = [
    "AUTO_WHITELIST",
    "AWL_INTERVAL",
    "DELAY",
    "MAX_AGE",
    "REFRESH",
    "RETRY_WINDOW",
    "Action",
    "ClientRecord",
    "Decision",
    "GreylistSettings",
    "Triplet",
    "TripletRecord",
    "client_network",
    "decide",
    "greylist_reply",
    "log_text",
    "normalize_sender",
    "recipient_key",
    "sender_key",
    "triplet",
    "x_greylist",
]

DELAY: Final = 300  # seconds: postgrey --delay
RETRY_WINDOW: Final = 2 * 86400  # postgrey --retry-window (2 days)
MAX_AGE: Final = 35 * 86400  # postgrey --max-age (35 days)
AUTO_WHITELIST: Final = 5  # postgrey --auto-whitelist-clients
AWL_INTERVAL: Final = 3600  # one counted pass per client network per hour (postgrey)
REFRESH: Final = 3600  # a remembered triplet's last-seen time is rewritten this often
IPV4_PREFIX: Final = 24
IPV6_PREFIX: Final = 64
UNKNOWN_CLIENT: Final = "unknown"  # a client that is not an IP address (a Unix socket)

_BATV_TAG: Final = re.compile(r"[0-9a-z]{10}")
_SRS0: Final = re.compile(r"\Asrs0[=+-][^=]*=[^=]*=")
_SRS1: Final = re.compile(r"\Asrs1[=+-][^=]*=")
_SRS1_INNER: Final = re.compile(r"==[^=]*=[^=]*=")
_NUMBER: Final = re.compile(r"\b[0-9]+\b", re.ASCII)


@attrs.frozen(kw_only=True)
class GreylistSettings:
    """How long to wait, how long to remember (seconds), and when a client network is
    trusted; postgrey's defaults. `auto_whitelist` 0 turns the auto-whitelist off."""

    delay: int = attrs.field(default=DELAY, validator=attrs.validators.ge(0))
    retry_window: int = attrs.field(default=RETRY_WINDOW)
    max_age: int = attrs.field(default=MAX_AGE)
    auto_whitelist: int = attrs.field(default=AUTO_WHITELIST, validator=attrs.validators.ge(0))
    normalize_sender: bool = True

    @retry_window.validator
    def _window(self, _attr: object, value: int) -> None:
        # A window shorter than the delay would greylist every retry for ever.
        if value <= self.delay:
            raise ValueError("the retry window must be longer than the delay")

    @max_age.validator
    def _age(self, _attr: object, value: int) -> None:
        if value < self.retry_window:
            raise ValueError("max_age must be at least the retry window")


@attrs.frozen
class Triplet:
    """What greylisting remembers: the client's network (``192.0.2.0/24``,
    ``2001:db8::/64`` or ``unknown``), the sender's key (``""`` for the null sender) and
    the recipient's key."""

    client: str
    sender: str
    recipient: str


@attrs.frozen
class TripletRecord:
    """A triplet's state: the `first` attempt of its current round, the `last` attempt
    seen, and when the record stops meaning anything (`expires`)."""

    first: float
    last: float
    expires: float

    def passed(self, settings: GreylistSettings) -> bool:
        """The triplet has waited out the delay once: it is remembered."""
        return self.last - self.first >= settings.delay


@attrs.frozen
class ClientRecord:
    """A client network's auto-whitelist state: passes counted, the `last` one counted,
    and when the record expires."""

    count: int
    last: float
    expires: float


class Action(enum.Enum):
    """What the RCPT gets: a 450, or on its way."""

    GREYLIST = "greylist"
    PASS = "pass"  # noqa: S105 (not a password)


@attrs.frozen(kw_only=True)
class Decision:
    """What `decide` said at `now`, and what to write back: `triplet` and `client` are
    the new records (None: leave the stored one as it is).

    `wait` is the seconds still to wait (GREYLIST); `delayed` the seconds a mail was held
    up, on the first pass after greylisting (None otherwise); `whitelisted` says this pass
    put the client network on the auto-whitelist."""

    action: Action
    reason: str
    now: float
    wait: int = 0
    delayed: float | None = None
    triplet: TripletRecord | None = None
    client: ClientRecord | None = None
    whitelisted: bool = False


# -- the triplet ---------------------------------------------------------------------------


def client_network(client_ip: ClientAddress) -> str:
    """The client's network as greylisting keys it: IPv4 /24, IPv6 /64."""
    address = client_address(client_ip)
    if address is None:
        return UNKNOWN_CLIENT
    prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network((address, prefix), strict=False))


def normalize_sender(local: str) -> str:
    """A lower-cased local part with postgrey's substitutions (module docstring, steps
    1 to 4), so that the bounce addresses of one list are one sender."""
    if local.startswith("prvs="):
        fields = local.split("=")
        if len(fields) == 3:
            first_tag = bool(_BATV_TAG.match(fields[1]))
            second_tag = bool(_BATV_TAG.match(fields[2]))
            # postgrey: the field that is not a tag; when both or neither look like
            # one, the standard order (prvs=tag=local).
            local = fields[1] if second_tag and not first_tag else fields[2]
    if local.startswith("srs0"):
        local = _SRS0.sub("srs0=#=#=", local, count=1)
    elif local.startswith("srs1"):
        local = _SRS1_INNER.sub("==#=#=", _SRS1.sub("srs1=#=", local, count=1), count=1)
    local = local.partition("+")[0]
    return _NUMBER.sub("#", local)


def sender_key(sender: Address | None, *, normalize: bool = True) -> str:
    """The sender's part of a triplet: ``""`` for the null sender, else the address
    lower-cased, its local part normalised unless `normalize` is False."""
    if sender is None:
        return ""
    local = sender.local_part.lower()
    if normalize:
        local = normalize_sender(local)
    return f"{local}@{sender.domain}"


def recipient_key(recipient: Address) -> str:
    """The recipient's part of a triplet: the address lower-cased, nothing dropped."""
    return f"{recipient.local_part.lower()}@{recipient.domain}"


def triplet(
    client_ip: ClientAddress,
    sender: Address | None,
    recipient: Address,
    *,
    normalize: bool = True,
) -> Triplet:
    """The triplet of one RCPT (see the module docstring)."""
    return Triplet(
        client_network(client_ip), sender_key(sender, normalize=normalize), recipient_key(recipient)
    )


# -- the decision --------------------------------------------------------------------------


def decide(
    settings: GreylistSettings,
    known: TripletRecord | None,
    client: ClientRecord | None,
    now: float,
) -> Decision:
    """Greylist or pass a triplet whose stored record is `known`, from a client network
    whose auto-whitelist record is `client` (None: none stored), at `now` (seconds since
    the epoch). The rules are in the module docstring."""
    if client is not None and now > client.expires:
        client = None
    if known is not None and now > known.expires:
        known = None
    awl = settings.auto_whitelist
    if awl and client is not None and client.count >= awl:
        refreshed = None
        if now >= client.last + AWL_INTERVAL:
            refreshed = ClientRecord(client.count + 1, now, now + settings.max_age)
        return Decision(action=Action.PASS, reason="client AWL", now=now, client=refreshed)

    if known is not None and known.passed(settings):
        refreshed_triplet = None
        if now >= known.last + REFRESH:
            refreshed_triplet = TripletRecord(known.first, now, now + settings.max_age)
        return Decision(
            action=Action.PASS, reason="triplet found", now=now, triplet=refreshed_triplet
        )

    first = known.first if known is not None else now
    # A clock that went back (or another process's, a little behind) waits no longer
    # than the delay.
    elapsed = max(0.0, now - first)
    wait = settings.delay - elapsed
    if wait > 0:
        return Decision(
            action=Action.GREYLIST,
            reason="new" if known is None else "early-retry",
            now=now,
            wait=math.ceil(wait),
            triplet=TripletRecord(first, now, first + settings.retry_window),
        )

    # The first pass of this round: remembered from now on, and counted for the client.
    counted = None
    whitelisted = False
    if awl and (client is None or now >= client.last + AWL_INTERVAL):
        count = (client.count if client is not None else 0) + 1
        counted = ClientRecord(count, now, now + settings.max_age)
        whitelisted = count == awl
    # Stored so that last - first >= delay marks it passed, even with a delay of 0 and
    # a clock gone back.
    last = max(now, first + settings.delay)
    return Decision(
        action=Action.PASS,
        reason="triplet found",
        now=now,
        delayed=elapsed,
        triplet=TripletRecord(first, last, last + settings.max_age),
        client=counted,
        whitelisted=whitelisted,
    )


# -- what the client and the log see -------------------------------------------------------


def greylist_reply(decision: Decision, recipient: Address) -> Reply:
    """The 450 for a greylisted RCPT, saying when to come back."""
    seconds = max(decision.wait, 1)
    unit = "second" if seconds == 1 else "seconds"
    return Reply(
        code=450,
        lines=(
            f"<{recipient}>: Recipient address rejected: Greylisted, mail from a new"
            f" sender is taken on its retry: try again in {seconds} {unit}",
        ),
        enhanced="4.7.1",
    )


def x_greylist(decision: Decision, hostname: str) -> tuple[str, str] | None:
    """The X-Greylist field for the first pass after greylisting (postgrey's
    ``X-Greylist: delayed N seconds by postgrey-V at HOST; DATE``), else None."""
    if decision.delayed is None:
        return None
    when = datetime.datetime.fromtimestamp(decision.now, datetime.UTC)
    return (
        "X-Greylist",
        f"delayed {int(decision.delayed)} seconds by sansmail at {hostname};"
        f" {email.utils.format_datetime(when)}",
    )


def log_text(
    decision: Decision | None,
    *,
    client_ip: ClientAddress,
    client_name: str | None,
    sender: Address | None,
    recipient: Address,
    failure: str | None = None,
) -> str:
    """postgrey's log line for one decision (``action=..., reason=..., client_name=...,
    client_address=..., sender=..., recipient=...``). With no decision, the mail was let
    through because the store failed: `failure` says why."""
    if decision is None:
        info = ["action=pass", f"reason=store failed ({printable(failure or 'unknown')})"]
    else:
        info = [f"action={decision.action.value}"]
        reason = decision.reason
        if decision.action is Action.GREYLIST and reason == "early-retry":
            reason = f"early-retry ({decision.wait}s missing)"
        info.append(f"reason={reason}")
        if decision.delayed is not None:
            info.append(f"delay={int(decision.delayed)}")
    if client_name:
        info.append(f"client_name={printable(client_name)}")
    info.append(f"client_address={show_ip(client_ip)}")
    info.append(f"sender={'' if sender is None else printable(str(sender))}")
    info.append(f"recipient={printable(str(recipient))}")
    return ", ".join(info)
