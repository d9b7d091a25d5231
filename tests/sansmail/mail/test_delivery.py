"""sansmail.mail.delivery: one attempt's decisions without sockets: the loop check, the
destinations, the walk over the next hops (DNS verdicts, TLS fallback), the conversation
endings and the log line."""

from __future__ import annotations

import types

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sansmail.mail.delivery
from sansmail.config import DeliveryConfig, NextHop
from sansmail.mail import mtasts, outbound
from sansmail.mail.attempt import Outcome
from sansmail.mail.delivery import (
    HOP_LIMIT,
    STORED,
    TIMED_OUT,
    Connect,
    Conversation,
    DomainResult,
    Done,
    LogLine,
    LookupAddresses,
    LookupMX,
    LookupPolicy,
    MtaStsCheck,
    RemoteDelivery,
    connect_failed,
    connection_closed,
    connection_lost,
    delivered,
    destinations,
    disposition,
    dns_failure,
    forwarding_loop,
    handshake_failed,
    outbound_message,
    recipient_outcome,
    reply_text,
    session_failed,
    store_failed,
    unknown_recipient,
)
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.mail.routing import MXRecord
from sansmail.smtp import Reply

BOB = "bob@far.test"
CAROL = "carol@far.test"
MESSAGE = outbound.OutboundMessage(
    sender="alice@example.test",
    recipients=(outbound.OutboundRecipient(address=BOB), outbound.OutboundRecipient(address=CAROL)),
    content=b"Subject: hi\r\n\r\nhello\r\n",
)
OK = Reply(code=250, lines="Ok", enhanced="2.0.0")
NO = Reply(code=550, lines="No such user", enhanced="5.1.1")


def keep(hosts: list[str]) -> None:
    pass


def plan(domain: str = "far.test", **delivery: object) -> RemoteDelivery:
    # MTA-STS off unless a test says: its step has tests of its own below.
    config = DeliveryConfig(**{"mta_sts": False, **delivery})  # type: ignore[arg-type]
    return RemoteDelivery(
        MESSAGE, domain, delivery=config, hostname="mx.example.test", shuffle=keep
    )


def sent(host: str = "mx.far.test", tls: str | None = None) -> Conversation:
    done = outbound.MessageDone(
        results=(
            outbound.RecipientResult(address=BOB, reply=OK, status="sent"),
            outbound.RecipientResult(address=CAROL, reply=NO, status="bounced"),
        )
    )
    return delivered(done, host=host, tls=tls)


def result_of(walk: RemoteDelivery) -> DomainResult:
    step = walk.next_step()
    assert isinstance(step, Done), step
    return step.result


def test_public_names_are_pinned() -> None:
    assert sorted(sansmail.mail.delivery.__all__) == sorted(
        [
            *("HOP_LIMIT", "STORED", "TIMED_OUT", "Connect", "Conversation", "Destination"),
            *("Done", "DomainResult", "LogLine", "LookupAddresses", "LookupMX"),
            *("LookupPolicy", "MtaStsCheck"),
            *("RemoteDelivery", "Step", "connect_failed", "connection_closed"),
            *("connection_lost", "delivered", "destinations", "disposition", "dns_failure"),
            *("forwarded", "forwarding_loop", "handshake_failed", "outbound_message", "own_sender"),
            *("recipient_outcome", "reply_text", "session_failed", "store_failed"),
            "unknown_recipient",
        ]
    )


# -- the loop check -----------------------------------------------------------------------


def received(n: int) -> bytes:
    return b"".join(b"Received: from h%d by h%d; date\r\n" % (i, i + 1) for i in range(n))


def test_up_to_the_hop_limit_is_no_loop() -> None:
    assert forwarding_loop(received(HOP_LIMIT) + b"Subject: x\r\n\r\nbody\r\n") is None


def test_past_the_hop_limit_bounces_with_5_4_6() -> None:
    verdict = forwarding_loop(received(HOP_LIMIT + 1) + b"\r\nbody\r\n")
    assert verdict == Outcome(
        status="bounced",
        reason="mail forwarding loop: more than 50 Received headers",
        dsn="5.4.6",
    )


def test_only_header_fields_named_received_count() -> None:
    # In the body, as another field's name suffix, or folded into a field: not a hop.
    body = received(HOP_LIMIT + 5)
    header = received(HOP_LIMIT - 1) + b"X-Received: x\r\nSubject: a\r\n Received: y\r\n"
    assert forwarding_loop(header + b"\r\n" + body) is None


def test_received_is_counted_in_any_case() -> None:
    content = received(HOP_LIMIT).replace(b"Received:", b"rECEIVED:") + b"received: z\r\n"
    assert forwarding_loop(content) is not None  # no body at all: the whole is header


