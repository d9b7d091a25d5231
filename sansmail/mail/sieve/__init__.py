"""Sieve (RFC 5228 and its extensions): users' mail filters, as pure code that reads no
file, message or clock of its own and sends nothing: the caller does all of that.

`_ast` is the tree; the parser (text to tree, errors with line and column) and the
evaluator (a tree, a message and its envelope to a list of actions) build on it;
`run_sequence` runs a site script and the user's one after the other into one `Plan`. No
I/O: the caller reads scripts and messages and carries the actions out.
"""

from sansmail.mail.sieve._actions import (
    Action,
    AddHeader,
    DeleteHeader,
    Discard,
    Error,
    FileInto,
    Keep,
    Redirect,
    Reject,
    Result,
    Vacation,
)
from sansmail.mail.sieve._ast import (
    Argument,
    Command,
    Number,
    Position,
    Script,
    StringList,
    Tag,
    Test,
)
from sansmail.mail.sieve._eval import Limits, SieveContext, SieveEnvelope, SieveMessage, evaluate
from sansmail.mail.sieve._lexer import SieveError
from sansmail.mail.sieve._parser import parse, parse_bytes
from sansmail.mail.sieve._sequence import (
    Copy,
    IncludeNotParsedError,
    Plan,
    folder_key,
    run_sequence,
)
from sansmail.mail.sieve._vacation import VacationReply, vacation_reply
from sansmail.mail.sieve._validate import SUPPORTED

__all__ = ["Argument", "Command", "Number", "Position", "Script", "StringList", "Tag", "Test"]
__all__ += ["SUPPORTED", "SieveError", "parse", "parse_bytes"]
__all__ += ["Action", "AddHeader", "DeleteHeader", "Discard", "Error", "FileInto", "Keep"]
__all__ += ["Limits", "Redirect", "Reject", "Result", "SieveContext", "SieveEnvelope"]
__all__ += ["SieveMessage", "Vacation", "VacationReply", "evaluate", "vacation_reply"]
__all__ += ["Copy", "IncludeNotParsedError", "Plan", "folder_key", "run_sequence"]
