"""Mail addresses: RFC 5321 paths and mailboxes, RFC 6531 UTF-8 addresses, IDNA.

Theory of operation
-------------------
`read_path` is a hand-written, single-pass scanner over the RFC 5321 §4.1.2 grammar. It
does not look for ">" first and split: a quoted local part may hold ">", "@", "," and
spaces, so only the grammar knows where a path ends, and the SMTP core relies on the index
we return to find the ESMTP parameters that follow.

Each piece of the grammar is a function ``_read_x(text, pos, ...) -> (value, new_pos)``
that either consumes exactly its production or raises `AddressError` with a sentence fit
for an SMTP reply (ASCII only; the offending character is quoted only when it is
printable ASCII, so a reply never echoes control or non-ASCII bytes).

What we keep, and in which form:

- The local part is kept as its *semantic* text: quotes removed, quoted pairs undone,
  case preserved (RFC 5321 §2.4: only the receiving host may interpret it). "%" and "!"
  are plain atext; we never reinterpret them as routing.
- The domain is kept *canonical*, so that two spellings of one domain compare equal:
  ASCII lower case (§2.4), U-labels folded to A-labels with IDNA 2008 / UTS 46
  (RFC 5890, RFC 6531 §3.3), address literals re-written from the parsed address
  (``[IPv6:2001:db8::1]``). General address literals (§4.1.3) are kept verbatim: we do not
  know what their tag means.
- Source routes (§4.1.1.3, Appendix C) are checked for syntax and dropped.

Limits (§4.5.3.1) are measured in octets of UTF-8, on the text as the client sent it:
64 for the local part, 255 for the domain, 256 for the whole path including "<" and ">".
`Address` itself re-checks them on its canonical form, so that every `Address` that can be
built can also be sent: ``str(address)`` always parses back to an equal `Address`.
"""

from __future__ import annotations

import ipaddress
import re

import attrs
import idna

__all__ = [
    "Address",
    "AddressError",
    "MailboxId",
    "NonASCIIAddressError",
    "canonical_domain",
    "parse_address",
    "read_path",
]

MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 §4.5.3.1.2
MAX_PATH = 256  # RFC 5321 §4.5.3.1.3, counting "<" and ">"
_MAX_LABEL = 63  # RFC 1035 §2.3.4, which RFC 5321 §2.3.5 defers to


class AddressError(ValueError):
    """A path or mailbox that does not follow the grammar; str() says what is wrong."""


class NonASCIIAddressError(AddressError):
    """Non-ASCII text in an address on a session without SMTPUTF8.

    Distinct so that an SMTP server can answer with the reply RFC 6531 §3.5 calls for
    (553 5.6.7) rather than a plain syntax error."""


# RFC 5322 §3.2.3 atext, which RFC 5321 §4.1.2 reuses for Atom.
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_ATEXT = frozenset(_ALNUM + "!#$%&'*+-/=?^_`{|}~")
_LDH = frozenset(_ALNUM + "-")
_HEX = frozenset("0123456789abcdefABCDEF")
_ASCII_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_IPV4 = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
# Standardized-tag ":" 1*dcontent (RFC 5321 §4.1.3); Standardized-tag is an Ldh-str, which
# must end with a letter or digit. dcontent itself is checked by the scanner.
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:.+", re.DOTALL)


def _is_utf8_char(ch: str) -> bool:
    # RFC 6531 §3.3 UTF8-non-ascii. Lone surrogates are what a UTF-8 decoder with
    # errors="surrogateescape" leaves for invalid bytes: they are not UTF-8 text.
    return ch >= "\x80" and not ("\ud800" <= ch <= "\udfff")


def _octets(text: str) -> int:
    # Only called on text that passed the scanner, so it holds no surrogates.
    return len(text.encode("utf-8"))


def _describe(text: str, pos: int, where: str) -> str:
    """Say what is wrong at text[pos] without echoing anything unsafe into a reply."""
    if pos >= len(text):
        return f"{where} ends too early"
    ch = text[pos]
    if ch in " \t":
        return f"unexpected whitespace in {where}"
    if "!" <= ch <= "~":
        return f"unexpected {ch!r} in {where}"
    if ch < " " or ch == "\x7f":
        return f"control character in {where}"
    return f"invalid character in {where}"


