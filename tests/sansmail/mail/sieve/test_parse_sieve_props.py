"""Properties of the Sieve parser: any text gives a Script or a SieveError and nothing
else, and a generated valid script printed back (a small unparser here) parses to the
same tree, positions aside."""

from __future__ import annotations

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail.mail.sieve import Command, Number, Script, SieveError, StringList, Tag, parse
from sansmail.mail.sieve import Test as SieveTest
from sansmail.mail.sieve._parser import parse_tree

SETTINGS = settings(max_examples=300, deadline=None)

_PIECES = st.sampled_from(
    [
        "if", "elsif", "else", "require", "keep", "stop", "fileinto", "header", "address",
        "allof", "anyof", "not", "true", "size", ":is", ":over", ":comparator", '"x"',
        '"\\"', '"a\\"b"', "[", "]", "(", ")", "{", "}", ",", ";", " ", "\n", "\r\n", "\r",
        "#c\n", "/*", "*/", "text:", "text:\n", "\n.\n", "..", "10K", "99999999999999999999G",
        '"fileinto"', '"variables"', ":", "\\", "\t", "é", "\x00",
    ]
)  # fmt: skip


def outcome(text: str) -> Script | SieveError:
    try:
        return parse(text)
    except SieveError as error:
        return error


@SETTINGS
@given(st.text(max_size=200))
def test_any_text_gives_a_script_or_a_sieve_error(text: str) -> None:
    result = outcome(text)
    if isinstance(result, SieveError):
        assert result.position.line >= 1
        assert result.position.column >= 1
    else:
        assert isinstance(result, Script)


@SETTINGS
@given(st.lists(_PIECES, max_size=60).map("".join))
def test_any_sieve_like_text_gives_a_script_or_a_sieve_error(text: str) -> None:
    result = outcome(text)
    assert isinstance(result, Script | SieveError)
    if isinstance(result, SieveError):
        assert result.position.line <= text.count("\n") + 1


# --- a valid script generator and an unparser ----------------------------------------

_STRINGS = st.text(
    st.characters(codec="utf-8", exclude_characters="\r", exclude_categories=("Cs",)),
    max_size=12,
)
_KEYS = st.lists(_STRINGS, min_size=1, max_size=3)
_MATCH = st.sampled_from(["", ":is ", ":contains ", ":matches "])


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _string_list(strings: list[str]) -> str:
    return "[" + ", ".join(_quote(text) for text in strings) + "]"


@st.composite
def _tests(draw: st.DrawFn, depth: int = 0) -> str:
    kinds = ["true", "false", "exists", "header", "size"]
    if depth < 3:
        kinds += ["not", "allof", "anyof"]
    kind = draw(st.sampled_from(kinds))
    if kind in ("true", "false"):
        return kind
    if kind == "exists":
        return f"exists {_string_list(draw(_KEYS))}"
    if kind == "header":
        return f"header {draw(_MATCH)}{_string_list(draw(_KEYS))} {_string_list(draw(_KEYS))}"
    if kind == "size":
        return f"size {draw(st.sampled_from([':over', ':under']))} {draw(st.integers(0, 10**9))}"
    if kind == "not":
        return "not " + draw(_tests(depth + 1))
    tests = draw(st.lists(_tests(depth + 1), min_size=1, max_size=3))
    return f"{kind} (" + ", ".join(tests) + ")"


@st.composite
def _commands(draw: st.DrawFn, depth: int = 0) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["keep", "stop", "fileinto", "if"] if depth < 3 else ["keep"]))
        if kind == "fileinto":
            folder = draw(_STRINGS)
            if draw(st.booleans()) and folder.strip("\n") == folder:
                # RFC 5228 §2.4.2: every line of the string that starts with "." is
                # dot-stuffed, the first one too ("." alone would end the string).
                stuffed = ("\n" + folder).replace("\n.", "\n..")[1:]
                lines.append("fileinto text:\n" + stuffed + "\n.\n;")
            else:
                lines.append(f"fileinto {_quote(folder)};")
        elif kind == "if":
            lines.append(f"if {draw(_tests())} {{\n{draw(_commands(depth + 1))}\n}}")
            if draw(st.booleans()):
                lines.append(f"else {{ {draw(_commands(depth + 1))} }}")
        else:
            lines.append(f"{kind};")
    return "\n".join(lines)


def _unparse_argument(argument: object) -> str:
    if isinstance(argument, Tag):
        return f":{argument.name}"
    if isinstance(argument, Number):
        return str(argument.value)
    assert isinstance(argument, StringList)
    if argument.single:
        return _quote(argument.strings[0])
    return _string_list(list(argument.strings))


def _unparse_test(test: SieveTest) -> str:
    text = " ".join([test.name, *map(_unparse_argument, test.arguments)])
    if test.test_list:
        return text + " (" + ", ".join(map(_unparse_test, test.tests)) + ")"
    return " ".join([text, *map(_unparse_test, test.tests)])


def unparse(commands: tuple[Command, ...]) -> str:
    out = []
    for command in commands:
        text = " ".join([command.name, *map(_unparse_argument, command.arguments)])
        if command.tests:
            text += " " + ", ".join(map(_unparse_test, command.tests))
        if command.block is None:
            out.append(text + ";")
        else:
            out.append(text + " {\n" + unparse(command.block) + "\n}")
    return "\n".join(out)


def _strip(node: object) -> object:
    """The tree without positions, to compare two parses of different layout."""
    if isinstance(node, tuple):
        return tuple(_strip(item) for item in node)
    if isinstance(node, (Command, SieveTest, Tag, Number, StringList)):
        fields = attrs.asdict(node, recurse=False)
        fields.pop("position")
        return (type(node).__name__, {key: _strip(value) for key, value in fields.items()})
    return node


@SETTINGS
@given(_commands())
def test_valid_scripts_round_trip(body: str) -> None:
    text = 'require "fileinto";\n' + body
    script = parse(text)
    again = parse(unparse(script.commands))
    assert _strip(again.commands) == _strip(script.commands)
    assert again.requires == script.requires == {"fileinto"}


def test_unparser_sees_every_node() -> None:
    text = 'if anyof (not header :is ["a"] "b", size :over 1K) { fileinto "x"; } else { stop; }'
    tree = parse_tree(text)
    assert unparse(tree.commands).count("header :is") == 1
    assert _strip(parse_tree(unparse(tree.commands)).commands) == _strip(tree.commands)
