import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail.mail import aliases
from sansmail.mail.address import Address, MailboxId
from sansmail.mail.aliases import (
    MAX_DEPTH,
    AddressTarget,
    AliasError,
    AliasProblem,
    IncludeTarget,
    LocalTarget,
    expand,
    parse_aliases,
    parse_include,
    role_account_problems,
)

DOMAINS = ("example.org", "other.test")


def parse(text):
    return parse_aliases(text, source="aliases")


def problems(text):
    return [str(p) for p in parse(text).problems]


def users(*keys):
    known = frozenset(keys)
    return lambda key: key in known


def run(text, key, *, known=(), delimiter="+", includes=None):
    table = parse(text)
    assert not table.problems, table.problems
    reader = None
    if includes is not None:

        def reader(path):
            if path not in includes:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            return includes[path]

    return expand(
        table,
        key,
        domains=DOMAINS,
        user_exists=users(*known),
        recipient_delimiter=delimiter,
        read_include=reader,
    )


def box(local, domain="example.org"):
    return MailboxId(domain=domain, local=local)


def addr(text):
    local, _, domain = text.rpartition("@")
    return Address(local_part=local, domain=domain)


def test_public_names():
    assert sorted(aliases.__all__) == sorted(
        [
            "MAX_DEPTH",
            "AddressTarget",
            "AliasEntry",
            "AliasError",
            "AliasProblem",
            "AliasTable",
            "Expansion",
            "IncludeTarget",
            "LocalTarget",
            "Target",
            "expand",
            "parse_aliases",
            "parse_include",
            "role_account_problems",
        ]
    )


# -- grammar -----------------------------------------------------------------------------


def test_simple_entry_and_value_kinds():
    table = parse("Root: alice, \\bob, carol@Remote.TEST, <dave@example.org>, :include:/etc/list\n")
    assert not table.problems
    entry = table.get("ROOT")
    assert entry is not None
    assert entry.name == "root"
    assert entry.line == 1
    assert entry.targets == (
        LocalTarget(name="alice"),
        LocalTarget(name="bob", direct=True),
        AddressTarget(address=addr("carol@remote.test")),
        AddressTarget(address=addr("dave@example.org")),
        IncludeTarget(path="/etc/list", file="aliases", line=1),
    )
    assert "root" in table
    assert "Root" in table
    assert "alice" not in table
    assert len(table) == 1
    assert list(table) == ["root"]


def test_continuations_comments_and_blank_lines():
    text = (
        "# a comment\n"
        "\n"
        "team: alice,\n"
        "   bob\n"
        "  # a comment between continuation lines\n"
        "\t carol, dave\n"
        "   \n"
        "other: erin\n"
    )
    table = parse(text)
    assert not table.problems
    assert [t.name for t in table.entries["team"].targets] == ["alice", "bob", "carol", "dave"]
    assert table.entries["other"].line == 8


def test_crlf_line_ends():
    table = parse("a: b,\r\n c\r\nd: e\r\n")
    assert not table.problems
    assert [t.name for t in table.entries["a"].targets] == ["b", "c"]


def test_quoted_names_and_values():
    table = parse('"Sales Team": "john smith", "x,y"@remote.test\n"a\\"b" : c\n')
    assert not table.problems
    assert table.entries["sales team"].targets == (
        LocalTarget(name="john smith"),
        AddressTarget(address=addr("x,y@remote.test")),
    )
    assert 'a"b' in table


def test_empty_items_are_skipped():
    table = parse("a: b,, c ,\n")
    assert not table.problems
    assert [t.name for t in table.entries["a"].targets] == ["b", "c"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a:\n", ["aliases:1: alias 'a' has no value"]),
        ("a:  ,\nb: c\n", ["aliases:1: alias 'a' has no value"]),
        (
            "x: y\n\nnothing here\n",
            ["aliases:3: expected 'name: value, ...' (no ':' on this line)"],
        ),
        ("  b\na: c\n", ["aliases:1: line starts with a space but continues no alias"]),
        (
            "a b: c\n",
            ["aliases:1: alias name 'a b' holds a space; put the name in double quotes"],
        ),
        ('"a b: c\n', ["aliases:1: quoted alias name has no closing '\"'"]),
        ('"a b" c\n', ["aliases:1: expected ':' after the quoted alias name"]),
        (": c\n", ["aliases:1: empty alias name"]),
        (
            "x: y\n  z\na: b c\n",
            [
                "aliases:3: 'b c': space outside quotes; separate addresses with commas, "
                "or quote a local part that holds spaces"
            ],
        ),
        (
            "a: bob@\n",
            ["aliases:1: 'bob@': domain ends too early"],
        ),
    ],
)
def test_syntax_problems_with_line_numbers(text, expected):
    assert problems(text) == expected


