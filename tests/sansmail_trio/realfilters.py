"""Real third-party milters for the tests: rspamd's proxy worker in milter mode, and
SpamAssassin's spamd behind spamass-milter, each started from a private configuration in
a temporary directory, listening on 127.0.0.1, and stopped at teardown.

Neither reaches the network. rspamd gets a configuration of its own (not the system's):
no module but milter_headers is configured, so none that asks DNS, Redis or a URL runs
(rspamd disables a module it has no section for), its resolver is a closed port on
loopback, and its only listener is the milter. Two Lua rules make its verdicts
predictable: a body with `RSPAMD_REJECT` scores 100 (action reject: 554 5.7.1), one with
`RSPAMD_HEADER` scores 8 (action "add header": X-Spam: Yes, and X-Sansmail-Test: yes from
a milter_headers routine). spamd runs with --local, a site configuration that loads only
plugins that look at the message itself, and the packaged rules, which score GTUBE 1000.

A test that finds a program missing is skipped (CI installs them: .ci/run). A daemon that
does not start fails the test with its log; `Filter.explained()` adds the logs to any
failure inside it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence

import attrs
import pytest

from sansmail.milter import Negotiate, Quit, encode

RSPAMD_REJECT = "SANSMAIL-REJECT-TEST"
RSPAMD_HEADER = "SANSMAIL-HEADER-TEST"
RSPAMD_REJECT_REPLY = "5.7.1 Spam message rejected"
RSPAMD_GTUBE_REPLY = "5.7.1 Gtube pattern"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
SPAMASS_REJECT_REPLY = "5.7.1 Blocked by SpamAssassin"
#: The score at and above which the rejecting spamass-milter refuses (-r).
SPAMASS_REJECT_SCORE = 15

#: Generous: spamd compiles SpamAssassin's rules at start, seconds on a busy CI machine.
STARTUP_TIMEOUT = 120.0
_STOP_TIMEOUT = 15.0
_INSTALL = "CI installs it in .ci/run: apt-get install rspamd spamassassin spamass-milter"


def program(name: str) -> str:
    """The path of `name`, or skip the test: daemons live in sbin, which a user's PATH
    may lack."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        pytest.skip(f"{name} is not installed ({_INSTALL})")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.define
class Daemon:
    """One process we started (in a process group of its own, so that stopping it stops
    the workers it forked) and the files it logs to."""

    name: str
    process: subprocess.Popen[bytes]
    logs: tuple[pathlib.Path, ...]
    #: How long SIGTERM may take before SIGKILL.
    grace: float = _STOP_TIMEOUT

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        directory: pathlib.Path,
        *logs: pathlib.Path,
        grace: float = _STOP_TIMEOUT,
    ) -> Daemon:
        output = directory / f"{name}.out"
        with output.open("ab") as sink:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=directory,
                start_new_session=True,
            )
        return cls(name=name, process=process, logs=(output, *logs), grace=grace)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_text(self, limit: int = 8000) -> str:
        parts = []
        for path in self.logs:
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            if len(text) > limit:
                text = "[...]\n" + text[-limit:]
            parts.append(f"--- {self.name}: {path.name} ---\n{text}")
        return "\n".join(parts) or f"--- {self.name}: no log ---"

    def stop(self) -> None:
        if self.running and self.grace > 0:
            # The leader only: it stops and reaps its workers (signalled together, they
            # could outlive it and be left to init).
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(self.grace)
        # Whatever of the group outlived its leader (a worker) goes too.
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(_STOP_TIMEOUT)

    def _signal(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)


@attrs.define
class Filter:
    """A milter that answers on host:port, and the daemons behind it."""

    name: str
    host: str
    port: int
    daemons: list[Daemon]
    #: Seconds from the first start to the milter's first answer.
    startup: float = 0.0

    @property
    def address(self) -> str:
        """The milter as `[milter] milters` names it."""
        return f"inet:{self.host}:{self.port}"

    def log_text(self) -> str:
        return "\n".join(daemon.log_text() for daemon in self.daemons)

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """Add the daemons' logs to any failure inside (a note pytest prints)."""
        try:
            yield
        except BaseException as exc:
            exc.add_note(self.log_text())
            raise

    def stop(self) -> None:
        for daemon in reversed(self.daemons):
            daemon.stop()


