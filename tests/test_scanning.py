"""Every image of every event, fetched, hashed and matched: through the real pipeline.

A real Vigil (HTTP, SQLite, hash pool) receives signed Discourse webhooks from the
simulated forum, which serves the uploads. Images are generated (bench.imagegen),
never real material. Workers are stopped after start and the pipeline is driven with
``run_once`` so every test is deterministic; retries move a manual clock.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import struct
import textwrap
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image, ImageFile, ImageOps

from bench.imagegen import encode, make_image
from bot.app import App, default_stages, load_everything
from bot.clock import ManualClock
from bot.hashing import hash_image
from bot.lists import LOCAL_BANK, ListRegistry
from bot.pipeline import EventContext
from bot.rules import Decision
from bot.scanning import event_media, hashes_from_json, hashes_to_json, is_transient
from bot.store import Store
from tests.conftest import free_port, write_config
from tests.fake_discourse import FakeDiscourse

MiB = 1024 * 1024


def photo(seed: int, w: int = 480, h: int = 360) -> Image.Image:
    return make_image(seed, w, h)


def png(img: Image.Image) -> bytes:
    return encode(img, "PNG")


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    return encode(img, "JPEG", quality=quality)


A, B, C, E, F, G = (photo(s) for s in (101, 102, 103, 105, 106, 107))
A_PNG, B_PNG, C_PNG, E_PNG, F_PNG, G_PNG = (png(i) for i in (A, B, C, E, F, G))
HA, HB, HC, HF = (hash_image(d) for d in (A_PNG, B_PNG, C_PNG, F_PNG))
E_SHA1 = hash_image(E_PNG).sha1


def resized_recompressed(img: Image.Image) -> bytes:
    w, h = img.size
    return jpeg(img.resize((w * 2 // 3, h * 2 // 3), Image.Resampling.BILINEAR), quality=60)


def list_file(hashes: list[tuple[str, str]]) -> str:
    return "# generated test pictures\n" + "".join(f"{k} {v}\n" for k, v in hashes)


KNOWN = [("pdq", HA.pdq), ("md5", HA.md5), ("pdq", HC.pdq), ("sha1", E_SHA1)]
LISTS_TOML = """
[[list]]
name = "known"
file = "lists/known.txt"
kinds = ["sha1", "md5", "pdq"]
severity = "critical"
category = "test-abuse"
verdict = "block"

[[list]]
name = "flat"
file = "lists/flat.txt"
kinds = ["pdq", "phash"]
dihedral = false
severity = "high"
category = "test-flat"
verdict = "hold"

[[list]]
name = "allow"
file = "lists/allow.txt"
kinds = ["pdq"]
allow = true
"""
RULES = """
[[rule]]
name = "known-image"
when = { lists = ["known", "flat"] }
severity = "critical"
room = "staff"

