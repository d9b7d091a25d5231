"""sansmail.mail.recipients: relay policy, aliases and SRS in one RCPT decision."""

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail.mail import srs
from sansmail.mail.address import Address, MailboxId
from sansmail.mail.aliases import parse_aliases
from sansmail.mail.recipients import resolve_recipient

DOMAINS = ("example.org", "other.test")
KEY = b"k" * 32
DAY = 20_000
RESTRICTIONS = ("permit_sasl_authenticated", "permit_mynetworks", "reject_unauth_destination")
MYNETWORKS = (ipaddress.ip_network("127.0.0.0/8"),)
ALIASES = """\
sales: alice, bob@example.org, partner@far.test
everyone: :include:/lists/everyone
dead: nobody-here
loop: loop2
loop2: loop
"""


def resolve(
    address,
    *,
    authenticated=False,
    client="192.0.2.9",
    users=("alice@example.org", "bob@example.org"),
    full=None,
):
    table = parse_aliases(ALIASES, source="aliases")
    includes = {"/lists/everyone": "alice\ncarol@far.test\n"}
    return resolve_recipient(
        address,
        restrictions=RESTRICTIONS,
        sasl_authenticated=authenticated,
        client_ip=client,
        mynetworks=MYNETWORKS,
        domains=DOMAINS,
        user_exists=set(users).__contains__,
        aliases=table,
        read_include=includes.__getitem__,
        recipient_delimiter="+",
        srs_key=KEY,
        today=DAY,
        mailbox_full=None if full is None else (lambda m: m.local in full),
    )


def addr(text):
    local, _, domain = text.rpartition("@")
    return Address(local_part=local, domain=domain)


def test_plain_user_is_local():
    r = resolve(addr("alice@example.org"))
    assert r.reply.code == 250
    assert r.local == (MailboxId(domain="example.org", local="alice"),)
    assert r.remote == r.forward == ()


def test_alias_fans_out_to_local_and_forward():
    r = resolve(addr("sales@example.org"))
    assert r.reply.code == 250
    assert set(r.local) == {
        MailboxId(domain="example.org", local="alice"),
        MailboxId(domain="example.org", local="bob"),
    }
    assert r.forward == (addr("partner@far.test"),)
    assert r.remote == ()


def test_alias_with_detail_and_other_domain():
    r = resolve(addr("Sales+eu@other.test"))
    assert r.reply.code == 250
    assert r.forward == (addr("partner@far.test"),)


def test_include_file_targets():
    r = resolve(addr("everyone@example.org"))
    assert r.local == (MailboxId(domain="example.org", local="alice"),)
    assert r.forward == (addr("carol@far.test"),)


def test_alias_to_nobody_is_refused_with_reason():
    r = resolve(addr("dead@example.org"))
    assert r.reply.code == 550
    assert r.reply.enhanced == "5.1.1"
    assert r.problems


def test_alias_loop_without_user_is_refused():
    r = resolve(addr("loop@example.org"))
    assert r.reply.code == 550


def test_unknown_user_refused_even_when_trusted():
    r = resolve(addr("zed@example.org"), authenticated=True)
    assert r.reply.code == 550


def test_remote_needs_trust():
    assert resolve(addr("x@far.test")).reply.code == 554
    trusted = resolve(addr("x@far.test"), client="127.0.0.1")
    assert trusted.reply.code == 250
    assert trusted.remote == (addr("x@far.test"),)
    assert resolve(addr("x@far.test"), authenticated=True).remote == (addr("x@far.test"),)


def test_srs_bounce_is_relayed_back_to_original_sender_from_anyone():
    original = addr("someone@far.test")
    rewritten = srs.forward(original, domain="example.org", key=KEY, day=DAY)
    r = resolve(rewritten)
    assert r.reply.code == 250
    assert r.remote == (original,)


def test_srs_with_bad_hash_is_not_a_relay():
    original = addr("someone@far.test")
    rewritten = srs.forward(original, domain="example.org", key=b"x" * 32, day=DAY)
    r = resolve(rewritten)
    assert r.reply.code == 550
    assert r.remote == ()


def test_srs_expired_is_refused():
    original = addr("someone@far.test")
    rewritten = srs.forward(original, domain="example.org", key=KEY, day=DAY - 400)
    assert resolve(rewritten).reply.code == 550


def test_srs_lookalike_at_foreign_domain_is_just_remote_policy():
    r = resolve(addr("SRS0=abcd=AB=far.test=x@far.test"))
    assert r.reply.code == 554


def test_srs_to_a_local_sender_delivers_locally():
    original = addr("alice@example.org")
    rewritten = srs.forward(original, domain="other.test", key=KEY, day=DAY)
    r = resolve(rewritten)
    assert r.local == (MailboxId(domain="example.org", local="alice"),)


@settings(max_examples=200, deadline=None)
@given(
    local=st.from_regex(r"[a-z0-9%!.+=_-]{1,20}", fullmatch=True),
    domain=st.sampled_from(["example.org", "other.test", "far.test", "[127.0.0.1]"]),
    authenticated=st.booleans(),
)
def test_never_an_open_relay(local, domain, authenticated):
    # Whatever the local part, a stranger never gets a remote or forwarded target
    # except through an alias we wrote or a signed SRS address.
    try:
        address = Address(local_part=local, domain=domain)
    except ValueError:
        return
    r = resolve(address, authenticated=authenticated)
    if not authenticated:
        assert r.remote == ()
        assert set(r.forward) <= {addr("partner@far.test"), addr("carol@far.test")}


def test_a_full_mailbox_is_refused_at_rcpt_with_552_5_2_2():
    r = resolve(addr("alice+x@example.org"), full={"alice"})
    assert (r.reply.code, r.reply.enhanced) == (552, "5.2.2")
    assert "<alice+x@example.org>: mailbox is full" in r.reply.text
    assert r.local == r.forward == r.remote == ()
    assert resolve(addr("alice@example.org"), full={"bob"}).reply.code == 250


def test_an_alias_delivers_to_the_mailboxes_that_are_not_full():
    r = resolve(addr("sales@example.org"), full={"alice"})
    assert r.reply.code == 250
    assert r.local == (MailboxId(domain="example.org", local="bob"),)
    assert r.forward == (addr("partner@far.test"),)
    assert r.problems == ("alice@example.org: mailbox is full",)
    # Every local mailbox full, but a copy goes on outside: accepted for that.
    assert resolve(addr("sales@example.org"), full={"alice", "bob"}).reply.code == 250