def test_name_with_domain_is_refused():
    [problem] = parse("sales@example.org: bob\n").problems
    assert problem.line == 1
    assert "applies to every domain" in problem.message


def test_bad_name_and_bad_value_messages_come_from_the_address_parser():
    [problem] = parse("a: b..c\n").problems
    assert str(problem) == "aliases:1: 'b..c': two dots in a row in local part"
    [problem] = parse('"\x01": b\n').problems
    assert problem.line == 1
    assert problem.message.startswith("alias name '\\x01'")


def test_problem_on_a_continuation_line_has_that_line():
    text = "a: b,\n  c,\n  d e\n"
    [problem] = parse(text).problems
    assert problem.line == 3
    # The valid values are kept.
    assert [t.name for t in parse(text).entries["a"].targets] == ["b", "c"]


def test_duplicate_names_name_both_lines_and_keep_the_first():
    table = parse("sales: alice\nother: x\nSALES: bob\n  carol\n")
    assert [str(p) for p in table.problems] == [
        "aliases:3: alias 'sales' is defined twice, at lines 1 and 3; the first one is used"
    ]
    assert table.entries["sales"].targets == (LocalTarget(name="alice"),)
    assert table.entries["sales"].line == 1


def test_a_duplicate_of_an_empty_alias_is_still_a_duplicate():
    assert problems("a:\na: b\n") == [
        "aliases:1: alias 'a' has no value",
        "aliases:2: alias 'a' is defined twice, at lines 1 and 2; the first one is used",
    ]


@pytest.mark.parametrize("value", ["|/usr/bin/procmail", '"|/usr/bin/vacation bob"', "| cmd"])
def test_command_targets_are_refused(value):
    table = parse(f"a: bob,\n  {value}\n")
    [problem] = table.problems
    assert problem.line == 2
    assert problem.message.startswith("'|command' targets are not supported")
    assert "never runs programs" in problem.message
    # What is valid still works, and no "has no value" follows the refusal.
    assert table.entries["a"].targets == (LocalTarget(name="bob"),)
    [problem] = parse(f"b: {value}\n").problems
    assert "has no value" not in problem.message
    assert "b" not in parse(f"b: {value}\n")


@pytest.mark.parametrize("value", ["/dev/null", "/var/mail/archive", '"/tmp/x y"'])
def test_file_targets_are_refused(value):
    [problem] = parse(f"a: {value}\n").problems
    assert problem.message.startswith("'/file' targets are not supported")
    assert "mailbox" in problem.message


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (":include:lists/staff", ":include: path 'lists/staff' must be absolute"),
        (":include:", ":include: without a file name"),
        (":INCLUDE:  ./x", ":include: path './x' must be absolute"),
    ],
)
def test_include_paths_must_be_absolute(value, message):
    [problem] = parse(f"a: {value}\n").problems
    assert problem.message == message


def test_include_syntax_is_case_insensitive_and_allows_spaces_and_quotes():
    table = parse(
        ':Include: /etc/a list\nb: :include:"/etc/b"\n'.replace(":Include:", "a: :Include:")
    )
    assert not table.problems
    assert table.entries["a"].targets == (
        IncludeTarget(path="/etc/a list", file="aliases", line=1),
    )
    assert table.entries["b"].targets == (IncludeTarget(path="/etc/b", file="aliases", line=2),)


def test_raise_for_problems():
    parse("a: b\n").raise_for_problems()
    table = parse("a\nb: |x\n")
    with pytest.raises(AliasError) as info:
        table.raise_for_problems()
    assert info.value.problems == table.problems
    assert str(info.value).splitlines() == [str(p) for p in table.problems]
    assert len(info.value.problems) == 2


def test_problem_str():
    assert str(AliasProblem(file="/etc/aliases", line=7, message="bad")) == "/etc/aliases:7: bad"


def test_parse_include():
    targets, found = parse_include("# staff\nalice, bob\n\ncarol@remote.test\n|x\n", source="/l")
    assert targets == (
        LocalTarget(name="alice"),
        LocalTarget(name="bob"),
        AddressTarget(address=addr("carol@remote.test")),
    )
    assert [str(p) for p in found] == [f"/l:5: {aliases._REFUSED_COMMAND}"]


