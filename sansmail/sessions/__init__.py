"""What a server does with each command: SMTP intake, POP3 and IMAP sessions over the
protocol cores, the decisions, and storage.

Loop-agnostic: no sockets, no awaits; blocking storage calls are marked, for a worker thread.
"""
