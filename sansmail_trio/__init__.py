"""sansmail_trio: the Trio adapter for sansmail's protocol cores, and the `sansmail-trio` CLI.

It owns everything the cores must not do: sockets, TLS, time, threads for disk I/O,
signals, and the mail log.
"""

from sansmail_trio._run import run
from sansmail_trio._serve import serve
from sansmail_trio._wire import SansIOConnection, Wire

__all__ = ["SansIOConnection", "Wire", "run", "serve"]