# --- readiness -----------------------------------------------------------------------


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def milter_answers(host: str, port: int) -> bool:
    """Whether a milter on host:port answers an option negotiation (then told QUIT)."""
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(encode(Negotiate()))
            length = int.from_bytes(_recv_exactly(sock, 4), "big")
            packet = _recv_exactly(sock, length)
            sock.sendall(encode(Quit()))
            return packet[:1] == b"O"
    except OSError:
        return False


def spamd_answers(path: pathlib.Path) -> bool:
    """Whether spamd on the Unix socket `path` answers PING (spamc protocol)."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
            answer = b""
            while b"\n" not in answer and (chunk := sock.recv(100)):
                answer += chunk
            return b"PONG" in answer
    except OSError:
        return False


def _wait(daemons: Sequence[Daemon], ready: Callable[[], bool], deadline: float) -> bool:
    """Wait until `ready()`; False when a daemon exits first (its log says why)."""
    while time.monotonic() < deadline:
        if not all(daemon.running for daemon in daemons):
            return False
        if ready():
            return True
        time.sleep(0.05)
    return False


def _start_failed(what: str, daemons: Sequence[Daemon]) -> None:
    logs = "\n".join(daemon.log_text() for daemon in daemons)
    for daemon in daemons:
        daemon.stop()
    pytest.fail(f"{what} did not start within {STARTUP_TIMEOUT:.0f} s\n{logs}")


def _exited(daemon: Daemon) -> bool:
    """Whether `daemon` is gone: most likely its port was taken between free_port() and
    its bind (libmilter says so only to syslog), so another port is tried; a daemon
    that cannot start at all fails each try, and the last one's log is shown."""
    return not daemon.running


# --- rspamd --------------------------------------------------------------------------

_RSPAMD_RULES = f"""\
-- Predictable verdicts for sansmail's tests: a marker in the message decides.
local function has(task, marker)
  return tostring(task:get_content()):find(marker, 1, true) ~= nil
end

rspamd_config.SANSMAIL_REJECT_TEST = {{
  callback = function(task) return has(task, '{RSPAMD_REJECT}') end,
  score = 100.0,
  description = 'sansmail test marker: reject',
}}

rspamd_config.SANSMAIL_HEADER_TEST = {{
  callback = function(task) return has(task, '{RSPAMD_HEADER}') end,
  score = 8.0,
  description = 'sansmail test marker: add header',
}}
"""

# Every path rspamd would write to is in @DIR@ (its defaults are under /var/lib/rspamd).
# The TLD list is four names: compiling the packaged 9,600 suffixes takes 10 s.
_RSPAMD_CONF = """\
options {
  pidfile = "@DIR@/rspamd.pid";
  filters = "";
  explicit_modules = [];
  dns {
    nameserver = ["127.0.0.1:9"];
    timeout = 0.2s;
    retransmits = 0;
  }
  url_tld = "@DIR@/tld.dat";
  cache_file = "@DIR@/symbols.cache";
  hs_cache_dir = "@DIR@";
  dynamic_conf = "@DIR@/rspamd_dynamic";
  history_file = "@DIR@/rspamd.history";
  stats_file = "@DIR@/stats.ucl";
  control_socket = "@DIR@/rspamd.sock mode=0600";
  tempdir = "@DIR@";
  task_timeout = 30s;
}
logging {
  type = "file";
  filename = "@DIR@/rspamd.log";
  level = "info";
}
lua = "@DIR@/rules.lua";
modules {
  path = "@PLUGINS@";
}
actions {
  reject = 15;
  add_header = 6;
}
milter_headers {
  # sansmail's clients come from 127.0.0.1, which rspamd counts as local.
  skip_local = false;
  skip_authenticated = false;
  use = ["x-spamd-result", "x-spam-status", "x-rspamd-queue-id", "sansmail-test"];
  custom {
    sansmail-test = <<EOD
return function(task, common_meta)
  if task:has_symbol('SANSMAIL_HEADER_TEST') then
    return nil, {['X-Sansmail-Test'] = 'yes'}, {['X-Sansmail-Test'] = 0}, {}
  end
  return nil, {}, {}, {}
end
EOD;
  }
}
worker "rspamd_proxy" {
  bind_socket = "127.0.0.1:@PORT@";
  milter = yes;
  timeout = 60s;
  count = 1;
  spam_header = "X-Spam";
  reject_message = "Spam message rejected";
  upstream "local" {
    default = yes;
    self_scan = yes;
  }
}
"""


