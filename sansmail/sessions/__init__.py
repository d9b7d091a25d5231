"""What a server does with each command: the SMTP intake, POP3 and IMAP sessions, the
queue manager's attempts, and logging in, over the cores, the decisions and storage.
Loop-agnostic: no sockets, no awaits, no clock; blocking storage calls are marked.
"""
