"""A varied corpus of generated photo-like images and the edits re-posters make to them.

``bench.imagegen.make_image`` gives one style (lit scene, shapes, text, textures). An
evaluation of near-duplicate matching also needs the images that fool matchers: flat
screenshots with lines of text, portraits (one big subject on a soft background), dark
low-contrast scenes, images that already carry a border, and *siblings* (two images
sharing their background and layout, differing in the objects) as hard negatives.
Everything is deterministic in the seed; nothing here is a real photograph.

``EDITS`` maps an edit's name to a function ``(image, rng) -> (bytes, tier)`` where the
tier says which target the edit is held to ("common" or "harder", issue 9).
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from bench.imagegen import _texture, encode, make_image

_LINES = (
    "Meeting moved to Thursday",
    "Who else saw this?",
    "lol no way",
    "Reply to thread #4411",
    "Posted by north_river",
    "Sale ends tonight",
    "Click here for more",
    "Ask the moderators",
)


def _screenshot(seed: int, width: int, height: int) -> Image.Image:
    """A flat UI: solid background, a header bar, rows of text, an avatar or two."""
    prng = random.Random(seed)
    bg = tuple(prng.choice((245, 250, 30, 40)) + prng.randint(-5, 5) for _ in range(3))
    img = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(img)
    accent = tuple(prng.randint(0, 255) for _ in range(3))
    draw.rectangle((0, 0, width, int(height * prng.uniform(0.06, 0.12))), fill=accent)
    y = int(height * 0.15)
    size = max(10, int(height * prng.uniform(0.035, 0.06)))
    font = ImageFont.load_default(size=size)
    ink = (20, 20, 20) if sum(bg) > 380 else (230, 230, 230)
    while y < height - size * 2:
        if prng.random() < 0.25:
            r = size * 1.4
            draw.ellipse((width * 0.04, y, width * 0.04 + r, y + r), fill=accent)
        words = " ".join(prng.choice(_LINES) for _ in range(prng.randint(1, 2)))
        draw.text((width * 0.04 + size * 2, y), words, font=font, fill=ink)
        y += int(size * prng.uniform(1.6, 2.6))
    if prng.random() < 0.5:
        # an embedded photo, as in a post with a picture
        pw, ph = int(width * 0.45), int(height * 0.35)
        img.paste(make_image(seed + 10_000, pw, ph), (int(width * 0.5), int(height * 0.5)))
    return img


def _portrait(seed: int, width: int, height: int) -> Image.Image:
    """One big soft subject in the middle of a smooth background (a face-like layout)."""
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    grid = rng.integers(60, 200, size=(2, 2, 3), dtype=np.uint8)
    img = Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    cx, cy = width * prng.uniform(0.4, 0.6), height * prng.uniform(0.4, 0.6)
    r = min(width, height) * prng.uniform(0.2, 0.35)
    skin = tuple(prng.randint(90, 240) for _ in range(3))
    # Background detail (a shelf, a window), then clothes with a fabric pattern and hair:
    # real portraits are full of texture, which is what PDQ's quality measures.
    for _ in range(prng.randint(2, 5)):
        bx, by = prng.uniform(0, width), prng.uniform(0, height)
        bs = min(width, height) * prng.uniform(0.05, 0.2)
        draw.rectangle(
            (bx - bs, by - bs * 0.6, bx + bs, by + bs * 0.6),
            fill=tuple(prng.randint(0, 255) for _ in range(3)),
        )
    draw.ellipse((cx - r * 0.8, cy - r, cx + r * 0.8, cy + r), fill=skin)
    bw, bh = int(r * 3), max(8, int(height - (cy + r * 0.9)))
    fabric = _texture(rng, bw, bh)
    img.paste(fabric, (int(cx - r * 1.5), int(cy + r * 0.9)))
    hair = tuple(prng.randint(0, 120) for _ in range(3))
    for _ in range(60):
        a = prng.uniform(math.pi * 1.05, math.pi * 1.95)
        x0, y0 = cx + r * 0.75 * math.cos(a), cy + r * 0.95 * math.sin(a)
        draw.line(
            (x0, y0, x0 + prng.uniform(-r, r) * 0.3, y0 + r * prng.uniform(0.2, 0.8)),
            fill=hair,
            width=2,
        )
    for dx in (-0.3, 0.3):  # eyes
        ex, ey = cx + dx * r, cy - 0.15 * r
        draw.ellipse((ex - r * 0.1, ey - r * 0.06, ex + r * 0.1, ey + r * 0.06), fill=(30, 30, 30))
    draw.arc((cx - r * 0.35, cy + 0.2 * r, cx + r * 0.35, cy + 0.55 * r), 20, 160, (90, 20, 20), 3)
    img = img.filter(ImageFilter.GaussianBlur(radius=max(1.0, min(width, height) / 400)))
    grain = rng.normal(0.0, 3.0, size=(height, width, 1)).astype(np.float32)
    return Image.fromarray(
        np.clip(np.asarray(img, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    )


def _dark(seed: int, width: int, height: int) -> Image.Image:
    """A night scene: the generator's image at low brightness and contrast."""
    img = make_image(seed, width, height)
    img = ImageEnhance.Contrast(img).enhance(0.75)
    return ImageEnhance.Brightness(img).enhance(0.55)


