"""The client core against a milter nobody here wrote: python-libmilter (a pure-Python
reimplementation of libmilter, LGPL, a test-only dependency) serving one connection on
127.0.0.1 in a thread, driven by a few lines of blocking socket code (the core stays
sans-I/O). It negotiates, leaves some steps unanswered (its @noReply callbacks set
SMFIP_NR_*), refuses a recipient, and at end of message makes every modification it
knows."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sansmail import NEED_DATA, PAUSED, RemoteProtocolError
from sansmail.milter import (
    Action,
    AddHeader,
    AddRecipient,
    Body,
    ChangeHeader,
    ChangeSender,
    Command,
    Connect,
    Connection,
    Continue,
    Data,
    DeleteRecipient,
    EndOfHeaders,
    EndOfMessage,
    Event,
    Family,
    Header,
    Helo,
    Mail,
    Negotiate,
    Negotiated,
    Phase,
    ProtocolFlag,
    Quarantine,
    Quit,
    Rcpt,
    Reject,
    ReplaceBody,
    ReplyCode,
    fold,
)

lm: Any = pytest.importorskip("libmilter")

OPTIONS = (
    lm.SMFIF_ADDHDRS
    | lm.SMFIF_CHGHDRS
    | lm.SMFIF_ADDRCPT
    | lm.SMFIF_DELRCPT
    | lm.SMFIF_CHGFROM
    | lm.SMFIF_CHGBODY
    | lm.SMFIF_QUARANTINE
)


class ThirdPartyMilter(lm.ThreadMixin, lm.MilterProtocol):  # type: ignore[misc]
    def __init__(self, opts: int = 0, protos: int = 0) -> None:
        lm.MilterProtocol.__init__(self, opts, protos)
        lm.ThreadMixin.__init__(self)
        self.calls: list[tuple[str, object]] = []
        self.double_verdict = False

    @lm.noReply  # type: ignore[misc]
    def connect(self, hostname: bytes, family: bytes, ip: bytes, port: int, md: object) -> bytes:
        self.calls.append(("connect", (hostname, family, ip, port)))
        return bytes(lm.CONTINUE)

    def helo(self, heloname: bytes) -> bytes:
        self.calls.append(("helo", heloname))
        return bytes(lm.CONTINUE)

    def mailFrom(self, frAddr: bytes, md: object) -> bytes:  # noqa: N803
        self.calls.append(("mail", frAddr))
        return bytes(lm.CONTINUE)

    def rcpt(self, recip: bytes, md: object) -> bytes:
        self.calls.append(("rcpt", recip))
        if b"spamtrap" in recip:
            return bytes(lm.REJECT)
        return bytes(lm.CONTINUE)

    @lm.noReply  # type: ignore[misc]
    def header(self, key: bytes, val: bytes, md: object) -> bytes:
        self.calls.append(("header", (key, val)))
        return bytes(lm.CONTINUE)

    def eoh(self, md: object) -> bytes:
        return bytes(lm.CONTINUE)

    def data(self, md: object) -> bytes:
        return bytes(lm.CONTINUE)

    def body(self, chunk: bytes, md: object) -> bytes:
        self.calls.append(("body", chunk))
        return bytes(lm.CONTINUE)

    def eob(self, md: object) -> bytes:
        self.addHeader(b"X-Milter", b"seen")
        self.chgHeader(b"Subject", b"[tagged] hello", 1)
        self.addRcpt(b"<copy@example.net>")
        self.delRcpt(b"<bob@example.net>")
        self.chgFrom(b"<bounces@example.org>")
        self.replBody(b"replaced\r\n")
        self.quarantine(b"held for review")
        if self.double_verdict:
            # python-libmilter sends SMFIR_REPLYCODE at once, and then CONTINUE for the
            # callback's empty return: two verdicts.
            self.setReply(b"550", b"5.7.1", b"not this time")
            return b""
        reply = lm.SMFIR_REPLYCODE + b"550 5.7.1 not this time\0"
        return bytes(lm.pack_uint32(len(reply))) + reply

    def close(self) -> None:
        self.calls.append(("close", None))


@pytest.fixture
def milter_socket() -> Iterator[tuple[socket.socket, list[ThirdPartyMilter]]]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    milters: list[ThirdPartyMilter] = []
    accepted: list[socket.socket] = []

    def serve() -> None:
        sock, _ = listener.accept()
        sock.settimeout(10)
        accepted.append(sock)
        milter = ThirdPartyMilter(OPTIONS)
        milter.transport = sock
        milters.append(milter)
        milter.run()  # ThreadMixin.run: recv, dataReceived, until EOF

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = socket.create_connection(listener.getsockname(), timeout=10)
    try:
        yield client, milters
    finally:
        client.close()
        thread.join(10)
        listener.close()
        for sock in accepted:
            sock.close()  # python-libmilter drops its socket without closing it


def to_end_of_message(conn: Connection, sock: socket.socket) -> None:
    [negotiated] = exchange(conn, sock, Negotiate())
    assert isinstance(negotiated, Negotiated)
    connect = Connect(
        hostname="client.example", family=Family.INET, port=40000, address="192.0.2.7"
    )
    for command in (connect, Helo(name="h"), Mail(sender="<a@b>"), Rcpt(recipient="<c@d>")):
        exchange(conn, sock, command)
    for command in (Data(), EndOfHeaders(), Body(data=b"x\r\n")):
        exchange(conn, sock, command)


def exchange(conn: Connection, sock: socket.socket, command: Command) -> list[Event]:
    """The blocking driver: write the command, read until no reply is owed."""
    sock.sendall(conn.send(command))
    events: list[Event] = []
    while conn.awaiting is not None:
        event = conn.next_event()
        if event is NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif event is not PAUSED:
            assert isinstance(event, Event)
            events.append(event)
    return events


def test_a_conversation_with_python_libmilter(
    milter_socket: tuple[socket.socket, list[ThirdPartyMilter]],
) -> None:
    sock, milters = milter_socket
    conn = Connection()
    [negotiated] = exchange(conn, sock, Negotiate())
    assert isinstance(negotiated, Negotiated)
    assert negotiated.version == 6
    assert negotiated.actions == Action(OPTIONS)
    # Its @noReply callbacks, and it never wants unknown commands.
    assert negotiated.protocol == (
        ProtocolFlag.NR_CONN | ProtocolFlag.NR_HDR | ProtocolFlag.NOUNKNOWN
    )
    assert (negotiated.unoffered_actions, negotiated.unoffered_protocol) == (0, 0)

    connect = Connect(
        hostname="client.example", family=Family.INET, port=40000, address="192.0.2.7"
    )
    assert exchange(conn, sock, connect) == []  # @noReply
    assert exchange(conn, sock, Helo(name="client.example")) == [Continue()]
    assert exchange(conn, sock, Mail(sender="<alice@example.org>")) == [Continue()]
    assert exchange(conn, sock, Rcpt(recipient="<spamtrap@example.net>")) == [Reject()]
    assert exchange(conn, sock, Rcpt(recipient="<bob@example.net>")) == [Continue()]
    assert exchange(conn, sock, Data()) == [Continue()]
    assert exchange(conn, sock, Header(name="Subject", value="hello")) == []
    assert exchange(conn, sock, EndOfHeaders()) == [Continue()]
    assert exchange(conn, sock, Body(data=b"Hi Bob\r\n")) == [Continue()]
    events = exchange(conn, sock, EndOfMessage())
    assert events == [
        AddHeader(name="X-Milter", value="seen"),
        ChangeHeader(index=1, name="Subject", value="[tagged] hello"),
        AddRecipient(recipient="<copy@example.net>"),
        DeleteRecipient(recipient="<bob@example.net>"),
        # python-libmilter always sends the (empty) parameters string.
        ChangeSender(sender="<bounces@example.org>", parameters=""),
        ReplaceBody(data=b"replaced\r\n"),
        Quarantine(reason="held for review"),
        ReplyCode(code=550, lines=("5.7.1 not this time",)),
    ]
    outcome = fold(events)
    assert not outcome.delivers
    assert outcome.body == b"replaced\r\n"
    assert outcome.quarantine == "held for review"

    sock.sendall(conn.send(Quit()))
    assert conn.phase is Phase.CLOSED
    assert conn.next_event() is PAUSED
    # (python-libmilter never closes its end: it drops the socket at QUIT.)
    sock.shutdown(socket.SHUT_WR)

    [milter] = milters
    assert milter.calls[:2] == [
        ("connect", (b"client.example", b"4", b"192.0.2.7", 40000)),
        ("helo", b"client.example"),
    ]
    assert ("header", (b"Subject", b"hello")) in milter.calls
    assert ("body", b"Hi Bob\r\n") in milter.calls


def test_a_second_verdict_is_refused(
    milter_socket: tuple[socket.socket, list[ThirdPartyMilter]],
) -> None:
    sock, milters = milter_socket
    conn = Connection()
    to_end_of_message(conn, sock)
    milters[0].double_verdict = True
    events = exchange(conn, sock, EndOfMessage())
    assert events[-1] == ReplyCode(code=550, lines=("5.7.1 not this time",))
    # The CONTINUE that follows arrives when nothing is owed: the milter is broken.
    with pytest.raises(RemoteProtocolError, match="no reply was owed"):
        read_on(conn, sock)


def read_on(conn: Connection, sock: socket.socket) -> Event:
    """Read what the milter sends when no reply is owed (the core says PAUSED then)."""
    while (event := conn.next_event()) is PAUSED:
        conn.receive_data(sock.recv(65536))
    assert isinstance(event, Event)
    return event