_TEXT = st.lists(
    st.sampled_from([*'abc :,#"\\|/@<>.+\t\n\r', "xn--", ":include:", "é", "\x00"]),
    max_size=60,
).map("".join)


@settings(deadline=None, max_examples=300)
@given(_TEXT)
def test_random_text_never_raises(text):
    table = parse_aliases(text, source="f")
    lines = text.count("\n") + 1
    for problem in table.problems:
        assert problem.file == "f"
        assert 1 <= problem.line <= lines
    for name, entry in table.entries.items():
        assert name == name.lower()
        assert entry.targets
    parse_include(text, source="g")


# -- expansion ---------------------------------------------------------------------------


def test_plain_user_without_alias():
    assert run("", "alice@example.org", known=["alice@example.org"]).local == (box("alice"),)
    result = run("", "nobody@example.org")
    assert result.local == ()
    assert result.problems == ("nobody@example.org: no such user or alias",)


def test_nested_aliases_remote_targets_and_order():
    text = "all: sales, support, eve@remote.test\nsales: alice, bob\nsupport: bob, carol\n"
    known = ["alice@example.org", "bob@example.org", "carol@example.org"]
    result = run(text, "all@example.org", known=known)
    assert result.local == (box("alice"), box("bob"), box("carol"))
    assert result.remote == (addr("eve@remote.test"),)
    assert result.problems == ()


def test_alias_applies_at_every_domain_and_local_names_stay_in_that_domain():
    text = "sales: alice\n"
    result = run(text, "sales@other.test", known=["alice@other.test", "alice@example.org"])
    assert result.local == (box("alice", "other.test"),)


def test_address_in_our_domains_is_expanded_again():
    text = "a: b@other.test\nb: c@example.org\n"
    result = run(text, "a@example.org", known=["c@example.org"])
    assert result.local == (box("c"),)
    assert result.remote == ()


def test_duplicates_are_suppressed_case_insensitively():
    text = "a: Bob@Remote.test, bob@remote.test, x, X, \\x\n"
    result = run(text, "a@example.org", known=["x@example.org"])
    assert result.local == (box("x"),)
    assert result.remote == (addr("Bob@remote.test"),)


def test_self_reference_delivers_to_the_user():
    # The Sendmail idiom for "keep a copy and forward".
    text = "alice: alice, alice@elsewhere.test\n"
    result = run(text, "alice@example.org", known=["alice@example.org"])
    assert result.local == (box("alice"),)
    assert result.remote == (addr("alice@elsewhere.test"),)
    assert result.problems == ()


def test_backslash_skips_the_alias():
    text = "alice: \\alice, bob\n"
    result = run(text, "alice@example.org", known=["alice@example.org", "bob@example.org"])
    assert result.local == (box("alice"), box("bob"))


def test_indirect_loop_delivers_to_the_user_when_there_is_one():
    text = "a: b\nb: a, c@remote.test\n"
    result = run(text, "a@example.org", known=["a@example.org"])
    assert result.local == (box("a"),)
    assert result.remote == (addr("c@remote.test"),)
    assert result.problems == ()


def test_loop_without_a_user_is_a_problem():
    text = "a: b\nb: c\nc: a\n"
    result = run(text, "a@example.org")
    assert result.local == ()
    assert result.problems == (
        "alias loop a@example.org -> b@example.org -> c@example.org -> a@example.org, "
        "and no user a@example.org",
    )


def test_loop_at_a_role_account_still_reaches_the_postmaster_mailbox():
    result = run("postmaster: root\nroot: postmaster\n", "postmaster@other.test")
    assert result.local == (box("postmaster"),)
    assert result.problems == ()


def test_depth_limit():
    chain = "".join(f"n{i}: n{i + 1}\n" for i in range(MAX_DEPTH + 5))
    result = run(chain, "n0@example.org", known=[f"n{MAX_DEPTH + 5}@example.org"])
    assert result.local == ()
    assert result.problems == (
        f"aliases nested deeper than {MAX_DEPTH} at n{MAX_DEPTH}@example.org",
    )
    # Just within the limit is fine.
    short = "".join(f"n{i}: n{i + 1}\n" for i in range(MAX_DEPTH - 1))
    result = run(short, "n0@example.org", known=[f"n{MAX_DEPTH - 1}@example.org"])
    assert result.local == (box(f"n{MAX_DEPTH - 1}"),)


