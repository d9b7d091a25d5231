"""The peers' configurations (Postfix, Dovecot), and the process-group sweep.

The configuration tests need neither program; where one is installed, its own parser
(``postconf``, ``doveconf``) checks the generated file too. The instance tests run a real
Postfix and Dovecot, so they need root and the packages, and are skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import bench_procs as procs
import mailbox_bench as mb
import pytest
from dovecot_peer import DovecotServer, dovecot_conf, passwd_line
from postfix_peer import PostfixServer, main_cf, master_cf, queue_count, run_with_tty


def parse_main_cf(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def test_postfix_main_cf_is_loopback_only_and_under_its_root(tmp_path):
    conf = parse_main_cf(main_cf(tmp_path))
    assert conf["inet_interfaces"] == "127.0.0.1"
    assert conf["inet_protocols"] == "ipv4"
    assert conf["mynetworks"] == "127.0.0.0/8"
    assert conf["relayhost"] == ""
    assert conf["default_transport"].startswith("error:")
    assert conf["relay_transport"].startswith("error:")
    assert conf["smtp_dns_support_level"] == "disabled"
    assert conf["smtpd_peername_lookup"] == "no"
    assert conf["mydestination"] == "example.test"
    for key in ("queue_directory", "data_directory", "maillog_file"):
        assert Path(conf[key]).parent == tmp_path, key
    assert conf["alias_maps"] == f"texthash:{tmp_path / 'etc' / 'aliases'}"
    # The Maildir's size must not be capped below a message's, or local(8) refuses to run.
    assert conf["mailbox_size_limit"] == "0"


def master_services(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line and not line.startswith("#")]


def test_postfix_master_cf_listens_once_on_loopback_and_has_no_client():
    services = master_services(master_cf(2525))
    inet = [s for s in services if s[1] == "inet"]
    assert inet == [["127.0.0.1:2525", "inet", "n", "-", "n", "-", "-", "smtpd"]]
    assert all(len(s) == 8 for s in services)
    assert all(s[4] == "n" for s in services), "no service is chrooted"
    commands = {s[7] for s in services}
    # No SMTP/LMTP client and no pipe: mail cannot leave the instance by any transport.
    assert not commands & {"smtp", "lmtp", "pipe", "virtual"}
    assert {"smtpd", "cleanup", "qmgr", "local", "postlogd"} <= commands


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_postfix_master_cf_rejects_bad_ports(port):
    with pytest.raises(ValueError, match="not a port"):
        master_cf(port)


@pytest.mark.skipif(shutil.which("postconf") is None, reason="Postfix is not installed")
def test_postconf_reads_the_generated_files(tmp_path):
    (tmp_path / "main.cf").write_text(main_cf(tmp_path))
    (tmp_path / "master.cf").write_text(master_cf(2525))
    done = subprocess.run(
        ["postconf", "-c", str(tmp_path), "-h", "inet_interfaces", "default_transport"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.splitlines() == [
        "127.0.0.1",
        "error:outbound delivery disabled (benchmark)",
    ]
    services = subprocess.run(
        ["postconf", "-c", str(tmp_path), "-M"], capture_output=True, text=True, check=True
    )
    assert services.stdout.startswith("127.0.0.1:2525 inet")


def test_queue_count_counts_queues_not_logs(tmp_path):
    for queue in ("incoming", "active", "deferred/A", "defer/A", "bounce"):
        (tmp_path / queue).mkdir(parents=True)
    (tmp_path / "incoming" / "1").touch()
    (tmp_path / "deferred" / "A" / "2").touch()
    (tmp_path / "defer" / "A" / "2").touch()  # a delivery log, not a message
    (tmp_path / "bounce" / "3").touch()
    assert queue_count(tmp_path) == 2


def test_run_with_tty_collects_stdout_and_stderr():
    status, output = run_with_tty(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (status, output) == (3, "out\nerr\n")


def test_run_with_tty_gives_up_at_its_deadline():
    status, output = run_with_tty(["sleep", "30"], timeout=0.2)
    assert status == -signal.SIGKILL
    assert output.endswith("(timed out)")


def test_dovecot_conf_is_loopback_only_and_under_its_root(tmp_path):
    conf = dovecot_conf(tmp_path, 10143, 10110)
    lines = [line.strip() for line in conf.splitlines()]
    assert "listen = 127.0.0.1" in lines
    assert "ssl = no" in lines
    assert f"base_dir = {tmp_path}/run" in lines
    assert f"state_dir = {tmp_path}/state" in lines
    assert lines.count("address = 127.0.0.1") == 2
    assert "port = 10143" in lines
    assert "port = 10110" in lines
    assert lines.count("port = 0") == 2  # no imaps, no pop3s
    assert conf.count("{") == conf.count("}")


def test_dovecot_conf_rejects_bad_ports(tmp_path):
    with pytest.raises(ValueError, match="two ports"):
        dovecot_conf(tmp_path, 10143, 10143)
    with pytest.raises(ValueError, match="not a port"):
        dovecot_conf(tmp_path, 0, 10110)


@pytest.mark.skipif(shutil.which("doveconf") is None, reason="Dovecot is not installed")
def test_doveconf_reads_the_generated_file(tmp_path):
    (tmp_path / "dovecot.conf").write_text(dovecot_conf(tmp_path, 10143, 10110))
    (tmp_path / "users").write_text(passwd_line("u@example.test", "pw", 65534, 65534, tmp_path))
    done = subprocess.run(
        ["doveconf", "-c", str(tmp_path / "dovecot.conf"), "-h", "listen"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "127.0.0.1"


def test_passwd_line():
    line = passwd_line("bench@example.test", "s3cret", 65534, 65533, Path("/h/x"))
    assert line == "bench@example.test:{PLAIN}s3cret:65534:65533::/h/x::\n"
    with pytest.raises(ValueError, match="cannot hold"):
        passwd_line("a:b", "pw", 1, 1, Path("/h"))
    with pytest.raises(ValueError, match="cannot hold"):
        passwd_line("a", "pw\n", 1, 1, Path("/h"))


# A root that leaves a child behind when SIGTERM kills it, as a master whose workers
# finish on their own time would; the child ignores SIGTERM.
_STUBBORN_CHILD = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(120)\n"
)
_ROOT = (
    "import subprocess, sys, time\n"
    f"child = subprocess.Popen([sys.executable, '-c', {_STUBBORN_CHILD!r}],"
    " stdout=subprocess.PIPE, text=True)\n"
    "child.stdout.readline()\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(120)\n"
)


def test_stop_process_group_leaves_no_process_behind():
    root = subprocess.Popen(
        [sys.executable, "-c", _ROOT], stdout=subprocess.PIPE, start_new_session=True
    )
    assert root.stdout is not None
    child = int(root.stdout.readline())
    assert sorted(procs.group_members(root.pid)) == sorted([root.pid, child])
    procs.stop_process_group(root, timeout=10)
    root.stdout.close()
    assert root.returncode == -signal.SIGTERM
    assert procs.group_members(root.pid, live=True) == []
    assert _state(child) in ("Z", "gone")


def test_stop_process_group_sweeps_after_a_crashed_root():
    root = subprocess.Popen(
        [sys.executable, "-c", _ROOT], stdout=subprocess.PIPE, start_new_session=True
    )
    assert root.stdout is not None
    child = int(root.stdout.readline())
    os.kill(root.pid, signal.SIGKILL)
    root.wait()  # reaped: the child alone holds the group now
    procs.stop_process_group(root)
    root.stdout.close()
    assert procs.group_members(root.pid, live=True) == []
    assert _state(child) in ("Z", "gone")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


# --- real instances -----------------------------------------------------------------------


@pytest.fixture
def open_dir() -> Iterator[Path]:
    # pytest's tmp_path is 0700 all the way up: the peers' unprivileged processes could
    # not reach their mail in it, as they cannot in the benches' own folders without o+x.
    top = Path(tempfile.mkdtemp(prefix="bench-peer-test-"))
    top.chmod(0o711)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.skipif(PostfixServer.unavailable() is not None, reason="Postfix cannot run here")
def test_postfix_instance_delivers_into_its_maildir_and_goes_away(open_dir):
    server = PostfixServer(open_dir / "postfix")
    server.start()
    try:
        assert server.alive()
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            refused = client.sendmail(
                "a@example.org", [procs.RECIPIENT], b"Subject: hi\r\n\r\nhello\r\n"
            )
        assert refused == {}
        count, _ = procs.wait_for_count(server.maildir / "new", 1, 30)
        assert count == 1
        assert server.settle(30) is None
        assert procs.verify_maildir(server.maildir / "new", 1, len(b"hello\n")) == []
        # master and its resident children (qmgr, pickup...): the tree the CPU is read from
        assert len(procs.group_members(server.pid, live=True)) > 1
        pid = server.pid
    finally:
        server.stop()
    assert procs.group_members(pid, live=True) == []
    assert "delivered to maildir" in server.maillog.read_text()


@pytest.mark.skipif(DovecotServer.unavailable() is not None, reason="Dovecot cannot run here")
def test_dovecot_instance_serves_the_generated_mailbox_and_goes_away(open_dir):
    server = DovecotServer(open_dir / "dovecot")
    server.prepare()
    exp = mb.generate_mailbox(server.inbox, 25)
    server.own()
    server.start()
    try:
        imap = {p.name: p for p in mb.imap_rep(server, exp)}
        pop3 = {p.name: p for p in mb.pop3_rep(server, exp)}
        pid = server.pid
    finally:
        server.stop()
    assert imap["fetch_bodies"].nbytes == exp.crlf_bytes
    assert imap["search SUBJECT invoice"].count == exp.hits["invoice"]
    assert pop3["retr_all"].nbytes == exp.crlf_bytes
    assert procs.group_members(pid, live=True) == []