def _fail(text: str, pos: int, where: str, smtputf8: bool) -> AddressError:
    if pos < len(text) and text[pos] >= "\x80" and not smtputf8:
        return NonASCIIAddressError(f"non-ASCII character in {where} without SMTPUTF8")
    return AddressError(_describe(text, pos, where))


# -- local part (RFC 5321 §4.1.2, RFC 6531 §3.3) ------------------------------------------


def _read_local_part(text: str, pos: int, smtputf8: bool) -> tuple[str, int, bool]:
    """Local-part = Dot-string / Quoted-string. Returns (semantic text, end, was_quoted)."""
    if pos < len(text) and text[pos] == '"':
        value, end = _read_quoted_string(text, pos, smtputf8)
        quoted = True
    else:
        value, end = _read_dot_string(text, pos, smtputf8)
        quoted = False
    if _octets(text[pos:end]) > MAX_LOCAL_PART:
        raise AddressError(f"local part longer than {MAX_LOCAL_PART} octets")
    return value, end, quoted


def _read_dot_string(text: str, pos: int, smtputf8: bool) -> tuple[str, int]:
    """Dot-string = Atom *("." Atom); Atom = 1*atext."""
    start = pos
    n = len(text)
    while True:
        atom_start = pos
        while pos < n and (text[pos] in _ATEXT or (smtputf8 and _is_utf8_char(text[pos]))):
            pos += 1
        if pos == atom_start:
            if pos < n and text[pos] >= "\x80":
                raise _fail(text, pos, "local part", smtputf8)
            if pos < n and text[pos] == ".":
                if pos == start:
                    raise AddressError("local part must not start with '.'")
                raise AddressError("two dots in a row in local part")
            if pos > start:
                raise AddressError("local part must not end with '.'")
            raise _fail(text, pos, "local part", smtputf8)
        if pos < n and text[pos] == ".":
            pos += 1
            continue
        return text[start:pos], pos


def _read_quoted_string(text: str, pos: int, smtputf8: bool) -> tuple[str, int]:
    """Quoted-string = DQUOTE *QcontentSMTP DQUOTE."""
    assert text[pos] == '"'
    pos += 1
    out: list[str] = []
    n = len(text)
    while pos < n:
        ch = text[pos]
        if ch == '"':
            return "".join(out), pos + 1
        if ch == "\\":
            # quoted-pairSMTP = %d92 %d32-126: no escaping of controls or UTF-8.
            pos += 1
            if pos < n and " " <= text[pos] <= "~":
                out.append(text[pos])
                pos += 1
                continue
            raise _fail(text, pos, "quoted local part after '\\'", smtputf8)
        # qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF8-non-ascii under SMTPUTF8.
        if " " <= ch <= "~" or (smtputf8 and _is_utf8_char(ch)):
            out.append(ch)
            pos += 1
            continue
        raise _fail(text, pos, "quoted local part", smtputf8)
    raise AddressError("quoted local part has no closing '\"'")


def _quote_local_part(local: str) -> str:
    """The wire form of a semantic local part: Dot-string when it can be, else quoted."""
    if local and all(
        atom and all(c in _ATEXT or _is_utf8_char(c) for c in atom) for atom in local.split(".")
    ):
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- domains (RFC 5321 §4.1.2, RFC 6531 §3.3, RFC 5890) -----------------------------------


def _fold_label(label: str) -> str:
    """One sub-domain to its canonical ASCII form: lower case, U-label to A-label."""
    if label.isascii():
        if len(label) > _MAX_LABEL:
            raise AddressError(f"domain label longer than {_MAX_LABEL} octets")
        if not _ASCII_LABEL.fullmatch(label):
            raise AddressError("domain label must start and end with a letter or digit")
        # A-labels ("xn--...") pass as plain Ldh-str: some registered domains are valid
        # IDNA 2003 but not 2008, and refusing mail for them helps nobody.
        return label.lower()
    # UTS 46 mapping folds case (and width) before IDNA 2008 validation, so "Bücher" and
    # "bücher" and "xn--bcher-kva" all become one domain.
    try:
        folded = idna.encode(label, uts46=True, std3_rules=True, transitional=False)
    except ValueError:  # idna.IDNAError is a UnicodeError, itself a ValueError
        raise AddressError("invalid internationalized domain label") from None
    alabel = folded.decode("ascii")
    if "." in alabel or not _ASCII_LABEL.fullmatch(alabel) or len(alabel) > _MAX_LABEL:
        # The mapping can turn a full-width dot into "."; that is not one label.
        raise AddressError("invalid internationalized domain label")
    return alabel