def test_the_limit_is_an_argument() -> None:
    assert forwarding_loop(received(3), limit=2) is not None
    assert forwarding_loop(received(3), limit=3) is None


@given(st.lists(st.sampled_from([b"Received: x\r\n", b"Subject: y\r\n", b"\r\n", b"z\r\n"])))
def test_loop_check_counts_received_lines_of_the_header(lines: list[bytes]) -> None:
    content = b"".join(lines)
    end = content.find(b"\r\n\r\n")
    header = content if end < 0 else content[:end]
    hops = sum(1 for line in header.split(b"\r\n") if line.startswith(b"Received:"))
    assert (forwarding_loop(content, limit=2) is not None) == (hops > 2)


# -- destinations -------------------------------------------------------------------------


def test_recipients_are_grouped_by_domain_in_order_and_marked_local() -> None:
    recipients = [
        QueuedRecipient(address="a@Far.TEST"),
        QueuedRecipient(address="b@example.test"),
        QueuedRecipient(address="c@far.test"),
        QueuedRecipient(address='"x@y"@other.test'),
    ]
    groups = destinations(recipients, domains=["example.test"])
    assert [(d.domain, d.local, [r.address for r in d.recipients]) for d in groups] == [
        ("far.test", False, ["a@Far.TEST", "c@far.test"]),
        ("example.test", True, ["b@example.test"]),
        ("other.test", False, ['"x@y"@other.test']),
    ]


def test_no_recipients_no_destinations() -> None:
    assert destinations([], domains=["example.test"]) == []


# -- verdicts -----------------------------------------------------------------------------


def test_local_verdicts() -> None:
    assert Outcome(status="sent", reason="delivered to maildir", dsn="2.0.0") == STORED
    assert unknown_recipient("x@example.test", []) == Outcome(
        status="bounced", reason="550 5.1.1 <x@example.test>: no such user", dsn="5.1.1"
    )
    assert unknown_recipient("x@example.test", ["a: loop", "b: bad"]).reason == (
        "550 5.1.1 <x@example.test>: a: loop; b: bad"
    )
    assert store_failed("[Errno 28] No space left on device") == Outcome(
        status="deferred",
        reason="cannot store the message: [Errno 28] No space left on device",
        dsn="4.3.0",
    )


def test_reply_text() -> None:
    assert reply_text(NO) == "550 5.1.1 No such user"
    assert reply_text(Reply(code=451, lines=("Try", "later"))) == "451 Try later"


def test_recipient_outcome_keeps_the_reply_and_whose_it_is() -> None:
    result = outbound.RecipientResult(address=BOB, reply=NO, status="bounced")
    assert recipient_outcome(result, "mx.far.test") == Outcome(
        status="bounced",
        reason="550 5.1.1 No such user",
        dsn="5.1.1",
        remote_mta="mx.far.test",
        smtp_reply=True,
    )
    # No enhanced code: the class of the reply, X.0.0. Refused by the session itself:
    # not an SMTP reply of the host.
    ours = outbound.RecipientResult(
        address=BOB, reply=Reply(code=452, lines="full"), status="deferred", remote=False
    )
    assert recipient_outcome(ours, "h").dsn == "4.0.0"
    assert recipient_outcome(ours, "h").smtp_reply is False


@pytest.mark.parametrize(
    ("permanent", "status", "dsn"), [(True, "bounced", "5.1.2"), (False, "deferred", "4.4.3")]
)
def test_dns_failure(permanent: bool, status: str, dsn: str) -> None:
    assert dns_failure("far.test: NXDOMAIN", permanent=permanent) == Outcome(
        status=status,  # type: ignore[arg-type]
        reason="far.test: NXDOMAIN",
        dsn=dsn,
    )


def test_outbound_message_carries_the_envelope() -> None:
    message = QueuedMessage(
        queue_id="ABC123",
        sender="alice@example.test",
        arrival=0.0,
        size=5,
        recipients=[QueuedRecipient(address=BOB, notify=("FAILURE",), orcpt="rfc822;b@x.test")],
        smtputf8=True,
        body_8bit=True,
        ret="HDRS",
        envid="e1",
    )
    built = outbound_message(message, b"x\r\n", message.recipients)
    assert built == outbound.OutboundMessage(
        sender="alice@example.test",
        recipients=(
            outbound.OutboundRecipient(address=BOB, notify=("FAILURE",), orcpt="rfc822;b@x.test"),
        ),
        content=b"x\r\n",
        smtputf8=True,
        body_8bit=True,
        ret="HDRS",
        envid="e1",
    )


