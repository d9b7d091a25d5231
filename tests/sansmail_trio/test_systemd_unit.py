"""contrib/: the systemd unit passes `systemd-analyze verify`, keeps its sandboxing (the
exposure `systemd-analyze security` scores), and its MemoryDenyWriteExecute holds for a
real server (the kernel's PR_SET_MDWE is the same rule); the example configuration
loads and names the one writable path of the unit."""

from __future__ import annotations

import contextlib
import imaplib
import os
import pathlib
import re
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys

import pytest
from trio_helpers import FAST_HASHER, wait_until_started

from sansmail.config import load_config, not_in_force
from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore

CONTRIB = pathlib.Path(__file__).parents[2] / "contrib"
UNIT = CONTRIB / "sansmail.service"
INSTALLED = "/usr/local/bin/sansmail-trio"
MESSAGE = b"Subject: x\r\n\r\nunder MDWE\r\n"

#: What the unit must keep (issue 14: "a systemd unit with sandboxing").
SANDBOXING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ReadWritePaths=/var/lib/sansmail",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectHome=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    "SystemCallFilter=@system-service",
    "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID CAP_CHOWN CAP_DAC_OVERRIDE",
    "ExecReload=/bin/kill -HUP $MAINPID",
    "Restart=on-failure",
    "KillMode=mixed",
)


def _directives() -> list[str]:
    return [
        line.strip()
        for line in UNIT.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "["))
    ]


def test_the_unit_keeps_its_sandboxing() -> None:
    directives = _directives()
    for directive in SANDBOXING:
        assert directive in directives, directive
    keys = [line.split("=", 1)[0] for line in directives]
    assert len(keys) == len(set(keys)), "a directive set twice: the last one wins silently"


@pytest.fixture
def installed_unit(tmp_path: pathlib.Path) -> pathlib.Path:
    """The unit with ExecStart on the sansmail-trio installed here: verify checks that
    the binaries exist."""
    script = shutil.which("systemd-analyze")
    if script is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    sansmail = shutil.which("sansmail-trio")
    assert sansmail is not None
    text = UNIT.read_text()
    assert text.count(INSTALLED) == 2  # ExecStartPre and ExecStart
    path = tmp_path / "sansmail.service"
    path.write_text(text.replace(INSTALLED, sansmail))
    return path


def test_systemd_analyze_verify(installed_unit: pathlib.Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", str(installed_unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # Unknown or misspelt directives are warnings, not errors: none may name the unit.
    assert "sansmail.service" not in done.stderr, done.stderr


def test_systemd_analyze_security_exposure(installed_unit: pathlib.Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(installed_unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if "--offline" in done.stderr:  # before systemd 250
        pytest.skip(f"systemd-analyze security has no --offline here: {done.stderr.strip()}")
    found = re.search(r"Overall exposure level for sansmail\.service: (\d+\.\d+)", done.stdout)
    assert found, done.stdout + done.stderr
    # 2.5 when written ("OK"); a service left unsandboxed scores 9.6 ("UNSAFE").
    assert float(found.group(1)) <= 3.0, done.stdout


def test_the_example_configuration(tmp_path: pathlib.Path) -> None:
    # The certificate lives on the server, not here: the same names in tmp_path.
    text = (CONTRIB / "sansmail.toml").read_text()
    assert text.count('"/etc/sansmail/tls/') == 2
    (tmp_path / "fullchain.pem").touch()
    (tmp_path / "privkey.pem").touch()
    path = tmp_path / "sansmail.toml"
    path.write_text(text.replace('"/etc/sansmail/tls/', f'"{tmp_path}/'))
    config = load_config(path, default_hostname="unused.example")
    assert config.mail_owner == "sansmail"
    assert f"ReadWritePaths={config.data_dir}" in _directives()
    assert {service for service, _ in config.listen.items()} == {
        "smtp",
        "submission",
        "submissions",
        "pop3",
        "pop3s",
        "imap",
        "imaps",
        "managesieve",
        "metrics",
    }
    assert config.listen["metrics"] == (("127.0.0.1", 2980),)  # never on a public address
    assert not_in_force(config) == []


# --- MemoryDenyWriteExecute -------------------------------------------------------------

#: Sets PR_SET_MDWE (65) to PR_MDWE_REFUSE_EXEC_GAIN (1), then becomes the command in
#: argv; exit status 3 when the kernel has no such switch (before Linux 6.3).
DENY_WRITE_EXECUTE = """\
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(3)
os.execv(sys.argv[1], sys.argv[1:])
"""


WRITE_EXECUTE_PROBE = """\
import mmap, sys
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    sys.exit(0)
sys.exit("a writable and executable mapping was allowed")
"""


def _under_mdwe(*argv: str) -> list[str]:
    return [sys.executable, "-c", DENY_WRITE_EXECUTE, *argv]


@pytest.mark.skipif(
    not hasattr(os, "fork") or not pathlib.Path("/proc/self").exists(), reason="Linux only"
)
def test_a_server_runs_without_writable_executable_memory(tmp_path: pathlib.Path) -> None:
    """systemd's MemoryDenyWriteExecute is a seccomp filter on mmap/mprotect; Linux 6.3's
    PR_SET_MDWE refuses the same, inherited by every child and kept across exec. TLS
    (OpenSSL), argon2 (cffi), SCRAM and the IMAP store run under it here."""
    # The rule holds after exec: memory both writable and executable is refused.
    probe = subprocess.run(
        _under_mdwe(sys.executable, "-c", WRITE_EXECUTE_PROBE), check=False, capture_output=True
    )
    if probe.returncode == 3:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3 or later)")
    assert probe.returncode == 0, probe.stderr
    (tmp_path / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        "processes = 2\n"
        '[listen]\nsubmission = "127.0.0.1:0"\nimaps = "127.0.0.1:0"\n'
        '[dns]\nnameservers = ["127.0.0.1:9"]\n'
        '[smtp]\nauth_mechanisms = ["PLAIN", "SCRAM-SHA-256"]\n'
    )
    UserStore(tmp_path / "data" / "users.json", hasher=FAST_HASHER).add(
        parse_address("alice@example.test"), "mdwe-pw"
    )
    script = shutil.which("sansmail-trio")
    assert script is not None
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(_under_mdwe(script, "serve"), cwd=tmp_path, stderr=out)
    try:
        ports = wait_until_started(proc, log, processes=2)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=10) as client:
            client.starttls(context=context)
            client.login("alice@example.test", "mdwe-pw")
            client.sendmail("alice@example.test", ["alice@example.test"], MESSAGE)
        imap = imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], ssl_context=context, timeout=10)
        try:
            imap.authenticate("PLAIN", lambda _: b"\0alice@example.test\0mdwe-pw")
            assert imap.select("INBOX") == ("OK", [b"1"])
            typ, data = imap.fetch("1", "(BODY[])")
            assert typ == "OK"
            assert b"Subject: x" in data[0][1]  # type: ignore[index]
            imap.logout()
        finally:
            with contextlib.suppress(OSError):
                imap.shutdown()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "method=PLAIN" in text
