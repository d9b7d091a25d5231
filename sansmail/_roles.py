"""Roles and signals shared by every protocol core.

`Role` says which end of a conversation a connection object plays. `Signal` is what
`next_event()` returns when it has no event to give: `NEED_DATA` (feed me more bytes)
or `PAUSED` (I hold bytes but will not parse them until you act: reply to the pending
command, finish a TLS handshake, or close).
"""

from __future__ import annotations

import enum

__all__ = ["CLIENT", "NEED_DATA", "PAUSED", "SERVER", "Role", "Signal"]


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class Signal(enum.Enum):
    NEED_DATA = "need-data"
    PAUSED = "paused"


CLIENT = Role.CLIENT
SERVER = Role.SERVER
NEED_DATA = Signal.NEED_DATA
PAUSED = Signal.PAUSED
