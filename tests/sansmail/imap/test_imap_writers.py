"""Response serialisation byte for byte: quoted vs literal, mailbox encodings, response
codes, FETCH names, literal8, continuations, and what the writer refuses."""

from __future__ import annotations

import datetime

import pytest

from sansmail import LocalProtocolError
from sansmail.imap import (
    Atom,
    Continuation,
    FetchResponse,
    Literal,
    MailboxName,
    ResponseCode,
    SequenceSet,
    Tagged,
    Untagged,
    UntaggedStatus,
    format_date,
    format_datetime,
)
from sansmail.imap._writers import MAX_QUOTED, write_response, write_value


def w(event: object, *, utf8: bool = False) -> bytes:
    return write_response(event, utf8=utf8)  # type: ignore[arg-type]


def data(value: object, *, utf8: bool = False) -> bytes:
    line = w(Untagged(keyword="X", data=(value,)), utf8=utf8)  # type: ignore[arg-type]
    assert line.startswith(b"* X ")
    assert line.endswith(b"\r\n")
    return line[4:-2]


def test_status_responses_and_codes() -> None:
    assert w(Tagged(tag="a1", status="OK", text="done")) == b"a1 OK done\r\n"
    assert w(Tagged(tag="a1", status="NO", code=ResponseCode(name="TRYCREATE"), text="no")) == (
        b"a1 NO [TRYCREATE] no\r\n"
    )
    assert w(
        UntaggedStatus(
            status="OK", code=ResponseCode(name="UIDVALIDITY", data=(3857529045,)), text="x"
        )
    ) == (b"* OK [UIDVALIDITY 3857529045] x\r\n")
    flags = ResponseCode.permanentflags(["\\Deleted", "\\Seen", "\\*"])
    assert w(UntaggedStatus(status="OK", code=flags, text="Limited")) == (
        b"* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n"
    )
    assert w(
        Tagged(
            tag="A003",
            status="OK",
            code=ResponseCode.appenduid(38505, 3955),
            text="APPEND completed",
        )
    ) == (b"A003 OK [APPENDUID 38505 3955] APPEND completed\r\n")
    copy = ResponseCode.copyuid(
        38505, SequenceSet.parse("304,319:320"), SequenceSet.of(3956, 3957, 3958)
    )
    assert w(Tagged(tag="A004", status="OK", code=copy, text="Done")) == (
        b"A004 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n"
    )
    caps = ResponseCode.capability(["IMAP4rev1", "AUTH=PLAIN"])
    assert w(UntaggedStatus(status="PREAUTH", code=caps, text="hi")) == (
        b"* PREAUTH [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n"
    )
    badcharset = ResponseCode(name="BADCHARSET", data=([Atom("UTF-8"), Atom("US-ASCII")],))
    assert w(Tagged(tag="a", status="NO", code=badcharset, text="x")) == (
        b"a NO [BADCHARSET (UTF-8 US-ASCII)] x\r\n"
    )
    assert w(UntaggedStatus(status="BYE", text="Autologout; idle for too long")) == (
        b"* BYE Autologout; idle for too long\r\n"
    )
    referral = ResponseCode(name="REFERRAL", data=(b"imap://a/b",))
    assert (
        w(Tagged(tag="a", status="NO", code=referral, text="x"))
        == b'a NO [REFERRAL "imap://a/b"] x\r\n'
    )


def test_codes_refuse_what_would_break_the_brackets() -> None:
    for bad in [
        ResponseCode(name="X", data=(Literal(b"x"),)),
        ResponseCode(name="X", data=(b"a\r\nb",)),
        ResponseCode(name="X", data=(Atom("a]b"),)),
        ResponseCode(name="X", data=(b"x" * (MAX_QUOTED + 1),)),
    ]:
        with pytest.raises(LocalProtocolError):
            w(Tagged(tag="a", status="OK", code=bad, text="x"))


def test_status_text_is_validated() -> None:
    for text in ["", "a\r\nb OK fake", "[ALERT] not a code", "nul\0"]:
        with pytest.raises(ValueError, match="text"):
            Tagged(tag="a", status="OK", text=text)
    with pytest.raises(ValueError, match="tag"):
        Tagged(tag="a b", status="OK", text="x")
    with pytest.raises(ValueError, match="status"):
        Tagged(tag="a", status="BYE", text="x")  # type: ignore[arg-type]
    assert w(Tagged(tag="a", status="OK", code=ResponseCode(name="ALERT"), text="[x]")) == (
        b"a OK [ALERT] [x]\r\n"
    )
    assert w(Tagged(tag="a", status="OK", text="Grüße")) == "a OK Grüße\r\n".encode()


