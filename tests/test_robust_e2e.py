"""Edited copies through the running service: webhook in, pipeline, rules, forum calls out.

A moderator takes a post down; Vigil fetches its image again and banks the enrolment
variants. A copy cropped by 3-4.5% a side is then a *confident* match (a crop variant's
PDQ) and the rule hides it at once; a 10% crop or a 5 degree turn is only a *review*
match (lowfreq): the rule alerts a person and the forum gets no call. A caption-bar copy
is found through trimming; a list declared ``tiers = ["confident"]`` drops review
matches; ``/v1/check`` matches the same query hashes. Images are generated, never real.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from PIL import Image, ImageFile

from bench.imagegen import encode, make_image
from bench.robust_corpus import EDITS
from bot.hashing import hash_image
from bot.scanning import query_from_json
from bot.variants import hash_for_enrolment
from tests.test_alerts import ALICE, FakeDiscourse, World, make_world, until

BANK_RULES = """
[[rule]]
name = "reported"
when = { events = ["post_created"], text_matches = "report me" }
severity = "high"
room = "staff"

[[rule]]
name = "banked"
when = { lists = ["local-bank"] }
severity = "critical"
actions = ["hide"]
room = "staff"
"""
ENROLMENT_DEADLINE = 60.0  # fetching again and hashing ~650 variants, on a loaded machine


def bits(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def crop(img: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = img.size
    return img.crop((round(w * left), round(h * top), w - round(w * right), h - round(h * bottom)))


@pytest.fixture(autouse=True)
def strict_pillow() -> None:
    """Undo what importing synapse (the Matrix tests' harness) does to Pillow globally."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False


@pytest.fixture
async def forum() -> AsyncIterator[FakeDiscourse]:
    async with FakeDiscourse() as f:
        yield f


@pytest.fixture
async def world(tmp_path: Path, forum: FakeDiscourse) -> AsyncIterator[World]:
    w = await make_world(tmp_path, forum, rules=BANK_RULES)
    yield w
    await w.app.stop()


async def bank_kinds(world: World) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind, _value in await world.store.bank_entries():
        counts[kind] = counts.get(kind, 0) + 1
    return counts


async def last_matches(world: World) -> set[tuple[str, str, str]]:
    events = await world.store.events()
    rows = await world.store.event_matches(events[-1]["id"])
    return {(m["list"], m["kind"], m["tier"]) for m in rows}


def hidden(world: World) -> list[int]:
    return [c.json["id"] for c in world.hides() if c.json]


async def test_takedown_enrols_variants_then_crops_are_caught_in_the_right_tier(
    world: World,
) -> None:
    picture = make_image(4242, 640, 480)
    original = world.forum.add_upload(encode(picture, "PNG"))
    first = await world.post(f"report me ![o|64x64]({original.short_url})", user_id=11)
    alert = await world.alert(1)
    assert await bank_kinds(world) == {}

    # The takedown hides the post and banks the image: its scan-time hashes at once, then
    # the variants of the original, fetched again from the forum.
    await world.chat.react_as(ALICE, alert.id, "✅")
    await until(lambda: first in hidden(world), "the takedown's hide")

    async def enrolled() -> bool:
        return (await bank_kinds(world)).get("lowfreq", 0) > 200

    await until(enrolled, "the enrolment variants in the bank", ENROLMENT_DEADLINE)
    kinds = await bank_kinds(world)
    assert kinds["pdq"] > 200 and kinds["sha256"] == 1
    fetches = [p for p in world.forum.upload_requests if original.sha1 in p]
    assert len(fetches) == 2  # scanned once, fetched again once for the enrolment

    # A 3-4.5% crop: far from the original's PDQ, near a crop variant. Confident: hidden.
    cropped = crop(picture, 0.04, 0.03, 0.035, 0.045)
    assert (
        bits(
            hash_image(encode(cropped, "JPEG", quality=85)).pdq,
            hash_image(encode(picture, "PNG")).pdq,
        )
        > 31
    )
    up = world.forum.add_upload(encode(cropped, "JPEG", quality=85), "jpeg")
    post = await world.post(f"nice ![c|64x64]({up.short_url})", user_id=12)
    second = await world.alert(2)
    assert ("local-bank", "pdq", "confident") in await last_matches(world)
    assert "CRITICAL" in second.message.text
    assert post in hidden(world)

    # A 10% crop and a 5 degree turn: lowfreq only, review tier. Alerted, not hidden.
    for n, edit in enumerate(["crop 10%", "rotate 5"], start=3):
        data = EDITS[edit][1](picture, random.Random(f"{edit}/e2e"))
        up = world.forum.add_upload(data, "jpeg")
        post = await world.post(f"look ![c|64x64]({up.short_url})", user_id=10 + n)
        review = await world.alert(n)
        matched = await last_matches(world)
        assert ("local-bank", "lowfreq", "review") in matched, edit
        assert all(tier == "review" for _l, _k, tier in matched), edit
        assert "CRITICAL" in review.message.text
        assert post not in hidden(world), f"{edit}: a review-tier match must not act by itself"


async def test_takedown_without_the_original_banks_the_scan_time_hashes_only(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.lists")
    gone = world.forum.add_upload(encode(make_image(11, 480, 360), "PNG"))
    swapped = world.forum.add_upload(encode(make_image(12, 480, 360), "PNG"))
    post = await world.post(
        f"report me ![a|64x64]({gone.short_url}) ![b|64x64]({swapped.short_url})", user_id=11
    )
    alert = await world.alert(1)
    # The forum no longer serves one image, and serves other bytes under the other's URL.
    del world.forum.uploads[gone.path]
    world.forum.uploads[swapped.path] = (encode(make_image(13, 480, 360), "PNG"), "image/png")

    await world.chat.react_as(ALICE, alert.id, "✅")
    await until(lambda: post in hidden(world), "the takedown's hide")

    await until(
        lambda: (
            "now serves a different file" in caplog.text and "original not available" in caplog.text
        ),
        "the attempts to fetch the originals again",
        ENROLMENT_DEADLINE,
    )
    # Both images banked by what the scan saw (sha256, sha1, md5, phash, dhash, pdq each);
    # no variant of the bytes the forum serves now.
    kinds = await bank_kinds(world)
    assert kinds == {k: 2 for k in ("sha256", "sha1", "md5", "phash", "dhash", "pdq")}


async def test_caption_bar_copy_is_caught_through_trimming_and_reposts_reuse_the_hashes(
    world: World,
) -> None:
    picture = make_image(77, 640, 480)
    original = encode(picture, "PNG")
    assert world.app.lists is not None
    # Only the original's own hashes: no variant helps here.
    await world.app.lists.bank_add(hash_image(original), "Alice", "taken down")

    captioned = EDITS["caption bar"][1](picture, random.Random(7))
    assert bits(hash_image(captioned).pdq, hash_image(original).pdq) > 31  # the band moves PDQ
    up = world.forum.add_upload(captioned, "jpeg")
    post = await world.post(f"lol ![c|64x64]({up.short_url})", user_id=21)
    await world.alert(1)
    assert ("local-bank", "pdq", "confident") in await last_matches(world)
    assert post in hidden(world)

    # The same upload again: not fetched again, matched from the stored query hashes.
    again = await world.post(f"lol ![c|64x64]({up.short_url})", user_id=22)
    await world.alert(2)
    assert sum(up.sha1 in p for p in world.forum.upload_requests) == 1
    assert ("local-bank", "pdq", "confident") in await last_matches(world)
    assert again in hidden(world)
    events = await world.store.events()
    rows = [(await world.store.media_results(e["id"]))[0] for e in events[-2:]]
    queries = [query_from_json(r["hashes"]) for r in rows]
    assert queries[0] is not None and queries[0] == queries[1]
    assert queries[0].trimmed is not None and queries[0].lowfreq


LIST_RULES = """
[[list]]
name = "loose"
file = "lists/known.txt"
kinds = ["pdq", "phash"]

[[list]]
name = "strict"
file = "lists/known.txt"
kinds = ["pdq", "phash"]
tiers = ["confident"]

[[rule]]
name = "listed"
when = { lists = ["loose", "strict"] }
severity = "critical"
room = "staff"
"""


async def test_a_list_with_only_the_confident_tier_drops_review_matches(
    tmp_path: Path, forum: FakeDiscourse
) -> None:
    picture = make_image(1234, 640, 480)
    known = hash_image(encode(picture, "PNG"))
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "known.txt").write_text(f"pdq {known.pdq}\nphash {known.phash}\n")
    w = await make_world(tmp_path, forum, rules=LIST_RULES)
    try:
        # A 3% crop: pHash stays within 8 bits (review), PDQ does not.
        cropped = encode(crop(picture, 0.03, 0.03, 0.03, 0.03), "JPEG", quality=90)
        up = w.forum.add_upload(cropped, "jpeg")
        await w.post(f"a ![c|64x64]({up.short_url})", user_id=31)
        await w.alert(1)
        assert await last_matches(w) == {("loose", "phash", "review")}

        # The picture itself: both lists, confident.
        up = w.forum.add_upload(encode(picture, "JPEG", quality=90), "jpeg")
        await w.post(f"b ![c|64x64]({up.short_url})", user_id=32)
        await w.alert(2)
        matched = await last_matches(w)
        assert {("loose", "pdq", "confident"), ("strict", "pdq", "confident")} <= matched
        assert ("strict", "phash", "review") not in matched
    finally:
        await w.app.stop()


async def test_check_api_blocks_a_crop_of_an_enrolled_image_and_holds_a_wider_one(
    tmp_path: Path, forum: FakeDiscourse
) -> None:
    from tests.test_check_api import start, upload

    picture = make_image(9, 640, 480)
    app = await start(tmp_path, forum)
    try:
        assert app.lists is not None
        base, enrol = hash_for_enrolment(encode(picture, "PNG"))
        await app.lists.bank_enrol(base, enrol, "Alice", "taken down")
        async with aiohttp.ClientSession() as http:
            small = encode(crop(picture, 0.035, 0.04, 0.03, 0.045), "JPEG", quality=85)
            status, body = await upload(http, app, small)
            assert status == 200 and body["verdict"] == "block"
            assert {"list": "local-bank", "kind": "pdq", "tier": "confident"}.items() <= next(
                m for m in body["matches"] if m["kind"] == "pdq"
            ).items()
            wide = encode(crop(picture, 0.1, 0.1, 0.1, 0.1), "JPEG", quality=85)
            status, body = await upload(http, app, wide)
            assert status == 200 and body["verdict"] == "hold"
            assert [(m["kind"], m["tier"]) for m in body["matches"]] == [("lowfreq", "review")]
    finally:
        await app.stop()
