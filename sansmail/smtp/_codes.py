"""The replies the server core suggests (`reply_hint`) for what it refuses by itself.

Each reply pairs an RFC 5321 reply code (§4.2.2 lists them, §4.3.2 says which command
may get which) with an RFC 3463 enhanced status code (subjects and details as registered
by RFC 5248). They are built once at import: handing one out costs nothing.

Enhanced codes used here, from RFC 3463 §3:
  X.1.3 bad destination mailbox address syntax   X.1.7 bad sender mailbox address syntax
  X.3.4 message too big for system               X.5.1 invalid command (sequence, support)
  X.5.2 syntax error (command not understood)    X.5.3 too many recipients
  X.5.4 invalid command arguments                X.6.0 other or undefined media error
  X.7.0 other or undefined security status
and from RFC 6531 §3.5 (registered by RFC 5248's registry): X.6.7 non-ASCII addresses not
permitted for that sender/recipient; from RFC 4954 §6: X.5.6 authentication exchange line
too long, X.7.8 credentials invalid, X.7.9 mechanism too weak, X.7.11 encryption required,
X.7.12 password transition needed.

The AUTH section also holds the replies the *application* gives in an AUTH exchange
(success, bad credentials ...): the core never sends those by itself, but one wording
for them belongs beside the core's own.
"""

from __future__ import annotations

from sansmail.smtp._events import Reply


def _reply(code: int, enhanced: str, text: str) -> Reply:
    return Reply(code=code, lines=(text,), enhanced=enhanced)


# --- Commands the core cannot parse -------------------------------------------------

# RFC 5321 §4.2.2 "500 Syntax error, command unrecognized"; §4.2.4: 500 for a verb the
# server does not recognise. RFC 3463 X.5.2.
UNRECOGNIZED = _reply(500, "5.5.2", "Command not recognized")

# RFC 5321 §4.2.2 notes that 500 "may include errors such as command line too long";
# §4.5.3.1 gives "500 Line too long" as the reply for a line over a limit.
LINE_TOO_LONG = _reply(500, "5.5.2", "Line too long")

# A NUL or other octet no command can contain (RFC 5321 §4.1.1: commands are text).
BAD_OCTET = _reply(500, "5.5.2", "Command contains a NUL")

# RFC 5321 §4.2.4: 502 for a command that is recognised but not implemented (EXPN, TURN,
# SEND, SOML, SAML, ETRN; BDAT, STARTTLS and AUTH when not advertised, which covers AUTH
# after HELO: nothing is advertised to a HELO client).
# RFC 3463 X.5.1 covers "unsupported" commands.
NOT_IMPLEMENTED = _reply(502, "5.5.1", "Command not implemented")

# RFC 5321 §4.2.2 "501 Syntax error in parameters or arguments"; RFC 3463 X.5.4.
SYNTAX_ARGUMENTS = _reply(501, "5.5.4", "Syntax error in parameters or arguments")
NO_ARGUMENTS = _reply(501, "5.5.4", "This command takes no arguments")
EHLO_SYNTAX = _reply(501, "5.5.4", "Syntax: EHLO domain")
HELO_SYNTAX = _reply(501, "5.5.4", "Syntax: HELO domain")
MAIL_SYNTAX = _reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = _reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
VRFY_SYNTAX = _reply(501, "5.5.4", "Syntax: VRFY string")
BDAT_SYNTAX = _reply(501, "5.5.4", "Syntax: BDAT size [LAST]")
NON_ASCII_ARGUMENT = _reply(501, "5.5.4", "Non-ASCII octets are not allowed here")
BAD_UTF8 = _reply(501, "5.5.4", "Invalid UTF-8")
BAD_PARAMETER = _reply(501, "5.5.4", "Malformed or repeated parameter")

# RFC 3463 X.1.7 / X.1.3 with RFC 5321's 501 (§4.3.2 lists 501 for MAIL and RCPT via
# §4.2.2's "syntax error in parameters").
BAD_SENDER = _reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT = _reply(501, "5.1.3", "Bad recipient address syntax")
# RFC 5321 §4.1.1.3: RCPT has no null path; "<>" is not a mailbox.
NULL_RECIPIENT = _reply(501, "5.1.3", "The null path <> is not a recipient")

