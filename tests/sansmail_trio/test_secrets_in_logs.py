"""No secret in any log line, at any level: full sessions of every protocol with known
passwords (SMTP AUTH with each mechanism, with and without an initial response, right
and wrong; submission with AUTH and a relayhost AUTH made by the queue runner from its
password file; IMAP LOGIN (quoted, atom, literals) and AUTHENTICATE (with and without
SASL-IR); POP3 USER/PASS and AUTH; malformed responses that carry the password; the
CLI's `user add --password-stdin`), then every log record of both servers, captured at
DEBUG, their stderr and the CLI's output are searched for each password, its base64
forms, every SASL response the clients sent, the SCRAM proofs and CRAM-MD5 digests,
and the stored hashes and keys of users.json."""

from __future__ import annotations

import base64
import json
import logging
import pathlib
import secrets
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable

import pytest
import trio
import trustme
from delivery_helpers import PEER, free_port, start_sansmail, tls_pair, wait_for
from trio_helpers import FAST_HASHER

from sansmail import sasl
from sansmail.mail.address import parse_address
from sansmail.mail.logtext import command_for_log
from sansmail.storage.users import UserStore
from sansmail_trio._smtp_client import client_tls_context
from sansmail_trio._tls import ensure_self_signed, server_context

MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256")
USER = "alice@example.test"
RELAY_USER = "bob@peer.test"


def _password(what: str) -> str:
    # Distinct per use and unlike any word a log line holds, so a hit is a leak.
    return f"Pw-{what}-{secrets.token_hex(8)}"


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class Secrets:
    """What must never be logged, gathered while the sessions run."""

    def __init__(self) -> None:
        self.found: set[str] = set()

    def password(self, user: str, password: str) -> None:
        self.found |= {
            password,
            _b64(password),
            _b64(f"\0{user}\0{password}"),  # PLAIN's blob, as clients send it
            _b64(f"{user}\0{user}\0{password}"),
        }

    def response(self, user: str, sent: bytes) -> None:
        """One SASL response a client sent (raw), before base64."""
        if not sent or sent == user.encode():
            return  # an empty SCRAM final turn; LOGIN's user name
        self.found.add(_b64(sent))
        text = sent.decode("utf-8", "replace")
        if text.startswith("c="):  # SCRAM client-final: the proof is the secret
            self.found.add(text)
            self.found.add(text.rpartition("p=")[2])
        elif text.startswith(f"{user} "):  # CRAM-MD5: the digest
            self.found.add(text.split(" ", 1)[1])
        elif not text.startswith("n,"):  # SCRAM client-first: the user and a nonce
            self.found.add(text)


