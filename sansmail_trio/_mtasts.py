"""MTA-STS policies for the queue runner: the TXT lookup, the HTTPS fetch, the cache.

Theory of operation
-------------------
`MtaSts.policy(domain)` is asked once per delivery walk of a domain whose mail goes to
its MX hosts (`sansmail.mail.delivery.LookupPolicy`). It asks the ``_mta-sts`` TXT
record through the runner's resolver (its answers cached for their TTL), and lets
`sansmail.mail.mtasts.plan` decide from the cache: use what is cached (most deliveries:
no HTTPS request), use nothing, or fetch. The rules are there; this file does the I/O.

The fetch (RFC 8461 §3.3): ``GET /.well-known/mta-sts.txt`` from
``mta-sts.<domain>`` over HTTPS, its addresses asked of the same resolver, the
certificate checked against the system's trust anchors (or ``[delivery] tls_ca_file``)
and the name ``mta-sts.<domain>``. HTTP is h11 over Trio's `SSLStream`; the exchange
is one request with ``Connection: close``. Only a ``200`` with ``text/plain`` counts; a
redirect is not followed (§3.3: "MUST NOT follow redirects"); a body over 64 KiB is
refused (§3.3). The TCP connect and the exchange each have `TIMEOUT` seconds. A fetch
that failed is not tried again for the same TXT id within `RETRY_FAILED`, so a domain
with a broken policy host does not add a timeout to every delivery attempt.

The cache is one JSON file per domain under ``<data_dir>/mta-sts/``, written to a
temporary name, fsync'd and renamed over the old one, so a restart keeps every policy
(an ``enforce`` policy forgotten at a restart would be a window for a downgrade), and
a copy in memory. Concurrent deliveries to one domain wait for one lookup.

Log lines go to the queue's log (``sansmail.queue``): each policy fetched, and each
fetch that failed, with the reason.
"""

from __future__ import annotations

import logging
import pathlib
import re
import ssl
import time
from collections.abc import Callable

import h11
import trio

from sansmail.config import Config
from sansmail.mail import mtasts
from sansmail.mail.dnsquery import DnsAnswer, DnsQuery
from sansmail.mail.logtext import printable
from sansmail.storage.durable import write_file_atomically
from sansmail_trio._dns import DNSError, Resolver
from sansmail_trio._smtp_client import _oserror, client_tls_context

__all__ = ["RETRY_FAILED", "TIMEOUT", "FetchError", "MtaSts", "fetch_policy"]

#: Seconds for the TCP connect, and again for the TLS handshake, request and response.
TIMEOUT = 10.0
#: A fetch that failed is not repeated for the same TXT id within this many seconds.
RETRY_FAILED = 300.0
#: Domains whose policy is kept in memory at most (the files stay).
MEMORY_SIZE = 10_000
_PATH = "/.well-known/mta-sts.txt"
# A file name for a domain: A-labels, as `Address.domain` holds them.
_FILE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")

_log = logging.getLogger("sansmail.queue")


class FetchError(Exception):
    """The policy could not be fetched; ``str()`` says why, on one line."""


async def fetch_policy(
    domain: str,
    *,
    resolver: Resolver,
    context: ssl.SSLContext,
    port: int = 443,
    timeout: float = TIMEOUT,
) -> mtasts.Policy | mtasts.Invalid:
    """`domain`'s policy from ``https://mta-sts.<domain>/.well-known/mta-sts.txt``, or
    `Invalid` when what is served is not one. Raises `FetchError`."""
    host = mtasts.policy_host(domain)
    try:
        addresses = await resolver.addresses(host)
    except DNSError as exc:
        raise FetchError(str(exc)) from None
    stream: trio.abc.Stream | None = None
    why = "no address"
    for ip in addresses:
        try:
            with trio.fail_after(timeout):
                stream = await trio.open_tcp_stream(ip, port)
            break
        except (OSError, trio.TooSlowError) as exc:
            why = f"connect to {ip}:{port} failed: {_oserror(exc)}"
    if stream is None:
        raise FetchError(why)
    tls = trio.SSLStream(stream, context, server_hostname=host, https_compatible=True)
    try:
        with trio.fail_after(timeout):
            return await _exchange(tls, host)
    except trio.TooSlowError:
        raise FetchError(f"no answer within {timeout:g}s") from None
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
            raise FetchError(f"certificate not verified ({cause.verify_message})") from None
        raise FetchError(f"connection failed ({cause or exc})") from None
    except (h11.ProtocolError, OSError) as exc:
        raise FetchError(f"bad HTTP answer ({exc})") from None
    finally:
        await trio.aclose_forcefully(tls)


