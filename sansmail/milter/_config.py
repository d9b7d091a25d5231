"""Protocol limits of the milter client core.

Only knobs of the protocol live here; the milters' addresses, their timeouts and the
default action when one is down belong to the application.
"""

from __future__ import annotations

from typing import Any

import attrs

from sansmail.milter._protocol import MAX_CHUNK

__all__ = ["Config"]


def _at_least(minimum: int, why: str) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
        if type(value) is not int or value < minimum:
            raise ValueError(f"{attribute.name} must be an integer >= {minimum} ({why})")

    return check


@attrs.frozen(kw_only=True)
class Config:
    """Limits of one milter connection."""

    #: Longest packet accepted from the milter, its reply byte included (the 4 length
    #: bytes not). A body chunk is at most MAX_CHUNK octets plus the reply byte
    #: (libmilter's MILTER_CHUNK_SIZE); the slack is for a header or a multi-line reply
    #: code, which libmilter also keeps under 64 KiB. A longer one ends the connection
    #: as soon as its length is read.
    max_packet: int = attrs.field(
        default=MAX_CHUNK + 1 + 4096, validator=_at_least(MAX_CHUNK + 1, "a whole body chunk")
    )

    #: Modifications one milter may make to one message (body chunks not counted): past
    #: this the milter is broken, not busy.
    max_modifications: int = attrs.field(default=10_000, validator=_at_least(1, "modifications"))

    #: Octets of replacement body one milter may send for one message. The application
    #: should set it to its message size limit; 64 MiB by default.
    max_replaced_body: int = attrs.field(
        default=64 << 20, validator=_at_least(MAX_CHUNK, "one chunk")
    )
