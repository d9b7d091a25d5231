"""The IMAP server's decisions, loop-agnostic: what one connection does from its greeting
to its BYE.

`ImapConversation` answers everything the core hands out: the not-authenticated state
(greeting, CAPABILITY, STARTTLS, LOGIN and AUTHENTICATE through `sansmail.sessions.login`),
the BYEs that end a connection and the mail log's lines; once logged in it hands the
commands of the authenticated and selected states to an `ImapSession`, which blocks on
the store (an adapter calls it from a worker thread). `sansmail_trio._imap_server` is the
Trio adapter; `_conversation.py` sketches what any other event loop's would do.

`capabilities()` gives the CAPABILITY list for a connection's state. FETCH and SEARCH
are evaluated by `fetch` and `search` (pure, over the store's data).
"""

from sansmail.sessions.imapd._capabilities import capabilities
from sansmail.sessions.imapd._conversation import (
    AUTOLOGOUT,
    IDLE_KEEPALIVE,
    INTERNAL_ERROR,
    ImapConversation,
    ImapService,
)
from sansmail.sessions.imapd._fetch import FetchContext, FetchResult, fetch
from sansmail.sessions.imapd._search import SearchContext, search
from sansmail.sessions.imapd._session import ENABLE_EXTENSIONS, ImapSession

__all__ = [
    "AUTOLOGOUT",
    "ENABLE_EXTENSIONS",
    "IDLE_KEEPALIVE",
    "INTERNAL_ERROR",
    "FetchContext",
    "FetchResult",
    "ImapConversation",
    "ImapService",
    "ImapSession",
    "SearchContext",
    "capabilities",
    "fetch",
    "search",
]
