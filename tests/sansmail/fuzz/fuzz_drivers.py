"""Drivers shared by the stateful hypothesis tests (tests/sansmail/fuzz/) and the atheris
targets (fuzz/): each drives one core with bytes and decisions from outside and checks the
invariants the core documents after every step.

A driver never decides anything by itself: every choice (where to cut the input, which of
several answers the application gives, whether it answers with something the protocol
forbids) comes from `Decisions`, a stream of bytes. Hypothesis draws those bytes and so
shrinks them; atheris mutates them. An exhausted stream answers 0, which is always the
plain, valid choice, so a seed made of a valid session and no decisions replays that
session as a real application would answer it.

What counts as a bug (`InvariantError`): an exception no core documents (anything but
`RemoteProtocolError` from receiving, `LocalProtocolError` from a send the driver knew to
be out of turn, and the per-core error types named in each driver), an event of a type
the core does not export, a state outside its enum, output that is not CRLF-terminated
lines within the protocol's line limit, a reply hint the core itself gives that it then
refuses to send, and a receive buffer larger than its limits once the core asks for more
data (the adapter stops reading while a core is PAUSED, so only NEED_DATA promises that
the buffered octets were judged). The protocol drivers live in drive_<core>.py and add
their core's own promises: SMTP and IMAP commands read back as themselves once written by
the client-side writers, a genuine SASL exchange succeeds and convinces its client. The
pure parsers' checks are the check_* functions below.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Iterator

from sansmail import NEED_DATA, PAUSED, LocalProtocolError, RemoteProtocolError, mime
from sansmail.config import ConfigError, not_in_force, parse_config, warnings
from sansmail.config._tables import TABLE_KEYS, TOP_KEYS
from sansmail.imap import decode_tree, encode_tree, encode_value
from sansmail.mail import aliases
from sansmail.mail.address import AddressError, canonical_domain, parse_address, read_path

__all__ = [
    "DRIVEN",
    "Decisions",
    "Driver",
    "InvariantError",
    "LockstepDriver",
    "check_address",
    "check_aliases",
    "check_config",
    "check_config_value",
    "check_lines",
    "check_mime",
    "config_keys",
    "driver_class",
    "run_stream",
    "split_input",
]


class InvariantError(AssertionError):
    """A core broke one of its documented promises."""


class Decisions:
    """Choices read from bytes; 0 once they run out."""

    def __init__(self, data: bytes = b"") -> None:
        self._data = data
        self._pos = 0

    def pick(self, n: int) -> int:
        """A number in range(n)."""
        if self._pos >= len(self._data) or n <= 1:
            return 0
        value = self._data[self._pos]
        self._pos += 1
        return value % n

    def extend(self, data: bytes) -> None:
        self._data = self._data[self._pos :] + data
        self._pos = 0


def check_lines(data: bytes, max_line: int | None, what: str) -> None:
    """`data` is whole lines, each ending CRLF, no bare CR or LF, each at most `max_line`
    octets with its CRLF (None: no limit)."""
    if not isinstance(data, bytes):
        raise InvariantError(f"{what}: send() returned {type(data).__name__}")
    if not data:
        return
    if not data.endswith(b"\r\n"):
        raise InvariantError(f"{what}: output does not end with CRLF: {data[-40:]!r}")
    for line in data[:-2].split(b"\r\n"):
        if b"\r" in line or b"\n" in line:
            raise InvariantError(f"{what}: bare CR or LF in output line {line[:80]!r}")
        if max_line is not None and len(line) + 2 > max_line:
            raise InvariantError(f"{what}: output line of {len(line) + 2} octets over {max_line}")


class Driver:
    """One core under test. Subclasses implement `_pump`, `_check` and say what they
    hand out; `feed`, `eof` and `pump` are the three moves a fuzzer makes."""

    #: How many events one `pump` may handle; input is finite, so this only stops a
    #: core that would hand out events forever without consuming anything.
    MAX_EVENTS = 10_000

    def __init__(self, decisions: Decisions) -> None:
        self.decisions = decisions
        self.done = False  # the session is over (closed or broken): nothing more to do
        self.eof_sent = False
        self.output = bytearray()

    def feed(self, data: bytes) -> None:
        if self.done or self.eof_sent or not data:
            return
        self._receive(data)

    def eof(self) -> None:
        if self.done or self.eof_sent:
            return
        self.eof_sent = True
        self._receive(b"")

    def pump(self) -> None:
        if not self.done:
            self._pump()
        self.check()

    def check(self) -> None:
        self._check()

    def _receive(self, data: bytes) -> None:
        raise NotImplementedError

    def _pump(self) -> None:
        raise NotImplementedError

    def _check(self) -> None:
        raise NotImplementedError


def run_stream(driver: Driver, stream: bytes) -> None:
    """Feed `stream` in pieces whose lengths the driver's decisions choose (0: all the
    rest), pumping after each, then EOF; the atheris targets' whole run."""
    decisions = driver.decisions
    pos = 0
    driver.pump()
    while pos < len(stream) and not driver.done:
        size = decisions.pick(256)
        end = len(stream) if size == 0 else pos + size
        driver.feed(stream[pos:end])
        pos = end
        driver.pump()
    driver.eof()
    driver.pump()


