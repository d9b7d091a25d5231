"""The ManageSieve server protocol (RFC 5804) as a sans-I/O state machine.
Bytes in, events out: no I/O, no clock, no script storage or Sieve parsing (the session's).

`Connection(SERVER)` parses client commands, with their quoted strings and literals
({n} and {n+}), into events and serialises the application's answers (OK / NO / BYE
with response codes, the capability listing, LISTSCRIPTS and GETSCRIPT answers, SASL
challenges), enforcing the non-authenticated and authenticated states, the
AUTHENTICATE exchange's framing (the SASL mechanisms are `sansmail.sasl`'s), STARTTLS
with the capability listing re-sent after it, script-name rules (§1.6) and the limits
in `Config`.
"""

from sansmail.managesieve._config import Config
from sansmail.managesieve._connection import Connection
from sansmail.managesieve._events import (
    Authenticate,
    Bye,
    Capabilities,
    Capability,
    Challenge,
    CheckScript,
    ConnectionClosed,
    DeleteScript,
    Event,
    GetScript,
    HaveSpace,
    InvalidCommand,
    ListScripts,
    Logout,
    No,
    Noop,
    Ok,
    PutScript,
    RenameScript,
    SaslCancel,
    SaslResponse,
    Script,
    ScriptList,
    SetActive,
    StartTls,
    Unauthenticate,
    name_problem,
)
from sansmail.managesieve._state import Phase, Stage
from sansmail.managesieve._writers import write_string

__all__ = [
    "Authenticate",
    "Bye",
    "Capabilities",
    "Capability",
    "Challenge",
    "CheckScript",
    "Config",
    "Connection",
    "ConnectionClosed",
    "DeleteScript",
    "Event",
    "GetScript",
    "HaveSpace",
    "InvalidCommand",
    "ListScripts",
    "Logout",
    "No",
    "Noop",
    "Ok",
    "Phase",
    "PutScript",
    "RenameScript",
    "SaslCancel",
    "SaslResponse",
    "Script",
    "ScriptList",
    "SetActive",
    "Stage",
    "StartTls",
    "Unauthenticate",
    "name_problem",
    "write_string",
]
