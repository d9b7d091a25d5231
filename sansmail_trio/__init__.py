"""sansmail_trio: the Trio adapter for sansmail's protocol cores, and the `sansmail-trio` CLI.

It owns everything the cores must not do: sockets, TLS, time, threads for disk I/O,
signals, and the mail log. It makes no mail decisions (those are in `sansmail`).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["SansIOConnection", "Wire", "run", "serve"]

# Loaded on first use, so that `sansmail-trio user add` and the other short commands do
# not import the whole server (half a second of start-up, paid by every script).
_HOMES = {
    "SansIOConnection": "sansmail_trio._wire",
    "Wire": "sansmail_trio._wire",
    "run": "sansmail_trio._run",
    "serve": "sansmail_trio._serve",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'sansmail_trio' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
