"""Protocol limits of the POP3 server core.

Only knobs of the protocol live here; timeouts, TLS contexts, the greeting text and the
maildrop belong to the application.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Config"]

# A command line longer than `max_command_line` but within this many further octets is
# read, refused with -ERR and the session goes on; past it the session ends, so a peer
# that never sends CRLF cannot make us buffer without bound.
COMMAND_ALLOWANCE = 1024


def _at_least(minimum: int, why: str) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
        if type(value) is not int or value < minimum:
            raise ValueError(f"{attribute.name} must be an integer >= {minimum} ({why})")

    return check


@attrs.frozen(kw_only=True)
class Config:
    """Limits of one POP3 server connection."""

    #: Longest command line, CRLF included. RFC 2449 §4: "a command line ... MUST NOT
    #: exceed 255 octets, including the terminating CRLF". A longer line (up to
    #: `command_line_cap`) is answered -ERR; past that cap the session ends.
    max_command_line: int = attrs.field(default=255, validator=_at_least(255, "RFC 2449 §4"))

    #: Invalid commands (unknown, malformed, or not valid in the current state) a client
    #: may send before the session ends. 20, like Postfix's smtpd_hard_error_limit.
    max_invalid_commands: int = attrs.field(default=20, validator=_at_least(0, "commands"))

    #: Longest client response in an AUTH exchange, in octets of base64 (CRLF not
    #: counted), on its own line or as the AUTH command's initial response. RFC 5034 §4
    #: exempts these lines from RFC 2449's 255-octet limit without naming another; we
    #: take RFC 4954 §4's 12288 octets, the figure SMTP AUTH gives for the same SASL
    #: messages. A line longer than `auth_line_cap` ends the session.
    max_auth_response: int = attrs.field(
        default=12288, validator=_at_least(1024, "PLAIN with 255-octet fields, RFC 4616")
    )

    @property
    def command_line_cap(self) -> int:
        """The longest command line buffered before the session is given up."""
        return self.max_command_line + COMMAND_ALLOWANCE

    @property
    def auth_line_cap(self) -> int:
        """The longest AUTH command or exchange line buffered before giving up."""
        return self.max_auth_response + self.command_line_cap