[[rule]]
name = "banked-image"
when = { categories = ["local-bank"] }
severity = "critical"
room = "staff"
"""


# --- a server that misbehaves in ways the fake forum cannot --------------------------


@dataclass
class SideServer:
    """Serves /trickle (1 byte a second) and /huge (200 MiB, generated lazily)."""

    port: int = 0
    sent: dict[str, int] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def side() -> AsyncIterator[SideServer]:
    srv = SideServer()
    head = jpeg(photo(1, 64, 64))

    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await resp.prepare(request)
        for i in range(3600):
            await resp.write(head[i % len(head) : i % len(head) + 1])
            await asyncio.sleep(1.0)  # the server is slow, not the test
        return resp

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = head[:1024] + b"\x00" * (MiB - 1024)
        srv.sent["huge"] = 0
        try:
            for _ in range(200):
                await resp.write(chunk)
                srv.sent["huge"] += MiB
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        return resp

    app = web.Application()
    app.router.add_get("/trickle.jpg", trickle)
    app.router.add_get("/huge.jpg", huge)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.port = runner.addresses[0][1]
    yield srv
    await runner.cleanup()


# --- the harness ---------------------------------------------------------------------


@dataclass
class Vigil:
    """A started Vigil wired to a fake forum; workers stopped, driven by ``process``."""

    app: App
    forum: FakeDiscourse
    root: Path
    clock: ManualClock
    decisions: dict[int, Decision]
    ids: Any = field(default_factory=lambda: itertools.count(1))

    @property
    def store(self) -> Store:
        assert self.app.store is not None
        return self.app.store

    async def post(self, raw: str) -> int:
        """Send a signed post_created with ``raw``; returns its inbox id."""
        n = next(self.ids)
        body = self.forum.post_created_payload(
            post_id=1000 + n, user_id=7, username="member", raw=raw
        )
        status = await self.forum.send_webhook(self.url, "post", "post_created", body)
        assert status == 200
        return (await self.store.events())[-1]["id"]

    async def post_image(self, data: bytes, ext: str = "png") -> int:
        up = self.forum.add_upload(data, ext)
        return await self.post(f"look ![pic|100x100]({up.short_url})")

    async def process(self) -> None:
        """Run the pipeline until nothing is ready."""
        assert self.app.pipeline is not None
        while await self.app.pipeline.run_once():
            pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.app.port}/webhooks/discourse"

    async def state(self, event_id: int) -> str:
        row = await self.store.event_row(event_id)
        assert row is not None
        return row["state"]

    async def matches(self, event_id: int) -> set[tuple[int, str, str]]:
        return {
            (m["media_index"], m["list"], m["kind"])
            for m in await self.store.event_matches(event_id)
        }


async def pipeline_problems(v: Vigil) -> list[str]:
    """Kinds of the open problems this part raises (the chat part may add its own)."""
    kinds = ("media_unavailable", "media_unchecked", "event_parked", "list_failed")
    return [p["kind"] for p in await v.store.open_problems() if p["kind"] in kinds]


@pytest.fixture(autouse=True)
def strict_pillow() -> None:
    """Pillow as Vigil runs it. The Synapse harness imports ``synapse`` into the test
    process, and importing synapse sets ``ImageFile.LOAD_TRUNCATED_IMAGES = True``
    globally; Vigil itself never imports it."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False


class DecisionLog:
    """A last stage that keeps what the rules decided, per event."""

    name = "decision-log"

    def __init__(self) -> None:
        self.decisions: dict[int, Decision] = {}

    async def run(self, ctx: EventContext) -> None:
        self.decisions[ctx.id] = ctx.facts["decision"]


def write_vigil(
    root: Path, forum: FakeDiscourse, side_port: int, lists_toml: str = LISTS_TOML
) -> Path:
    path = write_config(
        root,
        rules=RULES,
        extra_toml=textwrap.dedent(
            """
            [media]
            max_bytes = 4194304
            connect_timeout = 1
            read_timeout = 3
            total_timeout = 1.5
            """
        ),
    )
    text = path.read_text()
    text = text.replace('base_url = "http://127.0.0.1:9"', f'base_url = "{forum.base_url}"', 1)
    text = text.replace('media_hosts = ["127.0.0.1"]', f'media_hosts = ["127.0.0.1:{side_port}"]')
    text = text.replace('retry_base = "1s"', 'retry_base = "1s"\nmax_attempts = 3')
    path.write_text(text)
    (root / "lists").mkdir(exist_ok=True)
    (root / "lists" / "known.txt").write_text(list_file(KNOWN))
    (root / "lists" / "flat.txt").write_text(list_file([("pdq", HB.pdq), ("phash", HB.phash)]))
    (root / "lists" / "allow.txt").write_text(list_file([("pdq", HC.pdq)]))
    (root / "rules" / "lists.toml").write_text(lists_toml)
    return path


async def start_vigil(path: Path, forum: FakeDiscourse) -> Vigil:
    loaded, problems = load_everything(path)
    assert loaded is not None, [str(p) for p in problems.items]
    log = DecisionLog()
    clock = ManualClock()
    app = App(
        loaded.config,
        loaded.rules,
        clock=clock,
        stages=lambda a: [*default_stages(a), log],
        watch_rules=False,
        chats=lambda a: {},  # no chat server here: this part is about images
    )
    await app.start()
    assert app.pipeline is not None
    await app.pipeline.stop()  # the test drives the pipeline itself
    return Vigil(app, forum, path.parent, clock, log.decisions)


