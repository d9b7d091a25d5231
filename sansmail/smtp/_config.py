"""Protocol limits and switches of the SMTP server core.

Only knobs of the protocol live here. Timeouts, TLS contexts, hostnames and policy belong
to the application. Which extensions are on is not configured here either: the core reads
them from the EHLO reply the application sends (state comes from the wire).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

__all__ = ["Config"]

# RFC 5321 §4.5.3.1.4 fixes the minimum at 512; parameters of MAIL and RCPT may make
# those two lines longer by what each extension declares: SIZE +26 (RFC 1870 §3 (5)),
# DSN's ENVID/RET and ORCPT/NOTIFY (RFC 3461), AUTH= +500 (RFC 4954), and UTF-8 paths
# take more octets than characters (RFC 6531). We buffer a command line up to
# max_command_line + COMMAND_ALLOWANCE; a longer one ends the session.
COMMAND_ALLOWANCE = 1024


def _at_least(minimum: int, why: str) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
        if type(value) is not int or value < minimum:
            raise ValueError(f"{attribute.name} must be an integer >= {minimum} ({why})")

    return check


@attrs.frozen(kw_only=True)
class Config:
    """Limits and switches of one SMTP server connection.

    Content policy (``bare_lf``): message content must use CRLF line ends (RFC 5321
    §2.3.8). A bare CR always makes the server refuse the message after reading it to
    its end (`InvalidMessage`), as mox does: no legitimate client sends one, and
    smuggling attacks do. A bare LF is common in mail from sloppy scripts, so by default
    it is turned into CRLF (``"normalize"``, Postfix 3.9's
    ``smtpd_forbid_bare_newline = normalize``); ``"reject"`` refuses such a message
    instead. Either way the end of the content is only CRLF "." CRLF: "\\n.\\n",
    "\\r.\\r\\n" and their cousins never end a message.
    """

    #: Longest command line, CRLF included. RFC 5321 §4.5.3.1.4: 512. Longer lines are
    #: answered "500 5.5.2 Line too long", except MAIL and RCPT, whose parameters may
    #: use the allowance described above; a line past that allowance ends the session.
    max_command_line: int = attrs.field(
        default=512, validator=_at_least(512, "RFC 5321 §4.5.3.1.4")
    )

    #: Hard cap on a line of message content, CRLF included. RFC 5321 §4.5.3.1.6 sets the
    #: minimum every server must accept at 1000, and §4.5.3.1 asks implementations to
    #: impose no limits where they can: we never buffer a content line, so a long one
    #: costs nothing, and real mail (HTML generators, signed blobs) does exceed 1000.
    #: 1 MiB stops only pathological input; a message with a longer line is read to its
    #: end and refused.
    max_text_line: int = attrs.field(
        default=1024 * 1024, validator=_at_least(1000, "RFC 5321 §4.5.3.1.6")
    )

    #: Largest message content accepted, in octets after un-stuffing (RFC 1870 §4 counts
    #: CRLFs but not the stuffing dots). 25 MiB, like Postfix's message_size_limit.
    #: A larger message is read to its end and refused with 552 5.3.4 (RFC 1870 §6.2,
    #: RFC 5321 §4.5.3.1.10). When the EHLO reply advertises a smaller non-zero SIZE,
    #: that value is enforced instead.
    max_message_size: int = attrs.field(default=26_214_400, validator=_at_least(1, "octets"))

    #: Recipients per transaction; further RCPTs get 452 4.5.3 (RFC 5321 §4.5.3.1.10).
    #: RFC 5321 §4.5.3.1.8 says a server must accept at least 100; 1000 is Postfix's
    #: smtpd_recipient_limit.
    max_recipients: int = attrs.field(default=1000, validator=_at_least(1, "recipients"))

    #: Invalid commands a client may send before the session ends with 421 4.7.0.
    #: 20, like Postfix's smtpd_hard_error_limit; the count restarts after each message
    #: accepted with a 2xx reply.
    max_invalid_commands: int = attrs.field(default=20, validator=_at_least(0, "commands"))

    #: Longest client response in an AUTH exchange, in octets of base64 (CRLF not
    #: counted), whether sent on its own line or as the initial response of the AUTH
    #: command. RFC 4954 §4: few SASL mechanisms exceed 12288. A longer response gets
    #: 500 5.5.6 (RFC 4954 §6) and ends the exchange; a line past `auth_line_cap` ends the
    #: session. The minimum leaves room for PLAIN with RFC 4616's 255-octet fields.
    max_auth_response: int = attrs.field(
        default=12288, validator=_at_least(1024, "PLAIN with 255-octet fields, RFC 4616")
    )

    #: What to do with a bare LF in message content: see the class docstring.
    bare_lf: Literal["normalize", "reject"] = attrs.field(
        default="normalize", validator=attrs.validators.in_(("normalize", "reject"))
    )

    @property
    def command_line_cap(self) -> int:
        """The longest command line the core buffers before giving up on the session."""
        return self.max_command_line + COMMAND_ALLOWANCE

    @property
    def auth_line_cap(self) -> int:
        """The longest AUTH command or exchange line the core buffers (while AUTH is
        advertised) before giving up on the session."""
        return self.max_auth_response + self.command_line_cap
