"""The milter protocol's numbers: command and reply codes, the negotiation's flag words,
address families and macro stages (libmilter's `mfdef.h`, protocol version 6, as Postfix's
`src/milter/milter8.c` uses them).

Every packet is a 4-byte big-endian length, then that many bytes: one command (MTA to
milter, `SMFIC_*`) or reply (milter to MTA, `SMFIR_*`) byte and its data. Strings in the
data end with NUL; integers are 4-byte (or, for the port, 2-byte) big-endian.
"""

from __future__ import annotations

import enum
from types import MappingProxyType

__all__ = [
    "MAX_CHUNK",
    "VERSION",
    "Action",
    "Family",
    "MacroStage",
    "ProtocolFlag",
]

#: The protocol version this core speaks (libmilter's SMFI_PROT_VERSION).
VERSION = 6

#: The lowest version a milter may answer with: Postfix talks to milters from version 2
#: on (milter8.c), the first with option negotiation.
MIN_VERSION = 2

#: mfdef.h MILTER_CHUNK_SIZE: the most body bytes one SMFIC_BODY (or SMFIR_REPLBODY)
#: packet carries, and MILTER_MAX_DATA_SIZE: what libmilter accepts in one packet unless
#: the larger sizes (SMFIP_MDS_*) are negotiated, which this core never offers.
MAX_CHUNK = 65535


class Action(enum.IntFlag):
    """SMFIF_*: the modifications a milter may make at end of message. The MTA offers
    them, the milter asks for some, and using one it did not get is a protocol error."""

    ADDHDRS = 0x01  # SMFIR_ADDHEADER, SMFIR_INSHEADER
    CHGBODY = 0x02  # SMFIR_REPLBODY
    ADDRCPT = 0x04  # SMFIR_ADDRCPT
    DELRCPT = 0x08  # SMFIR_DELRCPT
    CHGHDRS = 0x10  # SMFIR_CHGHEADER
    QUARANTINE = 0x20  # SMFIR_QUARANTINE
    CHGFROM = 0x40  # SMFIR_CHGFROM
    ADDRCPT_PAR = 0x80  # SMFIR_ADDRCPT_PAR
    SETSYMLIST = 0x100  # macro lists in the negotiation reply


class ProtocolFlag(enum.IntFlag):
    """SMFIP_*: the steps a milter does not want (NO*), the steps it will not answer
    (NR_*), and a few behaviours. The MTA offers, the milter picks."""

    NOCONNECT = 0x01
    NOHELO = 0x02
    NOMAIL = 0x04
    NORCPT = 0x08
    NOBODY = 0x10
    NOHDRS = 0x20
    NOEOH = 0x40
    NR_HDR = 0x80  # also SMFIP_NOHREPL in older headers
    NOUNKNOWN = 0x100
    NODATA = 0x200
    SKIP = 0x400  # the MTA understands SMFIR_SKIP
    RCPT_REJ = 0x800  # send rejected recipients too
    NR_CONN = 0x1000
    NR_HELO = 0x2000
    NR_MAIL = 0x4000
    NR_RCPT = 0x8000
    NR_DATA = 0x10000
    NR_UNKN = 0x20000
    NR_EOH = 0x40000
    NR_BODY = 0x80000
    HDR_LEADSPC = 0x100000  # header values keep their leading space, both ways
    MDS_256K = 0x10000000  # larger packets: never offered here
    MDS_1M = 0x20000000


class Family(enum.Enum):
    """SMFIA_*: the SMTP client's address family in SMFIC_CONNECT."""

    UNKNOWN = "U"
    UNIX = "L"
    INET = "4"
    INET6 = "6"


class MacroStage(enum.IntEnum):
    """SMFIM_*: where a macro list in the negotiation reply applies."""

    CONNECT = 0
    HELO = 1
    ENVFROM = 2
    ENVRCPT = 3
    DATA = 4
    EOM = 5
    EOH = 6


# The command byte whose SMFIC_MACRO packet carries each stage's macros.
STAGE_COMMAND = MappingProxyType(
    {
        MacroStage.CONNECT: b"C",
        MacroStage.HELO: b"H",
        MacroStage.ENVFROM: b"M",
        MacroStage.ENVRCPT: b"R",
        MacroStage.DATA: b"T",
        MacroStage.EOM: b"E",
        MacroStage.EOH: b"N",
    }
)

#: What this core offers by default: every modification, and every protocol flag it
#: implements by itself. RCPT_REJ and HDR_LEADSPC change what the application sends (the
#: rejected recipients, the raw header values), so the application opts in to them.
DEFAULT_ACTIONS = Action(0x1FF)
DEFAULT_PROTOCOL = ProtocolFlag(0xFFFFF) & ~ProtocolFlag.RCPT_REJ
