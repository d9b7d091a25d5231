"""Client sessions: Python's imaplib driving the core over a socket pair, and byte
transcripts of the commands Thunderbird, Apple Mail (iOS) and mutt-like clients send at
startup and when reading, filing and deleting mail."""

from __future__ import annotations

import datetime
import imaplib
import socket
import threading

from imap_helpers import commands, run, server

from sansmail import NEED_DATA, PAUSED, SERVER
from sansmail.imap import (
    Append,
    Atom,
    Authenticate,
    AuthResponse,
    BodySection,
    Capability,
    Close,
    Command,
    Connection,
    ConnectionClosed,
    Continuation,
    Copy,
    Enable,
    Event,
    Expunge,
    Fetch,
    FetchAttribute,
    FetchResponse,
    GetQuotaRoot,
    Id,
    Idle,
    IdleDone,
    InvalidCommand,
    List,
    LiteralRequested,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    Response,
    ResponseCode,
    Search,
    SearchAnd,
    SearchKey,
    SearchNot,
    SearchSequence,
    SearchSimple,
    Section,
    Select,
    SequenceSet,
    Status,
    Store,
    Tagged,
    Untagged,
    UntaggedStatus,
    format_datetime,
)

MESSAGE = b"From: alice@example.test\r\nSubject: hello\r\n\r\nHi Bob,\r\nsee you.\r\n"
CAPS = ["IMAP4rev1", "IMAP4rev2", "LITERAL+", "ENABLE", "UIDPLUS", "MOVE", "UTF8=ACCEPT", "IDLE"]


