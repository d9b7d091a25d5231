"""sansmail: mail protocols as sans-I/O state machines, plus the pure domain logic of a
mail server (addresses, policy, the Maildir store).

Nothing in this package opens a socket, starts a thread, awaits, or reads the clock (the
store does blocking file I/O and stamps files, and says so). The Trio adapter lives in
`sansmail_trio`; any other event loop can drive these cores the same way.
"""

from sansmail._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from sansmail._roles import CLIENT, NEED_DATA, PAUSED, SERVER, Role, Signal
from sansmail._version import __version__

__all__ = [
    "CLIENT",
    "NEED_DATA",
    "PAUSED",
    "SERVER",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Role",
    "Signal",
    "__version__",
]
