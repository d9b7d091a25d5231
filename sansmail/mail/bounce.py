"""Delivery status notifications: the bounce, the delay warning, the postmaster's copy.

Theory of operation
-------------------
A DSN is an RFC 6522 ``multipart/report; report-type=delivery-status`` with three parts
(RFC 3464 §2): a text/plain explanation for people, a message/delivery-status for programs,
and the returned original: its headers as text/rfc822-headers (RET=HDRS, the default) or the
whole message as message/rfc822 (RET=FULL, RFC 3461 §4.3). We build the bytes ourselves
rather than through `email.message`, because every line must be exactly what we intend: the
stdlib generator re-folds headers and re-encodes parts in ways that are hard to pin byte for
byte.

The notification goes out with the null reverse-path (RFC 5321 §4.5.5, RFC 3464 §2) from
``MAILER-DAEMON@<reporting MTA>`` and carries ``Auto-Submitted: auto-replied`` (RFC 3834
§5), so that no well-behaved system answers it; `should_bounce` is the other half of that
loop guard: a message that arrived with the null sender is never bounced.

Much of what goes into a DSN is attacker text: the remote server's reply and the returned
message. Reply text is reduced to one line of printable characters (CR, LF and every other
control become a space), capped in length, and folded at spaces, so no reply can add a
field, end a block or forge a MIME boundary. The returned message has its line ends
normalised to CRLF, and the MIME boundary is derived from the Message-ID plus a counter
that is bumped until the boundary occurs nowhere in the content (RFC 2046 §5.1.1).

Size: the returned original is cut at a line end after `max_original` octets (the body
first, then, if need be, whole header fields) and the explanation says so, as Postfix does
with ``bounce_size_limit = 50000``.

UTF-8 addresses (RFC 6533): the report stays message/delivery-status and stays ASCII; an
address that needs SMTPUTF8 is written with the ``utf-8`` address type in its
utf-8-addr-xtext form (RFC 6533 §3), where every non-ASCII character and every one of
"\\", "+", "=", space and the controls becomes ``\\x{HEX}``. That form survives any relay
and reads back losslessly. A returned original whose headers hold 8-bit octets (RFC 6532
headers) is labelled message/global-headers or message/global (RFC 6533 §6.3, RFC 6532
§3.7) instead of the 7-bit types.

Pure: no I/O and no clock; the time and the Message-ID come in as arguments.
"""

from __future__ import annotations

import datetime
import email.utils
import re
from collections.abc import Sequence
from typing import Final, Literal

import attrs

from sansmail.mail.address import Address

__all__ = [
    "DEFAULT_MAX_ORIGINAL",
    "RecipientStatus",
    "compose_dsn",
    "postmaster_copy",
    "should_bounce",
]

DEFAULT_MAX_ORIGINAL: Final = 50_000  # Postfix bounce_size_limit
_MAX_TEXT: Final = 900  # one field stays under RFC 5322 §2.1.1's 998 even unfolded
_FOLD_AT: Final = 78  # RFC 5322 §2.1.1 "SHOULD"

Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]

# RFC 3463 §2: class "." subject "." detail; class is 2, 4 or 5, the others 1*3digit.
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
# RFC 3464 §2.1.2 / RFC 3461 §4.2: a type name is an atom before ";".
_TYPED = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.+-]*)[ \t]*;[ \t]*(.*)", re.DOTALL)
_SMTP_REPLY = re.compile(r"[2-5][0-9][0-9](?:[ -]|$)")  # RFC 5321 §4.2 Reply-code
_TOKEN = re.compile(r"[!-~]+")  # printable ASCII, no space: host names, ids
# C0, DEL, C1, the Unicode line breaks, and the bidi overrides that make text read in an
# order other than the one it is stored in (a reply could disguise an address with them).
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")


def _check_status(_inst: object, _attribute: object, value: str) -> None:
    if not _STATUS.fullmatch(value):
        raise ValueError(f"status {value!r} is not an RFC 3463 class.subject.detail code")


