"""Recipient restrictions, relay control and the sender-login check."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sansmail.mail.policy
from sansmail.config import RESTRICTIONS as CONFIG_RESTRICTIONS
from sansmail.mail.address import Address, AddressError, MailboxId, read_path
from sansmail.mail.policy import (
    RESTRICTIONS,
    ROLE_ACCOUNTS,
    RecipientDecision,
    check_sender_login,
    decide_recipient,
    evaluate_recipient,
    postmaster_mailbox,
)
from sansmail.smtp import Reply

DOMAINS = ("example.test", "example.org")
USERS = frozenset({"alice@example.test", "bob@example.org", "alice+tag@example.test"})
MYNETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
DEFAULT = ("permit_sasl_authenticated", "permit_mynetworks", "reject_unauth_destination")
OUTSIDE = "203.0.113.9"


def rcpt(text: str) -> Address:
    address, end = read_path(f"<{text}>", smtputf8=True)
    assert address is not None
    assert end == len(text) + 2
    return address


def evaluate(
    address: str | Address,
    restrictions: Collection[str] = DEFAULT,
    *,
    sasl: bool = False,
    client_ip: str | None = OUTSIDE,
    delimiter: str = "+",
    domains: Collection[str] = DOMAINS,
    users: Collection[str] = USERS,
) -> RecipientDecision:
    return evaluate_recipient(
        rcpt(address) if isinstance(address, str) else address,
        restrictions=restrictions,
        sasl_authenticated=sasl,
        client_ip=client_ip,
        mynetworks=MYNETWORKS,
        domains=domains,
        user_exists=users.__contains__,
        recipient_delimiter=delimiter,
    )


def status(decision: RecipientDecision) -> tuple[int, str | None]:
    return decision.reply.code, decision.reply.enhanced


def test_public_surface() -> None:
    assert sorted(sansmail.mail.policy.__all__) == [
        "RESTRICTIONS",
        "ROLE_ACCOUNTS",
        "RecipientDecision",
        "check_sender_login",
        "decide_recipient",
        "evaluate_recipient",
        "in_networks",
        "postmaster_mailbox",
    ]


def test_knows_every_restriction_the_config_accepts() -> None:
    assert set(RESTRICTIONS) == set(CONFIG_RESTRICTIONS)
    for rule in RESTRICTIONS:
        evaluate("alice@example.test", [rule])


def test_unknown_restriction() -> None:
    # Refused even behind a rule that decides, so a typo cannot hide.
    with pytest.raises(ValueError, match="reject_unauth_destinaton"):
        evaluate("alice@example.test", ["permit", "reject_unauth_destinaton"])


# -- the default list -------------------------------------------------------------------------


def test_local_user_is_accepted_from_anywhere() -> None:
    decision = evaluate("Alice@Example.TEST")
    assert status(decision) == (250, "2.1.5")
    assert decision.mailbox == MailboxId(domain="example.test", local="alice")
    assert decision.accepted
    assert not decision.remote


@pytest.mark.parametrize(
    ("sasl", "client_ip"), [(False, OUTSIDE), (True, OUTSIDE), (False, "127.0.0.1"), (True, "::1")]
)
def test_unknown_local_recipient_is_refused_even_for_trusted_clients(
    sasl: bool, client_ip: str
) -> None:
    # Postfix's smtpd_reject_unlisted_recipient = yes: a permit does not skip the check.
    decision = evaluate("nobody@example.test", sasl=sasl, client_ip=client_ip)
    assert status(decision) == (550, "5.1.1")
    assert decision.reply.text == "<nobody@example.test>: no such user here"
    assert not decision.accepted


def test_remote_recipient_is_refused_to_strangers() -> None:
    decision = evaluate("someone@remote.example")
    assert status(decision) == (554, "5.7.1")
    assert decision.reply.text == "<someone@remote.example>: relay access denied"
    assert not decision.accepted


@pytest.mark.parametrize(
    ("sasl", "client_ip"),
    [
        (True, OUTSIDE),
        (True, None),
        (False, "127.0.0.1"),
        (False, "::1"),
        (False, "::ffff:127.1.2.3"),
    ],
)
def test_remote_recipient_is_relayed_for_trusted_clients(sasl: bool, client_ip: str | None) -> None:
    decision = evaluate("someone@remote.example", sasl=sasl, client_ip=client_ip)
    assert status(decision) == (250, "2.1.5")
    assert decision.remote
    assert decision.mailbox is None
    assert decision.accepted


@pytest.mark.parametrize("client_ip", [None, "", "garbage", "127.0.0.1.5", "128.0.0.1", "::2"])
def test_clients_outside_mynetworks(client_ip: str | None) -> None:
    assert status(evaluate("someone@remote.example", client_ip=client_ip)) == (554, "5.7.1")


# -- order and the other rules ----------------------------------------------------------------


def test_first_rule_that_decides_wins() -> None:
    late = ["reject_unauth_destination", "permit_mynetworks"]
    assert status(evaluate("x@remote.example", late, client_ip="127.0.0.1")) == (554, "5.7.1")
    early = ["permit_mynetworks", "reject_unauth_destination"]
    assert evaluate("x@remote.example", early, client_ip="127.0.0.1").remote


def test_reject() -> None:
    rules = ["permit_mynetworks", "reject"]
    assert evaluate("x@remote.example", rules, client_ip="127.0.0.1").remote
    decision = evaluate("alice@example.test", rules)
    assert status(decision) == (554, "5.7.1")
    assert decision.reply.text == "<alice@example.test>: access denied"
    assert status(evaluate("x@remote.example", rules)) == (554, "5.7.1")


def test_reject_unlisted_recipient_decides_before_later_rules() -> None:
    rules = ["reject_unlisted_recipient", "reject"]
    assert status(evaluate("nobody@example.test", rules)) == (550, "5.1.1")
    assert evaluate("nobody@example.test", rules).reply.text.endswith("no such user here")
    assert evaluate("alice@example.test", rules).reply.text.endswith("access denied")
    # For remote recipients it decides nothing (Postfix: no list for those domains).
    assert evaluate("x@remote.example", rules).reply.text.endswith("access denied")
    assert status(evaluate("nobody@example.test", ["reject"])) == (554, "5.7.1")


@pytest.mark.parametrize("rules", [[], ["permit"], ["permit", "reject_unauth_destination"]])
def test_lists_that_would_be_an_open_relay_still_refuse_to_relay(rules: list[str]) -> None:
    # Where Postfix would relay, we fail closed; local mail still flows.
    assert status(evaluate("x@remote.example", rules)) == (554, "5.7.1")
    assert evaluate("alice@example.test", rules).mailbox is not None
    assert status(evaluate("nobody@example.test", rules)) == (550, "5.1.1")
    assert evaluate(
        "x@remote.example", [*rules, "permit_sasl_authenticated"], sasl=True
    ).remote == (rules == [])


def test_role_accounts_are_always_accepted() -> None:
    # RFC 5321 §4.5.1 and RFC 2142, even under a plain "reject".
    fallback = MailboxId(domain="example.test", local="postmaster")
    for text in ("postmaster@example.org", "PostMaster@example.test", "ABUSE@example.org"):
        decision = evaluate(text, ["reject"])
        assert decision.mailbox == fallback, text
    bare = read_path("<Postmaster>")[0]
    assert bare is not None
    assert evaluate(bare, ["reject"]).mailbox == fallback
    # A user of that name gets it.
    users = USERS | {"abuse@example.org"}
    assert evaluate("abuse@example.org", users=users).mailbox == MailboxId(
        domain="example.org", local="abuse"
    )
    # Elsewhere they are just remote addresses.
    assert status(evaluate("postmaster@remote.example")) == (554, "5.7.1")
    assert {"postmaster", "abuse"} == ROLE_ACCOUNTS
    assert postmaster_mailbox(DOMAINS) == fallback


def test_bare_postmaster_without_domains_is_not_local() -> None:
    bare = read_path("<Postmaster>")[0]
    assert bare is not None
    assert status(evaluate(bare, domains=())) == (554, "5.7.1")


# -- recipient delimiter ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "delimiter", "local"),
    [
        ("alice+news@example.test", "+", "alice"),
        ("ALICE+News@example.test", "+", "alice"),
        ("alice+tag@example.test", "+", "alice+tag"),  # the exact user wins
        ("alice+a+b@example.test", "+", "alice"),
        ("alice-news@example.test", "+-", "alice"),
        ("alice+news@example.test", "-+", "alice"),
        ("alice-x+y@example.test", "+-", "alice"),  # the first delimiter found splits
        ("alice+@example.test", "+", "alice"),
    ],
)
def test_detail_goes_to_the_user(address: str, delimiter: str, local: str) -> None:
    decision = evaluate(address, delimiter=delimiter)
    assert decision.mailbox == MailboxId(domain="example.test", local=local)


@pytest.mark.parametrize(
    ("address", "delimiter"),
    [
        ("alice+news@example.test", ""),
        ("alice-news@example.test", "+"),
        ("+alice@example.test", "+"),
        ("alicenews@example.test", "+"),
        ("bob+x@example.test", "+"),  # bob is a user of example.org, not example.test
    ],
)
def test_detail_without_a_user(address: str, delimiter: str) -> None:
    assert status(evaluate(address, delimiter=delimiter)) == (550, "5.1.1")


# -- open-relay tricks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("user%remote.example@example.test", (550, "5.1.1")),  # percent hack
        ("remote.example!user@example.test", (550, "5.1.1")),  # bang path
        ("@example.test:user@remote.example", (554, "5.7.1")),  # source route: remote
        ("@example.test,@example.org:user@remote.example", (554, "5.7.1")),
        ('"user@remote.example"@example.test', (550, "5.1.1")),  # quoted "@"
        ('"alice@example.test"@remote.example', (554, "5.7.1")),
        ('"alice"@example.test', (250, "2.1.5")),  # quoting a real user is harmless
        ("user%example.test@remote.example", (554, "5.7.1")),
        ("user@[127.0.0.1]", (554, "5.7.1")),  # address literals are not ours
        ("user@[IPv6:::1]", (554, "5.7.1")),
        ("user@[IPv6:::ffff:127.0.0.1]", (554, "5.7.1")),
        ("USER@REMOTE.EXAMPLE", (554, "5.7.1")),
        ("ALICE@EXAMPLE.TEST", (250, "2.1.5")),
        ("alice@example.test.remote.example", (554, "5.7.1")),
        ("alice@sub.example.test", (554, "5.7.1")),  # subdomains are not ours
        ("alice@xn--exmple-cua.test", (554, "5.7.1")),  # a look-alike IDN
        ("alice@exämple.test", (554, "5.7.1")),
        ("postmaster%remote.example@example.test", (550, "5.1.1")),
        ("alice+remote.example@example.test", (250, "2.1.5")),  # a detail stays local
    ],
)
def test_open_relay_tricks(path: str, expected: tuple[int, str]) -> None:
    decision = evaluate(path)  # not authenticated, outside mynetworks
    assert status(decision) == expected
    assert not decision.remote
    if expected[0] == 250:
        assert decision.mailbox == MailboxId(domain="example.test", local="alice")


@pytest.mark.parametrize(
    "path",
    [
        "user@remote.example.",  # trailing dot
        "user@example.test.",
        "user@example.test@remote.example",
        "user@@example.test",
        "user@remote.example\r\n",
    ],
)
def test_tricks_the_parser_refuses(path: str) -> None:
    with pytest.raises(AddressError):
        rcpt(path)


def test_configured_address_literal_is_local() -> None:
    domains = ("example.test", "[192.0.2.25]")
    users = USERS | {"alice@[192.0.2.25]"}
    decision = evaluate("alice@[192.0.2.25]", domains=domains, users=users)
    assert decision.mailbox == MailboxId(domain="[192.0.2.25]", local="alice")
    assert status(evaluate("alice@[192.0.2.26]", domains=domains, users=users)) == (554, "5.7.1")


# -- properties -------------------------------------------------------------------------------

_LOCAL_CHARS = "abcAB+-%!._=@\" '\\"
_DOMAIN_CHOICES = [
    "example.test",
    "EXAMPLE.test",
    "example.org",
    "remote.example",
    "example.test.remote.example",
    "sub.example.test",
    "[127.0.0.1]",
    "[IPv6:::1]",
    "xn--exmple-cua.test",
]

local_parts = st.one_of(
    st.text(_LOCAL_CHARS, min_size=1, max_size=12),
    st.sampled_from(["alice", "Alice+x", "alice+tag", "bob", "postmaster", "ABUSE", "alice-y"]),
)
path_texts = st.one_of(
    # Dot-strings and quoted strings built from characters that play relay tricks ...
    st.tuples(local_parts, st.sampled_from(_DOMAIN_CHOICES)).map(lambda p: f"{p[0]}@{p[1]}"),
    st.tuples(local_parts, st.sampled_from(_DOMAIN_CHOICES)).map(
        lambda p: '"' + p[0].replace("\\", "\\\\").replace('"', '\\"') + f'"@{p[1]}'
    ),
    # ... source routes, and free-form junk.
    st.tuples(
        st.sampled_from(_DOMAIN_CHOICES[:3]), local_parts, st.sampled_from(_DOMAIN_CHOICES)
    ).map(lambda p: f"@{p[0]}:{p[1]}@{p[2]}"),
    st.text('abc@.:[]!%"+-_ ,<>ABC0123456789', max_size=30),
)
restriction_lists = st.lists(st.sampled_from(RESTRICTIONS), max_size=7)
client_ips = st.one_of(
    st.none(),
    st.sampled_from(["127.0.0.1", "::1", "::ffff:127.0.0.1", OUTSIDE, "2001:db8::1"]),
    st.ip_addresses().map(str),
)


def _in_mynetworks(client_ip: str | None) -> bool:
    if client_ip is None:
        return False
    address = ipaddress.ip_address(client_ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in MYNETWORKS if net.version == address.version)


@settings(deadline=None, max_examples=400)
@given(
    text=path_texts,
    rules=restriction_lists,
    sasl=st.booleans(),
    client_ip=client_ips,
    delimiter=st.sampled_from(["", "+", "+-%"]),
)
def test_relay_only_for_trusted_clients(
    text: str, rules: list[str], sasl: bool, client_ip: str | None, delimiter: str
) -> None:
    try:
        address, end = read_path(f"<{text}>", smtputf8=True)
    except AddressError:
        return
    if address is None or end != len(text) + 2:
        return
    decision = evaluate(address, rules, sasl=sasl, client_ip=client_ip, delimiter=delimiter)
    local = address.domain in DOMAINS or address.domain == ""
    if decision.remote:
        # Accepted for relay only when a trusting rule was in the list and matched, and
        # only for a domain that is not ours.
        assert not local
        assert (sasl and "permit_sasl_authenticated" in rules) or (
            _in_mynetworks(client_ip) and "permit_mynetworks" in rules
        )
    elif decision.accepted:
        # Accepted locally: one of our users (maybe via a detail) or a role account.
        assert local
        assert decision.mailbox is not None
        key = f"{decision.mailbox.local}@{decision.mailbox.domain}"
        assert key in USERS or decision.mailbox == postmaster_mailbox(DOMAINS)
    else:
        assert decision.reply.code in (550, 554)
    if not local and not sasl and not _in_mynetworks(client_ip):
        assert status(decision) == (554, "5.7.1")


def _old_decide_recipient(
    rcpt: Address,
    *,
    domains: Collection[str],
    user_exists: Callable[[str], bool],
    recipient_delimiter: str = "",
) -> RecipientDecision:
    """decide_recipient as it was before restrictions existed (single-character
    delimiters), kept to prove the function still behaves the same."""
    local = rcpt.local_part.lower()
    ok = Reply(code=250, lines="Ok", enhanced="2.1.5")
    if rcpt.domain == "" or rcpt.domain in domains:
        domain = rcpt.domain or next(iter(domains))
        if user_exists(f"{local}@{domain}"):
            return RecipientDecision(reply=ok, mailbox=MailboxId(domain=domain, local=local))
        if recipient_delimiter:
            base, sep, _detail = local.partition(recipient_delimiter)
            if sep and base and user_exists(f"{base}@{domain}"):
                return RecipientDecision(reply=ok, mailbox=MailboxId(domain=domain, local=base))
        if local in ROLE_ACCOUNTS or rcpt.is_postmaster:
            return RecipientDecision(reply=ok, mailbox=postmaster_mailbox(domains))
        return RecipientDecision(
            reply=Reply(code=550, lines=f"<{rcpt}>: no such user here", enhanced="5.1.1"),
            mailbox=None,
        )
    return RecipientDecision(
        reply=Reply(code=554, lines=f"<{rcpt}>: relay access denied", enhanced="5.7.1"),
        mailbox=None,
    )


@settings(deadline=None, max_examples=300)
@given(text=path_texts, delimiter=st.sampled_from(["", "+", "-"]))
def test_decide_recipient_behaves_as_before(text: str, delimiter: str) -> None:
    try:
        address, end = read_path(f"<{text}>", smtputf8=True)
    except AddressError:
        return
    if address is None or end != len(text) + 2:
        return
    kwargs = {"domains": DOMAINS, "user_exists": USERS.__contains__}
    assert decide_recipient(address, **kwargs, recipient_delimiter=delimiter) == (  # type: ignore[arg-type]
        _old_decide_recipient(address, **kwargs, recipient_delimiter=delimiter)  # type: ignore[arg-type]
    )


def test_recipient_decision() -> None:
    ok = Reply(code=250, lines="Ok", enhanced="2.1.5")
    mailbox = MailboxId(domain="example.test", local="alice")
    assert RecipientDecision(ok, mailbox).accepted
    assert not RecipientDecision(Reply(code=550, lines="no"), None).accepted
    assert RecipientDecision(ok, None, remote=True).accepted
    with pytest.raises(ValueError, match="remote"):
        RecipientDecision(ok, mailbox, remote=True)
    with pytest.raises(ValueError, match="remote"):
        RecipientDecision(Reply(code=554, lines="no"), None, remote=True)


# -- sender login -----------------------------------------------------------------------------


def sender(
    text: str, user: str | None = "alice@example.test", delimiter: str = "+"
) -> Reply | None:
    reverse_path = read_path(f"<{text}>", smtputf8=True)[0] if text else None
    return check_sender_login(reverse_path, user, domains=DOMAINS, recipient_delimiter=delimiter)


@pytest.mark.parametrize(
    "text",
    [
        "alice@example.test",
        "Alice@EXAMPLE.Test",
        '"alice"@example.test',
        "alice+lists@example.test",
        "ALICE+Lists@example.test",
        "alice+@example.test",
        "",  # the null sender: read receipts, auto-replies
    ],
)
def test_own_addresses_are_allowed(text: str) -> None:
    assert sender(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "bob@example.org",
        "alice@example.org",  # same local part, other domain
        "alice@remote.example",
        "alice@sub.example.test",
        "alicex@example.test",
        "alice-lists@example.test",  # not a delimiter here
        "alice%x@example.test",
        '"alice@example.test"@remote.example',
        "bob+alice@example.test",
        "postmaster@example.test",
        "alice@[127.0.0.1]",
    ],
)
def test_other_addresses_are_refused(text: str) -> None:
    reply = sender(text)
    assert reply is not None
    assert (reply.code, reply.enhanced) == (553, "5.7.1")
    assert reply.text.endswith("not owned by user alice@example.test")


def test_sender_login_details_follow_the_delimiter() -> None:
    assert sender("alice+x@example.test", delimiter="") is not None
    assert sender("alice-x@example.test", delimiter="+-") is None


def test_sender_login_for_unauthenticated_sessions() -> None:
    assert sender("anyone@remote.example", user=None) is None


def test_sender_login_for_a_domain_no_longer_ours() -> None:
    reverse_path = rcpt("carol@old.example")
    assert check_sender_login(reverse_path, "carol@old.example", domains=DOMAINS) is not None


@settings(deadline=None, max_examples=300)
@given(text=path_texts, user=st.sampled_from(sorted(USERS)), delimiter=st.sampled_from(["", "+"]))
def test_sender_login_allows_only_own_addresses(text: str, user: str, delimiter: str) -> None:
    try:
        address, end = read_path(f"<{text}>", smtputf8=True)
    except AddressError:
        return
    if address is None or end != len(text) + 2 or address.domain == "":
        return
    reply = check_sender_login(address, user, domains=DOMAINS, recipient_delimiter=delimiter)
    local = address.local_part.lower()
    own = {address.key}
    if delimiter and delimiter in local and local.index(delimiter) > 0:
        own.add(f"{local[: local.index(delimiter)]}@{address.domain}")
    if reply is None:
        assert user in own
        assert address.domain in DOMAINS
    else:
        assert user not in own or address.domain not in DOMAINS
