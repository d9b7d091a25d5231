"""SPF (RFC 7208): check_host() as a generator of DNS questions, and the Received-SPF field.
Pure: it never resolves a name nor reads the clock; DNS answers and the time come in.

`check_mail_from` and `check_helo` build the check for an SMTP identity, `check_host` is
the RFC's function itself; each returns a generator that yields batches of `DnsQuery`,
takes the `DnsAnswer`s back and returns the `SpfResult`. `evaluate` drives one with a
resolver function; `received_spf` renders the trace header's value.
"""

from ._decide import decide_spf
from ._eval import (
    MAX_LOOKUPS,
    MAX_NAMES,
    MAX_VOID_LOOKUPS,
    SpfCheck,
    check_helo,
    check_host,
    check_mail_from,
    evaluate,
)
from ._header import received_spf
from ._macro import MacroString, expand, parse_macro_string
from ._record import Mechanism, Record, is_spf_record, parse_domain_spec, parse_record
from ._types import (
    DnsAnswer,
    DnsQuery,
    DnsStatus,
    IPAddress,
    RType,
    SpfResult,
    SpfSyntaxError,
    Verdict,
)

__all__ = [
    "MAX_LOOKUPS",
    "MAX_NAMES",
    "MAX_VOID_LOOKUPS",
    "DnsAnswer",
    "DnsQuery",
    "DnsStatus",
    "IPAddress",
    "MacroString",
    "Mechanism",
    "RType",
    "Record",
    "SpfCheck",
    "SpfResult",
    "SpfSyntaxError",
    "Verdict",
    "check_helo",
    "check_host",
    "check_mail_from",
    "decide_spf",
    "evaluate",
    "expand",
    "is_spf_record",
    "parse_domain_spec",
    "parse_macro_string",
    "parse_record",
    "received_spf",
]
