"""Where mail and state are kept: Maildir mailboxes with their IMAP index, the outbound
queue, the users file, the aliases file, server keys, and the durable-write steps.

Blocking file I/O, loop-agnostic and documented per call; never a socket, never a thread.
"""
