"""Atheris target: RFC 5321 paths and addresses (sansmail.mail.address).

Input: the first octet's low bit is SMTPUTF8; the rest is the text (UTF-8, undecodable
octets replaced).
"""

from __future__ import annotations

from collections.abc import Callable

import common


def load() -> Callable[[bytes], None]:
    # Imported here, under atheris's instrumentation (see common.instrumented).
    import fuzz_drivers  # noqa: PLC0415

    def test_one_input(data: bytes) -> None:
        smtputf8 = bool(data[:1]) and bool(data[0] & 1)
        fuzz_drivers.check_address(data[1:].decode("utf-8", "replace"), smtputf8)

    return test_one_input


if __name__ == "__main__":
    common.main(common.instrumented(load))
