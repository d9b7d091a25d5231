"""The tables of users, aliases, Sieve scripts and the greylist (schema version 1; see
`_schema`)."""

from __future__ import annotations

from typing import Final

__all__ = ["ACCOUNT_TABLES"]

ACCOUNT_TABLES: Final[tuple[str, ...]] = ()
