"""The SMTP intake session: what one SMTP connection does with its commands (Postfix's
smtpd and cleanup). Loop-agnostic: no sockets, no clock; its blocking calls are marked.

It decides the greeting and EHLO offer, who may send, where each recipient goes, the
envelope of the transaction, the trace header, where the content is written, the commit
that comes before ``250``, and the mail log's disposition lines.

Theory of operation
-------------------
The protocol core (`sansmail.smtp.Connection`, owned by the session as `conn`) parses
commands and enforces the order of the dialogue; this object decides what each one means
and answers it. An adapter moves bytes between the client and `conn`, and for each event
calls the session (a sketch; `sansmail_trio._smtp_server` is the real one; the life
cycle and logging in are the same for every session, see `sansmail.sessions.common`)::

    StartTLS      -> send session.starttls(); handshake; session.tls_started(...)
    Auth          -> the common login steps (`LoginSteps`)
    MessageData   -> if session.content(data, now): session.flush()  [blocking]
    EndOfMessage  -> job = session.finish(now)
                     if job is a Storing: store_all([job, ...])        [blocking]
                         committed = session.stored(job)
                     else: committed = job (a refusal)
                     send committed.reply, wake the queue runner for committed.queued
    anything else -> send session.handle(event, now)
    and whenever session.cleanup_due: session.cleanup()               [blocking]

(`session.commit(now)` is finish, store_all and stored in one call, for an adapter that
commits one message at a time.)

Methods marked blocking do file I/O (writing the message to its tmp files, fsync, unlink)
and belong in a worker thread; the others only compute. The session reads no clock: the
wall clock comes in as `now` (seconds since the epoch) where a decision needs it (SRS
stamps, the Received date, the queue arrival time). It owns no timer either: the adapter
asks `timeout` before each wait and answers with `timeout_reply()` or `shutdown_reply()`.
Log lines go to the `log` sink given at construction (level, text), from whichever thread
runs the method.

Durability (the one rule). `stored` (and `commit`) returns the ``250`` only after every
copy is on disk: the queue copies (remote, forwarded and Sieve recipients) first, then the
local Maildir delivery; if the local delivery fails the queue copies are taken back before the
``451``, so a client that retries never causes a second relay of the same message.

Sieve. A local recipient whose mailbox has an active Sieve script, or every one when
``[sieve] before`` is set (`SmtpService.through_sieve`), is not stored at once: its copy
is one more queue file, its recipients marked with their mailbox
(`QueuedRecipient.mailbox`), committed with the other queue copies before the ``250`` and
announced to the queue runner like them (`Committed.queued`), whose local delivery runs
the scripts (`sansmail.sessions.lda`), as Postfix hands mail to Dovecot's LDA. The
question is one stat per mailbox, asked at RCPT (in `handle`, beside the quota file read
of `SmtpService.resolve`): the one blocking look at the disk the session already makes
there. Quarantined mail goes to Junk as for everyone, the scripts unasked; users without
a script keep the direct path exactly.

Group commit. `store_all` takes the jobs of several sessions whose messages ended at
about the same time and commits their local deliveries together
(`MailStore.commit_many`): each directory they share is fsync'd once for all of them,
and each message is still durable before its own ``250``. Which jobs go together, and
when a batch closes, is the adapter's business (it owns threads and time); the session
only guarantees that any grouping is safe.

Checks. Sender-authentication verdicts (SPF, DKIM, DMARC, reverse DNS, DNSBL) and milter
replies enter at six points (`Stage`): CONNECT (the greeting), HELO, MAIL, RCPT,
END_OF_HEADERS and END_OF_DATA. At each, every `Check` of the service is asked in order;
the first `Verdict` that carries a reply refuses (the greeting, the command, or the
message at its end), and header fields from verdicts up to END_OF_HEADERS are written
above the Received line of the stored copy. The content is buffered up to the end of its
header section (at most `HEADER_LIMIT` octets) before anything is written, so those fields
are known when the file is started. END_OF_DATA verdicts may refuse; header fields at
that stage would need the store to prepend to a written file and are refused (ValueError)
until the store can.

Rates. The first check (`RateCheck`, ``[limits]``) counts each MAIL and RCPT of a client
outside mynetworks, and of its authenticated user, in a table every server process
shares, and refuses over a limit with Postfix's ``450 4.7.1 Error: too much mail from
...``. It does its few microseconds of file I/O in `check` itself, so an adapter needs
nothing more than the inquiries' `now` to run it.
"""

from sansmail.sessions.smtpd._checks import (
    CLIENT_NAME,
    Check,
    Conversation,
    Errand,
    Inquiring,
    Inquiry,
    Lookup,
    SessionView,
    Stage,
    Verdict,
)
from sansmail.sessions.smtpd._intake import intake_checks
from sansmail.sessions.smtpd._observer import NO_OBSERVER, REASONS, SmtpObserver, reason_of
from sansmail.sessions.smtpd._rates import RateCheck, RateTable, rate_check
from sansmail.sessions.smtpd._replies import AUTH_THROTTLED, INTERNAL_ERROR
from sansmail.sessions.smtpd._sender import SenderChecks, sender_checks
from sansmail.sessions.smtpd._service import SUBMISSION_SERVICES, SmtpService
from sansmail.sessions.smtpd._session import HEADER_LIMIT, SmtpSession
from sansmail.sessions.smtpd._transaction import (
    SPILL_THRESHOLD,
    Committed,
    Outgoing,
    Storing,
    Transaction,
    store_all,
)

__all__ = [
    "AUTH_THROTTLED",
    "CLIENT_NAME",
    "HEADER_LIMIT",
    "INTERNAL_ERROR",
    "NO_OBSERVER",
    "REASONS",
    "SPILL_THRESHOLD",
    "SUBMISSION_SERVICES",
    "Check",
    "Committed",
    "Conversation",
    "Errand",
    "Inquiring",
    "Inquiry",
    "Lookup",
    "Outgoing",
    "RateCheck",
    "RateTable",
    "SenderChecks",
    "SessionView",
    "SmtpObserver",
    "SmtpService",
    "SmtpSession",
    "Stage",
    "Storing",
    "Transaction",
    "Verdict",
    "intake_checks",
    "rate_check",
    "reason_of",
    "sender_checks",
    "store_all",
]