@pytest.fixture
async def forum() -> AsyncIterator[FakeDiscourse]:
    async with FakeDiscourse() as f:
        yield f


@pytest.fixture
async def vigil(tmp_path: Path, forum: FakeDiscourse, side: SideServer) -> AsyncIterator[Vigil]:
    v = await start_vigil(write_vigil(tmp_path, forum, side.port), forum)
    yield v
    await v.app.stop()


# --- matching through the pipeline ------------------------------------------------------


async def test_listed_upload_is_matched_recorded_and_fires_the_rule(vigil: Vigil) -> None:
    event_id = await vigil.post_image(A_PNG)
    await vigil.process()
    assert await vigil.state(event_id) == "done"
    assert await vigil.matches(event_id) == {(0, "known", "md5"), (0, "known", "pdq")}
    rows = await vigil.store.event_matches(event_id)
    assert {(r["distance"], r["category"], r["tier"]) for r in rows} == {
        (0, "test-abuse", "confident")
    }
    decision = vigil.decisions[event_id]
    assert decision.rules == ("known-image",)
    assert {m.list for m in decision.matches} == {"known"}


async def test_unlisted_image_is_hashed_and_matches_nothing(vigil: Vigil) -> None:
    event_id = await vigil.post_image(G_PNG)
    await vigil.process()
    (row,) = await vigil.store.media_results(event_id)
    assert row["reason"] is None and row["sha256"] == hash_image(G_PNG).sha256
    assert row["url"].endswith(".png") and "?" not in row["url"]
    assert await vigil.matches(event_id) == set()
    assert not vigil.decisions[event_id].fired


async def test_resized_recompressed_mirrored_and_rotated_copies_match_by_pdq(vigil: Vigil) -> None:
    copies = [
        vigil.forum.add_upload(resized_recompressed(A), "jpg"),
        vigil.forum.add_upload(png(ImageOps.mirror(A)), "png"),
        vigil.forum.add_upload(jpeg(A.rotate(90, expand=True)), "jpg"),
    ]
    event_id = await vigil.post(" ".join(f"![c|10x10]({u.short_url})" for u in copies))
    await vigil.process()
    rows = await vigil.store.event_matches(event_id)
    assert {(r["media_index"], r["list"], r["kind"]) for r in rows} == {
        (0, "known", "pdq"),
        (1, "known", "pdq"),
        (2, "known", "pdq"),
    }
    assert all(r["distance"] <= 31 and r["tier"] == "confident" for r in rows)
    assert vigil.decisions[event_id].rules == ("known-image",)


async def test_list_without_dihedral_does_not_match_the_mirror(vigil: Vigil) -> None:
    mirrored = await vigil.post_image(png(ImageOps.mirror(B)))
    resized = await vigil.post_image(resized_recompressed(B), "jpg")
    await vigil.process()
    assert await vigil.matches(mirrored) == set()
    assert not vigil.decisions[mirrored].fired
    # The same list still catches a resized copy: it is the mirror it does not look for.
    assert (0, "flat", "pdq") in await vigil.matches(resized)


async def test_allow_listed_image_yields_no_match(vigil: Vigil) -> None:
    # C is on "known" and on the allow-list: the allow-list wins.
    event_id = await vigil.post_image(C_PNG)
    await vigil.process()
    assert await vigil.matches(event_id) == set()
    assert not vigil.decisions[event_id].fired
    (row,) = await vigil.store.media_results(event_id)
    assert row["allowed_by"] == "allow"