class Mailbox:
    """Just enough of a mail store to answer imaplib."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, bytes, set[str]]] = [(1, MESSAGE, set())]
        self.next_uid = 2
        self.received: list[Event] = []

    def answer(self, conn: Connection, event: Event) -> list[Response]:
        self.received.append(event)
        if isinstance(event, LiteralRequested):
            return [Continuation(text="go ahead")]
        if isinstance(event, InvalidCommand):
            return [event.reply_hint]
        if isinstance(event, ConnectionClosed):
            return []
        assert not isinstance(event, IdleDone)
        tag = getattr(event, "tag", "")
        ok = Tagged(tag=tag, status="OK", text=f"{type(event).__name__} completed")
        if isinstance(event, Capability):
            return [Untagged.capability(CAPS), ok]
        if isinstance(event, Logout):
            return [UntaggedStatus(status="BYE", text="logging out"), ok]
        if isinstance(event, Enable):
            return [Untagged.enabled([c for c in event.capabilities if c == "UTF8=ACCEPT"]), ok]
        if isinstance(event, Select):
            return [
                Untagged.flags(["\\Seen", "\\Deleted"]),
                Untagged.exists(len(self.messages)),
                UntaggedStatus(
                    status="OK", code=ResponseCode(name="UIDVALIDITY", data=(7,)), text="v"
                ),
                UntaggedStatus(
                    status="OK", code=ResponseCode(name="UIDNEXT", data=(self.next_uid,)), text="n"
                ),
                Tagged(tag=tag, status="OK", code=ResponseCode(name="READ-WRITE"), text="selected"),
            ]
        if isinstance(event, List):
            return [
                Untagged.mailbox_list(
                    attributes=["\\HasNoChildren"], delimiter="/", mailbox="Entwürfe"
                ),
                ok,
            ]
        if isinstance(event, Status):
            items = [("MESSAGES", len(self.messages)), ("UIDNEXT", self.next_uid)]
            return [Untagged.status(mailbox=event.mailbox, items=items), ok]
        if isinstance(event, Search):
            return [Untagged.search(range(1, len(self.messages) + 1)), ok]
        if isinstance(event, Fetch):
            return [*self.fetch(event), ok]
        if isinstance(event, Store):
            answers: list[Response] = []
            for number in self.numbers(event.sequence_set, event.uid):
                flags = self.messages[number - 1][2]
                if event.mode == "add":
                    flags.update(event.flags)
                elif event.mode == "remove":
                    flags.difference_update(event.flags)
                else:
                    flags.clear()
                    flags.update(event.flags)
                if not event.silent:
                    answers.append(
                        FetchResponse(
                            number=number, items=(("FLAGS", [Atom(f) for f in sorted(flags)]),)
                        )
                    )
            return [*answers, ok]
        if isinstance(event, Expunge):
            gone = [n for n, (_u, _m, f) in enumerate(self.messages, 1) if "\\Deleted" in f]
            for number in reversed(gone):
                del self.messages[number - 1]
            return [*(Untagged.expunge(n) for n in reversed(gone)), ok]
        if isinstance(event, Append):
            self.messages.append((self.next_uid, event.message, set(event.flags)))
            self.next_uid += 1
            code = ResponseCode.appenduid(7, self.next_uid - 1)
            return [Tagged(tag=tag, status="OK", code=code, text="appended")]
        return [ok]

    def numbers(self, sequence_set: SequenceSet, uid: bool) -> list[int]:
        if uid:
            uids = {u for span in sequence_set.resolve(self.messages[-1][0]) for u in span}
            return [n for n, (u, _m, _f) in enumerate(self.messages, 1) if u in uids]
        return [n for span in sequence_set.resolve(len(self.messages)) for n in span]

    def fetch(self, event: Fetch) -> list[Response]:
        answers: list[Response] = []
        for number in self.numbers(event.sequence_set, event.uid):
            uid, message, flags = self.messages[number - 1]
            items: list[tuple[str, object]] = [("UID", uid)] if event.uid else []
            for item in event.items:
                if isinstance(item, FetchAttribute) and item.name == "FLAGS":
                    items.append(("FLAGS", [Atom(f) for f in sorted(flags)]))
                elif isinstance(item, FetchAttribute) and item.name == "RFC822":
                    items.append(("RFC822", message))
                elif isinstance(item, FetchAttribute) and item.name == "RFC822.SIZE":
                    items.append(("RFC822.SIZE", len(message)))
                elif isinstance(item, FetchAttribute) and item.name == "INTERNALDATE":
                    moment = datetime.datetime(2024, 7, 1, 12, 0, tzinfo=datetime.UTC)
                    items.append(("INTERNALDATE", format_datetime(moment)))
                elif isinstance(item, BodySection) and not item.section.part:
                    items.append((item.response_name, message))
            answers.append(FetchResponse(number=number, items=tuple(items)))  # type: ignore[arg-type]
        return answers


def serve(sock: socket.socket, mailbox: Mailbox) -> None:
    conn = Connection(SERVER)
    sock.sendall(
        conn.send(UntaggedStatus(status="OK", code=ResponseCode.capability(CAPS), text="ready"))
    )
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            data = sock.recv(65536)
            conn.receive_data(data)
            continue
        if event is PAUSED:
            return  # LOGOUT answered
        for response in mailbox.answer(conn, event):  # type: ignore[arg-type]
            try:
                sock.sendall(conn.send(response))
            except BrokenPipeError:
                # imaplib closes as soon as it sees the BYE of LOGOUT, before the OK.
                assert isinstance(event, Logout)
                return
        if isinstance(event, ConnectionClosed):
            return


class PairIMAP4(imaplib.IMAP4):
    """imaplib over one end of a socket pair instead of a TCP connection."""

    def __init__(self, sock: socket.socket) -> None:
        self._pair_socket = sock
        super().__init__("socketpair")

    def open(self, host: str = "", port: int = 143, timeout: float | None = None) -> None:
        self.host = host
        self.port = port
        self.sock = self._pair_socket
        self.file = self.sock.makefile("rb")


def test_imaplib_session() -> None:
    client_end, server_end = socket.socketpair()
    client_end.settimeout(10)
    server_end.settimeout(10)
    mailbox = Mailbox()
    thread = threading.Thread(target=serve, args=(server_end, mailbox), daemon=True)
    thread.start()
    imap: PairIMAP4 | None = None
    try:
        imap = PairIMAP4(client_end)
        assert "UIDPLUS" in imap.capabilities
        assert imap.login("fred", 'se"cret pass')[0] == "OK"
        assert imap.select("INBOX") == ("OK", [b"1"])
        assert imap.search(None, "ALL") == ("OK", [b"1"])
        typ, data = imap.fetch("1", "(RFC822 FLAGS)")
        assert typ == "OK"
        assert data[0][1] == MESSAGE  # type: ignore[index]
        when = imaplib.Time2Internaldate(datetime.datetime(2024, 7, 1, 12, 0, tzinfo=datetime.UTC))
        assert imap.append("INBOX", "(\\Seen)", when, b"Subject: two\r\n\r\nbody\r\n")[0] == "OK"
        typ, data = imap.uid("FETCH", "1:*", "(FLAGS RFC822.SIZE)")
        assert typ == "OK"
        assert len(data) == 2
        assert imap.store("1", "+FLAGS", "\\Deleted")[0] == "OK"
        assert imap.expunge() == ("OK", [b"1"])
        assert imap.status("INBOX", "(MESSAGES UIDNEXT)")[0] == "OK"
        assert imap.list()[1] == [b'(\\HasNoChildren) "/" "Entw&APw-rfe"']
        assert imap.unselect()[0] == "OK"
        assert imap.enable("UTF8=ACCEPT")[0] == "OK"
        assert imap.list()[1] == ['(\\HasNoChildren) "/" "Entwürfe"'.encode()]
        assert imap.noop()[0] == "OK"
        assert imap.logout()[0] == "BYE"
    finally:
        if imap is not None and not imap.file.closed:
            imap.shutdown()
        client_end.close()
        thread.join(10)
        server_end.close()
    received = commands(mailbox.received)
    kinds = [type(e).__name__ for e in received]
    assert kinds == [
        "Capability",
        "Login",
        "Select",
        "Search",
        "Fetch",
        "Append",
        "Fetch",
        "Store",
        "Expunge",
        "Status",
        "List",
        "Unselect",
        "Enable",
        "List",
        "Noop",
        "Logout",
    ]
    assert received[1] == Login(tag=received[1].tag, userid="fred", password='se"cret pass')  # type: ignore[attr-defined]
    append = received[5]
    assert isinstance(append, Append)
    assert append.flags == ("\\Seen",)
    assert append.date == datetime.datetime(2024, 7, 1, 12, 0, tzinfo=datetime.UTC)
    assert append.message == b"Subject: two\r\n\r\nbody\r\n"
    assert any(isinstance(e, LiteralRequested) for e in mailbox.received)  # imaplib waits for "+"


# --- byte transcripts -----------------------------------------------------------------------


def test_thunderbird_like_startup() -> None:
    # Thunderbird numbers its tags and writes commands in lower case.
    script = (
        b"1 capability\r\n"
        b"2 authenticate PLAIN\r\n"
        b"AGZyZWQAc2VjcmV0\r\n"
        b'3 ID ("name" "Thunderbird" "version" "115.3.1")\r\n'
        b"4 enable UTF8=ACCEPT\r\n"
        b'5 list (SUBSCRIBED) "" "*"\r\n'
        b'6 list (SPECIAL-USE) "" "*"\r\n'
        b'7 select "INBOX" (CONDSTORE)\r\n'
        b"8 UID fetch 1:* (FLAGS)\r\n"
        b"9 UID fetch 4:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc "
        b"Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To "
        b"Content-Type Reply-To)])\r\n"
        b"10 IDLE\r\n"
        b"DONE\r\n"
        b"11 UID fetch 4 (UID RFC822.SIZE BODY.PEEK[])\r\n"
        b"12 uid store 4 +Flags (\\Seen)\r\n"
        b'13 uid move 4 "Trash"\r\n'
        b'14 STATUS "Sent" (UIDNEXT MESSAGES UNSEEN RECENT)\r\n'
        b'15 getquotaroot "INBOX"\r\n'
        b"16 noop\r\n"
    )
    events, out, error, _ = run([script])
    assert error is None
    got = commands(events)
    by_tag = {e.tag: e for e in got if isinstance(e, Command)}
    assert by_tag["1"] == Capability(tag="1")
    assert by_tag["2"] == Authenticate(tag="2", mechanism="PLAIN")
    assert got[2] == AuthResponse(data=b"\0fred\0secret")
    assert by_tag["3"] == Id(tag="3", params=(("name", "Thunderbird"), ("version", "115.3.1")))
    assert by_tag["4"] == Enable(tag="4", capabilities=("UTF8=ACCEPT",))
    assert by_tag["5"] == List(tag="5", reference="", patterns=("*",), selection=("SUBSCRIBED",))
    assert by_tag["6"] == List(tag="6", reference="", patterns=("*",), selection=("SPECIAL-USE",))
    assert by_tag["7"] == Select(tag="7", mailbox="INBOX", parameters=(("CONDSTORE", None),))
    assert by_tag["8"] == Fetch(
        tag="8",
        uid=True,
        sequence_set=SequenceSet.parse("1:*"),
        items=(FetchAttribute(name="FLAGS"),),
    )
    headers = by_tag["9"]
    assert isinstance(headers, Fetch)
    assert headers.uid
    peek = headers.items[3]
    assert isinstance(peek, BodySection)
    assert peek.peek
    assert peek.section.fields[:2] == ("From", "To")
    assert len(peek.section.fields) == 14
    assert isinstance(by_tag["10"], Idle)
    assert IdleDone() in got
    assert by_tag["11"].items[2] == BodySection(peek=True)  # type: ignore[attr-defined]
    assert by_tag["12"] == Store(
        tag="12", uid=True, sequence_set=SequenceSet.parse("4"), mode="add", flags=("\\Seen",)
    )
    assert by_tag["13"] == Move(
        tag="13", uid=True, sequence_set=SequenceSet.parse("4"), mailbox="Trash"
    )
    assert by_tag["14"] == Status(
        tag="14", mailbox="Sent", items=("UIDNEXT", "MESSAGES", "UNSEEN", "RECENT")
    )
    assert not [e for e in got if isinstance(e, InvalidCommand)]
    assert by_tag["15"] == GetQuotaRoot(tag="15", mailbox="INBOX")
    assert by_tag["16"] == Noop(tag="16")
    assert b"+ idling\r\n" in out


def test_ios_mail_like_session() -> None:
    script = (
        b"1.1 CAPABILITY\r\n"
        b'2.1 ID ("name" "iPhone Mail" "version" "20B82" "os" "iOS" '
        b'"os-version" "16.1 (20B82)")\r\n'
        b"3.1 AUTHENTICATE PLAIN AGZyZWQAc2VjcmV0\r\n"
        b'4.1 LIST "" ""\r\n'
        b'5.1 LSUB "" "*"\r\n'
        b"6.1 NAMESPACE\r\n"
        b"7.1 SELECT INBOX\r\n"
        b"8.1 UID SEARCH 1:* NOT DELETED\r\n"
        b"9.1 FETCH 1:* (FLAGS UID)\r\n"
        b"10.1 UID FETCH 100 (BODYSTRUCTURE)\r\n"
        b"11.1 UID FETCH 100 (BODY.PEEK[1]<0.4096>)\r\n"
        b"12.1 UID FETCH 1:100 (INTERNALDATE UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS "
        b"(date subject from to cc message-id in-reply-to references content-type x-priority "
        b"x-uniform-type-identifier x-universally-unique-identifier list-id list-unsubscribe)])\r\n"
        b"13.1 UID COPY 100 Archive\r\n"
        b"14.1 EXPUNGE\r\n"
        b"15.1 CLOSE\r\n"
        b"16.1 LOGOUT\r\n"
    )
    events, out, error, conn = run([script])
    assert error is None
    got = commands(events)
    assert got[2] == Authenticate(tag="3.1", mechanism="PLAIN", initial_response=b"\0fred\0secret")
    assert got[3] == List(tag="4.1", reference="", patterns=("",))
    assert got[4] == Lsub(tag="5.1", reference="", pattern="*")
    assert got[5] == Namespace(tag="6.1")
    assert got[7] == Search(
        tag="8.1",
        uid=True,
        criteria=search_and(
            SearchSequence(sequence_set=SequenceSet.parse("1:*")),
            SearchNot(key=SearchSimple(name="DELETED")),
        ),
    )
    assert got[8] == Fetch(
        tag="9.1",
        sequence_set=SequenceSet.parse("1:*"),
        items=(FetchAttribute(name="FLAGS"), FetchAttribute(name="UID")),
    )
    assert got[10].items == (  # type: ignore[attr-defined]
        BodySection(section=Section(part=(1,)), partial=(0, 4096), peek=True),
    )
    assert got[12] == Copy(
        tag="13.1", uid=True, sequence_set=SequenceSet.parse("100"), mailbox="Archive"
    )
    assert got[14] == Close(tag="15.1")
    assert isinstance(got[15], Logout)
    assert out.endswith(b"* BYE bye\r\n16.1 OK done\r\n")
    assert conn.stage.name == "LOGOUT"


def search_and(*keys: SearchKey) -> SearchAnd:
    return SearchAnd(keys=keys)


def test_mutt_like_append_with_synchronizing_literal_and_rev2_session() -> None:
    # A rev2 client: ENABLE IMAP4rev2, then UTF-8 names, ESEARCH-style RETURN, UNSELECT.
    conn = server("authenticated")
    script = (
        b"a1 ENABLE IMAP4rev2\r\n"
        + 'a2 APPEND "Entwürfe" (\\Draft) {9}\r\nSubject: \r\n'.encode()
        + b"a3 SELECT INBOX\r\n"
        b"a4 SEARCH RETURN (COUNT MIN) UNSEEN\r\n"
        b"a5 UNSELECT\r\n"
    )
    events, _out, error, conn = run([script], conn=conn, eof=False)
    assert error is None
    got = commands(events)
    assert conn.imap4rev2
    assert got[1] == Append(tag="a2", mailbox="Entwürfe", flags=("\\Draft",), message=b"Subject: ")
    assert got[3] == Search(
        tag="a4", criteria=SearchSimple(name="UNSEEN"), return_options=("COUNT", "MIN")
    )
    assert conn.stage.name == "AUTHENTICATED"
