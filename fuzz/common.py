"""What every atheris target shares: the path to the shared drivers, instrumentation of
the sansmail modules, and the entry point.

The drivers live beside the stateful hypothesis tests (tests/sansmail/fuzz/fuzz_drivers.py)
so that both fuzzers check the same invariants; a target adds that folder to sys.path.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable

import atheris

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "sansmail" / "fuzz"))
sys.path.insert(0, str(ROOT))


def instrumented(load: Callable[[], Callable[[bytes], None]]) -> Callable[[bytes], None]:
    """Import the drivers and the sansmail modules `load` needs under atheris's
    instrumentation (only sansmail's own modules are instrumented), and return the
    one-input function `load` builds."""
    with atheris.instrument_imports(include=["sansmail"]):
        return load()


def main(test_one_input: Callable[[bytes], None]) -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
