"""Sieve's meaning checks (RFC 5228 §3.2 ``require``, and each command's arguments).

Grows into the command and test table; for now it collects the ``require``s.
"""

from __future__ import annotations

import attrs

from sansmail.mail.sieve._ast import Script, StringList

__all__ = ["SUPPORTED", "validate"]

SUPPORTED: frozenset[str] = frozenset()


def validate(script: Script) -> Script:
    """``script`` with its ``requires``; a SieveError at the first error."""
    names: set[str] = set()
    for command in script.commands:
        if command.name == "require":
            for argument in command.arguments:
                if isinstance(argument, StringList):
                    names.update(argument.strings)
    return attrs.evolve(script, requires=frozenset(names))