async def test_known_sha1_matches_before_download_and_is_not_fetched(vigil: Vigil) -> None:
    # E's SHA-1 is on the list; the forum does not even serve it.
    up = vigil.forum.add_upload(E_PNG)
    del vigil.forum.uploads[up.path]
    event_id = await vigil.post(f"![e|10x10]({up.short_url})")
    await vigil.process()
    assert await vigil.matches(event_id) == {(0, "known", "sha1")}
    assert vigil.decisions[event_id].rules == ("known-image",)
    assert not any(up.sha1 in p for p in vigil.forum.upload_requests)
    (row,) = await vigil.store.media_results(event_id)
    assert row["reason"] == "not fetched: its SHA-1 is already on known"


async def test_taken_down_image_goes_to_the_bank_and_its_repost_is_caught(vigil: Vigil) -> None:
    first = await vigil.post_image(G_PNG)
    await vigil.process()
    assert await vigil.matches(first) == set()
    assert vigil.app.lists is not None
    added = await vigil.app.lists.bank_add_event(
        first, added_by="Alice", reason="taken down", alert_id=None
    )
    assert added == 6  # sha256, sha1, md5, phash, dhash, pdq

    exact = await vigil.post_image(G_PNG)
    copy = await vigil.post_image(resized_recompressed(G), "jpg")
    mirrored = await vigil.post_image(png(ImageOps.mirror(G)))
    await vigil.process()
    # The same upload again: its SHA-1 (known from its name) is banked, so it is not
    # even downloaded.
    assert await vigil.matches(exact) == {(0, LOCAL_BANK, "sha1")}
    assert sum(hash_image(G_PNG).sha1 in p for p in vigil.forum.upload_requests) == 1
    assert (0, LOCAL_BANK, "pdq") in await vigil.matches(copy)
    # pHash and dHash do not see mirrors; PDQ's dihedral variants do.
    assert await vigil.matches(mirrored) == {(0, LOCAL_BANK, "pdq")}
    assert vigil.decisions[copy].rules == ("banked-image",)


