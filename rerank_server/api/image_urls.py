"""Fetching an image a request names by URL, when the operator allows it (RERANK_IMAGE_URLS), without letting a
request reach what only the server can reach.

A URL is a request to connect somewhere from inside the operator's network, so: http(s) only; every address the
host resolves to must be public (not private, loopback, link-local, multicast or reserved: cloud metadata at
169.254.169.254 included) unless its network is listed in RERANK_IMAGE_URLS_ALLOW_PRIVATE; the connection goes to the
address that was checked (the name is not resolved a second time, so a DNS answer that changes in between cannot
redirect it), with the host name kept for the Host header and TLS; redirects are followed by hand, each one checked
the same way, at most a few; no proxy from the environment; a size cap while reading and one deadline per URL,
redirects included.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from functools import lru_cache

import httpx

from rerank_server.api.errors import HTTPError, invalid

MAX_REDIRECTS = 3
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def allowed_networks(setting: str) -> tuple[IPNetwork, ...]:
    """RERANK_IMAGE_URLS_ALLOW_PRIVATE's networks (validated when the settings are read)."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in setting.split(",") if part.strip())


# NAT64's well-known prefix: a gateway translates 64:ff9b::a.b.c.d to the IPv4 address a.b.c.d.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _ipv4_inside(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one leads to (mapped, 6to4, NAT64), else the address itself: Python counts
    2002:a9fe:a9fe:: and 64:ff9b::a9fe:a9fe as global, though both reach 169.254.169.254."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def reachable(address: IPAddress, allowed: tuple[IPNetwork, ...]) -> bool:
    """Whether a URL may lead to `address`: a public one, or one in a network the operator allowed."""
    address = _ipv4_inside(address)
    if any(address in network for network in allowed):
        return True
    return address.is_global and not address.is_multicast


async def _addresses(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


class ImageFetcher:
    """Fetches image URLs within the operator's limits; one per request (it holds one HTTP client)."""

    def __init__(self, *, max_bytes: int, timeout_s: float, allow_private: str) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.allowed = allowed_networks(allow_private)
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> ImageFetcher:
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=self.timeout_s)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def fetch(self, url: str, field: str) -> bytes:
        """The bytes at `url`, or a 400 naming `field` and why."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._follow(url, field)
        except TimeoutError:
            raise invalid(f"`{field}`: {url} did not answer within {self.timeout_s:g} s", field) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL is not an HTTPError
            raise invalid(f"`{field}`: {url} could not be fetched ({type(exc).__name__})", field) from None

    async def _follow(self, url: str, field: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            target = await self._checked(url, field)
            assert self._client is not None, "use the fetcher as an async context manager"
            request = self._client.build_request("GET", target[0], headers=target[1], extensions=target[2])
            response = await self._client.send(request, stream=True)
            try:
                if response.is_redirect and "location" in response.headers:
                    url = str(httpx.URL(url).join(response.headers["location"]))  # httpx refused a bad one in send
                    continue
                if response.status_code != 200:
                    raise invalid(f"`{field}`: {url} answered {response.status_code}", field)
                return await self._body(response, url, field)
            finally:
                await response.aclose()
        raise invalid(f"`{field}`: {url} redirected more than {MAX_REDIRECTS} times", field)

    async def _checked(self, url: str, field: str) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
        """The URL to connect to (the checked address in place of the host), its Host header and TLS name."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise invalid(f"`{field}` is not a valid URL ({exc})", field) from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise invalid(f"`{field}`: image URLs must be http:// or https:// ({url[:100]})", field)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            addresses = await _addresses(parsed.host, port)
        except (OSError, UnicodeError, ValueError) as exc:  # IDNA refuses a label over 63 characters: UnicodeError
            raise invalid(f"`{field}`: the host {parsed.host[:100]} cannot be resolved ({exc})", field) from None
        refused = [a for a in addresses if not reachable(a, self.allowed)]
        if refused or not addresses:
            raise invalid(
                f"`{field}`: {parsed.host} is {refused[0] if refused else 'no address'}, a private, loopback or "
                "link-local address; image URLs reach public addresses only (RERANK_IMAGE_URLS_ALLOW_PRIVATE lists "
                "networks to allow)",
                field,
            )
        host = parsed.netloc.decode("ascii")
        extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
        # Bytes as sent: a compressed body's size says nothing of what it would inflate to.
        headers = {"Host": host, "Accept-Encoding": "identity"}
        return parsed.copy_with(host=str(addresses[0])), headers, extensions

    async def _body(self, response: httpx.Response, url: str, field: str) -> bytes:
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            raise invalid(f"`{field}`: {url} sent a compressed body, which image URLs may not", field)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(url, field)
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > self.max_bytes:
                raise self._too_large(url, field)
        return bytes(body)

    def _too_large(self, url: str, field: str) -> HTTPError:
        return invalid(f"`{field}`: {url} is larger than {self.max_bytes:,} bytes (RERANK_MAX_IMAGE_BYTES)", field)
