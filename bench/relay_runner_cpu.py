"""The queue runner alone: CPU per relayed message, without the SMTP intake beside it.

    python3 bench/relay_runner_cpu.py [--messages 4000] [--size 10k] [--reps 3]

Theory of operation
-------------------
`relay_bench.py` measures relaying end to end, where the intake's processes and the
runner share the machine's cores, so a change to the runner shows only through the
noise of everything else. Here N messages are queued first (directly through
`QueueStore`, as the intake writes them), then a `QueueRunner` in this process relays
them to a Postfix ``smtp-sink`` on 127.0.0.2 (``relayhost``, no TLS, no DNS), and the
process's own CPU (getrusage: every thread, so the worker threads' opens and finishes
too) is read from the runner's start until the queue directory holds no message. The
start includes the runner's recovery pass over the N files, as after a restart.
Each rep uses a fresh queue; the figures are per rep and their median.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import trio
from bench_report import parse_size

from sansmail.config import load_config
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.maildir import MaildirStore
from sansmail.storage.queue import QueueStore
from sansmail.storage.users import UserStore
from sansmail_trio._dns import Resolver
from sansmail_trio._queue import QueueRunner

SINK_HOST = "127.0.0.2"
LINE = b"La De Da De Da 1 La De Da De Da 2 La De Da De Da 3 La De Da De Da 4\r\n"


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _fill(queue: QueueStore, messages: int, size: int) -> None:
    content = b"Subject: relay bench\r\n\r\n" + LINE * max(1, size // len(LINE))
    for _ in range(messages):
        queue_id = queue.new_id()
        writer = queue.begin(queue_id)
        writer.write(content)
        envelope = QueuedMessage(
            queue_id=queue_id,
            sender="bench@bench.test",
            arrival=time.time(),
            size=len(content),
            recipients=(QueuedRecipient(address="sink@far.test"),),
        )
        writer.commit(envelope, sync=False)
    queue.sync()


def one_rep(folder: pathlib.Path, sink_port: int, messages: int, size: int) -> dict[str, float]:
    (folder / "sansmail.toml").write_text(
        'hostname = "relay.bench.test"\ndomains = ["bench.test"]\ndata_dir = "data"\n'
        f'[delivery]\nrelayhost = "[{SINK_HOST}]:{sink_port}"\ntls = "none"\n'
    )
    config = load_config(folder / "sansmail.toml", default_hostname="relay.bench.test")
    queue = QueueStore(config.data_dir / "queue")
    _fill(queue, messages, size)
    log = logging.getLogger("relay-runner-cpu")
    log.propagate = False
    log.addHandler(logging.FileHandler(folder / "queue.log"))  # as the server logs: a file
    log.setLevel(logging.INFO)
    runner = QueueRunner(
        config=config,
        queue=queue,
        store=MaildirStore(config.data_dir, hostname="relay.bench.test"),
        users=UserStore(config.data_dir / "users.json"),
        aliases=AliasSource(None),
        resolver=Resolver(),
        log=log,
    )
    found: dict[str, float] = {}

    async def run() -> None:
        directory = os.fspath(queue.root)
        async with trio.open_nursery() as nursery:
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            await nursery.start(runner.run)
            # A cheap look, rarely: the check's own CPU counts as the runner's.
            while any(entry.name.endswith(".q") for entry in os.scandir(directory)):
                await trio.sleep(0.25)
            after = resource.getrusage(resource.RUSAGE_SELF)
            found["rate"] = messages / (time.perf_counter() - start)
            found["user"] = (after.ru_utime - before.ru_utime) * 1000 / messages
            found["sys"] = (after.ru_stime - before.ru_stime) * 1000 / messages
            nursery.cancel_scope.cancel()

    trio.run(run)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--size", default="10k")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not os.access(sink, os.X_OK):
        print("needs Postfix's smtp-sink", file=sys.stderr)
        return 1
    sink_port = _free_port(SINK_HOST)
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    sink_proc = subprocess.Popen(
        [sink, *user, f"{SINK_HOST}:{sink_port}", "1024"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs = []
    try:
        for rep in range(args.reps):
            with tempfile.TemporaryDirectory(prefix="relay-runner-cpu-") as tmp:
                found = one_rep(pathlib.Path(tmp), sink_port, args.messages, parse_size(args.size))
            runs.append(found)
            print(
                f"rep {rep + 1}: {found['rate']:,.0f} msgs/s, CPU ms/msg user {found['user']:.3f} "
                f"sys {found['sys']:.3f} total {found['user'] + found['sys']:.3f}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        sink_proc.terminate()
        sink_proc.wait(10)
    total = statistics.median(r["user"] + r["sys"] for r in runs)
    rate = statistics.median(r["rate"] for r in runs)
    print(
        f"{args.messages} pre-queued messages of {args.size}, {args.reps} reps: "
        f"median {rate:,.0f} msgs/s, {total:.3f} ms CPU per message"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