# -- conversation endings -----------------------------------------------------------------


def test_delivered_gives_a_verdict_per_recipient() -> None:
    ended = sent(tls="TLSv1.3 with cipher X (256/256 bits)")
    assert ended.outcomes is not None
    assert ended.outcomes[BOB].status == "sent"
    assert ended.outcomes[CAROL].status == "bounced"
    assert ended.tls == "TLSv1.3 with cipher X (256/256 bits)"
    assert ended.again is None


def test_endings_without_a_verdict() -> None:
    failed = outbound.SessionFailed(
        reply=Reply(code=554, lines="go away"), reason="greeting", permanent=True, stage="greeting"
    )
    quiet = outbound.SessionFailed(
        reply=None, reason="TLS required but not offered", permanent=False, stage="ehlo"
    )
    assert session_failed(failed, host="mx", reused=False) == Conversation(
        reason="mx said: 554 go away"
    )
    assert session_failed(quiet, host="mx", reused=False) == Conversation(
        reason="TLS required but not offered"
    )
    assert connect_failed("Connection refused") == Conversation(
        reason="connect failed: Connection refused"
    )
    assert connection_closed(reused=False) == Conversation(reason="connection closed")
    assert connection_lost("reset", reused=False) == Conversation(reason="lost connection: reset")
    assert Conversation(reason="conversation timed out") == TIMED_OUT


def test_a_reused_connection_that_died_asks_for_a_fresh_one() -> None:
    failed = outbound.SessionFailed(
        reply=Reply(code=421, lines="bye"), reason="", permanent=False, stage="mail"
    )
    for ended in (
        session_failed(failed, host="mx", reused=True),
        connection_closed(reused=True),
        connection_lost("reset", reused=True),
    ):
        assert ended.outcomes is None
        assert ended.again == "fresh"
        assert ended.reason.startswith("cached connection ")


def test_a_reused_connection_lost_after_the_final_dot_is_not_retried_at_once() -> None:
    # RFC 1047: the server may have the message; a fresh connection now would make a
    # duplicate likely. The deferral retries it on the schedule instead.
    window = "lost connection while sending end of data -- message may be sent more than once"
    lost = outbound.SessionFailed(reply=None, reason=window, permanent=False, stage="end-of-data")
    assert session_failed(lost, host="mx", reused=True) == Conversation(reason=window)
    # A 421 to the "." is an answer: the server does not have it.
    refused = attrs.evolve(lost, reply=Reply(code=421, lines="bye"))
    assert session_failed(refused, host="mx", reused=True).again == "fresh"
    # Mid-content, the server lacks the ".": nothing was delivered.
    content = attrs.evolve(lost, stage="content")
    assert session_failed(content, host="mx", reused=True).again == "fresh"


def test_no_plaintext_fallback_where_we_would_authenticate() -> None:
    ended = handshake_failed("Cannot start TLS: handshake failure", level="may", authenticate=True)
    assert ended == Conversation(
        reason="Cannot start TLS: handshake failure", tls_failure="handshake"
    )


@pytest.mark.parametrize(
    ("level", "again"), [("may", "plaintext"), ("encrypt", None), ("verify", None)]
)
def test_handshake_failure_falls_back_to_plaintext_only_at_may(level: str, again: str) -> None:
    ended = handshake_failed("TLS handshake failed: WRONG_VERSION", level=level)  # type: ignore[arg-type]
    assert ended == Conversation(
        reason="TLS handshake failed: WRONG_VERSION",
        again=again,  # type: ignore[arg-type]
        tls_failure="handshake",
    )


# -- the walk over the next hops ----------------------------------------------------------


def test_mx_walk_delivers_at_the_first_address_that_answers() -> None:
    walk = plan(smtp_port=2525)
    assert walk.next_step() == LookupMX("far.test")
    walk.mx_found([MXRecord(20, "mx2.far.test."), MXRecord(10, "MX1.far.test")])
    assert walk.next_step() == LookupAddresses("mx1.far.test")
    walk.addresses_found(["192.0.2.1", "2001:db8::1"])
    first = walk.next_step()
    assert first == Connect(
        host="mx1.far.test",
        ip="192.0.2.1",
        port=2525,
        tls="may",
        verify_name=None,
        authenticate=False,
    )
    assert isinstance(first, Connect)
    assert first.relay == "mx1.far.test[192.0.2.1]:2525"
    walk.conversation_ended(connect_failed("Connection refused"))
    second = walk.next_step()
    assert isinstance(second, Connect)
    assert second.ip == "2001:db8::1"
    walk.conversation_ended(sent(host="mx1.far.test", tls="TLSv1.3"))
    result = result_of(walk)
    assert result.relay == "mx1.far.test[2001:db8::1]:2525"
    assert result.tls == "TLSv1.3"
    assert result.outcomes[BOB].remote_mta == "mx1.far.test"
    assert set(result.outcomes) == {BOB, CAROL}


