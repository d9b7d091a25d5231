"""Turning client bytes into events: command lines, DATA content and BDAT chunks.

Theory of operation
-------------------
Commands. `read_command` gets one command line (CRLF already checked and removed by the
line buffer) and returns the event, or raises `CommandError` carrying the refusal the
RFCs call for. It checks, in this order: the verb; the stage (RFC 5321 §4.1.4, from the
`ALLOWED` and `REFUSALS` tables, so that "RCPT TO:<garbage>" before MAIL is a sequence error, as in
Postfix); the line length; then the arguments. Non-ASCII octets are decoded as UTF-8 only
where RFC 6531 allows them (MAIL and RCPT paths of an SMTPUTF8 transaction, VRFY); MAIL
parameters are accepted only when the extension that defines them was advertised in our
EHLO reply, and the values of those with a grammar of their own are checked (SIZE, BODY,
AUTH=, and DSN's RET, ENVID, NOTIFY and ORCPT, RFC 3461 §4). "MAIL FROM: <a@b>" (a space
after the colon, which RFC 5321 §4.1.2 does not allow) is accepted, as Postfix and most
servers do, because many clients send it.

AUTH (RFC 4954 §4). The AUTH command is read like any other, with two differences: it is
accepted only when our EHLO reply advertised it and the session is not authenticated yet,
and its line may carry up to `Config.max_auth_response` octets of base64 beyond the usual
512. Once the application has sent a 334 challenge, the next line is not a command:
`read_auth_response` turns it into `AuthResponse` (base64, decoded strictly) or
`AuthCancel` ("*").

DATA content (the hot path). After the 354 reply the content runs up to CRLF "." CRLF,
where the CRLF of the DATA command line counts as the first CRLF (RFC 5321 §4.1.1.4), so
".\\r\\n" right away is an empty message. We never look at lines: each call searches the
buffer for the end marker with one `bytes.find`, un-stuffs with one `replace` (a line
that starts with "." lost its first dot, RFC 5321 §4.5.2), and hands the content on.
When the marker has not arrived, everything is emitted except what could still become
part of it or split a CRLF: a trailing CR, or a trailing CRLF "." [CR] whose dot may be
the marker's. A chunk therefore never ends between CR and LF, and the reader remembers
whether the last chunk ended a line so that a dot at the start of the next chunk is
handled as the start of a line. Only CRLF "." CRLF ends the message; "\\n.\\n",
"\\r.\\r\\n", "\\r\\n.\\n", "\\n.\\r\\n" and the rest of the SMTP smuggling family
(CVE-2023-51764) are content.

Content checks (`ContentFilter`, shared by DATA and BDAT) are bulk as well: a bare CR or
LF shows up as a difference between `count(b"\\r")`, `count(b"\\n")` and
`count(b"\\r\\n")`. A bare LF is normalised to CRLF or refuses the message, per
`Config.bare_lf`; for dot-stuffing a bare LF ends a line like CRLF does (as in Postfix's
"normalize"), but it never counts towards the end marker. A bare CR always refuses the
message. Refusing means: emit nothing more, read on to the real end of the content, then
hand out `InvalidMessage` instead of `EndOfMessage`. The same holds for a message over
the size limit or with a line over `Config.max_text_line`.

BDAT chunks are exactly `size` octets with no dot handling (RFC 3030 §2); the content
filter runs over the chunks of one transaction as one stream, so a CRLF split across two
chunks is still a CRLF.

Small reads are gathered: a reader hands out MessageData once it has `_MIN_CHUNK` octets
or the end is in sight, so a client that trickles content does not cost one event per
TCP segment. The end-marker search resumes where the previous one stopped.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

from sansmail._errors import RemoteProtocolError
from sansmail._linebuffer import LineBuffer
from sansmail.mail.address import AddressError, NonASCIIAddressError, read_path
from sansmail.sasl import RemoteSASLError, decode_base64_strict
from sansmail.smtp import _codes
from sansmail.smtp._config import Config
from sansmail.smtp._events import (
    SASL_MECHANISM,
    Auth,
    AuthCancel,
    AuthResponse,
    Bdat,
    Data,
    EndOfChunk,
    EndOfMessage,
    Event,
    Hello,
    Help,
    InvalidMessage,
    Mail,
    MessageData,
    Noop,
    Quit,
    Rcpt,
    Reply,
    Reset,
    StartTLS,
    Verify,
    decode_xtext,
    read_auth_parameter,
)
from sansmail.smtp._state import ALLOWED, REFUSALS, Session

__all__ = [
    "BdatReader",
    "CommandError",
    "ContentFilter",
    "DataReader",
    "read_auth_response",
    "read_command",
    "starts_with_auth",
]

# Gather at least this much content before handing out a MessageData (see above).
_MIN_CHUNK = 8192

# Events without fields are immutable: share one of each.
_DATA = Data()
_RESET = Reset()
_QUIT = Quit()
_STARTTLS = StartTLS()
_END_OF_MESSAGE = EndOfMessage()
_END_OF_CHUNK = EndOfChunk()
_AUTH_CANCEL = AuthCancel()


class CommandError(Exception):
    """A command line the server refuses; the session goes on.

    `skip`: octets that follow the line and must be read and thrown away before the
    refusal is answered (a refused BDAT's chunk). `counted`: whether the refusal counts
    against `Config.max_invalid_commands` (limits such as "too many recipients" do not:
    a correct client can run into them).
    """

    def __init__(self, reason: str, reply: Reply, *, skip: int = 0, counted: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply
        self.skip = skip
        self.counted = counted


# --- Command lines -----------------------------------------------------------------------

# Recognised, never implemented here: RFC 5321 §4.2.4 answers them 502.
_NOT_IMPLEMENTED = frozenset({b"EXPN", b"TURN", b"ETRN", b"SEND", b"SOML", b"SAML"})
# An HTTP request on the SMTP port: cross-protocol attacks use a browser to post SMTP
# commands in a request body. Postfix's smtpd_forbidden_commands default.
_FORBIDDEN = frozenset({b"CONNECT", b"GET", b"POST"})

# RFC 5321 §4.1.2 esmtp-keyword; esmtp-value is %d33-60 / %d62-126, plus UTF-8 in an
# SMTPUTF8 transaction (RFC 6531 §3.3).
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_ESMTP_VALUE = re.compile(r"[!-<>-~\u0080-\U0010ffff]+")

# Parameter keyword -> the extension (EHLO keyword) that defines it. A parameter is
# accepted only when that extension was advertised (RFC 5321 §4.1.1.11: 555 otherwise).
_MAIL_PARAMETERS = {
    "SIZE": "SIZE",  # RFC 1870
    "BODY": "8BITMIME",  # RFC 6152
    "SMTPUTF8": "SMTPUTF8",  # RFC 6531
    "AUTH": "AUTH",  # RFC 4954 §5
    "RET": "DSN",  # RFC 3461 §4.3
    "ENVID": "DSN",  # RFC 3461 §4.4
    "REQUIRETLS": "REQUIRETLS",  # RFC 8689
}
_RCPT_PARAMETERS = {
    "NOTIFY": "DSN",  # RFC 3461 §4.1
    "ORCPT": "DSN",  # RFC 3461 §4.2
}


def _decode(arg: bytes, utf8: bool) -> str:
    if arg.isascii():
        return arg.decode("ascii")
    if not utf8:
        raise CommandError("non-ASCII octets in a command", _codes.NON_ASCII_ARGUMENT)
    try:
        return arg.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError("invalid UTF-8 in a command", _codes.BAD_UTF8) from None


def _no_argument(event: Event) -> Callable[[bytes, Session], Event]:
    def parse(rest: bytes, _session: Session) -> Event:
        if rest.strip(b" "):
            raise CommandError("unexpected argument", _codes.NO_ARGUMENTS)
        return event

    return parse


def _parse_ehlo(rest: bytes, _session: Session) -> Event:
    # RFC 5321 §4.1.1.1. The domain's syntax is policy, not framing: the application
    # decides what to make of "EHLO my_laptop".
    domain = rest.strip(b" ")
    if not domain:
        raise CommandError("EHLO without a domain", _codes.EHLO_SYNTAX)
    return Hello(domain=_decode(domain, False), extended=True)


def _parse_helo(rest: bytes, _session: Session) -> Event:
    domain = rest.strip(b" ")
    if not domain:
        raise CommandError("HELO without a domain", _codes.HELO_SYNTAX)
    return Hello(domain=_decode(domain, False), extended=False)


def _parse_starttls(rest: bytes, session: Session) -> Event:
    if rest.strip(b" "):
        # RFC 3207 §4: "501 Syntax error (no parameters allowed)".
        raise CommandError("STARTTLS with an argument", _codes.NO_ARGUMENTS)
    if session.tls_active:
        raise CommandError("STARTTLS under TLS", _codes.TLS_ACTIVE)
    if "STARTTLS" not in session.extensions:
        raise CommandError("STARTTLS was not advertised", _codes.NOT_IMPLEMENTED)
    return _STARTTLS


def _path_text(rest: bytes, utf8: bool) -> str:
    # Non-ASCII in MAIL/RCPT is an address problem first (RFC 6531 §3.5: 553 5.6.7).
    if rest.isascii():
        return rest.decode("ascii")
    if not utf8:
        raise CommandError("non-ASCII path without SMTPUTF8", _codes.NON_ASCII_ADDRESS)
    try:
        return rest.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError("invalid UTF-8 in a path", _codes.BAD_UTF8) from None


def _path_start(text: str, pos: int) -> int:
    # "MAIL FROM: <a@b>": tolerated, see the module docstring.
    while pos < len(text) and text[pos] == " ":
        pos += 1
    return pos


def _read_parameters(
    text: str, pos: int, known: dict[str, str], session: Session
) -> dict[str, str | None]:
    # RFC 5321 §4.1.2: Mail-parameters = esmtp-param *(SP esmtp-param), after one SP.
    if pos == len(text):
        return {}
    if text[pos] != " ":
        raise CommandError("junk after the path", _codes.SYNTAX_ARGUMENTS)
    params: dict[str, str | None] = {}
    for item in text[pos:].split(" "):
        if not item:
            continue  # runs of spaces: tolerated like the space after "FROM:"
        keyword, equals, value = item.partition("=")
        key = keyword.upper()
        if (
            not _ESMTP_KEYWORD.fullmatch(keyword)
            or (equals and not _ESMTP_VALUE.fullmatch(value))
            or key in params
        ):
            raise CommandError(f"malformed or repeated parameter {item!r}", _codes.BAD_PARAMETER)
        extension = known.get(key)
        if extension is None or extension not in session.extensions:
            raise CommandError(f"parameter {key} not offered", _codes.UNKNOWN_PARAMETER)
        params[key] = value if equals else None
    return params


# RFC 3461 §4 xtext (`decode_xtext` checks it); within an SMTPUTF8 transaction RFC 6533 §3
# lets ORCPT's address carry UTF-8 too (utf-8-addr-unitext), and non-ASCII octets only
# reach a parameter value in such a transaction (see `_path_text`).
_UTF8_XTEXT = re.compile(r"(?:[!-*,-<>-~\u0080-\U0010ffff]|\+[0-9A-F]{2})*")
# RFC 3461 §4.2: addr-type = atom (RFC 5322 §3.2.3 atext; "=" cannot occur in an
# esmtp-value, so it is left out).
_ADDR_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+/?^_`{|}~-]+")
_NOTIFY_EVENTS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
MAX_ENVID = 100  # RFC 3461 §4.4
MAX_ORCPT = 500  # RFC 3461 §4.2: "the entire ORCPT parameter MAY be up to 500 characters"


def _check_mail_dsn(params: dict[str, str | None]) -> None:
    """RET and ENVID (RFC 3461 §4.3, §4.4). Their presence was checked against "DSN"."""
    if "RET" in params:
        ret = params["RET"]
        if ret is None or ret.upper() not in ("FULL", "HDRS"):
            raise CommandError("RET must be FULL or HDRS", _codes.BAD_RET)
    if "ENVID" in params:
        envid = params["ENVID"]
        try:
            if envid is None or len(envid) > MAX_ENVID:
                raise ValueError(envid)
            decode_xtext(envid)
        except ValueError:
            raise CommandError(
                "ENVID is not xtext of at most 100 characters", _codes.BAD_ENVID
            ) from None


def _check_rcpt_dsn(params: dict[str, str | None]) -> None:
    """NOTIFY and ORCPT (RFC 3461 §4.1, §4.2)."""
    if "NOTIFY" in params:
        notify = params["NOTIFY"]
        # §4.1: "NEVER" alone, or one or more of SUCCESS, FAILURE, DELAY (each once).
        words = notify.upper().split(",") if notify is not None else []
        if words != ["NEVER"] and (
            not words or not _NOTIFY_EVENTS.issuperset(words) or len(set(words)) != len(words)
        ):
            raise CommandError(f"bad NOTIFY {notify!r}", _codes.BAD_NOTIFY)
    if "ORCPT" in params:
        orcpt = params["ORCPT"]
        addr_type, semicolon, address = (orcpt or "").partition(";")
        if (
            orcpt is None
            or len(orcpt) > MAX_ORCPT
            or not semicolon
            or not _ADDR_TYPE.fullmatch(addr_type)
            or not address
            or not _UTF8_XTEXT.fullmatch(address)
        ):
            raise CommandError("ORCPT is not addr-type;xtext", _codes.BAD_ORCPT)


def _parse_mail(rest: bytes, session: Session) -> Event:
    if rest[:5].upper() != b"FROM:":
        raise CommandError("MAIL without FROM:", _codes.MAIL_SYNTAX)
    may_utf8 = "SMTPUTF8" in session.extensions
    text = _path_text(rest, may_utf8)
    utf8 = not text.isascii()
    try:
        path, end = read_path(text, _path_start(text, 5), smtputf8=utf8)
    except NonASCIIAddressError as exc:
        raise CommandError(f"sender: {exc}", _codes.NON_ASCII_ADDRESS) from None
    except AddressError as exc:
        raise CommandError(f"sender: {exc}", _codes.BAD_SENDER) from None
    if path is not None and not path.domain:
        # read_path allows the bare <Postmaster> of RCPT only (RFC 5321 §4.1.1.3).
        raise CommandError("sender without a domain", _codes.BAD_SENDER)
    params = _read_parameters(text, end, _MAIL_PARAMETERS, session)
    if utf8 and "SMTPUTF8" not in params:
        # RFC 6531 §3.4: UTF-8 in the envelope only in an SMTPUTF8 transaction.
        raise CommandError("non-ASCII sender without SMTPUTF8", _codes.NON_ASCII_ADDRESS)
    if "SIZE" in params:
        size = params["SIZE"]
        # RFC 1870 §3: size-value ::= 1*20DIGIT
        if size is None or not (size.isascii() and size.isdigit()) or len(size) > 20:
            raise CommandError("SIZE needs a number", _codes.BAD_PARAMETER)
        if int(size) > session.size_limit:
            # RFC 1870 §6: refuse now rather than after the transfer.
            raise CommandError(
                f"declared size {size} over {session.size_limit}",
                _codes.SIZE_EXCEEDS_LIMIT,
                counted=False,
            )
    if "BODY" in params:
        body = params["BODY"]
        # RFC 6152 §2: BODY=7BIT or BODY=8BITMIME. BINARYMIME (RFC 3030) is not offered:
        # it would need content without CRLF rules.
        if body is None or body.upper() not in ("7BIT", "8BITMIME"):
            raise CommandError("BODY must be 7BIT or 8BITMIME", _codes.BAD_PARAMETER)
    if "SMTPUTF8" in params and params["SMTPUTF8"] is not None:
        raise CommandError("SMTPUTF8 takes no value", _codes.BAD_PARAMETER)
    if "AUTH" in params:
        try:
            read_auth_parameter(params["AUTH"], smtputf8="SMTPUTF8" in params)
        except ValueError as exc:
            raise CommandError(f"AUTH= parameter: {exc}", _codes.BAD_AUTH_PARAMETER) from None
    _check_mail_dsn(params)
    return Mail(reverse_path=path, parameters=params)


def _parse_rcpt(rest: bytes, session: Session) -> Event:
    if session.recipients >= session.config.max_recipients:
        # RFC 5321 §4.5.3.1.10: the client retries the others in a later transaction.
        raise CommandError("too many recipients", _codes.TOO_MANY_RECIPIENTS, counted=False)
    if rest[:3].upper() != b"TO:":
        raise CommandError("RCPT without TO:", _codes.RCPT_SYNTAX)
    text = _path_text(rest, session.smtputf8)
    utf8 = not text.isascii()
    try:
        path, end = read_path(text, _path_start(text, 3), smtputf8=utf8)
    except NonASCIIAddressError as exc:
        raise CommandError(f"recipient: {exc}", _codes.NON_ASCII_ADDRESS) from None
    except AddressError as exc:
        raise CommandError(f"recipient: {exc}", _codes.BAD_RECIPIENT) from None
    if path is None:
        raise CommandError("null recipient", _codes.NULL_RECIPIENT)
    params = _read_parameters(text, end, _RCPT_PARAMETERS, session)
    _check_rcpt_dsn(params)
    return Rcpt(forward_path=path, parameters=params)


def _parse_auth(rest: bytes, session: Session) -> Event:
    # RFC 4954 §4: "AUTH" SP sasl-mech [SP initial-response]. Runs of spaces are
    # tolerated, as after "MAIL FROM:".
    if session.authenticated:
        raise CommandError("AUTH after a successful AUTH", _codes.ALREADY_AUTHENTICATED)
    if not session.auth_mechanisms:
        raise CommandError("AUTH was not advertised", _codes.NOT_IMPLEMENTED)
    args = [arg for arg in rest.split(b" ") if arg]
    if not 1 <= len(args) <= 2:
        raise CommandError("AUTH needs a mechanism and at most one response", _codes.AUTH_SYNTAX)
    name = args[0].decode("ascii", "replace").upper()
    if not SASL_MECHANISM.fullmatch(name):
        raise CommandError("not a SASL mechanism name", _codes.AUTH_SYNTAX)
    if name not in session.auth_mechanisms:
        raise CommandError(f"mechanism {name} not offered", _codes.UNKNOWN_MECHANISM)
    if len(args) == 1:
        return Auth(mechanism=name)
    response = args[1]
    if len(response) > session.config.max_auth_response:
        raise CommandError("initial response too long", _codes.AUTH_LINE_TOO_LONG)
    if response == b"=":
        return Auth(mechanism=name, initial_response=b"")  # "=": present but empty
    try:
        return Auth(mechanism=name, initial_response=decode_base64_strict(response))
    except RemoteSASLError:
        raise CommandError("initial response is not base64", _codes.BAD_BASE64) from None


def _parse_vrfy(rest: bytes, session: Session) -> Event:
    argument = rest.strip(b" ")
    if not argument:
        raise CommandError("VRFY without an argument", _codes.VRFY_SYNTAX)
    # RFC 6531 §3.7.4: VRFY may name a UTF-8 mailbox when SMTPUTF8 is offered.
    return Verify(argument=_decode(argument, "SMTPUTF8" in session.extensions))


def _parse_noop(rest: bytes, _session: Session) -> Event:
    return Noop(argument=_decode(rest.strip(b" "), False))


def _parse_help(rest: bytes, _session: Session) -> Event:
    return Help(topic=_decode(rest.strip(b" "), False))


_Parser = Callable[[bytes, Session], Event]

_COMMANDS: dict[bytes, tuple[type[Event], _Parser]] = {
    b"EHLO": (Hello, _parse_ehlo),
    b"HELO": (Hello, _parse_helo),
    b"STARTTLS": (StartTLS, _parse_starttls),
    b"AUTH": (Auth, _parse_auth),
    b"MAIL": (Mail, _parse_mail),
    b"RCPT": (Rcpt, _parse_rcpt),
    b"DATA": (Data, _no_argument(_DATA)),
    b"RSET": (Reset, _no_argument(_RESET)),
    b"NOOP": (Noop, _parse_noop),
    b"VRFY": (Verify, _parse_vrfy),
    b"HELP": (Help, _parse_help),
    b"QUIT": (Quit, _no_argument(_QUIT)),
}

# Commands whose lines may pass Config.max_command_line: MAIL and RCPT by their
# parameters (see Config), AUTH by its initial response (checked by its parser).
_LONG_COMMANDS = (Mail, Rcpt, Auth)


def _read_bdat(rest: bytes, session: Session) -> Bdat:
    # RFC 3030 §2: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ] CR LF
    parts = rest.split()
    if not parts or not parts[0].isdigit() or len(parts[0]) > 20:
        raise RemoteProtocolError("BDAT without a usable size", reply_hint=_codes.BDAT_SIZE_UNKNOWN)
    size = int(parts[0])
    # From here on the octet count is known: whatever we refuse, its chunk is read and
    # thrown away first (RFC 3030 §2), never parsed as commands.
    if session.bdat_failed:
        raise CommandError(
            "BDAT after a refused chunk", _codes.BDAT_AFTER_FAILURE, skip=size, counted=False
        )
    if (session.stage, Bdat) not in ALLOWED:
        refusal = REFUSALS[session.stage, Bdat]
        raise CommandError(f"BDAT in stage {session.stage.name}", refusal, skip=size)
    if "CHUNKING" not in session.extensions:
        raise CommandError(
            "BDAT but CHUNKING was not advertised", _codes.NOT_IMPLEMENTED, skip=size
        )
    if len(parts) > 2 or (len(parts) == 2 and parts[1].upper() != b"LAST"):
        raise CommandError("BDAT end marker is not LAST", _codes.BDAT_SYNTAX, skip=size)
    return Bdat(size=size, last=len(parts) == 2)


def read_command(line: bytes, session: Session) -> Event:
    """The event for one command line (without its CRLF).

    Raises `CommandError` for a refusal the session survives, `RemoteProtocolError` for
    one it does not (an HTTP request, a BDAT whose size cannot be read).
    """
    verb, _, rest = line.partition(b" ")
    verb = verb.upper()
    entry = _COMMANDS.get(verb)
    if entry is None:
        if verb == b"BDAT":
            return _read_bdat(rest, session)
        name = verb[:16].decode("ascii", "replace")
        if verb in _FORBIDDEN:
            raise RemoteProtocolError(f"{name} request on the SMTP port", _codes.FORBIDDEN_COMMAND)
        if verb in _NOT_IMPLEMENTED:
            raise CommandError(f"{name} is not implemented", _codes.NOT_IMPLEMENTED)
        raise CommandError(f"unrecognized command {name!r}", _codes.UNRECOGNIZED)
    kind, parse = entry
    if (session.stage, kind) not in ALLOWED:
        refusal = REFUSALS[session.stage, kind]
        raise CommandError(f"{verb.decode()} in stage {session.stage.name}", refusal)
    if b"\0" in rest:
        raise CommandError("NUL in a command line", _codes.BAD_OCTET)
    if len(line) + 2 > session.config.max_command_line and kind not in _LONG_COMMANDS:
        raise CommandError("command line too long", _codes.LINE_TOO_LONG)
    return parse(rest, session)


# "AUTH " in every letter case, to pick the longer line cap before the line is complete.
_AUTH_PREFIXES = tuple(
    bytes(letters) + b" " for letters in itertools.product(*((c, c | 0x20) for c in b"AUTH"))
)


def starts_with_auth(buf: LineBuffer) -> bool:
    """Whether the buffered line is an AUTH command (verb and space)."""
    return any(buf.startswith(prefix) for prefix in _AUTH_PREFIXES)


def read_auth_response(line: bytes, config: Config) -> Event:
    """The event for one client line of an AUTH exchange (RFC 4954 §4): `AuthCancel`
    for "*", else `AuthResponse` with the decoded base64. Raises `CommandError` for a
    line that is too long or not base64; the exchange is then over."""
    if line == b"*":
        return _AUTH_CANCEL
    if len(line) > config.max_auth_response:
        raise CommandError("AUTH response too long", _codes.AUTH_LINE_TOO_LONG)
    try:
        return AuthResponse(data=decode_base64_strict(line))
    except RemoteSASLError:
        raise CommandError("AUTH response is not base64", _codes.BAD_BASE64) from None


# --- Message content ---------------------------------------------------------------------


class ContentFilter:
    """Checks and normalises the content of one message, chunk after chunk.

    `feed` returns the octets to hand to the application (possibly none); once the
    message is refused it returns nothing more and `finish` gives the refusal.
    """

    __slots__ = ("_cr", "_line", "_line_cap", "_normalize", "_refusal", "_size", "_size_limit")

    def __init__(self, config: Config, size_limit: int) -> None:
        self._normalize = config.bare_lf == "normalize"
        self._line_cap = config.max_text_line
        self._size_limit = size_limit
        self._size = 0
        self._line = 0  # octets of the current, unfinished line
        self._cr = False  # a CR held back from the previous chunk
        self._refusal: tuple[str, Reply] | None = None

    def _refuse(self, reason: str, reply: Reply) -> bytes:
        self._refusal = (reason, reply)
        return b""

    def feed(self, data: bytes) -> bytes:
        if self._refusal is not None:
            return b""
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data.endswith(b"\r"):
            # Its LF may open the next chunk (only BDAT can split a CRLF).
            data = data[:-1]
            self._cr = True
        crlf = data.count(b"\r\n")
        if data.count(b"\r") != crlf:
            # RFC 5321 §2.3.8: CR only in CRLF.
            return self._refuse("bare CR in message content", _codes.BARE_CR_IN_MESSAGE)
        if data.count(b"\n") != crlf:
            if not self._normalize:
                return self._refuse("bare LF in message content", _codes.BARE_LF_IN_MESSAGE)
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        cap = self._line_cap
        first = data.find(b"\n")
        if first < 0:
            self._line += len(data)
        else:
            last = data.rfind(b"\n")
            longest = self._line + first + 1
            if last - first > cap:
                # Only a chunk longer than the cap can hide a long line inside.
                longest = max(longest, 1 + max(map(len, data[first + 1 : last].split(b"\n"))))
            if longest > cap:
                return self._refuse_line()
            self._line = len(data) - last - 1
        if self._line + 2 > cap:
            return self._refuse_line()
        self._size += len(data)
        if self._size > self._size_limit:
            return self._refuse(f"message over {self._size_limit} octets", _codes.MESSAGE_TOO_BIG)
        return data

    def _refuse_line(self) -> bytes:
        return self._refuse(f"message line over {self._line_cap} octets", _codes.TEXT_LINE_TOO_LONG)

    def finish(self) -> Event:
        """The event that ends the message: EndOfMessage, or InvalidMessage."""
        if self._cr and self._refusal is None:
            self._refuse("bare CR at the end of the message", _codes.BARE_CR_IN_MESSAGE)
        if self._refusal is None:
            return _END_OF_MESSAGE
        reason, reply = self._refusal
        return InvalidMessage(reason=reason, reply_hint=reply)


class DataReader:
    """Reads DATA content up to CRLF "." CRLF (see the module docstring)."""

    __slots__ = ("_after_crlf", "_after_lf", "_content", "_done", "_searched")

    def __init__(self, content: ContentFilter) -> None:
        self._content = content
        # The DATA line's CRLF is the first CRLF of the end marker (RFC 5321 §4.1.1.4).
        self._after_crlf = True
        self._after_lf = True
        self._done = False
        self._searched = 0  # no end marker starts before this index

    def __call__(self, buf: LineBuffer) -> Event | None:
        if self._done:
            return self._content.finish()
        if self._after_lf and buf.startswith(b"."):
            if self._after_crlf:
                if buf.startswith(b".\r\n"):
                    buf.discard(3)
                    self._done = True
                    return self._content.finish()
                if len(buf) < 3:
                    return None  # "." or ".\r": maybe the end marker
            # RFC 5321 §4.5.2: a line starting with "." lost its first dot.
            buf.discard(1)
            self._after_crlf = self._after_lf = False
            self._searched = 0
        end = buf.find(b"\r\n.\r\n", self._searched)
        if end >= 0:
            chunk = buf.extract(end + 2)
            buf.discard(3)
            self._done = True
        else:
            cut = len(buf)
            if buf.endswith(b"\r\n.\r"):
                cut -= 2
            elif buf.endswith(b"\r\n.") or buf.endswith(b"\r"):
                cut -= 1
            if cut < _MIN_CHUNK:
                self._searched = max(0, len(buf) - 4)
                return None
            chunk = buf.extract(cut)
            self._searched = 0
        self._after_crlf = chunk.endswith(b"\r\n")
        self._after_lf = chunk.endswith(b"\n")
        data = self._content.feed(chunk.replace(b"\n.", b"\n"))
        if data:
            return MessageData(data=data)
        if self._done:
            return self._content.finish()
        return None


class BdatReader:
    """Reads the `size` octets of one BDAT chunk, then ends the chunk or the message."""

    __slots__ = ("_content", "_last", "_remaining")

    def __init__(self, content: ContentFilter, size: int, last: bool) -> None:
        self._content = content
        self._remaining = size
        self._last = last

    def __call__(self, buf: LineBuffer) -> Event | None:
        remaining = self._remaining
        if remaining:
            take = min(len(buf), remaining)
            if take < min(remaining, _MIN_CHUNK):
                return None
            self._remaining = remaining = remaining - take
            data = self._content.feed(buf.extract(take))
            if data:
                return MessageData(data=data)
            if remaining:
                return None
        if not self._last:
            return _END_OF_CHUNK
        return self._content.finish()