async def _exchange(
    stream: trio.SSLStream[trio.abc.Stream], host: str
) -> mtasts.Policy | mtasts.Invalid:
    connection = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=_PATH,
        headers=[
            ("Host", host),
            ("User-Agent", "sansmail"),
            ("Accept", "text/plain"),
            ("Connection", "close"),
        ],
    )
    await stream.send_all(connection.send(request) + (connection.send(h11.EndOfMessage()) or b""))
    body = bytearray()
    answered = False
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = bytes(await stream.receive_some(65536))
            if not data and not answered:
                raise FetchError("connection closed without an answer")
            connection.receive_data(data)
        elif isinstance(event, h11.Response):
            answered = True
            if 300 <= event.status_code < 400:
                # §3.3: "HTTP 3xx redirects MUST NOT be followed".
                raise FetchError(f"HTTP {event.status_code}: redirect not followed")
            if event.status_code != 200:
                raise FetchError(f"HTTP {event.status_code}")
            kind = dict(event.headers).get(b"content-type", b"").split(b";")[0].strip()
            if kind.lower() != b"text/plain":
                raise FetchError(f"content type {kind.decode('latin-1')!r}, not text/plain")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > mtasts.POLICY_SIZE_LIMIT:
                raise FetchError(f"policy larger than {mtasts.POLICY_SIZE_LIMIT} octets")
        elif isinstance(event, h11.EndOfMessage):
            return mtasts.parse_policy(bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            raise FetchError("connection closed before the end of the answer")


class MtaSts:
    """The MTA-STS policies of the domains mail goes to (see the module docstring)."""

    def __init__(
        self,
        directory: pathlib.Path,
        *,
        resolver: Resolver,
        context: ssl.SSLContext,
        port: int = 443,
        timeout: float = TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.resolver = resolver
        self.context = context
        self.port = port
        self.timeout = timeout
        self.clock = clock
        #: HTTPS requests made (policy fetches attempted), for tests and curiosity.
        self.fetches = 0
        self._memory: dict[str, mtasts.Cached | None] = {}
        self._failed: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, trio.Lock] = {}

    @classmethod
    def from_config(cls, config: Config, resolver: Resolver) -> MtaSts:
        """The policies of the server `config` describes: its cache under ``data_dir``,
        the policy hosts' certificates checked against ``[delivery] tls_ca_file``."""
        delivery = config.delivery
        return cls(
            config.data_dir / "mta-sts",
            resolver=resolver,
            context=client_tls_context(verify=True, cafile=delivery.tls_ca_file),
            port=delivery.mta_sts_port,
        )

    async def policy(self, domain: str) -> mtasts.Policy | None:
        """The policy mail to `domain` is delivered under now; None: no MTA-STS."""
        domain = domain.rstrip(".").lower()
        query = DnsQuery(f"_mta-sts.{domain}", "TXT")
        # Most walks: the TXT answer within its TTL and the policy (or its absence) in
        # memory, so no task, lock or resolver call (py-spy: the resolver's path was
        # three quarters of a cached lookup's time).
        answer = self.resolver.cached(query)
        if answer is not None and domain in self._memory:
            step = mtasts.plan(self._memory[domain], _record(answer), now=self.clock())
            if isinstance(step, mtasts.Use):
                return step.policy
        lock = self._locks.setdefault(domain, trio.Lock())
        try:
            async with lock:
                return await self._policy(domain, query)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(domain, None)

    async def _policy(self, domain: str, query: DnsQuery) -> mtasts.Policy | None:
        record = _record(await self.resolver.answer(query))
        cached = await self._cached(domain)
        step = mtasts.plan(cached, record, now=self.clock())
        if isinstance(step, mtasts.Use):
            return step.policy
        fetched = await self._fetch(domain, step)
        kept, policy = mtasts.after_fetch(cached, step, fetched, now=self.clock())
        if kept is not cached:
            await self._store(domain, kept)
        return policy

    async def _fetch(
        self, domain: str, step: mtasts.Fetch
    ) -> mtasts.Policy | mtasts.Invalid | None:
        failed = self._failed.get(domain)
        if failed is not None and failed[0] == step.id and self.clock() < failed[1]:
            return None
        self.fetches += 1
        url = mtasts.policy_url(domain)
        try:
            fetched = await fetch_policy(
                domain,
                resolver=self.resolver,
                context=self.context,
                port=self.port,
                timeout=self.timeout,
            )
        except FetchError as exc:
            why = str(exc)
        else:
            if isinstance(fetched, mtasts.Policy):
                self._failed.pop(domain, None)
                _log.info(
                    "MTA-STS policy of %s: id=%s, mode=%s, max_age=%d, mx=%s",
                    domain,
                    step.id,
                    fetched.mode,
                    fetched.max_age,
                    ",".join(fetched.mx) or "none",
                )
                return fetched
            why = f"invalid policy: {fetched.why}"
        if len(self._failed) >= MEMORY_SIZE:
            self._failed.clear()  # bounded: at worst a broken host is asked again sooner
        self._failed[domain] = (step.id, self.clock() + RETRY_FAILED)
        # The reason may quote the policy host (a header, an HTTP error): escaped.
        _log.warning("MTA-STS policy of %s: cannot fetch %s: %s", domain, url, printable(why))
        return None

    async def _cached(self, domain: str) -> mtasts.Cached | None:
        if domain in self._memory:
            return self._memory[domain]
        path = self._path(domain)
        found = None
        if path is not None:
            found = await trio.to_thread.run_sync(_read, path)
        self._remember(domain, found)
        return found

    def _remember(self, domain: str, cached: mtasts.Cached | None) -> None:
        if len(self._memory) >= MEMORY_SIZE:
            self._memory.clear()  # crude but bounded: the files are still there
        self._memory[domain] = cached

    async def _store(self, domain: str, cached: mtasts.Cached | None) -> None:
        self._remember(domain, cached)
        path = self._path(domain)
        if path is None:
            return
        text = None if cached is None else mtasts.cache_to_json(domain, cached)
        try:
            await trio.to_thread.run_sync(_write, path, text)
        except OSError as exc:
            _log.warning("MTA-STS policy of %s: cannot write %s: %s", domain, path, exc)

    def _path(self, domain: str) -> pathlib.Path | None:
        if not _FILE_NAME.fullmatch(domain) or ".." in domain:
            return None
        return self.directory / f"{domain}.json"


def _record(answer: DnsAnswer) -> mtasts.Record | None:
    # A failed lookup is no record: the cached policy, if good, still applies (§5.1).
    return None if answer.failed else mtasts.parse_record(answer.records)


def _read(path: pathlib.Path) -> mtasts.Cached | None:
    try:
        return mtasts.cache_from_json(path.read_bytes())
    except OSError:
        return None


def _write(path: pathlib.Path, text: str | None) -> None:
    """Replace `path` with `text` atomically and durably (None: remove it)."""
    if text is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(path, (text + "\n").encode("utf-8"))
