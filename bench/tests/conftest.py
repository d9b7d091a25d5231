"""The bench scripts are not a package: make them importable the way they import each other."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))


@pytest.fixture(autouse=True)
def _usual_umask() -> Iterator[None]:
    """The peers (Postfix above all) make their queue folders with the umask they inherit
    and need the usual 022, whatever an earlier test of this worker left."""
    umask = os.umask(0o022)
    yield
    os.umask(umask)