def _framed(seed: int, width: int, height: int) -> Image.Image:
    """An original that already has a uniform frame (white or black): trimming must cope."""
    prng = random.Random(seed)
    pad = int(min(width, height) * prng.uniform(0.03, 0.08))
    inner = make_image(seed, width - 2 * pad, height - 2 * pad)
    colour = (255, 255, 255) if prng.random() < 0.5 else (0, 0, 0)
    return ImageOps.expand(inner, border=pad, fill=colour)


def _sibling(seed: int, width: int, height: int) -> Image.Image:
    """Same lighting and first objects as ``make_image(seed)``, different foreground.

    A hard negative: two pictures of the same scene with different things in it.
    """
    base = make_image(seed, width, height)
    prng = random.Random(seed * 7919 + 1)
    draw = ImageDraw.Draw(base)
    scale = min(width, height)
    for _ in range(prng.randint(3, 6)):
        size = scale * prng.uniform(0.08, 0.25)
        cx, cy = prng.uniform(0, width), prng.uniform(0, height)
        colour = tuple(prng.randint(0, 255) for _ in range(3))
        draw.ellipse((cx - size, cy - size, cx + size, cy + size), fill=colour)
    return base.filter(ImageFilter.GaussianBlur(radius=0.8))


STYLES: dict[str, Callable[[int, int, int], Image.Image]] = {
    "scene": make_image,
    "screenshot": _screenshot,
    "portrait": _portrait,
    "dark": _dark,
    "framed": _framed,
}
# How often each style appears: mostly scenes, as on a forum.
_STYLE_CYCLE = ("scene", "scene", "scene", "screenshot", "portrait", "scene", "dark", "framed")
_SIZES = ((640, 480), (800, 600), (1024, 768), (600, 800), (1200, 675), (900, 900), (480, 640))


def corpus_image(index: int, seed: int = 0) -> tuple[str, Image.Image]:
    """The ``index``-th image of the corpus: (style name, RGB image)."""
    style = _STYLE_CYCLE[index % len(_STYLE_CYCLE)]
    w, h = _SIZES[(index // len(_STYLE_CYCLE) + index) % len(_SIZES)]
    return style, STYLES[style](seed * 1_000_003 + index, w, h)


def sibling_of(index: int, seed: int = 0) -> Image.Image:
    """A hard negative for scene image ``index``: same background, other objects."""
    style, img = corpus_image(index, seed)
    w, h = img.size
    if style != "scene":
        raise ValueError("siblings exist for scene images only")
    return _sibling(seed * 1_000_003 + index, w, h)


# --- edits ----------------------------------------------------------------------------

Edit = Callable[[Image.Image, random.Random], bytes]


def _jpeg(img: Image.Image, quality: int = 85) -> bytes:
    return encode(img, "JPEG", quality=quality)


def _crop(img: Image.Image, rng: random.Random, per_side: float) -> Image.Image:
    """Cut about ``per_side`` of each dimension from each side, unevenly (as people crop)."""
    w, h = img.size
    total_x, total_y = 2 * per_side * w, 2 * per_side * h
    left = total_x * rng.uniform(0.3, 0.7)
    top = total_y * rng.uniform(0.3, 0.7)
    return img.crop(
        (round(left), round(top), round(w - (total_x - left)), round(h - (total_y - top)))
    )


def _caption(img: Image.Image, rng: random.Random) -> Image.Image:
    """A meme caption: a white or black band with text, above or below the picture."""
    w, h = img.size
    band = int(h * rng.uniform(0.12, 0.22))
    white = rng.random() < 0.6
    bg, ink = ((255, 255, 255), (0, 0, 0)) if white else ((0, 0, 0), (255, 255, 255))
    out = Image.new("RGB", (w, h + band), bg)
    top = rng.random() < 0.6
    out.paste(img, (0, band if top else 0))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(10, int(band * 0.4)))
    text = rng.choice(("when the mods are asleep", "NOBODY:", "me at 3am", "this is fine"))
    y = band * 0.3 if top else h + band * 0.3
    draw.text((w * rng.uniform(0.03, 0.2), y), text, font=font, fill=ink)
    return out


def _border(img: Image.Image, rng: random.Random) -> Image.Image:
    """A dark frame, 4-10% of the shorter side, not quite black."""
    pad = int(min(img.size) * rng.uniform(0.04, 0.10))
    shade = rng.randint(0, 30)
    return ImageOps.expand(img, border=pad, fill=(shade, shade, shade))


def _rotate5(img: Image.Image, rng: random.Random) -> Image.Image:
    """5 degrees either way; half with the black corners kept, half cropped to fill."""
    angle = 5.0 if rng.random() < 0.5 else -5.0
    if rng.random() < 0.5:
        return img.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=(0, 0, 0))
    w, h = img.size
    rotated = img.rotate(angle, Image.Resampling.BICUBIC, expand=False)
    # the largest centred rectangle of the same aspect with no corner fill
    a = math.radians(abs(angle))
    k = 1.0 / (math.cos(a) + math.sin(a) * max(w / h, h / w))
    cw, ch = w * k, h * k
    return rotated.crop(((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2))


def _rotate(img: Image.Image, rng: random.Random, degrees: float) -> Image.Image:
    """Rotate by ``degrees`` either way, black corners kept."""
    angle = degrees if rng.random() < 0.5 else -degrees
    return img.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=(0, 0, 0))


