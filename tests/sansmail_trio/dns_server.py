"""An authoritative DNS server on 127.0.0.1 for tests, so the real resolver path runs.

It answers from zone data held in a plain dict that tests change while it runs, over UDP
and TCP on one ephemeral port, from background threads: Trio tests in this process and
sansmail servers started as subprocesses can both point ``[dns] nameservers`` at
`DNSServer.host_port`.

Only stdlib and dnspython, so the bench scripts can import it too (put this folder on
``sys.path``). Use it as a context manager, or through the `dns_server` pytest fixture::

    with DNSServer() as dns:
        dns.add("peer.test", "MX", "10 mx1.peer.test.")
        dns.add("mx1.peer.test", "A", "127.0.0.2")
        dns.fail("broken.test", "servfail")

How it answers (RFC 1034 §4.3.2, simplified to what mail delivery asks):

- A name outside every zone: REFUSED, as an authoritative server that is not authoritative
  for the name. The zones are given at construction (default: the ``test`` TLD reserved by
  RFC 2606, and the two reverse trees for PTR).
- A name in a zone that has no records and no names below it: NXDOMAIN; one that exists
  without records of the asked type: NOERROR with an empty answer (dnspython's NoAnswer).
  Both carry the zone's SOA in the authority section (RFC 2308 §3), its TTL and minimum
  being the server's default TTL, so negative caching follows the same knob.
- A CNAME at the name answers any other type, and the chain is followed while it stays in
  our zones, as an authoritative server holding the target's zone does.
- An answer too big for the client's UDP size (512 octets, or its EDNS payload) goes out
  empty with TC set (RFC 1035 §4.2.1), and the client retries over TCP.
- Every question is logged in `queries`, whether answered, failed or dropped.
- `hold` keeps the answers about a name until every one of some types has been asked:
  a client that asks them one after another, each after the last answer, waits in vain.

TTLs default to 0 so a test that changes the data sees the change at once even through a
caching resolver; pass ``ttl=`` to `add` to test the cache itself.
"""

from __future__ import annotations

import errno
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

__all__ = ["DNSServer", "Failure", "Query", "dns_server_fixture"]

Failure = Literal["servfail", "nxdomain", "refused", "drop"]

_RCODES = {
    "servfail": dns.rcode.SERVFAIL,
    "nxdomain": dns.rcode.NXDOMAIN,
    "refused": dns.rcode.REFUSED,
}
_UDP_MINIMUM = 512  # RFC 1035 §2.3.4: the size every client accepts without EDNS
_POLL = 0.02  # how often the server threads look whether they should stop


@dataclass(frozen=True)
class Query:
    """One question the server received: the name lower case without the final dot,
    the type's mnemonic ("MX"), and "udp" or "tcp"."""

    name: str
    rdtype: str
    transport: str


def _key(name: str | dns.name.Name) -> str:
    text = name.to_text() if isinstance(name, dns.name.Name) else name
    return text.rstrip(".").lower()


def _absolute(key: str) -> dns.name.Name:
    return dns.name.from_text(key + "." if key else ".")