async def test_bank_add_of_hashes_survives_a_restart(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "v.db")
    registry = ListRegistry(None, store)
    await registry.load_bank()
    h = hash_image(F_PNG)
    assert await registry.bank_add(h, "Alice", "taken down") == 6
    assert await registry.bank_add(h, "Bob", "again") == 0  # already there
    again = ListRegistry(None, store)
    await again.load_bank()
    assert {m.kind for m in again.match(h)} == {"sha256", "sha1", "md5", "pdq", "phash", "dhash"}
    # A crop: PDQ moves far (docs/hashing.md), pHash/dHash stay close.
    w, hgt = F.size
    cropped = hash_image(jpeg(F.crop((w // 33, hgt // 33, w - w // 33, hgt - hgt // 33))))
    assert {m.kind for m in again.match(cropped)} & {"phash", "dhash"}
    with pytest.raises(ValueError):
        await again.bank_add_entries([("pdq", "abc")], "Alice", "bad")
    await store.close()


async def test_repost_of_the_same_upload_is_not_fetched_again(vigil: Vigil) -> None:
    up = vigil.forum.add_upload(F_PNG)
    first = await vigil.post(f"![f|10x10]({up.short_url})")
    second = await vigil.post(f"again ![f|10x10]({up.short_url})")
    await vigil.process()
    fetched = [p for p in vigil.forum.upload_requests if up.sha1 in p]
    assert len(fetched) == 1
    r1, r2 = [await vigil.store.media_results(e) for e in (first, second)]
    assert r1[0]["hashes"] == r2[0]["hashes"] is not None


# --- the bad-input corpus, through the pipeline ------------------------------------------


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_50k() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + png_chunk(b"IEND", b"")
    )


def gif_10k_frames() -> bytes:
    first = io.BytesIO()
    photo(4, 256, 256).convert("P", palette=Image.Palette.ADAPTIVE).save(first, "GIF")
    head = first.getvalue()
    frames = []
    for i in range(9_999):
        gce = b"\x21\xf9\x04\x00\x01\x00\x00\x00"
        desc = b"\x2c" + struct.pack("<HHHH", i % 256, (i // 256) % 256, 1, 1) + b"\x00"
        frames.append(gce + desc + b"\x02\x02" + (b"\x44\x01" if i % 2 else b"\x4c\x01") + b"\x00")
    return head[:-1] + b"".join(frames) + b";"


def jpeg_bad_exif() -> bytes:
    data = jpeg(photo(8))
    payload = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
HTML = b"<!DOCTYPE html><html><body>please log in</body></html>" * 30


async def _raw_for(case: str, v: Vigil, side: SideServer) -> str:
    """The post text referencing the bad image of ``case`` (served as needed)."""
    uploads = {
        "zero-byte": (b"", "png"),
        "truncated-jpeg": (jpeg(photo(9))[:4000], "jpg"),
        "png-50000x50000": (png_50k(), "png"),
        "gif-10000-frames": (gif_10k_frames(), "gif"),
        "svg": (SVG, "svg"),
        "html-as-jpeg": (HTML, "jpg"),
        "corrupted-exif": (jpeg_bad_exif(), "jpg"),
    }
    if case in uploads:
        data, ext = uploads[case]
        return f"![x|10x10]({v.forum.add_upload(data, ext).short_url})"
    if case == "loopback-unconfigured-host":
        return f"![x](http://127.0.0.1:{free_port()}/secret.png)"
    if case == "redirect-to-private":
        up = v.forum.add_upload(jpeg(photo(10)), "jpg")
        v.forum.misbehave(up.path, redirect_to="http://10.0.0.1/inside.png")
        v.forum.misbehave(
            f"/uploads/short-url/{up.short_url[len('upload://') :]}",
            redirect_to="http://10.0.0.1/inside.png",
        )
        return f"![x|10x10]({up.short_url})"
    if case == "one-byte-a-second":
        return f"![x]({side.url('/trickle.jpg')})"
    if case == "200-mib-body":
        return f"![x]({side.url('/huge.jpg')})"
    raise AssertionError(case)


CORPUS = [
    ("zero-byte", "empty body"),
    ("truncated-jpeg", "truncated or corrupt image"),
    ("png-50000x50000", "declared size 50000x50000 exceeds the 50 megapixel limit"),
    ("gif-10000-frames", None),  # hashed: only the first frames are ever decoded
    ("svg", "format SVG is not accepted"),
    ("html-as-jpeg", "format HTML is not accepted"),
    ("loopback-unconfigured-host", "is not an allowed media host"),
    ("redirect-to-private", "host 10.0.0.1 is not an allowed media host"),
    ("one-byte-a-second", "1.5 s"),
    ("200-mib-body", "body is over the 4 MiB limit"),
    ("corrupted-exif", None),  # hashed: a broken EXIF block is ignored
]


@pytest.mark.parametrize(("case", "reason"), CORPUS, ids=[c for c, _ in CORPUS])
async def test_bad_input_ends_with_a_reason_and_the_next_event_still_runs(
    vigil: Vigil, side: SideServer, case: str, reason: str | None
) -> None:
    bad = await vigil.post(await _raw_for(case, vigil, side))
    good = await vigil.post_image(A_PNG)
    await vigil.process()
    assert await vigil.state(bad) == "done"
    (row,) = await vigil.store.media_results(bad)
    if reason is None:
        assert row["reason"] is None and row["hashes"] is not None
    else:
        assert row["hashes"] is None and reason in row["reason"]
    assert await vigil.state(good) == "done"
    assert (0, "known", "pdq") in await vigil.matches(good)
    assert await pipeline_problems(vigil) == []
    if case == "200-mib-body":
        assert side.sent["huge"] < 50 * MiB
    if case == "gif-10000-frames":
        assert len(hashes_from_json(row["hashes"]).extra_frames) <= 3


# --- the forum failing is retried; the image failing is not --------------------------------


async def test_forum_error_is_retried_then_the_image_is_hashed(vigil: Vigil) -> None:
    up = vigil.forum.add_upload(A_PNG)
    for path in (up.path, f"/uploads/short-url/{up.short_url[len('upload://') :]}"):
        vigil.forum.misbehave(path, status=503, times=1)
    event_id = await vigil.post(f"![a|10x10]({up.short_url})")
    await vigil.process()
    row = await vigil.store.event_row(event_id)
    assert row is not None and row["state"] == "pending"
    assert "MediaUnavailable" in row["last_error"] and "HTTP 503" in row["last_error"]
    assert await vigil.store.media_results(event_id) == []  # nothing final recorded yet
    await vigil.clock.advance(60)
    await vigil.process()
    assert await vigil.state(event_id) == "done"
    assert (0, "known", "pdq") in await vigil.matches(event_id)


async def test_forum_down_for_every_attempt_records_the_reason_and_raises_a_problem(
    vigil: Vigil,
) -> None:
    up = vigil.forum.add_upload(G_PNG)
    known = vigil.forum.add_upload(A_PNG)
    for path in (up.path, f"/uploads/short-url/{up.short_url[len('upload://') :]}"):
        vigil.forum.misbehave(path, status=502)
    event_id = await vigil.post(f"![g|10x10]({up.short_url}) ![a|10x10]({known.short_url})")
    for _ in range(3):  # max_attempts = 3
        await vigil.process()
        await vigil.clock.advance(600)
    assert await vigil.state(event_id) == "done"
    rows = await vigil.store.media_results(event_id)
    assert rows[0]["reason"] == "HTTP 502 (gave up after 3 attempts)"
    # The image that did download was hashed once, matched, and the rule fired.
    assert sum(known.sha1 in p for p in vigil.forum.upload_requests) == 1
    assert (1, "known", "pdq") in await vigil.matches(event_id)
    assert vigil.decisions[event_id].rules == ("known-image",)
    assert await pipeline_problems(vigil) == ["media_unavailable"]


@pytest.mark.parametrize(
    ("reason", "transient"),
    [
        ("HTTP 503", True),
        ("HTTP 429", True),
        ("could not download from forum.example (ClientConnectorError)", True),
        ("host forum.example does not resolve", True),
        ("HTTP 404", False),
        ("download took longer than 30 s", False),
        ("format SVG is not accepted", False),
        ("host evil.example is not an allowed media host", False),
    ],
)
def test_only_the_forum_failing_is_transient(reason: str, transient: bool) -> None:
    assert is_transient(reason) is transient


# --- lists reload without a restart ----------------------------------------------------------


async def test_list_file_change_is_picked_up_by_a_reload(vigil: Vigil) -> None:
    before = await vigil.post_image(F_PNG)
    await vigil.process()
    assert await vigil.matches(before) == set()

    with (vigil.root / "lists" / "known.txt").open("a") as f:
        f.write(f"pdq {HF.pdq}\n")
    assert await vigil.app.reload_rules()
    after = await vigil.post_image(F_PNG)
    await vigil.process()
    assert await vigil.matches(after) == {(0, "known", "pdq")}

    assert vigil.app.lists is not None
    report = await vigil.app.lists.reload(vigil.app.rules)
    assert report.rebuilt == () and set(report.kept) == {"known", "flat", "allow"}


async def test_a_broken_list_file_keeps_the_old_list_in_force(vigil: Vigil) -> None:
    (vigil.root / "lists" / "known.txt").write_text("this is not a hash list\nat all\n")
    assert await vigil.app.reload_rules()
    problems = [p for p in await vigil.store.open_problems() if p["kind"] == "list_failed"]
    assert len(problems) == 1
    assert "previous version of the list stays in force" in problems[0]["detail"]
    event_id = await vigil.post_image(A_PNG)
    await vigil.process()
    assert (0, "known", "pdq") in await vigil.matches(event_id)


async def test_restart_loads_lists_from_the_cache(
    tmp_path: Path, forum: FakeDiscourse, side: SideServer
) -> None:
    path = write_vigil(tmp_path, forum, side.port)
    first = await start_vigil(path, forum)
    await first.app.stop()
    caches = sorted(p.name for p in (tmp_path / "data" / "lists-cache").glob("*.npz"))
    assert [c.split("-")[0] for c in caches] == ["allow", "flat", "known"]
    # Remove the source file's content but keep its mtime and size: only a cache hit
    # can still know the hashes.
    known = tmp_path / "lists" / "known.txt"
    st = known.stat()
    known.write_text("#" * st.st_size)
    import os

    os.utime(known, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = await start_vigil(path, forum)
    try:
        event_id = await second.post_image(A_PNG)
        await second.process()
        assert (0, "known", "pdq") in await second.matches(event_id)
    finally:
        await second.app.stop()


# --- small pieces -------------------------------------------------------------------------


def test_hashes_round_trip_through_json() -> None:
    buf = io.BytesIO()
    photo(1, 120, 90).save(
        buf, "GIF", save_all=True, append_images=[photo(2, 120, 90)], duration=100
    )
    h = hash_image(buf.getvalue())
    assert h.extra_frames
    assert hashes_from_json(hashes_to_json(h)) == h


def test_event_media_joins_post_media_and_generic_upload_media() -> None:
    from bot.model import Author, Event, EventKind, MediaRef, Post

    post = Post(id="1", author=Author(id="1", username="u"), media=(MediaRef(url="/a.png"),))
    ev = Event(
        "other",
        "d",
        EventKind.IMAGE_UPLOADED,
        post=post,
        extra={
            "media": [
                {"url": "/a.png", "sha1": None, "filename": None},
                {"url": "/b.png", "sha1": "ab", "filename": "b.png"},
            ]
        },
    )
    assert event_media(ev) == (
        MediaRef(url="/a.png"),
        MediaRef(url="/b.png", sha1="ab", filename="b.png"),
    )


# --- the registry on its own ----------------------------------------------------------------


def _ruleset(tmp_path: Path, body: str, entries: list[tuple[str, str]], **spec: Any) -> Any:
    from bot.model import Severity
    from bot.rules import DEFAULT_MAX_DISTANCE, ListSpec, RuleSet

    path = tmp_path / "l.txt"
    path.write_text(body + list_file(entries))
    defaults: dict[str, Any] = {
        "name": "l",
        "file": path,
        "format": "plain",
        "kinds": ("sha256", "sha1", "md5", "pdq", "phash", "dhash"),
        "max_distance": dict(DEFAULT_MAX_DISTANCE),
        "severity": Severity.HIGH,
        "category": None,
    }
    return RuleSet(lists=(ListSpec(**{**defaults, **spec}),))


async def test_pdq_of_quality_below_50_is_never_matched(tmp_path: Path) -> None:
    flat = hash_image(png(Image.new("RGB", (300, 200), (120, 120, 120))))
    assert flat.pdq_quality < 50
    registry = ListRegistry(None)
    await registry.reload(_ruleset(tmp_path, "", [("pdq", flat.pdq)]))
    assert registry.match(flat) == []


async def test_phash_and_dhash_match_within_their_radius(tmp_path: Path) -> None:
    registry = ListRegistry(None)
    await registry.reload(_ruleset(tmp_path, "", [("phash", HA.phash), ("dhash", HA.dhash)]))
    copy = hash_image(resized_recompressed(A))
    found = {m.kind: m for m in registry.match(copy)}
    assert set(found) == {"phash", "dhash"}
    assert all(m.tier == "review" and m.distance <= 8 for m in found.values())
    assert registry.match(hash_image(G_PNG)) == []


def test_exact_table_finds_every_value_and_nothing_else() -> None:
    import numpy as np

    from bot.lists import ExactTable

    rng = np.random.default_rng(7)
    values = rng.integers(0, 256, size=(5000, 16), dtype=np.uint8)
    table = ExactTable(values)
    for i in rng.integers(0, 5000, size=200):
        row = table.lookup(values[i].tobytes().hex().upper())
        assert row is not None and values[row].tobytes() == values[i].tobytes()
    stored = {v.tobytes() for v in values}
    for v in rng.integers(0, 256, size=(200, 16), dtype=np.uint8):
        assert (table.lookup(v.tobytes().hex()) is not None) == (v.tobytes() in stored)
    assert table.lookup("zz") is None and table.lookup("00") is None
