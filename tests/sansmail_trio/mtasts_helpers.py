"""An MTA-STS policy host for tests: Python's http.server over TLS (a trustme certificate)
on 127.0.0.1, in a thread, serving whatever the test sets, counting the requests."""

from __future__ import annotations

import http.server
import pathlib
import ssl
import threading
from typing import Any

import trustme

__all__ = ["PolicyServer", "policy_text"]


def policy_text(mode: str, *mx: str, max_age: int = 86400) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return "".join(f"{line}\r\n" for line in lines)


class PolicyServer:
    """HTTPS on 127.0.0.1 with a certificate for `name`; `body`, `status`,
    `content_type` and `location` say what every GET gets; `requests` lists the
    paths asked, with the Host header."""

    def __init__(self, ca: trustme.CA, folder: pathlib.Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        cert = ca.issue_cert(name)
        chain, key = folder / "https-cert.pem", folder / "https-key.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
        cert.private_key_pem.write_to_path(str(key))
        self.body = b""
        self.status = 200
        self.content_type = "text/plain; charset=utf-8"
        self.location = ""
        self.requests: list[tuple[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append((self.path, self.headers.get("Host", "")))
                self.send_response(owner.status)
                self.send_header("Content-Type", owner.content_type)
                self.send_header("Content-Length", str(len(owner.body)))
                if owner.location:
                    self.send_header("Location", owner.location)
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(chain))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        port: int = self.httpd.server_address[1]
        return port

    def serve(self, text: str | bytes) -> None:
        self.body = text.encode() if isinstance(text, str) else text

    def __enter__(self) -> PolicyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()
