"""Pure mail-server decisions: addresses, relay policy, recipients and aliases, routing,
retries, bounces, trace headers, SRS, SPF, reverse DNS (iprev), DNS block/allow lists, DMARC,
Authentication-Results, the outbound SMTP conversation, the auth throttle.

No I/O of any kind, no clock: time, keys and lookups come in as arguments.
"""
