"""The Sieve lexer and grammar (RFC 5228 §2, §8): tokens, strings, numbers, comments,
nesting and size limits, and the line and column of every error."""

from __future__ import annotations

import pytest

from sansmail.mail.sieve import Command, Number, Position, SieveError, StringList, Tag
from sansmail.mail.sieve import Test as SieveTest
from sansmail.mail.sieve._lexer import MAX_NUMBER, Kind, tokenize
from sansmail.mail.sieve._parser import MAX_NESTING, parse_tree


def only_argument(text: str) -> object:
    (command,) = parse_tree(text).commands
    (argument,) = command.arguments
    return argument


def test_quoted_string_escapes() -> None:
    # RFC 5228 §2.4.2: \" and \\ are defined; any other escaped character is itself.
    argument = only_argument(r'keep "a\"b\\c\d\\\"";')
    assert argument == StringList(('a"b\\cd\\"',), Position(1, 6), single=True)


def test_quoted_string_spans_lines_and_positions_follow() -> None:
    script = parse_tree('keep "a\r\nb";\r\nstop;')
    assert script.commands[0].arguments[0].strings == ("a\r\nb",)
    assert script.commands[1].position == Position(3, 1)


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_multiline_string(newline: str) -> None:
    text = newline.join(["vacation text: # comment", "line one", "..dotted", ".", ";", "stop;"])
    script = parse_tree(text)
    assert script.commands[0].arguments[0] == StringList(
        (f"line one{newline}.dotted{newline}",), Position(1, 10), single=True
    )
    assert script.commands[1].position == Position(6, 1)


def test_multiline_string_ends_at_end_of_file_after_dot() -> None:
    tokens = tokenize("keep text:\nx\n.")
    assert [token.value for token in tokens] == ["keep", "x\n", ""]


def test_multiline_string_empty() -> None:
    assert only_argument("keep text:\n.\n;").strings == ("",)


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("10", 10), ("10K", 10240), ("2m", 2 << 20), ("3G", 3 << 30)],
)
def test_numbers_with_quantifiers(text: str, value: int) -> None:
    assert only_argument(f"keep {text};") == Number(value, Position(1, 6))


def test_largest_number() -> None:
    assert only_argument(f"keep {MAX_NUMBER};").value == MAX_NUMBER


@pytest.mark.parametrize("text", [str(MAX_NUMBER + 1), "9" * 100, "8589934592G"])
def test_number_overflow(text: str) -> None:
    with pytest.raises(SieveError, match="number exceeds integer limits") as info:
        parse_tree(f"keep\n  {text};")
    assert info.value.position == Position(2, 3)


def test_comments() -> None:
    script = parse_tree("# hash\nkeep /* bracket\n comment */ ; # end")
    assert script.commands == (Command("keep", (), (), None, Position(2, 1)),)


def test_tags_and_identifiers_are_lower_case() -> None:
    (command,) = parse_tree('FileInto :COPY "x";').commands
    assert command.name == "fileinto"
    assert command.arguments[0] == Tag("copy", Position(1, 10))


def test_tokens() -> None:
    kinds = [token.kind for token in tokenize('a :b 1 "c" [ ] ( ) { } , ;')]
    assert kinds == [
        Kind.IDENTIFIER, Kind.TAG, Kind.NUMBER, Kind.STRING, Kind.LBRACKET, Kind.RBRACKET,
        Kind.LPAREN, Kind.RPAREN, Kind.LBRACE, Kind.RBRACE, Kind.COMMA, Kind.SEMICOLON,
        Kind.EOF,
    ]  # fmt: skip


def test_tree_shape() -> None:
    text = 'if anyof (not exists "x", true) { keep; } else { discard; }'
    (if_, else_) = parse_tree(text).commands
    assert if_.tests == (
        SieveTest(
            "anyof",
            (),
            (
                SieveTest("not", (), (SieveTest("exists", (StringList(("x",), Position(1, 22),
                     single=True),), (), Position(1, 15)),), Position(1, 11)),
                SieveTest("true", (), (), Position(1, 27)),
            ),
            Position(1, 4),
            test_list=True,
        ),
    )  # fmt: skip
    assert if_.block == (Command("keep", (), (), None, Position(1, 35)),)
    assert else_.block == (Command("discard", (), (), None, Position(1, 50)),)


def test_string_list() -> None:
    argument = only_argument('keep ["a", "b"];')
    assert argument == StringList(("a", "b"), Position(1, 6))


def test_nesting_limit_tests() -> None:
    ok = "if " + "not " * (MAX_NESTING - 1) + "true {}"
    parse_tree(ok)
    with pytest.raises(SieveError, match="deeper than 32") as info:
        parse_tree("if " + "not " * MAX_NESTING + "true {}")
    assert info.value.position == Position(1, 3 + 4 * MAX_NESTING + 1)


def test_nesting_limit_blocks() -> None:
    parse_tree("if true {" * MAX_NESTING + "}" * MAX_NESTING)
    with pytest.raises(SieveError, match="deeper than 32"):
        parse_tree("if true {" * (MAX_NESTING + 1) + "}" * (MAX_NESTING + 1))


def test_deep_nesting_is_an_error_not_a_recursion_error() -> None:
    with pytest.raises(SieveError):
        parse_tree("if " + "anyof(" * 100_000 + "true" + ")" * 100_000 + " {}")


def test_size_limit() -> None:
    parse_tree("keep;" * 20, max_size=100)
    with pytest.raises(SieveError, match="too large") as info:
        parse_tree("keep;" * 21, max_size=100)
    assert info.value.position == Position(1, 1)


BAD = [
    # (script, line, column, message fragment)
    ("keep", 1, 5, "expected ';'"),
    ("keep;\n  /* never closed", 2, 3, "bracket comment"),
    ('keep "abc', 1, 6, "end of file before end of quoted string"),
    ('keep "abc\\', 1, 6, "end of file before end of quoted string"),
    ("keep text:\nabc\n", 1, 6, "end of file before end of multi-line string"),
    ("keep text: x\n.\n;", 1, 12, "after 'text:'"),
    ("keep text:", 1, 11, "after 'text:'"),
    ("keep @;", 1, 6, "unexpected character"),
    ("keep : x;", 1, 6, "tag needs a name"),
    ("keep [];", 1, 7, "expected a string"),
    ('keep ["a" "b"];', 1, 11, "expected ',' or ']'"),
    ('keep ["a",];', 1, 11, "expected a string"),
    ("if () {}", 1, 5, "expected a test"),
    ("if (true; false) {}", 1, 9, "expected ',' or ')'"),
    ("if true { keep; ", 1, 17, "expected a command or '}'"),
    ("}", 1, 1, "unexpected '}' found at the top level"),
    ('keep;\n\t"x";', 2, 2, "unexpected string found at the top level"),
    ("keep\r;", 1, 5, "bare carriage return"),
    ("if true {} 12", 1, 12, "unexpected number 12"),
]


@pytest.mark.parametrize(("text", "line", "column", "fragment"), BAD)
def test_bad_scripts(text: str, line: int, column: int, fragment: str) -> None:
    with pytest.raises(SieveError) as info:
        parse_tree(text)
    assert fragment in info.value.message
    assert info.value.position == Position(line, column)
    assert str(info.value).startswith(f"{line}:{column}: ")
