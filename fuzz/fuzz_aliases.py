"""Atheris target: the aliases file grammar and expansion (sansmail.mail.aliases).

Input: the first line is the name to expand; the rest is the aliases file (UTF-8,
undecodable octets replaced), also served as every include file.
"""

from __future__ import annotations

from collections.abc import Callable

import common


def load() -> Callable[[bytes], None]:
    # Imported here, under atheris's instrumentation (see common.instrumented).
    import fuzz_drivers  # noqa: PLC0415

    def test_one_input(data: bytes) -> None:
        start, _, text = data.decode("utf-8", "replace").partition("\n")
        fuzz_drivers.check_aliases(text, start)

    return test_one_input


if __name__ == "__main__":
    common.main(common.instrumented(load))