def test_strings_quoted_when_safe() -> None:
    assert data(b"hello world") == b'"hello world"'
    assert data(b'say "hi" \\o/') == b'"say \\"hi\\" \\\\o/"'
    assert data(b"") == b'""'
    assert data(b"NIL") == b'"NIL"'
    assert data("text") == b'"text"'
    assert data(None) == b"NIL"
    assert data(0) == b"0"
    assert data(2**63 - 1) == b"9223372036854775807"
    assert data(Atom("\\Seen")) == b"\\Seen"
    assert data([Atom("a"), [1, None], ()]) == b"(a (1 NIL) ())"


def test_strings_that_need_a_literal() -> None:
    assert data(b"a\r\nb") == b"{4}\r\na\r\nb"
    assert data(b"a\nb") == b"{3}\r\na\nb"
    assert data(b"\0") == b"{1}\r\n\0"
    assert data("Grüße".encode()) == b"{7}\r\nGr\xc3\xbc\xc3\x9fe"
    assert data("Grüße".encode(), utf8=True) == '"Grüße"'.encode()
    assert data(b"\xff", utf8=True) == b"{1}\r\n\xff"
    assert data(b"x" * MAX_QUOTED) == b'"' + b"x" * MAX_QUOTED + b'"'
    assert data(b"x" * (MAX_QUOTED + 1)) == b"{1025}\r\n" + b"x" * (MAX_QUOTED + 1)
    assert data(Literal(b"short")) == b"{5}\r\nshort"


def test_mailbox_names_follow_the_session_encoding() -> None:
    assert data(MailboxName("INBOX")) == b'"INBOX"'
    assert data(MailboxName("~peter/mail/台北/日本語")) == b'"~peter/mail/&U,BTFw-/&ZeVnLIqe-"'
    assert data(MailboxName("a&b")) == b'"a&-b"'
    assert data(MailboxName("台北"), utf8=True) == '"台北"'.encode()
    assert data(MailboxName('say "x"')) == b'"say \\"x\\""'
    with pytest.raises(LocalProtocolError):
        data(MailboxName("\ud800"))


def test_numbers_out_of_range_and_non_values() -> None:
    for bad in [2**63, True, 1.5, {"a": 1}]:
        with pytest.raises((LocalProtocolError, ValueError, TypeError)):
            data(bad)


def test_fetch_response() -> None:
    event = FetchResponse(
        number=12,
        items=(
            ("FLAGS", [Atom("\\Seen")]),
            ("UID", 4827313),
            (
                "INTERNALDATE",
                format_datetime(
                    datetime.datetime(
                        1996,
                        7,
                        17,
                        2,
                        44,
                        25,
                        tzinfo=datetime.timezone(datetime.timedelta(hours=-7)),
                    )
                ),
            ),
            ("RFC822.SIZE", 44827),
            ("BODY[HEADER.FIELDS (From)]<0>", b"From: a\r\n\r\n"),
            ("BODY[1.MIME]", None),
            ("BINARY[2]", b"\x00\x01"),
            ("BINARY[3]", b"plain"),
            ("BINARY.SIZE[2]", 2),
        ),
    )
    assert w(event) == (
        b'* 12 FETCH (FLAGS (\\Seen) UID 4827313 INTERNALDATE "17-Jul-1996 02:44:25 -0700" '
        b"RFC822.SIZE 44827 BODY[HEADER.FIELDS (From)]<0> {11}\r\nFrom: a\r\n\r\n "
        b'BODY[1.MIME] NIL BINARY[2] ~{2}\r\n\x00\x01 BINARY[3] "plain" BINARY.SIZE[2] 2)\r\n'
    )
    for items in [(), (("flags", 1),), (("FLAGS\r\n", 1),), (("A B", 1),)]:
        with pytest.raises(ValueError, match="items"):
            FetchResponse(number=1, items=items)  # type: ignore[arg-type]


