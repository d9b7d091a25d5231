"""The rates of ``sansmail-trio serve`` with ``processes = 2``: the limit is the configured
one whatever process the kernel hands each connection to, neither a share of it nor twice
it. (The kernel picks the process; tests/sansmail/storage/test_anvil_table.py shows the
table counting every event of two processes at once, whatever the spread.)"""

from __future__ import annotations

import pathlib
import re
import shutil
import smtplib
import subprocess

from trio_helpers import FAST_HASHER, wait_until_started

from sansmail.mail.address import parse_address
from sansmail.storage.anvil import FILE_NAME
from sansmail.storage.users import UserStore

MESSAGE = b"Subject: rates\r\n\r\nbody\r\n"
CONFIG = """\
hostname = "mx.example.test"
domains = ["example.test"]
data_dir = "data"
processes = 2
mynetworks = ["192.0.2.0/24"]
[listen]
smtp = "127.0.0.1:0"
[dns]
nameservers = ["127.0.0.1:9"]
[antispam]
spf = "off"
dkim = "off"
dmarc = "off"
[limits]
client_message_rate = 4
"""


def test_the_client_rate_holds_across_processes(tmp_path: pathlib.Path) -> None:
    (tmp_path / "sansmail.toml").write_text(CONFIG)
    UserStore(tmp_path / "data" / "users.json", hasher=FAST_HASHER).add(
        parse_address("alice@example.test"), "pw"
    )
    script = shutil.which("sansmail-trio")
    assert script is not None
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([script, "serve"], cwd=tmp_path, stderr=out)
    try:
        port = wait_until_started(proc, log, processes=2)["smtp"]
        # Eight connections open at once, so that both processes are likely to take
        # some, then one message on each.
        clients = [smtplib.SMTP("127.0.0.1", port, timeout=10) for _ in range(8)]
        answers = []
        for client in clients:
            client.ehlo("client.example.org")
            code, text = client.mail("someone@example.org")
            answers.append(f"{code} {text.decode()}")
            if code == 250:
                client.rcpt("alice@example.test")
                client.data(MESSAGE)
        for client in clients:
            client.quit()
    finally:
        proc.terminate()
        proc.wait(20)
    refusal = "450 4.7.1 Error: too much mail from 127.0.0.1"
    assert answers == ["250 2.1.0 Ok"] * 4 + [refusal] * 4
    assert len(list((tmp_path / "data/mail/example.test/alice/new").iterdir())) == 4
    assert (tmp_path / "data" / FILE_NAME).exists()
    text = log.read_text()
    assert text.count("mail refused by anvil") == 4
    # Which processes took the connections (for whoever reads a failure).
    pids = set(re.findall(r"smtp\[(\d+)\]<\w+>: connect from", text))
    assert pids, text