class DNSServer:
    """The server; see the module docstring. Every method is safe to call from any thread
    while it runs."""

    def __init__(
        self, zones: Iterable[str] = ("test", "in-addr.arpa", "ip6.arpa"), *, ttl: int = 0
    ) -> None:
        self.ttl = ttl
        self._zones = {_key(zone) for zone in zones}
        # name -> type -> (ttl, rdatas); one TTL per RRset (RFC 2181 §5.2).
        self._records: dict[str, dict[str, tuple[int, list[dns.rdata.Rdata]]]] = {}
        self._failures: dict[tuple[str, str | None], Failure] = {}
        # name -> (types still to be asked, answers waiting with how to send each)
        self._held: dict[str, tuple[set[str], list[tuple[Callable[[bytes], None], bytes]]]] = {}
        self._queries: list[Query] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._udp: socketserver.UDPServer | None = None
        self._tcp: socketserver.ThreadingTCPServer | None = None
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []  # raised in the server threads

    # --- zone data ----------------------------------------------------------------------

    def add_zone(self, zone: str) -> None:
        """Become authoritative for `zone` too."""
        with self._lock:
            self._zones.add(_key(zone))

    def add(self, name: str, rdtype: str, text: str, *, ttl: int | None = None) -> None:
        """Add one record, in zone-file syntax (``"10 mx1.peer.test."``); names in `text`
        are absolute with or without the final dot. `ttl` (default: the server's) becomes
        the TTL of the whole RRset."""
        rdata = dns.rdata.from_text(
            dns.rdataclass.IN, rdtype, text, origin=dns.name.root, relativize=False
        )
        kind = dns.rdatatype.to_text(rdata.rdtype)
        key = _key(name)
        with self._lock:
            if self._zone_of(key) is None:
                raise ValueError(f"{name!r} is in none of the zones {sorted(self._zones)}")
            types = self._records.setdefault(key, {})
            _, rdatas = types.get(kind, (0, []))
            types[kind] = (self.ttl if ttl is None else ttl, [*rdatas, rdata])

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Forget the records of `rdtype` at `name` (every type when None)."""
        key = _key(name)
        with self._lock:
            types = self._records.get(key, {})
            if rdtype is None:
                types.clear()
            else:
                types.pop(rdtype.upper(), None)
            if not types:
                self._records.pop(key, None)

    def fail(self, name: str, how: Failure, *, rdtype: str | None = None) -> None:
        """Answer questions about `name` (of `rdtype` only, if given) with SERVFAIL,
        NXDOMAIN or REFUSED, or not at all ("drop": the client times out)."""
        if how not in {*_RCODES, "drop"}:
            raise ValueError(f"unknown failure {how!r}")
        with self._lock:
            self._failures[_key(name), None if rdtype is None else rdtype.upper()] = how

    def hold(self, name: str, rdtypes: Iterable[str]) -> None:
        """Answer no question about `name` until one of each of `rdtypes` has come, then
        all of them at once (retries too), and from then on as usual. A resolver that
        asks the types in parallel gets its answers; one that asks them one at a time
        times out on the first, however fast or slow the machine."""
        with self._lock:
            self._held[_key(name)] = ({t.upper() for t in rdtypes}, [])

    def heal(self, name: str) -> None:
        """Undo every `fail` for `name`."""
        key = _key(name)
        with self._lock:
            for failure in [f for f in self._failures if f[0] == key]:
                del self._failures[failure]

    @property
    def queries(self) -> list[Query]:
        """The questions received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._queries)

    def clear_queries(self) -> None:
        with self._lock:
            self._queries.clear()

    # --- answering (under the lock) -----------------------------------------------------

    def _zone_of(self, key: str) -> str | None:
        labels = key.split(".")
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            if candidate in self._zones:
                return candidate
        return None

    def _exists(self, key: str) -> bool:
        # A name with nothing of its own but names below it ("empty non-terminal") exists:
        # NOERROR/no data, not NXDOMAIN (RFC 8020 §2).
        return key in self._records or any(k.endswith("." + key) for k in self._records)

    def _soa(self, zone: str) -> dns.rrset.RRset:
        origin = zone + "." if zone else ""
        text = f"ns.{origin} hostmaster.{origin} 1 3600 600 86400 {self.ttl}"
        return dns.rrset.from_text(_absolute(zone), self.ttl, "IN", "SOA", text)

    def _answer(self, request: dns.message.Message, transport: str) -> dns.message.Message | None:
        if not request.question:
            return None
        question = request.question[0]
        key = _key(question.name)
        kind = dns.rdatatype.to_text(question.rdtype)
        self._queries.append(Query(key, kind, transport))
        response = dns.message.make_response(request)
        response.flags |= dns.flags.AA
        failure = self._failures.get((key, kind)) or self._failures.get((key, None))
        if failure == "drop":
            return None
        if failure is not None:
            response.set_rcode(_RCODES[failure])
            return response
        zone = self._zone_of(key)
        if zone is None:
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.REFUSED)
            return response

        seen: set[str] = set()
        while True:
            seen.add(key)
            types = self._records.get(key, {})
            if kind in types:
                response.answer.append(self._rrset(key, kind, types[kind]))
                break
            if "CNAME" in types and kind != "CNAME":
                cname = self._rrset(key, "CNAME", types["CNAME"])
                response.answer.append(cname)
                target = _key(cname[0].target)
                target_zone = self._zone_of(target)
                if target_zone is None or target in seen:
                    break  # not ours to answer, or a loop: the client sorts it out
                key, zone = target, target_zone
                continue
            if not self._exists(key):
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa(zone))
            break
        return response

    @staticmethod
    def _rrset(key: str, kind: str, entry: tuple[int, list[dns.rdata.Rdata]]) -> dns.rrset.RRset:
        ttl, rdatas = entry
        return dns.rrset.from_rdata_list(_absolute(key), ttl, rdatas)

    def respond(self, wire: bytes, transport: str, send: Callable[[bytes], None]) -> None:
        """Answer one query message with `send`, now, later (`hold`) or never. Public for
        the handlers."""
        try:
            request = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return  # not DNS: a real server would say FORMERR, nobody here cares
        with self._lock:
            response = self._answer(request, transport)
        if response is None:
            return
        reply = self._render(request, response, transport)
        question = request.question[0]
        key = _key(question.name)
        with self._lock:
            held = self._held.get(key)
            if held is None:
                ready = [(send, reply)]
            else:
                missing, waiting = held
                missing.discard(dns.rdatatype.to_text(question.rdtype))
                waiting.append((send, reply))
                if missing:
                    return
                del self._held[key]
                ready = waiting
        for deliver, data in ready:
            deliver(data)

    @staticmethod
    def _render(
        request: dns.message.Message, response: dns.message.Message, transport: str
    ) -> bytes:
        if transport == "tcp":
            return response.to_wire(max_size=65535)
        limit = max(_UDP_MINIMUM, request.payload) if request.edns >= 0 else _UDP_MINIMUM
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(request)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire()

    # --- running ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        if self._udp is None:
            raise RuntimeError("the DNS server is not running")
        host, port = self._udp.server_address[:2]
        return str(host), int(port)

    @property
    def host_port(self) -> str:
        """``"127.0.0.1:PORT"``, as ``[dns] nameservers`` takes it."""
        host, port = self.address
        return f"{host}:{port}"

    def start(self) -> None:
        # UDP first on an ephemeral port, then TCP on the same number; another process may
        # hold that TCP port, so try a few times.
        for _ in range(20):
            udp = _UDPServer(("127.0.0.1", 0), _UDPHandler, self)
            try:
                tcp = _TCPServer(("127.0.0.1", udp.server_address[1]), _TCPHandler, self)
            except OSError as exc:
                udp.server_close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            break
        else:
            raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")
        self._udp, self._tcp = udp, tcp
        self._stopping.clear()
        for server in (udp, tcp):
            thread = threading.Thread(
                target=server.serve_forever, args=(_POLL,), name="test-dns", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()
        for server in (self._udp, self._tcp):
            if server is not None:
                server.shutdown()
                server.server_close()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self._udp = self._tcp = None
        if self.errors:
            # A bug in the server (or a record it cannot render) must fail the test, not
            # pass unseen as a client timeout.
            raise RuntimeError("the test DNS server failed") from self.errors[0]

    def stopping(self) -> bool:
        return self._stopping.is_set()

    def __enter__(self) -> DNSServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _ErrorsToServer:
    dns_server: DNSServer

    def handle_error(self, request: object, client_address: object) -> None:
        error = sys.exc_info()[1]
        if error is not None:
            self.dns_server.errors.append(error)


class _UDPServer(_ErrorsToServer, socketserver.UDPServer):
    def __init__(
        self,
        address: tuple[str, int],
        handler: type[socketserver.BaseRequestHandler],
        dns_server: DNSServer,
    ) -> None:
        self.dns_server = dns_server
        super().__init__(address, handler)


class _TCPServer(_ErrorsToServer, socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = True  # stop() returns only once every connection is closed

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[socketserver.BaseRequestHandler],
        dns_server: DNSServer,
    ) -> None:
        self.dns_server = dns_server
        super().__init__(address, handler)


class _UDPHandler(socketserver.BaseRequestHandler):
    server: _UDPServer

    def handle(self) -> None:
        data, sock = self.request
        client = self.client_address
        self.server.dns_server.respond(data, "udp", lambda reply: sock.sendto(reply, client))


class _TCPHandler(socketserver.BaseRequestHandler):
    """RFC 1035 §4.2.2: each message behind a two-octet length; many per connection."""

    server: _TCPServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(_POLL)
        buffer = b""
        while not self.server.dns_server.stopping():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buffer += data
            while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2], "big"):
                size = int.from_bytes(buffer[:2], "big")
                message, buffer = buffer[2 : 2 + size], buffer[2 + size :]
                self.server.dns_server.respond(
                    message,
                    "tcp",
                    lambda reply: sock.sendall(len(reply).to_bytes(2, "big") + reply),
                )


@pytest.fixture(name="dns_server")
def dns_server_fixture() -> Iterator[DNSServer]:
    """A running `DNSServer`, stopped after the test."""
    with DNSServer() as server:
        yield server
