"""Safe download of the images an event references.

Every URL a post mentions is attacker-chosen, so a fetch is allowed to do very little:
http(s) only, to a configured forum host only, on the address that was checked (no DNS
rebinding), never to a private/loopback/link-local address unless the configuration
names that address or host as private on purpose, redirects re-checked hop by hop and
never to another host, and hard caps on bytes and time. The body's first bytes must look
like an accepted image format before the rest is downloaded.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp
from yarl import URL

from bot.hashing import ACCEPTED_FORMATS, sniff_format

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Enough bytes for sniff_format to name what it sees (SVG/HTML look up to 1 KiB in).
_SNIFF_BYTES = 1024
_CHUNK = 64 * 1024


class MediaRefused(Exception):
    """A fetch Vigil would not (or could not) make; ``reason`` says why, for a person."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class MediaPolicy:
    """Where media may come from and what a download may cost.

    ``allowed_hosts`` holds exact host names, lowercase: ``forum.example`` allows the
    scheme's default port only, ``forum.example:8443`` that port only. A host that
    resolves to a private, loopback, link-local or otherwise non-public address is
    refused unless it is an IP literal in ``allowed_hosts`` (the admin wrote the address
    itself) or also listed in ``private_hosts`` (a forum on the LAN, on purpose).
    """

    allowed_hosts: frozenset[str] = frozenset()
    max_bytes: int = 20 * 1024 * 1024
    connect_timeout: float = 5.0
    read_timeout: float = 10.0  # per read: a stalled server is cut after this long
    total_timeout: float = 30.0  # whole fetch incl. DNS and redirects: a trickle is cut too
    max_redirects: int = 3
    private_hosts: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class FetchedMedia:
    """A downloaded body: ``final_url`` is where it came from after redirects."""

    url: str
    final_url: str
    data: bytes
    content_type: str | None


def absolute_url(base_url: str, ref: str) -> str:
    """Resolve a (possibly site-relative, e.g. ``/uploads/...``) reference against a page URL."""
    return urljoin(base_url, ref.strip())


def _human_bytes(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


def host_key(url: URL) -> str:
    """The allowed_hosts spelling of a URL's host: ``host`` or ``host:port``."""
    host = (url.raw_host or "").lower().rstrip(".")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if url.port is None or url.port == _DEFAULT_PORTS.get(url.scheme):
        return host
    return f"{host}:{url.port}"


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def _check_url(url: URL, policy: MediaPolicy) -> str:
    """Scheme, credentials and host checks; returns the host key."""
    if url.scheme not in _DEFAULT_PORTS:
        raise MediaRefused(f"scheme {url.scheme or '(none)'} is not allowed")
    if url.user is not None or url.password is not None:
        raise MediaRefused("URLs with credentials are not fetched")
    if not url.raw_host:
        raise MediaRefused("URL has no host")
    key = host_key(url)
    if key not in policy.allowed_hosts:
        raise MediaRefused(f"host {key} is not an allowed media host")
    return key


async def _pinned_address(url: URL, key: str, policy: MediaPolicy) -> str:
    """Resolve the host once, check every address, and return the one to connect to."""
    host = (url.raw_host or "").rstrip(".")
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, url.port, type=socket.SOCK_STREAM)
        except OSError:
            raise MediaRefused(f"host {key} does not resolve") from None
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
        if not addresses:
            raise MediaRefused(f"host {key} does not resolve")
    # The admin named this address itself, or declared this host private on purpose.
    private_ok = literal is not None or key in policy.private_hosts
    if not private_ok and not all(_is_public(a) for a in addresses):
        # Any non-public answer refuses: a name that mixes both is exactly the trick.
        raise MediaRefused(f"host {key} resolves to a private or reserved address")
    return str(addresses[0])


def _pinned_url(url: URL, address: str) -> URL:
    """The same URL with the host replaced by the checked address."""
    return url.with_host(address)


