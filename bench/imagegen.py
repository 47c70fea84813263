"""Deterministic photo-like test images: gradients, shapes, text and textures.

White noise is the wrong test input for perceptual hashes (it has no low frequencies,
PDQ rates it quality 0, and it compresses like nothing real). These images have smooth
lighting, hard-edged objects, lettering, a few textured patches and a light sensor grain,
so hashes, JPEG sizes and decode times behave like they do on photographs. The same seed
always gives the same pixels; tests and benchmarks share the generator.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

_WORDS = ("VIGIL", "forum", "meetup", "2024", "hello", "SALE", "cat", "river", "photo", "north")


def _smooth_field(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A low-frequency colour field: a tiny random grid upscaled bicubically (lighting)."""
    grid = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    small = Image.fromarray(grid, "RGB")
    return small.resize((width, height), Image.Resampling.BICUBIC)


def _texture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Stripes or checks with a random angle and period: fabric, fences, brick."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(6, 40)
    phase = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
    wave = np.sin(phase)
    if rng.random() < 0.5:
        wave = wave * np.sin(
            (xx * -math.sin(angle) + yy * math.cos(angle)) * (2 * math.pi / period)
        )
    base = rng.integers(40, 216, size=3)
    amp = rng.uniform(20, 60)
    rgb = np.clip(base[None, None, :] + amp * wave[..., None], 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def make_image(seed: int, width: int, height: int) -> Image.Image:
    """Return an RGB photo-like image of the given size, identical for identical arguments."""
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    img = _smooth_field(rng, width, height)
    draw = ImageDraw.Draw(img)
    scale = min(width, height)

    # Objects: big soft shapes first, then smaller hard-edged ones on top.
    for i in range(prng.randint(8, 16)):
        size = scale * prng.uniform(0.05, 0.45) / (1 + i * 0.1)
        cx, cy = prng.uniform(0, width), prng.uniform(0, height)
        colour = tuple(prng.randint(0, 255) for _ in range(3))
        box = (cx - size, cy - size * prng.uniform(0.4, 1.2), cx + size, cy + size)
        kind = prng.choice(("ellipse", "rect", "poly"))
        if kind == "ellipse":
            draw.ellipse(box, fill=colour)
        elif kind == "rect":
            draw.rectangle(box, fill=colour)
        else:
            pts = [
                (cx + size * math.cos(a), cy + size * math.sin(a))
                for a in sorted(prng.uniform(0, 2 * math.pi) for _ in range(prng.randint(3, 7)))
            ]
            draw.polygon(pts, fill=colour)

    # Textured patches, pasted through an elliptical mask.
    for _ in range(prng.randint(1, 3)):
        tw = max(8, int(width * prng.uniform(0.1, 0.35)))
        th = max(8, int(height * prng.uniform(0.1, 0.35)))
        patch = _texture(rng, tw, th)
        mask = Image.new("L", (tw, th), 0)
        ImageDraw.Draw(mask).ellipse((0, 0, tw - 1, th - 1), fill=255)
        img.paste(patch, (prng.randint(0, width - tw), prng.randint(0, height - th)), mask)

    # Lettering, as on signs, memes and screenshots.
    draw = ImageDraw.Draw(img)
    for _ in range(prng.randint(1, 4)):
        font = ImageFont.load_default(size=max(10, int(scale * prng.uniform(0.04, 0.12))))
        text = " ".join(prng.choice(_WORDS) for _ in range(prng.randint(1, 3)))
        xy = (prng.uniform(0, width * 0.7), prng.uniform(0, height * 0.85))
        draw.text(xy, text, font=font, fill=tuple(prng.randint(0, 255) for _ in range(3)))

    # Optics and sensor: a slight blur, then a little grain (not enough to dominate).
    img = img.filter(ImageFilter.GaussianBlur(radius=max(0.6, scale / 1500)))
    grain = rng.normal(0.0, 3.0, size=(height, width, 1)).astype(np.float32)
    arr = np.asarray(img, dtype=np.float32) + grain
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    """Encode an image with Pillow and return the file's bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def size_for_megapixels(mp: float, aspect: float = 4 / 3) -> tuple[int, int]:
    """Width and height of an image of about ``mp`` megapixels at the given aspect ratio."""
    height = int(math.sqrt(mp * 1_000_000 / aspect))
    return int(height * aspect), height


def photo_corpus(
    megapixels: list[float], seed: int = 0, formats: tuple[str, ...] = ("JPEG", "PNG")
) -> list[tuple[str, bytes]]:
    """One image per (size, format): ``[(name, file bytes), ...]``; JPEG at quality 90."""
    out: list[tuple[str, bytes]] = []
    for i, mp in enumerate(megapixels):
        aspect = (4 / 3, 3 / 2, 16 / 9, 3 / 4)[i % 4]
        w, h = size_for_megapixels(mp, aspect)
        img = make_image(seed + i, w, h)
        for fmt in formats:
            if fmt == "JPEG":
                data = encode(img, "JPEG", quality=90)
            elif fmt == "PNG":
                data = encode(img, "PNG", compress_level=6)
            else:
                data = encode(img, fmt)
            out.append((f"{mp:g}mp-{w}x{h}.{fmt.lower()}", data))
    return out