def split_input(data: bytes) -> tuple[Decisions, bytes]:
    """An atheris input: one octet N (mod 64), N octets of decisions, then the stream."""
    if not data:
        return Decisions(), b""
    count = data[0] % 64
    return Decisions(data[1 : 1 + count]), data[1 + count :]


# --- lockstep servers: SMTP, POP3, IMAP ---------------------------------------------------


class LockstepDriver(Driver):
    """An SMTP, POP3 or IMAP server core answered by a toy application.

    The application's answer to each event is chosen from `answers(event)`: the first is
    the plain valid one, the others valid alternatives; with a small chance it answers
    with `wrong(event)` instead, which the core may refuse with LocalProtocolError (that
    ends the run: our side is then broken for good, as documented)."""

    module: object  # the core's package, whose __all__ lists its events
    phase_enum: type[enum.Enum]
    event_base: type
    max_output_line: int | None = 512

    def __init__(self, decisions: Decisions, conn: object) -> None:
        super().__init__(decisions)
        self.conn = conn
        self.events: list[object] = []
        names = getattr(self.module, "__all__", ())
        self.documented = {
            getattr(self.module, n) for n in names if isinstance(getattr(self.module, n), type)
        }

    def _receive(self, data: bytes) -> None:
        self.conn.receive_data(data)  # type: ignore[attr-defined]

    def send(self, event: object, *, may_fail: bool = False) -> bool:
        """Send `event`; False if the core refused it (allowed only when `may_fail`)."""
        try:
            data = self.conn.send(event)  # type: ignore[attr-defined]
        except LocalProtocolError:
            if not may_fail:
                raise
            if self.conn.our_state.name != "ERROR":  # type: ignore[attr-defined]
                raise InvariantError("LocalProtocolError left our side out of ERROR") from None
            self.done = True
            return False
        self.check_output(data)
        self.output += data
        return True

    def check_output(self, data: bytes) -> None:
        check_lines(data, self.max_output_line, type(self).__name__)

    def _pump(self) -> None:
        conn = self.conn
        for _ in range(self.MAX_EVENTS):
            if conn.our_state.name in ("CLOSED", "ERROR"):  # type: ignore[attr-defined]
                self.done = True
                return
            try:
                event = conn.next_event()  # type: ignore[attr-defined]
            except RemoteProtocolError as exc:
                if conn.their_state.name != "ERROR":  # type: ignore[attr-defined]
                    raise InvariantError(
                        "RemoteProtocolError left the client side out of ERROR"
                    ) from None
                if exc.reply_hint is not None:
                    self.send(exc.reply_hint)  # the hint must always be sendable
                self.done = True
                return
            if event is NEED_DATA:
                self.check_buffer()
                return
            if event is PAUSED:
                if not self.paused():
                    return
                continue
            if type(event) not in self.documented or not isinstance(event, self.event_base):
                raise InvariantError(f"undocumented event {event!r}")
            self.events.append(event)
            if type(event).__name__ == "ConnectionClosed":
                self.closed()
                return
            self.answer(event)
        raise InvariantError(f"more than {self.MAX_EVENTS} events without asking for data")

    def _check(self) -> None:
        conn = self.conn
        for state in (conn.our_state, conn.their_state):  # type: ignore[attr-defined]
            if not isinstance(state, self.phase_enum):
                raise InvariantError(f"state {state!r} is not a {self.phase_enum.__name__}")

    def buffered(self) -> int:
        return len(self.conn._buffer)  # type: ignore[attr-defined]

    def check_buffer(self) -> None:
        limit = self.buffer_limit()
        if self.buffered() > limit:
            raise InvariantError(
                f"{self.buffered()} octets buffered in "
                f"{self.conn.their_state.name} while asking for more (limit {limit})"  # type: ignore[attr-defined]
            )

    def buffer_limit(self) -> int:
        raise NotImplementedError

    def paused(self) -> bool:
        """The core paused: act like the adapter (finish a TLS switch ...); True if the
        core may go on."""
        return False

    def closed(self) -> None:
        self.done = True

    def answer(self, event: object) -> None:
        choices = self.answers(event)
        if not choices:
            return
        wrong = self.wrong(event)
        pick = self.decisions.pick(len(choices) + 1 if wrong is not None else len(choices))
        if pick == len(choices):
            self.send(wrong, may_fail=True)
            return
        for response in choices[pick]:
            if not self.send(response):
                return

    def answers(self, event: object) -> list[list[object]]:
        raise NotImplementedError

    def wrong(self, event: object) -> object | None:
        return None


#: The cores with a driver, each in its own module drive_<name>.py.
DRIVEN = ("smtp_server", "smtp_client", "pop3_server", "imap_server", "sasl", "milter")


def driver_class(name: str) -> type[Driver]:
    """The driver class of a core, from its module (imported on first use, so that an
    atheris target imports it under instrumentation)."""
    module = importlib.import_module(f"drive_{name}")
    driver: type[Driver] = module.DRIVER
    return driver