@attrs.frozen(kw_only=True)
class RecipientStatus:
    """What happened to one recipient: one per-recipient block of RFC 3464 §2.3.

    `original_recipient` is the ORCPT value as it arrived (RFC 3461 §4.2, for instance
    ``"rfc822;a+2Bb@example.org"``); `diagnostic` is the remote reply or our own reason, with
    its type (``"smtp; 550 5.1.1 no such user"``); untyped text is labelled ``x-sansmail``.
    `will_retry_until` matters only to "delayed"."""

    recipient: Address
    original_recipient: str | None = None
    action: Action
    status: str = attrs.field(validator=_check_status)
    remote_mta: str | None = None
    diagnostic: str | None = None
    last_attempt: datetime.datetime | None = None
    will_retry_until: datetime.datetime | None = None

    def __attrs_post_init__(self) -> None:
        # RFC 3464 §2.3.3: success actions come with a 2.x.x status; "delayed" is transient.
        if self.action in ("delivered", "relayed", "expanded") and self.status[0] != "2":
            raise ValueError(f"action {self.action!r} needs a 2.x.x status")
        if self.action == "delayed" and self.status[0] != "4":
            raise ValueError("action 'delayed' needs a 4.x.x status")


def should_bounce(reverse_path: Address | None) -> bool:
    """Whether a failure may be reported to `reverse_path`: never to the null sender,
    since that is how bounces travel (RFC 5321 §4.5.5, RFC 3464 §2)."""
    return reverse_path is not None


# -- text hygiene -----------------------------------------------------------------------


def _one_line(text: str, *, ascii_only: bool) -> str:
    """Attacker text to a single line of printable characters, capped in length."""
    text = _CONTROLS.sub(" ", text)
    if ascii_only:
        text = "".join(c if c.isascii() else "?" for c in text)
    text = " ".join(text.split())
    if len(text) > _MAX_TEXT:
        text = text[: _MAX_TEXT - 3] + "..."
    return text


def _fold(name: str, value: str) -> str:
    """``name: value`` folded at spaces (RFC 5322 §3.2.2 FWS), CRLF-terminated."""
    lines: list[str] = []
    line = f"{name}:"
    bare = True  # a fold right after the colon would leave an empty first line
    for word in value.split(" "):
        if len(line) + 1 + len(word) > _FOLD_AT and not bare:
            lines.append(line)
            line = f" {word}"
        else:
            line = f"{line} {word}"
        bare = False
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _xtext_utf8(text: str) -> str:
    """RFC 6533 §3 utf-8-addr-xtext: QCHAR is %x21-2a / %x2c-3c / %x3e-5b / %x5d-7e,
    anything else is written ``\\x{HEX}``."""
    return "".join(c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in text)


def _typed_address(address: Address) -> str:
    """An address with its RFC 3464 §2.1.2 type: rfc822 when ASCII, else utf-8."""
    if address.needs_smtputf8:
        return f"utf-8; {_xtext_utf8(str(address))}"
    return f"rfc822; {address}"


def _decode_xtext(text: str) -> str:
    """RFC 3461 §4: "+" and two upper-case hex digits stand for one octet."""
    return re.sub(
        r"\+([0-9A-F]{2})",
        lambda m: chr(int(m.group(1), 16)),
        text,
    )


def _original_recipient(orcpt: str) -> str:
    """RFC 3464 §2.3.1: the ORCPT address type and address, xtext decoded. The utf-8
    type keeps its own (already ASCII) escape form, RFC 6533 §3."""
    orcpt = _one_line(orcpt, ascii_only=True)
    m = _TYPED.fullmatch(orcpt)
    if m is None:
        return f"rfc822; {_decode_xtext(orcpt)}"
    kind, address = m.groups()
    if kind.lower() != "utf-8":
        address = _one_line(_decode_xtext(address), ascii_only=True)
    return f"{kind}; {address}"


def _diagnostic(text: str) -> str:
    """RFC 3464 §2.3.6 diagnostic-type ";" text, with attacker text made inert."""
    text = _one_line(text, ascii_only=True)
    if _SMTP_REPLY.match(text):
        return f"smtp; {text}"
    m = _TYPED.fullmatch(text)
    if m is None:
        return f"x-sansmail; {text}"
    return f"{m.group(1)}; {m.group(2)}"