def start_rspamd(directory: pathlib.Path) -> Filter:
    """rspamd in milter mode on 127.0.0.1 (a free port), configured in `directory`."""
    rspamd = program("rspamd")
    plugins = pathlib.Path(rspamd).resolve().parent.parent / "share" / "rspamd" / "plugins"
    if not plugins.is_dir():
        plugins = pathlib.Path("/usr/share/rspamd/plugins")
    (directory / "rules.lua").write_text(_RSPAMD_RULES)
    (directory / "tld.dat").write_text("com\nnet\norg\ntest\nexample\n")
    began = time.monotonic()
    deadline = began + STARTUP_TIMEOUT
    for _attempt in range(3):
        port = free_port()
        conf = directory / "rspamd.conf"
        conf.write_text(
            _RSPAMD_CONF.replace("@DIR@", str(directory))
            .replace("@PORT@", str(port))
            .replace("@PLUGINS@", str(plugins))
        )
        # -f: stay in the foreground, our child; -i: workers may run as root (CI is
        # root, and the default user could not read this directory).
        argv = [rspamd, "-f", "-i", "-c", str(conf)]
        daemon = Daemon.start("rspamd", argv, directory, directory / "rspamd.log")
        if _wait([daemon], lambda port=port: milter_answers("127.0.0.1", port), deadline):
            return Filter(
                name="rspamd",
                host="127.0.0.1",
                port=port,
                daemons=[daemon],
                startup=time.monotonic() - began,
            )
        if not _exited(daemon):
            break
        daemon.stop()
    _start_failed("rspamd", [daemon])
    raise AssertionError("unreachable")


# --- spamd and spamass-milter --------------------------------------------------------

# Only plugins that look at the message: no DNS, network checksums, Bayes or learning.
_SPAMD_INIT_PRE = """\
loadplugin Mail::SpamAssassin::Plugin::Check
loadplugin Mail::SpamAssassin::Plugin::BodyEval
loadplugin Mail::SpamAssassin::Plugin::HTMLEval
loadplugin Mail::SpamAssassin::Plugin::HeaderEval
loadplugin Mail::SpamAssassin::Plugin::MIMEEval
loadplugin Mail::SpamAssassin::Plugin::MIMEHeader
loadplugin Mail::SpamAssassin::Plugin::RelayEval
loadplugin Mail::SpamAssassin::Plugin::URIEval
loadplugin Mail::SpamAssassin::Plugin::WLBLEval
loadplugin Mail::SpamAssassin::Plugin::ReplaceTags
"""

# report_safe (added per instance) 0: a spam keeps its body and gains X-Spam-* fields;
# 1: spamass-milter replaces the body by SpamAssassin's report with the message attached.
_SPAMD_LOCAL_CF = """\
required_score 5.0
use_bayes 0
bayes_auto_learn 0
skip_rbl_checks 1
dns_available no
"""

#: The rules the Debian package installs, pinned so that a machine's sa-update (in
#: /var/lib/spamassassin) does not change what the tests run against.
_SPAMASSASSIN_RULES = pathlib.Path("/usr/share/spamassassin")


@attrs.define
class Spamd:
    socket: pathlib.Path
    daemon: Daemon
    #: Seconds from start to the first PONG.
    startup: float = 0.0


def start_spamd(directory: pathlib.Path, *, report_safe: int = 0) -> Spamd:
    """spamd on a Unix socket in `directory` (no port to race for). With `report_safe`
    1, a spam's body becomes SpamAssassin's report with the message attached."""
    spamd = program("spamd")
    # The configuration goes on the command line: spamd started by root reads its files
    # as nobody, who may not enter a test's temporary directory. The site directory
    # stays empty; naming it keeps the machine's /etc/spamassassin out.
    site = directory / "site"
    site.mkdir()
    home = directory / "home"
    home.mkdir()
    path = directory / "spamd.sock"
    log = directory / "spamd.log"
    argv = [
        spamd,
        f"--siteconfigpath={site}",
        *(f"--pre={line}" for line in _SPAMD_INIT_PRE.splitlines()),
        *(f"--cf={line}" for line in _SPAMD_LOCAL_CF.splitlines()),
        f"--cf=report_safe {report_safe}",
        "--local",
        "--nouser-config",
        f"--socketpath={path}",
        f"--pidfile={directory / 'spamd.pid'}",
        f"--syslog={log}",
        f"--helper-home-dir={home}",
        "--min-children=1",
        "--max-children=2",
    ]
    if _SPAMASSASSIN_RULES.is_dir():
        argv.append(f"--configpath={_SPAMASSASSIN_RULES}")
    began = time.monotonic()
    daemon = Daemon.start("spamd", argv, directory, log)
    if not _wait([daemon], lambda: spamd_answers(path), began + STARTUP_TIMEOUT):
        _start_failed("spamd", [daemon])
    return Spamd(socket=path, daemon=daemon, startup=time.monotonic() - began)