# --- pure parsers: MIME, addresses, aliases, config ----------------------------------------


def check_mime(raw: bytes) -> None:
    """Everything the IMAP server calls on a stored message: parse, ENVELOPE and
    BODYSTRUCTURE (which must encode for the wire and for the cache, and come back from
    the cache equal), sections, BINARY; nothing may raise but the documented
    `UnknownEncoding` result."""

    root = mime.parse(raw)
    for tree in (
        mime.envelope(root),
        mime.bodystructure(root),
        mime.bodystructure(root, extensible=False),
    ):
        encode_value(tree)
        if decode_tree(encode_tree(tree)) != tree:
            raise InvariantError("a value tree does not survive the cache")
    mime.header_fields(raw, root)
    mime.decoded_header(raw[: root.header_end])

    def walk(
        part: mime.MessagePart, numbers: tuple[int, ...], depth: int
    ) -> Iterator[tuple[int, ...]]:
        yield numbers
        if depth > 3:
            return
        children = part.children or ([part.encapsulated] if part.encapsulated else [])
        for index, child in enumerate(children[:4], 1):
            if child is not None:
                yield from walk(child, (*numbers, index), depth + 1)

    for numbers in [*walk(root, (), 0), (9,), (1, 9)]:
        for text in (None, "HEADER", "TEXT", "MIME", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            if text == "MIME" and not numbers:
                continue
            names = (b"subject", b"from") if text and text.startswith("HEADER.FIELDS") else ()
            got = mime.section(raw, root, mime.SectionSpec(parts=numbers, text=text, fields=names))
            if got is not None and not isinstance(got, bytes):
                raise InvariantError(f"section gave {type(got).__name__}")
        for result in (mime.binary(raw, root, numbers), mime.binary_size(raw, root, numbers)):
            if not isinstance(result, bytes | int | mime.UnknownEncoding | type(None)):
                raise InvariantError(f"binary gave {result!r:.80}")


def check_address(text: str, smtputf8: bool) -> None:
    """`read_path`, `parse_address` and `canonical_domain` raise only `AddressError`, and
    what they accept prints back to an equal value (the module docstring's promise)."""

    try:
        address, end = read_path(text, smtputf8=smtputf8)
    except AddressError:
        pass
    else:
        if not 0 < end <= len(text):
            raise InvariantError(f"read_path end {end} outside {text!r}")
        if address is not None:
            again, _ = read_path(f"<{address}>", smtputf8=True)
            if again != address:
                raise InvariantError(f"{address!r} prints as {address} which reads as {again!r}")
    try:
        address = parse_address(text, smtputf8=smtputf8)
    except AddressError:
        pass
    else:
        if parse_address(str(address)) != address:
            raise InvariantError(f"parse_address({str(address)!r}) differs from {address!r}")
    try:
        domain = canonical_domain(text)
    except AddressError:
        pass
    else:
        if canonical_domain(domain) != domain:
            raise InvariantError(f"canonical_domain is not idempotent on {text!r}")


def check_aliases(text: str, start: str) -> None:
    """`parse_aliases` never raises, and `expand` of any name through the table (with
    include files drawn from the same text) ends, raising nothing."""

    table = aliases.parse_aliases(text, source="fuzz")
    for problem in table.problems:
        if not isinstance(problem, aliases.AliasProblem):
            raise InvariantError(f"problem {problem!r}")

    def read_include(path: str) -> str:
        if path.endswith("missing"):
            raise OSError(2, "No such file or directory")
        return text

    for name in [start, *list(table)[:5]]:
        # expand takes an Address.key: only names that make an address can be asked.
        try:
            key = parse_address(name if "@" in name else f"{name}@a.example").key
        except AddressError:
            continue
        result = aliases.expand(
            table,
            key,
            domains=("a.example", "b.example"),
            user_exists=lambda key: key.startswith(("u", "postmaster@")),
            recipient_delimiter="+",
            read_include=read_include,
        )
        if not isinstance(result, aliases.Expansion):
            raise InvariantError(f"expand gave {result!r}")


def check_config(text: str) -> None:
    """`parse_config` gives a `Config` or raises `ConfigError` with at least one problem,
    and `warnings`/`not_in_force` take whatever it gives."""

    try:
        config = parse_config(text, source=None, default_hostname="h.example")
    except ConfigError as exc:
        if not exc.problems:
            raise InvariantError("ConfigError without problems") from None
        return
    warnings(config)
    not_in_force(config)


def config_keys() -> list[tuple[str, str]]:
    """Every key the config file knows, as (table, key); table "" is the top level."""

    return [("", key) for key in TOP_KEYS] + [
        (table, key) for table, keys in TABLE_KEYS.items() for key in keys
    ]


def config_with(table: str, key: str, value: str) -> str:
    """A config text setting `key` of `table` to the TOML `value` text."""
    line = f"{key} = {value}\n"
    return line if not table else f"[{table}]\n{line}"


def check_config_value(selector: int, value: str) -> None:
    """`check_config` on a file that sets one known key (chosen by `selector`) to `value`."""
    keys = config_keys()
    table, key = keys[selector % len(keys)]
    check_config(config_with(table, key, value))