async def fetch_media(
    session: aiohttp.ClientSession, url: str, policy: MediaPolicy
) -> FetchedMedia:
    """Download one image under ``policy``; raise MediaRefused (with a reason) otherwise."""
    try:
        async with asyncio.timeout(policy.total_timeout):
            return await _fetch(session, url, policy)
    except TimeoutError:
        raise MediaRefused(f"download took longer than {policy.total_timeout:g} s") from None


async def _fetch(session: aiohttp.ClientSession, url: str, policy: MediaPolicy) -> FetchedMedia:
    try:
        current = URL(url)
    except (ValueError, TypeError):
        raise MediaRefused("malformed URL") from None
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=policy.connect_timeout, sock_read=policy.read_timeout
    )
    for _hop in range(policy.max_redirects + 1):
        key = _check_url(current, policy)
        address = await _pinned_address(current, key, policy)
        # Connect to the checked address; the name still goes in Host and TLS SNI, so
        # virtual hosting and certificate checks work as for the name.
        target = _pinned_url(current.with_fragment(None), address)
        headers = {
            "Host": key,
            "Accept": "image/*",
            # Asked plain: a compressed body could expand past what Content-Length says.
            "Accept-Encoding": "identity",
        }
        try:
            async with session.get(
                target,
                headers=headers,
                allow_redirects=False,
                timeout=timeout,
                server_hostname=current.raw_host if current.scheme == "https" else None,
            ) as resp:
                if resp.status in _REDIRECTS:
                    location = resp.headers.get("Location")
                    if not location:
                        raise MediaRefused(f"redirect ({resp.status}) without a Location")
                    try:
                        current = current.join(URL(location))
                    except (ValueError, TypeError):
                        raise MediaRefused("redirect to a malformed URL") from None
                    continue
                if resp.status != 200:
                    raise MediaRefused(f"HTTP {resp.status}")
                data = await _read_capped(resp, policy)
                return FetchedMedia(
                    url=url,
                    final_url=str(current.with_fragment(None)),
                    data=data,
                    content_type=resp.headers.get("Content-Type"),
                )
        except MediaRefused:
            raise
        except TimeoutError:
            raise MediaRefused(
                f"server sent nothing for {policy.read_timeout:g} s "
                f"(or did not connect within {policy.connect_timeout:g} s)"
            ) from None
        except aiohttp.ClientError as e:
            log.info("media fetch failed host=%s error=%s", key, type(e).__name__)
            raise MediaRefused(f"could not download from {key} ({type(e).__name__})") from None
    raise MediaRefused(f"more than {policy.max_redirects} redirects")


async def _read_capped(resp: aiohttp.ClientResponse, policy: MediaPolicy) -> bytes:
    """Stream the body, refusing it as soon as it passes max_bytes or stops looking like an image."""
    cap = _human_bytes(policy.max_bytes)
    if resp.content_length is not None and resp.content_length > policy.max_bytes:
        resp.close()  # drop the connection rather than drain a body we will not read
        raise MediaRefused(f"body of {resp.content_length} bytes is over the {cap} limit")
    buf = bytearray()
    sniffed = False
    async for chunk in resp.content.iter_chunked(_CHUNK):
        buf += chunk
        if len(buf) > policy.max_bytes:
            resp.close()
            raise MediaRefused(f"body is over the {cap} limit")
        if not sniffed and len(buf) >= _SNIFF_BYTES:
            sniffed = True
            _check_sniff(bytes(buf), resp)
    data = bytes(buf)
    if not data:
        raise MediaRefused("empty body")
    if not sniffed:
        _check_sniff(data, resp)
    return data


def _check_sniff(head: bytes, resp: aiohttp.ClientResponse) -> None:
    fmt = sniff_format(head)
    if fmt is not None and fmt not in ACCEPTED_FORMATS:
        resp.close()
        raise MediaRefused(f"format {fmt} is not accepted")
    if fmt is None:
        resp.close()
        raise MediaRefused("not a recognised image format")
