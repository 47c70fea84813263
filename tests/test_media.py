"""fetch_media against a real aiohttp server on 127.0.0.1: allowed fetches and the bad-input corpus."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import aiohttp
import pytest
from aiohttp import web

from bench.imagegen import encode, make_image
from bot.hashing import ImageRejected, hash_image
from bot.media import FetchedMedia, MediaPolicy, MediaRefused, absolute_url, fetch_media

JPEG = encode(make_image(21, 320, 240), "JPEG", quality=90)
MiB = 1024 * 1024


@dataclass
class Server:
    """A test media server and what it saw."""

    port: int
    hits: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)
    huge_done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server(port=0)

    async def record(request: web.Request) -> None:
        srv.hits.append(request.path)
        srv.hosts.append(request.headers.get("Host", ""))

    async def image(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(body=JPEG, content_type="image/jpeg")

    async def html_as_jpeg(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(
            body=b"<!DOCTYPE html><html><body>login</body></html>" * 40,
            headers={"Content-Type": "image/jpeg"},
        )

    async def empty(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(body=b"", content_type="image/jpeg")

    async def missing(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=404, text="gone")

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        target = request.query["to"].replace("PORT", str(srv.port))
        raise web.HTTPFound(target)

    async def loop_forever(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound("/loop")

    async def trickle(request: web.Request) -> web.StreamResponse:
        # One byte a second, forever: only our timeouts end this.
        await record(request)
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await resp.prepare(request)
        srv.sent["trickle"] = 0
        for i in range(10_000):
            await resp.write(JPEG[i % len(JPEG) : i % len(JPEG) + 1])
            srv.sent["trickle"] += 1
            await asyncio.sleep(1.0)
        return resp

    async def stall(request: web.Request) -> web.StreamResponse:
        # Headers and a first chunk, then silence.
        await record(request)
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await resp.prepare(request)
        await resp.write(JPEG[:100])
        await asyncio.sleep(3600)
        return resp

    async def huge(request: web.Request) -> web.StreamResponse:
        # 200 MiB, generated lazily one MiB at a time; counts what actually left.
        await record(request)
        total = 200 * MiB
        headers = {"Content-Type": "image/jpeg"}
        if request.query.get("length") == "1":
            headers["Content-Length"] = str(total)
        resp = web.StreamResponse(headers=headers)
        if "Content-Length" not in headers:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = JPEG[:1024] + b"\x00" * (MiB - 1024)
        srv.sent["huge"] = 0
        try:
            for _ in range(200):
                await resp.write(chunk)
                srv.sent["huge"] += MiB
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        finally:
            srv.huge_done.set()
        return resp

    app = web.Application()
    app.router.add_get("/img.jpg", image)
    app.router.add_get("/html.jpg", html_as_jpeg)
    app.router.add_get("/empty.jpg", empty)
    app.router.add_get("/missing.jpg", missing)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/loop", loop_forever)
    app.router.add_get("/trickle.jpg", trickle)
    app.router.add_get("/stall.jpg", stall)
    app.router.add_get("/huge.jpg", huge)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.port = runner.addresses[0][1]
    yield srv
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def policy_for(server: Server, **kw: object) -> MediaPolicy:
    return MediaPolicy(allowed_hosts=frozenset({server.key}), **kw)  # type: ignore[arg-type]


async def refused(session: aiohttp.ClientSession, url: str, policy: MediaPolicy) -> str:
    with pytest.raises(MediaRefused) as info:
        # A guard well above every policy timeout used here: a stall fails, not hangs.
        await asyncio.wait_for(fetch_media(session, url, policy), 20)
    return info.value.reason


# --- allowed fetches -------------------------------------------------------------------


async def test_fetches_an_image_from_an_allowed_host(server: Server, session) -> None:
    got = await fetch_media(session, server.url("/img.jpg"), policy_for(server))
    assert isinstance(got, FetchedMedia)
    assert got.data == JPEG
    assert got.content_type == "image/jpeg"
    assert got.final_url == got.url == server.url("/img.jpg")
    assert hash_image(got.data).format == "JPEG"


async def test_follows_a_redirect_on_the_same_host(server: Server, session) -> None:
    got = await fetch_media(session, server.url("/redirect?to=/img.jpg"), policy_for(server))
    assert got.data == JPEG
    assert got.final_url == server.url("/img.jpg")
    assert server.hits == ["/redirect", "/img.jpg"]


async def test_private_hostname_is_fetched_when_declared_private(server: Server, session) -> None:
    key = f"localhost:{server.port}"
    policy = MediaPolicy(allowed_hosts=frozenset({key}), private_hosts=frozenset({key}))
    got = await fetch_media(session, server.url("/img.jpg", host="localhost"), policy)
    assert got.data == JPEG
    # Connected to the checked address, but the server still sees the name it serves.
    assert server.hosts == [key]


async def test_connects_to_the_checked_address_not_a_second_lookup(
    server: Server, session, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: the name answers 127.0.0.1 when checked and 127.0.0.2 (nothing
    # listening) afterwards. Only a fetch pinned to the checked address succeeds.
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1"] + ["127.0.0.2"] * 10)

    def rebinding(host, port, *args, **kwargs):
        if host == "rebind.test":
            return real(next(answers), port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    key = f"rebind.test:{server.port}"
    policy = MediaPolicy(allowed_hosts=frozenset({key}), private_hosts=frozenset({key}))
    got = await fetch_media(session, server.url("/img.jpg", host="rebind.test"), policy)
    assert got.data == JPEG
    assert server.hosts == [key]


# --- the bad-input corpus --------------------------------------------------------------


async def test_loopback_url_on_unconfigured_host_is_refused(server: Server, session) -> None:
    policy = MediaPolicy(allowed_hosts=frozenset({"forum.example"}))
    reason = await refused(session, server.url("/img.jpg"), policy)
    assert reason == f"host {server.key} is not an allowed media host"
    assert server.hits == []


async def test_allowed_name_resolving_to_loopback_is_refused(server: Server, session) -> None:
    key = f"localhost:{server.port}"
    policy = MediaPolicy(allowed_hosts=frozenset({key}))
    reason = await refused(session, server.url("/img.jpg", host="localhost"), policy)
    assert reason == f"host {key} resolves to a private or reserved address"
    assert server.hits == []


async def test_same_host_on_another_port_is_refused(server: Server, session) -> None:
    policy = MediaPolicy(allowed_hosts=frozenset({"127.0.0.1"}))  # default port only
    reason = await refused(session, server.url("/img.jpg"), policy)
    assert reason == f"host {server.key} is not an allowed media host"


async def test_redirect_to_a_private_address_is_refused(server: Server, session) -> None:
    url = server.url("/redirect?to=http://10.0.0.1/img.jpg")
    reason = await refused(session, url, policy_for(server))
    assert reason == "host 10.0.0.1 is not an allowed media host"
    assert server.hits == ["/redirect"]


async def test_redirect_to_another_host_is_refused(server: Server, session) -> None:
    # Same machine, other name: still another host.
    url = server.url("/redirect?to=http://localhost:PORT/img.jpg")
    reason = await refused(session, url, policy_for(server))
    assert reason == f"host localhost:{server.port} is not an allowed media host"
    assert server.hits == ["/redirect"]


async def test_redirect_to_another_scheme_is_refused(server: Server, session) -> None:
    url = server.url("/redirect?to=file:///etc/passwd")
    assert await refused(session, url, policy_for(server)) == "scheme file is not allowed"


async def test_redirect_loop_stops_at_the_limit(server: Server, session) -> None:
    reason = await refused(session, server.url("/loop"), policy_for(server, max_redirects=3))
    assert reason == "more than 3 redirects"
    assert len(server.hits) == 4


async def test_html_served_as_jpeg_is_refused_by_its_bytes(server: Server, session) -> None:
    reason = await refused(session, server.url("/html.jpg"), policy_for(server))
    assert reason == "format HTML is not accepted"


async def test_empty_body_is_refused(server: Server, session) -> None:
    assert await refused(session, server.url("/empty.jpg"), policy_for(server)) == "empty body"


async def test_http_error_is_refused(server: Server, session) -> None:
    assert await refused(session, server.url("/missing.jpg"), policy_for(server)) == "HTTP 404"


async def test_one_byte_a_second_is_cut_by_the_total_timeout(server: Server, session) -> None:
    policy = policy_for(server, read_timeout=5.0, total_timeout=1.5)
    start = time.monotonic()
    reason = await refused(session, server.url("/trickle.jpg"), policy)
    assert reason == "download took longer than 1.5 s"
    assert time.monotonic() - start < 4.0
    assert server.sent["trickle"] <= 3


async def test_stalled_body_is_cut_by_the_read_timeout(server: Server, session) -> None:
    policy = policy_for(server, read_timeout=0.5, total_timeout=10.0)
    reason = await refused(session, server.url("/stall.jpg"), policy)
    assert reason.startswith("server sent nothing for 0.5 s")


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "chunked"])
async def test_200_mib_body_is_stopped_at_the_cap(
    server: Server, session, with_length: bool
) -> None:
    url = server.url("/huge.jpg?length=1" if with_length else "/huge.jpg")
    reason = await refused(session, url, policy_for(server, max_bytes=4 * MiB))
    if with_length:
        assert reason == f"body of {200 * MiB} bytes is over the 4 MiB limit"
    else:
        assert reason == "body is over the 4 MiB limit"
    # Wait until the server's handler has given up, then count what actually left it.
    await asyncio.wait_for(server.huge_done.wait(), 10)
    assert server.sent.get("huge", 0) < 40 * MiB  # socket buffers, not the whole body


async def test_non_http_scheme_is_refused(session) -> None:
    policy = MediaPolicy(allowed_hosts=frozenset({"forum.example"}))
    assert await refused(session, "ftp://forum.example/a.jpg", policy) == (
        "scheme ftp is not allowed"
    )


async def test_credentials_in_url_are_refused(session) -> None:
    policy = MediaPolicy(allowed_hosts=frozenset({"forum.example"}))
    reason = await refused(session, "http://user:pw@forum.example/a.jpg", policy)
    assert reason == "URLs with credentials are not fetched"


async def test_fetched_html_would_also_be_rejected_by_hashing() -> None:
    # Defence in depth: even bytes fetched some other way are sniffed again.
    with pytest.raises(ImageRejected, match="format HTML is not accepted"):
        hash_image(b"<!DOCTYPE html><html></html>")


def test_policy_defaults() -> None:
    p = MediaPolicy()
    assert (p.max_bytes, p.connect_timeout, p.read_timeout, p.total_timeout, p.max_redirects) == (
        20 * MiB,
        5.0,
        10.0,
        30.0,
        3,
    )
    assert replace(p, max_bytes=1).max_bytes == 1


@pytest.mark.parametrize(
    ("base", "ref", "expected"),
    [
        (
            "https://forum.example/t/topic/12",
            "/uploads/default/original/1X/ab.jpeg",
            "https://forum.example/uploads/default/original/1X/ab.jpeg",
        ),
        ("https://forum.example/t/topic/12", "//cdn.example/x.png", "https://cdn.example/x.png"),
        ("https://forum.example/t/", "https://other.example/a.gif", "https://other.example/a.gif"),
        (
            "https://forum.example/t/topic/12",
            " img/a.png ",
            "https://forum.example/t/topic/img/a.png",
        ),
    ],
)
def test_absolute_url_resolves_site_relative_paths(base: str, ref: str, expected: str) -> None:
    assert absolute_url(base, ref) == expected