def test_untagged_helpers() -> None:
    assert w(Untagged.exists(23)) == b"* 23 EXISTS\r\n"
    assert w(Untagged.recent(5)) == b"* 5 RECENT\r\n"
    assert w(Untagged.expunge(3)) == b"* 3 EXPUNGE\r\n"
    assert w(Untagged.flags(["\\Answered", "$Junk"])) == b"* FLAGS (\\Answered $Junk)\r\n"
    assert w(Untagged.search([2, 3, 6])) == b"* SEARCH 2 3 6\r\n"
    assert w(Untagged.search([])) == b"* SEARCH\r\n"
    assert w(Untagged.esearch(tag="A282", uid=True, results=[("MIN", 2), ("COUNT", 3)])) == (
        b'* ESEARCH (TAG "A282") UID MIN 2 COUNT 3\r\n'
    )
    assert w(
        Untagged.esearch(tag=None, uid=False, results=[("ALL", SequenceSet.parse("1:3,5"))])
    ) == (b"* ESEARCH ALL 1:3,5\r\n")
    with pytest.raises(ValueError, match="ESEARCH"):
        Untagged.esearch(tag=None, uid=False, results=[("bad name", 1)])
    assert w(
        Untagged.mailbox_list(attributes=["\\Noselect"], delimiter="/", mailbox="~/Mail/foo")
    ) == (b'* LIST (\\Noselect) "/" "~/Mail/foo"\r\n')
    assert w(Untagged.mailbox_list(attributes=[], delimiter=None, mailbox="x", lsub=True)) == (
        b'* LSUB () NIL "x"\r\n'
    )
    assert w(Untagged.mailbox_list(attributes=[], delimiter="\\", mailbox="x")) == (
        b'* LIST () "\\\\" "x"\r\n'
    )
    extended = Untagged.mailbox_list(
        attributes=["\\Subscribed"],
        delimiter="/",
        mailbox="Foo",
        extended=[b"CHILDINFO", [b"SUBSCRIBED"]],
    )
    assert w(extended) == b'* LIST (\\Subscribed) "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))\r\n'
    assert w(
        Untagged.status(mailbox="blurdybloop", items=[("MESSAGES", 231), ("UIDNEXT", 44292)])
    ) == (b'* STATUS "blurdybloop" (MESSAGES 231 UIDNEXT 44292)\r\n')
    assert w(Untagged.id([("name", "sansmail"), ("version", None)])) == (
        b'* ID ("name" "sansmail" "version" NIL)\r\n'
    )
    assert w(Untagged.id(None)) == b"* ID NIL\r\n"
    assert w(Untagged.namespace(personal=[("", "/")])) == b'* NAMESPACE (("" "/")) NIL NIL\r\n'
    assert w(Untagged.capability(["IMAP4rev2"])) == b"* CAPABILITY IMAP4rev2\r\n"
    assert w(Untagged.enabled(["UTF8=ACCEPT"])) == b"* ENABLED UTF8=ACCEPT\r\n"
    for bad in [{"keyword": "exists"}, {"keyword": "A B"}, {"keyword": "X", "number": -1}]:
        with pytest.raises(ValueError, match=r"keyword|number"):
            Untagged(**bad)  # type: ignore[arg-type]


def test_continuations() -> None:
    assert w(Continuation(text="Ready for additional command text")) == (
        b"+ Ready for additional command text\r\n"
    )
    assert w(Continuation()) == b"+ \r\n"
    assert w(Continuation(data=b"\x00\xff")) == b"+ AP8=\r\n"
    with pytest.raises(ValueError, match="not both"):
        Continuation(text="x", data=b"y")


def test_dates() -> None:
    tz = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    assert (
        format_datetime(datetime.datetime(2024, 3, 7, 9, 5, 1, tzinfo=tz))
        == " 7-Mar-2024 09:05:01 +0530"
    )
    assert format_datetime(datetime.datetime(2024, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)) == (
        "31-Dec-2024 23:59:59 +0000"
    )
    with pytest.raises(ValueError, match="time zone"):
        format_datetime(datetime.datetime(2024, 1, 1))
    assert format_date(datetime.date(1994, 2, 1)) == "1-Feb-1994"


def test_bodies_and_addresses_are_written_without_sp_between_them() -> None:
    # RFC 9051 §9: body-type-mpart = 1*body SP media-subtype; env-from = "(" 1*address ")".
    buf = bytearray()
    write_value(buf, ([(b"a", b"b"), (b"c", b"d")], ((b"1",), (b"2",), b"MIXED")), utf8=False)
    assert bytes(buf) == b'((("a" "b")("c" "d")) (("1")("2") "MIXED"))'