def start_spamass_milter(
    directory: pathlib.Path, spamd: Spamd, *, reject_score: int | None
) -> Filter:
    """spamass-milter on 127.0.0.1 (a free port) asking `spamd`: refusing messages
    scored `reject_score` or more (-r) with 550 5.7.1, or tagging only when None."""
    milter = program("spamass-milter")
    program("spamc")  # spamass-milter runs it for each message
    began = time.monotonic()
    deadline = began + STARTUP_TIMEOUT
    name = "spamass-milter" if reject_score is None else f"spamass-milter-r{reject_score}"
    for _attempt in range(3):
        port = free_port()
        argv = [milter, "-p", f"inet:{port}@127.0.0.1", "-P", str(directory / f"{name}.pid")]
        if reject_score is not None:
            argv += ["-r", str(reject_score)]
        argv += ["--", "-U", str(spamd.socket)]  # spamc's arguments
        # No grace: after SIGTERM libmilter sits out a 5 s select() timeout, and the
        # milter keeps nothing that needs a clean exit.
        daemon = Daemon.start(name, argv, directory, grace=0)
        if _wait([daemon], lambda port=port: milter_answers("127.0.0.1", port), deadline):
            return Filter(
                name=name,
                host="127.0.0.1",
                port=port,
                daemons=[spamd.daemon, daemon],
                startup=time.monotonic() - began,
            )
        if not _exited(daemon):
            break
        daemon.stop()
    _start_failed(name, [daemon, spamd.daemon])
    raise AssertionError("unreachable")


# --- fixtures --------------------------------------------------------------------------
# Session-scoped: one instance per pytest process (each xdist worker that runs a test
# needing it starts its own). conftest.py imports the *_fixture functions, so that every
# module shares them (fixtures imported into two modules would be two fixtures); tests
# ask for them by name.


@pytest.fixture(scope="session", name="rspamd_milter")
def rspamd_milter_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filter]:
    running = start_rspamd(tmp_path_factory.mktemp("rspamd"))
    yield running
    running.stop()


@pytest.fixture(scope="session", name="spamd")
def spamd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spamd]:
    running = start_spamd(tmp_path_factory.mktemp("spamd"))
    yield running
    running.daemon.stop()


@pytest.fixture(scope="session", name="spamass_milter_reject")
def spamass_milter_reject_fixture(
    tmp_path_factory: pytest.TempPathFactory, spamd: Spamd
) -> Iterator[Filter]:
    running = start_spamass_milter(
        tmp_path_factory.mktemp("spamass"), spamd, reject_score=SPAMASS_REJECT_SCORE
    )
    yield running
    running.daemons[-1].stop()  # spamd is the spamd fixture's to stop


@pytest.fixture(scope="session", name="spamass_milter_tag")
def spamass_milter_tag_fixture(
    tmp_path_factory: pytest.TempPathFactory, spamd: Spamd
) -> Iterator[Filter]:
    running = start_spamass_milter(tmp_path_factory.mktemp("spamass"), spamd, reject_score=None)
    yield running
    running.daemons[-1].stop()


@pytest.fixture(scope="session", name="spamass_milter_report")
def spamass_milter_report_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filter]:
    """spamass-milter, tagging only, before a spamd of its own with report_safe 1: a spam's
    body is replaced (SMFIR_REPLBODY) and its Content-Type changed."""
    directory = tmp_path_factory.mktemp("spamass-report")
    own = start_spamd(directory, report_safe=1)
    try:
        running = start_spamass_milter(directory, own, reject_score=None)
    except BaseException:
        own.daemon.stop()
        raise
    yield running
    running.stop()
