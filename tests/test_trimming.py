"""Border, letterbox and caption-band trimming on generated pictures."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont, ImageOps

from bench.imagegen import encode, make_image
from bot.trimming import Box, content_box, trim


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return make_image(21, 480, 360)


def jpeg_round_trip(img: Image.Image, quality: int = 75) -> np.ndarray:
    """As a re-post arrives: JPEG-compressed, which blurs flat bands and rings at edges."""
    return np.asarray(Image.open(io.BytesIO(encode(img, "JPEG", quality=quality))).convert("RGB"))


def close_to(box: Box | None, expected: tuple[int, int, int, int], slack: int = 3) -> bool:
    return box is not None and all(
        abs(a - b) <= slack
        for a, b in zip((box.left, box.top, box.right, box.bottom), expected, strict=True)
    )


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (12, 40, 90)])
def test_uniform_border_on_every_side_is_cut(
    photo: Image.Image, colour: tuple[int, int, int]
) -> None:
    framed = ImageOps.expand(photo, border=30, fill=colour)
    box = content_box(jpeg_round_trip(framed))
    assert close_to(box, (30, 30, 510, 390))


def test_letterbox_bars_are_cut(photo: Image.Image) -> None:
    # A 4:3 picture shown in a 16:9 player: black bars left and right only.
    boxed = Image.new("RGB", (640, 360), (0, 0, 0))
    boxed.paste(photo, (80, 0))
    box = content_box(jpeg_round_trip(boxed))
    assert close_to(box, (80, 0, 560, 360))


def test_uneven_border_is_cut_side_by_side(photo: Image.Image) -> None:
    framed = ImageOps.expand(photo, border=(10, 40, 25, 5), fill=(20, 20, 20))
    box = content_box(jpeg_round_trip(framed))
    assert close_to(box, (10, 40, 490, 400))


@pytest.mark.parametrize("where", ["top", "bottom"])
def test_caption_band_with_text_is_cut(photo: Image.Image, where: str) -> None:
    band = 70
    meme = Image.new("RGB", (480, 360 + band), (255, 255, 255))
    meme.paste(photo, (0, band if where == "top" else 0))
    y = 20 if where == "top" else 360 + 20
    font = ImageFont.load_default(size=30)
    ImageDraw.Draw(meme).text((40, y), "when the mods are asleep", font=font, fill=(0, 0, 0))
    box = content_box(jpeg_round_trip(meme))
    expected = (0, band, 480, 360 + band) if where == "top" else (0, 0, 480, 360)
    assert close_to(box, expected)


def test_caption_inside_a_border_is_cut_too(photo: Image.Image) -> None:
    meme = Image.new("RGB", (480, 430), (0, 0, 0))
    meme.paste(photo, (0, 70))
    ImageDraw.Draw(meme).text(
        (30, 20), "NOBODY:", font=ImageFont.load_default(size=28), fill=(255, 255, 255)
    )
    framed = ImageOps.expand(meme, border=20, fill=(128, 128, 128))
    box = content_box(jpeg_round_trip(framed))
    assert close_to(box, (20, 90, 500, 450))


@pytest.mark.parametrize("seed", range(8))
def test_a_genuine_picture_is_not_trimmed(seed: int) -> None:
    img = make_image(100 + seed, 480, 360)
    assert content_box(jpeg_round_trip(img, 40)) is None


def test_flat_gradient_sky_is_not_a_border() -> None:
    # A smooth sky across the top third: flat-ish, but not a uniform band.
    img = make_image(7, 480, 360)
    sky = np.linspace(90, 200, 480, dtype=np.float32)[None, :, None] * np.ones((120, 1, 3))
    arr = np.asarray(img).copy()
    arr[:120] = sky.astype(np.uint8)
    assert content_box(jpeg_round_trip(Image.fromarray(arr))) is None


def test_nothing_is_left_when_the_frame_is_most_of_the_image(photo: Image.Image) -> None:
    tiny = photo.resize((40, 30))
    framed = ImageOps.expand(tiny, border=150, fill=(0, 0, 0))
    # What is left would be under a quarter of each side: not taken for the picture.
    assert content_box(np.asarray(framed)) is None


def test_plain_image_has_no_content_box() -> None:
    assert content_box(np.full((100, 100, 3), 255, dtype=np.uint8)) is None


def test_trim_returns_the_cut_picture(photo: Image.Image) -> None:
    framed = ImageOps.expand(photo, border=25, fill=(0, 0, 0))
    cut = trim(framed)
    assert cut is not None and abs(cut.size[0] - 480) <= 2 and abs(cut.size[1] - 360) <= 2
    assert trim(photo) is None
