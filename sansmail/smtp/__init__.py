"""The SMTP protocol (RFC 5321 and its extensions) as a sans-I/O state machine, server and
client. Bytes in, events out: no I/O, no clock, no mail decisions (`sansmail.sessions`).

The server role is complete: `Connection(SERVER)` parses commands and message content
into events and serialises the application's `Reply` events, enforcing RFC 5321's
command order, the limits in `Config`, PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME
(RFC 6152), SMTPUTF8 (RFC 6531), CHUNKING (RFC 3030), STARTTLS (RFC 3207), AUTH (RFC 4954:
the exchange's framing; the SASL mechanisms are `sansmail.sasl`'s) and enhanced status
codes (RFC 2034, RFC 3463).

The client role is `ClientConnection`: it serialises the same command events, matches the
server's replies to the commands they answer (pipelined or not), and parses them into the
same `Reply` events; `challenge_data` decodes a 334 AUTH challenge. `sansmail.mail.outbound`
drives it through a whole delivery attempt.
"""

from sansmail.smtp._client import ClientConnection
from sansmail.smtp._client_readers import challenge_data
from sansmail.smtp._client_writers import encode_xtext
from sansmail.smtp._config import Config
from sansmail.smtp._connection import Connection
from sansmail.smtp._events import (
    Auth,
    AuthCancel,
    AuthResponse,
    Bdat,
    ConnectionClosed,
    Data,
    EndOfChunk,
    EndOfMessage,
    Event,
    Hello,
    Help,
    InvalidAuthResponse,
    InvalidCommand,
    InvalidMessage,
    Mail,
    MessageData,
    Noop,
    Quit,
    Rcpt,
    Reply,
    Reset,
    StartTLS,
    Verify,
)
from sansmail.smtp._state import Phase, Stage
from sansmail.smtp._writers import write_reply as serialize_reply

__all__ = [
    "Auth",
    "AuthCancel",
    "AuthResponse",
    "Bdat",
    "ClientConnection",
    "Config",
    "Connection",
    "ConnectionClosed",
    "Data",
    "EndOfChunk",
    "EndOfMessage",
    "Event",
    "Hello",
    "Help",
    "InvalidAuthResponse",
    "InvalidCommand",
    "InvalidMessage",
    "Mail",
    "MessageData",
    "Noop",
    "Phase",
    "Quit",
    "Rcpt",
    "Reply",
    "Reset",
    "Stage",
    "StartTLS",
    "Verify",
    "challenge_data",
    "encode_xtext",
    "serialize_reply",
]