def test_plus_addressing_for_users_and_aliases():
    known = ["alice@example.org", "bob@example.org", "al+ice@example.org"]
    assert run("", "alice+lists@example.org", known=known).local == (box("alice"),)
    # A user whose name holds the delimiter wins over the base.
    assert run("", "al+ice@example.org", known=known).local == (box("al+ice"),)
    # An alias is found by its base; the extension is not carried to its targets.
    result = run("sales: bob\n", "sales+eu@example.org", known=known)
    assert result.local == (box("bob"),)
    # The full name is tried first.
    result = run("sales: bob\nsales+eu: alice\n", "sales+eu@example.org", known=known)
    assert result.local == (box("alice"),)
    # Several delimiter characters; the first one found splits.
    result = run("", "alice-x+y@example.org", known=known, delimiter="+-")
    assert result.local == (box("alice"),)
    # Without a delimiter there is no detail.
    result = run("", "alice+lists@example.org", known=known, delimiter="")
    assert result.problems == ("alice+lists@example.org: no such user or alias",)


def test_plus_addressing_on_alias_targets():
    result = run("a: bob+x\n", "a@example.org", known=["bob@example.org"])
    assert result.local == (box("bob"),)


def test_role_accounts_fall_back_to_the_postmaster_mailbox():
    assert run("", "postmaster@other.test").local == (box("postmaster"),)
    assert run("", "abuse@example.org").local == (box("postmaster"),)
    assert run("", "postmaster@").local == (box("postmaster"),)
    assert run("", "abuse@other.test", known=["abuse@other.test"]).local == (
        box("abuse", "other.test"),
    )
    assert run("abuse: root\n", "abuse@other.test", known=["root@other.test"]).local == (
        box("root", "other.test"),
    )


def test_remote_recipient_is_itself():
    result = run("a: b\n", "a@remote.test")
    assert result.remote == (addr("a@remote.test"),)
    assert result.local == ()


def test_includes():
    includes = {
        "/lists/staff": "# staff\nalice, bob\ncarol@remote.test\n:include:/lists/more\n",
        "/lists/more": "dave\n",
    }
    known = ["alice@example.org", "bob@example.org", "dave@example.org"]
    result = run(
        "staff: :include:/lists/staff\n", "staff@example.org", known=known, includes=includes
    )
    assert result.local == (box("alice"), box("bob"), box("dave"))
    assert result.remote == (addr("carol@remote.test"),)
    assert result.problems == ()


def test_include_names_are_aliases_too():
    includes = {"/l": "team\n"}
    result = run(
        "l: :include:/l\nteam: bob\n", "l@example.org", known=["bob@example.org"], includes=includes
    )
    assert result.local == (box("bob"),)


def test_include_problems_are_reported_with_their_own_file_and_line():
    includes = {"/l": "alice\n\n|/bin/sh\nbad guy\n"}
    result = run(
        "l: :include:/l\n", "l@example.org", known=["alice@example.org"], includes=includes
    )
    assert result.local == (box("alice"),)
    assert result.problems[0] == f"/l:3: {aliases._REFUSED_COMMAND}"
    assert result.problems[1].startswith("/l:4: 'bad guy': space outside quotes")
    assert len(result.problems) == 2


def test_unreadable_include():
    result = run(
        "x: y\nl: bob, :include:/missing\n", "l@example.org", known=["bob@example.org"], includes={}
    )
    assert result.local == (box("bob"),)
    assert result.problems == (
        "aliases:2: cannot read :include:/missing: No such file or directory",
    )
    result = run("l: :include:/x\n", "l@example.org")
    assert result.problems == ("aliases:1: cannot read :include:/x: no include reader given",)

    def undecodable(path):
        return b"\xff".decode()

    table = parse("l: :include:/x\n")
    result = expand(
        table, "l@example.org", domains=DOMAINS, user_exists=users(), read_include=undecodable
    )
    assert result.problems[0].startswith("aliases:1: cannot read :include:/x: 'utf-8' codec")


def test_include_loops():
    includes = {"/a": ":include:/b\nbob\n", "/b": ":include:/a\n"}
    result = run("l: :include:/a\n", "l@example.org", known=["bob@example.org"], includes=includes)
    assert result.local == (box("bob"),)
    assert result.problems == ("/b:1: include loop :include:/a -> :include:/b -> :include:/a",)


def test_an_include_reached_twice_is_read_once():
    reads = []

    def reader(path):
        reads.append(path)
        return "bob\n"

    table = parse("all: a, b\na: :include:/l\nb: :include:/l\n")
    result = expand(
        table,
        "all@example.org",
        domains=DOMAINS,
        user_exists=users("bob@example.org"),
        read_include=reader,
    )
    assert result.local == (box("bob"),)
    assert reads == ["/l"]


