"""Sieve's grammar (RFC 5228 §8.2): tokens to the tree of `_ast`, then validation.

Theory of operation: recursive descent over the token list of `_lexer`, one function per
rule of §8.2 (commands, command, arguments, test, test-list, string-list). The recursion
is bounded by MAX_NESTING, counted over blocks and nested tests together, so a hostile
script cannot exhaust Python's stack; the script's size is bounded before it is read, so
the token list is bounded too. Errors name the offending token's line and column.
The meaning of the arguments (which command takes what, ``require``) is `_validate`'s.
"""

from __future__ import annotations

from collections.abc import Iterator

from sansmail.mail.sieve._ast import (
    Argument,
    Command,
    Number,
    Position,
    Script,
    StringList,
    Tag,
    Test,
)
from sansmail.mail.sieve._lexer import Kind, SieveError, Token, tokens
from sansmail.mail.sieve._validate import validate

__all__ = ["DEFAULT_MAX_SIZE", "MAX_NESTING", "parse", "parse_bytes", "parse_tree"]

# Pigeonhole's sieve_max_script_size defaults to 1M.
DEFAULT_MAX_SIZE = 1 << 20
# Pigeonhole's SIEVE_MAX_BLOCK_NESTING and SIEVE_MAX_TEST_NESTING are 32 each.
MAX_NESTING = 32


def parse(text: str, *, max_size: int = DEFAULT_MAX_SIZE) -> Script:
    """The validated tree of ``text``; a SieveError for the first error found."""
    script = parse_tree(text, max_size=max_size)
    return validate(script)


def parse_bytes(raw: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Script:
    """`parse` of a script as uploaded or stored: UTF-8 octets (RFC 5228 §2.4.2.4). Octets
    that are not UTF-8 are an error at the line and column where they start."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        before = raw[: error.start].decode("utf-8")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        raise SieveError("the script is not valid UTF-8", Position(line, column)) from None
    return parse(text, max_size=max_size)


def parse_tree(text: str, *, max_size: int = DEFAULT_MAX_SIZE) -> Script:
    """The tree of ``text`` by the grammar alone (no ``require`` or argument checks)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_size:
        raise SieveError(f"script is too large ({size} bytes, max {max_size})", Position(1, 1))
    parser = _Parser(tokens(text))
    commands = parser.commands(0)
    token = parser.peek()
    if token.kind is not Kind.EOF:
        raise SieveError(f"unexpected {_describe(token)} found at the top level", token.position)
    return Script(commands)


def _describe(token: Token) -> str:
    if token.kind is Kind.IDENTIFIER:
        return f"identifier '{token.value}'"
    if token.kind is Kind.TAG:
        return f"tag ':{token.value}'"
    if token.kind is Kind.NUMBER:
        return f"number {token.value}"
    return str(token.kind.value)


class _Parser:
    # One token of look-ahead, read from the lexer only when needed.
    def __init__(self, tokens: Iterator[Token]) -> None:
        self.tokens = tokens
        self.next = next(tokens)

    def peek(self) -> Token:
        return self.next

    def take(self) -> Token:
        token = self.next
        if token.kind is not Kind.EOF:
            self.next = next(self.tokens)
        return token

    def commands(self, depth: int) -> tuple[Command, ...]:
        commands: list[Command] = []
        while self.peek().kind is Kind.IDENTIFIER:
            commands.append(self.command(depth))
        return tuple(commands)

    def command(self, depth: int) -> Command:
        name = self.take()
        arguments = self.arguments()
        tests, test_list = self.tests(depth, f"the {name.value} command")
        token = self.take()
        block: tuple[Command, ...] | None = None
        if token.kind is Kind.LBRACE:
            if depth + 1 > MAX_NESTING:
                raise SieveError(
                    f"cannot nest command blocks deeper than {MAX_NESTING} levels",
                    token.position,
                )
            block = self.commands(depth + 1)
            close = self.take()
            if close.kind is not Kind.RBRACE:
                raise SieveError(
                    f"expected a command or '}}' in the block of the {name.value} command,"
                    f" but found {_describe(close)}",
                    close.position,
                )
        elif token.kind is not Kind.SEMICOLON:
            raise SieveError(
                f"expected ';' or a block after the {name.value} command,"
                f" but found {_describe(token)}",
                token.position,
            )
        return Command(str(name.value), arguments, tests, block, name.position, test_list=test_list)

    def arguments(self) -> tuple[Argument, ...]:
        arguments: list[Argument] = []
        while True:
            token = self.peek()
            if token.kind is Kind.TAG:
                self.take()
                arguments.append(Tag(str(token.value), token.position))
            elif token.kind is Kind.NUMBER:
                self.take()
                arguments.append(Number(int(token.value), token.position))
            elif token.kind is Kind.STRING:
                self.take()
                arguments.append(StringList((str(token.value),), token.position, single=True))
            elif token.kind is Kind.LBRACKET:
                arguments.append(self.string_list())
            else:
                return tuple(arguments)

    def string_list(self) -> StringList:
        start = self.take()
        strings: list[str] = []
        while True:
            token = self.take()
            if token.kind is not Kind.STRING:
                raise SieveError(
                    f"expected a string in the string list, but found {_describe(token)}",
                    token.position,
                )
            strings.append(str(token.value))
            token = self.take()
            if token.kind is Kind.RBRACKET:
                return StringList(tuple(strings), start.position)
            if token.kind is not Kind.COMMA:
                raise SieveError(
                    f"expected ',' or ']' in the string list, but found {_describe(token)}",
                    token.position,
                )

    def tests(self, depth: int, owner: str) -> tuple[tuple[Test, ...], bool]:
        """The test or test list after the arguments, if any, and whether it was a list."""
        token = self.peek()
        if token.kind is Kind.IDENTIFIER:
            return (self.test(depth + 1),), False
        if token.kind is not Kind.LPAREN:
            return (), False
        self.take()
        tests: list[Test] = []
        while True:
            token = self.peek()
            if token.kind is not Kind.IDENTIFIER:
                raise SieveError(
                    f"expected a test in the test list of {owner}, but found {_describe(token)}",
                    token.position,
                )
            tests.append(self.test(depth + 1))
            token = self.take()
            if token.kind is Kind.RPAREN:
                return tuple(tests), True
            if token.kind is not Kind.COMMA:
                raise SieveError(
                    f"expected ',' or ')' in the test list of {owner}, but found"
                    f" {_describe(token)}",
                    token.position,
                )

    def test(self, depth: int) -> Test:
        name = self.take()
        if depth > MAX_NESTING:
            raise SieveError(f"cannot nest tests deeper than {MAX_NESTING} levels", name.position)
        arguments = self.arguments()
        tests, test_list = self.tests(depth, f"the {name.value} test")
        return Test(str(name.value), arguments, tests, name.position, test_list=test_list)
