"""What a configuration asks for that this version accepts but does not do yet.

CONTRACT.md fixes every key from the first release on, so that a file written today
keeps working when the features behind its keys arrive. Until then such a key is read
and checked like any other (a wrong value is still a problem), and `not_in_force` says,
one line per key, that it is accepted but not in force and what happens instead.
``check-config`` prints those lines as warnings and ``serve`` logs the same lines when it
starts.

A key is reported when its value asks for something: a listener for a service that is
not built, a check that is not ``"off"``, a list that is not empty, a value other than
the default for keys whose default does nothing. A key left at an inert default (``dnsbl
= []``, ``backend = "maildir"``) is not worth a line. `UNBUILT` is the table: when a
feature arrives, its rows leave it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from sansmail.config import _values
from sansmail.config._model import BUILT_SERVICES, Config

__all__ = ["UNBUILT", "not_in_force"]

#: (key, what it asks for, what happens instead), in the order of CONTRACT.md.
#: Empty since ``[storage] backend = "postgresql"`` was built: every key of CONTRACT.md
#: is in force; the table stays for the keys a later contract adds.
UNBUILT: Final[tuple[tuple[str, Callable[[Config], bool], str], ...]] = ()


def not_in_force(config: Config) -> list[str]:
    """One line per key of `config` that asks for something not built yet, each
    ``file: key: accepted but not in force yet ...: what happens instead``."""
    where = config.source_name
    found = [
        _line(where, f"listen.{service}", f"the listener on {_shown(addresses)} is skipped")
        for service, addresses in config.listen.items()
        if service not in BUILT_SERVICES
    ]
    found.extend(_line(where, key, instead) for key, asks, instead in UNBUILT if asks(config))
    return found


def _line(where: str, key: str, instead: str) -> str:
    return (
        f"{where}: {key}: accepted but not in force yet (not built yet in this version): {instead}"
    )


def _shown(addresses: tuple[tuple[str, int], ...]) -> str:
    return ", ".join(_values.show_address(address) for address in addresses)
