"""Serialising server replies, and reading back what our own EHLO reply advertised.

RFC 5321 §4.2: a reply is one or more lines "code-text" CRLF, all but the last with "-"
after the code, the last with a space (or nothing, when its text is empty). With
ENHANCEDSTATUSCODES advertised, every 2xx/4xx/5xx line starts its text with the RFC 3463
status code, except the greeting and the reply to EHLO/HELO (RFC 2034 §3); 3xx replies
(354) never carry one, since RFC 3463 defines classes 2, 4 and 5 only.

A 334 AUTH challenge with no data keeps the space after the code: "334 " (RFC 4954 §4).
"""

from __future__ import annotations

import re

from sansmail._errors import LocalProtocolError
from sansmail.sasl import RemoteSASLError, decode_base64_strict
from sansmail.smtp._events import Reply

__all__ = ["is_challenge_text", "read_extensions", "write_reply"]

# The status a reply gets when ENHANCEDSTATUSCODES is on and it names none (RFC 3463 §3.1:
# X.0.0 "other undefined status").
_DEFAULT_STATUS = {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}

# RFC 5321 §4.1.1.1: ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
_EHLO_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def is_challenge_text(text: str) -> bool:
    """Whether `text` may follow "334 ": base64 and nothing else (RFC 4954 §4), in the
    canonical form a client's strict decoder accepts."""
    if not text.isascii():
        return False
    try:
        decode_base64_strict(text.encode("ascii"))
    except RemoteSASLError:
        return False
    return True


def write_reply(reply: Reply, *, enhanced: bool, utf8: bool) -> bytes:
    """The bytes of `reply`. `enhanced`: prefix the status code; `utf8`: non-ASCII text
    is allowed (SMTPUTF8 was advertised, RFC 6531 §3.7.4), else it is an error."""
    code = reply.code
    status = None
    if enhanced and code // 100 != 3:
        status = reply.enhanced or _DEFAULT_STATUS[code // 100]
    lines = reply.lines
    if status is not None:
        lines = tuple(f"{status} {text}" if text else status for text in lines)
    last = lines[-1]
    text = f"{code} {last}\r\n" if last or code == 334 else f"{code}\r\n"
    if len(lines) > 1:
        text = "".join(f"{code}-{line}\r\n" for line in lines[:-1]) + text
    try:
        return text.encode("utf-8" if utf8 else "ascii")
    except UnicodeEncodeError:
        raise LocalProtocolError(f"non-ASCII reply text without SMTPUTF8: {reply.text!r}") from None


def read_extensions(reply: Reply) -> dict[str, str]:
    """The extensions a 250 reply to EHLO advertises: keyword (upper case) -> parameters.

    Lines whose first word is not an ehlo-keyword are ignored rather than refused: the
    de-facto "AUTH=PLAIN LOGIN" line for old Outlook clients is one of them.
    """
    extensions: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if _EHLO_KEYWORD.fullmatch(keyword):
            extensions[keyword.upper()] = params.strip()
    return extensions