def test_diamonds_are_expanded_once():
    calls = []

    def exists(key):
        calls.append(key)
        return True

    # 2**30 paths; each name expanded once.
    text = "".join(
        f"n{i}: n{i + 1}a, n{i + 1}b\nn{i + 1}a: n{i + 1}\nn{i + 1}b: n{i + 1}\n" for i in range(30)
    )
    table = parse(text)
    result = expand(table, "n0@example.org", domains=DOMAINS, user_exists=exists)
    assert result.local == (box("n30"),)
    assert len(calls) < 10


# -- role accounts -----------------------------------------------------------------------


def test_role_accounts_resolved():
    table = parse("postmaster: root\nabuse: postmaster\nroot: admin@remote.test\n")
    assert role_account_problems(table, domains=DOMAINS, user_exists=users()) == []
    table = parse("")
    known = users(
        "postmaster@example.org", "abuse@example.org", "postmaster@other.test", "abuse@other.test"
    )
    assert role_account_problems(table, domains=DOMAINS, user_exists=known) == []


def test_role_accounts_unresolved():
    table = parse("postmaster: alice\n")
    warnings = role_account_problems(table, domains=DOMAINS, user_exists=users("alice@example.org"))
    assert warnings == [
        "abuse@example.org reaches no user (abuse@example.org: no such user or alias); "
        "its mail goes to the postmaster mailbox postmaster@example.org",
        "postmaster@other.test reaches no user (alice@other.test: no such user or alias); "
        "its mail goes to the postmaster mailbox postmaster@example.org",
        "abuse@other.test reaches no user (abuse@other.test: no such user or alias); "
        "its mail goes to the postmaster mailbox postmaster@example.org",
    ]


def test_role_account_loop_and_includes():
    table = parse("postmaster: abuse\nabuse: postmaster\n")
    warnings = role_account_problems(table, domains=["example.org"], user_exists=users())
    assert len(warnings) == 2
    assert "alias loop" in warnings[0]
    table = parse("postmaster: :include:/l\nabuse: postmaster\n")
    # Without a reader the include is trusted; with one, it is checked.
    assert role_account_problems(table, domains=["example.org"], user_exists=users()) == []
    warnings = role_account_problems(
        table, domains=["example.org"], user_exists=users(), read_include=lambda p: "nobody\n"
    )
    assert len(warnings) == 2
    assert "nobody@example.org: no such user or alias" in warnings[0]


# -- expansion always terminates ---------------------------------------------------------

_NAMES = [f"n{i}" for i in range(6)]
_VALUE = st.one_of(
    st.sampled_from(_NAMES),
    st.sampled_from(_NAMES).map(lambda n: "\\" + n),
    st.sampled_from(_NAMES).map(lambda n: n + "+t"),
    st.sampled_from(_NAMES).map(lambda n: n + "@other.test"),
    st.sampled_from(["r1@remote.test", "R1@remote.test", "postmaster"]),
    st.sampled_from(["/i0", "/i1", "/i2", "/missing"]).map(lambda p: ":include:" + p),
)
_VALUES = st.lists(_VALUE, min_size=1, max_size=4).map(", ".join)


@settings(deadline=None, max_examples=200)
@given(
    table=st.dictionaries(st.sampled_from(_NAMES), _VALUES, max_size=6),
    includes=st.dictionaries(st.sampled_from(["/i0", "/i1", "/i2"]), _VALUES, max_size=3),
    known=st.sets(st.sampled_from(_NAMES)),
    start=st.sampled_from([*_NAMES, "postmaster", "n1+x"]),
    domain=st.sampled_from(DOMAINS),
)
def test_expansion_terminates_on_random_graphs(table, includes, known, start, domain):
    text = "".join(f"{name}: {values}\n" for name, values in table.items())
    parsed = parse(text)
    assert not parsed.problems
    keys = {f"{name}@{d}" for name in known for d in DOMAINS}
    result = run(text, f"{start}@{domain}", known=keys, includes=includes)
    assert len(set(result.local)) == len(result.local)
    assert len({a.key for a in result.remote}) == len(result.remote)
    for mailbox in result.local:
        assert f"{mailbox.local}@{mailbox.domain}" in keys or mailbox == box("postmaster")
    assert {a.key for a in result.remote} <= {"r1@remote.test"}
    # Something always happens to the mail: delivered, forwarded, or a reason why not.
    assert result.local or result.remote or result.problems
