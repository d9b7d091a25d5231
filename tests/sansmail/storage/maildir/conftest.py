"""The `backend` and `where` fixtures of the IMAP store tests (`imapstore_helpers`)."""

from imap_backends import backend, where

__all__ = ["backend", "where"]
