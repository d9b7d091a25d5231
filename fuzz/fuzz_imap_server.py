"""Atheris target: the IMAP server core (sansmail.imap.Connection).

Input: one octet N (mod 64), N octets of decisions (how to cut the stream, which answer
the toy application gives), then the octets the peer sends. See fuzz/README.md.
"""

from __future__ import annotations

from collections.abc import Callable

import common


def load() -> Callable[[bytes], None]:
    # Imported here, under atheris's instrumentation (see common.instrumented).
    import fuzz_drivers  # noqa: PLC0415

    driver = fuzz_drivers.driver_class("imap_server")

    def test_one_input(data: bytes) -> None:
        decisions, stream = fuzz_drivers.split_input(data)
        fuzz_drivers.run_stream(driver(decisions), stream)

    return test_one_input


if __name__ == "__main__":
    common.main(common.instrumented(load))
