"""The ManageSieve event vocabulary, used in both directions.

A server application receives command events (`Authenticate`, `PutScript` ...) and sends
response events. Events are frozen, keyword-only and validated on construction, so no
event can serialise to something a client would misread.

Commands (RFC 5804 §2). Script names travel as `str` (UTF-8 decoded, checked against
§1.6: no control characters, NFC); script content as `bytes`, exactly as sent, since
whether it is a valid script (UTF-8 included) is the Sieve parser's business and its
errors carry positions in those octets. SASL data travels decoded: the base64 of
`Authenticate.initial_response`, `SaslResponse.data` and `Challenge.data` is the wire's.

Responses (RFC 5804 §1.3, §4 response-oknobye): `Ok`, `No` and `Bye`, each with an
optional response code and its argument (`No(code="QUOTA/MAXSIZE")`,
`Ok(code="TAG", code_argument="STARTTLS-SYNC-42")`, `Ok(code="SASL",
code_argument=<base64>)`, `Bye(code="REFERRAL", code_argument="sieve://other.example")`)
and a human-readable text, sent quoted or as a literal when it spans lines (CHECKSCRIPT
errors do). Three answers carry data before their OK and are one event each:
`Capabilities` (the greeting, CAPABILITY, and the listing re-sent after STARTTLS, §1.7,
§2.2), `ScriptList` (LISTSCRIPTS, §2.7) and `Script` (GETSCRIPT, §2.9). `Challenge`
is a server step of an AUTHENTICATE exchange (§2.1).

Server-side only, and never sent: `InvalidCommand` is a command the core refused
(unknown, malformed, not valid in this state); it carries the `No` to send
(`reply_hint`). `ConnectionClosed` means the peer closed its end.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

import attrs

__all__ = [
    "Authenticate",
    "Bye",
    "Capabilities",
    "Capability",
    "Challenge",
    "CheckScript",
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
    "PutScript",
    "RenameScript",
    "Response",
    "SaslCancel",
    "SaslResponse",
    "Script",
    "ScriptList",
    "SetActive",
    "StartTls",
    "Unauthenticate",
    "name_problem",
]


class Event:
    """Base class of every ManageSieve event. Do not subclass outside this module."""

    __slots__ = ()


#: RFC 5804 §4: number = 1*DIGIT ;; 0 - 4,294,967,295.
MAX_NUMBER = 4_294_967_295

# RFC 4422 §3.1: sasl-mech = 1*20mech-char; mech-char = UPPER-ALPHA / DIGIT / "-" / "_".
SASL_MECHANISM = re.compile(r"[A-Z0-9_-]{1,20}")

# RFC 5804 §1.6: a script name MUST NOT contain 0000-001F, 007F-009F, 2028, 2029, FEFF.
_NAME_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")


def name_problem(name: str) -> str | None:
    """Why `name` is not a script name RFC 5804 §1.6 allows, or None if it is.

    The empty name is refused here; SETACTIVE's "" (deactivate) is its own case."""
    if not name:
        return "empty script name"
    if _NAME_FORBIDDEN.search(name):
        return "control character in a script name"
    if not unicodedata.is_normalized("NFC", name):
        # §1.6: names are Net-Unicode (RFC 5198), which is NFC.
        return "script name not in Unicode normalization form C"
    return None


