"""Walking the parsed TOML tables: typed getters that record every problem with its file,
line and key, and fall back to the default so that one pass finds them all.

Theory of operation: a `Reader` holds what one file's problems need (its name, its
`KeyLines`, the folder relative paths resolve against) and collects `Problem`s. A
`Table` is one TOML table under a dotted path; its getters (`get`, `choice`, `integer`,
`duration`, `items`, `path_value`) never raise on a bad value: they report it and return
the default, so the sections can be read as if every value were good and the operator
gets every mistake at once. `check_unknown` turns a misspelt or misplaced key into a
problem with a hint, since a key that is silently ignored is a setting that silently
does not apply.
"""

from __future__ import annotations

import difflib
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Final, TypeVar, cast, get_args

import attrs

from sansmail.config import _values
from sansmail.config._lines import KeyLines, dotted_key
from sansmail.config._model import (
    SERVICES,
    AntispamConfig,
    AuthConfig,
    BareLF,
    DeliveryConfig,
    DKIMConfig,
    DKIMMode,
    DMARCMode,
    DNSConfig,
    LimitsConfig,
    LogFormat,
    MilterAction,
    MilterConfig,
    OutboundTLS,
    PlaintextAuth,
    POP3Config,
    Problem,
    QuotaConfig,
    ReverseDNSMode,
    SieveConfig,
    SMTPConfig,
    SPFMode,
    StorageBackend,
    StorageConfig,
    TLSChecker,
)

T = TypeVar("T")
S = TypeVar("S", bound=str)
# The allowed values of each enumerated key: the arguments of its field's Literal type.
_CHOICES: Final[Mapping[tuple[str, ...], tuple[str, ...]]] = {
    ("smtp", "plaintext_auth"): get_args(PlaintextAuth),
    ("smtp", "bare_lf"): get_args(BareLF),
    ("delivery", "tls"): get_args(OutboundTLS),
    ("antispam", "spf"): get_args(SPFMode),
    ("antispam", "reverse_dns"): get_args(ReverseDNSMode),
    ("antispam", "dkim"): get_args(DKIMMode),
    ("antispam", "dmarc"): get_args(DMARCMode),
    ("milter", "default_action"): get_args(MilterAction),
    ("storage", "backend"): get_args(StorageBackend),
    ("log_format",): get_args(LogFormat),
}
# The keys known at the top and in each table; a table's keys are its class's fields,
# so that a new setting cannot be forgotten here.
TOP_KEYS: Final = (
    "hostname",
    "domains",
    "data_dir",
    "mynetworks",
    "aliases",
    "recipient_delimiter",
    "processes",
    "mail_owner",
    "log_format",
)
TABLE_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "tls": ("cert", "key"),
    "listen": SERVICES,
    "smtp": tuple(attrs.fields_dict(SMTPConfig)),
    "pop3": tuple(attrs.fields_dict(POP3Config)),
    "auth": tuple(attrs.fields_dict(AuthConfig)),
    "delivery": tuple(attrs.fields_dict(DeliveryConfig)),
    "dns": tuple(attrs.fields_dict(DNSConfig)),
    "antispam": tuple(attrs.fields_dict(AntispamConfig)),
    "dkim": tuple(attrs.fields_dict(DKIMConfig)),
    "milter": tuple(attrs.fields_dict(MilterConfig)),
    "sieve": tuple(attrs.fields_dict(SieveConfig)),
    "storage": tuple(attrs.fields_dict(StorageConfig)),
    "quota": tuple(attrs.fields_dict(QuotaConfig)),
    "limits": tuple(attrs.fields_dict(LimitsConfig)),
}


class Reader:
    """The problems of one file, and what reporting them needs."""

    def __init__(
        self,
        file: str,
        lines: KeyLines,
        base: pathlib.Path,
        check_tls: TLSChecker | None = None,
    ) -> None:
        self.file = file
        self.lines = lines
        self.base = base
        self.check_tls = check_tls
        self.problems: list[Problem] = []

    def problem(self, path: tuple[str, ...], message: str) -> None:
        self.problems.append(
            Problem(self.file, self.lines.line_of(path), dotted_key(path), message)
        )


