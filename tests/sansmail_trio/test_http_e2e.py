"""The `http` listener end to end, with clients nobody here wrote: curl fetches
Thunderbird's autoconfig and the MTA-STS policy over https (a trustme certificate for
the autoconfig and mta-sts names, checked by curl against the test CA), Python's
http.client posts autodiscover requests (and a billion-laughs one, refused); without
``[tls]`` the listener still answers plain http, as it does beside https on the same
port; a real ``sansmail-trio serve`` subprocess with
``[listen] http`` answers curl. The XML is parsed back with xml.etree and compared with
the configuration."""

from __future__ import annotations

import http.client
import logging
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import trio
import trustme
from trio_helpers import RunningServer, StartServer, logged, started_lines, wait_until_started

from sansmail.mail.dnsrecords import mta_sts_policy
from sansmail_trio._http import MAX_CONNECTIONS_PER_IP as HTTP_MAX_CONNECTIONS_PER_IP

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl not installed")
NAMES = ("mx.example.test", "autoconfig.example.test", "mta-sts.example.test")
NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
REQUEST = b"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request><EMailAddress>alice@example.test</EMailAddress>
  <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request></Autodiscover>"""
BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Autodiscover><Request><EMailAddress>&lol3;</EMailAddress></Request></Autodiscover>"""
# The listeners the documents announce (port 0: the config's numbers, not bound ones).
LISTEN = {
    "http": "127.0.0.1:0",
    "submission": "127.0.0.1:0",
    "imaps": "127.0.0.1:0",
}


@pytest.fixture
def web_tls(
    tls_ca: trustme.CA, tmp_path: pathlib.Path
) -> tuple[tuple[pathlib.Path, pathlib.Path], pathlib.Path]:
    """A certificate for the autoconfig and mta-sts names as [tls] files, and the CA file
    curl trusts."""
    cert = tls_ca.issue_cert(*NAMES)
    cert_path, key_path, ca_path = tmp_path / "web.pem", tmp_path / "web.key", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    tls_ca.cert_pem.write_to_path(str(ca_path))
    return (cert_path, key_path), ca_path


async def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    assert CURL is not None
    argv = [CURL, "--silent", "--show-error", "--max-time", "20", *args]
    return await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)


def resolve(name: str, port: int) -> str:
    return f"{name}:{port}:127.0.0.1"