class Lines:
    """A blocking line-oriented client (run in a thread)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = b""

    def line(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\r\n")

    def smtp(self, text: str | None = None) -> tuple[int, str]:
        if text is not None:
            self.send(text)
        while True:
            line = self.line()
            if line[3:4] != "-":
                return int(line[:3]), line[4:]

    def close(self) -> None:
        self.sock.close()


def _mechanism(name: str, user: str, password: str) -> sasl.ClientMechanism:
    return sasl.client_mechanism(name, user, password, nonce=secrets.token_urlsafe(18))


def _exchange(
    mech: sasl.ClientMechanism,
    found: Secrets,
    user: str,
    initial: bool,
    start: Callable[[str | None], tuple[str, str]],
    answer: Callable[[str], tuple[str, str]],
) -> str:
    """Drive one SASL exchange over a protocol: `start(initial_b64)` sends the command
    and `answer(b64)` a response; each returns ("more", challenge_b64) or ("done",
    verdict)."""
    first = mech.initial_response() if initial and mech.client_first else None
    if first is not None:
        found.response(user, first)
    state, data = start(None if first is None else (_b64(first) or "="))
    while state == "more":
        try:
            sent = mech.respond(base64.b64decode(data))
        except sasl.RemoteSASLError:  # a wrong password: the server signs nothing
            sent = b""
        found.response(user, sent)
        state, data = answer(_b64(sent))
    return data


def smtp_auth(port: int, mechanism: str, password: str, found: Secrets, initial: bool) -> int:
    client = Lines(port)
    try:
        client.smtp()
        client.smtp("EHLO client.example")

        def reply(code: int, text: str) -> tuple[str, str]:
            return ("more", text) if code == 334 else ("done", str(code))

        verdict = _exchange(
            _mechanism(mechanism, USER, password),
            found,
            USER,
            initial,
            lambda first: reply(*client.smtp(f"AUTH {mechanism}" + (f" {first}" if first else ""))),
            lambda b64: reply(*client.smtp(b64)),
        )
        client.smtp("QUIT")
        return int(verdict)
    finally:
        client.close()


def pop3_auth(port: int, mechanism: str, password: str, found: Secrets, initial: bool) -> bool:
    client = Lines(port)

    def reply() -> tuple[str, str]:
        line = client.line()
        if line.startswith("+ ") or line == "+":
            return "more", line[2:]
        return "done", line

    try:
        client.line()

        def start(first: str | None) -> tuple[str, str]:
            client.send(f"AUTH {mechanism}" + (f" {first}" if first else ""))
            return reply()

        def answer(b64: str) -> tuple[str, str]:
            client.send(b64)
            return reply()

        verdict = _exchange(
            _mechanism(mechanism, USER, password), found, USER, initial, start, answer
        )
        client.send("QUIT")
        client.line()
        return verdict.startswith("+OK")
    finally:
        client.close()


def imap_auth(port: int, mechanism: str, password: str, found: Secrets, initial: bool) -> bool:
    client = Lines(port)

    def reply() -> tuple[str, str]:
        while True:
            line = client.line()
            if line.startswith("+"):
                return "more", line[2:]
            if line.startswith("a "):
                return "done", line

    try:
        client.line()

        def start(first: str | None) -> tuple[str, str]:
            client.send(f"a AUTHENTICATE {mechanism}" + (f" {first}" if first else ""))
            return reply()

        def answer(b64: str) -> tuple[str, str]:
            client.send(b64)
            return reply()

        verdict = _exchange(
            _mechanism(mechanism, USER, password), found, USER, initial, start, answer
        )
        client.send("z LOGOUT")
        return verdict.startswith("a OK")
    finally:
        client.close()


def imap_logins(port: int, password: str, wrong: str) -> list[str]:
    """LOGIN as an atom, quoted, and in synchronizing and non-synchronizing literals,
    right and wrong; and malformed commands that carry the password."""
    verdicts = []
    for secret in (password, wrong):
        for form in ("atom", "quoted", "literal", "literal+", "extra"):
            client = Lines(port)
            try:
                client.line()
                if form == "atom":
                    client.send(f"a LOGIN {USER} {secret}")
                elif form == "quoted":
                    client.send(f'a LOGIN "{USER}" "{secret}"')
                elif form == "extra":  # a syntax error: BAD, with the password in the line
                    client.send(f'a LOGIN "{USER}" "{secret}" trailing')
                elif form == "literal":
                    client.send(f"a LOGIN {USER} {{{len(secret)}}}")
                    assert client.line().startswith("+")
                    client.send(secret)
                else:
                    client.send(f"a LOGIN {{{len(USER)}+}}\r\n{USER} {{{len(secret)}+}}")
                    client.send(secret)
                while not (line := client.line()).startswith("a "):
                    pass
                verdicts.append(f"{form}: {line}")
                client.send("z LOGOUT")
            finally:
                client.close()
    return verdicts


def pop3_user_pass(port: int, password: str, wrong: str) -> list[str]:
    verdicts = []
    for secret in (password, wrong):
        client = Lines(port)
        try:
            client.line()
            client.send(f"PASS {secret}")  # out of order: before USER
            verdicts.append(client.line())
            client.send(f"USER {USER}")
            client.line()
            client.send(f"PASS {secret}")
            verdicts.append(client.line())
            client.send("QUIT")
            client.line()
        finally:
            client.close()
    return verdicts


def malformed_responses(ports: dict[str, int], password: str) -> None:
    """The password where base64 belongs, and a PLAIN blob with garbage after it."""
    blob = _b64(f"\0{USER}\0{password}")
    smtp = Lines(ports["submission"])
    try:
        smtp.smtp()
        smtp.smtp("EHLO client.example")
        assert smtp.smtp("AUTH PLAIN")[0] == 334
        assert smtp.smtp(password)[0] == 501
        assert smtp.smtp(f"AUTH PLAIN {blob} junk")[0] >= 500
        assert smtp.smtp(f"AUTH PLAIN {blob}!")[0] >= 500
    finally:
        smtp.close()
    pop3 = Lines(ports["pop3"])
    try:
        pop3.line()
        pop3.send("AUTH PLAIN")
        assert pop3.line().startswith("+")
        pop3.send(password)
        assert pop3.line().startswith("-ERR")
    finally:
        pop3.close()
    imap = Lines(ports["imap"])
    try:
        imap.line()
        imap.send("a AUTHENTICATE PLAIN")
        assert imap.line().startswith("+")
        imap.send(password)
        assert imap.line().startswith(("a NO", "a BAD"))
    finally:
        imap.close()


def submit_through_relayhost(port: int, password: str) -> None:
    client = Lines(port)
    try:
        client.smtp()
        client.smtp("EHLO client.example")
        assert client.smtp(f"AUTH PLAIN {_b64(f'{chr(0)}{USER}{chr(0)}{password}')}")[0] == 235
        assert client.smtp(f"MAIL FROM:<{USER}>")[0] == 250
        assert client.smtp("RCPT TO:<carol@implicit.test>")[0] == 250
        assert client.smtp("DATA")[0] == 354
        client.send(f"From: {USER}\r\nSubject: relayed\r\n\r\nbody\r\n.")
        assert client.smtp()[0] == 250
        client.smtp("QUIT")
    finally:
        client.close()


def _stored(path: pathlib.Path) -> set[str]:
    """The hashes and keys users.json keeps: long strings that are not addresses."""
    found: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and len(value) >= 16 and "@" not in value:
            found.add(value)

    walk(json.loads(path.read_text()))
    return found


async def test_no_secret_in_any_log_line(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    tls_ca: trustme.CA,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sansmail")
    found = Secrets()
    password, relay_password = _password("alice"), _password("relay")
    found.password(USER, password)
    found.password(RELAY_USER, relay_password)
    mechanisms = "[" + ", ".join(f'"{m}"' for m in MECHANISMS) + "]"

    # The relayhost: a second sansmail on PEER, with AUTH on its submission port.
    peer_dir = tmp_path / "peer"
    peer_cert, peer_key = tls_pair(tls_ca, peer_dir, "mx.peer.test")
    submission = free_port(PEER)
    peer = await start_sansmail(
        nursery,
        peer_dir,
        f"""\
