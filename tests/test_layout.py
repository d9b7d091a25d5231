"""The tree says which part is which, and the parts keep to their rules (README, "Layout"):

- `sansmail/` never touches the network, threads, an event loop or `sansmail_trio`;
- the protocol cores depend on nothing above them (the address grammar excepted);
- pure decisions (`sansmail.mail`) never reach storage or sessions;
- storage never reaches sessions;
- no import cycles, counting the imports made only for type checking;
- every package says what it is and what it may not do.

Read from the source with `ast`, so an import hidden in a function counts too.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sansmail"
CORES = ("smtp", "pop3", "imap", "sasl", "mime", "milter", "managesieve")
FORBIDDEN = ("trio", "asyncio", "anyio", "socket", "ssl", "selectors", "threading")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: pathlib.Path) -> Iterator[str]:
    """Every module `path` imports (a `from a import b` yields `a.b` when that is one)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import submodule` needs the submodule (and, like every import of
            # a submodule, its package's __init__ to have started: not an edge to count).
            submodules = [f"{node.module}.{a.name}" for a in node.names]
            submodules = [name for name in submodules if name in MODULES]
            if len(submodules) < len(node.names):
                yield node.module
            yield from submodules


IMPORTS = {name: set(_imports(path)) for name, path in MODULES.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "sansmail"
    if parts[1] in CORES:
        return "core"
    return parts[1] if not parts[1].startswith("_") else "infra"


def _violations(
    rule: str, allowed: set[str], exceptions: frozenset[str] = frozenset()
) -> list[str]:
    found = []
    for module, imported in IMPORTS.items():
        if _part(module) != rule:
            continue
        for target in imported:
            if target.startswith("sansmail.") and target not in exceptions:
                if _part(target) not in allowed and target in MODULES:
                    found.append(f"{module} imports {target}")
    return sorted(found)


def test_nothing_in_sansmail_does_network_io_threads_or_async() -> None:
    bad = [
        f"{module} imports {target}"
        for module, imported in IMPORTS.items()
        for target in imported
        if target.split(".")[0] in (*FORBIDDEN, "sansmail_trio")
    ]
    assert bad == []


def test_cores_depend_only_on_cores_and_the_address_grammar() -> None:
    assert (
        _violations("core", {"core", "infra", "sansmail"}, frozenset({"sansmail.mail.address"}))
        == []
    )


def test_pure_decisions_never_reach_storage_or_sessions() -> None:
    assert _violations("mail", {"mail", "core", "infra", "config", "sansmail"}) == []


def test_storage_never_reaches_sessions() -> None:
    assert _violations("storage", {"storage", "mail", "core", "infra", "config", "sansmail"}) == []


def test_no_import_cycles() -> None:
    graph = {m: {t for t in imported if t in MODULES and t != m} for m, imported in IMPORTS.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    assert cycles == []


@pytest.mark.parametrize(
    "package",
    sorted(name for name, path in MODULES.items() if path.name == "__init__.py"),
)
def test_every_package_says_what_it_is(package: str) -> None:
    docstring = ast.get_docstring(ast.parse(MODULES[package].read_text()))
    assert docstring, f"{package} has no docstring"
    assert len(docstring.split("\n\n")[0].splitlines()) >= 2, (
        f"{package}: say in two lines what it is and what it may not do"
    )


def test_the_parts_are_the_ones_the_readme_names() -> None:
    top = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert top - {"__pycache__"} == {*CORES, "mail", "sessions", "storage", "config"}
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    for part in (*CORES, "mail", "sessions", "storage", "config"):
        assert f"{part}/" in layout
