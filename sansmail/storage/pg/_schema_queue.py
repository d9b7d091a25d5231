"""The queue's tables (schema version 1; see `_schema`)."""

from __future__ import annotations

from typing import Final

__all__ = ["QUEUE_TABLES"]

QUEUE_TABLES: Final[tuple[str, ...]] = ()