hostname = "mx.peer.test"
domains = ["peer.test", "implicit.test"]
data_dir = "data"
[tls]
cert = "{peer_cert}"
key = "{peer_key}"
[listen]
submission = "{PEER}:{submission}"
[dns]
nameservers = ["127.0.0.1:9"]
[antispam]
spf = "off"
dkim = "off"
dmarc = "off"
[smtp]
reject_sender_login_mismatch = false
auth_mechanisms = {mechanisms}
""",
    )
    peer_users = UserStore(peer.data_dir / "users.json", cram_md5=True, hasher=FAST_HASHER)
    peer_users.add(parse_address(RELAY_USER), relay_password)
    peer_users.add(parse_address("carol@implicit.test"), _password("carol"))

    ours_dir = tmp_path / "ours"
    cert, key = tls_pair(tls_ca, ours_dir, "mx.example.test")
    relay_file = ours_dir / "relay.password"
    relay_file.write_text(relay_password + "\n")
    listen = "\n".join(
        f'{service} = "127.0.0.1:0"' for service in ("smtp", "submission", "pop3", "imap")
    )
    toml = f"""\
hostname = "mx.example.test"
domains = ["example.test"]
data_dir = "data"
mynetworks = ["127.0.0.0/8"]
[tls]
cert = "{cert}"
key = "{key}"
[listen]
{listen}
[dns]
nameservers = ["127.0.0.1:9"]
[smtp]
auth_mechanisms = {mechanisms}
[delivery]
relayhost = "[{PEER}]:{submission}"
relayhost_username = "{RELAY_USER}"
relayhost_password_file = "{relay_file}"
minimal_backoff = "1s"
maximal_backoff = "1s"
"""
    (ours_dir / "data").mkdir(parents=True, exist_ok=True)
    UserStore(ours_dir / "data" / "users.json", cram_md5=True, hasher=FAST_HASHER).add(
        parse_address(USER), password
    )
    ours = await start_sansmail(nursery, ours_dir, toml)
    ports = {service: ours.port(service) for service in ("smtp", "submission", "pop3", "imap")}

    def sessions() -> list[object]:
        results: list[object] = []
        for mechanism in MECHANISMS:
            for initial in (True, False):
                results.extend(
                    smtp_auth(ports[service], mechanism, password, found, initial)
                    for service in ("smtp", "submission")
                )
                wrong = _password(f"wrong-smtp-{mechanism}-{initial}")
                found.password(USER, wrong)
                results.append(smtp_auth(ports["submission"], mechanism, wrong, found, initial))
                results.append(imap_auth(ports["imap"], mechanism, password, found, initial))
                wrong = _password(f"wrong-imap-{mechanism}-{initial}")
                found.password(USER, wrong)
                results.append(imap_auth(ports["imap"], mechanism, wrong, found, initial))
                results.append(pop3_auth(ports["pop3"], mechanism, password, found, initial))
                wrong = _password(f"wrong-pop3-{mechanism}-{initial}")
                found.password(USER, wrong)
                results.append(pop3_auth(ports["pop3"], mechanism, wrong, found, initial))
        wrong = _password("wrong-login")
        found.password(USER, wrong)
        results += imap_logins(ports["imap"], password, wrong)
        wrong = _password("wrong-pass")
        found.password(USER, wrong)
        results += pop3_user_pass(ports["pop3"], password, wrong)
        malformed_responses(ports, password)
        submit_through_relayhost(ports["submission"], password)
        return results

    results = await trio.to_thread.run_sync(sessions)
    # Each right password was accepted and each wrong one refused, so the sessions went
    # as far as a real client's do.
    per_mechanism = results[: len(MECHANISMS) * 2 * 7]
    for index in range(0, len(per_mechanism), 7):
        chunk = per_mechanism[index : index + 7]
        assert chunk == [235, 235, 535, True, False, True, False], (index, chunk)
    logins = [str(r) for r in results[len(per_mechanism) :]]
    assert sum(" OK " in line for line in logins) == 4, logins  # 4 forms with the password
    await wait_for(lambda: peer.messages("carol@implicit.test"), what="the relayhost delivery")

    # The CLI, whose output is logged by whoever scripts it.
    script = shutil.which("sansmail-trio")
    assert script is not None
    cli_password = _password("cli")
    found.password("dave@example.test", cli_password)
    cli = [
        subprocess.run(
            [script, "--config", str(ours_dir / "sansmail.toml"), *argv],
            input=cli_password + "\n",
            capture_output=True,
            text=True,
            check=False,
        )
        for argv in (
            ("user", "add", "dave@example.test", "--password-stdin"),
            ("user", "passwd", "dave@example.test", "--password-stdin"),
            ("user", "add", "dave@example.test", "--password-stdin"),  # exists: an error
        )
    ]
    assert [done.returncode for done in cli] == [0, 0, 1], [done.stderr for done in cli]

    await ours.stop()
    await peer.stop()
    found.found |= _stored(ours.data_dir / "users.json") | _stored(peer.data_dir / "users.json")
    captured = capfd.readouterr()
    records = []
    for record in caplog.records:
        records.append(record.getMessage())
        records.append(repr(record.args))
        if record.exc_info:
            records.append(logging.Formatter().formatException(record.exc_info))
    text = "\n".join(
        [*records, captured.out, captured.err] + [done.stdout + done.stderr for done in cli]
    )
    # The capture works: the failures and the relayed delivery are in it.
    assert "auth failed: service=submission, method=PLAIN" in text
    assert "auth failed: service=imap" in text
    assert "auth failed: service=pop3" in text
    assert "relay=" in text
    assert "status=sent" in text
    assert len(found.found) > 100
    leaks = sorted(secret for secret in found.found if secret in text)
    assert not leaks, leaks


@pytest.mark.parametrize(
    ("line", "logged"),
    [
        (b"AUTH PLAIN AGFsaWNlAHB3 junk", "AUTH PLAIN <hidden>"),
        (b"auth login cHc=", "auth login <hidden>"),
        (b"AUTH PLAIN=", "AUTH <hidden>"),
        (b"PASS hunter2", "PASS <hidden>"),
        (b"PASS\thunter2", "PASS <hidden>"),
        (b"APOP alice 0123456789abcdef", "APOP <hidden>"),
        (b'a1 LOGIN alice "hunter2" extra', "a1 LOGIN <hidden>"),
        (b"a1 AUTHENTICATE PLAIN AGFsaWNlAHB3", "a1 AUTHENTICATE PLAIN <hidden>"),
        # Nothing secret: as sent (made printable, cut at 100 characters).
        (b"AUTH", "AUTH"),
        (b"PASS", "PASS"),
        (b"USER alice", "USER alice"),
        (b"MAIL FROM:<a@example.org> \x01", "MAIL FROM:<a@example.org> \\x01"),
        (b"PASSWORD x", "PASSWORD x"),
        (b"X" * 150, "X" * 100),
    ],
)
def test_command_lines_are_logged_without_their_secrets(line: bytes, logged: str) -> None:
    assert command_for_log(line) == logged


def test_server_tls_keys_are_never_written_out(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SSLKEYLOGFILE makes ssl.create_default_context write every session's secrets to a
    # file (for Wireshark); the server's context must not honour it.
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "keys.log"))
    cert, key = ensure_self_signed(tmp_path, "mx.example.test")
    assert server_context(cert, key).keylog_filename is None
    assert not (tmp_path / "keys.log").exists()


def test_outbound_tls_keys_are_never_written_out(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same for the queue runner's STARTTLS to next hops, at every level.
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "keys.log"))
    for verify in (False, True):
        context = client_tls_context(verify=verify, cafile=None)
        assert context.keylog_filename is None
        assert context.verify_mode == (ssl.CERT_REQUIRED if verify else ssl.CERT_NONE)
        assert context.check_hostname is verify
    assert not (tmp_path / "keys.log").exists()
