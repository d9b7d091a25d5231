"""The `http` listener's routes: Thunderbird's autoconfig, Outlook's autodiscover (POX)
and the MTA-STS policy, as `_http.HTTPService` handlers around the documents of
`sansmail.mail.autoconfig`.

Which domain a request is about: autoconfig's ``emailaddress`` parameter, else its Host
header (``autoconfig.<domain>`` or the domain itself); autodiscover's ``EMailAddress``;
MTA-STS's Host (``mta-sts.<domain>``). A domain that is not in ``domains`` is 404 (POX:
its error response), so the listener tells nothing about other names.

The listener answers http and https on the same port (`_http`, the client's first
octet tells): MTA-STS policies are fetched only over https with a certificate valid for
``mta-sts.<domain>`` (RFC 8461 §3.3), and Thunderbird tries https before http. The
certificate is the server's (``[tls]``), so it must name ``autoconfig.<domain>``,
``autodiscover.<domain>`` and ``mta-sts.<domain>`` beside the host name; a reverse
proxy that terminates TLS in front of it can forward plain http instead.
"""

from __future__ import annotations

import urllib.parse

from sansmail.config import Config
from sansmail.mail.autoconfig import (
    AutodiscoverError,
    autodiscover_address,
    autodiscover_error_xml,
    autodiscover_xml,
    config_domain,
    mta_sts_text,
    thunderbird_xml,
)
from sansmail_trio._http import Handler, Request, Response

__all__ = ["AUTOCONFIG_PATHS", "AUTODISCOVER_PATHS", "MTA_STS_PATH", "autoconfig_routes"]

AUTOCONFIG_PATHS = ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml")
# Outlook writes the path in either case; the routes match it as sent.
AUTODISCOVER_PATHS = ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml")
MTA_STS_PATH = "/.well-known/mta-sts.txt"

_XML = "application/xml; charset=utf-8"
# A client asks once per account set-up; an hour's caching costs a changed port little.
_CACHE = (("Cache-Control", "max-age=3600"),)
_NOT_OURS = b"404 Not Found: not a domain of this server\n"


def autoconfig_routes(config: Config) -> dict[str, Handler]:
    """The routes of the `http` listener, for `config`."""

    # The document depends on the domain only, and the config lives as long as the
    # process: made once per domain (building and serialising it was a third of a
    # request's CPU, py-spy).
    documents: dict[str, bytes] = {}

    async def thunderbird(request: Request) -> Response:
        query = urllib.parse.parse_qs(request.query)
        address = query.get("emailaddress", [""])[0]
        domain = config_domain(config, address=address, host=request.headers.get("host"))
        if domain is None:
            return Response(404, _NOT_OURS)
        document = documents.get(domain)
        if document is None:
            document = documents[domain] = thunderbird_xml(config, domain)
        return Response(200, document, _XML, _CACHE)

    async def autodiscover(request: Request) -> Response:
        try:
            address = autodiscover_address(request.body)
        except AutodiscoverError as exc:
            return Response(400, f"400 Bad Request: {exc}\n".encode())
        if config_domain(config, address=address, host=None) is None:
            # [MS-OXDISCO]: an address the server does not know is an Error element.
            body = autodiscover_error_xml(500, "The e-mail address cannot be found.")
            return Response(404, body, _XML)
        return Response(200, autodiscover_xml(config, address), _XML)

    async def mta_sts(request: Request) -> Response:
        policy = mta_sts_text(config, request.headers.get("host", ""))
        if policy is None:
            return Response(404, _NOT_OURS)
        # RFC 8461 §3.3: media type text/plain; the policy is ASCII.
        return Response(200, policy.encode("ascii"), "text/plain", _CACHE)

    routes: dict[str, Handler] = {path: thunderbird for path in AUTOCONFIG_PATHS}
    routes.update({f"POST {path}": autodiscover for path in AUTODISCOVER_PATHS})
    routes[MTA_STS_PATH] = mta_sts
    return routes