def _script_name(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    problem = name_problem(value)
    if problem is not None:
        raise ValueError(f"{attribute.name}: {problem}: {value!r}")


def _active_name(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if value:  # "" deactivates (RFC 5804 §2.8)
        _script_name(_inst, attribute, value)


def _no_nul(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if "\0" in value:
        raise ValueError(f"{attribute.name} must not contain NUL")


def _upper(value: str) -> str:
    # RFC 4422 §3.1 compares mechanism names case-insensitively; events hold upper case.
    return value.upper()


def _mechanism_ok(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not SASL_MECHANISM.fullmatch(value):
        raise ValueError(f"{attribute.name} is not a SASL mechanism name: {value!r}")


# --- commands (client -> server) ---------------------------------------------------------


@attrs.frozen(kw_only=True)
class Authenticate(Event):
    """AUTHENTICATE "mechanism" ["initial response"] (RFC 5804 §2.1). Upper-case
    mechanism; `initial_response` decoded from base64 (b"" for ""), None when absent."""

    mechanism: str = attrs.field(converter=_upper, validator=_mechanism_ok)
    initial_response: bytes | None = attrs.field(default=None, repr=False)


@attrs.frozen(kw_only=True)
class SaslResponse(Event):
    """A client string of the AUTHENTICATE exchange (RFC 5804 §2.1), base64-decoded."""

    data: bytes = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class SaslCancel(Event):
    """The client's "*": it abandons the AUTHENTICATE exchange; answer with `No`."""


@attrs.frozen(kw_only=True)
class StartTls(Event):
    """STARTTLS (RFC 5804 §2.2)."""


@attrs.frozen(kw_only=True)
class Logout(Event):
    """LOGOUT (RFC 5804 §2.3): answer `Ok` (errata 7825), then the session is over."""


@attrs.frozen(kw_only=True)
class Capability(Event):
    """CAPABILITY (RFC 5804 §2.4): answer `Capabilities`."""


@attrs.frozen(kw_only=True)
class HaveSpace(Event):
    """HAVESPACE name size (RFC 5804 §2.5): would a script this big fit?"""

    name: str = attrs.field(validator=_script_name)
    size: int = attrs.field(validator=[attrs.validators.ge(0), attrs.validators.le(MAX_NUMBER)])


@attrs.frozen(kw_only=True)
class PutScript(Event):
    """PUTSCRIPT name content (RFC 5804 §2.6)."""

    name: str = attrs.field(validator=_script_name)
    content: bytes = attrs.field(repr=lambda data: f"<{len(data)} octets>")


@attrs.frozen(kw_only=True)
class CheckScript(Event):
    """CHECKSCRIPT content (RFC 5804 §2.12): validate without storing."""

    content: bytes = attrs.field(repr=lambda data: f"<{len(data)} octets>")


@attrs.frozen(kw_only=True)
class ListScripts(Event):
    """LISTSCRIPTS (RFC 5804 §2.7): answer `ScriptList`."""


@attrs.frozen(kw_only=True)
class SetActive(Event):
    """SETACTIVE name (RFC 5804 §2.8); the empty name deactivates every script."""

    name: str = attrs.field(validator=_active_name)


@attrs.frozen(kw_only=True)
class GetScript(Event):
    """GETSCRIPT name (RFC 5804 §2.9): answer `Script`."""

    name: str = attrs.field(validator=_script_name)


@attrs.frozen(kw_only=True)
class DeleteScript(Event):
    """DELETESCRIPT name (RFC 5804 §2.10); the active script is refused (ACTIVE)."""

    name: str = attrs.field(validator=_script_name)


@attrs.frozen(kw_only=True)
class RenameScript(Event):
    """RENAMESCRIPT old new (RFC 5804 §2.11.1)."""

    old_name: str = attrs.field(validator=_script_name)
    new_name: str = attrs.field(validator=_script_name)


@attrs.frozen(kw_only=True)
class Noop(Event):
    """NOOP [tag] (RFC 5804 §2.13): echo the tag as `Ok(code="TAG", code_argument=tag)`."""

    tag: str | None = attrs.field(default=None)


@attrs.frozen(kw_only=True)
class Unauthenticate(Event):
    """UNAUTHENTICATE (RFC 5804 §2.14.1): back to the non-authenticated state."""


@attrs.frozen(kw_only=True)
class InvalidCommand(Event):
    """A command the core refused; send `reply_hint` (a `No`) back."""

    line: bytes
    reason: str
    reply_hint: No


@attrs.frozen(kw_only=True)
class ConnectionClosed(Event):
    """The client closed its end."""


# --- responses (server -> client) ----------------------------------------------------------

# RFC 5804 §4: resp-code = "AUTH-TOO-WEAK" / "ENCRYPT-NEEDED" / "QUOTA" ["/" ("MAXSCRIPTS" /
# "MAXSIZE")] / resp-code-sasl / resp-code-referral / "TRANSITION-NEEDED" / "TRYLATER" /
# "ACTIVE" / "NONEXISTENT" / "ALREADYEXISTS" / "WARNINGS" / "TAG" SP string /
# extension-resp-code; extension-resp-code = iana-token [SP string], iana-token an atom.
RESP_CODE = re.compile(r"[A-Z][A-Z0-9-]*(?:/[A-Z][A-Z0-9-]*)*")
#: Codes whose argument is required; every other code may carry a string or nothing.
CODES_WITH_ARGUMENT = frozenset({"TAG", "SASL", "REFERRAL"})
# RFC 5804 §3: sieveurl = "sieve://" authority ["/" [owner "/"] scriptname]; sent bare.
_SIEVE_URL = re.compile(r"sieve://[!#-'*-~]+")


@attrs.frozen(kw_only=True)
class _Status(Event):
    text: str = attrs.field(default="", validator=_no_nul)
    code: str | None = attrs.field(default=None)
    code_argument: str | None = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        code, argument = self.code, self.code_argument
        if code is None:
            if argument is not None:
                raise ValueError("code_argument without a code")
            return
        if not RESP_CODE.fullmatch(code):
            raise ValueError(f"not a ManageSieve response code: {code!r}")
        if code in CODES_WITH_ARGUMENT and argument is None:
            raise ValueError(f"response code {code} needs an argument")
        if argument is not None and "\0" in argument:
            raise ValueError("code_argument must not contain NUL")
        if code == "REFERRAL" and not _SIEVE_URL.fullmatch(argument or ""):
            raise ValueError(f"REFERRAL needs a sieve:// URL: {argument!r}")


@attrs.frozen(kw_only=True)
class Ok(_Status):
    """OK [(code [argument])] [text]."""


@attrs.frozen(kw_only=True)
class No(_Status):
    """NO [(code [argument])] [text]: the command failed, the session goes on. Codes:
    QUOTA, QUOTA/MAXSCRIPTS, QUOTA/MAXSIZE, ACTIVE, NONEXISTENT, ALREADYEXISTS,
    ENCRYPT-NEEDED, AUTH-TOO-WEAK, TRANSITION-NEEDED, TRYLATER (RFC 5804 §1.3)."""


@attrs.frozen(kw_only=True)
class Bye(_Status):
    """BYE [(code [argument])] [text]: the server closes the session (RFC 5804 §1.2)."""


Response = Ok | No | Bye


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _words(_inst: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for word in value:
        if not word or any(c <= " " or c == "\x7f" for c in word):
            raise ValueError(f"{attribute.name}: not a word: {word!r}")


def _mechanisms(_inst: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for word in value:
        if not SASL_MECHANISM.fullmatch(word):
            raise ValueError(f"{attribute.name}: not a SASL mechanism name: {word!r}")


@attrs.frozen(kw_only=True)
class Capabilities(Event):
    """The capability listing and the OK after it (RFC 5804 §1.7): the greeting, the
    answer to CAPABILITY, and what the server says again after STARTTLS (§2.2)."""

    implementation: str = attrs.field(validator=_no_nul)
    sasl: tuple[str, ...] = attrs.field(default=(), converter=_strings, validator=_mechanisms)
    sieve: tuple[str, ...] = attrs.field(default=(), converter=_strings, validator=_words)
    starttls: bool = False
    notify: tuple[str, ...] = attrs.field(default=(), converter=_strings, validator=_words)
    max_redirects: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(0))
    )
    owner: str | None = attrs.field(default=None)
    language: str | None = attrs.field(default=None)
    version: str = "1.0"
    text: str = attrs.field(default="", validator=_no_nul)


@attrs.frozen(kw_only=True)
class ScriptList(Event):
    """The answer to LISTSCRIPTS (RFC 5804 §2.7): every name, the active one (at most
    one) marked ACTIVE, then OK."""

    names: tuple[str, ...] = attrs.field(converter=_strings)
    active: str | None = None

    def __attrs_post_init__(self) -> None:
        for name in self.names:
            _script_name(self, attrs.fields(ScriptList).names, name)
        if self.active is not None and self.active not in self.names:
            raise ValueError(f"the active script {self.active!r} is not listed")


@attrs.frozen(kw_only=True)
class Script(Event):
    """The answer to GETSCRIPT (RFC 5804 §2.9): the script as a literal, then OK."""

    content: bytes = attrs.field(repr=lambda data: f"<{len(data)} octets>")


@attrs.frozen(kw_only=True)
class Challenge(Event):
    """A server step of AUTHENTICATE (RFC 5804 §2.1), decoded; sent as a base64 string."""

    data: bytes = attrs.field(default=b"")
