"""Byte-level parser tests: every command, every FETCH item form, every SEARCH key, and the
syntax errors that must come back as BAD without ending the session."""

from __future__ import annotations

import datetime

import pytest
from imap_helpers import one, run, server

from sansmail.imap import (
    Append,
    AppendMessage,
    Atom,
    Authenticate,
    BinarySection,
    BinarySize,
    BodySection,
    Capability,
    Check,
    Close,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchAttribute,
    Id,
    Idle,
    InvalidCommand,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    Rename,
    Search,
    SearchAnd,
    SearchDate,
    SearchHeader,
    SearchKeyword,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSimple,
    SearchSize,
    SearchText,
    SearchUid,
    Section,
    Select,
    SequenceSet,
    StartTLS,
    Status,
    Store,
    Subscribe,
    Tagged,
    UidExpunge,
    Unselect,
    Unsubscribe,
    UntaggedStatus,
    write_command,
)

S = SequenceSet.parse
TZ = datetime.timezone


# --- commands without arguments ----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kind", "state"),
    [
        (b"a1 CAPABILITY", Capability, "not-authenticated"),
        (b"a1 capability", Capability, "selected"),
        (b"a1 NOOP", Noop, "authenticated"),
        (b"a1 LOGOUT", Logout, "not-authenticated"),
        (b"a1 STARTTLS", StartTLS, "not-authenticated"),
        (b"a1 NAMESPACE", Namespace, "authenticated"),
        (b"a1 IDLE", Idle, "selected"),
        (b"a1 CHECK", Check, "selected"),
        (b"a1 CLOSE", Close, "selected"),
        (b"a1 UNSELECT", Unselect, "selected"),
        (b"a1 EXPUNGE", Expunge, "selected"),
    ],
)
def test_commands_without_arguments(line: bytes, kind: type, state: str) -> None:
    event = one(line + b"\r\n", state)
    assert event == kind(tag="a1")


def test_trailing_argument_on_argumentless_command_is_bad() -> None:
    event = one(b"a1 NOOP now\r\n")
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint == Tagged(
        tag="a1", status="BAD", text="NOOP unexpected text at the end of the command"
    )


def test_tags_take_any_astring_char_but_plus() -> None:
    assert one(b"A.1-x]~!#$&' NOOP\r\n") == Noop(tag="A.1-x]~!#$&'")
    event = one(b"a+1 NOOP\r\n")
    assert isinstance(event, InvalidCommand)
    assert event.tag is None
    assert isinstance(event.reply_hint, UntaggedStatus)
    assert event.reply_hint.status == "BAD"


# --- not authenticated ---------------------------------------------------------------------


def test_login_forms() -> None:
    assert one(b'a LOGIN fred "p a\\"s\\\\s"\r\n', "not-authenticated") == Login(
        tag="a", userid="fred", password='p a"s\\s'
    )
    event = one(b"a LOGIN {4+}\r\nfred {3+}\r\nx y\r\n", "not-authenticated")
    assert event == Login(tag="a", userid="fred", password="x y")
    event = one('a LOGIN jörg "pässwörd"\r\n'.encode(), "not-authenticated")
    assert isinstance(event, InvalidCommand)  # 8-bit in an atom
    event = one('a LOGIN "jörg" "pässwörd"\r\n'.encode(), "not-authenticated")
    assert event == Login(tag="a", userid="jörg", password="pässwörd")


def test_login_errors_never_echo_the_password() -> None:
    for line in [
        b'a LOGIN fred "hunter2\r\n',
        b"a LOGIN fred hunter2 extra\r\n",
        b"a LOGIN fred {7+}\r\nhunt\xffr2\r\n",
        b"a LOGIN fred\r\n",
    ]:
        event = one(line, "not-authenticated")
        assert isinstance(event, InvalidCommand), line
        assert "hunt" not in repr(event)
    assert "hunter2" not in repr(Login(tag="a", userid="fred", password="hunter2"))