def _read_domain(text: str, pos: int, smtputf8: bool) -> tuple[str, int]:
    """Domain = sub-domain *("." sub-domain). Returns (canonical domain, end)."""
    start = pos
    n = len(text)
    labels: list[str] = []
    while True:
        label_start = pos
        while pos < n and (text[pos] in _LDH or (smtputf8 and _is_utf8_char(text[pos]))):
            pos += 1
        if pos == label_start:
            if pos < n and text[pos] >= "\x80":
                raise _fail(text, pos, "domain", smtputf8)
            if labels and text[pos - 1] == "." and (pos >= n or text[pos] != "."):
                raise AddressError("domain must not end with '.'")
            if pos < n and text[pos] == ".":
                raise AddressError("empty label in domain")
            raise _fail(text, pos, "domain", smtputf8)
        labels.append(_fold_label(text[label_start:pos]))
        if pos < n and text[pos] == ".":
            pos += 1
            continue
        break
    if _octets(text[start:pos]) > MAX_DOMAIN:
        raise AddressError(f"domain longer than {MAX_DOMAIN} octets")
    domain = ".".join(labels)
    if len(domain) > MAX_DOMAIN:
        raise AddressError(f"domain longer than {MAX_DOMAIN} octets in its ASCII form")
    return domain, pos


def _read_address_literal(text: str, pos: int, smtputf8: bool) -> tuple[str, int]:
    """address-literal = "[" ( IPv4 / IPv6 / General-address-literal ) "]" (§4.1.3)."""
    assert text[pos] == "["
    start = pos + 1
    pos = start
    n = len(text)
    # dcontent = %d33-90 / %d94-126: printable ASCII but "[", "\" and "]".
    while pos < n and "!" <= text[pos] <= "~" and text[pos] not in "[\\]":
        pos += 1
    if pos >= n or text[pos] != "]":
        raise _fail(text, pos, "address literal", smtputf8)
    content = text[start:pos]
    return f"[{_canonical_literal(content)}]", pos + 1


def _canonical_literal(content: str) -> str:
    """The canonical text of an address literal, without its brackets."""
    if m := _IPV4.fullmatch(content):
        # Snum = 1*3DIGIT, "representing a decimal integer value in the range 0 through
        # 255"; re-writing from the numbers drops leading zeros.
        parts = [int(g) for g in m.groups()]
        if any(p > 255 for p in parts):
            raise AddressError("IPv4 address literal has a number over 255")
        return ".".join(map(str, parts))
    if content[:5].lower() == "ipv6:":
        return "IPv6:" + _canonical_ipv6(content[5:])
    if _GENERAL_LITERAL.fullmatch(content):
        return content
    raise AddressError("address literal is neither IPv4, IPv6 nor tag:value")


def _canonical_ipv6(text: str) -> str:
    # ipaddress is more liberal than RFC 5321 §4.1.3 (it takes "%zone" and a "::" standing
    # for a single group), so check what the grammar forbids before handing it over.
    if not text or any(c not in _HEX and c not in ":." for c in text):
        raise AddressError("invalid IPv6 address literal")
    if "::" in text:
        head = text.rsplit(":", 1)[0] if "." in text else text
        groups = [g for g in head.split(":") if g]
        if len(groups) > (4 if "." in text else 6):
            raise AddressError("'::' in an IPv6 address literal must stand for 2+ groups")
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        raise AddressError("invalid IPv6 address literal") from None
    # Python compresses only runs of two or more zero groups, so the result obeys the
    # same rule and reads back.
    return address.compressed


