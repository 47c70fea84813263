"""POST /v1/check over real HTTP: the forum asks before it publishes an upload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from PIL import ImageFile, ImageOps

from bench.imagegen import encode, make_image
from bot.app import App, load_everything
from bot.clock import ManualClock
from bot.hashing import hash_image
from tests.conftest import free_port, write_config
from tests.fake_discourse import FakeDiscourse

TOKEN = "test-check-token-0123456789"
LISTED = encode(make_image(201, 400, 300), "PNG")
HELD = encode(make_image(202, 400, 300), "PNG")
CLEARED = encode(make_image(203, 400, 300), "PNG")
UNLISTED = encode(make_image(204, 400, 300), "PNG")
H_LISTED, H_HELD, H_CLEARED = (hash_image(d) for d in (LISTED, HELD, CLEARED))

LISTS = """
[[list]]
name = "known"
file = "lists/known.txt"
kinds = ["sha256", "pdq"]
category = "test-abuse"
verdict = "block"

[[list]]
name = "suspect"
file = "lists/suspect.txt"
kinds = ["pdq"]
verdict = "hold"

[[list]]
name = "allow"
file = "lists/allow.txt"
kinds = ["sha256"]
allow = true
"""


async def start(root: Path, forum: FakeDiscourse | None, token: bool = True) -> App:
    path = write_config(root)
    text = path.read_text()
    if forum is not None:
        text = text.replace('base_url = "http://127.0.0.1:9"', f'base_url = "{forum.base_url}"', 1)
    if token:
        text = text.replace(
            'log_level = "info"', 'log_level = "info"\ncheck_token_env = "TEST_CHECK_TOKEN"'
        )
        with (root / ".env").open("a") as f:
            f.write(f"TEST_CHECK_TOKEN={TOKEN}\n")
    path.write_text(text)
    (root / "lists").mkdir()
    (root / "lists" / "known.txt").write_text(
        f"sha256 {H_LISTED.sha256}\npdq {H_LISTED.pdq}\npdq {H_CLEARED.pdq}\n"
    )
    (root / "lists" / "suspect.txt").write_text(f"pdq {H_HELD.pdq}\n")
    (root / "lists" / "allow.txt").write_text(f"sha256 {H_CLEARED.sha256}\n")
    (root / "rules" / "lists.toml").write_text(LISTS)
    loaded, problems = load_everything(path)
    assert loaded is not None, [str(p) for p in problems.items]
    # No chat ports: there is no chat server here, and /v1/check does not need one.
    app = App(
        loaded.config, loaded.rules, clock=ManualClock(), watch_rules=False, chats=lambda a: {}
    )
    await app.start()
    assert app.pipeline is not None
    await app.pipeline.stop()  # no events here; stopping at once keeps teardown instant
    return app


@pytest.fixture(autouse=True)
def strict_pillow() -> None:
    """Undo what importing synapse (the Matrix tests' harness) does to Pillow globally."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False


@pytest.fixture
async def forum() -> AsyncIterator[FakeDiscourse]:
    async with FakeDiscourse() as f:
        yield f


@pytest.fixture
async def vigil(tmp_path: Path, forum: FakeDiscourse) -> AsyncIterator[App]:
    app = await start(tmp_path, forum)
    yield app
    await app.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def url(app: App) -> str:
    return f"http://127.0.0.1:{app.port}/v1/check"


async def upload(
    http: aiohttp.ClientSession, app: App, data: bytes, token: str = TOKEN
) -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("image", data, filename="upload.png", content_type="image/png")
    async with http.post(url(app), data=form, headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.json()


async def by_url(http: aiohttp.ClientSession, app: App, doc: dict) -> tuple[int, dict]:
    async with http.post(url(app), json=doc, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        return resp.status, await resp.json()


async def test_unlisted_upload_is_allowed(vigil: App, http) -> None:
    status, body = await upload(http, vigil, UNLISTED)
    assert status == 200
    assert body == {
        "verdict": "allow",
        "matches": [],
        "allowed_by": None,
        "sha256": hash_image(UNLISTED).sha256,
    }


async def test_listed_upload_is_blocked_with_its_matches(vigil: App, http) -> None:
    status, body = await upload(http, vigil, LISTED)
    assert status == 200 and body["verdict"] == "block"
    assert {(m["list"], m["kind"], m["distance"]) for m in body["matches"]} == {
        ("known", "sha256", 0),
        ("known", "pdq", 0),
    }
    assert all(m["category"] == "test-abuse" and m["tier"] == "confident" for m in body["matches"])


async def test_mirrored_copy_on_a_hold_list_is_held(vigil: App, http) -> None:
    import io

    from PIL import Image

    mirrored = encode(ImageOps.mirror(Image.open(io.BytesIO(HELD))), "JPEG", quality=80)
    status, body = await upload(http, vigil, mirrored)
    assert status == 200 and body["verdict"] == "hold"
    assert [m["list"] for m in body["matches"]] == ["suspect"]


async def test_allow_list_wins_over_a_block_list(vigil: App, http) -> None:
    status, body = await upload(http, vigil, CLEARED)
    assert status == 200
    assert body["verdict"] == "allow" and body["allowed_by"] == "allow" and body["matches"] == []


async def test_url_on_an_allowed_host_is_fetched_and_checked(
    vigil: App, forum: FakeDiscourse, http
) -> None:
    up = forum.add_upload(LISTED)
    status, body = await by_url(http, vigil, {"url": forum.url(up.path)})
    assert status == 200 and body["verdict"] == "block"
    # A site-relative URL resolves against the named source's base_url.
    status, body = await by_url(http, vigil, {"url": up.path, "source": "forum"})
    assert status == 200 and body["verdict"] == "block"


async def test_url_on_a_host_that_is_not_allowed_is_refused_unfetched(
    vigil: App, forum: FakeDiscourse, http
) -> None:
    other = f"http://127.0.0.1:{free_port()}/uploads/x.png"
    status, body = await by_url(http, vigil, {"url": other})
    assert status == 422 and "is not an allowed media host" in body["error"]
    status, body = await by_url(http, vigil, {"url": other, "source": "forum"})
    assert status == 422 and "is not an allowed media host" in body["error"]


async def test_wrong_or_missing_token_is_401(vigil: App, http) -> None:
    status, body = await upload(http, vigil, LISTED, token="wrong")
    assert status == 401 and "token" in body["error"]
    async with http.post(url(vigil), json={"url": "http://x/y.png"}) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (LISTED[: len(LISTED) // 2], "truncated or corrupt image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "format SVG is not accepted"),
        (b"", "empty file"),
    ],
    ids=["truncated-png", "svg", "zero-byte"],
)
async def test_broken_image_is_422_with_the_reason(
    vigil: App, http, data: bytes, reason: str
) -> None:
    status, body = await upload(http, vigil, data)
    assert status == 422 and body["error"] == f"image cannot be checked: {reason}"


async def test_upload_over_the_byte_cap_is_413(vigil: App, http) -> None:
    status, body = await upload(http, vigil, b"\xff\xd8\xff" + b"\x00" * (20 * 1024 * 1024))
    assert status == 413 and "limit" in body["error"]


async def test_bad_requests_say_what_is_expected(vigil: App, http) -> None:
    status, body = await by_url(http, vigil, {"nope": 1})
    assert status == 400 and "url" in body["error"]
    status, body = await by_url(http, vigil, {"url": "/x.png", "source": "nowhere"})
    assert status == 400 and "no source called 'nowhere'" in body["error"]
    async with http.post(
        url(vigil),
        data=b"raw",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "image/png"},
    ) as resp:
        assert resp.status == 415


async def test_endpoint_without_a_configured_token_is_503(tmp_path: Path, http) -> None:
    app = await start(tmp_path, None, token=False)
    try:
        status, body = await upload(http, app, LISTED)
        assert status == 503 and "check_token_env" in body["error"]
    finally:
        await app.stop()
