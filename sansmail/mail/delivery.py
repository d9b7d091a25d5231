"""One delivery attempt of one queued message, without the I/O: pure.

The queue runner of any event loop reads a message, asks this module what to deliver
where, does the lookups and connections it is told to, and hands back what happened;
the verdicts (`sansmail.mail.attempt.Outcome`) and the log lines come from here.

Theory of operation
-------------------
Loop check. A message with more than `HOP_LIMIT` Received header fields is in a
forwarding loop (RFC 5321 §6.3: counting them "has proven to be an effective ... method
of detecting loops"; Postfix ``hopcount_limit = 50``): every pending recipient bounces
with 5.4.6 (RFC 3463 X.4.6, routing loop detected) and nothing is delivered.

Destinations. Pending recipients are grouped by the domain of their address, lower
case; each group goes in one SMTP transaction, the groups side by side. A domain in our
own `domains` is delivered locally (the bounces we send to our own senders, through the
aliases); every other one remotely.

Remote delivery. `RemoteDelivery` walks the next hops of one domain and tells the
runner, one `Step` at a time, what to do: `LookupMX`, `LookupPolicy` (MTA-STS, below),
`LookupAddresses`, `Connect`, and finally `Done` with one `Outcome` per recipient. The
route is `sansmail.mail.routing.route_for`'s; the MX hosts are in `order_mx`'s order;
each host, and each address of each host, is tried in turn until one gives a verdict on
the recipients (an SMTP reply to MAIL, RCPT or the content). Failures that end the walk:

=========================================  =======  ================================
what                                       verdict  status (RFC 3463)
=========================================  =======  ================================
an address literal we cannot deliver to    bounce   5.1.2 bad destination system
null MX (RFC 7505)                         bounce   5.1.10
we are the best MX, yet not the domain     bounce   5.4.6 routing loop
MX lookup: the name does not exist         bounce   5.1.2 bad destination system
MX lookup: any other DNS failure           defer    4.4.3 directory server failure
no address of any host gave a verdict      defer    4.4.1 no answer from host
=========================================  =======  ================================

An address lookup that fails for one host only moves on to the next host; its reason is
kept as the last one, for the deferral.

Batches. A `RemoteDelivery` may carry several messages for the same domain (the queue
runner's batch for one next hop): the lookups are made once, and at each address the
messages are delivered one after the other, each in its own transaction, so the runner
does them all on one connection (its cache hands the connection from one transaction to
the next). `RemoteDelivery.message` is the message the current `Connect` is for. A
conversation that ends without a verdict marks the address as failed for the rest of
the batch, as Postfix marks a dead destination: the messages not settled yet move on to
the next address together. Each message's result is ready as soon as it is settled
(`take_settled`), so the runner records a delivery without waiting for the batch.

TLS, by ``[delivery] tls`` level (Postfix's smtp_tls_security_level):

=======  ======================  =============================  =====================
level    STARTTLS not offered    handshake fails                certificate
=======  ======================  =============================  =====================
none     plaintext               (no STARTTLS)                  (no STARTTLS)
may      plaintext               same address again, plaintext  not checked (RFC 7435)
                                 (not with AUTH: next address)
encrypt  next address           next address                   not checked
verify   next address           next address                   chain and MX host name
=======  ======================  =============================  =====================

"Next address" means no verdict from this one: when none is left, the deferral above.
The first column is `sansmail.mail.outbound.OutboundSession`'s (it fails the session
under encrypt and verify); the other two are `Connect.tls`, `Connect.verify_name` and
`handshake_failed`.

MTA-STS (RFC 8461, ``[delivery] mta_sts``). For a domain delivered to its MX hosts (not
through a transport entry or the relayhost: the operator chose those hops), after the MX
lookup the walk asks for the domain's policy (`LookupPolicy`; the runner's cache
answers, ``sansmail.mail.mtasts`` says how). Under a policy in ``enforce`` mode, MX
hosts the policy does not list are skipped (§4.1), and every connection is at level
``verify`` for the MX name (§4.2: STARTTLS and a certificate valid for it), whatever
``[delivery] tls`` says. A walk that ends without a verdict because of that defers
with 4.7.4 (TLS not offered) or 4.7.5 (no listed MX host, or a failed handshake or
certificate), "MTA-STS" in the reason; a later attempt tries again, after asking for
the policy again (§5.1: a new policy may allow it). In ``testing`` mode the walk goes as
without a policy, and `Connect.mta_sts` lets the connection say in the log what enforce
would have refused. No policy, or ``none`` mode: as without MTA-STS.

A conversation ends in a `Conversation`: a verdict, or none and why. A connection the
runner reused from its cache that fails before any verdict says nothing about the
destination (it may simply have been closed by the server while idle): it asks for a
fresh connection (`Conversation.again`) instead of counting as a failed address;
except when it was lost after the final "." with no reply (RFC 1047's window, see
`sansmail.mail.outbound`): the server may have the message, so it is deferred like any
other failure and retried on the schedule, not within the second.

Signing. A message leaves for another host with a DKIM-Signature when we hold a key for
its From domain, and a forwarded copy (an alias sent it on to another domain) with an
ARC set too (`sansmail.mail.dkim.outbound_fields`). The queue keeps no mark for a
forwarded copy; its envelope tells it (`forwarded`): the SRS sender the intake gives it
(`sansmail.mail.srs`), or, when the sender was left as it was (the null sender, one of
ours, one too long to rewrite), the ORCPT the intake sets to the alias's address, in our
domain, beside a recipient in another one.

Log lines. `disposition` is the Postfix-shaped line for one recipient's verdict (one of
sent, deferred, bounced; CONTRACT.md), with the relay, the TLS in use, the time in the
queue and in this delivery, the DSN status and the reason. Remote text in it is
escaped (`sansmail.mail.logtext.printable`) so that no reply can forge a log line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Final, Literal

import attrs

from sansmail.config import DeliveryConfig, OutboundTLS
from sansmail.mail import mtasts, outbound, srs
from sansmail.mail.attempt import Outcome
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.mail.logtext import printable
from sansmail.mail.routing import MXRecord, RoutingError, order_mx, route_for
from sansmail.smtp import Reply

__all__ = [
    "HOP_LIMIT",
    "STORED",
    "TIMED_OUT",
    "Connect",
    "Conversation",
    "Destination",
    "DomainResult",
    "Done",
    "LogLine",
    "LookupAddresses",
    "LookupMX",
    "LookupPolicy",
    "MtaStsCheck",
    "RemoteDelivery",
    "Step",
    "connect_failed",
    "connection_closed",
    "connection_lost",
    "delivered",
    "destinations",
    "disposition",
    "dns_failure",
    "forwarded",
    "forwarding_loop",
    "handshake_failed",
    "outbound_message",
    "own_sender",
    "recipient_outcome",
    "reply_text",
    "session_failed",
    "store_failed",
    "unknown_recipient",
]

#: Received header fields past this mean a forwarding loop (Postfix: hopcount_limit).
HOP_LIMIT: Final = 50
_RECEIVED: Final = re.compile(rb"^Received:", re.IGNORECASE | re.MULTILINE)
_XTEXT_HEX: Final = re.compile(r"\+([0-9A-Fa-f]{2})")


@attrs.frozen
class LogLine:
    """One line for the mail log, as the runner should write it."""

    text: str
    level: Literal["info", "warning"] = "info"


# -- before any delivery ------------------------------------------------------------------


def forwarding_loop(content: bytes, *, limit: int = HOP_LIMIT) -> Outcome | None:
    """The bounce for every recipient when the header of `content` has more than `limit`
    Received fields, else None."""
    end = content.find(b"\r\n\r\n")
    if len(_RECEIVED.findall(content, 0, len(content) if end < 0 else end)) <= limit:
        return None
    return Outcome(
        status="bounced",
        reason=f"mail forwarding loop: more than {limit} Received headers",
        dsn="5.4.6",
    )


def forwarded(message: QueuedMessage, *, domains: Iterable[str]) -> bool:
    """Whether `message` is a copy an alias of ours forwards (see the module docstring):
    its sender is an SRS address at one of our `domains`, or a recipient outside them
    has an ORCPT inside them."""
    ours = {d.lower() for d in domains}
    local, _, domain = message.sender.rpartition("@")
    if domain.lower() in ours and srs.is_srs(local):
        return True
    for recipient in message.recipients:
        if recipient.address.rpartition("@")[2].lower() in ours or not recipient.orcpt:
            continue
        kind, _, original = recipient.orcpt.partition(";")
        if kind.strip().lower() != "rfc822":
            continue
        # xtext (RFC 3461 §4) hex-encodes only "+", "=" and what is not printable ASCII.
        original = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), original)
        if original.rpartition("@")[2].strip().lower() in ours:
            return True
    return False


def own_sender(message: QueuedMessage, *, domains: Iterable[str]) -> bool:
    """Whether the envelope sender of `message` is one of ours, not rewritten by SRS:
    for a forwarded copy, the mail of our own users. (Our own bounces are never
    forwarded: the null sender of a forwarded copy is someone else's bounce.)"""
    local, _, domain = message.sender.rpartition("@")
    return domain.lower() in {d.lower() for d in domains} and not srs.is_srs(local)


@attrs.frozen(kw_only=True)
class Destination:
    """The recipients of one domain, delivered in one transaction."""

    domain: str
    recipients: tuple[QueuedRecipient, ...]
    local: bool


def destinations(
    recipients: Iterable[QueuedRecipient], *, domains: Iterable[str]
) -> list[Destination]:
    """`recipients` grouped by domain (lower case), in order of first appearance, each
    marked local when the domain is one of our `domains`."""
    groups: dict[str, list[QueuedRecipient]] = {}
    for recipient in recipients:
        groups.setdefault(recipient.address.rpartition("@")[2].lower(), []).append(recipient)
    ours = set(domains)
    return [
        Destination(domain=domain, recipients=tuple(group), local=domain in ours)
        for domain, group in groups.items()
    ]


@attrs.frozen(kw_only=True)
class DomainResult:
    """What delivery to one destination came to: a verdict per recipient address, the
    relay for the log ("local", "none" when no host answered, else ``host[ip]:port``)
    and the TLS of the session that gave the verdicts."""

    outcomes: Mapping[str, Outcome]
    relay: str
    tls: str | None = None


# -- local delivery -----------------------------------------------------------------------

#: The verdict on local recipients whose mailboxes took the message.
STORED: Final = Outcome(status="sent", reason="delivered to maildir", dsn="2.0.0")


def unknown_recipient(address: str, problems: Sequence[str]) -> Outcome:
    """The bounce for a local recipient the aliases lead nowhere (`problems` say why)."""
    why = "; ".join(problems) or "no such user"
    return Outcome(status="bounced", reason=f"550 5.1.1 <{address}>: {why}", dsn="5.1.1")


def store_failed(reason: str) -> Outcome:
    """The deferral when the mailboxes could not take the message (a full disk passes)."""
    return Outcome(status="deferred", reason=f"cannot store the message: {reason}", dsn="4.3.0")


def users_unavailable(reason: str) -> Outcome:
    """The deferral when the users file cannot be read (storage/users.py serves no copy):
    whether the recipient exists cannot be told, so the message waits."""
    return Outcome(status="deferred", reason=f"user database unavailable: {reason}", dsn="4.3.0")


# -- remote delivery: verdicts ------------------------------------------------------------


def reply_text(reply: Reply) -> str:
    """An SMTP reply on one line, as logs and DSNs quote it: ``550 5.1.1 No such user``."""
    enhanced = f" {reply.enhanced}" if reply.enhanced else ""
    return f"{reply.code}{enhanced} {' '.join(reply.lines)}"


def recipient_outcome(result: outbound.RecipientResult, host: str) -> Outcome:
    """The verdict on one recipient from the reply that decided it at `host`."""
    reply = result.reply
    # `remote` is False when the session refused the message itself (SMTPUTF8 or SIZE the
    # next hop does not offer): our words, not the host's, so no "smtp;" diagnostic.
    return Outcome(
        status=result.status,
        reason=reply_text(reply),
        dsn=reply.enhanced or f"{reply.code // 100}.0.0",
        remote_mta=host,
        smtp_reply=result.remote,
    )


def dns_failure(reason: str, *, permanent: bool) -> Outcome:
    """The verdict when the MX lookup failed: the name does not exist (`permanent`), or
    the lookup may work later."""
    if permanent:
        return Outcome(status="bounced", reason=reason, dsn="5.1.2")
    return Outcome(status="deferred", reason=reason, dsn="4.4.3")


def outbound_message(
    message: QueuedMessage, content: bytes, recipients: Iterable[QueuedRecipient]
) -> outbound.OutboundMessage:
    """What the SMTP client session sends for `recipients` of `message`."""
    return outbound.OutboundMessage(
        sender=message.sender,
        recipients=tuple(
            outbound.OutboundRecipient(address=r.address, notify=r.notify, orcpt=r.orcpt)
            for r in recipients
        ),
        content=content,
        smtputf8=message.smtputf8,
        body_8bit=message.body_8bit,
        ret=message.ret,
        envid=message.envid,
    )


@attrs.frozen(kw_only=True)
class Conversation:
    """How the conversation with one address ended: the verdicts (`outcomes`), or none
    and why (`reason`). `again` asks for a second try of the same address: "plaintext"
    (opportunistic TLS whose handshake failed) or "fresh" (a reused connection had died;
    that is the runner's cache, not the destination). `tls_failure` says the reason was
    TLS's: "not-offered" (no STARTTLS, or it was refused) or "handshake" (which
    includes a certificate not verified)."""

    outcomes: Mapping[str, Outcome] | None = None
    reason: str = ""
    tls: str | None = None
    again: Literal["plaintext", "fresh"] | None = None
    tls_failure: Literal["not-offered", "handshake"] | None = None


def delivered(done: outbound.MessageDone, *, host: str, tls: str | None) -> Conversation:
    """The transaction at `host` settled every recipient; `tls` describes the session."""
    outcomes = {r.address: recipient_outcome(r, host) for r in done.results}
    return Conversation(outcomes=outcomes, tls=tls)


def connect_failed(why: str) -> Conversation:
    return Conversation(reason=f"connect failed: {why}")


def handshake_failed(why: str, *, level: OutboundTLS, authenticate: bool = False) -> Conversation:
    """The TLS handshake after STARTTLS failed (or timed out): at "may" the mail still
    goes, in plaintext, at once and to the same address, as Postfix does; stricter
    levels try the next address. Not when we would AUTH there (Postfix: not with SASL
    credentials): a relay that wants them will not relay for a plaintext stranger."""
    plaintext = level == "may" and not authenticate
    return Conversation(
        reason=why, again="plaintext" if plaintext else None, tls_failure="handshake"
    )


def session_failed(failed: outbound.SessionFailed, *, host: str, reused: bool) -> Conversation:
    # A cached connection that fails says nothing about the destination (the server
    # may have closed it while idle), so a fresh one is tried at once; but not once the
    # final "." is out with no reply (RFC 1047): the server may have the message, and a
    # retry within seconds would make the duplicate likely rather than possible.
    in_window = failed.stage == "end-of-data" and failed.reply is None
    if reused and not in_window:
        return Conversation(reason="cached connection failed", again="fresh")
    tls: Literal["not-offered"] | None = "not-offered" if failed.stage == "starttls" else None
    if failed.reply is None:
        return Conversation(reason=failed.reason, tls_failure=tls)
    return Conversation(reason=f"{host} said: {reply_text(failed.reply)}", tls_failure=tls)


def connection_closed(*, reused: bool) -> Conversation:
    if reused:
        return Conversation(reason="cached connection closed", again="fresh")
    return Conversation(reason="connection closed")


def connection_lost(why: str, *, reused: bool) -> Conversation:
    if reused:
        return Conversation(reason="cached connection lost", again="fresh")
    return Conversation(reason=f"lost connection: {why}")


#: A read or write of the conversation took longer than RFC 5321 §4.5.3.2 allows.
TIMED_OUT: Final = Conversation(reason="conversation timed out")


# -- remote delivery: the walk over the next hops -------------------------------------------


@attrs.frozen
class LookupMX:
    """Look up the MX records of `domain`; answer `mx_found` or `lookup_failed`."""

    domain: str


@attrs.frozen
class LookupAddresses:
    """Look up the addresses of `host`; answer `addresses_found` or `lookup_failed`."""

    host: str


@attrs.frozen
class LookupPolicy:
    """Find the MTA-STS policy mail to `domain` goes under (None: none); answer
    `policy_found`."""

    domain: str


@attrs.frozen(kw_only=True)
class MtaStsCheck:
    """The MTA-STS policy a `Connect` is made under: `domain`'s, in `mode`; `listed`:
    whether the policy names the host (in enforce mode, always)."""

    domain: str
    mode: Literal["enforce", "testing"]
    listed: bool


@attrs.frozen(kw_only=True)
class Connect:
    """Deliver `RemoteDelivery.message` to `ip`:`port` (the host `host`) at TLS level
    `tls`; answer `conversation_ended`. With `verify_name`, the certificate must be valid
    for that name; `authenticate`: AUTH with the relayhost's credentials. `mta_sts`: the
    policy in force (in testing mode, the connection logs what enforce would refuse)."""

    host: str
    ip: str
    port: int
    tls: OutboundTLS
    verify_name: str | None
    authenticate: bool
    mta_sts: MtaStsCheck | None = None

    @property
    def relay(self) -> str:
        return f"{self.host}[{self.ip}]:{self.port}"


@attrs.frozen
class Done:
    """The walk is over: `results` has, for each message in order, a verdict for every
    recipient."""

    results: tuple[DomainResult, ...]

    @property
    def result(self) -> DomainResult:
        """The result of the first (for a walk of one message: the) message."""
        return self.results[0]


Step = LookupMX | LookupPolicy | LookupAddresses | Connect | Done


@attrs.frozen
class _MXFound:
    records: tuple[MXRecord, ...]


@attrs.frozen
class _AddressesFound:
    addresses: tuple[str, ...]


@attrs.frozen
class _PolicyFound:
    policy: mtasts.Policy | None


@attrs.frozen
class _Failed:
    reason: str
    permanent: bool


_Answer = _MXFound | _PolicyFound | _AddressesFound | _Failed | Conversation


class RemoteDelivery:
    """The next hops of one remote destination, tried in turn, for one message or a
    batch of messages to the same domain (see the module docstring).

    `hostname` is ours (for the MX loop rule); `shuffle` permutes hosts of equal MX
    preference in place (``random.shuffle``). Call `next_step`, do what it says, answer
    with the method the step names, until it is `Done`; a `Connect` is for `message`."""

    def __init__(
        self,
        message: outbound.OutboundMessage | Sequence[outbound.OutboundMessage],
        domain: str,
        *,
        delivery: DeliveryConfig,
        hostname: str,
        shuffle: Callable[[list[str]], None],
    ) -> None:
        if isinstance(message, outbound.OutboundMessage):
            message = (message,)
        if not message:
            raise ValueError("a delivery needs a message")
        #: Every message of the walk, in the order they are tried.
        self.messages: tuple[outbound.OutboundMessage, ...] = tuple(message)
        #: The index in `messages` of the one the current `Connect` is for.
        self.index = 0
        self.domain = domain
        self._delivery = delivery
        self._hostname = hostname
        self._shuffle = shuffle
        self._results: list[DomainResult | None] = [None] * len(self.messages)
        self._settled: list[tuple[int, DomainResult]] = []
        self._walk = self._hops()
        self._step: Step = self._resume(lambda: next(self._walk))

    @property
    def message(self) -> outbound.OutboundMessage:
        """The message the current `Connect` is for."""
        return self.messages[self.index]

    def next_step(self) -> Step:
        return self._step

    def take_settled(self) -> list[tuple[int, DomainResult]]:
        """The messages settled since the last call, by index in `messages`, with their
        results (each one once). Every message is settled by the time of `Done`."""
        settled, self._settled = self._settled, []
        return settled

    def mx_found(self, records: Iterable[MXRecord]) -> None:
        """The MX records of `LookupMX.domain` (none: it has no MX)."""
        self._answer(LookupMX, _MXFound(tuple(records)))

    def policy_found(self, policy: mtasts.Policy | None) -> None:
        """The MTA-STS policy of `LookupPolicy.domain`: None when it has none (or none
        could be had: then delivery goes on as without MTA-STS, RFC 8461 §5)."""
        self._answer(LookupPolicy, _PolicyFound(policy))

    def addresses_found(self, addresses: Iterable[str]) -> None:
        """The addresses of `LookupAddresses.host`, in the order to try them."""
        self._answer(LookupAddresses, _AddressesFound(tuple(addresses)))

    def lookup_failed(self, reason: str, *, permanent: bool) -> None:
        """The lookup gave no answer: the name does not exist (`permanent`) or the
        failure may pass. `reason` is one line, for the log and the DSN."""
        self._answer((LookupMX, LookupAddresses), _Failed(reason, permanent))

    def conversation_ended(self, conversation: Conversation) -> None:
        """How delivering `message` as the current `Connect` said has ended."""
        self._answer(Connect, conversation)

    def _answer(self, expected: type[Step] | tuple[type[Step], ...], answer: _Answer) -> None:
        if not isinstance(self._step, expected):
            raise RuntimeError(f"{type(answer).__name__} is no answer to {self._step!r}")
        self._step = self._resume(lambda: self._walk.send(answer))

    def _resume(self, advance: Callable[[], Step]) -> Step:
        try:
            return advance()
        except StopIteration:
            results = tuple(r for r in self._results if r is not None)
            assert len(results) == len(self.messages)
            return Done(results)

    def _settle(self, index: int, result: DomainResult) -> None:
        self._results[index] = result
        self._settled.append((index, result))

    def _everyone(self, indices: Iterable[int], outcome: Outcome) -> None:
        for index in indices:
            recipients = self.messages[index].recipients
            self._settle(
                index,
                DomainResult(outcomes={r.address: outcome for r in recipients}, relay="none"),
            )

    def _hops(self) -> Generator[Step, _Answer, None]:
        # The walk reads in order as a generator: each `yield` is the step the runner
        # takes next, and evaluates to the answer it gave; it ends with every message
        # settled.
        delivery = self._delivery
        unsettled = list(range(len(self.messages)))
        try:
            route = route_for(self.domain, delivery)
        except ValueError as exc:
            self._everyone(unsettled, Outcome(status="bounced", reason=str(exc), dsn="5.1.2"))
            return
        hosts = [route.host]
        if route.mx_lookup:
            answer = yield LookupMX(route.host)
            if isinstance(answer, _Failed):
                outcome = dns_failure(answer.reason, permanent=answer.permanent)
                self._everyone(unsettled, outcome)
                return
            assert isinstance(answer, _MXFound)
            try:
                hosts = order_mx(
                    answer.records,
                    domain=route.host,
                    shuffle=self._shuffle,
                    self_names={self._hostname},
                )
            except RoutingError as exc:  # null MX, or an MX loop
                outcome = Outcome(status="bounced", reason=str(exc), dsn=exc.status)
                self._everyone(unsettled, outcome)
                return
        port = delivery.smtp_port if route.kind in ("mx", "literal") else route.port
        last = "no host to deliver to"
        last_dsn = "4.4.1"
        policy = None
        if route.kind == "mx" and delivery.mta_sts:
            found = yield LookupPolicy(route.host)
            assert isinstance(found, _PolicyFound)
            policy = found.policy
        enforce = policy is not None and policy.mode == "enforce"
        if policy is not None and enforce:
            listed = [host for host in hosts if policy.allows(host)]
            if not listed:
                last = (
                    f"MTA-STS policy of {route.host} (enforce): no MX host is listed "
                    f"({', '.join(hosts)} not in {', '.join(policy.mx)})"
                )
                last_dsn = "4.7.5"
            hosts = listed
        for host in hosts:
            answer = yield LookupAddresses(host)
            if isinstance(answer, _Failed):
                last, last_dsn = answer.reason, "4.4.1"
                continue
            assert isinstance(answer, _AddressesFound)
            check = None
            if policy is not None and policy.mode != "none":
                check = MtaStsCheck(
                    domain=route.host,
                    mode="enforce" if enforce else "testing",
                    listed=policy.allows(host),
                )
            for ip in answer.addresses:
                connect = Connect(
                    host=host,
                    ip=ip,
                    port=port,
                    # RFC 8461 §4.2: STARTTLS, and a certificate valid for the MX name.
                    tls="verify" if enforce else delivery.tls,
                    verify_name=host if enforce or delivery.tls == "verify" else None,
                    authenticate=route.kind == "relayhost",
                    mta_sts=check,
                )
                while unsettled:
                    self.index = unsettled[0]
                    ended = yield connect
                    assert isinstance(ended, Conversation)
                    if ended.again == "plaintext":
                        # For the rest of the batch too: this address's TLS has failed.
                        connect = attrs.evolve(connect, tls="none", verify_name=None)
                        ended = yield connect
                        assert isinstance(ended, Conversation)
                    if ended.outcomes is None:
                        last = f"{connect.relay}: {ended.reason}"
                        last_dsn = "4.4.1"
                        if enforce and ended.tls_failure is not None:
                            last = f"MTA-STS policy of {route.host} (enforce): {last}"
                            last_dsn = "4.7.4" if ended.tls_failure == "not-offered" else "4.7.5"
                        break  # this address is done for the whole batch
                    result = DomainResult(
                        outcomes=ended.outcomes, relay=connect.relay, tls=ended.tls
                    )
                    self._settle(unsettled.pop(0), result)
                if not unsettled:
                    return
        self._everyone(unsettled, Outcome(status="deferred", reason=last, dsn=last_dsn))


# -- the log ----------------------------------------------------------------------------------


def disposition(
    message: QueuedMessage,
    recipient: QueuedRecipient,
    outcome: Outcome,
    *,
    result: DomainResult,
    delay: float,
    now: float,
) -> LogLine:
    """The log line for `recipient`'s verdict: `delay` is how long this delivery took,
    `now` gives the time since the message arrived."""
    in_queue = max(0.0, now - message.arrival)
    parts = [
        f"from=<{printable(message.sender)}>",
        f"to=<{printable(recipient.address)}>",
        f"relay={result.relay}",
        f"size={message.size}",
        f"delay={in_queue:.1f}",
        f"delays={delay:.1f}",
    ]
    if result.relay not in {"local", "none"}:
        parts.append(f"tls={result.tls}" if result.tls else "tls=none")
    parts.append(f"dsn={outcome.dsn}")
    parts.append(f"status={outcome.status} ({printable(outcome.reason)})")
    return LogLine(f"{message.queue_id}: {', '.join(parts)}")