def test_authenticate_forms() -> None:
    assert one(b"a AUTHENTICATE plain\r\n", "not-authenticated") == Authenticate(
        tag="a", mechanism="PLAIN"
    )
    assert one(b"a AUTHENTICATE PLAIN =\r\n", "not-authenticated") == Authenticate(
        tag="a", mechanism="PLAIN", initial_response=b""
    )
    assert one(b"a AUTHENTICATE PLAIN AGZyZWQAc2VjcmV0\r\n", "not-authenticated") == (
        Authenticate(tag="a", mechanism="PLAIN", initial_response=b"\0fred\0secret")
    )
    for bad in [b"a AUTHENTICATE PLAIN AGZy!\r\n", b"a AUTHENTICATE PLAIN QR==\r\n"]:
        assert isinstance(one(bad, "not-authenticated"), InvalidCommand)


# --- authenticated -------------------------------------------------------------------------


def test_enable_and_id_and_namespace() -> None:
    assert one(b"a ENABLE IMAP4rev2 utf8=accept\r\n", "authenticated") == Enable(
        tag="a", capabilities=("IMAP4REV2", "UTF8=ACCEPT")
    )
    assert isinstance(one(b"a ENABLE\r\n", "authenticated"), InvalidCommand)
    assert one(b'a ID ("name" "Thunderbird" "version" NIL)\r\n') == Id(
        tag="a", params=(("name", "Thunderbird"), ("version", None))
    )
    assert one(b"a ID NIL\r\n", "not-authenticated") == Id(tag="a", params=None)
    assert one(b"a ID ()\r\n") == Id(tag="a", params=())
    many = b" ".join(b'"k%d" "v"' % i for i in range(31))
    assert isinstance(one(b"a ID (" + many + b")\r\n"), InvalidCommand)


def test_select_and_examine() -> None:
    assert one(b"a SELECT inbox\r\n") == Select(tag="a", mailbox="INBOX")
    assert one(b'a EXAMINE "Sent Items"\r\n') == Select(
        tag="a", mailbox="Sent Items", readonly=True
    )
    assert one(b"a SELECT INBOX (CONDSTORE)\r\n") == Select(
        tag="a", mailbox="INBOX", parameters=(("CONDSTORE", None),)
    )
    event = one(b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211))\r\n")
    assert event == Select(
        tag="a",
        mailbox="INBOX",
        parameters=(("QRESYNC", [67890007, 20050715194045000, Atom("41,43:211")]),),
    )


def test_mailbox_names_are_modified_utf7_in_rev1() -> None:
    assert one(b"a SELECT &ZeVnLIqe-\r\n") == Select(tag="a", mailbox="日本語")
    assert one(b"a CREATE Entw&APw-rfe/a&-b\r\n", "authenticated") == Create(
        tag="a", mailbox="Entwürfe/a&b"
    )
    for bad in [b"a SELECT a&b\r\n", b"a SELECT &AGE-\r\n", 'a SELECT "Entwürfe"\r\n'.encode()]:
        event = one(bad)
        assert isinstance(event, InvalidCommand), bad


def test_mailbox_names_are_utf8_once_enabled() -> None:
    assert one('a SELECT "Entwürfe"\r\n'.encode(), utf8=True) == Select(tag="a", mailbox="Entwürfe")
    assert one(b"a SELECT a&b\r\n", utf8=True) == Select(tag="a", mailbox="a&b")
    assert isinstance(one(b'a SELECT "\xff"\r\n', utf8=True), InvalidCommand)


def test_create_delete_rename_subscribe() -> None:
    st = "authenticated"
    assert one(b"a CREATE Archive (USE (\\archive))\r\n", st) == Create(
        tag="a", mailbox="Archive", special_use=("\\archive",)
    )
    assert one(b"a CREATE x (USE (\\Sent \\Junk))\r\n", st).special_use == ("\\Sent", "\\Junk")
    assert isinstance(one(b"a CREATE x (FOO (1))\r\n", st), InvalidCommand)
    assert one(b"a DELETE x\r\n", st) == Delete(tag="a", mailbox="x")
    assert one(b'a RENAME "a b" c\r\n', st) == Rename(tag="a", mailbox="a b", new_mailbox="c")
    assert one(b"a SUBSCRIBE x\r\n", st) == Subscribe(tag="a", mailbox="x")
    assert one(b"a UNSUBSCRIBE {1+}\r\nx\r\n", st) == Unsubscribe(tag="a", mailbox="x")


