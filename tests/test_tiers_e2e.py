"""Through the running service: a review-tier match alerts a person, and never acts alone.

An image is in the local bank. An exact re-post is a confident match and the rule hides
it at once; a cropped copy matches only by pHash/dHash (the review tier): the same rule
still alerts, but the forum receives no hide call until a person decides.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from bench.imagegen import make_image
from bot.hashing import hash_image
from tests.test_alerts import FakeDiscourse, World, make_world

RULES = """
[[rule]]
name = "banked"
when = { lists = ["local-bank"] }
severity = "critical"
actions = ["hide"]
room = "staff"
"""


def encoded(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, quality=90) if fmt == "JPEG" else img.save(out, fmt)
    return out.getvalue()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with FakeDiscourse() as forum:
        w = await make_world(tmp_path, forum, rules=RULES)
        yield w
        await w.app.stop()


async def test_review_tier_match_alerts_but_does_not_hide(world: World) -> None:
    picture = make_image(4242, 640, 480)
    original = encoded(picture, "PNG")
    assert world.app.lists is not None
    await world.app.lists.bank_add(hash_image(original), "Alice", "taken down")

    w, h = picture.size
    crop = picture.crop((w * 3 // 100, h * 3 // 100, w - w * 3 // 100, h - h * 3 // 100))
    crop_upload = world.forum.add_upload(encoded(crop, "JPEG"), "jpeg")
    await world.post(f"look ![c|64x64]({crop_upload.short_url})", user_id=21, username="first")
    first = await world.alert(1)
    events = await world.store.events()
    matched = await world.store.event_matches(events[-1]["id"])
    assert matched and {(m["kind"], m["tier"]) for m in matched} <= {
        ("phash", "review"),
        ("dhash", "review"),
    }
    assert "CRITICAL" in first.message.text
    assert world.hides() == [], "a review-tier match must not act by itself"

    # The exact picture is a confident match: the same rule hides it at once.
    exact = world.forum.add_upload(original)
    await world.post(f"again ![o|64x64]({exact.short_url})", user_id=22, username="second")
    await world.alert(2)
    assert len(world.hides()) == 1