# RFC 6531 §3.5: a non-ASCII address on a session or transaction without SMTPUTF8.
NON_ASCII_ADDRESS = _reply(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")

# RFC 5321 §4.1.1.11 and §4.2.3: "555 MAIL FROM/RCPT TO parameters not recognized or
# not implemented"; RFC 3463 X.5.4.
UNKNOWN_PARAMETER = _reply(555, "5.5.4", "Parameter not recognized or not implemented")

# --- DSN parameters (RFC 3461 §4), refused with RFC 5321's 501 and RFC 3463 X.5.4 ---------

# §4.3: "RET=FULL" or "RET=HDRS", nothing else.
BAD_RET = _reply(501, "5.5.4", "RET must be FULL or HDRS")
# §4.4: ENVID is xtext of at most 100 characters.
BAD_ENVID = _reply(501, "5.5.4", "ENVID must be xtext of at most 100 characters")
# §4.1: "NOTIFY=NEVER", or a comma list of SUCCESS, FAILURE and DELAY.
BAD_NOTIFY = _reply(501, "5.5.4", "NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY")
# §4.2: ORCPT is addr-type ";" xtext, at most 500 characters in all.
BAD_ORCPT = _reply(501, "5.5.4", "ORCPT must be addr-type;xtext of at most 500 characters")

# --- Commands out of sequence (RFC 5321 §4.1.4, §4.2.2 "503 Bad sequence") -------------

NEED_HELLO = _reply(503, "5.5.1", "Send EHLO or HELO first")
NESTED_MAIL = _reply(503, "5.5.1", "A transaction is already open")
NEED_MAIL = _reply(503, "5.5.1", "Send MAIL first")
# RFC 5321 §3.3: DATA without any accepted recipient "MAY" get 503 or 554 "no valid
# recipients"; we give 554 when MAIL was accepted (the client pipelined past rejected
# RCPTs, RFC 2920 §3.1) and 503 when there is no transaction at all.
NO_RECIPIENTS = _reply(554, "5.5.1", "No valid recipients")
# RFC 3030 §2: BDAT and DATA may not be mixed in one transaction: 503.
DATA_AFTER_BDAT = _reply(503, "5.5.1", "DATA after BDAT in one transaction")
RCPT_AFTER_BDAT = _reply(503, "5.5.1", "RCPT after BDAT in one transaction")
# RFC 3030 §2: after a failed chunk the server accepts and throws away the BDAT chunks
# already pipelined behind it; they get 503 until the client sends RSET.
BDAT_AFTER_FAILURE = _reply(503, "5.5.1", "Transaction failed; send RSET")
# RFC 3207 §4.2: STARTTLS once TLS is up is out of sequence.
TLS_ACTIVE = _reply(503, "5.5.1", "TLS already active")
# RFC 5321 §3.1: after a 554 greeting every command but QUIT gets 503.
SERVICE_REFUSED = _reply(503, "5.5.1", "No service here; send QUIT")

# --- AUTH (RFC 4954) -------------------------------------------------------------------

# RFC 4954 §4 "AUTH mechanism [initial-response]"; a malformed line is RFC 5321's 501.
AUTH_SYNTAX = _reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
# RFC 4954 §4: a mechanism we do not offer gets 504, enhanced code 5.5.4.
UNKNOWN_MECHANISM = _reply(504, "5.5.4", "Unrecognized authentication type")
# RFC 4954 §4: a response (or initial response) that is not base64 gets 501 5.5.2.
BAD_BASE64 = _reply(501, "5.5.2", "Cannot decode base64 response")
# RFC 4954 §6: 500 5.5.6 when a response is longer than the server accepts.
AUTH_LINE_TOO_LONG = _reply(500, "5.5.6", "Authentication exchange line is too long")
# RFC 4954 §4: "After a successful AUTH command completes, a server MUST reject any
# further AUTH commands with a 503 reply."
ALREADY_AUTHENTICATED = _reply(503, "5.5.1", "Already authenticated")
# RFC 4954 §4: "An AUTH command issued during a mail transaction MUST be rejected with a
# 503 reply."
AUTH_IN_TRANSACTION = _reply(503, "5.5.1", "AUTH not permitted during a mail transaction")
# RFC 4954 §5: AUTH= takes xtext (RFC 3461 §4) naming an addr-spec or "<>".
BAD_AUTH_PARAMETER = _reply(501, "5.5.4", "Malformed AUTH= parameter")

# What the application answers (RFC 4954 §4 and §6):
# §4: an initial response to a mechanism where the server speaks first (CRAM-MD5) "MUST"
# get 501; the SASL mechanism knows (`accepts_initial_response`), the core does not.
UNEXPECTED_INITIAL_RESPONSE = _reply(501, "5.5.4", "This mechanism takes no initial response")
AUTH_SUCCEEDED = _reply(235, "2.7.0", "Authentication successful")
# §4: the client cancelled with "*": "it MUST reject the AUTH command by sending a 501".
AUTH_CANCELLED = _reply(501, "5.0.0", "Authentication cancelled")
AUTH_FAILED = _reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMPORARY_FAILURE = _reply(454, "4.7.0", "Temporary authentication failure")
MECHANISM_TOO_WEAK = _reply(534, "5.7.9", "Authentication mechanism is too weak")
ENCRYPTION_REQUIRED = _reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
PASSWORD_TRANSITION = _reply(432, "4.7.12", "A password transition is needed")
# §6: for any command but AUTH, EHLO, HELO, NOOP, RSET and QUIT when policy wants AUTH.
AUTH_REQUIRED = _reply(530, "5.7.0", "Authentication required")

# --- Limits ---------------------------------------------------------------------------

# RFC 5321 §4.5.3.1.10: "452 Too many recipients"; RFC 3463 X.5.3.
TOO_MANY_RECIPIENTS = _reply(452, "4.5.3", "Too many recipients")

# RFC 1870 §6: a declared SIZE over the fixed maximum gets 552; RFC 3463 X.3.4.
SIZE_EXCEEDS_LIMIT = _reply(552, "5.3.4", "Message size exceeds fixed limit")

# --- Message content (the reply to the end of DATA or BDAT LAST) ----------------------

# RFC 5321 §4.5.3.1.10 "552 Too much mail data"; RFC 3463 X.3.4.
MESSAGE_TOO_BIG = _reply(552, "5.3.4", "Message size exceeds fixed limit")
# RFC 5321 §2.3.8: CR and LF only as CRLF. §4.3.2 allows 550 at the end of data for
# policy rejections; RFC 3463 X.6.0 is "something about the content".
BARE_CR_IN_MESSAGE = _reply(550, "5.6.0", "Bare CR in message content")
BARE_LF_IN_MESSAGE = _reply(550, "5.6.0", "Bare LF in message content")
# RFC 5321 §4.5.3.1: "500 Line too long"; the line is in the content, hence X.6.0.
TEXT_LINE_TOO_LONG = _reply(500, "5.6.0", "Line too long in message content")

# --- Fatal: the hint for a RemoteProtocolError, sent before closing --------------------

# RFC 5321 §2.3.8 and §4.1.1.4: a command line ends with CRLF only; a bare CR or LF
# means the peer frames lines differently from us (SMTP smuggling), so we stop talking.
BARE_NEWLINE = _reply(500, "5.5.2", "Bare CR or LF in command line; closing")
COMMAND_TOO_LONG = _reply(500, "5.5.2", "Line too long; closing")
# RFC 4954 §6's code for an over-long exchange line, for one past the hard cap.
AUTH_LINE_TOO_LONG_CLOSING = _reply(500, "5.5.6", "Authentication exchange line too long; closing")
# RFC 3030 is silent here: with no octet count we cannot tell where the next command
# starts, so the only safe answer is to close.
BDAT_SIZE_UNKNOWN = _reply(501, "5.5.4", "BDAT size missing or invalid; closing")
# Postfix's smtpd_hard_error_limit answer; RFC 5321 §3.8: 421 when the server closes.
TOO_MANY_ERRORS = _reply(421, "4.7.0", "Too many errors; closing")
# RFC 3207 §4.2 / §6: plaintext sent behind STARTTLS would be read as if it came over
# TLS (command injection, CVE-2011-0411 family). 421: the genuine client may retry.
PIPELINED_STARTTLS = _reply(421, "4.7.0", "Commands pipelined after STARTTLS; closing")
# An HTTP request sent to the SMTP port (cross-protocol attacks), like Postfix's
# smtpd_forbidden_commands: say goodbye, do not parse the request body as commands.
FORBIDDEN_COMMAND = _reply(221, "2.7.0", "This is an SMTP server; goodbye")