def test_list_forms() -> None:
    assert one(b'a LIST "" *\r\n') == List(tag="a", reference="", patterns=("*",))
    assert one(b'a LIST "" %/%\r\n') == List(tag="a", reference="", patterns=("%/%",))
    assert one(b'a LIST ~/Mail/ "%"\r\n') == List(tag="a", reference="~/Mail/", patterns=("%",))
    assert one(b'a LIST "" ""\r\n') == List(tag="a", reference="", patterns=("",))
    event = one(
        b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" "Drafts/*") '
        b"RETURN (CHILDREN STATUS (MESSAGES UNSEEN) special-use)\r\n"
    )
    assert event == List(
        tag="a",
        reference="",
        patterns=("INBOX", "Drafts/*"),
        selection=("SUBSCRIBED", "RECURSIVEMATCH"),
        return_options=("CHILDREN", "SPECIAL-USE"),
        status_items=("MESSAGES", "UNSEEN"),
    )
    assert one(b'a LIST () "" "*" RETURN ()\r\n') == List(tag="a", reference="", patterns=("*",))
    assert one(b'a LIST "" &ZeVnLIqe-*\r\n').patterns == ("日本語*",)
    for bad in [
        b'a LIST (RECURSIVEMATCH) "" *\r\n',
        b'a LIST (BOGUS) "" *\r\n',
        b'a LIST "" * RETURN (BOGUS)\r\n',
        b'a LIST "" * RETURN (STATUS ())\r\n',
        b'a LIST "" * RETURN (STATUS (BOGUS))\r\n',
        b'a LIST ""\r\n',
    ]:
        assert isinstance(one(bad), InvalidCommand), bad


def test_lsub_and_status() -> None:
    assert one(b'a LSUB "" "*"\r\n') == Lsub(tag="a", reference="", pattern="*")
    assert one(b"a STATUS blurdybloop (UIDNEXT messages)\r\n") == Status(
        tag="a", mailbox="blurdybloop", items=("UIDNEXT", "MESSAGES")
    )
    for item in [
        b"MESSAGES",
        b"UIDNEXT",
        b"UIDVALIDITY",
        b"UNSEEN",
        b"DELETED",
        b"SIZE",
        b"RECENT",
    ]:
        assert one(b"a STATUS x (" + item + b")\r\n").items == (item.decode(),)
    assert isinstance(one(b"a STATUS x ()\r\n"), InvalidCommand)
    assert isinstance(one(b"a STATUS x (FOO)\r\n"), InvalidCommand)


def test_append_forms() -> None:
    st = "authenticated"
    assert one(b"a APPEND saved-messages {3}\r\nhi!\r\n", st) == Append(
        tag="a", mailbox="saved-messages", message=b"hi!"
    )
    event = one(
        b'a APPEND INBOX (\\seen $Forwarded) "17-Jul-1996 02:44:25 -0700" {5+}\r\nab\r\nc\r\n',
        st,
    )
    assert event == Append(
        tag="a",
        mailbox="INBOX",
        flags=("\\Seen", "$Forwarded"),
        date=datetime.datetime(1996, 7, 17, 2, 44, 25, tzinfo=TZ(-datetime.timedelta(hours=7))),
        message=b"ab\r\nc",
    )
    assert one(b'a APPEND x " 7-Jul-2024 00:00:00 +0000" {0+}\r\n\r\n', st).date == (
        datetime.datetime(2024, 7, 7, tzinfo=TZ.utc)
    )
    assert one(b"a APPEND x () {1}\r\nx\r\n", st).flags == ()
    binary = one(b"a APPEND x ~{3}\r\n\x00\x01\x02\r\n", st)
    assert binary == Append(tag="a", mailbox="x", message=b"\x00\x01\x02", binary=True)
    for bad in [
        b'a APPEND x "hello"\r\n',
        b'a APPEND x "31-Feb-2024 00:00:00 +0000" {1+}\r\nx\r\n',
        b'a APPEND x "1-Feb-2024 00:00:00 +0000" {1+}\r\nx\r\n',  # date-day-fixed
        b"a APPEND x {1+}\r\nx {1+}\r\ny \r\n",  # a space with no message after it
        b"a APPEND x {1+}\r\nx{1+}\r\ny\r\n",  # MULTIAPPEND messages need their space
        b"a APPEND x {1+}\r\nx (\\Seen)\r\n",
        b"a APPEND x {1+}\r\nx   {1+}\r\ny\r\n",  # but no more
        b"a APPEND x {2+}\r\n\x00x\r\n",  # NUL needs literal8
        b"a LOGIN ~{1+}\r\nx y\r\n",  # literal8 only for APPEND
    ]:
        assert isinstance(one(bad, st), InvalidCommand), bad


def test_multiappend() -> None:
    """RFC 3502 §6.3.11: append = "APPEND" SP mailbox 1*append-message."""
    data = (
        b'a APPEND INBOX {1}\r\nx (\\Seen) " 5-Jan-2026 10:00:00 +0100" {2}\r\nyy ~{1}\r\n\x00\r\n'
    )
    event = one(data, "authenticated")
    assert event == Append(
        tag="a",
        mailbox="INBOX",
        message=b"x",
        more=(
            AppendMessage(
                flags=("\\Seen",),
                date=datetime.datetime(2026, 1, 5, 10, tzinfo=TZ(datetime.timedelta(hours=1))),
                message=b"yy",
            ),
            AppendMessage(message=b"\x00", binary=True),
        ),
    )
    assert write_command(event, literal_plus=False) == data
    # imapclient's two spaces between messages without flags or date are taken.
    assert one(b"a APPEND x {1+}\r\nx  {1+}\r\ny\r\n", "authenticated") == Append(
        tag="a", mailbox="x", message=b"x", more=(AppendMessage(message=b"y"),)
    )
    with pytest.raises(TypeError):
        Append(tag="a", mailbox="x", message=b"x", more=(b"y",))  # type: ignore[arg-type]


def test_append_utf8_data_once_utf8_is_enabled() -> None:
    """RFC 6855 §4: append-data =/ "UTF8" SP "(" literal8 ")"."""
    st = "authenticated"
    message = "Subject: Grüße\r\n\r\nhi\r\n".encode()
    data = b"a APPEND INBOX (\\Seen) UTF8 (~{%d}\r\n" % len(message) + message + b")\r\n"
    event = one(data, st, utf8=True)
    assert event == Append(
        tag="a", mailbox="INBOX", flags=("\\Seen",), message=message, binary=True, utf8=True
    )
    assert write_command(event, utf8=True, literal_plus=False) == data
    assert one(b"a APPEND x utf8 (~{1+}\r\nx)\r\n", st, utf8=True) == Append(
        tag="a", mailbox="x", message=b"x", binary=True, utf8=True
    )
    for bad in [
        b"a APPEND x UTF8 ({1+}\r\nx)\r\n",  # a literal8, not a literal
        b"a APPEND x UTF8 (~{1+}\r\nx\r\n",  # unclosed
        b"a APPEND x UTF8 ~{1+}\r\nx\r\n",
    ]:
        assert isinstance(one(bad, st, utf8=True), InvalidCommand), bad
    # Not enabled: "UTF8" is no APPEND data.
    assert isinstance(one(b"a APPEND x UTF8 (~{1+}\r\nx)\r\n", st), InvalidCommand)
    with pytest.raises(ValueError, match="literal8"):
        Append(tag="a", mailbox="x", message=b"x", utf8=True)


# --- selected --------------------------------------------------------------------------------


def test_fetch_items() -> None:
    def items(text: bytes) -> tuple[object, ...]:
        event = one(b"a FETCH 1 " + text + b"\r\n")
        assert isinstance(event, Fetch), event
        return event.items

    def attrs(*names: str) -> tuple[object, ...]:
        return tuple(FetchAttribute(name=n) for n in names)

    assert items(b"ALL") == attrs("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE")
    assert items(b"fast") == attrs("FLAGS", "INTERNALDATE", "RFC822.SIZE")
    assert items(b"FULL") == attrs("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY")
    for name in [
        "FLAGS",
        "INTERNALDATE",
        "RFC822.SIZE",
        "ENVELOPE",
        "BODY",
        "BODYSTRUCTURE",
        "UID",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.TEXT",
        "MODSEQ",
    ]:
        assert items(name.encode()) == attrs(name)
        assert items(b"(" + name.lower().encode() + b")") == attrs(name)
    assert items(b"(FLAGS UID)") == attrs("FLAGS", "UID")
    assert items(b"BODY[]") == (BodySection(),)
    assert items(b"BODY.PEEK[]<0.2048>") == (BodySection(peek=True, partial=(0, 2048)),)
    assert items(b"body[header]") == (BodySection(section=Section(text="HEADER")),)
    assert items(b"BODY[TEXT]") == (BodySection(section=Section(text="TEXT")),)
    assert items(b"BODY[1]") == (BodySection(section=Section(part=(1,))),)
    assert items(b"BODY[1.2.3.MIME]") == (
        BodySection(section=Section(part=(1, 2, 3), text="MIME")),
    )
    assert items(b"BODY[4.2.HEADER]") == (BodySection(section=Section(part=(4, 2), text="HEADER")),)
    assert items(b"BODY[3.TEXT]<10.5>") == (
        BodySection(section=Section(part=(3,), text="TEXT"), partial=(10, 5)),
    )
    assert items(b"BODY.PEEK[HEADER.FIELDS (DATE FROM)]") == (
        BodySection(section=Section(text="HEADER.FIELDS", fields=("DATE", "FROM")), peek=True),
    )
    assert items(b'BODY[1.HEADER.FIELDS.NOT ("X-Spam" {5+}\r\nX-Foo)]') == (
        BodySection(
            section=Section(part=(1,), text="HEADER.FIELDS.NOT", fields=("X-Spam", "X-Foo"))
        ),
    )
    assert items(b"BINARY[1.2]") == (BinarySection(part=(1, 2)),)
    assert items(b"BINARY.PEEK[]<0.100>") == (BinarySection(peek=True, partial=(0, 100)),)
    assert items(b"BINARY.SIZE[3]") == (BinarySize(part=(3,)),)
    assert items(b"(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To)])") == (
        *attrs("UID", "RFC822.SIZE", "FLAGS"),
        BodySection(section=Section(text="HEADER.FIELDS", fields=("From", "To")), peek=True),
    )
    for bad in [
        b"ALLX",
        b"(ALL)",
        b"BODY[MIME]",
        b"BODY[0]",
        b"BODY[1.0]",
        b"BODY[HEADER.FIELDS]",
        b"BODY[HEADER.FIELDS ()]",
        b"BODY[HEADER.FIELDS (a:b)]",
        b"BODY[TEXT.1]",
        b"BODY[]<5.0>",
        b"BODY[]<5>",
        b"BINARY[TEXT]",
        b"BINARY.SIZE[1]<0.1>",
        b"BODY.PEEK",
        b"FLAGZ",
        b"(FLAGS",
        b"()",
    ]:
        event = one(b"a FETCH 1 " + bad + b"\r\n")
        assert isinstance(event, InvalidCommand), bad


def test_fetch_sets_uid_and_modifiers() -> None:
    event = one(b"a UID FETCH 1:4,7,9:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n")
    assert event == Fetch(
        tag="a",
        uid=True,
        sequence_set=SequenceSet(ranges=((1, 4), (7, 7), (9, None))),
        items=(FetchAttribute(name="FLAGS"),),
        modifiers=(("CHANGEDSINCE", 12345), ("VANISHED", None)),
    )
    assert one(b"a fetch $ UID\r\n").sequence_set == SequenceSet(saved=True)
    for bad in [b"a FETCH 0 UID", b"a FETCH 1,,2 UID", b"a FETCH 4294967296 UID", b"a FETCH UID"]:
        assert isinstance(one(bad + b"\r\n"), InvalidCommand), bad


def test_store_forms() -> None:
    assert one(b"a STORE 2:4 +FLAGS (\\Deleted)\r\n") == Store(
        tag="a", sequence_set=S("2:4"), mode="add", flags=("\\Deleted",)
    )
    assert one(b"a UID STORE 1 -flags.silent \\seen $Junk\r\n") == Store(
        tag="a",
        uid=True,
        sequence_set=S("1"),
        mode="remove",
        silent=True,
        flags=("\\Seen", "$Junk"),
    )
    assert one(b"a STORE 1 FLAGS ()\r\n") == Store(
        tag="a", sequence_set=S("1"), mode="replace", flags=()
    )
    assert one(b"a STORE 1 (UNCHANGEDSINCE 5) +FLAGS.SILENT (\\Flagged)\r\n").modifiers == (
        ("UNCHANGEDSINCE", 5),
    )
    for bad in [b"a STORE 1 FLAGS", b"a STORE 1 XFLAGS (\\Seen)", b"a STORE 1 +FLAGS (\\)"]:
        assert isinstance(one(bad + b"\r\n"), InvalidCommand), bad


def test_copy_move_expunge() -> None:
    assert one(b"a COPY 2:4 MEETING\r\n") == Copy(tag="a", sequence_set=S("2:4"), mailbox="MEETING")
    assert one(b"a UID MOVE 42:69 foo\r\n") == Move(
        tag="a", uid=True, sequence_set=S("42:69"), mailbox="foo"
    )
    assert one(b"a UID EXPUNGE 3000:3002\r\n") == UidExpunge(tag="a", sequence_set=S("3000:3002"))
    assert isinstance(one(b"a UID EXPUNGE\r\n"), InvalidCommand)
    assert isinstance(one(b"a UID NOOP\r\n"), InvalidCommand)


# --- SEARCH ------------------------------------------------------------------------------------


def criteria(text: bytes, *, utf8: bool = False) -> object:
    event = one(b"a SEARCH " + text + b"\r\n", utf8=utf8)
    assert isinstance(event, Search), event
    return event.criteria


def test_every_search_key() -> None:
    for name in [
        "ALL",
        "ANSWERED",
        "DELETED",
        "DRAFT",
        "FLAGGED",
        "SEEN",
        "UNANSWERED",
        "UNDELETED",
        "UNDRAFT",
        "UNFLAGGED",
        "UNSEEN",
        "NEW",
        "OLD",
        "RECENT",
    ]:
        assert criteria(name.lower().encode()) == SearchSimple(name=name)
    for name in ["BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"]:
        assert criteria(name.encode() + b' "a b"') == SearchText(name=name, value="a b")
        assert criteria(name.encode() + b" x") == SearchText(name=name, value="x")
    for name in ["BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"]:
        assert criteria(name.encode() + b" 1-Feb-1994") == SearchDate(
            name=name, date=datetime.date(1994, 2, 1)
        )
        assert criteria(name.encode() + b' "21-feb-1994"') == SearchDate(
            name=name, date=datetime.date(1994, 2, 21)
        )
    assert criteria(b"LARGER 1024") == SearchSize(name="LARGER", size=1024)
    assert criteria(b"SMALLER 10000000000") == SearchSize(name="SMALLER", size=10_000_000_000)
    assert criteria(b"KEYWORD $Forwarded") == SearchKeyword(keyword="$Forwarded")
    assert criteria(b"UNKEYWORD Junk") == SearchKeyword(keyword="Junk", negated=True)
    assert criteria(b'HEADER Message-ID "<a@b>"') == SearchHeader(field="Message-ID", value="<a@b>")
    assert criteria(b'HEADER X-Foo ""') == SearchHeader(field="X-Foo", value="")
    assert criteria(b"UID 1:*") == SearchUid(sequence_set=S("1:*"))
    assert criteria(b"2,4:7") == SearchSequence(sequence_set=S("2,4:7"))
    assert criteria(b"*") == SearchSequence(sequence_set=S("*"))
    assert criteria(b"$") == SearchSequence(sequence_set=SequenceSet(saved=True))
    assert criteria(b"NOT SEEN") == SearchNot(key=SearchSimple(name="SEEN"))
    assert criteria(b"OR SEEN FLAGGED") == SearchOr(
        left=SearchSimple(name="SEEN"), right=SearchSimple(name="FLAGGED")
    )
    assert criteria(b"(SEEN)") == SearchAnd(keys=(SearchSimple(name="SEEN"),))


def test_search_program_structure() -> None:
    assert criteria(b'FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"') == SearchAnd(
        keys=(
            SearchSimple(name="FLAGGED"),
            SearchDate(name="SINCE", date=datetime.date(1994, 2, 1)),
            SearchNot(key=SearchText(name="FROM", value="Smith")),
        )
    )
    assert criteria(b"OR OR FROM a FROM b (TO c UNSEEN)") == SearchOr(
        left=SearchOr(
            left=SearchText(name="FROM", value="a"), right=SearchText(name="FROM", value="b")
        ),
        right=SearchAnd(keys=(SearchText(name="TO", value="c"), SearchSimple(name="UNSEEN"))),
    )


def test_search_charset_and_return() -> None:
    event = one(b"a UID SEARCH RETURN (MIN count) CHARSET utf-8 SUBJECT {6+}\r\n\xc3\xa4rger\r\n")
    assert event == Search(
        tag="a",
        uid=True,
        charset="UTF-8",
        criteria=SearchText(name="SUBJECT", value="ärger"),
        return_options=("MIN", "COUNT"),
    )
    assert one(b"a SEARCH RETURN () ALL\r\n").return_options == ()
    assert one(b"a SEARCH ALL\r\n").return_options is None
    latin = one(b'a SEARCH CHARSET ISO-8859-1 BODY "\xe4"\r\n')
    assert latin.criteria == SearchText(name="BODY", value="ä")
    refused = one(b"a SEARCH CHARSET X-NOPE BODY x\r\n")
    assert isinstance(refused, InvalidCommand)
    assert refused.reply_hint.status == "NO"
    assert refused.reply_hint.code is not None
    assert refused.reply_hint.code.name == "BADCHARSET"
    for bad in [
        b"a SEARCH",
        b"a SEARCH BOGUS",
        b"a SEARCH FROM",
        b"a SEARCH OR SEEN",
        b"a SEARCH (SEEN",
        b"a SEARCH ()",
        b"a SEARCH SINCE 31-Feb-2024",
        b"a SEARCH SINCE 1-Foo-2024",
        b"a SEARCH LARGER x",
        b"a SEARCH KEYWORD \\Seen",
        b"a SEARCH HEADER a:b x",
        b"a SEARCH RETURN (BOGUS) ALL",
        b"a SEARCH CHARSET UTF-8 BODY \xff",
        b'a SEARCH CHARSET UTF-8 BODY "\xff"',
    ]:
        assert isinstance(one(bad + b"\r\n"), InvalidCommand), bad


def test_deep_nesting_is_refused_not_a_crash() -> None:
    deep = b"a SEARCH " + b"NOT " * 5000 + b"ALL\r\n"
    assert isinstance(one(deep), InvalidCommand)
    parens = b"a SEARCH " + b"(" * 5000 + b"ALL" + b")" * 5000 + b"\r\n"
    assert isinstance(one(parens), InvalidCommand)
    ors = b"a SEARCH " + b"OR " * 60 + b"ALL " * 61
    assert isinstance(one(ors.rstrip() + b"\r\n"), Search)


# --- state and unknown commands ------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "state"),
    [
        (b"a SELECT INBOX", "not-authenticated"),
        (b"a FETCH 1 FLAGS", "authenticated"),
        (b"a LOGIN a b", "authenticated"),
        (b"a AUTHENTICATE PLAIN", "selected"),
        (b"a ENABLE IMAP4rev2", "selected"),
        (b"a STARTTLS", "authenticated"),
        (b"a EXPUNGE", "not-authenticated"),
    ],
)
def test_commands_in_the_wrong_state_are_bad(line: bytes, state: str) -> None:
    event = one(line + b"\r\n", state)
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint.status == "BAD"
    assert "not valid" in event.reason


def test_unknown_commands_are_bad_and_the_session_goes_on() -> None:
    conn = server("selected")
    events, out, error, _ = run(
        [b'a SETACL INBOX bob lr\r\nb XLIST "" *\r\nc NOOP\r\n'], conn=conn, eof=False
    )
    assert error is None
    assert out == b"a BAD unknown command\r\nb BAD unknown command\r\nc OK done\r\n"
    assert events[-1] == Noop(tag="c")