def _token(what: str, value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{what} must be printable ASCII without spaces: {value!r}")
    return value


def _date(when: datetime.datetime) -> str:
    return email.utils.format_datetime(when)  # RFC 5322 §3.3 date-time


# -- the three parts --------------------------------------------------------------------


def _status_part(
    *,
    reporting_mta: str,
    original_envelope_id: str | None,
    arrival: datetime.datetime,
    recipients: Sequence[RecipientStatus],
) -> str:
    """message/delivery-status: one per-message block, then one block per recipient,
    separated by blank lines (RFC 3464 §2.1)."""
    head = _fold("Reporting-MTA", f"dns; {reporting_mta}")  # §2.2.2
    if original_envelope_id is not None:
        # §2.2.1: the ENVID as received; xtext is already printable ASCII.
        head += _fold("Original-Envelope-Id", _one_line(original_envelope_id, ascii_only=True))
    head += _fold("Arrival-Date", _date(arrival))  # §2.2.5
    blocks = [head]
    for r in recipients:
        block = ""
        if r.original_recipient is not None:
            block += _fold("Original-Recipient", _original_recipient(r.original_recipient))
        block += _fold("Final-Recipient", _typed_address(r.recipient))  # §2.3.2
        block += _fold("Action", r.action)  # §2.3.3
        block += _fold("Status", r.status)  # §2.3.4
        if r.remote_mta is not None:
            block += _fold("Remote-MTA", f"dns; {_one_line(r.remote_mta, ascii_only=True)}")
        if r.diagnostic is not None:
            block += _fold("Diagnostic-Code", _diagnostic(r.diagnostic))  # §2.3.6
        if r.last_attempt is not None:
            block += _fold("Last-Attempt-Date", _date(r.last_attempt))  # §2.3.7
        if r.will_retry_until is not None and r.action == "delayed":
            block += _fold("Will-Retry-Until", _date(r.will_retry_until))  # §2.3.9
        blocks.append(block)
    return "\r\n".join(blocks)


def _kind(recipients: Sequence[RecipientStatus]) -> Literal["failed", "delayed", "success"]:
    actions = {r.action for r in recipients}
    if "failed" in actions:
        return "failed"
    if "delayed" in actions:
        return "delayed"
    return "success"


_SUBJECTS: Final = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "success": "Successful Mail Delivery Report",
}

_OPENINGS: Final = {
    "failed": "Your message could not be delivered to one or more recipients.",
    "delayed": (
        "Your message could not be delivered yet to one or more recipients.\r\n"
        "The mail system will keep trying; you do not need to send it again.\r\n"
        "This is only a warning; a further notice follows if delivery fails for good."
    ),
    "success": "Your message was delivered (or passed on) to the recipients below.",
}


def _human_part(
    *,
    reporting_mta: str,
    recipients: Sequence[RecipientStatus],
    return_full: bool,
    note: str | None,
) -> str:
    kind = _kind(recipients)
    returned = "The message is" if return_full else "The headers of the message are"
    lines = [
        f"This is the mail system at host {reporting_mta}.",
        "",
        _OPENINGS[kind],
        f"{returned} attached below; the mail system's reasons follow.",
        "",
    ]
    for r in recipients:
        shown = str(r.recipient)
        # People read this part: keep UTF-8, but not line breaks or controls.
        why = _one_line(r.diagnostic, ascii_only=False) if r.diagnostic else r.status
        lines.append(f"<{shown}>: {r.action} ({r.status})")
        lines.append(f"    {why}")
        if r.action == "delayed" and r.will_retry_until is not None:
            lines.append(f"    Will retry until {_date(r.will_retry_until)}")
    if note:
        lines += ["", note]
    return "\r\n".join(lines) + "\r\n"


