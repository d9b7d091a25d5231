"""Protocol limits of the IMAP server core.

Only knobs of the protocol live here. Timeouts (RFC 9051 §5.4's 30-minute autologout),
TLS contexts, the greeting and the capability list belong to the application; which
extensions are on is read from the CAPABILITY responses the application sends.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["NONSYNC_LITERAL_MINUS", "Config"]

#: RFC 7888 §4: under LITERAL- a non-synchronizing literal is at most 4096 octets.
NONSYNC_LITERAL_MINUS = 4096


def _at_least(minimum: int, why: str) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
        if type(value) is not int or value < minimum:
            raise ValueError(f"{attribute.name} must be an integer >= {minimum} ({why})")

    return check


@attrs.frozen(kw_only=True)
class Config:
    """Limits of one IMAP server connection."""

    #: Longest line of a command (the text between literals), CRLF included. RFC 9051
    #: §4 sets no limit and RFC 7162 §4 asks servers to accept at least 8192 octets;
    #: 64 KiB is Dovecot's imap_max_line_length, room for a UID set of a large mailbox.
    #: A longer line ends the session (BYE): it cannot be skipped without reading it.
    max_line_length: int = attrs.field(default=65536, validator=_at_least(8192, "RFC 7162 §4"))

    #: Largest message an APPEND may carry, in octets. 25 MiB, the same as the SMTP
    #: server's default `max_message_size`, so what SMTP accepts can also be appended.
    #: A larger synchronizing literal is refused with NO [TOOBIG] before it is sent
    #: (RFC 7889 §3, RFC 4469 §5 TOOBIG).
    max_message_size: int = attrs.field(default=26_214_400, validator=_at_least(1, "octets"))

    #: Total size of any other command, lines and literals included: a SEARCH with long
    #: strings, a LOGIN. 1 MiB; past it a synchronizing literal is refused with BAD.
    max_command_size: int = attrs.field(default=1_048_576, validator=_at_least(65536, "octets"))

    #: Literals in one command. LOGIN needs two and a SEARCH may send every string as
    #: one (Thunderbird does for non-ASCII text); 64 leaves room for OR chains.
    max_literals: int = attrs.field(default=64, validator=_at_least(4, "literals"))

    #: Nesting of parenthesised lists, NOT and OR in one command. "OR OR OR a b c d"
    #: nests one level per OR, and clients build such chains for multi-address
    #: searches; 100 keeps the recursive parser far from Python's stack limit.
    max_nesting: int = attrs.field(default=100, validator=_at_least(8, "levels"))

    #: Invalid commands (syntax errors, unknown commands, commands not valid in the
    #: state) before the session ends with BYE. 20, like Postfix's smtpd_hard_error_limit
    #: and the other sansmail cores.
    max_invalid_commands: int = attrs.field(default=20, validator=_at_least(0, "commands"))

    @property
    def append_size(self) -> int:
        """The most octets an APPEND command may hold: the message and its arguments."""
        return self.max_message_size + self.max_line_length
