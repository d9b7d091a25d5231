"""Protocol limits of the ManageSieve server core.

Only knobs of the protocol live here; timeouts, TLS contexts, the capability text, the
quotas a store enforces and the scripts themselves belong to the application.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Config"]


def _at_least(minimum: int, why: str) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
        if type(value) is not int or value < minimum:
            raise ValueError(f"{attribute.name} must be an integer >= {minimum} ({why})")

    return check


@attrs.frozen(kw_only=True)
class Config:
    """Limits of one ManageSieve server connection."""

    #: Longest line of a command, CRLF included; a command holding literals is several
    #: lines, each held to this. RFC 5804 §4 limits a quoted string to 1024 octets, so a
    #: command of three quoted strings fits in 4 KiB; the rest is room for a SASL initial
    #: response in quoted form (RFC 4954 §4 allows 12288 octets of base64). A longer line
    #: ends the session: a peer that never sends CRLF cannot make us buffer without bound.
    max_line: int = attrs.field(default=16384, validator=_at_least(4096, "RFC 5804 §4"))

    #: Octets of literal data ({n} or {n+}) one command may carry in all: the largest
    #: script PUTSCRIPT or CHECKSCRIPT accepts (RFC 5804 §2.6: too big is
    #: NO (QUOTA/MAXSIZE)). A larger literal is read and dropped as it arrives, never
    #: buffered, then the command is answered NO.
    max_literal: int = attrs.field(default=1024 * 1024, validator=_at_least(1024, "a script"))

    #: Longest script name, in octets of UTF-8. RFC 5804 §1.6 asks servers to allow at
    #: least 128 Unicode characters; 512 octets holds 128 of any width.
    max_name: int = attrs.field(default=512, validator=_at_least(512, "RFC 5804 §1.6"))

    #: Invalid commands (unknown, malformed, or not valid in the current state) a client
    #: may send before the session ends with BYE. 20, like the other cores.
    max_invalid_commands: int = attrs.field(default=20, validator=_at_least(0, "commands"))