def _crlf(data: bytes) -> bytes:
    """Bare CR and bare LF become CRLF, so that the whole DSN is CRLF-strict."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def _split_header(message: bytes) -> tuple[bytes, bytes]:
    """(header block with its final CRLF, body) of a CRLF message."""
    if message.startswith(b"\r\n"):
        return b"", message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message, b""
    return message[: end + 2], message[end + 4 :]


def _clip_header(header: bytes, limit: int) -> bytes:
    """The longest run of whole fields (a field ends at a CRLF not followed by WSP)."""
    if len(header) <= limit:
        return header
    cut = 0
    for m in re.finditer(rb"\r\n(?![ \t])", header):
        if m.end() > limit:
            break
        cut = m.end()
    return header[:cut]


def _clip_body(body: bytes, limit: int) -> bytes:
    if len(body) <= limit:
        return body
    if limit < 2:  # a negative end would make rfind count from the right
        return b""
    cut = body.rfind(b"\r\n", 0, limit)
    return body[: cut + 2] if cut >= 0 else b""


def _returned(original: bytes, *, return_full: bool, limit: int) -> tuple[bytes, str, str | None]:
    """(content, media type, note for people) of the third part."""
    header, body = _split_header(_crlf(original))
    eight_bit_header = not header.isascii()
    if not return_full:
        content = _clip_header(header, limit)
        kind = "message/global-headers" if eight_bit_header else "text/rfc822-headers"
        note = None
        if len(content) < len(header):
            note = f"The original message headers were cut to {len(content)} octets."
        return content, kind, note
    size = len(header) + 2 + len(body)
    kept_header = _clip_header(header, limit)
    kept_body = b""
    if len(kept_header) == len(header):
        kept_body = _clip_body(body, limit - len(header) - 2)
    content = kept_header + b"\r\n" + kept_body
    kind = "message/global" if eight_bit_header else "message/rfc822"
    note = None
    if len(content) < size:
        note = (
            f"The original message was {size} octets; only the first {len(content)} are returned."
        )
    return content, kind, note


# -- assembly ---------------------------------------------------------------------------


def _boundary(message_id: str, parts: Sequence[bytes]) -> str:
    """RFC 2046 §5.1.1: a bchars boundary found in no part. Deterministic, so that the
    same inputs give the same bytes."""
    seed = re.sub(r"[^A-Za-z0-9]", "", message_id)[:40] or "dsn"
    counter = 0
    while True:
        boundary = f"=_sansmail_{seed}_{counter}"
        token = boundary.encode("ascii")
        if not any(token in part for part in parts):
            return boundary
        counter += 1


def _part(content_type: str, description: str, content: bytes) -> bytes:
    cte = "7bit" if content.isascii() else "8bit"  # RFC 6152: the relay must offer 8BITMIME
    head = (
        f"Content-Type: {content_type}\r\n"
        f"Content-Description: {description}\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n\r\n"
    )
    return head.encode("ascii") + content


def _message_id(message_id: str) -> str:
    bare = message_id.removeprefix("<").removesuffix(">")
    if "<" in bare or ">" in bare or "@" not in bare:
        raise ValueError(f"message_id must look like 'left@right': {message_id!r}")
    return f"<{_token('message_id', bare)}>"


def compose_dsn(
    *,
    reporting_mta: str,
    original_envelope_id: str | None,
    arrival: datetime.datetime,
    sender: Address,
    recipients: Sequence[RecipientStatus],
    original: bytes,
    return_full: bool,
    now: datetime.datetime,
    message_id: str,
    max_original: int = DEFAULT_MAX_ORIGINAL,
) -> bytes:
    """The whole DSN, CRLF line ends, ready to queue with the null reverse-path to
    `sender`.

    `reporting_mta` is our host name (Postfix myhostname); `original` the queued message;
    `return_full` is RET=FULL (RFC 3461 §4.3); `message_id` ("left@right", brackets
    optional) and `now` are the caller's, since the core reads no clock. The Subject says
    "Undelivered Mail Returned to Sender" when any recipient failed and "Delayed Mail
    (still being retried)" for a delay warning. Raises `ValueError` on an empty recipient
    list or a malformed `reporting_mta` / `message_id`."""
    if not recipients:
        raise ValueError("a DSN reports on at least one recipient")
    if max_original < 0:
        raise ValueError("max_original must not be negative")
    reporting_mta = _token("reporting_mta", reporting_mta)
    msgid = _message_id(message_id)

    returned, returned_type, note = _returned(original, return_full=return_full, limit=max_original)
    human = _human_part(
        reporting_mta=reporting_mta, recipients=recipients, return_full=return_full, note=note
    )
    human_bytes = human.encode("utf-8")
    charset = "us-ascii" if human_bytes.isascii() else "utf-8"
    status = _status_part(
        reporting_mta=reporting_mta,
        original_envelope_id=original_envelope_id,
        arrival=arrival,
        recipients=recipients,
    ).encode("ascii")
    what = "Undelivered Message" if return_full else "Undelivered Message Headers"
    parts = [
        _part(f"text/plain; charset={charset}", "Notification", human_bytes),
        _part("message/delivery-status", "Delivery report", status),
        _part(returned_type, what, returned),
    ]
    boundary = _boundary(msgid, parts)
    eight_bit = any(not p.isascii() for p in parts)

    subject = _SUBJECTS[_kind(recipients)]
    header = (
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n"
        f"To: <{sender}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {_date(now)}\r\n"
        f"Message-ID: {msgid}\r\n"
        "Auto-Submitted: auto-replied\r\n"  # RFC 3834 §5
        "MIME-Version: 1.0\r\n"
        # RFC 6522 §3: report-type names the subtype of the second part.
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        f'\tboundary="{boundary}"\r\n'
        f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}\r\n"
        "\r\n"
        "This is a MIME-encapsulated message.\r\n"
    )
    delimiter = f"\r\n--{boundary}\r\n".encode("ascii")
    out = header.encode("utf-8") + delimiter + delimiter.join(parts)
    return out + f"\r\n--{boundary}--\r\n".encode("ascii")


# -- the postmaster's copy ---------------------------------------------------------------

_BOUNDARY_PARAM = re.compile(rb'boundary="([^"\r\n]+)"')


def _replace_field(header: bytes, name: bytes, value: bytes) -> bytes:
    pattern = re.compile(rb"^" + re.escape(name) + rb":[^\r]*\r\n", re.IGNORECASE | re.MULTILINE)
    return pattern.sub(lambda _m: name + b": " + value + b"\r\n", header, count=1)


def postmaster_copy(dsn: bytes, *, postmaster: Address) -> bytes:
    """A copy of a DSN made by `compose_dsn` for the postmaster, with the returned
    original reduced to its headers, as Postfix's ``notify_classes = bounce`` does: the
    postmaster learns what failed and why, but does not read the user's mail.

    The copy goes to `postmaster` with "Postmaster Copy: " before the Subject and a
    Message-ID derived from the DSN's. Raises `ValueError` on bytes `compose_dsn` did not
    make."""
    header, body = _split_header(dsn)
    m = _BOUNDARY_PARAM.search(header)
    if m is None:
        raise ValueError("not a DSN made by compose_dsn: no boundary")
    delimiter = b"\r\n--" + m.group(1) + b"\r\n"
    pieces = (b"\r\n" + body).split(delimiter)
    if len(pieces) != 4:
        raise ValueError("not a DSN made by compose_dsn: expected three parts")
    closer = b"\r\n--" + m.group(1) + b"--\r\n"
    last, sep, _ = pieces[3].rpartition(closer)
    if not sep:
        raise ValueError("not a DSN made by compose_dsn: no closing boundary")
    part_header, content = _split_header(last)
    type_line = re.search(rb"^Content-Type: ([^\r]*)\r\n", part_header, re.MULTILINE)
    if type_line is not None and type_line.group(1) in (b"message/rfc822", b"message/global"):
        headers_only, _ = _split_header(content)
        new_type = (
            b"message/global-headers"
            if type_line.group(1) == b"message/global"
            else b"text/rfc822-headers"
        )
        cte = b"7bit" if headers_only.isascii() else b"8bit"
        last = (
            b"Content-Type: " + new_type + b"\r\n"
            b"Content-Description: Undelivered Message Headers\r\n"
            b"Content-Transfer-Encoding: " + cte + b"\r\n\r\n" + headers_only
        )
    pieces[3] = last + closer

    header = _replace_field(header, b"To", f"<{postmaster}>".encode())
    subject = re.search(rb"^Subject: ([^\r]*)\r\n", header, re.MULTILINE)
    if subject is not None:
        header = _replace_field(header, b"Subject", b"Postmaster Copy: " + subject.group(1))
    msgid = re.search(rb"^Message-ID: <([^\r>]*)>\r\n", header, re.MULTILINE)
    if msgid is not None:
        header = _replace_field(header, b"Message-ID", b"<pm." + msgid.group(1) + b">")
    return header + b"\r\n" + delimiter.join(pieces)[2:]