def test_no_mx_means_the_domain_itself() -> None:
    walk = plan()
    walk.mx_found([])
    assert walk.next_step() == LookupAddresses("far.test")


def test_equal_preferences_go_through_shuffle() -> None:
    config = DeliveryConfig(mta_sts=False)
    walk = RemoteDelivery(
        MESSAGE, "far.test", delivery=config, hostname="me.test", shuffle=lambda h: h.reverse()
    )
    walk.mx_found([MXRecord(10, "a.far.test"), MXRecord(10, "b.far.test")])
    assert walk.next_step() == LookupAddresses("b.far.test")


def test_address_lookup_failure_moves_to_the_next_host() -> None:
    walk = plan()
    walk.mx_found([MXRecord(10, "mx1.far.test"), MXRecord(20, "mx2.far.test")])
    walk.lookup_failed("mx1.far.test: SERVFAIL", permanent=False)
    assert walk.next_step() == LookupAddresses("mx2.far.test")
    walk.lookup_failed("mx2.far.test: NXDOMAIN", permanent=True)
    # Even a permanent failure of the last host defers: another host may come back.
    assert result_of(walk) == DomainResult(
        outcomes={
            BOB: Outcome(status="deferred", reason="mx2.far.test: NXDOMAIN", dsn="4.4.1"),
            CAROL: Outcome(status="deferred", reason="mx2.far.test: NXDOMAIN", dsn="4.4.1"),
        },
        relay="none",
    )


def test_no_address_answers_defers_with_the_last_reason() -> None:
    walk = plan()
    walk.mx_found([MXRecord(10, "mx1.far.test")])
    walk.addresses_found(["192.0.2.1", "192.0.2.2"])
    walk.conversation_ended(connect_failed("Connection refused"))
    walk.conversation_ended(TIMED_OUT)
    result = result_of(walk)
    assert result.relay == "none"
    assert result.tls is None
    assert result.outcomes[BOB] == Outcome(
        status="deferred",
        reason="mx1.far.test[192.0.2.2]:25: conversation timed out",
        dsn="4.4.1",
    )


@pytest.mark.parametrize(
    ("permanent", "status", "dsn"), [(True, "bounced", "5.1.2"), (False, "deferred", "4.4.3")]
)
def test_mx_lookup_failure_ends_the_walk(permanent: bool, status: str, dsn: str) -> None:
    walk = plan()
    walk.lookup_failed("far.test: no answer", permanent=permanent)
    result = result_of(walk)
    assert result.relay == "none"
    assert {o.status for o in result.outcomes.values()} == {status}
    assert {o.dsn for o in result.outcomes.values()} == {dsn}


# -- MTA-STS (RFC 8461) --------------------------------------------------------------------

ENFORCE = mtasts.Policy(mode="enforce", mx=("mx1.far.test", "*.backup.test"), max_age=86400)


def sts_walk(policy: mtasts.Policy | None, hosts: list[str], **delivery: object) -> RemoteDelivery:
    """A walk with MTA-STS on, past the MX lookup (`hosts` by preference) and the
    policy lookup that follows it."""
    walk = plan(mta_sts=True, **delivery)
    assert walk.next_step() == LookupMX("far.test")
    walk.mx_found([MXRecord(10 * n, host) for n, host in enumerate(hosts, 1)])
    assert walk.next_step() == LookupPolicy("far.test")
    walk.policy_found(policy)
    return walk


def test_enforce_skips_unlisted_mx_hosts_and_verifies_the_listed_ones() -> None:
    walk = sts_walk(ENFORCE, ["mx0.far.test", "mx1.far.test", "a.backup.test"])
    assert walk.next_step() == LookupAddresses("mx1.far.test")  # mx0 is not listed
    walk.addresses_found(["192.0.2.1"])
    assert walk.next_step() == Connect(
        host="mx1.far.test",
        ip="192.0.2.1",
        port=25,
        tls="verify",  # whatever [delivery] tls says
        verify_name="mx1.far.test",
        authenticate=False,
        mta_sts=MtaStsCheck(domain="far.test", mode="enforce", listed=True),
    )
    walk.conversation_ended(connect_failed("Connection refused"))
    assert walk.next_step() == LookupAddresses("a.backup.test")  # one label for the "*"


