"""Run one atheris target on its seed corpus: ``python fuzz/run.py TARGET --seconds 300``.

The seeds in fuzz/corpus/TARGET/ are read, never written: what libFuzzer finds goes to
fuzz/work/TARGET/ (kept between runs, ignored by git) and crashes to fuzz/crashes/ as
TARGET-crash-<sha1>. ``--list`` names the
targets; any other argument after ``--`` goes to libFuzzer as it is (``-- -jobs=2``).
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
TARGETS = sorted(p.stem.removeprefix("fuzz_") for p in HERE.glob("fuzz_*.py"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", choices=TARGETS)
    parser.add_argument("--seconds", type=int, default=300, help="total run time")
    parser.add_argument("--list", action="store_true", help="name the targets and stop")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(extra) - (1 if extra else 0)])
    if args.list or args.target is None:
        print("\n".join(TARGETS))
        return 0
    seeds = HERE / "corpus" / args.target
    work = HERE / "work" / args.target
    crashes = HERE / "crashes"
    work.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(exist_ok=True)
    command = [
        sys.executable,
        str(HERE / f"fuzz_{args.target}.py"),
        str(work),
        str(seeds),
        f"-max_total_time={args.seconds}",
        f"-artifact_prefix={crashes}/{args.target}-",
        "-rss_limit_mb=4096",
        "-timeout=10",
        *extra,
    ]
    return subprocess.call(command)  # noqa: S603 (our own target and flags)


if __name__ == "__main__":
    sys.exit(main())
