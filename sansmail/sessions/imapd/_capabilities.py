"""The CAPABILITY list of the IMAP server (RFC 9051 §6.1.1, §7.2.2).

Loop-agnostic, so every adapter advertises the same thing: what the session code
implements, plus what depends on the connection (TLS, whether login is allowed yet).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["capabilities"]

# RFC 9051 §7.2.2 lists IMAP4rev2 first; rev1 clients look for IMAP4rev1 (RFC 9051
# appendix E: a server may offer both).
_SESSION = (
    "IMAP4rev1",
    "IMAP4rev2",
    "LITERAL+",  # RFC 7888
    "SASL-IR",  # RFC 4959
    "ENABLE",  # RFC 5161
    "ID",  # RFC 2971
    "IDLE",  # RFC 2177 (and RFC 9051 §6.3.13)
    "NAMESPACE",  # RFC 2342
    "UNSELECT",  # RFC 3691
    "UIDPLUS",  # RFC 4315
    "MOVE",  # RFC 6851
    "SPECIAL-USE",  # RFC 6154
    "LIST-EXTENDED",  # RFC 5258
    "LIST-STATUS",  # RFC 5819
    "CHILDREN",  # RFC 3348
    "ESEARCH",  # RFC 4731
    "SEARCHRES",  # RFC 5182
    "SORT",  # RFC 5256
    "SORT=DISPLAY",  # RFC 5957
    "THREAD=ORDEREDSUBJECT",  # RFC 5256
    "THREAD=REFERENCES",  # RFC 5256
    "BINARY",  # RFC 3516
    "STATUS=SIZE",  # RFC 8438
    "QUOTA",  # RFC 9208
    "QUOTA=RES-STORAGE",  # RFC 9208 §5.1
    "UTF8=ACCEPT",  # RFC 6855
    "MULTIAPPEND",  # RFC 3502
    "CONDSTORE",  # RFC 7162 §3.1
    "QRESYNC",  # RFC 7162 §3.2
    "COMPRESS=DEFLATE",  # RFC 4978
)


def capabilities(
    *,
    append_limit: int,
    authenticated: bool,
    starttls: bool = False,
    login_allowed: bool = True,
    mechanisms: Sequence[str] = (),
) -> list[str]:
    """The capability names to advertise.

    `starttls`: offer STARTTLS (TLS available and not yet on). `login_allowed`: LOGIN
    and AUTHENTICATE may be used now; otherwise LOGINDISABLED and no AUTH= (RFC 9051
    §6.2.3, §7.2.2). After login neither STARTTLS nor AUTH= is listed.
    """
    out = list(_SESSION)
    out.append(f"APPENDLIMIT={append_limit}")  # RFC 7889
    if not authenticated:
        if starttls:
            out.append("STARTTLS")
        if login_allowed:
            out += [f"AUTH={name}" for name in mechanisms]
        else:
            out.append("LOGINDISABLED")
    return out