def _read_domain_or_literal(text: str, pos: int, smtputf8: bool) -> tuple[str, int]:
    if pos < len(text) and text[pos] == "[":
        return _read_address_literal(text, pos, smtputf8)
    return _read_domain(text, pos, smtputf8)


def canonical_domain(text: str) -> str:
    """Fold a domain as written in a config file or on a command line to the form
    `Address.domain` holds: lower case, A-labels, normalised address literals.

    U-labels are always accepted here. Raises `AddressError`."""
    if not text:
        raise AddressError("empty domain")
    domain, end = _read_domain_or_literal(text, 0, True)
    if end != len(text):
        raise _fail(text, end, "domain", True)
    return domain


def _convert_domain(value: str) -> str:
    # "" is the bare Postmaster of RCPT TO:<Postmaster>; Address checks the pairing.
    return "" if value == "" else canonical_domain(value)


def _check_local_part(inst: Address, _attribute: attrs.Attribute[str], value: str) -> None:
    # Characters a Quoted-string can carry: %d32-126 (quoted-pairSMTP covers '"' and
    # '\') and UTF-8. Anything else could not be sent, and a CR or LF would be an injection.
    if any(not (" " <= c <= "~" or _is_utf8_char(c)) for c in value):
        raise AddressError("local part holds a character no address can carry")
    if _octets(_quote_local_part(value)) > MAX_LOCAL_PART:
        raise AddressError(f"local part longer than {MAX_LOCAL_PART} octets")


