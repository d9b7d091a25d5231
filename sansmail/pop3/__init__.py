"""The POP3 server protocol (RFC 1939 and its extensions) as a sans-I/O state machine.
Bytes in, events out: no I/O, no clock, no mailbox decisions (`sansmail.sessions`).

`Connection(SERVER)` parses client commands into events and serialises the
application's responses, enforcing RFC 1939's AUTHORIZATION / TRANSACTION / UPDATE
states, RFC 2449's CAPA and line limits, STLS (RFC 2595), the AUTH exchange's framing
(RFC 5034; the SASL mechanisms are `sansmail.sasl`'s), response codes (RFC 2449 §8,
RFC 3206) and byte-stuffing of multi-line responses.
"""

from sansmail.pop3._config import Config
from sansmail.pop3._connection import Connection
from sansmail.pop3._events import (
    Auth,
    AuthCancel,
    AuthResponse,
    Capa,
    Challenge,
    ConnectionClosed,
    Dele,
    EndOfMultiline,
    Err,
    Event,
    InvalidCommand,
    List,
    MultilineData,
    Noop,
    Ok,
    Pass,
    Quit,
    Retr,
    Rset,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
)
from sansmail.pop3._state import Phase, Stage
from sansmail.pop3._writers import capability_listing

__all__ = [
    "Auth",
    "AuthCancel",
    "AuthResponse",
    "Capa",
    "Challenge",
    "Config",
    "Connection",
    "ConnectionClosed",
    "Dele",
    "EndOfMultiline",
    "Err",
    "Event",
    "InvalidCommand",
    "List",
    "MultilineData",
    "Noop",
    "Ok",
    "Pass",
    "Phase",
    "Quit",
    "Retr",
    "Rset",
    "Stage",
    "Stat",
    "Stls",
    "Top",
    "Uidl",
    "User",
    "capability_listing",
]
