"""The `backend` and `where` fixtures (`imap_backends`): the session tests that do not
look at Maildir files run on both IMAP store backends."""

from imap_backends import backend, where

__all__ = ["backend", "where"]
