"""The IMAP command semantics: what a logged-in session does with each command.

Blocking and loop-agnostic, like the store it works on: an adapter (`sansmail_trio`'s
`_imap_server`, or any other event loop's) runs the protocol core
(`sansmail.imap.Connection`), does the authentication and STARTTLS itself, and hands
every other command to an `ImapSession` from a worker thread:

    session = ImapSession(MaildirImapStore(data_dir, hostname=h), mailbox,
                          append_limit=max_message_size, capabilities=caps)
    for response in session.handle(command, rev2=conn.imap4rev2, utf8=conn.utf8):
        send(response)          # a BYE means: close the connection (session.ended)
    session.close()

`capabilities()` gives the CAPABILITY list for a connection's state. FETCH and SEARCH
are evaluated by `fetch` and `search` (pure, over the store's data).
"""

from sansmail.sessions.imapd._capabilities import capabilities
from sansmail.sessions.imapd._fetch import FetchContext, FetchResult, fetch
from sansmail.sessions.imapd._search import SearchContext, search
from sansmail.sessions.imapd._session import ENABLE_EXTENSIONS, ImapSession

__all__ = [
    "ENABLE_EXTENSIONS",
    "FetchContext",
    "FetchResult",
    "ImapSession",
    "SearchContext",
    "capabilities",
    "fetch",
    "search",
]
