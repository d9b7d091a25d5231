"""sansmail: a mail server's protocols as sans-I/O state machines, with its decisions,
sessions and storage. No sockets, threads, awaits or clock reads (storage blocks on files).

The parts: the protocol cores `smtp`, `pop3`, `imap`, `sasl`, `mime` (bytes in, events
out); `mail` (pure decisions); `sessions` (what a server does with each command);
`storage` (Maildir, queue, users, aliases: blocking file I/O); `config`.

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