@needs_curl
async def test_https_autoconfig_and_mta_sts_with_curl(
    start_server: StartServer,
    web_tls: tuple[tuple[pathlib.Path, pathlib.Path], pathlib.Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sansmail.http")
    files, ca = web_tls
    server: RunningServer = await start_server(tls=files, listen=LISTEN)
    port = server.port_of("http")
    # Thunderbird's first try: https://autoconfig.<domain>/mail/config-v1.1.xml.
    url = f"https://autoconfig.example.test:{port}/mail/config-v1.1.xml?emailaddress=alice%40example.test"
    done = await curl(
        "--cacert", str(ca), "--resolve", resolve("autoconfig.example.test", port), url
    )
    assert done.returncode == 0, done.stderr
    root = ET.fromstring(done.stdout)
    provider = root.find("emailProvider")
    assert provider is not None
    assert provider.get("id") == "example.test"
    got = [
        (s.tag, s.get("type"), s.findtext("hostname"), s.findtext("port"), s.findtext("socketType"))
        for s in provider
        if s.tag.endswith("Server")
    ]
    # Port 0 as configured (the document says what [listen] says, not what was bound).
    assert got == [
        ("incomingServer", "imap", "mx.example.test", "0", "SSL"),
        ("outgoingServer", "smtp", "mx.example.test", "0", "STARTTLS"),
    ]
    # The .well-known form at the domain itself, the domain taken from Host.
    url = f"https://mx.example.test:{port}/.well-known/autoconfig/mail/config-v1.1.xml"
    done = await curl("--cacert", str(ca), "--resolve", resolve("mx.example.test", port), url)
    assert done.returncode == 0, done.stderr
    # mx.example.test is not a domain of ours: nothing to tell.
    assert b"404" in done.stdout
    # MTA-STS: https, a certificate valid for mta-sts.<domain> (RFC 8461 §3.3).
    url = f"https://mta-sts.example.test:{port}/.well-known/mta-sts.txt"
    done = await curl(
        "--cacert", str(ca), "--resolve", resolve("mta-sts.example.test", port),
        "--write-out", "%{http_code} %{content_type}", url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    policy = mta_sts_policy("mx.example.test").encode()
    assert done.stdout == policy + b"200 text/plain"
    # A certificate curl does not trust is refused by curl: the test CA is what it checks.
    done = await curl("--resolve", resolve("mta-sts.example.test", port), url)
    assert done.returncode != 0
    # Plain http on the same port: Thunderbird's second try.
    url = f"http://autoconfig.example.test:{port}/mail/config-v1.1.xml?emailaddress=a@example.test"
    done = await curl("--resolve", resolve("autoconfig.example.test", port), url)
    assert done.returncode == 0, done.stderr
    assert ET.fromstring(done.stdout).findtext("emailProvider/domain") == "example.test"
    lines = await logged(
        caplog, "sansmail.http", lambda ls: any("mta-sts.txt 200" in x for x in ls)
    )
    assert any(": GET /mail/config-v1.1.xml 200 " in line for line in lines)


@pytest.mark.parametrize(
    "path", ["/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"]
)
async def test_autodiscover_with_http_client(
    start_server: StartServer,
    web_tls: tuple[tuple[pathlib.Path, pathlib.Path], pathlib.Path],
    path: str,
) -> None:
    files, ca = web_tls
    server: RunningServer = await start_server(tls=files, listen=LISTEN)
    port = server.port_of("http")
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # the name is checked by the curl test; here the POST

    def post(body: bytes) -> tuple[int, str, bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
        conn.request("POST", path, body=body, headers={"Content-Type": "text/xml"})
        response = conn.getresponse()
        answer = (response.status, response.getheader("Content-Type") or "", response.read())
        conn.close()
        return answer

    status, content_type, body = await trio.to_thread.run_sync(post, REQUEST)
    assert (status, content_type) == (200, "application/xml; charset=utf-8")
    root = ET.fromstring(body)
    protocols = [
        (p.findtext(f"{NS}Type"), p.findtext(f"{NS}Port"), p.findtext(f"{NS}LoginName"))
        for p in root.iter(f"{NS}Protocol")
    ]
    assert protocols == [("IMAP", "0", "alice@example.test"), ("SMTP", "0", "alice@example.test")]
    status, _, body = await trio.to_thread.run_sync(post, BILLION_LAUGHS)
    assert status == 400
    assert b"DOCTYPE" in body
    assert b"lollol" not in body
    # Another domain's address: the POX error, 404.
    status, _, body = await trio.to_thread.run_sync(
        post, REQUEST.replace(b"alice@example.test", b"eve@elsewhere.test")
    )
    assert status == 404
    assert b"<ErrorCode>500</ErrorCode>" in body


@needs_curl
async def test_plain_http_without_tls_files(start_server: StartServer) -> None:
    server: RunningServer = await start_server(listen=LISTEN)
    port = server.port_of("http")
    url = f"http://127.0.0.1:{port}/mail/config-v1.1.xml?emailaddress=bob@other.example"
    done = await curl("--write-out", "\n%{http_code}", url)
    assert done.returncode == 0, done.stderr
    body, _, code = done.stdout.rpartition(b"\n")
    assert code == b"200"
    root = ET.fromstring(body)
    assert root.find("emailProvider/domain") is not None
    assert root.findtext("emailProvider/domain") == "other.example"
    # HEAD, an unknown path, a wrong method, through curl.
    done = await curl("--head", "--write-out", "%{http_code}", url)
    assert done.stdout.endswith(b"200")
    done = await curl(
        "--write-out", "%{http_code}", "-o", "/dev/null", f"http://127.0.0.1:{port}/x"
    )
    assert done.stdout == b"404"
    done = await curl("-X", "DELETE", "--write-out", "%{http_code}", "-o", "/dev/null", url)
    assert done.stdout == b"405"


@needs_curl
def test_real_serve_answers_curl(tmp_path: pathlib.Path) -> None:
    script = shutil.which("sansmail-trio")
    assert script is not None
    ca = trustme.CA()
    issued = ca.issue_cert(*NAMES)
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    (tmp_path / "sansmail.toml").write_text(
        f"""\
hostname = "mx.example.test"
domains = ["example.test"]
data_dir = "data"
[tls]
cert = "{cert}"
key = "{key}"
[listen]
submissions = "127.0.0.1:0"
imap = "127.0.0.1:0"
http = "127.0.0.1:0"
[dns]
nameservers = ["127.0.0.1:9"]
"""
    )
    env = dict(os.environ)
    root = str(pathlib.Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    log = tmp_path / "serve.log"
    seen = started_lines(log)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, script, "serve"], cwd=tmp_path, stderr=out, env=env
        )
    try:
        ports = wait_until_started(proc, log, seen=seen)
        port = ports["http"]
        assert CURL is not None
        answers = {}
        for name, path in (
            ("autoconfig.example.test", "/mail/config-v1.1.xml?emailaddress=a@example.test"),
            ("mta-sts.example.test", "/.well-known/mta-sts.txt"),
        ):
            done = subprocess.run(
                [CURL, "--silent", "--show-error", "--max-time", "20", "--cacert", str(ca_file),
                 "--resolve", resolve(name, port), f"https://{name}:{port}{path}"],
                capture_output=True, timeout=30, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            answers[name] = done.stdout
        provider = ET.fromstring(answers["autoconfig.example.test"]).find("emailProvider")
        assert provider is not None
        assert [
            (s.get("type"), s.findtext("socketType")) for s in provider if s.tag.endswith("Server")
        ] == [
            ("imap", "STARTTLS"),
            ("smtp", "SSL"),
        ]
        assert answers["mta-sts.example.test"] == mta_sts_policy("mx.example.test").encode()
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text()
    assert "Traceback" not in text
    assert "GET /.well-known/mta-sts.txt 200" in text


async def test_connections_over_the_per_address_cap_get_503(start_server: StartServer) -> None:
    server: RunningServer = await start_server(listen=LISTEN)
    port = server.port_of("http")
    request = b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.test\r\n\r\n"

    def fill_then_one_more() -> bytes:
        held = []
        try:
            # Each answered and kept alive, so each is counted before the next opens.
            for _ in range(HTTP_MAX_CONNECTIONS_PER_IP):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                held.append(sock)
                sock.sendall(request)
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
                extra.sendall(request)
                answer = b""
                while chunk := extra.recv(65536):
                    answer += chunk
                return answer
        finally:
            for sock in held:
                sock.close()

    answer = await trio.to_thread.run_sync(fill_then_one_more)
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nRetry-After: 60\r\n" in answer
    assert b"\r\nConnection: close\r\n" in answer


async def test_shutdown_closes_idle_keep_alive_connections(start_server: StartServer) -> None:
    server: RunningServer = await start_server(listen=LISTEN)
    port = server.port_of("http")
    request = b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.test\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        sock.sendall(request)
        assert (await trio.to_thread.run_sync(sock.recv, 65536)).startswith(b"HTTP/1.1 200 ")
        # Idle and kept alive: shutdown does not wait for the client (nor for the
        # keep-alive timeout, 30 s, nor the grace period) to end it.
        with trio.fail_after(15):
            await server.stop()
        assert await trio.to_thread.run_sync(sock.recv, 65536) == b""
    finally:
        sock.close()