@pytest.mark.parametrize(
    ("ending", "dsn", "words"),
    [
        (handshake_failed("Cannot start TLS: server certificate not verified", level="verify"),
         "4.7.5", "certificate not verified"),
        (session_failed(
            outbound.SessionFailed(
                reply=None, reason="TLS required but not offered", permanent=False,
                stage="starttls",
            ), host="mx1.far.test", reused=False),
         "4.7.4", "TLS required but not offered"),
    ],
)  # fmt: skip
def test_enforce_defers_with_mta_sts_in_the_reason_when_tls_fails(
    ending: Conversation, dsn: str, words: str
) -> None:
    walk = sts_walk(ENFORCE, ["mx1.far.test"])
    walk.addresses_found(["192.0.2.1"])
    walk.conversation_ended(ending)
    outcome = result_of(walk).outcomes[BOB]
    assert (outcome.status, outcome.dsn) == ("deferred", dsn)
    assert outcome.reason.startswith("MTA-STS policy of far.test (enforce): mx1.far.test[")
    assert words in outcome.reason


def test_enforce_without_a_listed_mx_host_defers_without_connecting() -> None:
    walk = sts_walk(ENFORCE, ["mx.elsewhere.test", "backup.test"])
    outcome = result_of(walk).outcomes[BOB]
    assert (outcome.status, outcome.dsn) == ("deferred", "4.7.5")
    assert "MTA-STS" in outcome.reason
    assert "mx.elsewhere.test, backup.test not in" in outcome.reason


def test_enforce_failure_that_is_not_tls_defers_as_ever() -> None:
    walk = sts_walk(ENFORCE, ["mx1.far.test"])
    walk.addresses_found(["192.0.2.1"])
    walk.conversation_ended(connect_failed("Connection refused"))
    outcome = result_of(walk).outcomes[BOB]
    assert outcome.dsn == "4.4.1"
    assert "MTA-STS" not in outcome.reason


def test_testing_mode_connects_as_configured_and_marks_the_policy() -> None:
    testing = attrs.evolve(ENFORCE, mode="testing")
    walk = sts_walk(testing, ["mx0.far.test", "mx1.far.test"])
    assert walk.next_step() == LookupAddresses("mx0.far.test")  # not skipped
    walk.addresses_found(["192.0.2.1"])
    step = walk.next_step()
    assert isinstance(step, Connect)
    assert (step.tls, step.verify_name) == ("may", None)
    assert step.mta_sts == MtaStsCheck(domain="far.test", mode="testing", listed=False)


@pytest.mark.parametrize("policy", [None, mtasts.Policy(mode="none", max_age=60)])
def test_no_policy_or_none_mode_is_as_without_mta_sts(policy: mtasts.Policy | None) -> None:
    walk = sts_walk(policy, ["mx0.far.test"])
    walk.addresses_found(["192.0.2.1"])
    step = walk.next_step()
    assert isinstance(step, Connect)
    assert (step.tls, step.verify_name, step.mta_sts) == ("may", None, None)


@pytest.mark.parametrize(
    "delivery",
    [
        {"relayhost": NextHop(host="relay.test", mx_lookup=True)},
        {"transport": {"far.test": NextHop(host="hub.test", mx_lookup=True)}},
        {"mta_sts": False},
    ],
)
def test_no_policy_lookup_for_relayhost_transport_or_when_off(delivery: dict[str, object]) -> None:
    walk = plan(**{"mta_sts": True, **delivery})
    step = walk.next_step()
    assert isinstance(step, LookupMX)
    walk.mx_found([MXRecord(10, "mx1.far.test")])
    assert isinstance(walk.next_step(), LookupAddresses)


def test_null_mx_bounces_at_once() -> None:
    walk = plan()
    walk.mx_found([MXRecord(0, ".")])
    outcome = result_of(walk).outcomes[BOB]
    assert (outcome.status, outcome.dsn) == ("bounced", "5.1.10")
    assert "null MX" in outcome.reason


def test_mx_pointing_back_at_us_bounces_as_a_loop() -> None:
    walk = plan()
    walk.mx_found([MXRecord(10, "MX.example.test.")])
    outcome = result_of(walk).outcomes[CAROL]
    assert (outcome.status, outcome.dsn) == ("bounced", "5.4.6")
    assert outcome.reason == "mail for far.test loops back to myself"


def test_address_literal_skips_dns_for_mx() -> None:
    walk = plan("[192.0.2.7]", smtp_port=2525)
    assert walk.next_step() == LookupAddresses("192.0.2.7")
    walk.addresses_found(["192.0.2.7"])
    step = walk.next_step()
    assert isinstance(step, Connect)
    assert step.port == 2525


