"""The fixed replies of an SMTP session, built once: constructing a validated Reply per
command was a visible share of the per-message cost."""

from __future__ import annotations

from sansmail.smtp import Reply

MAIL_OK = Reply(code=250, lines="Ok", enhanced="2.1.0")
OK = Reply(code=250, lines="Ok", enhanced="2.0.0")
START_DATA = Reply(code=354, lines="End data with <CR><LF>.<CR><LF>")
BYE = Reply(code=221, lines="Bye", enhanced="2.0.0")
# RFC 5321 §3.5.3: 252 lets us neither confirm nor deny a user, which keeps the user list
# from being harvested.
CANNOT_VRFY = Reply(
    code=252, lines="Cannot verify the user, but will accept mail for delivery", enhanced="2.5.2"
)
HELP_REPLY = Reply(
    code=214,
    lines=(
        "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT",
        "See RFC 5321 for their use",
    ),
    enhanced="2.0.0",
)
READY_FOR_TLS = Reply(code=220, lines="Ready to start TLS", enhanced="2.0.0")
# RFC 4954 §6 and RFC 3463/5248 for each of these.
AUTH_OK = Reply(code=235, lines="Authentication successful", enhanced="2.7.0")
AUTH_FAILED = Reply(code=535, lines="Authentication credentials invalid", enhanced="5.7.8")
AUTH_CANCELLED = Reply(code=501, lines="Authentication cancelled", enhanced="5.0.0")
AUTH_THROTTLED = Reply(
    code=454, lines="Too many authentication failures, try again later", enhanced="4.7.0"
)
NO_INITIAL_RESPONSE = Reply(
    code=501, lines="This mechanism takes no initial response", enhanced="5.5.2"
)
INTERNAL_ERROR = Reply(code=421, lines="Internal error, closing connection", enhanced="4.3.0")
AUTH_REQUIRED = Reply(code=530, lines="Authentication required", enhanced="5.7.0")
ENCRYPTION_REQUIRED = Reply(
    code=538, lines="Encryption required: issue STARTTLS first", enhanced="5.7.11"
)
NOT_STORED = Reply(
    code=451, lines="Local error in processing, message not stored", enhanced="4.3.0"
)
