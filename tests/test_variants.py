"""Enrolment variants, query-side hashes, the variant bank and the tier rule."""

from __future__ import annotations

import io
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pdqhash
import pytest
from PIL import Image, ImageOps

from bench.imagegen import encode, make_image
from bench.robust_corpus import EDITS
from bot.hashing import ImageRejected, hash_image, hash_image_and_thumbnail
from bot.model import Author, Event, EventKind, Match, Post
from bot.rules import Conditions, Rule, RuleSet
from bot.tiers import CONFIDENT, REVIEW, decide, may_act, tier_of, verdict
from bot.variants import (
    EnrolmentHashes,
    Luma,
    QueryHashes,
    VariantBank,
    enrolment_hashes,
    hash_for_enrolment,
    hash_for_query,
    lowfreq,
)


def bits(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [make_image(500 + i, 640, 480) for i in range(6)]


@pytest.fixture(scope="module")
def bank(photos: list[Image.Image]) -> VariantBank:
    b = VariantBank()
    for i, img in enumerate(photos):
        base, enrol = hash_for_enrolment(encode(img, "JPEG", quality=90))
        b.add(i, base, enrol)
    return b


def owners(bank: VariantBank, data: bytes) -> dict[int, str]:
    """Best tier per matched original."""
    out: dict[int, str] = {}
    for h in bank.match(hash_for_query(data)):
        if out.get(h.owner) != CONFIDENT:
            out[h.owner] = h.tier
    return out


# --- one decode, same hashes as hash_image ----------------------------------------------


def _exif_rotated(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif.tobytes())


@pytest.mark.parametrize(
    "make",
    [
        lambda img: encode(img, "JPEG", quality=90),
        lambda img: encode(img, "PNG"),
        lambda img: encode(img.convert("CMYK"), "JPEG", quality=90),
        lambda img: encode(img.convert("RGBA"), "WEBP", quality=80),
        _exif_rotated,
        lambda img: encode(
            img.convert("P"), "GIF", save_all=True, append_images=[img.rotate(90).convert("P")]
        ),
        # Small RGB frames are decoded as is: the thumbnail must stay frame 0's.
        lambda img: encode(
            img.resize((320, 240)),
            "WEBP",
            lossless=True,
            save_all=True,
            append_images=[ImageOps.invert(img.resize((320, 240)))],
        ),
    ],
    ids=["jpeg", "png", "cmyk", "webp", "exif-rotated", "animated-gif", "small-animated-webp"],
)
def test_the_thumbnail_handed_out_is_the_one_hash_image_hashed(
    photos: list[Image.Image], make
) -> None:
    data = make(photos[0])
    base, thumb = hash_image_and_thumbnail(data)
    assert base == hash_image(data)
    assert max(thumb.size) <= 576 and thumb.mode == "RGB"
    # The very pixels PDQ was computed from (frame 0, upright), not another decode of them.
    vector, quality = pdqhash.compute(np.ascontiguousarray(np.asarray(thumb)))
    assert np.packbits(vector.astype(np.uint8)).tobytes().hex() == base.pdq
    assert quality == base.pdq_quality
    # Upright: the same way round as the picture, whatever the EXIF said.
    assert (thumb.width > thumb.height) == (base.width > base.height) == (photos[0].width > 480)
    upright = hash_image(encode(photos[0], "PNG"))
    assert bits(base.pdq, upright.pdq) <= 40


@pytest.mark.parametrize(
    "data",
    [b"", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"\xff\xd8\xff\xe0garbage" * 4],
    ids=["empty", "svg", "corrupt-jpeg"],
)
def test_bad_input_is_rejected_with_hash_images_reason(data: bytes) -> None:
    with pytest.raises(ImageRejected) as ours:
        hash_image_and_thumbnail(data)
    with pytest.raises(ImageRejected) as theirs:
        hash_image(data)
    assert ours.value.reason == theirs.value.reason


# --- enrolment variants -----------------------------------------------------------------


def test_enrolment_stores_crop_variants_and_lowfreq_variants(photos: list[Image.Image]) -> None:
    _, thumb = hash_image_and_thumbnail(encode(photos[0], "JPEG", quality=90))
    enrol = enrolment_hashes(thumb)
    assert len(enrol.pdq) > 200 and len(set(enrol.pdq)) == len(enrol.pdq)
    assert len(enrol.lowfreq) > 200
    assert all(len(h) == 64 for h in enrol.pdq) and all(len(h) == 32 for h in enrol.lowfreq)


def test_cropped_copy_is_caught_only_thanks_to_the_variants(photos: list[Image.Image]) -> None:
    img = photos[1]
    w, h = img.size
    cropped = encode(img.crop((12, 20, w - 26, h - 9)), "JPEG", quality=85)  # 2-5% a side
    base, enrol = hash_for_enrolment(encode(img, "JPEG", quality=90))
    alone = VariantBank()
    alone.add(0, base, EnrolmentHashes((), ()))
    with_variants = VariantBank()
    with_variants.add(0, base, enrol)
    assert owners(alone, cropped) == {}
    assert owners(with_variants, cropped) == {0: CONFIDENT}


@pytest.mark.parametrize(
    "edit", ["crop 3%", "mirror", "rotate 90", "jpeg q40", "caption bar", "dark border"]
)
def test_edited_copies_are_caught_in_the_confident_tier(
    bank: VariantBank, photos: list[Image.Image], edit: str
) -> None:
    caught = 0
    for i, img in enumerate(photos):
        copy = EDITS[edit][1](img, random.Random(f"{edit}/{i}"))
        caught += owners(bank, copy).get(i) == CONFIDENT
    assert caught >= len(photos) - 1


@pytest.mark.parametrize("edit", ["crop 10%", "rotate 5"])
def test_harder_edits_are_caught_at_least_for_review(
    bank: VariantBank, photos: list[Image.Image], edit: str
) -> None:
    caught = 0
    for i, img in enumerate(photos):
        copy = EDITS[edit][1](img, random.Random(f"{edit}/{i}"))
        caught += i in owners(bank, copy)
    assert caught >= len(photos) - 1


def test_distinct_images_match_nothing(bank: VariantBank) -> None:
    for seed in range(900, 912):
        assert owners(bank, encode(make_image(seed, 640, 480), "JPEG", quality=85)) == {}


def test_framed_copy_matches_through_its_trimmed_hashes(photos: list[Image.Image]) -> None:
    framed = encode(ImageOps.expand(photos[2], border=40, fill=(5, 5, 5)), "JPEG", quality=85)
    q = hash_for_query(framed)
    assert q.trimmed is not None and q.trimmed_pdq
    original = hash_image(encode(photos[2], "JPEG", quality=90))
    assert bits(q.base.pdq, original.pdq) > 60  # the frame alone moves PDQ far
    assert min(bits(t, original.pdq) for t in q.trimmed_pdq) <= 20


def test_lowfreq_mirror_from_coefficients_equals_hash_of_mirrored_image(
    photos: list[Image.Image],
) -> None:
    img = photos[3]
    as_is, mirrored = lowfreq(Luma(img), flips=2)
    direct = lowfreq(Luma(ImageOps.mirror(img)))[0]
    assert bits(mirrored, direct) <= 4
    assert bits(as_is, direct) > 30


def test_lowfreq_of_a_tiny_image_is_defined() -> None:
    tiny = Image.fromarray(np.arange(12 * 10 * 3, dtype=np.uint8).reshape(10, 12, 3))
    (h,) = lowfreq(Luma(tiny))
    assert len(h) == 32


def test_query_of_an_unframed_image_has_no_trimmed_hashes(photos: list[Image.Image]) -> None:
    q = hash_for_query(encode(photos[4], "JPEG", quality=90))
    assert q.trimmed is None and q.trimmed_pdq == ()
    assert len(q.lowfreq) == 2 and len(q.small_pdq) == 1
    assert isinstance(q, QueryHashes)


# --- tiers: review never acts by itself ---------------------------------------------------


def _event() -> Event:
    author = Author(id="7", username="someone")
    post = Post(id="1", author=author, text="hi")
    return Event(source="forum", delivery_id="d1", kind=EventKind.POST_CREATED, post=post)


RULES = RuleSet(
    rules=(
        Rule(
            name="known-image",
            when=Conditions(lists=("local-bank",)),
            actions=("hide", "delete"),
            alert=True,
        ),
    )
)
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def test_tier_of_kinds_and_distances() -> None:
    assert tier_of("sha256", 0) == CONFIDENT
    assert tier_of("pdq", 31) == CONFIDENT
    assert tier_of("pdq", 32) == REVIEW
    assert tier_of("lowfreq", 0) == REVIEW
    assert tier_of("phash", 0) == REVIEW


def test_review_tier_match_alerts_but_takes_no_forum_action() -> None:
    review = Match(list="local-bank", kind="lowfreq", distance=14, tier=REVIEW)
    assert not may_act(review)
    decision = decide(RULES, _event(), [review], NOW)
    assert decision.fired and decision.alert
    assert decision.actions == ()


def test_confident_match_takes_the_rules_actions() -> None:
    sure = Match(list="local-bank", kind="pdq", distance=12, tier=CONFIDENT)
    review = Match(list="local-bank", kind="lowfreq", distance=14, tier=REVIEW)
    decision = decide(RULES, _event(), [review, sure], NOW)
    assert decision.actions == ("hide", "delete")


def test_review_tier_never_blocks_an_upload() -> None:
    review = Match(list="local-bank", kind="lowfreq", distance=14, tier=REVIEW)
    sure = Match(list="local-bank", kind="sha256", distance=0, tier=CONFIDENT)
    assert verdict("block", review) == "hold"
    assert verdict("hold", review) == "hold"
    assert verdict("allow", review) == "allow"
    assert verdict("block", sure) == "block"


# --- vigil bank add / vigil scan ----------------------------------------------------------


def test_bank_add_then_scan_follow_the_contract(tmp_path, photos: list[Image.Image]) -> None:
    from bot.bank_cli import command
    from tests.conftest import write_config

    config = write_config(tmp_path)
    img = photos[5]
    w, h = img.size
    files = {
        "original.jpg": encode(img, "JPEG", quality=90),
        "cropped.jpg": encode(img.crop((15, 10, w - 10, h - 20)), "JPEG", quality=80),
        "crop10.jpg": encode(img.crop((70, 40, w - 55, h - 50)), "JPEG", quality=80),
        "other.jpg": encode(make_image(4242, 640, 480), "JPEG", quality=85),
        "broken.jpg": b"\xff\xd8\xff\xe0 not a jpeg",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    out, err = io.StringIO(), io.StringIO()
    status = command(["bank", "add", "-c", str(config), str(tmp_path / "original.jpg")], out, err)
    assert status == 0, err.getvalue()
    (added,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert added["path"].endswith("original.jpg") and added["added"] > 200

    names = ["original.jpg", "cropped.jpg", "crop10.jpg", "other.jpg", "broken.jpg"]
    out = io.StringIO()
    status = command(["scan", "-c", str(config), *(str(tmp_path / n) for n in names)], out, err)
    assert status == 1  # the broken file
    lines = {Path(d["path"]).name: d for d in map(json.loads, out.getvalue().splitlines())}
    assert list(lines) == names

    original = lines["original.jpg"]
    assert original["verdict"] == "block"
    assert {"list": "local-bank", "kind": "sha256", "distance": 0, "tier": "confident"} in original[
        "matches"
    ]
    assert set(lines["original.jpg"]) == {"path", "verdict", "matches"}
    cropped = lines["cropped.jpg"]
    assert cropped["verdict"] == "block"
    assert any(m["kind"] == "pdq" and m["tier"] == "confident" for m in cropped["matches"])
    crop10 = lines["crop10.jpg"]
    assert crop10["verdict"] == "hold"  # found, but only a person may act on it
    assert [m["tier"] for m in crop10["matches"]] == ["review"]
    assert lines["other.jpg"] == {
        "path": str(tmp_path / "other.jpg"),
        "verdict": "allow",
        "matches": [],
    }
    assert set(lines["broken.jpg"]) == {"path", "error"}


# --- the registry knows lowfreq; per-list tiers; query hashes kept in media_results ------


async def test_bank_holds_lowfreq_and_matches_it_only_in_the_review_tier(
    tmp_path, photos: list[Image.Image]
) -> None:
    from bot.lists import ListRegistry
    from bot.store import Store

    store = await Store.open(tmp_path / "v.db")
    try:
        registry = ListRegistry(None, store)
        await registry.load_bank()
        base, enrol = hash_for_enrolment(encode(photos[1], "JPEG", quality=90))
        added = await registry.bank_enrol(base, enrol, "Alice", "taken down")
        assert added == 6 + len(enrol.pdq) + len(enrol.lowfreq)
        kinds = {k for k, _ in await store.bank_entries()}
        assert "lowfreq" in kinds
        with pytest.raises(ValueError, match="lowfreq needs 32 hex digits"):
            await registry.bank_add_entries([("lowfreq", "ab" * 8)], "Alice", "bad")

        # A fresh registry reads the lowfreq rows back and indexes them.
        again = ListRegistry(None, store)
        await again.load_bank()
        w, h = photos[1].size
        wide = encode(photos[1].crop((64, 48, w - 64, h - 48)), "JPEG", quality=85)  # 10%
        result = again.match_query(hash_for_query(wide), media_index=2)
        assert [(m.kind, m.tier, m.media_index) for m in result.matches] == [("lowfreq", REVIEW, 2)]
        assert again.match_image(hash_for_query(wide).base).matches == ()  # plain: nothing
        # The original itself: confident matches, and no lowfreq noise beside them.
        same = again.match_query(hash_for_query(encode(photos[1], "JPEG", quality=90)))
        assert "lowfreq" not in {m.kind for m in same.matches}
        assert {m.tier for m in same.matches if m.kind == "pdq"} == {CONFIDENT}
    finally:
        await store.close()


def test_a_typed_lowfreq_entry_imports_and_bare_32_hex_stays_md5(tmp_path) -> None:
    from bot.hashlists import ListFormat, import_list

    f = tmp_path / "l.txt"
    f.write_text(f"lowfreq {'ab' * 16}\n{'cd' * 16}\n")
    r = import_list(f, ListFormat.PLAIN)
    assert {(x.kind, x.value) for x in r.records} == {("lowfreq", "ab" * 16), ("md5", "cd" * 16)}
    assert r.problems == []


def _rules(tmp_path, body: str):
    from bot.app import load_everything
    from tests.conftest import write_config

    (tmp_path / "lists").mkdir(parents=True, exist_ok=True)
    (tmp_path / "lists" / "l.txt").write_text("")
    return load_everything(write_config(tmp_path, rules=body))


LIST = '[[list]]\nname = "l"\nfile = "lists/l.txt"\n'


def test_list_tiers_default_to_both_and_are_checked(tmp_path) -> None:
    loaded, _ = _rules(tmp_path / "a", LIST)
    assert loaded is not None and loaded.rules.lists[0].tiers == (CONFIDENT, REVIEW)

    loaded, _ = _rules(tmp_path / "b", LIST + 'tiers = ["confident"]\n')
    assert loaded is not None and loaded.rules.lists[0].tiers == (CONFIDENT,)

    for bad, message in (("[]", "empty"), ('["sure"]', "'sure' is not one of")):
        loaded, problems = _rules(tmp_path / f"c{len(bad)}", LIST + f"tiers = {bad}\n")
        assert loaded is None
        assert any(".tiers" in p.key and message in p.message for p in problems.errors)


def test_a_review_only_list_warns_that_it_never_acts_or_blocks(tmp_path) -> None:
    rule = '[[rule]]\nname = "r"\nwhen = { lists = ["l"] }\nactions = ["hide"]\nroom = "staff"\n'
    loaded, problems = _rules(tmp_path, LIST + 'tiers = ["review"]\n' + rule)
    assert loaded is not None
    said = [p.message for p in problems.warnings]
    assert any('verdict "block" acts as "hold"' in m for m in said)
    assert any("will alert for it but not act" in m for m in said)


async def test_list_with_confident_tier_only_drops_review_matches(
    tmp_path, photos: list[Image.Image]
) -> None:
    from bot.lists import ListRegistry
    from bot.model import Severity
    from bot.rules import DEFAULT_MAX_DISTANCE, ListSpec

    original = hash_image(encode(photos[2], "PNG"))
    (tmp_path / "l.txt").write_text(f"pdq {original.pdq}\nphash {original.phash}\n")

    def spec(name: str, tiers: tuple[str, ...], allow: bool = False) -> ListSpec:
        return ListSpec(
            name=name,
            file=tmp_path / "l.txt",
            format="plain",
            kinds=("pdq", "phash"),
            max_distance=dict(DEFAULT_MAX_DISTANCE),
            severity=Severity.HIGH,
            category=None,
            allow=allow,
            tiers=tiers,
        )

    registry = ListRegistry(None)
    await registry.reload(
        RuleSet(lists=(spec("both", (CONFIDENT, REVIEW)), spec("sure", (CONFIDENT,))))
    )
    w, h = photos[2].size
    crop = hash_image(encode(photos[2].crop((19, 14, w - 19, h - 14)), "JPEG", quality=90))
    assert {(m.list, m.kind, m.tier) for m in registry.match(crop)} == {("both", "phash", REVIEW)}
    assert {(m.list, m.kind) for m in registry.match(original)} >= {
        ("both", "pdq"),
        ("sure", "pdq"),
    }
    # An allow-list clears only on the tiers it names.
    await registry.reload(
        RuleSet(lists=(spec("both", (CONFIDENT, REVIEW)), spec("ok", (CONFIDENT,), True)))
    )
    assert registry.match_image(crop).allowed_by is None
    assert registry.match_image(original).allowed_by == "ok"


def test_query_hashes_round_trip_beside_the_image_hashes(photos: list[Image.Image]) -> None:
    from bot.scanning import hashes_from_json, hashes_to_json, query_from_json

    framed = encode(ImageOps.expand(photos[3], border=30, fill=(0, 0, 0)), "JPEG", quality=85)
    q = hash_for_query(framed)
    text = hashes_to_json(q.base, q)
    assert hashes_from_json(text) == q.base
    assert query_from_json(text) == q and q.trimmed is not None
    assert query_from_json(hashes_to_json(q.base)) is None  # rows from before: no query