def test_address_literal_we_cannot_use_bounces_without_any_step() -> None:
    walk = plan("[tag:whatever]")
    result = result_of(walk)
    assert result.relay == "none"
    assert result.outcomes[BOB].status == "bounced"
    assert result.outcomes[BOB].dsn == "5.1.2"


def test_transport_and_relayhost_routes() -> None:
    walk = plan(
        transport=types.MappingProxyType(
            {"far.test": NextHop(host="hub.test", port=587, mx_lookup=False)}
        ),
        relayhost=NextHop(host="smart.test", port=2525, mx_lookup=False),
    )
    assert walk.next_step() == LookupAddresses("hub.test")
    walk.addresses_found(["192.0.2.9"])
    step = walk.next_step()
    assert isinstance(step, Connect)
    assert (step.port, step.authenticate) == (587, False)

    walk = plan("other.test", relayhost=NextHop(host="smart.test", port=2525, mx_lookup=False))
    walk.addresses_found(["192.0.2.10"])
    step = walk.next_step()
    assert isinstance(step, Connect)
    assert (step.host, step.port, step.authenticate) == ("smart.test", 2525, True)

    walk = plan(relayhost=NextHop(host="smart.test", port=25, mx_lookup=True))
    assert walk.next_step() == LookupMX("smart.test")


def test_answers_must_fit_the_step() -> None:
    walk = plan()
    with pytest.raises(RuntimeError):
        walk.addresses_found(["192.0.2.1"])
    with pytest.raises(RuntimeError):
        walk.conversation_ended(TIMED_OUT)
    walk.lookup_failed("x", permanent=True)
    with pytest.raises(RuntimeError):
        walk.lookup_failed("x", permanent=True)
    assert isinstance(walk.next_step(), Done)


def test_fresh_that_reaches_the_walk_counts_as_no_answer() -> None:
    walk = plan()
    walk.mx_found([])
    walk.addresses_found(["192.0.2.1"])
    walk.conversation_ended(connection_lost("reset", reused=True))
    assert result_of(walk).outcomes[BOB].reason == (
        "far.test[192.0.2.1]:25: cached connection lost"
    )


# -- a batch of messages for one domain ---------------------------------------------------


def batch(count: int = 3, **delivery: object) -> RemoteDelivery:
    messages = [
        outbound.OutboundMessage(
            sender="alice@example.test",
            recipients=(outbound.OutboundRecipient(address=f"r{n}@far.test"),),
            content=f"Subject: {n}\r\n\r\nhello\r\n".encode(),
        )
        for n in range(count)
    ]
    config = DeliveryConfig(**{"mta_sts": False, **delivery})  # type: ignore[arg-type]
    return RemoteDelivery(
        messages, "far.test", delivery=config, hostname="mx.example.test", shuffle=keep
    )


def accepted(walk: RemoteDelivery, tls: str | None = None) -> Conversation:
    """The next hop's 250 for every recipient of the message `walk` is at."""
    done = outbound.MessageDone(
        results=tuple(
            outbound.RecipientResult(address=r.address, reply=OK, status="sent")
            for r in walk.message.recipients
        )
    )
    return delivered(done, host="mx.far.test", tls=tls)


def test_a_batch_looks_up_once_and_delivers_each_message_in_turn() -> None:
    walk = batch()
    walk.mx_found([MXRecord(10, "mx.far.test")])
    walk.addresses_found(["192.0.2.1"])
    connects = []
    for n in range(3):
        step = walk.next_step()
        assert isinstance(step, Connect)
        connects.append(step)
        assert (walk.index, walk.message) == (n, walk.messages[n])
        walk.conversation_ended(accepted(walk))
        # Each result is ready at once, not at the end of the batch.
        ((index, result),) = walk.take_settled()
        assert index == n
        assert result.outcomes[f"r{n}@far.test"].status == "sent"
        assert result.relay == "mx.far.test[192.0.2.1]:25"
    assert len(set(connects)) == 1  # one address: the runner's one connection
    step = walk.next_step()
    assert isinstance(step, Done)
    assert [set(r.outcomes) for r in step.results] == [{f"r{n}@far.test"} for n in range(3)]
    assert walk.take_settled() == []


def test_an_address_that_fails_mid_batch_moves_the_rest_on_together() -> None:
    walk = batch()
    walk.mx_found([MXRecord(10, "mx.far.test")])
    walk.addresses_found(["192.0.2.1", "192.0.2.2"])
    walk.conversation_ended(accepted(walk))
    assert walk.index == 1
    walk.conversation_ended(connection_lost("reset by peer", reused=False))
    assert [index for index, _ in walk.take_settled()] == [0]
    for n in (1, 2):  # neither is tried at the failed address again
        step = walk.next_step()
        assert isinstance(step, Connect)
        assert (step.ip, walk.index) == ("192.0.2.2", n)
        walk.conversation_ended(accepted(walk))
    step = walk.next_step()
    assert isinstance(step, Done)
    assert [r.relay for r in step.results] == [
        "mx.far.test[192.0.2.1]:25",
        "mx.far.test[192.0.2.2]:25",
        "mx.far.test[192.0.2.2]:25",
    ]


