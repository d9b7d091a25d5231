"""Atheris target: the configuration file (sansmail.config.parse_config).

Input (UTF-8, undecodable octets replaced): when the first octet is below 0x80, it picks
one of the keys the file knows and the rest is that key's value (the text after
``key = ``); otherwise the rest is a whole TOML file.
"""

from __future__ import annotations

from collections.abc import Callable

import common


def load() -> Callable[[bytes], None]:
    # Imported here, under atheris's instrumentation (see common.instrumented).
    import fuzz_drivers  # noqa: PLC0415

    def test_one_input(data: bytes) -> None:
        text = data[1:].decode("utf-8", "replace")
        if data[:1] and data[0] < 0x80:
            fuzz_drivers.check_config_value(data[0], text)
        else:
            fuzz_drivers.check_config(text)

    return test_one_input


if __name__ == "__main__":
    common.main(common.instrumented(load))
