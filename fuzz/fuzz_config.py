"""Atheris target: the configuration file (sansmail.config.parse_config).

Input (UTF-8, undecodable octets replaced): when the first octet is below 0x80, it picks
one of the keys the file knows and the rest is that key's value (the text after
``key = ``); otherwise the rest is a whole TOML file.

With FUZZ_IGNORE_KNOWN=1 in the environment, the two known, reported findings are passed
over, so that a run can look for others: an OSError (ENAMETOOLONG, EACCES) out of a path
key's existence check, and a TOMLDecodeError out of the key-line scan (a quoted key with
a control character or a bad escape in a header or before "=").
"""

from __future__ import annotations

import errno
import os
import tomllib
from collections.abc import Callable

import common

_KNOWN_ERRNOS = (errno.ENAMETOOLONG, errno.EACCES)


def load() -> Callable[[bytes], None]:
    # Imported here, under atheris's instrumentation (see common.instrumented).
    import fuzz_drivers  # noqa: PLC0415

    ignore_known = os.environ.get("FUZZ_IGNORE_KNOWN") == "1"

    def check(data: bytes) -> None:
        text = data[1:].decode("utf-8", "replace")
        if data[:1] and data[0] < 0x80:
            fuzz_drivers.check_config_value(data[0], text)
        else:
            fuzz_drivers.check_config(text)

    def test_one_input(data: bytes) -> None:
        try:
            check(data)
        except OSError as exc:
            if not (ignore_known and exc.errno in _KNOWN_ERRNOS):
                raise
        except tomllib.TOMLDecodeError:
            if not ignore_known:
                raise

    return test_one_input


if __name__ == "__main__":
    common.main(common.instrumented(load))