def _overlay_caption(img: Image.Image, rng: random.Random) -> Image.Image:
    """A caption drawn *over* the bottom of the picture on a semi-opaque dark band."""
    out = img.convert("RGBA")
    w, h = out.size
    band = int(h * rng.uniform(0.1, 0.18))
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle((0, h - band, w, h), fill=(0, 0, 0, 170))
    font = ImageFont.load_default(size=max(10, int(band * 0.45)))
    draw.text((w * 0.05, h - band * 0.8), "posted again lol", font=font, fill=(255, 255, 255, 255))
    return Image.alpha_composite(out, layer).convert("RGB")


def _scaled(img: Image.Image, f: float) -> Image.Image:
    w, h = img.size
    return img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.Resampling.LANCZOS)


EDITS: dict[str, tuple[str, Edit]] = {
    "same file": ("common", lambda img, rng: b""),  # the original bytes, filled in by the bench
    "jpeg q40": ("common", lambda img, rng: _jpeg(img, 40)),
    "half size": ("common", lambda img, rng: _jpeg(_scaled(img, 0.5))),
    "quarter size": ("common", lambda img, rng: _jpeg(_scaled(img, 0.25))),
    "crop 3%": ("common", lambda img, rng: _jpeg(_crop(img, rng, 0.03))),
    "mirror": ("common", lambda img, rng: _jpeg(ImageOps.mirror(img))),
    "rotate 90": (
        "common",
        lambda img, rng: _jpeg(
            img.transpose(rng.choice((Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270)))
        ),
    ),
    "grayscale": ("common", lambda img, rng: _jpeg(ImageOps.grayscale(img).convert("RGB"))),
    "brighter 20%": ("common", lambda img, rng: _jpeg(ImageEnhance.Brightness(img).enhance(1.2))),
    "slight blur": ("common", lambda img, rng: _jpeg(img.filter(ImageFilter.GaussianBlur(1.5)))),
    "crop 10%": ("harder", lambda img, rng: _jpeg(_crop(img, rng, 0.10))),
    "caption bar": ("harder", lambda img, rng: _jpeg(_caption(img, rng))),
    "dark border": ("harder", lambda img, rng: _jpeg(_border(img, rng))),
    "rotate 5": ("harder", lambda img, rng: _jpeg(_rotate5(img, rng))),
}


# Edits with no target, off the grids the enrolment uses: how far the design generalises.
EXTRA_EDITS: dict[str, tuple[str, Edit]] = {
    "crop 6%": ("extra", lambda img, rng: _jpeg(_crop(img, rng, 0.06))),
    "crop 15%": ("extra", lambda img, rng: _jpeg(_crop(img, rng, 0.15))),
    "rotate 3": ("extra", lambda img, rng: _jpeg(_rotate(img, rng, 3.0))),
    "rotate 8": ("extra", lambda img, rng: _jpeg(_rotate(img, rng, 8.0))),
    "mirror + crop 3%": ("extra", lambda img, rng: _jpeg(ImageOps.mirror(_crop(img, rng, 0.03)))),
    "overlay caption": ("extra", lambda img, rng: _jpeg(_overlay_caption(img, rng))),
    "border + half size": ("extra", lambda img, rng: _jpeg(_scaled(_border(img, rng), 0.5))),
}


def original_bytes(img: Image.Image) -> bytes:
    """How an original is stored and enrolled: JPEG quality 90."""
    return _jpeg(img, 90)


def decode(data: bytes) -> Image.Image:
    """Bytes back to an RGB image (for chaining edits in tests)."""
    return Image.open(io.BytesIO(data)).convert("RGB")