def test_a_batch_no_address_takes_is_deferred_whole() -> None:
    walk = batch()
    walk.mx_found([MXRecord(10, "mx.far.test")])
    walk.addresses_found(["192.0.2.1"])
    walk.conversation_ended(accepted(walk))
    walk.conversation_ended(TIMED_OUT)
    step = walk.next_step()
    assert isinstance(step, Done)
    assert [r.outcomes[f"r{n}@far.test"].status for n, r in enumerate(step.results)] == [
        "sent",
        "deferred",
        "deferred",
    ]
    assert step.results[2].outcomes["r2@far.test"].reason == (
        "mx.far.test[192.0.2.1]:25: conversation timed out"
    )
    assert [index for index, _ in walk.take_settled()] == [0, 1, 2]


def test_a_failed_handshake_at_may_means_plaintext_for_the_rest_of_the_batch() -> None:
    walk = batch(2)
    walk.mx_found([MXRecord(10, "mx.far.test")])
    walk.addresses_found(["192.0.2.1"])
    walk.conversation_ended(handshake_failed("TLS handshake failed", level="may"))
    for n in range(2):
        step = walk.next_step()
        assert isinstance(step, Connect)
        assert (step.tls, walk.index) == ("none", n)
        walk.conversation_ended(accepted(walk))
    assert isinstance(walk.next_step(), Done)


def test_a_dns_verdict_settles_the_whole_batch() -> None:
    walk = batch()
    walk.lookup_failed("far.test: NXDOMAIN", permanent=True)
    step = walk.next_step()
    assert isinstance(step, Done)
    assert [r.outcomes[f"r{n}@far.test"].dsn for n, r in enumerate(step.results)] == ["5.1.2"] * 3


def test_a_batch_needs_a_message() -> None:
    with pytest.raises(ValueError):
        RemoteDelivery([], "far.test", delivery=DeliveryConfig(), hostname="me.test", shuffle=keep)


# -- TLS: the fallback table ----------------------------------------------------------------

GREETING = b"220 mx.far.test ESMTP\r\n"
WITH_STARTTLS = b"250-mx.far.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
WITHOUT_STARTTLS = b"250-mx.far.test\r\n250 PIPELINING\r\n"
ACCEPTED = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n250 2.0.0 queued\r\n"


def converse(step: Connect, ehlo: bytes, *, handshake_works: bool) -> Conversation:
    """What the adapter does for `step`, against a scripted server, with the
    handshake's fate chosen by the test."""
    session = outbound.OutboundSession(helo_name="mx.example.test", tls=step.tls)
    replies = [GREETING, ehlo, b"220 go ahead\r\n", ehlo, ACCEPTED, b"221 bye\r\n"]
    if step.tls == "none" or b"STARTTLS" not in ehlo:
        replies = [GREETING, ehlo, ACCEPTED, b"221 bye\r\n"]
    sent_message = False
    while True:
        action = session.next_action()
        if isinstance(action, outbound.NeedData):
            session.receive_data(replies.pop(0) if replies else b"")
        elif isinstance(action, outbound.StartTLS):
            if not handshake_works:
                return handshake_failed("TLS handshake failed: BOOM", level=step.tls)
            session.tls_started()
        elif isinstance(action, outbound.Ready):
            if sent_message:
                session.quit()
            else:
                sent_message = True
                session.start_message(MESSAGE)
        elif isinstance(action, outbound.MessageDone):
            return delivered(action, host=step.host, tls="TLS" if step.tls != "none" else None)
        elif isinstance(action, outbound.SessionFailed):
            return session_failed(action, host=step.host, reused=False)
        elif isinstance(action, outbound.Closed):
            return connection_closed(reused=False)


def walk_tls(level: str, ehlo: bytes, *, handshake_works: bool) -> tuple[list[Connect], Outcome]:
    walk = plan(tls=level)
    walk.mx_found([])
    walk.addresses_found(["192.0.2.1"])
    connects = []
    while isinstance(step := walk.next_step(), Connect):
        connects.append(step)
        walk.conversation_ended(converse(step, ehlo, handshake_works=handshake_works))
    return connects, result_of(walk).outcomes[BOB]


