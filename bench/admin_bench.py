"""Admin command bench: ``sansmail-trio mailbox status|list`` beside ``doveadm mailbox
status|list`` on the same 10,000-message Maildir, in one run.

    python3 bench/admin_bench.py [--messages N] [--reps R] [--json FILE]

Theory of operation
-------------------
Both commands are what an admin types (a whole process: start-up, reading the index,
answering), so each is timed as a command from fork to exit, wall clock, with the CPU
of the child (``os.wait4``'s rusage). The same generated INBOX (``mailbox_bench.
generate_mailbox``: ~2.9 KiB messages, 30% unseen) is copied into a sansmail data_dir
and into a Dovecot home. The first run of each is cold (no index yet: each builds its
own), then ``--reps`` warm runs whose median is reported, and the ratio sansmail/doveadm
(below 1: sansmail is faster). Each answer is checked against the generator's counts
(MESSAGES and UNSEEN), so a fast wrong answer fails the bench.

doveadm runs with a config of its own (``-c``): a static userdb for the user ``nobody``
with the copy as its Maildir, indexes beside the messages (Dovecot's default). Its
master runs with no protocol (only the auth service doveadm asks for the user), and is
stopped at the end. Root is needed for that; without Dovecot the bench says so and
exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mailbox_bench as mb

DOVEADM_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
instance_name = dovecot-admin-bench
ssl = no
protocols =
mail_location = maildir:~/Maildir
first_valid_uid = {uid}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home}
}}
passdb {{
  driver = static
  args = nopassword=y
}}
"""

USER = "alice@example.test"


class ChildCPU:
    """CPU of the children waited for since the last call (RUSAGE_CHILDREN only grows)."""

    def __init__(self) -> None:
        self._last = self._now()

    @staticmethod
    def _now() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def take(self) -> float:
        now = self._now()
        spent, self._last = now - self._last, now
        return spent


def sansmail_setup(root: Path, count: int) -> tuple[list[str], mb.Expected]:
    root.mkdir(parents=True)
    config = root / "sansmail.toml"
    config.write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n[listen]\n'
    )
    inbox = root / "data" / "mail" / "example.test" / "alice"
    expected = mb.generate_mailbox(inbox, count)
    subprocess.run(
        ["sansmail-trio", "user", "add", USER, "--password-stdin", "--config", str(config)],
        input="secret\n",
        text=True,
        check=True,
        capture_output=True,
    )
    return ["sansmail-trio", "--config", str(config)], expected


def doveadm_setup(root: Path, count: int) -> list[str]:
    nobody = pwd.getpwnam("nobody")
    home = root / "home"
    mb.generate_mailbox(home / "Maildir", count)
    for sub in ("run", "state"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for path in [home, *home.rglob("*")]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    root.chmod(0o755)
    root.parent.chmod(0o755)  # mkdtemp's 0700 would keep the mail user out
    conf = root / "dovecot.conf"
    conf.write_text(DOVEADM_CONF.format(root=root, uid=nobody.pw_uid, gid=nobody.pw_gid, home=home))
    subprocess.run(["dovecot", "-c", str(conf)], check=True)
    return ["doveadm", "-c", str(conf)]


def check_status(kind: str, out: str, expected: mb.Expected) -> None:
    if kind == "sansmail":
        (row,) = json.loads(out)
        messages, unseen = row["messages"], row["unseen"]
    else:
        # "-f flow": one line of key=value pairs per mailbox.
        fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
        if "messages" not in fields or "unseen" not in fields:
            raise SystemExit(f"doveadm answered {out!r}")
        messages, unseen = int(fields["messages"]), int(fields["unseen"])
    if messages != expected.messages or unseen != expected.unseen:
        raise SystemExit(
            f"{kind}: messages={messages} unseen={unseen}, expected "
            f"{expected.messages} and {expected.unseen}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("doveadm") is None or os.geteuid() != 0:
        print("admin_bench: needs Dovecot's doveadm and root (bench/README.md)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="admin-bench-") as tmp:
        sansmail, expected = sansmail_setup(Path(tmp) / "sansmail", args.messages)
        doveadm = doveadm_setup(Path(tmp) / "dovecot", args.messages)
        try:
            results = measure(sansmail, doveadm, expected, args.reps)
        finally:
            subprocess.run([*doveadm, "stop"], check=False, capture_output=True)
    report(results, args.messages, args.reps)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def measure(
    sansmail: list[str], doveadm: list[str], expected: mb.Expected, reps: int
) -> dict[str, dict[str, float]]:
    """Cold and warm (median) wall and CPU seconds of each command, answers checked."""
    commands = {
        ("status", "sansmail"): [*sansmail, "mailbox", "status", USER, "INBOX", "--json"],
        ("status", "doveadm"): [
            *doveadm, "-f", "flow", "mailbox", "status", "-u", USER, "messages unseen",
            "INBOX",
        ],
        ("list", "sansmail"): [*sansmail, "mailbox", "list", USER],
        ("list", "doveadm"): [*doveadm, "mailbox", "list", "-u", USER],
    }  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    cpu = ChildCPU()
    for (what, kind), argv in commands.items():
        walls, cpus = [], []
        for rep in range(reps + 1):
            start = time.perf_counter()
            out = subprocess.run(argv, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - start
            spent = cpu.take()
            if out.returncode != 0:
                raise SystemExit(f"{' '.join(argv)}: {out.stderr.strip()}")
            if what == "status":
                check_status(kind, out.stdout, expected)
            if rep == 0:
                results[f"{what} {kind} cold"] = {"wall": wall, "cpu": spent}
            else:
                walls.append(wall)
                cpus.append(spent)
        results[f"{what} {kind} warm"] = {
            "wall": statistics.median(walls),
            "cpu": statistics.median(cpus),
        }
    return results


def report(results: dict[str, dict[str, float]], messages: int, reps: int) -> None:
    print(f"{messages} messages, warm = median of {reps} runs; seconds per command")
    print(f"{'':22} {'sansmail':>10} {'doveadm':>10} {'ratio':>7}   (CPU: s, s, ratio)")
    for what in ("status", "list"):
        for phase in ("cold", "warm"):
            ours = results[f"{what} sansmail {phase}"]
            theirs = results[f"{what} doveadm {phase}"]
            print(
                f"mailbox {what} {phase:5} {ours['wall']:>13.3f} {theirs['wall']:>10.3f} "
                f"{ours['wall'] / theirs['wall']:>7.2f}   "
                f"({ours['cpu']:.3f}, {theirs['cpu']:.3f}, {ours['cpu'] / theirs['cpu']:.2f})"
            )


if __name__ == "__main__":
    sys.exit(main())