@attrs.frozen(kw_only=True)
class Address:
    """A mailbox: `local_part` as its semantic (unquoted) text, case preserved;
    `domain` canonical: lower case, IDNs as A-labels, address literals as ``[...]``;
    empty only for the bare ``Postmaster`` of RCPT TO:<Postmaster>.

    The constructor folds `domain` (so ``Address(local_part="a", domain="Bücher.DE")``
    has domain ``xn--bcher-kva.de``) and refuses anything `str()` could not send."""

    local_part: str = attrs.field(validator=_check_local_part)
    domain: str = attrs.field(converter=_convert_domain)
    #: The domain as a client spelled it with U-labels (``bücher.example``), kept for
    #: `as_given`; not part of the address's identity.
    domain_as_given: str = attrs.field(default="", eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.domain_as_given and canonical_domain(self.domain_as_given) != self.domain:
            raise AddressError("the domain as given is not a spelling of the domain")
        if self.domain == "":
            if self.local_part != "Postmaster":
                raise AddressError('only "Postmaster" may go without a domain')
        elif _octets(str(self)) > MAX_PATH - 2:
            raise AddressError(f"address longer than {MAX_PATH - 2} octets")

    @classmethod
    def from_parts(cls, local_part: str, domain: str) -> Address:
        """Positional spelling of the constructor, for call sites that read better so."""
        return cls(local_part=local_part, domain=domain)

    def __str__(self) -> str:
        if self.domain == "":
            return "Postmaster"
        return f"{_quote_local_part(self.local_part)}@{self.domain}"

    @property
    def as_given(self) -> str:
        """The address with the domain as the client wrote it: an SMTPUTF8 address keeps
        its U-labels in the Return-Path (RFC 6531 §3.7), as Postfix keeps it."""
        if not self.domain_as_given:
            return str(self)
        return f"{_quote_local_part(self.local_part)}@{self.domain_as_given}"

    @property
    def is_postmaster(self) -> bool:
        """RFC 5321 §4.5.1: "postmaster" is case-insensitive, unlike other local parts."""
        return self.local_part.lower() == "postmaster"

    @property
    def needs_smtputf8(self) -> bool:
        """The domain is always ASCII; only a UTF-8 local part needs RFC 6531."""
        return not self.local_part.isascii()

    @property
    def domain_unicode(self) -> str:
        """The domain with A-labels shown as U-labels, for people to read."""
        if self.domain.startswith("["):
            return self.domain
        return ".".join(_unicode_label(label) for label in self.domain.split("."))

    @property
    def key(self) -> str:
        """Lookup key for users and aliases: local part lower-cased, canonical domain."""
        return f"{self.local_part.lower()}@{self.domain}"


def _unicode_label(label: str) -> str:
    if label.startswith("xn--"):
        try:
            return idna.ulabel(label)
        except ValueError:
            pass  # not IDNA 2008 (see _fold_label): show it as it is
    return label


def _read_route(text: str, pos: int, smtputf8: bool) -> int:
    """A-d-l = At-domain *( "," At-domain ) ":" (RFC 5321 §4.1.2); parsed, then ignored
    as §4.1.1.3 and Appendix C tell servers to."""
    n = len(text)
    while True:
        if pos >= n or text[pos] != "@":
            raise _fail(text, pos, "source route", smtputf8)
        _, pos = _read_domain(text, pos + 1, smtputf8)
        if pos < n and text[pos] == ",":
            pos += 1
            continue
        if pos < n and text[pos] == ":":
            return pos + 1
        raise _fail(text, pos, "source route", smtputf8)


def read_path(text: str, pos: int = 0, *, smtputf8: bool = False) -> tuple[Address | None, int]:
    """Parse the RFC 5321 Path (or null path "<>") that starts at ``text[pos]``.

    Returns the mailbox (None for "<>") and the index just after the closing ">"; what
    follows is the caller's business. The bare ``<Postmaster>`` of RCPT TO (§4.1.1.3)
    comes back with an empty domain; refusing it in MAIL FROM is the caller's job.
    Without `smtputf8` any non-ASCII raises `NonASCIIAddressError`."""
    start = pos
    n = len(text)
    if pos >= n or text[pos] != "<":
        raise AddressError("path must start with '<'")
    pos += 1
    if pos < n and text[pos] == ">":
        return None, pos + 1
    routed = pos < n and text[pos] == "@"
    if routed:
        pos = _read_route(text, pos, smtputf8)
    local, pos, quoted = _read_local_part(text, pos, smtputf8)
    if pos < n and text[pos] == ">" and not routed and not quoted:
        if local.lower() != "postmaster":
            raise AddressError("address has no '@domain'")
        address = Address(local_part="Postmaster", domain="")
        return address, pos + 1
    if pos >= n or text[pos] != "@":
        raise _fail(text, pos, "path", smtputf8)
    domain_start = pos + 1
    domain, pos = _read_domain_or_literal(text, domain_start, smtputf8)
    given = text[domain_start:pos]
    if pos >= n:
        raise AddressError("path has no closing '>'")
    if text[pos] != ">":
        raise _fail(text, pos, "path", smtputf8)
    pos += 1
    if _octets(text[start:pos]) > MAX_PATH:
        raise AddressError(f"path longer than {MAX_PATH} octets")
    as_given = "" if given.isascii() else given
    return Address(local_part=local, domain=domain, domain_as_given=as_given), pos


def parse_address(text: str, *, smtputf8: bool = True) -> Address:
    """Parse a bare mailbox ("user@example.org", no angle brackets, nothing around it),
    as written on a command line or in a config file. Raises `AddressError`."""
    local, pos, _ = _read_local_part(text, 0, smtputf8)
    if pos >= len(text):
        raise AddressError("address has no '@domain'")
    if text[pos] != "@":
        raise _fail(text, pos, "address", smtputf8)
    domain, pos = _read_domain_or_literal(text, pos + 1, smtputf8)
    if pos != len(text):
        raise _fail(text, pos, "address", smtputf8)
    return Address(local_part=local, domain=domain)


def _non_empty(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise ValueError(f"MailboxId.{attribute.name} must not be empty")
    if "\x00" in value:
        raise ValueError(f"MailboxId.{attribute.name} must not contain NUL")


@attrs.frozen(kw_only=True)
class MailboxId:
    """One user's mailbox.

    `domain` is canonical (lower-case, IDNs as A-labels), `local` the lower-cased local
    part. Canonical case is the caller's job: the store maps text to directories as given
    (escaping only what a file name cannot hold), so "Alice" and "alice" would be two
    mailboxes.
    """

    domain: str = attrs.field(validator=_non_empty)
    local: str = attrs.field(validator=_non_empty)