@pytest.mark.parametrize(
    ("level", "ehlo", "handshake_works", "tries", "status"),
    [
        # level, what the server does, what the walk tries (TLS level of each
        # connection), and the verdict.
        ("none", WITH_STARTTLS, True, ["none"], "sent"),
        ("may", WITHOUT_STARTTLS, True, ["may"], "sent"),
        ("may", WITH_STARTTLS, True, ["may"], "sent"),
        ("may", WITH_STARTTLS, False, ["may", "none"], "sent"),
        ("encrypt", WITHOUT_STARTTLS, True, ["encrypt"], "deferred"),
        ("encrypt", WITH_STARTTLS, True, ["encrypt"], "sent"),
        ("encrypt", WITH_STARTTLS, False, ["encrypt"], "deferred"),
        ("verify", WITHOUT_STARTTLS, True, ["verify"], "deferred"),
        ("verify", WITH_STARTTLS, True, ["verify"], "sent"),
        ("verify", WITH_STARTTLS, False, ["verify"], "deferred"),
    ],
)
def test_tls_fallback_table(
    level: str, ehlo: bytes, handshake_works: bool, tries: list[str], status: str
) -> None:
    connects, outcome = walk_tls(level, ehlo, handshake_works=handshake_works)
    assert [c.tls for c in connects] == tries
    assert outcome.status == status
    if status == "deferred":
        assert outcome.dsn == "4.4.1"


@pytest.mark.parametrize("level", ["none", "may", "encrypt", "verify"])
def test_only_verify_checks_the_certificate_name(level: str) -> None:
    connects, _ = walk_tls(level, WITH_STARTTLS, handshake_works=False)
    expected = "far.test" if level == "verify" else None
    assert connects[0].verify_name == expected
    # The plaintext second try of "may" has nothing to verify.
    assert all(c.verify_name is None for c in connects[1:])


def test_encrypt_without_starttls_says_why() -> None:
    _, outcome = walk_tls("encrypt", WITHOUT_STARTTLS, handshake_works=True)
    assert outcome.reason.startswith("far.test[192.0.2.1]:25: ")
    assert "TLS" in outcome.reason


# -- the log line ---------------------------------------------------------------------------

QUEUED = QueuedMessage(
    queue_id="ABC123",
    sender="alice@example.test",
    arrival=1000.0,
    size=1234,
    recipients=[QueuedRecipient(address=BOB)],
)
SENT = Outcome(status="sent", reason="250 2.0.0 Ok", dsn="2.0.0", remote_mta="mx", smtp_reply=True)


def test_disposition_of_a_remote_delivery() -> None:
    result = DomainResult(outcomes={BOB: SENT}, relay="mx.far.test[192.0.2.1]:25", tls="TLSv1.3")
    line = disposition(QUEUED, QUEUED.recipients[0], SENT, result=result, delay=0.25, now=1012.34)
    assert line == LogLine(
        "ABC123: from=<alice@example.test>, to=<bob@far.test>, "
        "relay=mx.far.test[192.0.2.1]:25, size=1234, delay=12.3, delays=0.2, "
        "tls=TLSv1.3, dsn=2.0.0, status=sent (250 2.0.0 Ok)"
    )


def test_disposition_without_tls_local_and_none() -> None:
    recipient = QUEUED.recipients[0]
    plain = DomainResult(outcomes={}, relay="mx.far.test[192.0.2.1]:25")
    assert (
        ", tls=none, dsn="
        in disposition(QUEUED, recipient, SENT, result=plain, delay=0, now=1000).text
    )
    for relay in ("local", "none"):
        text = disposition(
            QUEUED, recipient, SENT, result=DomainResult(outcomes={}, relay=relay), delay=0, now=0
        ).text
        assert "tls=" not in text
        assert f", relay={relay}, " in text
        assert ", delay=0.0, " in text  # a clock behind the arrival is not a negative delay


def test_disposition_escapes_what_others_wrote() -> None:
    nasty = Outcome(status="bounced", reason="550 no\r\nABC123: status=sent", dsn="5.0.0")
    message = QueuedMessage(
        queue_id="ABC123",
        sender="a\x1b[31m@example.test",
        arrival=0.0,
        size=1,
        recipients=[QueuedRecipient(address=BOB)],
    )
    text = disposition(
        message,
        message.recipients[0],
        nasty,
        result=DomainResult(outcomes={}, relay="none"),
        delay=0,
        now=0,
    ).text
    assert "\r" not in text
    assert "\n" not in text
    assert "from=<a\\x1b[31m@example.test>" in text
    assert text.endswith("status=bounced (550 no\\x0d\\x0aABC123: status=sent)")