class Table:
    """One TOML table being read: typed getters that record problems and fall back to
    the default, so that reading goes on and every problem is found in one pass."""

    def __init__(
        self,
        reader: Reader,
        path: tuple[str, ...],
        data: Mapping[str, object],
        known: Sequence[str],
    ) -> None:
        self.reader = reader
        self.path = path
        self.data = data
        self.known = known

    def problem(self, key: str, message: str) -> None:
        self.reader.problem((*self.path, key), message)

    def get(self, key: str, check: Callable[[object], T], default: T) -> T:
        if key not in self.data:
            return default
        try:
            return check(self.data[key])
        except ValueError as exc:
            self.problem(key, str(exc))
            return default

    def string(self, key: str, default: str) -> str:
        return self.get(key, _values.expect(str, "a string"), default)

    def choice(self, key: str, default: S) -> S:
        """One of the values of the Literal type that `default` belongs to."""
        choices = _CHOICES[(*self.path, key)]

        def check(value: object) -> S:
            text = _values.expect(str, "a string")(value)
            if text not in choices:
                raise ValueError(f"{text!r} is not one of {_quoted(choices)}")
            return cast(S, text)

        return self.get(key, check, default)

    def integer(self, key: str, default: int, minimum: int) -> int:
        def check(value: object) -> int:
            number = _values.expect(int, "an integer")(value)
            if number < minimum:
                raise ValueError(f"must be at least {minimum}, not {number}")
            return number

        return self.get(key, check, default)

    def duration(self, key: str, default: int, minimum: int) -> int:
        def check(value: object) -> int:
            seconds = _values.duration(value)
            if seconds < minimum:
                raise ValueError(f"must be at least {minimum} second(s)")
            return seconds

        return self.get(key, check, default)

    def items(
        self, key: str, check: Callable[[str], T], default: tuple[T, ...], *, single: bool = False
    ) -> tuple[T, ...]:
        """A list of strings, each converted by `check`; bad items are each reported.
        With `single`, one string is taken as a list of one."""
        if key not in self.data:
            return default
        value = self.data[key]
        if single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            expected = "a string or an array of strings" if single else "an array of strings"
            self.problem(key, f"expected {expected}, not {_values.show(value)}")
            return default
        result = []
        for item in value:
            try:
                result.append(check(_values.expect(str, "a string")(item)))
            except ValueError as exc:
                self.problem(key, str(exc))
        return tuple(result)

    def path_value(self, key: str, default: pathlib.Path | None) -> pathlib.Path | None:
        """A path relative to the config file's folder; "" means none."""
        text = self.string(key, "")
        if not text:
            return default if key not in self.data else None
        if "\0" in text:
            self.problem(key, "a path cannot contain a NUL character")
            return default
        try:
            path = pathlib.Path(text).expanduser()
        except RuntimeError:  # "~nosuchuser/..."
            self.problem(key, f"{text!r}: cannot find the home directory of {text.split('/')[0]}")
            return default
        return self.reader.base / path

    def table(self, key: str) -> Table:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            self.problem(key, f"expected a table ([{key}]), not {_values.show(value)}")
            value = {}
        return Table(self.reader, (*self.path, key), value, TABLE_KEYS.get(key, ()))

    def check_unknown(self) -> None:
        for key in self.data:
            if key not in self.known and not (not self.path and key in TABLE_KEYS):
                self.problem(key, f"unknown key{self._hint(key)}")

    def _hint(self, key: str) -> str:
        known = [*self.known, *(TABLE_KEYS if not self.path else ())]
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
        if close:
            return f"; did you mean {close[0]!r}?"
        if self.path and key in TOP_KEYS:
            # The classic TOML slip: a top-level key written below a [table] header.
            return f"; {key!r} belongs at the top, before the first [table] header"
        for table, keys in TABLE_KEYS.items():
            if key in keys and (table,) != self.path:
                return f"; {key!r} belongs in the [{table}] table"
        return ""


def _quoted(choices: Sequence[str]) -> str:
    return ", ".join(f'"{choice}"' for choice in choices)
