"""Atheris target: MIME structure (sansmail.mime) and the IMAP value trees built from it.

Input: a message's octets.
"""

from __future__ import annotations

from collections.abc import Callable

import common


def load() -> Callable[[bytes], None]:
    # Imported here, under atheris's instrumentation (see common.instrumented).
    import fuzz_drivers  # noqa: PLC0415

    def test_one_input(data: bytes) -> None:
        fuzz_drivers.check_mime(data)

    return test_one_input


if __name__ == "__main__":
    common.main(common.instrumented(load))
